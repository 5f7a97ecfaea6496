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
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

__all__ = ["CheckpointError", "CheckpointManager"]


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, damaged, half-written or from another run.

    The message names the directory and what does not match.
    """


class CheckpointManager:
    """The last ``max_to_keep`` training checkpoints of a run under ``directory``.

    Args:
      directory: the checkpoint directory (created if missing), e.g. ``workdir/checkpoints``.
      max_to_keep: how many of the newest steps are kept (older ones are deleted after a
        successful save); a positive int.
    """

    def __init__(self, directory, *, max_to_keep: int = 3):
        raise NotImplementedError

    def save(self, step: int, state, *, data_state: Mapping[str, Any], config: Mapping[str, Any]) -> Path:
        """Write ``state`` (a pytree of finite arrays) as step ``step``; returns the step's directory.

        ``data_state`` (the data iterator's JSON-able position) and ``config`` (the run's
        ``RunConfig.to_dict()``) are stored beside it as JSON. Atomic; then only the newest
        ``max_to_keep`` steps remain. Raises ``CheckpointError`` if the step already exists.
        """
        raise NotImplementedError

    def latest_step(self) -> int | None:
        """The newest complete step, or None when there is none."""
        raise NotImplementedError

    def all_steps(self) -> list[int]:
        """Every complete step, ascending (half-written ones are never listed)."""
        raise NotImplementedError

    def restore(self, step: int | None = None, *, target, config: Mapping[str, Any] | None = None):
        """``(state, data_state, config_dict)`` of ``step`` (default: the latest).

        ``target`` is a TrainState of the expected model (its leaves' shapes and dtypes are
        checked against the checkpoint first). With ``config``, the saved config dict must
        equal it (differing dotted fields are named). Raises ``CheckpointError``.
        """
        raise NotImplementedError

    def close(self) -> None:
        """Release orbax's resources (also done by ``with CheckpointManager(...)``)."""
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
