"""A training run in its own process, for the signal and SIGKILL tests of test_train_loop.py.

    python parity_tests/_train_subprocess.py WORKDIR [MAX_STEPS]

Trains ``test_train_loop.tiny_config()`` in WORKDIR with the same JAX settings as
``parity_tests/conftest.py`` (float64 enabled, rank promotion raising), so its parameters
can be compared bit for bit with a run made inside the test process. Prints ``done STEP``
when ``train`` returns.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")

from jax_impl.loop import train  # noqa: E402
from parity_tests.test_train_loop import tiny_config  # noqa: E402


def main() -> None:
    workdir = sys.argv[1]
    max_steps = int(sys.argv[2]) if len(sys.argv) > 2 else None
    state = train(tiny_config(), workdir, max_steps=max_steps, progress=False)
    print(f"done {int(state.step)}", flush=True)


if __name__ == "__main__":
    main()
