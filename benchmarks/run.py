"""Run the benchmark suite and write ``<out>/<platform>-<mode>-<timestamp>.json`` and
``<out>/latest.md``.

Usage (from the repository root)::

    .venv/bin/python -m benchmarks.run            # full run (~5 min on 2 CPU cores)
    .venv/bin/python -m benchmarks.run --quick    # smoke run, small sizes (~1 min)
    .venv/bin/python -m benchmarks.run --compile  # also torch.compile the U-Net (slow)

What is measured (``benchmarks/cases.py``), always on identical weights and inputs/noise:
  1. PC sampler loop overhead: ``lax.scan`` under jit vs a Python loop over a jitted step
     vs torch eager, VPSDE N=1000, reverse_diffusion + langevin, a small MLP, 2-D, B=1024 and 64;
  2. a small DDPM U-Net forward: flax jit vs torch eager (NCHW and channels_last);
  3. DDIM (ddim10) with that U-Net: ``ddim_sample`` JAX vs torch.
On CPU with >= 2 cores the JAX rows also include the batch sharded over host devices
(``--host-devices``, default min(2, cores)); the flag has to be set before JAX starts, so
this module sets ``XLA_FLAGS`` before importing anything that imports jax.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes and few repeats (smoke run, ~1 min)")
    p.add_argument("--out", default="benchmarks/results", help="output directory (default: %(default)s)")
    p.add_argument("--compile", action="store_true", help="add torch.compile rows (about a minute of compile)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: the usable core count; never more)")
    p.add_argument("--host-devices", type=int, default=None,
                   help="JAX CPU host devices for the sharded rows (default: min(2, cores); 1 disables)")
    p.add_argument("--only", choices=("pc", "forward", "ddim"), action="append",
                   help="run only these benchmarks (repeatable)")
    p.add_argument("--wait-quiet", type=float, default=None, metavar="SECONDS",
                   help="before each benchmark wait up to this long for other processes to leave the "
                        "CPU (default: 300 full, 0 quick); the load seen is recorded either way")
    p.add_argument("--name", default=None, help="result file stem (default: <platform>-<mode>-<timestamp>)")
    args = p.parse_args(argv)
    cores = _cores()
    if args.threads is not None and not 1 <= args.threads <= cores:
        p.error(f"--threads must be in [1, {cores}] (the usable core count); more threads than cores "
                "is 50-70x slower on this machine")
    if args.host_devices is not None and args.host_devices < 1:
        p.error(f"--host-devices must be >= 1, got {args.host_devices}")
    return args


def _set_host_devices(n: int) -> None:
    """Ask XLA:CPU for ``n`` host devices unless XLA_FLAGS already says how many."""
    flags = os.environ.get("XLA_FLAGS", "")
    if n > 1 and "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _environment(threads: int) -> dict:
    import flax
    import jax
    import jaxlib
    import numpy
    import torch

    devices = jax.devices()
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cores": _cores(),
        "versions": {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "flax": flax.__version__,
                     "torch": torch.__version__, "numpy": numpy.__version__},
        "jax_backend": jax.default_backend(),
        "jax_devices": [str(d) for d in devices],
        "jax_device_kind": devices[0].device_kind,
        "jax_enable_x64": bool(jax.config.jax_enable_x64),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "torch_device": "cpu",
        "torch_num_threads": torch.get_num_threads(),
        "torch_num_interop_threads": torch.get_num_interop_threads(),
        "torch_requested_threads": threads,
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
        "note": "XLA:CPU sizes its own intra-op thread pool to the machine; it has no thread flag here.",
    }


def main(argv=None) -> int:
    args = _parse(argv)
    cores = _cores()
    threads = args.threads or cores
    host_devices = args.host_devices if args.host_devices is not None else min(2, cores)
    _set_host_devices(host_devices)

    import jax
    import torch

    torch.set_num_threads(threads)
    from benchmarks import cases, report, timing

    if jax.default_backend() != "cpu" or len(jax.devices()) < host_devices:
        host_devices = 1  # sharded rows are a CPU-host-device measurement only
    sizes = cases.QUICK if args.quick else cases.FULL
    mode = "quick" if args.quick else "full"
    started = datetime.datetime.now(datetime.timezone.utc)
    env = _environment(threads)
    env["host_devices_for_sharded_rows"] = host_devices
    env["loadavg_start"] = list(os.getloadavg())
    print(f"[benchmarks] {mode} run; jax {env['versions']['jax']} on {env['jax_device_kind']}, "
          f"torch {env['versions']['torch']} with {threads} threads, {cores} cores", flush=True)

    only = set(args.only or ("pc", "forward", "ddim"))
    wait_s = args.wait_quiet if args.wait_quiet is not None else (0.0 if args.quick else 300.0)
    jobs = [
        ("pc", "PC sampler", lambda: cases.bench_pc(sizes)),
        ("forward", "U-Net forward",
         lambda: [cases.bench_unet_forward(sizes, host_devices=host_devices, use_compile=args.compile)]),
        ("ddim", "DDIM", lambda: [cases.bench_ddim(sizes, host_devices=host_devices)]),
    ]
    results = []
    for key, label, job in jobs:
        if key not in only:
            continue
        if wait_s > 0:
            quiet, load_before, waited = timing.wait_for_quiet(wait_s)
        else:
            quiet, load_before, waited = None, timing.foreign_load(1.0), 0.0
        shown = "unknown" if load_before is None else f"{load_before:.2f}"
        print(f"[benchmarks] {label} (other processes use {shown} cores) ...", flush=True)
        with timing.LoadMonitor() as mon:
            benches = job()
        for b in benches:
            b["load"] = {"foreign_cores_before": load_before, "waited_s": waited, "quiet_before": quiet,
                         "foreign_cores_during": mon.foreign_cores, "block_wall_s": mon.wall_s}
        results.extend(benches)
    finished = datetime.datetime.now(datetime.timezone.utc)
    env["loadavg_end"] = list(os.getloadavg())

    doc = {
        "mode": mode,
        "started_utc": started.isoformat(timespec="seconds"),
        "wall_s": (finished - started).total_seconds(),
        "environment": env,
        "benchmarks": results,
    }
    os.makedirs(args.out, exist_ok=True)
    stem = args.name or f"{env['jax_backend']}-{mode}-{started.strftime('%Y%m%dT%H%M%SZ')}"
    json_path = os.path.join(args.out, f"{stem}.json")
    with open(json_path, "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
    md = report.markdown(doc, source=os.path.basename(json_path))
    with open(os.path.join(args.out, "latest.md"), "w") as f:
        f.write(md)
    print(md)
    print(f"[benchmarks] wrote {json_path} and {os.path.join(args.out, 'latest.md')} "
          f"in {doc['wall_s']:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
