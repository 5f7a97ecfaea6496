"""Per-example training losses of the score-based family (``[B]``; the caller reduces).

Twin: ``torch_ref/losses.py``. The improved-DDPM losses (MSE / RESCALED_MSE / KL /
RESCALED_KL, hybrid) are ``GaussianDiffusion.training_losses`` in ``jax_impl/diffusion.py``.

Every loss has a pure core that takes the random inputs (noise levels / times and the
noise ``z``) as arguments, and a ``get_*_loss_fn`` factory (score_sde's names) whose
returned function draws them from a key. Losses only see ``score_fn`` / ``model_fn``
callables, never a network library.

``reduce_mean=True`` averages the squared error over the non-batch dimensions;
``reduce_mean=False`` takes ``0.5 * sum`` (score_sde's convention).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from jax_impl.sde import VESDE, VPSDE, _SDEMethods
from jax_impl.utils import append_dims, check_batch, check_floating, check_time_range, is_concrete

__all__ = [
    "smld_loss",
    "anneal_dsm_loss",
    "sde_loss",
    "ddpm_loss",
    "get_smld_loss_fn",
    "get_anneal_dsm_loss_fn",
    "get_sde_loss_fn",
    "get_ddpm_loss_fn",
]

Array = jax.Array


def _reduce(values: Array, reduce_mean: bool) -> Array:
    axes = tuple(range(1, values.ndim))
    return jnp.mean(values, axis=axes) if reduce_mean else 0.5 * jnp.sum(values, axis=axes)


def _check_labels(name: str, labels, num: int, x) -> None:
    check_batch("x", x, name, labels)
    if jnp.ndim(labels) != 1:
        raise ValueError(f"{name} must have shape [B], got {jnp.shape(labels)}")
    if not jnp.issubdtype(jnp.result_type(labels), jnp.integer):
        raise TypeError(f"{name} must be integer noise-level indices, got {jnp.result_type(labels)}")
    if is_concrete(labels):
        lo, hi = int(jnp.min(labels)), int(jnp.max(labels))
        if lo < 0 or hi >= num:
            raise ValueError(f"{name} must lie in [0, {num}), got values in [{lo}, {hi}]")


def _check_noise(x, z) -> None:
    check_floating("x", x)
    if jnp.shape(z) != jnp.shape(x):
        raise ValueError(f"noise z must have the shape of x {jnp.shape(x)}, got {jnp.shape(z)}")


# ----------------------------------------------------------------- NCSN (SMLD)


def anneal_dsm_loss(
    score_fn: Callable[[Array, Array], Array],
    x: Array,
    labels: Array,
    z: Array,
    sigmas: Array,
    anneal_power: float = 2.0,
) -> Array:
    """NCSN denoising score matching (Song & Ermon 2019, eq. 5-6), per example ``[B]``.

    x~ = x + sigma_i z,  target = -(x~ - x) / sigma_i^2 = -z / sigma_i,
    loss = 1/2 ||score(x~, i) - target||^2 * sigma_i^anneal_power  (lambda = sigma^2).

    Args:
      score_fn: ``score_fn(x_tilde, labels) -> [B, ...]``; labels are noise-level indices.
      x: data ``[B, ...]``; labels: int ``[B]`` into ``sigmas``; z: standard normal like x;
      sigmas: the noise ladder ``[L]``.
    """
    _check_noise(x, z)
    sigmas = jnp.asarray(sigmas, dtype=x.dtype)
    _check_labels("labels", labels, sigmas.shape[0], x)
    used = append_dims(sigmas[labels], x.ndim)
    perturbed = x + used * z
    target = -z / used
    score = score_fn(perturbed, labels)
    sq = jnp.sum(((score - target) ** 2).reshape(x.shape[0], -1), axis=-1)
    return 0.5 * sq * sigmas[labels] ** anneal_power


def get_anneal_dsm_loss_fn(sigmas, anneal_power: float = 2.0):
    """``loss(rng, score_fn, x) -> [B]`` drawing uniform labels and Gaussian noise."""

    def loss_fn(rng, score_fn, x):
        k_label, k_z = jax.random.split(rng)
        labels = jax.random.randint(k_label, (x.shape[0],), 0, len(sigmas))
        z = jax.random.normal(k_z, x.shape, x.dtype)
        return anneal_dsm_loss(score_fn, x, labels, z, sigmas, anneal_power)

    return loss_fn


# ------------------------------------------------------------- continuous SDEs


def sde_loss(
    sde: _SDEMethods,
    score_fn: Callable[[Array, Array], Array],
    x: Array,
    t: Array,
    z: Array,
    *,
    reduce_mean: bool = True,
    likelihood_weighting: bool = False,
) -> Array:
    """Denoising score matching for a continuous SDE (Song et al. 2021 eq. 7), ``[B]``.

    x_t = mean(t) x + std(t) z. Without likelihood weighting (lambda = std^2):
      loss = reduce(|score(x_t, t) std + z|^2);
    with it (lambda = g(t)^2, Song et al. 2021b):
      loss = reduce(|score(x_t, t) + z / std|^2) * g(t)^2.
    """
    _check_noise(x, z)
    check_batch("x", x, "t", t)
    check_time_range("t", t, 0.0, sde.T)
    mean, std = sde.marginal_prob(x, t)
    std_b = append_dims(std, x.ndim)
    perturbed = mean + std_b * z
    score = score_fn(perturbed, jnp.broadcast_to(jnp.asarray(t, x.dtype), (x.shape[0],)))
    if not likelihood_weighting:
        return _reduce((score * std_b + z) ** 2, reduce_mean)
    g2 = sde.sde(jnp.zeros_like(x), t)[1] ** 2
    return _reduce((score + z / std_b) ** 2, reduce_mean) * g2


def get_sde_loss_fn(sde, *, reduce_mean: bool = True, likelihood_weighting: bool = False,
                    eps: float = 1e-5):
    """``loss(rng, score_fn, x) -> [B]`` with t ~ U(eps, T) and z ~ N(0, I) (score_sde)."""
    if not 0.0 < eps < sde.T:
        raise ValueError(f"eps must lie in (0, T={sde.T}), got {eps}")

    def loss_fn(rng, score_fn, x):
        k_t, k_z = jax.random.split(rng)
        t = jax.random.uniform(k_t, (x.shape[0],), x.dtype) * (sde.T - eps) + eps
        z = jax.random.normal(k_z, x.shape, x.dtype)
        return sde_loss(sde, score_fn, x, t, z, reduce_mean=reduce_mean,
                        likelihood_weighting=likelihood_weighting)

    return loss_fn


# ------------------------------------------------------------ discrete SMLD / DDPM


def smld_loss(sde: VESDE, model_fn, x, labels, z, *, reduce_mean: bool = False) -> Array:
    """score_sde's discrete SMLD loss on the *flipped* VE sigma table, ``[B]``.

    sigma = flip(discrete_sigmas)[label] (label 0 is sigma_max), x~ = x + sigma z,
    loss = reduce(|model(x~, label) + z / sigma|^2) * sigma^2.
    """
    if not isinstance(sde, VESDE):
        raise TypeError(f"smld_loss needs a VESDE, got {type(sde).__name__}")
    _check_noise(x, z)
    _check_labels("labels", labels, sde.N, x)
    sigmas = jnp.asarray(sde.discrete_sigmas[::-1].copy(), dtype=x.dtype)[labels]
    sigma_b = append_dims(sigmas, x.ndim)
    noise = z * sigma_b
    score = model_fn(x + noise, labels)
    target = -noise / sigma_b**2
    return _reduce((score - target) ** 2, reduce_mean) * sigmas**2


def ddpm_loss(sde: VPSDE, model_fn, x, labels, z, *, reduce_mean: bool = True) -> Array:
    """score_sde's discrete DDPM loss (Ho et al. L_simple), ``[B]``:
    x_t = sqrt(alpha_bar_i) x + sqrt(1 - alpha_bar_i) z, loss = reduce(|eps(x_t, i) - z|^2)."""
    if type(sde) is not VPSDE:
        raise TypeError(f"ddpm_loss needs a VPSDE, got {type(sde).__name__}")
    _check_noise(x, z)
    _check_labels("labels", labels, sde.N, x)
    a = jnp.asarray(sde.sqrt_alphas_cumprod, dtype=x.dtype)[labels]
    s = jnp.asarray(sde.sqrt_1m_alphas_cumprod, dtype=x.dtype)[labels]
    perturbed = append_dims(a, x.ndim) * x + append_dims(s, x.ndim) * z
    return _reduce((model_fn(perturbed, labels) - z) ** 2, reduce_mean)


def _discrete_loss_fn(core, sde, reduce_mean):
    def loss_fn(rng, model_fn, x):
        k_l, k_z = jax.random.split(rng)
        labels = jax.random.randint(k_l, (x.shape[0],), 0, sde.N)
        z = jax.random.normal(k_z, x.shape, x.dtype)
        return core(sde, model_fn, x, labels, z, reduce_mean=reduce_mean)

    return loss_fn


def get_smld_loss_fn(sde: VESDE, *, reduce_mean: bool = False):
    """``loss(rng, model_fn, x) -> [B]`` with uniform labels in [0, N)."""
    if not isinstance(sde, VESDE):
        raise TypeError(f"SMLD training needs a VESDE, got {type(sde).__name__}")
    return _discrete_loss_fn(smld_loss, sde, reduce_mean)


def get_ddpm_loss_fn(sde: VPSDE, *, reduce_mean: bool = True):
    """``loss(rng, model_fn, x) -> [B]`` with uniform labels in [0, N)."""
    if type(sde) is not VPSDE:
        raise TypeError(f"DDPM training needs a VPSDE, got {type(sde).__name__}")
    return _discrete_loss_fn(ddpm_loss, sde, reduce_mean)
