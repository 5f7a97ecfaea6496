"""Helper of ``parity_tests/test_torch_train_loop.py``: the tiny run configs of those tests,
and a command line that trains one in a workdir (run in a subprocess that the tests signal
or kill).

    python -m parity_tests._torch_train_subprocess WORKDIR '{"training.n_iters": 24}'

The second argument holds ``TrainConfig`` overrides by dotted name (JSON). Exits with
``torch_ref.loop.train``'s outcome: 0 after a normal end or a SIGINT / SIGTERM stop.
"""

from __future__ import annotations

import json
import sys

import torch

from spec.configs import VPSDEConfig
from spec.datasets import DataConfig
from spec.model_configs import MLPConfig
from spec.train_config import RunConfig, TrainConfig

#: the tests' run: a 2-D MLP on 256 points of the Gaussian mixture, VP SDE loss
BASE = {
    "training.batch_size": 32, "training.n_iters": 24, "training.snapshot_freq": 8,
    "training.log_freq": 4, "training.eval_freq": 8, "training.keep": 2, "training.seed": 3,
    "optim.lr": 1e-3, "optim.warmup": 4, "optim.weight_decay": 1e-4,
    "model.ema_rate": "0.99,0.9",
}


def make_config(overrides=None, *, hidden=(32, 32), process=None) -> RunConfig:
    """The tests' ``RunConfig`` with ``overrides`` (dotted TrainConfig names) on ``BASE``;
    ``process`` default: ``VPSDEConfig(N=30)``."""
    merged = {**BASE, **(overrides or {})}
    train = TrainConfig().with_overrides([f"{k}={v}" for k, v in merged.items()])
    return RunConfig(model=MLPConfig(hidden_dims=tuple(hidden), embedding_dim=16), train=train,
                     data=DataConfig(dataset="gmm", num_train=256, num_test=64, seed=1),
                     process=VPSDEConfig(N=30) if process is None else process)


def main(argv) -> int:
    torch.set_num_threads(1)  # as in the test process: identical float results
    from torch_ref.loop import train

    workdir, overrides = argv[1], json.loads(argv[2]) if len(argv) > 2 else {}
    state = train(make_config(overrides), workdir, progress=False)
    print(f"done at step {state.step}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
