"""Probability-flow ODE sampling, exact likelihoods and bits/dim, in PyTorch.

Twin: ``jax_impl/ode.py`` (same public names and semantics; the equations, the NFE
conventions and the bits/dim derivation are in its docstring).

Differences that the frameworks impose:
  * ``dopri5`` uses torchdiffeq's ``odeint`` (the same Dormand-Prince 5(4) pair and mixed
    RMS error norm as diffrax's; its I-controller differs in detail, so jax and torch
    agree to within the solver tolerance, not to round-off). The end time is passed as
    ``step_t`` so the last step lands on it exactly (no overshoot past ``eps``).
  * ``tsit5`` (torchdiffeq has none) is integrated here by ``_tsit5_solve``: the Tsitouras
    (2011) 5(4) pair, 7 stages, first same as last, advancing with the 5th-order weights,
    with the controller conventions of diffrax's ``PIDController(rtol, atol)``:
      - error ``e = h sum_i (b_i - bhat_i) k_i``, norm
        ``err = RMS(e / (atol + rtol max(|y0|, |y1|)))`` over every entry of the state
        (all leaves of a tuple state jointly); the step is accepted iff ``err < 1``;
      - I-controller ``h <- h clip(0.9 err^(-1/5), lo, hi)``, ``[lo, hi] = [1, 10]`` after
        an accepted step and ``[0.2, 0.9]`` after a rejected one (a non-finite error
        rejects with factor 0.2);
      - Hairer's initial step (Hairer, Norsett & Wanner, sec. II.4), as diffrax's and
        torchdiffeq's ``_select_initial_step`` (2 evaluations, the first reused as stage 1),
        except that its trial Euler step is capped at ``|t1 - t0|`` so that the field is
        never evaluated outside the interval;
      - the last step is clipped to land exactly on the end time; more than
        ``max_steps`` attempted steps raise a ``RuntimeError``.
    Both directions of time work (T -> eps for sampling, eps -> T for likelihoods).
    It follows diffrax's rules, not its floating-point operations: jax and torch tsit5
    agree to within the solver tolerance.
  * NFE of adaptive solves is counted exactly, call by call (the initial step selection
    included; tsit5: ``2 + 6 * attempted steps``, FSAL sparing one call per step).
  * the exact divergence uses one backward pass per data dimension (autograd);
    Hutchinson's uses one vector-Jacobian product. Results are detached (the torch side
    is a reference for values; gradients are the JAX side's business).
  * randomness comes from a ``torch.Generator`` (``generator=None``: the global one), the
    keyword that replaces the twin's positional ``rng`` (the sampler contract): the
    start ``x_T = sde.prior_from_noise(z)`` is drawn unless given; ``bits_per_dim``
    draws the dequantization noise ``u`` first, then ``likelihood`` draws its Hutchinson
    probe, unless ``noise=`` gives them (``likelihood``: the probe ``[B, ...]``;
    ``bits_per_dim``: ``{"dequantization": u, "hutchinson": probe}``). Samples live on
    the device of ``x_T``, else ``generator.device``, else the CPU.

Framework-specific helpers, not part of the mirrored API: ``TORCH_ODE_METHODS``.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch
from torchdiffeq import odeint

from spec.grids import check_eps as _check_eps
from spec.grids import ode_time_grid  # noqa: F401  (re-exported)
from spec.sampler_args import (  # the method and probe names are re-exported
    ADAPTIVE_METHODS,
    FIXED_STEP_METHODS,
    HUTCHINSON_TYPES,
    ODE_METHODS,
    BPD_NOISE_KEYS,
    check_callable,
    check_ode_method,
    check_sample_shape,
    checked_fn,
    split_bpd_noise,
)
from spec.validate import check_bool, check_choice, check_int
from torch_ref.validate import (
    check_array,
    check_fn_output,
    check_generator,
    check_sde,
    resolve_dtype,
)

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

TORCH_ODE_METHODS = FIXED_STEP_METHODS + ("dopri5", "tsit5")
"""The methods available on the torch side: all of ``ODE_METHODS`` (``dopri5`` through
torchdiffeq, ``tsit5`` hand-written here)."""

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


def _check_data(x) -> torch.Tensor:
    """``x [B, ...]`` (B >= 1, at least one data axis), floating and finite."""
    if not torch.is_tensor(x):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    x = check_array("x", x)
    if x.ndim < 2 or 0 in x.shape:
        raise ValueError(f"x must have shape [B, ...] with B >= 1 and at least one data axis "
                         f"of size >= 1, got {tuple(x.shape)}")
    return x


def _check_method(method, num_steps, rtol, atol, max_steps):
    """``spec.sampler_args.check_ode_method`` plus the torch side's method list."""
    check_choice("method", method, ODE_METHODS)
    if method not in TORCH_ODE_METHODS:
        raise ValueError(
            f"method {method!r} is not available on the torch side; valid torch methods: "
            f"{', '.join(map(repr, TORCH_ODE_METHODS))}"
        )
    return check_ode_method(method, num_steps, rtol, atol, max_steps)


# ------------------------------------------------------------------ steps and grid


def _map(fn, *trees):
    """Apply ``fn`` leaf-wise to tensors or (nested) tuples of tensors."""
    if isinstance(trees[0], tuple):
        return tuple(_map(fn, *leaves) for leaves in zip(*trees))
    return fn(*trees)


def _axpy(y, h, k):
    return _map(lambda a, b: a + h * b, y, k)


def euler_step(fn, y, t, t_next):
    """Euler: ``y + h fn(y, t)``, h = t_next - t (1 evaluation)."""
    h = t_next - t
    return _axpy(y, h, fn(y, t))


def heun_step(fn, y, t, t_next):
    """Heun (explicit trapezoid, order 2), 2 evaluations."""
    h = t_next - t
    k1 = fn(y, t)
    k2 = fn(_axpy(y, h, k1), t_next)
    return _map(lambda a, b, c: a + 0.5 * h * (b + c), y, k1, k2)


def rk4_step(fn, y, t, t_next):
    """Classical 4th-order Runge-Kutta, 4 evaluations."""
    h = t_next - t
    half = 0.5 * h
    k1 = fn(y, t)
    k2 = fn(_axpy(y, half, k1), t + half)
    k3 = fn(_axpy(y, half, k2), t + half)
    k4 = fn(_axpy(y, h, k3), t_next)
    return _map(lambda a, b, c, d, e: a + (h / 6.0) * (b + 2.0 * c + 2.0 * d + e), y, k1, k2, k3, k4)


_FIXED_STEPS = {"euler": euler_step, "heun": heun_step, "rk4": rk4_step}


def probability_flow_drift(sde, score_fn: ScoreFn, x: torch.Tensor, t) -> torch.Tensor:
    """``v(x, t) = f(x, t) - 1/2 g(t)^2 score(x, t)`` ``[B, ...]``; ``t`` scalar or ``[B]``."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    t = t.expand(x.shape[0]) if t.ndim == 0 else t
    return sde.reverse(score_fn, probability_flow=True).sde(x, t)[0]


def exact_divergence(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor):
    """``(fn(x), div [B])``, div = the Jacobian trace, one backward pass per data dimension
    (``fn`` must treat the examples independently). Outputs are detached."""
    B = x.shape[0]
    D = math.prod(x.shape[1:])
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        out = fn(xg)
        flat = out.reshape(B, D)
        div = torch.zeros(B, dtype=x.dtype, device=x.device)
        for j in range(D):
            (grad,) = torch.autograd.grad(flat[:, j].sum(), xg, retain_graph=j < D - 1)
            div = div + grad.reshape(B, D)[:, j]
    return out.detach(), div


def hutchinson_divergence(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                          epsilon: torch.Tensor):
    """``(fn(x), e^T (d fn / dx) e)`` per example ``[B]`` (one vector-Jacobian product)."""
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        out = fn(xg)
        (vjp,) = torch.autograd.grad(torch.sum(out * epsilon), xg)
    div = torch.sum((vjp * epsilon).reshape(x.shape[0], -1), dim=1)
    return out.detach(), div


# ----------------------------------------------------------------------- integrators


def _integrate(fn, y0, t0: float, t1: float, method: str, num_steps, rtol, atol, max_steps):
    """Integrate ``dy/dt = fn(y, t)`` (tensor or tuple of tensors) from t0 to t1;
    return ``(y1, nfe)`` with the evaluations counted."""
    first = y0[0] if isinstance(y0, tuple) else y0
    dtype, device = first.dtype, first.device
    count = [0]

    def counted(y, t):
        count[0] += 1
        return fn(y, t)

    if method in FIXED_STEP_METHODS:
        step = _FIXED_STEPS[method]
        grid = torch.as_tensor(ode_time_grid(t0, t1, num_steps), dtype=dtype, device=device)
        y = y0
        for i in range(num_steps):
            y = step(counted, y, grid[i], grid[i + 1])
        return y, count[0]

    if method == "tsit5":
        y1 = _tsit5_solve(
            lambda y, t: counted(y, torch.tensor(t, dtype=dtype, device=device)),
            y0, t0, t1, rtol, atol, max_steps,
        )
        return y1, count[0]

    ts = torch.tensor([t0, t1], dtype=torch.float64, device=device)
    out = odeint(
        lambda t, y: counted(y, t.to(dtype)),
        y0,
        ts,
        rtol=rtol,
        atol=atol,
        method=method,
        options=dict(step_t=torch.tensor([t1], dtype=torch.float64), max_num_steps=max_steps),
    )
    y1 = tuple(o[-1] for o in out) if isinstance(y0, tuple) else out[-1]
    return y1, count[0]


# --------------------------------------------------------------------- Tsit5


# Tsitouras, "Runge-Kutta pairs of order 5(4) satisfying only the first column simplifying
# assumption", Comput. Math. Appl. 62 (2011) 770-775, table 1 (rounded to float64).
# Stage i is evaluated at t + c_i h on y + h sum_j a_ij k_j; the last row of a is the
# 5th-order weights b (first same as last: k_7 = f(t + h, y1) is the next step's k_1).
_TSIT5_C = (0.0, 0.161, 0.327, 0.9, 0.9800255409045097, 1.0, 1.0)
_TSIT5_A = (
    (),
    (0.161,),
    (-0.008480655492356989, 0.335480655492357),
    (2.8971530571054935, -6.359448489975075, 4.3622954328695815),
    (5.325864828439257, -11.748883564062828, 7.4955393428898365, -0.09249506636175525),
    (5.86145544294642, -12.92096931784711, 8.159367898576159, -0.071584973281401,
     -0.028269050394068383),
    (0.09646076681806523, 0.01, 0.4798896504144996, 1.379008574103742, -3.290069515436081,
     2.324710524099774),
)
_TSIT5_B = _TSIT5_A[6] + (0.0,)
"""5th-order weights (the solution)."""
_TSIT5_BHAT = (0.09468075576583945, 0.009183565540343254, 0.4877705284247616,
               1.234297566930479, -2.7077123499835256, 1.866628418170587, 1.0 / 66.0)
"""Embedded 4th-order weights (only their difference to ``_TSIT5_B`` is used)."""
_TSIT5_E = tuple(b - bh for b, bh in zip(_TSIT5_B, _TSIT5_BHAT))
_TSIT5_ERROR_ORDER = 5  # local order of the error estimate: min(5, 4) + 1
_SAFETY, _FACTOR_MIN, _FACTOR_MAX = 0.9, 0.2, 10.0


def _combine(y, h, coeffs, ks):
    """``y + h sum_j coeffs_j ks_j`` leaf-wise (zero coefficients skipped)."""
    terms = [(c, k) for c, k in zip(coeffs, ks) if c != 0.0]

    def leaf(y_leaf, *k_leaves):
        acc = torch.zeros_like(y_leaf)
        for (c, _), k in zip(terms, k_leaves):
            acc = acc + c * k
        return y_leaf + h * acc

    return _map(leaf, y, *[k for _, k in terms])


def _leaves(y):
    return list(y) if isinstance(y, tuple) else [y]


def _rms(leaves) -> float:
    """Root mean square over every entry of every leaf (diffrax's ``optx.rms_norm``)."""
    total = sum(float(torch.sum(torch.square(v.to(torch.float64)))) for v in leaves)
    count = sum(v.numel() for v in leaves)
    return math.sqrt(total / max(count, 1))


def _initial_step(fn, y0, f0, t0: float, direction: float, span: float, rtol: float,
                  atol: float) -> float:
    """Hairer's starting step size |h| (one evaluation of ``fn``; ``f0 = fn(y0, t0)``).

    The trial Euler step ``h0`` is capped at ``span = |t1 - t0|`` so that ``fn`` is never
    evaluated outside the integration interval (e.g. past T, where an SDE rejects ``t``).
    """
    scale = [atol + rtol * torch.abs(v) for v in _leaves(y0)]
    d0 = _rms([v / s for v, s in zip(_leaves(y0), scale)])
    d1 = _rms([v / s for v, s in zip(_leaves(f0), scale)])
    h0 = min(1e-6 if (d0 < 1e-5 or d1 < 1e-5) else 0.01 * d0 / d1, span)
    f1 = fn(_axpy(y0, direction * h0, f0), t0 + direction * h0)
    d2 = _rms([(a - b) / s for a, b, s in zip(_leaves(f1), _leaves(f0), scale)]) / h0
    max_d = max(d1, d2)
    if max_d <= 1e-15:
        h1 = max(1e-6, h0 * 1e-3)
    else:
        h1 = (0.01 / max_d) ** (1.0 / _TSIT5_ERROR_ORDER)
    return min(100.0 * h0, h1)


def _tsit5_solve(fn, y0, t0: float, t1: float, rtol: float, atol: float, max_steps: int):
    """Adaptive Tsit5 from ``t0`` to ``t1`` (either direction) for ``dy/dt = fn(y, t)``,
    ``y`` a tensor or tuple of tensors, ``t`` a float; returns ``y(t1)``.

    Controller and initial step as in diffrax (see the module docstring). Raises
    ``RuntimeError`` after ``max_steps`` attempted steps, or if the step size underflows.
    """
    if t1 == t0:
        return y0
    direction = 1.0 if t1 > t0 else -1.0
    span = abs(t1 - t0)
    k1 = fn(y0, t0)
    h = _initial_step(fn, y0, k1, t0, direction, span, rtol, atol)
    t, y, s = t0, y0, 0.0  # s = |t - t0|, the distance covered so far
    for _ in range(max_steps):
        last = s + h >= span
        if last:
            h = span - s  # clip: land exactly on t1
        dt = direction * h
        ks = [k1]
        for i in range(1, 7):
            t_i = t1 if (last and _TSIT5_C[i] == 1.0) else t + _TSIT5_C[i] * dt
            ks.append(fn(_combine(y, dt, _TSIT5_A[i], ks), t_i))
        y_new = _combine(y, dt, _TSIT5_B, ks)
        y_err = _combine(_map(torch.zeros_like, y), dt, _TSIT5_E, ks)
        err = _rms([
            e / (atol + rtol * torch.maximum(torch.abs(a), torch.abs(b)))
            for e, a, b in zip(_leaves(y_err), _leaves(y), _leaves(y_new))
        ])
        if math.isfinite(err) and err < 1.0:
            if last:
                return y_new
            t, y, s, k1 = t + dt, y_new, s + h, ks[6]  # first same as last
            lo, hi = 1.0, _FACTOR_MAX
        else:
            lo, hi = _FACTOR_MIN, _SAFETY
        if not math.isfinite(err):
            factor = _FACTOR_MIN  # e.g. the field overflowed: shrink as far as allowed
        elif err == 0.0:
            factor = hi
        else:
            factor = min(max(_SAFETY * err ** (-1.0 / _TSIT5_ERROR_ORDER), lo), hi)
        h = h * factor
        if s + h == s:
            raise RuntimeError(
                f"tsit5: the step size underflowed at t = {t} (the solution may blow up)"
            )
    raise RuntimeError(
        f"tsit5: max_steps={max_steps} steps were not enough to integrate from t={t0} to "
        f"t={t1} (reached t={t}); raise max_steps or loosen rtol/atol"
    )


def _denoise(sde, score_fn, x, eps):
    """score_sde's ``denoise_update_fn``: the reverse-diffusion predictor's mean at ``eps``."""
    vec_eps = torch.full((x.shape[0],), eps, dtype=x.dtype, device=x.device)
    rev_f, _ = sde.reverse(score_fn, probability_flow=False).discretize(x, vec_eps)
    return x - rev_f


# --------------------------------------------------------------------------- drivers


@torch.no_grad()
def ode_sample(
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
    x_T: Optional[torch.Tensor] = None,
    dtype: Optional[torch.dtype] = None,
    max_steps: int = 4096,
    generator: Optional[torch.Generator] = None,
):
    """Sample by integrating the probability-flow ODE from T to ``eps``; as the JAX twin
    (``x_T`` the start, default ``sde.prior_from_noise(z)`` with z from ``generator``).

    Returns ``(x_eps [*shape], nfe)`` (nfe an int).
    """
    check_sde(sde)
    check_callable("score_fn", score_fn, "score_fn(x, t)")
    shape = check_sample_shape(shape, min_ndim=2)
    denoise = check_bool("denoise", denoise)
    eps = _check_eps(eps, sde.T)
    num_steps, rtol, atol, max_steps = _check_method(method, num_steps, rtol, atol, max_steps)
    check_generator("generator", generator)
    dtype = resolve_dtype(dtype, x_T)
    if x_T is None:
        device = generator.device if generator is not None else None
        x_T = sde.prior_from_noise(torch.randn(shape, generator=generator, dtype=dtype, device=device))
    else:
        x_T = check_array("x_T", x_T, shape, dtype)
    score_fn = checked_fn("score_fn", score_fn, check_fn_output)

    def drift(x, t):
        return probability_flow_drift(sde, score_fn, x, t)

    x, nfe = _integrate(drift, x_T, float(sde.T), eps, method, num_steps, rtol, atol, max_steps)
    if denoise:
        x = _denoise(sde, score_fn, x, eps)
        nfe += 1
    return x, nfe


def likelihood(
    sde,
    score_fn: ScoreFn,
    x: torch.Tensor,
    *,
    hutchinson: Optional[str] = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    eps: float = 1e-5,
    method: str = "dopri5",
    num_steps: Optional[int] = None,
    noise: Optional[torch.Tensor] = None,
    max_steps: int = 4096,
    generator: Optional[torch.Generator] = None,
):
    """Log-likelihood (nats) of ``x`` under the probability-flow ODE; as the JAX twin
    (``noise``: the pre-drawn Hutchinson probe ``[B, ...]``, else drawn from ``generator``).

    Returns ``(logp [B], z = x_T [B, ...], nfe)`` (detached).
    """
    check_sde(sde)
    check_callable("score_fn", score_fn, "score_fn(x, t)")
    x = _check_data(x)
    check_choice("hutchinson", hutchinson, HUTCHINSON_TYPES)
    eps = _check_eps(eps, sde.T)
    num_steps, rtol, atol, max_steps = _check_method(method, num_steps, rtol, atol, max_steps)
    check_generator("generator", generator)
    epsilon = None
    if hutchinson is not None:
        if noise is None:
            if hutchinson == "gaussian":
                epsilon = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
            else:
                bits = torch.randint(0, 2, x.shape, generator=generator, device=x.device)
                epsilon = (2 * bits - 1).to(x.dtype)
        else:
            epsilon = check_array("noise", noise, x.shape, x.dtype, x.device)
    elif noise is not None:
        raise ValueError("noise (a Hutchinson probe) was given but hutchinson is None")
    score_fn = checked_fn("score_fn", score_fn, check_fn_output)

    def field(state, t):
        y, _ = state
        fn = lambda v: probability_flow_drift(sde, score_fn, v, t)  # noqa: E731
        if hutchinson is None:
            return exact_divergence(fn, y)
        return hutchinson_divergence(fn, y, epsilon)

    state0 = (x.detach(), torch.zeros(x.shape[0], dtype=x.dtype, device=x.device))
    with torch.no_grad():
        (z, delta), nfe = _integrate(
            field, state0, eps, float(sde.T), method, num_steps, rtol, atol, max_steps
        )
        logp = sde.prior_logp(z) + delta
    return logp, z, nfe


def bits_per_dim(
    sde,
    score_fn: ScoreFn,
    x: torch.Tensor,
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
    generator: Optional[torch.Generator] = None,
):
    """Bits per dimension of quantized data; as the JAX twin (derivation there):
    ``bpd = -log p_y(y) / (D ln 2) + log2(num_levels) - log2(a)``, a = 2 if centered else 1.
    ``noise``: ``{"dequantization": u, "hutchinson": probe}`` (either may be left out and
    is then drawn from ``generator``, u first).

    Returns ``(bpd [B], z [B, ...], nfe)``.
    """
    x = _check_data(x)
    centered = check_bool("centered", centered)
    dequantize = check_bool("dequantize", dequantize)
    num_levels = check_int("num_levels", num_levels, minimum=2)
    check_generator("generator", generator)
    u, probe = split_bpd_noise(noise, dequantize, hutchinson)
    lo = -1.0 if centered else 0.0
    if x.numel() and (x.min().item() < lo or x.max().item() > 1.0):
        raise ValueError(
            f"x must lie in [{lo}, 1] (centered={centered}), got values in "
            f"[{x.min().item()}, {x.max().item()}]"
        )
    if dequantize:
        if u is None:
            u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        else:
            u = check_array("noise['dequantization']", u, x.shape, x.dtype, x.device)
        x01 = (x + 1.0) * 0.5 if centered else x
        v = (x01 * (num_levels - 1) + u) / num_levels
        y = 2.0 * v - 1.0 if centered else v
    else:
        y = x
    logp, z, nfe = likelihood(
        sde, score_fn, y, hutchinson=hutchinson, rtol=rtol, atol=atol, eps=eps, method=method,
        num_steps=num_steps, noise=probe, max_steps=max_steps, generator=generator,
    )
    D = math.prod(x.shape[1:])
    offset = math.log2(num_levels) - (1.0 if centered else 0.0)
    bpd = -logp / (D * math.log(2.0)) + offset
    return bpd, z, nfe
