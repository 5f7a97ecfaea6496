"""Guided class-conditional sampling, in PyTorch: classifier-free guidance (Ho & Salimans
2021) and classifier guidance (Song et al. 2021, sec. 5 and app. I.4).

Twin: ``jax_impl/guidance.py`` (the same functions and semantics; see its docstring for
the formulas). Images are NCHW here, so ``CHANNEL_AXIS`` (where a learned variance's eps
and v halves split) is 1.

* ``guidance_combine(cond, uncond, scale) = uncond + scale (cond - uncond)``.
* ``cfg_model_fn`` / ``cfg_score_fn``: the guided ``model_fn(x, t)`` / ``score_fn(x, t)``
  of a class-conditional ``f(x, t, y)`` whose ``null_label`` row is unconditional (the last
  label with ``spec.train_config``'s label dropout), from one batched call of ``2B`` rows
  (B rows for a Python scale of 1 or 0).
* ``classifier_guided_score_fn``: ``score + scale * grad_x log_prob_fn(x, t, y)``, the
  gradient by ``torch.autograd.grad`` under ``torch.enable_grad()`` (the samplers run under
  ``no_grad``); ``pc_conditional_sample`` runs ``torch_ref.samplers.pc_sample`` with it.
* ``conditional_model_fn(model)``: ``f(x, labels, y) = model(x, labels, y=y)``.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from spec.sampler_args import check_callable
from spec.validate import check_bool, check_float, check_int
from torch_ref.samplers import pc_sample
from torch_ref.validate import check_fn_output

__all__ = [
    "CHANNEL_AXIS",
    "guidance_combine",
    "conditional_model_fn",
    "cfg_model_fn",
    "cfg_score_fn",
    "classifier_guided_score_fn",
    "pc_conditional_sample",
]

CHANNEL_AXIS = 1
"""Channel axis of torch images (NCHW); a learned variance's eps / v halves split along it."""

ConditionalFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


# ------------------------------------------------------------------------- checks


def _check_scale(scale, name: str = "scale"):
    """A Python number (checked finite) or a 0-d real tensor."""
    if isinstance(scale, (bool, int, float)):
        return check_float(name, scale)
    if not torch.is_tensor(scale) or scale.ndim != 0:
        raise TypeError(f"{name} must be a number or a scalar tensor, got {type(scale).__name__} "
                        f"of shape {tuple(getattr(scale, 'shape', ())) or None}")
    if scale.dtype.is_complex or scale.dtype == torch.bool:
        raise TypeError(f"{name} must be a real number, got dtype {scale.dtype}")
    if not bool(torch.isfinite(scale)):
        raise ValueError(f"{name} must be finite, got {scale}")
    return scale


def _check_labels(y, name: str = "y"):
    """An int label or an int ``[B]`` tensor (integer dtype, non-negative)."""
    if isinstance(y, bool):
        raise TypeError(f"{name} must be an int class label or an int array [B], got bool")
    if isinstance(y, int):
        return check_int(name, y, minimum=0)
    if not torch.is_tensor(y):
        raise TypeError(f"{name} must be an int class label or an int array [B], got "
                        f"{type(y).__name__}")
    if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer class labels, got dtype {y.dtype}")
    if y.ndim > 1:
        raise ValueError(f"{name} must be a scalar label or have shape [B], got shape {tuple(y.shape)}")
    if y.numel() and int(y.min()) < 0:
        raise ValueError(f"{name} must hold labels >= 0, got {int(y.min())}")
    return y


def _batch_labels(y, batch: int, device, name: str = "y"):
    """``y`` as int64 ``[batch]`` on ``device`` (a scalar label broadcast)."""
    y = torch.as_tensor(y, device=device)
    if y.ndim == 1 and y.shape[0] != batch:
        raise ValueError(f"{name} must have shape [B] = [{batch}] (one label per sample), got "
                         f"shape {tuple(y.shape)}")
    return torch.broadcast_to(y, (batch,)).long()


def _batch_t(t, x):
    t = torch.as_tensor(t, device=x.device)
    return torch.broadcast_to(t, (x.shape[0],)) if t.ndim == 0 else t


def _channel_axis(channel_axis, ndim: int) -> int:
    axis = CHANNEL_AXIS if channel_axis is None else check_int("channel_axis", channel_axis)
    if ndim == 2 and channel_axis is None:
        axis = -1  # [B, D] vectors: the feature axis
    if not -ndim < axis < ndim or axis % ndim == 0:
        raise ValueError(f"channel_axis={axis} is not a non-batch axis of {ndim}-d outputs")
    return axis


# ------------------------------------------------------------------------- public


def guidance_combine(cond, uncond, scale):
    """``uncond + scale (cond - uncond)`` elementwise (classifier-free guidance's mix)."""
    cond, uncond = torch.as_tensor(cond), torch.as_tensor(uncond)
    scale = torch.as_tensor(scale, device=cond.device).to(cond.dtype)
    return uncond + scale * (cond - uncond)


def conditional_model_fn(model, variables=None):
    """``f(x, labels, y) = model(x, labels, y=y)`` for a class-conditional module (put it in
    eval mode yourself); ``variables`` must be None (the module holds its parameters; the
    argument exists for the twin's signature)."""
    if variables is not None:
        raise TypeError("conditional_model_fn(model): a torch module holds its own parameters; "
                        "variables must be None")
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")

    def fn(x, labels, y):
        return model(x, labels, y=y)

    return fn


def _cfg(fn_name: str, fn: ConditionalFn, y, scale, null_label, learn_sigma, channel_axis):
    check_callable(fn_name, fn, f"{fn_name}(x, t, y)")
    y = _check_labels(y)
    scale = _check_scale(scale)
    null_label = check_int("null_label", null_label, minimum=0)
    learn_sigma = check_bool("learn_sigma", learn_sigma)
    python_scale = isinstance(scale, float)

    def guided(x, t):
        B = x.shape[0]
        t = _batch_t(t, x)
        yb = _batch_labels(y, B, x.device)
        null = torch.full((B,), null_label, dtype=torch.long, device=x.device)
        if python_scale and scale == 1.0:
            return fn(x, t, yb)
        if python_scale and scale == 0.0:
            return fn(x, t, null)
        xx = torch.cat([x, x])
        out = fn(xx, torch.cat([t, t]), torch.cat([yb, null]))
        if not learn_sigma:
            check_fn_output(fn_name, out, xx)
        cond, uncond = out[:B], out[B:]
        if not learn_sigma:
            return guidance_combine(cond, uncond, scale)
        axis = _channel_axis(channel_axis, cond.ndim)
        if cond.shape[axis] % 2:
            raise ValueError(f"{fn_name}: learn_sigma=True needs an output of 2C channels (eps, then v) "
                             f"on axis {axis}, got shape {tuple(out.shape)}")
        c_eps, c_v = torch.chunk(cond, 2, dim=axis)
        u_eps, _ = torch.chunk(uncond, 2, dim=axis)
        return torch.cat([guidance_combine(c_eps, u_eps, scale), c_v], dim=axis)

    return guided


def cfg_model_fn(model_fn: ConditionalFn, y, *, scale, null_label: int, learn_sigma: bool = False,
                 channel_axis: Optional[int] = None):
    """Classifier-free guided ``model_fn(x, t)`` for ``ddpm_sample`` / ``ddim_sample``: see
    the twin. ``channel_axis`` defaults to ``CHANNEL_AXIS`` (1, NCHW; the last axis of
    ``[B, D]`` vectors)."""
    return _cfg("model_fn", model_fn, y, scale, null_label, learn_sigma, channel_axis)


def cfg_score_fn(score_fn: ConditionalFn, y, *, scale, null_label: int):
    """Classifier-free guided ``score_fn(x, t)`` for ``pc_sample``, ``ode_sample`` and the
    fast samplers, from a class-conditional ``score_fn(x, t, y)``: see the twin."""
    return _cfg("score_fn", score_fn, y, scale, null_label, False, None)


def classifier_guided_score_fn(score_fn, log_prob_fn, y, *, scale=1.0):
    """``score_fn(x, t) + scale * grad_x log_prob_fn(x, t, y)`` (``log_prob_fn`` returns
    ``log p_t(y | x)`` ``[B]``); the gradient of the batch sum by autograd, enabled inside
    even under ``torch.no_grad()``. See the twin."""
    check_callable("score_fn", score_fn, "score_fn(x, t)")
    check_callable("log_prob_fn", log_prob_fn, "log_prob_fn(x, t, y)")
    y = _check_labels(y)
    scale = _check_scale(scale)

    def guided(x, t):
        t = _batch_t(t, x)
        yb = _batch_labels(y, x.shape[0], x.device)
        with torch.enable_grad():
            xx = x.detach().requires_grad_(True)
            lp = log_prob_fn(xx, t, yb)
            if not torch.is_tensor(lp) or tuple(lp.shape) != (x.shape[0],):
                raise ValueError(f"log_prob_fn must return log p_t(y | x) per example, shape "
                                 f"[B] = [{x.shape[0]}], got {tuple(getattr(lp, 'shape', ())) or type(lp).__name__}")
            (grad,) = torch.autograd.grad(lp.sum(), xx)
        s = score_fn(x, t)
        return s + torch.as_tensor(scale, device=s.device).to(s.dtype) * grad.to(s.dtype)

    return guided


def pc_conditional_sample(sde, score_fn, log_prob_fn, y, shape, *, scale=1.0,
                          predictor="reverse_diffusion", corrector="langevin", snr: float = 0.16,
                          n_steps: int = 1, probability_flow: bool = False, denoise: bool = True,
                          eps: float | None = None, x_T=None, noise=None, dtype=None,
                          generator: torch.Generator | None = None):
    """Class-conditional PC sampling with a noise-conditional classifier: ``pc_sample`` with
    ``classifier_guided_score_fn(score_fn, log_prob_fn, y, scale=scale)``; the twin's
    arguments without the key, what is not given drawn from ``generator``.

    Returns ``(samples [*shape], nfe)``.
    """
    guided = classifier_guided_score_fn(score_fn, log_prob_fn, y, scale=scale)
    y = _check_labels(y)
    if torch.is_tensor(y) and y.ndim == 1 and isinstance(shape, (tuple, list)) and shape \
            and y.shape[0] != shape[0]:
        raise ValueError(f"y must have shape [B] = [{shape[0]}] (one label per sample), got "
                         f"shape {tuple(y.shape)}")
    return pc_sample(sde, guided, shape, predictor=predictor, corrector=corrector, snr=snr,
                     n_steps=n_steps, probability_flow=probability_flow, denoise=denoise, eps=eps,
                     x_T=x_T, noise=noise, dtype=dtype, generator=generator)
