"""Probability-flow ODE sampling, exact likelihoods and bits/dim (Song et al. 2021, sec. 4.3
and app. D).

Twin: ``torch_ref/ode.py`` (same public names and semantics, PyTorch + torchdiffeq).

The probability-flow ODE of an SDE ``dx = f(x, t) dt + g(t) dw`` shares its marginals p_t:

    dx/dt = f(x, t) - 1/2 g(t)^2 score(x, t)                       (Song et al. eq. 13)

* ``ode_sample`` integrates it from T to ``eps``, starting at ``x_T`` (default
  ``sde.prior_from_noise(z)``, z ~ N(0, I)),
  with a fixed-step solver on the uniform grid ``linspace(T, eps, num_steps + 1)``
  (``euler``: 1 evaluation per step, ``heun`` = explicit trapezoid: 2, ``rk4``: 4) or an
  adaptive Runge-Kutta pair (``dopri5`` = Dormand-Prince 5(4), the method of scipy's
  ``RK45`` that score_sde uses; ``tsit5`` = Tsitouras 5(4)) run in-graph by
  ``diffrax.diffeqsolve`` with a ``PIDController(rtol, atol)`` (an I-controller, like
  torchdiffeq's) and a finite ``max_steps``. ``denoise=True`` ends, as score_sde's
  ``denoise_update_fn``, with one reverse-diffusion predictor mean at ``eps``:
  ``x <- x - f_rev(x, eps)`` where ``(f_rev, G) = sde.reverse(score_fn).discretize(x, eps)``
  (for VE this is the Tweedie step ``x + sigma_min^2 score``).
* ``likelihood`` integrates the augmented ODE from ``eps`` to T (Chen et al. 2018; Song
  et al. eq. 39):

      d/dt [x, l] = [v(x, t), div_x v(x, t)],   v = the probability-flow drift,
      log p_eps(x) = log p_T(x_T) + int_eps^T div_x v(x_t, t) dt,

  with the exact divergence (the trace of the Jacobian, ``D`` forward-mode products per
  evaluation: for small dimensions) or the Hutchinson-Skilling estimate
  ``div v ~ e^T (dv/dx) e`` with one probe ``e`` (Gaussian or Rademacher) drawn once per
  call and kept for the whole trajectory (score_sde's semantics; unbiased over ``e``).
  The probe is the function's pre-drawn ``noise`` (``[B, ...]``), as every sampler's
  per-call noise is.
* ``bits_per_dim`` turns that into bits per dimension of 8-bit data with the dequantization
  bound (derivation in its docstring).

All drivers are plain functions (jit them with ``sde``, ``score_fn``, ``shape`` and the
keywords static, e.g. by closing over them: a new key or new network parameters passed as
traced arguments never recompile); they are vmap-able and differentiable (fixed-step
solvers through ``lax.scan``; adaptive ones through diffrax's default
``RecursiveCheckpointAdjoint``). Arguments are checked while tracing, before compilation.
``score_fn(x, t)`` always receives ``t`` as a ``[B]`` array.

Randomness (the sampler contract of ``jax_impl.samplers``: ``rng`` first, pre-drawn
arrays as keywords), drawn per sample (row j from ``fold_in(key, j)``,
``jax_impl.sharding.per_sample_random``, so it depends neither on the batch size nor on
its sharding): ``ode_sample``'s start ``x_T = sde.prior_from_noise(z)`` with z's row j from
``fold_in(jax.random.split(rng)[0], j)`` unless ``x_T=`` is given; ``likelihood``'s
Hutchinson probe's row j from ``fold_in(split(rng)[1], j)`` unless ``noise=`` (the probe
``[B, ...]``) is given; ``bits_per_dim`` draws its dequantization noise's row j from
``fold_in(split(rng)[0], j)`` and hands ``split(rng)[1]`` on, unless
``noise={"dequantization": u, "hutchinson": e}`` gives them. ``rng`` may be None only when
everything random is given (or nothing is random).

diffrax is imported only when an adaptive method (``dopri5``, ``tsit5``) is integrated,
so importing this module (or ``jax_impl.samplers``) does not load it.

Checks (before compilation): options, ``rng`` (``validate.check_key``), array arguments
(shape, floating dtype, concrete NaN / Inf), bools, and at trace time what ``score_fn``
returns (the shape of x and a floating dtype).

NFE (number of score evaluations, returned with every result): fixed-step solvers
``evals_per_step * num_steps`` (a Python int); adaptive ones (a traced int32, from
diffrax's ``stats``) ``6 * num_steps + 1``: 7-stage first-same-as-last pairs evaluate 6
new stages per attempted step, plus the first stage of the first step. diffrax
re-evaluates that first stage after each rejection of the very first step, so the
reported count is one short per such rejection (rare; exact whenever the first attempted
step is accepted, as the tests check by counting). With ``denoise``, one more. For ``likelihood`` one "evaluation" is one call of the augmented vector field,
i.e. one score evaluation together with its divergence.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp

from jax_impl.sharding import per_sample_normal, per_sample_random
from jax_impl.validate import (
    check_array,
    check_fn_output,
    check_key,
    check_sde,
    is_concrete,
    resolve_dtype,
)
from spec.grids import check_eps as _check_eps
from spec.grids import ode_time_grid  # noqa: F401  (re-exported)
from spec.sampler_args import (  # the method, probe and noise names are re-exported
    ADAPTIVE_METHODS,
    BPD_NOISE_KEYS,
    FIXED_STEP_METHODS,
    HUTCHINSON_TYPES,
    ODE_METHODS,
    check_callable,
    check_ode_method,
    check_sample_shape,
    checked_fn,
    split_bpd_noise,
)
from spec.sampler_args import EVALS_PER_STEP as _EVALS_PER_STEP
from spec.validate import check_bool, check_choice, check_int

ScoreFn = Callable[[jax.Array, jax.Array], jax.Array]

_ADAPTIVE_NEW_STAGES = 6  # Dopri5 and Tsit5: 7 stages, first same as last

__all__ = [
    "FIXED_STEP_METHODS",
    "ADAPTIVE_METHODS",
    "ODE_METHODS",
    "HUTCHINSON_TYPES",
    "BPD_NOISE_KEYS",
    "ode_time_grid",
    "euler_step",
    "heun_step",
    "rk4_step",
    "probability_flow_drift",
    "exact_divergence",
    "hutchinson_divergence",
    "ode_sample",
    "likelihood",
    "bits_per_dim",
]


# --------------------------------------------------------------------------- checks


def _check_rng(rng, given: str):
    """``rng`` as one PRNG key; None raises ``TypeError`` saying ``given`` must then be passed."""
    if rng is None:
        raise TypeError(f"rng must be a jax.random key (e.g. jax.random.key(0)) unless {given}; "
                        "got None")
    return check_key("rng", rng)


def _check_data(x):
    """``x [B, ...]`` (B >= 1, at least one data axis), floating and, when concrete, finite."""
    x = check_array("x", x)
    if x.ndim < 2 or 0 in x.shape:
        raise ValueError(f"x must have shape [B, ...] with B >= 1 and at least one data axis "
                         f"of size >= 1, got {x.shape}")
    return x


# ------------------------------------------------------------------ steps and grid


def _axpy(y, h, k):
    """``y + h k`` on matching pytrees (``h`` a scalar)."""
    return jax.tree.map(lambda a, b: a + h * b, y, k)


def euler_step(fn, y, t, t_next):
    """Euler: ``y + h fn(y, t)``, h = t_next - t (1 evaluation). ``y`` any pytree."""
    h = t_next - t
    return _axpy(y, h, fn(y, t))


def heun_step(fn, y, t, t_next):
    """Heun (explicit trapezoid, order 2): ``k1 = fn(y, t)``, ``k2 = fn(y + h k1, t + h)``,
    ``y + h/2 (k1 + k2)`` (2 evaluations)."""
    h = t_next - t
    k1 = fn(y, t)
    k2 = fn(_axpy(y, h, k1), t_next)
    return jax.tree.map(lambda a, b, c: a + 0.5 * h * (b + c), y, k1, k2)


def rk4_step(fn, y, t, t_next):
    """Classical 4th-order Runge-Kutta (4 evaluations):
    ``y + h/6 (k1 + 2 k2 + 2 k3 + k4)``, k2, k3 at the midpoint, k4 at ``t + h``."""
    h = t_next - t
    half = 0.5 * h
    k1 = fn(y, t)
    k2 = fn(_axpy(y, half, k1), t + half)
    k3 = fn(_axpy(y, half, k2), t + half)
    k4 = fn(_axpy(y, h, k3), t_next)
    return jax.tree.map(
        lambda a, b, c, d, e: a + (h / 6.0) * (b + 2.0 * c + 2.0 * d + e), y, k1, k2, k3, k4
    )


_FIXED_STEPS = {"euler": euler_step, "heun": heun_step, "rk4": rk4_step}


def probability_flow_drift(sde, score_fn: ScoreFn, x: jax.Array, t) -> jax.Array:
    """``v(x, t) = f(x, t) - 1/2 g(t)^2 score(x, t)`` ``[B, ...]``; ``t`` scalar or ``[B]``
    (the score sees ``[B]``). Computed by ``sde.reverse(score_fn, True).sde`` as score_sde."""
    t = jnp.broadcast_to(jnp.asarray(t, dtype=x.dtype), (x.shape[0],))
    return sde.reverse(score_fn, probability_flow=True).sde(x, t)[0]


def exact_divergence(fn: Callable[[jax.Array], jax.Array], x: jax.Array):
    """``(fn(x), div)``: ``fn`` maps ``[B, ...] -> [B, ...]`` example-wise and
    ``div[b] = sum_j d fn(x)[b, j] / d x[b, j]`` ``[B]`` (the Jacobian trace).

    One linearisation and ``D = prod(x.shape[1:])`` forward-mode products with the basis
    vectors ``e_j`` set in every example at once (so ``fn`` must treat the examples
    independently, as a score network does). Memory ``O(D^2 B)``: for small D.
    """
    B = x.shape[0]
    D = math.prod(x.shape[1:])
    out, f_jvp = jax.linearize(fn, x)
    basis = jnp.broadcast_to(jnp.eye(D, dtype=x.dtype)[:, None, :], (D, B, D))
    basis = basis.reshape((D,) + x.shape)
    jac_cols = jax.vmap(f_jvp)(basis).reshape(D, B, D)  # [j, b, i] = d fn_i / d x_j
    div = jnp.trace(jac_cols, axis1=0, axis2=2)
    return out, div


def hutchinson_divergence(fn: Callable[[jax.Array], jax.Array], x: jax.Array, epsilon: jax.Array):
    """``(fn(x), e^T (d fn / dx) e)`` per example ``[B]``: the Hutchinson-Skilling estimate of
    the divergence with probe ``epsilon`` (``[B, ...]``; E[e e^T] = I makes it unbiased)."""
    out, jvp = jax.jvp(fn, (x,), (epsilon,))
    div = jnp.sum((jvp * epsilon).reshape(x.shape[0], -1), axis=1)
    return out, div


# ----------------------------------------------------------------------- integrators


def _integrate(fn, y0, t0: float, t1: float, method: str, num_steps, rtol, atol, max_steps):
    """Integrate ``dy/dt = fn(y, t)`` (``y`` a pytree) from t0 to t1; return ``(y1, nfe)``."""
    dtype = jax.tree.leaves(y0)[0].dtype
    if method in FIXED_STEP_METHODS:
        step = _FIXED_STEPS[method]
        grid = jnp.asarray(ode_time_grid(t0, t1, num_steps), dtype=dtype)

        def body(y, ts):
            return step(fn, y, ts[0], ts[1]), None

        y1, _ = jax.lax.scan(body, y0, (grid[:-1], grid[1:]))
        return y1, _EVALS_PER_STEP[method] * num_steps

    import diffrax  # lazy: only the adaptive solvers need it

    solver = diffrax.Dopri5() if method == "dopri5" else diffrax.Tsit5()
    term = diffrax.ODETerm(lambda t, y, args: fn(y, jnp.asarray(t, dtype)))
    sol = diffrax.diffeqsolve(
        term,
        solver,
        t0=jnp.asarray(t0, dtype),  # typed times: diffrax promotes y to the time dtype
        t1=jnp.asarray(t1, dtype),
        dt0=None,
        y0=y0,
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        max_steps=max_steps,
        saveat=diffrax.SaveAt(t1=True),
    )
    y1 = jax.tree.map(lambda a: a[0], sol.ys)
    nfe = _ADAPTIVE_NEW_STAGES * sol.stats["num_steps"] + 1
    return y1, jnp.asarray(nfe, jnp.int32)


def _denoise(sde, score_fn, x, eps):
    """score_sde's ``denoise_update_fn``: the reverse-diffusion predictor's mean at ``eps``."""
    vec_eps = jnp.full((x.shape[0],), eps, dtype=x.dtype)
    rev_f, _ = sde.reverse(score_fn, probability_flow=False).discretize(x, vec_eps)
    return x - rev_f


# --------------------------------------------------------------------------- drivers


def ode_sample(
    rng: Optional[jax.Array],
    sde,
    score_fn: ScoreFn,
    shape: Sequence[int],
    *,
    method: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    num_steps: Optional[int] = None,
    denoise: bool = False,
    eps: float = 1e-3,
    x_T: Optional[jax.Array] = None,
    dtype=None,
    max_steps: int = 4096,
):
    """Sample by integrating the probability-flow ODE from T to ``eps`` (score_sde's
    ``get_ode_sampler``, solved in-graph).

    Args:
      rng: key for the start: ``x_T = sde.prior_from_noise(z)``, z's row j
        ``normal(fold_in(split(rng)[0], j))`` (unused, may be None, when ``x_T`` is given).
      sde: a ``VESDE``, ``VPSDE`` or ``subVPSDE``.
      score_fn: ``score_fn(x [B, ...], t [B]) -> [B, ...]``.
      shape: ``[B, ...]`` of the samples.
      method: one of ``ODE_METHODS``; fixed-step methods need ``num_steps``, adaptive
        ones use ``rtol``/``atol`` (> 0, >= 0) and at most ``max_steps`` steps.
      denoise: finish with score_sde's one-step denoiser at ``eps`` (one more NFE); a bool.
      eps: end time in (0, T).
      x_T: the start ``[*shape]`` at time T (e.g. ``sde.prior_from_noise(z)``).
      dtype: of the samples (default: ``x_T``'s dtype, else float32).

    Returns:
      ``(x_eps [*shape], nfe)``.
    """
    check_sde(sde)
    check_callable("score_fn", score_fn, "score_fn(x, t)")
    shape = check_sample_shape(shape, min_ndim=2)
    denoise = check_bool("denoise", denoise)
    eps = _check_eps(eps, sde.T)
    num_steps, rtol, atol, max_steps = check_ode_method(method, num_steps, rtol, atol, max_steps)
    dtype = resolve_dtype(dtype, x_T)
    if x_T is None:
        key = jax.random.split(_check_rng(rng, "x_T is given"))[0]
        x_T = sde.prior_from_noise(per_sample_normal(key, shape, dtype))
    else:
        x_T = check_array("x_T", x_T, shape, dtype)
        if rng is not None:
            check_key("rng", rng)
    score_fn = checked_fn("score_fn", score_fn, check_fn_output)

    def drift(x, t):
        return probability_flow_drift(sde, score_fn, x, t)

    x, nfe = _integrate(drift, x_T, float(sde.T), eps, method, num_steps, rtol, atol, max_steps)
    if denoise:
        x = _denoise(sde, score_fn, x, eps)
        nfe = nfe + 1
    return x, nfe


def likelihood(
    rng: Optional[jax.Array],
    sde,
    score_fn: ScoreFn,
    x: jax.Array,
    *,
    hutchinson: Optional[str] = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    eps: float = 1e-5,
    method: str = "dopri5",
    num_steps: Optional[int] = None,
    noise: Optional[jax.Array] = None,
    max_steps: int = 4096,
):
    """Log-likelihood (nats) of ``x`` under the probability-flow ODE (score_sde's
    ``get_likelihood_fn``, without dequantization or offsets).

    Integrates ``d/dt [x, l] = [v(x, t), div v(x, t)]`` from ``eps`` to T, starting at
    ``[x, 0]``; returns ``logp = sde.prior_logp(x_T) + l(T)``, the log-density of the
    model's p_eps at ``x`` (exact up to the solver error when the score is exact and
    p_T equals the prior).

    Args:
      rng: key for the Hutchinson probe, row j drawn from ``fold_in(split(rng)[1], j)``
        (unused, may be None, when ``hutchinson`` is None or ``noise`` is given).
      x: data ``[B, ...]`` (floating, B >= 1, finite).
      hutchinson: ``None`` (exact divergence), ``"gaussian"`` or ``"rademacher"``.
      noise: the pre-drawn Hutchinson probe ``[B, ...]`` (score_sde's ``epsilon``; only
        with ``hutchinson``).
      eps: start time in (0, T). Other solver arguments as ``ode_sample``.

    Returns:
      ``(logp [B], z = x_T [B, ...], nfe)``.
    """
    check_sde(sde)
    check_callable("score_fn", score_fn, "score_fn(x, t)")
    x = _check_data(x)
    check_choice("hutchinson", hutchinson, HUTCHINSON_TYPES)
    eps = _check_eps(eps, sde.T)
    num_steps, rtol, atol, max_steps = check_ode_method(method, num_steps, rtol, atol, max_steps)
    if rng is not None:
        check_key("rng", rng)
    epsilon = None
    if hutchinson is not None:
        if noise is None:
            key = jax.random.split(_check_rng(rng, "noise (the Hutchinson probe) is given"))[1]
            draw = jax.random.normal if hutchinson == "gaussian" else jax.random.rademacher
            epsilon = per_sample_random(draw, key, x.shape, x.dtype)
        else:
            epsilon = check_array("noise", noise, x.shape, x.dtype)
    elif noise is not None:
        raise ValueError("noise (a Hutchinson probe) was given but hutchinson is None")
    score_fn = checked_fn("score_fn", score_fn, check_fn_output)

    def field(state, t):
        y, _ = state
        fn = lambda v: probability_flow_drift(sde, score_fn, v, t)  # noqa: E731
        if hutchinson is None:
            return exact_divergence(fn, y)
        return hutchinson_divergence(fn, y, epsilon)

    state0 = (x, jnp.zeros((x.shape[0],), x.dtype))
    (z, delta), nfe = _integrate(
        field, state0, eps, float(sde.T), method, num_steps, rtol, atol, max_steps
    )
    logp = sde.prior_logp(z) + delta
    return logp, z, nfe


def bits_per_dim(
    rng: Optional[jax.Array],
    sde,
    score_fn: ScoreFn,
    x: jax.Array,
    *,
    centered: bool = False,
    dequantize: bool = True,
    num_levels: int = 256,
    hutchinson: Optional[str] = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    eps: float = 1e-5,
    method: str = "dopri5",
    num_steps: Optional[int] = None,
    noise: Optional[dict] = None,
    max_steps: int = 4096,
):
    """Bits per dimension of quantized data (an upper bound on -log2 P(x) / D).

    Data: ``x`` holds ``num_levels``-level pixels ``k`` (k = 0..L-1, L = ``num_levels``) in
    the model's data space: ``k / (L-1)`` in [0, 1], or ``2 k / (L-1) - 1`` in [-1, 1] with
    ``centered`` (score_sde's scaler). The model density ``p_y`` lives on ``y = a v + b``,
    ``a = 2, b = -1`` if centered else ``a = 1, b = 0``, where ``v`` is a point of [0, 1).

    Derivation: dequantize ``v = (k + u) / L``, u ~ U[0, 1)^D, so the bin of k is the cube
    ``[k/L, (k+1)/L)`` of volume ``L^-D``, and
    ``P(k) = int_bin p_v = L^-D E_u[p_v((k+u)/L)] >= L^-D exp E_u[log p_v]`` (Jensen).
    With ``log p_v(v) = log p_y(a v + b) + D log a`` (change of variables):

        -log2 P(k) / D <= -log p_y(y) / (D ln 2) + log2 L - log2 a,

    i.e. the offset is ``8`` for 8-bit data in [0, 1] and ``8 - 1 = 7`` when centred in
    [-1, 1] (score_sde's ``log2(d inverse_scaler / dy) + 8``). The right-hand side for one
    draw of ``u`` is what is returned; its mean over ``u`` is the bound.
    ``dequantize=False`` treats ``x`` as already-dequantized continuous ``y`` (no noise),
    keeping the same offset (score_sde's behaviour without uniform dequantization).

    Args:
      rng: key: ``u``'s row j from ``fold_in(split(rng)[0], j)``, the probe from
        ``split(rng)[1]`` as ``likelihood`` draws it; may be None when nothing is drawn.
      centered, dequantize: bools.
      noise: pre-drawn noise, a dict with keys among ``BPD_NOISE_KEYS``:
        ``"dequantization"``: ``u [B, ...]`` in [0, 1) (only with ``dequantize``);
        ``"hutchinson"``: the probe ``[B, ...]`` (only with ``hutchinson``). A kind not
        given is drawn from ``rng``.
      Other arguments as ``likelihood``.

    Returns:
      ``(bpd [B], z [B, ...], nfe)``.
    """
    x = _check_data(x)
    centered = check_bool("centered", centered)
    dequantize = check_bool("dequantize", dequantize)
    num_levels = check_int("num_levels", num_levels, minimum=2)
    u, probe = split_bpd_noise(noise, dequantize, hutchinson)
    lo = -1.0 if centered else 0.0
    if is_concrete(x) and (float(jnp.min(x)) < lo or float(jnp.max(x)) > 1.0):
        raise ValueError(
            f"x must lie in [{lo}, 1] (centered={centered}), got values in "
            f"[{float(jnp.min(x))}, {float(jnp.max(x))}]"
        )
    u_key = h_key = None
    if rng is not None:
        u_key, h_key = jax.random.split(check_key("rng", rng))
    if dequantize:
        if u is None:
            if u_key is None:
                _check_rng(rng, "noise['dequantization'] (u) is given")
            u = per_sample_random(jax.random.uniform, u_key, x.shape, x.dtype)
        else:
            u = check_array("noise['dequantization']", u, x.shape, x.dtype)
        x01 = (x + 1.0) * 0.5 if centered else x
        v = (x01 * (num_levels - 1) + u) / num_levels
        y = 2.0 * v - 1.0 if centered else v
    else:
        y = x
    logp, z, nfe = likelihood(
        h_key, sde, score_fn, y, hutchinson=hutchinson, rtol=rtol, atol=atol, eps=eps,
        method=method, num_steps=num_steps, noise=probe, max_steps=max_steps,
    )
    D = math.prod(x.shape[1:])
    offset = math.log2(num_levels) - (1.0 if centered else 0.0)
    bpd = -logp / (D * math.log(2.0)) + offset
    return bpd, z, nfe
