"""Markdown rendering of a benchmark result document (the dict ``benchmarks.run`` writes as JSON),
and the block of the repository README that a full run regenerates.

    python -m benchmarks.report results/<file>.json                    # re-render (to stdout)
    python -m benchmarks.report results/<file>.json --latest           # rewrite results/latest.md
    python -m benchmarks.report results/<file>.json --readme README.md  # rewrite the README's table

The README holds the summary table and the targets of the latest full run between the lines
``<!-- benchmarks:<device>:begin -->`` and ``<!-- benchmarks:<device>:end -->`` (``<device>``:
``cpu``, or the accelerator's kind as in the result's file name); ``readme_block`` is what goes
between them, ``update_readme`` replaces it and nothing else.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile

from benchmarks.cases import CONTENDERS

JAX_ROWS = ("jax", "jax-split")


def device_tag(env: dict) -> str:
    """``cpu`` or the accelerator's kind, lower-case, for file names and README markers."""
    if env["jax_backend"] == "cpu":
        return "cpu"
    return "".join(ch if ch.isalnum() else "-" for ch in env["jax_device_kind"].lower()).strip("-")


def latest_name(tag: str) -> str:
    """The file a complete full run on device ``tag`` leaves its tables in: ``latest.md`` on
    the CPU, ``latest-<tag>.md`` elsewhere (an accelerator's results are recorded apart)."""
    return "latest.md" if tag == "cpu" else f"latest-{tag}.md"


def _s(x) -> str:
    """Seconds, three significant figures; em dash for missing."""
    if x is None:
        return "—"
    if x >= 100:
        return f"{x:.0f} s"
    if x >= 1:
        return f"{x:.2f} s"
    if x >= 0.01:
        return f"{x * 1e3:.0f} ms"
    if x >= 1e-4:
        return f"{x * 1e3:.2f} ms"
    return f"{x * 1e6:.1f} µs"


def _n(x, unit="") -> str:
    if x is None:
        return "—"
    for div, suf in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{suf}{unit}"
    return f"{x:.3g}{unit}"


def _e(x) -> str:
    return "—" if x is None else f"{x:.1e}"


def machine_line(env: dict) -> str:
    v = env["versions"]
    vs = ", ".join(f"{k} {val}" for k, val in v.items() if val)
    peak = env.get("matmul_peak", {})
    peak_txt = ""
    if peak:
        peak_txt = (f"; measured fp32 matmul peak {peak['peak_flops_per_s'] / 1e9:.0f} GFLOP/s "
                    f"(XLA {peak['xla_flops_per_s'] / 1e9:.0f}, torch {peak['torch_flops_per_s'] / 1e9:.0f}, "
                    f"{peak['n']}x{peak['n']})")
    split = env.get("split_worker")
    split_txt = f"; jax-split worker: {split['devices']} host devices" if split else ""
    dnnl = env.get("onednn_convolutions")
    if dnnl:  # results before 2026-12-03 evening do not record it (XLA's convolutions)
        threads = {"xla": " on XLA's threads", "tbb": " on its own threads"}.get(dnnl.get("threading"), "")
        split_txt += (f"; `jax` 2-D convolutions: oneDNN {dnnl['onednn']}{threads}" if dnnl["enabled"]
                      else f"; `jax` 2-D convolutions: XLA ({dnnl['reason']})")
    malloc = env.get("host_malloc")
    if malloc:  # results before 2026-12-04 04:00 do not record it (glibc's defaults)
        split_txt += ("; malloc keeps freed memory (`jax_impl/host_malloc.py`)" if malloc["applied"]
                      else f"; malloc: glibc's defaults ({malloc['why']})")
    return (f"{env['cpu_model']}, {env['usable_cores']} usable cores (cpu_count {env['cpu_count']}); "
            f"JAX backend `{env['jax_backend']}` ({env['jax_device_kind']}, {len(env['jax_devices'])} "
            f"device(s) in the main process){split_txt}; torch {env['torch_device']}, "
            f"{env['torch_num_threads']} intra-op / {env['torch_num_interop_threads']} inter-op threads; "
            f"python {env['python']}, {vs}; XLA_FLAGS=`{env['xla_flags'] or '(none)'}`{peak_txt}; "
            f"load average at start / end {env['loadavg_start'][0]:.2f} / {env['loadavg_end'][0]:.2f}")


def _fastest(bench, rows=None):
    """The fastest of ``rows`` (default: every contender) whose outputs agree with ``jax``'s:
    a contender that computes something else does not win on speed."""
    vs = {k: s for k, s in bench["variants"].items() if (rows is None or k in rows) and s["agrees"]}
    if not vs:
        return None, None
    k = min(vs, key=lambda n: vs[n]["median_s"])
    return k, vs[k]["median_s"]


def one_line(bench: dict) -> str:
    if "error" in bench:
        return f"  {bench['name']}: FAILED: {bench['error']}"
    parts = []
    for name, s in bench["variants"].items():
        parts.append(f"{name} {_s(s['median_s'])} (x{s['ratio_to_baseline']:.2f})")
    ok = "outputs agree" if bench["all_agree"] else "OUTPUTS DIFFER"
    return f"  {bench['name']}: " + ", ".join(parts) + f"; {ok}"


def summary(doc: dict) -> str:
    done = [b for b in doc["benchmarks"] if "error" not in b]
    present = [c for c in CONTENDERS if any(c in b["variants"] for b in done)]
    head = "| configuration | NFE | " + " | ".join(present) + " | fastest | JAX compile | agree |"
    rows = [head, "|" + "---|" * (len(present) + 5)]
    for b in done:
        cells = []
        for c in present:
            s = b["variants"].get(c)
            cells.append("" if s is None else f"{_s(s['median_s'])} ({s['ratio_to_baseline']:.2f})")
        fk, _ = _fastest(b)
        jc = b["variants"]["jax"]["compile_s"]
        sc = b["variants"].get("jax-split", {}).get("compile_s")
        comp = _s(jc) + ("" if sc is None else f" / {_s(sc)}")
        rows.append(f"| `{b['name']}` | {b.get('nfe') or '—'} | " + " | ".join(cells) +
                    f" | {fk} | {comp} | {'yes' if b['all_agree'] else '**no**'} |")
    return "\n".join(rows) + "\n"


def targets(doc: dict) -> list[str]:
    """The issue's targets, judged from this run (ratios within the run)."""
    out = []
    done = [b for b in doc["benchmarks"] if "error" not in b]
    by = {b["name"]: b for b in done}
    small = sorted({b["batch"] for b in done if b["net"] == "mlp"})
    B = small[0] if small else None
    for job in ("em", "pc"):
        b = by.get(f"mlp_{job}_b{B}")
        if not b or "torch" not in b["variants"]:
            continue
        v = b["variants"]
        jk, jt = _fastest(b, JAX_ROWS)
        r = v["torch"]["median_s"] / jt
        line = (f"- MLP {job.upper()} batch {B}, {b['steps']} steps: best JAX row (`{jk}`) is **{r:.1f}x** "
                f"torch eager (target >= 20x: {'met' if r >= 20 else 'not met'})")
        if "diffusionjax" in v:
            rd = v["diffusionjax"]["median_s"] / jt
            line += f"; {rd:.2f}x diffusionjax ({'ahead' if rd > 1 else 'behind'})"
        out.append(line + ".")
    met, missed = [], []
    for b in done:
        others = [k for k in b["variants"] if k not in JAX_ROWS]
        if not others:
            continue
        jk, jt = _fastest(b, JAX_ROWS)
        ok, ot = _fastest(b, others)
        (met if jt <= ot else missed).append(f"`{b['name']}` ({jk} {_s(jt)} vs {ok} {_s(ot)}: {ot / jt:.2f}x)")
    out.append(f"- JAX at least as fast as the fastest contender: met in {len(met)} of {len(met) + len(missed)} "
               f"configurations" + (f"; not met in {', '.join(missed)}" if missed else "") + ".")
    long = [b for b in done if b["job"] not in ("forward", "train") and b["steps"] >= 1000]
    if long:
        worst = max(long, key=lambda b: b["variants"]["jax"]["compile_s"])
        c = worst["variants"]["jax"]["compile_s"]
        out.append(f"- 1000-step samplers compile in at most {_s(c)} (`{worst['name']}`; target < 10 s: "
                   f"{'met' if c < 10 else 'not met'}).")
    return out


def detail(b: dict) -> str:
    sampler = b["job"] not in ("forward", "train")
    rate = "samples/s" if sampler else ("steps/s" if b["job"] == "train" else "calls/s")
    rows = [f"**{b['title']}** (`{b['name']}`)", "",
            f"| contender | median | min | {rate} | per NFE | x jax | compile | first call | peak RSS | "
            f"cores | % of peak | max abs diff vs jax |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    peak = b.get("_peak")
    for name, s in b["variants"].items():
        r = s.get("samples_per_s") or s.get("steps_per_s") or 1.0 / s["median_s"]
        frac = "—" if peak is None or s.get("flops_per_s") is None else f"{100 * s['flops_per_s'] / peak:.0f}%"
        mem = "—" if s.get("peak_rss_mib") is None else f"{s['peak_rss_mib']:.0f} MiB"
        cores = "—" if s.get("cores_used") is None else f"{s['cores_used']:.2f}"
        label = name + (f" ({s['note']})" if s.get("note") else "")
        diff = _e(s["max_abs_diff_vs_jax"]) + ("" if s["agrees"] else " **differs**")
        if name == "jax":
            diff = "(reference)"
        rows.append(f"| {label} | {_s(s['median_s'])} | {_s(s['min_s'])} | {_n(r)} | {_s(s.get('per_nfe_s'))} | "
                    f"{s['ratio_to_baseline']:.2f} | {_s(s['compile_s'])} | {_s(s['first_call_s'])} | {mem} | "
                    f"{cores} | {frac} | {diff} |")
    n_rep = len(next(iter(b["variants"].values()))["times_s"])
    settled = {k: s for k, s in b["variants"].items() if s.get("after_switch_s")}
    how = ("" if not settled else "; every contender's timed call right after an untimed settle call "
           "of its own (calls under 0.5 s)" if len(settled) == len(b["variants"]) else
           "; the contenders under 0.5 s timed right after an untimed settle call of their own")
    extra = [f"Medians of {n_rep} round-robin repeats after the first call{how}; outputs' max |value| "
             f"{b['output_max_abs']:.3g}, agreement tolerance {b['tolerance']:g} x (1 + max |value|); "
             f"work per call {_n(b.get('flops_per_call'), 'FLOP')}; cores: the process's CPU seconds over "
             f"wall seconds in the timed calls (median; spin-waiting threads count)."]
    if settled:
        extra.append("Right after another contender's call (the settle calls' median): " + ", ".join(
            f"{k} {_s(statistics.median(s['after_switch_s']))}" for k, s in settled.items()) + ".")
    load = b.get("load", {}).get("foreign_cores_during")
    if load is not None:
        flag = " **(contended: timings unreliable, torch's most)**" if load >= 0.25 else ""
        extra.append(f"Other processes used {load:.2f} cores on average while this ran{flag}.")
    return "\n".join(rows + [""] + extra) + "\n"


def _foreign_loads(doc: dict) -> list[float]:
    """The cores other processes used during each finished configuration (where recorded)."""
    return [b["load"]["foreign_cores_during"] for b in doc["benchmarks"] if "error" not in b
            if b.get("load", {}).get("foreign_cores_during") is not None]


def markdown(doc: dict, source: str = "") -> str:
    env = doc["environment"]
    peak = env.get("matmul_peak", {}).get("peak_flops_per_s")
    loads = _foreign_loads(doc)
    load_txt = (f" Other processes used {min(loads):.2f}-{max(loads):.2f} cores (mean "
                f"{sum(loads) / len(loads):.2f}) while the configurations ran." if loads else "")
    parts = [
        f"# Benchmark results ({doc['mode']} run, {doc['started_utc']})",
        "",
        f"Machine: {machine_line(env)}.",
        "",
        f"Source: `{source}`; command `{doc.get('command', 'python -m benchmarks.run')}`; total wall time "
        f"{doc['wall_s']:.0f} s.{load_txt}" + (f" Note: {doc['note']}" if doc.get("note") else "")
        + ("" if doc.get("complete", True) else
           f" **Partial: {len(doc['benchmarks'])} of {len(doc.get('configurations_planned', []))} "
           f"configurations finished.**"),
        "",
        "Cells: median time of one whole call (a full sampler trajectory, one network evaluation, or one "
        "training step) and, in brackets, that median over the `jax` row's (lower is faster); every "
        "contender runs the same weights, inputs and noise, round-robin in the same run (a call under "
        "0.5 s is timed right after an untimed call of its own: `benchmarks/timing.py`). JAX compile: "
        "`lower().compile()` of `jax` / `jax-split`.",
        "",
        summary(doc),
        "## Targets (issue 11)",
        "",
        *targets(doc),
        "",
        "## Every configuration",
        "",
    ]
    for b in doc["benchmarks"]:
        if "error" in b:
            parts.append(f"**{b['title']}** (`{b['name']}`): **failed**: `{b['error']}`\n")
            continue
        parts.append(detail(dict(b, _peak=peak)))
    return "\n".join(parts)


def readme_block(doc: dict, source: str) -> str:
    """The README's generated part: which run, the summary table, the targets."""
    env = doc["environment"]
    peak = env.get("matmul_peak", {}).get("peak_flops_per_s")
    loads = _foreign_loads(doc)
    head = (f"Generated by `python -m benchmarks.run` from `benchmarks/results/{source}` "
            f"({doc['mode']} run of {doc['started_utc']}, {doc['wall_s']:.0f} s"
            + (f"; measured fp32 matmul peak {peak / 1e9:.0f} GFLOP/s" if peak else "")
            + (f"; other processes used at most {max(loads):.2f} cores" if loads else "") + "). "
            "Cells: median of one whole call (sampler trajectory, network evaluation or training "
            "step) and, in brackets, over the `jax` row's; every contender on the same weights, "
            "inputs and noise, round-robin in one run; per-configuration details in "
            f"`benchmarks/results/{latest_name(device_tag(env))}`.")
    return "\n".join([head, "", summary(doc).rstrip("\n"), "", *targets(doc)]) + "\n"


def _markers(tag: str) -> tuple[str, str]:
    return f"<!-- benchmarks:{tag}:begin -->", f"<!-- benchmarks:{tag}:end -->"


def replace_block(text: str, tag: str, block: str, where: str = "README") -> str:
    """``text`` with what lies between ``tag``'s begin and end markers replaced by ``block``.
    ValueError naming ``where`` and the marker when they are missing, repeated or reversed."""
    begin, end = _markers(tag)
    if text.count(begin) != 1 or text.count(end) != 1:
        raise ValueError(f"{where}: needs exactly one {begin!r} line and one {end!r} line "
                         f"(found {text.count(begin)} and {text.count(end)})")
    i, j = text.index(begin), text.index(end)
    if j < i:
        raise ValueError(f"{where}: {end!r} comes before {begin!r}")
    return text[:i + len(begin)] + "\n" + block.rstrip("\n") + "\n" + text[j:]


def check_out_dir(path: str) -> str | None:
    """Create the output folder ``path`` if needed; a one-line reason when it cannot be
    written (checked before a run spends minutes measuring), else None."""
    if os.path.exists(path) and not os.path.isdir(path):
        return f"--out {path}: is a file, not a folder"
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        return f"--out {path}: cannot create it ({err.strerror})"
    if not os.access(path, os.W_OK | os.X_OK):
        return f"--out {path}: not writable"
    return None


def write_atomic(path: str, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename:
    an interrupted write leaves the old file whole."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def update_readme(path: str, doc: dict, source: str) -> str:
    """Replace the README block of ``doc``'s device with ``readme_block(doc, source)``;
    returns the tag. ValueError (naming ``path``) without the markers; the file is unchanged."""
    tag = device_tag(doc["environment"])
    with open(path) as f:
        text = f.read()
    new = replace_block(text, tag, readme_block(doc, source), where=path)
    if new != text:
        write_atomic(path, new)
    return tag


def _load(path: str) -> dict:
    try:
        with open(path) as f:
            doc = json.load(f)
    except OSError as err:
        raise SystemExit(f"{path}: cannot read the result ({err.strerror})") from None
    except json.JSONDecodeError as err:
        raise SystemExit(f"{path}: not a benchmark result (invalid JSON: {err})") from None
    if not isinstance(doc, dict) or not {"environment", "benchmarks", "mode"} <= set(doc):
        raise SystemExit(f"{path}: not a benchmark result (needs 'mode', 'environment' and 'benchmarks')")
    return doc


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.report",
                                description="Re-render a saved benchmark result.")
    p.add_argument("result", help="a result JSON written by python -m benchmarks.run")
    p.add_argument("--latest", action="store_true",
                   help="write the tables to latest.md (latest-<device>.md off the CPU) beside the result "
                        "instead of printing them")
    p.add_argument("--readme", metavar="README", help="replace that file's generated benchmark block "
                                                      "(between its <!-- benchmarks:<device>:begin/end --> lines)")
    args = p.parse_args(argv)
    doc = _load(args.result)
    source = os.path.basename(args.result)
    md = markdown(doc, source=source)
    if args.latest:
        out = os.path.join(os.path.dirname(os.path.abspath(args.result)), latest_name(device_tag(doc["environment"])))
        write_atomic(out, md)
        print(f"wrote {out}")
    if args.readme:
        try:
            tag = update_readme(args.readme, doc, source)
        except OSError as err:
            raise SystemExit(f"--readme {args.readme}: {err.strerror}") from None
        except ValueError as err:
            raise SystemExit(f"--readme: {err}") from None
        print(f"updated the {tag} benchmark block of {args.readme}")
    if not (args.latest or args.readme):
        print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
