"""Controllable generation with predictor-corrector samplers: inpainting and colorization
with an unconditional score (Song et al. 2021, sec. 5 and app. I), in PyTorch.

Twin: ``jax_impl/controllable.py`` (same functions, JAX); its docstring gives the update
rules, the one deliberate difference from score_sde (``x_mean`` of the unknown part is the
predictor's mean, so ``denoise`` does what it says) and the noise layout. Images are NCHW
here: the channel axis is 1 (for ``[B, C]`` data that is also the last axis).
"""

from __future__ import annotations

import torch

from spec import grids
from torch_ref.samplers import (
    ScoreFn,
    check_shape,
    pc_components,
    pc_loop,
    pc_nfe,
    pc_noise_shapes,
    stack_step_noise,
)
from torch_ref.utils import append_dims

__all__ = [
    "CHANNEL_AXIS",
    "decouple",
    "couple",
    "pc_inpaint",
    "pc_inpaint_from_noise",
    "pc_colorize",
    "pc_colorize_from_noise",
]

CHANNEL_AXIS = 1
"""Channel axis of torch images (NCHW)."""


# ---------------------------------------------------------------------- colour space


def _channels_last_matmul(x, matrix, channel_axis):
    x = torch.movedim(x, channel_axis, -1)
    if x.shape[-1] != 3:
        raise ValueError(f"expected 3 channels on axis {channel_axis}, got shape {tuple(x.shape)}")
    out = torch.einsum("...i,ij->...j", x, torch.as_tensor(matrix, dtype=x.dtype, device=x.device))
    return torch.movedim(out, -1, channel_axis)


def decouple(x, channel_axis: int = CHANNEL_AXIS):
    """``y_j = sum_i x_i M_ij`` over the channel axis (RGB -> gray-first decoupled space)."""
    return _channels_last_matmul(x, grids.colorization_matrix(), channel_axis)


def couple(y, channel_axis: int = CHANNEL_AXIS):
    """The inverse of ``decouple``: ``x_i = sum_j y_j M_ij`` (M orthogonal)."""
    return _channels_last_matmul(y, grids.colorization_matrix().T, channel_axis)


# ------------------------------------------------------------------------ validation


def _check_data(name, data):
    if not torch.is_tensor(data):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(data).__name__}")
    check_shape(data.shape)
    if not data.dtype.is_floating_point:
        raise TypeError(f"{name} must have a floating dtype, got {data.dtype}")
    return data


def _check_mask(mask, data):
    mask = torch.as_tensor(mask, device=data.device)
    if mask.ndim != data.ndim:
        raise ValueError(f"mask must have the rank of data ({data.ndim}), got shape {tuple(mask.shape)}")
    try:
        mask = mask.expand(data.shape)
    except RuntimeError:
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to data's shape "
                         f"{tuple(data.shape)}") from None
    if not bool(torch.all((mask == 0) | (mask == 1))):
        raise ValueError("mask must contain only 0 (unknown) and 1 (known)")
    return mask.to(data.dtype)


def _check_gray(gray):
    gray = _check_data("gray", gray)
    if gray.ndim < 2 or gray.shape[CHANNEL_AXIS] not in (1, 3):
        raise ValueError(f"gray must be [B, C, ...] with C = 1 or 3 channels on axis 1, got "
                         f"shape {tuple(gray.shape)}")
    if gray.shape[CHANNEL_AXIS] == 1:
        gray = gray.expand(gray.shape[0], 3, *gray.shape[2:])
    return gray


def _gray_mask(gray):
    """1 on the decoupled gray channel (0), 0 on the two colour channels; gray's shape."""
    m = torch.zeros_like(gray)
    m[:, 0] = 1.0
    return m


# ---------------------------------------------------------------------- projections


def _inpaint_projection(sde, data, mask):
    def project(x, x_mean, t, z):
        mean, std = sde.marginal_prob(data, t)
        x = x * (1.0 - mask) + (mean + append_dims(std, data.ndim) * z) * mask
        x_mean = x_mean * (1.0 - mask) + mean * mask
        return x, x_mean
    return project


def _colorize_projection(sde, gray):
    y_gray = decouple(gray)
    mask = _gray_mask(gray)

    def project(x, x_mean, t, z):
        mean, std = sde.marginal_prob(y_gray, t)
        x = couple(decouple(x) * (1.0 - mask) + (mean + append_dims(std, x.ndim) * z) * mask)
        x_mean = couple(decouple(x_mean) * (1.0 - mask) + mean * mask)
        return x, x_mean
    return project


def _inpaint_start(sde, data, mask, prior_noise):
    return data * mask + sde.prior_from_noise(prior_noise) * (1.0 - mask)


def _colorize_start(sde, gray, prior_noise):
    mask = _gray_mask(gray)
    return couple(decouple(gray) * mask + decouple(sde.prior_from_noise(prior_noise)) * (1.0 - mask))


def _run(sde, score_fn, like, start, project, options, *, generator=None, noise_arrays=None,
         prior_noise=None):
    denoise = options.pop("denoise")
    pred, corr, ts = pc_components(sde, **options)
    shape = tuple(like.shape)
    if noise_arrays is None:
        z0 = torch.randn(shape, generator=generator, dtype=like.dtype, device=like.device)
        out = pc_loop(sde, score_fn, start(z0), pred, corr, ts, generator=generator,
                      project=project, n_data=2, denoise=denoise)
    else:
        shapes = pc_noise_shapes(pred, corr, shape, n_data=2)
        noise = stack_step_noise(shapes, len(ts), **noise_arrays)
        noise = {k: torch.as_tensor(v).to(dtype=like.dtype, device=like.device) for k, v in noise.items()}
        x = start(torch.as_tensor(prior_noise).to(dtype=like.dtype, device=like.device))
        out = pc_loop(sde, score_fn, x, pred, corr, ts, noise=noise, project=project, n_data=2,
                      denoise=denoise)
    return out, pc_nfe(pred, corr, len(ts))


def _check_prior_noise(prior_noise, shape):
    if tuple(torch.as_tensor(prior_noise).shape) != tuple(shape):
        raise ValueError(f"prior_noise must have shape {tuple(shape)}, got "
                         f"{tuple(torch.as_tensor(prior_noise).shape)}")


# ----------------------------------------------------------------------------- public


@torch.no_grad()
def pc_inpaint(sde, score_fn: ScoreFn, data, mask, *, generator: torch.Generator | None = None,
               predictor="reverse_diffusion", corrector="langevin", snr: float = 0.16,
               n_steps: int = 1, probability_flow: bool = False, denoise: bool = True,
               eps: float | None = None):
    """Inpaint ``data [B, ...]`` where ``mask`` (1 = known, 0 = to fill) is 0; the twin's
    arguments without the key, noise from ``generator``. Returns ``(samples, nfe)``."""
    data = _check_data("data", data)
    mask = _check_mask(mask, data)
    options = dict(predictor=predictor, corrector=corrector, snr=snr, n_steps=n_steps,
                   probability_flow=probability_flow, eps=eps, denoise=denoise)
    return _run(sde, score_fn, data, lambda z: _inpaint_start(sde, data, mask, z),
                _inpaint_projection(sde, data, mask), options, generator=generator)


@torch.no_grad()
def pc_inpaint_from_noise(sde, score_fn: ScoreFn, data, mask, prior_noise, predictor_noise=None,
                          corrector_noise=None, data_noise=None, *, predictor="reverse_diffusion",
                          corrector="langevin", snr: float = 0.16, n_steps: int = 1,
                          probability_flow: bool = False, denoise: bool = True,
                          eps: float | None = None):
    """``pc_inpaint`` with pre-drawn noise (shapes as the twin's). Returns ``(samples, nfe)``."""
    data = _check_data("data", data)
    mask = _check_mask(mask, data)
    _check_prior_noise(prior_noise, data.shape)
    options = dict(predictor=predictor, corrector=corrector, snr=snr, n_steps=n_steps,
                   probability_flow=probability_flow, eps=eps, denoise=denoise)
    arrays = dict(predictor_noise=predictor_noise, corrector_noise=corrector_noise, data_noise=data_noise)
    return _run(sde, score_fn, data, lambda z: _inpaint_start(sde, data, mask, z),
                _inpaint_projection(sde, data, mask), options, noise_arrays=arrays,
                prior_noise=prior_noise)


@torch.no_grad()
def pc_colorize(sde, score_fn: ScoreFn, gray, *, generator: torch.Generator | None = None,
                predictor="reverse_diffusion", corrector="langevin", snr: float = 0.16,
                n_steps: int = 1, probability_flow: bool = False, denoise: bool = True,
                eps: float | None = None):
    """Colorize gray-scale images ``gray [B, C, ...]`` (NCHW, C = 3 equal channels or 1);
    the twin's arguments without the key. Returns ``(samples [B, 3, ...], nfe)``."""
    gray = _check_gray(gray)
    options = dict(predictor=predictor, corrector=corrector, snr=snr, n_steps=n_steps,
                   probability_flow=probability_flow, eps=eps, denoise=denoise)
    return _run(sde, score_fn, gray, lambda z: _colorize_start(sde, gray, z),
                _colorize_projection(sde, gray), options, generator=generator)


@torch.no_grad()
def pc_colorize_from_noise(sde, score_fn: ScoreFn, gray, prior_noise, predictor_noise=None,
                           corrector_noise=None, data_noise=None, *, predictor="reverse_diffusion",
                           corrector="langevin", snr: float = 0.16, n_steps: int = 1,
                           probability_flow: bool = False, denoise: bool = True,
                           eps: float | None = None):
    """``pc_colorize`` with pre-drawn noise (shapes as the twin's, NCHW). Returns
    ``(samples, nfe)``."""
    gray = _check_gray(gray)
    _check_prior_noise(prior_noise, gray.shape)
    options = dict(predictor=predictor, corrector=corrector, snr=snr, n_steps=n_steps,
                   probability_flow=probability_flow, eps=eps, denoise=denoise)
    arrays = dict(predictor_noise=predictor_noise, corrector_noise=corrector_noise, data_noise=data_noise)
    return _run(sde, score_fn, gray, lambda z: _colorize_start(sde, gray, z),
                _colorize_projection(sde, gray), options, noise_arrays=arrays, prior_noise=prior_noise)
