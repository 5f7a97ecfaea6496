"""Scale-out throughput on CPU: training steps/s and samples/s on 1, 2, 4 and 8 host devices
and on 2 processes (jax.distributed over gloo on localhost).

    python benchmarks/scaleout.py [--repeats 5] [--steps 5] [--devices 1,2,4,8] [--quick]

Two networks, each with its preset's training step and a short sampler:

* ``mlp``: digits/improved-ddpm (the MLP eps-net with learned variances, hybrid loss),
  global batch 128; sampling: DDIM 50 steps, 64 samples;
* ``conv``: digits/ddpm-unet (score_sde's DDPM U-Net at 8x8, nf 32), global batch 64;
  sampling: the probability-flow ODE with 10 RK4 steps (40 network evaluations), 64 samples.

Every configuration runs in a fresh subprocess (the host-device split must be set before
JAX starts): ``SCOREDIFF_HOST_DEVICES=d`` gives d devices and the run uses the training
loop's own path (``make_train_step`` on 1 device, ``sharding.make_sharded_train_step`` on a
mesh of d), and the sampler through ``sharding.shard_sampler``. "2 processes" is two
subprocesses of 1 device each joined by ``scorediff.distributed`` (gloo): one 2-device mesh.
The first call (compile) is timed separately; each repeat then times ``--steps`` training
steps (blocking on the result) and one sampler call; the table quotes medians over
``--repeats`` repeats, with the process CPU time over the same repeats (CPU/wall > 1 means
more than one core worked). ``uptime``'s load average is recorded before and after: the
machine may be shared, which slows everything down and flattens the scaling.

Writes ``benchmarks/results/scaleout-cpu-<date>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

NETS = {
    "mlp": {"preset": "digits/improved-ddpm", "batch": 128, "sampler": {"name": "ddim", "steps": 50},
            "describe": "digits/improved-ddpm MLP, batch 128; DDIM 50 steps"},
    "conv": {"preset": "digits/ddpm-unet", "batch": 64,
             "sampler": {"name": "ode", "method": "rk4", "steps": 10},
             "describe": "digits/ddpm-unet U-Net nf 32, batch 64; ODE RK4 10 steps (40 NFE)"},
}
NUM_SAMPLES = 64


# ----------------------------------------------------------------------------- one child

def _child(net: str, repeats: int, steps: int) -> dict:
    """Runs inside a configured process (devices / jax.distributed already set up)."""
    import jax
    import numpy as np

    from jax_impl import sharding
    from jax_impl import train as jtrain
    from scorediff import presets, sampling
    from spec import datasets

    spec = NETS[net]
    preset = presets.get_preset(spec["preset"])
    from scorediff.overrides import apply_overrides

    config = apply_overrides(preset.run_config, [f"training.batch_size={spec['batch']}"])
    devices = jax.device_count()
    procs = jax.process_count()
    mesh = sharding.make_mesh() if devices > 1 else None
    train_data, _ = datasets.load_dataset(config.data)
    it = datasets.BatchIterator.from_config(config.data, train_data, spec["batch"],
                                            shard_index=jax.process_index(), shard_count=procs)
    state = jtrain.create_train_state(jax.random.key(0), config)
    if mesh is None:
        step_fn = jtrain.make_train_step(config, donate=True)
        put = jax.numpy.asarray
    else:
        state = sharding.shard_train_state(state, mesh)
        step_fn = sharding.make_sharded_train_step(config, mesh)
        put = lambda b: b  # noqa: E731  (the sharded step assembles the process-local rows)

    def block(x):
        return jax.block_until_ready(x)

    t0 = time.perf_counter()
    state, m = step_fn(state, put(it.next()))
    block(m["loss"])
    train_compile = time.perf_counter() - t0
    train_wall, train_cpu = [], []
    for _ in range(repeats):
        batches = [put(it.next()) for _ in range(steps)]
        c0, t0 = time.process_time(), time.perf_counter()
        for b in batches:
            state, m = step_fn(state, b)
        block(m["loss"])
        train_wall.append(time.perf_counter() - t0)
        train_cpu.append(time.process_time() - c0)

    plan = sampling.resolve(config, spec["sampler"], num=NUM_SAMPLES)
    sampler = sampling.JaxSampler(plan)
    variables = {"params": state.ema[0], **state.constants}
    kd = np.asarray(jax.random.key_data(jax.random.key(1)))
    if mesh is None:
        variables = jax.device_get(variables)

        def run(kd_, v):
            return sampler._jit(v, jax.random.wrap_key_data(kd_), None, None)
        fn = jax.jit(run)
    else:
        fn = sharding.shard_sampler(
            lambda kd_, v: sampler._jit(v, jax.random.wrap_key_data(kd_), None, None), mesh)
        variables = sharding.replicate(variables, mesh)
        kd = sharding.replicate(kd, mesh)
    t0 = time.perf_counter()
    block(fn(kd, variables))
    sample_compile = time.perf_counter() - t0
    sample_wall, sample_cpu = [], []
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        block(fn(kd, variables))
        sample_wall.append(time.perf_counter() - t0)
        sample_cpu.append(time.process_time() - c0)
    med = statistics.median
    return {
        "net": net, "devices": devices, "processes": procs,
        "train_compile_s": train_compile, "train_wall_s": train_wall, "train_cpu_s": train_cpu,
        "train_steps_per_s": steps / med(train_wall),
        "train_cpu_over_wall": sum(train_cpu) / sum(train_wall),
        "sample_compile_s": sample_compile, "sample_wall_s": sample_wall, "sample_cpu_s": sample_cpu,
        "samples_per_s": NUM_SAMPLES / med(sample_wall), "nfe": sampler.nfe,
        "sample_cpu_over_wall": sum(sample_cpu) / sum(sample_wall),
    }


def _child_main(argv) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--child", required=True)
    p.add_argument("--repeats", type=int, required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--coordinator")
    p.add_argument("--num-processes", type=int)
    p.add_argument("--process-id", type=int)
    a = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from jax_impl import xla_cpu
    from scorediff import distributed

    xla_cpu.configure_cpu_convolutions()  # the command line's XLA:CPU set-up
    from jax_impl import host_malloc

    host_malloc.configure_host_allocator()  # and its allocator setting
    distributed.configure_host_devices()
    launch = distributed.launch_spec(a.coordinator, a.num_processes, a.process_id, 120.0)
    distributed.initialize(launch, prog="scaleout")
    result = _child(a.child, a.repeats, a.steps)
    import jax

    if jax.process_index() == 0:
        Path(a.out).write_text(json.dumps(result))


# ----------------------------------------------------------------------------- the parent

def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(net: str, devices: int, processes: int, repeats: int, steps: int, tmp: Path, timeout: float) -> dict:
    out = tmp / f"{net}-{devices}-{processes}.json"
    base = [sys.executable, str(Path(__file__).resolve()), "--child", net, "--repeats", str(repeats),
            "--steps", str(steps), "--out", str(out)]
    env = dict(os.environ, JAX_PLATFORMS="cpu", SCOREDIFF_HOST_DEVICES=str(devices // processes))
    env.pop("XLA_FLAGS", None)
    t0 = time.perf_counter()
    if processes == 1:
        cmds = [base]
    else:
        port = _free_port()
        cmds = [base + ["--coordinator", f"127.0.0.1:{port}", "--num-processes", str(processes),
                        "--process-id", str(i)] for i in range(processes)]
    procs = [subprocess.Popen(c, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for c in cmds]
    errs = []
    for p in procs:
        try:
            errs.append(p.communicate(timeout=timeout)[1])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise RuntimeError(f"{net} on {devices} devices / {processes} processes ran past {timeout} s")
    if any(p.returncode for p in procs) or not out.exists():
        raise RuntimeError(f"{net} on {devices} devices / {processes} processes failed:\n"
                           + "\n".join(e[-3000:] for e in errs))
    r = json.loads(out.read_text())
    r["total_wall_s"] = time.perf_counter() - t0
    return r


def _versions() -> dict:
    import importlib.metadata as md

    v = {}
    for pkg in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy"):
        try:
            v[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return v


def _markdown(doc: dict) -> str:
    lines = [f"# Scale-out on CPU ({doc['date']})", "",
             f"Machine: {doc['machine']['cpus']} CPU cores, {doc['machine']['platform']}; "
             f"jax {doc['versions'].get('jax', '?')}. Medians of {doc['repeats']} repeats "
             f"({doc['steps']} training steps each; one sampler call of {NUM_SAMPLES} samples each). "
             f"CPU/wall: process CPU time over wall time in the timed repeats (process 0 for "
             f"2 processes).", "",
             f"Load before: `{doc['uptime_before']}`", "",
             f"Load after: `{doc['uptime_after']}`", ""]
    for net, spec in NETS.items():
        rows = [r for r in doc["results"] if r["net"] == net]
        if not rows:
            continue
        base = rows[0]
        lines += [f"## {net}: {spec['describe']}", "",
                  "| devices x processes | train steps/s | vs 1 device | train CPU/wall | train compile s "
                  "| samples/s | vs 1 device | sample CPU/wall | sample compile s |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(
                f"| {r['devices']} devices, {r['processes']} process{'es' if r['processes'] > 1 else ''} "
                f"| {r['train_steps_per_s']:.2f} | {r['train_steps_per_s'] / base['train_steps_per_s']:.2f}x "
                f"| {r['train_cpu_over_wall']:.2f} | {r['train_compile_s']:.1f} "
                f"| {r['samples_per_s']:.1f} | {r['samples_per_s'] / base['samples_per_s']:.2f}x "
                f"| {r['sample_cpu_over_wall']:.2f} | {r['sample_compile_s']:.1f} |")
        lines.append("")
    lines += ["More devices than cores cannot add compute, only split the work finer. Each child "
              "applies the command line's XLA:CPU set-up (jax_impl/xla_cpu.py: XLA's own, "
              "multi-threaded convolutions on one device; on a host split into several devices "
              "YNNPACK's, as XLA's own were nondeterministic there). The run was made on a shared "
              "machine: see the load averages above.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--child" in argv:
        _child_main(argv)
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=5, help="training steps per timed repeat")
    p.add_argument("--devices", default="1,2,4,8", help="host device counts (one process)")
    p.add_argument("--nets", default="mlp,conv")
    p.add_argument("--no-processes", action="store_true", help="skip the 2-process runs")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per configuration")
    p.add_argument("--out", default=None, help="result stem (default benchmarks/results/scaleout-cpu-<date>)")
    a = p.parse_args(argv)
    if a.repeats < 5:
        print(f"note: --repeats {a.repeats} < 5; the table wants medians of >= 5", file=sys.stderr)
    date = _dt.date.today().isoformat()
    stem = Path(a.out) if a.out else RESULTS / f"scaleout-cpu-{date}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    tmp = stem.parent / f".scaleout-tmp-{os.getpid()}"
    tmp.mkdir(exist_ok=True)
    doc = {"date": date, "repeats": a.repeats, "steps": a.steps, "num_samples": NUM_SAMPLES,
           "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
           "versions": _versions(), "nets": {k: v["describe"] for k, v in NETS.items()},
           "uptime_before": _uptime(), "results": []}
    configs = [(int(d), 1) for d in a.devices.split(",")] + ([] if a.no_processes else [(2, 2)])
    try:
        for net in a.nets.split(","):
            for devices, processes in configs:
                r = _run(net, devices, processes, a.repeats, a.steps, tmp, a.timeout)
                doc["results"].append(r)
                print(f"{net}: {devices} devices x {processes} process(es): {r['train_steps_per_s']:.2f} "
                      f"steps/s (CPU/wall {r['train_cpu_over_wall']:.2f}), {r['samples_per_s']:.1f} samples/s "
                      f"(compile {r['train_compile_s']:.1f} + {r['sample_compile_s']:.1f} s)", flush=True)
    finally:
        for f in tmp.glob("*"):
            f.unlink()
        tmp.rmdir()
    doc["uptime_after"] = _uptime()
    stem.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n")
    stem.with_suffix(".md").write_text(_markdown(doc))
    print(f"wrote {stem.with_suffix('.json')} and {stem.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
