"""Named training presets of the ``scorediff`` command line: ``data/model`` -> a run.

A ``Preset`` is a ``spec.RunConfig`` (network, training options, data, process) plus the
sampler the command line uses by default and a one-line summary. ``scorediff presets``
lists them, one per line, name first. This thin name -> config map exists only for the
command line (DESIGN rule 7): the library itself takes the typed configs.

Three families:

* ``digits/*``: sklearn's 8x8 digits (built in, 1438 training images, grey, in [-1, 1]),
  one preset per seed model and SDE, sized to train in minutes on a 2-core CPU. Their
  score / noise networks are MLPs on the flattened 64-pixel image: XLA:CPU runs a
  convolution on one core, and a small U-Net step on 8x8 digits took ~0.6 s of CPU on
  this machine against ~26 ms for the 3 x 512 MLP, so within minutes an MLP sees ~20x
  more examples (the main job's choice, ``MAIN_JOB_PRESET``, is measured in the README).
  NCSN's and NCSNv2's methods (the SMLD loss on their sigma ladders, annealed Langevin)
  run on that MLP; their own networks (``digits/ncsn-refinenet``, ``digits/ncsnv2-net``)
  and the DDPM U-Net (``digits/ddpm-unet``) are presets too, slow on a CPU (compiling
  the RefineNet's training step takes minutes).
* ``2d/*``: the built-in 2-D Gaussian mixture (its density is known, so samples and
  likelihoods are judged exactly), one preset per seed model and SDE, about a minute each.
* ``cifar10/improved-ddpm``, ``imagenet64/improved-ddpm[-cond]``, ``lsun256/improved-ddpm``:
  openai/improved-diffusion's released models (its UNetModel with the official parameter
  counts, its processes and training options), for sampling from converted official
  ``.pt`` checkpoints or for training on data you give.
* ``cifar10/*``: score_sde's and ncsnv2's official CIFAR-10 configurations (networks with
  the official parameter counts, the official optimisation). CIFAR-10 is not built in: to
  train, give the data (``--set data.dataset=array --set data.path=cifar10.npy``); on a
  CPU they are for sampling from converted official checkpoints
  (``scorediff sample --checkpoint FILE --preset cifar10/...``).

NCSNv2's techniques for the digits and 2-D ladders (Song & Ermon 2020): technique 1,
sigma_1 = the largest pairwise distance of the training data (digits 9.47, rounded to 10;
the mixture 3.79, rounded to 4); technique 2, the ratio gamma solving
Phi(sqrt(2D)(gamma-1) + 3 gamma) - Phi(sqrt(2D)(gamma-1) - 3 gamma) = 0.5 (D = 64:
gamma = 1.361, L = 24 levels down to 0.01); technique 4, the step size eps that brings
the variance ratio of eq. (6) closest to 1 with 5 steps per level (D = 64: eps = 2.5e-5).
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Mapping

import spec
from spec.configs import DiffusionConfig, VESDEConfig, VPSDEConfig, subVPSDEConfig
from spec.datasets import DataConfig
from spec.model_configs import PRESETS as MODEL_PRESETS
from spec.model_configs import DDPMConfig, MLPConfig
from spec.ncsn_configs import NCSN_CIFAR10, NCSNV2_CIFAR10, NCSNConfig, NCSNv2Config
from spec.train_config import RunConfig, TrainConfig

__all__ = ["MAIN_JOB_PRESET", "PRESETS", "Preset", "get_preset", "preset_names"]


@dataclasses.dataclass(frozen=True)
class Preset:
    """One named run: ``run_config`` (``spec.RunConfig``; ``data`` None where the data are
    not built in), ``sampler`` (the default ``--sampler`` and its options, a dict with a
    ``"name"``), ``summary`` (one line for ``scorediff presets``)."""

    name: str
    summary: str
    run_config: RunConfig
    sampler: Mapping[str, Any]

    @property
    def family(self) -> str:
        """``"digits"``, ``"2d"``, ``"cifar10"``, ``"imagenet64"`` or ``"lsun256"``."""
        return self.name.split("/", 1)[0]


def _train(*overrides: str) -> TrainConfig:
    return TrainConfig().with_overrides(list(overrides))


# -------------------------------------------------------------------------- digits

DIGITS = DataConfig(dataset="digits")
# short runs: warm-up 200 steps; snapshots (checkpoint + sample picture) every 2000
_CPU = ("optim.warmup=200", "optim.grad_clip=1.0", "training.log_freq=50", "training.keep=2")


def _digits_mlp(hidden=(512, 512, 512), **kw) -> MLPConfig:
    """An MLP on the flattened 8x8 image (NHWC in JAX, NCHW in torch; 64 inputs)."""
    return MLPConfig(data_dim=64, image_size=8, num_channels=1, hidden_dims=hidden, **kw)


def _digits_unet() -> DDPMConfig:
    """score_sde's DDPM U-Net cut to 8x8 digits: nf 32, two levels (8 and 4 px), one res
    block per level, attention at 4 px."""
    return DDPMConfig(image_size=8, num_channels=1, centered=True, nf=32, ch_mult=(1, 2),
                      num_res_blocks=1, attn_resolutions=(4,), dropout=0.0)


_DIGITS_STEPS = "training.n_iters=8000"
_DIGITS_BATCH = "training.batch_size=128"
_DIGITS_SNAP = "training.snapshot_freq=2000"

_digits = {
    "digits/ddpm": Preset(
        "digits/ddpm",
        "DDPM (Ho et al. 2020): linear betas, T=1000, L_simple, MLP eps-net; DDIM 100 steps (ancestral: --sampler ddpm)",
        RunConfig(model=_digits_mlp(), data=DIGITS,
                  train=_train(*_CPU, _DIGITS_STEPS, _DIGITS_BATCH, _DIGITS_SNAP, "optim.lr=1e-3",
                               "model.ema_rate=0.999"),
                  process=DiffusionConfig(steps=1000, noise_schedule="linear",
                                          model_var_type="fixed_large")),
        # measured: FD 10.3 with DDIM 100 against 23.7 with 1000 ancestral steps (3000 steps)
        {"name": "ddim", "steps": 100}),
    "digits/ddpm-unet": Preset(
        "digits/ddpm-unet",
        "DDPM with score_sde's U-Net at 8x8 (nf 32, 2 levels): VP discrete, DDPM loss; ~0.5 s/step on a CPU",
        RunConfig(model=_digits_unet(), data=DIGITS,
                  train=_train(*_CPU, "training.n_iters=2000", "training.batch_size=64",
                               "training.snapshot_freq=500", "training.continuous=False",
                               "optim.lr=1e-3", "model.ema_rate=0.99"),
                  process=VPSDEConfig(N=1000)),
        {"name": "pc", "predictor": "ancestral_sampling", "corrector": "none"}),
    "digits/improved-ddpm": Preset(
        "digits/improved-ddpm",
        "improved DDPM (Nichol & Dhariwal 2021): cosine schedule, learned variances, hybrid loss, MLP; DDIM 100 steps",
        RunConfig(model=_digits_mlp(learn_sigma=True), data=DIGITS,
                  train=_train(*_CPU, _DIGITS_STEPS, _DIGITS_BATCH, _DIGITS_SNAP, "optim.lr=1e-3",
                               "optim.optimizer=AdamW", "model.ema_rate=0.999"),
                  process=DiffusionConfig(steps=1000, noise_schedule="cosine",
                                          model_var_type="learned_range", loss_type="rescaled_mse")),
        # measured (README, "The main job"): DDIM's 100 deterministic steps beat the 100-step
        # (and the 1000-step) ancestral sampler with the learned variances on this short run
        {"name": "ddim", "steps": 100}),
    "digits/ncsn": Preset(
        "digits/ncsn",
        "NCSN's method (Song & Ermon 2019): 10 geometric sigmas 1 -> 0.01, SMLD (DSM) loss, MLP; annealed Langevin 100 steps/level",
        RunConfig(model=_digits_mlp(), data=DIGITS,
                  train=_train(*_CPU, _DIGITS_STEPS, _DIGITS_BATCH, _DIGITS_SNAP, "optim.lr=1e-3",
                               "model.ema_rate=0.999", "training.continuous=False", "training.loss=smld",
                               "training.sde=vesde"),
                  process=VESDEConfig(sigma_min=0.01, sigma_max=1.0, N=10)),
        {"name": "ald", "n_steps_each": 100, "step_lr": 2e-5}),
    "digits/ncsnv2": Preset(
        "digits/ncsnv2",
        "NCSNv2's recipe (Song & Ermon 2020): 24 sigmas 10 -> 0.01 (techniques 1-2), SMLD loss, MLP; ALD 5 steps/level, eps 2.5e-5",
        RunConfig(model=_digits_mlp(), data=DIGITS,
                  train=_train(*_CPU, _DIGITS_STEPS, _DIGITS_BATCH, _DIGITS_SNAP, "optim.lr=1e-3",
                               "model.ema_rate=0.999", "training.continuous=False", "training.loss=smld",
                               "training.sde=vesde"),
                  process=VESDEConfig(sigma_min=0.01, sigma_max=10.0, N=24)),
        {"name": "ald", "n_steps_each": 5, "step_lr": 2.5e-5}),
    "digits/ncsn-refinenet": Preset(
        "digits/ncsn-refinenet",
        "NCSN with its own network: RefineNet (ngf 16) at 8x8, anneal DSM, 10 sigmas 1 -> 0.01; slow to compile on a CPU",
        RunConfig(model=NCSNConfig(ngf=16, num_scales=10, sigma_min=0.01, sigma_max=1.0,
                                   image_size=8, num_channels=1, centered=True),
                  data=DIGITS,
                  train=_train(*_CPU, "training.n_iters=1500", "training.batch_size=64",
                               "training.snapshot_freq=500", "optim.lr=1e-3", "optim.warmup=0",
                               "model.ema_rate=0.99")),
        {"name": "ald", "n_steps_each": 100, "step_lr": 2e-5}),
    "digits/ncsnv2-net": Preset(
        "digits/ncsnv2-net",
        "NCSNv2 with its own network (ngf 16) at 8x8, anneal DSM, 24 sigmas 10 -> 0.01; slow to compile on a CPU",
        RunConfig(model=NCSNv2Config(ngf=16, num_scales=24, sigma_min=0.01, sigma_max=10.0,
                                     image_size=8, num_channels=1, centered=True),
                  data=DIGITS,
                  train=_train(*_CPU, "training.n_iters=1500", "training.batch_size=64",
                               "training.snapshot_freq=500", "optim.lr=1e-3", "optim.warmup=0",
                               "model.ema_rate=0.99")),
        {"name": "ald", "n_steps_each": 5, "step_lr": 2.5e-5}),
    "digits/ve-sde": Preset(
        "digits/ve-sde",
        "VE SDE (Song et al. 2021): sigma 0.01 -> 10, continuous DSM loss, MLP; PC reverse-diffusion + Langevin, N=1000",
        RunConfig(model=_digits_mlp(scale_by_sigma=True, embedding_type="fourier"), data=DIGITS,
                  train=_train(*_CPU, _DIGITS_STEPS, _DIGITS_BATCH, _DIGITS_SNAP, "optim.lr=1e-3",
                               "model.ema_rate=0.999", "training.sde=vesde"),
                  process=VESDEConfig(sigma_min=0.01, sigma_max=10.0, N=1000)),
        {"name": "pc", "predictor": "reverse_diffusion", "corrector": "langevin", "snr": 0.16}),
    "digits/vp-sde": Preset(
        "digits/vp-sde",
        "VP SDE (Song et al. 2021): beta 0.1 -> 20, continuous DSM loss, MLP; probability-flow ODE, RK4 50 steps",
        RunConfig(model=_digits_mlp(), data=DIGITS,
                  train=_train(*_CPU, _DIGITS_STEPS, _DIGITS_BATCH, _DIGITS_SNAP, "optim.lr=1e-3",
                               "model.ema_rate=0.999", "training.sde=vpsde"),
                  process=VPSDEConfig(beta_min=0.1, beta_max=20.0, N=1000)),
        # measured (8000 steps, pixels clipped to [-1, 1]): FD 6.45 with the ODE, 11.2-12.5
        # with Euler-Maruyama N=1000 (see the README's "The main job")
        {"name": "ode", "method": "rk4", "steps": 50}),
    "digits/subvp-sde": Preset(
        "digits/subvp-sde",
        "sub-VP SDE (Song et al. 2021): beta 0.1 -> 20, continuous DSM loss, MLP; PC Euler-Maruyama, N=1000",
        RunConfig(model=_digits_mlp(), data=DIGITS,
                  train=_train(*_CPU, _DIGITS_STEPS, _DIGITS_BATCH, _DIGITS_SNAP, "optim.lr=1e-3",
                               "model.ema_rate=0.999", "training.sde=subvpsde"),
                  process=subVPSDEConfig(beta_min=0.1, beta_max=20.0, N=1000)),
        {"name": "pc", "predictor": "euler_maruyama", "corrector": "none"}),
}

# ------------------------------------------------------------------------------ 2-D

GMM = DataConfig(dataset="gmm")
_2D = (*_CPU, "training.n_iters=6000", "training.batch_size=256", "training.snapshot_freq=2000",
       "optim.lr=2e-3", "model.ema_rate=0.999")


def _mlp2(**kw) -> MLPConfig:
    return MLPConfig(data_dim=2, hidden_dims=(128, 128, 128), **kw)


_2d = {
    "2d/ncsn": Preset(
        "2d/ncsn",
        "NCSN's method on the mixture: 10 geometric sigmas 4 -> 0.01, SMLD (DSM) loss, MLP; annealed Langevin",
        RunConfig(model=_mlp2(), data=GMM,
                  train=_train(*_2D, "training.continuous=False", "training.loss=smld"),
                  process=VESDEConfig(sigma_min=0.01, sigma_max=4.0, N=10)),
        {"name": "ald", "n_steps_each": 100, "step_lr": 2e-5}),
    "2d/ncsnv2": Preset(
        "2d/ncsnv2",
        "NCSNv2's recipe on the mixture: sigma_1 = max pairwise distance (4), 50 levels, SMLD loss, MLP; ALD 5 steps/level",
        RunConfig(model=_mlp2(), data=GMM,
                  train=_train(*_2D, "training.continuous=False", "training.loss=smld"),
                  process=VESDEConfig(sigma_min=0.01, sigma_max=4.0, N=50)),
        {"name": "ald", "n_steps_each": 5, "step_lr": 1e-4}),
    "2d/ddpm": Preset(
        "2d/ddpm",
        "DDPM on the mixture: linear betas, T=1000, L_simple, MLP eps-net; ancestral sampling",
        RunConfig(model=_mlp2(), data=GMM, train=_train(*_2D),
                  process=DiffusionConfig(steps=1000, noise_schedule="linear")),
        {"name": "ddpm"}),
    "2d/improved-ddpm": Preset(
        "2d/improved-ddpm",
        "improved DDPM on the mixture: cosine schedule, learned variances, hybrid loss; 100 respaced steps",
        RunConfig(model=_mlp2(learn_sigma=True), data=GMM, train=_train(*_2D, "optim.optimizer=AdamW"),
                  process=DiffusionConfig(steps=1000, noise_schedule="cosine",
                                          model_var_type="learned_range", loss_type="rescaled_mse")),
        {"name": "ddpm", "steps": 100}),
    "2d/ve-sde": Preset(
        "2d/ve-sde",
        "VE SDE on the mixture: sigma 0.01 -> 4, continuous DSM loss, MLP; PC reverse-diffusion + Langevin",
        RunConfig(model=_mlp2(scale_by_sigma=True, embedding_type="fourier"), data=GMM,
                  train=_train(*_2D, "training.sde=vesde"),
                  process=VESDEConfig(sigma_min=0.01, sigma_max=4.0, N=500)),
        {"name": "pc", "predictor": "reverse_diffusion", "corrector": "langevin", "snr": 0.16}),
    "2d/vp-sde": Preset(
        "2d/vp-sde",
        "VP SDE on the mixture: continuous DSM loss, MLP; PC Euler-Maruyama, N=500",
        RunConfig(model=_mlp2(), data=GMM, train=_train(*_2D, "training.sde=vpsde"),
                  process=VPSDEConfig(N=500)),
        {"name": "pc", "predictor": "euler_maruyama", "corrector": "none"}),
    "2d/subvp-sde": Preset(
        "2d/subvp-sde",
        "sub-VP SDE on the mixture: continuous DSM loss, MLP; PC Euler-Maruyama, N=500",
        RunConfig(model=_mlp2(), data=GMM, train=_train(*_2D, "training.sde=subvpsde"),
                  process=subVPSDEConfig(N=500)),
        {"name": "pc", "predictor": "euler_maruyama", "corrector": "none"}),
}

# -------------------------------------------------------------------------- CIFAR-10

# score_sde configs/default_cifar10_configs.py: batch 128, lr 2e-4, warmup 5000, grad_clip 1,
# 1.3M iterations, snapshots every 10k (TrainConfig's defaults); per config: the SDE, its
# N, continuous or not, ema 0.9999 (0.999 for NCSN++ VE), the sampler.
_PC_VE = {"name": "pc", "predictor": "reverse_diffusion", "corrector": "langevin", "snr": 0.16}
_PC_VP = {"name": "pc", "predictor": "euler_maruyama", "corrector": "none"}

_cifar = {
    "cifar10/ddpm": Preset(
        "cifar10/ddpm",
        "score_sde vp/ddpm/cifar10: DDPM U-Net (35.2M), VP discrete N=1000, DDPM loss; ancestral sampling",
        RunConfig(model=MODEL_PRESETS["vp/ddpm/cifar10"],
                  train=_train("training.continuous=False", "training.sde=vpsde"),
                  process=VPSDEConfig(N=1000)),
        {"name": "pc", "predictor": "ancestral_sampling", "corrector": "none"}),
    "cifar10/ddpmpp-continuous": Preset(
        "cifar10/ddpmpp-continuous",
        "score_sde vp/cifar10_ddpmpp_continuous: DDPM++ (61.8M), VP SDE, continuous; PC Euler-Maruyama",
        RunConfig(model=MODEL_PRESETS["vp/cifar10_ddpmpp_continuous"], train=_train("training.sde=vpsde"),
                  process=VPSDEConfig(N=1000)),
        _PC_VP),
    "cifar10/ddpmpp-deep-continuous": Preset(
        "cifar10/ddpmpp-deep-continuous",
        "score_sde vp/cifar10_ddpmpp_deep_continuous: deep DDPM++ (106.6M), VP SDE, continuous",
        RunConfig(model=MODEL_PRESETS["vp/cifar10_ddpmpp_deep_continuous"], train=_train("training.sde=vpsde"),
                  process=VPSDEConfig(N=1000)),
        _PC_VP),
    "cifar10/subvp-ddpmpp-deep-continuous": Preset(
        "cifar10/subvp-ddpmpp-deep-continuous",
        "score_sde subvp/cifar10_ddpmpp_deep_continuous: deep DDPM++ (106.6M), sub-VP SDE, continuous",
        RunConfig(model=MODEL_PRESETS["subvp/cifar10_ddpmpp_deep_continuous"],
                  train=_train("training.sde=subvpsde"), process=subVPSDEConfig(N=1000)),
        _PC_VP),
    "cifar10/ncsnpp-continuous": Preset(
        "cifar10/ncsnpp-continuous",
        "score_sde ve/cifar10_ncsnpp_continuous: NCSN++ (62.8M), VE SDE sigma 0.01 -> 50, continuous; PC + Langevin",
        RunConfig(model=MODEL_PRESETS["ve/cifar10_ncsnpp_continuous"],
                  train=_train("training.sde=vesde", "model.ema_rate=0.999"),
                  process=VESDEConfig(sigma_min=0.01, sigma_max=50.0, N=1000)),
        _PC_VE),
    "cifar10/ncsnpp-deep-continuous": Preset(
        "cifar10/ncsnpp-deep-continuous",
        "score_sde ve/cifar10_ncsnpp_deep_continuous: deep NCSN++ (107.6M), VE SDE, N=2000; PC + Langevin",
        RunConfig(model=MODEL_PRESETS["ve/cifar10_ncsnpp_deep_continuous"],
                  train=_train("training.sde=vesde", "model.ema_rate=0.999"),
                  process=VESDEConfig(sigma_min=0.01, sigma_max=50.0, N=2000)),
        _PC_VE),
    "cifar10/ncsnv2": Preset(
        "cifar10/ncsnv2",
        "ncsnv2 configs/cifar10.yml: NCSNv2 (29.7M), 232 sigmas 50 -> 0.01; ALD 5 steps/level, eps 6.2e-6",
        RunConfig(model=NCSNV2_CIFAR10,
                  train=_train("training.n_iters=300001", "optim.lr=1e-4", "optim.warmup=0",
                               "optim.grad_clip=-1", "model.ema_rate=0.999", "model.ema_warmup=False")),
        {"name": "ald", "n_steps_each": 5, "step_lr": 6.2e-6}),
    "cifar10/ncsn": Preset(
        "cifar10/ncsn",
        "ncsn configs/anneal.yml: NCSN RefineNet (ngf 128), 10 sigmas 1 -> 0.01; ALD 100 steps/level, eps 2e-5",
        RunConfig(model=NCSN_CIFAR10,
                  train=_train("training.n_iters=200001", "optim.lr=1e-3", "optim.warmup=0",
                               "optim.grad_clip=-1", "model.ema_rate=0.999", "model.ema_warmup=False")),
        {"name": "ald", "n_steps_each": 100, "step_lr": 2e-5}),
}

# openai/improved-diffusion's released models (README: MODEL_FLAGS, DIFFUSION_FLAGS,
# TRAIN_FLAGS); the networks are spec.unet_model.IMPROVED_DIFFUSION_PRESETS (official
# parameter counts), the processes DiffusionConfig.from_improved_diffusion_args of the same
# flags. Training as the official TrainLoop: AdamW, no warm-up, no clipping, a constant EMA
# rate of 0.9999, uniform t (``--set training.schedule_sampler=loss-second-moment`` for the
# paper's L_vlb runs). Sampling: 100 respaced ancestral steps with the learned variances
# (the paper's Fig. 7 setting; ``--steps 4000`` for all of them).
_IMPROVED_TRAIN = ("optim.optimizer=AdamW", "optim.lr=1e-4", "optim.warmup=0", "optim.grad_clip=-1",
                   "model.ema_rate=0.9999", "model.ema_warmup=False", "training.batch_size=128",
                   "training.n_iters=500000")


def _improved(network: str, **diffusion_flags) -> tuple:
    from spec.unet_model import IMPROVED_DIFFUSION_PRESETS

    model = IMPROVED_DIFFUSION_PRESETS[network]
    flags = {"learn_sigma": model.learn_sigma, **diffusion_flags}
    return model, DiffusionConfig.from_improved_diffusion_args(flags)


def _improved_preset(name: str, summary: str, network: str, lr: str = "optim.lr=1e-4", **diffusion_flags):
    model, process = _improved(network, **diffusion_flags)
    return Preset(name, summary,
                  RunConfig(model=model, train=_train(*_IMPROVED_TRAIN, lr), process=process),
                  {"name": "ddpm", "steps": 100})


_improved_presets = {
    p.name: p for p in (
        _improved_preset("cifar10/improved-ddpm",
                         "improved-diffusion CIFAR-10: UNetModel (52.5M, learned sigmas, dropout 0.3), "
                         "cosine T=4000, hybrid loss; 100 respaced ancestral steps",
                         "improved/cifar10_uncond", diffusion_steps=4000, noise_schedule="cosine"),
        _improved_preset("imagenet64/improved-ddpm",
                         "improved-diffusion ImageNet-64: UNetModel (121.1M, learned sigmas), cosine T=4000, "
                         "hybrid loss; 100 respaced ancestral steps",
                         "improved/imagenet64_uncond", diffusion_steps=4000, noise_schedule="cosine"),
        _improved_preset("imagenet64/improved-ddpm-cond",
                         "improved-diffusion class-conditional ImageNet-64: UNetModel (121.6M, 1000 classes), "
                         "cosine T=4000, hybrid loss; 100 respaced ancestral steps",
                         "improved/imagenet64_cond", diffusion_steps=4000, noise_schedule="cosine"),
        _improved_preset("lsun256/improved-ddpm",
                         "improved-diffusion LSUN 256: UNetModel (124.1M, 4 heads, learned sigmas), linear T=1000, "
                         "no rescaling; 100 respaced ancestral steps",
                         "improved/lsun256", lr="optim.lr=2e-5", diffusion_steps=1000, noise_schedule="linear",
                         rescale_learned_sigmas=False, rescale_timesteps=False),
    )
}

PRESETS: Mapping[str, Preset] = {**_digits, **_2d, **_cifar, **_improved_presets}

#: the preset ``make run`` trains (see the README's "The main job" for the measurements)
MAIN_JOB_PRESET = "digits/improved-ddpm"


def preset_names() -> tuple[str, ...]:
    return tuple(PRESETS)


def get_preset(name: str) -> Preset:
    """The preset called ``name``; ``ValueError`` naming it (with close matches) otherwise."""
    if not isinstance(name, str):
        raise TypeError(f"--preset must be a preset name, got {type(name).__name__}")
    if name not in PRESETS:
        close = difflib.get_close_matches(name, PRESETS, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"--preset: unknown preset {name!r}{hint} (`scorediff presets` lists all "
                         f"{len(PRESETS)})")
    return PRESETS[name]
