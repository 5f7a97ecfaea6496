"""Training checkpoints in PyTorch: one atomic ``<step>.pt`` file per saved step.

Twin: ``jax_impl/checkpoint.py`` (orbax ``CheckpointManager``, one ``<step>/`` directory
per step). Both keep the same public API: ``CheckpointManager(directory, *, max_to_keep)``
with ``save(step, state, *, data_state, config)``, ``latest_step()``, ``all_steps()`` and
``restore(step=None, *, target, config=None) -> (state, data_state, config_dict)`` and
``close()`` (a context manager), and raise one ``CheckpointError`` (a ``ValueError``) for
anything wrong with a stored step.

Layout: ``directory/<step>.pt``, written atomically: the payload goes to a temporary file
``.<step>.pt.tmp-<pid>`` in the same directory, which is flushed, ``fsync``-ed and renamed
onto ``<step>.pt`` with ``os.replace`` (then the directory is ``fsync``-ed), so a process
killed at any moment leaves either the previous steps only, or the new complete file; a
temporary file is never listed and is removed by the next manager opened on the
directory. After a save the oldest steps beyond ``max_to_keep`` are deleted. A directory
holding step *directories* (the twin's orbax layout) is refused with a ``CheckpointError``:
the two frameworks' checkpoints are not interchangeable.

One file holds (``torch.save``; read back with ``torch.load(weights_only=True)``, so a
checkpoint can carry no code):

* ``state``: every field of the train state (a dataclass such as
  ``torch_ref.train.TrainState``), encoded by type: an ``nn.Module`` as its
  ``state_dict`` (parameters and buffers), a ``torch.optim.Optimizer`` or lr scheduler
  as its ``state_dict``, a ``torch.Generator`` as its ``get_state()``, numpy arrays as
  tensors, nested dataclasses / lists / tuples / dicts field by field, a stateful object of
  this library (a ``torch_ref.resample`` schedule sampler) by its attributes; plain
  callables (an lr schedule function) are rebuilt from the config, not stored;
* ``torch_rng_state``: the global CPU generator's state (dropout draws from it), restored
  with the state so a resumed run continues the same stream;
* ``data_state`` and ``config`` as JSON text (the data iterator's position, the run's
  ``RunConfig.to_dict()``), and ``meta`` (format, version, step, and a CRC-32 per stored
  tensor: ``torch.load`` does not verify its zip records, so a flipped byte inside a
  tensor would otherwise load silently).

``save`` refuses a state with a NaN or Inf floating tensor (``ValueError`` naming the
entry), as the twin does.

``restore`` verifies the checksums, then loads into ``target`` (a freshly created state of
the run's config: the model, optimiser, generators, EMA and parameter tensors are filled in
place, so the state's live parameter dicts stay the model's own) after checking the stored
file against it: a truncated, garbage or corrupted file, a missing entry, or a model /
optimiser / EMA tensor whose keys or shapes differ from the target's (a checkpoint of
another model), or a saved config dict that differs from ``config`` when one is given (the
differing dotted fields are named), raise ONE ``CheckpointError`` naming the file and every
mismatch found (never a traceback from inside ``torch.load``). An older intact step is
restored with ``restore(step, target=...)``. Saving a step that already exists raises
``CheckpointError`` (as the twin).

Outside the mirrored API: ``CheckpointManager.path(step)`` (the file of a step; the twin's
steps are directories under ``directory``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tempfile
import zlib
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from spec.validate import check_int

__all__ = ["CheckpointError", "CheckpointManager"]

_FORMAT = "scorediff-torch-train-checkpoint"
_VERSION = 1
_STEP_FILE = re.compile(r"^(\d+)\.pt$")
_TMP_FILE = re.compile(r"^\.(\d+)\.pt\.tmp-.*$")
_ENTRIES = ("meta", "state", "torch_rng_state", "data_state", "config")
_MAX_LISTED = 8
_OWN_PACKAGES = ("torch_ref", "spec")  # mismatches spelled out in one error message


class CheckpointError(ValueError):
    """A stored checkpoint that cannot be restored: truncated or unreadable, missing
    entries, or from another model / config. The message names the file and what does not
    match."""


# --------------------------------------------------------------------------- encoding


def _encode(value, where: str):
    """A ``torch.load(weights_only=True)``-safe payload for one state value."""
    if isinstance(value, torch.nn.Module):
        return {"__module__": value.state_dict()}
    if isinstance(value, torch.optim.Optimizer):
        return {"__optimizer__": value.state_dict()}
    if isinstance(value, torch.optim.lr_scheduler.LRScheduler):
        return {"__scheduler__": value.state_dict()}
    if isinstance(value, torch.Generator):
        return {"__generator__": value.get_state()}
    if torch.is_tensor(value):
        # no copy: torch.save writes a storage shared with the module's state_dict once
        return value.detach()
    if isinstance(value, np.ndarray):
        return {"__ndarray__": torch.from_numpy(np.array(value, copy=True))}
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"__dataclass__": {f.name: _encode(getattr(value, f.name), f"{where}.{f.name}")
                                  for f in dataclasses.fields(value)}}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, f"{where}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: _encode(v, f"{where}[{k!r}]") for k, v in value.items()}
    if callable(value):
        return {"__skipped__": type(value).__name__}
    if hasattr(value, "__dict__") and type(value).__module__.split(".")[0] in _OWN_PACKAGES:
        # a stateful helper object of this library (a schedule sampler): its attributes
        return {"__object__": type(value).__name__,
                "vars": {k: _encode(v, f"{where}.{k}") for k, v in vars(value).items()}}
    raise TypeError(f"CheckpointManager.save: cannot store {where} of type {type(value).__name__}")


def _shape(t) -> tuple:
    return tuple(t.shape)


class _Matcher:
    """Decodes a stored value against the target's value, collecting every mismatch."""

    def __init__(self):
        self.problems: list[str] = []

    def bad(self, msg: str):
        self.problems.append(msg)

    def tensor_dict(self, where: str, stored, target: dict) -> None:
        if not isinstance(stored, dict):
            self.bad(f"{where} is a {type(stored).__name__}, expected a state_dict")
            return
        missing = [k for k in target if k not in stored]
        extra = [k for k in stored if k not in target]
        if missing:
            self.bad(f"{where} lacks {len(missing)} key(s) of the target model: {missing[:4]}")
        if extra:
            self.bad(f"{where} has {len(extra)} key(s) the target model lacks: {extra[:4]}")
        for k, v in target.items():
            if k in stored and torch.is_tensor(v):
                s = stored[k]
                if not torch.is_tensor(s):
                    self.bad(f"{where}[{k!r}] is not a tensor")
                elif _shape(s) != _shape(v):
                    self.bad(f"{where}[{k!r}] has shape {_shape(s)}, the target {_shape(v)}")

    def value(self, where: str, stored, target):
        """The restored value for a non-module field (tensors checked for shape)."""
        if isinstance(target, torch.Generator):
            if not (isinstance(stored, dict) and "__generator__" in stored):
                self.bad(f"{where} is not a stored torch.Generator state")
                return target
            try:
                target.set_state(stored["__generator__"])
            except (RuntimeError, TypeError) as exc:
                self.bad(f"{where}: generator state rejected ({exc})")
            return target
        if isinstance(stored, dict) and "__skipped__" in stored:
            return target
        if torch.is_tensor(target):
            if not torch.is_tensor(stored):
                self.bad(f"{where} is a {type(stored).__name__}, the target a tensor")
                return target
            if _shape(stored) != _shape(target):
                self.bad(f"{where} has shape {_shape(stored)}, the target {_shape(target)}")
                return target
            with torch.no_grad():  # in place: live parameters stay the model's
                target.copy_(stored)
            return target
        if isinstance(target, np.ndarray):
            if not (isinstance(stored, dict) and "__ndarray__" in stored):
                self.bad(f"{where} is not a stored array")
                return target
            arr = stored["__ndarray__"].numpy()
            if arr.shape != target.shape:
                self.bad(f"{where} has shape {arr.shape}, the target {target.shape}")
                return target
            return arr.astype(target.dtype, copy=True)
        if dataclasses.is_dataclass(target) and not isinstance(target, type):
            if not (isinstance(stored, dict) and "__dataclass__" in stored):
                self.bad(f"{where} is not a stored {type(target).__name__}")
                return target
            return self.fields(where, stored["__dataclass__"], target)
        if hasattr(target, "__dict__") and type(target).__module__.split(".")[0] in _OWN_PACKAGES:
            if not (isinstance(stored, dict) and stored.get("__object__") == type(target).__name__):
                got = stored.get("__object__") if isinstance(stored, dict) else type(stored).__name__
                self.bad(f"{where} is a stored {got}, the target a {type(target).__name__}")
                return target
            attrs = self.value(where, stored["vars"], dict(vars(target)))
            if not any(p.startswith(where) for p in self.problems):
                vars(target).update(attrs)
            return target
        if isinstance(target, (list, tuple)):
            items = stored.get("__tuple__") if isinstance(stored, dict) else stored
            if not isinstance(items, list) or len(items) != len(target):
                n = len(items) if isinstance(items, list) else type(stored).__name__
                self.bad(f"{where} holds {n} entries, the target {len(target)}")
                return target
            out = [self.value(f"{where}[{i}]", s, t) for i, (s, t) in enumerate(zip(items, target))]
            return tuple(out) if isinstance(target, tuple) else out
        if isinstance(target, dict):
            if not isinstance(stored, dict):
                self.bad(f"{where} is a {type(stored).__name__}, the target a dict")
                return target
            if all(torch.is_tensor(v) for v in target.values()) and target:
                self.tensor_dict(where, stored, target)
                if any(p.startswith(where) for p in self.problems):
                    return target
                with torch.no_grad():  # in place: live parameters stay the model's
                    for k, v in target.items():
                        v.copy_(stored[k])
                return target
            missing = [k for k in target if k not in stored]
            if missing:
                self.bad(f"{where} lacks the entries {missing[:4]}")
                return target
            out = {k: self.value(f"{where}[{k!r}]", stored[k], v) for k, v in target.items()}
            out.update({k: _decode(v) for k, v in stored.items() if k not in target})
            return out
        return _decode(stored)

    def fields(self, where: str, stored, target):
        """Restore every dataclass field of ``target`` (modules / optimisers in place)."""
        if not isinstance(stored, dict):
            self.bad(f"{where} is a {type(stored).__name__}, expected the fields of "
                     f"{type(target).__name__}")
            return target
        names = [f.name for f in dataclasses.fields(target)]
        # modules first: their key / shape mismatches say the most and are listed first
        names.sort(key=lambda n: not isinstance(getattr(target, n), torch.nn.Module))
        missing = [n for n in names if n not in stored]
        if missing:
            self.bad(f"{where} lacks the entries {missing} of {type(target).__name__}")
            return target
        updates = {}
        for name in names:
            sub, tv, sv = f"{where}.{name}", getattr(target, name), stored[name]
            if isinstance(tv, torch.nn.Module):
                if not (isinstance(sv, dict) and "__module__" in sv):
                    self.bad(f"{sub} is not a stored module state_dict")
                    continue
                self.tensor_dict(sub, sv["__module__"], tv.state_dict())
            elif isinstance(tv, (torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler)):
                tag = "__optimizer__" if isinstance(tv, torch.optim.Optimizer) else "__scheduler__"
                if not (isinstance(sv, dict) and tag in sv):
                    self.bad(f"{sub} is not a stored {type(tv).__name__} state_dict")
                elif tag == "__optimizer__":
                    self.optimizer(sub, sv[tag], tv)
            else:
                updates[name] = self.value(sub, sv, tv)
        if self.problems:
            return target
        for name in names:  # all checks passed: now load in place
            tv, sv = getattr(target, name), stored[name]
            if isinstance(tv, torch.nn.Module):
                tv.load_state_dict(sv["__module__"], strict=True)
            elif isinstance(tv, torch.optim.Optimizer):
                tv.load_state_dict(sv["__optimizer__"])
            elif isinstance(tv, torch.optim.lr_scheduler.LRScheduler):
                tv.load_state_dict(sv["__scheduler__"])
        params = getattr(target, "__dataclass_params__", None)
        if params is not None and params.frozen:
            return dataclasses.replace(target, **updates)
        for name, v in updates.items():
            setattr(target, name, v)
        return target

    def optimizer(self, where: str, stored, opt: torch.optim.Optimizer) -> None:
        groups = stored.get("param_groups") if isinstance(stored, dict) else None
        if not isinstance(groups, list) or "state" not in stored:
            self.bad(f"{where} is not an optimizer state_dict")
            return
        mine = opt.param_groups
        if len(groups) != len(mine):
            self.bad(f"{where} has {len(groups)} parameter groups, the target {len(mine)}")
            return
        for i, (g, m) in enumerate(zip(groups, mine)):
            if len(g.get("params", ())) != len(m["params"]):
                self.bad(f"{where} group {i} has {len(g.get('params', ()))} parameters, "
                         f"the target {len(m['params'])}")
                return
        # per-parameter state (Adam's exp_avg etc.) must match the parameter's shape
        flat = [p for m in mine for p in m["params"]]
        ids = [pid for g in groups for pid in g["params"]]
        for pid, p in zip(ids, flat):
            for key, v in (stored["state"].get(pid) or {}).items():
                if torch.is_tensor(v) and v.ndim > 0 and _shape(v) != _shape(p):
                    self.bad(f"{where} state {key!r} of parameter {pid} has shape {_shape(v)}, "
                             f"the parameter {_shape(p)}")


def _decode(stored):
    """A stored value without a target to match (tags removed)."""
    if isinstance(stored, dict):
        if "__ndarray__" in stored:
            return stored["__ndarray__"].numpy().copy()
        if "__tuple__" in stored:
            return tuple(_decode(v) for v in stored["__tuple__"])
        return {k: _decode(v) for k, v in stored.items()}
    if isinstance(stored, list):
        return [_decode(v) for v in stored]
    return stored


def _differing_fields(a, b, prefix: str = "") -> list[str]:
    """Dotted names where the JSON values ``a`` and ``b`` differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            name = f"{prefix}.{k}" if prefix else str(k)
            if k not in a or k not in b:
                out.append(name)
            else:
                out += _differing_fields(a[k], b[k], name)
        return out
    return [] if a == b else [prefix or "<root>"]


def _tensors(obj, path: str):
    """``(path, tensor)`` for every tensor in an encoded payload, in a fixed order."""
    if torch.is_tensor(obj):
        yield path, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(v, f"{path}/{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{path}/{i}")


def _crc32(t: torch.Tensor) -> int:
    flat = t.detach().cpu().contiguous().reshape(-1)
    return zlib.crc32(flat.view(torch.uint8).numpy()) if flat.numel() else 0


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- manager


class CheckpointManager:
    """Numbered training checkpoints in ``directory`` (``<step>.pt``), the last
    ``max_to_keep`` kept; see the module docstring. The twin of
    ``jax_impl.checkpoint.CheckpointManager``.

    Args:
      directory: where the files live (created if missing).
      max_to_keep: how many of the newest steps survive a save (>= 1).
    """

    def __init__(self, directory, *, max_to_keep: int = 3):
        if isinstance(directory, bytes) or not isinstance(directory, (str, os.PathLike)):
            raise TypeError(f"directory must be a path (str or os.PathLike), got "
                            f"{type(directory).__name__}")
        self.max_to_keep = check_int("max_to_keep", max_to_keep, minimum=1)
        self.directory = Path(directory)
        if self.directory.exists() and not self.directory.is_dir():
            raise NotADirectoryError(f"directory: {str(self.directory)!r} is not a directory")
        self.directory.mkdir(parents=True, exist_ok=True)
        orbax = sorted(p.name for p in self.directory.iterdir() if p.is_dir() and p.name.isdigit())
        if orbax:
            raise CheckpointError(
                f"directory {str(self.directory)!r} holds step directories {orbax[:4]} (the JAX "
                f"side's orbax checkpoints, jax_impl.checkpoint), not torch <step>.pt files; "
                f"use a separate workdir per framework")
        for p in self.directory.iterdir():  # half-written files of a killed process
            if _TMP_FILE.match(p.name):
                try:
                    p.unlink()
                except OSError:
                    pass

    def path(self, step: int) -> Path:
        """The file of ``step`` (whether or not it exists)."""
        return self.directory / f"{check_int('step', step, minimum=0)}.pt"

    def all_steps(self) -> list[int]:
        """The saved steps, ascending (complete files only: temporary files are ignored)."""
        steps = []
        for p in self.directory.iterdir():
            m = _STEP_FILE.match(p.name)
            if m and p.is_file():
                steps.append(int(m.group(1)))
        return sorted(steps)

    def latest_step(self) -> int | None:
        """The newest saved step, or None when there is none."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    def save(self, step: int, state, *, data_state: Mapping[str, Any],
             config: Mapping[str, Any]) -> Path:
        """Write ``state`` (a train-state dataclass), ``data_state`` (JSON-able) and
        ``config`` (a dict, or an object with ``to_dict()``) as ``<step>.pt`` atomically,
        then delete the oldest steps beyond ``max_to_keep``. Returns the file's path.
        Raises ``CheckpointError`` if the step already exists."""
        step = check_int("step", step, minimum=0)
        if self.path(step).exists():
            raise CheckpointError(f"checkpoint {str(self.path(step))!r} already exists")
        if not (dataclasses.is_dataclass(state) and not isinstance(state, type)):
            raise TypeError(f"state must be a train-state dataclass, got {type(state).__name__}")
        if hasattr(config, "to_dict"):
            config = config.to_dict()
        try:
            data_json = json.dumps(data_state)
            config_json = json.dumps(config)
        except TypeError as exc:
            raise TypeError(f"data_state and config must be JSON-able: {exc}") from None
        encoded = _encode(state, "state")["__dataclass__"]
        tensors = list(_tensors(encoded, "state"))
        for path, t in tensors:
            if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all()):
                raise ValueError(f"state entry {path!r} holds NaN or Inf: not saving step {step} "
                                 f"to {str(self.directory)!r}")
        payload = {
            "meta": {"format": _FORMAT, "version": _VERSION, "step": step,
                     "state_type": type(state).__name__,
                     "crc32": {path: _crc32(t) for path, t in tensors}},
            "state": encoded,
            "torch_rng_state": torch.get_rng_state(),
            "data_state": data_json,
            "config": config_json,
        }
        final = self.path(step)
        fd, tmp = tempfile.mkstemp(prefix=f".{step}.pt.tmp-{os.getpid()}-", dir=self.directory)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(payload, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        _fsync_dir(self.directory)
        self._prune()
        return final

    def _prune(self) -> None:
        steps = self.all_steps()
        for old in steps[:-self.max_to_keep]:
            try:
                self.path(old).unlink()
            except OSError:
                pass

    def _read(self, path: Path) -> dict:
        """The payload of ``path`` or one ``CheckpointError`` naming it."""
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise CheckpointError(f"checkpoint {str(path)!r} does not exist") from None
        except Exception as exc:  # noqa: BLE001 - any unreadable file gets one clear error
            size = path.stat().st_size if path.exists() else 0
            raise CheckpointError(
                f"checkpoint {str(path)!r} is damaged or not a checkpoint ({size} bytes; "
                f"truncated or garbage; torch.load: {type(exc).__name__}: "
                f"{(str(exc).splitlines() or [''])[0][:100]}); "
                f"choose an older step with restore(step, target=...) "
                f"(saved: {self.all_steps()})") from None
        if not isinstance(payload, dict):
            raise CheckpointError(f"checkpoint {str(path)!r} is not a training checkpoint "
                                  f"(holds a {type(payload).__name__})")
        missing = [k for k in _ENTRIES if k not in payload]
        if missing:
            raise CheckpointError(f"checkpoint {str(path)!r} lacks the entries {missing}")
        meta = payload["meta"]
        if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
            raise CheckpointError(f"checkpoint {str(path)!r} is not a {_FORMAT} file")
        if meta.get("version") != _VERSION:
            raise CheckpointError(f"checkpoint {str(path)!r} has format version "
                                  f"{meta.get('version')}, this library reads {_VERSION}")
        return payload

    def restore(self, step: int | None = None, *, target, config: Mapping[str, Any] | None = None):
        """Load step ``step`` (default: the latest) into ``target``, a freshly created
        train state of the run's config (its model, optimiser and generators are filled
        in place; other fields replaced). Also restores the global torch generator. With
        ``config`` (a dict or an object with ``to_dict()``) the saved config must equal it.

        Returns ``(state, data_state, config_dict)``. Raises ``CheckpointError`` when
        there is no checkpoint, for a damaged file, missing entries, or a checkpoint that
        does not match ``target`` / ``config`` (names the file and each mismatch).
        """
        if step is None:
            step = self.latest_step()
            if step is None:
                raise CheckpointError(f"no checkpoint in {str(self.directory)!r}")
        step = check_int("step", step, minimum=0)
        path = self.path(step)
        if not path.is_file():
            raise CheckpointError(f"checkpoint {str(path)!r} does not exist; saved steps in "
                                  f"{str(self.directory)!r}: {self.all_steps()}")
        if not (dataclasses.is_dataclass(target) and not isinstance(target, type)):
            raise TypeError(f"target must be a train-state dataclass, got {type(target).__name__}")
        payload = self._read(path)
        crcs = payload["meta"].get("crc32")
        if not isinstance(crcs, dict):
            raise CheckpointError(f"checkpoint {str(path)!r} lacks its checksum table")
        found = dict(_tensors(payload["state"], "state"))
        lost = sorted(set(crcs) - set(found))
        corrupt = [p for p, t in found.items() if p in crcs and _crc32(t) != crcs[p]]
        if lost or corrupt:
            raise CheckpointError(
                f"checkpoint {str(path)!r} is damaged: "
                + (f"CRC-32 mismatch in {corrupt[:4]}" if corrupt else "")
                + ("; " if corrupt and lost else "")
                + (f"missing tensors {lost[:4]}" if lost else "")
                + f"; choose an older step with restore(step, target=...) (saved: {self.all_steps()})")
        stored_step = payload["meta"].get("step")
        if stored_step != step:
            raise CheckpointError(f"checkpoint {str(path)!r} holds step {stored_step}, "
                                  f"its name says {step}")
        try:
            data_state = json.loads(payload["data_state"])
            saved_config = json.loads(payload["config"])
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {str(path)!r}: unreadable data_state / config "
                                  f"({exc})") from None
        if config is not None:
            if hasattr(config, "to_dict"):
                config = config.to_dict()
            diff = _differing_fields(json.loads(json.dumps(config)), saved_config)
            if diff:
                raise CheckpointError(
                    f"checkpoint {str(path)!r} is of another config: the fields "
                    f"{', '.join(diff[:_MAX_LISTED])} differ")
        matcher = _Matcher()
        state = matcher.fields("state", payload["state"], target)
        if not matcher.problems:
            rng = payload["torch_rng_state"]
            if not (torch.is_tensor(rng) and rng.dtype == torch.uint8):
                matcher.bad("torch_rng_state is not a generator state")
        if matcher.problems:
            listed = matcher.problems[:_MAX_LISTED]
            more = len(matcher.problems) - len(listed)
            raise CheckpointError(
                f"checkpoint {str(path)!r} does not match the target "
                f"(another model or config?): " + "; ".join(listed)
                + (f"; and {more} more" if more else ""))
        torch.set_rng_state(payload["torch_rng_state"])
        return state, data_state, saved_config

    def close(self) -> None:
        """Nothing to release on this side (each save / restore opens its own file); kept
        so that ``with CheckpointManager(...)`` and ``close()`` work as on the twin."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __repr__(self) -> str:
        return (f"CheckpointManager({str(self.directory)!r}, max_to_keep={self.max_to_keep}, "
                f"steps={self.all_steps()})")
