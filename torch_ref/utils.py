"""Small shared helpers: broadcasting, argument checks, dtypes.

Twin: ``jax_impl/utils.py`` (same public names).
"""

from __future__ import annotations

import torch

__all__ = [
    "append_dims",
    "check_array",
    "check_batch",
    "check_floating",
    "check_score_inputs",
    "check_time_range",
    "resolve_dtype",
]


def append_dims(c: torch.Tensor, ndim: int) -> torch.Tensor:
    """Append trailing singleton axes to ``c`` until it has ``ndim`` dimensions.

    Broadcasts a per-example coefficient ``[B]`` against data ``[B, ...]``.
    """
    c = torch.as_tensor(c)
    missing = ndim - c.ndim
    if missing < 0:
        raise ValueError(f"append_dims: input has {c.ndim} dims, more than target ndim={ndim}")
    return c.reshape(tuple(c.shape) + (1,) * missing)


def check_floating(name: str, x) -> None:
    """Raise ``TypeError`` naming ``name`` unless ``x`` has a floating dtype."""
    dtype = torch.as_tensor(x).dtype
    if not dtype.is_floating_point:
        raise TypeError(f"{name} must have a floating dtype, got {dtype}")


def check_batch(x_name: str, x, t_name: str, t) -> None:
    """Raise ``ValueError`` unless ``t`` is a scalar or ``[B]`` with B = x.shape[0]."""
    t_shape = tuple(torch.as_tensor(t).shape)
    x_shape = tuple(torch.as_tensor(x).shape)
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
    """Raise ``ValueError`` if ``t`` leaves [lo, hi] (skipped while torch.compile traces)."""
    if torch.compiler.is_compiling():
        return
    t = torch.as_tensor(t)
    if t.numel() and (not torch.isfinite(t).all() or t.min() < lo or t.max() > hi):
        raise ValueError(
            f"{name} must lie in [{lo}, {hi}], got values in [{t.min().item()}, {t.max().item()}]"
        )


def check_score_inputs(x, t, T: float = 1.0) -> None:
    """The checks every SDE method applies to ``(x, t)``."""
    check_floating("x", x)
    check_batch("x", x, "t", t)
    check_time_range("t", t, 0.0, T)


def resolve_dtype(dtype, *arrays) -> torch.dtype:
    """``dtype`` if given, else the dtype of the first tensor among ``arrays``, else
    float32; raise ``TypeError`` unless it is a floating ``torch.dtype``."""
    if dtype is None:
        dtype = next((a.dtype for a in arrays if torch.is_tensor(a)), torch.float32)
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    return dtype


def check_array(name: str, a, expected_shape, dtype, device, what: str | None = None) -> torch.Tensor:
    """``a`` as a floating tensor of ``expected_shape`` moved to ``dtype`` / ``device``, or
    raise naming ``name`` (``what`` describes the expected shape in the message)."""
    check_floating(name, a)
    a = torch.as_tensor(a)
    expected_shape = tuple(expected_shape)
    if tuple(a.shape) != expected_shape:
        expected = expected_shape if what is None else f"{what} = {expected_shape}"
        raise ValueError(f"{name} must have shape {expected}, got {tuple(a.shape)}")
    return a.to(dtype=dtype, device=device)
