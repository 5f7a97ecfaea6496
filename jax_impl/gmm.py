"""Exact perturbed scores and densities of Gaussian mixtures, in JAX.

Twin: ``torch_ref/gmm.py``; float64 oracle and the maths: ``spec/oracles/gmm.py``.

For x_0 ~ sum_k w_k N(mu_k, C_k) and x_t = a(t) x_0 + s(t) z the perturbed marginal is
sum_k w_k N(a mu_k, a^2 C_k + s^2 I). ``a`` and ``s`` come from an SDE's
``marginal_prob``, so ``score_fn_for_sde`` gives the exact ``score_fn(x, t)`` that every
sampler must turn back into the mixture.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jax_impl.utils import append_dims

__all__ = [
    "gmm_log_prob",
    "gmm_score",
    "score_fn_for_sde",
]


def _log_components(x, weights, means, covs, a, s):
    """log w_k N(x; a mu_k, a^2 C_k + s^2 I) ``[B, K]`` and the precision-times-diff ``[B, K, D]``.

    x [B, D]; a, s [B].
    """
    D = x.shape[-1]
    eye = jnp.eye(D, dtype=x.dtype)
    cov = (append_dims(a**2, 4) * covs[None] + append_dims(s**2, 4) * eye[None, None])  # [B,K,D,D]
    diff = x[:, None, :] - append_dims(a, 3) * means[None]  # [B,K,D]
    chol = jnp.linalg.cholesky(cov)
    sol = jax.scipy.linalg.cho_solve((chol, True), diff[..., None])[..., 0]  # C^{-1} diff
    maha = jnp.sum(diff * sol, axis=-1)
    logdet = 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), axis=-1)
    log_comp = jnp.log(weights)[None] - 0.5 * (maha + logdet + D * jnp.log(2 * jnp.pi))
    return log_comp, sol


def gmm_log_prob(x, weights, means, covs, a=1.0, s=0.0):
    """``log p_t(x)`` ``[B]`` of the perturbed mixture; x ``[B, D]``, a and s scalars or ``[B]``."""
    a = jnp.broadcast_to(jnp.asarray(a, x.dtype), x.shape[:1])
    s = jnp.broadcast_to(jnp.asarray(s, x.dtype), x.shape[:1])
    log_comp, _ = _log_components(x, *(jnp.asarray(v, x.dtype) for v in (weights, means, covs)), a, s)
    return jax.scipy.special.logsumexp(log_comp, axis=-1)


def gmm_score(x, weights, means, covs, a=1.0, s=0.0):
    """``grad_x log p_t(x)`` ``[B, D]`` = -sum_k r_k(x) (a^2 C_k + s^2 I)^{-1} (x - a mu_k)."""
    a = jnp.broadcast_to(jnp.asarray(a, x.dtype), x.shape[:1])
    s = jnp.broadcast_to(jnp.asarray(s, x.dtype), x.shape[:1])
    log_comp, sol = _log_components(x, *(jnp.asarray(v, x.dtype) for v in (weights, means, covs)), a, s)
    r = jax.nn.softmax(log_comp, axis=-1)
    return -jnp.sum(r[..., None] * sol, axis=1)


def score_fn_for_sde(sde, mixture):
    """Exact ``score_fn(x, t)`` of ``mixture`` (a ``spec.oracles.gmm.GaussianMixture``)
    perturbed by ``sde``: a(t) and s(t) read from ``sde.marginal_prob``."""
    weights, means, covs = (np.asarray(v) for v in (mixture.weights, mixture.means, mixture.covs))

    def score_fn(x, t):
        mean, std = sde.marginal_prob(jnp.ones_like(x), t)
        return gmm_score(x, weights, means, covs, mean[:, 0], std)

    return score_fn
