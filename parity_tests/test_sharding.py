"""``jax_impl.sharding``: results on 8 host devices equal results on 1 (issue 10, in-process).

One subprocess (``_sharding_subprocess.py``) splits the CPU into 8 host devices
(``configure_host_devices(8)``, i.e. ``jax_num_cpu_devices``) and computes, in that one
process, every check on a 1-device mesh (``jax.devices()[:1]``) and on the 8-device mesh;
it prints the differences as JSON, asserted here:

(a) training steps (the MLP on 2-D points; the MLP on 4x4 images; the MLP with
    ``shard_params=True`` on a 4 x 2 mesh): equal within the float32 reduction order (the
    batch-mean loss and gradients are sums over the global batch, in a different order on
    8 devices); the 1-device mesh equals the unsharded ``train.make_train_step`` exactly;
    dropout masks (one key per step, drawn inside the network) are the same bits on 8
    devices as on 1 (jax's partitionable threefry);
(b) samples of PC (reverse diffusion + Langevin), DDPM ancestral, DDIM (eta 0.5) and the
    probability-flow ODE (RK4; with ``-m slow`` also adaptive dopri5 and ALD) for the same
    key: the same bits, except PC within the float32 reduction order of the Langevin step
    size's batch mean; explicit ``x_T`` / ``noise`` give the plain sampler's bits, and a
    sample does not depend on the batch it is drawn in;
(c) the Langevin step size on 8 devices is the GLOBAL batch mean (numpy float64 oracle;
    the per-shard means differ);
(d) a global batch not divisible by the device count raises ValueError naming batch_size.

The in-process tests (1 device) cover ``per_sample_normal``, the argument errors and
``configure_host_devices`` after the backend started.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_impl import sharding as S

ROOT = Path(__file__).resolve().parents[1]
HELPER = Path(__file__).with_name("_sharding_subprocess.py")

#: float32 reduction-order tolerance of a few training steps at lr 1e-3. Adam's first
#: updates are about lr * g / |g| per entry, so a last-bit difference in a near-zero
#: gradient entry can move that parameter by up to ~lr; measured (params, EMA; 3 steps):
#: 7.9e-6 (MLP, 8 devices), 3.6e-5 (MLP, 4 x 2 mesh with shard_params), 7.9e-5 (MLP on
#: images, --full); the losses agree to 2e-7 / 1e-6
TRAIN_ATOL = 2e-4
#: relative tolerance (max |8 dev - 1 dev| / max |1 dev|) of samples with no batch
#: coupling: the arithmetic is per sample, so only XLA's shape-dependent code generation
#: (a few float32 ulps) may differ; every such sampler measured exactly equal (0.0) with
#: its default noise; pre-drawn x_T / noise differed by 1.2e-7 relative (1-2 ulps)
SAMPLE_RTOL = 1e-6
#: the PC sampler is coupled through the Langevin step size's global batch mean (float32
#: reduction order; measured 7.0e-7 absolute after 30 steps)
COUPLED_RTOL = 1e-5


# ------------------------------------------------------------------ in-process (1 device)


def test_per_sample_normal_rows_do_not_depend_on_batch_or_offset():
    key = jax.random.key(3)
    big = np.asarray(S.per_sample_normal(key, (6, 2, 3)))
    assert big.shape == (6, 2, 3) and big.dtype == np.float32
    for j in range(6):
        row = jax.random.normal(jax.random.fold_in(key, j), (2, 3), jnp.float32)
        np.testing.assert_array_equal(big[j], np.asarray(row))
    np.testing.assert_array_equal(np.asarray(S.per_sample_normal(key, (2, 2, 3), offset=4)), big[4:])
    traced = jax.jit(lambda o: S.per_sample_normal(key, (3, 2, 3), offset=o))(jnp.int32(1))
    np.testing.assert_array_equal(np.asarray(traced), big[1:4])
    u = np.asarray(S.per_sample_random(jax.random.uniform, key, (4, 5)))
    np.testing.assert_array_equal(u[2], np.asarray(jax.random.uniform(jax.random.fold_in(key, 2), (5,), jnp.float32)))
    with pytest.raises(ValueError, match="shape"):
        S.per_sample_normal(key, ())


def test_argument_errors_name_the_argument():
    n = len(jax.devices())
    for kwargs, name in [({"num_devices": n + 1}, "num_devices"), ({"num_devices": 0}, "num_devices"),
                         ({"num_devices": 1, "model_parallel": 2}, "model_parallel"),
                         ({"devices": ["cpu"]}, "devices")]:
        with pytest.raises(ValueError, match=name):
            S.make_mesh(**kwargs)
    mesh = S.make_mesh(1)
    assert dict(mesh.shape) == {S.DATA_AXIS: 1, S.MODEL_AXIS: 1}
    assert S.check_divisible(5, mesh) == 5
    for bad in (0, 2.0, True):
        with pytest.raises(ValueError, match="global_batch"):
            S.check_divisible(bad, mesh, name="global_batch")
    with pytest.raises(TypeError, match="mesh"):
        S.batch_sharding("data")
    with pytest.raises(ValueError, match="n must be"):
        S.configure_host_devices(0)


def test_configure_host_devices_after_backend_start():
    have = len(jax.devices("cpu"))  # the backend has started
    assert S.configure_host_devices(have) == have
    with pytest.raises(RuntimeError, match="already started"):
        S.configure_host_devices(have + 1)


def test_one_device_placement_roundtrip():
    mesh = S.make_mesh(1)
    x, y = np.arange(8, dtype=np.float32).reshape(4, 2), np.arange(4, dtype=np.int32)
    bx, by = S.shard_batch((x, y), mesh)
    assert bx.sharding == S.batch_sharding(mesh) and bx.shape == (4, 2)
    np.testing.assert_array_equal(S.to_host(by), y)
    with pytest.raises(ValueError, match="disagree"):
        S.shard_batch((x, y[:3]), mesh)
    rep = S.replicate({"a": np.ones(3)}, mesh)
    assert rep["a"].sharding == S.replicated_sharding(mesh)


def test_sharded_train_step_lowers_ahead_of_time():
    """``step.lower(state, batch).compile()`` is the step's own program: the same update."""
    from spec.configs import VPSDEConfig
    from spec.model_configs import MLPConfig
    from spec.train_config import RunConfig, TrainConfig
    from jax_impl import train as jt

    cfg = RunConfig(model=MLPConfig(data_dim=2, hidden_dims=(8,)), process=VPSDEConfig(N=10),
                    train=TrainConfig().with_overrides(["training.batch_size=4"]))
    mesh = S.make_mesh(1)
    step = S.make_sharded_train_step(cfg, mesh)
    x = np.linspace(-1.0, 1.0, 8, dtype=np.float32).reshape(4, 2)
    fresh = lambda: S.shard_train_state(jt.create_train_state(jax.random.key(0), cfg), mesh)  # noqa: E731
    compiled = step.lower(fresh(), x).compile()
    a, ma = compiled(fresh(), S.shard_batch(x, mesh))
    b, mb = step(fresh(), x)
    assert int(a.step) == int(b.step) == 1
    np.testing.assert_array_equal(np.asarray(ma["loss"]), np.asarray(mb["loss"]))
    for u, v in zip(jax.tree_util.tree_leaves(a.params), jax.tree_util.tree_leaves(b.params)):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


# ------------------------------------------------------------------- 8 host devices


def _run_subprocess(*args: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, str(HELPER), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["devices"] == 8
    return out


@pytest.fixture(scope="module")
def eight():
    return _run_subprocess()


def _check_training(r):
    assert r["step"] > 0 and r["specs_8"] == ["P()"]  # replicated parameters
    for what in ("params_8_vs_1", "ema_8_vs_1", "opt_state_8_vs_1", "loss_8_vs_1"):
        assert r[what] <= TRAIN_ATOL, (what, r)
    if "plain_vs_1dev" in r:
        assert r["plain_vs_1dev"] == 0.0  # the 1-device mesh runs the plain step's program


def test_training_8_devices_equals_1(eight):
    _check_training(eight["train_mlp"])


def test_training_with_sharded_params_equals_1(eight):
    r = eight["train_mlp"]
    assert "P(None, 'model')" in r["shard_params_specs"], r["shard_params_specs"]
    assert r["shard_params_vs_1"] <= TRAIN_ATOL and r["shard_params_loss_vs_1"] <= TRAIN_ATOL, r


def test_dropout_masks_do_not_depend_on_sharding(eight):
    assert eight["dropout_mask_8_vs_1"] == 0.0


def test_shard_batch_of_pairs(eight):
    r = eight["shard_batch_xy"]
    assert r == {"specs": ["P('data',)"], "shards": 8, "equal": True}


#: samplers whose samples are not coupled through a batch statistic
PER_SAMPLE_SAMPLERS = ("ddpm_ancestral", "ddim_eta0.5", "ode_rk4", "ode_dopri5", "ald")


def _check_samplers(samplers):
    for name, r in samplers.items():
        assert r["finite"] and r["spec_8"] == "P('data',)" and r["nfe_spec"] == "P()", (name, r)
        assert r["plain_vs_1"] in (None, 0.0), (name, r)  # 1-device mesh == plain jit
        tol = SAMPLE_RTOL if name in PER_SAMPLE_SAMPLERS else COUPLED_RTOL
        assert r["8_vs_1_rel"] <= tol, (name, r)


def test_samples_8_devices_equal_1(eight):
    assert set(eight["samplers"]) == {"pc_reverse_diffusion_langevin", "ddpm_ancestral",
                                      "ddim_eta0.5", "ode_rk4"}
    _check_samplers(eight["samplers"])


def test_explicit_noise_and_batch_independence(eight):
    assert eight["explicit_noise_8_vs_plain_rel"] <= SAMPLE_RTOL
    assert eight["batch_prefix_diff"] == 0.0  # sample j does not depend on the batch size


def test_langevin_step_size_is_the_global_batch_mean(eight):
    r = eight["langevin_step_size"]
    assert r["8_vs_1"] <= 1e-6 * r["value"]
    assert r["8_vs_global_numpy"] <= 1e-5 * r["value"]
    assert r["per_shard_spread"] > 1e-2 * r["value"]  # a per-device mean would differ


def test_indivisible_global_batch_raises(eight):
    assert set(eight["indivisible"]) == {"shard_batch", "sampler", "train_step"}
    for what, msg in eight["indivisible"].items():
        assert msg is not None and "batch_size=12" in msg and "8 devices" in msg, (what, msg)


@pytest.mark.slow
def test_full_run_8_devices_equals_1():
    """``--full``: also the unsharded train step (== the 1-device mesh, exactly), the MLP on
    4x4 images, the adaptive dopri5 ODE and ALD."""
    out = _run_subprocess("--full")
    for name in ("train_mlp", "train_mlp_image"):
        _check_training(out[name])
        assert out[name]["plain_vs_1dev"] == 0.0
    assert {"ode_dopri5", "ald"} <= set(out["samplers"])
    _check_samplers(out["samplers"])
