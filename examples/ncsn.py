"""NCSN (Song & Ermon 2019, "Generative Modeling by Estimating Gradients of the Data
Distribution"): a noise-conditional score network trained by denoising score matching on a
geometric ladder of noise levels, sampled by annealed Langevin dynamics.

    python examples/ncsn.py [--out DIR] [--tiny]

(``--tiny``, for the tests: a few steps, and the data set's smaller 2000 / 500-point
splits of ``_common.toy_data``; the default run is the full size described below.)

What we chose, and why: the 2-D Gaussian mixture ``gmm`` (three unequal, well separated
components, density known exactly) and the library's MLP, not the RefineNet on digits. On
this 2-core CPU the RefineNet (``NCSNConfig``) takes over a second per step even on 8x8
digits, so a few minutes would train a few hundred steps; the MLP trains thousands. The
mixture also shows the point of the paper's Sec. 3.2.2 / Fig. 3: Langevin dynamics at one
small noise level cannot cross the low-density gaps between modes, so its mode weights are
those of the basins it started in, while annealing from a large sigma to a small one
recovers the data's weights (here the basins happen to be of similar size, so the gap is
a few percent; the figure prints both).

The objective is the library's ``training.loss = "smld"`` on a discrete VE process: that
IS NCSN's loss. ``VESDEConfig(sigma_min, sigma_max, N=L)`` holds the ladder, label i
(0 = sigma_max) picks sigma_i, and the conditional MLP sees the label as v1's network did
(no 1/sigma output scaling: that is NCSNv2's change, see examples/ncsnv2.py).
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
from jax_impl import samplers  # noqa: E402
from jax_impl.models import registry  # noqa: E402
from spec.model_configs import MLPConfig  # noqa: E402
from spec.oracles.gmm import demo_mixture  # noqa: E402
from spec.schedules import geometric_sigmas  # noqa: E402


def main(argv=None) -> dict:
    args = C.parse_args(argv, __doc__.splitlines()[0])
    t_start = time.perf_counter()
    tiny = args.tiny

    # --- the noise ladder (Song & Ermon 2019, Sec. 4.2) -------------------------------
    # {sigma_i}_{i=1}^{L} a geometric sequence, sigma_1 = 1 > ... > sigma_L = 0.01, L = 10,
    # exactly the paper's choice for images (data scale ~1; our mixture has that scale).
    L, sigma_1, sigma_L = 10, 1.0, 0.01
    sigmas = geometric_sigmas(sigma_1, sigma_L, L)            # float64 [L], decreasing

    # --- the run: network, optimiser, data, noise process ------------------------------
    data = C.toy_data("gmm", tiny)
    model_cfg = MLPConfig(data_dim=2, hidden_dims=(128, 128, 128))   # label: positional embedding of i
    steps, batch = (5, 32) if tiny else (3000, 256)
    train_cfg = spec.TrainConfig().with_overrides([
        f"training.batch_size={batch}", "training.loss=smld",
        # Adam with lr 1e-3 as NCSN; a short warm-up and score_sde's gradient clipping (1.0)
        "optim.lr=1e-3", "optim.warmup=100", "model.ema_rate=0.999"])
    # A discrete VE process with N = L: the SMLD loss draws i ~ U{0..L-1} and minimises
    # Eq. (5)-(6) of Song & Ermon 2019, the denoising score matching objective
    #     l(theta; sigma) = 1/2 E || s_theta(x~, sigma) + (x~ - x) / sigma^2 ||^2,  x~ = x + sigma z,
    # weighted by lambda(sigma) = sigma^2 so every level contributes on the same scale.
    process = spec.VESDEConfig(sigma_min=sigma_L, sigma_max=sigma_1, N=L)
    config = spec.RunConfig(model=model_cfg, train=train_cfg, data=data, process=process)

    print(f"NCSN on 2-D '{data.dataset}': L={L} sigmas {sigma_1} -> {sigma_L}, {steps} steps of batch {batch}")
    state, losses, train_s = C.fit(config, steps)

    # --- the score function the sampler needs: score_fn(x, level) ----------------------
    # The label IS the level index (0 = sigma_1), as the loss fed it. EMA weights.
    model = registry.create_model(model_cfg)
    variables = {"params": state.ema[0], **state.constants}  # the EMA weights

    def score_fn(x, level):
        return model.apply(variables, x, level)

    # --- annealed Langevin dynamics (Algorithm 1 of Song & Ermon 2019) ------------------
    # for i = 1..L: alpha_i = eps * sigma_i^2 / sigma_L^2, and T steps of
    #     x <- x + alpha_i / 2 * s(x, sigma_i) + sqrt(alpha_i) z
    # (the library writes the step as x + a s + sqrt(2a) z with a = step_lr (sigma_i/sigma_L)^2,
    # i.e. a = alpha_i / 2; step_lr=2e-5 and T=100 are the values of the official code.)
    n, T = (64, 2) if tiny else (2000, 100)
    mix = demo_mixture()
    key = jax.random.key(1)
    x_T = jax.random.uniform(jax.random.fold_in(key, 0), (n, 2), jnp.float32, -3.0, 3.0)  # uniform start
    t0 = time.perf_counter()
    traj, nfe = jax.jit(lambda k, x0: samplers.ald_sample(
        k, sigmas, score_fn, (n, 2), n_steps_each=T, step_lr=2e-5, denoise=False,
        final_only=False, x_T=x0))(jax.random.fold_in(key, 1), x_T)
    traj = np.asarray(traj)                                    # [L*T, n, 2]: every post-step x
    x_ald = traj[-1]
    ald_s = time.perf_counter() - t0

    # --- plain Langevin dynamics at the smallest level only, same start, same budget ----
    # A one-level ladder [sigma_L]; the network's label for it is L-1. Step 1e-3 (larger
    # than annealing's last one, so it can move at all): it converges inside each basin but
    # hardly crosses between modes, so the mode weights follow the basins, not the data.
    def score_at_sigma_L(x, level):
        return score_fn(x, level + (L - 1))

    x_ld, _ = jax.jit(lambda k, x0: samplers.ald_sample(
        k, sigmas[-1:], score_at_sigma_L, (n, 2), n_steps_each=L * T, step_lr=1e-3,
        denoise=False, x_T=x0))(jax.random.fold_in(key, 2), x_T)
    x_ld = np.asarray(x_ld)

    # --- what we measured ---------------------------------------------------------------
    def weights(x):
        return np.bincount(mix.responsibilities(np.asarray(x, np.float64)).argmax(1), minlength=3) / len(x)

    exact = mix.sample(np.random.default_rng(0), n)[0]
    res = {
        "mean_log_density": float(mix.log_prob(x_ald.astype(np.float64)).mean()),
        "mean_log_density_exact": float(mix.log_prob(exact).mean()),
        "weights_annealed": weights(x_ald).tolist(), "weights_plain": weights(x_ld).tolist(),
        "weights_true": mix.weights.tolist(), "nfe": int(nfe), "train_seconds": train_s,
        "sample_seconds": ald_s, "final_loss": float(np.mean(losses[-max(1, steps // 10):]))}
    q = C.quality(x_ald, data)
    res["quality"] = {k: v for k, v in q.items() if k != "report"}
    fmt = lambda w: "/".join(f"{v:.2f}" for v in w)  # noqa: E731
    print(f"  mode weights: annealed LD {fmt(res['weights_annealed'])}, plain LD at sigma_L "
          f"{fmt(res['weights_plain'])}, true {fmt(res['weights_true'])}")
    print(f"  mean exact log-density of the samples {res['mean_log_density']:.3f} "
          f"(of exact samples {res['mean_log_density_exact']:.3f}); {C.describe(q)}")
    print(f"  training {train_s:.0f} s, annealed Langevin ({nfe} score evaluations) {ald_s:.1f} s")

    # --- the figure ---------------------------------------------------------------------
    fig = plt.figure(figsize=(12, 6.4))
    gs = fig.add_gridspec(2, 6, height_ratios=[1.35, 1])
    C.scatter(fig.add_subplot(gs[0, 0:2]), x_ald, f"annealed Langevin, L={L}, T={T}\nweights "
              f"{fmt(res['weights_annealed'])} (true {fmt(res['weights_true'])})", data,
              log_prob=mix.log_prob)
    C.scatter(fig.add_subplot(gs[0, 2:4]), x_ld, f"plain Langevin at sigma_L only\nweights "
              f"{fmt(res['weights_plain'])}", data, log_prob=mix.log_prob)
    C.loss_curve(fig.add_subplot(gs[0, 4:6]), losses, "denoising score matching loss (Eq. 6)")
    frames = [(-1, "start (uniform)")] + [(i * T - 1, f"after sigma_{i} = {sigmas[i - 1]:.2g}")
                                          for i in (1, 3, 5, 8, L)]
    for j, (idx, label) in enumerate(frames):
        C.scatter(fig.add_subplot(gs[1, j]), np.asarray(x_T) if idx < 0 else traj[idx], label, data,
                  log_prob=mix.log_prob, n=600)
    fig.suptitle("NCSN (Song & Ermon 2019): one reverse trajectory, level by level (bottom)", fontsize=10)
    fig.tight_layout()
    path = C.save(fig, args.out, "ncsn")
    return C.done("ncsn", path, t_start, res)


if __name__ == "__main__":
    main()
