"""Probability-flow ODE sampling, exact likelihoods and bits/dim, in PyTorch.

Twin: ``jax_impl/ode.py`` (same public names and semantics; the equations, the NFE
conventions and the bits/dim derivation are in its docstring).

Differences that the frameworks impose:
  * adaptive solves use torchdiffeq's ``odeint`` (``dopri5``: the same Dormand-Prince 5(4)
    pair and mixed RMS error norm as diffrax's; its I-controller differs in detail, so
    jax and torch agree to within the solver tolerance, not to round-off). The end time is
    passed as ``step_t`` so the last step lands on it exactly (no overshoot past ``eps``).
    torchdiffeq has no Tsitouras 5(4) pair: ``method="tsit5"`` raises a ``ValueError``
    listing ``TORCH_ODE_METHODS``.
  * NFE of adaptive solves is counted exactly, call by call (torchdiffeq's initial step
    selection included).
  * the exact divergence uses one backward pass per data dimension (autograd);
    Hutchinson's uses one vector-Jacobian product. Results are detached (the torch side
    is a reference for values; gradients are the JAX side's business).
  * randomness comes from a ``torch.Generator`` (``generator=None``: the global one): the
    prior noise ``z`` is drawn first; ``bits_per_dim`` draws the dequantization noise
    ``u`` first, then ``likelihood`` draws its Hutchinson probe.
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
    check_callable,
    check_ode_method,
    check_sample_shape,
)
from spec.validate import check_choice, check_int
from torch_ref.sde import VESDE, VPSDE, subVPSDE
from torch_ref.utils import check_array, check_floating, resolve_dtype

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

TORCH_ODE_METHODS = FIXED_STEP_METHODS + ("dopri5",)
"""The methods available on the torch side (no Tsit5 in torchdiffeq)."""

__all__ = [
    "FIXED_STEP_METHODS",
    "ADAPTIVE_METHODS",
    "ODE_METHODS",
    "TORCH_ODE_METHODS",
    "HUTCHINSON_TYPES",
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


def _check_sde(sde) -> None:
    if not isinstance(sde, (VESDE, VPSDE, subVPSDE)):
        raise TypeError(
            "sde must be a torch_ref.sde.VESDE, VPSDE or subVPSDE instance, got "
            f"{type(sde).__name__}"
        )


def _check_method(method, num_steps, rtol, atol, max_steps):
    """``spec.sampler_args.check_ode_method`` plus torchdiffeq's missing Tsit5."""
    check_choice("method", method, ODE_METHODS)
    if method not in TORCH_ODE_METHODS:
        raise ValueError(
            f"method {method!r} is not available on the torch side (torchdiffeq has no "
            f"Tsitouras 5(4) pair); valid torch methods: {', '.join(map(repr, TORCH_ODE_METHODS))}"
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
    z: Optional[torch.Tensor] = None,
    dtype: Optional[torch.dtype] = None,
    device=None,
    max_steps: int = 4096,
    generator: Optional[torch.Generator] = None,
):
    """Sample by integrating the probability-flow ODE from T to ``eps``; as the JAX twin.

    Returns ``(x_eps [*shape], nfe)`` (nfe an int).
    """
    _check_sde(sde)
    check_callable("score_fn", score_fn, "score_fn(x, t)")
    shape = check_sample_shape(shape, min_ndim=2)
    eps = _check_eps(eps, sde.T)
    num_steps, rtol, atol, max_steps = _check_method(method, num_steps, rtol, atol, max_steps)
    dtype = resolve_dtype(dtype, z)
    if z is None:
        z = torch.randn(shape, generator=generator, dtype=dtype, device=device)
    else:
        z = check_array("z", z, shape, dtype, device)
    x_T = sde.prior_from_noise(z)

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
    epsilon: Optional[torch.Tensor] = None,
    max_steps: int = 4096,
    generator: Optional[torch.Generator] = None,
):
    """Log-likelihood (nats) of ``x`` under the probability-flow ODE; as the JAX twin.

    Returns ``(logp [B], z = x_T [B, ...], nfe)`` (detached).
    """
    _check_sde(sde)
    check_callable("score_fn", score_fn, "score_fn(x, t)")
    check_floating("x", x)
    x = torch.as_tensor(x)
    if x.ndim < 2:
        raise ValueError(f"x must have shape [B, ...] with at least one data axis, got {tuple(x.shape)}")
    check_choice("hutchinson", hutchinson, HUTCHINSON_TYPES)
    eps = _check_eps(eps, sde.T)
    num_steps, rtol, atol, max_steps = _check_method(method, num_steps, rtol, atol, max_steps)
    if hutchinson is not None:
        if epsilon is None:
            if hutchinson == "gaussian":
                epsilon = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
            else:
                bits = torch.randint(0, 2, x.shape, generator=generator, device=x.device)
                epsilon = (2 * bits - 1).to(x.dtype)
        else:
            epsilon = check_array("epsilon", epsilon, x.shape, x.dtype, x.device)
    elif epsilon is not None:
        raise ValueError("epsilon (a Hutchinson probe) was given but hutchinson is None")

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
    u: Optional[torch.Tensor] = None,
    hutchinson: Optional[str] = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    eps: float = 1e-5,
    method: str = "dopri5",
    num_steps: Optional[int] = None,
    epsilon: Optional[torch.Tensor] = None,
    max_steps: int = 4096,
    generator: Optional[torch.Generator] = None,
):
    """Bits per dimension of quantized data; as the JAX twin (derivation there):
    ``bpd = -log p_y(y) / (D ln 2) + log2(num_levels) - log2(a)``, a = 2 if centered else 1.

    Returns ``(bpd [B], z [B, ...], nfe)``.
    """
    check_floating("x", x)
    x = torch.as_tensor(x)
    num_levels = check_int("num_levels", num_levels, minimum=2)
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
            u = check_array("u", u, x.shape, x.dtype, x.device)
        x01 = (x + 1.0) * 0.5 if centered else x
        v = (x01 * (num_levels - 1) + u) / num_levels
        y = 2.0 * v - 1.0 if centered else v
    else:
        if u is not None:
            raise ValueError("u (dequantization noise) was given but dequantize is False")
        y = x
    logp, z, nfe = likelihood(
        sde, score_fn, y, hutchinson=hutchinson, rtol=rtol, atol=atol, eps=eps, method=method,
        num_steps=num_steps, epsilon=epsilon, max_steps=max_steps, generator=generator,
    )
    D = math.prod(x.shape[1:])
    offset = math.log2(num_levels) - (1.0 if centered else 0.0)
    bpd = -logp / (D * math.log(2.0)) + offset
    return bpd, z, nfe
