"""Discrete-time samplers of a ``GaussianDiffusion``: DDPM ancestral sampling, DDIM (any
eta) and deterministic DDIM inversion, on any respaced process.

Twin: ``torch_ref/samplers_discrete.py`` (same names and semantics, PyTorch).

Semantics are improved-diffusion's (Nichol & Dhariwal 2021) ``p_sample``, ``ddim_sample``
and ``ddim_reverse_sample``; ``t`` is an integer index into the respaced process (the model
sees ``diffusion.scale_timesteps(t)``), and all maths of p(x_{t-1} | x_t) (mean types,
variance types, x_0 clipping) comes from ``GaussianDiffusion.p_mean_variance``.

* DDPM ancestral step (Ho et al. 2020 alg. 2):
      x_{t-1} = mu_theta(x_t, t) + 1[t > 0] exp(1/2 log Sigma_theta(x_t, t)) z.
* DDIM step (Song et al. 2021 eq. 12), with eps re-derived from the (clipped) x_0:
      eps   = (x_t / sqrt(abar_t) - x0_hat) / sqrt(1/abar_t - 1)
      sigma = eta sqrt((1 - abar_{t-1}) / (1 - abar_t)) sqrt(1 - abar_t / abar_{t-1})
      x_{t-1} = sqrt(abar_{t-1}) x0_hat + sqrt(1 - abar_{t-1} - sigma^2) eps + 1[t > 0] sigma z.
  ``eta = 0`` is deterministic (the DDIM ODE), ``eta = 1`` has DDPM's posterior variance.
* DDIM reverse step (the same update run forward in time, eta = 0):
      x_{t+1} = sqrt(abar_{t+1}) x0_hat(x_t, t) + sqrt(1 - abar_{t+1}) eps(x_t, t).
  ``ddim_invert`` runs it on the mirror of ``ddim_sample``'s grid (abar = 1 -> abar_0 ->
  ... -> abar_{K-1}) so that its output decodes back to x_0, optionally refining each step
  by fixed-point iterations of the implicit equation ``ddim_step(x_t) = x_{t-1}``.

Layout: pure step functions take the noise ``z`` (``ddpm_step``, ``ddim_step``,
``ddim_reverse_step``); the drivers (``ddpm_sample``, ``ddim_sample``, ``ddim_invert``) run
the whole trajectory as one ``jax.lax.scan`` over loop index i = 0..K-1 (timestep
t = K-1-i), drawing per sample (``jax_impl.sharding.per_sample_normal``) sample j's prior
from ``fold_in(split(rng)[0], j)`` and its step noise from ``fold_in(fold_in(split(rng)[1],
i), j)``, so the samples do not depend on the batch size or its sharding, or taking
pre-drawn ``x_T`` / ``noise`` arrays (parity tests, inversion). They are plain functions:
jit them with ``diffusion``, ``model_fn``, ``shape`` and the keyword options static, e.g.
by closing over them; a new key or new network parameters passed as traced arguments
never recompile. Each returns ``(samples, nfe)`` with ``nfe`` the number of model
evaluations (a Python int).

Input checks raise ``TypeError`` / ``ValueError`` while tracing, before compilation: the
options (``eta``, bools), ``rng`` (one PRNG key), ``x_T`` / ``noise`` / ``x0`` (shape,
floating dtype, concrete NaN / Inf), and at trace time what ``model_fn`` returns (x's
shape, or twice its channels for a learned variance, and a floating dtype) and what
``denoised_fn`` returns (x0_hat's shape, floating).

``clip_denoised`` (default True, improved-diffusion's) clamps the predicted x_0 to
[-1, 1]: right for images scaled to [-1, 1], wrong for other data. The drivers keep the
default but warn (``UserWarning``) when it is on for data that are not images (rank < 4,
e.g. ``[B, D]`` points): pass ``clip_denoised=False`` there.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp

from jax_impl.diffusion import GaussianDiffusion
from jax_impl.sharding import per_sample_normal
from jax_impl.utils import append_dims
from jax_impl.validate import (
    check_array,
    check_diffusion,
    check_floating,
    check_fn_output,
    check_key,
    resolve_dtype,
)
from spec.sampler_args import (
    check_callable,
    check_clip_denoised,
    check_ddim_eta,
    check_sample_shape,
    checked_fn,
)
from spec.validate import check_int

ModelFn = Callable[[jax.Array, jax.Array], jax.Array]
DenoisedFn = Optional[Callable[[jax.Array], jax.Array]]

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
    """``shape_of(x)`` for ``model_fn``'s output: x's shape, with the channel axis doubled
    when the diffusion learns its variance (mean part, then variance part)."""
    def shape_of(x):
        shape = list(jnp.shape(x))
        if diffusion.learned_variance and len(shape) >= 2:
            shape[diffusion.channel_axis % len(shape)] *= 2
        return tuple(shape)

    return shape_of


def _checked_fns(diffusion, model_fn, denoised_fn, clip_denoised, ndim):
    """Validate the model-side arguments of a driver; return ``(model_fn, denoised_fn)``
    wrapped so that each call checks its output at trace time."""
    check_callable("model_fn", model_fn, "model_fn(x, t)")
    check_clip_denoised(clip_denoised, ndim, "[B, H, W, C]")
    model_fn = checked_fn("model_fn", model_fn, check_fn_output, _model_output_shape(diffusion))
    if denoised_fn is not None:
        check_callable("denoised_fn", denoised_fn, "denoised_fn(x0)")
        denoised_fn = checked_fn("denoised_fn", denoised_fn, check_fn_output)
    return model_fn, denoised_fn


def _coef(diffusion: GaussianDiffusion, name: str, t, x) -> jax.Array:
    """``table[t]`` cast to the computing dtype, shaped ``[B, 1, ...]`` against ``x``."""
    dtype = diffusion.dtype if diffusion.dtype is not None else jnp.result_type(x)
    return append_dims(jnp.asarray(diffusion.table(name), dtype=dtype)[t], x.ndim)


def _as_t(t, x) -> jax.Array:
    """A scalar or ``[B]`` integer step index as ``[B]`` (validated by the diffusion)."""
    t = jnp.asarray(t)
    if not jnp.issubdtype(t.dtype, jnp.integer):
        raise TypeError(f"t must be an integer index into the respaced process, got dtype {t.dtype}")
    if t.ndim == 0:
        t = jnp.broadcast_to(t, (jnp.shape(x)[0],))
    return t


def _check_eta(diffusion: GaussianDiffusion, eta) -> float:
    """``eta >= 0`` with ``sigma_t^2 <= 1 - abar_{t-1}`` at every step (float64 tables)."""
    return check_ddim_eta(eta, diffusion.table("alphas_cumprod"),
                          diffusion.table("alphas_cumprod_prev"))


def _prepare(rng, diffusion, model_fn, shape, x_T, noise, dtype, *, needs_noise: bool,
             clip_denoised, denoised_fn):
    """Validate a driver's inputs; return ``(shape, dtype, x_T, noise, step_key, model_fn,
    denoised_fn)`` (the functions wrapped with their output checks)."""
    _check_diffusion(diffusion)
    shape = check_sample_shape(shape)
    model_fn, denoised_fn = _checked_fns(diffusion, model_fn, denoised_fn, clip_denoised,
                                         len(shape))
    for name, a in (("x_T", x_T), ("noise", noise)):
        if a is not None:
            check_floating(name, a)
    dtype = resolve_dtype(dtype, x_T, noise)
    K = diffusion.num_timesteps
    if x_T is not None:
        x_T = check_array("x_T", x_T, shape, dtype, what="shape")
    if noise is not None:
        noise = check_array("noise", noise, (K,) + shape, dtype, what="[num_timesteps, *shape]")
    need_key = x_T is None or (needs_noise and noise is None)
    step_key = None
    if need_key:
        if rng is None:
            raise TypeError("rng must be a jax.random key (e.g. jax.random.key(0)) unless x_T "
                            "(and, for a stochastic sampler, noise) are given; got None")
        prior_key, step_key = jax.random.split(check_key("rng", rng))
        if x_T is None:
            x_T = per_sample_normal(prior_key, shape, dtype)
    elif rng is not None:
        check_key("rng", rng)
    return shape, dtype, x_T, noise, step_key, model_fn, denoised_fn


def _run_reverse_loop(step, x_T, K: int, noise, step_key, needs_noise: bool):
    """``lax.scan`` of ``x <- step(x, t, z)`` over loop index i = 0..K-1, t = K-1-i."""
    B = x_T.shape[0]

    def body(x, inputs):
        i, z = inputs
        if z is None:
            if needs_noise:
                z = per_sample_normal(jax.random.fold_in(step_key, i), x.shape, x.dtype)
            else:
                z = jnp.zeros_like(x)
        t = jnp.full((B,), K - 1, dtype=jnp.int32) - i.astype(jnp.int32)
        return step(x, t, z), None

    x, _ = jax.lax.scan(body, x_T, (jnp.arange(K, dtype=jnp.int32), noise))
    return x


# ----------------------------------------------------------------------------- steps


def _step_inputs(x, t, z):
    """Check a step's ``x [B, ...]``, ``t`` and noise ``z`` (shape of x); return ``(x, t [B])``."""
    check_floating("x", x)
    x = jnp.asarray(x)
    t = _as_t(t, x)
    check_floating("z", z)
    if jnp.shape(z) != x.shape:
        raise ValueError(f"z must have the shape of x {x.shape}, got {jnp.shape(z)}")
    return x, t


def ddpm_step(
    diffusion: GaussianDiffusion,
    model_fn: ModelFn,
    x: jax.Array,
    t,
    z: jax.Array,
    *,
    clip_denoised: bool = True,
    denoised_fn: DenoisedFn = None,
) -> dict:
    """One ancestral step x_t -> x_{t-1} (improved-diffusion ``p_sample``), pure in ``z``.

    ``x_{t-1} = mean + 1[t > 0] exp(log_variance / 2) z`` with ``mean`` and ``log_variance``
    from ``diffusion.p_mean_variance`` (any mean type and variance type).

    Args:
      x: ``x_t`` ``[B, ...]``. t: integer step index, scalar or ``[B]``.
      z: standard normal noise ``[B, ...]`` (unused where t == 0).

    Returns ``{"sample": x_{t-1}, "pred_xstart": x0_hat}``, both ``[B, ...]``.
    """
    _check_diffusion(diffusion)
    x, t = _step_inputs(x, t, z)
    out = diffusion.p_mean_variance(
        model_fn, x, t, clip_denoised=clip_denoised, denoised_fn=denoised_fn
    )
    nonzero = append_dims((t != 0).astype(x.dtype), x.ndim)
    sample = out["mean"] + nonzero * jnp.exp(0.5 * out["log_variance"]) * z.astype(x.dtype)
    return {"sample": sample, "pred_xstart": out["pred_xstart"]}


def ddim_step(
    diffusion: GaussianDiffusion,
    model_fn: ModelFn,
    x: jax.Array,
    t,
    z: jax.Array,
    *,
    eta: float = 0.0,
    clip_denoised: bool = True,
    denoised_fn: DenoisedFn = None,
) -> dict:
    """One DDIM step x_t -> x_{t-1} (Song et al. 2021 eq. 12; improved-diffusion
    ``ddim_sample``), pure in ``z``.

    eps is re-derived from the processed x0_hat (so x_0 or x_{t-1} predicting models and
    clipping work): ``eps = (x_t/sqrt(abar_t) - x0_hat) / sqrt(1/abar_t - 1)``;
    ``x_{t-1} = sqrt(abar_{t-1}) x0_hat + sqrt(1 - abar_{t-1} - sigma_t^2) eps
    + 1[t > 0] sigma_t z`` with
    ``sigma_t = eta sqrt((1 - abar_{t-1})/(1 - abar_t)) sqrt(1 - abar_t/abar_{t-1})``.

    Returns ``{"sample": x_{t-1}, "pred_xstart": x0_hat}``, both ``[B, ...]``.
    """
    _check_diffusion(diffusion)
    eta = _check_eta(diffusion, eta)
    x, t = _step_inputs(x, t, z)
    out = diffusion.p_mean_variance(
        model_fn, x, t, clip_denoised=clip_denoised, denoised_fn=denoised_fn
    )
    x0 = out["pred_xstart"]
    eps = diffusion.predict_eps_from_xstart(x, t, x0)
    abar = _coef(diffusion, "alphas_cumprod", t, x)
    abar_prev = _coef(diffusion, "alphas_cumprod_prev", t, x)
    sigma = eta * jnp.sqrt((1.0 - abar_prev) / (1.0 - abar)) * jnp.sqrt(1.0 - abar / abar_prev)
    # The radicand is >= 0 in exact arithmetic for the eta allowed by _check_eta; the
    # maximum only guards against a round-off negative (0 at t = 0 exactly).
    dir_coef = jnp.sqrt(jnp.maximum(1.0 - abar_prev - sigma**2, 0.0))
    mean_pred = x0 * jnp.sqrt(abar_prev) + dir_coef * eps
    nonzero = append_dims((t != 0).astype(x.dtype), x.ndim)
    sample = mean_pred + nonzero * sigma * z.astype(x.dtype)
    return {"sample": sample, "pred_xstart": x0}


def ddim_reverse_step(
    diffusion: GaussianDiffusion,
    model_fn: ModelFn,
    x: jax.Array,
    t,
    *,
    clip_denoised: bool = False,
    denoised_fn: DenoisedFn = None,
) -> dict:
    """One deterministic reverse-DDIM step x_t -> x_{t+1} (improved-diffusion
    ``ddim_reverse_sample``): the DDIM ODE update with the model evaluated at (x_t, t),
    ``x_{t+1} = sqrt(abar_{t+1}) x0_hat + sqrt(1 - abar_{t+1}) eps`` (abar_T = 0).

    Returns ``{"sample": x_{t+1}, "pred_xstart": x0_hat}``, both ``[B, ...]``.
    """
    _check_diffusion(diffusion)
    check_floating("x", x)
    x = jnp.asarray(x)
    t = _as_t(t, x)
    out = diffusion.p_mean_variance(
        model_fn, x, t, clip_denoised=clip_denoised, denoised_fn=denoised_fn
    )
    x0 = out["pred_xstart"]
    eps = diffusion.predict_eps_from_xstart(x, t, x0)
    abar_next = _coef(diffusion, "alphas_cumprod_next", t, x)
    sample = x0 * jnp.sqrt(abar_next) + jnp.sqrt(1.0 - abar_next) * eps
    return {"sample": sample, "pred_xstart": x0}


def _eps_at(diffusion, model_fn, x, t, clip_denoised, denoised_fn):
    """eps of the (processed) x0_hat of the model at (x, t), as ``ddim_step`` uses it."""
    out = diffusion.p_mean_variance(
        model_fn, x, t, clip_denoised=clip_denoised, denoised_fn=denoised_fn
    )
    return diffusion.predict_eps_from_xstart(x, t, out["pred_xstart"])


def _invert_update(diffusion, y, t, eps):
    """The x_t that ``ddim_step(eta=0)`` at t maps to ``y`` (at abar_{t-1}) when the model's
    eps at x_t is ``eps``: ``x_t = sqrt(abar_t) (y - sqrt(1 - abar_{t-1}) eps) /
    sqrt(abar_{t-1}) + sqrt(1 - abar_t) eps``."""
    abar = _coef(diffusion, "alphas_cumprod", t, y)
    abar_prev = _coef(diffusion, "alphas_cumprod_prev", t, y)
    x0 = (y - jnp.sqrt(1.0 - abar_prev) * eps) / jnp.sqrt(abar_prev)
    return jnp.sqrt(abar) * x0 + jnp.sqrt(1.0 - abar) * eps


def _ddim_lift_step(diffusion, model_fn, x0, *, clip_denoised, denoised_fn):
    """The first inversion step, from the data (abar = 1) to step 0 (abar_0): the mirror of
    the last DDIM step t = 0, with eps from the model at (x_0, t = 0):
    ``x_0' = sqrt(abar_0) x_0 + sqrt(1 - abar_0) eps``."""
    t = jnp.zeros((x0.shape[0],), dtype=jnp.int32)
    eps = _eps_at(diffusion, model_fn, x0, t, clip_denoised, denoised_fn)
    return _invert_update(diffusion, x0, t, eps)


# --------------------------------------------------------------------------- drivers


def ddpm_sample(
    rng: Optional[jax.Array],
    diffusion: GaussianDiffusion,
    model_fn: ModelFn,
    shape: Sequence[int],
    *,
    clip_denoised: bool = True,
    denoised_fn: DenoisedFn = None,
    x_T: Optional[jax.Array] = None,
    noise: Optional[jax.Array] = None,
    dtype=None,
) -> tuple[jax.Array, int]:
    """DDPM ancestral sampling (improved-diffusion ``p_sample_loop``): x_T ~ N(0, I), then
    ``ddpm_step`` for t = K-1, ..., 0 (K = ``diffusion.num_timesteps``, the respaced count).

    Args:
      rng: a JAX key (may be None when both ``x_T`` and ``noise`` are given).
      diffusion: the (respaced) ``GaussianDiffusion``; model_fn: ``model_fn(x, t_model)``.
      shape: sample shape ``[B, ...]``.
      clip_denoised: clamp the predicted x_0 to [-1, 1] (images scaled to [-1, 1]; a
        ``UserWarning`` when on for data of rank < 4). denoised_fn: optional map applied
        to x0_hat before clipping.
      x_T: optional start ``[*shape]`` (default: row j normal from
        ``fold_in(split(rng)[0], j)``).
      noise: optional step noise ``[K, *shape]``; ``noise[i]`` is used at t = K-1-i
        (default: row j normal from ``fold_in(fold_in(split(rng)[1], i), j)``).
      dtype: sample dtype (default: that of x_T / noise, else float32).

    Returns ``(x_0 [*shape], nfe = K)``.
    """
    shape, dtype, x_T, noise, key, model_fn, denoised_fn = _prepare(
        rng, diffusion, model_fn, shape, x_T, noise, dtype, needs_noise=True,
        clip_denoised=clip_denoised, denoised_fn=denoised_fn,
    )

    def step(x, t, z):
        return ddpm_step(
            diffusion, model_fn, x, t, z, clip_denoised=clip_denoised, denoised_fn=denoised_fn
        )["sample"]

    K = diffusion.num_timesteps
    return _run_reverse_loop(step, x_T, K, noise, key, True), K


def ddim_sample(
    rng: Optional[jax.Array],
    diffusion: GaussianDiffusion,
    model_fn: ModelFn,
    shape: Sequence[int],
    *,
    eta: float = 0.0,
    clip_denoised: bool = True,
    denoised_fn: DenoisedFn = None,
    x_T: Optional[jax.Array] = None,
    noise: Optional[jax.Array] = None,
    dtype=None,
) -> tuple[jax.Array, int]:
    """DDIM sampling (improved-diffusion ``ddim_sample_loop``) on the diffusion's respaced
    grid (e.g. ``timestep_respacing="ddim50"``): ``ddim_step`` for t = K-1, ..., 0.

    ``eta`` (a Python float, 0 <= eta, see ``ddim_step``) is static; with ``eta == 0`` the
    map x_T -> x_0 is deterministic, no step noise is drawn and ``noise`` is ignored, and
    ``rng`` may be None when ``x_T`` is given (decode an inversion with
    ``ddim_sample(None, ..., x_T=ddim_invert(...)[0])``). ``x_T``, ``noise``, ``dtype`` and
    the key layout are as in ``ddpm_sample``.

    Returns ``(x_0 [*shape], nfe = K)``.
    """
    _check_diffusion(diffusion)
    eta = _check_eta(diffusion, eta)
    stochastic = eta > 0.0
    shape, dtype, x_T, noise, key, model_fn, denoised_fn = _prepare(
        rng, diffusion, model_fn, shape, x_T, noise, dtype, needs_noise=stochastic,
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
    return _run_reverse_loop(step, x_T, K, noise, key, stochastic), K


def ddim_invert(
    diffusion: GaussianDiffusion,
    model_fn: ModelFn,
    x0: jax.Array,
    *,
    clip_denoised: bool = False,
    denoised_fn: DenoisedFn = None,
    fixed_point_iters: int = 0,
) -> tuple[jax.Array, int]:
    """Deterministic DDIM encoding x_0 -> x_T (reverse DDIM), the mirror of
    ``ddim_sample(eta=0)``'s grid: decoding the result with the same ``clip_denoised`` /
    ``denoised_fn`` reconstructs x_0 up to the inversion error.

    The K steps go alpha_bar = 1 -> abar_0 -> abar_1 -> ... -> abar_{K-1}: first a lift
    step with eps from the model at (x_0, t = 0), ``sqrt(abar_0) x_0 + sqrt(1 - abar_0)
    eps``, then ``ddim_reverse_step`` (improved-diffusion's ``ddim_reverse_sample``) for
    t = 0, ..., K-2. (Looping ``ddim_reverse_sample`` over t = 0..K-1 instead treats x_0 as
    the sample at step 0 and ends at abar = 0, one step past where ``ddim_sample`` starts:
    its output does not decode back to x_0.)

    Each explicit step evaluates eps at its start point, while the DDIM step it inverts
    evaluates eps at its end point, so the reconstruction error is first order in the
    step size (measured: ~1e-2 at K = 100 on the 2-D test mixture, ~2e-3 at K = 1000).
    ``fixed_point_iters = n > 0`` refines step t by n fixed-point iterations of the
    implicit equation ``ddim_step(x_t, t) = x_{t-1}``, i.e. ``x_t <- sqrt(abar_t)
    (x_{t-1} - sqrt(1 - abar_{t-1}) eps(x_t)) / sqrt(abar_{t-1}) + sqrt(1 - abar_t)
    eps(x_t)``, a contraction when the step is small (factor about
    ``sqrt(abar_t) |sigma_t - sigma_{t-1}| |d eps/dx|``, sigma = sqrt(1/abar - 1)), which
    makes the inversion exact to the iteration's convergence at n extra model
    evaluations per step.

    Args:
      x0: data ``[B, ...]``. clip_denoised: clip x0_hat to [-1, 1] (default False: the
        inversion is meant to be exact). denoised_fn: applied to x0_hat before clipping.
      fixed_point_iters: int >= 0, refinement iterations per step (default 0: plain DDIM
        inversion).

    Returns ``(x_T [B, ...], nfe = K (1 + fixed_point_iters))``; x_T is the start of step
    t = K-1 (pass it as ``ddim_sample(..., x_T=x_T)``).
    """
    _check_diffusion(diffusion)
    n_iter = check_int("fixed_point_iters", fixed_point_iters, minimum=0)
    x0 = check_array("x0", x0)
    if x0.ndim < 1 or x0.shape[0] < 1:
        raise ValueError(f"x0 must have a batch axis, shape [B, ...] with B >= 1, got shape {x0.shape}")
    model_fn, denoised_fn = _checked_fns(diffusion, model_fn, denoised_fn, clip_denoised, x0.ndim)
    K = diffusion.num_timesteps
    B = x0.shape[0]

    def refine(x, y, t):
        for _ in range(n_iter):
            eps = _eps_at(diffusion, model_fn, x, t, clip_denoised, denoised_fn)
            x = _invert_update(diffusion, y, t, eps)
        return x

    x = _ddim_lift_step(diffusion, model_fn, x0, clip_denoised=clip_denoised, denoised_fn=denoised_fn)
    x = refine(x, x0, jnp.zeros((B,), dtype=jnp.int32))
    if K > 1:

        def body(y, t_scalar):
            t = jnp.full((B,), t_scalar, dtype=jnp.int32)
            x = ddim_reverse_step(
                diffusion, model_fn, y, t, clip_denoised=clip_denoised, denoised_fn=denoised_fn
            )["sample"]
            return refine(x, y, t + 1), None

        x, _ = jax.lax.scan(body, x, jnp.arange(K - 1, dtype=jnp.int32))
    return x, K * (1 + n_iter)
