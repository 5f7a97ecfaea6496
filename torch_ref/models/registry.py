"""Thin name -> (config class, model class) map for the command line, and model helpers.

Twin: ``jax_impl/models/registry.py``. Library code chooses models by config type
(``create_model(config)``); the names only serve the CLI. The NCSNv2 names
(``ncsnv2_64``, ``ncsnv2_128``, ``ncsnv2_256``) share one class; the config's ``name``
field picks the layout.
"""

from __future__ import annotations

import dataclasses
import types

import torch

from spec.model_configs import PRESETS, DDPMConfig, MLPConfig, NCSNppConfig
from spec.ncsn_configs import NCSNV2_NAMES, NCSNConfig, NCSNv2Config
from spec.unet_model import IMPROVED_DIFFUSION_PRESETS, UNetModelConfig
from spec.validate import check_choice
from torch_ref.models.ddpm import DDPM
from torch_ref.models.mlp import MLP
from torch_ref.models.ncsn import CondRefineNetDilated
from torch_ref.models.ncsnpp import NCSNpp
from torch_ref.models.ncsnv2 import NCSNv2
from torch_ref.models.unet import UNetModel

__all__ = [
    "MODELS",
    "get_config_class",
    "get_model_class",
    "config_from_name",
    "create_model",
    "count_parameters",
]

#: model name (score_sde's ``config.model.name``) -> (config class, torch module class)
MODELS = types.MappingProxyType({
    "mlp": (MLPConfig, MLP),
    "ddpm": (DDPMConfig, DDPM),
    "ncsnpp": (NCSNppConfig, NCSNpp),
    "ncsn": (NCSNConfig, CondRefineNetDilated),
    **{name: (NCSNv2Config, NCSNv2) for name in NCSNV2_NAMES},
    "improved_unet": (UNetModelConfig, UNetModel),
})


def get_model_class(name: str):
    """The torch module class registered under ``name``."""
    check_choice("model name", name, tuple(MODELS))
    return MODELS[name][1]


def get_config_class(name: str):
    """The config dataclass registered under ``name``."""
    check_choice("model name", name, tuple(MODELS))
    return MODELS[name][0]


def config_from_name(name: str, **overrides):
    """A preset (``PRESETS`` or ``spec.unet_model.IMPROVED_DIFFUSION_PRESETS`` key) or a model
    name with default fields, with ``overrides``."""
    if name in PRESETS:
        return dataclasses.replace(PRESETS[name], **overrides)
    if name in IMPROVED_DIFFUSION_PRESETS:
        return dataclasses.replace(IMPROVED_DIFFUSION_PRESETS[name], **overrides)
    config_cls = get_config_class(name)
    if config_cls is NCSNv2Config:
        overrides = {"name": name, **overrides}
    return config_cls(**overrides)


def create_model(config) -> torch.nn.Module:
    """The torch module for a config (chosen by the config's type).

    Under ``with torch.device("meta"):`` it is built without allocating (shapes only,
    e.g. for counting).
    """
    for config_cls, model_cls in MODELS.values():
        if type(config) is config_cls:
            return model_cls(config)
    raise TypeError(f"no model registered for config type {type(config).__name__}")


def count_parameters(config) -> dict[str, int]:
    """``{'total': ..., 'trainable': ...}`` parameter counts (buffers excluded; the frozen
    Fourier ``W`` counts in total only), from a module built on the meta device."""
    with torch.device("meta"):
        model = create_model(config)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable}
