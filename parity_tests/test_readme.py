"""The README's Python examples run as written (they are the first code a user copies).

Each ```python block of README.md runs in a FRESH interpreter, the way a user runs it: the
installed packages, jax's default settings (no ``jax_enable_x64``, none of the suite's
conftest configuration, no ``JAX_*`` / ``XLA_*`` settings from the environment except the
CPU platform), the current directory a new empty temporary directory. A block that needs
float64 enables it itself at its top. A block that is deliberately not runnable (shell
commands, a sketch needing files the reader has to bring) is fenced ```text or ``` instead.

After the block has run, the names it left behind are sanity-checked: ``nfe`` (when
defined) is a positive count and ``x`` (when defined) has a non-empty batch.
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.S | re.M)
TIMEOUT_S = 300

# Runs the example file as __main__, then checks what it left behind; adds no configuration.
_RUNNER = r"""
import runpy, sys
ns = runpy.run_path(sys.argv[1], run_name="__main__")
if "nfe" in ns:
    assert int(ns["nfe"]) > 0, f"nfe = {ns['nfe']}"
if "x" in ns and hasattr(ns["x"], "shape"):
    assert ns["x"].shape[0] > 0, f"x.shape = {ns['x'].shape}"
print("example ran")
"""


def _user_env() -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("JAX_", "XLA_", "PYTEST", "TORCH_"))}
    env["JAX_PLATFORMS"] = "cpu"  # this machine has no accelerator; spares jax's GPU probe
    return env


def test_readme_has_python_examples():
    assert len(BLOCKS) >= 4
    # The README points to the design rules inside the repository, not to a file outside it.
    text = README.read_text()
    assert "docs/ARCHITECTURE.md" in text and (ROOT / "docs" / "ARCHITECTURE.md").is_file()
    assert "../" not in text and "shared/" not in text


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs_in_a_fresh_interpreter(index, tmp_path):
    script = tmp_path / f"readme_example_{index}.py"
    script.write_text(BLOCKS[index])
    out = subprocess.run([sys.executable, "-c", _RUNNER, str(script)], cwd=tmp_path,
                         env=_user_env(), capture_output=True, text=True, timeout=TIMEOUT_S)
    assert out.returncode == 0 and "example ran" in out.stdout, (
        f"README python block {index} failed as written:\n{BLOCKS[index]}\n"
        f"--- stderr ---\n{out.stderr[-4000:]}")
