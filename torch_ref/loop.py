"""The training loop in PyTorch: run directory, resume, progress, logs, snapshots, signals,
divergence.

Twin: ``jax_impl/loop.py`` (same names, same run directory layout, same semantics; the
checkpoints there are orbax step directories, here ``<step>.pt`` files of
``torch_ref/checkpoint.py``).

``train(config, workdir, *, max_steps=None, progress=True, eval_fn=None) -> TrainState``
trains ``config`` (a ``spec.RunConfig``) in ``workdir``:

- ``workdir/config.json``: ``config.to_json()``, written on the first call; a workdir whose
  config.json differs is refused (``ValueError`` naming the differing dotted fields);
- ``workdir/checkpoints/<step>.pt``: ``torch_ref.checkpoint.CheckpointManager`` (the whole
  TrainState: model, optimiser, EMA per rate, step, schedule-sampler state, generators;
  the data iterator position; the config), every ``training.snapshot_freq`` steps and at
  the end, the newest ``training.keep`` kept; a workdir with checkpoints resumes from the
  latest, and the resumed run ends with bit-identical parameters to an uninterrupted one of
  the same length (CPU, same thread count);
- ``workdir/log.jsonl``: one JSON object every ``training.log_freq`` steps (``step, loss,
  lr, grad_norm, steps_per_sec, time``), and ``{"step", "eval": {...}, "time"}`` every
  ``training.eval_freq`` steps when ``eval_fn(state, step) -> dict`` is given; on resume,
  lines after the restored step (from the interrupted run) are dropped (all of them when
  the interrupted run saved no checkpoint);
- ``workdir/samples/step_<step>.png``: 64 samples from the first EMA parameters at every
  snapshot (``pc_sample`` with no corrector: Euler-Maruyama for the continuous SDE loss,
  the reverse-diffusion predictor for "smld" / "ddpm"; ``ddpm_sample`` for a DiffusionConfig (clipped to [-1, 1] for images only),
  ``ald_sample`` for ``anneal_dsm``; drawn from a generator seeded by (seed, step), so
  sampling never moves the training streams): a scatter for 2-D data, an image grid
  otherwise;
- a tqdm bar on stderr with the loss and steps/s (``progress=False`` turns it off).

The data are ``spec.datasets.load_dataset(config.data)``'s training split, batched by
``torch_ref.data.BatchIterator.from_config`` (seed ``data.seed``; torch tensors, images
NCHW) and handed to ``torch_ref.train.make_train_step(config)``, which draws t and noise
from the state's generator. A class-conditional model (``getattr(config.model,
"num_classes", 0) > 0``) gets ``(x, y)`` batches: the labels of
``spec.datasets.load_labels(config.data)`` (int64), as ``jax_impl/loop.py``. The PyTorch
reference runs in one process on one device (the scale-out is the JAX side's). ``max_steps`` stops the run once the step counter
(updates done, counted from 0 like ``training.n_iters``, so a resumed run counts on)
reaches ``min(n_iters, max_steps)``. ``torch.set_num_threads`` is lowered to the number of
usable cores when it is above it (more threads than cores is 50-70x slower), never raised.

SIGINT / SIGTERM: the current step finishes, a checkpoint is saved, where it went is
printed (stdout), and ``train`` returns normally (so a command line exits 0); a second signal exits
at once (``KeyboardInterrupt``). The original handlers are restored on return (signals are
only caught when ``train`` runs in the main thread).

Dropout (DDPM, NCSN++) draws from torch's global generator: ``train`` runs under
``torch.random.fork_rng`` seeded from ``training.seed`` (the caller's global stream is
restored on return), and every checkpoint stores that generator's state, so dropout too
is bit-identical after a resume.

A NaN or Inf loss, gradient norm or parameter raises ``TrainingDivergedError`` naming the
step; that state is never saved, so the last good checkpoint stays the latest.
"""

from __future__ import annotations

import copy
import json
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

import spec
from spec import datasets
from spec.train_config import RunConfig
from spec.validate import check_bool, check_int
from torch_ref import data as data_lib
from torch_ref import train as train_core
from torch_ref.checkpoint import CheckpointManager

__all__ = ["TrainingDivergedError", "train"]

NUM_SAMPLES = 64  # snapshot samples per PNG
_TAG_DROPOUT = 3  # SeedSequence([training.seed, 3]) seeds the global generator (dropout)


class TrainingDivergedError(RuntimeError):
    """Training produced a NaN or Inf loss or parameter; the message names the step."""

    def __init__(self, step: int, what: str):
        self.step = step
        super().__init__(f"training diverged at step {step}: {what}")


# --------------------------------------------------------------------------- helpers


def _usable_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _cap_threads() -> None:
    cores = _usable_cores()
    if torch.get_num_threads() > cores:
        torch.set_num_threads(cores)


def _flatten(d, prefix=""):
    out = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        if not d and prefix:
            out[prefix] = {}
    else:
        out[prefix] = d
    return out


def _differing(a: dict, b: dict) -> list[str]:
    fa, fb = _flatten(a), _flatten(b)
    return sorted(k for k in set(fa) | set(fb) if fa.get(k, KeyError) != fb.get(k, KeyError))


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _write_config(workdir: Path, config) -> None:
    """Write ``config.json``, or check that the one there is this config."""
    path = workdir / "config.json"
    mine = json.loads(config.to_json())
    if path.exists():
        try:
            theirs = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"workdir: {str(path)!r} is not a readable config ({exc})") from None
        diff = _differing(mine, theirs)
        if diff:
            shown = ", ".join(diff[:10]) + (f" and {len(diff) - 10} more" if len(diff) > 10 else "")
            raise ValueError(f"workdir {str(workdir)!r} holds a run of another config: "
                             f"{shown} differ from config.json (use a new workdir)")
        return
    _atomic_write_text(path, config.to_json() + "\n")


def _trim_log(path: Path, step: int) -> None:
    """Drop log lines written after ``step`` by an interrupted run."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a line cut by a kill
        if isinstance(rec, dict) and isinstance(rec.get("step"), int) and rec["step"] <= step:
            keep.append(line)
    _atomic_write_text(path, "".join(k + "\n" for k in keep))


def _params_finite(model: torch.nn.Module) -> bool:
    maxes = [p.detach().abs().amax() for p in model.parameters() if p.numel()]
    return bool(torch.isfinite(torch.stack(maxes)).all()) if maxes else True


def _bad_parameter(model: torch.nn.Module) -> str | None:
    """None when every parameter is finite, else which one holds NaN or Inf."""
    if _params_finite(model):
        return None
    for name, p in model.named_parameters():
        if not bool(torch.isfinite(p.detach()).all()):
            return f"the parameter {name} holds NaN or Inf"
    return "a parameter holds NaN or Inf"  # pragma: no cover


class _StopSignals:
    """SIGINT / SIGTERM -> ``requested`` (the signal's name); a second one raises
    ``KeyboardInterrupt`` at once. Handlers are installed in the main thread only and
    restored on exit."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested: str | None = None
        self._old: dict = {}

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.requested is not None:
            raise KeyboardInterrupt(f"second signal ({name}): exiting at once")
        self.requested = name
        print(f"\n{name} received: finishing the current step and saving a checkpoint "
              f"(send it again to exit at once)", file=sys.stderr, flush=True)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._old[sig] = signal.getsignal(sig)
                signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}
        return False


# --------------------------------------------------------------------------- samples


def _ema_model(state, model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` in eval mode holding the first EMA rate's parameters."""
    ema = state.ema[0] if state.ema else None
    copied = copy.deepcopy(model).eval()
    if ema is not None:
        named = dict(copied.named_parameters())
        items = ema.items() if isinstance(ema, dict) else zip(
            [n for n, p in model.named_parameters() if p.requires_grad], ema)
        with torch.no_grad():
            for name, value in items:
                named[name].copy_(value)
    return copied


def _draw_samples(config, state, shape, *, generator=None) -> torch.Tensor:
    """``shape[0]`` samples (torch layout) from ``state``'s first EMA parameters with the
    sampler of the run's objective (PC for the SDEs, ancestral DDPM for a diffusion,
    annealed Langevin for ``anneal_dsm``)."""
    from torch_ref import samplers
    from torch_ref.models.utils import get_model_fn, get_score_fn

    model = _ema_model(state, state.model)
    model_fn = get_model_fn(model)
    y = _snapshot_labels(config, shape[0])
    if y is not None:  # class-conditional: sample j of class j mod C (as the twin)
        y = torch.as_tensor(y, dtype=torch.int64)
        model_fn = lambda x, labels: model(x, labels, y=y)  # noqa: E731
    loss = config.resolved_loss
    if loss == "anneal_dsm":
        out, _ = samplers.ald_sample(config.model.sigmas, model_fn, shape, generator=generator)
    elif isinstance(config.process, spec.DiffusionConfig):
        from torch_ref.diffusion import GaussianDiffusion

        out, _ = samplers.ddpm_sample(GaussianDiffusion(config.process), model_fn, shape,
                                      clip_denoised=len(shape) == 4, generator=generator)
    else:
        continuous = config.train.training.continuous and loss == "sde"
        from torch_ref.train import _make_sde
        sde = _make_sde(config.process)
        score_fn = get_score_fn(sde, model_fn, continuous=continuous)
        # as the twin: the continuous SDE's generic reverse step works for any N; the discrete
        # losses' own (DDPM / SMLD) reverse step for them
        predictor = "euler_maruyama" if continuous else "reverse_diffusion"
        out, _ = samplers.pc_sample(sde, score_fn, shape, predictor=predictor,
                                    corrector="none", generator=generator)
    return out


def _save_png(path: Path, samples: np.ndarray, data: np.ndarray, *, centered: bool) -> None:
    """A scatter (2-D points: samples in blue over the data in grey, samples outside the
    frame in red on its border) or an image grid."""
    from PIL import Image, ImageDraw

    if samples.ndim == 2 and samples.shape[1] == 2:
        size = 320
        ref = data[: 2000]
        lim = float(np.max(np.abs(ref))) * 1.25 if ref.size else 1.0
        img = Image.new("RGB", (size, size), "white")
        draw = ImageDraw.Draw(img)

        def pix(p):
            return ((p[0] / lim + 1) * size / 2, (1 - p[1] / lim) * size / 2)

        for p in ref:
            x, y = pix(p)
            draw.point((x, y), fill=(190, 190, 190))
        for p in samples:  # outside the frame (or not finite): a red mark on the border
            inside = bool(np.all(np.isfinite(p)) and np.all(np.abs(p) <= lim))
            x, y = pix(np.clip(np.nan_to_num(p, posinf=lim, neginf=-lim), -lim, lim))
            draw.ellipse((x - 2, y - 2, x + 2, y + 2),
                         fill=(30, 80, 200) if inside else (220, 40, 40))
        img.save(path)
        return
    if samples.ndim == 4:  # NCHW -> NHWC grid
        x = np.transpose(samples, (0, 2, 3, 1))
        x = (x + 1.0) / 2.0 if centered else x
        x = np.clip(np.nan_to_num(x), 0.0, 1.0)
        n, h, w, c = x.shape
        cols = int(math.ceil(math.sqrt(n)))
        rows = int(math.ceil(n / cols))
        grid = np.ones((rows * (h + 1) + 1, cols * (w + 1) + 1, c), np.float32)
        for i in range(n):
            r, q = divmod(i, cols)
            grid[1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + q * (w + 1): 1 + q * (w + 1) + w] = x[i]
        arr = (grid * 255).round().astype(np.uint8)
        img = Image.fromarray(arr[..., 0] if c == 1 else arr)
        scale = max(1, 256 // max(arr.shape[:2]))
        img.resize((img.width * scale, img.height * scale), Image.NEAREST).save(path)
        return
    # other ranks: a line per sample is not worth a format; store the values instead
    np.save(path.with_suffix(".npy"), samples)


def _snapshot_samples(config, state, workdir: Path, shape, data) -> Path:
    seed = config.train.training.seed
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(state.step))
    out = _draw_samples(config, state, (NUM_SAMPLES, *shape), generator=g)
    path = workdir / "samples" / f"step_{int(state.step)}.png"
    _save_png(path, out.detach().cpu().double().numpy(), data, centered=config.data.centered)
    return path


# --------------------------------------------------------------------------- loop


def _check_args(config, workdir, max_steps, progress, eval_fn):
    if not isinstance(config, RunConfig):
        raise TypeError(f"config must be a spec.RunConfig, got {type(config).__name__}")
    if config.data is None:
        raise ValueError("config.data is None: a training run needs a spec.datasets.DataConfig")
    if isinstance(workdir, bytes) or not isinstance(workdir, (str, os.PathLike)):
        raise TypeError(f"workdir must be a path (str or os.PathLike), got {type(workdir).__name__}")
    if max_steps is not None:
        max_steps = check_int("max_steps", max_steps, minimum=0)
    check_bool("progress", progress)
    if eval_fn is not None and not callable(eval_fn):
        raise TypeError(f"eval_fn must be callable as eval_fn(state, step) -> dict, got "
                        f"{type(eval_fn).__name__}")
    workdir = Path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise NotADirectoryError(f"workdir: {str(workdir)!r} is not a directory")
    return workdir, max_steps


def _labels(config, num_examples: int):
    """The training labels (int64 ``[N]``) of a class-conditional run, checked against
    ``model.num_classes``; None for an unconditional one (the twin of jax_impl.loop's)."""
    if not getattr(config.model, "num_classes", 0) > 0:
        return None
    y, _ = datasets.load_labels(config.data)
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


def train(config, workdir, *, max_steps: int | None = None, progress: bool = True, eval_fn=None):
    """Train ``config`` (a ``spec.RunConfig``) in ``workdir``; returns the final TrainState.

    See the module docstring for the run directory, resume, signals and divergence.
    """
    workdir, max_steps = _check_args(config, workdir, max_steps, progress, eval_fn)
    tc = config.train.training
    _cap_threads()
    workdir.mkdir(parents=True, exist_ok=True)
    _write_config(workdir, config)
    (workdir / "samples").mkdir(exist_ok=True)

    train_data, _ = datasets.load_dataset(config.data)
    iterator = data_lib.BatchIterator.from_config(config.data, train_data, tc.batch_size,
                                                  labels=_labels(config, len(train_data)))
    state = train_core.create_train_state(config)
    ckpt = CheckpointManager(workdir / "checkpoints", max_to_keep=tc.keep)
    # Dropout draws from torch's global generator: the run owns it (seeded from
    # training.seed, saved in every checkpoint) and the caller's stream is left untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(np.random.SeedSequence([tc.seed, _TAG_DROPOUT]).generate_state(1)[0]))
        return _run(config, workdir, state, ckpt, iterator, train_data, max_steps, progress,
                    eval_fn)


def _run(config, workdir: Path, state, ckpt: CheckpointManager, iterator, train_data, max_steps,
         progress, eval_fn):
    """The body of :func:`train` (inside the run's own global torch generator)."""
    tc = config.train.training
    log_path = workdir / "log.jsonl"
    config_dict = json.loads(config.to_json())
    last_saved = None
    if ckpt.latest_step() is not None:
        t0 = time.perf_counter()
        step = ckpt.latest_step()
        state, data_state, _ = ckpt.restore(step, target=state, config=config_dict)
        iterator.set_state(data_state)
        _trim_log(log_path, int(state.step))
        last_saved = int(state.step)
        print(f"resumed from {ckpt.path(step)} (step {state.step}, "
              f"{time.perf_counter() - t0:.2f} s)", file=sys.stderr, flush=True)
    else:
        _trim_log(log_path, 0)  # a run killed before its first checkpoint starts again
    total = tc.n_iters if max_steps is None else min(tc.n_iters, max_steps)
    sample_shape = tuple(data_lib.to_framework(train_data[:1]).shape[1:])
    step_fn = train_core.make_train_step(config)

    def save(with_samples: bool):
        nonlocal last_saved
        step = int(state.step)
        if last_saved == step:
            return ckpt.path(step)
        if not _params_finite(state.model):
            raise TrainingDivergedError(step, "a parameter is NaN or Inf (not saved)")
        path = ckpt.save(step, state, data_state=iterator.state, config=config_dict)
        last_saved = step
        if with_samples:
            _snapshot_samples(config, state, workdir, sample_shape, train_data)
        return path

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=min(int(state.step), total), file=sys.stderr,
                   dynamic_ncols=True, desc="train")
    log = open(log_path, "a")
    t_log, n_log = time.perf_counter(), 0
    try:
        with _StopSignals() as stop:
            while int(state.step) < total and stop.requested is None:
                state, metrics = step_fn(state, iterator.next())
                step = int(state.step)
                loss = float(metrics["loss"])
                grad_norm = float(metrics.get("grad_norm", 0.0))
                n_log += 1
                what = (f"the loss is {loss}" if not math.isfinite(loss)
                        else f"the gradient norm is {grad_norm}" if not math.isfinite(grad_norm)
                        else _bad_parameter(state.model))
                if what is not None:
                    last = ckpt.latest_step()
                    raise TrainingDivergedError(
                        step, f"{what}; nothing was saved for this step, the last good "
                              f"checkpoint is " + (str(ckpt.path(last)) if last is not None
                                                   else "none (no checkpoint yet)"))
                if bar is not None:
                    bar.update(1)
                if step % tc.log_freq == 0:
                    now = time.perf_counter()
                    rate = n_log / max(now - t_log, 1e-9)
                    rec = {"step": step, "loss": loss, "lr": float(metrics.get("lr", float("nan"))),
                           "grad_norm": grad_norm, "steps_per_sec": rate, "time": time.time()}
                    log.write(json.dumps(rec) + "\n")
                    log.flush()
                    t_log, n_log = now, 0
                    if bar is not None:
                        bar.set_postfix(loss=f"{loss:.4g}", steps_per_s=f"{rate:.3g}")
                if eval_fn is not None and step % tc.eval_freq == 0:
                    result = eval_fn(state, step)
                    if not isinstance(result, dict):
                        raise TypeError(f"eval_fn must return a dict, got {type(result).__name__}")
                    result = json.loads(json.dumps(result, default=float))
                    log.write(json.dumps({"step": step, "eval": result, "time": time.time()}) + "\n")
                    log.flush()
                if step % tc.snapshot_freq == 0 or step == total:
                    save(with_samples=True)
            if stop.requested is not None:
                path = save(with_samples=False)
                print(f"stopped by {stop.requested} after step {state.step}: checkpoint saved to "
                      f"{path}", flush=True)
            elif int(state.step) > 0:
                save(with_samples=True)
    finally:
        log.close()
        if bar is not None:
            bar.close()
    return state
