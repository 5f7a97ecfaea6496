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

Randomness per PC step i (from ``fold_in(key, i)``): the corrector's and predictor's
noise and ``data [2, *shape]``, the re-noising after the corrector and after the
predictor. ``*_from_noise`` take those arrays pre-drawn (``data_noise [N, 2, *shape]``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jax_impl.samplers import (
    ScoreFn,
    check_shape,
    pc_components,
    pc_loop,
    pc_nfe,
    pc_noise_shapes,
    stack_step_noise,
)
from jax_impl.utils import append_dims, is_concrete
from spec import grids

__all__ = [
    "CHANNEL_AXIS",
    "decouple",
    "couple",
    "pc_inpaint",
    "pc_inpaint_from_noise",
    "pc_colorize",
    "pc_colorize_from_noise",
]

CHANNEL_AXIS = -1
"""Channel axis of JAX images (NHWC)."""


# ---------------------------------------------------------------------- colour space


def _channels_last_matmul(x, matrix, channel_axis):
    x = jnp.moveaxis(x, channel_axis, -1)
    if x.shape[-1] != 3:
        raise ValueError(f"expected 3 channels on axis {channel_axis}, got shape {x.shape}")
    out = jnp.einsum("...i,ij->...j", x, jnp.asarray(matrix, x.dtype))
    return jnp.moveaxis(out, -1, channel_axis)


def decouple(x, channel_axis: int = CHANNEL_AXIS):
    """``y_j = sum_i x_i M_ij`` over the channel axis (RGB -> gray-first decoupled space)."""
    return _channels_last_matmul(x, grids.colorization_matrix(), channel_axis)


def couple(y, channel_axis: int = CHANNEL_AXIS):
    """The inverse of ``decouple``: ``x_i = sum_j y_j M_ij`` (M orthogonal)."""
    return _channels_last_matmul(y, grids.colorization_matrix().T, channel_axis)


# ------------------------------------------------------------------------ validation


def _check_data(name, data):
    data = jnp.asarray(data)
    check_shape(data.shape)
    if not jnp.issubdtype(data.dtype, jnp.floating):
        raise TypeError(f"{name} must have a floating dtype, got {data.dtype}")
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
        raise ValueError("mask must contain only 0 (unknown) and 1 (known)")
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


def _inpaint_start(sde, data, mask, prior_noise):
    return data * mask + sde.prior_from_noise(prior_noise) * (1.0 - mask)


def _colorize_start(sde, gray, prior_noise):
    mask = _gray_mask(gray)
    return couple(decouple(gray) * mask + decouple(sde.prior_from_noise(prior_noise)) * (1.0 - mask))


_PC_DOC_ARGS = """predictor, corrector, snr, n_steps, probability_flow, denoise, eps: as
      ``jax_impl.samplers.pc_sample`` (eps defaults per SDE: 1e-5 VE, 1e-3 VP/sub-VP;
      score_sde's controllable code used 1e-5 with its VE models)."""


def _run(sde, score_fn, shape, dtype, start, project, options, *, rng=None, noise_arrays=None,
         prior_noise=None):
    denoise = options.pop("denoise")
    pred, corr, ts = pc_components(sde, **options)
    if rng is not None:
        prior_key, loop_key = jax.random.split(rng)
        x = start(jax.random.normal(prior_key, shape, dtype))
        out = pc_loop(sde, score_fn, x, pred, corr, ts, key=loop_key, project=project, n_data=2,
                      denoise=denoise)
    else:
        shapes = pc_noise_shapes(pred, corr, shape, n_data=2)
        noise = stack_step_noise(shapes, len(ts), **noise_arrays)
        noise = {k: jnp.asarray(v, dtype) for k, v in noise.items()}
        x = start(jnp.asarray(prior_noise, dtype))
        out = pc_loop(sde, score_fn, x, pred, corr, ts, noise=noise, project=project, n_data=2,
                      denoise=denoise)
    return out, pc_nfe(pred, corr, len(ts))


def _check_prior_noise(prior_noise, shape):
    if tuple(jnp.shape(prior_noise)) != tuple(shape):
        raise ValueError(f"prior_noise must have shape {tuple(shape)}, got {tuple(jnp.shape(prior_noise))}")


# ----------------------------------------------------------------------------- public


def pc_inpaint(rng, sde, score_fn: ScoreFn, data, mask, *, predictor="reverse_diffusion",
               corrector="langevin", snr: float = 0.16, n_steps: int = 1,
               probability_flow: bool = False, denoise: bool = True, eps: float | None = None):
    """Inpaint ``data [B, ...]`` where ``mask`` (data's rank, broadcastable; 1 = known,
    0 = to fill) is 0, sampling the unknown part from the score model.

    Args:
      rng: PRNG key. sde, score_fn: as ``pc_sample``. data: the images (any rank; its
        dtype is the sampler's); only its known part is read.
      {args}
    Returns ``(samples [B, ...], nfe)``. With ``denoise`` the known part is the data's
    marginal mean at ``eps`` (data itself for VE, ``m(eps) data`` for VP / sub-VP), without
    it the data re-noised to ``eps``.
    """
    data = _check_data("data", data)
    mask = _check_mask(mask, data)
    options = dict(predictor=predictor, corrector=corrector, snr=snr, n_steps=n_steps,
                   probability_flow=probability_flow, eps=eps, denoise=denoise)
    return _run(sde, score_fn, data.shape, data.dtype,
                lambda z: _inpaint_start(sde, data, mask, z),
                _inpaint_projection(sde, data, mask), options, rng=rng)


def pc_inpaint_from_noise(sde, score_fn: ScoreFn, data, mask, prior_noise, predictor_noise=None,
                          corrector_noise=None, data_noise=None, *, predictor="reverse_diffusion",
                          corrector="langevin", snr: float = 0.16, n_steps: int = 1,
                          probability_flow: bool = False, denoise: bool = True,
                          eps: float | None = None):
    """``pc_inpaint`` with pre-drawn noise: ``prior_noise [B, ...]``, ``predictor_noise
    [N, B, ...]``, ``corrector_noise [N, n_steps, B, ...]`` (None where unused) and
    ``data_noise [N, 2, B, ...]``. Returns ``(samples, nfe)``."""
    data = _check_data("data", data)
    mask = _check_mask(mask, data)
    _check_prior_noise(prior_noise, data.shape)
    options = dict(predictor=predictor, corrector=corrector, snr=snr, n_steps=n_steps,
                   probability_flow=probability_flow, eps=eps, denoise=denoise)
    arrays = dict(predictor_noise=predictor_noise, corrector_noise=corrector_noise, data_noise=data_noise)
    return _run(sde, score_fn, data.shape, data.dtype,
                lambda z: _inpaint_start(sde, data, mask, z),
                _inpaint_projection(sde, data, mask), options, noise_arrays=arrays,
                prior_noise=prior_noise)


def pc_colorize(rng, sde, score_fn: ScoreFn, gray, *, predictor="reverse_diffusion",
                corrector="langevin", snr: float = 0.16, n_steps: int = 1,
                probability_flow: bool = False, denoise: bool = True, eps: float | None = None):
    """Colorize gray-scale images ``gray [B, ..., C]`` (NHWC, C = 3 equal channels or 1):
    sample the two colour directions of the decoupled space given the gray level.

    Args:
      rng: PRNG key. sde, score_fn: as ``pc_sample`` (score_fn sees RGB images).
      {args}
    Returns ``(samples [B, ..., 3], nfe)``; the channel mean of the samples equals gray's.
    """
    gray = _check_gray(gray)
    options = dict(predictor=predictor, corrector=corrector, snr=snr, n_steps=n_steps,
                   probability_flow=probability_flow, eps=eps, denoise=denoise)
    return _run(sde, score_fn, gray.shape, gray.dtype, lambda z: _colorize_start(sde, gray, z),
                _colorize_projection(sde, gray), options, rng=rng)


def pc_colorize_from_noise(sde, score_fn: ScoreFn, gray, prior_noise, predictor_noise=None,
                           corrector_noise=None, data_noise=None, *, predictor="reverse_diffusion",
                           corrector="langevin", snr: float = 0.16, n_steps: int = 1,
                           probability_flow: bool = False, denoise: bool = True,
                           eps: float | None = None):
    """``pc_colorize`` with pre-drawn noise (shapes as ``pc_inpaint_from_noise``, with
    ``B, ...`` the 3-channel image shape). Returns ``(samples, nfe)``."""
    gray = _check_gray(gray)
    _check_prior_noise(prior_noise, gray.shape)
    options = dict(predictor=predictor, corrector=corrector, snr=snr, n_steps=n_steps,
                   probability_flow=probability_flow, eps=eps, denoise=denoise)
    arrays = dict(predictor_noise=predictor_noise, corrector_noise=corrector_noise, data_noise=data_noise)
    return _run(sde, score_fn, gray.shape, gray.dtype, lambda z: _colorize_start(sde, gray, z),
                _colorize_projection(sde, gray), options, noise_arrays=arrays, prior_noise=prior_noise)


pc_inpaint.__doc__ = pc_inpaint.__doc__.format(args=_PC_DOC_ARGS)
pc_colorize.__doc__ = pc_colorize.__doc__.format(args=_PC_DOC_ARGS)
