"""Sampler argument checks and option tables shared by both frameworks. numpy + stdlib only.

Used by ``jax_impl/samplers*.py``, ``jax_impl/fast_samplers.py``, ``jax_impl/ode.py`` and
their ``torch_ref`` twins, so the two sides accept and reject exactly the same arguments
with the same messages. Only Python values, shapes, names and float64 tables are
inspected here; every formula stays on its own side (DESIGN rule 1). Also here, because
they need no framework: the ``Predictor`` / ``Corrector`` protocols of the PC samplers,
the pre-drawn ``noise`` dict checks (``check_step_noise``, ``split_bpd_noise``),
``checked_fn`` (wraps a user function so each call checks its output with the side's
``validate.check_fn_output``) and ``check_clip_denoised``.

Array arguments are looked at through ``np.shape`` only, which reads ``.shape`` of a JAX
array (tracers included) or a torch tensor without converting it.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from spec.validate import check_bool, check_choice, check_float, check_int

__all__ = [
    "PREDICTORS",
    "CORRECTORS",
    "FIXED_STEP_METHODS",
    "ADAPTIVE_METHODS",
    "ODE_METHODS",
    "HUTCHINSON_TYPES",
    "BPD_NOISE_KEYS",
    "split_bpd_noise",
    "EVALS_PER_STEP",
    "DPM_GRIDS",
    "DEFAULT_T_MIN",
    "check_shape",
    "check_sample_shape",
    "check_callable",
    "check_noise",
    "checked_fn",
    "PC_NOISE_KEYS",
    "Predictor",
    "Corrector",
    "check_component",
    "check_clip_denoised",
    "pc_nfe",
    "pc_noise_shapes",
    "check_step_noise",
    "ald_nfe",
    "check_ddim_eta",
    "check_ode_method",
    "check_sigma_range",
]

# ------------------------------------------------------------------------ names

PREDICTORS = ("euler_maruyama", "reverse_diffusion", "ancestral_sampling", "none")
"""score_sde's predictor names, as accepted by ``get_predictor`` and ``pc_sample``."""
CORRECTORS = ("langevin", "ald", "none")
"""score_sde's corrector names, as accepted by ``get_corrector`` and ``pc_sample``."""

FIXED_STEP_METHODS = ("euler", "heun", "rk4")
"""Fixed-step probability-flow ODE solvers on a uniform time grid (exact jax == torch parity)."""
ADAPTIVE_METHODS = ("dopri5", "tsit5")
"""Adaptive ODE solvers (a 7-stage first-same-as-last pair with a PID step controller)."""
ODE_METHODS = FIXED_STEP_METHODS + ADAPTIVE_METHODS
HUTCHINSON_TYPES = (None, "gaussian", "rademacher")
"""``None``: exact divergence; otherwise the Hutchinson-Skilling probe distribution."""
BPD_NOISE_KEYS = ("dequantization", "hutchinson")
"""The keys of ``bits_per_dim``'s pre-drawn ``noise`` dict: the dequantization noise ``u``
``[B, ...]`` in [0, 1) and the Hutchinson probe ``[B, ...]``."""
EVALS_PER_STEP = {"euler": 1, "heun": 2, "rk4": 4}
"""Score evaluations per step of each fixed-step ODE method."""

DPM_GRIDS = ("logsnr", "karras")
"""Noise-level grids of DPM-Solver++: uniform in lambda = -log sigma, or Karras' rho-ladder."""
DEFAULT_T_MIN = 1e-3
"""The time whose sigma is the default ``sigma_min`` (score_sde's ODE sampler end time)."""

# ----------------------------------------------------------------------- shapes


def check_shape(shape) -> tuple[int, ...]:
    """Validate a sample shape ``(B, ...)`` (positive ints, at least the batch axis)."""
    try:
        dims = tuple(shape)
    except TypeError:
        raise TypeError(f"shape must be a tuple of ints (B, ...), got {shape!r}") from None
    if not dims:
        raise ValueError("shape must have at least the batch axis, got ()")
    return tuple(check_int(f"shape[{k}]", d, minimum=1) for k, d in enumerate(dims))


def check_sample_shape(shape, *, min_ndim: int = 1) -> tuple[int, ...]:
    """A driver's ``shape`` ``[B, ...]`` as a tuple of positive ints with at least
    ``min_ndim`` (1 or 2) entries; raises ``TypeError`` / ``ValueError`` naming ``shape``."""
    if isinstance(shape, (str, bytes)) or not isinstance(shape, Sequence):
        raise TypeError(f"shape must be a tuple of ints [B, ...], got {shape!r}")
    try:
        shape = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise TypeError(f"shape must be a tuple of ints [B, ...], got {shape!r}") from None
    if len(shape) < min_ndim or any(s < 1 for s in shape):
        if min_ndim <= 1:
            raise ValueError(f"shape must be a non-empty tuple of positive ints [B, ...], got {shape}")
        raise ValueError(f"shape must be a tuple of >= {min_ndim} positive ints [B, ...], got {shape}")
    return shape


def check_callable(name: str, fn, signature: str | None = None) -> None:
    """Raise ``TypeError`` naming ``name`` unless ``fn`` is callable."""
    if not callable(fn):
        what = f"callable {signature}" if signature else "callable"
        raise TypeError(f"{name} must be {what}, got {type(fn).__name__}")


def check_noise(name: str, z, shape) -> None:
    """Raise ``ValueError`` naming ``name`` unless the noise ``z`` is given with ``shape``."""
    if z is None:
        raise ValueError(f"{name} is required here (a stochastic step) but got None")
    if tuple(np.shape(z)) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(np.shape(z))}")


def checked_fn(fn_name: str, fn, check_output, shape_of=None):
    """``fn`` wrapped so that every call checks what it returns:
    ``check_output(fn_name, out, x, shape=...)`` with ``x`` the first argument (the
    framework's ``validate.check_fn_output``: shape and floating dtype). ``shape_of(x)``
    gives the expected output shape when it is not ``x.shape`` (e.g. the doubled channels
    of a learned-variance model). Under ``jax.jit`` the check runs once, at trace time."""
    def wrapped(x, *args, **kwargs):
        out = fn(x, *args, **kwargs)
        check_output(fn_name, out, x, shape=None if shape_of is None else shape_of(x))
        return out

    return wrapped


# ------------------------------------------------------------ predictor-corrector


@runtime_checkable
class Predictor(Protocol):
    """What ``pc_sample`` (both frameworks) needs of a predictor: score_sde's
    ``Predictor`` as a protocol, so any class with these members works, no subclassing.

    ``nfe``: score evaluations per step (an int >= 0). ``noise_shape(shape)``: the shape of
    the Gaussian noise ``z`` one step takes for samples of ``shape`` ``(B, ...)``, or None
    when the step is deterministic. ``check(sde)``: raise (``ValueError`` / ``TypeError``)
    if the predictor cannot run on ``sde``; called once, before tracing. ``step(sde,
    score_fn, x, t, z)``: one step at time ``t [B]`` from ``x [B, ...]`` with ``z`` of
    ``noise_shape(x.shape)`` (None when deterministic), in the framework's arrays; returns
    ``(x, x_mean)``, the new state and its noise-free part (what ``denoise=True`` returns
    after the last step). Defined once here (framework-neutral) and re-exported by
    ``jax_impl.samplers`` and ``torch_ref.samplers``.
    """

    nfe: int

    def noise_shape(self, shape): ...

    def check(self, sde) -> None: ...

    def step(self, sde, score_fn, x, t, z): ...


@runtime_checkable
class Corrector(Protocol):
    """What ``pc_sample`` needs of a corrector: the members of ``Predictor`` with the same
    meaning (``nfe`` per PC step, e.g. ``n_steps`` for Langevin; ``noise_shape(shape)``,
    e.g. ``(n_steps, *shape)``; ``check(sde)``; ``step(sde, score_fn, x, t, z) -> (x,
    x_mean)``). The corrector runs before the predictor in each PC step."""

    nfe: int

    def noise_shape(self, shape): ...

    def check(self, sde) -> None: ...

    def step(self, sde, score_fn, x, t, z): ...


PC_NOISE_KEYS = ("predictor", "corrector", "data")
"""The keys of a PC sampler's pre-drawn ``noise`` dict: ``predictor [N, *p_shape]``,
``corrector [N, *c_shape]`` (the shapes the predictor's / corrector's ``noise_shape``
report) and, for the conditional samplers, ``data [N, 2, *shape]``."""


def check_component(kind: str, obj) -> None:
    """Raise ``TypeError`` naming ``kind`` (``"predictor"`` / ``"corrector"``) unless ``obj``
    follows the predictor / corrector protocol: an int ``nfe >= 0`` and callables
    ``noise_shape(shape)``, ``check(sde)`` and ``step(sde, score_fn, x, t, z)``."""
    missing = [m for m in ("noise_shape", "check", "step") if not callable(getattr(obj, m, None))]
    nfe = getattr(obj, "nfe", None)
    if missing or isinstance(nfe, bool) or not isinstance(nfe, (int, np.integer)) or nfe < 0:
        problems = [f"no method {m}()" for m in missing]
        if nfe is None:
            problems.append("no attribute nfe")
        elif isinstance(nfe, bool) or not isinstance(nfe, (int, np.integer)) or nfe < 0:
            problems.append(f"nfe={nfe!r} is not an int >= 0")
        raise TypeError(
            f"{kind} must be a name in {PREDICTORS if kind == 'predictor' else CORRECTORS} or an "
            f"object following the {kind.capitalize()} protocol (nfe, noise_shape(shape), "
            f"check(sde), step(sde, score_fn, x, t, z)); got {obj!r}: {'; '.join(problems)}"
        )


def pc_nfe(predictor, corrector, num_steps: int) -> int:
    """True score evaluations of a PC run: ``num_steps (predictor.nfe + corrector.nfe)``."""
    return int(num_steps) * (int(predictor.nfe) + int(corrector.nfe))


def pc_noise_shapes(predictor, corrector, shape, n_data: int = 0) -> dict[str, tuple[int, ...]]:
    """Shapes of the noise one PC step consumes, by name (absent when unused):
    ``corrector`` and ``predictor`` as their ``noise_shape(shape)`` report (None: no
    noise), ``data [n_data, *shape]`` (the re-noising of known data in conditional
    samplers). The per-run arrays (``noise=`` of the drivers) have a leading ``[N]``."""
    shapes = {}
    for kind, component in (("corrector", corrector), ("predictor", predictor)):
        s = component.noise_shape(tuple(shape))
        if s is not None:
            shapes[kind] = tuple(int(d) for d in s)
    if n_data:
        shapes["data"] = (n_data, *shape)
    return shapes


def check_step_noise(noise, shapes, num_steps: int, keys=PC_NOISE_KEYS) -> dict:
    """Check a PC driver's pre-drawn ``noise`` dict and return the arrays this
    configuration needs (``{name: [num_steps, *shapes[name]]}``).

    ``noise`` must be a mapping with keys among ``keys``; every key of ``shapes`` must be
    present with the shape ``[num_steps, *shapes[name]]``. Keys the configuration does
    not use (e.g. ``predictor`` with ``probability_flow=True``) are ignored, so one dict
    can serve several configurations. Raises ``TypeError`` / ``ValueError`` naming
    ``noise['name']``.
    """
    if not isinstance(noise, Mapping):
        raise TypeError(
            f"noise must be a dict of pre-drawn arrays with keys among {tuple(keys)} "
            f"(needed here: {_describe(shapes, num_steps)}), got {type(noise).__name__}"
        )
    unknown = [k for k in noise if k not in keys]
    if unknown:
        raise ValueError(f"noise has unknown keys {unknown}; valid keys: {tuple(keys)}")
    out = {}
    for name, s in shapes.items():
        z = noise.get(name)
        if z is None:
            raise ValueError(f"noise[{name!r}] is required by this sampler configuration "
                             f"(shape {(num_steps, *s)}); needed: {_describe(shapes, num_steps)}")
        if tuple(np.shape(z)) != (num_steps, *s):
            raise ValueError(f"noise[{name!r}] must have shape {(num_steps, *s)}, "
                             f"got {tuple(np.shape(z))}")
        out[name] = z
    return out


def _describe(shapes, num_steps) -> str:
    if not shapes:
        return "none"
    return ", ".join(f"{k!r}: {(num_steps, *s)}" for k, s in shapes.items())


def ald_nfe(num_levels: int, n_steps_each: int, denoise: bool) -> int:
    """Score evaluations of annealed Langevin dynamics: ``L n_steps_each (+1 to denoise)``."""
    return int(num_levels) * int(n_steps_each) + int(bool(denoise))


# ---------------------------------------------------------------------- DDIM, ODE


def check_clip_denoised(clip_denoised, ndim: int, layout: str) -> bool:
    """``clip_denoised`` as a bool (``check_bool``); a ``UserWarning`` when it is on for data
    of rank ``ndim < 4``: clipping x_0 to [-1, 1] is meant for images scaled to [-1, 1]
    (``layout`` names the framework's image layout in the message, e.g. ``"[B, H, W, C]"``)."""
    clip_denoised = check_bool("clip_denoised", clip_denoised)
    if clip_denoised and ndim < 4:
        warnings.warn(
            f"clip_denoised=True clamps the predicted x_0 to [-1, 1] (images scaled to "
            f"[-1, 1]), but these data have rank {ndim} (not {layout} images); pass "
            "clip_denoised=False unless the data really lie in [-1, 1]",
            UserWarning, stacklevel=_caller_stacklevel(),
        )
    return clip_denoised


_LIBRARY_DIRS = tuple(
    os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), d) + os.sep
    for d in ("spec", "jax_impl", "torch_ref")
)


def _caller_stacklevel() -> int:
    """The ``stacklevel`` of ``warnings.warn`` (called from the caller of this function)
    that points at the first frame outside this library and framework decorators (e.g.
    torch's ``no_grad`` wrapper), i.e. at the user's call."""
    frame, level = sys._getframe(2), 2
    while frame is not None and (frame.f_code.co_filename.startswith(_LIBRARY_DIRS)
                                 or f"{os.sep}torch{os.sep}" in frame.f_code.co_filename):
        frame, level = frame.f_back, level + 1
    return level


def check_ddim_eta(eta, alphas_cumprod: np.ndarray, alphas_cumprod_prev: np.ndarray) -> float:
    """``eta >= 0`` and small enough that ``sigma_t^2 <= 1 - abar_{t-1}`` at every step
    (checked in float64 on the tables: any eta in [0, 1] passes)."""
    eta = check_float("eta", eta, nonnegative=True)
    if eta > 1.0:
        abar = np.asarray(alphas_cumprod, dtype=np.float64)
        abar_prev = np.asarray(alphas_cumprod_prev, dtype=np.float64)
        sigma2 = eta**2 * (1.0 - abar_prev) / (1.0 - abar) * (1.0 - abar / abar_prev)
        bad = np.nonzero(sigma2 > 1.0 - abar_prev)[0]
        if bad.size:
            raise ValueError(
                f"eta={eta} makes the DDIM noise variance sigma_t^2 exceed 1 - alpha_bar_(t-1) "
                f"at step t={int(bad[0])}: the update is undefined there; use 0 <= eta <= 1"
            )
    return eta


def split_bpd_noise(noise, dequantize: bool, hutchinson) -> tuple:
    """``(u, probe)`` from ``bits_per_dim``'s ``noise`` dict (None where not given); raise
    naming ``noise`` for a non-dict, unknown keys, or a kind the options do not use."""
    if noise is None:
        return None, None
    if not isinstance(noise, Mapping):
        raise TypeError(f"noise must be a dict with keys among {BPD_NOISE_KEYS}, got "
                        f"{type(noise).__name__}")
    unknown = [k for k in noise if k not in BPD_NOISE_KEYS]
    if unknown:
        raise ValueError(f"noise has unknown keys {unknown}; valid keys: {BPD_NOISE_KEYS}")
    u, probe = noise.get("dequantization"), noise.get("hutchinson")
    if u is not None and not dequantize:
        raise ValueError("noise['dequantization'] (u) was given but dequantize is False")
    if probe is not None and hutchinson is None:
        raise ValueError("noise['hutchinson'] (a Hutchinson probe) was given but hutchinson is None")
    return u, probe


def check_ode_method(method, num_steps, rtol, atol, max_steps):
    """Validate the ODE solver options; return ``(num_steps, rtol, atol, max_steps)``
    (``num_steps`` is required by, and only by, the fixed-step methods)."""
    check_choice("method", method, ODE_METHODS)
    if method in FIXED_STEP_METHODS:
        if num_steps is None:
            raise ValueError(f"num_steps is required for the fixed-step method {method!r}")
        num_steps = check_int("num_steps", num_steps, minimum=1)
    elif num_steps is not None:
        raise ValueError(
            f"num_steps applies to the fixed-step methods {FIXED_STEP_METHODS}; the adaptive "
            f"method {method!r} takes rtol/atol (and max_steps) instead"
        )
    rtol = check_float("rtol", rtol)
    atol = check_float("atol", atol)
    if not rtol > 0:
        raise ValueError(f"rtol must be > 0, got {rtol}")
    if not atol >= 0:
        raise ValueError(f"atol must be >= 0, got {atol}")
    max_steps = check_int("max_steps", max_steps, minimum=1)
    return num_steps, rtol, atol, max_steps


# ------------------------------------------------------------------ EDM / DPM-Solver


def check_sigma_range(sigma_min, sigma_max, s_lo: float, s_T: float, s_default: float):
    """Validated ``(sigma_min, sigma_max)`` as floats inside the SDE's ``[s_lo, s_T]`` =
    ``[sigma(0), sigma(T)]``; ``None`` picks ``s_default`` = sigma(DEFAULT_T_MIN) and ``s_T``."""
    smin = s_default if sigma_min is None else check_float("sigma_min", sigma_min, positive=True)
    smax = s_T if sigma_max is None else check_float("sigma_max", sigma_max, positive=True)
    slack = 1e-6
    if not smax <= s_T * (1 + slack):
        raise ValueError(f"sigma_max must be <= sigma(T) = {s_T} for this SDE, got {smax}")
    if not smin >= s_lo * (1 - slack):
        raise ValueError(f"sigma_min must be >= sigma(0) = {s_lo} for this SDE, got {smin}")
    if not smin < smax:
        raise ValueError(f"sigma_min must be < sigma_max, got {smin} >= {smax}")
    return smin, smax
