"""Shared test helpers: the tolerance table and array conversion."""

from __future__ import annotations

import numpy as np
import torch

# rtol / atol per dtype, for jax == torch == numpy comparisons of the same formula.
TOL = {
    np.float64: dict(rtol=1e-10, atol=1e-12),
    np.float32: dict(rtol=2e-5, atol=2e-6),
}


def tol(dtype) -> dict:
    """Tolerances for comparing arrays computed in ``dtype``."""
    return TOL[np.dtype(dtype).type]


def to_np(x) -> np.ndarray:
    """jax array / torch tensor / numpy -> numpy (detached, on CPU)."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)
