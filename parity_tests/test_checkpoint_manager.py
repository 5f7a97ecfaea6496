"""``jax_impl.checkpoint.CheckpointManager``: exact round trip, keep-K, atomicity, one clear error.

* any pytree (NamedTuple / dict / tuple, a typed PRNG key, None, python scalars) comes back
  bit for bit, with the data iterator state and the config dict;
* ``max_to_keep`` keeps the newest K; ``latest_step`` / ``all_steps``; a step is never
  overwritten; a NaN / Inf state is never written;
* every kind of damage -- a truncated, deleted or bit-flipped file in the newest step, a
  directory that is not a checkpoint, a step directory passed as the manager's directory,
  a missing step, another model's or another config's checkpoint -- raises ONE
  ``CheckpointError`` naming the directory and the mismatch, and the older intact step
  still restores by number;
* SIGKILL during a save (a subprocess killed as soon as orbax's temporary directory
  appears): the half-written step is never listed, every listed step restores exactly, and
  the next manager saves on.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_impl.checkpoint import CheckpointError, CheckpointManager

ROOT = Path(__file__).resolve().parents[1]
# orbax runs its I/O on private asyncio loops; a coroutine it abandons may be collected after
# its loop closed ("Exception ignored ... Event loop is closed"), which is orbax's noise, not ours
pytestmark = pytest.mark.filterwarnings("ignore:Exception ignored in:pytest.PytestUnraisableExceptionWarning")


class _State(NamedTuple):
    step: jax.Array
    params: dict
    ema: tuple
    rng: jax.Array
    sampler_state: object
    count: int


def _state(seed: int = 0, width: int = 3) -> _State:
    r = np.random.default_rng(seed)
    params = {"Dense_0": {"kernel": jnp.asarray(r.normal(size=(2, width)), jnp.float32),
                          "bias": jnp.asarray(r.normal(size=(width,)), jnp.float32)},
              "Dense_1": {"kernel": jnp.asarray(r.normal(size=(width, 2)), jnp.float64)}}
    return _State(step=jnp.asarray(seed, jnp.int32), params=params,
                  ema=(jax.tree.map(lambda x: x * 0.5, params),),
                  rng=jax.random.fold_in(jax.random.key(7), seed), sampler_state=None, count=seed)


def _leaves(tree):
    return [np.asarray(jax.random.key_data(x)) if jnp.issubdtype(jnp.result_type(x), jax.dtypes.prng_key)
            else np.asarray(x) for x in jax.tree.leaves(tree)]


def _assert_same(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(_leaves(a), _leaves(b)):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(x, y)


CONFIG = {"model": {"type": "MLPConfig", "nf": 8}, "train": {"optim": {"lr": 1e-3}}}


@pytest.fixture
def two_steps(tmp_path):
    """A directory holding intact steps 1 and 2 (states _state(1), _state(2))."""
    d = tmp_path / "ck"
    with CheckpointManager(d, max_to_keep=3) as m:
        for s in (1, 2):
            m.save(s, _state(s), data_state={"epoch": 0, "index": s}, config=CONFIG)
    return d


def test_round_trip_exact(two_steps):
    with CheckpointManager(two_steps) as m:
        assert m.all_steps() == [1, 2] and m.latest_step() == 2
        state, data_state, config = m.restore(target=_state(0))
        _assert_same(state, _state(2))
        assert type(state.count) is int and state.count == 2 and state.sampler_state is None
        assert jnp.issubdtype(state.rng.dtype, jax.dtypes.prng_key)
        assert data_state == {"epoch": 0, "index": 2} and config == CONFIG
        state1, data_state1, _ = m.restore(1, target=_state(0))
        _assert_same(state1, _state(1))
        assert data_state1["index"] == 1
        # the restored key continues the same stream
        np.testing.assert_array_equal(jax.random.normal(state.rng, (3,)), jax.random.normal(_state(2).rng, (3,)))


def test_keep_k_latest_and_no_overwrite(tmp_path):
    with CheckpointManager(tmp_path / "ck", max_to_keep=2) as m:
        assert m.latest_step() is None and m.all_steps() == []
        for s in (10, 20, 30, 40):
            path = m.save(s, _state(s), data_state={"index": s}, config=CONFIG)
            assert path == tmp_path / "ck" / str(s) and path.is_dir()
        assert m.all_steps() == [30, 40] and m.latest_step() == 40
        assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["30", "40"]
        with pytest.raises(CheckpointError, match="step 40 already exists"):
            m.save(40, _state(1), data_state={}, config=CONFIG)
        _assert_same(m.restore(target=_state(0))[0], _state(40))


def test_never_saves_nan(tmp_path):
    bad = _state(1)._replace(params={**_state(1).params, "Dense_1": {"kernel": jnp.full((3, 2), jnp.nan)}})
    with CheckpointManager(tmp_path / "ck") as m:
        with pytest.raises(ValueError, match="params/Dense_1/kernel.*NaN"):
            m.save(5, bad, data_state={}, config=CONFIG)
        assert m.all_steps() == []


def test_bad_arguments(tmp_path):
    with pytest.raises(TypeError, match="directory"):
        CheckpointManager(3)
    with pytest.raises(ValueError, match="max_to_keep"):
        CheckpointManager(tmp_path / "x", max_to_keep=0)
    with CheckpointManager(tmp_path / "ck") as m:
        with pytest.raises(TypeError, match="data_state must be JSON"):
            m.save(1, _state(1), data_state={"x": object()}, config=CONFIG)


def _data_files(step_dir: Path) -> list[Path]:
    return sorted(p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d")


def _truncate(p: Path):
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _flip(p: Path):
    b = bytearray(p.read_bytes())
    b[len(b) // 2] ^= 0xFF
    p.write_bytes(bytes(b))


# each damage: (what to do to step 2, the words the error must contain)
DAMAGE = {
    "truncated_array_files": (lambda d: [_truncate(p) for p in _data_files(d)], "state arrays"),
    "deleted_array_files": (lambda d: [p.unlink() for p in _data_files(d)], "state arrays"),
    "bit_flip_in_arrays": (lambda d: [_flip(p) for p in _data_files(d)], "damaged"),
    "deleted_manifest": (lambda d: (d / "state" / "manifest.ocdbt").unlink(), "state arrays"),
    "truncated_meta": (lambda d: _truncate(d / "meta" / "metadata"), "metadata"),
    "deleted_meta": (lambda d: (d / "meta" / "metadata").unlink(), "metadata"),
    "deleted_state_dir": (lambda d: shutil.rmtree(d / "state"), "missing"),
    "deleted_step_metadata": (lambda d: (d / "_CHECKPOINT_METADATA").unlink(), "missing"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_checkpoint_one_clear_error(two_steps, damage):
    do, words = DAMAGE[damage]
    do(two_steps / "2")
    with CheckpointManager(two_steps) as m:
        with pytest.raises(CheckpointError) as info:
            m.restore(target=_state(0))
        msg = str(info.value)
        assert str(two_steps / "2") in msg and words in msg, msg
        assert info.value.__cause__ is None and info.value.__suppress_context__
        _assert_same(m.restore(1, target=_state(0))[0], _state(1))  # the older intact step


def test_not_a_checkpoint_directory(tmp_path, two_steps):
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("hello")
    (junk / "17").mkdir()  # a step-like name without a checkpoint inside
    with CheckpointManager(junk) as m:
        assert m.all_steps() in ([], [17])
        with pytest.raises(CheckpointError, match=str(junk)):
            m.restore(target=_state(0))
    with pytest.raises(CheckpointError, match="one checkpoint step.*pass its parent"):
        CheckpointManager(two_steps / "2")
    with pytest.raises(CheckpointError, match="is a file"):
        CheckpointManager(junk / "notes.txt")
    with CheckpointManager(tmp_path / "empty") as m:
        with pytest.raises(CheckpointError, match="no complete checkpoint.*empty"):
            m.restore(target=_state(0))


def test_missing_step_lists_the_complete_ones(two_steps):
    with CheckpointManager(two_steps) as m:
        with pytest.raises(CheckpointError, match=r"step 5 is not a complete checkpoint.*\[1, 2\]"):
            m.restore(5, target=_state(0))


def test_other_model_or_config(two_steps):
    with CheckpointManager(two_steps) as m:
        with pytest.raises(CheckpointError, match=r"another model: .*'params/Dense_0/kernel' is float32\(2, 3\) "
                                                  r"in the checkpoint but float32\(2, 5\)"):
            m.restore(target=_state(0, width=5))
        other = _state(0)._replace(params={**_state(0).params, "Dense_2": {"kernel": jnp.zeros((2, 2))}})
        with pytest.raises(CheckpointError, match="another model.*params/Dense_2/kernel.*not in the checkpoint"):
            m.restore(target=other)
        cast = _state(0)._replace(step=jnp.asarray(0, jnp.int64))
        with pytest.raises(CheckpointError, match="'step' is int32.*int64"):
            m.restore(target=cast)
        given = {"model": {"type": "MLPConfig", "nf": 16}, "train": {"optim": {"lr": 1e-3}}}
        with pytest.raises(CheckpointError, match=r"another config; differing fields: model\.nf \(saved 8, given 16\)"):
            m.restore(target=_state(0), config=given)
        assert m.restore(target=_state(0), config=CONFIG)[2] == CONFIG


_SAVER = textwrap.dedent("""
    import sys, jax, jax.numpy as jnp
    from jax_impl.checkpoint import CheckpointManager
    m = CheckpointManager(sys.argv[1], max_to_keep=100)
    start = (m.latest_step() or 0) + 1
    for s in range(start, start + 1000):
        big = {"w": jnp.full((1 << 21,), float(s), jnp.float32), "step": jnp.asarray(s, jnp.int32)}
        m.save(s, big, data_state={"index": s}, config={"k": 1})
        print("saved", s, flush=True)
""")


def _target():
    return {"w": jnp.zeros((1 << 21,), jnp.float32), "step": jnp.asarray(0, jnp.int32)}


def test_sigkill_during_save_never_picks_a_half_written_step(tmp_path):
    script = tmp_path / "saver.py"
    script.write_text(_SAVER)
    d = tmp_path / "ck"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    killed_mid_save = 0
    for trial in range(2):
        proc = subprocess.Popen([sys.executable, str(script), str(d)], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            assert proc.stdout.readline().startswith("saved")  # one complete step first
            deadline = time.time() + 60
            while time.time() < deadline:  # kill as soon as a temporary step directory appears
                if any(not p.name.isdigit() for p in d.iterdir()):
                    os.kill(proc.pid, signal.SIGKILL)
                    killed_mid_save += 1
                    break
                time.sleep(0.002)
            else:
                os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.wait()
        assert proc.returncode == -signal.SIGKILL
        leftovers = [p.name for p in d.iterdir() if not p.name.isdigit()]
        with CheckpointManager(d, max_to_keep=100) as m:
            steps = m.all_steps()
            assert steps and all(str(s) in {p.name for p in d.iterdir()} for s in steps)
            for s in steps:
                state, data_state, _ = m.restore(s, target=_target())
                assert int(state["step"]) == s and data_state == {"index": s}
                assert float(state["w"][0]) == s and float(state["w"][-1]) == s
        if trial == 0:
            assert leftovers, "the kill did not land during a save"
    assert killed_mid_save >= 1
    with CheckpointManager(d, max_to_keep=100) as m:  # the next manager saves on
        nxt = m.latest_step() + 1
        m.save(nxt, {"w": jnp.full((1 << 21,), float(nxt), jnp.float32), "step": jnp.asarray(nxt, jnp.int32)},
               data_state={"index": nxt}, config={"k": 1})
        assert m.latest_step() == nxt
