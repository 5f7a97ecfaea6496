"""The VE SDE (Song et al. 2021, "Score-Based Generative Modeling through Stochastic
Differential Equations"): continuous denoising score matching, predictor-corrector
sampling, probability-flow ODE sampling and the exact log-likelihood it gives.

    python examples/ve_sde.py [--out DIR] [--tiny]

(``--tiny``, for the tests: a few steps, and the data set's smaller 2000 / 500-point
splits of ``_common.toy_data``; the default run is the full size described below.)

What we chose, and why: the 2-D ``swiss_roll`` (a thin curved manifold: a hard target for
a score model, easy to judge by eye) and an MLP score network (thousands of steps in a
minute on a CPU; 2-D data shows the samples, the learned density and the whole reverse
trajectory at a glance). The VP and sub-VP examples use other 2-D sets; the Gaussian
mixture one (vp_sde.py) checks the likelihood against the exact density.

The VE SDE (Eq. (9) of Song et al. 2021, the continuous limit of SMLD / NCSN):

    dx = sqrt(d[sigma^2(t)]/dt) dw,   sigma(t) = sigma_min (sigma_max / sigma_min)^t,

with perturbation kernel N(x_t; x_0, (sigma^2(t) - sigma^2(0)) I) (Eq. (29)); the prior is
N(0, sigma_max^2 I). sigma_max follows Technique 1 of Song & Ermon 2020 (as Song et al.
2021 recommend): the largest Euclidean distance between two training points.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as C  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import spec  # noqa: E402
from jax_impl import ode, samplers  # noqa: E402
from jax_impl.models import registry  # noqa: E402
from jax_impl.models.utils import get_score_fn  # noqa: E402
from jax_impl.sde import VESDE  # noqa: E402
from spec.model_configs import MLPConfig  # noqa: E402

NAME = "ve_sde"
DATASET = "swiss_roll"


def main(argv=None) -> dict:
    args = C.parse_args(argv, __doc__.splitlines()[0])
    t_start = time.perf_counter()
    tiny = args.tiny

    # --- the run ----------------------------------------------------------------------
    data = C.toy_data(DATASET, tiny)
    # sigma_max = max_{i,j} ||x_i - x_j|| over the training set (Technique 1, NCSNv2).
    train_points, test = C.flat_images(data)
    sigma_max = C.max_pairwise_distance(train_points)
    # The network sees sigma(t) (score_sde's VE convention) through Gaussian Fourier
    # features of log sigma, and its output is divided by sigma (NCSN++'s scale_by_sigma,
    # Technique 3 of NCSNv2: ||score|| ~ 1/sigma).
    model_cfg = MLPConfig(data_dim=2, hidden_dims=(256, 256, 256), embedding_type="fourier",
                          scale_by_sigma=True)
    steps, batch = (5, 32) if tiny else (6000, 256)
    train_cfg = spec.TrainConfig().with_overrides([
        f"training.batch_size={batch}", "training.continuous=true",   # loss "auto" -> "sde"
        "optim.lr=1e-3", "optim.warmup=100", "model.ema_rate=0.999"])
    process = spec.VESDEConfig(sigma_min=0.01, sigma_max=sigma_max, N=1000)
    config = spec.RunConfig(model=model_cfg, train=train_cfg, data=data, process=process)
    # The objective is Eq. (7) of Song et al. 2021, denoising score matching over t:
    #     E_t { lambda(t) E_{x0} E_{xt|x0} || s(x_t, t) - grad log p_{0t}(x_t | x0) ||^2 },
    # t ~ U(1e-5, 1), lambda(t) = sigma(t)^2, so the target is -z / sigma(t).
    print(f"VE SDE on 2-D '{DATASET}': sigma_max = {sigma_max:.2f} (max pairwise distance), "
          f"{steps} steps of batch {batch}")
    state, losses, train_s = C.fit(config, steps)

    sde = VESDE(sigma_min=0.01, sigma_max=sigma_max, N=process.N)
    model = registry.create_model(model_cfg)
    variables = {"params": state.ema[0], **state.constants}  # the EMA weights
    score_fn = get_score_fn(sde, lambda x, labels: model.apply(variables, x, labels),
                            continuous=True)

    # --- predictor-corrector sampling (Algorithm 1 of Song et al. 2021) -----------------
    # Predictor: reverse diffusion (the discretisation of the reverse SDE, Eq. (6) and
    # (46)); corrector: one Langevin step per time (Algorithm 4, snr 0.16): score_sde's
    # choice for the VE SDE ("PC1000").
    # pc_sample runs the N steps in one lax.scan; here pc_loop runs the same steps in ten
    # chunks (equal lengths: one compilation per kind of chunk) to look at x_t in between;
    # --tiny runs them as one chunk (one compilation: the denoised last chunk).
    n = 64 if tiny else 1000
    N = 10 if tiny else process.N
    sde_s = VESDE(sigma_min=0.01, sigma_max=sigma_max, N=N)
    pred, corr, ts = samplers.pc_components(sde_s, predictor="reverse_diffusion",
                                            corrector="langevin", snr=0.16)
    chunks = np.split(ts, 1 if tiny else 10)
    key = jax.random.key(1)
    x = sde_s.prior_sampling(jax.random.fold_in(key, 0), (n, 2))   # x_T ~ N(0, sigma_max^2 I)
    run_chunk = jax.jit(lambda k, x, t, last: samplers.pc_loop(k, sde_s, score_fn, x, pred, corr, t,
                                                                denoise=last), static_argnums=3)
    t0 = time.perf_counter()
    frames = [(float(ts[0]), np.asarray(x))]
    for c, t_chunk in enumerate(chunks):
        x = run_chunk(jax.random.fold_in(key, c + 1), x, jnp.asarray(t_chunk), c == len(chunks) - 1)
        frames.append((float(t_chunk[-1]) if c < len(chunks) - 1 else 0.0, np.asarray(x)))
    x_pc = np.asarray(x)
    pc_s = time.perf_counter() - t0
    pc_nfe = samplers.pc_nfe(pred, corr, len(ts))

    # --- probability-flow ODE sampling (Eq. (13)): dx = [f - 1/2 g^2 score] dt ------------
    # Deterministic; the adaptive Dormand-Prince solver picks its own steps.
    ode_kw = dict(method="rk4", num_steps=4) if tiny else dict(method="dopri5", rtol=1e-4, atol=1e-4)
    t0 = time.perf_counter()
    x_ode, ode_nfe = jax.jit(lambda k: samplers.ode_sample(k, sde, score_fn, (n, 2), **ode_kw))(
        jax.random.key(2))
    x_ode = np.asarray(x_ode)
    ode_s = time.perf_counter() - t0

    # --- exact log-likelihood through the probability-flow ODE (Sec. 4.3, App. D.2) ------
    # log p_0(x_0) = log p_T(x_T) + int_0^T div f~(x_t, t) dt, integrated from the data to
    # the prior with the exact divergence (2-D: two Jacobian columns).
    m = 32 if tiny else 500
    g = 8 if tiny else 40                                          # the model density on a grid
    grid = np.stack(np.meshgrid(np.linspace(-3, 3, g), np.linspace(-3, 3, g)), -1).reshape(-1, 2)
    # one batch: the test points and the grid (the solver steps for the whole batch at once)
    points = jnp.asarray(np.concatenate([test[:m], grid]), jnp.float32)
    t0 = time.perf_counter()
    logp = np.asarray(jax.jit(lambda x: ode.likelihood(None, sde, score_fn, x, **ode_kw)[0])(points),
                      np.float64)
    logp_test, logp_grid = logp[:m], logp[m:].reshape(g, g)
    like_s = time.perf_counter() - t0

    # --- what we measured ---------------------------------------------------------------
    q_pc = C.quality(x_pc, data)
    q_ode = C.quality(x_ode, data) if not tiny else dict(q_pc, value=float("nan"))  # --tiny: one is enough
    res = {"test_loglik": float(logp_test.mean()), "sigma_max": sigma_max,
           "pc": {k: v for k, v in q_pc.items() if k != "report"},
           "ode": {k: v for k, v in q_ode.items() if k != "report"},
           "pc_nfe": int(pc_nfe), "ode_nfe": int(ode_nfe), "train_seconds": train_s,
           "quality": {k: v for k, v in q_pc.items() if k != "report"},
           "final_loss": float(np.mean(losses[-max(1, steps // 10):]))}
    print(f"  PC ({pc_nfe} evaluations, {pc_s:.1f} s): {C.describe(q_pc)}")
    print(f"  ODE ({int(ode_nfe)} evaluations, {ode_s:.1f} s): {C.describe(q_ode)}")
    print(f"  test log-likelihood {res['test_loglik']:.3f} nats/point "
          f"({res['test_loglik'] / (-2 * np.log(2)):.3f} bits/dim), {like_s:.1f} s")

    # --- the figure ---------------------------------------------------------------------
    fig = plt.figure(figsize=(13, 6.2))
    gs = fig.add_gridspec(2, 6, height_ratios=[1.3, 1])
    C.scatter(fig.add_subplot(gs[0, 0]), x_pc,
              f"PC samples ({pc_nfe} NFE)", data, log_prob=None)
    C.scatter(fig.add_subplot(gs[0, 1]), x_ode, f"ODE samples ({int(ode_nfe)} NFE)", data,
              log_prob=None)
    ax = fig.add_subplot(gs[0, 2])
    ax.imshow(np.maximum(logp_grid, logp_grid.max() - 6), origin="lower", extent=(-3, 3, -3, 3),
              cmap="Greys")
    ax.set_title("model log-density (prob. flow ODE)", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    ax = fig.add_subplot(gs[0, 3])
    ax.hist(logp_test, bins=40, color="tab:blue", alpha=0.8)
    ax.set_xlabel("model log p(x) of a test point (nats)", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.set_title(f"test log-likelihood, mean {res['test_loglik']:.2f}", fontsize=9)
    C.loss_curve(fig.add_subplot(gs[0, 4:6]), losses, "continuous DSM loss (Eq. 7)")
    shown = [min(frames, key=lambda f: abs(f[0] - t)) for t in (1.0, 0.8, 0.6, 0.4, 0.2, 0.0)]
    for j, (t, xs) in enumerate(shown):
        C.scatter(fig.add_subplot(gs[1, j]), xs, f"t = {t:.2f}", data, log_prob=None, n=600)
    fig.suptitle("VE SDE (Song et al. 2021): one reverse PC trajectory from t = 1 to 0 (bottom)", fontsize=10)
    fig.tight_layout()
    path = C.save(fig, args.out, NAME)
    return C.done(NAME, path, t_start, res)


if __name__ == "__main__":
    main()
