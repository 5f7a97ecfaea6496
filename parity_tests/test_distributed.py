"""Scale-out across processes: ``scorediff.distributed``, the training loop on a multi-process
mesh, its checkpoints, and the command line's launch errors.

* two processes on localhost (subprocesses of ``_distributed_worker.py``, 2 CPU host devices
  each: one 4-device mesh over gloo) train a tiny class-conditional MLP run (labelled
  batches, label dropout); their parameters equal the same run trained in this process (the difference is printed: exact, or the float32 reduction
  order of the global batch mean), and their checkpoint -- written by both processes --
  restores here, in one process on one device, with the same parameters, and resumes;
* ``scorediff sample``'s multi-process path gives the 1-device samples;
* the PyTorch loop trains a class-conditional run too, and both loops name
  ``model.num_classes`` when the data's labels do not fit;
* bad launch input gets a one-line error within a bounded time, never a hang: a
  coordinator that never answers (short ``--init-timeout``), a process 0 whose peers never
  join, a process id out of range, malformed flags, a global batch not divisible by the
  device count. Every subprocess has a timeout, so nothing here can hang the suite.

The processes start together (JAX start-up is the cost), once for the module.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from parity_tests import _distributed_worker as worker
from scorediff import distributed

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("_distributed_worker.py")
STEPS = 4  # trained by the processes
N_ITERS = 6  # the run's length: resumed here for the last two
SUBPROCESS_TIMEOUT_S = 600  # a bound against hangs (a loaded machine needs minutes)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra) -> dict:
    """The subprocesses' environment: no host-device split from ``XLA_FLAGS`` (each sets its
    own), but this process's other XLA options (the test session's fast-compile options,
    conftest.py), so the in-process reference compiles with the same options."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    flags = [f for f in env.pop("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
    if flags:
        env["XLA_FLAGS"] = " ".join(flags)
    env.update(extra)
    return env


def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "scorediff", *args]


def _launch(cmd, logs: Path, name: str, **env):
    """Start ``cmd``; its stdout / stderr go to files (a pipe could fill up and block it)."""
    out, err = open(logs / f"{name}.out", "w+"), open(logs / f"{name}.err", "w+")
    return subprocess.Popen(cmd, cwd=ROOT, env=_env(**env), stdout=out, stderr=err, text=True), out, err


def _finish_all(procs: dict, t0: float) -> dict:
    """{name: (returncode, stdout, stderr, seconds from the start to its exit)}; every process
    still running at the module's bound is killed and the test fails (a hang)."""
    ended: dict = {}
    while len(ended) < len(procs):
        for name, (proc, _, _) in procs.items():
            if name not in ended and proc.poll() is not None:
                ended[name] = time.monotonic() - t0
        if time.monotonic() - t0 > SUBPROCESS_TIMEOUT_S:
            for proc, _, _ in procs.values():
                proc.kill()
            hung = sorted(set(procs) - set(ended))
            pytest.fail(f"{hung} did not finish within {SUBPROCESS_TIMEOUT_S} s (a hang)")
        time.sleep(0.05)
    results = {}
    for name, (proc, out, err) in procs.items():
        texts = []
        for f in (out, err):
            f.seek(0)
            texts.append(f.read())
            f.close()
        results[name] = (proc.returncode, texts[0], texts[1], ended[name])
    return results


def _error_lines(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ": error:" in ln]


# ------------------------------------------------------------------ the runs (started together)

@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Everything that needs its own processes, started at once: the 2-process training run
    and the bad launches. Returns {name: (returncode, stdout, stderr, seconds)} and paths."""
    tmp = tmp_path_factory.mktemp("distributed")
    port = _free_port()
    dead = _free_port()  # nothing listens here
    lonely = _free_port()
    run_dir = tmp / "run"
    procs, t0 = {}, time.monotonic()
    for pid in range(2):
        procs[f"worker{pid}"] = _launch(
            [sys.executable, str(WORKER), str(run_dir), str(tmp / f"out{pid}.npz"), str(port), "2",
             str(pid), str(STEPS), str(N_ITERS)], tmp, f"worker{pid}", SCOREDIFF_HOST_DEVICES="2")
    common = ["train", "--preset", "2d/ddpm", "--no-progress", "--set", "training.n_iters=2"]
    procs["no_coordinator"] = _launch(_cli(*common, "--workdir", str(tmp / "a"), "--coordinator",
                                           f"127.0.0.1:{dead}", "--num-processes", "2", "--process-id", "1",
                                           "--init-timeout", "2"), tmp, "no_coordinator")
    procs["no_peers"] = _launch(_cli(*common, "--workdir", str(tmp / "b"), "--coordinator",
                                     f"127.0.0.1:{lonely}", "--num-processes", "2", "--process-id", "0",
                                     "--init-timeout", "2"), tmp, "no_peers")
    procs["indivisible"] = _launch(_cli(*common, "--workdir", str(tmp / "d"), "--set", "training.batch_size=6"),
                                   tmp, "indivisible", SCOREDIFF_HOST_DEVICES="4")
    results = _finish_all(procs, t0)
    return {"results": results, "run_dir": run_dir, "out": tmp / "out0.npz", "tmp": tmp}


def _worker_ok(runs):
    for pid in range(2):
        rc, out, err, _ = runs["results"][f"worker{pid}"]
        assert rc == 0 and f"done {STEPS}" in out, f"worker {pid} failed (rc {rc}):\n{err[-4000:]}"


@pytest.fixture(scope="module")
def reference(runs, tmp_path_factory):
    """The same run trained in this process (its own device count; 1 unless XLA_FLAGS)."""
    from jax_impl.loop import train

    tiny_config = worker.train_config

    workdir = tmp_path_factory.mktemp("reference")
    state = train(tiny_config(N_ITERS), workdir, max_steps=STEPS, progress=False)
    return workdir, state, tiny_config


def _flat(tree) -> dict:
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


# --------------------------------------------------------------------------------- tests

def test_two_processes_train_the_same_parameters_as_one(runs, reference):
    _worker_ok(runs)
    with np.load(runs["out"]) as f:
        got = dict(f)
    assert int(got["num_devices"]) == 4 and int(got["num_processes"]) == 2
    _, state, _ = reference
    assert int(np.asarray(state.step)) == STEPS
    worst = 0.0
    for prefix, tree in (("params", state.params), ("ema", state.ema)):
        for k, v in _flat(tree).items():
            other = got[prefix + k]
            assert other.shape == v.shape and other.dtype == v.dtype
            worst = max(worst, float(np.max(np.abs(other - v))))
            np.testing.assert_allclose(other, v, rtol=1e-5, atol=1e-6, err_msg=prefix + k)
    print(f"\n2 processes x 2 devices vs {jax.device_count()} device(s) in 1 process, {STEPS} steps: "
          f"max |param difference| = {worst:.3g}" + (" (bit-identical)" if worst == 0 else
                                                       " (float32 reduction order)"))
    # process 0 alone wrote the run's files; the log has one line per step
    lines = (runs["run_dir"] / "log.jsonl").read_text().splitlines()
    assert len(lines) == STEPS
    assert (runs["run_dir"] / "samples" / f"step_{STEPS}.png").is_file()


def test_samples_across_processes_equal_one_process_samples(runs):
    """`scorediff sample`'s path over 2 processes x 2 devices: the same samples as one device
    (per-sample noise; float32 tolerance for the batch-size dependent matmul blocking)."""
    _worker_ok(runs)
    from scorediff import sampling

    w = worker

    with np.load(runs["out"]) as f:
        got, nfe = f["samples"], int(f["nfe"])
    plan = sampling.resolve(w.tiny_config(1), w.SAMPLER, num=w.NUM_SAMPLES)
    want, want_nfe = sampling.JaxSampler(plan, num_devices=1)(w.sampling_params(), jax.random.key(w.SEED))
    assert got.shape == (w.NUM_SAMPLES, 2) and nfe == want_nfe
    # 20 Euler-Maruyama steps of an untrained net amplify the float32 rounding of the
    # differently blocked matmuls (4 rows per device vs 16): measured 1e-5 of the samples' scale
    want = np.asarray(want)
    scale = float(np.max(np.abs(want)))
    diff = float(np.max(np.abs(got - want)))
    assert np.all(np.isfinite(got)) and diff <= 1e-4 * max(scale, 1.0), (diff, scale)
    print(f"\nsamples, 2 processes vs 1: max |difference| = {diff:.3g} (max |x| {scale:.3g})")


def test_their_checkpoint_restores_in_one_process_on_one_device(runs, reference, tmp_path):
    _worker_ok(runs)
    from jax_impl import train as jtrain
    from jax_impl.checkpoint import CheckpointManager
    from jax_impl.loop import train

    ref_dir, ref_state, tiny_config = reference
    config = tiny_config(N_ITERS)
    with CheckpointManager(runs["run_dir"] / "checkpoints") as ckpt:
        assert ckpt.latest_step() == STEPS
        target = jtrain.create_train_state(jax.random.key(config.train.training.seed), config)
        restored, data_state, _ = ckpt.restore(target=target, config=config.to_dict())
    with np.load(runs["out"]) as f:
        for k, v in _flat(restored.params).items():
            np.testing.assert_array_equal(v, f["params" + k])  # exactly what the processes held
    assert all(len(leaf.devices()) == 1 for leaf in jax.tree_util.tree_leaves(restored))
    assert int(restored.step) == STEPS
    # the data position is global: the same as the 1-process run's
    with CheckpointManager(ref_dir / "checkpoints") as ckpt:
        _, ref_data_state, _ = ckpt.restore(target=target, config=config.to_dict())
    assert data_state == ref_data_state
    # ... and the run resumes here, in one process, for its last steps
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(runs["run_dir"], resumed_dir)
    resumed = train(config, resumed_dir, progress=False)
    continued = train(config, ref_dir, progress=False)
    assert int(resumed.step) == int(continued.step) == N_ITERS
    for (k, a), b in zip(_flat(resumed.params).items(), _flat(continued.params).values()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=k)


def test_a_coordinator_that_never_answers_fails_in_bounded_time(runs):
    for name in ("no_coordinator", "no_peers"):
        rc, out, err, seconds = runs["results"][name]
        lines = _error_lines(err)
        assert rc == 2 and len(lines) == 1, f"{name}: rc {rc}\n{err[-3000:]}"
        assert lines[0].startswith("scorediff train: error: ")
        assert "--init-timeout 2" in lines[0] or "waited 2 s" in lines[0], lines[0]
        assert "Traceback" not in err and "Check failure" not in err
        print(f"\n{name}: exit {rc} after {seconds:.1f} s (2 s timeout + start-up): {lines[0]}")
    assert "did not answer" in _error_lines(runs["results"]["no_coordinator"][2])[0]
    assert "to join" in _error_lines(runs["results"]["no_peers"][2])[0]


def test_bad_process_id_and_indivisible_batch_are_clear_errors(runs, capsys, tmp_path):
    # the process id is checked before anything starts: the command line's own call, in-process
    from scorediff.cli import main

    capsys.readouterr()
    rc = main(["train", "--preset", "2d/ddpm", "--no-progress", "--set", "training.n_iters=2", "--workdir",
               str(tmp_path / "c"), "--coordinator", f"127.0.0.1:{_free_port()}", "--num-processes", "2",
               "--process-id", "2"])
    err = capsys.readouterr().err
    assert rc == 2 and _error_lines(err) == [
        "scorediff train: error: --process-id 2 is out of range for --num-processes 2 (0..1)"], err[-2000:]
    assert not (tmp_path / "c").exists()
    rc, _, err, seconds = runs["results"]["indivisible"]
    lines = _error_lines(err)
    assert rc == 2 and len(lines) == 1, err[-3000:]
    assert "training.batch_size=6 is not divisible by the 4 devices" in lines[0], lines[0]
    print(f"indivisible: exit 2 after {seconds:.1f} s: {lines[0]}")


@pytest.mark.parametrize("kw, words", [
    (dict(coordinator="localhost", num_processes=2, process_id=0), "not of the form HOST:PORT"),
    (dict(coordinator="localhost:0", num_processes=2, process_id=0), "port must be 1..65535"),
    (dict(coordinator="host:99999", num_processes=2, process_id=0), "port must be 1..65535"),
    (dict(coordinator="a:1", num_processes=0, process_id=0), "--num-processes must be >= 1"),
    (dict(coordinator="a:1", num_processes=2, process_id=-1), "--process-id must be >= 0"),
    (dict(coordinator="a:1", num_processes=2), "needs --process-id"),
    (dict(num_processes=2, process_id=0), "need --coordinator"),
    (dict(coordinator="a:1", num_processes=2, process_id=1, init_timeout=0), "--init-timeout"),
    (dict(coordinator="a:1", num_processes=True, process_id=0), "--num-processes must be an integer"),
])
def test_launch_flags_are_validated_before_anything_starts(kw, words):
    with pytest.raises(ValueError) as info:
        distributed.launch_spec(**kw)
    assert words in str(info.value)


def test_launch_spec_and_host_device_values():
    assert not distributed.launch_spec().distributed
    spec = distributed.launch_spec("[::1]:1234", 3, 2, 5)
    assert spec.distributed and spec.num_processes == 3 and spec.init_timeout == 5.0
    assert distributed.parse_coordinator("[::1]:1234") == ("::1", 1234)
    assert distributed.parse_coordinator("node-7.cluster:8476") == ("node-7.cluster", 8476)
    assert distributed.launch_spec("auto").coordinator == "auto"  # counts detected by jax
    assert distributed.configure_host_devices("1") is None  # "1": JAX's own setting kept
    for bad in ("0", "two", "-3", ""):
        with pytest.raises(ValueError, match="SCOREDIFF_HOST_DEVICES"):
            distributed.configure_host_devices(bad)
    # JAX has started in this process: another split is refused with the variable's name
    jax.devices()
    with pytest.raises(ValueError, match="SCOREDIFF_HOST_DEVICES='7'"):
        distributed.configure_host_devices("7")
    assert distributed.initialize(distributed.launch_spec()) is False
    assert distributed.all_agree(True) and not distributed.all_agree(False)


def test_loops_check_the_labels_and_torch_trains_a_class_conditional_run(tmp_path):
    from jax_impl.loop import train as jax_train
    from torch_ref.loop import train as torch_train

    for train in (jax_train, torch_train):  # 3 components + the null class need 4
        with pytest.raises(ValueError, match=r"model.num_classes=3 leaves 2 data classes \(the last class "
                                             r"is label_dropout's null class\).*reach 2.*>= 4"):
            train(worker.tiny_config(2, num_classes=3, label_dropout=0.1), tmp_path / train.__module__)
    state = torch_train(worker.train_config(2), tmp_path / "torch", progress=False)
    assert int(state.step) == 2 and (tmp_path / "torch" / "samples" / "step_2.png").is_file()
