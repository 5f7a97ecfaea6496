"""The torch training loop and its checkpoints (``torch_ref/loop.py``, ``torch_ref/checkpoint.py``).

The twins' tests (``jax_impl/loop.py``, ``jax_impl/checkpoint.py``) check the same promises
on the JAX side. Here, on a tiny MLP trained on 256 points of the 2-D Gaussian mixture
(configs in ``parity_tests/_torch_train_subprocess.py``, 24 steps):

* the run directory: config.json, log.jsonl (loss and eval lines), the last K checkpoints,
  snapshot PNGs, torch threads never above the core count;
* resume: a run stopped after 10 steps and continued ends bit-identical (parameters, EMA per
  rate, Adam moments, generator, log lines) to the uninterrupted run; also with
  improved-diffusion's loss-second-moment sampler, and for a digits-sized DDPM U-Net with
  dropout (torch's global generator is the run's own, checkpointed, and the caller's is
  left as it was);
* SIGTERM / SIGINT in a subprocess: exit 0, a checkpoint saved and named, resuming continues;
  SIGINT / SIGTERM handling (a second signal raises at once, handlers restored);
* SIGKILL at a random moment of a subprocess that checkpoints every 2 steps, then resume:
  equals the uninterrupted run, no half-written file is picked or left;
* NaN / Inf loss or parameter: ``TrainingDivergedError`` naming the step, no checkpoint of
  that step, the last good one is the latest and restores finite;
* damaged checkpoints (truncated, garbage, missing entries): one ``CheckpointError`` naming
  the file, an older intact step restores; a checkpoint of another model or config, and a
  workdir of another config, are refused naming what differs.

Cross-framework: train-core's parity tests prove one- and few-step parity of the train step;
the two loops are not compared number for number, because each draws t and noise from its
own framework's generator (torch.Generator vs JAX keys), by design.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from parity_tests._torch_train_subprocess import make_config
from torch_ref import loop
from torch_ref import train as train_core
from torch_ref.checkpoint import CheckpointError, CheckpointManager
from torch_ref.loop import TrainingDivergedError, train

ROOT = Path(__file__).resolve().parents[1]
N_ITERS = make_config().train.training.n_iters


def _snapshot(state) -> dict:
    """Every number a resumed run must reproduce, copied."""
    opt = state.opt_state.state_dict()
    return {
        "step": int(state.step),
        "params": {k: v.detach().clone() for k, v in state.model.state_dict().items()},
        "ema": [{k: v.clone() for k, v in e.items()} for e in state.ema],
        "adam": {i: {k: (v.clone() if torch.is_tensor(v) else v) for k, v in s.items()}
                 for i, s in opt["state"].items()},
        "rng": state.rng.get_state().clone(),
    }


def _assert_same(a: dict, b: dict, *, num_ema: int = 2) -> None:
    assert a["step"] == b["step"]
    for k in a["params"]:
        assert torch.equal(a["params"][k], b["params"][k]), f"parameter {k} differs"
    assert len(a["ema"]) == len(b["ema"]) == num_ema
    for ea, eb in zip(a["ema"], b["ema"]):
        for k in ea:
            assert torch.equal(ea[k], eb[k]), f"EMA {k} differs"
    assert a["adam"].keys() == b["adam"].keys()
    for i in a["adam"]:
        for k, v in a["adam"][i].items():
            w = b["adam"][i][k]
            assert torch.equal(v, w) if torch.is_tensor(v) else v == w, f"Adam {k} of {i} differs"
    assert torch.equal(a["rng"], b["rng"]), "generator state differs"


def _log(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "log.jsonl").read_text().splitlines()]


def _numbers(records):
    """Log records without the wall-clock fields."""
    return [{k: v for k, v in r.items() if k not in ("time", "steps_per_sec")} for r in records]


def _eval_fn(state, step):
    return {"ema_norm": float(sum(v.double().norm() for v in state.ema[0].values()))}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted 24-step run (with an eval hook) and its workdir."""
    workdir = tmp_path_factory.mktemp("reference")
    t0 = time.perf_counter()
    state = train(make_config(), workdir, progress=False, eval_fn=_eval_fn)
    return {"workdir": workdir, "final": _snapshot(state), "seconds": time.perf_counter() - t0}


def _subprocess(workdir, overrides):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, "-m", "parity_tests._torch_train_subprocess", str(workdir),
         json.dumps(overrides)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)


# --------------------------------------------------------------------------- layout


def test_run_directory(reference):
    workdir = reference["workdir"]
    cfg = make_config()
    assert json.loads((workdir / "config.json").read_text()) == json.loads(cfg.to_json())
    records = _log(workdir)
    losses = [r for r in records if "loss" in r]
    evals = [r for r in records if "eval" in r]
    assert [r["step"] for r in losses] == list(range(4, N_ITERS + 1, 4))
    assert [r["step"] for r in evals] == [8, 16, 24]
    for r in losses:
        assert set(r) == {"step", "loss", "lr", "grad_norm", "steps_per_sec", "time"}
        assert np.isfinite(r["loss"]) and r["steps_per_sec"] > 0
    # the lr of update k is lr * min((k - 1) / warmup, 1) (pre-increment step, warm-up 4)
    assert [r["lr"] for r in losses[:2]] == pytest.approx([0.75e-3, 1e-3])
    assert CheckpointManager(workdir / "checkpoints").all_steps() == [16, 24]  # keep = 2
    from PIL import Image

    for step in (8, 16, 24):
        with Image.open(workdir / "samples" / f"step_{step}.png") as img:
            assert img.format == "PNG" and min(img.size) >= 64
    assert torch.get_num_threads() <= loop._usable_cores()


def test_workdir_of_another_config_is_refused(reference):
    other = make_config({"optim.lr": 5e-4})
    with pytest.raises(ValueError, match=r"train\.optim\.lr"):
        train(other, reference["workdir"], progress=False)


def test_finished_run_resumes_to_a_no_op(reference, tmp_path):
    workdir = tmp_path / "again"
    shutil.copytree(reference["workdir"], workdir)
    before = (workdir / "log.jsonl").read_text()
    state = train(make_config(), workdir, progress=False, eval_fn=_eval_fn)
    _assert_same(_snapshot(state), reference["final"])
    assert (workdir / "log.jsonl").read_text() == before


# --------------------------------------------------------------------------- resume


def test_resume_is_bit_identical(reference, tmp_path, capsys):
    workdir = tmp_path / "resumed"
    first = train(make_config(), workdir, progress=False, max_steps=10, eval_fn=_eval_fn)
    assert first.step == 10
    assert CheckpointManager(workdir / "checkpoints").all_steps() == [8, 10]
    capsys.readouterr()
    state = train(make_config(), workdir, progress=True, eval_fn=_eval_fn)
    err = capsys.readouterr().err
    assert "resumed from" in err and "10.pt" in err
    assert "train" in err and "24/24" in err and "loss=" in err  # the tqdm bar
    _assert_same(_snapshot(state), reference["final"])
    assert _numbers(_log(workdir)) == _numbers(_log(reference["workdir"]))


def test_resume_with_a_learned_schedule_sampler_is_bit_identical(tmp_path):
    # improved-diffusion's objective with importance-sampled t: the loss-second-moment
    # history (warmed up within the run: 20 steps x 10 losses) is part of the checkpoint
    # (the 2-D MLP has no second output for learned variances, so the loss is the MSE)
    from spec.configs import DiffusionConfig

    cfg = make_config({"training.loss": "diffusion", "training.schedule_sampler": "loss-second-moment"},
                      process=DiffusionConfig(steps=20, noise_schedule="cosine"))
    whole = train(cfg, tmp_path / "whole", progress=False)
    train(cfg, tmp_path / "split", progress=False, max_steps=10)
    split = train(cfg, tmp_path / "split", progress=False)
    _assert_same(_snapshot(split), _snapshot(whole))
    a, b = whole.sampler_state, split.sampler_state
    assert a.warmed_up() and np.array_equal(a._loss_history, b._loss_history)
    assert np.array_equal(a._loss_counts, b._loss_counts)


def test_resume_with_dropout_is_bit_identical_and_leaves_the_global_generator(tmp_path, monkeypatch):
    # a digits-sized DDPM U-Net with dropout: dropout draws from torch's global generator,
    # which the loop seeds, checkpoints and restores (and hides from the caller)
    from spec.configs import VPSDEConfig
    from spec.datasets import DataConfig
    from spec.model_configs import DDPMConfig
    from spec.train_config import RunConfig, TrainConfig

    monkeypatch.setattr(loop, "NUM_SAMPLES", 4)
    train_cfg = TrainConfig().with_overrides([
        "training.batch_size=8", "training.n_iters=4", "training.snapshot_freq=2",
        "training.log_freq=2", "optim.warmup=0", "optim.lr=1e-3", "model.ema_rate=0.9"])
    cfg = RunConfig(model=DDPMConfig(image_size=8, num_channels=1, nf=32, ch_mult=(1,),
                                     num_res_blocks=1, attn_resolutions=(), dropout=0.5),
                    train=train_cfg, process=VPSDEConfig(N=30),
                    data=DataConfig(dataset="digits", image_size=8, num_channels=1, num_train=64,
                                    num_test=16))
    torch.manual_seed(123)
    caller = torch.get_rng_state()
    whole = train(cfg, tmp_path / "whole", progress=False)
    assert torch.equal(torch.get_rng_state(), caller)
    torch.manual_seed(7)  # another caller stream: the run does not depend on it
    train(cfg, tmp_path / "split", progress=False, max_steps=3)
    split = train(cfg, tmp_path / "split", progress=False)
    _assert_same(_snapshot(split), _snapshot(whole), num_ema=1)
    from PIL import Image

    with Image.open(tmp_path / "whole" / "samples" / "step_4.png") as img:  # an image grid
        assert img.format == "PNG" and img.mode == "L"


def test_resume_drops_log_lines_of_the_interrupted_run(reference, tmp_path):
    workdir = tmp_path / "trimmed"
    train(make_config(), workdir, progress=False, max_steps=8, eval_fn=_eval_fn)
    with open(workdir / "log.jsonl", "a") as f:  # a killed run logged past its checkpoint
        f.write(json.dumps({"step": 12, "loss": 1.0}) + "\n" + '{"step": 13, "lo')
    state = train(make_config(), workdir, progress=False, eval_fn=_eval_fn)
    _assert_same(_snapshot(state), reference["final"])
    assert _numbers(_log(workdir)) == _numbers(_log(reference["workdir"]))
    # a run killed before its first checkpoint: its lines go, the new run starts afresh
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "log.jsonl").write_text(json.dumps({"step": 4, "loss": 9.0}) + "\n")
    train(make_config(), fresh, progress=False, eval_fn=_eval_fn)
    assert _numbers(_log(fresh)) == _numbers(_log(reference["workdir"]))


# --------------------------------------------------------------------------- signals


def test_signal_guard_second_signal_raises_and_handlers_are_restored():
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with loop._StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        assert stop.requested == "SIGTERM"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)
    assert {s: signal.getsignal(s) for s in before} == before


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_saves_exits_zero_and_resumes(tmp_path, sig):
    workdir = tmp_path / sig.name
    overrides = {"training.n_iters": 100000, "training.snapshot_freq": 100000,
                 "training.log_freq": 1}
    proc = _subprocess(workdir, overrides)
    try:
        deadline = time.monotonic() + 240  # a loaded machine: the subprocess imports torch first
        log = workdir / "log.jsonl"
        while time.monotonic() < deadline and proc.poll() is None:
            if log.exists() and len(log.read_text().splitlines()) >= 3:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=240)
    finally:  # a failed wait must not leave a 100000-step run behind
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err[-2000:]
    step = CheckpointManager(workdir / "checkpoints").latest_step()
    assert step is not None and step >= 3
    assert f"stopped by {sig.name} after step {step}: checkpoint saved to" in out
    assert f"{step}.pt\n" in out and f"done at step {step}" in out
    state = train(make_config(overrides), workdir, progress=False, max_steps=step + 2)
    assert state.step == step + 2
    assert CheckpointManager(workdir / "checkpoints").latest_step() == step + 2


def test_sigkill_at_a_random_moment_then_resume_equals_uninterrupted(reference, tmp_path):
    workdir = tmp_path / "sigkill"
    overrides = {"training.snapshot_freq": 2}  # does not change the numbers
    seed = random.randrange(2**32)
    # a snapshot (checkpoint + samples) every 2 steps makes the 24-step run last seconds
    # after its first checkpoint, so the kill lands mid-run (in a step, a torch.save, a PNG)
    delay = random.Random(seed).uniform(0.0, 1.0)
    proc = _subprocess(workdir, overrides)
    ckpts = workdir / "checkpoints"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if ckpts.exists() and any(p.suffix == ".pt" for p in ckpts.iterdir()):
            break
        time.sleep(0.01)
    time.sleep(delay)
    proc.kill()
    proc.communicate(timeout=120)
    where = f"(kill {delay:.3f} s after the first checkpoint, seed {seed}, rc {proc.returncode})"
    assert proc.returncode == -signal.SIGKILL, f"the run ended before the kill {where}"
    steps = CheckpointManager(ckpts).all_steps()  # also removes half-written temp files
    assert steps, f"no checkpoint survived {where}"
    assert not [p for p in ckpts.iterdir() if p.name.startswith(".")], where
    state = train(make_config(overrides), workdir, progress=False, eval_fn=_eval_fn)
    _assert_same(_snapshot(state), reference["final"])


# --------------------------------------------------------------------------- divergence


@pytest.mark.parametrize("what", ["loss", "parameter"])
def test_nan_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, what):
    real = train_core.make_train_step

    def poisoned(run_config, **kw):
        step_fn = real(run_config, **kw)

        def step(state, batch, *, generator=None):
            state, metrics = step_fn(state, batch, generator=generator)
            if state.step == 11:
                if what == "loss":
                    metrics = dict(metrics, loss=float("inf"))
                else:
                    with torch.no_grad():
                        next(iter(state.params.values())).view(-1)[0] = float("nan")
            return state, metrics

        return step

    monkeypatch.setattr(train_core, "make_train_step", poisoned)
    workdir = tmp_path / what
    with pytest.raises(TrainingDivergedError, match="step 11") as info:
        train(make_config(), workdir, progress=False)
    assert info.value.step == 11 and what in str(info.value)
    assert str(workdir / "checkpoints" / "8.pt") in str(info.value)
    mgr = CheckpointManager(workdir / "checkpoints")
    assert mgr.all_steps() == [8]
    fresh = train_core.create_train_state(make_config())
    state, _, _ = mgr.restore(target=fresh)
    assert state.step == 8 and all(torch.isfinite(p).all() for p in state.model.parameters())


# --------------------------------------------------------------------------- damage


def _copy_run(reference, tmp_path, name) -> Path:
    workdir = tmp_path / name
    shutil.copytree(reference["workdir"], workdir)
    return workdir


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "bit_flip", "edited_tensor",
                                    "missing_entries"])
def test_damaged_checkpoint_one_error_and_an_older_step_restores(reference, tmp_path, damage):
    workdir = _copy_run(reference, tmp_path, damage)
    path = workdir / "checkpoints" / "24.pt"
    raw = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(raw[: len(raw) * 2 // 3])
    elif damage == "garbage":
        path.write_bytes(b"\x00not a checkpoint" * 50)
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "bit_flip":  # inside the tensor data: torch.load alone would not notice
        flipped = bytearray(raw)
        flipped[len(raw) // 2] ^= 0x10
        path.write_bytes(bytes(flipped))
    elif damage == "edited_tensor":
        payload = torch.load(path, weights_only=True)
        next(iter(payload["state"]["ema"]["__tuple__"][1].values())).view(-1)[0] += 1.0
        torch.save(payload, path)
    else:
        payload = torch.load(path, weights_only=True)
        del payload["state"], payload["data_state"]
        torch.save(payload, path)
    expected = {"missing_entries": "lacks the entries", "edited_tensor": r"CRC-32 mismatch in \['state/ema/"
                }.get(damage, "is damaged")
    with pytest.raises(CheckpointError, match=expected) as info:
        train(make_config(), workdir, progress=False)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)
    mgr = CheckpointManager(workdir / "checkpoints")
    state, data_state, config = mgr.restore(16, target=train_core.create_train_state(make_config()))
    assert state.step == 16 and data_state["index"] == (16 * 32) % 256
    assert config == json.loads(make_config().to_json())


def test_a_state_with_nan_is_never_saved(tmp_path):
    state = train_core.create_train_state(make_config())
    next(iter(state.ema[1].values())).view(-1)[0] = float("nan")
    mgr = CheckpointManager(tmp_path / "ckpt")
    with pytest.raises(ValueError, match=r"'state/ema/.*' holds NaN or Inf: not saving step 5"):
        mgr.save(5, state, data_state={}, config={})
    assert mgr.all_steps() == [] and not list((tmp_path / "ckpt").iterdir())


def test_half_written_files_are_never_listed_and_are_removed(reference, tmp_path):
    workdir = _copy_run(reference, tmp_path, "tmpfiles")
    ckpts = workdir / "checkpoints"
    (ckpts / ".32.pt.tmp-12345-abc").write_bytes(b"half")
    (ckpts / "notes.txt").write_text("not a step")
    assert CheckpointManager(ckpts).all_steps() == [16, 24]
    assert not (ckpts / ".32.pt.tmp-12345-abc").exists()
    mgr = CheckpointManager(ckpts)
    state = train_core.create_train_state(make_config())
    with pytest.raises(CheckpointError, match="already exists"):
        mgr.save(24, state, data_state={}, config={})
    with pytest.raises(CheckpointError, match=r"does not exist.*\[16, 24\]"):
        mgr.restore(20, target=state)
    with pytest.raises(CheckpointError, match="no checkpoint in"):
        CheckpointManager(tmp_path / "empty").restore(target=state)
    (ckpts / "32").mkdir()  # an orbax step directory: a JAX run's workdir
    with pytest.raises(CheckpointError, match=r"step directories \['32'\].*JAX"):
        train(make_config(), workdir, progress=False)


def test_checkpoint_of_another_model_or_config(reference):
    mgr = CheckpointManager(reference["workdir"] / "checkpoints")
    wider = train_core.create_train_state(make_config(hidden=(48, 32)))
    with pytest.raises(CheckpointError, match=r"24\.pt.*does not match the target") as info:
        mgr.restore(target=wider)
    msg = str(info.value)
    assert "state.model" in msg and "(32, " in msg and "(48, " in msg
    target = train_core.create_train_state(make_config())
    with pytest.raises(CheckpointError, match=r"another config.*train\.optim\.lr"):
        mgr.restore(target=target, config=make_config({"optim.lr": 5e-4}))
    state, _, _ = mgr.restore(target=target, config=make_config())
    assert state.step == N_ITERS
