"""Few-step probability-flow samplers: EDM's Heun sampler (Karras et al. 2022, Alg. 1-2)
and DPM-Solver++(2M) (Lu et al. 2022, Alg. 2), for VE, VP and sub-VP SDEs.

Twin: ``torch_ref/fast_samplers.py`` (same public names and semantics, PyTorch).

Both work in EDM's sigma-parametrisation. A score SDE perturbs data as
``x_t = m(t) x_0 + std(t) z`` (``sde.marginal_prob``: VE m = 1; VP std^2 = 1 - m^2;
sub-VP std = 1 - m^2). With the scaled state and noise level

    x_hat = x / m(t),      sigma(t) = std(t) / m(t)            (EDM's s(t) = m(t))

the probability-flow ODE becomes (EDM eq. 3 with s = 1)

    d x_hat / d sigma = (x_hat - D(x_hat; sigma)) / sigma,
    D(x_hat; sigma) = (x + std^2 score(x, t)) / m = x_hat + (std^2 / m) score(x, t),

D being Tweedie's posterior mean of x_0 (``x = m x_hat``, ``t = t(sigma)``). The map
``t(sigma)`` is the exact inverse of ``sigma(t)``:

    VE:     t = log(sigma / sigma_min) / log(sigma_max / sigma_min)
    VP:     L = -2 log m = log(1 + sigma^2)
    sub-VP: L = -2 log m = 2 asinh(sigma / 2)       (from sigma = (1 - m^2) / m)
    VP, sub-VP: 1/2 (b1 - b0) t^2 + b0 t = L  =>  t = 2 L / (b0 + sqrt(b0^2 + 2 (b1 - b0) L)).

Noise-level grids are float64 data from ``spec.schedules`` (cast at use): the Karras ladder
``karras_sigmas(n, sigma_min, sigma_max, rho)`` (n levels and a final 0) or, for
DPM-Solver++'s ``"logsnr"`` grid (uniform in lambda = -log sigma = half the log-SNR),
``geometric_sigmas(sigma_max, sigma_min, n)`` and a final 0. Defaults: ``sigma_max =
sigma(T)``, ``sigma_min = sigma(1e-3)`` (score_sde's ODE end time). The last step, to
sigma = 0, is a first-order step, i.e. ``x <- D(x_hat; sigma_min)``: the denoised output,
in data space (m(0) = 1).

* EDM Heun (``edm_heun_sample``), per step i (sigma_i -> sigma_{i+1}):
      gamma_i = min(S_churn / n, sqrt(2) - 1) if S_tmin <= sigma_i <= S_tmax else 0
      sigma_hat = min(sigma_i (1 + gamma_i), sigma(T))        (never above the SDE's range)
      x_hat <- x_hat + sqrt(sigma_hat^2 - sigma_i^2) S_noise z_i
      d = (x_hat - D(x_hat; sigma_hat)) / sigma_hat;   x' = x_hat + (sigma_{i+1} - sigma_hat) d
      if sigma_{i+1} > 0:  d' = (x' - D(x'; sigma_{i+1})) / sigma_{i+1},
                           x' = x_hat + (sigma_{i+1} - sigma_hat) (d + d') / 2.
  Start ``x_hat_0 = sigma_max z`` (EDM; for VE with the default sigma_max this is exactly
  ``sde.prior_from_noise(z)``): the driver's ``x_T``. NFE = 2 n - 1. ``S_churn = 0`` (default) is the
  deterministic Algorithm 1.
* DPM-Solver++(2M) (``dpm_solver_pp_sample``), with h_i = lambda_{i+1} - lambda_i:
      D_i = D(x_hat_i; sigma_i)
      first step and the last (to 0): x_hat_{i+1} = (sigma_{i+1}/sigma_i) x_hat_i - expm1(-h_i) D_i
      else, r_i = h_{i-1} / h_i:      D' = (1 + 1/(2 r_i)) D_i - 1/(2 r_i) D_{i-1},
                                      x_hat_{i+1} = (sigma_{i+1}/sigma_i) x_hat_i - expm1(-h_i) D'
  (the data-prediction multistep of Lu et al. written for x_hat; in x-space it is their
  ``x_t = (std_t/std_s) x_s - m_t expm1(-h) D'``). Start ``x_hat_0 = sigma_max z``.
  NFE = n (one evaluation per noise level).

Layout as the other samplers: pure steps (``edm_heun_step``, ``dpm_solver_pp_step``) take
the noise / history explicitly; the drivers run the first n - 1 steps in one
``jax.lax.scan`` and the final step to sigma = 0 after it. Randomness (the sampler
contract of ``jax_impl.samplers``), drawn per sample (``jax_impl.sharding.per_sample_normal``,
so independent of the batch size and its sharding): the start ``x_T = x_hat_0 = sigma_max z``
with z's row j from ``fold_in(jax.random.split(rng)[0], j)`` (or ``x_T=`` given), churn
noise of step i for sample j from ``fold_in(fold_in(split(rng)[1], i), j)`` (or ``noise=``
``[n, *shape]``). Drivers are plain
functions: jit them with ``sde``, ``score_fn``, ``shape`` and the keywords static; new
keys or new parameters never recompile. Arguments are checked while tracing, before
compilation (pre-drawn arrays: shape, floating dtype, concrete NaN / Inf; ``rng``: one
PRNG key), and what ``score_fn`` returns at trace time (shape of x, floating dtype).
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jax_impl.sde import VESDE, subVPSDE
from jax_impl.sharding import per_sample_normal
from jax_impl.utils import append_dims
from jax_impl.validate import check_array, check_fn_output, check_key, check_sde, resolve_dtype
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

ScoreFn = Callable[[jax.Array, jax.Array], jax.Array]


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


# ------------------------------------------------------------------- sigma <-> t


def sigma_from_t(sde, t) -> jax.Array:
    """EDM noise level ``sigma(t) = std(t) / m(t)`` (``t`` scalar or ``[B]``; same shape)."""
    t = jnp.asarray(t)
    flat = jnp.atleast_1d(t)
    mean, std = sde.marginal_prob(jnp.ones((flat.shape[0], 1), flat.dtype), flat)
    return (std / mean[:, 0]).reshape(t.shape)


def t_from_sigma(sde, sigma) -> jax.Array:
    """The exact inverse of ``sigma_from_t`` (formulas in the module docstring)."""
    sigma = jnp.asarray(sigma)
    if isinstance(sde, VESDE):
        return jnp.log(sigma / sde.sigma_min) / math.log(sde.sigma_max / sde.sigma_min)
    if isinstance(sde, subVPSDE):
        L = 2.0 * jnp.arcsinh(0.5 * sigma)
    else:
        L = jnp.log1p(sigma**2)
    b0, db = sde.beta_min, sde.beta_max - sde.beta_min
    return 2.0 * L / (b0 + jnp.sqrt(b0**2 + 2.0 * db * L))


def edm_denoiser(sde, score_fn: ScoreFn, x_hat: jax.Array, sigma) -> jax.Array:
    """``D(x_hat; sigma) = x_hat + (std^2 / m) score(m x_hat, t(sigma))`` ``[B, ...]``
    (Tweedie's E[x_0 | x_t]); ``sigma`` a scalar > 0. One score evaluation."""
    B = x_hat.shape[0]
    t = jnp.clip(t_from_sigma(sde, sigma), 0.0, sde.T)  # clip: round-off at the ends only
    vec_t = jnp.full((B,), t, dtype=x_hat.dtype)
    mean, std = sde.marginal_prob(jnp.ones((B, 1), x_hat.dtype), vec_t)
    m = mean[:, 0]
    x = append_dims(m, x_hat.ndim) * x_hat
    score = score_fn(x, vec_t)
    return x_hat + append_dims(std**2 / m, x_hat.ndim) * score


# -------------------------------------------------------------------------- steps


def edm_heun_step(denoise_fn, x_hat, sigma, sigma_next, z, *, gamma=0.0, S_noise=1.0,
                  sigma_cap=None, second_order: bool = True):
    """One step of Karras et al. Alg. 2 (Alg. 1 when ``gamma = 0``) from ``sigma`` to
    ``sigma_next``; ``denoise_fn(x_hat, sigma) -> D``; ``z`` the churn noise ``[B, ...]``
    (unused when ``gamma = 0``). ``second_order=False`` is the plain Euler step (the final
    step to sigma = 0). Returns ``x_hat_next``."""
    sigma_hat = sigma * (1.0 + gamma)
    if sigma_cap is not None:
        sigma_hat = jnp.minimum(sigma_hat, sigma_cap)
    # (s_hat - s)(s_hat + s), not s_hat^2 - s^2: exactly 0 when gamma = 0, even under FMA
    x_hat = x_hat + jnp.sqrt(jnp.maximum((sigma_hat - sigma) * (sigma_hat + sigma), 0.0)) * S_noise * z
    d = (x_hat - denoise_fn(x_hat, sigma_hat)) / sigma_hat
    x_next = x_hat + (sigma_next - sigma_hat) * d
    if not second_order:
        return x_next
    d_next = (x_next - denoise_fn(x_next, sigma_next)) / sigma_next
    return x_hat + (sigma_next - sigma_hat) * 0.5 * (d + d_next)


def dpm_solver_pp_step(denoise_fn, x_hat, sigma, sigma_next, sigma_prev, denoised_prev,
                       *, first_order):
    """One DPM-Solver++(2M) step from ``sigma`` to ``sigma_next`` (> 0 unless
    ``first_order``); ``denoised_prev`` = D at ``sigma_prev`` (ignored when
    ``first_order``, a bool or boolean scalar). Returns ``(x_hat_next, D(x_hat; sigma))``."""
    denoised = denoise_fn(x_hat, sigma)
    ratio = sigma_next / sigma  # = exp(-h)
    one_minus = 1.0 - ratio  # = -expm1(-h)
    if first_order is True:
        return ratio * x_hat + one_minus * denoised, denoised
    h = jnp.log(sigma) - jnp.log(sigma_next)
    h_last = jnp.log(sigma_prev) - jnp.log(sigma)
    half_inv_r = 0.5 * h / h_last  # 1 / (2 r)
    corrected = (1.0 + half_inv_r) * denoised - half_inv_r * denoised_prev
    d_eff = jnp.where(first_order, denoised, corrected)
    return ratio * x_hat + one_minus * d_eff, denoised


# ------------------------------------------------------------------------ drivers


def _sigma_range(sde, sigma_min, sigma_max, dtype):
    """Validated ``(sigma_min, sigma_max)`` as floats inside the SDE's ``[sigma(0), sigma(T)]``."""
    with jax.ensure_compile_time_eval():  # constants of the grid, known before tracing
        ends = sigma_from_t(sde, jnp.asarray([0.0, sde.T, DEFAULT_T_MIN], dtype))
        s_lo, s_T, s_def = (float(v) for v in np.asarray(ends))
    smin, smax = check_sigma_range(sigma_min, sigma_max, s_lo, s_T, s_def)
    return smin, smax, s_T


def _prepare(rng, sde, score_fn, shape, num_steps, x_T, noise, dtype, needs_noise):
    """Validate a driver's inputs; return ``(shape, num_steps, dtype, score_fn (checked),
    x_T or None, z_key or None, noise, step_key)``: the start is
    ``sigma_max * per_sample_normal(z_key, shape)`` when ``x_T`` is None."""
    check_sde(sde)
    check_callable("score_fn", score_fn, "score_fn(x, t)")
    shape = check_sample_shape(shape, min_ndim=2)
    num_steps = check_int("num_steps", num_steps, minimum=1)
    dtype = resolve_dtype(dtype, x_T, noise)
    if x_T is not None:
        x_T = check_array("x_T", x_T, shape, dtype)
    if noise is not None:
        if not needs_noise:
            raise ValueError("noise is only used with S_churn > 0 (the stochastic EDM sampler)")
        noise = check_array("noise", noise, (num_steps,) + shape, dtype)
    z_key = step_key = None
    if x_T is None or (needs_noise and noise is None):
        if rng is None:
            raise TypeError("rng must be a jax.random key (e.g. jax.random.key(0)) unless x_T "
                            "(and, with S_churn > 0, noise) are given; got None")
        z_key, step_key = jax.random.split(check_key("rng", rng))
    elif rng is not None:
        check_key("rng", rng)
    score_fn = checked_fn("score_fn", score_fn, check_fn_output)
    return shape, num_steps, dtype, score_fn, x_T, z_key, noise, step_key


def edm_heun_sample(
    rng: Optional[jax.Array],
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
    x_T: Optional[jax.Array] = None,
    noise: Optional[jax.Array] = None,
    dtype=None,
):
    """EDM's Heun sampler (Karras et al. 2022 Alg. 1, with ``S_churn > 0`` Alg. 2) on the
    Karras ladder ``spec.schedules.karras_sigmas(num_steps, sigma_min, sigma_max, rho)``.

    Args:
      rng: key (unused, may be None, when ``x_T`` and, with churn, ``noise`` are given).
      sde: ``VESDE``, ``VPSDE`` or ``subVPSDE``; score_fn: ``score_fn(x, t [B])``.
      shape: ``[B, ...]``; num_steps: n noise levels (NFE = 2 n - 1).
      sigma_min, sigma_max: ends of the ladder (defaults sigma(1e-3), sigma(T)); must lie
        in the SDE's range ``[sigma(0), sigma(T)]``.
      S_churn, S_tmin, S_tmax, S_noise: EDM's stochasticity (``S_churn >= 0``).
      x_T: the start ``x_hat_0 = sigma_max z`` ``[*shape]`` (EDM's scaled state; for VE
        with the default sigma_max, ``sde.prior_from_noise(z)``); noise: churn noise
        ``[num_steps, *shape]`` (only with ``S_churn > 0``).
      dtype: default that of x_T / noise, else float32.

    Returns:
      ``(samples [*shape], nfe)`` with nfe a Python int.
    """
    S_churn = check_float("S_churn", S_churn, nonnegative=True)
    S_noise = check_float("S_noise", S_noise, nonnegative=True)
    S_tmin = float(S_tmin)
    S_tmax = float(S_tmax)
    rho = check_float("rho", rho, positive=True)
    shape, n, dtype, score_fn, x_T, z_key, noise, step_key = _prepare(
        rng, sde, score_fn, shape, num_steps, x_T, noise, dtype, needs_noise=S_churn > 0
    )
    smin, smax, s_T = _sigma_range(sde, sigma_min, sigma_max, dtype)
    sigmas = jnp.asarray(schedules.karras_sigmas(n, smin, smax, rho), dtype=dtype)  # [n + 1]
    gamma_max = min(S_churn / n, math.sqrt(2.0) - 1.0)
    stochastic = S_churn > 0

    def denoise_fn(x_hat, sigma):
        return edm_denoiser(sde, score_fn, x_hat, sigma)

    def step(x_hat, i, z_i, second_order):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        if stochastic:
            gamma = jnp.where((sigma >= S_tmin) & (sigma <= S_tmax), gamma_max, 0.0).astype(dtype)
            if z_i is None:
                z_i = per_sample_normal(jax.random.fold_in(step_key, i), shape, dtype)
        else:
            gamma, z_i = 0.0, jnp.zeros(shape, dtype)
        return edm_heun_step(denoise_fn, x_hat, sigma, sigma_next, z_i, gamma=gamma,
                             S_noise=S_noise, sigma_cap=jnp.asarray(s_T, dtype),
                             second_order=second_order)

    x_hat = smax * per_sample_normal(z_key, shape, dtype) if x_T is None else x_T
    idx = jnp.arange(n - 1, dtype=jnp.int32)
    xs = (idx, None if noise is None else noise[: n - 1])
    x_hat, _ = jax.lax.scan(lambda x, inp: (step(x, inp[0], inp[1], True), None), x_hat, xs)
    x_hat = step(x_hat, jnp.int32(n - 1), None if noise is None else noise[n - 1], False)
    return x_hat, 2 * n - 1


def dpm_solver_pp_sample(
    rng: Optional[jax.Array],
    sde,
    score_fn: ScoreFn,
    shape: Sequence[int],
    *,
    num_steps: int = 20,
    sigma_min: Optional[float] = None,
    sigma_max: Optional[float] = None,
    grid: str = "logsnr",
    rho: float = 7.0,
    x_T: Optional[jax.Array] = None,
    dtype=None,
):
    """DPM-Solver++(2M) (Lu et al. 2022, data prediction, multistep) on ``num_steps`` noise
    levels from ``sigma_max`` to ``sigma_min`` and a final step to 0.

    Args:
      grid: ``"logsnr"`` (uniform in lambda = -log sigma) or ``"karras"`` (with ``rho``).
      x_T: the start ``x_hat_0 = sigma_max z`` (deterministic after it: no ``noise``).
      Others as ``edm_heun_sample`` (no churn).

    Returns:
      ``(samples [*shape], nfe = num_steps)``.
    """
    check_choice("grid", grid, DPM_GRIDS)
    rho = check_float("rho", rho, positive=True)
    shape, n, dtype, score_fn, x_T, z_key, _, _ = _prepare(
        rng, sde, score_fn, shape, num_steps, x_T, None, dtype, needs_noise=False)
    smin, smax, _ = _sigma_range(sde, sigma_min, sigma_max, dtype)
    table = grids.dpm_solver_sigmas(grid, n, smin, smax, rho)
    sigmas = jnp.asarray(table, dtype=dtype)  # [n + 1], last = 0
    # sigma_{i-1} for step i (a placeholder for i = 0, where it is unused)
    sigmas_prev = jnp.concatenate([sigmas[:1] * 2.0, sigmas[:-2]])

    def denoise_fn(x_hat, sigma):
        return edm_denoiser(sde, score_fn, x_hat, sigma)

    x_hat = smax * per_sample_normal(z_key, shape, dtype) if x_T is None else x_T

    def body(carry, i):
        x, d_prev = carry
        x, d = dpm_solver_pp_step(denoise_fn, x, sigmas[i], sigmas[i + 1], sigmas_prev[i],
                                  d_prev, first_order=i == 0)
        return (x, d), None

    (x_hat, _), _ = jax.lax.scan(body, (x_hat, jnp.zeros_like(x_hat)),
                                 jnp.arange(n - 1, dtype=jnp.int32))
    # final step to sigma = 0: x <- D(x_hat; sigma_min)
    x_hat = denoise_fn(x_hat, sigmas[n - 1])
    return x_hat, n
