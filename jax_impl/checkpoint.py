"""Training checkpoints that survive anything: an orbax ``CheckpointManager`` over the TrainState.

Twin: ``torch_ref/checkpoint.py`` (same names; one ``<step>.pt`` file per step there,
written to a temporary file and renamed).

``CheckpointManager(directory, *, max_to_keep=3)`` keeps the last ``max_to_keep`` steps of a
run under ``directory/<step>/`` (orbax's layout), each a composite of two items:

- ``state``: the TrainState pytree (any pytree of arrays: params, optimiser state, EMA, the
  PRNG key, ...), stored as a nested dict of arrays (flax struct / NamedTuple fields by
  name, sequences by index; typed PRNG keys as their ``key_data``);
- ``meta``: JSON -- the step, the data iterator's position (``data_state``), the run's
  config dict, and the leaf table (path -> shape, dtype) used to check a target before
  orbax sees it.

Atomic: orbax writes each step into a temporary directory and renames it when complete, so a
save killed at any moment (SIGKILL included) leaves the previous steps intact and a
half-written step is never listed by ``all_steps`` / ``latest_step`` nor restored.

``restore(step=None, *, target, config=None)`` -> ``(state, data_state, config_dict)``:
the latest step (or the one asked for), restored into the structure of ``target`` (a
TrainState built for the same model; its arrays give shapes and dtypes). Every failure --
no checkpoint in the directory, a directory that is not a checkpoint, a missing step,
truncated or deleted files, a checkpoint of another model (leaf paths / shapes / dtypes
differ from ``target``) or of another config (``config`` given and the saved config dict
differs) -- raises ONE ``CheckpointError`` (a ``ValueError``) naming the directory and
what does not match, never a traceback from inside orbax. An older intact step can be
chosen with ``step=``.

Devices and processes: the state may live on any ``jax.sharding`` mesh, across
``jax.distributed`` processes (``jax_impl.sharding.shard_train_state``). Then EVERY process
calls ``save`` (the same step, the same state): orbax writes one checkpoint together (each
array's shards once, the metadata from process 0) and renames it into place only when all
are done, so it stays atomic. ``restore`` reads the full host values (checked against the
saved checksums) and places each on the target leaf's sharding, so a checkpoint written by
N processes on D devices restores on any other count -- 1 process on 1 CPU device included
-- with the same parameters (``target`` decides the placement).
"""

from __future__ import annotations

import gc
import json
import logging
import os
import sys
import threading
import warnings
import zlib
from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from spec.validate import check_int

__all__ = ["CheckpointError", "CheckpointManager"]

_FORMAT = "scorediff.TrainState/1"
_ITEMS = ("state", "meta")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, damaged, half-written or from another run.

    The message names the directory and what does not match.
    """


# ---------------------------------------------------------------- pytree <-> nested dict

def _key_name(k) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def _is_prng_key(x) -> bool:
    return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _leaf_paths(tree) -> tuple[list[tuple[str, ...]], list[Any], Any]:
    """(paths, leaves, treedef) of ``tree``; a path is the tuple of key names from the root."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
    paths = [tuple(_key_name(k) for k in path) for path, _ in flat]
    return paths, [leaf for _, leaf in flat], treedef


def _describe(leaf) -> dict:
    """JSON description of a leaf: shape, dtype, kind (array / prng_key / python scalar)."""
    if _is_prng_key(leaf):
        return {"shape": list(leaf.shape), "dtype": str(jax.random.key_impl(leaf)), "kind": "prng_key"}
    if isinstance(leaf, (bool, int, float)) and not isinstance(leaf, np.generic):
        return {"shape": [], "dtype": type(leaf).__name__, "kind": "python"}
    a = leaf if hasattr(leaf, "dtype") and hasattr(leaf, "shape") else np.asarray(leaf)
    return {"shape": list(a.shape), "dtype": str(np.dtype(a.dtype)), "kind": "array"}


def _storable(leaf):
    """The array orbax stores for a leaf (a PRNG key as its key_data; a python scalar as numpy)."""
    if _is_prng_key(leaf):
        return jax.random.key_data(leaf)
    if isinstance(leaf, (bool, int, float)) and not isinstance(leaf, np.generic):
        return np.asarray(leaf)
    return leaf


def _host_value(array) -> np.ndarray:
    """The full value of an array as numpy, on every process: a global array's local copy
    when it is replicated, else gathered (``process_allgather``: every process must call it)."""
    if isinstance(array, jax.Array) and not array.is_fully_addressable:
        if array.is_fully_replicated:
            return np.asarray(array.addressable_data(0))
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(array, tiled=True))
    return np.asarray(jax.device_get(array))


def _crc32(array) -> int:
    """CRC-32 of an array's bytes (C order): tensorstore stores raw chunks without a checksum."""
    return zlib.crc32(np.ascontiguousarray(_host_value(array)).tobytes())


def _place_like(value: np.ndarray, leaf):
    """A restored host value placed like the target ``leaf`` (its sharding, on any mesh and
    process count); numpy when the target leaf is not a ``jax.Array``."""
    if not isinstance(leaf, jax.Array):
        return value
    sharding = leaf.sharding
    if jax.process_count() == 1 or leaf.is_fully_addressable:
        return jax.device_put(value, sharding)
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def _host_template(leaf):
    """What orbax restores a leaf as: a numpy array of the leaf's stored shape and dtype."""
    a = _storable(leaf)
    return np.empty(tuple(a.shape), np.dtype(a.dtype))


def _nest(paths, values) -> dict:
    out: dict = {}
    for path, value in zip(paths, values):
        node = out
        for name in path[:-1]:
            node = node.setdefault(name, {})
        node[path[-1] if path else "_root"] = value
    return out


def _get(nested, path):
    node = nested
    for name in (path or ("_root",)):
        node = node[name]
    return node


def _flat_config(d, prefix="") -> dict[str, Any]:
    out = {}
    if isinstance(d, Mapping):
        for k, v in d.items():
            out.update(_flat_config(v, f"{prefix}{k}."))
        if not d and prefix:
            out[prefix[:-1]] = {}
    else:
        out[prefix[:-1]] = d
    return out


def _config_differences(saved: Mapping, given: Mapping) -> list[str]:
    """Dotted fields where two config dicts differ (after a JSON round trip), as readable lines."""
    a = _flat_config(json.loads(json.dumps(saved)))
    b = _flat_config(json.loads(json.dumps(given)))
    out = []
    for k in sorted(set(a) | set(b)):
        if k not in a:
            out.append(f"{k} (missing, given {b[k]!r})")
        elif k not in b:
            out.append(f"{k} (saved {a[k]!r}, missing from the given config)")
        elif a[k] != b[k]:
            out.append(f"{k} (saved {a[k]!r}, given {b[k]!r})")
    return out


def _drop_orbax_leftovers() -> None:
    """Collect the futures and coroutines a failed orbax restore leaves behind, silently.

    When one array of a damaged checkpoint cannot be read, orbax abandons its other pending
    reads; garbage-collecting them later makes asyncio print "Future exception was never
    retrieved" tracebacks. The one error that matters has been raised as a CheckpointError.
    """
    log = logging.getLogger("asyncio")
    level, hook = log.level, sys.unraisablehook
    log.setLevel(logging.CRITICAL + 1)
    sys.unraisablehook = lambda *_: None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # "coroutine ... was never awaited"
            gc.collect()
    finally:
        log.setLevel(level)
        sys.unraisablehook = hook


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300]}" if text else type(e).__name__


def _json_able(name: str, value) -> Any:
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name} must be JSON-serialisable (dicts, lists, str, numbers), got {type(value).__name__}: "
                        f"{e}") from None


# ------------------------------------------------------------------------- the manager

class CheckpointManager:
    """The last ``max_to_keep`` training checkpoints of a run under ``directory``.

    Args:
      directory: the checkpoint directory (created if missing), e.g. ``workdir/checkpoints``.
      max_to_keep: how many of the newest steps are kept (older ones are deleted after a
        successful save); a positive int.
    """

    def __init__(self, directory, *, max_to_keep: int = 3):
        import orbax.checkpoint as ocp

        if isinstance(directory, bytes) or not isinstance(directory, (str, os.PathLike)):
            raise TypeError(f"directory must be a str or os.PathLike, got {type(directory).__name__} {directory!r}")
        self.max_to_keep = check_int("max_to_keep", max_to_keep, minimum=1)
        self.directory = Path(os.path.abspath(os.fspath(directory)))
        if self.directory.exists() and not self.directory.is_dir():
            raise CheckpointError(f"checkpoint directory {str(self.directory)!r} is a file, not a directory")
        if (self.directory / "_CHECKPOINT_METADATA").exists() or all((self.directory / i).is_dir() for i in _ITEMS):
            raise CheckpointError(f"{str(self.directory)!r} is one checkpoint step, not a checkpoint directory: "
                                  f"pass its parent {str(self.directory.parent)!r} (and step="
                                  f"{self.directory.name}) instead")
        self.directory.mkdir(parents=True, exist_ok=True)
        options = ocp.CheckpointManagerOptions(max_to_keep=self.max_to_keep, create=True,
                                               enable_async_checkpointing=False,
                                               cleanup_tmp_directories=True)
        try:
            self._mngr = ocp.CheckpointManager(self.directory, options=options, item_names=_ITEMS)
        except Exception as e:  # noqa: BLE001 (orbax failures get one message)
            raise CheckpointError(f"cannot open the checkpoint directory {str(self.directory)!r} ({_short(e)})") \
                from None
        self._lock = threading.Lock()

    # ----------------------------------------------------------------- listing

    def all_steps(self) -> list[int]:
        """Every complete step, ascending (half-written ones are never listed)."""
        self._mngr.reload()
        return sorted(int(s) for s in self._mngr.all_steps())

    def latest_step(self) -> int | None:
        """The newest complete step, or None when there is none."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    # ----------------------------------------------------------------- saving

    def save(self, step: int, state, *, data_state: Mapping[str, Any], config: Mapping[str, Any]) -> Path:
        """Write ``state`` (a pytree of finite arrays) as step ``step``; returns the step's directory.

        ``data_state`` (the data iterator's JSON-able position) and ``config`` (the run's
        ``RunConfig.to_dict()``) are stored beside it as JSON. Atomic; then only the newest
        ``max_to_keep`` steps remain. Raises ``CheckpointError`` if the step already exists,
        ``ValueError`` naming the leaf if a floating leaf holds NaN or Inf.
        """
        import orbax.checkpoint as ocp

        step = check_int("step", step, minimum=0)
        data_state = _json_able("data_state", data_state)
        config = _json_able("config", config)
        paths, leaves, _ = _leaf_paths(state)
        if not leaves:
            raise TypeError(f"state must be a pytree with array leaves, got {type(state).__name__} without leaves")
        stored = [_storable(x) for x in leaves]
        host = [_host_value(v) for v in stored]  # numpy: no compilation per leaf shape
        for path, leaf, a in zip(paths, leaves, host):
            if _is_prng_key(leaf):
                continue
            if np.issubdtype(a.dtype, np.inexact) and not np.all(np.isfinite(a)):
                raise ValueError(f"state leaf {'/'.join(path)!r} holds NaN or Inf: "
                                 f"not saving step {step} to {str(self.directory)!r}")
        if step in self.all_steps():
            raise CheckpointError(f"step {step} already exists in {str(self.directory)!r}")
        meta = {"format": _FORMAT, "step": step, "data_state": data_state, "config": config,
                "leaves": {"/".join(p): _describe(x) for p, x in zip(paths, leaves)}}
        for (name, desc), value in zip(meta["leaves"].items(), host):
            desc["crc32"] = zlib.crc32(np.ascontiguousarray(value).tobytes())
        items = _nest(paths, stored)
        with self._lock:
            self._mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(items),
                                                          meta=ocp.args.JsonSave(meta)), force=True)
            self._mngr.wait_until_finished()
        return self.directory / str(step)

    # ----------------------------------------------------------------- restoring

    def _fail(self, step, what: str):
        where = self.directory / str(step) if step is not None else self.directory
        raise CheckpointError(f"checkpoint {str(where)!r}: {what}") from None

    def _orbax_restore(self, step: int, item: str, args, what: str):
        """``self._mngr.restore`` of one item; any failure becomes one CheckpointError."""
        failure = None
        try:
            return self._mngr.restore(step, args=args)[item]
        except Exception as e:  # noqa: BLE001 (orbax / tensorstore failures get one message)
            failure = _short(e)
        _drop_orbax_leftovers()
        self._fail(step, f"{what} ({failure})")

    def restore(self, step: int | None = None, *, target, config: Mapping[str, Any] | None = None):
        """``(state, data_state, config_dict)`` of ``step`` (default: the latest).

        ``target`` is a TrainState of the expected model (its leaves' shapes and dtypes are
        checked against the checkpoint first). With ``config``, the saved config dict must
        equal it (differing dotted fields are named). Raises ``CheckpointError``.
        """
        import orbax.checkpoint as ocp

        steps = self.all_steps()
        if step is None:
            if not steps:
                extra = sorted(p.name for p in self.directory.iterdir())[:8]
                self._fail(None, "no complete checkpoint in this directory" +
                           (f" (it holds {extra}, none a finished orbax step)" if extra else " (it is empty)"))
            step = steps[-1]
        else:
            step = check_int("step", step, minimum=0)
            if step not in steps:
                self._fail(step, f"step {step} is not a complete checkpoint here (complete steps: {steps})")
        sdir = self.directory / str(step)
        missing = [n for n in (*_ITEMS, "_CHECKPOINT_METADATA") if not (sdir / n).exists()]
        if missing:
            self._fail(step, f"files are missing ({', '.join(missing)}): the checkpoint is damaged")
        meta = self._orbax_restore(step, "meta", ocp.args.Composite(meta=ocp.args.JsonRestore()),
                                   "cannot read its metadata (meta/): damaged or truncated")
        if not isinstance(meta, Mapping) or meta.get("format") != _FORMAT or not isinstance(meta.get("leaves"),
                                                                                          Mapping):
            got = meta.get("format") if isinstance(meta, Mapping) else type(meta).__name__
            self._fail(step, f"not a scorediff training checkpoint (meta format {got!r}, expected {_FORMAT!r})")
        if config is not None:
            diff = _config_differences(meta.get("config", {}), _json_able("config", config))
            if diff:
                self._fail(step, f"written by another config; differing fields: {'; '.join(diff)}")
        paths, leaves, treedef = _leaf_paths(target)
        want = {"/".join(p): _describe(x) for p, x in zip(paths, leaves)}
        saved = dict(meta["leaves"])
        only_saved = sorted(set(saved) - set(want))
        only_target = sorted(set(want) - set(saved))
        if only_saved or only_target:
            parts = []
            if only_target:
                parts.append(f"the target's {only_target[:5]} {'...' if len(only_target) > 5 else ''}"
                             f"not in the checkpoint")
            if only_saved:
                parts.append(f"the checkpoint's {only_saved[:5]} {'...' if len(only_saved) > 5 else ''}"
                             f"not in the target")
            self._fail(step, f"from another model: {len(saved)} saved leaves vs {len(want)} in the target; "
                             + "; ".join(parts))
        differ = []
        for name in want:
            if {k: v for k, v in saved[name].items() if k != "crc32"} != want[name]:
                s, w = saved[name], want[name]
                differ.append(f"{name!r} is {s['dtype']}{tuple(s['shape'])} in the checkpoint but "
                              f"{w['dtype']}{tuple(w['shape'])} in the target")
        if differ:
            more = f" (and {len(differ) - 4} more)" if len(differ) > 4 else ""
            self._fail(step, "from another model: " + "; ".join(differ[:4]) + more)
        abstract = _nest(paths, [_host_template(x) for x in leaves])  # restored as host numpy
        items = self._orbax_restore(step, "state", ocp.args.Composite(state=ocp.args.StandardRestore(abstract)),
                                    "cannot read the state arrays (state/): damaged or truncated files")
        values = []
        for path, leaf in zip(paths, leaves):
            try:
                v = _get(items, path)
            except (KeyError, TypeError):
                self._fail(step, f"the state item has no leaf {'/'.join(path)!r}: damaged")
            v = np.asarray(v)
            crc = saved["/".join(path)].get("crc32")
            if crc is not None and _crc32(v) != crc:
                self._fail(step, f"the array {'/'.join(path)!r} does not match its saved checksum: damaged files "
                                 f"under state/")
            if _is_prng_key(leaf):
                data = _place_like(v, jax.random.key_data(leaf))
                v = jax.random.wrap_key_data(data, impl=jax.random.key_impl(leaf))
            elif isinstance(leaf, (bool, int, float)) and not isinstance(leaf, np.generic):
                v = type(leaf)(v.item())
            else:
                v = _place_like(v, leaf)
            values.append(v)
        return jax.tree_util.tree_unflatten(treedef, values), meta.get("data_state"), meta.get("config")

    def close(self) -> None:
        """Release orbax's resources (also done by ``with CheckpointManager(...)``)."""
        self._mngr.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
