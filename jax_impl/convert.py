"""Flax-side weight conversion: torch / score_sde checkpoints <-> flax variables, orbax I/O.

Twin: ``torch_ref/convert.py``, which holds the explicit key tables and the conversion
core (this module calls into it, so reading ``.pth`` files needs torch installed).

- ``torch_to_flax_variables(state_dict, config)`` / ``flax_to_torch_state_dict(variables,
  config)``: by the architecture's key table (every key used, every shape checked; the
  ``sigmas`` buffer checked against the config on the way in and rebuilt on the way out);
  the round trip is exact.
- ``from_score_sde(checkpoint, config, weights="ema")`` -> ``(model, variables)`` such that
  ``model.apply(variables, x_nhwc, labels)`` is the official network's output (NHWC).
- ``save_variables`` / ``load_variables``: flax variables as an orbax checkpoint (written
  to a temporary directory and renamed when complete, so a crash leaves no partial
  checkpoint under ``path``).

The convert pair is deliberately asymmetric: both ``__all__`` list the same shared names
(``KeyMap``, ``KeyTable``, ``key_table``, ``derived_buffers``, ``strip_prefix``,
``load_checkpoint``, ``score_sde_state_dict``, ``num_parameters``, ``from_score_sde``,
``from_ncsnv2``); the flax-only entry points above are exported here only.
"""

from __future__ import annotations

import collections
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jax_impl.models import registry
from jax_impl.models.ncsnv2 import from_ncsnv2  # noqa: F401  (re-exported next to from_score_sde)
from torch_ref import convert as _core
from torch_ref.convert import (  # noqa: F401  (re-exported)
    KeyMap,
    KeyTable,
    derived_buffers,
    key_table,
    load_checkpoint,
    num_parameters,
    score_sde_state_dict,
    strip_prefix,
)

__all__ = [
    "KeyMap",
    "KeyTable",
    "key_table",
    "derived_buffers",
    "strip_prefix",
    "load_checkpoint",
    "score_sde_state_dict",
    "num_parameters",
    "from_score_sde",
    "from_ncsnv2",
    "torch_to_flax_variables",
    "flax_to_torch_state_dict",
    "save_variables",
    "load_variables",
]


def torch_to_flax_variables(state_dict: Mapping[str, Any], config, *, dtype=np.float32) -> dict:
    """Flax variables (``'params'`` [+ ``'constants'``], jax arrays) from a torch state_dict.

    ``state_dict`` may carry the ``module.`` prefix. ``dtype`` casts every array
    (``None`` keeps the stored dtype). Raises ``KeyError`` / ``ValueError`` naming any
    missing, unexpected or mis-shaped key.
    """
    table = key_table(config)
    variables = _core.torch_to_flax(
        strip_prefix(state_dict), table, flax_shapes=registry.variable_shapes(config),
        derived=derived_buffers(config), dtype=dtype,
    )
    return jax.tree_util.tree_map(jnp.asarray, variables)


def flax_to_torch_state_dict(variables: Mapping, config) -> "collections.OrderedDict":
    """The torch state_dict (official key names and order, ``sigmas`` first) of flax variables."""
    host = jax.tree_util.tree_map(np.asarray, dict(variables))
    return _core.flax_to_torch(host, key_table(config), derived=derived_buffers(config))


def from_score_sde(checkpoint, config, *, weights: str = "ema", dtype=np.float32):
    """``(model, variables)`` for a score_sde_pytorch checkpoint.

    Args:
      checkpoint: a path to a ``.pth`` file, the dict it holds (``model``, ``ema``,
        ``optimizer``, ``step``), or a bare state_dict with or without ``module.``.
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


def save_variables(path, variables: Mapping) -> None:
    """Save flax variables as an orbax checkpoint at ``path`` (a directory; must not exist)."""
    import orbax.checkpoint as ocp

    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path):
        raise FileExistsError(f"checkpoint path {path!r} already exists")
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(path, dict(variables))
        ckptr.wait_until_finished()


def load_variables(path, config=None) -> dict:
    """Load flax variables saved by ``save_variables``.

    With ``config``, the checkpoint is restored against the model's variable structure
    (shapes and dtypes checked by orbax); otherwise as saved.
    """
    import orbax.checkpoint as ocp

    path = os.path.abspath(os.fspath(path))
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no orbax checkpoint at {path!r}")
    with ocp.StandardCheckpointer() as ckptr:
        if config is None:
            return ckptr.restore(path)
        target = registry.variable_shapes(config)
        return ckptr.restore(path, target)
