"""The benchmark harness (``python -m benchmarks.run``, issue 11) and the CLI sampler's
automatic batch sharding (``scorediff.sampling.JaxSampler``).

* ``test_tiny_suite`` (default suite; ~51 s wall / ~82 CPU s on the quiet 2-core machine,
  most of it the 16 x 2 XLA compiles under the session's fast-compile flags): the one command
  runs EVERY configuration of ``benchmarks.cases`` at its tiny size (one repeat) in a
  subprocess, with every contender except ``torch.compile`` (whose compile alone costs
  ~20-40 s of CPU even for the tiny MLP: ``test_torch_compile_row``, marked slow); each
  contender's output must agree with the ``jax`` row's, and the JSON result and the
  markdown table must be written. No timing is asserted.
* ``test_measure_settles_short_calls``: ``timing.measure`` on a fake clock (settle calls
  before the timed calls of short contenders, not of long ones; decided in round one where
  the first call compiled).
* ``test_only_whole_runs_are_latest``, ``test_readme_block``: which runs become ``latest.md``
  and the README's table, and that the README's generated block is replaced in place.
* ``test_kernels_*``: ``benchmarks.kernels`` (a convolution's three kernels under both XLA:CPU
  settings and torch, against a float64 oracle).
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
    md = results[0].with_suffix(".md").read_text()
    # a smoke run never stands in for the last whole run
    assert not (out_dir / "latest.md").exists()
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
            # every row, the jax-split worker's too, knows its process's CPU time
            assert len(s["cpu_s"]) == 1 and s["cores_used"] is not None and s["cores_used"] >= 0, name
        assert f"`{b['name']}`" in md
    assert "| cores |" in md
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


def test_measure_settles_short_calls(monkeypatch):
    """``timing.measure`` on a fake clock: a short variant runs an untimed settle call before
    each timed call (its time kept in ``after_switch_s``), a long one does not, and one whose
    first call compiled decides in its first round; the medians come from the timed calls."""
    from benchmarks import timing

    clock, cpu = [0.0], [0.0]
    monkeypatch.setattr(timing.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(timing.time, "process_time", lambda: cpu[0])

    def variant(name, durations, cores=1.5):
        calls = []

        def run():
            d = durations[min(len(calls), len(durations) - 1)]
            calls.append(d)
            clock[0] += d
            cpu[0] += cores * d
            return name
        return timing.Variant(name, run), calls

    # short: first 0.1 s, then alternating after-switch 0.03 / settled 0.01 s
    short, short_calls = variant("short", [0.1] + [0.03, 0.01] * 3)
    long_, long_calls = variant("long", [2.0, 1.0, 1.1, 1.2])
    # compiles on the first call (5 s), then 0.02 s calls: decided in round one
    comp, comp_calls = variant("compiled", [5.0, 0.04, 0.02, 0.04, 0.02, 0.04, 0.02])
    stats, outs = timing.measure([short, long_, comp], repeats=3)
    assert outs == {"short": "short", "long": "long", "compiled": "compiled"}
    assert len(short_calls) == 1 + 2 * 3 and len(long_calls) == 1 + 3 and len(comp_calls) == 1 + 2 * 3
    s, lg, c = stats["short"], stats["long"], stats["compiled"]
    assert s["settle"] and s["times_s"] == pytest.approx([0.01] * 3)
    assert s["after_switch_s"] == pytest.approx([0.03] * 3) and s["median_s"] == pytest.approx(0.01)
    assert not lg["settle"] and lg["after_switch_s"] == [] and lg["times_s"] == pytest.approx([1.0, 1.1, 1.2])
    assert c["settle"] and c["times_s"] == pytest.approx([0.02] * 3)
    assert c["after_switch_s"] == pytest.approx([0.04] * 3) and c["first_call_s"] == pytest.approx(5.0)
    # CPU seconds of the timed calls only, and their median over wall seconds
    assert s["cpu_s"] == pytest.approx([0.015] * 3) and s["cores_used"] == pytest.approx(1.5)
    assert lg["cpu_s"] == pytest.approx([1.5, 1.65, 1.8]) and lg["cores_used"] == pytest.approx(1.5)
    # a variant that timed itself (the jax-split worker) brings its own CPU seconds
    selfs = timing.Variant("self", lambda: timing.SelfTimed(0.2, None, 0.38))
    stats, outs = timing.measure([selfs], repeats=2)
    assert stats["self"]["times_s"] == pytest.approx([0.2, 0.2]) and stats["self"]["cores_used"] == pytest.approx(1.9)
    unknown = timing.Variant("unknown", lambda: timing.SelfTimed(0.2))
    assert timing.measure([unknown], repeats=1)[0]["unknown"]["cores_used"] is None
    # settle_below_s=0 turns it off
    short, short_calls = variant("short", [0.1, 0.03, 0.01])
    stats, _ = timing.measure([short], repeats=2, settle_below_s=0)
    assert len(short_calls) == 3 and stats["short"]["settle"] is False
    with pytest.raises(ValueError, match="settle_below_s"):
        timing.measure([short], repeats=1, settle_below_s=-1)
    with pytest.raises(ValueError, match="repeats"):
        timing.measure([short], repeats=0)


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
    assert "settle" not in md  # a saved result from before the settle calls renders as it was
    bench["variants"]["jax"] = dict(stats, settle=True, after_switch_s=[0.7, 0.9, 0.8])
    md = report.markdown({"mode": "full", "started_utc": "now", "wall_s": 1.0, "environment": env,
                          "benchmarks": [bench]}, source="r.json")
    assert "the contenders under 0.5 s timed right after an untimed settle call" in md
    assert "(the settle calls' median): jax 800 ms." in md


def test_only_whole_runs_are_latest():
    from benchmarks import run

    def args(*argv):
        return run._parse(list(argv))
    cores = run._cores()
    assert run.whole_suite(args(), "full", cores, cores)
    assert not run.whole_suite(args(), "tiny", cores, cores)
    for argv in (("--only", "mlp_*"), ("--contenders", "jax,torch"), ("--no-split",), ("--repeats", "3"),
                 ("--host-devices", "1")):
        assert not run.whole_suite(args(*argv), "full", cores, cores), argv
    if cores > 1:
        assert not run.whole_suite(args("--threads", "1"), "full", 1, cores)


def _doc_for_readme():
    stats = {"median_s": 0.25, "min_s": 0.2, "max_s": 0.3, "times_s": [0.25], "first_call_s": 1.0,
             "compile_s": 0.2, "note": "", "peak_rss_mib": 1.0, "ratio_to_baseline": 1.0,
             "max_abs_diff_vs_jax": 0.0, "agrees": True}
    bench = {"name": "unet8_forward_b64", "title": "t", "net": "unet8", "job": "forward", "batch": 64, "steps": 1,
             "nfe": 1, "tolerance": 1e-3, "output_max_abs": 1.0, "all_agree": True,
             "variants": {"jax": stats, "torch": dict(stats, median_s=0.5, ratio_to_baseline=2.0)}}
    env = {"cpu_model": "x", "usable_cores": 2, "cpu_count": 2, "versions": {"jax": "0"}, "jax_backend": "cpu",
           "jax_device_kind": "cpu", "jax_devices": ["cpu:0"], "torch_device": "cpu", "torch_num_threads": 2,
           "torch_num_interop_threads": 2, "python": "3", "xla_flags": "", "loadavg_start": [0.0],
           "loadavg_end": [0.0], "matmul_peak": {"n": 8, "xla_flops_per_s": 1e11, "torch_flops_per_s": 1e11,
                                                 "peak_flops_per_s": 1e11}}
    return {"mode": "full", "started_utc": "2026-12-03T00:00:00+00:00", "wall_s": 9.0, "environment": env,
            "benchmarks": [bench]}


def test_readme_block(tmp_path):
    from benchmarks import report

    readme = tmp_path / "README.md"
    before, after = "# Title\n\ntext before\n\n", "\n\ntext after\n"
    readme.write_text(before + "<!-- benchmarks:cpu:begin -->\nold table\n<!-- benchmarks:cpu:end -->" + after)
    assert report.update_readme(str(readme), _doc_for_readme(), "cpu-x.json") == "cpu"
    text = readme.read_text()
    assert text.startswith(before) and text.endswith("<!-- benchmarks:cpu:end -->" + after)
    assert "old table" not in text and "`benchmarks/results/cpu-x.json`" in text
    assert "| `unet8_forward_b64` | 1 | 250 ms (1.00) |" in text and "met in 1 of 1" in text
    once = text
    report.update_readme(str(readme), _doc_for_readme(), "cpu-x.json")
    assert readme.read_text() == once  # idempotent: one block, replaced in place
    # an accelerator's run has its own block (and its own latest file)
    gpu = _doc_for_readme()
    gpu["environment"] = dict(gpu["environment"], jax_backend="gpu", jax_device_kind="NVIDIA H200")
    assert report.device_tag(gpu["environment"]) == "nvidia-h200"
    assert report.latest_name("nvidia-h200") == "latest-nvidia-h200.md" and report.latest_name("cpu") == "latest.md"
    with pytest.raises(ValueError, match="benchmarks:nvidia-h200:begin"):
        report.update_readme(str(readme), gpu, "nvidia-h200-x.json")
    assert readme.read_text() == once  # unchanged on error
    for broken in ("no markers", "<!-- benchmarks:cpu:end -->\n<!-- benchmarks:cpu:begin -->",
                   "<!-- benchmarks:cpu:begin -->\n<!-- benchmarks:cpu:begin -->\n<!-- benchmarks:cpu:end -->"):
        with pytest.raises(ValueError, match="README"):
            report.replace_block(broken, "cpu", "x")


def test_out_dir_checked_first(tmp_path):
    from benchmarks import report

    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    assert report.check_out_dir(str(tmp_path / "new" / "dir")) is None and (tmp_path / "new" / "dir").is_dir()
    assert "is a file" in report.check_out_dir(str(a_file))
    assert "cannot create it" in report.check_out_dir(str(a_file / "below"))
    for module in ("benchmarks.run", "benchmarks.kernels"):
        proc = _run(["-m", module, "--tiny", "--out", str(a_file)], timeout=120)
        assert proc.returncode == 2 and f"--out {a_file}: is a file" in proc.stderr, (module, proc.stderr)
        assert "Traceback" not in proc.stderr


def test_report_command_line(tmp_path):
    result = tmp_path / "cpu-x.json"
    result.write_text(json.dumps(_doc_for_readme()))
    proc = _run(["-m", "benchmarks.report", str(result), "--latest"])
    assert proc.returncode == 0, proc.stderr
    assert "`unet8_forward_b64`" in (tmp_path / "latest.md").read_text()
    for argv, message in (([str(tmp_path / "missing.json")], "missing.json: cannot read the result"),
                          ([str(tmp_path / "latest.md")], "latest.md: not a benchmark result"),
                          ([str(result), "--readme", str(tmp_path / "nope.md")], "--readme"),
                          ([str(result), "--readme", str(tmp_path / "latest.md")], "benchmarks:cpu:begin")):
        proc = _run(["-m", "benchmarks.report", *argv])
        assert proc.returncode != 0 and message in proc.stderr, (argv, proc.stderr)
        assert "Traceback" not in proc.stderr


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


def test_kernels_tiny(tmp_path):
    """``python -m benchmarks.kernels --tiny``: the forward, input-gradient and weight-gradient
    kernels of one small convolution under both XLA:CPU settings, torch NCHW / channels_last
    and the other JAX formulations all agree with the float64 oracle (the command exits 1
    otherwise), and the JSON and markdown are written. No timing is asserted."""
    from benchmarks import kernels

    proc = _run(["-m", "benchmarks.kernels", "--tiny", "--out", str(tmp_path)], timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (js,) = tmp_path.glob("kernels-cpu-tiny-*.json")
    doc = json.loads(js.read_text())
    assert "--xla_cpu_experimental_ynn_fusion_type" in doc["xla_flags"]["xla"]
    assert "--xla_cpu_experimental_ynn_fusion_type" not in doc["xla_flags"]["ynn"]
    (rows,) = doc["shapes"].values()
    got = {(r["setting"], r["op"], r["name"]) for r in rows}
    for op in kernels.OPS:
        for who in (("xla", "conv"), ("ynn", "conv"), ("torch", "torch"), ("torch", "torch-cl")):
            assert (who[0], op, who[1]) in got, (who, op)
    assert {("xla", "forward", "patches-matmul"), ("xla", "forward", "winograd"),
            ("xla", "weight-grad", "shifted-matmuls"), ("xla", "weight-grad", "batch-halves")} <= got
    assert all(r["agrees"] and r["rel_err_vs_float64"] < kernels.TOL for r in rows)
    md = js.with_suffix(".md").read_text()
    assert "| weight-grad |" in md and "winograd" in md


def test_kernels_oracle_is_the_convolution():
    """The float64 oracle (im2col + BLAS) against a direct sum over the 3x3 taps."""
    import numpy as np

    from benchmarks import kernels

    d = kernels.inputs((2, 4, 3, 5), seed=1)
    ref = kernels.oracle(d)
    x = np.pad(d["x"].astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
    w = d["w"].astype(np.float64)
    dy = d["dy"].astype(np.float64)
    y = sum(np.einsum("nhwi,io->nhwo", x[:, i:i + 4, j:j + 4], w[i, j]) for i in range(3) for j in range(3))
    dw = np.stack([np.einsum("nhwi,nhwo->io", x[:, i:i + 4, j:j + 4], dy) for i in range(3) for j in range(3)])
    # dx: the adjoint of the forward map, <conv(x, w), dy> = <x, dx>
    rng = np.random.default_rng(2)
    probe = rng.standard_normal(d["x"].shape)
    xp = np.pad(probe, ((0, 0), (1, 1), (1, 1), (0, 0)))
    y_probe = sum(np.einsum("nhwi,io->nhwo", xp[:, i:i + 4, j:j + 4], w[i, j]) for i in range(3) for j in range(3))
    np.testing.assert_allclose(ref["forward"], y, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ref["weight-grad"], dw.reshape(3, 3, 3, 5), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.sum(ref["input-grad"] * probe), np.sum(y_probe * dy), rtol=1e-10)


def test_flops_count_the_custom_calls():
    """``cases.jax_flops`` counts a convolution and a dense product that run as oneDNN custom
    calls (XLA's cost analysis gives a custom call none): 2 x the multiply-adds (XLA leaves a
    padded convolution's taps on the zero border out: 484 of 576 here)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from benchmarks import cases as C
    from jax_impl import cpu_matmul
    from jax_impl.models import xla_cpu_layers as XL

    x = jnp.ones((2, 8, 8, 4), jnp.float32)
    conv = XL.Conv(6, (3, 3), padding=1)
    p = conv.init(jax.random.key(0), x)
    assert C.jax_flops(conv.apply, p, x) >= 2 * 2 * 4 * 6 * 22 * 22
    rows = cpu_matmul.MIN_ROWS
    h = jnp.ones((rows, 16), jnp.float32)
    dense = XL.Dense(32)
    q = dense.init(jax.random.key(0), h)
    assert C.jax_flops(dense.apply, q, h) >= 2 * rows * 16 * 32
    assert os.environ.get("SCOREDIFF_ONEDNN") != "0"  # restored
    # the same program, run, still takes the custom calls
    assert "scorediff_onednn_matmul" in jax.jit(dense.apply).lower(q, h).as_text() or not _onednn_enabled()
    np.testing.assert_allclose(np.asarray(dense.apply(q, h)), np.asarray(h @ q["params"]["kernel"]), rtol=1e-5)


def _onednn_enabled():
    from jax_impl import onednn

    return onednn.enabled()
