"""Dense-layer matrix products through oneDNN's sgemm on XLA:CPU (issue 11).

One-sided module: JAX only, with no ``torch_ref`` twin (torch's CPU matrix products are
MKL / oneDNN kernels already; this gives the JAX side kernels of the same kind).

Why. The MLP's training step at batch 4096 was the one configuration torch eager won in the
benchmark (2026-12-04: JAX 35 ms, torch 27 ms), and its products are most of the step. Alone
(2 cores, medians of 30, the forward / input gradient / kernel gradient of each layer,
``[4096, 256] x [256, 256]``) XLA:CPU took 1.68 / 1.71 / 2.60 ms against torch's
1.34 / 1.32 / 1.49 ms; over the step's seven layers 22.8 ms against 14.0 ms. oneDNN's sgemm
(the library of the convolutions, ``jax_impl/onednn.py``) took 1.24 / 1.28 / 1.57 ms.

What. ``matmul(a, b, ta, tb)`` binds one primitive computing ``op(a) @ op(b)`` with ``op``
the transpose where ``ta`` / ``tb`` is set, through the custom call of
``csrc/onednn_matmul.cc`` (the result's rows split between XLA's intra-op threads, one
one-thread sgemm per part).
It is bilinear, and the adjoints of the three forms a dense layer needs are each other::

    C = A B      (0, 0):  dA = dC B^T   (0, 1)   dB = A^T dC   (1, 0)
    C = A B^T    (0, 1):  dA = dC B     (0, 0)   dB = dC^T A   (1, 0)
    C = A^T B    (1, 0):  dA = B dC^T   (0, 1)   dB = A dC     (0, 0)

which is all JAX needs (``ad.defbilinear``) to differentiate it to any order, forward and
reverse. ``vmap`` folds a mapped leading axis of ``a`` into its rows (``ta = 0``, ``b``
unmapped) and maps the plain product otherwise. On other backends, and for the
transposition's own lowering where no custom call is registered, the plain ``jnp`` product.

``dense(x, kernel)`` is what ``xla_cpu_layers.Dense`` calls: x [..., K] float32 with at least
``MIN_ROWS`` rows when ``onednn.enabled()``; smaller products stay XLA's dots. In the
benchmark (2026-12-04, the ``jax`` row alone, medians of 7) the MLP's samplers at batch 64,
1000 steps, took 210 -> 174 ms (Euler-Maruyama) and 409 -> 349 ms (PC) with the products
from 64 rows on in oneDNN, and 150 / 298 ms once products of 32 rows per thread were split
too (``csrc/onednn_matmul.cc``); the training step at batch 64 1.65 -> 1.63 ms; at batch 4096 the
training step 35 -> 30 ms (and 20 ms with ``jax_impl.host_malloc``, torch eager 27 ms). The
``make run`` preset's MLP (digits/improved-ddpm, 512 wide, batch 128) gradient step: XLA's
dots 3.9-4.0 ms, oneDNN 3.3-3.5 ms with the result's rows split (4.3 ms when the kernel
gradient split its contraction and summed the parts, the first version).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax._src import dispatch  # eager evaluation of a primitive (as jax.ffi's own examples)
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from jax_impl import onednn

__all__ = ["MIN_ROWS", "dense", "matmul", "reference", "use_for"]

#: products with fewer rows than this stay XLA's own dots
MIN_ROWS = 64


def reference(a, b, *, ta: int, tb: int):
    """The plain product ``op(a) @ op(b)`` (float32, highest precision)."""
    return jnp.matmul(a.T if ta else a, b.T if tb else b, precision=jax.lax.Precision.HIGHEST)


def _out_shape(a_shape, b_shape, ta, tb):
    m = a_shape[1] if ta else a_shape[0]
    n = b_shape[0] if tb else b_shape[1]
    return (m, n)


def _abstract(a, b, *, ta, tb):
    ka = a.shape[0] if ta else a.shape[1]
    kb = b.shape[1] if tb else b.shape[0]
    if a.ndim != 2 or b.ndim != 2 or ka != kb:
        raise ValueError(f"matmul: op(a) {a.shape}{'^T' if ta else ''} and op(b) {b.shape}{'^T' if tb else ''} "
                         "do not multiply")
    return jax.core.ShapedArray(_out_shape(a.shape, b.shape, ta, tb), jnp.float32)


_matmul_p = Primitive("scorediff_onednn_matmul")
_matmul_p.def_impl(functools.partial(dispatch.apply_primitive, _matmul_p))
_matmul_p.def_abstract_eval(_abstract)
_lower = jax.ffi.ffi_lowering("scorediff_onednn_matmul")


def _lowering(ctx, a, b, *, ta, tb):
    return _lower(ctx, a, b, ta=np.int64(ta), tb=np.int64(tb),
                  threading=np.int64(onednn._THREADING[onednn.threading_mode()]))


mlir.register_lowering(_matmul_p, _lowering, platform="cpu")
mlir.register_lowering(_matmul_p, mlir.lower_fun(reference, multiple_results=False))


def _bind(a, b, ta, tb):
    return _matmul_p.bind(a, b, ta=int(ta), tb=int(tb))


# the adjoints (module docstring's table): ct is dC
def _adjoint_a(ct, a, b, *, ta, tb):
    return _bind(ct, b, 0, 1 - tb) if not ta else _bind(b, ct, tb, 1)


def _adjoint_b(ct, a, b, *, ta, tb):
    return _bind(a, ct, 1 - ta, 0) if not tb else _bind(ct, a, 1, ta)


ad.defbilinear(_matmul_p, _adjoint_a, _adjoint_b)


def _batcher(args, dims, *, ta, tb):
    (a, b), (da, db) = args, dims
    if not ta and db is None:
        # only a is mapped: the mapped axis joins its rows
        a = jnp.moveaxis(a, da, 0)
        B, M = a.shape[:2]
        out = _bind(a.reshape(B * M, a.shape[2]), b, ta, tb)
        return out.reshape(B, M, out.shape[1]), 0
    out = jax.vmap(functools.partial(reference, ta=ta, tb=tb), in_axes=(da, db))(a, b)
    return out, 0


batching.primitive_batchers[_matmul_p] = _batcher


def matmul(a: jax.Array, b: jax.Array, ta: bool = False, tb: bool = False) -> jax.Array:
    """``op(a) @ op(b)`` for 2-D float32 operands (``op`` transposes where ``ta`` / ``tb``;
    not both), through oneDNN's sgemm on the CPU (module docstring). Differentiable to any
    order, forward and reverse, and batched by ``vmap``."""
    if ta and tb:
        raise ValueError("matmul: ta and tb both set; use matmul(b, a).T")
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"matmul: 2-D operands only, got {a.shape} and {b.shape}")
    if a.dtype != jnp.float32 or b.dtype != jnp.float32:
        raise TypeError(f"matmul: float32 operands only, got {a.dtype} and {b.dtype}")
    if onednn._load() is not None:
        raise RuntimeError(f"matmul: the oneDNN kernels are unavailable: {onednn._state['error']}")
    return _bind(a, b, bool(ta), bool(tb))


def use_for(x: jax.Array, kernel: jax.Array) -> bool:
    """Whether ``dense`` hands ``x @ kernel`` to oneDNN (float32, >= ``MIN_ROWS`` rows, a
    2-D kernel, ``onednn.enabled()``); decided when the program is traced."""
    rows = int(np.prod(x.shape[:-1], dtype=np.int64)) if x.ndim >= 1 else 0
    return (x.ndim >= 2 and kernel.ndim == 2 and rows >= MIN_ROWS and x.dtype == jnp.float32
            and kernel.dtype == jnp.float32 and onednn.enabled())


def dense(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """``x @ kernel`` over x's last axis: x [..., K], kernel [K, N] -> [..., N]; oneDNN's sgemm
    where ``use_for`` says so, ``jnp.dot`` otherwise (the same maths to float32 rounding)."""
    if not use_for(x, kernel):
        return jnp.dot(x, kernel)
    K = x.shape[-1]
    y = matmul(x.reshape(-1, K), kernel)
    return y.reshape(*x.shape[:-1], kernel.shape[1])
