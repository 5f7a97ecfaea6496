"""Thin name -> (config class, model class) map for the command line, and model helpers.

Twin: ``torch_ref/models/registry.py``. Library code chooses models by config type
(``create_model(config)``); the names only serve the CLI. The NCSNv2 names
(``ncsnv2_64``, ``ncsnv2_128``, ``ncsnv2_256``) share one class; the config's ``name``
field picks the layout.

Framework-specific helpers, not part of the mirrored API: ``init_variables``, ``variable_shapes``,
``example_inputs``.
"""

from __future__ import annotations

import functools
import types

import jax
import jax.numpy as jnp
import numpy as np

from jax_impl.models.ddpm import DDPM
from jax_impl.models.mlp import MLP
from jax_impl.models.ncsn import CondRefineNetDilated
from jax_impl.models.ncsnpp import NCSNpp
from jax_impl.models.ncsnv2 import NCSNv2
from jax_impl.models.unet import UNetModel
from spec.model_configs import PRESETS, DDPMConfig, MLPConfig, NCSNppConfig
from spec.ncsn_configs import NCSNV2_NAMES, NCSNConfig, NCSNv2Config
from spec.unet_model import IMPROVED_DIFFUSION_PRESETS, UNetModelConfig
from spec.validate import check_choice

__all__ = [
    "MODELS",
    "get_config_class",
    "get_model_class",
    "config_from_name",
    "create_model",
    "count_parameters",
]

#: model name (score_sde's ``config.model.name``) -> (config class, flax module class)
MODELS = types.MappingProxyType({
    "mlp": (MLPConfig, MLP),
    "ddpm": (DDPMConfig, DDPM),
    "ncsnpp": (NCSNppConfig, NCSNpp),
    "ncsn": (NCSNConfig, CondRefineNetDilated),
    **{name: (NCSNv2Config, NCSNv2) for name in NCSNV2_NAMES},
    "improved_unet": (UNetModelConfig, UNetModel),
})


def get_model_class(name: str):
    """The flax module class registered under ``name``."""
    check_choice("model name", name, tuple(MODELS))
    return MODELS[name][1]


def get_config_class(name: str):
    """The config dataclass registered under ``name``."""
    check_choice("model name", name, tuple(MODELS))
    return MODELS[name][0]


def config_from_name(name: str, **overrides):
    """A preset (``PRESETS`` key, e.g. ``'ve/cifar10_ncsnpp_continuous'``, or
    ``spec.unet_model.IMPROVED_DIFFUSION_PRESETS`` key, e.g. ``'improved/cifar10_uncond'``) or
    a model name with default fields, with ``overrides`` applied."""
    import dataclasses

    if name in PRESETS:
        return dataclasses.replace(PRESETS[name], **overrides)
    if name in IMPROVED_DIFFUSION_PRESETS:
        return dataclasses.replace(IMPROVED_DIFFUSION_PRESETS[name], **overrides)
    config_cls = get_config_class(name)
    if config_cls is NCSNv2Config:
        overrides = {"name": name, **overrides}
    return config_cls(**overrides)


def create_model(config):
    """The flax module for a config (chosen by the config's type)."""
    for config_cls, model_cls in MODELS.values():
        if type(config) is config_cls:
            return model_cls(config)
    raise TypeError(f"no model registered for config type {type(config).__name__}")


def example_inputs(config, batch: int = 1, dtype=jnp.float32) -> tuple[jax.Array, jax.Array]:
    """Zero inputs of the right shape (NHWC images or ``[B, D]``) and labels ``[B]``: ones
    (a time or sigma) for MLP / DDPM / NCSN++ / improved-diffusion's UNetModel, noise-level
    index 0 (int32) for NCSN / NCSNv2. (Class-conditional models also take ``y``.)"""
    if isinstance(config, MLPConfig) and config.image_size is None:
        x = jnp.zeros((batch, config.data_dim), dtype)
    else:
        x = jnp.zeros((batch, config.image_size, config.image_size, config.num_channels), dtype)
    if isinstance(config, (NCSNConfig, NCSNv2Config)):
        return x, jnp.zeros((batch,), jnp.int32)
    return x, jnp.ones((batch,), dtype)


def _example_kwargs(config, batch: int = 1) -> dict:
    """``{'y': zeros int32 [B]}`` for a class-conditional config (``num_classes > 0``), else ``{}``."""
    if getattr(config, "num_classes", 0) > 0:
        return {"y": jnp.zeros((batch,), jnp.int32)}
    return {}


@functools.lru_cache(maxsize=16)
def _compiled_init(model, config):
    """``key -> model.init(...)`` on ``example_inputs(config)`` (and class labels ``y`` for a
    class-conditional config), compiled once per (module, config): flax modules and configs
    are hashable."""
    inputs, kwargs = example_inputs(config), _example_kwargs(config)
    return jax.jit(lambda key: model.init({"params": key}, *inputs, **kwargs))


def init_variables(config, rng: jax.Array) -> dict:
    """Freshly initialised variables (``'params'`` and, with Fourier features, ``'constants'``);
    the init program is compiled once per config."""
    return _compiled_init(create_model(config), config)(rng)


@functools.lru_cache(maxsize=32)
def _variable_shapes(config) -> dict:
    model = create_model(config)
    inputs, kwargs = example_inputs(config), _example_kwargs(config)
    return jax.eval_shape(lambda: model.init({"params": jax.random.PRNGKey(0)}, *inputs, **kwargs))


def variable_shapes(config) -> dict:
    """``jax.ShapeDtypeStruct`` tree of the variables, computed without allocating
    (``jax.eval_shape`` of ``init``; cached per config, a fresh tree each call)."""
    return jax.tree_util.tree_map(lambda s: s, _variable_shapes(config))


def count_parameters(config) -> dict[str, int]:
    """``{'total': ..., 'trainable': ...}``: every variable except buffers, and the
    ``'params'`` collection only (the Fourier ``W`` in ``'constants'`` is not trained).
    Computed with ``jax.eval_shape`` (no allocation)."""
    shapes = variable_shapes(config)
    size = lambda tree: sum(int(np.prod(s.shape)) for s in jax.tree_util.tree_leaves(tree))  # noqa: E731
    return {"total": size(shapes), "trainable": size(shapes.get("params", {}))}
