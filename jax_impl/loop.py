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
  grad_norm`` of that step, ``steps_per_sec`` of training since the last line -- the time
  of checkpoints, snapshots and evaluation left out -- and the Unix ``time``), and ``{"step", "eval": {...}, "time"}`` every
  ``training.eval_freq`` steps when ``eval_fn(state, step) -> dict`` is given; on resume,
  lines after the restored step (from the interrupted run) are dropped (all of them when
  the interrupted run saved no checkpoint);
- ``workdir/samples/step_<step>.png``: 64 samples from the first EMA parameters at every
  snapshot (the SDE's N steps of Euler-Maruyama for the continuous "sde" loss, of the
  reverse-diffusion predictor for "smld" / "ddpm", no corrector; ancestral DDPM for a
  DiffusionConfig; annealed Langevin for ``anneal_dsm``; a class-conditional model draws
  sample j of class ``j mod C``): a scatter for 2-D data, an image grid otherwise;
- a tqdm bar on stderr with the loss and steps/s (``progress=False`` turns it off).

Class-conditional models (``getattr(config.model, "num_classes", 0) > 0``) train on ``(x, y)``
batches: the labels of ``jax_impl.data.load_labels(config.data)``.

Devices and processes: with more than one device (``jax.device_count() > 1``: several
accelerators, CPU host devices, or several ``jax.distributed`` processes) the step runs on a
``jax_impl.sharding`` mesh over ALL devices: the state replicated, each global batch of
``training.batch_size`` examples split along the mesh's data axis, each process reading only
its own rows (``BatchIterator(shard_index=jax.process_index(),
shard_count=jax.process_count())``). The numbers do not depend on the split (per-example
randomness from ``fold_in(step_key, global_index)``; the loss is the global batch mean), so
the parameters equal the 1-device run's to float32 reduction order. ``training.batch_size``
must divide by the device count (ValueError naming it, before anything is compiled). Only
process 0 writes config.json, log.jsonl and the sample PNGs and shows the bar; every process
takes part in each checkpoint save (one checkpoint, written together) and each snapshot.
On one device the plain jitted step runs, as always.

``max_steps`` stops the run once the step counter (updates done, counted from 0 like
``training.n_iters``, so a resumed run counts on) reaches ``min(n_iters, max_steps)``.

SIGINT / SIGTERM: the current step finishes, a checkpoint is saved, where it went is
printed, and ``train`` returns normally (so a command line exits 0); a second signal exits
at once (``KeyboardInterrupt``). The original handlers are restored on return.

A NaN or Inf loss, gradient norm or parameter raises ``TrainingDivergedError`` naming the
step; that state is never saved, so the last good checkpoint stays the latest.
"""

from __future__ import annotations

import functools
import json
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["TrainingDivergedError", "train"]

#: how many samples a snapshot draws
NUM_SNAPSHOT_SAMPLES = 64


class TrainingDivergedError(RuntimeError):
    """Training produced a NaN or Inf loss or parameter; the message names the step."""

    def __init__(self, step: int, what: str):
        self.step = step
        super().__init__(f"training diverged at step {step}: {what}")


# ------------------------------------------------------------------ run directory

def _write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _check_or_write_config(workdir: Path, config_dict: dict) -> None:
    """Write workdir/config.json, or refuse a workdir whose config.json differs."""
    from jax_impl.checkpoint import _config_differences

    path = workdir / "config.json"
    if path.exists():
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"{str(path)!r} is not a readable JSON config ({type(e).__name__}: {e}); "
                             f"use a new workdir or repair it") from None
        diff = _config_differences(saved, config_dict)
        if diff:
            raise ValueError(f"workdir {str(workdir)!r} holds a run of another config ({str(path)!r}); "
                             f"differing fields: {'; '.join(diff)}. Use a new workdir, or the saved config "
                             f"(RunConfig.from_dict) to resume")
        return
    _write_json_atomic(path, config_dict)


def _trim_log(path: Path, last_step: int) -> None:
    """Drop log lines after ``last_step`` (written by a run that was stopped after its last save)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # a line cut by a kill
        if isinstance(entry, dict) and isinstance(entry.get("step"), int) and entry["step"] <= last_step:
            kept.append(line)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text("".join(k + "\n" for k in kept))
    os.replace(tmp, path)


class _Log:
    """workdir/log.jsonl, one JSON object per line, flushed at once."""

    def __init__(self, path: Path):
        self.path = path
        self._f = open(path, "a")

    def write(self, entry: dict) -> None:
        self._f.write(json.dumps(entry, sort_keys=True) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


class _NoLog:
    """The log of a process other than 0: nothing is written."""

    def write(self, entry: dict) -> None:
        pass

    def close(self) -> None:
        pass


def _wait_for_config(workdir: Path, config_dict: dict, timeout_s: float = 120.0) -> None:
    """A process other than 0: wait until process 0 has written workdir/config.json (on the
    shared file system), then check it is this config."""
    path = workdir / "config.json"
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise ValueError(f"process {jax.process_index()}: {str(path)!r} did not appear within {timeout_s:g} s; "
                             f"the workdir must be on a file system every process sees")
        time.sleep(0.05)
    _check_or_write_config(workdir, config_dict)


# ------------------------------------------------------------------ signals

class _Stop:
    """SIGINT / SIGTERM: the first asks the loop to stop after the current step, a second
    raises ``KeyboardInterrupt`` at once. Handlers are installed only in the main thread and
    restored by ``restore()``."""

    SIGNALS = ("SIGINT", "SIGTERM")

    def __init__(self):
        self.signal_name = None
        self._old = {}
        if threading.current_thread() is not threading.main_thread():
            return
        for name in self.SIGNALS:
            sig = getattr(signal, name, None)
            if sig is not None:
                self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.signal_name is not None:
            raise KeyboardInterrupt(f"second signal ({name}) while stopping: exiting at once")
        self.signal_name = name
        print(f"\n{name} received: finishing the current step, then saving a checkpoint "
              f"(send it again to exit at once)", file=sys.stderr, flush=True)

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}


# ------------------------------------------------------------------ snapshots

@functools.lru_cache(maxsize=4)
def _train_step(config):
    """``make_train_step(config)``, kept per config so that a resumed run in the same process
    reuses the compiled step."""
    from jax_impl.train import make_train_step

    return make_train_step(config, donate=True)


@functools.lru_cache(maxsize=4)
def _make_sampler(config):
    """A jitted ``sample(ema_params, constants, rng) -> [64, *data_shape]`` for the run's process
    (kept per config)."""
    from spec.configs import DiffusionConfig
    from jax_impl import samplers
    from jax_impl.models import registry
    from jax_impl.models.utils import get_score_fn

    model = registry.create_model(config.model)
    shape = (NUM_SNAPSHOT_SAMPLES, *registry.example_inputs(config.model)[0].shape[1:])
    loss = config.resolved_loss
    process = config.process

    y = _snapshot_labels(config, NUM_SNAPSHOT_SAMPLES)

    def apply(variables):
        if y is None:
            return lambda x, labels: model.apply(variables, x, labels, train=False)
        return lambda x, labels: model.apply(variables, x, labels, y=jnp.asarray(y, jnp.int32), train=False)

    if loss == "anneal_dsm":
        sigmas = np.asarray(config.model.sigmas, np.float64)

        def sample(params, constants, rng):
            fn = apply({"params": params, **constants})
            return samplers.ald_sample(rng, sigmas, fn, shape)[0]
    elif isinstance(process, DiffusionConfig):
        from jax_impl.diffusion import GaussianDiffusion
        diffusion = GaussianDiffusion(process)

        def sample(params, constants, rng):
            fn = apply({"params": params, **constants})
            return samplers.ddpm_sample(rng, diffusion, fn, shape, clip_denoised=len(shape) == 4)[0]
    else:
        from jax_impl.train import _make_sde
        sde = _make_sde(process)
        continuous = config.train.training.continuous and loss == "sde"
        # the continuous SDE's generic reverse step works for any N; the discrete losses' own
        # (DDPM / SMLD) reverse step for them
        predictor = "euler_maruyama" if continuous else "reverse_diffusion"

        def sample(params, constants, rng):
            score_fn = get_score_fn(sde, apply({"params": params, **constants}), continuous=continuous)
            return samplers.pc_sample(rng, sde, score_fn, shape, predictor=predictor, corrector="none")[0]
    return jax.jit(sample)


_SHARDED_STEPS: dict = {}


def _sharded_train_step(config, mesh):
    """``sharding.make_sharded_train_step(config, mesh)``, kept per (config, mesh)."""
    from jax_impl import sharding

    key = (config, mesh)
    if key not in _SHARDED_STEPS:
        if len(_SHARDED_STEPS) >= 4:
            _SHARDED_STEPS.pop(next(iter(_SHARDED_STEPS)))
        _SHARDED_STEPS[key] = sharding.make_sharded_train_step(config, mesh)
    return _SHARDED_STEPS[key]


def _make_sharded_sampler(config, mesh):
    """The snapshot sampler over ``mesh``: ``fn(key_data, ema_params, constants) -> samples``
    (the 64 samples split along the data axis when the device count divides 64, else
    computed replicated); the per-sample noise makes them the 1-device samples."""
    from jax_impl import sharding

    raw = _make_sampler(config)

    def sample(kd, params, constants):
        return raw(params, constants, jax.random.wrap_key_data(kd))

    if NUM_SNAPSHOT_SAMPLES % mesh.shape[sharding.DATA_AXIS] == 0:
        return sharding.shard_sampler(sample, mesh)
    return jax.jit(sample)


def _scatter_image(points: np.ndarray, title: str, size: int = 320):
    """A PIL image of 2-D points: white canvas, grid lines at multiples of a power of ten
    (at most ~20 lines, whatever the range: an untrained VE model's samples reach 1e2+),
    a dot per point."""
    from PIL import Image, ImageDraw

    finite = points[np.all(np.isfinite(points), axis=1)]
    half = max(3.0, float(np.ceil(np.max(np.abs(finite))))) if len(finite) else 3.0
    grid = 10.0 ** max(0, int(np.floor(np.log10(half / 3.0))))
    img = Image.new("RGB", (size, size + 20), "white")
    draw = ImageDraw.Draw(img)
    to_px = lambda v: (v + half) / (2 * half) * (size - 1)  # noqa: E731
    for k in range(-int(half // grid), int(half // grid) + 1):
        g = k * grid
        p = to_px(g)
        colour = (150, 150, 150) if g == 0 else (225, 225, 225)
        draw.line([(p, 20), (p, size + 19)], fill=colour)
        draw.line([(0, 20 + size - 1 - p), (size - 1, 20 + size - 1 - p)], fill=colour)
    for x, y in finite:
        px, py = to_px(x), 20 + size - 1 - to_px(y)
        draw.ellipse([px - 2, py - 2, px + 2, py + 2], fill=(31, 119, 180))
    draw.text((4, 4), f"{title}; grid step {grid:g}, range +-{half:g}", fill="black")
    return img


def _save_samples_png(path: Path, samples: np.ndarray, *, centered: bool, title: str) -> None:
    """A scatter (2-D points) or an image grid (NHWC) written to ``path`` atomically (Pillow)."""
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.png")
    samples = np.asarray(samples, np.float64)
    if samples.ndim == 2 and samples.shape[1] == 2:
        _scatter_image(samples, title).save(tmp, format="PNG")
    else:
        from PIL import Image

        x = samples if samples.ndim == 4 else samples.reshape(samples.shape[0], -1, 1, 1)
        x = (x + 1.0) / 2.0 if centered else x
        x = np.clip(np.nan_to_num(x), 0.0, 1.0)
        n, h, w, c = x.shape
        cols = int(math.ceil(math.sqrt(n)))
        rows = int(math.ceil(n / cols))
        grid = np.ones((rows * (h + 1) + 1, cols * (w + 1) + 1, c))
        for i in range(n):
            r, q = divmod(i, cols)
            grid[1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + q * (w + 1): 1 + q * (w + 1) + w] = x[i]
        img = (grid * 255).round().astype(np.uint8)
        img = Image.fromarray(img[..., 0] if c == 1 else img)
        scale = max(1, 256 // max(img.size))
        img.resize((img.size[0] * scale, img.size[1] * scale), Image.NEAREST).save(tmp, format="PNG")
    os.replace(tmp, path)


# ------------------------------------------------------------------ the loop

@jax.jit
def _all_finite(loss, grad_norm, params):
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    for leaf in jax.tree_util.tree_leaves(params):
        if jnp.issubdtype(leaf.dtype, jnp.inexact):
            ok = ok & jnp.all(jnp.isfinite(leaf))
    return ok


def _first_bad_leaf(params) -> str:
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        if jnp.issubdtype(leaf.dtype, jnp.inexact) and not np.all(np.isfinite(_host(leaf))):
            return "params" + jax.tree_util.keystr(path)
    return "params"


# ------------------------------------------------------------------ devices and processes

def _host(x):
    """A scalar / array on the host: a global replicated array via its local copy."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        if x.is_fully_replicated:
            return np.asarray(x.addressable_data(0))
        from jax_impl.sharding import to_host
        return to_host(x)
    return np.asarray(x)


def _class_conditional(config) -> bool:
    return getattr(config.model, "num_classes", 0) > 0


def _labels(config, num_examples: int):
    """The training labels (int64 ``[N]``) of a class-conditional run, checked against
    ``model.num_classes``; None for an unconditional one."""
    if not _class_conditional(config):
        return None
    from jax_impl.data import load_labels

    y, _ = load_labels(config.data)
    if len(y) != num_examples:  # pragma: no cover -- load_labels aligns them
        raise ValueError(f"data: {len(y)} labels for {num_examples} training examples")
    k = _data_classes(config)
    if len(y) and int(y.max()) >= k:
        null = " (the last class is label_dropout's null class)" if k < config.model.num_classes else ""
        raise ValueError(f"model.num_classes={config.model.num_classes} leaves {k} data classes{null} but the "
                         f"data's labels reach {int(y.max())} (data.dataset={config.data.dataset!r}); set "
                         f"model.num_classes >= {int(y.max()) + 1 + (k < config.model.num_classes)}")
    return y


def _data_classes(config) -> int:
    """How many classes the data may use: ``num_classes``, less the null class when
    ``training.label_dropout > 0`` (classifier-free guidance)."""
    k = int(config.model.num_classes)
    return k - 1 if getattr(config.train.training, "label_dropout", 0.0) > 0 else k


def _snapshot_labels(config, n: int):
    """The class of each snapshot sample: ``0, 1, ..., C-1, 0, 1, ...`` over the data's C
    classes (int64 numpy), so the picture shows every class; None when unconditional."""
    if not getattr(config.model, "num_classes", 0) > 0:
        return None
    return np.arange(n, dtype=np.int64) % max(_data_classes(config), 1)


class _HostBatches:
    """The spec iterator's numpy batches (this process's rows), labels as int32: what
    ``sharding.shard_batch`` assembles into global arrays."""

    def __init__(self, it):
        self.it = it

    def next(self):
        b = self.it.next()
        if isinstance(b, tuple):
            return b[0], b[1].astype(np.int32)
        return b

    @property
    def state(self):
        return self.it.state

    def set_state(self, state):
        self.it.set_state(state)


def _stop_everywhere(requested: bool, processes: int) -> bool:
    """Whether any process was asked to stop (a collective with several processes, so all
    of them save and return at the same step)."""
    if processes == 1:
        return requested
    from jax.experimental import multihost_utils

    flags = multihost_utils.process_allgather(np.asarray(int(requested), np.int32))
    return bool(np.any(np.asarray(flags)))


def _check_args(config, workdir, max_steps, progress, eval_fn):
    from spec.train_config import RunConfig
    from spec.validate import check_bool, check_int

    if not isinstance(config, RunConfig):
        raise TypeError(f"config must be a spec.RunConfig, got {type(config).__name__}")
    if config.data is None:
        raise ValueError("config.data is None: a training run needs a spec.datasets.DataConfig")
    if isinstance(workdir, bytes) or not isinstance(workdir, (str, os.PathLike)):
        raise TypeError(f"workdir must be a str or os.PathLike, got {type(workdir).__name__} {workdir!r}")
    workdir = Path(os.path.abspath(os.fspath(workdir)))
    if workdir.exists() and not workdir.is_dir():
        raise ValueError(f"workdir {str(workdir)!r} is a file, not a directory")
    if max_steps is not None:
        max_steps = check_int("max_steps", max_steps, minimum=0)
    check_bool("progress", progress)
    if eval_fn is not None and not callable(eval_fn):
        raise TypeError(f"eval_fn must be callable eval_fn(state, step) -> dict, got {type(eval_fn).__name__}")
    return workdir, max_steps


def train(config, workdir, *, max_steps: int | None = None, progress: bool = True, eval_fn=None):
    """Train ``config`` (a ``spec.RunConfig``) in ``workdir``; returns the final TrainState.

    Args:
      config: the run (model, train, data, process).
      workdir: the run directory (created); see the module docstring for its layout.
      max_steps: stop once ``state.step`` reaches ``min(training.n_iters, max_steps)`` (a
        total, so a resumed run counts on); None: ``training.n_iters``.
      progress: show the tqdm bar.
      eval_fn: optional ``eval_fn(state, step) -> dict`` of JSON-able numbers, called every
        ``training.eval_freq`` steps; its result is logged.

    Raises:
      ValueError: workdir/config.json differs from ``config`` (naming the fields).
      jax_impl.checkpoint.CheckpointError: the latest checkpoint is damaged or of another run.
      TrainingDivergedError: a NaN / Inf loss or parameter (the step is named; nothing saved).
      KeyboardInterrupt: a second SIGINT / SIGTERM while stopping.
    """
    from tqdm.auto import tqdm

    from jax_impl import data as _data
    from jax_impl import train as _train
    from jax_impl.checkpoint import CheckpointManager

    workdir, max_steps = _check_args(config, workdir, max_steps, progress, eval_fn)
    tc = config.train.training
    stop_at = tc.n_iters if max_steps is None else min(tc.n_iters, max_steps)
    config_dict = json.loads(json.dumps(config.to_dict()))

    num_devices, processes = jax.device_count(), jax.process_count()
    primary = jax.process_index() == 0
    mesh = None
    if num_devices > 1:
        from jax_impl import sharding

        mesh = sharding.make_mesh()
        sharding.check_divisible(tc.batch_size, mesh, "training.batch_size")

    workdir.mkdir(parents=True, exist_ok=True)
    if primary:
        _check_or_write_config(workdir, config_dict)
        (workdir / "samples").mkdir(exist_ok=True)
    else:
        _wait_for_config(workdir, config_dict)

    if mesh is None:
        train_data, _ = _data.load_dataset(config.data)
        it = _data.BatchIterator.from_config(config.data, train_data, tc.batch_size,
                                             labels=_labels(config, len(train_data)))
        state = _train.create_train_state(jax.random.key(tc.seed), config)
    else:
        from spec import datasets as _spec_data

        train_data, _ = _spec_data.load_dataset(config.data)
        it = _HostBatches(_spec_data.BatchIterator.from_config(
            config.data, train_data, tc.batch_size, labels=_labels(config, len(train_data)),
            shard_index=jax.process_index(), shard_count=processes))
        state = sharding.shard_train_state(_train.create_train_state(jax.random.key(tc.seed), config), mesh)

    ckpt = CheckpointManager(workdir / "checkpoints", max_to_keep=tc.keep)
    stopper = None
    log = None
    bar = None
    try:
        start = ckpt.latest_step()
        if start is not None:
            t0 = time.perf_counter()
            state, data_state, _ = ckpt.restore(start, target=state, config=config_dict)
            it.set_state(data_state)
            resume_s = time.perf_counter() - t0
            if primary:
                _trim_log(workdir / "log.jsonl", start)
                print(f"resumed from {ckpt.directory / str(start)} (step {start}, {resume_s:.2f} s)",
                      file=sys.stderr, flush=True)
        elif primary:
            _trim_log(workdir / "log.jsonl", 0)  # a run stopped before its first checkpoint starts over
        step = int(_host(state.step))
        log = _Log(workdir / "log.jsonl") if primary else _NoLog()
        if step >= stop_at:
            return state

        if mesh is None:
            step_fn = _train_step(config)
        else:
            step_fn = _sharded_train_step(config, mesh)
        sampler = None
        stopper = _Stop()
        bar = tqdm(total=stop_at, initial=step, desc="train", unit="step", dynamic_ncols=True,
                   disable=not (progress and primary), file=sys.stderr)
        last_saved = start
        window_t, window_step, paused = time.perf_counter(), step, 0.0
        postfix_t = 0.0
        rate = float("nan")

        def save(step_now: int) -> Path:
            return ckpt.save(step_now, state, data_state=it.state, config=config_dict)

        def snapshot(step_now: int) -> None:
            nonlocal sampler
            if sampler is None:
                sampler = _make_sampler(config) if mesh is None else _make_sharded_sampler(config, mesh)
            key = jax.random.fold_in(jax.random.key(tc.seed), step_now)
            if mesh is None:
                x = np.asarray(sampler(state.ema[0], state.constants, key))
            else:
                from jax_impl.sharding import replicate, to_host

                kd = replicate(np.asarray(jax.random.key_data(key)), mesh)
                x = to_host(sampler(kd, state.ema[0], state.constants))  # every process takes part
            if primary:
                _save_samples_png(workdir / "samples" / f"step_{step_now}.png", x,
                                  centered=config.data.centered, title=f"step {step_now} (EMA)")

        while step < stop_at:
            batch = it.next()
            state, metrics = step_fn(state, batch)
            step += 1
            grad_norm = metrics.get("grad_norm", jnp.zeros(()))
            ok, loss, gn = (_host(v) for v in (_all_finite(metrics["loss"], grad_norm, state.params),
                                               metrics["loss"], grad_norm))
            loss = float(loss)
            if not ok:
                what = (f"the loss is {loss}" if not math.isfinite(loss)
                        else f"the gradient norm is {float(gn)}" if not math.isfinite(float(gn))
                        else f"{_first_bad_leaf(state.params)} holds NaN or Inf")
                last = ckpt.latest_step()
                raise TrainingDivergedError(
                    step, f"{what}; nothing was saved for this step, the last good checkpoint is "
                          + (f"{ckpt.directory / str(last)}" if last is not None else "none (no checkpoint yet)"))
            bar.update(1)
            now = time.perf_counter()
            if step % tc.log_freq == 0:
                rate = (step - window_step) / max(now - window_t - paused, 1e-9)
                window_t, window_step, paused = now, step, 0.0
                log.write({"step": step, "loss": loss, "lr": float(_host(metrics.get("lr", float("nan")))),
                           "grad_norm": float(gn),
                           "steps_per_sec": rate, "time": time.time()})
            if progress and (now - postfix_t > 0.5 or step == stop_at):
                postfix_t = now
                bar.set_postfix(loss=f"{loss:.4g}", steps_per_s=f"{bar.format_dict.get('rate') or 0:.1f}")
            t_extra = time.perf_counter()
            if eval_fn is not None and step % tc.eval_freq == 0:
                result = eval_fn(state, step)
                if not isinstance(result, dict):
                    raise TypeError(f"eval_fn must return a dict, got {type(result).__name__}")
                log.write({"step": step, "eval": json.loads(json.dumps(result, default=float)),
                           "time": time.time()})
            if step % tc.snapshot_freq == 0 or step == stop_at:
                save(step)
                last_saved = step
                snapshot(step)
            paused += time.perf_counter() - t_extra
            if _stop_everywhere(stopper.requested, processes):
                where = save(step) if last_saved != step else ckpt.directory / str(step)
                last_saved = step
                bar.close()
                if primary:
                    print(f"stopped by {stopper.signal_name or 'a signal to another process'} after step "
                          f"{step}: checkpoint saved to {where}", flush=True)
                return state
        return state
    finally:
        if stopper is not None:
            stopper.restore()
        if bar is not None:
            bar.close()
        if log is not None:
            log.close()
        ckpt.close()
