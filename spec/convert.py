"""Weights between a torch-named flat ``state_dict`` and nested flax variables, in numpy.

Framework-neutral (numpy + stdlib): the conversion core both ``jax_impl/convert.py``
(which casts the result to jax arrays) and ``torch_ref/convert.py`` (torch tensors)
call. The tensors of a network are listed by its key table (``spec.keytables``); nothing
is guessed from names or ranks.

- ``check_state_dict(state_dict, table)``: exactly the table's keys (plus ``derived``
  buffers and ``ignore``d keys), each with the table's shape, a floating dtype and finite
  values; ``KeyError`` (missing / unexpected keys) or ``ValueError`` / ``TypeError``
  naming the key otherwise.
- ``torch_to_flax(state_dict, table)`` -> nested ``{collection: {module: {leaf: array}}}``
  (conv kernels OIHW -> HWIO, 1-D conv kernels OIK -> KIO, dense (out, in) -> (in, out));
  ``flax_to_torch(variables, table)`` -> the flat OrderedDict in state_dict order (derived
  buffers first). The round trip is exact (a transpose permutes the same values).
- ``score_sde_state_dict(checkpoint, config, weights)``: the official-named state_dict of
  a score_sde_pytorch checkpoint (``model``, ``ema.shadow_params`` in trainable-parameter
  order, ``step``), EMA substituted for ``weights="ema"``.
- ``improved_diffusion_state_dict(checkpoint, config)``: the validated state_dict of an
  openai/improved-diffusion ``.pt`` (``model*.pt`` or ``ema_<rate>_*.pt``: a bare
  ``UNetModel`` state_dict, official key names), for a ``UNetModelConfig`` or the flags
  dict (``as_unet_model_config``).
- ``ncsnv2_state_dict(checkpoint, config, weights)``: the same for an ermongroup/ncsnv2
  checkpoint (``[model, optimizer, epoch, step(, ema)]`` or its dict form), with the
  ``sigmas`` buffer checked against (or filled from) the config.

Inputs may hold numpy arrays, jax arrays or torch tensors (duck typed; torch is never
imported here); checkpoints may be paths of any format ``spec.checkpoints`` reads.
"""

from __future__ import annotations

import collections
from typing import Any, Iterable, Mapping

import numpy as np

from spec.checkpoints import load_checkpoint, to_numpy
from spec.keytables import KeyMap, check_table, derived_buffers, key_table
from spec.ncsn_configs import NCSNv2Config
from spec.unet_model import UNetModelConfig
from spec.validate import check_choice

__all__ = [
    "WEIGHTS",
    "as_unet_model_config",
    "improved_diffusion_state_dict",
    "check_state_dict",
    "flatten_paths",
    "flax_to_torch",
    "ncsnv2_state_dict",
    "score_sde_state_dict",
    "strip_prefix",
    "torch_to_flax",
]

WEIGHTS = ("ema", "raw")


def strip_prefix(state_dict: Mapping[str, Any], prefix: str = "module.") -> "collections.OrderedDict[str, Any]":
    """Remove a ``prefix`` (DataParallel's ``module.``) from every key that has it."""
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping of names to tensors, got {type(state_dict).__name__}")
    return collections.OrderedDict(
        ((k[len(prefix):] if prefix and isinstance(k, str) and k.startswith(prefix) else k), v)
        for k, v in state_dict.items())


def flatten_paths(tree: Mapping, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """``{path: leaf}`` of a nested mapping (flax variables or shapes from eval_shape)."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(flatten_paths(v, prefix + (str(k),)))
        else:
            out[prefix + (str(k),)] = v
    return out


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
    node[path[-1]] = value


def _listing(keys: list[str]) -> str:
    return f"{keys[:10]}" + (f" (+{len(keys) - 10} more)" if len(keys) > 10 else "")


def _check_values(what: str, array: np.ndarray) -> np.ndarray:
    """Floating dtype and finite values, or an error naming ``what``."""
    if array.dtype.kind != "f":
        raise TypeError(f"{what}: dtype {array.dtype} is not floating; checkpoints hold float tensors "
                        "(an integer or boolean tensor here means a damaged or foreign file)")
    finite = np.isfinite(array)
    if not finite.all():
        bad = int(array.size - np.count_nonzero(finite))
        raise ValueError(f"{what}: {bad} of {array.size} values are NaN or Inf")
    return array


def _check_derived(state: Mapping[str, np.ndarray], derived: Mapping[str, np.ndarray], rtol: float = 1e-6) -> None:
    for key, want in derived.items():
        if key not in state:
            raise KeyError(f"missing key(s) in state_dict: [{key!r}]")
        got = _check_values(key, state[key])
        want = np.asarray(want)
        if got.shape != want.shape:
            raise ValueError(f"{key}: shape {got.shape} does not match the config's {want.shape}")
        if not np.allclose(got.astype(np.float64), want.astype(np.float64), rtol=rtol, atol=0.0):
            raise ValueError(
                f"{key}: values do not match the config (max abs diff "
                f"{np.max(np.abs(got.astype(np.float64) - want)):.3g}); check sigma_min / sigma_max / num_scales")


def check_state_dict(
    state_dict: Mapping[str, Any],
    table: Iterable[KeyMap],
    *,
    ignore: Iterable[str] = (),
    derived: Mapping[str, np.ndarray] | None = None,
    what: str = "state_dict",
) -> "collections.OrderedDict[str, np.ndarray]":
    """Check ``state_dict`` against a key table and return it as numpy arrays.

    It must hold exactly the table's keys (plus the ``derived`` buffers, which must equal
    the config's values, and any ``ignore``d keys), each with the table's shape, a
    floating dtype and finite values.

    Raises:
      KeyError: missing or unexpected keys (all listed, up to 10).
      ValueError: a wrong shape, NaN / Inf values, a derived buffer off the config.
      TypeError: a non-floating (integer, boolean) tensor or a non-array value.
    Each message names the key (and ``what``, the dict's role, e.g.
    ``"checkpoint[0] (model state_dict)"``).
    """
    table = check_table(table)
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"{what} must be a mapping of names to tensors, got {type(state_dict).__name__}")
    derived = dict(derived or {})
    ignore = set(ignore) | set(derived)
    known = {km.torch_key for km in table}
    unexpected = sorted(str(k) for k in state_dict if k not in known and k not in ignore)
    if unexpected:
        raise KeyError(f"unexpected key(s) in {what}, not in the key table: {_listing(unexpected)}")
    missing = [km.torch_key for km in table if km.torch_key not in state_dict]
    if missing:
        raise KeyError(f"missing key(s) in {what}: {_listing(missing)}")
    out: "collections.OrderedDict[str, np.ndarray]" = collections.OrderedDict()
    for km in table:
        array = to_numpy(state_dict[km.torch_key], km.torch_key)
        if km.shape is not None and tuple(array.shape) != km.shape:
            raise ValueError(f"{km.torch_key}: shape {tuple(array.shape)} does not match the expected {km.shape}"
                             + ("" if what == "state_dict" else f" (in {what})"))
        out[km.torch_key] = _check_values(km.torch_key, array)
    present = {k: to_numpy(state_dict[k], k) for k in derived if k in state_dict}
    _check_derived(present, derived)
    out.update(present)
    return out


# (kernel kind, rank, torch layout, flax layout, permutation torch -> flax)
_RELAYOUT = {"conv": ("conv", 4, "OIHW", "HWIO", (2, 3, 1, 0)), "conv1d": ("conv1d", 3, "OIK", "KIO", (2, 1, 0)),
             "dense": ("dense", 2, "(out, in)", "(in, out)", (1, 0))}


def _relayout(array: np.ndarray, km: KeyMap, *, to_flax: bool) -> np.ndarray:
    """Transpose a kernel between the torch and flax layouts of ``km.layout``."""
    if km.layout not in _RELAYOUT:
        return array
    kind, ndim, torch_name, flax_name, perm = _RELAYOUT[km.layout]
    if array.ndim != ndim:
        side, layout = ("", torch_name) if to_flax else ("flax ", flax_name)
        raise ValueError(f"{km.torch_key}: a {side}{kind} kernel must be {ndim}-D {layout}, got shape {array.shape}")
    return np.transpose(array, perm if to_flax else tuple(np.argsort(perm)))


def torch_to_flax(
    state_dict: Mapping[str, Any],
    table: Iterable[KeyMap],
    *,
    flax_shapes: Mapping | None = None,
    ignore: Iterable[str] = (),
    derived: Mapping[str, np.ndarray] | None = None,
    dtype=None,
) -> dict:
    """Convert a torch-named ``state_dict`` to nested flax variables (numpy arrays).

    Args:
      state_dict: ``{key: array or tensor}``; keys already stripped of ``module.``.
      table: the architecture's ``KeyMap`` entries.
      flax_shapes: optional nested mapping of the expected flax leaves (e.g.
        ``jax.eval_shape(model.init, ...)``); every leaf must be produced with exactly
        that shape.
      ignore: torch keys allowed in ``state_dict`` but not converted.
      derived: ``{key: expected value}`` of buffers the flax side recomputes from the
        config (``sigmas``): required, checked, not converted.
      dtype: optional numpy dtype to cast every array to.

    Raises:
      KeyError / ValueError / TypeError as ``check_state_dict``; ``KeyError`` for a flax
      leaf of ``flax_shapes`` the table does not produce (or a table path it lacks).
    """
    table = check_table(table)
    arrays = check_state_dict(state_dict, table, ignore=ignore, derived=derived)
    expected = flatten_paths(flax_shapes) if flax_shapes is not None else None
    out: dict = {}
    for km in table:
        array = _relayout(arrays[km.torch_key], km, to_flax=True)
        if dtype is not None:
            array = array.astype(dtype)
        if expected is not None:
            if km.flax_path not in expected:
                raise KeyError(f"{km.torch_key}: the model has no flax leaf {'/'.join(km.flax_path)!r}")
            want = tuple(expected[km.flax_path].shape)
            if tuple(array.shape) != want:
                raise ValueError(f"{km.torch_key}: shape {arrays[km.torch_key].shape} converts to {array.shape} "
                                 f"but flax leaf {'/'.join(km.flax_path)!r} has shape {want}")
        _set_path(out, km.flax_path, np.ascontiguousarray(array))
    if expected is not None:
        produced = set(flatten_paths(out))
        left = sorted("/".join(p) for p in expected if p not in produced)
        if left:
            raise KeyError(f"flax leaves not covered by the key table: {_listing(left)}")
    return out


def flax_to_torch(
    variables: Mapping,
    table: Iterable[KeyMap],
    *,
    torch_shapes: Mapping[str, tuple[int, ...]] | None = None,
    derived: Mapping[str, np.ndarray] | None = None,
) -> "collections.OrderedDict[str, np.ndarray]":
    """Convert nested flax variables (numpy or jax leaves) to a flat torch-named
    OrderedDict of numpy arrays, in state_dict order.

    Every flax leaf must be used by the table (``KeyError`` otherwise) and be a finite
    floating array; with ``torch_shapes`` (``{key: shape}`` of the torch module) every
    produced array is shape-checked and every torch key must be produced. ``derived``
    buffers (``sigmas``) come first, as score_sde's modules register them first.
    """
    table = check_table(table)
    if not isinstance(variables, Mapping):
        raise TypeError(f"variables must be a nested mapping (flax variables), got {type(variables).__name__}")
    leaves = flatten_paths(variables)
    used = {km.flax_path for km in table}
    unused = sorted("/".join(p) for p in leaves if p not in used)
    if unused:
        raise KeyError(f"flax leaves not in the key table: {_listing(unused)}")
    out: "collections.OrderedDict[str, np.ndarray]" = collections.OrderedDict()
    for key, value in (derived or {}).items():
        out[key] = np.array(value, copy=True)
    for km in table:
        name = "/".join(km.flax_path)
        array = _check_values(f"flax leaf {name!r}", to_numpy(_get_path(variables, km.flax_path), name))
        array = np.array(_relayout(array, km, to_flax=False), order="C", copy=True)  # writable, owns its memory
        if km.shape is not None and tuple(array.shape) != km.shape:
            raise ValueError(f"{km.torch_key}: converted shape {tuple(array.shape)} != expected {km.shape}")
        if torch_shapes is not None:
            if km.torch_key not in torch_shapes:
                raise KeyError(f"the torch module has no key {km.torch_key!r}")
            want = tuple(torch_shapes[km.torch_key])
            if tuple(array.shape) != want:
                raise ValueError(f"{km.torch_key}: converted shape {tuple(array.shape)} != torch shape {want}")
        out[km.torch_key] = array
    if torch_shapes is not None:
        left = sorted(k for k in torch_shapes if k not in out)
        if left:
            raise KeyError(f"torch keys not produced by the key table: {_listing(left)}")
    return out


# ------------------------------------------------------------- official checkpoints


def _is_full_checkpoint(obj) -> bool:
    return isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping)


def score_sde_state_dict(checkpoint, config, *, weights: str = "ema") -> "collections.OrderedDict[str, np.ndarray]":
    """The official-named state_dict (no ``module.`` prefix, numpy) of a score_sde checkpoint.

    Args:
      checkpoint: a path (``.pth`` / ``.pt``, or ``.npz`` / ``.safetensors`` in the
        layout of ``spec.checkpoints``), the dict it holds (``model``, ``ema``,
        ``optimizer``, ``step``), or a bare state_dict with or without ``module.``.
      config: the model config (``DDPMConfig`` / ``NCSNppConfig``; any config with a
        key table).
      weights: ``"ema"`` substitutes score_sde's EMA ``shadow_params`` (the trainable
        parameters in ``model.parameters()`` order) for the trainable tensors; ``"raw"``
        keeps the model weights. A bare state_dict has no EMA: use ``"raw"``.

    Raises:
      KeyError / ValueError / TypeError naming a missing, unexpected, mis-shaped,
      non-floating or non-finite key, a ``sigmas`` buffer off the config, or an EMA list
      whose length or shapes do not match the trainable parameters; the file errors of
      ``spec.checkpoints.read_checkpoint``.
    """
    if weights not in WEIGHTS:
        raise ValueError(f"unknown weights {weights!r}; valid choices: {WEIGHTS}")
    table = key_table(config)  # a wrong config type fails before any file is read
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
    out = check_state_dict(state_dict, table, derived=derived_buffers(config))
    if weights == "ema":
        ema = ckpt.get("ema")
        if not isinstance(ema, Mapping) or "shadow_params" not in ema:
            raise KeyError("checkpoint has no 'ema' entry with 'shadow_params'; pass weights='raw'")
        shadow = ema["shadow_params"]
        if isinstance(shadow, Mapping) or not isinstance(shadow, (list, tuple)):
            raise TypeError(f"ema shadow_params must be a list of tensors, got {type(shadow).__name__}")
        trainable = [km for km in table if km.trainable]
        if len(shadow) != len(trainable):
            raise ValueError(f"ema shadow_params has {len(shadow)} tensors but the model has "
                             f"{len(trainable)} trainable parameters")
        for i, (km, value) in enumerate(zip(trainable, shadow)):
            array = to_numpy(value, f"ema shadow_params[{i}]")
            if tuple(array.shape) != km.shape:
                raise ValueError(f"ema shadow_params[{i}] has shape {tuple(array.shape)} but {km.torch_key} "
                                 f"has shape {km.shape}")
            out[km.torch_key] = _check_values(f"ema shadow_params[{i}] ({km.torch_key})", array)
    order = list(derived_buffers(config)) + [km.torch_key for km in table]
    return collections.OrderedDict((k, out[k]) for k in order)


def _as_ncsnv2_config(config: Any) -> NCSNv2Config:
    if isinstance(config, NCSNv2Config):
        return config
    return NCSNv2Config.from_ncsnv2_config(config)


def ncsnv2_state_dict(checkpoint: Any, config: Any, *, weights: str | None = None
                      ) -> "collections.OrderedDict[str, np.ndarray]":
    """The validated NCSNv2 state_dict (numpy, ``sigmas`` first) of an ermongroup/ncsnv2 checkpoint.

    Args:
      checkpoint: a path (``checkpoint_*.pth``, or ``.npz`` / ``.safetensors`` in the
        layout of ``spec.checkpoints``); the list a ``.pth`` holds, ``[model_state,
        optimizer_state, epoch, step(, ema_state)]`` (keys prefixed ``module.``; the EMA
        shadow dict holds the parameters only); its dict form ``{"model", "epoch",
        "step"(, "ema")}``; or a bare state_dict (prefixed or not).
      config: the run's YAML config as a nested dict (``NCSNv2Config.from_ncsnv2_config``)
        or an ``NCSNv2Config``.
      weights: ``"ema"`` (the EMA shadow parameters, as the official sampler uses),
        ``"raw"``, or None: ``"ema"`` when the checkpoint holds an EMA state, else
        ``"raw"``. A bare state_dict is taken as it is (``weights="ema"`` is an error).

    Raises:
      KeyError naming a missing or unexpected key; ValueError naming a mis-shaped or
      non-finite key, a ``sigmas`` buffer off the config, or an EMA request the
      checkpoint cannot satisfy; TypeError for an unknown checkpoint type or a
      non-floating tensor.
    """
    cfg = _as_ncsnv2_config(config)
    if weights is not None:
        check_choice("weights", weights, WEIGHTS)
    table = key_table(cfg)
    ckpt = load_checkpoint(checkpoint)
    if isinstance(ckpt, (list, tuple)):
        if not ckpt or not isinstance(ckpt[0], Mapping):
            raise ValueError("an ncsnv2 checkpoint list must start with the model state_dict")
        model, ema, n = ckpt[0], (ckpt[4] if len(ckpt) >= 5 and isinstance(ckpt[4], Mapping) else None), len(ckpt)
        what, ema_what = "checkpoint[0] (model state_dict)", "checkpoint[4] (EMA shadow)"
        no_ema = f"the checkpoint list has {n} entries and no EMA state at index 4"
    elif _is_full_checkpoint(ckpt):
        model, ema = ckpt["model"], ckpt.get("ema")
        what, ema_what = "checkpoint['model'] (model state_dict)", "checkpoint['ema'] (EMA shadow)"
        no_ema = "the checkpoint has no 'ema' entry"
    elif isinstance(ckpt, Mapping):
        if weights == "ema":
            raise ValueError("weights='ema' needs the checkpoint list [model, optimizer, epoch, step, ema]; "
                             "a bare state_dict is loaded as it is (use weights=None or 'raw')")
        model, ema, what, no_ema = ckpt, None, "state_dict", ""
    else:
        raise TypeError("checkpoint must be a path, the ncsnv2 checkpoint list or a state_dict, "
                        f"got {type(ckpt).__name__}")
    state = strip_prefix(model)
    sig_cfg = derived_buffers(cfg)["sigmas"]
    out = check_state_dict(state, table, ignore=("sigmas",), what=what)
    use = weights or ("ema" if ema is not None else "raw")
    if use == "ema":
        if ema is None:
            raise ValueError(f"weights='ema' but {no_ema} (trained with model.ema false?); use weights='raw'")
        out.update(check_state_dict(strip_prefix(ema), table, what=ema_what))
    if "sigmas" in state:
        sig = to_numpy(state["sigmas"], "sigmas").astype(np.float32)
        if sig.shape != sig_cfg.shape or not np.allclose(sig, sig_cfg, rtol=1e-6, atol=0.0):
            raise ValueError(
                "checkpoint buffer 'sigmas' disagrees with the config ladder (sigma_max="
                f"{cfg.sigma_max}, sigma_min={cfg.sigma_min}, num_scales={cfg.num_scales}, "
                f"sigma_dist={cfg.sigma_dist!r}): shape {sig.shape}, first/last "
                f"{sig.flat[0] if sig.size else None}/{sig.flat[-1] if sig.size else None} vs "
                f"{sig_cfg[0]}/{sig_cfg[-1]}")
        sig_cfg = sig
    return collections.OrderedDict([("sigmas", sig_cfg)] + [(km.torch_key, out[km.torch_key]) for km in table])


def as_unet_model_config(config: Any) -> UNetModelConfig:
    """A ``UNetModelConfig`` as it is, or the flags dict of improved-diffusion
    (``model_and_diffusion_defaults()`` keys) through ``UNetModelConfig.from_improved_diffusion_args``."""
    if isinstance(config, UNetModelConfig):
        return config
    if isinstance(config, Mapping):
        return UNetModelConfig.from_improved_diffusion_args(config)
    raise TypeError("config must be a UNetModelConfig or a dict of improved-diffusion flags "
                    f"(model_and_diffusion_defaults() keys), got {type(config).__name__}")


def improved_diffusion_state_dict(checkpoint: Any, config: Any) -> "collections.OrderedDict[str, np.ndarray]":
    """The validated state_dict (numpy, official key order) of an improved-diffusion checkpoint.

    Args:
      checkpoint: a path -- the official ``.pt`` (``model*.pt``, or ``ema_<rate>_*.pt`` for
        the EMA weights; both are bare ``UNetModel`` state_dicts; reading needs torch) or
        ``.npz`` / ``.safetensors`` holding the same keys (no torch needed) -- or the
        state_dict itself (arrays or tensors; a ``module.`` prefix is stripped; a dict
        ``{"model": state_dict}`` is accepted too).
      config: a ``UNetModelConfig`` or the flags dict it was trained with (missing keys:
        the official defaults).

    Raises:
      KeyError naming missing or unexpected keys; ValueError / TypeError naming a
      mis-shaped, non-floating or non-finite tensor, a bad config; the file errors of
      ``spec.checkpoints.read_checkpoint``.
    """
    cfg = as_unet_model_config(config)  # a bad config fails before any file is read
    table = key_table(cfg)
    ckpt = load_checkpoint(checkpoint)
    if _is_full_checkpoint(ckpt):
        ckpt = ckpt["model"]
    if not isinstance(ckpt, Mapping):
        raise TypeError(f"an improved-diffusion checkpoint holds a state_dict, got {type(ckpt).__name__}")
    return check_state_dict(strip_prefix(ckpt), table, what="improved-diffusion state_dict")
