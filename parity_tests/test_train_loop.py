"""``jax_impl.loop.train``: the run directory, resume, signals, SIGKILL, divergence, damage.

A tiny MLP on the 2-D Gaussian mixture with the VP SDE (``tiny_config``), a few dozen steps:

* the run directory: config.json, log.jsonl every log_freq (+ eval lines every eval_freq),
  checkpoints every snapshot_freq and at the end (the newest ``keep``), sample PNGs;
* resume: k steps, then a second ``train`` call to 2k, ends with parameters, optimiser state,
  EMA and key bit-identical to the uninterrupted 2k-step run (and a log without duplicates);
* SIGTERM (sent from inside the run at a known step): the step finishes, a checkpoint is
  saved and named, ``train`` returns normally, the handlers are restored, resuming ends
  bit-identical; a second SIGINT raises ``KeyboardInterrupt`` at once;
* SIGINT from the parent to a subprocess after its first log line: exit status 0, the
  checkpoint is there, resuming ends bit-identical;
* SIGKILL of a subprocess at a random moment: the newest complete checkpoint restores and
  resuming ends bit-identical;
* a NaN batch at step k: ``TrainingDivergedError`` naming step k, the last good checkpoint
  (finite) stays the latest; an infinite parameter after an update likewise (named);
* a damaged latest checkpoint, another config's checkpoints, another config's workdir:
  one clear error naming the directory / the differing fields.

The compiled programs are cached on disk for the module (JAX's persistent compilation
cache in a temporary directory, shared with the subprocesses), which the 2 shared cores need.
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

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spec.configs import VPSDEConfig
from spec.datasets import DataConfig
from spec.model_configs import MLPConfig
from spec.train_config import EMAConfig, OptimConfig, RunConfig, TrainConfig, TrainingConfig

ROOT = Path(__file__).resolve().parents[1]
# orbax runs its I/O on private asyncio loops; a coroutine it abandons may be collected after
# its loop closed ("Exception ignored ... Event loop is closed"), which is orbax's noise, not ours
pytestmark = pytest.mark.filterwarnings("ignore:Exception ignored in:pytest.PytestUnraisableExceptionWarning")
HELPER = Path(__file__).with_name("_train_subprocess.py")
N_ITERS = 40


def tiny_config(**training) -> RunConfig:
    """The test run: MLP (32, 32) on 2000 mixture points, VP SDE with N=20, 40 steps of 32."""
    fields = dict(batch_size=32, n_iters=N_ITERS, snapshot_freq=10, log_freq=5, eval_freq=10, keep=2)
    fields.update(training)
    return RunConfig(model=MLPConfig(hidden_dims=(32, 32), embedding_dim=16),
                     train=TrainConfig(training=TrainingConfig(**fields),
                                       optim=OptimConfig(lr=2e-3, warmup=5, grad_clip=1.0),
                                       model=EMAConfig(ema_rate=(0.9,))),
                     data=DataConfig(dataset="gmm", num_train=2000, num_test=500),
                     process=VPSDEConfig(N=20))


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(tmp_path_factory):
    """JAX's persistent compilation cache for this module (and its subprocesses); restored after.

    The session's cache (``parity_tests/conftest.py``) when there is one: jax reads its cache
    directory once per process, so the subprocesses must get the directory this process uses."""
    session_cache = os.environ.get("JAX_COMPILATION_CACHE_DIR")
    if session_cache:
        yield Path(session_cache)
        return
    cache = tmp_path_factory.mktemp("jax_cache")
    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
             "jax_persistent_cache_min_entry_size_bytes")
    old = {n: getattr(jax.config, n) for n in names}
    jax.config.update("jax_compilation_cache_dir", str(cache))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    yield cache
    for n, v in old.items():
        jax.config.update(n, v)


def _env(cache) -> dict:
    return {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT),
            "JAX_COMPILATION_CACHE_DIR": str(cache), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


def _train(workdir, config=None, **kw):
    from jax_impl.loop import train

    return train(config or tiny_config(), workdir, progress=False, **kw)


def _arrays(state) -> list[np.ndarray]:
    """Every array leaf of the state (keys as key data), in a fixed order."""
    return [np.asarray(jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x)
            for x in jax.tree.leaves(state)]


def _assert_bit_identical(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(_arrays(a), _arrays(b)):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(x, y)


def _restore_latest(workdir, config=None):
    from jax_impl.checkpoint import CheckpointManager
    from jax_impl.train import create_train_state

    config = config or tiny_config()
    target = create_train_state(jax.random.key(config.train.training.seed), config)
    with CheckpointManager(Path(workdir) / "checkpoints") as m:
        return m.latest_step(), m.restore(target=target)


def _log(workdir) -> list[dict]:
    return [json.loads(line) for line in (Path(workdir) / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run: (workdir, final state, seconds)."""
    workdir = tmp_path_factory.mktemp("reference")
    evals = []
    t0 = time.perf_counter()
    state = _train(workdir, eval_fn=lambda s, step: evals.append(step) or {"step_seen": int(s.step)})
    seconds = time.perf_counter() - t0
    assert evals == [10, 20, 30, 40]
    return workdir, state, seconds


def test_run_directory(reference):
    from PIL import Image

    workdir, state, seconds = reference
    assert int(state.step) == N_ITERS
    assert json.loads((workdir / "config.json").read_text()) == json.loads(json.dumps(tiny_config().to_dict()))
    log = _log(workdir)
    train_lines = [e for e in log if "loss" in e]
    assert [e["step"] for e in train_lines] == list(range(5, N_ITERS + 1, 5))
    for e in train_lines:
        assert set(e) == {"step", "loss", "lr", "grad_norm", "steps_per_sec", "time"}
        assert np.isfinite(e["loss"]) and e["steps_per_sec"] > 0
    assert train_lines[0]["lr"] == pytest.approx(2e-3 * 4 / 5, rel=1e-6)  # warm-up on the pre-increment step
    assert [(e["step"], e["eval"]) for e in log if "eval" in e] == [(s, {"step_seen": s}) for s in (10, 20, 30, 40)]
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()) == [30, 40]  # keep=2
    pngs = sorted((workdir / "samples").iterdir())
    assert [p.name for p in pngs] == [f"step_{s}.png" for s in (10, 20, 30, 40)]
    with Image.open(pngs[-1]) as im:
        assert im.format == "PNG" and im.size[0] > 100
    step, (restored, data_state, config) = _restore_latest(workdir)
    assert step == N_ITERS and data_state["index"] == (N_ITERS * 32) % 2000
    _assert_bit_identical(restored, state)
    print(f"\nuninterrupted {N_ITERS}-step run: {seconds:.1f} s; logged steps/s "
          f"{[round(e['steps_per_sec']) for e in train_lines[1:]]}")


def test_resume_is_bit_identical(reference, tmp_path, capsys):
    _, ref, _ = reference
    half = _train(tmp_path, max_steps=N_ITERS // 2)
    assert int(half.step) == N_ITERS // 2
    t0 = time.perf_counter()
    final = _train(tmp_path)
    seconds = time.perf_counter() - t0
    err = capsys.readouterr().err
    assert f"resumed from {tmp_path / 'checkpoints' / str(N_ITERS // 2)}" in err
    _assert_bit_identical(final, ref)
    steps = [e["step"] for e in _log(tmp_path) if "loss" in e]
    assert steps == list(range(5, N_ITERS + 1, 5))  # no duplicates, no gaps
    assert _train(tmp_path).step == N_ITERS  # a finished run returns at once
    print(f"\nresume: second half ({N_ITERS // 2} steps) incl. restore took {seconds:.1f} s; {err.strip()}")


def test_sigterm_saves_and_returns(reference, tmp_path, capsys):
    _, ref, _ = reference
    old = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)

    def eval_fn(state, step):
        if step == 20:
            os.kill(os.getpid(), signal.SIGTERM)
        return {}

    state = _train(tmp_path, eval_fn=eval_fn, config=tiny_config(snapshot_freq=15))
    out = capsys.readouterr()
    assert int(state.step) == 20
    assert f"stopped by SIGTERM after step 20: checkpoint saved to {tmp_path / 'checkpoints' / '20'}" in out.out
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == old
    step, (restored, _, _) = _restore_latest(tmp_path, tiny_config(snapshot_freq=15))
    assert step == 20
    _assert_bit_identical(restored, state)
    _assert_bit_identical(_train(tmp_path, config=tiny_config(snapshot_freq=15)), ref)


def test_second_sigint_exits_at_once(tmp_path):
    old = signal.getsignal(signal.SIGINT)

    def eval_fn(state, step):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1.0)  # the second signal interrupts this
        raise AssertionError("the second SIGINT did not interrupt")

    t0 = time.perf_counter()
    with pytest.raises(KeyboardInterrupt, match="second signal"):
        _train(tmp_path, eval_fn=eval_fn)
    assert time.perf_counter() - t0 < 60
    assert signal.getsignal(signal.SIGINT) == old


def test_sigint_from_parent_exits_zero_and_resumes(reference, tmp_path, compilation_cache):
    _, ref, _ = reference
    proc = subprocess.Popen([sys.executable, str(HELPER), str(tmp_path)], cwd=ROOT, env=_env(compilation_cache),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = tmp_path / "log.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and log.read_text().strip():
            proc.send_signal(signal.SIGINT)
            break
        time.sleep(0.01)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    if "stopped by SIGINT" in out:  # (the run may have finished before the signal landed)
        step = int(out.split("stopped by SIGINT after step ")[1].split(":")[0])
        assert f"checkpoint saved to {tmp_path / 'checkpoints' / str(step)}" in out
        assert 5 <= step < N_ITERS and f"done {step}" in out
        assert _restore_latest(tmp_path)[0] == step
    _assert_bit_identical(_train(tmp_path), ref)


def test_sigkill_at_a_random_moment_then_resume(reference, tmp_path, compilation_cache):
    _, ref, _ = reference
    proc = subprocess.Popen([sys.executable, str(HELPER), str(tmp_path)], cwd=ROOT, env=_env(compilation_cache),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ck = tmp_path / "checkpoints"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if ck.exists() and any(p.name.isdigit() for p in ck.iterdir()):
            break
        time.sleep(0.005)
    time.sleep(random.Random().uniform(0.0, 0.3))
    proc.kill()
    proc.wait()
    step, (restored, data_state, _) = _restore_latest(tmp_path)
    assert step in (10, 20, 30, 40)
    assert int(restored.step) == step and data_state["index"] == (step * 32) % 2000
    _assert_bit_identical(_train(tmp_path), ref)


def test_nan_loss_stops_naming_the_step(tmp_path, monkeypatch):
    from jax_impl import data
    from jax_impl.loop import TrainingDivergedError

    calls = {"n": 0}
    original = data.BatchIterator.next

    def next_with_nan(self):
        calls["n"] += 1
        batch = original(self)
        return batch.at[0, 0].set(jnp.nan) if calls["n"] == 23 else batch

    monkeypatch.setattr(data.BatchIterator, "next", next_with_nan)
    with pytest.raises(TrainingDivergedError, match=r"diverged at step 23: the loss is nan.*last good checkpoint "
                                                    r"is .*checkpoints/20") as info:
        _train(tmp_path)
    assert info.value.step == 23
    step, (restored, _, _) = _restore_latest(tmp_path)
    assert step == 20
    assert all(np.all(np.isfinite(a)) for a in _arrays(restored.params))


def test_nan_parameters_stop_naming_the_step(tmp_path, monkeypatch):
    from jax_impl import loop
    from jax_impl.loop import TrainingDivergedError

    real = loop._train_step(tiny_config())

    def poisoned(config):
        def step(state, batch):
            state, metrics = real(state, batch)
            if int(state.step) == 17:  # an update that leaves one parameter infinite, loss still finite
                params = jax.tree.map(lambda p: p, state.params)
                params["layers_1"]["kernel"] = params["layers_1"]["kernel"].at[0, 0].set(jnp.inf)
                state = state.replace(params=params)
            return state, metrics
        return step

    monkeypatch.setattr(loop, "_train_step", poisoned)
    with pytest.raises(TrainingDivergedError, match=r"diverged at step 17: params\['layers_1'\]\['kernel'\] "
                                                    r"holds NaN or Inf.*checkpoints/10") as info:
        _train(tmp_path)
    assert info.value.step == 17
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()) == [10]


def test_damaged_latest_checkpoint(reference, tmp_path):
    from jax_impl.checkpoint import CheckpointError

    workdir = tmp_path / "run"
    shutil.copytree(reference[0], workdir)
    for p in (workdir / "checkpoints" / "40" / "state").rglob("*"):
        if p.is_file() and p.parent.name == "d":
            p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=str(workdir / "checkpoints" / "40")):
        _train(workdir, max_steps=50)


def test_other_configs_checkpoints_and_workdir(reference, tmp_path):
    from jax_impl.checkpoint import CheckpointError

    other = tiny_config(batch_size=16)
    with pytest.raises(ValueError, match=r"holds a run of another config.*train\.training\.batch_size "
                                         r"\(saved 32, given 16\)"):
        _train(reference[0], config=other)
    workdir = tmp_path / "other"
    workdir.mkdir()
    shutil.copytree(reference[0] / "checkpoints", workdir / "checkpoints")
    with pytest.raises(CheckpointError, match=r"checkpoints/40.*another config.*train\.training\.batch_size"):
        _train(workdir, config=other)


def test_bad_arguments(tmp_path):
    with pytest.raises(TypeError, match="config must be a spec.RunConfig"):
        _train(tmp_path, config={"model": None})
    with pytest.raises(ValueError, match="max_steps"):
        _train(tmp_path, max_steps=-1)
    with pytest.raises(TypeError, match="eval_fn must be callable"):
        _train(tmp_path, eval_fn=3)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        _train(tmp_path / "file")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json.*not a readable JSON config"):
        _train(tmp_path / "bad")


def test_snapshot_scatter_handles_any_range():
    """An untrained VE model's samples reach 1e2..1e8: the scatter keeps ~20 grid lines
    (it used to draw one line per integer and hang) and still draws a finite image."""
    from jax_impl.loop import _scatter_image

    pts = np.array([[1e8, -1e8], [0.5, 0.25], [np.nan, 1.0]])
    img = _scatter_image(pts, "wide")
    assert img.size == (320, 340)
