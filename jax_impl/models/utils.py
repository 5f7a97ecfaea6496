"""Score adapters: a network's output -> the score ``grad_x log p_t(x)`` (score_sde semantics).

Twin: ``torch_ref/models/utils.py``.

Framework-specific helpers, not part of the mirrored API: ``check_variables`` (flax
variables against the model's structure; torch modules own their parameters).

``get_model_fn(model, variables, train=False)`` wraps ``model.apply``;
``get_score_fn(sde, model_fn, *, continuous)`` turns it into ``score_fn(x, t)``, feeding
the network the label score_sde's ``get_score_fn`` feeds it:

============  ==========  =====================================  ==========================
SDE           continuous  network label                          score
============  ==========  =====================================  ==========================
VP            True        ``999 t`` (999 hard-coded)             ``-out / std(t)``,
                                                                 std from ``marginal_prob``
VP            False       ``t (N - 1)`` (a float)                ``-out / sqrt(1 - abar_i)``,
                                                                 ``i = int(t (N - 1))``
sub-VP        either      ``999 t``                              ``-out / std(t)``
VE            True        ``sigma(t)`` (the marginal std)        ``out``
VE            False       ``round((T - t)(N - 1))`` (int)        ``out``
============  ==========  =====================================  ==========================

VE discrete label 0 is sigma_max (the network's ``sigmas`` table is decreasing). The VP
discrete index truncates, as the official code (``labels.long()`` in PyTorch,
``astype(int32)`` in JAX) and ``sde.discrete_index`` do. ``t`` may be a scalar or
``[B]``; data may have any rank ``[B, ...]``.
"""

from __future__ import annotations

from typing import Callable, Mapping

import jax
import jax.numpy as jnp

import spec
from spec.validate import check_bool
from jax_impl.utils import append_dims
from jax_impl.validate import check_score_inputs
from spec.convert import flatten_paths

__all__ = [
    "get_model_fn",
    "get_score_fn",
]

ModelFn = Callable[..., jax.Array]
ScoreFn = Callable[..., jax.Array]


def check_variables(model, variables) -> None:
    """Raise ``ValueError`` naming the first leaf where ``variables`` differ from what
    ``model.init`` makes (``registry.variable_shapes(model.config)``: paths and shapes).

    Models whose config the registry does not know are not checked.
    """
    from jax_impl.models import registry

    config = getattr(model, "config", None)
    if not any(type(config) is c for c, _ in registry.MODELS.values()):
        return
    if not isinstance(variables, Mapping):
        raise TypeError(f"variables must be the nested mapping model.init returns, got {type(variables).__name__}")
    got, want = flatten_paths(variables), flatten_paths(registry.variable_shapes(config))
    where = f"variables do not match the {type(model).__name__} of this {type(config).__name__}"
    for leaf in sorted(set(got) | set(want)):
        name = "/".join(leaf)
        if leaf not in got:
            raise ValueError(f"get_model_fn: {where}: {name!r} {tuple(want[leaf].shape)} is missing "
                             "(variables of another config?)")
        if leaf not in want:
            raise ValueError(f"get_model_fn: {where}: unexpected leaf {name!r} (variables of another config?)")
        shape = tuple(getattr(got[leaf], "shape", ()))
        if shape != tuple(want[leaf].shape):
            raise ValueError(f"get_model_fn: {where}: {name!r} has shape {shape}, the model expects "
                             f"{tuple(want[leaf].shape)} (variables of another config?)")


def get_model_fn(model, variables=None, train: bool = False) -> ModelFn:
    """``model_fn(x, labels, rng=None) -> model.apply(variables, x, labels, train=train)``.

    With ``train=True`` dropout is on and ``rng`` (a PRNG key for the ``'dropout'``
    stream) is required. ``variables`` are checked against the model's structure
    first (``check_variables``): another config's variables raise ``ValueError`` naming
    the first mismatched leaf, before anything is traced. ``variables`` is required (the
    default None exists for the twin, whose module holds its own parameters).
    """
    if variables is None:
        raise TypeError("get_model_fn(model, variables): flax modules hold no parameters; pass the variables "
                        "from model.init or a checkpoint")
    check_variables(model, variables)

    def model_fn(x, labels, rng=None):
        if not train:
            return model.apply(variables, x, labels, train=False)
        if rng is None:
            raise ValueError("model_fn(x, labels, rng): train=True needs rng, a PRNG key for dropout")
        return model.apply(variables, x, labels, train=True, rngs={"dropout": rng})

    return model_fn


def _batch_t(x, t):
    t = jnp.asarray(t, dtype=jnp.result_type(x))
    return jnp.broadcast_to(t, (jnp.shape(x)[0],))


def get_score_fn(sde, model_fn: ModelFn, *, continuous: bool) -> ScoreFn:
    """``score_fn(x, t, rng=None) -> score [B, ...]`` for a VPSDE / subVPSDE / VESDE.

    ``rng`` is passed on to ``model_fn`` when given (dropout in training).
    """
    continuous = check_bool("continuous", continuous)

    def call(x, labels, rng):
        return model_fn(x, labels) if rng is None else model_fn(x, labels, rng)

    if isinstance(sde, spec.VPSDEConfig):  # VP and sub-VP
        def score_fn(x, t, rng=None):
            check_score_inputs(x, t, sde.T)
            t = _batch_t(x, t)
            if continuous or isinstance(sde, spec.subVPSDEConfig):
                labels = t * 999
                std = sde.marginal_prob(jnp.zeros_like(x), t)[1]
            else:
                labels = t * (sde.N - 1)
                table = jnp.asarray(sde.sqrt_1m_alphas_cumprod, dtype=x.dtype)
                std = table[sde.discrete_index(t)]
            out = call(x, labels, rng)
            return -out / append_dims(std.astype(out.dtype), out.ndim)

    elif isinstance(sde, spec.VESDEConfig):
        def score_fn(x, t, rng=None):
            check_score_inputs(x, t, sde.T)
            t = _batch_t(x, t)
            if continuous:
                labels = sde.marginal_prob(jnp.zeros_like(x), t)[1]
            else:
                labels = jnp.round((sde.T - t) * (sde.N - 1)).astype(jnp.int32)
            return call(x, labels, rng)

    else:
        raise TypeError(f"get_score_fn: unsupported SDE type {type(sde).__name__}; "
                        "expected VPSDE, subVPSDE or VESDE")
    return score_fn
