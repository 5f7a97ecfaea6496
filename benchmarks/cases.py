"""The benchmark configurations and their contenders (issue 11).

A *case* is one workload at one size: a network (``Net``: one torch module and the flax
variables converted from its ``state_dict``, so every contender runs the same weights), a
job (a sampler, a single forward pass or one training step) and a batch. Every contender
of a case is fed the same numpy-drawn inputs and noise, and the outputs of its first call
are compared with the reference (the ``jax`` row) before anything is quoted.

Contenders (row names are fixed; ``CONTENDERS``):

* ``jax``: ``jax_impl`` under ``jax.jit`` (the sampler's whole loop is one ``lax.scan``), on
  the default device set-up of the process (one CPU device unless XLA_FLAGS says otherwise);
  compile = ``jit(f).lower(...).compile()``.
* ``jax-split``: the same program in a subprocess (``benchmarks/worker.py``) whose CPU host is
  split into per-core devices (``jax_impl.sharding.configure_host_devices("auto")``), the
  batch sharded over them (``sharding.shard_sampler`` / ``make_sharded_train_step``). It is
  timed inside the worker, in the same round-robin as the rest.
* ``torch``: ``torch_ref`` eager, NCHW; ``torch-cl``: the same with ``channels_last``
  weights and inputs (images); ``torch-compile``: the network under ``torch.compile`` (the
  sampler loop stays eager; its compile time is the first call).
* ``diffusers``: diffusers' ``DDPMScheduler`` / ``DDIMScheduler`` loop (0.42) driving the same
  torch U-Net (improved-diffusion's DDPM/DDIM on the "leading" grid; diffusers draws its step
  noise from a torch Generator, which is replayed for the other contenders).
* ``diffusionjax``: diffusionjax 0.1.8's ``EulerMaruyama`` solver on the reverse VP SDE with
  the same flax score, its own scan and key splitting (replayed as pre-drawn noise for the
  others).

Figures per contender (``benchmarks.timing``): median / min of the whole call over >= 5
round-robin repeats after the first call, samples/s (sampler: batch / median) or steps/s
(training), time per network evaluation (median / NFE), compile time, the first call, peak
RSS growth during the first call, and the fraction of the machine's measured matmul peak
(``flops`` of the work from XLA's cost analysis of one network evaluation x NFE, or of the
training step, over the median).

Imports jax: the worker configures its host devices before importing this module.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

import spec
from spec.configs import DiffusionConfig, VESDEConfig, VPSDEConfig
from spec.model_configs import DDPMConfig, MLPConfig, NCSNppConfig
from spec.train_config import RunConfig, TrainConfig

CONTENDERS = ("jax", "jax-split", "torch", "torch-cl", "torch-compile", "diffusers", "diffusionjax")

# ------------------------------------------------------------------------------ sizes


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Problem sizes and repeat counts of one run mode (``FULL``, ``TINY``)."""

    mode: str
    repeats: int
    mlp: MLPConfig
    mlp_fit_steps: int
    mlp_N: int
    mlp_batches: tuple[int, ...]
    mlp_pc_batches: tuple[int, ...]   # PC (2 NFE per step) only at these (time budget)
    mlp_ode_steps: int
    mlp_train_batches: tuple[int, ...]
    unet8: DDPMConfig
    unet8_batch: int
    unet32: DDPMConfig
    unet32_batch: int
    ncsnpp32: NCSNppConfig
    ncsnpp_batch: int
    ddpm_steps: int      # ancestral on the ddim-spaced grid (diffusers' "leading" spacing)
    ddim_steps: int
    ncsnpp_pc_N: int
    ncsnpp_ode_steps: int
    train_image_batch: int
    ode_tol: float       # rtol = atol of the adaptive (dopri5) ODE
    #: contender rows that torch.compile: the cases that get one (compiling is slow on a CPU)
    compile_cases: tuple[str, ...]


def _mlp2d(hidden=(128, 128, 128)) -> MLPConfig:
    # the 2-D presets' MLP (scorediff.presets, "2d/*")
    return MLPConfig(data_dim=2, hidden_dims=hidden)


def _unet8(nf=32) -> DDPMConfig:
    # scorediff.presets' digits/ddpm-unet network: score_sde's DDPM U-Net cut to 8x8 digits
    return DDPMConfig(image_size=8, num_channels=1, centered=True, nf=nf, ch_mult=(1, 2),
                      num_res_blocks=1, attn_resolutions=(4,), dropout=0.0)


def _unet32(nf=32, ch_mult=(1, 2, 2), size=32) -> DDPMConfig:
    return DDPMConfig(image_size=size, num_channels=3, nf=nf, ch_mult=ch_mult, num_res_blocks=1,
                      attn_resolutions=(size // 2,), dropout=0.0)


def _ncsnpp32(nf=16, ch_mult=(1, 2, 2), size=32) -> NCSNppConfig:
    # NCSN++ (VE, continuous, Fourier embedding, FIR, BigGAN blocks) at a CPU-sized width
    return NCSNppConfig(image_size=size, num_channels=3, nf=nf, ch_mult=ch_mult, num_res_blocks=1,
                        attn_resolutions=(size // 2,), dropout=0.0)


FULL = Sizes(mode="full", repeats=5, mlp=_mlp2d(), mlp_fit_steps=300, mlp_N=1000, mlp_batches=(64, 4096), mlp_pc_batches=(64,),
             mlp_ode_steps=1000, mlp_train_batches=(64, 4096),
             unet8=_unet8(), unet8_batch=64, unet32=_unet32(), unet32_batch=4, ncsnpp32=_ncsnpp32(),
             ncsnpp_batch=8, ddpm_steps=100, ddim_steps=50, ncsnpp_pc_N=20, ncsnpp_ode_steps=10,
             train_image_batch=16, ode_tol=1e-5,
             compile_cases=("mlp_pc_b64", "unet32_forward_b4", "unet32_ddim50_b4"))
TINY = Sizes(mode="tiny", repeats=1, mlp=_mlp2d((16, 16)), mlp_fit_steps=20, mlp_N=25, mlp_batches=(8,), mlp_pc_batches=(8,),
             mlp_ode_steps=10, mlp_train_batches=(8,),
             # one level, no attention: the fewest ops, so the test's compiles stay short
             unet8=DDPMConfig(image_size=4, num_channels=1, centered=True, nf=32, ch_mult=(1,), num_res_blocks=1,
                              attn_resolutions=(), dropout=0.0), unet8_batch=4,
             unet32=DDPMConfig(image_size=4, num_channels=3, nf=32, ch_mult=(1,), num_res_blocks=1,
                               attn_resolutions=(), dropout=0.0), unet32_batch=4,
             ncsnpp32=NCSNppConfig(image_size=4, num_channels=3, nf=8, ch_mult=(1,), num_res_blocks=1,
                                   attn_resolutions=(), dropout=0.0), ncsnpp_batch=4, ddpm_steps=5, ddim_steps=5,
             ncsnpp_pc_N=3, ncsnpp_ode_steps=3, train_image_batch=4, ode_tol=1e-5,
             compile_cases=("mlp_pc_b8",))
SIZES = {"full": FULL, "tiny": TINY}


# ------------------------------------------------------------------------------ cases


@dataclasses.dataclass(frozen=True)
class Case:
    """One configuration: ``net`` ("mlp" | "unet8" | "unet32" | "ncsnpp32"), ``job`` ("pc",
    "em", "ode_euler", "ode_rk4", "ode_dopri5", "ddpm", "ddim", "forward", "train"), ``batch``,
    ``steps`` (the sampler's N / K / ODE steps; 0 for forward / train) and its contenders."""

    name: str
    net: str
    job: str
    batch: int
    steps: int
    contenders: tuple[str, ...]
    title: str

    @property
    def is_sampler(self) -> bool:
        return self.job not in ("forward", "train")


def all_cases(sizes: Sizes) -> list[Case]:
    """Every configuration of a run mode, in run order."""
    S, out = sizes, []

    def add(name, net, job, batch, steps, contenders, title):
        if name in S.compile_cases and "torch-compile" not in contenders:
            contenders = contenders + ("torch-compile",)
        out.append(Case(name, net, job, batch, steps, contenders, title))

    mlp = f"MLP{S.mlp.hidden_dims} on 2-D, VPSDE (continuous)"
    for B in S.mlp_batches:
        if B in S.mlp_pc_batches:
            add(f"mlp_pc_b{B}", "mlp", "pc", B, S.mlp_N, ("jax", "jax-split", "torch"),
                f"PC sampler (reverse diffusion + Langevin, snr 0.16), N={S.mlp_N}, {mlp}, batch {B}")
        add(f"mlp_em_b{B}", "mlp", "em", B, S.mlp_N, ("jax", "jax-split", "torch", "diffusionjax"),
            f"Euler-Maruyama reverse SDE, N={S.mlp_N}, {mlp}, batch {B}")
    B0 = S.mlp_batches[0]
    add(f"mlp_ode_euler_b{B0}", "mlp", "ode_euler", B0, S.mlp_ode_steps, ("jax", "jax-split", "torch"),
        f"probability-flow ODE, Euler fixed step x{S.mlp_ode_steps}, {mlp}, batch {B0}")
    add(f"mlp_ode_dopri5_b{B0}", "mlp", "ode_dopri5", B0, 0, ("jax", "jax-split", "torch"),
        f"probability-flow ODE, adaptive dopri5 (rtol = atol = {S.ode_tol:g}), {mlp}, batch {B0}")
    for B in S.mlp_train_batches:
        add(f"mlp_train_b{B}", "mlp", "train", B, 0, ("jax", "jax-split", "torch"),
            f"training step (DSM loss, Adam, EMA), {mlp}, batch {B}")

    img = ("jax", "jax-split", "torch", "torch-cl")
    for net, cfg, B in (("unet8", S.unet8, S.unet8_batch), ("unet32", S.unet32, S.unet32_batch)):
        what = (f"DDPM U-Net nf={cfg.nf} ch_mult={cfg.ch_mult} res_blocks={cfg.num_res_blocks}, "
                f"{cfg.image_size}x{cfg.image_size}x{cfg.num_channels}")
        add(f"{net}_forward_b{B}", net, "forward", B, 0, img, f"network evaluation, {what}, batch {B}")
        if net == "unet8":
            add(f"{net}_ddpm{S.ddpm_steps}_b{B}", net, "ddpm", B, S.ddpm_steps, img + ("diffusers",),
                f"DDPM ancestral, {S.ddpm_steps} steps of a linear 1000-step schedule, {what}, batch {B}")
        add(f"{net}_ddim{S.ddim_steps}_b{B}", net, "ddim", B, S.ddim_steps, img + ("diffusers",),
            f"DDIM (eta 0), {S.ddim_steps} steps of a linear 1000-step schedule, {what}, batch {B}")
        TB = S.unet8_batch if net == "unet8" else S.train_image_batch
        add(f"{net}_train_b{TB}", net, "train", TB, 0, img,
            f"training step (L_simple, Adam, EMA), {what}, batch {TB}")
    cfg, B = S.ncsnpp32, S.ncsnpp_batch
    what = (f"NCSN++ nf={cfg.nf} ch_mult={cfg.ch_mult} res_blocks={cfg.num_res_blocks}, "
            f"{cfg.image_size}x{cfg.image_size}x3, VESDE (continuous)")
    add(f"ncsnpp32_forward_b{B}", "ncsnpp32", "forward", B, 0, img, f"network evaluation, {what}, batch {B}")
    add(f"ncsnpp32_pc{S.ncsnpp_pc_N}_b{B}", "ncsnpp32", "pc", B, S.ncsnpp_pc_N, img,
        f"PC sampler (reverse diffusion + Langevin), N={S.ncsnpp_pc_N}, {what}, batch {B}")
    add(f"ncsnpp32_ode_rk4_b{B}", "ncsnpp32", "ode_rk4", B, S.ncsnpp_ode_steps, img,
        f"probability-flow ODE, RK4 fixed step x{S.ncsnpp_ode_steps}, {what}, batch {B}")
    add(f"ncsnpp32_train_b{S.train_image_batch}", "ncsnpp32", "train", S.train_image_batch, 0, img,
        f"training step (DSM loss, Adam, EMA), {what}, batch {S.train_image_batch}")
    return out


def net_config(sizes: Sizes, net: str):
    return {"mlp": sizes.mlp, "unet8": sizes.unet8, "unet32": sizes.unet32, "ncsnpp32": sizes.ncsnpp32}[net]


def process_config(case: Case):
    """The SDE / diffusion of a case (float64 tables in spec)."""
    if case.net == "mlp":
        return VPSDEConfig(beta_min=0.1, beta_max=20.0, N=max(case.steps, 1) if case.job in ("pc", "em") else 1000)
    if case.net == "ncsnpp32":
        return VESDEConfig(sigma_min=0.01, sigma_max=50.0, N=case.steps if case.job == "pc" else 1000)
    respacing = f"ddim{case.steps}" if case.job in ("ddpm", "ddim") else ""
    return DiffusionConfig(steps=1000, noise_schedule="linear", timestep_respacing=respacing)


def run_config(sizes: Sizes, case: Case) -> RunConfig:
    """The training run of a ``train`` case (no warm-up so the first update moves the weights)."""
    over = [f"training.batch_size={case.batch}", "optim.warmup=0", "optim.lr=2e-4", "optim.grad_clip=1.0",
            "model.ema_rate=0.999"]
    if case.net == "unet8" or case.net == "unet32":
        process = DiffusionConfig(steps=1000, noise_schedule="linear")
    else:
        process = process_config(dataclasses.replace(case, steps=1000))
    return RunConfig(model=net_config(sizes, case.net), process=process,
                     train=TrainConfig().with_overrides(over))


# ----------------------------------------------------------------- the JAX programs


def _jax_sde(process):
    from jax_impl import sde as jsde

    if isinstance(process, VESDEConfig):
        return jsde.VESDE(sigma_min=process.sigma_min, sigma_max=process.sigma_max, N=process.N)
    return jsde.VPSDE(beta_min=process.beta_min, beta_max=process.beta_max, N=process.N)


def jax_sampler(sizes: Sizes, case: Case) -> Callable:
    """``fn(rng, variables, noise, x_T=None) -> (samples, nfe)``: the library's sampler of a
    case on pre-drawn inputs (``noise`` a dict / array / None, batch on axis ``-ndim(x)``);
    the signature ``sharding.shard_sampler`` takes (x_T by keyword: batch-sharded)."""
    from jax_impl import ode as jode
    from jax_impl import samplers as jsamplers
    from jax_impl import samplers_discrete as jsd
    from jax_impl.diffusion import GaussianDiffusion
    from jax_impl.models import registry
    from jax_impl.models import utils as jmu

    model = registry.create_model(net_config(sizes, case.net))
    process = process_config(case)
    shape = batch_shape(sizes, case)

    if case.job in ("ddpm", "ddim"):
        diffusion = GaussianDiffusion(process)

        def fn(rng, variables, noise, x_T=None):
            mf = jmu.get_model_fn(model, variables)
            if case.job == "ddpm":
                return jsd.ddpm_sample(rng, diffusion, mf, shape, x_T=x_T, noise=noise)
            return jsd.ddim_sample(rng, diffusion, mf, shape, eta=0.0, x_T=x_T)
        return fn

    sde = _jax_sde(process)

    def fn(rng, variables, noise, x_T=None):
        score = jmu.get_score_fn(sde, jmu.get_model_fn(model, variables), continuous=True)
        if case.job == "pc":
            return jsamplers.pc_sample(rng, sde, score, shape, predictor="reverse_diffusion",
                                       corrector="langevin", snr=0.16, n_steps=1, x_T=x_T, noise=noise)
        if case.job == "em":
            # eps = 1/N: the grid 1, 1 - 1/N, ..., 1/N of diffusionjax's get_times(N)
            return jsamplers.pc_sample(rng, sde, score, shape, predictor="euler_maruyama",
                                       corrector="none", eps=1.0 / case.steps, x_T=x_T, noise=noise)
        method = case.job.split("_", 1)[1]
        kw = {"num_steps": case.steps} if method != "dopri5" else {"rtol": sizes.ode_tol, "atol": sizes.ode_tol}
        return jode.ode_sample(rng, sde, score, shape, method=method, x_T=x_T, **kw)
    return fn


def jax_forward(sizes: Sizes, case: Case) -> Callable:
    """``fn(variables, x, labels) -> out``: one network evaluation."""
    from jax_impl.models import registry

    model = registry.create_model(net_config(sizes, case.net))
    return lambda variables, x, labels: model.apply(variables, x, labels, train=False)


def jax_train_step(sizes: Sizes, case: Case) -> Callable:
    """``fn(state, x) -> (state, metrics)``: ``train.make_train_step``'s update (t / noise of
    example i from ``fold_in(fold_in(state.rng, state.step), i)``); the runner jits it with
    the state donated and carries the state from call to call."""
    from jax_impl import train as jt

    cfg = run_config(sizes, case)

    def fn(state, x):
        key = jax.random.fold_in(state.rng, state.step)
        t, z = jt.draw_randomness(key, cfg, state, x)
        return jt.train_step_core(cfg, state, x, t, z)
    return fn


def jax_train_state(sizes: Sizes, case: Case, seed: int = 0):
    """The (deterministic) initial JAX ``TrainState`` of a train case."""
    from jax_impl import train as jt

    return jt.create_train_state(jax.random.key(seed), run_config(sizes, case))


def batch_shape(sizes: Sizes, case: Case) -> tuple[int, ...]:
    cfg = net_config(sizes, case.net)
    if case.net == "mlp":
        return (case.batch, cfg.data_dim)
    return (case.batch, cfg.image_size, cfg.image_size, cfg.num_channels)


def jax_flops(fn, *args) -> float | None:
    """XLA's flop count of ``jax.jit(fn)`` on ``args`` (None when the backend gives none).

    Counted on the program lowered with the library's CPU custom calls off
    (``SCOREDIFF_ONEDNN=0``: XLA's own convolutions, dots and GroupNorm), because XLA's cost
    analysis gives a custom call no flops: with oneDNN's convolutions the DDPM U-Net
    32 x 32 forward at batch 4 counted 148 MFLOP, the convolutions left out. The maths, and
    so the work, is the same either way."""
    from jax_impl import onednn

    saved = os.environ.get(onednn.ENV)
    os.environ[onednn.ENV] = "0"
    try:
        # a fresh function, so that no trace made with the custom calls is reused
        lowered = jax.jit(lambda *a: fn(*a)).lower(*args)
    finally:
        if saved is None:
            os.environ.pop(onednn.ENV, None)
        else:
            os.environ[onednn.ENV] = saved
    try:
        ca = lowered.cost_analysis()
    except Exception:  # noqa: BLE001 -- optional on some backends
        return None
    if isinstance(ca, (list, tuple)):
        ca = ca[0] if ca else {}
    f = (ca or {}).get("flops")
    return float(f) if f is not None and f > 0 else None


def jax_memory(compiled) -> int | None:
    """Temp + argument + output bytes of a compiled program (``memory_analysis``), or None."""
    try:
        m = compiled.memory_analysis()
        return int(m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes)
    except Exception:  # noqa: BLE001
        return None
