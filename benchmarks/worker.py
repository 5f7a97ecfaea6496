"""The ``jax-split`` contender's process: the CPU host split into per-core devices.

Started by ``benchmarks.contenders.SplitWorker`` as ``python -m benchmarks.worker
--host-devices auto``; it calls ``jax_impl.sharding.configure_host_devices`` before JAX's
backend starts, then answers JSON requests on stdin, one per line, with one line
``@@ {json}`` on stdout (other output is ignored by the parent):

* ``{"op": "setup", "mode": "full" | "tiny", "case": NAME, "data": PATH}``: PATH is a pickle
  ``{"variables": flax variables, "inputs": the case's numpy inputs}`` written by the parent.
  Samplers: ``sharding.shard_sampler`` over a mesh of ``d`` devices (``d`` = the largest
  device count <= the devices that divides the batch), x_T batch-sharded (``shard_batch``),
  the pre-drawn step noise placed with its batch axis on the data axis, the variables
  replicated; lowered and compiled (``compile_s``). Forward: ``jit`` with the batch sharded.
  Training: ``sharding.make_sharded_train_step`` from the case's initial state (it compiles
  on its first call). Answers ``devices``, ``compile_s`` (None for training), and
  ``xla_memory_bytes``.
* ``{"op": "run", "keep": PATH | null}``: one call, timed here after ``block_until_ready``;
  with ``keep`` its output (numpy) is pickled to PATH. Answers ``dt``, ``cpu_s`` (this
  process's CPU seconds in that call) and, for a ``keep`` call (the first), ``peak_rss_mib``.
* ``{"op": "close"}``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import pickle
import sys
import time
import traceback


def _send(msg: dict) -> None:
    sys.stdout.write("@@ " + json.dumps(msg) + "\n")
    sys.stdout.flush()


def _divisor_devices(batch: int, n: int) -> int:
    """The largest d <= n dividing ``batch`` (the batch is split evenly over d devices)."""
    return max(d for d in range(1, n + 1) if batch % d == 0)


class _Program:
    def __init__(self, mode: str, case_name: str, data_path: str):
        import jax
        import jax.numpy as jnp
        import numpy as np
        from jax.sharding import NamedSharding, PartitionSpec as P

        from benchmarks import cases as C
        from jax_impl import sharding

        sizes = C.SIZES[mode]
        case = next(c for c in C.all_cases(sizes) if c.name == case_name)
        with open(data_path, "rb") as f:
            data = pickle.load(f)
        d = _divisor_devices(case.batch, len(jax.devices()))
        mesh = sharding.make_mesh(d)
        self.devices = d
        self.compile_s = None
        self.xla_memory_bytes = None
        inputs = data["inputs"]
        if case.job == "train":
            state = sharding.shard_train_state(C.jax_train_state(sizes, case), mesh)
            step = sharding.make_sharded_train_step(C.run_config(sizes, case), mesh)
            x = sharding.shard_batch(np.asarray(inputs["x"]), mesh)
            t0 = time.perf_counter()
            compiled = step.lower(state, x).compile()
            self.compile_s = time.perf_counter() - t0
            self.xla_memory_bytes = C.jax_memory(compiled)
            self._state = state

            def run():
                self._state, m = compiled(self._state, x)
                m = jax.block_until_ready(m)
                return np.array([float(m["loss"]), float(m["grad_norm"])])
            self._run = run
            return
        v = sharding.replicate(data["variables"], mesh)
        if case.job == "forward":
            fwd = C.jax_forward(sizes, case)
            bsh, rep = sharding.batch_sharding(mesh), sharding.replicated_sharding(mesh)
            x, lab = sharding.shard_batch((inputs["x"], inputs["labels"]), mesh)
            t0 = time.perf_counter()
            compiled = jax.jit(fwd, out_shardings=bsh).lower(v, x, lab).compile()
            self.compile_s = time.perf_counter() - t0
            self.xla_memory_bytes = C.jax_memory(compiled)
            self._run = lambda: np.asarray(jax.block_until_ready(compiled(v, x, lab)))
            return
        sample = sharding.shard_sampler(C.jax_sampler(sizes, case), mesh)
        x_T = sharding.shard_batch(np.asarray(inputs["x_T"]), mesh)
        ndim = x_T.ndim

        def place_noise(a):
            a = np.asarray(a)
            spec = [None] * a.ndim
            spec[a.ndim - ndim] = sharding.DATA_AXIS  # the batch axis of [steps, (n,) B, ...]
            return jax.device_put(a, NamedSharding(mesh, P(*spec)))

        noise = jax.tree_util.tree_map(place_noise, inputs["noise"])

        def prog(v, noise, x_T):
            return sample(None, v, noise, x_T=x_T)

        t0 = time.perf_counter()
        compiled = jax.jit(prog).lower(v, noise, x_T).compile()
        self.compile_s = time.perf_counter() - t0
        self.xla_memory_bytes = C.jax_memory(compiled)
        del jnp

        def run():
            x, nfe = jax.block_until_ready(compiled(v, noise, x_T))
            return np.asarray(x), np.asarray(nfe)
        self._run = run

    def run(self):
        return self._run()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.worker")
    p.add_argument("--host-devices", default="auto")
    args = p.parse_args(argv)
    from jax_impl import host_malloc, sharding

    host_malloc.configure_host_allocator()  # as the main process (benchmarks/run.py)
    n = args.host_devices if args.host_devices == "auto" else int(args.host_devices)
    n = sharding.configure_host_devices(n)
    import jax

    from benchmarks import timing

    _send({"ready": True, "host_devices": n, "devices": len(jax.devices()),
           "platform": jax.default_backend()})
    program = None
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            msg = json.loads(line)
            op = msg.get("op")
            if op == "close":
                _send({"closed": True})
                return 0
            if op == "setup":
                program = None
                program = _Program(msg["mode"], msg["case"], msg["data"])
                _send({"devices": program.devices, "compile_s": program.compile_s,
                       "xla_memory_bytes": program.xla_memory_bytes})
            elif op == "run":
                # the first call ("keep") also samples the peak RSS, from a thread that wakes
                # every 2 ms: the timed calls run without it, as the main process's do
                with timing.PeakRSS() if msg.get("keep") else contextlib.nullcontext() as mem:
                    dt, cpu_s, out = timing.timed_cpu(program.run)
                if msg.get("keep"):
                    with open(msg["keep"], "wb") as f:
                        pickle.dump(out, f)
                _send({"dt": dt, "cpu_s": cpu_s, "peak_rss_mib": None if mem is None else mem.growth_mib})
            else:
                _send({"error": f"unknown op {op!r}"})
        except Exception as err:  # noqa: BLE001 -- reported to the parent, which raises
            _send({"error": f"{type(err).__name__}: {err}\n{traceback.format_exc()}"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
