"""Markdown rendering of a benchmark result document (the dict ``benchmarks.run`` writes as JSON).

``python -m benchmarks.report results/<file>.json`` re-renders a saved result.
"""

from __future__ import annotations

import json
import sys


def _s(x) -> str:
    """Seconds, three significant figures; em dash for missing."""
    if x is None:
        return "—"
    if x >= 100:
        return f"{x:.0f}"
    if x >= 1:
        return f"{x:.2f}"
    if x >= 0.01:
        return f"{x:.3f}"
    return f"{x * 1e3:.2f} ms"


def _e(x) -> str:
    return "—" if x is None else f"{x:.1e}"


def machine_line(env: dict) -> str:
    v = env["versions"]
    return (f"{env['cpu_model']}, {env['usable_cores']} usable cores (cpu_count {env['cpu_count']}); "
            f"JAX backend `{env['jax_backend']}` ({env['jax_device_kind']}, {len(env['jax_devices'])} device(s)); "
            f"torch CPU, {env['torch_num_threads']} intra-op / {env['torch_num_interop_threads']} inter-op threads; "
            f"python {env['python']}, jax {v['jax']}, jaxlib {v['jaxlib']}, flax {v['flax']}, "
            f"torch {v['torch']}, numpy {v['numpy']}; XLA_FLAGS=`{env['xla_flags'] or '(none)'}`; "
            f"load average at start / end {env['loadavg_start'][0]:.2f} / {env['loadavg_end'][0]:.2f}")


def table(bench: dict) -> str:
    rows = [f"**{bench['title']}**", "",
            f"| variant | median (s) | min (s) | x {'baseline'} | compile (s) | first call (s) | max abs diff vs torch |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for name, s in bench["variants"].items():
        diff = s.get("max_abs_diff_vs_torch")
        diff_txt = "(reference)" if name.startswith("torch eager") and diff == 0.0 else _e(diff)
        label = name + (" *(baseline)*" if name == bench["baseline"] else "")
        if s.get("note"):
            label += f" — {s['note']}"
        rows.append(f"| {label} | {_s(s['median_s'])} | {_s(s['min_s'])} | {s['ratio_to_baseline']:.2f} | "
                    f"{_s(s['compile_s'])} | {_s(s['first_call_s'])} | {diff_txt} |")
    n_rep = len(next(iter(bench["variants"].values()))["times_s"])
    extra = [f"Medians of {n_rep} round-robin repeats; outputs' max |value| = {bench['output_max_abs']:.3g}."]
    load = bench.get("load", {}).get("foreign_cores_during")
    if load is not None:
        flag = " **(contended: treat these timings as unreliable, torch's most)**" if load >= 0.25 else ""
        extra.append(f"Other processes used {load:.2f} cores on average while this block ran{flag}.")
    if "per_step_median_s" in bench:
        per = ", ".join(f"{k.split(':')[0]} {k.split(':')[1].split('(')[0].strip()}: {v * 1e3:.2f} ms"
                        for k, v in bench["per_step_median_s"].items())
        extra.append(f"Per PC step (median / N): {per}.")
        loop = next((s for k, s in bench["variants"].items() if "Python loop" in k), None)
        if loop and "max_abs_diff_vs_jax_scan" in loop:
            extra.append(f"Python-loop vs scan max abs diff: {loop['max_abs_diff_vs_jax_scan']:.1e}.")
    return "\n".join(rows + [""] + extra) + "\n"


def markdown(doc: dict, source: str = "") -> str:
    env = doc["environment"]
    parts = [
        f"# Benchmark results ({doc['mode']} run, {doc['started_utc']})",
        "",
        f"Machine: {machine_line(env)}.",
        "",
        f"Source: `{source}`; total wall time {doc['wall_s']:.0f} s. Times are per call of the whole "
        "operation (a full sampler run, or one forward pass); *x baseline* is the median over the "
        "baseline's median in the same run (lower is faster); compile = JAX `lower().compile()`; "
        "first call = the first timed call after that (torch: the first eager call).",
        "",
    ]
    for bench in doc["benchmarks"]:
        parts.append(table(bench))
    return "\n".join(parts)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m benchmarks.report <result.json>")
    with open(sys.argv[1]) as f:
        print(markdown(json.load(f), source=sys.argv[1]))
