"""The worked examples (examples/*.py) run at a tiny size: each ``main(["--tiny", "--out",
DIR])`` trains a handful of steps, samples with the library's sampler and writes its
figure; the figure must be a valid PNG of a sensible size, and the quality number the
example measured must be finite.

The examples are scripts, not a package: each is loaded from its file under a private
module name (they put examples/ on sys.path themselves for their shared ``_common``).
"""

from __future__ import annotations

import importlib.util
import math
import struct
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
NAMES = ("ncsn", "ncsnv2", "ddpm", "improved_ddpm", "ve_sde", "vp_sde", "subvp_sde")
#: examples run at --tiny by another test file (their results have other keys)
TESTED_ELSEWHERE = {"class_conditional_digits": "test_class_conditional.py"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"scorediff_example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the IHDR chunk; fails unless the file is a PNG."""
    head = path.read_bytes()[:24]
    assert head[:8] == PNG_SIGNATURE, f"{path} is not a PNG file"
    assert head[12:16] == b"IHDR", f"{path}: no IHDR chunk first"
    return struct.unpack(">II", head[16:24])


@pytest.fixture(autouse=True)
def _float32_jax():
    """The examples are float32 programs: run them without the suite's x64 / strict rank
    promotion (restored afterwards)."""
    import jax

    x64, promo = jax.config.jax_enable_x64, jax.config.jax_numpy_rank_promotion
    jax.config.update("jax_enable_x64", False)
    jax.config.update("jax_numpy_rank_promotion", "allow")
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", x64)
        jax.config.update("jax_numpy_rank_promotion", promo)


@pytest.mark.parametrize("name", NAMES)
def test_example_runs_tiny(name, tmp_path):
    result = _load(name).main(["--tiny", "--out", str(tmp_path)])
    png = tmp_path / f"{name}.png"
    assert result["figure"] == str(png) and png.exists()
    width, height = _png_size(png)
    assert 400 <= width <= 3000 and 300 <= height <= 2000, (width, height)
    assert png.stat().st_size > 10_000
    q = result["quality"]
    assert math.isfinite(q["value"]) and math.isfinite(q["real"]), q
    assert math.isfinite(result["final_loss"]), result["final_loss"]
    if name.endswith("_sde"):
        assert math.isfinite(result["test_loglik"])
        assert result["ode_nfe"] > 0 and result["pc_nfe"] > 0


def test_examples_listed():
    """Every example script is tested (here or in the file named in TESTED_ELSEWHERE), and
    each has a main(argv) entry point."""
    scripts = {p.stem for p in EXAMPLES.glob("*.py") if not p.stem.startswith("_")}
    assert scripts == set(NAMES) | set(TESTED_ELSEWHERE)
    for name, test_file in TESTED_ELSEWHERE.items():
        assert f"{name}" in (Path(__file__).with_name(test_file)).read_text(), (name, test_file)
    for name in scripts:
        assert "def main(argv=None)" in (EXAMPLES / f"{name}.py").read_text()
