"""Guided class-conditional sampling, in JAX: classifier-free guidance (Ho & Salimans 2021)
and classifier guidance (Song et al. 2021, sec. 5 and app. I.4; Dhariwal & Nichol 2021).

Twin: ``torch_ref/guidance.py`` (same functions, PyTorch; images NCHW there, NHWC here:
the channel axis is the last one on this side).

Both kinds of guidance only change the function a sampler is given, so every existing
driver (``jax_impl.samplers``: ``ddpm_sample``, ``ddim_sample``, ``ode_sample``,
``pc_sample``, the fast samplers) runs guided sampling unchanged and keeps its contract.

Classifier-free guidance: one network ``f(x, t, y)`` trained with label dropout to a null
class (``spec.train_config``: ``training.label_dropout``; the null class is the LAST label,
``null_label(model_config) = num_classes - 1``) predicts both eps(x, t | y) and eps(x, t);
with guidance scale w

    eps_w(x, t, y) = eps(x, t, null) + w (eps(x, t, y) - eps(x, t, null))

(``guidance_combine``): w = 1 is the conditional model, w = 0 the unconditional one, w > 1
sharpens the classes. Because score = -eps / std is linear in the output, the same mix of
scores (``cfg_score_fn``) is the same guidance for the score-based samplers.
``cfg_model_fn`` / ``cfg_score_fn`` evaluate the conditional and the null rows in ONE
batched call of ``2B`` rows (x and t repeated, labels ``[y; null]``), except for a Python
scale of exactly 1 or 0, which needs only one of the two (B rows). With a learned variance
(``learn_sigma=True``, output eps then v along the channel axis) only the eps half is
guided; v is the conditional row's (GLIDE's choice).

Classifier guidance (score_sde's ``get_pc_conditional_sampler``): for an unconditional score
and a noise-conditional classifier ``log_prob_fn(x, t, y) = log p_t(y | x) [B]``,

    score(x, t | y) = score(x, t) + s grad_x log p_t(y | x)

(``classifier_guided_score_fn``; scale s = 1 is Bayes' rule, the official sampler's only
value). ``pc_conditional_sample`` runs ``pc_sample`` with it. score_sde's classifier takes
the VE noise scale ``sigma = sde.marginal_prob(x, t)[1]`` instead of t: wrap such a
classifier as ``lambda x, t, y: log_softmax(classifier(x, sigma(t)))[arange(B), y]``.

Networks: ``conditional_model_fn(model, variables)`` is ``f(x, labels, y) =
model.apply(variables, x, labels, y=y, train=False)``. For the DDPM / DDIM samplers pass
``cfg_model_fn(f, y, ...)`` as their ``model_fn``; for the SDE samplers build the guided
score with ``models.utils.get_score_fn(sde, cfg_model_fn(f, y, ...), continuous=...)``
(the adapter is linear in the network's output, so this equals ``cfg_score_fn`` of the
class-conditional score).

Labels ``y``: one int label (every sample of that class) or int ``[B]``, any integer
dtype; ``null_label`` an int >= 0. ``scale``: a Python number (validated; 0 and 1 take the
one-call shortcut) or a scalar array (e.g. traced, so one compiled sampler serves every
scale).
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jax_impl.samplers import pc_sample
from jax_impl.validate import check_fn_output, is_concrete
from spec.sampler_args import check_callable
from spec.validate import check_bool, check_float, check_int

__all__ = [
    "CHANNEL_AXIS",
    "guidance_combine",
    "conditional_model_fn",
    "cfg_model_fn",
    "cfg_score_fn",
    "classifier_guided_score_fn",
    "pc_conditional_sample",
]

CHANNEL_AXIS = -1
"""Channel axis of JAX images (NHWC); a learned variance's eps / v halves split along it."""

ConditionalFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


# ------------------------------------------------------------------------- checks


def _check_scale(scale, name: str = "scale"):
    """A Python number (checked finite; any real value) or a scalar array."""
    if isinstance(scale, (bool, int, float)):
        return check_float(name, scale)
    if not hasattr(scale, "shape") or tuple(jnp.shape(scale)) != ():
        raise TypeError(f"{name} must be a number or a scalar array, got {type(scale).__name__} "
                        f"of shape {getattr(scale, 'shape', None)}")
    if not jnp.issubdtype(jnp.result_type(scale), jnp.floating) and not jnp.issubdtype(
            jnp.result_type(scale), jnp.integer):
        raise TypeError(f"{name} must be a real number, got dtype {jnp.result_type(scale)}")
    if is_concrete(scale) and not np.isfinite(np.asarray(scale)):
        raise ValueError(f"{name} must be finite, got {scale}")
    return scale


def _check_labels(y, name: str = "y"):
    """An int label or int ``[B]`` array (integer dtype; non-negative when concrete)."""
    if isinstance(y, bool):
        raise TypeError(f"{name} must be an int class label or an int array [B], got bool")
    if isinstance(y, int):
        return check_int(name, y, minimum=0)
    if not hasattr(y, "dtype"):
        raise TypeError(f"{name} must be an int class label or an int array [B], got "
                        f"{type(y).__name__}")
    y = jnp.asarray(y)
    if not jnp.issubdtype(y.dtype, jnp.integer):
        raise TypeError(f"{name} must hold integer class labels, got dtype {y.dtype}")
    if y.ndim > 1:
        raise ValueError(f"{name} must be a scalar label or have shape [B], got shape {y.shape}")
    if is_concrete(y) and y.size and int(np.min(np.asarray(y))) < 0:
        raise ValueError(f"{name} must hold labels >= 0, got {int(np.min(np.asarray(y)))}")
    return y


def _batch_labels(y, batch: int, name: str = "y"):
    """``y`` as int32 ``[batch]`` (a scalar label broadcast)."""
    y = jnp.asarray(y)
    if y.ndim == 1 and y.shape[0] != batch:
        raise ValueError(f"{name} must have shape [B] = [{batch}] (one label per sample), got "
                         f"shape {y.shape}")
    return jnp.broadcast_to(y, (batch,)).astype(jnp.int32)


def _batch_t(t, x):
    t = jnp.asarray(t)
    return jnp.broadcast_to(t, (jnp.shape(x)[0],)) if t.ndim == 0 else t


def _channel_axis(channel_axis, ndim: int) -> int:
    axis = CHANNEL_AXIS if channel_axis is None else check_int("channel_axis", channel_axis)
    if not -ndim < axis < ndim or axis % ndim == 0:
        raise ValueError(f"channel_axis={axis} is not a non-batch axis of {ndim}-d outputs")
    return axis


# ------------------------------------------------------------------------- public


def guidance_combine(cond, uncond, scale):
    """``uncond + scale (cond - uncond)``: classifier-free guidance's mix of the conditional
    and unconditional predictions (eps, scores or any output linear in them), elementwise,
    any shape."""
    cond, uncond = jnp.asarray(cond), jnp.asarray(uncond)
    scale = jnp.asarray(scale).astype(cond.dtype)
    return uncond + scale * (cond - uncond)


def conditional_model_fn(model, variables=None):
    """``f(x, labels, y) = model.apply(variables, x, labels, y=y, train=False)``: a
    class-conditional flax network (``num_classes > 0``) as the three-argument function
    the guidance wrappers take. ``variables`` is required (the twin's module holds its
    own parameters)."""
    if variables is None:
        raise TypeError("conditional_model_fn(model, variables): flax modules hold no parameters; pass "
                        "the variables from model.init or a checkpoint")
    if not hasattr(model, "apply"):
        raise TypeError(f"model must be a flax module, got {type(model).__name__}")

    def fn(x, labels, y):
        return model.apply(variables, x, labels, y=y, train=False)

    return fn


def _cfg(fn_name: str, fn: ConditionalFn, y, scale, null_label, learn_sigma, channel_axis):
    check_callable(fn_name, fn, f"{fn_name}(x, t, y)")
    y = _check_labels(y)
    scale = _check_scale(scale)
    null_label = check_int("null_label", null_label, minimum=0)
    learn_sigma = check_bool("learn_sigma", learn_sigma)
    python_scale = isinstance(scale, float)

    def guided(x, t):
        x = jnp.asarray(x)
        B = x.shape[0]
        t = _batch_t(t, x)
        yb = _batch_labels(y, B)
        null = jnp.full((B,), null_label, jnp.int32)
        if python_scale and scale == 1.0:
            return fn(x, t, yb)
        if python_scale and scale == 0.0:
            return fn(x, t, null)
        out = fn(jnp.concatenate([x, x]), jnp.concatenate([t, t]), jnp.concatenate([yb, null]))
        if not learn_sigma:
            check_fn_output(fn_name, out, jnp.concatenate([x, x]))
        cond, uncond = out[:B], out[B:]
        if not learn_sigma:
            return guidance_combine(cond, uncond, scale)
        axis = _channel_axis(channel_axis, cond.ndim)
        if cond.shape[axis] % 2:
            raise ValueError(f"{fn_name}: learn_sigma=True needs an output of 2C channels (eps, then v) "
                             f"on axis {axis}, got shape {tuple(out.shape)}")
        c_eps, c_v = jnp.split(cond, 2, axis=axis)
        u_eps, _ = jnp.split(uncond, 2, axis=axis)
        return jnp.concatenate([guidance_combine(c_eps, u_eps, scale), c_v], axis=axis)

    return guided


def cfg_model_fn(model_fn: ConditionalFn, y, *, scale, null_label: int, learn_sigma: bool = False,
                 channel_axis: Optional[int] = None):
    """Classifier-free guided ``model_fn(x, t) -> [B, ...]`` for ``ddpm_sample`` /
    ``ddim_sample`` (and, through ``models.utils.get_score_fn``, the SDE samplers).

    Args:
      model_fn: the class-conditional network ``model_fn(x [B, ...], t [B], y [B] int) ->
        eps [B, ...]`` (or ``[B, ..., 2C]``: eps then v, with ``learn_sigma``), e.g.
        ``conditional_model_fn(model, variables)``.
      y: the class of every sample: an int, or int ``[B]``.
      scale: the guidance scale w (1: conditional, 0: unconditional, > 1: guided).
      null_label: the label the network was trained to read as "no class" (label dropout's
        null class, ``spec.train_config.null_label(config)``).
      learn_sigma: the output holds eps then v along ``channel_axis`` (default
        ``CHANNEL_AXIS``, the last); only eps is guided, v is the conditional row's.

    Returns ``guided(x, t)``: ``eps(x, t, null) + w (eps(x, t, y) - eps(x, t, null))`` from one
    call of ``model_fn`` on ``2B`` rows (one call of B rows for a Python w of 1 or 0).
    """
    return _cfg("model_fn", model_fn, y, scale, null_label, learn_sigma, channel_axis)


def cfg_score_fn(score_fn: ConditionalFn, y, *, scale, null_label: int):
    """Classifier-free guided ``score_fn(x, t) -> [B, ...]`` for ``pc_sample``,
    ``ode_sample`` and the fast samplers, from a class-conditional score
    ``score_fn(x [B, ...], t [B], y [B] int)`` whose ``null_label`` row is the unconditional
    score: ``score(x, t, null) + w (score(x, t, y) - score(x, t, null))``, one batched call
    of ``2B`` rows (B rows for a Python w of 1 or 0). ``y``, ``scale``: as ``cfg_model_fn``."""
    return _cfg("score_fn", score_fn, y, scale, null_label, False, None)


def classifier_guided_score_fn(score_fn, log_prob_fn, y, *, scale=1.0):
    """``score_fn(x, t) + scale * grad_x log_prob_fn(x, t, y)``: classifier guidance of an
    unconditional score (score_sde's ``total_grad_fn``).

    Args:
      score_fn: ``score_fn(x [B, ...], t [B]) -> [B, ...]``, unconditional.
      log_prob_fn: ``log_prob_fn(x [B, ...], t [B], y [B] int) -> [B]``, a noise-conditional
        classifier's ``log p_t(y | x)`` per example (example b may depend on ``x[b]``
        only: the gradient is that of the batch sum).
      y: the class of every sample: an int, or int ``[B]``.
      scale: the classifier scale s (1: the exact conditional score by Bayes' rule).

    Returns the guided ``score_fn(x, t)`` (differentiable: ``jax.grad`` inside).
    """
    check_callable("score_fn", score_fn, "score_fn(x, t)")
    check_callable("log_prob_fn", log_prob_fn, "log_prob_fn(x, t, y)")
    y = _check_labels(y)
    scale = _check_scale(scale)

    def guided(x, t):
        x = jnp.asarray(x)
        t = _batch_t(t, x)
        yb = _batch_labels(y, x.shape[0])

        def total(xx):
            lp = log_prob_fn(xx, t, yb)
            if not hasattr(lp, "shape") or tuple(lp.shape) != (x.shape[0],):
                raise ValueError(f"log_prob_fn must return log p_t(y | x) per example, shape "
                                 f"[B] = [{x.shape[0]}], got {getattr(lp, 'shape', type(lp).__name__)}")
            return jnp.sum(lp)

        grad = jax.grad(total)(x)
        s = score_fn(x, t)
        return s + jnp.asarray(scale).astype(s.dtype) * grad.astype(s.dtype)

    return guided


def pc_conditional_sample(rng, sde, score_fn, log_prob_fn, y, shape, *, scale=1.0,
                          predictor="reverse_diffusion", corrector="langevin", snr: float = 0.16,
                          n_steps: int = 1, probability_flow: bool = False, denoise: bool = True,
                          eps: float | None = None, x_T=None, noise=None, dtype=None):
    """Class-conditional predictor-corrector sampling with a noise-conditional classifier
    (score_sde's ``get_pc_conditional_sampler``): ``pc_sample`` with
    ``classifier_guided_score_fn(score_fn, log_prob_fn, y, scale=scale)`` in every
    corrector and predictor step.

    Args:
      rng, sde, shape and the keywords after ``scale``: as ``jax_impl.samplers.pc_sample``
        (the same key layout, ``x_T=`` and ``noise=`` dict; ``rng`` may be None when
        everything random is given).
      score_fn: the unconditional ``score_fn(x, t)``.
      log_prob_fn: ``log p_t(y | x)`` ``[B]`` as ``log_prob_fn(x, t, y)``.
      y: int, or int ``[B]`` (``B = shape[0]``).
      scale: the classifier scale (score_sde: 1).

    Returns ``(samples [*shape], nfe)``, nfe counting guided score evaluations (each one
    score call and one classifier gradient).
    """
    guided = classifier_guided_score_fn(score_fn, log_prob_fn, y, scale=scale)
    y = _check_labels(y)
    if jnp.ndim(y) == 1 and isinstance(shape, (tuple, list)) and shape and jnp.shape(y)[0] != shape[0]:
        raise ValueError(f"y must have shape [B] = [{shape[0]}] (one label per sample), got "
                         f"shape {jnp.shape(y)}")
    return pc_sample(rng, sde, guided, shape, predictor=predictor, corrector=corrector, snr=snr,
                     n_steps=n_steps, probability_flow=probability_flow, denoise=denoise, eps=eps,
                     x_T=x_T, noise=noise, dtype=dtype)
