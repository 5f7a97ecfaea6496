"""Per-example training losses of the score-based family (``[B]``; the caller reduces).

Twin: ``jax_impl/losses.py`` (see it for the equations). The improved-DDPM losses are
``GaussianDiffusion.training_losses`` in ``torch_ref/diffusion.py``.

Pure cores take the random inputs as arguments; ``get_*_loss_fn`` factories return
``loss(score_fn, x, generator=None) -> [B]`` that draw them from a ``torch.Generator``.

Input checks (``torch_ref/validate.py``), as on the JAX side: floating finite ``x`` and
noise of one shape, ``t`` in ``[0, T]``, integer labels in range, bool options, ``generator``
None or a ``torch.Generator``, and what ``score_fn`` / ``model_fn`` returns has ``x``'s
shape and a floating dtype.
"""

from __future__ import annotations

from typing import Callable

import torch

from spec.validate import check_bool, check_callable, check_finite_array, check_float
from torch_ref.sde import VESDE, VPSDE, _SDEMethods
from torch_ref.utils import append_dims
from torch_ref.validate import (
    check_array,
    check_fn_output,
    check_generator,
    check_indices,
    check_score_inputs,
    check_sde,
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

Tensor = torch.Tensor


def _reduce(values: Tensor, reduce_mean: bool) -> Tensor:
    flat = values.reshape(values.shape[0], -1)
    return flat.mean(dim=-1) if reduce_mean else 0.5 * flat.sum(dim=-1)


def _check_inputs(fn_name: str, fn, x, z) -> tuple[Tensor, Tensor]:
    """The checks every loss core makes: ``fn`` callable, ``x`` a floating ``[B, ...]``
    tensor and the noise ``z`` of x's shape (both without NaN/Inf)."""
    check_callable(fn_name, fn, f"{fn_name}(x, t) -> [B, ...]")
    x = check_array("x", x, min_ndim=1)
    z = check_array("noise z", z, shape=tuple(x.shape), like_name="x")
    return x, z


def _check_sigmas(sigmas):
    """The noise ladder ``[L]`` (any order); returned unchanged."""
    values = sigmas.detach().cpu().numpy() if torch.is_tensor(sigmas) else sigmas
    check_finite_array("sigmas", values, ndim=1, positive=True)
    return sigmas


def _check_labels(labels, num: int, x) -> Tensor:
    return check_indices("labels", labels, num, what="integer noise-level indices [B]",
                         x_name="x", x=x)


def _call(fn_name: str, fn, x, labels) -> Tensor:
    """``fn(x, labels)``, its output checked (x's shape, floating dtype)."""
    out = fn(x, labels)
    check_fn_output(fn_name, out, x)
    return out


def anneal_dsm_loss(score_fn: Callable, x: Tensor, labels: Tensor, z: Tensor, sigmas,
                    anneal_power: float = 2.0) -> Tensor:
    """NCSN denoising score matching, ``[B]``: 1/2 |score(x + s z) + z/s|^2 s^anneal_power."""
    x, z = _check_inputs("score_fn", score_fn, x, z)
    sigmas = torch.as_tensor(_check_sigmas(sigmas), dtype=x.dtype, device=x.device)
    anneal_power = check_float("anneal_power", anneal_power)
    labels = _check_labels(labels, sigmas.shape[0], x)
    used = append_dims(sigmas[labels], x.ndim)
    perturbed = x + used * z
    target = -z / used
    score = _call("score_fn", score_fn, perturbed, labels)
    sq = ((score - target) ** 2).reshape(x.shape[0], -1).sum(dim=-1)
    return 0.5 * sq * sigmas[labels] ** anneal_power


def get_anneal_dsm_loss_fn(sigmas, anneal_power: float = 2.0):
    """``loss(score_fn, x, generator=None) -> [B]`` drawing uniform labels and noise."""
    sigmas = _check_sigmas(sigmas)
    anneal_power = check_float("anneal_power", anneal_power)

    def loss_fn(score_fn, x, generator=None):
        generator = check_generator("generator", generator)
        x = check_array("x", x, min_ndim=1)
        labels = torch.randint(0, len(sigmas), (x.shape[0],), generator=generator, device=x.device)
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        return anneal_dsm_loss(score_fn, x, labels, z, sigmas, anneal_power)

    return loss_fn


def sde_loss(sde: _SDEMethods, score_fn: Callable, x: Tensor, t, z: Tensor, *,
             reduce_mean: bool = True, likelihood_weighting: bool = False) -> Tensor:
    """Denoising score matching for a continuous SDE (Song et al. 2021 eq. 7), ``[B]``."""
    check_sde(sde)
    x, z = _check_inputs("score_fn", score_fn, x, z)
    check_score_inputs(x, t, sde.T)
    reduce_mean = check_bool("reduce_mean", reduce_mean)
    likelihood_weighting = check_bool("likelihood_weighting", likelihood_weighting)
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    t = t.expand(x.shape[0]) if t.ndim == 0 else t
    mean, std = sde.marginal_prob(x, t)
    std_b = append_dims(std, x.ndim)
    perturbed = mean + std_b * z
    score = _call("score_fn", score_fn, perturbed, t)
    if not likelihood_weighting:
        return _reduce((score * std_b + z) ** 2, reduce_mean)
    g2 = sde.sde(torch.zeros_like(x), t)[1] ** 2
    return _reduce((score + z / std_b) ** 2, reduce_mean) * g2


def get_sde_loss_fn(sde, *, reduce_mean: bool = True, likelihood_weighting: bool = False,
                    eps: float = 1e-5):
    """``loss(score_fn, x, generator=None) -> [B]`` with t ~ U(eps, T), z ~ N(0, I)."""
    check_sde(sde)
    reduce_mean = check_bool("reduce_mean", reduce_mean)
    likelihood_weighting = check_bool("likelihood_weighting", likelihood_weighting)
    eps = check_float("eps", eps)
    if not 0.0 < eps < sde.T:
        raise ValueError(f"eps must lie in (0, T={sde.T}), got {eps}")

    def loss_fn(score_fn, x, generator=None):
        generator = check_generator("generator", generator)
        x = check_array("x", x, min_ndim=1)
        t = torch.rand(x.shape[0], generator=generator, dtype=x.dtype, device=x.device) * (sde.T - eps) + eps
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        return sde_loss(sde, score_fn, x, t, z, reduce_mean=reduce_mean,
                        likelihood_weighting=likelihood_weighting)

    return loss_fn


def smld_loss(sde: VESDE, model_fn, x, labels, z, *, reduce_mean: bool = False) -> Tensor:
    """score_sde's discrete SMLD loss on the flipped VE sigma table, ``[B]``."""
    check_sde(sde, kind="VESDE", purpose="smld_loss")
    x, z = _check_inputs("model_fn", model_fn, x, z)
    labels = _check_labels(labels, sde.N, x)
    reduce_mean = check_bool("reduce_mean", reduce_mean)
    sigmas = torch.as_tensor(sde.discrete_sigmas[::-1].copy(), dtype=x.dtype, device=x.device)[labels]
    sigma_b = append_dims(sigmas, x.ndim)
    noise = z * sigma_b
    score = _call("model_fn", model_fn, x + noise, labels)
    target = -noise / sigma_b**2
    return _reduce((score - target) ** 2, reduce_mean) * sigmas**2


def ddpm_loss(sde: VPSDE, model_fn, x, labels, z, *, reduce_mean: bool = True) -> Tensor:
    """score_sde's discrete DDPM loss (L_simple), ``[B]``."""
    check_sde(sde, kind="VPSDE", purpose="ddpm_loss")
    x, z = _check_inputs("model_fn", model_fn, x, z)
    labels = _check_labels(labels, sde.N, x)
    reduce_mean = check_bool("reduce_mean", reduce_mean)
    a = torch.as_tensor(sde.sqrt_alphas_cumprod, dtype=x.dtype, device=x.device)[labels]
    s = torch.as_tensor(sde.sqrt_1m_alphas_cumprod, dtype=x.dtype, device=x.device)[labels]
    perturbed = append_dims(a, x.ndim) * x + append_dims(s, x.ndim) * z
    return _reduce((_call("model_fn", model_fn, perturbed, labels) - z) ** 2, reduce_mean)


def _discrete_loss_fn(core, sde, reduce_mean):
    reduce_mean = check_bool("reduce_mean", reduce_mean)

    def loss_fn(model_fn, x, generator=None):
        generator = check_generator("generator", generator)
        x = check_array("x", x, min_ndim=1)
        labels = torch.randint(0, sde.N, (x.shape[0],), generator=generator, device=x.device)
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        return core(sde, model_fn, x, labels, z, reduce_mean=reduce_mean)

    return loss_fn


def get_smld_loss_fn(sde: VESDE, *, reduce_mean: bool = False):
    """``loss(model_fn, x, generator=None) -> [B]`` with uniform labels in [0, N)."""
    check_sde(sde, kind="VESDE", purpose="SMLD training")
    return _discrete_loss_fn(smld_loss, sde, reduce_mean)


def get_ddpm_loss_fn(sde: VPSDE, *, reduce_mean: bool = True):
    """``loss(model_fn, x, generator=None) -> [B]`` with uniform labels in [0, N)."""
    check_sde(sde, kind="VPSDE", purpose="DDPM training")
    return _discrete_loss_fn(ddpm_loss, sde, reduce_mean)
