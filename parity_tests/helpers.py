"""Shared test helpers: the tolerance table, array conversion and a float64 GroupNorm."""

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


def numpy_group_norm(x, groups, eps, scale, bias):
    """float64 oracle: two-pass statistics over (spatial..., channels of the group)."""
    x = np.asarray(x, np.float64)
    N, C = x.shape[0], x.shape[-1]
    h = x.reshape(N, -1, groups, C // groups)
    mu = h.mean(axis=(1, 3), keepdims=True)
    var = ((h - mu) ** 2).mean(axis=(1, 3), keepdims=True)
    y = ((h - mu) / np.sqrt(var + eps)).reshape(x.shape)
    return y * np.asarray(scale, np.float64) + np.asarray(bias, np.float64)
