"""Argument checks of the torch side: tensors, dtypes, generators, SDEs, diffusions, and what
a user function returns. One function per concept; each public boundary calls them once.

Twin: ``jax_impl/validate.py`` (same public names and messages, JAX). The checks that need
no framework (ints, floats, bools, choices, shapes, numpy arrays, paths) live once in
``spec/validate.py``.

Every check raises early with a message naming the offending argument. Value checks
(NaN/Inf, ranges) run only on concrete tensors: while ``torch.compile`` traces, and for
meta tensors, they are skipped (:func:`is_concrete`); shape / dtype checks always run.
``check_array(..., strict=True)`` requires a ``torch.Tensor`` (the torch API does, where a
numpy array would silently land on the CPU).

One-sided names:
  check_generator -- torch draws noise from a ``torch.Generator``; the JAX twin takes PRNG keys.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = [
    "check_array",
    "check_batch",
    "check_diffusion",
    "check_finite",
    "check_floating",
    "check_fn_output",
    "check_generator",
    "check_indices",
    "check_score_inputs",
    "check_sde",
    "check_time_range",
    "is_concrete",
    "resolve_dtype",
]


def is_concrete(x) -> bool:
    """True when the values of ``x`` can be read (not while ``torch.compile`` traces, not a
    meta tensor)."""
    if torch.compiler.is_compiling():
        return False
    if torch.is_tensor(x) and x.device.type == "meta":
        return False
    return True


def _dtype_of(name: str, x) -> torch.dtype:
    if torch.is_tensor(x):
        return x.dtype
    try:
        return torch.as_tensor(x).dtype
    except Exception:  # noqa: BLE001 (None, a jax array, a string ...: all wrong types)
        raise TypeError(
            f"{name} must be a tensor with a floating dtype, got {type(x).__name__}"
        ) from None


def check_floating(name: str, x) -> None:
    """Raise ``TypeError`` naming ``name`` unless ``x`` is a tensor (or number) with a
    floating dtype."""
    dtype = _dtype_of(name, x)
    if not dtype.is_floating_point:
        raise TypeError(f"{name} must have a floating dtype, got {dtype}")


def check_finite(name: str, x):
    """Raise ``ValueError`` naming ``name`` if a concrete ``x`` holds NaN or Inf; return ``x``.

    Skipped while ``torch.compile`` traces and for meta tensors. Integer and bool tensors pass.
    """
    if x is None or not is_concrete(x):
        return x
    dtype = _dtype_of(name, x)
    if not (dtype.is_floating_point or dtype.is_complex):
        return x
    t = torch.as_tensor(x)
    finite = torch.isfinite(t)
    if not bool(finite.all()):
        bad = int(t.numel() - finite.sum().item())
        raise ValueError(f"{name} contains NaN or Inf ({bad} of {t.numel()} values are not finite)")
    return x


def _shape_message(name: str, shape, got, what, like_name) -> str:
    if like_name is not None:
        return f"{name} must have the shape of {like_name} {shape}, got {got}"
    expected = shape if what is None else f"{what} = {shape}"
    return f"{name} must have shape {expected}, got {got}"


def check_array(name: str, a, shape=None, dtype=None, device=None, *, what: str | None = None,
                like_name: str | None = None, min_ndim: int = 0, finite: bool = True,
                strict: bool = False) -> torch.Tensor:
    """``a`` as a floating tensor, checked and optionally moved; raise naming ``name``.

    ``shape``: the required shape (``None``: any); ``dtype`` / ``device``: move to them
    (``None``: keep); ``what`` describes the expected shape in the message (e.g.
    ``"[K, *shape]"``), or ``like_name`` names the tensor whose shape ``shape`` is;
    ``min_ndim=1`` requires a batch axis ``[B, ...]``; ``finite=False`` skips the NaN/Inf
    check (a sampler's state, which may legitimately diverge); ``strict`` requires a
    ``torch.Tensor`` (no conversion). ``TypeError`` for a non-tensor (strict) or a
    non-floating dtype, ``ValueError`` for a wrong shape or, when concrete, NaN/Inf values.
    """
    if strict and not torch.is_tensor(a):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(a).__name__}")
    check_floating(name, a)
    a = torch.as_tensor(a)
    if a.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} axis (shape [B, ...]), "
                         f"got shape {tuple(a.shape)}")
    if shape is not None:
        shape = tuple(shape)
        if tuple(a.shape) != shape:
            raise ValueError(_shape_message(name, shape, tuple(a.shape), what, like_name))
    if finite:
        check_finite(name, a)
    if dtype is None and device is None:
        return a
    return a.to(dtype=dtype, device=device)


def check_indices(name: str, idx, num: int, *, what: str = "an integer index array [B]",
                  bound_name: str | None = None, x_name: str | None = None,
                  x=None) -> torch.Tensor:
    """``idx`` as an integer ``[B]`` tensor of indices into a table of ``num`` entries
    (diffusion steps, noise levels), on ``x``'s device when ``x`` is given; raise naming
    ``name``.

    ``TypeError`` for a non-integer dtype (the message says ``name must be {what}``);
    ``ValueError`` unless 1-D (with ``x`` given: ``B = x.shape[0]``, a "batch mismatch"
    naming ``x_name``) and, when concrete, unless every value lies in ``[0, num)``
    (``bound_name`` names ``num`` in the message, e.g. ``"num_timesteps"``).
    """
    device = x.device if torch.is_tensor(x) else None
    idx = torch.as_tensor(idx, device=device)
    if idx.is_floating_point() or idx.is_complex() or idx.dtype == torch.bool:
        raise TypeError(f"{name} must be {what}, got dtype {idx.dtype}")
    if x is not None:
        x_shape = tuple(x.shape) if hasattr(x, "shape") else tuple(np.shape(x))
        if idx.ndim != 1 or not x_shape or idx.shape[0] != x_shape[0]:
            B = x_shape[0] if x_shape else "?"
            raise ValueError(
                f"batch mismatch: {name} must have shape [B] with B = {x_name}.shape[0] = {B}, "
                f"got {name} of shape {tuple(idx.shape)} and {x_name} of shape {x_shape}"
            )
    elif idx.ndim != 1:
        raise ValueError(f"{name} must have shape [B], got {tuple(idx.shape)}")
    if is_concrete(idx) and idx.numel():
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= num:
            bound = f"[0, {bound_name}) = [0, {num})" if bound_name else f"[0, {num})"
            raise ValueError(f"{name} must lie in {bound}, got values in [{lo}, {hi}]")
    return idx


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
    """Raise ``ValueError`` if ``t`` leaves [lo, hi] or is not finite (skipped while
    torch.compile traces)."""
    if not is_concrete(t):
        return
    t = torch.as_tensor(t)
    check_finite(name, t)
    if t.numel() and (t.min() < lo or t.max() > hi):
        raise ValueError(
            f"{name} must lie in [{lo}, {hi}], got values in [{t.min().item()}, {t.max().item()}]"
        )


def check_score_inputs(x, t, T: float = 1.0) -> None:
    """The checks every SDE method applies to ``(x [B, ...], t scalar or [B])``."""
    check_floating("x", x)
    check_batch("x", x, "t", t)
    check_time_range("t", t, 0.0, T)


def resolve_dtype(dtype, *arrays) -> torch.dtype:
    """``dtype`` if given, else the dtype of the first tensor among ``arrays``, else
    float32; raise ``TypeError`` (naming ``dtype``) unless it is a floating ``torch.dtype``."""
    if dtype is None:
        dtype = next((a.dtype for a in arrays if torch.is_tensor(a)), torch.float32)
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    return dtype


def check_fn_output(fn_name: str, out, x, *, shape=None, reason: str | None = None) -> None:
    """Check what a user function (``score_fn``, ``model_fn``, ``eps_fn`` ...) returned for
    the input ``x``: a tensor of ``x.shape`` (or of ``shape`` when given, e.g. the doubled
    channels of a learned-variance model) with a floating dtype. ``reason`` replaces
    "expected <shape>" in the message with the caller's explanation.

    ``TypeError`` for a non-tensor or a non-floating dtype, ``ValueError`` for a wrong shape;
    the message names ``fn_name``, what it returned and what was expected.
    """
    x_shape = tuple(x.shape) if hasattr(x, "shape") else tuple(np.shape(x))
    expected = x_shape if shape is None else tuple(shape)
    if not torch.is_tensor(out):
        raise TypeError(
            f"{fn_name} must return a tensor of shape {expected} for x of shape {x_shape}, "
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
    if not out.dtype.is_floating_point:
        x_dtype = x.dtype if torch.is_tensor(x) else type(x).__name__
        raise TypeError(
            f"{fn_name} returned dtype {out.dtype} for x of dtype {x_dtype}; "
            "it must return a floating tensor"
        )


def check_generator(name: str, g):
    """Return ``g`` if it is ``None`` or a ``torch.Generator``, else raise ``TypeError``
    naming ``name`` and saying how to make one."""
    if g is None or isinstance(g, torch.Generator):
        return g
    raise TypeError(
        f"{name} must be None or a torch.Generator, got {type(g).__module__}.{type(g).__name__}; "
        "make one with torch.Generator().manual_seed(0)"
    )


def check_sde(sde, *, kind: str | None = None, purpose: str = "this") -> None:
    """Raise ``TypeError`` unless ``sde`` is a ``torch_ref.sde`` SDE (VESDE, VPSDE, subVPSDE),
    and, with ``kind`` (a class name, e.g. ``"VESDE"``), that one: the message then says
    that ``purpose`` (e.g. ``"smld_loss"``) needs it."""
    from torch_ref.sde import VESDE, VPSDE, subVPSDE  # lazy: torch_ref.sde uses this module

    classes = {"VESDE": VESDE, "VPSDE": VPSDE, "subVPSDE": subVPSDE}
    if not isinstance(sde, tuple(classes.values())):
        raise TypeError(
            "sde must be a torch_ref.sde SDE (VESDE, VPSDE or subVPSDE), "
            f"got {type(sde).__module__}.{type(sde).__name__}"
        )
    if kind is not None and not isinstance(sde, classes[kind]):
        raise TypeError(f"sde: {purpose} needs a {kind}, got {type(sde).__name__}")


def check_diffusion(diffusion) -> None:
    """Raise ``TypeError`` unless ``diffusion`` is a ``torch_ref.diffusion.GaussianDiffusion``."""
    from torch_ref.diffusion import GaussianDiffusion  # lazy: diffusion uses this module

    if not isinstance(diffusion, GaussianDiffusion):
        raise TypeError(
            "diffusion must be a torch_ref.diffusion.GaussianDiffusion, "
            f"got {type(diffusion).__module__}.{type(diffusion).__name__}"
        )
