"""The demo (``python -m scorediff.demo``): a tiny run end to end, its PNG, its numbers."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os

import pytest

from scorediff import demo


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        results = demo.run_demo(str(out), demo.QUICK, seed=0, verbose=True)
    return out, results, printed.getvalue()


def test_demo_writes_png_and_json(quick_run):
    out, results, _ = quick_run
    png = out / "samples.png"
    assert png.exists() and png.stat().st_size > 10_000
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with open(out / "results.json") as f:
        saved = json.load(f)
    assert [r["name"] for r in saved["samplers"]] == [r["name"] for r in results["samplers"]]


def test_demo_numbers_are_sane(quick_run):
    _, results, _ = quick_run
    rows = results["samplers"]
    names = [r["name"] for r in rows]
    assert names[:3] == ["PC VP rev-diff+Langevin", "PC VE rev-diff+Langevin", "ALD (NCSN)"]
    # Every sampler family is in the demo: ODE (1 row), DDPM + DDIM (2),
    # EDM + DPM-Solver++ (2).
    groups = [("ODE",), ("DDPM", "DDIM"), ("EDM", "DPM-Solver")]
    present = [sum(name.startswith(prefixes) for name in names) for prefixes in groups]
    assert present == [len(prefixes) for prefixes in groups], names
    assert len(rows) == 3 + sum(present)
    for r in rows:
        # Shared float32 noise: the frameworks agree to float32 round-off accumulated
        # over a few dozen steps (measured <= 5e-5 in the full demo).
        assert r["parity_max_abs"] < 1e-3, r
        assert r["nfe"] == r["torch_nfe"] > 0
        # Tiny runs (256 samples, few steps) are rough but must land on the mixture's
        # scale: the data spread is ~0.8, a broken sampler gives SW1 >~ 0.5 or NaN.
        for key in ("sw1", "sw1_torch", "mean_err", "cov_err", "weight_err"):
            assert math.isfinite(r[key]) and 0.0 <= r[key] < 0.5, (key, r)
        assert r["jax_compile_s"] > 0 and r["jax_run_s"] > 0 and r["torch_run_s"] > 0
    floor = results["exact"]
    assert 0 < floor["sw1"] < 0.1  # 256 exact samples: the Monte-Carlo floor
    lik = results["likelihood"]
    assert lik is not None  # exact score + dopri5: the ODE likelihood is the exact density
    assert lik["max_abs_err"] < 0.05 and abs(lik["mean_exact"] - lik["mean_ode"]) < 0.01


def test_demo_prints_the_table(quick_run):
    _, results, printed = quick_run
    for r in results["samplers"]:
        row = next(line for line in printed.splitlines() if line.startswith(r["name"]))
        assert f"{r['nfe']:>5d}" in row and f"{r['parity_max_abs']:.2e}" in row
    assert "exact (MC floor)" in printed and "jax-torch" in printed and "compile" not in printed.split("\n")[0]
    assert "log-likelihood on" in printed
    assert "samples.png" in printed


def test_cli_rejects_bad_arguments(tmp_path):
    with pytest.raises(SystemExit):
        demo.main(["--out", str(tmp_path), "--repeats", "0"])
    with pytest.raises(SystemExit):
        demo.main(["--out", str(tmp_path), "--torch-threads", "0"])
    assert not os.listdir(tmp_path)
