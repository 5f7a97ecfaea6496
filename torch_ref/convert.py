"""Weights between a torch ``state_dict`` and flax variables, by an explicit key table.

Twin: ``jax_impl/convert.py`` (the flax-side entry points call into this module).

A ``KeyTable`` lists, for every tensor, the torch key, the flax path (collection first,
e.g. ``("params", "conv_in", "kernel")``) and the layout change between them:

  ``"conv"``   torch OIHW  <-> flax HWIO   (2-D convolution kernels)
  ``"dense"``  torch (out, in) <-> flax (in, out)
  ``"same"``   identical layout (biases, norm scales, buffers)

and optionally the torch ``shape`` and whether the tensor is ``trainable`` (a frozen
parameter such as NCSN++'s Fourier projection ``W`` is not: it lives in the flax
``'constants'`` collection and is not part of score_sde's EMA).

Nothing is guessed from names or ranks: a key missing from the state_dict, a key the
table does not know, or a tensor whose shape does not match raises ``KeyError`` /
``ValueError`` naming it. The round trip torch -> flax -> torch is exact (a transpose
is a permutation of the same float values).

Buffers that the flax side recomputes from the config (score_sde's ``sigmas``) are
passed as ``derived``: they must be present in the state_dict and equal the config's
values, and are written back on the way to torch.

Architecture tables: ``mlp_key_table``, ``ddpm_key_table``, ``ncsnpp_key_table`` (and
``key_table(config)`` dispatching on the config type) walk score_sde_pytorch's module
order for a config -- the same walk its ``__init__`` does -- and list every tensor in
``state_dict`` order, so the trainable entries come out in ``model.parameters()`` order
(the order of score_sde's EMA ``shadow_params``).

Official checkpoints: ``load_checkpoint``, ``score_sde_state_dict`` and
``from_score_sde`` read score_sde_pytorch ``.pth`` files (``model`` / ``ema`` /
``optimizer`` / ``step``); ``save_state_dict`` / ``load_state_dict`` write and read our
own ``.pt`` files atomically.

The flax side is a nested ``dict`` of numpy arrays, so this module needs no jax import;
``jax.numpy`` arrays are accepted on the way back.

The convert pair is deliberately asymmetric: both ``__all__`` list the same shared names
(``KeyMap``, ``KeyTable``, ``key_table``, ``derived_buffers``, ``strip_prefix``,
``load_checkpoint``, ``score_sde_state_dict``, ``num_parameters``, ``from_score_sde``,
``from_ncsnv2``); the key-table core (``LAYOUTS``, ``WEIGHTS``, ``check_state_dict``,
``flatten_paths``, ``torch_to_flax``, ``flax_to_torch``, ``*_key_table``,
``save_state_dict``, ``load_state_dict``) is exported here only.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import tempfile
from typing import Any, Iterable, Mapping

import numpy as np
import torch

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
    "LAYOUTS",
    "WEIGHTS",
    "check_state_dict",
    "flatten_paths",
    "torch_to_flax",
    "flax_to_torch",
    "mlp_key_table",
    "ddpm_key_table",
    "ncsnpp_key_table",
    "save_state_dict",
    "load_state_dict",
]

LAYOUTS = ("conv", "dense", "same")


@dataclasses.dataclass(frozen=True)
class KeyMap:
    """One tensor: ``torch_key`` in the state_dict <-> ``flax_path`` in the variables.

    ``shape`` (the torch shape), when given, is checked on both directions.
    ``trainable`` is False for frozen parameters (not trained, not in the EMA).
    """

    torch_key: str
    flax_path: tuple[str, ...]
    layout: str = "same"
    shape: tuple[int, ...] | None = None
    trainable: bool = True

    def __post_init__(self):
        if self.layout not in LAYOUTS:
            raise ValueError(f"KeyMap({self.torch_key!r}): unknown layout {self.layout!r}; valid: {LAYOUTS}")
        if not self.flax_path:
            raise ValueError(f"KeyMap({self.torch_key!r}): empty flax_path")
        if self.shape is not None:
            object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))


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


def _as_numpy(value) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def _check_derived(state_dict: Mapping[str, Any], derived: Mapping[str, np.ndarray], rtol: float = 1e-6) -> None:
    for key, want in derived.items():
        if key not in state_dict:
            raise KeyError(f"missing key(s) in state_dict: [{key!r}]")
        got = _as_numpy(state_dict[key])
        want = np.asarray(want)
        if got.shape != want.shape:
            raise ValueError(f"{key}: shape {got.shape} does not match the config's {want.shape}")
        if not np.allclose(got.astype(np.float64), want.astype(np.float64), rtol=rtol, atol=0.0):
            raise ValueError(
                f"{key}: values do not match the config (max abs diff "
                f"{np.max(np.abs(got.astype(np.float64) - want)):.3g}); check sigma_min / sigma_max / num_scales"
            )


def check_state_dict(
    state_dict: Mapping[str, Any],
    table: Iterable[KeyMap],
    *,
    ignore: Iterable[str] = (),
    derived: Mapping[str, np.ndarray] | None = None,
) -> None:
    """Raise unless ``state_dict`` has exactly the table's keys (+ ``derived``, ``ignore``)
    with the table's shapes. ``KeyError`` for missing / unexpected keys, ``ValueError`` for
    shapes, each naming the key(s)."""
    table = _check_table(table)
    derived = dict(derived or {})
    ignore = set(ignore) | set(derived)
    known = {km.torch_key for km in table}
    unexpected = sorted(k for k in state_dict if k not in known and k not in ignore)
    if unexpected:
        raise KeyError(f"unexpected key(s) in state_dict, not in the key table: {unexpected[:10]}"
                       + (f" (+{len(unexpected) - 10} more)" if len(unexpected) > 10 else ""))
    missing = [km.torch_key for km in table if km.torch_key not in state_dict]
    if missing:
        raise KeyError(f"missing key(s) in state_dict: {missing[:10]}"
                       + (f" (+{len(missing) - 10} more)" if len(missing) > 10 else ""))
    for km in table:
        if km.shape is not None:
            shape = tuple(state_dict[km.torch_key].shape)
            if shape != km.shape:
                raise ValueError(f"{km.torch_key}: shape {shape} does not match the expected {km.shape}")
    _check_derived(state_dict, derived)


def torch_to_flax(
    state_dict: Mapping[str, Any],
    table: Iterable[KeyMap],
    *,
    flax_shapes: Mapping | None = None,
    ignore: Iterable[str] = (),
    derived: Mapping[str, np.ndarray] | None = None,
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
      derived: ``{key: expected value}`` of buffers the flax side recomputes from the
        config (e.g. ``sigmas``): required, checked, not converted.
      dtype: optional numpy dtype to cast every array to.

    Raises:
      KeyError: a table key missing from ``state_dict``, or a state_dict key that
        neither the table nor ``ignore`` knows; or a flax leaf left unproduced.
      ValueError: a shape that does not match the table or ``flax_shapes``, or a
        derived buffer that does not match the config.
    """
    table = _check_table(table)
    check_state_dict(state_dict, table, ignore=ignore, derived=derived)
    expected = flatten_paths(flax_shapes) if flax_shapes is not None else None
    out: dict = {}
    for km in table:
        value = state_dict[km.torch_key]
        array = _to_flax_layout(_as_numpy(value), km.layout, km.torch_key)
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
    derived: Mapping[str, np.ndarray] | None = None,
) -> "collections.OrderedDict[str, torch.Tensor]":
    """Convert nested flax variables to a torch ``state_dict`` (an OrderedDict).

    Every flax leaf must be used by the table (``KeyError`` otherwise); with
    ``torch_shapes`` (e.g. ``{k: v.shape for k, v in module.state_dict().items()}``)
    every produced tensor is shape-checked and every torch key must be produced.
    ``derived`` buffers (e.g. ``sigmas``) are emitted first, as score_sde's modules
    register them before their submodules.
    """
    table = _check_table(table)
    leaves = flatten_paths(variables)
    used = {km.flax_path for km in table}
    unused = sorted("/".join(p) for p in leaves if p not in used)
    if unused:
        raise KeyError(f"flax leaves not in the key table: {unused[:10]}")
    out: "collections.OrderedDict[str, torch.Tensor]" = collections.OrderedDict()
    for key, value in (derived or {}).items():
        out[key] = torch.from_numpy(np.array(value, copy=True))
    for km in table:
        array = np.asarray(_get_path(variables, km.flax_path))
        array = np.ascontiguousarray(_to_torch_layout(array, km.layout, km.torch_key))
        if km.shape is not None and tuple(array.shape) != km.shape:
            raise ValueError(f"{km.torch_key}: converted shape {tuple(array.shape)} != expected {km.shape}")
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


# ----------------------------------------------------------------------------------
# Architecture key tables (score_sde_pytorch module order)
# ----------------------------------------------------------------------------------


class _Table:
    """Accumulates ``KeyMap`` entries; one method per kind of layer."""

    def __init__(self):
        self.entries: list[KeyMap] = []

    def add(self, torch_key, flax_path, layout, shape, trainable=True):
        self.entries.append(KeyMap(torch_key, tuple(flax_path), layout, tuple(shape), trainable))

    def conv(self, t: str, f: tuple, in_ch: int, out_ch: int, k: int, *, weight: str = "weight"):
        self.add(f"{t}{weight}", f + ("kernel",), "conv", (out_ch, in_ch, k, k))
        self.add(f"{t}bias", f + ("bias",), "same", (out_ch,))

    def dense(self, t: str, f: tuple, in_f: int, out_f: int):
        self.add(f"{t}weight", f + ("kernel",), "dense", (out_f, in_f))
        self.add(f"{t}bias", f + ("bias",), "same", (out_f,))

    def group_norm(self, t: str, f: tuple, channels: int):
        self.add(f"{t}weight", f + ("scale",), "same", (channels,))
        self.add(f"{t}bias", f + ("bias",), "same", (channels,))

    def nin(self, t: str, f: tuple, in_dim: int, out_dim: int):
        self.add(f"{t}W", f + ("W",), "same", (in_dim, out_dim))
        self.add(f"{t}b", f + ("b",), "same", (out_dim,))

    def fourier(self, t: str, f_module: tuple, size: int):
        """Frozen Fourier projection: flax ``('constants', ..., 'W')``."""
        self.add(f"{t}W", ("constants",) + f_module + ("W",), "same", (size,), trainable=False)

    # --- blocks (prefix strings end with '.', flax prefixes are tuples) -----------

    def attn(self, t: str, f: tuple, channels: int):
        self.group_norm(t + "GroupNorm_0.", f + ("GroupNorm_0",), channels)
        for i in range(4):
            self.nin(f"{t}NIN_{i}.", f + (f"NIN_{i}",), channels, channels)

    def resnet_ddpm(self, t: str, f: tuple, in_ch: int, out_ch: int, temb_dim: int | None):
        """ResnetBlockDDPM and ResnetBlockDDPMpp (same tensors; NIN shortcut)."""
        self.group_norm(t + "GroupNorm_0.", f + ("GroupNorm_0",), in_ch)
        self.conv(t + "Conv_0.", f + ("Conv_0",), in_ch, out_ch, 3)
        if temb_dim is not None:
            self.dense(t + "Dense_0.", f + ("Dense_0",), temb_dim, out_ch)
        self.group_norm(t + "GroupNorm_1.", f + ("GroupNorm_1",), out_ch)
        self.conv(t + "Conv_1.", f + ("Conv_1",), out_ch, out_ch, 3)
        if in_ch != out_ch:
            self.nin(t + "NIN_0.", f + ("NIN_0",), in_ch, out_ch)

    def resnet_biggan(self, t: str, f: tuple, in_ch: int, out_ch: int, temb_dim: int | None,
                      resample: bool = False):
        self.group_norm(t + "GroupNorm_0.", f + ("GroupNorm_0",), in_ch)
        self.conv(t + "Conv_0.", f + ("Conv_0",), in_ch, out_ch, 3)
        if temb_dim is not None:
            self.dense(t + "Dense_0.", f + ("Dense_0",), temb_dim, out_ch)
        self.group_norm(t + "GroupNorm_1.", f + ("GroupNorm_1",), out_ch)
        self.conv(t + "Conv_1.", f + ("Conv_1",), out_ch, out_ch, 3)
        if in_ch != out_ch or resample:
            self.conv(t + "Conv_2.", f + ("Conv_2",), in_ch, out_ch, 1)

    def resample_conv(self, t: str, f: tuple, in_ch: int, out_ch: int, with_conv: bool, fir: bool):
        """layerspp Upsample / Downsample: ``Conv2d_0`` (FIR) or ``Conv_0`` when with_conv."""
        if not with_conv:
            return
        if fir:
            self.conv(t + "Conv2d_0.", f + ("Conv2d_0",), in_ch, out_ch, 3)
        else:
            self.conv(t + "Conv_0.", f + ("Conv_0",), in_ch, out_ch, 3)

    def table(self) -> KeyTable:
        return tuple(_check_table(self.entries))


def _module(i: int) -> tuple[str, tuple[str, ...]]:
    """torch prefix and flax path of score_sde's ``all_modules[i]``."""
    return f"all_modules.{i}.", ("params", f"all_modules_{i}")


def mlp_key_table(config) -> KeyTable:
    """Key table of ``MLP(config)`` (``models/mlp.py``), in torch state_dict order."""
    tb = _Table()
    E, T = config.embedding_dim, config.temb_dim
    if config.conditional:
        if config.embedding_type == "fourier":
            tb.fourier("embed.", ("embed",), E // 2)
        tb.dense("temb_0.", ("params", "temb_0"), E, T)
        tb.dense("temb_1.", ("params", "temb_1"), T, T)
        for i, w in enumerate(config.hidden_dims):
            tb.dense(f"temb_proj.{i}.", ("params", f"temb_proj_{i}"), T, w)
    widths = (config.data_dim,) + tuple(config.hidden_dims)
    for i in range(len(config.hidden_dims)):
        tb.dense(f"layers.{i}.", ("params", f"layers_{i}"), widths[i], widths[i + 1])
    tb.dense("out.", ("params", "out"), widths[-1], config.data_dim)
    return tb.table()


def ddpm_key_table(config) -> KeyTable:
    """Key table of score_sde's ``ddpm`` model (``models/ddpm.py``), state_dict order.

    ``all_modules``: [Dense, Dense] (conditional), conv_in, per level num_res_blocks x
    (ResnetBlockDDPM [+ AttnBlock]) [+ Downsample], middle Resnet/Attn/Resnet, per level
    (num_res_blocks + 1) x ResnetBlockDDPM [+ one AttnBlock] [+ Upsample], GroupNorm,
    conv_out. The ``sigmas`` buffer is not in the table (see ``derived_buffers``).
    """
    tb = _Table()
    nf, C = config.nf, config.num_channels
    temb = 4 * nf
    m = 0
    if config.conditional:
        tb.dense(*_module(m), nf, temb); m += 1  # noqa: E702
        tb.dense(*_module(m), temb, temb); m += 1  # noqa: E702
    tb.conv(*_module(m), C, nf, 3); m += 1  # noqa: E702
    hs_c = [nf]
    in_ch = nf
    for level, mult in enumerate(config.ch_mult):
        for _ in range(config.num_res_blocks):
            out_ch = nf * mult
            tb.resnet_ddpm(*_module(m), in_ch, out_ch, temb); m += 1  # noqa: E702
            in_ch = out_ch
            if config.all_resolutions[level] in config.attn_resolutions:
                tb.attn(*_module(m), in_ch); m += 1  # noqa: E702
            hs_c.append(in_ch)
        if level != config.num_resolutions - 1:
            if config.resamp_with_conv:
                tb.conv(_module(m)[0] + "Conv_0.", _module(m)[1] + ("Conv_0",), in_ch, in_ch, 3)
            m += 1
            hs_c.append(in_ch)
    in_ch = hs_c[-1]
    tb.resnet_ddpm(*_module(m), in_ch, in_ch, temb); m += 1  # noqa: E702
    tb.attn(*_module(m), in_ch); m += 1  # noqa: E702
    tb.resnet_ddpm(*_module(m), in_ch, in_ch, temb); m += 1  # noqa: E702
    for level in reversed(range(config.num_resolutions)):
        for _ in range(config.num_res_blocks + 1):
            out_ch = nf * config.ch_mult[level]
            tb.resnet_ddpm(*_module(m), in_ch + hs_c.pop(), out_ch, temb); m += 1  # noqa: E702
            in_ch = out_ch
        if config.all_resolutions[level] in config.attn_resolutions:
            tb.attn(*_module(m), in_ch); m += 1  # noqa: E702
        if level != 0:
            if config.resamp_with_conv:
                tb.conv(_module(m)[0] + "Conv_0.", _module(m)[1] + ("Conv_0",), in_ch, in_ch, 3)
            m += 1
    assert not hs_c
    tb.group_norm(*_module(m), in_ch); m += 1  # noqa: E702
    tb.conv(*_module(m), in_ch, C, 3); m += 1  # noqa: E702
    return tb.table()


def ncsnpp_key_table(config) -> KeyTable:
    """Key table of score_sde's ``ncsnpp`` model (``models/ncsnpp.py``), state_dict order.

    Follows score_sde_pytorch's current ``ncsnpp.py``, where the parameter-free pyramid
    resamplers of ``progressive='output_skip'`` / ``progressive_input='input_skip'`` are
    separate attributes, not entries of ``all_modules``. The ``sigmas`` buffer is not in
    the table (see ``derived_buffers``).
    """
    tb = _Table()
    nf, C = config.nf, config.num_channels
    temb = 4 * nf
    biggan = config.resblock_type == "biggan"
    fir = config.fir
    res_names = config.all_resolutions

    def resblock(m, in_ch, out_ch, resample=False):
        if biggan:
            tb.resnet_biggan(*_module(m), in_ch, out_ch, temb, resample)
        else:
            tb.resnet_ddpm(*_module(m), in_ch, out_ch, temb)

    m = 0
    if config.embedding_type == "fourier":
        t, f = _module(m)
        tb.fourier(t, f[1:], nf); m += 1  # noqa: E702
    if config.conditional:
        tb.dense(*_module(m), config.embed_dim, temb); m += 1  # noqa: E702
        tb.dense(*_module(m), temb, temb); m += 1  # noqa: E702
    input_pyramid_ch = C
    tb.conv(*_module(m), C, nf, 3); m += 1  # noqa: E702
    hs_c = [nf]
    in_ch = nf
    for level, mult in enumerate(config.ch_mult):
        for _ in range(config.num_res_blocks):
            out_ch = nf * mult
            resblock(m, in_ch, out_ch); m += 1  # noqa: E702
            in_ch = out_ch
            if res_names[level] in config.attn_resolutions:
                tb.attn(*_module(m), in_ch); m += 1  # noqa: E702
            hs_c.append(in_ch)
        if level != config.num_resolutions - 1:
            if biggan:
                resblock(m, in_ch, in_ch, resample=True)
            else:
                tb.resample_conv(*_module(m), in_ch, in_ch, config.resamp_with_conv, fir)
            m += 1
            if config.progressive_input == "input_skip":
                t, f = _module(m)
                tb.conv(t + "Conv.", f + ("Conv",), input_pyramid_ch, in_ch, 1); m += 1  # noqa: E702
                if config.progressive_combine == "cat":
                    in_ch *= 2
            elif config.progressive_input == "residual":
                tb.resample_conv(*_module(m), input_pyramid_ch, in_ch, True, fir); m += 1  # noqa: E702
                input_pyramid_ch = in_ch
            hs_c.append(in_ch)
    in_ch = hs_c[-1]
    resblock(m, in_ch, in_ch); m += 1  # noqa: E702
    tb.attn(*_module(m), in_ch); m += 1  # noqa: E702
    resblock(m, in_ch, in_ch); m += 1  # noqa: E702
    pyramid_ch = 0
    for level in reversed(range(config.num_resolutions)):
        for _ in range(config.num_res_blocks + 1):
            out_ch = nf * config.ch_mult[level]
            resblock(m, in_ch + hs_c.pop(), out_ch); m += 1  # noqa: E702
            in_ch = out_ch
        if res_names[level] in config.attn_resolutions:
            tb.attn(*_module(m), in_ch); m += 1  # noqa: E702
        if config.progressive != "none":
            if level == config.num_resolutions - 1:
                tb.group_norm(*_module(m), in_ch); m += 1  # noqa: E702
                if config.progressive == "output_skip":
                    tb.conv(*_module(m), in_ch, C, 3); m += 1  # noqa: E702
                    pyramid_ch = C
                else:
                    tb.conv(*_module(m), in_ch, in_ch, 3); m += 1  # noqa: E702
                    pyramid_ch = in_ch
            elif config.progressive == "output_skip":
                tb.group_norm(*_module(m), in_ch); m += 1  # noqa: E702
                tb.conv(*_module(m), in_ch, C, 3); m += 1  # noqa: E702
                pyramid_ch = C
            else:
                tb.resample_conv(*_module(m), pyramid_ch, in_ch, True, fir); m += 1  # noqa: E702
                pyramid_ch = in_ch
        if level != 0:
            if biggan:
                resblock(m, in_ch, in_ch, resample=True)
            else:
                tb.resample_conv(*_module(m), in_ch, in_ch, config.resamp_with_conv, fir)
            m += 1
    assert not hs_c
    if config.progressive != "output_skip":
        tb.group_norm(*_module(m), in_ch); m += 1  # noqa: E702
        tb.conv(*_module(m), in_ch, C, 3); m += 1  # noqa: E702
    return tb.table()


def key_table(config) -> KeyTable:
    """The key table of the network a config describes (MLP, DDPM, NCSN++, NCSN, NCSNv2)."""
    from spec.model_configs import DDPMConfig, MLPConfig, NCSNppConfig
    from spec.ncsn_configs import NCSNConfig, NCSNv2Config

    if isinstance(config, MLPConfig):
        return mlp_key_table(config)
    if isinstance(config, DDPMConfig):
        return ddpm_key_table(config)
    if isinstance(config, NCSNppConfig):
        return ncsnpp_key_table(config)
    # The NCSN modules import this one: import their tables lazily.
    if isinstance(config, NCSNConfig):
        from torch_ref.models.ncsn import key_table as ncsn_key_table

        return ncsn_key_table(config)
    if isinstance(config, NCSNv2Config):
        from torch_ref.models.ncsnv2 import key_table as ncsnv2_key_table

        return ncsnv2_key_table(config)
    raise TypeError(f"no key table for config type {type(config).__name__}; expected MLPConfig, "
                    "DDPMConfig, NCSNppConfig, NCSNConfig or NCSNv2Config")


def from_ncsnv2(checkpoint, config, *, weights: str | None = None):
    """The torch NCSNv2 module of an ermongroup/ncsnv2 checkpoint (see
    ``torch_ref.models.ncsnv2.from_ncsnv2``; re-exported here next to ``from_score_sde``)."""
    from torch_ref.models.ncsnv2 import from_ncsnv2 as _from_ncsnv2

    return _from_ncsnv2(checkpoint, config, weights=weights)


def derived_buffers(config) -> dict[str, np.ndarray]:
    """Buffers the torch module holds but flax recomputes from the config.

    score_sde's image networks hold ``sigmas`` (float64, decreasing; see
    ``spec.model_configs.get_sigmas``), NCSNv2 a float32 ``sigmas``; the MLP and NCSN v1
    hold none.
    """
    from spec.model_configs import ModelConfig
    from spec.ncsn_configs import NCSNv2Config

    if isinstance(config, ModelConfig):
        return {"sigmas": config.sigmas}
    if isinstance(config, NCSNv2Config):  # ermongroup/ncsnv2 keeps a float32 buffer
        return {"sigmas": np.asarray(config.sigmas, np.float32)}
    return {}


def num_parameters(table: Iterable[KeyMap], *, trainable_only: bool = False) -> int:
    """Parameter count from a key table's shapes (all entries, or trainable ones)."""
    total = 0
    for km in table:
        if km.shape is None:
            raise ValueError(f"{km.torch_key}: the key table entry has no shape")
        if km.trainable or not trainable_only:
            total += int(np.prod(km.shape))
    return total


# ----------------------------------------------------------------------------------
# Official score_sde_pytorch checkpoints, and our own .pt files
# ----------------------------------------------------------------------------------

WEIGHTS = ("ema", "raw")


def load_checkpoint(checkpoint) -> Any:
    """A checkpoint object: ``checkpoint`` itself, or what the file at that path holds.

    Files are read with ``torch.load(map_location="cpu", weights_only=True)`` (no
    arbitrary code from pickles).
    """
    if isinstance(checkpoint, (str, os.PathLike)):
        if not os.path.exists(checkpoint):
            raise FileNotFoundError(f"checkpoint file {os.fspath(checkpoint)!r} does not exist")
        return torch.load(checkpoint, map_location="cpu", weights_only=True)
    return checkpoint


def _is_full_checkpoint(obj) -> bool:
    return isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping)


def score_sde_state_dict(checkpoint, config, *, weights: str = "ema") -> "collections.OrderedDict[str, Any]":
    """The official-named state_dict (no ``module.`` prefix) of a score_sde_pytorch checkpoint.

    Args:
      checkpoint: a path to a ``.pth`` file, the dict it holds (``model``, ``ema``,
        ``optimizer``, ``step``), or a bare ``state_dict`` with or without the
        ``module.`` prefix.
      config: the model config (``DDPMConfig`` / ``NCSNppConfig``).
      weights: ``"ema"`` substitutes score_sde's EMA ``shadow_params`` (the trainable
        parameters in ``model.parameters()`` order) for the trainable tensors;
        ``"raw"`` keeps the model weights. A bare state_dict has no EMA: use ``"raw"``.

    Raises:
      KeyError / ValueError naming a missing, unexpected or mis-shaped key, a
      ``sigmas`` buffer that disagrees with the config, or an EMA list whose length or
      shapes do not match the model's trainable parameters.
    """
    if weights not in WEIGHTS:
        raise ValueError(f"unknown weights {weights!r}; valid choices: {WEIGHTS}")
    ckpt = load_checkpoint(checkpoint)
    if _is_full_checkpoint(ckpt):
        state_dict = strip_prefix(ckpt["model"])
    elif isinstance(ckpt, Mapping):
        state_dict = strip_prefix(ckpt)
        if weights == "ema":
            raise ValueError("weights='ema' needs a score_sde checkpoint dict with 'model' and 'ema' entries; "
                             "this is a bare state_dict: pass weights='raw'")
    else:
        raise TypeError(f"checkpoint must be a path, a checkpoint dict or a state_dict, got {type(ckpt).__name__}")
    table = key_table(config)
    check_state_dict(state_dict, table, derived=derived_buffers(config))
    out = collections.OrderedDict((k, state_dict[k]) for k in state_dict)
    if weights == "ema":
        ema = ckpt.get("ema")
        if not isinstance(ema, Mapping) or "shadow_params" not in ema:
            raise KeyError("checkpoint has no 'ema' entry with 'shadow_params'; pass weights='raw'")
        shadow = list(ema["shadow_params"])
        trainable = [km for km in table if km.trainable]
        if len(shadow) != len(trainable):
            raise ValueError(f"ema shadow_params has {len(shadow)} tensors but the model has "
                             f"{len(trainable)} trainable parameters")
        for i, (km, value) in enumerate(zip(trainable, shadow)):
            if tuple(value.shape) != km.shape:
                raise ValueError(f"ema shadow_params[{i}] has shape {tuple(value.shape)} but {km.torch_key} "
                                 f"has shape {km.shape}")
            out[km.torch_key] = value
    return out


def from_score_sde(checkpoint, config, *, weights: str = "ema") -> torch.nn.Module:
    """The torch model (NCHW, eval mode) with a score_sde_pytorch checkpoint's weights.

    See ``score_sde_state_dict`` for the arguments. The module computes exactly the
    official network for the same weights.
    """
    from torch_ref.models.registry import create_model

    state_dict = score_sde_state_dict(checkpoint, config, weights=weights)
    model = create_model(config)
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


def save_state_dict(path, state_dict_or_module) -> None:
    """Write a state_dict (or a module's) to ``path`` atomically (temp file + rename)."""
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
    """Read a state_dict written by ``save_state_dict`` (CPU, ``weights_only``)."""
    sd = load_checkpoint(path)
    if not isinstance(sd, Mapping):
        raise TypeError(f"{os.fspath(path)!r} does not hold a state_dict")
    return collections.OrderedDict(sd)
