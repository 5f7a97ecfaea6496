"""DDPM (Ho et al. 2020, "Denoising Diffusion Probabilistic Models"): linear betas, the
simple eps-prediction loss L_simple, and ancestral sampling, on 8x8 digits.

    python examples/ddpm.py [--out DIR] [--tiny]

What we chose, and why: scikit-learn's 8x8 digits (built in, centred to [-1, 1]), the
image data DDPM is about. The network is the library's MLP over the 64 pixels
(``_common.FlatMLP``), not the DDPM U-Net: on this 2-core CPU the U-Net takes about 1.5 s
per training step even at 8x8 (XLA:CPU runs convolutions on one core), the MLP a few
milliseconds, so a few minutes train thousands of steps. The process, loss and sampler
are exactly Ho et al.'s (improved-diffusion's ``GaussianDiffusion`` semantics).
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
from jax_impl.diffusion import GaussianDiffusion  # noqa: E402
from jax_impl.samplers_discrete import ddpm_step  # noqa: E402
from spec.model_configs import MLPConfig  # noqa: E402

NAME = "ddpm"


def main(argv=None) -> dict:
    args = C.parse_args(argv, __doc__.splitlines()[0])
    t_start = time.perf_counter()
    tiny = args.tiny

    # --- the diffusion (Sec. 2 and 4 of Ho et al. 2020) ---------------------------------
    # Forward process q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I) (Eq. (2)),
    # betas linear from 1e-4 to 0.02 over T = 1000 steps, so that
    # q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I) (Eq. (4)), abar_t = prod (1 - beta_s).
    # Reverse variance fixed to sigma_t^2 = beta_t (FIXED_LARGE; beta~_t is FIXED_SMALL).
    T = 1000
    process = spec.DiffusionConfig(steps=T, noise_schedule="linear",
                                   model_mean_type="epsilon", model_var_type="fixed_large",
                                   loss_type="mse")
    # L_simple (Eq. (14)): E_{t, x_0, eps} || eps - eps_theta(sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, t) ||^2,
    # t ~ U{1..T} (improved-diffusion's index 0..T-1), the training_losses "mse" term.
    data = spec.DataConfig(dataset="digits")                 # [N, 8, 8, 1] in [-1, 1]
    mlp = MLPConfig(data_dim=64, hidden_dims=(512, 512, 512), embedding_dim=128)  # t: positional
    model = C.FlatMLP(mlp)
    steps, batch = (5, 16) if tiny else (5000, 128)
    train_cfg = spec.TrainConfig().with_overrides([
        f"training.batch_size={batch}", "training.loss=diffusion",
        # Ho et al. used Adam at 2e-4 and EMA 0.9999 over 800k steps; a short run wants a
        # larger step and a shorter average
        "optim.lr=1e-3", "optim.warmup=200", "model.ema_rate=0.999"])
    config = spec.RunConfig(model=mlp, train=train_cfg, data=data, process=process)
    print(f"DDPM on 8x8 digits: T={T} linear betas, L_simple, {steps} steps of batch {batch}")
    state, losses, train_s = C.fit(config, steps, model=model)

    diffusion = GaussianDiffusion(process)
    variables = {"params": state.ema[0], **state.constants}  # the EMA weights

    def model_fn(x, t):                                     # eps_theta(x_t, t)
        return model.apply(variables, x, t)

    # --- ancestral sampling (Algorithm 2 of Ho et al. 2020) ------------------------------
    # x_T ~ N(0, I); for t = T..1: x_{t-1} = 1/sqrt(alpha_t) (x_t - beta_t / sqrt(1 - abar_t)
    # eps_theta(x_t, t)) + sigma_t z (Eq. (11)); x_0 is clipped to [-1, 1] on the way
    # (clip_denoised, as the official code).
    n = 16 if tiny else 256
    diffusion_s = GaussianDiffusion(spec.DiffusionConfig(
        steps=T, noise_schedule="linear", model_var_type="fixed_large",
        timestep_respacing="10" if tiny else ""))          # --tiny: 10 respaced steps
    t0 = time.perf_counter()
    x0, nfe = jax.jit(lambda k: samplers.ddpm_sample(k, diffusion_s, model_fn, (n, 8, 8, 1)))(
        jax.random.key(1))
    x0 = np.asarray(x0)
    sample_s = time.perf_counter() - t0

    # --- one reverse trajectory, step by step (the same ddpm_step the sampler scans) ------
    K = diffusion_s.num_timesteps
    k_traj = 8
    zs = jax.random.normal(jax.random.key(2), (K, k_traj, 8, 8, 1))

    def body(x, inp):
        t, z = inp
        x = ddpm_step(diffusion_s, model_fn, x, t, z)["sample"]
        return x, x

    x_T = jax.random.normal(jax.random.key(3), (k_traj, 8, 8, 1))
    _, xs = jax.jit(lambda x, z: jax.lax.scan(body, x, (jnp.arange(K - 1, -1, -1), z)))(x_T, zs)
    xs = np.asarray(xs)                                      # xs[i] = x_{K-1-i}
    show_t = [K - 1, int(K * 0.6), int(K * 0.4), int(K * 0.25), int(K * 0.15), int(K * 0.08), 0]
    strip = [np.asarray(x_T)] + [xs[K - 1 - t] for t in show_t]

    # --- what we measured ---------------------------------------------------------------
    q = C.quality(x0, data)
    res = {"quality": {k: v for k, v in q.items() if k != "report"}, "nfe": int(nfe),
           "train_seconds": train_s, "sample_seconds": sample_s,
           "final_loss": float(np.mean(losses[-max(1, steps // 10):]))}
    if "classifier_score" in q["report"]:
        res["classifier_score"] = float(q["report"]["classifier_score"])
    print(f"  {n} samples, ancestral sampling with {nfe} steps in {sample_s:.1f} s: {C.describe(q)}")

    # --- the figure ---------------------------------------------------------------------
    _, test = C.flat_images(data)
    fig = plt.figure(figsize=(12, 6.6))
    gs = fig.add_gridspec(2, 8, height_ratios=[1.6, 1])
    C.image_grid(fig.add_subplot(gs[0, 0:3]), x0[:64], f"DDPM samples ({nfe} ancestral steps)")
    C.image_grid(fig.add_subplot(gs[0, 3:6]), test[:64], "real digits (held out)")
    C.loss_curve(fig.add_subplot(gs[0, 6:8]), losses, "L_simple (Eq. 14)")
    labels = ["x_T ~ N(0, I)"] + [f"t = {t}" for t in show_t]
    for j, (xj, lab) in enumerate(zip(strip, labels)):
        C.image_grid(fig.add_subplot(gs[1, j]), xj[:4], lab, cols=2)
    fig.suptitle(f"DDPM (Ho et al. 2020) on 8x8 digits. {C.describe(q)}\n"
                 "bottom: four reverse trajectories from noise (left) to data (right)", fontsize=10)
    fig.tight_layout()
    path = C.save(fig, args.out, NAME)
    return C.done(NAME, path, t_start, res)


if __name__ == "__main__":
    main()
