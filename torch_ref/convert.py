"""Weights in and out of the torch models: official checkpoints, flax-layout variables, ``.pt`` files.

Twin: ``jax_impl/convert.py`` (same names; flax variables and numpy state_dicts there).

The key tables, the checks and the conversion live once, framework-neutral, in ``spec``
(``spec.keytables``, ``spec.convert``, ``spec.checkpoints``); this module re-exports them
and turns their numpy results into torch tensors:

- ``torch_to_flax_variables(state_dict, config)`` -> nested numpy flax variables (the
  ``sigmas`` buffer checked against the config); ``flax_to_torch_state_dict(variables,
  config)`` -> the official-named state_dict (torch tensors, ``sigmas`` first). Both by
  the architecture's key table: every key used, every shape checked, integer or
  NaN / Inf tensors rejected naming the key; the round trip is exact.
- ``torch_to_flax`` / ``flax_to_torch``: the same for any key table (``flax_to_torch``
  returns tensors).
- ``score_sde_state_dict`` / ``ncsnv2_state_dict`` / ``improved_diffusion_state_dict``:
  validated state_dicts (tensors) of official checkpoints; ``from_score_sde`` /
  ``from_ncsnv2`` / ``from_improved_diffusion``: the torch module (eval mode) with those
  weights (improved-diffusion's ``UNetModel`` has the official key names, so its state_dict
  loads with no renaming). Checkpoints may be ``.pth`` / ``.pt`` / ``.npz`` /
  ``.safetensors`` files (layout in ``spec.checkpoints``) or the objects they hold.
- ``load_checkpoint`` / ``save_checkpoint``: read any format into numpy containers,
  write ``.npz`` / ``.safetensors``.

One-sided names: ``save_state_dict`` / ``load_state_dict`` write and read our own torch
``.pt`` files (atomic); the flax side stores orbax directories instead
(``save_variables`` / ``load_variables``), which need jax.
"""

from __future__ import annotations

import collections
import os
import tempfile
from typing import Any, Mapping

import numpy as np
import torch

from spec import convert as _convert
from spec.checkpoints import load_checkpoint, read_checkpoint, save_checkpoint
from spec.convert import WEIGHTS, check_state_dict, flatten_paths, strip_prefix, torch_to_flax
from spec.keytables import LAYOUTS, KeyMap, KeyTable, derived_buffers, key_table, num_parameters
# diffusers' UNet2DModel directories and scheduler configs (the module's own docstring has the details)
from torch_ref.diffusers_format import diffusion_from_diffusers, from_diffusers  # noqa: E402,F401

__all__ = [
    "KeyMap",
    "KeyTable",
    "LAYOUTS",
    "WEIGHTS",
    "key_table",
    "derived_buffers",
    "num_parameters",
    "strip_prefix",
    "flatten_paths",
    "check_state_dict",
    "torch_to_flax",
    "flax_to_torch",
    "torch_to_flax_variables",
    "flax_to_torch_state_dict",
    "load_checkpoint",
    "save_checkpoint",
    "score_sde_state_dict",
    "ncsnv2_state_dict",
    "improved_diffusion_state_dict",
    "from_score_sde",
    "from_ncsnv2",
    "from_improved_diffusion",
    "from_diffusers",
    "diffusion_from_diffusers",
    "save_state_dict",
    "load_state_dict",
]


def _to_torch(arrays: Mapping[str, np.ndarray]) -> "collections.OrderedDict[str, torch.Tensor]":
    """numpy state_dict -> torch tensors (copied, so read-only file buffers are never shared)."""
    return collections.OrderedDict((k, torch.from_numpy(np.array(v, copy=True))) for k, v in arrays.items())


def flax_to_torch(variables: Mapping, table, *, torch_shapes=None, derived=None
                  ) -> "collections.OrderedDict[str, torch.Tensor]":
    """``spec.convert.flax_to_torch`` with torch tensors out (see there for the checks)."""
    return _to_torch(_convert.flax_to_torch(variables, table, torch_shapes=torch_shapes, derived=derived))


def torch_to_flax_variables(state_dict: Mapping[str, Any], config, *, dtype=np.float32) -> dict:
    """Flax variables (``'params'`` [+ ``'constants'``], nested numpy) of a torch state_dict.

    ``state_dict`` may carry the ``module.`` prefix; ``dtype`` casts every array (None
    keeps the stored dtype). Raises ``KeyError`` / ``ValueError`` / ``TypeError`` naming
    any missing, unexpected, mis-shaped, non-floating or non-finite key.
    """
    return torch_to_flax(strip_prefix(state_dict), key_table(config), derived=derived_buffers(config), dtype=dtype)


def flax_to_torch_state_dict(variables: Mapping, config) -> "collections.OrderedDict[str, torch.Tensor]":
    """The torch state_dict (official key names and order, ``sigmas`` first) of flax variables."""
    return flax_to_torch(variables, key_table(config), derived=derived_buffers(config))


def score_sde_state_dict(checkpoint, config, *, weights: str = "ema") -> "collections.OrderedDict[str, torch.Tensor]":
    """``spec.convert.score_sde_state_dict`` as torch tensors: the official-named
    state_dict of a score_sde_pytorch checkpoint (path, dict or bare state_dict)."""
    return _to_torch(_convert.score_sde_state_dict(checkpoint, config, weights=weights))


def ncsnv2_state_dict(checkpoint, config, *, weights: str | None = None
                      ) -> "collections.OrderedDict[str, torch.Tensor]":
    """``spec.convert.ncsnv2_state_dict`` as torch tensors (``sigmas`` included)."""
    return _to_torch(_convert.ncsnv2_state_dict(checkpoint, config, weights=weights))


def from_score_sde(checkpoint, config, *, weights: str = "ema", dtype=torch.float32) -> torch.nn.Module:
    """The torch model (NCHW, eval mode) with a score_sde_pytorch checkpoint's weights.

    See ``score_sde_state_dict`` for the arguments; ``dtype`` is the parameter dtype
    (float32 by default; buffers such as ``sigmas`` keep theirs). The module computes
    exactly the official network for the same weights.
    """
    from torch_ref.models.registry import create_model

    state_dict = score_sde_state_dict(checkpoint, config, weights=weights)
    model = create_model(config)
    model.load_state_dict(state_dict, strict=True)
    with torch.no_grad():
        for p in model.parameters():
            if p.dtype != dtype:
                p.data = p.data.to(dtype)
    return model.eval()


def from_ncsnv2(checkpoint, config, *, weights: str | None = None) -> torch.nn.Module:
    """An ``NCSNv2`` module (eval mode, NCHW) with the weights of an ermongroup/ncsnv2
    checkpoint; arguments as ``ncsnv2_state_dict``."""
    from torch_ref.models.ncsnv2 import from_ncsnv2 as _from_ncsnv2

    return _from_ncsnv2(checkpoint, config, weights=weights)


def improved_diffusion_state_dict(checkpoint, config) -> "collections.OrderedDict[str, torch.Tensor]":
    """``spec.convert.improved_diffusion_state_dict`` as torch tensors: the validated
    state_dict of an improved-diffusion checkpoint (path, or the state_dict itself)."""
    return _to_torch(_convert.improved_diffusion_state_dict(checkpoint, config))


def from_improved_diffusion(checkpoint, config, *, dtype=torch.float32) -> torch.nn.Module:
    """The ``UNetModel`` (NCHW, eval mode) with an openai/improved-diffusion checkpoint's weights.

    ``checkpoint``: the official ``.pt`` (``model*.pt`` / ``ema_<rate>_*.pt``), ``.npz`` /
    ``.safetensors`` with the same keys, or a state_dict; ``config``: a ``UNetModelConfig``
    or the flags dict (missing keys take the official defaults); ``dtype``: the parameter
    dtype. ``model(x, t)`` (``y=`` labels for class-conditional models) is the official
    network's output. Errors name missing / unexpected / mis-shaped keys.
    """
    from torch_ref.models.registry import create_model

    cfg = _convert.as_unet_model_config(config)
    state_dict = improved_diffusion_state_dict(checkpoint, cfg)
    model = create_model(cfg)
    model.load_state_dict(state_dict, strict=True)
    return model.to(dtype).eval()


def save_state_dict(path, state_dict_or_module) -> None:
    """Write a state_dict (or a module's) to ``path`` with ``torch.save``, atomically
    (temporary file + rename)."""
    sd = state_dict_or_module.state_dict() if isinstance(state_dict_or_module, torch.nn.Module) else state_dict_or_module
    if not isinstance(sd, Mapping):
        raise TypeError(f"expected a state_dict or an nn.Module, got {type(sd).__name__}")
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp_", suffix=".pt")
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(collections.OrderedDict(sd), fh)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load_state_dict(path) -> "collections.OrderedDict[str, torch.Tensor]":
    """Read a state_dict from a ``.pt`` written by ``save_state_dict`` (or any readable
    checkpoint file holding a flat state_dict), as CPU tensors; file errors as
    ``spec.checkpoints.read_checkpoint``."""
    sd = read_checkpoint(path)
    if not isinstance(sd, Mapping) or any(isinstance(v, (Mapping, list)) for v in sd.values()):
        raise ValueError(f"{os.fspath(path)!r} does not hold a flat state_dict")
    return _to_torch(sd)
