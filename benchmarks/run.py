"""Run the benchmark suite; write ``<out>/<device>-<date>.json`` and its tables.

Usage (from the repository root)::

    .venv/bin/python -m benchmarks.run                 # the full suite (<= 20 min on 2 quiet cores)
    .venv/bin/python -m benchmarks.run --tiny          # every configuration at a tiny size, 1 repeat
    .venv/bin/python -m benchmarks.run --only 'mlp_*' --only unet32_ddim50_b4
    .venv/bin/python -m benchmarks.run --list          # the configurations and their contenders

Every run writes its result JSON and ``<stem>.md`` (the tables) after each configuration. A
complete run of the whole suite (full size, every configuration and contender, the default
repeats, threads and host split) then renames its tables to ``<out>/latest.md`` and, when
``<out>`` is this repository's ``benchmarks/results``, rewrites README.md's generated table
(``benchmarks.report.update_readme``; ``--no-readme`` leaves it). Smoke runs, selections and
interrupted runs never replace the last whole run's files.

The configurations and contenders are in ``benchmarks/cases.py`` and
``benchmarks/contenders.py``; ``benchmarks/README.md`` says how to read the table. The same
command runs on a GPU host (JAX's default backend is recorded and names the files:
``<kind>-<date>.json``, ``latest-<kind>.md``, the README's ``<kind>`` block; the ``jax-split``
row is a CPU-host measurement and is skipped elsewhere).
"""

from __future__ import annotations

import argparse
import datetime
import fnmatch
import json
import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", "--quick", dest="tiny", action="store_true",
                   help="every configuration at a tiny size with one repeat (a smoke run; the test's mode)")
    p.add_argument("--only", action="append", metavar="PATTERN",
                   help="run only the configurations whose name matches (fnmatch; repeatable)")
    p.add_argument("--contenders", default=None, metavar="A,B",
                   help="comma-separated contender rows to run (default: each configuration's own; "
                        "'jax' always runs, it is the reference)")
    p.add_argument("--no-split", action="store_true", help="leave out the jax-split rows (no worker process)")
    p.add_argument("--host-devices", default="auto",
                   help="the jax-split worker's host devices: 'auto' (one per core, the default) or an int")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per contender (default 5 full, 1 tiny)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: the usable core count; never more)")
    p.add_argument("--out", default=str(RESULTS), help="output directory (default: this repository's "
                                                         "benchmarks/results)")
    p.add_argument("--name", default=None, help="result file stem (default: <device>-<UTC date>)")
    p.add_argument("--note", default="", help="a remark stored in the result and printed under the table "
                                              "(e.g. 'trial run on a shared machine')")
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                   help="before each configuration wait up to this long for other processes to leave the "
                        "CPU (default 0); the load seen is recorded either way")
    p.add_argument("--no-readme", action="store_true",
                   help="a complete full run into the default --out leaves README.md's table alone")
    p.add_argument("--list", action="store_true", help="print the configurations and exit")
    args = p.parse_args(argv)
    cores = _cores()
    if args.threads is not None and not 1 <= args.threads <= cores:
        p.error(f"--threads must be in [1, {cores}] (the usable core count); more threads than cores "
                "is 50-70x slower on this machine")
    if args.repeats is not None and args.repeats < 1:
        p.error(f"--repeats must be >= 1, got {args.repeats}")
    if args.host_devices != "auto":
        try:
            if int(args.host_devices) < 1:
                raise ValueError
        except ValueError:
            p.error(f"--host-devices must be 'auto' or an int >= 1, got {args.host_devices!r}")
    from jax_impl import host_malloc, onednn

    try:
        onednn.check_environment()
        host_malloc.check_environment()
    except ValueError as err:
        p.error(str(err))
    if not args.list:
        from benchmarks.report import check_out_dir

        problem = check_out_dir(args.out)
        if problem:
            p.error(problem)
    return args


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(mod: str) -> str | None:
    try:
        from importlib.metadata import version
        return version(mod)
    except Exception:  # noqa: BLE001
        return None


def environment(threads: int) -> dict:
    import jax
    import torch

    from jax_impl import host_malloc, onednn

    devices = jax.devices()
    dnnl = onednn.status()
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cores": _cores(),
        "versions": {m: _version(m) for m in ("jax", "jaxlib", "flax", "optax", "torch", "numpy",
                                               "diffusers", "diffusionjax")},
        "jax_backend": jax.default_backend(),
        "jax_devices": [str(d) for d in devices],
        "jax_device_kind": devices[0].device_kind,
        "jax_enable_x64": bool(jax.config.jax_enable_x64),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        # the `jax` row's 2-D convolutions: oneDNN custom calls when enabled (jax_impl/onednn.py)
        "onednn_convolutions": {k: dnnl[k] for k in ("enabled", "reason", "onednn", "threading")},
        # the process's malloc keeps freed memory (jax_impl/host_malloc.py), for every row
        "host_malloc": host_malloc.state(),
        "torch_device": "cuda" if torch.cuda.is_available() else "cpu",
        "torch_num_threads": torch.get_num_threads(),
        "torch_num_interop_threads": torch.get_num_interop_threads(),
        "torch_requested_threads": threads,
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
        "scorediff_host_devices_env": os.environ.get("SCOREDIFF_HOST_DEVICES"),
        "note": "XLA:CPU sizes its own intra-op thread pool to the machine; it has no thread flag.",
    }


def whole_suite(args: argparse.Namespace, mode: str, threads: int, cores: int) -> bool:
    """Whether this run is one of the whole suite as a user would quote it: full size, every
    configuration and contender, the default repeats, torch on every core, the default split.
    Only such a run, once complete, becomes ``latest.md`` and the README's table."""
    return (mode == "full" and not args.only and not args.contenders and not args.no_split
            and args.repeats is None and threads == cores and args.host_devices == "auto")


def select(cases, patterns):
    if not patterns:
        return list(cases)
    chosen = [c for c in cases if any(fnmatch.fnmatchcase(c.name, p) for p in patterns)]
    if not chosen:
        raise SystemExit(f"--only {' '.join(patterns)}: no configuration matches; --list shows them")
    return chosen


def main(argv=None) -> int:
    args = _parse(argv)
    from benchmarks import cases as C

    sizes = C.TINY if args.tiny else C.FULL
    all_cases = C.all_cases(sizes)
    if args.list:
        for c in all_cases:
            print(f"{c.name:28s} {', '.join(c.contenders):70s} {c.title}")
        return 0
    chosen = select(all_cases, args.only)
    contenders = None
    if args.contenders:
        contenders = {s.strip() for s in args.contenders.split(",") if s.strip()} | {"jax"}
        unknown = contenders - set(C.CONTENDERS)
        if unknown:
            raise SystemExit(f"--contenders: unknown {sorted(unknown)}; valid: {', '.join(C.CONTENDERS)}")

    from jax_impl import xla_cpu

    xla_cpu.configure_cpu_convolutions()  # the library's default set-up (jax_impl/xla_cpu.py)
    from jax_impl import host_malloc

    host_malloc.configure_host_allocator()  # the command line's (jax_impl/host_malloc.py): every row
    import jax
    import torch

    cores = _cores()
    threads = args.threads or cores
    torch.set_num_threads(threads)
    from benchmarks import contenders as K
    from benchmarks import report, timing

    started = datetime.datetime.now(datetime.timezone.utc)
    env = environment(threads)
    env["loadavg_start"] = list(os.getloadavg())
    print(f"[benchmarks] {sizes.mode} run of {len(chosen)} configuration(s); jax {env['versions']['jax']} "
          f"on {env['jax_device_kind']} ({len(jax.devices())} device(s)), torch {env['versions']['torch']} "
          f"with {threads} threads, {cores} cores", flush=True)
    env["matmul_peak"] = timing.matmul_peak(512 if args.tiny else 2048, 2 if args.tiny else 5)
    print(f"[benchmarks] measured matmul peak {env['matmul_peak']['peak_flops_per_s'] / 1e9:.0f} GFLOP/s "
          f"(XLA {env['matmul_peak']['xla_flops_per_s'] / 1e9:.0f}, torch "
          f"{env['matmul_peak']['torch_flops_per_s'] / 1e9:.0f})", flush=True)

    want_split = not args.no_split and env["jax_backend"] == "cpu" and (
        contenders is None or "jax-split" in contenders) and any("jax-split" in c.contenders for c in chosen)
    worker = None
    if want_split:
        worker = K.SplitWorker(args.host_devices)
        env["split_worker"] = worker.info
    ctx = K.make_context(sizes)
    results = []
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    tag = report.device_tag(env)
    stem = args.name or (f"{tag}-{stamp}" if sizes.mode == "full" else f"{tag}-{sizes.mode}-{stamp}")
    json_path = os.path.join(args.out, f"{stem}.json")
    # tables of this run: <stem>.md while it runs; a whole-suite run (full, every configuration
    # and contender, default repeats / threads / split) becomes latest.md when it completes, so
    # a smoke run, a selection or an interrupted run never replaces the last whole one
    whole = whole_suite(args, sizes.mode, threads, cores)
    md_path = os.path.join(args.out, f"{stem}.md")
    latest_path = os.path.join(args.out, report.latest_name(tag))

    def write(complete: bool) -> dict:
        """The result so far (rewritten after every configuration: an interrupted run
        leaves its finished configurations, marked partial)."""
        finished = datetime.datetime.now(datetime.timezone.utc)
        env["loadavg_end"] = list(os.getloadavg())
        doc = {
            "mode": sizes.mode,
            "started_utc": started.isoformat(timespec="seconds"),
            "wall_s": (finished - started).total_seconds(),
            "command": "python -m benchmarks.run " + " ".join(argv if argv is not None else sys.argv[1:]),
            "note": args.note,
            "complete": complete,
            "configurations_planned": [c.name for c in chosen],
            "environment": env,
            "benchmarks": results,
        }
        report.write_atomic(json_path, json.dumps(doc, indent=1, default=float) + "\n")
        report.write_atomic(md_path, report.markdown(doc, source=os.path.basename(json_path)))
        return doc

    try:
        for case in chosen:
            if args.wait_quiet > 0:
                quiet, load_before, waited = timing.wait_for_quiet(args.wait_quiet)
            else:
                # a short look in a tiny run (its timings are not the point)
                quiet, load_before, waited = None, timing.foreign_load(0.05 if args.tiny else 0.5), 0.0
            shown = "unknown" if load_before is None else f"{load_before:.2f}"
            print(f"[benchmarks] {case.name} (other processes use {shown} cores) ...", flush=True)
            with timing.LoadMonitor(pids=() if worker is None else (worker.proc.pid,)) as mon:
                try:
                    res = K.run_case(ctx, case, contenders=contenders, worker=worker, repeats=args.repeats)
                except Exception as err:  # noqa: BLE001 -- recorded; the other configurations still run
                    import traceback

                    res = {"name": case.name, "title": case.title, "net": case.net, "job": case.job,
                           "batch": case.batch, "steps": case.steps,
                           "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
                    print(res["traceback"], file=sys.stderr, flush=True)
            res["load"] = {"foreign_cores_before": load_before, "waited_s": waited, "quiet_before": quiet,
                           "foreign_cores_during": mon.foreign_cores, "block_wall_s": mon.wall_s}
            results.append(res)
            print(report.one_line(res), flush=True)
            write(complete=False)
    finally:
        if worker is not None:
            worker.close()
    doc = write(complete=True)
    print(report.markdown(doc, source=os.path.basename(json_path)))
    failed = [r["name"] for r in results if "error" in r]
    publish = whole and not failed
    if publish:
        os.replace(md_path, latest_path)
        md_path = latest_path
    print(f"[benchmarks] wrote {json_path} and {md_path} in {doc['wall_s']:.0f} s", flush=True)
    if publish and not args.no_readme and os.path.realpath(args.out) == os.path.realpath(RESULTS):
        try:
            report.update_readme(str(README), doc, os.path.basename(json_path))
            print(f"[benchmarks] updated the {tag} table of {README}", flush=True)
        except (OSError, ValueError) as err:
            print(f"[benchmarks] README.md not updated: {err}", file=sys.stderr, flush=True)
    if failed:
        print(f"[benchmarks] FAILED: {', '.join(failed)}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
