"""Predictor-corrector samplers (Song et al. 2021) and annealed Langevin dynamics (Song &
Ermon 2019, 2020), in PyTorch; the public entry module of every torch sampler.

Twin: ``jax_impl/samplers.py`` (same classes, functions and semantics, JAX). Its
docstring lists the equations and the score_sde conventions reproduced here.

The sampler contract is the twin's (see its docstring), with one documented difference:
no positional ``rng``; instead a keyword ``generator: torch.Generator | None = None``
(None: torch's global generator), last. Parameter names, order, kinds and defaults are
otherwise identical. Pre-drawn inputs are the same keywords (``x_T=`` the start,
``noise=`` the per-step noise dict ``{"predictor": [N, B, ...], "corrector": [N,
n_steps, B, ...]}``), so a parity test feeds both frameworks identical arrays; what is
not given is drawn from the generator (the start first, then per step in this order:
the corrector's ``[n_steps, B, ...]``, the predictor's ``[B, ...]``, then any data
noise). Samples live on the device of the given tensors, else on ``generator.device``,
else on the CPU. Predictors and correctors follow the same ``Predictor`` /
``Corrector`` protocols. Drivers run under ``torch.no_grad()``, like score_sde's.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, ClassVar

import torch

import spec
from spec import grids
from spec.sampler_args import (  # re-exported: the public names of this module
    CORRECTORS,
    PC_NOISE_KEYS,
    PREDICTORS,
    Corrector,
    Predictor,
    ald_nfe,
    check_shape,
    check_step_noise,
    pc_nfe,
    pc_noise_shapes,
)
from spec.sampler_args import check_callable, check_component, checked_fn
from spec.sampler_args import check_noise as _check_noise
from spec.validate import check_bool, check_choice, check_float, check_int
from torch_ref.utils import append_dims
from torch_ref.validate import (
    check_array,
    check_fn_output,
    check_generator,
    check_sde,
    resolve_dtype,
)

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

__all__ = [
    "PREDICTORS", "CORRECTORS", "PC_NOISE_KEYS", "Predictor", "Corrector",
    "EulerMaruyamaPredictor", "ReverseDiffusionPredictor", "AncestralSamplingPredictor",
    "NonePredictor", "LangevinCorrector", "AnnealedLangevinCorrector", "NoneCorrector",
    "get_predictor", "get_corrector", "pc_components", "pc_nfe", "pc_noise_shapes",
    "check_step_noise", "pc_loop", "pc_sample",
    "ald_step", "ald_nfe", "ald_sample", "check_shape",
]

# ------------------------------------------------------------------------------ helpers


def _discrete_alpha(sde, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """alpha_i = 1 - beta_i at i = int(t (N-1)/T) for VP and sub-VP, ones for VE; ``[B]``."""
    if isinstance(sde, spec.VPSDEConfig):  # VPSDE and subVPSDE
        table = torch.as_tensor(sde.alphas, dtype=like.dtype, device=like.device)
        return table[sde.discrete_index(t)]
    return torch.ones(t.shape, dtype=like.dtype, device=like.device)


def _batch_mean_norm(v: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of the per-example L2 norms of ``v [B, ...]`` (a scalar)."""
    return torch.linalg.vector_norm(v.reshape(v.shape[0], -1), dim=-1).mean()


# --------------------------------------------------------------------------- predictors


@dataclasses.dataclass(frozen=True)
class EulerMaruyamaPredictor:
    """Euler-Maruyama step of the reverse SDE (or Euler's step of the probability-flow ODE):
    dt = -1/N, ``x_mean = x + f_rev dt``, ``x = x_mean + g_rev sqrt(-dt) z``."""

    probability_flow: bool = False
    name: ClassVar[str] = "euler_maruyama"
    nfe: ClassVar[int] = 1

    @property
    def stochastic(self) -> bool:
        """Whether ``step`` uses its noise ``z`` (shape of x)."""
        return not self.probability_flow

    def noise_shape(self, shape):
        """``shape`` (one normal per entry of x), or None with the probability flow."""
        return tuple(shape) if self.stochastic else None

    def check(self, sde) -> None:
        """Raise if this predictor cannot run on ``sde``."""

    def step(self, sde, score_fn: ScoreFn, x, t, z=None):
        """One step at time ``t [B]``; returns ``(x, x_mean)``, each ``[B, ...]``."""
        rsde = sde.reverse(score_fn, self.probability_flow)
        dt = -1.0 / rsde.N
        drift, diffusion = rsde.sde(x, t)
        x_mean = x + drift * dt
        if not self.stochastic:
            return x_mean, x_mean
        _check_noise("z", z, x.shape)
        return x_mean + append_dims(diffusion, x.ndim) * math.sqrt(-dt) * z, x_mean


@dataclasses.dataclass(frozen=True)
class ReverseDiffusionPredictor:
    """Reverse-diffusion step: ``f, G = rsde.discretize(x, t)``, ``x_mean = x - f``,
    ``x = x_mean + G z``; with ``probability_flow`` G = 0."""

    probability_flow: bool = False
    name: ClassVar[str] = "reverse_diffusion"
    nfe: ClassVar[int] = 1

    @property
    def stochastic(self) -> bool:
        return not self.probability_flow

    def noise_shape(self, shape):
        """``shape``, or None with the probability flow."""
        return tuple(shape) if self.stochastic else None

    def check(self, sde) -> None:
        """Raise if this predictor cannot run on ``sde``."""

    def step(self, sde, score_fn: ScoreFn, x, t, z=None):
        """One step at time ``t [B]``; returns ``(x, x_mean)``, each ``[B, ...]``."""
        f, G = sde.reverse(score_fn, self.probability_flow).discretize(x, t)
        x_mean = x - f
        if not self.stochastic:
            return x_mean, x_mean
        _check_noise("z", z, x.shape)
        return x_mean + append_dims(G, x.ndim) * z, x_mean


@dataclasses.dataclass(frozen=True)
class AncestralSamplingPredictor:
    """Ancestral sampling of the discrete chain (DDPM for VP, SMLD for VE); see the twin's
    docstring for the two update rules. Not defined for sub-VP or the probability flow."""

    probability_flow: bool = False
    name: ClassVar[str] = "ancestral_sampling"
    nfe: ClassVar[int] = 1

    def __post_init__(self):
        if self.probability_flow:
            raise ValueError(
                "predictor 'ancestral_sampling' has no probability-flow form; use "
                "'reverse_diffusion' or 'euler_maruyama' with probability_flow=True"
            )

    @property
    def stochastic(self) -> bool:
        return True

    def noise_shape(self, shape):
        """``shape``: one normal per entry of x."""
        return tuple(shape)

    def check(self, sde) -> None:
        """Raise ``ValueError`` for a sub-VP SDE (only VE and VP have a discrete chain)."""
        if isinstance(sde, spec.subVPSDEConfig) or not isinstance(
            sde, (spec.VPSDEConfig, spec.VESDEConfig)
        ):
            raise ValueError(
                f"predictor 'ancestral_sampling' supports VESDE and VPSDE only, got "
                f"{type(sde).__name__}; use 'reverse_diffusion' or 'euler_maruyama'"
            )

    def step(self, sde, score_fn: ScoreFn, x, t, z=None):
        """One step at time ``t [B]``; returns ``(x, x_mean)``, each ``[B, ...]``."""
        self.check(sde)
        _check_noise("z", z, x.shape)
        i = sde.discrete_index(t)
        score = score_fn(x, t)
        if isinstance(sde, spec.VESDEConfig):
            sigmas = torch.as_tensor(sde.discrete_sigmas, dtype=x.dtype, device=x.device)
            sigma = sigmas[i]
            prev = torch.where(i == 0, torch.zeros_like(sigma), sigmas[torch.clamp(i - 1, min=0)])
            gap = sigma**2 - prev**2
            x_mean = x + append_dims(gap, x.ndim) * score
            std = torch.sqrt(prev**2 * gap / sigma**2)
        else:
            beta = torch.as_tensor(sde.discrete_betas, dtype=x.dtype, device=x.device)[i]
            x_mean = (x + append_dims(beta, x.ndim) * score) / append_dims(torch.sqrt(1.0 - beta), x.ndim)
            std = torch.sqrt(beta)
        return x_mean + append_dims(std, x.ndim) * z, x_mean


@dataclasses.dataclass(frozen=True)
class NonePredictor:
    """The empty predictor (corrector-only sampling): returns ``(x, x)``, no evaluation."""

    probability_flow: bool = False
    name: ClassVar[str] = "none"
    nfe: ClassVar[int] = 0

    @property
    def stochastic(self) -> bool:
        return False

    def noise_shape(self, shape):
        """None: no noise."""
        return None

    def check(self, sde) -> None:
        """Runs on every SDE."""

    def step(self, sde, score_fn: ScoreFn, x, t, z=None):
        return x, x


# --------------------------------------------------------------------------- correctors


@dataclasses.dataclass(frozen=True)
class _Corrector:
    snr: float = 0.16
    n_steps: int = 1

    def __post_init__(self):
        object.__setattr__(self, "snr", check_float("snr", self.snr, positive=True))
        object.__setattr__(self, "n_steps", check_int("n_steps", self.n_steps, minimum=1))

    @property
    def nfe(self) -> int:
        """Score evaluations per PC step."""
        return self.n_steps

    def noise_shape(self, shape):
        """``(n_steps, *shape)``: one normal per Langevin step and entry of x."""
        return (self.n_steps, *shape)

    def check(self, sde) -> None:
        """Runs on every SDE (VE, VP and sub-VP)."""

    def _step_size(self, sde, x, t, grad, z_j):
        raise NotImplementedError

    def step(self, sde, score_fn: ScoreFn, x, t, z):
        """``n_steps`` Langevin steps at time ``t [B]`` with noise ``z [n_steps, B, ...]``;
        returns ``(x, x_mean)`` of the last one."""
        _check_noise("z", z, (self.n_steps, *x.shape))
        alpha = _discrete_alpha(sde, t, x)
        x_mean = x
        for j in range(self.n_steps):
            grad = score_fn(x, t)
            step_size = self._step_size(sde, x, t, grad, z[j]) * 2.0 * alpha
            x_mean = x + append_dims(step_size, x.ndim) * grad
            x = x_mean + append_dims(torch.sqrt(2.0 * step_size), x.ndim) * z[j]
        return x, x_mean


@dataclasses.dataclass(frozen=True)
class LangevinCorrector(_Corrector):
    """Langevin MCMC with score_sde's SNR rule: ``eps = 2 alpha_i (snr ||z|| / ||score||)^2``
    (norms averaged over the batch), ``x_mean = x + eps score``, ``x = x_mean + sqrt(2 eps) z``."""

    name: ClassVar[str] = "langevin"

    def _step_size(self, sde, x, t, grad, z_j):
        ratio = self.snr * _batch_mean_norm(z_j) / _batch_mean_norm(grad)
        return (ratio**2).expand(t.shape)


@dataclasses.dataclass(frozen=True)
class AnnealedLangevinCorrector(_Corrector):
    """NCSN's annealed Langevin step as a corrector: ``eps = 2 alpha_i (snr std(t))^2``."""

    name: ClassVar[str] = "ald"

    def _step_size(self, sde, x, t, grad, z_j):
        std = sde.marginal_prob(x, t)[1]
        return (self.snr * std) ** 2


@dataclasses.dataclass(frozen=True)
class NoneCorrector:
    """The empty corrector (predictor-only sampling): returns ``(x, x)``, no evaluation."""

    name: ClassVar[str] = "none"
    nfe: ClassVar[int] = 0

    def noise_shape(self, shape):
        """None: no noise."""
        return None

    def check(self, sde) -> None:
        """Runs on every SDE."""

    def step(self, sde, score_fn: ScoreFn, x, t, z=None):
        return x, x


_PREDICTOR_CLASSES = {
    "euler_maruyama": EulerMaruyamaPredictor,
    "reverse_diffusion": ReverseDiffusionPredictor,
    "ancestral_sampling": AncestralSamplingPredictor,
    "none": NonePredictor,
}
_CORRECTOR_CLASSES = {
    "langevin": LangevinCorrector,
    "ald": AnnealedLangevinCorrector,
    "none": NoneCorrector,
}

def get_predictor(name: str, *, probability_flow: bool = False) -> Predictor:
    """The predictor called ``name`` (one of ``PREDICTORS``, score_sde's names)."""
    check_choice("predictor", name, PREDICTORS)
    return _PREDICTOR_CLASSES[name](probability_flow=check_bool("probability_flow", probability_flow))


def get_corrector(name: str, *, snr: float = 0.16, n_steps: int = 1) -> Corrector:
    """The corrector called ``name`` (one of ``CORRECTORS``) with its SNR and step count."""
    check_choice("corrector", name, CORRECTORS)
    if name == "none":
        return NoneCorrector()
    return _CORRECTOR_CLASSES[name](snr=snr, n_steps=n_steps)


# ---------------------------------------------------------------------- the PC engine


def pc_components(sde, *, predictor="reverse_diffusion", corrector="langevin", snr=0.16,
                  n_steps=1, probability_flow=False, eps=None):
    """Validate the PC options; return ``(predictor, corrector, timesteps [N] float64)``.
    Same rules as the twin's ``pc_components`` (names or protocol objects)."""
    check_sde(sde)
    check_bool("probability_flow", probability_flow)
    if isinstance(predictor, str):
        predictor = get_predictor(predictor, probability_flow=probability_flow)
    else:
        check_component("predictor", predictor)
    if isinstance(corrector, str):
        check_float("snr", snr, positive=True)
        check_int("n_steps", n_steps, minimum=1)
        corrector = get_corrector(corrector, snr=snr, n_steps=n_steps)
    else:
        check_component("corrector", corrector)
    predictor.check(sde)
    corrector.check(sde)
    eps = grids.default_pc_eps(sde) if eps is None else eps
    timesteps = grids.pc_timesteps(sde.N, eps, sde.T)
    return predictor, corrector, timesteps


def pc_loop(sde, score_fn: ScoreFn, x_init, predictor, corrector, timesteps, *, noise=None,
            project=None, n_data: int = 0, denoise: bool = True,
            generator: torch.Generator | None = None):
    """Run corrector-then-predictor steps over ``timesteps`` (float64 numpy ``[N]``).

    Noise: pre-drawn ``noise`` (a dict of ``[N, ...]`` tensors, ``check_step_noise``) or,
    when it is None, drawn per step from ``generator`` in the order of
    ``pc_noise_shapes``. ``project(x, x_mean, t [B], z_data)`` (conditional sampling) runs
    after the corrector and after the predictor. Returns the samples ``[B, ...]``.
    """
    x = x_init
    shapes = pc_noise_shapes(predictor, corrector, x.shape, n_data)
    ts = torch.as_tensor(timesteps, dtype=x.dtype, device=x.device)
    x_mean = x
    for i in range(len(ts)):
        if noise is None:
            z = {name: torch.randn(s, generator=generator, dtype=x.dtype, device=x.device)
                 for name, s in shapes.items()}
        else:
            z = {name: v[i] for name, v in noise.items()}
        vec_t = ts[i].expand(x.shape[0])
        x, x_mean = corrector.step(sde, score_fn, x, vec_t, z.get("corrector"))
        if project is not None:
            x, x_mean = project(x, x_mean, vec_t, z["data"][0])
        x, x_mean = predictor.step(sde, score_fn, x, vec_t, z.get("predictor"))
        if project is not None:
            x, x_mean = project(x, x_mean, vec_t, z["data"][1])
    return x_mean if denoise else x


def _device(generator, *arrays) -> torch.device:
    """Where a driver's samples live: that of the first given tensor, else the
    generator's device, else the CPU."""
    for a in arrays:
        if torch.is_tensor(a):
            return a.device
    return generator.device if generator is not None else torch.device("cpu")


def _pc_prepare(sde, score_fn, shape, x_T, noise, dtype, generator, *, denoise,
                n_data: int = 0, **options):
    """The twin's ``_pc_prepare``: checks shared by the PC drivers; returns
    ``(predictor, corrector, timesteps, checked score_fn, dtype, device, x_T or None,
    noise or None)`` (``x_T`` None: draw it)."""
    check_callable("score_fn", score_fn, "score_fn(x, t)")
    shape = check_shape(shape)
    check_bool("denoise", denoise)
    check_generator("generator", generator)
    pred, corr, ts = pc_components(sde, **options)
    shapes = pc_noise_shapes(pred, corr, shape, n_data)
    if noise is not None:
        noise = check_step_noise(noise, shapes, len(ts))
    dtype = resolve_dtype(dtype, x_T, *(noise or {}).values())
    device = _device(generator, x_T, *(noise or {}).values())
    if x_T is not None:
        x_T = check_array("x_T", x_T, shape, dtype, device)
    if noise is not None:
        noise = {k: check_array(f"noise[{k!r}]", v, None, dtype, device) for k, v in noise.items()}
    score_fn = checked_fn("score_fn", score_fn, check_fn_output)
    return pred, corr, ts, score_fn, dtype, device, x_T, noise


# --------------------------------------------------------------------------- PC public


@torch.no_grad()
def pc_sample(sde, score_fn: ScoreFn, shape, *, predictor="reverse_diffusion",
              corrector="langevin", snr: float = 0.16, n_steps: int = 1,
              probability_flow: bool = False, denoise: bool = True, eps: float | None = None,
              x_T=None, noise=None, dtype=None, generator: torch.Generator | None = None):
    """Predictor-corrector sampling (Song et al. 2021, Alg. 1-3); the twin's arguments
    without the key: what is not given (``x_T``, the ``noise`` dict) is drawn from
    ``generator`` (the prior first, then per step). The samples live on the device of
    ``x_T`` / ``noise``, else ``generator.device``, else the CPU.

    Returns ``(samples [B, ...], nfe)`` with ``nfe = N (predictor.nfe + corrector.nfe)``.
    """
    pred, corr, ts, score_fn, dtype, device, x_T, noise = _pc_prepare(
        sde, score_fn, shape, x_T, noise, dtype, generator, predictor=predictor,
        corrector=corrector, snr=snr, n_steps=n_steps, probability_flow=probability_flow,
        eps=eps, denoise=denoise)
    if x_T is None:
        x_T = sde.prior_sampling(check_shape(shape), dtype, generator=generator).to(device)
    samples = pc_loop(sde, score_fn, x_T, pred, corr, ts, noise=noise, denoise=denoise,
                      generator=generator)
    return samples, pc_nfe(pred, corr, len(ts))


# ------------------------------------------------------------- annealed Langevin (NCSN)


def ald_step(score_fn, x, level, z, step_size):
    """One Langevin step at noise level ``level [B]`` (int64): ``x + a score(x, level) +
    sqrt(2 a) z`` with step size ``a`` (a float or 0-d tensor). Returns the new ``x``."""
    step_size = torch.as_tensor(step_size, dtype=x.dtype, device=x.device)
    return x + step_size * score_fn(x, level) + torch.sqrt(2.0 * step_size) * z


def _ald_loop(sigmas, score_fn, x, levels, step_sizes, *, generator, noise, denoise, final_only):
    trajectory = []
    steps = torch.as_tensor(step_sizes, dtype=x.dtype, device=x.device)
    for s in range(len(levels)):
        level = torch.full((x.shape[0],), int(levels[s]), dtype=torch.long, device=x.device)
        if noise is None:
            z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        else:
            z = noise[s]
        x = ald_step(score_fn, x, level, z, steps[s])
        if not final_only:
            trajectory.append(x)
    if denoise:
        level = torch.full((x.shape[0],), len(sigmas) - 1, dtype=torch.long, device=x.device)
        x = x + float(sigmas[-1]) ** 2 * score_fn(x, level)
        if not final_only:
            trajectory.append(x)
    return x if final_only else torch.stack(trajectory)


@torch.no_grad()
def ald_sample(sigmas, score_fn, shape, *, n_steps_each: int = 100, step_lr: float = 2e-5,
               denoise: bool = True, final_only: bool = True, x_T=None, noise=None, dtype=None,
               generator: torch.Generator | None = None):
    """Annealed Langevin dynamics (Song & Ermon 2019 Alg. 1; NCSNv2's sampler); see the
    twin. ``score_fn(x, level [B] int64)``. NCSNv2 draws each step's noise after calling
    the score, NCSN v1 before; with one generator only the stream differs, and this
    driver draws it after the initial sample, step by step. ``x_T`` (the start) and
    ``noise`` (``[L n_steps_each, *shape]``) are drawn from ``generator`` when not given.

    Returns ``(samples [B, ...] or trajectory [S (+1), B, ...], nfe)``.
    """
    check_callable("score_fn", score_fn, "score_fn(x, level)")
    shape = check_shape(shape)
    denoise = check_bool("denoise", denoise)
    final_only = check_bool("final_only", final_only)
    check_generator("generator", generator)
    sig = grids.check_sigmas(sigmas)
    levels, step_sizes = grids.ald_schedule(sig, n_steps_each, step_lr)
    dtype = resolve_dtype(dtype, x_T, noise)
    device = _device(generator, x_T, noise)
    if x_T is not None:
        x_T = check_array("x_T", x_T, shape, dtype, device)
    if noise is not None:
        noise = check_array("noise", noise, (len(levels), *shape), dtype, device,
                            what="[L * n_steps_each, *shape]")
    if x_T is None:
        x_T = float(sig[0]) * torch.randn(shape, generator=generator, dtype=dtype, device=device)
    score_fn = checked_fn("score_fn", score_fn, check_fn_output)
    out = _ald_loop(sig, score_fn, x_T, levels, step_sizes, generator=generator, noise=noise,
                    denoise=denoise, final_only=final_only)
    return out, ald_nfe(len(sig), n_steps_each, denoise)


# ------------------------------------------------------------------- other samplers
# This module is the public entry point of every sampler: the discrete (DDPM / DDIM), ODE
# and fast samplers live in their own modules and are re-exported here.

from torch_ref.fast_samplers import dpm_solver_pp_sample, edm_heun_sample  # noqa: E402
from torch_ref.ode import ode_sample  # noqa: E402
from torch_ref.samplers_discrete import ddim_invert, ddim_sample, ddpm_sample  # noqa: E402

__all__ += ["ddpm_sample", "ddim_sample", "ddim_invert", "edm_heun_sample",
            "dpm_solver_pp_sample", "ode_sample"]
