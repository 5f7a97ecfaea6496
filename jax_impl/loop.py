"""The training loop: run directory, resume, progress, logs, snapshots, signals, divergence.

Twin: ``torch_ref/loop.py`` (same names and run directory layout).

``train(config, workdir, *, max_steps=None, progress=True, eval_fn=None) -> TrainState``
trains ``config`` (a ``spec.RunConfig``) in ``workdir``:

- ``workdir/config.json``: ``config.to_dict()``, written on the first call; a workdir whose
  config.json differs is refused (``ValueError`` naming the differing dotted fields);
- ``workdir/checkpoints/<step>/``: ``jax_impl.checkpoint.CheckpointManager`` (the whole
  TrainState, the data iterator position, the config), every ``training.snapshot_freq``
  steps and at the end, the newest ``training.keep`` kept; a workdir with checkpoints
  resumes from the latest, and the resumed run ends with bit-identical parameters to an
  uninterrupted one of the same length (CPU, same device count);
- ``workdir/log.jsonl``: one JSON object every ``training.log_freq`` steps (``step, loss, lr,
  grad_norm, steps_per_sec, time``), and ``{"step", "eval": {...}, "time"}`` every
  ``training.eval_freq`` steps when ``eval_fn(state, step) -> dict`` is given; on resume,
  lines after the restored step (from the interrupted run) are dropped;
- ``workdir/samples/step_<step>.png``: 64 samples from the first EMA parameters at every
  snapshot (PC sampler for the SDEs, ancestral DDPM for a DiffusionConfig, annealed
  Langevin for ``anneal_dsm``): a scatter for 2-D data, an image grid otherwise;
- a tqdm bar on stderr with the loss and steps/s (``progress=False`` turns it off).

``max_steps`` stops the run once the step counter (updates done, counted from 0 like
``training.n_iters``, so a resumed run counts on) reaches ``min(n_iters, max_steps)``.

SIGINT / SIGTERM: the current step finishes, a checkpoint is saved, where it went is
printed, and ``train`` returns normally (so a command line exits 0); a second signal exits
at once (``KeyboardInterrupt``). The original handlers are restored on return.

A NaN or Inf loss or parameter raises ``TrainingDivergedError`` naming the step; that state
is never saved, so the last good checkpoint stays the latest.
"""

from __future__ import annotations

__all__ = ["TrainingDivergedError", "train"]


class TrainingDivergedError(RuntimeError):
    """Training produced a NaN or Inf loss or parameter; the message names the step."""

    def __init__(self, step: int, what: str):
        self.step = step
        super().__init__(f"training diverged at step {step}: {what}")


def train(config, workdir, *, max_steps: int | None = None, progress: bool = True, eval_fn=None):
    """Train ``config`` (a ``spec.RunConfig``) in ``workdir``; returns the final TrainState.

    See the module docstring for the run directory, resume, signals and divergence.
    """
    raise NotImplementedError
