"""Run directories of the command line, on top of the training loops' layout.

``jax_impl.loop.train`` / ``torch_ref.loop.train`` write ``config.json``, ``log.jsonl``,
``checkpoints/`` (orbax step directories in JAX, ``<step>.pt`` files in torch) and
``samples/``. The command line adds ``preset.json`` (``{"preset", "overrides",
"framework"}``: what ``scorediff train`` was asked), and the outputs of the other
commands: ``samples.npz`` / ``samples.png``, ``trajectory.png``, ``loss.png`` and
``metrics.json`` (one section per command: ``evaluate``, ``likelihood``, ``compare``).

``load_run(workdir)`` reads a run back; ``ema_variables(run)`` restores the latest
checkpoint's first EMA copy as flax variables (from either framework's checkpoints: torch
ones are converted through the key table), which is what every command samples from.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from spec.train_config import RunConfig

__all__ = ["Run", "load_run", "write_preset_record", "read_preset_record", "ema_variables",
           "update_metrics", "write_json"]

PRESET_FILE = "preset.json"


def write_json(path: Path, obj) -> None:
    """``obj`` as indented JSON at ``path``, atomically (temp file + rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=float) + "\n")
    os.replace(tmp, path)


def read_preset_record(workdir: Path) -> dict | None:
    path = Path(workdir) / PRESET_FILE
    if not path.exists():
        return None
    try:
        rec = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(rec, dict) or "preset" not in rec:
        raise ValueError(f"{path}: not a scorediff preset record (no 'preset' entry)")
    return rec


def write_preset_record(workdir: Path, preset: str, overrides: list[str], framework: str) -> None:
    write_json(Path(workdir) / PRESET_FILE,
               {"preset": preset, "overrides": list(overrides), "framework": framework})


@dataclasses.dataclass(frozen=True)
class Run:
    """A run directory read back: ``config`` (from config.json), ``preset`` (name or None),
    ``framework`` ("jax" or "torch", from the checkpoints' form)."""

    workdir: Path
    config: RunConfig
    preset: str | None
    framework: str

    @property
    def checkpoints(self) -> Path:
        return self.workdir / "checkpoints"


def _framework_of(ckpt_dir: Path, record: dict | None) -> str:
    if record and record.get("framework") in ("jax", "torch"):
        return record["framework"]
    if ckpt_dir.is_dir() and any(p.suffix == ".pt" for p in ckpt_dir.iterdir()):
        return "torch"
    return "jax"


def load_run(workdir) -> Run:
    """Read ``workdir`` (``ValueError`` / ``FileNotFoundError`` naming it when it is not a
    trained run)."""
    if workdir is None:
        raise ValueError("--workdir is required (a directory made by `scorediff train`)")
    wd = Path(workdir)
    if not wd.exists():
        raise FileNotFoundError(f"--workdir {str(wd)!r} does not exist")
    if not wd.is_dir():
        raise NotADirectoryError(f"--workdir {str(wd)!r} is not a directory")
    cfg_path = wd / "config.json"
    if not cfg_path.exists():
        raise ValueError(f"--workdir {str(wd)!r} is not a training run (no config.json); make one "
                         f"with `scorediff train --preset NAME --workdir {wd}`")
    try:
        config = RunConfig.from_dict(json.loads(cfg_path.read_text()))
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg_path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{cfg_path}: not a run config ({e})") from None
    record = read_preset_record(wd)
    return Run(wd, config, record["preset"] if record else None, _framework_of(wd / "checkpoints", record))


def ema_variables(run: Run) -> tuple[dict, int]:
    """``(variables, step)``: the latest checkpoint's first EMA parameters (and the model's
    constants) as flax variables, restored through the run's own checkpoint manager."""
    import jax

    config_dict = json.loads(json.dumps(run.config.to_dict()))
    if not run.checkpoints.is_dir():
        raise ValueError(f"--workdir {str(run.workdir)!r} has no checkpoints yet (train it first)")
    if run.framework == "jax":
        from jax_impl.checkpoint import CheckpointManager
        from jax_impl.train import create_train_state

        target = create_train_state(jax.random.key(run.config.train.training.seed), run.config)
        with CheckpointManager(run.checkpoints) as ckpt:
            state, _, _ = ckpt.restore(target=target, config=config_dict)
        return {"params": state.ema[0], **state.constants}, int(state.step)
    # torch checkpoints: the EMA tensors into the module's state_dict, then the key table
    import numpy as np

    from jax_impl.convert import torch_to_flax_variables
    from torch_ref.checkpoint import CheckpointManager as TorchCheckpointManager
    from torch_ref.train import create_train_state as torch_state

    target = torch_state(run.config)
    with TorchCheckpointManager(run.checkpoints) as ckpt:
        state, _, _ = ckpt.restore(target=target, config=config_dict)
    sd = {k: v.detach().cpu().numpy() for k, v in state.model.state_dict().items()}
    sd.update({k: v.detach().cpu().numpy() for k, v in state.ema[0].items()})
    variables = torch_to_flax_variables(sd, run.config.model, dtype=np.float32)
    return jax.tree_util.tree_map(jax.numpy.asarray, variables), int(state.step)


def update_metrics(workdir: Path, section: str, values: dict[str, Any]) -> Path:
    """Merge ``{section: values}`` into ``workdir/metrics.json`` (atomic)."""
    path = Path(workdir) / "metrics.json"
    data = {}
    if path.exists():
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError:
            data = {}
    data[section] = values
    write_json(path, data)
    return path
