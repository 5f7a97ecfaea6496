"""Gaussian mixtures with closed-form perturbed scores (numpy, float64).

If x_0 ~ sum_k w_k N(mu_k, C_k) and x_t = a x_0 + s z with z ~ N(0, I), then
  x_t ~ sum_k w_k N(a mu_k, a^2 C_k + s^2 I),
so the log-density and the score grad_x log p_t(x) of every perturbed marginal are known
exactly:
  score(x) = sum_k r_k(x) (-(a^2 C_k + s^2 I)^{-1} (x - a mu_k)),   r_k = posterior weight.
This is the ground truth that samplers fed the exact score must reproduce.
Twins (same formulas in each framework): ``jax_impl/gmm.py``, ``torch_ref/gmm.py``.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class GaussianMixture:
    """A mixture ``sum_k weights[k] N(means[k], covs[k])`` in D dimensions.

    weights [K] (summing to 1), means [K, D], covs [K, D, D] (symmetric positive definite).
    """

    weights: np.ndarray
    means: np.ndarray
    covs: np.ndarray

    def __post_init__(self):
        w = np.asarray(self.weights, np.float64)
        m = np.asarray(self.means, np.float64)
        c = np.asarray(self.covs, np.float64)
        if w.ndim != 1 or m.ndim != 2 or c.ndim != 3 or not (len(w) == len(m) == len(c)):
            raise ValueError(f"weights [K], means [K, D], covs [K, D, D] expected, got "
                             f"{w.shape}, {m.shape}, {c.shape}")
        if c.shape[1:] != (m.shape[1], m.shape[1]):
            raise ValueError(f"covs must be [K, D, D] with D = {m.shape[1]}, got {c.shape}")
        if np.any(w < 0) or not np.isclose(w.sum(), 1.0):
            raise ValueError(f"weights must be non-negative and sum to 1, got {w}")
        object.__setattr__(self, "weights", w)
        object.__setattr__(self, "means", m)
        object.__setattr__(self, "covs", c)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def mean(self) -> np.ndarray:
        """Mixture mean ``[D]``."""
        return self.weights @ self.means

    @property
    def cov(self) -> np.ndarray:
        """Mixture covariance ``[D, D]`` (within + between components)."""
        mu = self.mean
        diff = self.means - mu
        return np.einsum("k,kij->ij", self.weights, self.covs) + np.einsum("k,ki,kj->ij", self.weights, diff, diff)

    def perturbed(self, a: float, s: float) -> "GaussianMixture":
        """Law of ``a x_0 + s z``: means ``a mu_k``, covariances ``a^2 C_k + s^2 I``."""
        eye = np.eye(self.dim)
        return GaussianMixture(self.weights, a * self.means, a**2 * self.covs + s**2 * eye)

    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` samples ``[n, D]`` and their component labels ``[n]``."""
        labels = rng.choice(len(self.weights), size=n, p=self.weights)
        chol = np.linalg.cholesky(self.covs)
        z = rng.standard_normal((n, self.dim))
        x = self.means[labels] + np.einsum("nij,nj->ni", chol[labels], z)
        return x, labels

    def _component_terms(self, x: np.ndarray):
        x = np.atleast_2d(np.asarray(x, np.float64))
        prec = np.linalg.inv(self.covs)  # [K, D, D]
        diff = x[:, None, :] - self.means[None]  # [n, K, D]
        maha = np.einsum("nki,kij,nkj->nk", diff, prec, diff)
        _, logdet = np.linalg.slogdet(self.covs)
        log_comp = np.log(self.weights)[None] - 0.5 * (maha + logdet[None] + self.dim * np.log(2 * np.pi))
        return x, prec, diff, log_comp

    def log_prob(self, x: np.ndarray) -> np.ndarray:
        """``log p(x)`` ``[n]``."""
        _, _, _, log_comp = self._component_terms(x)
        mx = log_comp.max(axis=1, keepdims=True)
        return (mx + np.log(np.exp(log_comp - mx).sum(axis=1, keepdims=True)))[:, 0]

    def score(self, x: np.ndarray) -> np.ndarray:
        """``grad_x log p(x)`` ``[n, D]``."""
        _, prec, diff, log_comp = self._component_terms(x)
        r = np.exp(log_comp - log_comp.max(axis=1, keepdims=True))
        r /= r.sum(axis=1, keepdims=True)
        return -np.einsum("nk,kij,nkj->ni", r, prec, diff)

    def responsibilities(self, x: np.ndarray) -> np.ndarray:
        """Posterior component probabilities ``[n, K]``."""
        _, _, _, log_comp = self._component_terms(x)
        r = np.exp(log_comp - log_comp.max(axis=1, keepdims=True))
        return r / r.sum(axis=1, keepdims=True)


def demo_mixture() -> GaussianMixture:
    """The 2-D mixture of the demo and the sampler tests: 3 well-separated, unequal,
    anisotropic components (data scale ~1, like centred images)."""
    weights = np.array([0.5, 0.3, 0.2])
    means = np.array([[-1.0, -0.5], [1.0, 0.8], [0.2, 1.5]])
    covs = np.array([
        [[0.06, 0.02], [0.02, 0.04]],
        [[0.03, -0.01], [-0.01, 0.05]],
        [[0.02, 0.0], [0.0, 0.02]],
    ])
    return GaussianMixture(weights, means, covs)
