"""Few-step probability-flow samplers in PyTorch: EDM's Heun sampler (Karras et al. 2022)
and DPM-Solver++(2M) (Lu et al. 2022), for VE, VP and sub-VP SDEs.

Twin: ``jax_impl/fast_samplers.py`` (same public names and semantics; the equations are in
its docstring). The drivers loop over the same float64 noise-level grids from
``spec.schedules`` (cast at use) with the same step functions. Randomness (the sampler
contract of ``torch_ref.samplers``: the twin's parameters, ``generator=`` in place of
``rng``): the prior noise ``z`` is drawn first from ``generator`` (the start ``x_T =
x_hat_0 = sigma_max z``), then (with churn) one ``[*shape]`` draw per step, unless
``x_T`` / ``noise`` are given. Samples live on the device of ``x_T`` / ``noise``, else
``generator.device``, else the CPU.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch

from spec import grids, schedules
from spec.sampler_args import (  # DPM_GRIDS, DEFAULT_T_MIN re-exported
    DEFAULT_T_MIN,
    DPM_GRIDS,
    check_callable,
    check_sample_shape,
    check_sigma_range,
    checked_fn,
)
from spec.validate import check_choice, check_float, check_int
from torch_ref.sde import VESDE, subVPSDE
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
    "DPM_GRIDS",
    "DEFAULT_T_MIN",
    "sigma_from_t",
    "t_from_sigma",
    "edm_denoiser",
    "edm_heun_step",
    "dpm_solver_pp_step",
    "edm_heun_sample",
    "dpm_solver_pp_sample",
]


def sigma_from_t(sde, t) -> torch.Tensor:
    """EDM noise level ``sigma(t) = std(t) / m(t)`` (``t`` scalar or ``[B]``; same shape)."""
    t = torch.as_tensor(t)
    flat = t.reshape(-1)
    mean, std = sde.marginal_prob(torch.ones((flat.shape[0], 1), dtype=flat.dtype,
                                             device=flat.device), flat)
    return (std / mean[:, 0]).reshape(t.shape)


def t_from_sigma(sde, sigma) -> torch.Tensor:
    """The exact inverse of ``sigma_from_t``."""
    sigma = torch.as_tensor(sigma)
    if isinstance(sde, VESDE):
        return torch.log(sigma / sde.sigma_min) / math.log(sde.sigma_max / sde.sigma_min)
    if isinstance(sde, subVPSDE):
        L = 2.0 * torch.asinh(0.5 * sigma)
    else:
        L = torch.log1p(sigma**2)
    b0, db = sde.beta_min, sde.beta_max - sde.beta_min
    return 2.0 * L / (b0 + torch.sqrt(b0**2 + 2.0 * db * L))


def edm_denoiser(sde, score_fn: ScoreFn, x_hat: torch.Tensor, sigma) -> torch.Tensor:
    """``D(x_hat; sigma) = x_hat + (std^2 / m) score(m x_hat, t(sigma))`` ``[B, ...]``."""
    B = x_hat.shape[0]
    sigma = torch.as_tensor(sigma, dtype=x_hat.dtype, device=x_hat.device)
    t = torch.clamp(t_from_sigma(sde, sigma), 0.0, sde.T)
    vec_t = t.expand(B)
    mean, std = sde.marginal_prob(torch.ones((B, 1), dtype=x_hat.dtype, device=x_hat.device), vec_t)
    m = mean[:, 0]
    x = append_dims(m, x_hat.ndim) * x_hat
    score = score_fn(x, vec_t)
    return x_hat + append_dims(std**2 / m, x_hat.ndim) * score


def edm_heun_step(denoise_fn, x_hat, sigma, sigma_next, z, *, gamma=0.0, S_noise=1.0,
                  sigma_cap=None, second_order: bool = True):
    """One step of Karras et al. Alg. 2 (Alg. 1 when ``gamma = 0``); as the JAX twin."""
    sigma_hat = sigma * (1.0 + gamma)
    if sigma_cap is not None:
        sigma_hat = torch.minimum(sigma_hat, sigma_cap)
    x_hat = x_hat + torch.sqrt(torch.clamp((sigma_hat - sigma) * (sigma_hat + sigma), min=0.0)) * S_noise * z
    d = (x_hat - denoise_fn(x_hat, sigma_hat)) / sigma_hat
    x_next = x_hat + (sigma_next - sigma_hat) * d
    if not second_order:
        return x_next
    d_next = (x_next - denoise_fn(x_next, sigma_next)) / sigma_next
    return x_hat + (sigma_next - sigma_hat) * 0.5 * (d + d_next)


def dpm_solver_pp_step(denoise_fn, x_hat, sigma, sigma_next, sigma_prev, denoised_prev,
                       *, first_order: bool):
    """One DPM-Solver++(2M) step; returns ``(x_hat_next, D(x_hat; sigma))``; as the JAX twin."""
    denoised = denoise_fn(x_hat, sigma)
    ratio = sigma_next / sigma
    one_minus = 1.0 - ratio
    if first_order:
        return ratio * x_hat + one_minus * denoised, denoised
    h = torch.log(sigma) - torch.log(sigma_next)
    h_last = torch.log(sigma_prev) - torch.log(sigma)
    half_inv_r = 0.5 * h / h_last
    corrected = (1.0 + half_inv_r) * denoised - half_inv_r * denoised_prev
    return ratio * x_hat + one_minus * corrected, denoised


def _sigma_range(sde, sigma_min, sigma_max, dtype):
    ends = sigma_from_t(sde, torch.tensor([0.0, sde.T, DEFAULT_T_MIN], dtype=dtype))
    s_lo, s_T, s_def = (float(v) for v in ends)
    smin, smax = check_sigma_range(sigma_min, sigma_max, s_lo, s_T, s_def)
    return smin, smax, s_T


def _prepare(sde, score_fn, shape, num_steps, x_T, noise, dtype, generator, needs_noise):
    """Validate a driver's inputs; return ``(shape, num_steps, dtype, score_fn (checked),
    (start, given), noise)``: ``start`` is ``x_T`` when given, else the prior noise ``z``
    drawn from ``generator`` (the drivers then start at ``sigma_max z``)."""
    check_sde(sde)
    check_callable("score_fn", score_fn, "score_fn(x, t)")
    shape = check_sample_shape(shape, min_ndim=2)
    num_steps = check_int("num_steps", num_steps, minimum=1)
    check_generator("generator", generator)
    dtype = resolve_dtype(dtype, x_T, noise)
    device = next((a.device for a in (x_T, noise) if torch.is_tensor(a)),
                  generator.device if generator is not None else None)
    if x_T is not None:
        x_T = check_array("x_T", x_T, shape, dtype, device)
    if noise is not None:
        if not needs_noise:
            raise ValueError("noise is only used with S_churn > 0 (the stochastic EDM sampler)")
        noise = check_array("noise", noise, (num_steps,) + shape, dtype, device)
    start = x_T if x_T is not None else torch.randn(shape, generator=generator, dtype=dtype,
                                                    device=device)
    return shape, num_steps, dtype, checked_fn("score_fn", score_fn, check_fn_output), \
        (start, x_T is not None), noise


@torch.no_grad()
def edm_heun_sample(
    sde,
    score_fn: ScoreFn,
    shape: Sequence[int],
    *,
    num_steps: int = 18,
    sigma_min: Optional[float] = None,
    sigma_max: Optional[float] = None,
    rho: float = 7.0,
    S_churn: float = 0.0,
    S_tmin: float = 0.0,
    S_tmax: float = float("inf"),
    S_noise: float = 1.0,
    x_T: Optional[torch.Tensor] = None,
    noise: Optional[torch.Tensor] = None,
    dtype: Optional[torch.dtype] = None,
    generator: Optional[torch.Generator] = None,
):
    """EDM's Heun sampler on the Karras ladder; as the JAX twin. Returns ``(samples, nfe)``."""
    S_churn = check_float("S_churn", S_churn, nonnegative=True)
    S_noise = check_float("S_noise", S_noise, nonnegative=True)
    S_tmin, S_tmax = float(S_tmin), float(S_tmax)
    rho = check_float("rho", rho, positive=True)
    stochastic = S_churn > 0
    shape, n, dtype, score_fn, (z, given), noise = _prepare(
        sde, score_fn, shape, num_steps, x_T, noise, dtype, generator, needs_noise=stochastic)
    smin, smax, s_T = _sigma_range(sde, sigma_min, sigma_max, dtype)
    sigmas = torch.as_tensor(schedules.karras_sigmas(n, smin, smax, rho), dtype=dtype,
                             device=z.device)
    cap = torch.as_tensor(s_T, dtype=dtype, device=z.device)
    gamma_max = min(S_churn / n, math.sqrt(2.0) - 1.0)

    def denoise_fn(x_hat, sigma):
        return edm_denoiser(sde, score_fn, x_hat, sigma)

    x_hat = z if given else smax * z
    for i in range(n):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        if stochastic:
            gamma = gamma_max if S_tmin <= float(sigma) <= S_tmax else 0.0
            z_i = noise[i] if noise is not None else torch.randn(
                shape, generator=generator, dtype=dtype, device=z.device)
        else:
            gamma, z_i = 0.0, torch.zeros_like(z)
        x_hat = edm_heun_step(denoise_fn, x_hat, sigma, sigma_next, z_i, gamma=gamma,
                              S_noise=S_noise, sigma_cap=cap, second_order=i < n - 1)
    return x_hat, 2 * n - 1


@torch.no_grad()
def dpm_solver_pp_sample(
    sde,
    score_fn: ScoreFn,
    shape: Sequence[int],
    *,
    num_steps: int = 20,
    sigma_min: Optional[float] = None,
    sigma_max: Optional[float] = None,
    grid: str = "logsnr",
    rho: float = 7.0,
    x_T: Optional[torch.Tensor] = None,
    dtype: Optional[torch.dtype] = None,
    generator: Optional[torch.Generator] = None,
):
    """DPM-Solver++(2M); as the JAX twin. Returns ``(samples, nfe = num_steps)``."""
    check_choice("grid", grid, DPM_GRIDS)
    rho = check_float("rho", rho, positive=True)
    shape, n, dtype, score_fn, (z, given), _ = _prepare(
        sde, score_fn, shape, num_steps, x_T, None, dtype, generator, needs_noise=False)
    smin, smax, _ = _sigma_range(sde, sigma_min, sigma_max, dtype)
    table = grids.dpm_solver_sigmas(grid, n, smin, smax, rho)
    sigmas = torch.as_tensor(table, dtype=dtype, device=z.device)

    def denoise_fn(x_hat, sigma):
        return edm_denoiser(sde, score_fn, x_hat, sigma)

    x_hat = z if given else smax * z
    d_prev = None
    for i in range(n - 1):
        sigma_prev = sigmas[i - 1] if i > 0 else None
        x_hat, d_prev = dpm_solver_pp_step(denoise_fn, x_hat, sigmas[i], sigmas[i + 1],
                                           sigma_prev, d_prev, first_order=i == 0)
    x_hat = denoise_fn(x_hat, sigmas[n - 1])
    return x_hat, n
