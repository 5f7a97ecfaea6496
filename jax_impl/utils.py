"""Small shared helpers: the one broadcasting helper ``append_dims``.

Twin: ``torch_ref/utils.py`` (same public names).

The argument checks live in ``jax_impl/validate.py``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["append_dims"]


def append_dims(c: jax.Array, ndim: int) -> jax.Array:
    """Append trailing singleton axes to ``c`` until it has ``ndim`` dimensions.

    Broadcasts a per-example coefficient ``[B]`` against data ``[B, ...]``.
    """
    c = jnp.asarray(c)
    missing = ndim - c.ndim
    if missing < 0:
        raise ValueError(f"append_dims: input has {c.ndim} dims, more than target ndim={ndim}")
    return c.reshape(c.shape + (1,) * missing)
