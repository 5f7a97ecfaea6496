"""Small shared helpers: the one broadcasting helper ``append_dims``.

Twin: ``jax_impl/utils.py`` (same public names).

The argument checks live in ``torch_ref/validate.py``.
"""

from __future__ import annotations

import torch

__all__ = ["append_dims"]


def append_dims(c: torch.Tensor, ndim: int) -> torch.Tensor:
    """Append trailing singleton axes to ``c`` until it has ``ndim`` dimensions.

    Broadcasts a per-example coefficient ``[B]`` against data ``[B, ...]``.
    """
    c = torch.as_tensor(c)
    missing = ndim - c.ndim
    if missing < 0:
        raise ValueError(f"append_dims: input has {c.ndim} dims, more than target ndim={ndim}")
    return c.reshape(tuple(c.shape) + (1,) * missing)
