"""Argument checks of the JAX side: arrays, dtypes, PRNG keys, SDEs, diffusions, and what a
user function returns. One function per concept; each public boundary calls them once.

Twin: ``torch_ref/validate.py`` (same public names and messages, PyTorch). The checks that
need no framework (ints, floats, bools, choices, shapes, numpy arrays, paths) live once in
``spec/validate.py``.

Every check raises early (before ``jax.jit`` compiles anything) with a message naming the
offending argument. Value checks (NaN/Inf, ranges) run only on concrete values: inside
``jit`` / ``vmap`` / ``grad`` the values are unknown, a tracer passes, and shape / dtype
checks still run at trace time.

One-sided names:
  check_key -- PRNG keys are a JAX concept; the torch twin takes ``torch.Generator`` objects.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "check_array",
    "check_batch",
    "check_diffusion",
    "check_finite",
    "check_floating",
    "check_fn_output",
    "check_indices",
    "check_key",
    "check_score_inputs",
    "check_sde",
    "check_time_range",
    "is_concrete",
    "resolve_dtype",
]


def is_concrete(x) -> bool:
    """True when ``x`` holds actual values on this process (not a tracer inside
    jit/vmap/grad, and not a global array spread over other processes)."""
    if isinstance(x, jax.core.Tracer):
        return False
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return False
    return True


def _dtype_of(name: str, x):
    if x is None or isinstance(x, str):
        raise TypeError(f"{name} must be an array with a floating dtype, got {type(x).__name__}")
    try:
        return jnp.result_type(x)
    except Exception:  # noqa: BLE001 (None, a torch tensor, a string ...: all wrong types)
        raise TypeError(
            f"{name} must be an array with a floating dtype, got {type(x).__name__}"
        ) from None


def check_floating(name: str, x) -> None:
    """Raise ``TypeError`` naming ``name`` unless ``x`` is an array (or number) with a
    floating dtype. Works on tracers."""
    dtype = _dtype_of(name, x)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"{name} must have a floating dtype, got {dtype}")


def check_finite(name: str, x):
    """Raise ``ValueError`` naming ``name`` if a concrete ``x`` holds NaN or Inf; return ``x``.

    A tracer (inside ``jit``) passes: the contract is then the caller's (wrap with
    ``jax.experimental.checkify`` to enforce it there). Integer and bool arrays pass.
    """
    if x is None or not is_concrete(x):
        return x
    dtype = _dtype_of(name, x)
    if not jnp.issubdtype(dtype, jnp.inexact):
        return x
    # numpy, so that the check stays concrete inside a jit trace (where jnp ops on even a
    # concrete array are staged out)
    values = np.asarray(x)
    finite = np.isfinite(values)
    ok = bool(finite.all())
    bad, size = (None if ok else int(values.size - np.count_nonzero(finite))), values.size
    if not ok:
        raise ValueError(f"{name} contains NaN or Inf ({bad} of {size} values are not finite)")
    return x


def _shape_message(name: str, shape, got, what, like_name) -> str:
    if like_name is not None:
        return f"{name} must have the shape of {like_name} {shape}, got {got}"
    expected = shape if what is None else f"{what} = {shape}"
    return f"{name} must have shape {expected}, got {got}"


def check_array(name: str, a, shape=None, dtype=None, device=None, *, what: str | None = None,
                like_name: str | None = None, min_ndim: int = 0, finite: bool = True,
                strict: bool = False) -> jax.Array:
    """``a`` as a floating ``jax.Array``, checked and optionally cast / placed; raise naming
    ``name``.

    ``shape``: the required shape (``None``: any); ``dtype``: cast to it (``None``: keep);
    ``device``: ``jax.device_put`` onto it (``None``: leave where it is); ``what`` describes
    the expected shape in the message (e.g. ``"[K, *shape]"``), or ``like_name`` names the
    array whose shape ``shape`` is ("must have the shape of x"); ``min_ndim=1`` requires a
    batch axis ``[B, ...]``; ``finite=False`` skips the NaN/Inf check (a sampler's state,
    which may legitimately diverge); ``strict`` requires a ``jax.Array`` (or a tracer), no
    conversion from numpy or lists. ``TypeError`` for a non-array (strict) or a non-floating
    dtype, ``ValueError`` for a wrong shape or, when ``a`` is concrete and ``finite``,
    NaN/Inf values.
    """
    if strict and not isinstance(a, jax.Array):
        raise TypeError(f"{name} must be a jax.Array, got {type(a).__name__}")
    check_floating(name, a)
    a = jnp.asarray(a)
    if a.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} axis (shape [B, ...]), "
                         f"got shape {a.shape}")
    if shape is not None:
        shape = tuple(shape)
        if a.shape != shape:
            raise ValueError(_shape_message(name, shape, a.shape, what, like_name))
    if finite:
        check_finite(name, a)
    if dtype is not None:
        a = a.astype(dtype)
    return a if device is None else jax.device_put(a, device)


def check_indices(name: str, idx, num: int, *, what: str = "an integer index array [B]",
                  bound_name: str | None = None, x_name: str | None = None, x=None) -> jax.Array:
    """``idx`` as an integer ``[B]`` array of indices into a table of ``num`` entries
    (diffusion steps, noise levels); raise naming ``name``.

    ``TypeError`` for a non-integer dtype (the message says ``name must be {what}``);
    ``ValueError`` unless 1-D (with ``x`` given: ``B = x.shape[0]``, a "batch mismatch"
    naming ``x_name``) and, when concrete, unless every value lies in ``[0, num)``
    (``bound_name`` names ``num`` in the message, e.g. ``"num_timesteps"``).
    """
    idx = jnp.asarray(idx)
    if not jnp.issubdtype(idx.dtype, jnp.integer):
        raise TypeError(f"{name} must be {what}, got dtype {idx.dtype}")
    if x is not None:
        x_shape = tuple(jnp.shape(x))
        if idx.ndim != 1 or not x_shape or idx.shape[0] != x_shape[0]:
            B = x_shape[0] if x_shape else "?"
            raise ValueError(
                f"batch mismatch: {name} must have shape [B] with B = {x_name}.shape[0] = {B}, "
                f"got {name} of shape {idx.shape} and {x_name} of shape {x_shape}"
            )
    elif idx.ndim != 1:
        raise ValueError(f"{name} must have shape [B], got {idx.shape}")
    if is_concrete(idx) and idx.size:
        values = np.asarray(idx)  # numpy, so that it stays concrete inside a jit trace
        lo, hi = int(values.min()), int(values.max())
        if lo < 0 or hi >= num:
            bound = f"[0, {bound_name}) = [0, {num})" if bound_name else f"[0, {num})"
            raise ValueError(f"{name} must lie in {bound}, got values in [{lo}, {hi}]")
    return idx


def check_batch(x_name: str, x, t_name: str, t) -> None:
    """Raise ``ValueError`` unless ``t`` is a scalar or ``[B]`` with B = x.shape[0]."""
    t_shape = jnp.shape(t)
    x_shape = jnp.shape(x)
    if len(t_shape) == 0:
        return
    if len(t_shape) != 1:
        raise ValueError(f"{t_name} must be a scalar or have shape [B], got shape {t_shape}")
    if len(x_shape) == 0 or x_shape[0] != t_shape[0]:
        raise ValueError(
            f"batch mismatch: {x_name} has shape {x_shape} but {t_name} has shape {t_shape}; "
            f"{t_name} must be [B] with B = {x_name}.shape[0]"
        )


def check_time_range(name: str, t, lo: float, hi: float) -> None:
    """Raise ``ValueError`` if a concrete ``t`` leaves [lo, hi] or is not finite.

    Inside ``jit`` the values are unknown and the check is skipped: the contract is that
    ``t`` lies in [lo, hi] (wrap with ``jax.experimental.checkify`` to enforce it there).
    """
    if not is_concrete(t):
        return
    t = np.asarray(t)
    check_finite(name, t)
    if t.size and (t.min() < lo or t.max() > hi):
        raise ValueError(f"{name} must lie in [{lo}, {hi}], got values in [{t.min()}, {t.max()}]")


def check_score_inputs(x, t, T: float = 1.0) -> None:
    """The checks every SDE method applies to ``(x [B, ...], t scalar or [B])``."""
    check_floating("x", x)
    check_batch("x", x, "t", t)
    check_time_range("t", t, 0.0, T)


def resolve_dtype(dtype, *arrays) -> np.dtype:
    """``dtype`` if given, else the dtype of the first array that is not None, else
    float32; raise ``TypeError`` (naming ``dtype``) unless it is a floating dtype."""
    if dtype is None:
        for a in arrays:
            if a is not None:
                dtype = _dtype_of("array", a)
                break
        else:
            dtype = jnp.float32
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be a floating dtype (e.g. jnp.float32), got {dtype!r}") from None
    if not np.issubdtype(dt, np.floating):
        raise TypeError(f"dtype must be a floating dtype, got {dt}")
    return dt


def check_fn_output(fn_name: str, out, x, *, shape=None, reason: str | None = None) -> None:
    """Check what a user function (``score_fn``, ``model_fn``, ``eps_fn`` ...) returned for
    the input ``x``: an array of ``x.shape`` (or of ``shape`` when given, e.g. the doubled
    channels of a learned-variance model) with a floating dtype. ``reason`` replaces
    "expected <shape>" in the message with the caller's explanation.

    Shapes and dtypes only, so it runs on tracers at trace time. ``TypeError`` for a
    non-array or a non-floating dtype, ``ValueError`` for a wrong shape; the message names
    ``fn_name``, what it returned and what was expected.
    """
    x_shape = tuple(jnp.shape(x))
    expected = x_shape if shape is None else tuple(shape)
    if not (hasattr(out, "shape") and hasattr(out, "dtype")):
        raise TypeError(
            f"{fn_name} must return an array of shape {expected} for x of shape {x_shape}, "
            f"got {type(out).__name__}"
        )
    if tuple(out.shape) != expected:
        if reason is not None:
            hint = f", but {reason}"
        else:
            hint = "" if shape is None else f"; expected {expected}"
        raise ValueError(
            f"{fn_name} returned shape {tuple(out.shape)} for x of shape {x_shape}{hint}"
        )
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise TypeError(
            f"{fn_name} returned dtype {out.dtype} for x of dtype {jnp.result_type(x)}; "
            "it must return a floating array"
        )


_MAKE_KEY = "make one with jax.random.key(0) (or jax.random.PRNGKey(0))"


def check_key(name: str, key):
    """Return ``key`` if it is ONE PRNG key, else raise ``TypeError`` naming ``name``.

    Accepted: a new-style typed key (``jax.random.key(0)``: key dtype, shape ``()``) or a
    legacy raw key (``jax.random.PRNGKey(0)``: uint32, shape ``(2,)``), concrete or traced.
    Rejected: Python ints, numpy / torch generators, floats, and batches of keys (split
    inside the function instead).
    """
    tname = type(key).__name__
    module = type(key).__module__ or ""
    if module.split(".")[0] == "torch":
        raise TypeError(f"{name} must be a JAX PRNG key, got a torch {tname}; {_MAKE_KEY}")
    if isinstance(key, (np.random.Generator, np.random.RandomState)):
        raise TypeError(f"{name} must be a JAX PRNG key, got a numpy {tname}; {_MAKE_KEY}")
    if not (hasattr(key, "dtype") and hasattr(key, "shape")):
        raise TypeError(f"{name} must be a JAX PRNG key, got {tname} {key!r}; {_MAKE_KEY}")
    shape = tuple(key.shape)
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        if shape != ():
            raise TypeError(
                f"{name} must be a single PRNG key, got a batch of keys of shape {shape}; "
                "pass one key (split it inside), e.g. jax.random.key(0)"
            )
        return key
    if key.dtype == np.uint32 and shape == (2,):
        return key
    if key.dtype == np.uint32 and len(shape) > 1 and shape[-1] == 2:
        raise TypeError(
            f"{name} must be a single PRNG key, got a batch of raw keys of shape {shape}; "
            "pass one key (split it inside), e.g. jax.random.key(0)"
        )
    raise TypeError(
        f"{name} must be a JAX PRNG key, got {tname} of dtype {key.dtype} and shape {shape}; "
        f"{_MAKE_KEY}"
    )


def check_sde(sde, *, kind: str | None = None, purpose: str = "this") -> None:
    """Raise ``TypeError`` unless ``sde`` is a ``jax_impl.sde`` SDE (VESDE, VPSDE, subVPSDE),
    and, with ``kind`` (a class name, e.g. ``"VESDE"``), that one: the message then says
    that ``purpose`` (e.g. ``"smld_loss"``) needs it."""
    from jax_impl.sde import VESDE, VPSDE, subVPSDE  # lazy: jax_impl.sde uses this module

    classes = {"VESDE": VESDE, "VPSDE": VPSDE, "subVPSDE": subVPSDE}
    if not isinstance(sde, tuple(classes.values())):
        raise TypeError(
            "sde must be a jax_impl.sde SDE (VESDE, VPSDE or subVPSDE), "
            f"got {type(sde).__module__}.{type(sde).__name__}"
        )
    if kind is not None and not isinstance(sde, classes[kind]):
        raise TypeError(f"sde: {purpose} needs a {kind}, got {type(sde).__name__}")


def check_diffusion(diffusion) -> None:
    """Raise ``TypeError`` unless ``diffusion`` is a ``jax_impl.diffusion.GaussianDiffusion``."""
    from jax_impl.diffusion import GaussianDiffusion  # lazy: diffusion uses this module

    if not isinstance(diffusion, GaussianDiffusion):
        raise TypeError(
            "diffusion must be a jax_impl.diffusion.GaussianDiffusion, "
            f"got {type(diffusion).__module__}.{type(diffusion).__name__}"
        )
