"""Exact perturbed scores and densities of Gaussian mixtures, in PyTorch.

Twin: ``jax_impl/gmm.py``; float64 oracle and the maths: ``spec/oracles/gmm.py``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from torch_ref.utils import append_dims

__all__ = [
    "gmm_log_prob",
    "gmm_score",
    "score_fn_for_sde",
]


def _log_components(x, weights, means, covs, a, s):
    """log w_k N(x; a mu_k, a^2 C_k + s^2 I) ``[B, K]`` and C^{-1}(x - a mu_k) ``[B, K, D]``."""
    D = x.shape[-1]
    eye = torch.eye(D, dtype=x.dtype, device=x.device)
    cov = append_dims(a**2, 4) * covs[None] + append_dims(s**2, 4) * eye[None, None]
    diff = x[:, None, :] - append_dims(a, 3) * means[None]
    chol = torch.linalg.cholesky(cov)
    sol = torch.cholesky_solve(diff[..., None], chol)[..., 0]
    maha = torch.sum(diff * sol, dim=-1)
    logdet = 2.0 * torch.sum(torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)), dim=-1)
    log_comp = torch.log(weights)[None] - 0.5 * (maha + logdet + D * math.log(2 * math.pi))
    return log_comp, sol


def _prep(x, weights, means, covs, a, s):
    cast = lambda v: torch.as_tensor(np.asarray(v) if not torch.is_tensor(v) else v, dtype=x.dtype, device=x.device)  # noqa: E731
    a = cast(a).expand(x.shape[0]) if cast(a).ndim == 0 else cast(a)
    s = cast(s).expand(x.shape[0]) if cast(s).ndim == 0 else cast(s)
    return cast(weights), cast(means), cast(covs), a, s


def gmm_log_prob(x, weights, means, covs, a=1.0, s=0.0):
    """``log p_t(x)`` ``[B]`` of the perturbed mixture; x ``[B, D]``, a and s scalars or ``[B]``."""
    log_comp, _ = _log_components(x, *_prep(x, weights, means, covs, a, s))
    return torch.logsumexp(log_comp, dim=-1)


def gmm_score(x, weights, means, covs, a=1.0, s=0.0):
    """``grad_x log p_t(x)`` ``[B, D]`` = -sum_k r_k(x) (a^2 C_k + s^2 I)^{-1} (x - a mu_k)."""
    log_comp, sol = _log_components(x, *_prep(x, weights, means, covs, a, s))
    r = torch.softmax(log_comp, dim=-1)
    return -torch.sum(r[..., None] * sol, dim=1)


def score_fn_for_sde(sde, mixture):
    """Exact ``score_fn(x, t)`` of ``mixture`` perturbed by ``sde`` (a(t), s(t) from
    ``sde.marginal_prob``)."""
    weights, means, covs = (np.asarray(v) for v in (mixture.weights, mixture.means, mixture.covs))

    def score_fn(x, t):
        mean, std = sde.marginal_prob(torch.ones_like(x), t)
        return gmm_score(x, weights, means, covs, mean[:, 0], std)

    return score_fn
