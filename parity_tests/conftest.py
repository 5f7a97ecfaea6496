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
"""

from __future__ import annotations

import os
import shutil
import tempfile

# Before jax is imported anywhere: no GPU probing noise on CPU machines.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

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


# Measured seconds per test file (2 cores, ``-n 2``): xdist hands out whole files
# (``--dist loadfile``) in this order, the longest first, so no long file starts last.
# Files not listed (new ones) go first, with the unknown-but-maybe-long ones.
FILE_SECONDS = {
    "test_ode.py": 120, "test_models_ncsnpp.py": 100, "test_train.py": 100, "test_models_ncsn.py": 95,
    "test_samplers_discrete.py": 95, "test_readme.py": 95, "test_checkpoints.py": 80,
    "test_diffusion.py": 78, "test_samplers_pc.py": 73, "test_demo.py": 66, "test_likelihood.py": 65,
    "test_torch_train_loop.py": 59, "test_train_loop.py": 58, "test_sampler_contract.py": 47,
    "test_train_loop_quality.py": 36, "test_sde.py": 34, "test_fast_samplers.py": 33, "test_losses.py": 32,
    "test_registry.py": 27, "test_models_ddpm.py": 19, "test_controllable.py": 19, "test_samplers_ald.py": 18,
    "test_gmm.py": 15, "test_models_mlp.py": 13, "test_checkpoint_manager.py": 10, "test_resample.py": 8,
    "test_convert.py": 7, "test_boundaries.py": 6, "test_validation.py": 5, "test_score_fn.py": 5,
    "test_data.py": 1, "test_spec.py": 1, "test_mirror.py": 0.2, "test_train_config.py": 0.1,
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


@pytest.fixture
def np_rng() -> np.random.Generator:
    """A fresh seeded numpy generator: the single source of shared noise."""
    return np.random.default_rng(0)
