"""Weights in and out of the flax models: official checkpoints, torch state_dicts, orbax I/O.

Twin: ``torch_ref/convert.py`` (same names; torch tensors and modules there).

Imports no torch: the key tables, the checks and the conversion are framework-neutral
data and numpy code in ``spec`` (``spec.keytables``, ``spec.convert``,
``spec.checkpoints``), re-exported here; only reading a ``.pth`` / ``.pt`` file imports
torch, inside the reader. Official weights stored as ``.npz`` / ``.safetensors`` (layout
in ``spec.checkpoints``; ``save_checkpoint`` writes them) load without torch installed.

- ``torch_to_flax_variables(state_dict, config)`` -> flax variables (jax arrays), checked
  against the model's variable structure; ``flax_to_torch_state_dict(variables, config)``
  -> the official-named state_dict as numpy arrays (``sigmas`` first). By the
  architecture's key table: every key used, every shape checked, integer or NaN / Inf
  tensors rejected naming the key; the round trip is exact.
- ``torch_to_flax`` / ``flax_to_torch``: the same for any key table, in numpy.
- ``from_score_sde(checkpoint, config, weights="ema")`` -> ``(model, variables)`` with
  ``model.apply(variables, x_nhwc, labels)`` the official network's output (NHWC);
  ``from_ncsnv2`` likewise for ermongroup/ncsnv2 checkpoints;
  ``from_improved_diffusion(checkpoint, config)`` for openai/improved-diffusion's ``.pt``
  files (``config``: a ``UNetModelConfig`` or the flags dict), ``model.apply(variables,
  x_nhwc, t)`` (``y=`` labels for class-conditional models).
- ``from_diffusers(directory)`` -> ``(model, variables)``: a diffusers ``UNet2DModel``
  directory (``config.json`` + ``.safetensors`` read without torch, or ``.bin``) as our DDPM
  in the TF/diffusers layout; ``diffusion_from_diffusers(directory)`` its scheduler config
  as a ``GaussianDiffusion`` (re-exported from ``jax_impl.diffusers_format``).
- ``score_sde_state_dict`` / ``ncsnv2_state_dict`` / ``improved_diffusion_state_dict``: the
  validated numpy state_dicts.

One-sided names: ``save_variables`` / ``load_variables`` store flax variables as an orbax
checkpoint directory (needs jax / orbax); the torch side writes ``.pt`` files instead
(``save_state_dict`` / ``load_state_dict``).
"""

from __future__ import annotations

import collections
import os
from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jax_impl.models import registry
from jax_impl.models.ncsnv2 import from_ncsnv2
from spec.checkpoints import load_checkpoint, save_checkpoint
from spec.convert import (
    WEIGHTS,
    as_unet_model_config,
    check_state_dict,
    flatten_paths,
    flax_to_torch,
    improved_diffusion_state_dict,
    ncsnv2_state_dict,
    score_sde_state_dict,
    strip_prefix,
    torch_to_flax,
)
from spec.keytables import LAYOUTS, KeyMap, KeyTable, derived_buffers, key_table, num_parameters
# diffusers' UNet2DModel directories and scheduler configs (the module's own docstring has the details)
from jax_impl.diffusers_format import diffusion_from_diffusers, from_diffusers  # noqa: E402,F401

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
    "save_variables",
    "load_variables",
]


def torch_to_flax_variables(state_dict: Mapping[str, Any], config, *, dtype=np.float32) -> dict:
    """Flax variables (``'params'`` [+ ``'constants'``], jax arrays) of a torch-named state_dict.

    ``state_dict`` (numpy arrays or torch tensors) may carry the ``module.`` prefix;
    ``dtype`` casts every array (None keeps the stored dtype). Raises ``KeyError`` /
    ``ValueError`` / ``TypeError`` naming any missing, unexpected, mis-shaped,
    non-floating or non-finite key.
    """
    variables = torch_to_flax(strip_prefix(state_dict), key_table(config), flax_shapes=registry.variable_shapes(config),
                              derived=derived_buffers(config), dtype=dtype)
    return jax.tree_util.tree_map(jnp.asarray, variables)


def flax_to_torch_state_dict(variables: Mapping, config) -> "collections.OrderedDict[str, np.ndarray]":
    """The torch state_dict (official key names and order, ``sigmas`` first) of flax
    variables, as numpy arrays (``torch.from_numpy`` each to load it into a module)."""
    host = jax.tree_util.tree_map(np.asarray, dict(variables))
    return flax_to_torch(host, key_table(config), derived=derived_buffers(config))


def from_score_sde(checkpoint, config, *, weights: str = "ema", dtype=np.float32):
    """``(model, variables)`` for a score_sde_pytorch checkpoint.

    Args:
      checkpoint: a path -- ``.npz`` / ``.safetensors`` (no torch needed; layout in
        ``spec.checkpoints``) or the official ``.pth`` (needs torch) -- the dict a
        ``.pth`` holds (``model``, ``ema``, ``optimizer``, ``step``), or a bare
        state_dict with or without ``module.``.
      config: ``DDPMConfig`` / ``NCSNppConfig`` (e.g. ``from_score_sde_config(cfg.to_dict())``
        or a preset).
      weights: ``"ema"`` (score_sde's EMA shadow parameters, what its evaluation uses)
        or ``"raw"``.
      dtype: parameter dtype (float32 by default).

    Returns:
      The flax module and its variables; ``model.apply(variables, x [B, H, W, C], labels [B])``.
    """
    state_dict = score_sde_state_dict(checkpoint, config, weights=weights)
    variables = torch_to_flax_variables(state_dict, config, dtype=dtype)
    return registry.create_model(config), variables


def from_improved_diffusion(checkpoint, config, *, dtype=np.float32):
    """``(model, variables)`` for an openai/improved-diffusion checkpoint.

    Args:
      checkpoint: a path -- the official ``.pt`` (``model*.pt`` / ``ema_<rate>_*.pt``; torch
        is imported inside the reader only) or ``.npz`` / ``.safetensors`` with the same keys
        (no torch) -- or a state_dict (see ``spec.convert.improved_diffusion_state_dict``).
      config: a ``UNetModelConfig`` or the dict of improved-diffusion flags the model was
        trained with (``MODEL_FLAGS``; missing keys take ``model_and_diffusion_defaults()``).
      dtype: parameter dtype (float32 by default).

    Returns:
      The flax ``UNetModel`` and its variables: ``model.apply(variables, x [B, H, W, C],
      t [B])`` (and ``y=`` int ``[B]`` for a class-conditional model) is the official
      network's output, NHWC.

    Raises:
      KeyError naming missing / unexpected keys, ValueError / TypeError naming a bad shape,
      dtype or value, a bad config or an unreadable file.
    """
    cfg = as_unet_model_config(config)
    state_dict = improved_diffusion_state_dict(checkpoint, cfg)
    variables = torch_to_flax_variables(state_dict, cfg, dtype=dtype)
    return registry.create_model(cfg), variables


# ------------------------------------------------------------------- orbax directories

_ORBAX_MARKERS = ("_CHECKPOINT_METADATA", "_METADATA")


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


def _checkpoint_dir(path) -> Path:
    if isinstance(path, bytes) or not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__} {path!r}")
    p = Path(os.path.abspath(os.fspath(path)))
    if not p.exists():
        raise FileNotFoundError(f"no orbax checkpoint at {str(p)!r}: the path does not exist")
    if not p.is_dir():
        raise ValueError(f"{str(p)!r} is a file, not an orbax checkpoint directory (written by save_variables); "
                         "checkpoint files load with from_score_sde / from_ncsnv2 / load_checkpoint")
    missing = [m for m in _ORBAX_MARKERS if not (p / m).is_file()]
    if missing:
        raise ValueError(f"{str(p)!r} is not a complete orbax checkpoint directory (no {', '.join(missing)}); "
                         "was it written by save_variables, and did the save finish?")
    return p


def _compare_structure(path: Path, saved: Mapping, expected: Mapping, config) -> None:
    """ValueError naming the first leaf where the saved tree and the config's differ."""
    got, want = flatten_paths(saved), flatten_paths(expected)
    for leaf in sorted(set(got) | set(want)):
        name = "/".join(leaf)
        if leaf not in got:
            raise ValueError(f"orbax checkpoint {str(path)!r} does not match {type(config).__name__}: the config's "
                             f"variable {name!r} {tuple(want[leaf].shape)} is not in the checkpoint "
                             f"({len(got)} saved leaves vs {len(want)} expected)")
        if leaf not in want:
            raise ValueError(f"orbax checkpoint {str(path)!r} does not match {type(config).__name__}: the checkpoint "
                             f"holds {name!r} {tuple(got[leaf].shape)}, which the config's model has not")
        gs, ws = tuple(getattr(got[leaf], "shape", ())), tuple(want[leaf].shape)
        if gs != ws:
            raise ValueError(f"orbax checkpoint {str(path)!r} does not match {type(config).__name__}: {name!r} "
                             f"has shape {gs} in the checkpoint but {ws} in the model")


def save_variables(path, variables: Mapping) -> None:
    """Save flax variables as an orbax checkpoint at ``path`` (a directory; must not exist).

    orbax writes into a temporary directory and renames it when complete, so a crash
    leaves no partial checkpoint under ``path``. Leaves must be finite floating arrays.
    """
    import orbax.checkpoint as ocp

    if isinstance(path, bytes) or not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__} {path!r}")
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path):
        raise FileExistsError(f"checkpoint path {path!r} already exists")
    if not isinstance(variables, Mapping) or not variables:
        raise TypeError(f"variables must be a non-empty nested mapping of arrays, got {type(variables).__name__}")
    for leaf, value in flatten_paths(variables).items():
        if not hasattr(value, "shape") or not hasattr(value, "dtype"):
            raise TypeError(f"variables leaf {'/'.join(leaf)!r} is a {type(value).__name__}, not an array")
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(path, dict(variables))
        ckptr.wait_until_finished()


def load_variables(path, config=None) -> dict:
    """Load flax variables saved by ``save_variables``.

    With ``config``, the saved structure is first compared with the model's
    (``registry.variable_shapes(config)``) and the checkpoint is restored against it.

    Raises:
      FileNotFoundError: ``path`` does not exist.
      ValueError: ``path`` is a file or not a (complete) orbax checkpoint, the checkpoint
        is damaged, or its structure differs from ``config``'s model (naming the first
        differing variable) -- before orbax's own errors.
    """
    import orbax.checkpoint as ocp

    p = _checkpoint_dir(path)
    expected = registry.variable_shapes(config) if config is not None else None
    with ocp.StandardCheckpointer() as ckptr:
        try:
            saved = ckptr.metadata(p).item_metadata.tree
        except Exception as e:  # noqa: BLE001 (orbax / tensorstore failures get one message)
            raise ValueError(f"cannot read the orbax checkpoint {str(p)!r}: damaged metadata ({_short(e)})") from None
        if expected is not None:
            _compare_structure(p, saved, expected, config)
        try:
            return ckptr.restore(p) if expected is None else ckptr.restore(p, expected)
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"cannot restore the orbax checkpoint {str(p)!r}: damaged or incomplete data "
                             f"({_short(e)})") from None
