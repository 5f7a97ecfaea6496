"""Small shared helpers: the one broadcasting helper ``append_dims``.

Twin: ``torch_ref/utils.py`` (same public names).

The argument checks that used to live here moved to ``jax_impl/validate.py``. They are
re-exported below only until every caller imports them from ``jax_impl.validate``
(transitional; import from ``jax_impl.validate`` in new code).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Transitional re-exports (issue 7): callers still importing these from utils are being
# switched to jax_impl.validate; remove once nobody imports them from here.
from jax_impl.validate import (  # noqa: F401
    check_array,
    check_batch,
    check_floating,
    check_score_inputs,
    check_time_range,
    is_concrete,
    resolve_dtype,
)

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
