"""Strict settings, seeds and the tolerance table for the parity tests.

JAX runs in float64 for the maths (``jax_enable_x64``) and with rank promotion set to
raise, so an implicit broadcast is a bug, not a silent guess. Networks are tested in
float32 by passing float32 inputs and parameters explicitly.

One persistent JAX compilation cache per test session: a fresh temporary directory made
by the first pytest process (the xdist controller, or the only process), handed to the
xdist workers and to the subprocesses the tests start through the environment
(``JAX_COMPILATION_CACHE_DIR``), and removed when that process ends. A program compiled
once in the session (by either worker, or a subprocess) is loaded, not compiled again.
Nothing is shared between sessions. The README examples run without it (they strip every
``JAX_*`` variable: a user's fresh interpreter). ``SCOREDIFF_TEST_NO_JAX_CACHE=1`` turns
it off.

``SCOREDIFF_TEST_CPU_REPORT=FILE`` appends one line per test phase to FILE: the CPU seconds
it took (this process, all its threads, plus the subprocesses it waited for), for measuring
the suite on a loaded machine, where wall times mean little.
"""

from __future__ import annotations

import os
import resource
import shutil
import tempfile
import time

# Before jax is imported anywhere: no GPU probing noise on CPU machines.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
#: The command line splits a CPU host into per-core devices for sampling and evaluation when
#: ``SCOREDIFF_HOST_DEVICES`` is unset (``scorediff.distributed``). The tests run 2 xdist
#: workers on 2 cores, so they pin one device per process (this process, the workers and
#: the subprocesses inherit it); the tests of the split set the variable themselves, and
#: ``test_cli_host_split.py`` unsets it to check the default.
os.environ.setdefault("SCOREDIFF_HOST_DEVICES", "1")

#: XLA options that compile about twice as fast (measured: an MLP's init program 3.6 -> 1.5 CPU
#: seconds): they lower LLVM's optimisation effort only; the HLO passes stay as they are, but
#: the machine code differs (it may round differently, e.g. without fused multiply-adds, and
#: run slower). The suite is dominated by compiling small programs, so they are ON by default
#: for the tests (this process, the xdist workers and the test subprocesses inherit them
#: through ``XLA_FLAGS``); the whole suite passed with them on 2026-12-02 (1478 tests in
#: 15 min 47 s, 2 workers). ``SCOREDIFF_TEST_FAST_XLA=0`` compiles as users do. The README's
#: examples always run with a user's settings (``test_readme.py`` strips ``XLA_FLAGS``).
FAST_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
if os.environ.get("SCOREDIFF_TEST_FAST_XLA", "1") != "0" and FAST_XLA_FLAGS not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_XLA_FLAGS}".strip()
# The XLA:CPU convolution setting the command line applies (jax_impl/xla_cpu.py), so that
# in-process results and `scorediff` subprocesses compute alike.
from jax_impl import xla_cpu as _xla_cpu  # noqa: E402

_xla_cpu.configure_cpu_convolutions()

#: The session's cache directory when this process created it (and removes it at exit).
_OWN_CACHE_DIR: str | None = None
_CACHE_ENV = "SCOREDIFF_TEST_JAX_CACHE"
if os.environ.get("SCOREDIFF_TEST_NO_JAX_CACHE") != "1":
    if not os.environ.get(_CACHE_ENV):  # the session's first process: make the directory
        _OWN_CACHE_DIR = tempfile.mkdtemp(prefix="scorediff_jax_cache_")
        os.environ[_CACHE_ENV] = _OWN_CACHE_DIR
    # Read by jax when it is imported, here and in every subprocess that inherits them.
    os.environ["JAX_COMPILATION_CACHE_DIR"] = os.environ[_CACHE_ENV]
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")
# One torch thread per test process: pytest-xdist runs one process per core, and torch's
# intra-op threads on a loaded 2-core machine made small ops 10-50x slower.
torch.set_num_threads(1)


# Seconds per test file: xdist hands out whole files (``--dist loadfile``) in this order, the
# longest first, so no long file starts last. Where measured on 2026-12-02: CPU seconds of the
# file alone in one process from a cold compilation cache (``SCOREDIFF_TEST_CPU_REPORT`` and
# ``/usr/bin/time``; each includes ~10 s of imports that a worker pays once); the others are
# the older wall-clock figures under ``-n 2``. Files not listed (new ones) go first, with the
# unknown-but-maybe-long ones.
FILE_SECONDS = {
    "test_examples.py": 215, "test_distributed.py": 142, "test_cli.py": 137, "test_ode.py": 120,
    "test_class_conditional.py": 110, "test_diffusion.py": 107, "test_likelihood.py": 107,
    "test_models_ncsn.py": 104, "test_sharding.py": 96, "test_samplers_discrete.py": 95, "test_readme.py": 95,
    "test_train.py": 90, "test_models_ncsnpp.py": 86, "test_samplers_pc.py": 73, "test_demo.py": 66,
    "test_checkpoints.py": 61, "test_torch_train_loop.py": 59, "test_train_loop.py": 58,
    "test_models_unet.py": 51, "test_diffusers.py": 50, "test_convert_improved.py": 47,
    "test_guidance.py": 47, "test_sampler_contract.py": 47, "test_benchmarks.py": 40,
    "test_train_loop_quality.py": 36, "test_sde.py": 34, "test_fast_samplers.py": 33, "test_losses.py": 32,
    "test_registry.py": 27, "test_mlp_images.py": 21, "test_models_ddpm.py": 19, "test_controllable.py": 19,
    "test_samplers_ald.py": 18, "test_gmm.py": 15, "test_models_mlp.py": 13, "test_checkpoint_manager.py": 10,
    "test_resample.py": 8, "test_convert.py": 7, "test_boundaries.py": 6, "test_validation.py": 5,
    "test_score_fn.py": 5, "test_data.py": 1, "test_spec.py": 1, "test_mirror.py": 0.2,
    "test_train_config.py": 0.1,
}


def pytest_configure(config):
    """Under ``-n N`` without an explicit ``--dist``: whole files per worker, longest first.

    A file's module fixtures and its module-level compiled programs then run once, in one
    worker (``--dist load`` splits a file between the workers, which both build them).
    """
    given = " ".join([*config.invocation_params.args, os.environ.get("PYTEST_ADDOPTS", ""),
                      *config.getini("addopts")])
    if getattr(config.option, "dist", "no") == "load" and "--dist" not in given and "-d" not in given.split():
        config.option.dist = "loadfile"
        config.option.loadscopereorder = False  # keep the order below, not xdist's test counts


def pytest_collection_modifyitems(config, items):
    """Longest files first (stable: the order inside a file is kept)."""
    items.sort(key=lambda item: -FILE_SECONDS.get(item.path.name, 1000))


def pytest_unconfigure(config):
    """The process that made the session's compilation cache removes it."""
    if _OWN_CACHE_DIR is not None:
        shutil.rmtree(_OWN_CACHE_DIR, ignore_errors=True)


_CPU_REPORT = os.environ.get("SCOREDIFF_TEST_CPU_REPORT")


def _cpu_seconds() -> float:
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


if _CPU_REPORT:
    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_setup(item):
        start = _cpu_seconds()
        yield
        _report_cpu(item, "setup", start)

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_call(item):
        start = _cpu_seconds()
        yield
        _report_cpu(item, "call", start)

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_teardown(item):
        start = _cpu_seconds()
        yield
        _report_cpu(item, "teardown", start)

    def _report_cpu(item, phase: str, start: float) -> None:
        with open(_CPU_REPORT, "a") as f:
            f.write(f"{_cpu_seconds() - start:.2f} {phase} {item.nodeid}\n")


@pytest.fixture
def np_rng() -> np.random.Generator:
    """A fresh seeded numpy generator: the single source of shared noise."""
    return np.random.default_rng(0)
