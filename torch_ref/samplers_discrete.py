"""Discrete-time samplers of a ``GaussianDiffusion``: DDPM ancestral sampling, DDIM (any
eta) and deterministic DDIM inversion, on any respaced process, in PyTorch.

Twin: ``jax_impl/samplers_discrete.py`` (same names and semantics; see its docstring for
the equations). Semantics are improved-diffusion's ``p_sample``, ``ddim_sample`` and
``ddim_reverse_sample``; ``t`` is an integer index into the respaced process and the
model sees ``diffusion.scale_timesteps(t)`` through ``GaussianDiffusion.p_mean_variance``.

* DDPM:  x_{t-1} = mu_theta(x_t, t) + 1[t > 0] exp(1/2 log Sigma_theta) z.
* DDIM:  eps = (x_t/sqrt(abar_t) - x0_hat) / sqrt(1/abar_t - 1),
         sigma = eta sqrt((1 - abar_{t-1})/(1 - abar_t)) sqrt(1 - abar_t/abar_{t-1}),
         x_{t-1} = sqrt(abar_{t-1}) x0_hat + sqrt(1 - abar_{t-1} - sigma^2) eps + 1[t > 0] sigma z.
* reverse DDIM: x_{t+1} = sqrt(abar_{t+1}) x0_hat + sqrt(1 - abar_{t+1}) eps.

Layout: pure step functions take the noise ``z``; the drivers loop over t = K-1, ..., 0
(loop index i = K-1-t), drawing x_T and then one normal per step from ``generator`` (the
order of improved-diffusion's ``p_sample_loop``), or take pre-drawn ``x_T`` / ``noise``
(``[K, *shape]``, ``noise[i]`` at t = K-1-i) so both frameworks follow the same
trajectory. As improved-diffusion's loops, the drivers run under ``torch.no_grad()``; the
step functions are differentiable. Each driver returns ``(samples, nfe)``.

The learned-variance split is along the diffusion's ``channel_axis`` (axis 1 by default
here, the last axis in JAX; the same axis for ``[B, D]`` data).

The drivers follow the twin's signatures with ``generator=`` (last) in place of ``rng``
(the sampler contract of ``torch_ref.samplers``); samples live on the device of ``x_T`` /
``noise``, else ``generator.device``, else the CPU. Checks as the twin's: options,
bools, the generator, pre-drawn tensors (shape, floating dtype, NaN / Inf), what
``model_fn`` and ``denoised_fn`` return on every call; ``clip_denoised=True`` (the
default, clamping x0_hat to [-1, 1] for images in [-1, 1]) warns for data of rank < 4.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

from spec.sampler_args import (
    check_callable,
    check_clip_denoised,
    check_ddim_eta,
    check_sample_shape,
    checked_fn,
)
from spec.validate import check_int
from torch_ref.diffusion import GaussianDiffusion
from torch_ref.utils import append_dims
from torch_ref.validate import (
    check_array,
    check_diffusion,
    check_floating,
    check_fn_output,
    check_generator,
    resolve_dtype,
)

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
DenoisedFn = Optional[Callable[[torch.Tensor], torch.Tensor]]

__all__ = [
    "ddpm_step",
    "ddim_step",
    "ddim_reverse_step",
    "ddpm_sample",
    "ddim_sample",
    "ddim_invert",
]


# ----------------------------------------------------------------------- helpers


_check_diffusion = check_diffusion


def _model_output_shape(diffusion):
    """``shape_of(x)`` for ``model_fn``'s output (channel axis doubled for a learned variance)."""
    def shape_of(x):
        shape = list(x.shape)
        if diffusion.learned_variance and len(shape) >= 2:
            shape[diffusion.channel_axis % len(shape)] *= 2
        return tuple(shape)

    return shape_of


def _checked_fns(diffusion, model_fn, denoised_fn, clip_denoised, ndim):
    """The twin's ``_checked_fns``: validate, warn for clipping non-images, wrap."""
    check_callable("model_fn", model_fn, "model_fn(x, t)")
    check_clip_denoised(clip_denoised, ndim, "[B, C, H, W]")
    model_fn = checked_fn("model_fn", model_fn, check_fn_output, _model_output_shape(diffusion))
    if denoised_fn is not None:
        check_callable("denoised_fn", denoised_fn, "denoised_fn(x0)")
        denoised_fn = checked_fn("denoised_fn", denoised_fn, check_fn_output)
    return model_fn, denoised_fn


def _check_tensor(name: str, a) -> torch.Tensor:
    if not isinstance(a, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(a).__name__}")
    check_floating(name, a)
    return a


def _coef(diffusion: GaussianDiffusion, name: str, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``table[t]`` cast to the computing dtype, shaped ``[B, 1, ...]`` against ``x``."""
    dtype = diffusion.dtype if diffusion.dtype is not None else x.dtype
    tbl = torch.as_tensor(diffusion.table(name), dtype=dtype, device=x.device)
    return append_dims(tbl[t], x.ndim)


def _as_t(t, x: torch.Tensor) -> torch.Tensor:
    """A scalar or ``[B]`` integer step index as ``[B]`` (validated by the diffusion)."""
    t = torch.as_tensor(t, device=x.device)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"t must be an integer index into the respaced process, got dtype {t.dtype}")
    if t.ndim == 0:
        t = t.expand(x.shape[0])
    return t


def _check_eta(diffusion: GaussianDiffusion, eta) -> float:
    """``eta >= 0`` with ``sigma_t^2 <= 1 - abar_{t-1}`` at every step (float64 tables)."""
    return check_ddim_eta(eta, diffusion.table("alphas_cumprod"),
                          diffusion.table("alphas_cumprod_prev"))


def _prepare(diffusion, model_fn, shape, x_T, noise, dtype, generator, *, clip_denoised,
             denoised_fn):
    """Validate a driver's inputs; return ``(shape, dtype, device, x_T, noise, model_fn,
    denoised_fn)`` (the functions wrapped with their output checks)."""
    _check_diffusion(diffusion)
    shape = check_sample_shape(shape)
    model_fn, denoised_fn = _checked_fns(diffusion, model_fn, denoised_fn, clip_denoised,
                                         len(shape))
    for name, a in (("x_T", x_T), ("noise", noise)):
        if a is not None:
            _check_tensor(name, a)
    dtype = resolve_dtype(dtype, x_T, noise)
    check_generator("generator", generator)
    device = next((a.device for a in (x_T, noise) if a is not None),
                  generator.device if generator is not None else torch.device("cpu"))
    K = diffusion.num_timesteps
    if x_T is not None:
        x_T = check_array("x_T", x_T, shape, dtype, device, what="shape")
    if noise is not None:
        noise = check_array("noise", noise, (K,) + shape, dtype, device,
                            what="[num_timesteps, *shape]")
    if x_T is None:
        x_T = torch.randn(shape, generator=generator, dtype=dtype, device=device)
    return shape, dtype, device, x_T, noise, model_fn, denoised_fn


def _run_reverse_loop(step, x_T, K, noise, generator, needs_noise: bool):
    """``x <- step(x, t, z)`` for loop index i = 0..K-1, t = K-1-i."""
    x = x_T
    B = x.shape[0]
    for i in range(K):
        if noise is not None:
            z = noise[i]
        elif needs_noise:
            z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        else:
            z = torch.zeros_like(x)
        t = torch.full((B,), K - 1 - i, dtype=torch.int64, device=x.device)
        x = step(x, t, z)
    return x


# ----------------------------------------------------------------------------- steps


def _step_inputs(x, t, z):
    """Check a step's ``x [B, ...]``, ``t`` and noise ``z`` (shape of x); return ``(x, t [B], z)``."""
    x = _check_tensor("x", x)
    t = _as_t(t, x)
    z = _check_tensor("z", z)
    if z.shape != x.shape:
        raise ValueError(f"z must have the shape of x {tuple(x.shape)}, got {tuple(z.shape)}")
    return x, t, z


def ddpm_step(
    diffusion: GaussianDiffusion,
    model_fn: ModelFn,
    x: torch.Tensor,
    t,
    z: torch.Tensor,
    *,
    clip_denoised: bool = True,
    denoised_fn: DenoisedFn = None,
) -> dict:
    """One ancestral step x_t -> x_{t-1} (improved-diffusion ``p_sample``), pure in ``z``:
    ``x_{t-1} = mean + 1[t > 0] exp(log_variance / 2) z``.

    Returns ``{"sample": x_{t-1}, "pred_xstart": x0_hat}``, both ``[B, ...]``.
    """
    _check_diffusion(diffusion)
    x, t, z = _step_inputs(x, t, z)
    out = diffusion.p_mean_variance(
        model_fn, x, t, clip_denoised=clip_denoised, denoised_fn=denoised_fn
    )
    nonzero = append_dims((t != 0).to(x.dtype), x.ndim)
    sample = out["mean"] + nonzero * torch.exp(0.5 * out["log_variance"]) * z.to(x.dtype)
    return {"sample": sample, "pred_xstart": out["pred_xstart"]}


def ddim_step(
    diffusion: GaussianDiffusion,
    model_fn: ModelFn,
    x: torch.Tensor,
    t,
    z: torch.Tensor,
    *,
    eta: float = 0.0,
    clip_denoised: bool = True,
    denoised_fn: DenoisedFn = None,
) -> dict:
    """One DDIM step x_t -> x_{t-1} (Song et al. 2021 eq. 12; improved-diffusion
    ``ddim_sample``), pure in ``z``; eps re-derived from the processed x0_hat.

    Returns ``{"sample": x_{t-1}, "pred_xstart": x0_hat}``, both ``[B, ...]``.
    """
    _check_diffusion(diffusion)
    eta = _check_eta(diffusion, eta)
    x, t, z = _step_inputs(x, t, z)
    out = diffusion.p_mean_variance(
        model_fn, x, t, clip_denoised=clip_denoised, denoised_fn=denoised_fn
    )
    x0 = out["pred_xstart"]
    eps = diffusion.predict_eps_from_xstart(x, t, x0)
    abar = _coef(diffusion, "alphas_cumprod", t, x)
    abar_prev = _coef(diffusion, "alphas_cumprod_prev", t, x)
    sigma = eta * torch.sqrt((1.0 - abar_prev) / (1.0 - abar)) * torch.sqrt(1.0 - abar / abar_prev)
    # >= 0 exactly for the eta _check_eta allows; the clamp only absorbs round-off.
    dir_coef = torch.sqrt(torch.clamp(1.0 - abar_prev - sigma**2, min=0.0))
    mean_pred = x0 * torch.sqrt(abar_prev) + dir_coef * eps
    nonzero = append_dims((t != 0).to(x.dtype), x.ndim)
    sample = mean_pred + nonzero * sigma * z.to(x.dtype)
    return {"sample": sample, "pred_xstart": x0}


def ddim_reverse_step(
    diffusion: GaussianDiffusion,
    model_fn: ModelFn,
    x: torch.Tensor,
    t,
    *,
    clip_denoised: bool = False,
    denoised_fn: DenoisedFn = None,
) -> dict:
    """One deterministic reverse-DDIM step x_t -> x_{t+1} (improved-diffusion
    ``ddim_reverse_sample``): ``x_{t+1} = sqrt(abar_{t+1}) x0_hat + sqrt(1 - abar_{t+1}) eps``
    with the model at (x_t, t) (abar_T = 0).

    Returns ``{"sample": x_{t+1}, "pred_xstart": x0_hat}``, both ``[B, ...]``.
    """
    _check_diffusion(diffusion)
    x = _check_tensor("x", x)
    t = _as_t(t, x)
    out = diffusion.p_mean_variance(
        model_fn, x, t, clip_denoised=clip_denoised, denoised_fn=denoised_fn
    )
    x0 = out["pred_xstart"]
    eps = diffusion.predict_eps_from_xstart(x, t, x0)
    abar_next = _coef(diffusion, "alphas_cumprod_next", t, x)
    sample = x0 * torch.sqrt(abar_next) + torch.sqrt(1.0 - abar_next) * eps
    return {"sample": sample, "pred_xstart": x0}


def _eps_at(diffusion, model_fn, x, t, clip_denoised, denoised_fn):
    """eps of the (processed) x0_hat of the model at (x, t), as ``ddim_step`` uses it."""
    out = diffusion.p_mean_variance(
        model_fn, x, t, clip_denoised=clip_denoised, denoised_fn=denoised_fn
    )
    return diffusion.predict_eps_from_xstart(x, t, out["pred_xstart"])


def _invert_update(diffusion, y, t, eps):
    """The x_t that ``ddim_step(eta=0)`` at t maps to ``y`` when the model's eps at x_t is
    ``eps``: ``sqrt(abar_t) (y - sqrt(1 - abar_{t-1}) eps) / sqrt(abar_{t-1})
    + sqrt(1 - abar_t) eps``."""
    abar = _coef(diffusion, "alphas_cumprod", t, y)
    abar_prev = _coef(diffusion, "alphas_cumprod_prev", t, y)
    x0 = (y - torch.sqrt(1.0 - abar_prev) * eps) / torch.sqrt(abar_prev)
    return torch.sqrt(abar) * x0 + torch.sqrt(1.0 - abar) * eps


def _ddim_lift_step(diffusion, model_fn, x0, *, clip_denoised, denoised_fn):
    """The first inversion step, data (abar = 1) -> step 0, eps from the model at (x_0, 0)."""
    t = torch.zeros((x0.shape[0],), dtype=torch.int64, device=x0.device)
    eps = _eps_at(diffusion, model_fn, x0, t, clip_denoised, denoised_fn)
    return _invert_update(diffusion, x0, t, eps)


# --------------------------------------------------------------------------- drivers


@torch.no_grad()
def ddpm_sample(
    diffusion: GaussianDiffusion,
    model_fn: ModelFn,
    shape: Sequence[int],
    *,
    clip_denoised: bool = True,
    denoised_fn: DenoisedFn = None,
    x_T: Optional[torch.Tensor] = None,
    noise: Optional[torch.Tensor] = None,
    dtype: Optional[torch.dtype] = None,
    generator: Optional[torch.Generator] = None,
) -> tuple[torch.Tensor, int]:
    """DDPM ancestral sampling (improved-diffusion ``p_sample_loop``): x_T ~ N(0, I), then
    ``ddpm_step`` for t = K-1, ..., 0.

    ``x_T`` ``[*shape]`` and ``noise`` ``[K, *shape]`` (``noise[i]`` at t = K-1-i) are
    optional pre-drawn inputs; otherwise they are drawn from ``generator`` (x_T first, then
    one draw per step). ``dtype``: default that of x_T / noise, else float32; the device
    is that of x_T / noise, else ``generator.device``, else the CPU.

    Returns ``(x_0 [*shape], nfe = K)``.
    """
    shape, dtype, device, x_T, noise, model_fn, denoised_fn = _prepare(
        diffusion, model_fn, shape, x_T, noise, dtype, generator,
        clip_denoised=clip_denoised, denoised_fn=denoised_fn,
    )

    def step(x, t, z):
        return ddpm_step(
            diffusion, model_fn, x, t, z, clip_denoised=clip_denoised, denoised_fn=denoised_fn
        )["sample"]

    K = diffusion.num_timesteps
    return _run_reverse_loop(step, x_T, K, noise, generator, True), K


@torch.no_grad()
def ddim_sample(
    diffusion: GaussianDiffusion,
    model_fn: ModelFn,
    shape: Sequence[int],
    *,
    eta: float = 0.0,
    clip_denoised: bool = True,
    denoised_fn: DenoisedFn = None,
    x_T: Optional[torch.Tensor] = None,
    noise: Optional[torch.Tensor] = None,
    dtype: Optional[torch.dtype] = None,
    generator: Optional[torch.Generator] = None,
) -> tuple[torch.Tensor, int]:
    """DDIM sampling (improved-diffusion ``ddim_sample_loop``) on the diffusion's respaced
    grid: ``ddim_step`` for t = K-1, ..., 0. With ``eta == 0`` no step noise is drawn and
    ``noise`` is ignored. Other arguments as in ``ddpm_sample``.

    Returns ``(x_0 [*shape], nfe = K)``.
    """
    _check_diffusion(diffusion)
    eta = _check_eta(diffusion, eta)
    stochastic = eta > 0.0
    shape, dtype, device, x_T, noise, model_fn, denoised_fn = _prepare(
        diffusion, model_fn, shape, x_T, noise, dtype, generator,
        clip_denoised=clip_denoised, denoised_fn=denoised_fn,
    )
    if not stochastic:
        noise = None

    def step(x, t, z):
        return ddim_step(
            diffusion, model_fn, x, t, z, eta=eta, clip_denoised=clip_denoised,
            denoised_fn=denoised_fn,
        )["sample"]

    K = diffusion.num_timesteps
    return _run_reverse_loop(step, x_T, K, noise, generator, stochastic), K


@torch.no_grad()
def ddim_invert(
    diffusion: GaussianDiffusion,
    model_fn: ModelFn,
    x0: torch.Tensor,
    *,
    clip_denoised: bool = False,
    denoised_fn: DenoisedFn = None,
    fixed_point_iters: int = 0,
) -> tuple[torch.Tensor, int]:
    """Deterministic DDIM encoding x_0 -> x_T, the mirror of ``ddim_sample(eta=0)``'s grid
    (alpha_bar = 1 -> abar_0 -> ... -> abar_{K-1}): a lift step with eps from the model at
    (x_0, 0), then ``ddim_reverse_step`` for t = 0, ..., K-2, each refined by
    ``fixed_point_iters`` iterations of the implicit equation ``ddim_step(x_t, t) = x_{t-1}``
    (see the JAX twin for the error analysis).

    Returns ``(x_T [B, ...], nfe = K (1 + fixed_point_iters))``.
    """
    _check_diffusion(diffusion)
    n_iter = check_int("fixed_point_iters", fixed_point_iters, minimum=0)
    x0 = check_array("x0", _check_tensor("x0", x0))
    if x0.ndim < 1 or x0.shape[0] < 1:
        raise ValueError(f"x0 must have a batch axis, shape [B, ...] with B >= 1, got shape "
                         f"{tuple(x0.shape)}")
    model_fn, denoised_fn = _checked_fns(diffusion, model_fn, denoised_fn, clip_denoised, x0.ndim)
    K = diffusion.num_timesteps
    B = x0.shape[0]

    def refine(x, y, t):
        for _ in range(n_iter):
            eps = _eps_at(diffusion, model_fn, x, t, clip_denoised, denoised_fn)
            x = _invert_update(diffusion, y, t, eps)
        return x

    x = _ddim_lift_step(diffusion, model_fn, x0, clip_denoised=clip_denoised, denoised_fn=denoised_fn)
    x = refine(x, x0, torch.zeros((B,), dtype=torch.int64, device=x0.device))
    for j in range(K - 1):
        t = torch.full((B,), j, dtype=torch.int64, device=x0.device)
        y = x
        x = ddim_reverse_step(
            diffusion, model_fn, y, t, clip_denoised=clip_denoised, denoised_fn=denoised_fn
        )["sample"]
        x = refine(x, y, t + 1)
    return x, K * (1 + n_iter)
