"""Framework-neutral argument checks (numpy + stdlib only), shared by ``spec``, ``jax_impl``
and ``torch_ref``.

Every check raises early with a message naming the offending argument (or file) and
returns the validated value. The per-framework checks (arrays, dtypes, keys, SDEs,
diffusions, what a ``score_fn`` returns) live in ``jax_impl/validate.py`` and
``torch_ref/validate.py``; what needs no framework lives here, once.
"""

from __future__ import annotations

import math
import numbers
import os
from pathlib import Path

import numpy as np

__all__ = [
    "check_bool",
    "check_callable",
    "check_choice",
    "check_dir",
    "check_file",
    "check_finite_array",
    "check_float",
    "check_int",
    "check_path",
    "check_shape",
]


def check_int(name: str, value, *, minimum: int | None = None) -> int:
    """Return ``value`` as an int, or raise ``TypeError``/``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_float(
    name: str,
    value,
    *,
    positive: bool = False,
    nonnegative: bool = False,
) -> float:
    """Return ``value`` as a finite float, or raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if positive and not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    if nonnegative and not value >= 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def check_choice(name: str, value, choices) -> None:
    """Raise ``ValueError`` naming ``name`` and listing the valid choices."""
    if value not in choices:
        valid = ", ".join(repr(c) for c in choices)
        raise ValueError(f"unknown {name} {value!r}; valid choices: {valid}")


def check_bool(name: str, value) -> bool:
    """Return ``value`` as a bool, or raise ``TypeError`` naming ``name``.

    Only ``bool`` and ``numpy.bool_`` are accepted: ``"yes"``, ``"False"``, ``1`` and
    ``None`` raise, so a string option can never be silently taken as True.
    """
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool (True or False), got {type(value).__name__} {value!r}")
    return bool(value)


def check_callable(name: str, fn, signature: str | None = None):
    """Return ``fn`` if callable, else raise ``TypeError`` naming ``name`` (and, when given,
    the expected ``signature``, e.g. ``"score_fn(x, t) -> score"``)."""
    if not callable(fn):
        what = f"callable {signature}" if signature else "callable"
        raise TypeError(f"{name} must be {what}, got {type(fn).__name__}")
    return fn


def check_shape(name: str, shape, min_ndim: int = 1) -> tuple[int, ...]:
    """Return ``shape`` as a tuple of positive ints with at least ``min_ndim`` entries.

    Raises ``TypeError`` (not a sequence of integers) or ``ValueError`` (too few entries, an
    entry < 1), naming ``name`` and, for an entry, its index (``shape[1]``).
    """
    if isinstance(shape, (str, bytes)) or not isinstance(shape, (tuple, list)):
        raise TypeError(f"{name} must be a tuple of ints, got {type(shape).__name__} {shape!r}")
    dims = []
    for k, d in enumerate(shape):
        if isinstance(d, (bool, np.bool_)) or not isinstance(d, numbers.Integral):
            raise TypeError(f"{name}[{k}] must be an integer, got {type(d).__name__} {d!r} "
                            f"(in {name}={tuple(shape)!r})")
        if d < 1:
            raise ValueError(f"{name}[{k}] must be >= 1, got {int(d)} (in {name}={tuple(shape)!r})")
        dims.append(int(d))
    if len(dims) < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimension(s), got {tuple(dims)}")
    return tuple(dims)


def check_finite_array(name: str, a, *, ndim: int | None = None, positive: bool = False,
                       nonnegative: bool = False) -> np.ndarray:
    """Return ``a`` as a numpy array; raise ``ValueError`` naming ``name`` if it holds NaN or
    Inf (integer and boolean arrays are always finite; other dtypes raise ``TypeError``).

    Optionally also: exactly ``ndim`` axes and at least one element (``ndim=1`` for a
    ladder ``[L]``), every value ``> 0`` (``positive``) or ``>= 0`` with a positive sum
    (``nonnegative``, e.g. sampling weights); ``ValueError`` otherwise.
    """
    try:
        arr = np.asarray(a)
    except Exception as e:  # noqa: BLE001 (any conversion failure is a wrong argument)
        raise TypeError(f"{name} must be a numeric array, got {type(a).__name__}: {e}") from None
    if arr.dtype.kind in "biu":
        return _check_values(name, arr, ndim, positive, nonnegative)
    if arr.dtype.kind not in "fc":
        raise TypeError(f"{name} must be a numeric array, got dtype {arr.dtype}")
    finite = np.isfinite(arr)
    if not finite.all():
        bad = int(arr.size - np.count_nonzero(finite))
        raise ValueError(f"{name} contains NaN or Inf ({bad} of {arr.size} values are not finite)")
    return _check_values(name, arr, ndim, positive, nonnegative)


def _check_values(name: str, arr: np.ndarray, ndim, positive: bool, nonnegative: bool) -> np.ndarray:
    if ndim is not None and (arr.ndim != ndim or arr.size == 0):
        raise ValueError(f"{name} must be a non-empty array with {ndim} axis/axes, got shape {arr.shape}")
    if positive and not np.all(arr > 0):
        raise ValueError(f"{name} must be > 0 everywhere, got min {arr.min()}")
    if nonnegative and (np.any(arr < 0) or not arr.sum() > 0):
        raise ValueError(f"{name} must be >= 0 with a positive sum")
    return arr


def check_path(name: str, path) -> Path:
    """Return ``path`` as a ``pathlib.Path`` that exists, or raise naming ``name``:
    ``TypeError`` unless a ``str`` / ``os.PathLike``, ``FileNotFoundError`` if missing."""
    if isinstance(path, bytes) or not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name} must be a path (str or os.PathLike), got {type(path).__name__} {path!r}")
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{name}: no such file or directory: {str(p)!r}")
    return p


def check_file(name: str, path, suffixes=None) -> Path:
    """Return ``path`` as an existing regular file, optionally with one of ``suffixes``
    (e.g. ``(".npz", ".safetensors")``, compared case-insensitively), or raise naming
    ``name`` and the file: ``IsADirectoryError`` for a directory, ``ValueError`` for an
    empty file or a wrong suffix (besides :func:`check_path`'s errors)."""
    p = check_path(name, path)
    if p.is_dir():
        raise IsADirectoryError(f"{name}: expected a file, got the directory {str(p)!r}")
    if not p.is_file():
        raise ValueError(f"{name}: {str(p)!r} is not a regular file")
    if suffixes is not None:
        allowed = tuple(s.lower() for s in suffixes)
        if not p.name.lower().endswith(allowed):
            raise ValueError(f"{name}: {str(p)!r} must end with one of {', '.join(suffixes)}")
    if p.stat().st_size == 0:
        raise ValueError(f"{name}: {str(p)!r} is empty (0 bytes)")
    return p


def check_dir(name: str, path) -> Path:
    """Return ``path`` as an existing directory, or raise naming ``name`` and the path
    (``NotADirectoryError`` for a file, besides :func:`check_path`'s errors)."""
    p = check_path(name, path)
    if not p.is_dir():
        raise NotADirectoryError(f"{name}: expected a directory, got the file {str(p)!r}")
    return p
