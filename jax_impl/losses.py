"""Per-example training losses of the score-based family (``[B]``; the caller reduces).

Twin: ``torch_ref/losses.py``. The improved-DDPM losses (MSE / RESCALED_MSE / KL /
RESCALED_KL, hybrid) are ``GaussianDiffusion.training_losses`` in ``jax_impl/diffusion.py``.

Every loss has a pure core that takes the random inputs (noise levels / times and the
noise ``z``) as arguments, and a ``get_*_loss_fn`` factory (score_sde's names) whose
returned function draws them from a key. Losses only see ``score_fn`` / ``model_fn``
callables, never a network library.

``reduce_mean=True`` averages the squared error over the non-batch dimensions;
``reduce_mean=False`` takes ``0.5 * sum`` (score_sde's convention).

Input checks (``jax_impl/validate.py``), all before any compute: ``x`` and the noise are
floating arrays of one shape without NaN/Inf (values checked when concrete), ``t`` lies in
``[0, T]``, labels are integer ``[B]`` indices in range, the options are bools, ``rng`` is
one PRNG key, and what ``score_fn`` / ``model_fn`` returns has ``x``'s shape and a floating
dtype (checked at trace time, so also under ``jit``).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from spec.validate import check_bool, check_callable, check_finite_array, check_float
from jax_impl.sde import VESDE, VPSDE, _SDEMethods
from jax_impl.utils import append_dims
from jax_impl.validate import (
    check_array,
    check_fn_output,
    check_indices,
    check_key,
    check_score_inputs,
    check_sde,
    is_concrete,
)

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


def _check_inputs(fn_name: str, fn, x, z) -> tuple[Array, Array]:
    """The checks every loss core makes: ``fn`` callable, ``x`` a floating ``[B, ...]``
    array and the noise ``z`` of x's shape (both without NaN/Inf when concrete)."""
    check_callable(fn_name, fn, f"{fn_name}(x, t) -> [B, ...]")
    x = check_array("x", x, min_ndim=1)
    z = check_array("noise z", z, shape=x.shape, like_name="x")
    return x, z


def _check_labels(labels, num: int, x) -> Array:
    return check_indices("labels", labels, num, what="integer noise-level indices [B]",
                         x_name="x", x=x)


def _call(fn_name: str, fn, x, labels) -> Array:
    """``fn(x, labels)``, its output checked at trace time (x's shape, floating dtype)."""
    out = fn(x, labels)
    check_fn_output(fn_name, out, x)
    return out


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
    x, z = _check_inputs("score_fn", score_fn, x, z)
    if is_concrete(sigmas):  # the noise ladder [L] (any order)
        check_finite_array("sigmas", sigmas, ndim=1, positive=True)
    sigmas = jnp.asarray(sigmas, dtype=x.dtype)
    anneal_power = check_float("anneal_power", anneal_power)
    labels = _check_labels(labels, sigmas.shape[0], x)
    used = append_dims(sigmas[labels], x.ndim)
    perturbed = x + used * z
    target = -z / used
    score = _call("score_fn", score_fn, perturbed, labels)
    sq = jnp.sum(((score - target) ** 2).reshape(x.shape[0], -1), axis=-1)
    return 0.5 * sq * sigmas[labels] ** anneal_power


def get_anneal_dsm_loss_fn(sigmas, anneal_power: float = 2.0):
    """``loss(rng, score_fn, x) -> [B]`` drawing uniform labels and Gaussian noise."""
    check_finite_array("sigmas", sigmas, ndim=1, positive=True)
    anneal_power = check_float("anneal_power", anneal_power)

    def loss_fn(rng, score_fn, x):
        x = check_array("x", x, min_ndim=1)
        k_label, k_z = jax.random.split(check_key("rng", rng))
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
    check_sde(sde)
    x, z = _check_inputs("score_fn", score_fn, x, z)
    check_score_inputs(x, t, sde.T)
    reduce_mean = check_bool("reduce_mean", reduce_mean)
    likelihood_weighting = check_bool("likelihood_weighting", likelihood_weighting)
    mean, std = sde.marginal_prob(x, t)
    std_b = append_dims(std, x.ndim)
    perturbed = mean + std_b * z
    score = _call("score_fn", score_fn, perturbed,
                  jnp.broadcast_to(jnp.asarray(t, x.dtype), (x.shape[0],)))
    if not likelihood_weighting:
        return _reduce((score * std_b + z) ** 2, reduce_mean)
    g2 = sde.sde(jnp.zeros_like(x), t)[1] ** 2
    return _reduce((score + z / std_b) ** 2, reduce_mean) * g2


def get_sde_loss_fn(sde, *, reduce_mean: bool = True, likelihood_weighting: bool = False,
                    eps: float = 1e-5):
    """``loss(rng, score_fn, x) -> [B]`` with t ~ U(eps, T) and z ~ N(0, I) (score_sde)."""
    check_sde(sde)
    reduce_mean = check_bool("reduce_mean", reduce_mean)
    likelihood_weighting = check_bool("likelihood_weighting", likelihood_weighting)
    eps = check_float("eps", eps)
    if not 0.0 < eps < sde.T:
        raise ValueError(f"eps must lie in (0, T={sde.T}), got {eps}")

    def loss_fn(rng, score_fn, x):
        x = check_array("x", x, min_ndim=1)
        k_t, k_z = jax.random.split(check_key("rng", rng))
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
    check_sde(sde, kind="VESDE", purpose="smld_loss")
    x, z = _check_inputs("model_fn", model_fn, x, z)
    labels = _check_labels(labels, sde.N, x)
    reduce_mean = check_bool("reduce_mean", reduce_mean)
    sigmas = jnp.asarray(sde.discrete_sigmas[::-1].copy(), dtype=x.dtype)[labels]
    sigma_b = append_dims(sigmas, x.ndim)
    noise = z * sigma_b
    score = _call("model_fn", model_fn, x + noise, labels)
    target = -noise / sigma_b**2
    return _reduce((score - target) ** 2, reduce_mean) * sigmas**2


def ddpm_loss(sde: VPSDE, model_fn, x, labels, z, *, reduce_mean: bool = True) -> Array:
    """score_sde's discrete DDPM loss (Ho et al. L_simple), ``[B]``:
    x_t = sqrt(alpha_bar_i) x + sqrt(1 - alpha_bar_i) z, loss = reduce(|eps(x_t, i) - z|^2)."""
    check_sde(sde, kind="VPSDE", purpose="ddpm_loss")
    x, z = _check_inputs("model_fn", model_fn, x, z)
    labels = _check_labels(labels, sde.N, x)
    reduce_mean = check_bool("reduce_mean", reduce_mean)
    a = jnp.asarray(sde.sqrt_alphas_cumprod, dtype=x.dtype)[labels]
    s = jnp.asarray(sde.sqrt_1m_alphas_cumprod, dtype=x.dtype)[labels]
    perturbed = append_dims(a, x.ndim) * x + append_dims(s, x.ndim) * z
    return _reduce((_call("model_fn", model_fn, perturbed, labels) - z) ** 2, reduce_mean)


def _discrete_loss_fn(core, sde, reduce_mean):
    reduce_mean = check_bool("reduce_mean", reduce_mean)

    def loss_fn(rng, model_fn, x):
        x = check_array("x", x, min_ndim=1)
        k_l, k_z = jax.random.split(check_key("rng", rng))
        labels = jax.random.randint(k_l, (x.shape[0],), 0, sde.N)
        z = jax.random.normal(k_z, x.shape, x.dtype)
        return core(sde, model_fn, x, labels, z, reduce_mean=reduce_mean)

    return loss_fn


def get_smld_loss_fn(sde: VESDE, *, reduce_mean: bool = False):
    """``loss(rng, model_fn, x) -> [B]`` with uniform labels in [0, N)."""
    check_sde(sde, kind="VESDE", purpose="SMLD training")
    return _discrete_loss_fn(smld_loss, sde, reduce_mean)


def get_ddpm_loss_fn(sde: VPSDE, *, reduce_mean: bool = True):
    """``loss(rng, model_fn, x) -> [B]`` with uniform labels in [0, N)."""
    check_sde(sde, kind="VPSDE", purpose="DDPM training")
    return _discrete_loss_fn(ddpm_loss, sde, reduce_mean)
