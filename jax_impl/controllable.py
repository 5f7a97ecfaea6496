"""Controllable generation with predictor-corrector samplers (Song et al. 2021, sec. 5 and
app. I): inpainting and colorization with an unconditional score, in JAX.

Twin: ``torch_ref/controllable.py`` (same functions, PyTorch; images NCHW there, NHWC
here: the channel axis is the last one on this side).

Both are PC samplers (``jax_impl.samplers.pc_loop``) with a projection after the
corrector and after the predictor that replaces the known part of x by the data
perturbed to the current noise level, with fresh noise z (score_sde's
``controllable_generation.py``):

  inpainting   ``mean, std = sde.marginal_prob(data, t)``;
               ``x <- x (1 - mask) + (mean + std z) mask``    (mask = 1 on known pixels)
  colorization the same in the decoupled space ``y = decouple(x) = x M`` (over channels),
               whose channel 0 is the gray level (times sqrt 3):
               ``x <- couple(decouple(x) (1 - m) + (mean + std z) m)``,
               ``mean, std = sde.marginal_prob(decouple(gray), t)``, m = (1, 0, 0).

Start: known part = the data, unknown part = a prior draw. ``M`` is
``spec.grids.colorization_matrix()``, exactly orthogonal, so ``couple = decouple^-1 = M^T``.

One deliberate difference from score_sde: there ``x_mean`` (what ``denoise=True``
returns) is rebuilt from the already re-noised ``x``, so its unknown pixels keep the last
predictor's noise and ``denoise`` only affects the known pixels. Here ``x_mean`` is the
last predictor's mean on the unknown part and the data mean on the known part, as
``denoise`` promises. With ``denoise=False`` the two agree exactly.

This replacement method is an approximation (score_sde app. I.2): the unknown part
follows the unconditional score next to a re-noised known part instead of the conditional
score; correctors at small t pull it towards the exact conditional. For a Gaussian with
VE + Langevin the result matches the exact conditional within Monte-Carlo error
(``parity_tests/test_controllable.py``); predictor-only VP sampling is visibly biased, and
for multi-modal data whose known part is unlikely under the prior's modes the samples
can commit to the wrong mode.

Randomness per PC step i, per sample j (from ``fold_in(fold_in(split(rng)[1], i), j)``,
as ``pc_sample``; independent of the batch size and its sharding): the corrector's and
predictor's noise and ``data [2, *shape]``, the re-noising after the corrector and after
the predictor. Pre-drawn, they are the driver's ``noise`` dict (``{"predictor": [N, B,
...], "corrector": [N, n_steps, B, ...], "data": [N, 2, B, ...]}``, the PC sampler's
keys plus ``data``); ``x_T`` is the unconditional prior state ``[B, ...]`` (e.g.
``sde.prior_from_noise(z)``, default: row j ``sde.prior_from_noise`` of a normal from
``fold_in(split(rng)[0], j)``) whose known part the sampler replaces by the data before
the first step.
"""

from __future__ import annotations

import jax.numpy as jnp

from jax_impl.samplers import ScoreFn, _draw_prior, _pc_prepare, pc_loop, pc_nfe
from jax_impl.utils import append_dims
from jax_impl.validate import check_array, is_concrete
from spec import grids
from spec.validate import check_shape

__all__ = [
    "CHANNEL_AXIS",
    "decouple",
    "couple",
    "pc_inpaint",
    "pc_colorize",
]
CHANNEL_AXIS = -1
"""Channel axis of JAX images (NHWC)."""


# ---------------------------------------------------------------------- colour space


def _channels_last_matmul(x, matrix, channel_axis):
    channel_axis = CHANNEL_AXIS if channel_axis is None else channel_axis
    x = jnp.moveaxis(x, channel_axis, -1)
    if x.shape[-1] != 3:
        raise ValueError(f"expected 3 channels on axis {channel_axis}, got shape {x.shape}")
    out = jnp.einsum("...i,ij->...j", x, jnp.asarray(matrix, x.dtype))
    return jnp.moveaxis(out, -1, channel_axis)


def decouple(x, channel_axis: int | None = None):
    """``y_j = sum_i x_i M_ij`` over the channel axis (RGB -> gray-first decoupled space);
    ``channel_axis`` None: this side's image layout, ``CHANNEL_AXIS`` (-1, NHWC)."""
    return _channels_last_matmul(x, grids.colorization_matrix(), channel_axis)


def couple(y, channel_axis: int | None = None):
    """The inverse of ``decouple``: ``x_i = sum_j y_j M_ij`` (M orthogonal)."""
    return _channels_last_matmul(y, grids.colorization_matrix().T, channel_axis)


# ------------------------------------------------------------------------ validation


def _check_data(name, data):
    """``data`` as a floating array ``[B, ...]`` (NaN / Inf rejected when concrete)."""
    data = check_array(name, data)
    check_shape(f"{name}.shape", data.shape)
    return data


def _check_mask(mask, data):
    mask = jnp.asarray(mask)
    if mask.ndim != data.ndim:
        raise ValueError(f"mask must have the rank of data ({data.ndim}), got shape {mask.shape}")
    try:
        mask = jnp.broadcast_to(mask, data.shape)
    except ValueError:
        raise ValueError(f"mask of shape {mask.shape} does not broadcast to data's shape {data.shape}") from None
    if is_concrete(mask) and not bool(jnp.all((mask == 0) | (mask == 1))):
        raise ValueError("mask must contain only 0 (unknown) and 1 (known) (no NaN)")
    return mask.astype(data.dtype)


def _check_gray(gray):
    gray = _check_data("gray", gray)
    c = gray.shape[CHANNEL_AXIS]
    if gray.ndim < 2 or c not in (1, 3):
        raise ValueError(f"gray must be [B, ..., C] with C = 1 or 3 channels last, got shape {gray.shape}")
    if c == 1:
        gray = jnp.broadcast_to(gray, gray.shape[:-1] + (3,))
    return gray


def _gray_mask(gray):
    """1 on the decoupled gray channel (0), 0 on the two colour channels; gray's shape."""
    m = jnp.asarray([1.0, 0.0, 0.0], gray.dtype)
    return jnp.broadcast_to(m, gray.shape)


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


_PC_DOC_ARGS = """predictor, corrector, snr, n_steps, probability_flow, denoise, eps: as
        ``jax_impl.samplers.pc_sample`` (eps defaults per SDE: 1e-5 VE, 1e-3 VP/sub-VP;
        score_sde's controllable code used 1e-5 with its VE models).
      x_T: the unconditional prior state ``[B, ...]`` (e.g. ``sde.prior_from_noise(z)``);
        its known part is replaced by the data. Default: row j ``sde.prior_from_noise``
        of a normal from ``fold_in(split(rng)[0], j)``.
      noise: pre-drawn step noise ``{"predictor": [N, B, ...], "corrector": [N, n_steps,
        B, ...], "data": [N, 2, B, ...]}`` (keys the configuration does not use are
        ignored); default: sample j of step i from ``fold_in(fold_in(split(rng)[1], i),
        j)``. ``rng`` may be None when ``x_T`` and ``noise`` are given."""


def _run(rng, sde, score_fn, like, start, project, options, x_T, noise):
    pred, corr, ts, score_fn, dtype, x_T, prior_key, loop_key, noise = _pc_prepare(
        rng, sde, score_fn, like.shape, x_T, noise, like.dtype, n_data=2, **options)
    if x_T is None:
        x_T = _draw_prior(sde, prior_key, like.shape, dtype)
    out = pc_loop(loop_key, sde, score_fn, start(x_T), pred, corr, ts, noise=noise,
                  project=project, n_data=2, denoise=options["denoise"])
    return out, pc_nfe(pred, corr, len(ts))


# ----------------------------------------------------------------------------- public


def pc_inpaint(rng, sde, score_fn: ScoreFn, data, mask, *, predictor="reverse_diffusion",
               corrector="langevin", snr: float = 0.16, n_steps: int = 1,
               probability_flow: bool = False, denoise: bool = True, eps: float | None = None,
               x_T=None, noise=None):
    """Inpaint ``data [B, ...]`` where ``mask`` (data's rank, broadcastable; 1 = known,
    0 = to fill) is 0, sampling the unknown part from the score model.

    Args:
      rng: PRNG key. sde, score_fn: as ``pc_sample``. data: the images (any rank; its
        dtype is the sampler's; NaN / Inf rejected); only its known part is read.
      {args}
    Returns ``(samples [B, ...], nfe)``. With ``denoise`` the known part is the data's
    marginal mean at ``eps`` (data itself for VE, ``m(eps) data`` for VP / sub-VP), without
    it the data re-noised to ``eps``.
    """
    data = _check_data("data", data)
    mask = _check_mask(mask, data)
    options = dict(predictor=predictor, corrector=corrector, snr=snr, n_steps=n_steps,
                   probability_flow=probability_flow, eps=eps, denoise=denoise)
    return _run(rng, sde, score_fn, data, lambda x: _inpaint_start(data, mask, x),
                _inpaint_projection(sde, data, mask), options, x_T, noise)


def pc_colorize(rng, sde, score_fn: ScoreFn, gray, *, predictor="reverse_diffusion",
                corrector="langevin", snr: float = 0.16, n_steps: int = 1,
                probability_flow: bool = False, denoise: bool = True, eps: float | None = None,
                x_T=None, noise=None):
    """Colorize gray-scale images ``gray [B, ..., C]`` (NHWC, C = 3 equal channels or 1):
    sample the two colour directions of the decoupled space given the gray level.

    Args:
      rng: PRNG key. sde, score_fn: as ``pc_sample`` (score_fn sees RGB images).
      {args} (``B, ...`` is the 3-channel image shape.)
    Returns ``(samples [B, ..., 3], nfe)``; the channel mean of the samples equals gray's.
    """
    gray = _check_gray(gray)
    options = dict(predictor=predictor, corrector=corrector, snr=snr, n_steps=n_steps,
                   probability_flow=probability_flow, eps=eps, denoise=denoise)
    return _run(rng, sde, score_fn, gray, lambda x: _colorize_start(gray, x),
                _colorize_projection(sde, gray), options, x_T, noise)


pc_inpaint.__doc__ = pc_inpaint.__doc__.format(args=_PC_DOC_ARGS)
pc_colorize.__doc__ = pc_colorize.__doc__.format(args=_PC_DOC_ARGS)
