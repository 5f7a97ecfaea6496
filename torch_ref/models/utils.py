"""Score adapters: a network's output -> the score ``grad_x log p_t(x)`` (score_sde semantics).

Twin: ``jax_impl/models/utils.py`` (its docstring tabulates the labels per SDE).

``get_model_fn(model, variables=None, train=False)`` switches the module to train / eval
mode and calls it (with ``variables``, a state_dict, in place of its own tensors); ``get_score_fn(sde, model_fn, *, continuous)`` returns ``score_fn(x, t)``:
VP continuous and sub-VP feed ``999 t`` and return ``-out / std(t)``; VP discrete feeds
``t (N - 1)`` and divides by ``sqrt(1 - abar_i)``, ``i = int(t (N - 1))`` (truncation, as
score_sde's ``labels.long()``); VE continuous feeds ``sigma(t)``, VE discrete the integer
``round((T - t)(N - 1))`` (label 0 = sigma_max), and returns the output as the score.
``t`` may be a scalar or ``[B]``; data may have any rank ``[B, ...]``.
"""

from __future__ import annotations

from typing import Callable, Mapping

import torch

import spec
from spec.validate import check_bool
from torch_ref.utils import append_dims
from torch_ref.validate import check_score_inputs

__all__ = [
    "get_model_fn",
    "get_score_fn",
]

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def get_model_fn(model: torch.nn.Module, variables=None, train: bool = False) -> ModelFn:
    """``model_fn(x, labels)``: ``model.train()`` (dropout on) or ``model.eval()``, then
    ``model(x, labels)``.

    ``variables`` (optional, a state_dict) runs the module with those tensors instead of
    its own (``torch.func.functional_call``, the counterpart of flax's ``apply``); its keys
    must be the module's (``ValueError`` naming the first missing or unexpected one).
    """
    if variables is not None:
        if not isinstance(variables, Mapping):
            raise TypeError(f"variables must be a state_dict (a mapping), got {type(variables).__name__}")
        own = model.state_dict()
        for key in sorted(set(own) ^ set(variables)):
            what = "is missing" if key in own else "is not a tensor of the module"
            raise ValueError(f"get_model_fn: variables do not match the {type(model).__name__}: {key!r} {what}")
        for key, value in variables.items():
            if tuple(value.shape) != tuple(own[key].shape):
                raise ValueError(f"get_model_fn: variables do not match the {type(model).__name__}: {key!r} has "
                                 f"shape {tuple(value.shape)}, the module expects {tuple(own[key].shape)}")

    def model_fn(x, labels):
        model.train(train)
        if variables is None:
            return model(x, labels)
        return torch.func.functional_call(model, dict(variables), (x, labels))

    return model_fn


def _batch_t(x, t):
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    return t.expand(x.shape[0]) if t.ndim == 0 else t


def get_score_fn(sde, model_fn: ModelFn, *, continuous: bool) -> ScoreFn:
    """``score_fn(x, t) -> score [B, ...]`` for a VPSDE / subVPSDE / VESDE."""
    continuous = check_bool("continuous", continuous)

    if isinstance(sde, spec.VPSDEConfig):  # VP and sub-VP
        def score_fn(x, t):
            check_score_inputs(x, t, sde.T)
            t = _batch_t(x, t)
            if continuous or isinstance(sde, spec.subVPSDEConfig):
                labels = t * 999
                std = sde.marginal_prob(torch.zeros_like(x), t)[1]
            else:
                labels = t * (sde.N - 1)
                table = torch.as_tensor(sde.sqrt_1m_alphas_cumprod, dtype=x.dtype, device=x.device)
                std = table[sde.discrete_index(t)]
            out = model_fn(x, labels)
            return -out / append_dims(std.to(out.dtype), out.ndim)

    elif isinstance(sde, spec.VESDEConfig):
        def score_fn(x, t):
            check_score_inputs(x, t, sde.T)
            t = _batch_t(x, t)
            if continuous:
                labels = sde.marginal_prob(torch.zeros_like(x), t)[1]
            else:
                labels = torch.round((sde.T - t) * (sde.N - 1)).long()
            return model_fn(x, labels)

    else:
        raise TypeError(f"get_score_fn: unsupported SDE type {type(sde).__name__}; "
                        "expected VPSDE, subVPSDE or VESDE")
    return score_fn
