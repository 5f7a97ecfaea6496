"""One process of a multi-process training run, for parity_tests/test_distributed.py.

    python parity_tests/_distributed_worker.py WORKDIR OUT.npz PORT NUM_PROCESSES PROCESS_ID STEPS N_ITERS

Joins the job through the command line's own start-up (``scorediff.distributed``:
``SCOREDIFF_HOST_DEVICES`` host devices, gloo collectives, ``jax.distributed.initialize``
at ``127.0.0.1:PORT``), trains :func:`train_config` (``n_iters`` N_ITERS; class-conditional, so the batches carry
labels) for STEPS steps in WORKDIR with
``jax_impl.loop.train`` (the mesh over every process's devices) and, in process 0, writes
the final parameters and EMA (host numpy, keyed by their pytree paths), the device /
process counts and ``NUM_SAMPLES`` samples drawn by ``scorediff sample``'s multi-process
path (``cli._sample_on_mesh``: each process computes its share) to OUT.npz. JAX runs with the settings of parity_tests/conftest.py
(float64 enabled, rank promotion raising), so the numbers can be compared with a run made
inside the test process. Prints ``done STEP`` when training returns.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scorediff import distributed  # noqa: E402


def tiny_config(n_iters: int, *, num_classes: int = 0, label_dropout: float = 0.0):
    """MLP (32, 32) on 2000 mixture points, VP SDE with N=20, global batch 16; with
    ``num_classes`` class-conditional on the mixture component (and ``label_dropout``)."""
    from spec.configs import VPSDEConfig
    from spec.datasets import DataConfig
    from spec.model_configs import MLPConfig
    from spec.train_config import EMAConfig, OptimConfig, RunConfig, TrainConfig, TrainingConfig

    return RunConfig(model=MLPConfig(hidden_dims=(32, 32), embedding_dim=16, num_classes=num_classes),
                     train=TrainConfig(training=TrainingConfig(batch_size=16, n_iters=n_iters,
                                                               snapshot_freq=n_iters, log_freq=1,
                                                               keep=2, label_dropout=label_dropout),
                                       optim=OptimConfig(lr=2e-3, warmup=2, grad_clip=1.0),
                                       model=EMAConfig(ema_rate=(0.9,))),
                     data=DataConfig(dataset="gmm", num_train=2000, num_test=500),
                     process=VPSDEConfig(N=20))


#: the sampler of the multi-process sampling check (and its number of samples, key)
SAMPLER = {"name": "pc", "predictor": "euler_maruyama", "corrector": "none"}
NUM_SAMPLES = 16
SEED = 3


def train_config(n_iters: int):
    """The run the processes train: class-conditional on the 3 mixture components plus
    classifier-free guidance's null class (label dropout 0.25)."""
    return tiny_config(n_iters, num_classes=4, label_dropout=0.25)


def sampling_params():
    """The parameters of the sampling check: a fresh unconditional tiny MLP (any weights do)."""
    import jax

    from jax_impl.train import create_train_state

    return {"params": create_train_state(jax.random.key(7), tiny_config(1)).params}


def flat(tree) -> dict:
    import jax
    import numpy as np

    from jax_impl.sharding import to_host

    return {jax.tree_util.keystr(p): np.asarray(v)
            for p, v in jax.tree_util.tree_flatten_with_path(to_host(tree))[0]}


def main() -> None:
    workdir, out, port, n, pid, steps, n_iters = sys.argv[1:8]
    distributed.configure_host_devices()
    spec = distributed.launch_spec(f"127.0.0.1:{port}", int(n), int(pid), 60.0)
    distributed.initialize(spec, prog="worker")

    import jax
    import numpy as np

    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_numpy_rank_promotion", "raise")
    from jax_impl.loop import train

    config = train_config(int(n_iters))
    state = train(config, workdir, max_steps=int(steps), progress=False)
    params, ema = flat(state.params), flat(state.ema)  # every process takes part
    # `scorediff sample`'s multi-process path: each process computes its share of the samples
    from jax_impl.sharding import to_host
    from scorediff import cli, sampling

    plan = sampling.resolve(tiny_config(1), SAMPLER, num=NUM_SAMPLES)
    samples, nfe, _, _ = cli._sample_on_mesh(plan, to_host(sampling_params()), SEED)
    if jax.process_index() == 0:
        np.savez(out, **{"params" + k: v for k, v in params.items()},
                 **{"ema" + k: v for k, v in ema.items()}, samples=samples, nfe=np.int64(nfe),
                 num_devices=np.int64(jax.device_count()), num_processes=np.int64(jax.process_count()))
    print(f"done {int(np.asarray(state.step.addressable_data(0)))}", flush=True)


if __name__ == "__main__":
    main()
