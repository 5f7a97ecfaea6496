"""The benchmark harness (``python -m benchmarks.run``, issue 11) and the CLI sampler's
automatic batch sharding (``scorediff.sampling.JaxSampler``).

* ``test_tiny_suite`` (default suite; ~51 s wall / ~82 CPU s on the quiet 2-core machine,
  most of it the 16 x 2 XLA compiles under the session's fast-compile flags): the one command
  runs EVERY configuration of ``benchmarks.cases`` at its tiny size (one repeat) in a
  subprocess, with every contender except ``torch.compile`` (whose compile alone costs
  ~20-40 s of CPU even for the tiny MLP: ``test_torch_compile_row``, marked slow); each
  contender's output must agree with the ``jax`` row's, and the JSON result and the
  markdown table must be written. No timing is asserted.
* ``test_sampler_shards_the_batch``: on a CPU host split into 4 devices (a subprocess),
  ``JaxSampler`` splits the batch over the largest device count dividing it and returns the
  unsharded program's samples (PC from a key, PC / DDPM / DDIM on pre-drawn inputs).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(args, timeout=3600, env_extra=None, keep_xla_flags=False):  # a hang guard only
    env = dict(os.environ)
    if not keep_xla_flags:
        env.pop("XLA_FLAGS", None)  # the main process runs on JAX's default device set-up
    env.update(env_extra or {})
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _check_result(out_dir: Path, names, contenders_of):
    results = list(out_dir.glob("cpu-tiny-*.json"))
    assert len(results) == 1, sorted(p.name for p in out_dir.iterdir())
    doc = json.loads(results[0].read_text())
    md = (out_dir / "latest.md").read_text()
    env = doc["environment"]
    for key in ("cpu_model", "usable_cores", "versions", "torch_num_threads", "jax_devices", "matmul_peak"):
        assert key in env, key
    got = [b["name"] for b in doc["benchmarks"]]
    assert got == list(names)
    for b in doc["benchmarks"]:
        assert set(b["variants"]) == set(contenders_of[b["name"]]), b["name"]
        for name, s in b["variants"].items():
            assert s["agrees"], (b["name"], name, s["max_abs_diff_vs_jax"], b["output_max_abs"])
            assert len(s["times_s"]) == 1
        assert f"`{b['name']}`" in md
    assert "## Targets (issue 11)" in md
    return doc


def test_tiny_suite(tmp_path):
    from benchmarks import cases as C

    cases = C.all_cases(C.TINY)
    rows = [c for c in C.CONTENDERS if c != "torch-compile"]
    proc = _run(["-m", "benchmarks.run", "--tiny", "--threads", "1", "--out", str(tmp_path),
                 "--contenders", ",".join(rows)],
                # the session's fast-compile flags (conftest; no device count): outputs still
                # agree to the cases' tolerances, the compiles take half the time
                keep_xla_flags=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    expected = {c.name: [r for r in c.contenders if r != "torch-compile"] for c in cases}
    _check_result(tmp_path, [c.name for c in cases], expected)


@pytest.mark.slow
def test_torch_compile_row(tmp_path):
    from benchmarks import cases as C

    case = next(c for c in C.all_cases(C.TINY) if "torch-compile" in c.contenders)
    proc = _run(["-m", "benchmarks.run", "--tiny", "--out", str(tmp_path), "--only", case.name,
                 "--contenders", "torch,torch-compile", "--no-split", "--threads", "1"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    _check_result(tmp_path, [case.name], {case.name: ["jax", "torch", "torch-compile"]})


def test_report_renders_a_saved_result(tmp_path):
    from benchmarks import report

    stats = {"median_s": 0.5, "min_s": 0.4, "max_s": 0.6, "times_s": [0.5], "first_call_s": 1.0,
             "compile_s": 0.2, "note": "", "peak_rss_mib": 3.0, "ratio_to_baseline": 1.0,
             "max_abs_diff_vs_jax": 0.0, "agrees": True, "samples_per_s": 128.0, "per_nfe_s": 5e-4,
             "flops_per_s": 1e9}
    bench = {"name": "mlp_em_b64", "title": "t", "net": "mlp", "job": "em", "batch": 64, "steps": 1000,
             "nfe": 1000, "flops_per_call": 5e8, "tolerance": 1e-3, "output_max_abs": 2.0, "all_agree": True,
             "variants": {"jax": stats, "torch": dict(stats, median_s=12.0, ratio_to_baseline=24.0),
                          "diffusionjax": dict(stats, median_s=0.6, ratio_to_baseline=1.2)}}
    env = {"cpu_model": "x", "usable_cores": 2, "cpu_count": 2, "versions": {"jax": "0"}, "jax_backend": "cpu",
           "jax_device_kind": "cpu", "jax_devices": ["cpu:0"], "torch_device": "cpu", "torch_num_threads": 2,
           "torch_num_interop_threads": 2, "python": "3", "xla_flags": "", "loadavg_start": [0.0],
           "loadavg_end": [0.0], "matmul_peak": {"n": 8, "xla_flops_per_s": 1e10, "torch_flops_per_s": 2e10,
                                                 "peak_flops_per_s": 2e10}}
    md = report.markdown({"mode": "full", "started_utc": "now", "wall_s": 1.0, "environment": env,
                          "benchmarks": [bench]}, source="r.json")
    assert "**24.0x** torch eager (target >= 20x: met)" in md
    assert "1.20x diffusionjax (ahead)" in md
    assert "5%" in md  # 1e9 FLOP/s of a 2e10 peak


_SHARDED_SAMPLER = textwrap.dedent("""
    import sys
    from jax_impl import sharding
    sharding.configure_host_devices(4)
    import jax, jax.numpy as jnp, numpy as np
    from scorediff import sampling
    from spec.configs import DiffusionConfig, VPSDEConfig
    from spec.model_configs import MLPConfig
    from spec.train_config import RunConfig, TrainConfig
    from jax_impl import train as jt

    assert sampling.shard_devices(8, 4) == 4 and sampling.shard_devices(6, 4) == 3
    assert sampling.shard_devices(7, 4) == 1 and sampling.shard_devices(2, 4) == 2
    mlp = MLPConfig(data_dim=2, hidden_dims=(16, 16))
    sde_run = RunConfig(model=mlp, process=VPSDEConfig(N=30), train=TrainConfig())
    dif_run = RunConfig(model=mlp, process=DiffusionConfig(steps=40, noise_schedule="linear"),
                        train=TrainConfig())
    worst = 0.0
    key_path = (jax.random.key(3),)
    for run, default, num, want_devices, paths in (
            (sde_run, {"name": "pc"}, 8, 4, ("key", "inputs")),
            (dif_run, {"name": "ddpm"}, 8, 4, ("inputs",)),
            (dif_run, {"name": "ddim", "steps": 10}, 6, 3, ("key",)),
            (sde_run, {"name": "ode", "method": "euler", "steps": 10}, 7, 1, ())):
        st = jt.create_train_state(jax.random.key(1), run)
        variables = {"params": st.params, **st.constants}
        plan = sampling.resolve(run, default, num=num)
        one = sampling.JaxSampler(plan, num_devices=1)
        split = sampling.JaxSampler(plan)
        assert one.devices == 1 and split.devices == want_devices, (plan.describe(), split.devices)
        x_T, noise = sampling.draw_inputs(plan, 0)
        noise = None if noise is None else jax.tree_util.tree_map(jnp.asarray, noise)
        for path in paths:
            args = (jax.random.key(3),) if path == "key" else (None, jnp.asarray(x_T), noise)
            a, nfe_a = one(variables, *args)
            b, nfe_b = split(variables, *args)
            assert nfe_a == nfe_b
            assert len(b.sharding.device_set) == want_devices, b.sharding
            a, b = np.asarray(a), np.asarray(b)
            assert a.shape == b.shape == plan.shape
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5, err_msg=plan.describe())
            worst = max(worst, float(np.max(np.abs(a - b))))
    print("OK", worst)
""")


def test_sampler_shards_the_batch():
    proc = _run(["-c", _SHARDED_SAMPLER])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "OK" in proc.stdout
