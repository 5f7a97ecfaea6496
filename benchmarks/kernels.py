"""One 3x3 convolution's three kernels, XLA:CPU against oneDNN: where the conv-net training
step's time goes (issue 11).

    python -m benchmarks.kernels                      # the U-Net's two widest layer shapes
    python -m benchmarks.kernels --shape 16x32x64x64  # N x H(=W) x C_in x C_out (repeatable)
    python -m benchmarks.kernels --tiny               # one small shape, 1 repeat (the test's)

A training step runs every convolution three times: the forward pass ``y = x * w``, the input
gradient ``dx`` (a convolution of ``dy`` with the flipped kernel) and the weight gradient
``dw[kh, kw, i, o] = sum_{n, h, w} x_pad[n, h + kh, w + kw, i] dy[n, h, w, o]``. Each is timed
on the same float32 inputs (stride 1, padding 1, channels last) as

* ``xla``: ``jax.jit`` of ``lax.conv_general_dilated`` and its VJPs with the library's setting
  (``jax_impl.xla_cpu.configure_cpu_convolutions``: XLA's own multi-threaded convolutions);
* ``ynn``: the same under JAX's default (YNNPACK's convolutions, one core each);
* ``onednn`` (in the ``xla`` process): ``jax_impl.onednn.conv2d`` and its VJPs, the oneDNN
  custom calls ``xla_cpu_layers.Conv`` uses for 2-D convolutions on the CPU by default;
* ``torch`` / ``torch-cl``: ``torch.nn.functional.conv2d`` and ``aten.convolution_backward``
  (oneDNN), NCHW and channels_last, on every usable core;

and, in the ``xla`` process, the other formulations a JAX user could write:

* ``patches-matmul`` (forward): XLA's matmul ``[N H W, 9 C_in] x [9 C_in, C_out]`` of the
  im2col patches, the patches built *outside* the clock: the best an im2col formulation
  could do, a ceiling on every dot-based convolution;
* ``winograd`` (forward): Winograd's F(2x2, 3x3) (Lavin & Gray 2016): input and output
  transforms as strided slices and adds, 16 batched ``[N H W / 4, C_in] x [C_in, C_out]``
  matmuls;
* ``shifted-matmuls`` (weight gradient): nine ``[C_in, N H W] x [N H W, C_out]`` products of
  shifted input windows with ``dy``;
* ``batch-halves`` (weight gradient): the weight gradient of each half of the batch, summed
  (two independent convolutions the thunk executor may overlap).

Every output is checked against a float64 numpy oracle (im2col and BLAS) before its time is
kept; the table gives medians over ``--repeats`` round-robin repeats inside each process and
GFLOP/s = 2 N H W 9 C_in C_out / median. The XLA settings need separate processes (the flag
is read when the backend starts), so ratios across processes are of medians measured one
process after the other. Writes ``<out>/kernels-<device>-<UTC date>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OPS = ("forward", "input-grad", "weight-grad")
FULL_SHAPES = ((16, 32, 64, 64), (16, 16, 128, 128))
TINY_SHAPES = ((2, 8, 8, 16),)
# agreement with the float64 oracle: |out - oracle| <= TOL * max |oracle| (float32 sums of
# 9 C_in or N H W terms; Winograd's transforms add a few roundings)
TOL = 1e-4


def _parse_shape(text: str) -> tuple[int, int, int, int]:
    try:
        n, h, ci, co = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shape {text!r}: expected N x H x C_in x C_out, e.g. 16x32x64x64") from None
    if min(n, h, ci, co) < 1 or h % 2:
        raise argparse.ArgumentTypeError(f"--shape {text!r}: sizes must be >= 1 and H even (Winograd's 2x2 tiles)")
    return n, h, ci, co


def inputs(shape, seed: int = 0) -> dict[str, np.ndarray]:
    """x [N, H, H, C_in], w [3, 3, C_in, C_out] (HWIO), dy [N, H, H, C_out], float32."""
    n, h, ci, co = shape
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((n, h, h, ci), dtype=np.float32),
            "w": (rng.standard_normal((3, 3, ci, co)) / np.sqrt(9 * ci)).astype(np.float32),
            "dy": rng.standard_normal((n, h, h, co), dtype=np.float32)}


def _patches64(x: np.ndarray) -> np.ndarray:
    """im2col of the zero-padded ``x`` in float64: [N H W, 9 C] ordered (kh, kw, c)."""
    n, h, w, c = x.shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
    return np.concatenate([xp[:, i:i + h, j:j + w] for i in range(3) for j in range(3)], -1).reshape(-1, 9 * c)


def oracle(d: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The three results in float64: y = P(x) W, dx = P(dy) W' (W' the kernel flipped in
    space with C_in and C_out swapped), dw = P(x)^T dy."""
    x, w, dy = d["x"], d["w"], d["dy"]
    n, h, _, ci = x.shape
    co = w.shape[-1]
    w64 = w.astype(np.float64)
    y = (_patches64(x) @ w64.reshape(9 * ci, co)).reshape(n, h, h, co)
    w_flip = w64[::-1, ::-1].transpose(0, 1, 3, 2).reshape(9 * co, ci)
    dx = (_patches64(dy) @ w_flip).reshape(n, h, h, ci)
    dw = (_patches64(x).T @ dy.astype(np.float64).reshape(-1, co)).reshape(3, 3, ci, co)
    return {"forward": y, "input-grad": dx, "weight-grad": dw}


def flops(shape) -> float:
    n, h, ci, co = shape
    return 2.0 * n * h * h * 9 * ci * co


# --------------------------------------------------------------------------- JAX (child)


def _jax_variants(d, alternatives: bool):
    """``[(op, name, fn, args)]`` of jitted JAX callables for one shape."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    x, w, dy = (jnp.asarray(d[k]) for k in ("x", "w", "dy"))
    n, h, _, ci = d["x"].shape
    co = d["w"].shape[-1]

    def conv(x, w):
        return lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))

    def dx_of(x, w, dy):
        return jax.vjp(lambda x: conv(x, w), x)[1](dy)[0]

    def dw_of(x, w, dy):
        return jax.vjp(lambda w: conv(x, w), w)[1](dy)[0]

    out = [("forward", "conv", jax.jit(conv), (x, w)),
           ("input-grad", "conv", jax.jit(dx_of), (x, w, dy)),
           ("weight-grad", "conv", jax.jit(dw_of), (x, w, dy))]
    if not alternatives:
        return out

    patches = jnp.asarray(_patches64(d["x"]).astype(np.float32))

    def patches_matmul(p, w):
        return (p @ w.reshape(9 * ci, co)).reshape(n, h, h, co)

    def bt(d0, d1, d2, d3):  # B^T d for Winograd F(2, 3): rows of [[1,0,-1,0],[0,1,1,0],[0,-1,1,0],[0,1,0,-1]]
        return d0 - d2, d1 + d2, d2 - d1, d1 - d3

    def winograd(x, w):
        t = h // 2
        xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        rows = bt(*(xp[:, k:k + 2 * t:2] for k in range(4)))                        # 4 x [N, T, H+2, C]
        v = [col for r in rows for col in bt(*(r[:, :, k:k + 2 * t:2] for k in range(4)))]
        v = jnp.stack(v).reshape(16, n * t * t, ci)                                  # V = B^T d B
        g = jnp.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]], w.dtype)
        u = jnp.einsum("ai,ijco,bj->abco", g, w, g).reshape(16, ci, co)              # U = G w G^T
        m = lax.dot_general(v, u, (((2,), (1,)), ((0,), (0,)))).reshape(4, 4, n, t, t, co)
        a = (m[0] + m[1] + m[2], m[1] - m[2] - m[3])                                 # A^T M
        y = [[r[0] + r[1] + r[2], r[1] - r[2] - r[3]] for r in a]                    # (A^T M) A
        return jnp.stack([jnp.stack(r, 3) for r in y], 2).reshape(n, h, h, co)

    def shifted_matmuls(x, w, dy):
        xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        g = dy.reshape(-1, co)
        taps = [xp[:, i:i + h, j:j + h].reshape(-1, ci).T @ g for i in range(3) for j in range(3)]
        return jnp.stack(taps).reshape(3, 3, ci, co)

    def batch_halves(x, w, dy):
        k = max(n // 2, 1)
        return dw_of(x[:k], w, dy[:k]) + (dw_of(x[k:], w, dy[k:]) if n > 1 else 0.0)

    from jax_impl import onednn

    if onednn.available():  # the library's CPU default for its 2-D convolutions
        def dnnl(x, w):
            return onednn.conv2d(x, w, (1, 1), ((1, 1), (1, 1)))
        out += [("forward", "onednn", jax.jit(dnnl), (x, w)),
                ("input-grad", "onednn", jax.jit(lambda x, w, dy: jax.vjp(lambda x: dnnl(x, w), x)[1](dy)[0]), (x, w, dy)),
                ("weight-grad", "onednn", jax.jit(lambda x, w, dy: jax.vjp(lambda w: dnnl(x, w), w)[1](dy)[0]), (x, w, dy))]
    return out + [("forward", "patches-matmul", jax.jit(patches_matmul), (patches, w)),
                  ("forward", "winograd", jax.jit(winograd), (x, w)),
                  ("weight-grad", "shifted-matmuls", jax.jit(shifted_matmuls), (x, w, dy)),
                  ("weight-grad", "batch-halves", jax.jit(batch_halves), (x, w, dy))]


def _child(setting: str, shapes, repeats: int, out_npz: str) -> dict:
    from jax_impl import xla_cpu

    if setting == "xla":
        xla_cpu.configure_cpu_convolutions()
    import jax

    from benchmarks import timing

    result, arrays = {"setting": setting, "xla_flags": os.environ.get("XLA_FLAGS", ""), "shapes": {}}, {}
    for shape in shapes:
        key = "x".join(map(str, shape))
        d = inputs(shape)
        variants, labels = [], {}
        for op, name, fn, args in _jax_variants(d, alternatives=setting == "xla"):
            label = f"{op}:{name}"
            compiled = fn.lower(*args).compile()
            labels[label] = (op, name)
            variants.append(timing.Variant(label, lambda c=compiled, a=args: jax.block_until_ready(c(*a))))
        stats, outs = timing.measure(variants, repeats)
        result["shapes"][key] = {label: {"op": labels[label][0], "name": labels[label][1],
                                         "median_s": s["median_s"], "min_s": s["min_s"], "times_s": s["times_s"]}
                                 for label, s in stats.items()}
        for label, o in outs.items():
            arrays[f"{key}|{label}"] = np.asarray(o)
    np.savez(out_npz, **arrays)
    return result


# --------------------------------------------------------------------------- torch (parent)


def _torch_variants(d, channels_last: bool):
    import torch

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.from_numpy(d["x"]).permute(0, 3, 1, 2).contiguous(memory_format=fmt)
    w = torch.from_numpy(d["w"]).permute(3, 2, 0, 1).contiguous(memory_format=fmt)
    dy = torch.from_numpy(d["dy"]).permute(0, 3, 1, 2).contiguous(memory_format=fmt)
    nhwc = (0, 2, 3, 1)

    def backward(mask):
        return torch.ops.aten.convolution_backward(dy, x, w, None, (1, 1), (1, 1), (1, 1), False, (0, 0), 1, mask)

    return [("forward", lambda: torch.nn.functional.conv2d(x, w, padding=1), lambda y: y.permute(*nhwc)),
            ("input-grad", lambda: backward((True, False, False))[0], lambda g: g.permute(*nhwc)),
            ("weight-grad", lambda: backward((False, True, False))[1], lambda g: g.permute(2, 3, 1, 0))]


def _torch_rows(shapes, repeats: int, threads: int) -> tuple[dict, dict]:
    import torch

    from benchmarks import timing

    torch.set_num_threads(threads)
    rows, arrays = {}, {}
    for shape in shapes:
        key = "x".join(map(str, shape))
        d = inputs(shape)
        variants, back = [], {}
        for name, cl in (("torch", False), ("torch-cl", True)):
            for op, run, to_nhwc in _torch_variants(d, cl):
                label = f"{op}:{name}"
                back[label] = (op, name, to_nhwc)
                variants.append(timing.Variant(label, run))
        with torch.no_grad():
            stats, outs = timing.measure(variants, repeats)
        rows[key] = {label: {"op": back[label][0], "name": back[label][1], "median_s": s["median_s"],
                             "min_s": s["min_s"], "times_s": s["times_s"]} for label, s in stats.items()}
        for label, o in outs.items():
            arrays[f"{key}|{label}"] = back[label][2](o).contiguous().numpy()
    return rows, arrays


# --------------------------------------------------------------------------- report


COLUMNS = ("xla", "ynn", "onednn", "torch", "torch-cl")


def _column(r: dict) -> str | None:
    """The table column of a row: the XLA setting of a plain convolution, the torch row's
    name; None for the other JAX formulations (listed apart)."""
    if r["setting"] == "torch" or r["name"] == "onednn":
        return r["name"]
    return r["setting"] if r["name"] == "conv" else None


def markdown(doc: dict) -> str:
    parts = [f"# A 3x3 convolution's kernels, XLA:CPU against oneDNN ({doc['started_utc']})", "",
             f"Machine: {doc['cpu_model']}, {doc['usable_cores']} usable cores; jax {doc['versions']['jax']}, "
             f"torch {doc['versions']['torch']} on {doc['torch_threads']} threads; float32, stride 1, padding 1, "
             f"channels last. Cells: median of {doc['repeats']} repeats and GFLOP/s (2 N H W 9 C_in C_out / "
             "median); `xla` is the library's XLA:CPU setting, `ynn` JAX's default (YNNPACK), `onednn` the "
             "library's oneDNN custom calls (jax_impl/onednn.py, the default for 2-D convolutions). Every output "
             f"agreed with a float64 oracle to {TOL:g} x its max |value| unless marked. "
             f"Command: `{doc['command'].strip()}`.", ""]
    for key, rows in doc["shapes"].items():
        n, h, ci, co = (int(v) for v in key.split("x"))
        fl = flops((n, h, ci, co))
        parts += [f"**N={n}, {h}x{h}, {ci} -> {co} channels** ({fl / 1e9:.3g} GFLOP per kernel)", "",
                  "| kernel | " + " | ".join(COLUMNS) + " | other JAX formulations | xla time / fastest torch |",
                  "|---|" + "---:|" * len(COLUMNS) + "---|---:|"]
        for op in OPS:
            mine = {_column(r): r for r in rows if r["op"] == op and _column(r)}

            def cell(r):
                ok = "" if r["agrees"] else " **differs**"
                return f"{1e3 * r['median_s']:.2f} ms ({fl / r['median_s'] / 1e9:.0f}){ok}"
            cells = [cell(mine[c]) if c in mine else "—" for c in COLUMNS]
            alts = [f"{r['name']} {cell(r)}" for r in rows
                    if r["op"] == op and r["setting"] == "xla" and r["name"] not in ("conv", "onednn")]
            best_torch = min((mine[c]["median_s"] for c in ("torch", "torch-cl") if c in mine), default=None)
            ratio = "—" if best_torch is None or "xla" not in mine else f"{mine['xla']['median_s'] / best_torch:.2f}"
            parts.append(f"| {op} | " + " | ".join(cells) + f" | {'; '.join(alts) or '—'} | {ratio} |")
        parts.append("")
    return "\n".join(parts)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.kernels", description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", action="append", type=_parse_shape, metavar="NxHxCINxCOUT",
                   help="a layer shape (repeatable; default: 16x32x64x64 and 16x16x128x128)")
    p.add_argument("--tiny", action="store_true", help="one small shape, one repeat (a smoke run)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats (default 21; 1 with --tiny)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="output directory")
    p.add_argument("--_child", choices=("xla", "ynn"), help=argparse.SUPPRESS)
    p.add_argument("--_npz", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    shapes = tuple(args.shape or (TINY_SHAPES if args.tiny else FULL_SHAPES))
    repeats = args.repeats if args.repeats is not None else (1 if args.tiny else 21)
    if repeats < 1:
        p.error(f"--repeats must be >= 1, got {repeats}")
    if args._child:
        print(json.dumps(_child(args._child, shapes, repeats, args._npz)))
        return 0
    from benchmarks.report import check_out_dir
    from benchmarks.run import _cores, _cpu_model, _version

    problem = check_out_dir(args.out)
    if problem:
        p.error(problem)

    started = datetime.datetime.now(datetime.timezone.utc)
    cores = _cores()
    rows = {"x".join(map(str, s)): [] for s in shapes}
    arrays: dict[str, np.ndarray] = {}
    flags = {}
    with tempfile.TemporaryDirectory() as tmp:
        for setting in ("xla", "ynn"):
            npz = os.path.join(tmp, f"{setting}.npz")
            env = dict(os.environ, SCOREDIFF_XLA_CPU_CONVOLUTIONS=setting)
            env.pop("XLA_FLAGS", None)
            cmd = [sys.executable, "-m", "benchmarks.kernels", "--_child", setting, "--_npz", npz,
                   "--repeats", str(repeats)] + [a for s in shapes for a in ("--shape", "x".join(map(str, s)))]
            proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                sys.stderr.write(proc.stderr[-4000:])
                raise SystemExit(f"benchmarks.kernels: the {setting} process failed (exit {proc.returncode})")
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            flags[setting] = res["xla_flags"]
            for key, by in res["shapes"].items():
                rows[key] += [dict(r, setting=setting) for r in by.values()]
            with np.load(npz) as z:
                arrays.update({f"{setting}|{k}": z[k] for k in z.files})
            print(f"[kernels] {setting} done", flush=True)
    trows, tarrays = _torch_rows(shapes, repeats, cores)
    for key, by in trows.items():
        rows[key] += [dict(r, setting="torch") for r in by.values()]
    arrays.update({f"torch|{k}": v for k, v in tarrays.items()})

    worst = 0.0
    for shape in shapes:
        key = "x".join(map(str, shape))
        ref = oracle(inputs(shape))
        for r in rows[key]:
            got = arrays[f"{r['setting']}|{key}|{r['op']}:{r['name']}"]
            scale = float(np.max(np.abs(ref[r["op"]])))
            err = float(np.max(np.abs(got - ref[r["op"]]))) / scale
            r.update(rel_err_vs_float64=err, agrees=err <= TOL)
            worst = max(worst, err)
    doc = {"started_utc": started.isoformat(timespec="seconds"), "command": "python -m benchmarks.kernels " +
           " ".join(argv if argv is not None else sys.argv[1:]), "repeats": repeats,
           "cpu_model": _cpu_model(), "usable_cores": cores, "torch_threads": cores,
           "versions": {m: _version(m) for m in ("jax", "jaxlib", "torch")},
           "xla_flags": flags, "tolerance": TOL, "shapes": rows}
    stem = f"kernels-cpu-{'tiny-' if args.tiny else ''}{started.strftime('%Y%m%dT%H%M%SZ')}"
    from benchmarks import report

    md = markdown(doc)
    report.write_atomic(os.path.join(args.out, stem + ".json"), json.dumps(doc, indent=1) + "\n")
    report.write_atomic(os.path.join(args.out, stem + ".md"), md)
    print(md)
    print(f"[kernels] wrote {os.path.join(args.out, stem)}.json / .md; worst error vs float64 {worst:.1e}")
    bad = [f"{k} {r['op']}:{r['setting']}:{r['name']}" for k, rs in rows.items() for r in rs if not r["agrees"]]
    if bad:
        print(f"[kernels] outputs differ from the float64 oracle: {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
