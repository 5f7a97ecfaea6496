"""GroupNorm, optionally fused with the SiLU after it, as XLA:CPU custom calls (issue 11).

One-sided module: JAX only, with no ``torch_ref`` twin (torch's ``nn.GroupNorm`` and
``F.silu`` are native ATen kernels already; this gives the JAX side kernels of the same kind).

Why. In the DDPM U-Net 32 x 32 training step (batch 16) XLA:CPU spent about 42 ms of a
167 ms step on GroupNorm and the SiLU that follows it in every residual block (their
statistics as dots, then elementwise fusions of exp and divide, then the same again
transposed), where torch spends about 24 ms. ``csrc/group_norm.cc`` computes, for x [N, M, C]
(M spatial positions, C channels in G groups), per example and group::

    mu = mean(x),  var = mean((x - mu)^2),  xhat = (x - mu) / sqrt(var + eps)
    y = act(xhat * scale + bias),  act = identity or SiLU (z * sigmoid(z))

in two passes over x for the statistics (float sums over blocks of 64 rows, added in
double) and one for the output, the examples split between XLA's intra-op threads; the
adjoint (dx, dscale, dbias; ``scorediff_group_norm_bwd``) recomputes the statistics and
takes two more passes. Alone at [16, 32, 32, 64] (2026-12-04): forward 0.40 ms, gradient
0.63 ms, against torch channels_last's 0.50 ms and 2.8 ms (forward + backward); the U-Net
step 176 -> 147 ms.

Derivatives. ``group_norm_act`` is a ``jax.custom_jvp`` whose tangent is the primitive
``lin`` (the jvp, linear in the tangents; evaluated by the plain-JAX formula, so forward
mode costs what it did). Reverse mode transposes ``lin`` into the adjoint custom call, so a
training step runs the C++ backward; the adjoint's own derivatives and ``lin``'s (second
order: ``jax.hessian``, reverse-over-forward) come from the plain-JAX formula (``reference``).
``vmap`` folds a mapped axis into N (GroupNorm is per example) while the parameters are
unmapped, and maps the plain-JAX formula otherwise.

``xla_cpu_layers.GroupNorm`` uses it for float32 activations of rank >= 3 when
``jax_impl.onednn.enabled()`` (the same library, the same switch ``SCOREDIFF_ONEDNN``);
outputs equal the plain formula to float32 rounding (the exp is a polynomial within 1 ulp).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax._src import dispatch  # eager evaluation of a primitive (as jax.ffi's own examples)
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from jax_impl import onednn

__all__ = ["ACTS", "group_norm_act", "reference"]

#: the activations fused after the normalisation: None (identity) and SiLU
ACTS = {None: 0, "silu": 1}


def reference(x, scale, bias, *, groups: int, eps: float, act: int):
    """The plain-JAX formula: x [N, M, C], scale / bias [C] -> [N, M, C] (two-pass
    variance, float32)."""
    N, M, C = x.shape
    h = x.reshape(N, M, groups, C // groups)
    mu = jnp.mean(h, axis=(1, 3), keepdims=True)
    var = jnp.mean(jnp.square(h - mu), axis=(1, 3), keepdims=True)
    z = ((h - mu) * lax.rsqrt(var + eps)).reshape(N, M, C) * scale[None, None, :] + bias[None, None, :]
    return jax.nn.silu(z) if act == 1 else z


def _reference_lin(x, scale, bias, dx, dscale, dbias, **kw):
    return jax.jvp(functools.partial(reference, **kw), (x, scale, bias), (dx, dscale, dbias))[1]


def _reference_bwd(x, scale, bias, ct, **kw):
    return tuple(jax.vjp(functools.partial(reference, **kw), x, scale, bias)[1](ct))


def _primitive(name, abstract, multiple_results=False):
    prim = Primitive(name)
    prim.multiple_results = multiple_results
    prim.def_impl(functools.partial(dispatch.apply_primitive, prim))
    prim.def_abstract_eval(abstract)
    return prim


_f32 = lambda a: jax.core.ShapedArray(a.shape, jnp.float32)  # noqa: E731
_fwd_p = _primitive("scorediff_group_norm_fwd", lambda x, s, b, **kw: _f32(x))
_bwd_p = _primitive("scorediff_group_norm_bwd", lambda x, s, b, ct, **kw: (_f32(x), _f32(s), _f32(b)),
                    multiple_results=True)
_lin_p = _primitive("scorediff_group_norm_lin", lambda x, s, b, dx, ds, db, **kw: _f32(x))


def _ffi_lowering(target):
    lower = jax.ffi.ffi_lowering(target)

    def lowering(ctx, *args, groups, eps, act):
        return lower(ctx, *args, groups=np.int64(groups), eps=np.float32(eps), act=np.int64(act))
    return lowering


mlir.register_lowering(_fwd_p, _ffi_lowering("scorediff_group_norm_fwd"), platform="cpu")
mlir.register_lowering(_bwd_p, _ffi_lowering("scorediff_group_norm_bwd"), platform="cpu")
# elsewhere (and for the linear map everywhere) the plain formula
mlir.register_lowering(_fwd_p, mlir.lower_fun(reference, multiple_results=False))
mlir.register_lowering(_bwd_p, mlir.lower_fun(_reference_bwd, multiple_results=True))
mlir.register_lowering(_lin_p, mlir.lower_fun(_reference_lin, multiple_results=False))


# ------------------------------------------------------------------------ derivatives


def _lin_transpose(ct, x, scale, bias, dx, dscale, dbias, **kw):
    if any(ad.is_undefined_primal(v) for v in (x, scale, bias)):
        raise NotImplementedError("group_norm: the jvp is linear in the tangents only")
    if type(ct) is ad.Zero:
        return [None] * 3 + [None if not ad.is_undefined_primal(t) else ad.Zero(t.aval) for t in (dx, dscale, dbias)]
    gx, gs, gb = _bwd_p.bind(x, scale, bias, ct, **kw)
    return [None] * 3 + [g if ad.is_undefined_primal(t) else None for g, t in ((gx, dx), (gs, dscale), (gb, dbias))]


ad.primitive_transposes[_lin_p] = _lin_transpose


def _bwd_transpose(cts, x, scale, bias, ct, **kw):
    # the adjoint is linear in ct; its own adjoint is the jvp
    if any(ad.is_undefined_primal(v) for v in (x, scale, bias)):
        raise NotImplementedError("group_norm: the adjoint is linear in the cotangent only")
    cts = [ad.instantiate_zeros(c) for c in cts]
    return [None] * 3 + [_lin_p.bind(x, scale, bias, *cts, **kw)]


ad.primitive_transposes[_bwd_p] = _bwd_transpose


def _jvp_by(reference_fn, prim, multiple):
    def rule(primals, tangents, **kw):
        tangents = [ad.instantiate_zeros(t) for t in tangents]
        out = prim.bind(*primals, **kw)
        _, t_out = jax.jvp(functools.partial(reference_fn, **kw), tuple(primals), tuple(tangents))
        return out, (list(t_out) if multiple else t_out)
    return rule


ad.primitive_jvps[_lin_p] = _jvp_by(_reference_lin, _lin_p, False)
ad.primitive_jvps[_bwd_p] = _jvp_by(_reference_bwd, _bwd_p, True)


def _batcher(prim, reference_fn, per_example):
    """``per_example``: which operands are [N, M, C] (the others are [C] parameters)."""
    def rule(args, dims, **kw):
        if all(d is None for a, d, e in zip(args, dims, per_example) if not e):
            size = next(a.shape[d] for a, d in zip(args, dims) if d is not None)
            folded = []
            for a, d, e in zip(args, dims, per_example):
                if e:
                    a = jnp.moveaxis(a, d, 0) if d is not None else jnp.broadcast_to(a, (size, *a.shape))
                    a = a.reshape(size * a.shape[1], *a.shape[2:])
                folded.append(a)
            out = prim.bind(*folded, **kw)
            unfold = lambda o: o.reshape(size, o.shape[0] // size, *o.shape[1:])  # noqa: E731
            if prim.multiple_results:  # (dx, dscale, dbias): the parameters' gradients sum over the map
                return [unfold(out[0]), out[1], out[2]], [0, None, None]
            return unfold(out), 0
        out = jax.vmap(functools.partial(reference_fn, **kw), in_axes=tuple(dims))(*args)
        return (list(out), [0] * len(out)) if prim.multiple_results else (out, 0)
    batching.primitive_batchers[prim] = rule


_batcher(_fwd_p, reference, (True, False, False))
_batcher(_lin_p, _reference_lin, (True, False, False, True, False, False))


def _bwd_batcher(args, dims, **kw):
    # per-map-entry parameter gradients: the plain formula, mapped
    out = jax.vmap(functools.partial(_reference_bwd, **kw), in_axes=tuple(dims))(*args)
    return list(out), [0, 0, 0]


batching.primitive_batchers[_bwd_p] = _bwd_batcher


@functools.partial(jax.custom_jvp, nondiff_argnums=(3, 4, 5))
def _group_norm(x, scale, bias, groups, eps, act):
    return _fwd_p.bind(x, scale, bias, groups=groups, eps=eps, act=act)


@_group_norm.defjvp
def _group_norm_jvp(groups, eps, act, primals, tangents):
    kw = dict(groups=groups, eps=eps, act=act)
    # the primal through the custom_jvp function again, so that an outer derivative (second
    # order) differentiates it by this rule too
    return _group_norm(*primals, groups, eps, act), _lin_p.bind(*primals, *tangents, **kw)


def group_norm_act(x: jax.Array, scale: jax.Array, bias: jax.Array, *, groups: int, eps: float,
                   act: str | None = None) -> jax.Array:
    """``act(GroupNorm(x))`` for channels-last float32 ``x`` [N, ..., C] (rank >= 2), ``scale``
    / ``bias`` [C]; ``act`` None or ``"silu"``. The custom calls on the CPU (module docstring),
    the plain formula on other backends."""
    if act not in ACTS:
        raise ValueError(f"group_norm_act: act must be one of {sorted(ACTS, key=str)}, got {act!r}")
    if x.ndim < 2 or x.dtype != jnp.float32:
        raise ValueError(f"group_norm_act: float32 [N, ..., C] activations only, got {x.dtype}{list(x.shape)}")
    C = x.shape[-1]
    if groups < 1 or C % groups:
        raise ValueError(f"group_norm_act: {C} channels are not divisible into {groups} groups")
    if scale.shape != (C,) or bias.shape != (C,):
        raise ValueError(f"group_norm_act: scale and bias must be [{C}], got {scale.shape} and {bias.shape}")
    if onednn._load() is not None:
        raise RuntimeError(f"group_norm_act: the CPU kernels are unavailable: {onednn._state['error']}")
    N = x.shape[0]
    M = int(np.prod(x.shape[1:-1], dtype=np.int64))
    y = _group_norm(x.reshape(N, M, C), scale.astype(jnp.float32), bias.astype(jnp.float32),
                    int(groups), float(eps), ACTS[act])
    return y.reshape(x.shape)
