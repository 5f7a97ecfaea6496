"""NCSNv2 (Song & Ermon 2020, "Improved Techniques for Training Score-Based Generative
Models"): the paper's five techniques, applied to 8x8 digits.

    python examples/ncsnv2.py [--out DIR] [--tiny]

  1. sigma_1 = the largest Euclidean distance between two training points;
  2. a geometric ladder whose ratio gamma makes neighbouring noise levels overlap;
  3. the noise-conditional score s(x, sigma) = s(x) / sigma (the output divided by sigma);
  4. T steps per level and a step size eps that make the Langevin samples' variance match
     the next level (Proposition 3), plus the final denoising step x + sigma_L^2 s;
  5. an exponential moving average of the weights (rate 0.999).

What we chose, and why: the digits (D = 64). Techniques 1, 2 and 4 are statements about
high-dimensional data: in 2-D, Technique 2's condition holds for every gamma (there is no
ladder to choose), while for D = 64 it gives gamma ~ 1.36. The network is the library's MLP over the 64 pixels
(``_common.FlatMLP``): NCSNv2's RefineNet takes over a second per step on this 2-core CPU
even at 8x8, the MLP milliseconds.

Training uses the library's continuous VE loss (score_sde's "sde" loss): sigma drawn
log-uniformly between sigma_L and sigma_1 rather than from the L ladder points, with the
network fed sigma itself (Fourier features of log sigma) so that Technique 3's 1/sigma
scaling applies. The library's discrete SMLD loss feeds the integer level instead, which
a 1/sigma output layer cannot use; the objective is otherwise the same weighted denoising
score matching of Song & Ermon 2020, Sec. 2.1, with lambda(sigma) = sigma^2.
"""

from __future__ import annotations

import math
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
from spec.model_configs import MLPConfig  # noqa: E402
from spec.schedules import geometric_sigmas  # noqa: E402

NAME = "ncsnv2"


def _phi(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def technique_2_gamma(D: int) -> float:
    """gamma with Phi(sqrt(2D)(gamma - 1) + 3 gamma) - Phi(sqrt(2D)(gamma - 1) - 3 gamma) = 0.5
    (Technique 2), by bisection (the left side falls from ~1 as gamma grows, for D >> 1)."""
    f = lambda g: _phi(math.sqrt(2 * D) * (g - 1) + 3 * g) - _phi(math.sqrt(2 * D) * (g - 1) - 3 * g) - 0.5  # noqa: E731
    lo, hi = 1.0, 10.0
    if f(hi) > 0:
        raise ValueError(f"D={D}: Technique 2 has no solution below gamma=10 (D too small)")
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if f(mid) > 0 else (lo, mid)
    return 0.5 * (lo + hi)


def technique_4_eps(gamma: float, sigma_L: float, T: int) -> tuple[float, float]:
    """eps making Proposition 3's variance ratio s_T^2 / sigma_i^2 after T Langevin steps,
        (1 - eps/sigma_L^2)^{2T} (gamma^2 - 2 eps / (sigma_L^2 - sigma_L^2 (1 - eps/sigma_L^2)^2))
          + 2 eps / (sigma_L^2 - sigma_L^2 (1 - eps/sigma_L^2)^2),
    as close to 1 as possible (a grid over u = eps / sigma_L^2 in (0, 1)). Returns (eps, ratio)."""
    u = np.linspace(1e-4, 0.999, 20000)
    b = 2.0 / (2.0 - u)                          # = 2 eps / (sigma_L^2 (1 - (1 - u)^2))
    ratio = (1 - u) ** (2 * T) * (gamma ** 2 - b) + b
    i = int(np.argmin(np.abs(ratio - 1)))
    return float(u[i] * sigma_L ** 2), float(ratio[i])


def main(argv=None) -> dict:
    args = C.parse_args(argv, __doc__.splitlines()[0])
    t_start = time.perf_counter()
    tiny = args.tiny

    data = spec.DataConfig(dataset="digits")                 # [N, 8, 8, 1] in [-1, 1]
    train_x, test_x = C.flat_images(data)
    D = int(np.prod(train_x.shape[1:]))

    # --- Technique 1: sigma_1 = max_{i,j} ||x_i - x_j|| ---------------------------------
    sigma_1 = C.max_pairwise_distance(train_x)
    sigma_L = 0.01
    # --- Technique 2: gamma = sigma_{i-1} / sigma_i from its condition, L from sigma_1 / sigma_L
    gamma = technique_2_gamma(D)
    L = int(math.ceil(math.log(sigma_1 / sigma_L) / math.log(gamma))) + 1
    sigmas = geometric_sigmas(sigma_1, sigma_L, L)            # ratio <= gamma: enough overlap
    # --- Technique 4: T steps per level (as many as we can afford), eps from Prop. 3 -----
    T = 2 if tiny else 20
    eps, ratio = technique_4_eps(float(sigmas[0] / sigmas[1]), sigma_L, T)
    print(f"NCSNv2 on 8x8 digits (D={D}): sigma_1 = {sigma_1:.2f} (T1), gamma = {gamma:.3f} -> "
          f"L = {L} levels (T2), T = {T}, eps = {eps:.3g} (T4: variance ratio {ratio:.3f})")

    # --- Technique 3: s(x, sigma) = net(x, sigma) / sigma (MLP scale_by_sigma) ------------
    mlp = MLPConfig(data_dim=D, hidden_dims=(512, 512, 512), embedding_type="fourier",
                    embedding_dim=128, scale_by_sigma=True)
    model = C.FlatMLP(mlp)
    steps, batch = (5, 16) if tiny else (5000, 128)
    train_cfg = spec.TrainConfig().with_overrides([
        f"training.batch_size={batch}", "training.continuous=true",
        "optim.lr=1e-3", "optim.warmup=200",
        "model.ema_rate=0.999"])                               # Technique 5: EMA
    process = spec.VESDEConfig(sigma_min=sigma_L, sigma_max=sigma_1, N=L)
    config = spec.RunConfig(model=mlp, train=train_cfg, data=data, process=process)
    state, losses, train_s = C.fit(config, steps, model=model)
    variables = {"params": state.ema[0], **state.constants}  # the EMA weights

    def score_fn(x, level):                                  # level i -> sigma_i
        return model.apply(variables, x, jnp.asarray(sigmas, x.dtype)[level])

    # --- annealed Langevin dynamics with the final denoising step ------------------------
    # T steps per level of x <- x + a_i s(x, sigma_i) + sqrt(2 a_i) z, a_i = eps (sigma_i/sigma_L)^2,
    # then x <- x + sigma_L^2 s(x, sigma_L) (Tweedie's formula: E[x_0 | x] for noise sigma_L).
    n = 16 if tiny else 256
    t0 = time.perf_counter()
    traj, nfe = jax.jit(lambda k: samplers.ald_sample(
        k, sigmas, score_fn, (n, 8, 8, 1), n_steps_each=T, step_lr=eps, denoise=True,
        final_only=False))(jax.random.key(1))
    traj = np.asarray(traj)                                   # [L T + 1, n, 8, 8, 1]
    sample_s = time.perf_counter() - t0
    x_noisy, x_final = traj[-2], traj[-1]                     # before / after denoising

    # --- what we measured ---------------------------------------------------------------
    q, q_noisy = C.quality(x_final, data), C.quality(x_noisy, data)
    res = {"sigma_1": sigma_1, "gamma": gamma, "L": L, "T": T, "eps": eps,
           "quality": {k: v for k, v in q.items() if k != "report"},
           "quality_without_denoising": q_noisy["value"], "nfe": int(nfe), "train_seconds": train_s,
           "sample_seconds": sample_s, "final_loss": float(np.mean(losses[-max(1, steps // 10):]))}
    print(f"  {n} samples, {nfe} score evaluations in {sample_s:.1f} s: {C.describe(q)}; "
          f"without the final denoising step {q_noisy['value']:.4g}")

    # --- the figure ---------------------------------------------------------------------
    fig = plt.figure(figsize=(12, 7.2))
    gs = fig.add_gridspec(2, 8, height_ratios=[1.6, 1])
    C.image_grid(fig.add_subplot(gs[0, 0:3]), x_final[:64], f"NCSNv2 samples (L={L}, T={T}, denoised)")
    C.image_grid(fig.add_subplot(gs[0, 3:6]), test_x[:64], "real digits (held out)")
    ax = fig.add_subplot(gs[0, 6:8])
    C.loss_curve(ax, losses, "DSM loss, lambda = sigma^2")
    levels = sorted({0, L // 4, L // 2, (3 * L) // 4, L - 2, L - 1})
    idx = [(i + 1) * T - 1 for i in levels]
    frames = [(traj[i], f"sigma_{lv + 1} = {sigmas[lv]:.2g}") for i, lv in zip(idx, levels)]
    frames.append((x_final, "denoised"))
    for j, (xj, lab) in enumerate(frames[:8]):
        C.image_grid(fig.add_subplot(gs[1, j]), xj[:4], lab, cols=2)
    fig.suptitle(f"NCSNv2 techniques on 8x8 digits: sigma_1 = {sigma_1:.1f}, gamma = {gamma:.2f}, "
                 f"eps = {eps:.2g}. {C.describe(q)}\nbottom: four trajectories, the end of "
                 "each shown level (noise -> data)", fontsize=10)
    fig.tight_layout()
    path = C.save(fig, args.out, NAME)
    return C.done(NAME, path, t_start, res)


if __name__ == "__main__":
    main()
