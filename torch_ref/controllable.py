"""Controllable generation with predictor-corrector samplers: inpainting and colorization
with an unconditional score (Song et al. 2021, sec. 5 and app. I), in PyTorch.

Twin: ``jax_impl/controllable.py`` (same functions, JAX); its docstring gives the update
rules, the one deliberate difference from score_sde (``x_mean`` of the unknown part is the
predictor's mean, so ``denoise`` does what it says) and the noise layout. Images are NCHW
here: the channel axis is 1 (for ``[B, C]`` data that is also the last axis). The drivers
follow the twin's signatures with ``generator=`` in place of ``rng`` (the sampler
contract of ``torch_ref.samplers``): ``x_T`` is the unconditional prior state, ``noise``
the dict ``{"predictor", "corrector", "data"}``; what is not given is drawn from
``generator`` (the prior first, then per step).
"""

from __future__ import annotations

import torch

from spec import grids
from spec.validate import check_shape
from torch_ref.samplers import ScoreFn, _pc_prepare, pc_loop, pc_nfe
from torch_ref.utils import append_dims
from torch_ref.validate import check_array

__all__ = [
    "CHANNEL_AXIS",
    "decouple",
    "couple",
    "pc_inpaint",
    "pc_colorize",
]

CHANNEL_AXIS = 1
"""Channel axis of torch images (NCHW)."""


# ---------------------------------------------------------------------- colour space


def _channels_last_matmul(x, matrix, channel_axis):
    channel_axis = CHANNEL_AXIS if channel_axis is None else channel_axis
    x = torch.movedim(x, channel_axis, -1)
    if x.shape[-1] != 3:
        raise ValueError(f"expected 3 channels on axis {channel_axis}, got shape {tuple(x.shape)}")
    out = torch.einsum("...i,ij->...j", x, torch.as_tensor(matrix, dtype=x.dtype, device=x.device))
    return torch.movedim(out, -1, channel_axis)


def decouple(x, channel_axis: int | None = None):
    """``y_j = sum_i x_i M_ij`` over the channel axis (RGB -> gray-first decoupled space);
    ``channel_axis`` None: this side's image layout, ``CHANNEL_AXIS`` (1, NCHW)."""
    return _channels_last_matmul(x, grids.colorization_matrix(), channel_axis)


def couple(y, channel_axis: int | None = None):
    """The inverse of ``decouple``: ``x_i = sum_j y_j M_ij`` (M orthogonal)."""
    return _channels_last_matmul(y, grids.colorization_matrix().T, channel_axis)


# ------------------------------------------------------------------------ validation


def _check_data(name, data):
    """``data`` as a floating tensor ``[B, ...]`` (NaN / Inf rejected)."""
    if not torch.is_tensor(data):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(data).__name__}")
    data = check_array(name, data)
    check_shape(f"{name}.shape", tuple(data.shape))
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
        raise ValueError("mask must contain only 0 (unknown) and 1 (known) (no NaN)")
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


def _inpaint_start(data, mask, x_T):
    return data * mask + x_T * (1.0 - mask)


def _colorize_start(gray, x_T):
    mask = _gray_mask(gray)
    return couple(decouple(gray) * mask + decouple(x_T) * (1.0 - mask))


def _run(sde, score_fn, like, start, project, options, x_T, noise, generator):
    pred, corr, ts, score_fn, dtype, device, x_T, noise = _pc_prepare(
        sde, score_fn, tuple(like.shape), x_T, noise, like.dtype, generator, n_data=2, **options)
    if x_T is None:
        x_T = sde.prior_sampling(tuple(like.shape), dtype, generator=generator).to(like.device)
    out = pc_loop(sde, score_fn, start(x_T.to(like.device)), pred, corr, ts,
                  noise=None if noise is None else {k: v.to(like.device) for k, v in noise.items()},
                  project=project, n_data=2, denoise=options["denoise"], generator=generator)
    return out, pc_nfe(pred, corr, len(ts))


# ----------------------------------------------------------------------------- public


@torch.no_grad()
def pc_inpaint(sde, score_fn: ScoreFn, data, mask, *, predictor="reverse_diffusion",
               corrector="langevin", snr: float = 0.16, n_steps: int = 1,
               probability_flow: bool = False, denoise: bool = True, eps: float | None = None,
               x_T=None, noise=None, generator: torch.Generator | None = None):
    """Inpaint ``data [B, ...]`` where ``mask`` (1 = known, 0 = to fill) is 0; the twin's
    arguments without the key (``x_T``: the prior state, ``noise``: the step-noise dict),
    the rest drawn from ``generator``. Returns ``(samples, nfe)``."""
    data = _check_data("data", data)
    mask = _check_mask(mask, data)
    options = dict(predictor=predictor, corrector=corrector, snr=snr, n_steps=n_steps,
                   probability_flow=probability_flow, eps=eps, denoise=denoise)
    return _run(sde, score_fn, data, lambda x: _inpaint_start(data, mask, x),
                _inpaint_projection(sde, data, mask), options, x_T, noise, generator)


@torch.no_grad()
def pc_colorize(sde, score_fn: ScoreFn, gray, *, predictor="reverse_diffusion",
                corrector="langevin", snr: float = 0.16, n_steps: int = 1,
                probability_flow: bool = False, denoise: bool = True, eps: float | None = None,
                x_T=None, noise=None, generator: torch.Generator | None = None):
    """Colorize gray-scale images ``gray [B, C, ...]`` (NCHW, C = 3 equal channels or 1);
    the twin's arguments without the key. Returns ``(samples [B, 3, ...], nfe)``."""
    gray = _check_gray(gray)
    options = dict(predictor=predictor, corrector=corrector, snr=snr, n_steps=n_steps,
                   probability_flow=probability_flow, eps=eps, denoise=denoise)
    return _run(sde, score_fn, gray, lambda x: _colorize_start(gray, x),
                _colorize_projection(sde, gray), options, x_T, noise, generator)
