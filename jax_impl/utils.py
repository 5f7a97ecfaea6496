"""Small shared helpers: broadcasting, argument checks, dtypes.

Twin: ``torch_ref/utils.py`` (same public names).

Framework-specific helpers, not part of the mirrored API: ``is_concrete``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "append_dims",
    "check_array",
    "check_batch",
    "check_floating",
    "check_score_inputs",
    "check_time_range",
    "resolve_dtype",
]


def append_dims(c: jax.Array, ndim: int) -> jax.Array:
    """Append trailing singleton axes to ``c`` until it has ``ndim`` dimensions.

    Broadcasts a per-example coefficient ``[B]`` against data ``[B, ...]``.
    """
    c = jnp.asarray(c)
    missing = ndim - c.ndim
    if missing < 0:
        raise ValueError(f"append_dims: input has {c.ndim} dims, more than target ndim={ndim}")
    return c.reshape(c.shape + (1,) * missing)


def is_concrete(x) -> bool:
    """True when ``x`` holds actual values (not a tracer inside jit/vmap/grad)."""
    return not isinstance(x, jax.core.Tracer)


def check_floating(name: str, x) -> None:
    """Raise ``TypeError`` naming ``name`` unless ``x`` has a floating dtype."""
    dtype = jnp.result_type(x)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"{name} must have a floating dtype, got {dtype}")


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
    """Raise ``ValueError`` if a concrete ``t`` leaves [lo, hi].

    Inside ``jit`` the values are unknown and the check is skipped: the contract is that
    ``t`` lies in [lo, hi] (wrap with ``jax.experimental.checkify`` to enforce it there).
    """
    if not is_concrete(t):
        return
    t = np.asarray(t)
    if t.size and (np.any(~np.isfinite(t)) or t.min() < lo or t.max() > hi):
        raise ValueError(f"{name} must lie in [{lo}, {hi}], got values in [{t.min()}, {t.max()}]")


def check_score_inputs(x, t, T: float = 1.0) -> None:
    """The checks every SDE method applies to ``(x, t)``."""
    check_floating("x", x)
    check_batch("x", x, "t", t)
    check_time_range("t", t, 0.0, T)


def resolve_dtype(dtype, *arrays) -> np.dtype:
    """``dtype`` if given, else the dtype of the first array that is not None, else
    float32; raise ``TypeError`` unless it is floating."""
    if dtype is None:
        for a in arrays:
            if a is not None:
                dtype = jnp.result_type(a)
                break
        else:
            dtype = jnp.float32
    dt = np.dtype(dtype)
    if not np.issubdtype(dt, np.floating):
        raise TypeError(f"dtype must be a floating dtype, got {dt}")
    return dt


def check_array(name: str, a, expected_shape, dtype, what: str | None = None) -> jax.Array:
    """``a`` as a floating array of ``expected_shape`` cast to ``dtype``, or raise naming
    ``name`` (``what`` describes the expected shape in the message, e.g. ``"[K, *shape]"``)."""
    check_floating(name, a)
    a = jnp.asarray(a)
    expected_shape = tuple(expected_shape)
    if a.shape != expected_shape:
        expected = expected_shape if what is None else f"{what} = {expected_shape}"
        raise ValueError(f"{name} must have shape {expected}, got {a.shape}")
    return a.astype(dtype)
