"""Gaussian-mixture ground truth: jax == torch == numpy, score == grad log p, moments."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jax_impl import gmm as jg
from parity_tests.helpers import to_np, tol
from spec.oracles.gmm import GaussianMixture, demo_mixture
from torch_ref import gmm as tg


@pytest.mark.parametrize("a, s", [(1.0, 0.0), (0.6, 0.8), (1.0, 3.0)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_score_and_log_prob_three_way(a, s, dtype, np_rng):
    m = demo_mixture()
    x = np_rng.standard_normal((9, 2)).astype(dtype)
    p = m.perturbed(a, s)
    args = (m.weights, m.means, m.covs, a, s)
    sj = jax.jit(lambda x: jg.gmm_score(x, *args))(jnp.asarray(x))
    lj = jg.gmm_log_prob(jnp.asarray(x), *args)
    st = tg.gmm_score(torch.as_tensor(x), *args)
    lt = tg.gmm_log_prob(torch.as_tensor(x), *args)
    t = tol(dtype) if dtype == np.float64 else dict(rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(to_np(sj), p.score(x.astype(np.float64)), **t)
    np.testing.assert_allclose(to_np(st), p.score(x.astype(np.float64)), **t)
    np.testing.assert_allclose(to_np(lj), p.log_prob(x.astype(np.float64)), **t)
    np.testing.assert_allclose(to_np(lt), p.log_prob(x.astype(np.float64)), **t)


def test_score_is_gradient_of_log_prob(np_rng):
    m = demo_mixture()
    x = jnp.asarray(np_rng.standard_normal((5, 2)))
    grad = jax.vmap(jax.grad(lambda xi: jg.gmm_log_prob(xi[None], m.weights, m.means, m.covs, 0.7, 0.5)[0]))(x)
    np.testing.assert_allclose(grad, jg.gmm_score(x, m.weights, m.means, m.covs, 0.7, 0.5), rtol=1e-10, atol=1e-12)


def test_sample_moments_and_validation():
    m = demo_mixture()
    x, labels = m.sample(np.random.default_rng(0), 100000)
    np.testing.assert_allclose(x.mean(0), m.mean, atol=0.01)
    np.testing.assert_allclose(np.cov(x.T), m.cov, atol=0.01)
    np.testing.assert_allclose(np.bincount(labels) / len(labels), m.weights, atol=0.005)
    with pytest.raises(ValueError, match="sum to 1"):
        GaussianMixture(np.array([0.5, 0.6]), m.means[:2], m.covs[:2])
    with pytest.raises(ValueError, match="covs must be"):
        GaussianMixture(m.weights, m.means, m.covs[:, :1, :1])
