"""2-D convolutions through oneDNN on XLA:CPU, as XLA FFI custom calls (issue 11).

One-sided module: JAX only, with no ``torch_ref`` twin (torch's CPU convolutions are oneDNN's
already; this module gives the JAX side the same kernels).

Why. XLA:CPU's own convolution kernels are slower than oneDNN's, the library torch uses
(``benchmarks/kernels.py``: 64 -> 64 channels, 32 x 32, batch 16, forward / input gradient /
weight gradient 5.44 / 5.49 / 8.62 ms in XLA against 4.24 / 5.22 / 4.56 ms in torch
channels_last), and no XLA flag or other formulation closed that gap. So on the CPU,
``jax_impl.models.xla_cpu_layers.Conv`` hands its 2-D convolutions to oneDNN: three custom
calls (``csrc/onednn_conv.cc``), the forward convolution, its adjoint in the input
(backward data) and its adjoint in the kernel (backward weights), channels-last activations
and HWIO kernels as JAX holds them, so nothing is transposed around them.

``conv2d`` binds three JAX primitives, one per custom call. Each is bilinear and each one's
two adjoints are the other two (``<conv(x, w), dy> = <x, bwd_data(dy, w)> = <w,
bwd_weights(x, dy)>``), which is all JAX needs (``ad.defbilinear``) to differentiate them to
any order, forward (``jax.jvp``: the likelihood's divergence) and reverse (``jax.grad``:
training; ``jax.hessian``). ``vmap`` folds a mapped activation axis into the batch axis N and
loops (``lax.map``) when a kernel is mapped too.

The library. ``onednn-cpu-tbb`` / ``onednn-devel-cpu-tbb`` 2023.2.0 (oneDNN 3.2, CPU only,
threaded by TBB; the ``onednn`` extra, with ``tbb``, ``tbb-devel`` (the one-thread arenas'
header) and ``intel-cmplr-lib-rt``, Intel's compiler runtime it links). The same shared
library holds the GroupNorm kernels of ``jax_impl/cpu_group_norm.py`` (``csrc/group_norm.cc``).
Not the OpenMP build: it shares libgomp with torch, and once XLA's threads start OpenMP
teams of their own libgomp counts more threads than cores and stops spinning between
parallel regions, which made torch's own convolutions in the same process 1.7-2x slower
(the benchmark's torch rows, U-Net forward 17 -> 31 ms); with TBB they stay at 15 ms. ``build()`` compiles
``csrc/onednn_conv.cc`` against them and jaxlib's FFI headers (``g++``, about 5 s) into
``<sys.prefix>/lib/scorediff`` (or ``~/.cache/scorediff`` when that is not writable), named
by a hash of the source and the versions, so a new jaxlib or oneDNN rebuilds it. ``make
install`` builds it (``python -m jax_impl.onednn build``); otherwise the first use does.

Threads (``SCOREDIFF_ONEDNN_THREADING``, read when a program is lowered). ``xla``, the
default: a call whose batch divides evenly among the threads of XLA's intra-op pool (the FFI
thread pool, one per core) is split into that many parts, each run by a one-thread oneDNN
primitive on one of XLA's threads (the kernel gradient's parts are summed); other batches
(odd ones, batch 1) and ``tbb`` let oneDNN thread the whole call with its own TBB workers.
Those workers and XLA's spin-waiting threads then share the cores: in the DDPM U-Net 32 x 32
training step (batch 16) the same oneDNN primitives ran 1.5-2x (the 3 -> 32 channel input
convolution 16x) slower than alone. With ``xla`` (2026-12-04, 2 cores, medians): the step's
oneDNN time 92 -> 75 ms, the step 204 -> 191 ms, DDIM 50 steps at batch 4 610 -> 530 ms.

When. ``enabled()`` is True when all of these hold; otherwise ``Conv`` keeps
``lax.conv_general_dilated`` and outputs differ only by float32 rounding:

* ``SCOREDIFF_ONEDNN`` is not ``0`` (``1`` or unset);
* JAX's default backend is the CPU, with one CPU device (a host split into several devices
  shards the batch with ``jax.sharding``, which a custom call does not follow);
* the library is built or can be built (``status()`` says why not).

Only float32 operands, stride >= 1, explicit padding, no dilation or groups.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax._src import dispatch  # eager evaluation of a primitive (as jax.ffi's own examples)
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

__all__ = ["ENV", "THREADING_ENV", "check_environment", "threading_mode", "conv2d", "enabled", "expected", "available",
           "status", "build", "library_path"]

#: ``0`` turns the oneDNN convolutions off (``1``, the default, uses them when available)
ENV = "SCOREDIFF_ONEDNN"
#: whose threads run a convolution: ``xla`` (the default: XLA's intra-op pool, the batch split
#: between its threads) or ``tbb`` (oneDNN's own); read when a program is lowered
THREADING_ENV = "SCOREDIFF_ONEDNN_THREADING"
_THREADING = {"xla": 1, "tbb": 0}
_SOURCE = Path(__file__).with_name("csrc") / "onednn_conv.cc"
#: compiled into the same library: GroupNorm (+ SiLU) kernels (``jax_impl/cpu_group_norm.py``)
#: and matrix products (``jax_impl/cpu_matmul.py``)
_EXTRA_SOURCES = (Path(__file__).with_name("csrc") / "group_norm.cc",
                  Path(__file__).with_name("csrc") / "onednn_matmul.cc")
#: included by the sources: the work split between XLA's threads, the one-thread arena
_HEADERS = (Path(__file__).with_name("csrc") / "xla_threads.h", Path(__file__).with_name("csrc") / "one_thread.h")
_DISTS = ("onednn-cpu-tbb", "onednn-devel-cpu-tbb", "tbb-devel")
_TARGETS = {"fwd": "ScorediffOnednnConvFwd", "bwd_data": "ScorediffOnednnConvBwdData",
            "bwd_weights": "ScorediffOnednnConvBwdWeights"}
_EXTRA_TARGETS = {"scorediff_group_norm_fwd": "ScorediffGroupNormFwd",
                  "scorediff_group_norm_bwd": "ScorediffGroupNormBwd",
                  "scorediff_onednn_matmul": "ScorediffOnednnMatmul"}

_lock = threading.Lock()
_state: dict = {}


# ------------------------------------------------------------------------ the library


def _dnnl_paths() -> tuple[Path, list[Path]]:
    """(the folder holding ``libdnnl.so.3``, the include folders holding ``oneapi/dnnl`` and
    ``oneapi/tbb``)."""
    lib = inc = tbb_inc = None
    for dist in _DISTS:
        try:
            files = importlib.metadata.distribution(dist).files or []
        except importlib.metadata.PackageNotFoundError:
            raise FileNotFoundError(
                f"the Python package {dist!r} is not installed (pip install "
                f"'scorediff[onednn]', or make install)") from None
        for f in files:
            p = str(f).replace("\\", "/")
            if p == "libdnnl.so.3" or p.endswith("/libdnnl.so.3"):
                lib = Path(f.locate()).resolve().parent
            elif p.endswith("include/oneapi/dnnl/dnnl.hpp"):
                inc = Path(f.locate()).resolve().parent.parent.parent
            elif p.endswith("include/oneapi/tbb/task_arena.h"):
                tbb_inc = Path(f.locate()).resolve().parent.parent.parent
    if lib is None or inc is None or tbb_inc is None:
        raise FileNotFoundError(f"{_DISTS} hold no libdnnl.so.3, include/oneapi/dnnl/dnnl.hpp or "
                                "include/oneapi/tbb/task_arena.h")
    return lib, [inc, tbb_inc]


def _tag() -> str:
    h = hashlib.sha256()
    for src in (_SOURCE, *_EXTRA_SOURCES, *_HEADERS):
        h.update(src.read_bytes())
    for dist in ("jaxlib", *_DISTS):
        h.update(f"{dist}={importlib.metadata.version(dist)};".encode())
    return h.hexdigest()[:16]


def _out_dirs() -> list[Path]:
    home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "scorediff"
    return [Path(sys.prefix) / "lib" / "scorediff", home]


def _library_name() -> str:
    return f"libscorediff_onednn-{_tag()}.so"


def library_path() -> Path | None:
    """The built shared library for this source / jaxlib / oneDNN, or None if not built."""
    name = _library_name()
    for d in _out_dirs():
        if (d / name).is_file():
            return d / name
    return None


def _compiler() -> str | None:
    """The C++ compiler to build with: ``$CXX``, else ``g++`` or ``c++`` on PATH (None: none)."""
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")


def build(force: bool = False) -> Path:
    """Compile ``csrc/onednn_conv.cc`` (once per source / jaxlib / oneDNN version); returns
    the shared library's path. FileNotFoundError (the oneDNN packages, ``g++``) or
    RuntimeError (the compiler's message) when it cannot."""
    name = _library_name()
    found = library_path()
    if found is not None and not force:
        return found
    lib, incs = _dnnl_paths()
    cxx = _compiler()
    if not cxx:
        raise FileNotFoundError("no C++ compiler (g++ / c++ on PATH, or $CXX) to build the oneDNN convolutions")
    errors = []
    for d in _out_dirs():
        try:
            d.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".build-", suffix=".so", dir=d)
            os.close(fd)
        except OSError as err:
            errors.append(f"{d}: {err}")
            continue
        # libdnnl finds libtbb through this library's RPATH (not RUNPATH: it carries to dependencies)
        cmd = [cxx, "-O3", "-fno-math-errno", "-std=c++17", "-shared", "-fPIC", "-w",
               f"-I{jax.ffi.include_dir()}", *(f"-I{inc}" for inc in incs), str(_SOURCE),
               *(str(src) for src in _EXTRA_SOURCES), f"-L{lib}", "-l:libdnnl.so.3", "-l:libtbb.so.12",
               f"-Wl,--disable-new-dtags,-rpath,{lib}", "-o", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            os.unlink(tmp)
            raise RuntimeError(f"building {_SOURCE.name} failed ({' '.join(cmd)}):\n{proc.stderr[-4000:]}")
        os.replace(tmp, d / name)  # atomic: a concurrent build or reader sees all or nothing
        return d / name
    raise RuntimeError("no writable folder for the oneDNN convolutions: " + "; ".join(errors))


def _load() -> str | None:
    """Build if needed, load and register the custom calls; None, or why not."""
    with _lock:
        if "error" in _state:
            return _state["error"]
        try:
            path = build()
            so = ctypes.CDLL(str(path))
            for kind, symbol in _TARGETS.items():
                jax.ffi.register_ffi_target(f"scorediff_onednn_conv_{kind}",
                                            jax.ffi.pycapsule(getattr(so, symbol)), platform="cpu")
            for target, symbol in _EXTRA_TARGETS.items():
                jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(so, symbol)), platform="cpu")
            v = so.scorediff_onednn_version()
            _state.update(error=None, path=path, version=f"{v // 10000}.{v // 100 % 100}.{v % 100}")
        except (OSError, RuntimeError, FileNotFoundError, AttributeError) as err:
            _state["error"] = f"{type(err).__name__}: {err}"
        return _state["error"]


def available() -> bool:
    """True when the custom calls are built and registered (builds them on first call)."""
    return _load() is None


def status() -> dict:
    """``{"enabled", "reason", "available", "error", "library", "onednn", "threading"}``: what
    ``enabled()`` decides and why not (``reason``, None when enabled), whether the custom calls
    load (``error``: why not, None when they do; the library's path and oneDNN's version),
    and whose threads run them (``threading_mode()``)."""
    error = _load()
    reason = _disabled_reason()
    return {"enabled": reason is None, "reason": reason, "available": error is None, "error": error,
            "library": str(_state["path"]) if _state.get("path") else None, "onednn": _state.get("version"),
            "threading": threading_mode()}


def check_environment() -> None:
    """ValueError naming the variable when ``SCOREDIFF_ONEDNN`` or
    ``SCOREDIFF_ONEDNN_THREADING`` holds something else than their documented values (the
    command line and the benchmark runner call it at start; nothing is built or started)."""
    choice = os.environ.get(ENV, "1").strip()
    if choice not in ("0", "1"):
        raise ValueError(f"{ENV}={os.environ[ENV]!r} must be '1' (oneDNN convolutions on the CPU, "
                         "the default) or '0' (XLA's own)")
    threading_mode()


def _disabled_reason() -> str | None:
    check_environment()
    choice = os.environ.get(ENV, "1").strip()
    if choice == "0":
        return f"{ENV}=0"
    if jax.default_backend() != "cpu":
        return f"the default backend is {jax.default_backend()}, not the CPU"
    if jax.device_count() != 1:
        return f"{jax.device_count()} devices (a split host or several processes shard the batch)"
    return _load()


def expected() -> bool:
    """Whether ``enabled()`` would hold on a one-device CPU backend, decided without starting
    JAX or building anything: ``SCOREDIFF_ONEDNN`` is not ``0`` and the library is built, or
    its packages and a C++ compiler are there to build it. (The command line asks before it
    chooses a host split, which must be set before JAX starts.)"""
    if os.environ.get(ENV, "1").strip() == "0":
        return False
    try:
        if library_path() is not None:
            return True
        _dnnl_paths()
    except (FileNotFoundError, importlib.metadata.PackageNotFoundError, OSError):
        return False
    return _compiler() is not None


def enabled() -> bool:
    """True when ``Conv`` uses ``conv2d`` for its 2-D float32 convolutions (module docstring)."""
    return _disabled_reason() is None


def threading_mode() -> str:
    """``SCOREDIFF_ONEDNN_THREADING``: ``"xla"`` (unset) or ``"tbb"``; ValueError naming the
    variable for anything else."""
    choice = os.environ.get(THREADING_ENV, "xla").strip().lower()
    if choice not in _THREADING:
        raise ValueError(f"{THREADING_ENV}={os.environ[THREADING_ENV]!r} must be 'xla' (the batch split "
                         "between XLA's threads, the default) or 'tbb' (oneDNN's own threads)")
    return choice


# ------------------------------------------------------------------------ the primitives


def _out_hw(h, w, kh, kw, strides, padding):
    (pt, pb), (pl, pr) = padding
    return (h + pt + pb - kh) // strides[0] + 1, (w + pl + pr - kw) // strides[1] + 1


def _primitive(kind: str) -> Primitive:
    """One custom call as a JAX primitive ``prim(a, b, *, strides, padding, out_shape)``:
    float32 [out_shape], abstract evaluation, eager dispatch and the CPU lowering."""
    prim = Primitive(f"scorediff_onednn_conv_{kind}")
    prim.def_impl(functools.partial(dispatch.apply_primitive, prim))
    prim.def_abstract_eval(lambda a, b, *, strides, padding, out_shape: jax.core.ShapedArray(out_shape, jnp.float32))
    lower = jax.ffi.ffi_lowering(f"scorediff_onednn_conv_{kind}")

    def lowering(ctx, a, b, *, strides, padding, out_shape):
        (pt, pb), (pl, pr) = padding
        return lower(ctx, a, b, sh=np.int64(strides[0]), sw=np.int64(strides[1]), pt=np.int64(pt),
                     pb=np.int64(pb), pl=np.int64(pl), pr=np.int64(pr),
                     threading=np.int64(_THREADING[threading_mode()]))
    mlir.register_lowering(prim, lowering, platform="cpu")
    return prim


# y = conv(x, w); dx = bwd_data(dy, w) (the adjoint of conv in x); dw = bwd_weights(x, dy)
# (its adjoint in w). Each is bilinear, and each one's adjoints are the other two:
#   <conv(x, w), dy> = <x, bwd_data(dy, w)> = <w, bwd_weights(x, dy)>
_fwd_p, _bwd_data_p, _bwd_weights_p = (_primitive(k) for k in _TARGETS)


def _shape(v):
    """The shape of an operand: an array, a tracer, or the undefined primal being transposed."""
    aval = getattr(v, "aval", None)
    return tuple(aval.shape) if aval is not None else tuple(np.shape(v))


def _params(kw, out_shape):
    return dict(strides=kw["strides"], padding=kw["padding"], out_shape=tuple(out_shape))


ad.defbilinear(
    _fwd_p,
    lambda ct, x, w, **kw: _bwd_data_p.bind(ct, w, **_params(kw, _shape(x))),
    lambda ct, x, w, **kw: _bwd_weights_p.bind(x, ct, **_params(kw, _shape(w))))
ad.defbilinear(
    _bwd_data_p,
    lambda ct, dy, w, **kw: _fwd_p.bind(ct, w, **_params(kw, _shape(dy))),
    lambda ct, dy, w, **kw: _bwd_weights_p.bind(ct, dy, **_params(kw, _shape(w))))
ad.defbilinear(
    _bwd_weights_p,
    lambda ct, x, dy, **kw: _bwd_data_p.bind(dy, ct, **_params(kw, _shape(x))),
    lambda ct, x, dy, **kw: _fwd_p.bind(x, ct, **_params(kw, _shape(dy))))


def _batcher(prim):
    def rule(args, dims, **kw):
        (a, b), (da, db) = args, dims
        if prim is not _bwd_weights_p and db is None:
            # only the activations are mapped: the mapped axis joins the batch axis N
            a = jnp.moveaxis(a, da, 0)
            B, N = a.shape[:2]
            out = prim.bind(a.reshape(B * N, *a.shape[2:]), b,
                            **_params(kw, (B * N, *kw["out_shape"][1:])))
            return out.reshape(B, N, *out.shape[1:]), 0
        size = a.shape[da] if da is not None else b.shape[db]
        a, b = (jnp.moveaxis(v, d, 0) if d is not None else jnp.broadcast_to(v, (size, *v.shape))
                for v, d in ((a, da), (b, db)))
        return lax.map(lambda ab: prim.bind(*ab, **kw), (a, b)), 0  # a loop over the mapped axis
    batching.primitive_batchers[prim] = rule


for _p in (_fwd_p, _bwd_data_p, _bwd_weights_p):
    _batcher(_p)


def conv2d(x: jax.Array, w: jax.Array, strides=(1, 1), padding=((0, 0), (0, 0))) -> jax.Array:
    """``y = conv(x, w)``: x [N, H, W, C_in] float32, w [KH, KW, C_in, C_out] float32 ->
    y [N, OH, OW, C_out], ``y[n, i, j, o] = sum_{a, b, c} xpad[n, i s_h + a, j s_w + b, c]
    w[a, b, c, o]`` with ``xpad`` x padded by ``padding`` ((top, bottom), (left, right)) and
    OH = (H + top + bottom - KH) // s_h + 1 (likewise OW): ``lax.conv_general_dilated`` with
    ``("NHWC", "HWIO", "NHWC")``, computed by oneDNN. Differentiable in both operands to any
    order, forward and reverse (module docstring), and batched by ``vmap``."""
    if x.ndim != 4 or w.ndim != 4:
        raise ValueError(f"conv2d: x must be [N, H, W, C] and w [KH, KW, C, O], got {x.shape} and {w.shape}")
    if x.shape[3] != w.shape[2]:
        raise ValueError(f"conv2d: x has {x.shape[3]} channels, w expects {w.shape[2]}")
    if x.dtype != jnp.float32 or w.dtype != jnp.float32:
        raise TypeError(f"conv2d: float32 operands only, got {x.dtype} and {w.dtype}")
    strides = tuple(int(s) for s in strides)
    padding = tuple((int(lo), int(hi)) for lo, hi in padding)
    if len(strides) != 2 or min(strides) < 1 or len(padding) != 2 or min(min(p) for p in padding) < 0:
        raise ValueError(f"conv2d: strides (>= 1) and padding (>= 0) for 2 axes, got {strides}, {padding}")
    oh, ow = _out_hw(x.shape[1], x.shape[2], w.shape[0], w.shape[1], strides, padding)
    if oh < 1 or ow < 1:
        raise ValueError(f"conv2d: a {w.shape[:2]} kernel does not fit x {x.shape[1:3]} padded by {padding}")
    if _load() is not None:
        raise RuntimeError(f"conv2d: the oneDNN convolutions are unavailable: {_state['error']}")
    return _fwd_p.bind(x, w, strides=strides, padding=padding, out_shape=(x.shape[0], oh, ow, w.shape[3]))


def main(argv=None) -> int:
    """``python -m jax_impl.onednn build``: build (or find) the library and print its path;
    ``python -m jax_impl.onednn status``: what ``enabled()`` says and why."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m jax_impl.onednn")
    p.add_argument("command", choices=("build", "status"))
    p.add_argument("--force", action="store_true", help="rebuild even when built")
    args = p.parse_args(argv)
    if args.command == "build":
        try:
            print(f"oneDNN convolutions: {build(force=args.force)}")
        except (OSError, RuntimeError) as err:
            print(f"oneDNN convolutions not built ({type(err).__name__}: {err}); "
                  "JAX keeps XLA's convolutions", file=sys.stderr)
            return 1
        return 0
    try:
        print(status())
    except ValueError as err:  # a bad SCOREDIFF_ONEDNN / SCOREDIFF_ONEDNN_THREADING
        print(f"python -m jax_impl.onednn: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
