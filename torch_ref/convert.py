"""Weights between a torch ``state_dict`` and flax variables, by an explicit key table.

Twin: ``jax_impl/convert.py`` (the flax-side entry points call into this module).

A ``KeyTable`` lists, for every tensor, the torch key, the flax path (collection first,
e.g. ``("params", "conv_in", "kernel")``) and the layout change between them:

  ``"conv"``   torch OIHW  <-> flax HWIO   (2-D convolution kernels)
  ``"dense"``  torch (out, in) <-> flax (in, out)
  ``"same"``   identical layout (biases, norm scales, buffers)

Nothing is guessed from names or ranks: a key missing from the state_dict, a key the
table does not know, or a tensor whose shape does not match raises ``KeyError`` /
``ValueError`` naming it. The round trip torch -> flax -> torch is exact (a transpose
is a permutation of the same float values).

The flax side is a nested ``dict`` of numpy arrays, so this module needs no jax import;
``jax.numpy`` arrays are accepted on the way back.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any, Iterable, Mapping

import numpy as np
import torch

LAYOUTS = ("conv", "dense", "same")


@dataclasses.dataclass(frozen=True)
class KeyMap:
    """One tensor: ``torch_key`` in the state_dict <-> ``flax_path`` in the variables."""

    torch_key: str
    flax_path: tuple[str, ...]
    layout: str = "same"

    def __post_init__(self):
        if self.layout not in LAYOUTS:
            raise ValueError(f"KeyMap({self.torch_key!r}): unknown layout {self.layout!r}; valid: {LAYOUTS}")
        if not self.flax_path:
            raise ValueError(f"KeyMap({self.torch_key!r}): empty flax_path")


KeyTable = tuple[KeyMap, ...]


def _to_flax_layout(array: np.ndarray, layout: str, key: str) -> np.ndarray:
    if layout == "conv":
        if array.ndim != 4:
            raise ValueError(f"{key}: a conv kernel must be 4-D (OIHW), got shape {array.shape}")
        return np.transpose(array, (2, 3, 1, 0))
    if layout == "dense":
        if array.ndim != 2:
            raise ValueError(f"{key}: a dense kernel must be 2-D (out, in), got shape {array.shape}")
        return np.transpose(array, (1, 0))
    return array


def _to_torch_layout(array: np.ndarray, layout: str, key: str) -> np.ndarray:
    if layout == "conv":
        if array.ndim != 4:
            raise ValueError(f"{key}: a flax conv kernel must be 4-D (HWIO), got shape {array.shape}")
        return np.transpose(array, (3, 2, 0, 1))
    if layout == "dense":
        if array.ndim != 2:
            raise ValueError(f"{key}: a flax dense kernel must be 2-D (in, out), got shape {array.shape}")
        return np.transpose(array, (1, 0))
    return array


def strip_prefix(state_dict: Mapping[str, Any], prefix: str = "module.") -> dict[str, Any]:
    """Remove a ``prefix`` (DataParallel's ``module.``) from every key that has it."""
    return {(k[len(prefix):] if prefix and k.startswith(prefix) else k): v for k, v in state_dict.items()}


def _get_path(tree: Mapping, path: tuple[str, ...]):
    node = tree
    for i, part in enumerate(path):
        if not isinstance(node, Mapping) or part not in node:
            raise KeyError(f"flax variables have no entry {'/'.join(path[: i + 1])!r}")
        node = node[part]
    return node


def _set_path(tree: dict, path: tuple[str, ...], value) -> None:
    node = tree
    for part in path[:-1]:
        node = node.setdefault(part, {})
    if path[-1] in node:
        raise ValueError(f"key table maps two tensors to flax path {'/'.join(path)!r}")
    node[path[-1]] = value


def flatten_paths(tree: Mapping, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """``{path: leaf}`` of a nested mapping (flax variables or shapes from eval_shape)."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(flatten_paths(v, prefix + (str(k),)))
        else:
            out[prefix + (str(k),)] = v
    return out


def _check_table(table: Iterable[KeyMap]) -> list[KeyMap]:
    table = list(table)
    seen: dict[str, KeyMap] = {}
    for km in table:
        if km.torch_key in seen:
            raise ValueError(f"key table lists torch key {km.torch_key!r} twice")
        seen[km.torch_key] = km
    return table


def torch_to_flax(
    state_dict: Mapping[str, Any],
    table: Iterable[KeyMap],
    *,
    flax_shapes: Mapping | None = None,
    ignore: Iterable[str] = (),
    dtype=None,
) -> dict:
    """Convert a torch ``state_dict`` to nested flax variables (numpy arrays).

    Args:
      state_dict: ``{key: tensor}``; keys already stripped of any ``module.`` prefix.
      table: the explicit ``KeyMap`` list of the architecture.
      flax_shapes: optional nested mapping of the expected flax leaves (e.g.
        ``jax.eval_shape(model.init, ...)``); when given, every leaf must be produced
        with exactly that shape.
      ignore: torch keys that are allowed in ``state_dict`` but not converted.
      dtype: optional numpy dtype to cast every array to.

    Raises:
      KeyError: a table key missing from ``state_dict``, or a state_dict key that
        neither the table nor ``ignore`` knows; or a flax leaf left unproduced.
      ValueError: a shape that does not match the table's layout or ``flax_shapes``.
    """
    table = _check_table(table)
    ignore = set(ignore)
    known = {km.torch_key for km in table}
    unexpected = sorted(k for k in state_dict if k not in known and k not in ignore)
    if unexpected:
        raise KeyError(f"unexpected key(s) in state_dict, not in the key table: {unexpected[:10]}"
                       + (f" (+{len(unexpected) - 10} more)" if len(unexpected) > 10 else ""))
    missing = [km.torch_key for km in table if km.torch_key not in state_dict]
    if missing:
        raise KeyError(f"missing key(s) in state_dict: {missing[:10]}"
                       + (f" (+{len(missing) - 10} more)" if len(missing) > 10 else ""))
    expected = flatten_paths(flax_shapes) if flax_shapes is not None else None
    out: dict = {}
    for km in table:
        value = state_dict[km.torch_key]
        array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        array = _to_flax_layout(array, km.layout, km.torch_key)
        if dtype is not None:
            array = array.astype(dtype)
        if expected is not None:
            if km.flax_path not in expected:
                raise KeyError(f"{km.torch_key}: the model has no flax leaf {'/'.join(km.flax_path)!r}")
            want = tuple(expected[km.flax_path].shape)
            if tuple(array.shape) != want:
                raise ValueError(
                    f"{km.torch_key}: shape {tuple(value.shape)} converts to {tuple(array.shape)} "
                    f"but flax leaf {'/'.join(km.flax_path)!r} has shape {want}"
                )
        _set_path(out, km.flax_path, np.ascontiguousarray(array))
    if expected is not None:
        produced = set(flatten_paths(out))
        left = sorted("/".join(p) for p in expected if p not in produced)
        if left:
            raise KeyError(f"flax leaves not covered by the key table: {left[:10]}")
    return out


def flax_to_torch(
    variables: Mapping,
    table: Iterable[KeyMap],
    *,
    torch_shapes: Mapping[str, tuple[int, ...]] | None = None,
) -> "collections.OrderedDict[str, torch.Tensor]":
    """Convert nested flax variables to a torch ``state_dict`` (an OrderedDict).

    Every flax leaf must be used by the table (``KeyError`` otherwise); with
    ``torch_shapes`` (e.g. ``{k: v.shape for k, v in module.state_dict().items()}``)
    every produced tensor is shape-checked and every torch key must be produced.
    """
    table = _check_table(table)
    leaves = flatten_paths(variables)
    used = {km.flax_path for km in table}
    unused = sorted("/".join(p) for p in leaves if p not in used)
    if unused:
        raise KeyError(f"flax leaves not in the key table: {unused[:10]}")
    out: "collections.OrderedDict[str, torch.Tensor]" = collections.OrderedDict()
    for km in table:
        array = np.asarray(_get_path(variables, km.flax_path))
        array = np.ascontiguousarray(_to_torch_layout(array, km.layout, km.torch_key))
        if torch_shapes is not None:
            if km.torch_key not in torch_shapes:
                raise KeyError(f"the torch module has no key {km.torch_key!r}")
            want = tuple(torch_shapes[km.torch_key])
            if tuple(array.shape) != want:
                raise ValueError(f"{km.torch_key}: converted shape {tuple(array.shape)} != torch shape {want}")
        out[km.torch_key] = torch.from_numpy(array.copy())
    if torch_shapes is not None:
        left = sorted(k for k in torch_shapes if k not in out)
        if left:
            raise KeyError(f"torch keys not produced by the key table: {left[:10]}")
    return out
