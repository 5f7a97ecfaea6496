"""Timing helpers shared by the benchmarks (DESIGN.md, "Benchmarks").

Each variant of a benchmark is a zero-argument callable that runs the work once and
returns its output already synchronised (``jax.block_until_ready`` on JAX outputs; torch
runs on CPU here, and ``sync_torch`` waits on CUDA if a tensor lives there). ``measure``
times the FIRST call of every variant apart (it includes JAX tracing/dispatch-cache
warm-up or torch's first allocations; JAX compile time is measured separately by the
caller through ``jit(...).lower(...).compile()``), then runs ``repeats`` rounds in which
every variant runs in turn, round-robin, so a change of machine load (the machine is
shared) hits all variants of a round alike. Medians of the repeats are quoted, and the
ratios are formed from medians of the same run.

Switching frameworks has a cost no user of one framework pays: right after a torch call
its OpenMP threads still spin-wait on the cores (and XLA's do after a JAX call), so the
next framework's first call finds the machine busy. Measured on the 2-core CPU
(2026-12-04, DDPM U-Net 32x32 forward, batch 4): JAX 9.4 ms alone, 12.3 ms right after a
torch.compile call; torch.compile 10.5 ms alone, 11.8 ms right after JAX. So a variant
shorter than ``SETTLE_BELOW_S`` (its first call, or its first round's call where the first
call compiled) runs one untimed *settle* call in each round before its timed call: the timed call then sees the machine as a user of that
framework sees it. The settle calls' own times are kept (``after_switch_s``) so the
switching cost stays on record. Longer variants (whole sampler trajectories) carry the
few milliseconds in their own time.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from typing import Any, Callable

SETTLE_BELOW_S = 0.5
"""Variants whose first call is shorter than this get an untimed settle call per round."""


@dataclasses.dataclass
class Variant:
    """One way of doing the benchmarked work.

    Attributes:
      name: the row label.
      run: ``run() -> output`` (synchronised).
      compile_s: seconds spent compiling before the first call (JAX AOT), if separate.
      note: a short remark for the table.
    """

    name: str
    run: Callable[[], Any]
    compile_s: float | None = None
    note: str = ""


@dataclasses.dataclass
class SelfTimed:
    """What a variant returns when it timed itself (another process: the ``jax-split``
    worker): its own ``dt``, the CPU seconds its process used in that time (``cpu_s``) and,
    for the first call, its peak RSS growth."""

    dt: float
    peak_rss_mib: float | None = None
    cpu_s: float | None = None


def timed_cpu(fn: Callable[[], Any]) -> tuple[float, float | None, Any]:
    """``(seconds, cpu_seconds, fn())``: wall time on a ``perf_counter`` clock and the CPU
    time all threads of this process used meanwhile (``time.process_time``, nanosecond
    resolution; spin-waiting threads count); a ``SelfTimed`` result gives its own."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    if isinstance(out, SelfTimed):
        return out.dt, out.cpu_s, out
    return dt, cpu, out


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """``(seconds, fn())`` with a ``perf_counter`` clock (a ``SelfTimed`` result's own dt)."""
    dt, _, out = timed_cpu(fn)
    return dt, out


def _rss_mib() -> float | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return None


class PeakRSS:
    """Peak resident-memory growth of this process while the block runs, in MiB (a thread
    samples ``/proc/self/statm`` every 2 ms; None where it is unavailable). It sees host
    memory only: on a GPU the device's ``peak_bytes_in_use`` is the figure to read."""

    def __enter__(self):
        import threading

        self.start = _rss_mib()
        self.peak = self.start
        self._stop = threading.Event()

        def sample():
            while not self._stop.is_set():
                r = _rss_mib()
                if r is not None and (self.peak is None or r > self.peak):
                    self.peak = r
                self._stop.wait(0.002)
        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        r = _rss_mib()
        if r is not None and self.peak is not None:
            self.peak = max(self.peak, r)
        self.growth_mib = None if self.start is None or self.peak is None else self.peak - self.start
        return False


def measure(variants: list[Variant], repeats: int,
            settle_below_s: float = SETTLE_BELOW_S) -> tuple[dict[str, dict], dict[str, Any]]:
    """Time every variant: first call apart (its peak RSS growth recorded), then
    ``repeats`` round-robin rounds; in each round a variant whose first call took less
    than ``settle_below_s`` (or, where the first call compiled, whose first round's call did)
    runs an untimed settle call right before its timed one (module docstring;
    ``settle_below_s=0`` turns this off).

    Returns ``(stats, outputs)``: ``stats[name]`` holds ``first_call_s``, ``compile_s``,
    ``peak_rss_mib``, ``times_s`` (all repeats), ``median_s``, ``min_s``, ``max_s``,
    ``settle`` (bool), ``after_switch_s`` (the settle calls' times, empty without),
    ``cpu_s`` (each timed call's process CPU seconds) and ``cores_used`` (the median of
    ``cpu_s / times_s``: how many cores' worth the call kept busy; None where unknown);
    ``outputs[name]`` is the first call's output (used for the agreement checks).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if not settle_below_s >= 0:
        raise ValueError(f"settle_below_s must be >= 0, got {settle_below_s}")
    stats: dict[str, dict] = {}
    outputs: dict[str, Any] = {}
    for v in variants:
        with PeakRSS() as mem:
            first, out = timed(v.run)
        peak = out.peak_rss_mib if isinstance(out, SelfTimed) else mem.growth_mib
        outputs[v.name] = out
        stats[v.name] = {"first_call_s": first, "compile_s": v.compile_s, "note": v.note,
                         "peak_rss_mib": peak, "times_s": [], "settle": True if first < settle_below_s else None,
                         "after_switch_s": [], "cpu_s": []}
    for _ in range(repeats):
        for v in variants:
            s = stats[v.name]
            if s["settle"]:
                s["after_switch_s"].append(timed(v.run)[0])
            dt, cpu, _ = timed_cpu(v.run)
            if s["settle"] is None:  # a long first call (torch.compile's compiles): decide now
                s["settle"] = dt < settle_below_s
                if s["settle"]:  # this call was the round's settle call
                    s["after_switch_s"].append(dt)
                    dt, cpu, _ = timed_cpu(v.run)
            s["times_s"].append(dt)
            s["cpu_s"].append(cpu)
    for s in stats.values():
        ts = s["times_s"]
        s.update(median_s=statistics.median(ts), min_s=min(ts), max_s=max(ts))
        known = [c / t for c, t in zip(s["cpu_s"], ts) if c is not None and t > 0]
        s["cores_used"] = statistics.median(known) if known and len(known) == len(ts) else None
    return stats, outputs


def add_ratios(stats: dict[str, dict], baseline: str) -> None:
    """``ratio_to_baseline = median / median(baseline)`` for every variant, in place."""
    base = stats[baseline]["median_s"]
    for s in stats.values():
        s["ratio_to_baseline"] = s["median_s"] / base


# ------------------------------------------------------------------ machine load (Linux)


def _cpu_busy_s() -> float | None:
    """Busy CPU seconds of the whole machine so far (``/proc/stat``), or None."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal (guest is inside user)
    return (total - idle) / os.sysconf("SC_CLK_TCK")


def _own_cpu_s(pids=()) -> float:
    """CPU seconds of this process plus those of the live processes ``pids`` (the
    ``jax-split`` worker: a child still running, which ``os.times()`` does not count)."""
    t = os.times()
    total = t.user + t.system
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
        except (OSError, ValueError, IndexError):
            pass
    return total


class LoadMonitor:
    """Measures the CPU load OTHER processes put on the machine while a block runs.

    ``foreign_cores = (machine busy seconds - this process's CPU seconds) / wall seconds``
    (``pids``: further processes of the run, the ``jax-split`` worker, counted as this
    process): about 0 on a quiet machine; on a 2-core machine 1.0 means another job took a
    whole core, and torch's OpenMP threads (which spin-wait) then slow down many-fold.
    """

    def __init__(self, pids=()):
        self._pids = tuple(pids)

    def __enter__(self):
        self._t0, self._busy0 = time.perf_counter(), _cpu_busy_s()
        self._own0 = _own_cpu_s(self._pids)
        return self

    def __exit__(self, *exc):
        self.wall_s = time.perf_counter() - self._t0
        busy1 = _cpu_busy_s()
        if self._busy0 is None or busy1 is None or self.wall_s <= 0:
            self.foreign_cores = None
        else:
            own = _own_cpu_s(self._pids) - self._own0
            self.foreign_cores = max(0.0, (busy1 - self._busy0 - own) / self.wall_s)
        return False


def foreign_load(seconds: float = 2.0) -> float | None:
    """Cores' worth of CPU other processes use over ``seconds`` (this process sleeping)."""
    with LoadMonitor() as m:
        time.sleep(seconds)
    return m.foreign_cores


def wait_for_quiet(max_wait_s: float, threshold: float = 0.25, window_s: float = 2.0,
                   log=print) -> tuple[bool, float | None, float]:
    """Sleep until the foreign load over a ``window_s`` window is below ``threshold`` cores,
    at most ``max_wait_s``. Returns ``(quiet, last foreign load, seconds waited)``."""
    t0 = time.perf_counter()
    load = foreign_load(window_s)
    while load is not None and load >= threshold and time.perf_counter() - t0 < max_wait_s:
        log(f"[benchmarks] machine busy: other processes use {load:.2f} cores; waiting ...")
        time.sleep(8.0)
        load = foreign_load(window_s)
    quiet = load is None or load < threshold
    return quiet, load, time.perf_counter() - t0


# ------------------------------------------------------------------ matmul peak


def matmul_peak(n: int = 2048, repeats: int = 5) -> dict:
    """The machine's measured float32 matmul rate: an ``n x n`` product in XLA (jit) and in
    torch, median of ``repeats`` after a warm-up; ``peak_flops_per_s`` is the larger."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    ja, jb = jnp.asarray(a), jnp.asarray(b)
    f = jax.jit(jnp.dot).lower(ja, jb).compile()
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    flops = 2.0 * n ** 3
    out = {"n": n}
    for name, run in (("xla", lambda: jax.block_until_ready(f(ja, jb))), ("torch", lambda: torch.mm(ta, tb))):
        run()
        ts = [timed(run)[0] for _ in range(repeats)]
        out[f"{name}_flops_per_s"] = flops / statistics.median(ts)
    out["peak_flops_per_s"] = max(out["xla_flops_per_s"], out["torch_flops_per_s"])
    return out
