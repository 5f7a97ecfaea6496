"""Strict settings, seeds and the tolerance table for the parity tests.

JAX runs in float64 for the maths (``jax_enable_x64``) and with rank promotion set to
raise, so an implicit broadcast is a bug, not a silent guess. Networks are tested in
float32 by passing float32 inputs and parameters explicitly.
"""

from __future__ import annotations

import os

# Before jax is imported anywhere: no GPU probing noise on CPU machines.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")
# One torch thread per test process: pytest-xdist runs one process per core, and torch's
# intra-op threads on a loaded 2-core machine made small ops 10-50x slower.
torch.set_num_threads(1)



@pytest.fixture
def np_rng() -> np.random.Generator:
    """A fresh seeded numpy generator: the single source of shared noise."""
    return np.random.default_rng(0)
