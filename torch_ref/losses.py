"""Per-example training losses of the score-based family (``[B]``; the caller reduces).

Twin: ``jax_impl/losses.py`` (see it for the equations). The improved-DDPM losses are
``GaussianDiffusion.training_losses`` in ``torch_ref/diffusion.py``.

Pure cores take the random inputs as arguments; ``get_*_loss_fn`` factories return
``loss(score_fn, x, generator=None) -> [B]`` that draw them from a ``torch.Generator``.
"""

from __future__ import annotations

from typing import Callable

import torch

from torch_ref.sde import VESDE, VPSDE, _SDEMethods
from torch_ref.utils import append_dims, check_batch, check_floating, check_time_range

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


def _check_labels(name: str, labels, num: int, x) -> None:
    check_batch("x", x, name, labels)
    labels = torch.as_tensor(labels)
    if labels.ndim != 1:
        raise ValueError(f"{name} must have shape [B], got {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise TypeError(f"{name} must be integer noise-level indices, got {labels.dtype}")
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= num:
        raise ValueError(f"{name} must lie in [0, {num}), got values in [{lo}, {hi}]")


def _check_noise(x, z) -> None:
    check_floating("x", x)
    if tuple(z.shape) != tuple(x.shape):
        raise ValueError(f"noise z must have the shape of x {tuple(x.shape)}, got {tuple(z.shape)}")


def anneal_dsm_loss(score_fn: Callable, x: Tensor, labels: Tensor, z: Tensor, sigmas,
                    anneal_power: float = 2.0) -> Tensor:
    """NCSN denoising score matching, ``[B]``: 1/2 |score(x + s z) + z/s|^2 s^anneal_power."""
    _check_noise(x, z)
    sigmas = torch.as_tensor(sigmas, dtype=x.dtype, device=x.device)
    _check_labels("labels", labels, sigmas.shape[0], x)
    used = append_dims(sigmas[labels], x.ndim)
    perturbed = x + used * z
    target = -z / used
    score = score_fn(perturbed, labels)
    sq = ((score - target) ** 2).reshape(x.shape[0], -1).sum(dim=-1)
    return 0.5 * sq * sigmas[labels] ** anneal_power


def get_anneal_dsm_loss_fn(sigmas, anneal_power: float = 2.0):
    """``loss(score_fn, x, generator=None) -> [B]`` drawing uniform labels and noise."""

    def loss_fn(score_fn, x, generator=None):
        labels = torch.randint(0, len(sigmas), (x.shape[0],), generator=generator, device=x.device)
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        return anneal_dsm_loss(score_fn, x, labels, z, sigmas, anneal_power)

    return loss_fn


def sde_loss(sde: _SDEMethods, score_fn: Callable, x: Tensor, t, z: Tensor, *,
             reduce_mean: bool = True, likelihood_weighting: bool = False) -> Tensor:
    """Denoising score matching for a continuous SDE (Song et al. 2021 eq. 7), ``[B]``."""
    _check_noise(x, z)
    check_batch("x", x, "t", t)
    check_time_range("t", t, 0.0, sde.T)
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    t = t.expand(x.shape[0]) if t.ndim == 0 else t
    mean, std = sde.marginal_prob(x, t)
    std_b = append_dims(std, x.ndim)
    perturbed = mean + std_b * z
    score = score_fn(perturbed, t)
    if not likelihood_weighting:
        return _reduce((score * std_b + z) ** 2, reduce_mean)
    g2 = sde.sde(torch.zeros_like(x), t)[1] ** 2
    return _reduce((score + z / std_b) ** 2, reduce_mean) * g2


def get_sde_loss_fn(sde, *, reduce_mean: bool = True, likelihood_weighting: bool = False,
                    eps: float = 1e-5):
    """``loss(score_fn, x, generator=None) -> [B]`` with t ~ U(eps, T), z ~ N(0, I)."""
    if not 0.0 < eps < sde.T:
        raise ValueError(f"eps must lie in (0, T={sde.T}), got {eps}")

    def loss_fn(score_fn, x, generator=None):
        t = torch.rand(x.shape[0], generator=generator, dtype=x.dtype, device=x.device) * (sde.T - eps) + eps
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        return sde_loss(sde, score_fn, x, t, z, reduce_mean=reduce_mean,
                        likelihood_weighting=likelihood_weighting)

    return loss_fn


def smld_loss(sde: VESDE, model_fn, x, labels, z, *, reduce_mean: bool = False) -> Tensor:
    """score_sde's discrete SMLD loss on the flipped VE sigma table, ``[B]``."""
    if not isinstance(sde, VESDE):
        raise TypeError(f"smld_loss needs a VESDE, got {type(sde).__name__}")
    _check_noise(x, z)
    _check_labels("labels", labels, sde.N, x)
    sigmas = torch.as_tensor(sde.discrete_sigmas[::-1].copy(), dtype=x.dtype, device=x.device)[labels]
    sigma_b = append_dims(sigmas, x.ndim)
    noise = z * sigma_b
    score = model_fn(x + noise, labels)
    target = -noise / sigma_b**2
    return _reduce((score - target) ** 2, reduce_mean) * sigmas**2


def ddpm_loss(sde: VPSDE, model_fn, x, labels, z, *, reduce_mean: bool = True) -> Tensor:
    """score_sde's discrete DDPM loss (L_simple), ``[B]``."""
    if type(sde) is not VPSDE:
        raise TypeError(f"ddpm_loss needs a VPSDE, got {type(sde).__name__}")
    _check_noise(x, z)
    _check_labels("labels", labels, sde.N, x)
    a = torch.as_tensor(sde.sqrt_alphas_cumprod, dtype=x.dtype, device=x.device)[labels]
    s = torch.as_tensor(sde.sqrt_1m_alphas_cumprod, dtype=x.dtype, device=x.device)[labels]
    perturbed = append_dims(a, x.ndim) * x + append_dims(s, x.ndim) * z
    return _reduce((model_fn(perturbed, labels) - z) ** 2, reduce_mean)


def _discrete_loss_fn(core, sde, reduce_mean):
    def loss_fn(model_fn, x, generator=None):
        labels = torch.randint(0, sde.N, (x.shape[0],), generator=generator, device=x.device)
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        return core(sde, model_fn, x, labels, z, reduce_mean=reduce_mean)

    return loss_fn


def get_smld_loss_fn(sde: VESDE, *, reduce_mean: bool = False):
    """``loss(model_fn, x, generator=None) -> [B]`` with uniform labels in [0, N)."""
    if not isinstance(sde, VESDE):
        raise TypeError(f"SMLD training needs a VESDE, got {type(sde).__name__}")
    return _discrete_loss_fn(smld_loss, sde, reduce_mean)


def get_ddpm_loss_fn(sde: VPSDE, *, reduce_mean: bool = True):
    """``loss(model_fn, x, generator=None) -> [B]`` with uniform labels in [0, N)."""
    if type(sde) is not VPSDE:
        raise TypeError(f"DDPM training needs a VPSDE, got {type(sde).__name__}")
    return _discrete_loss_fn(ddpm_loss, sde, reduce_mean)
