"""The README's Python examples run as written (they are the first code a user copies)."""

from __future__ import annotations

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_python_examples():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index):
    namespace: dict = {}
    exec(compile(BLOCKS[index], f"README.md[python block {index}]", "exec"), namespace)  # noqa: S102
    for name, check in (("nfe", lambda v: int(v) > 0), ("x", lambda v: v.shape[0] > 0)):
        if name in namespace:
            assert check(namespace[name])
