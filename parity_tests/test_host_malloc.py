"""The host allocator setting (``jax_impl/host_malloc.py``): applied once, left alone where the
user chose (``SCOREDIFF_MALLOC=system``, ``GLIBC_TUNABLES``), a bad value one error line at
the start of the command line and the benchmark runner. Each scenario runs in a fresh
process (the setting is process-wide)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from jax_impl import host_malloc

ROOT = Path(__file__).resolve().parents[1]

_SCENARIO = """
import json
from jax_impl import host_malloc
first = host_malloc.configure_host_allocator()
again = host_malloc.configure_host_allocator()
# memory freed and allocated again still works (a large buffer, above glibc's mmap threshold)
import numpy as np
for _ in range(3):
    a = np.ones(64 * 2**20 // 8); assert a.sum() == a.size; del a
print(json.dumps({"first": first, "again": again, **host_malloc.state()}))
"""


def _scenario(env_extra: dict) -> dict:
    import json

    env = {k: v for k, v in os.environ.items() if k not in (host_malloc.ENV, "GLIBC_TUNABLES")}
    env.update(env_extra)
    proc = subprocess.run([sys.executable, "-c", _SCENARIO], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_applied_by_default_and_left_alone_on_request():
    got = _scenario({})
    assert got == {"first": True, "again": True, "applied": True, "why": None}
    got = _scenario({host_malloc.ENV: " System "})
    assert got["first"] is False and got["applied"] is False and got["why"] == f"{host_malloc.ENV}=system"
    got = _scenario({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"})
    assert got["applied"] is False and "GLIBC_TUNABLES" in got["why"]
    got = _scenario({"GLIBC_TUNABLES": "glibc.rtld.nns=4"})  # not a malloc tunable: applied
    assert got["applied"] is True


def test_bad_value_is_one_error_line_at_start(monkeypatch, capsys):
    from benchmarks import run as bench_run
    from scorediff import cli

    monkeypatch.setenv(host_malloc.ENV, "never")
    with pytest.raises(ValueError, match=host_malloc.ENV):
        host_malloc.check_environment()
    with pytest.raises(ValueError, match=host_malloc.ENV):
        host_malloc.configure_host_allocator()
    assert cli.main(["presets"]) == 2
    assert f"{host_malloc.ENV}='never'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        bench_run.main(["--tiny", "--list"])
    assert exit_info.value.code == 2
    assert host_malloc.ENV in capsys.readouterr().err
