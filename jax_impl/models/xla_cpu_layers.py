"""GroupNorm, convolution and bias layers whose reductions XLA:CPU runs as matrix products.

One-sided module: JAX only, with no ``torch_ref`` twin. Torch's GroupNorm, convolution and
bias gradient are native ATen kernels; this module changes only how XLA is asked to compute
the same maths, so the torch side keeps ``nn.GroupNorm`` / ``nn.Conv2d``.

Why (issue 11, measured on the 2-core machine, jax 0.10.2). A profile of the DDPM U-Net's
training step (batch 16, 32x32) spent about a third of its op time in reductions: the
GroupNorm statistics and their gradients, and the bias gradients of the convolutions.
XLA:CPU runs a reduction over the leading axes of a channels-last array (``sum over N, H, W
keeping C``) as a single-threaded loop, while it hands a dot to a multi-threaded library:

==========================================  ===========  ==================
[16, 32, 32, 96] float32                     reduction    the same as a dot
==========================================  ===========  ==================
sum over (N, H, W) -> [C]                    1.64 ms      0.19 ms
sum over (H, W) per example -> [N, C]        0.86 ms      0.22 ms
GroupNorm(32) forward                        1.51 ms      0.77 ms
GroupNorm(32) forward + backward             6.23 ms      3.31 ms
==========================================  ===========  ==================

So on the CPU backend every sum over rows is a product with a vector of ones, every
broadcast over rows is the outer product with one (reverse-mode autodiff transposes one
into the other, so the gradients are dots too), and the group average of per-channel
statistics is a product with the block matrix ``P[c, c'] = [group(c) = group(c')] / count``.
The last matters: an elementwise loop that expands group statistics to channels inside
itself ran 2-3x slower than one that reads a [N, C] operand a dot produced. Whole training
steps, the same process, alternating (medians of 9): DDPM U-Net 32x32 380.6 -> 319.3 ms,
NCSN++ 32x32 325.3 -> 245.6 ms.

Each function picks its formulation when it is traced: the dot form when JAX's default
backend (where ``jax.jit`` places a program unless a device or sharding says otherwise) is
the CPU, the plain reductions and broadcasts otherwise (GPU and TPU reduce well, and a TPU's
default matmul precision would round the statistics). The two are the same maths, so the
choice changes speed, never values. (``lax.platform_dependent`` would pick at lowering
instead, but it traces both branches of every call: it doubled the networks' tracing time,
DDPM U-Net training step 2.3 -> 4.5 s, NCSN++ 2.9 -> 6.3 s, for a program with one branch
left.) Outputs equal ``flax.linen.GroupNorm`` (``use_fast_variance=False``) and ``flax.linen.Conv`` to float rounding, with the same
parameter names (``scale`` / ``bias``; ``kernel`` / ``bias``), shapes and initial values,
so checkpoints and the torch converter are unchanged; forward mode (``jax.jvp``, the
likelihood's divergence) and ``vmap`` work through every branch.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from jax_impl import cpu_group_norm, cpu_matmul, onednn

__all__ = [
    "sum_rows",
    "broadcast_rows",
    "sum_per_example",
    "broadcast_per_example",
    "group_average",
    "add_bias",
    "channel_dense",
    "GroupNorm",
    "Conv",
    "Dense",
]

_HIGHEST = lax.Precision.HIGHEST


def _per_platform(cpu: Callable, other: Callable, *args):
    """``cpu(*args)`` when the default backend is the CPU, else ``other(*args)``."""
    return (cpu if jax.default_backend() == "cpu" else other)(*args)


def _dot_sum_rows(x):
    return jnp.dot(jnp.ones(x.shape[:1], x.dtype), x, precision=_HIGHEST)


def _dot_broadcast_rows(v, rows):
    return lax.dot_general(jnp.ones((rows,), v.dtype), v, (((), ()), ((), ())), precision=_HIGHEST)


def sum_rows(x: jax.Array) -> jax.Array:
    """``x.sum(0)`` for ``x`` [R, C] -> [C] (a ones-vector product on the CPU)."""
    return _per_platform(_dot_sum_rows, lambda x: x.sum(0), x)


def broadcast_rows(v: jax.Array, rows: int) -> jax.Array:
    """``v`` [C] repeated over ``rows`` rows -> [rows, C]; its transpose is ``sum_rows``."""
    return _per_platform(lambda v: _dot_broadcast_rows(v, rows),
                         lambda v: jnp.broadcast_to(v, (rows,) + v.shape), v)


def _dot_sum_per_example(x):
    ones = jnp.ones(x.shape[:2], x.dtype)
    return lax.dot_general(ones, x, (((1,), (1,)), ((0,), (0,))), precision=_HIGHEST)


def _dot_broadcast_per_example(s, m):
    ones = jnp.ones((s.shape[0], m), s.dtype)
    return lax.dot_general(ones, s, (((), ()), ((0,), (0,))), precision=_HIGHEST)


def sum_per_example(x: jax.Array) -> jax.Array:
    """``x.sum(1)`` for ``x`` [N, M, C] -> [N, C] (a batched ones-vector product on the CPU)."""
    return _per_platform(_dot_sum_per_example, lambda x: x.sum(1), x)


def broadcast_per_example(s: jax.Array, m: int) -> jax.Array:
    """``s`` [N, C] repeated over ``m`` positions -> [N, m, C]; the transpose of
    ``sum_per_example``."""
    return _per_platform(lambda s: _dot_broadcast_per_example(s, m),
                         lambda s: jnp.broadcast_to(s[:, None, :], (s.shape[0], m, s.shape[1])), s)


def _group_matrix(channels: int, groups: int, count: int, dtype) -> jax.Array:
    group = lax.iota(jnp.int32, channels) // (channels // groups)
    return (group[:, None] == group[None, :]).astype(dtype) / count


def group_average(s: jax.Array, groups: int, count: int) -> jax.Array:
    """Per-channel sums ``s`` [N, C] -> each channel's group total divided by ``count``
    [N, C] (channels ``g C/G .. (g+1) C/G - 1`` form group g): ``s @ P`` on the CPU."""
    N, C = s.shape

    def cpu(s):
        return jnp.dot(s, _group_matrix(C, groups, count, s.dtype), precision=_HIGHEST)

    def other(s):
        return jnp.repeat(s.reshape(N, groups, C // groups).sum(-1) / count, C // groups, axis=-1)
    return _per_platform(cpu, other, s)


def add_bias(y: jax.Array, bias: jax.Array) -> jax.Array:
    """``y + bias`` over the last axis (``y`` [..., C], ``bias`` [C]); the bias gradient is
    ``sum_rows`` of the output gradient."""
    rows = math.prod(y.shape[:-1])
    return y + broadcast_rows(bias.astype(y.dtype), rows).reshape(y.shape)


def channel_dense(x: jax.Array, W: jax.Array) -> jax.Array:
    """``x W`` over the channel axis: ``x`` [..., C_in], ``W`` [C_in, C_out] -> [..., C_out]
    (``jnp.einsum("...i,ij->...j", x, W)``, NIN's product).

    A 4-D float32 ``x`` [N, H, W, C_in] goes to oneDNN as a 1 x 1 convolution when
    ``onednn.enabled()``: XLA:CPU computed the kernel gradient of the einsum, a contraction
    over every leading axis, as a transpose copy of the activations and a dot, and the DDPM
    U-Net 32 x 32 training step (batch 16, four NINs per attention block) took 190 ms with
    the einsum, 176 ms with the convolution (medians of 20, 2026-12-04)."""
    if x.ndim == 4 and x.dtype == jnp.float32 and W.dtype == jnp.float32 and onednn.enabled():
        return onednn.conv2d(x, W[None, None])
    return jnp.einsum("...i,ij->...j", x, W)


class GroupNorm(nn.Module):
    """Group normalisation (Wu & He 2018) over channels-last ``x`` [N, ..., C]::

        mu, var = mean, variance of x over (..., channels of the group)   per example, group
        y = (x - mu) / sqrt(var + epsilon) * scale + bias

    with the two-pass variance ``mean((x - mu)^2)`` (``flax.linen.GroupNorm`` with
    ``use_fast_variance=False``; torch's ``nn.GroupNorm``), statistics in at least float32,
    params ``scale`` [C] (ones) and ``bias`` [C] (zeros) in float32.

    ``module(x, act=f)`` returns ``f(module(x))``. Float32 ``x`` goes to the C++ kernels of
    ``jax_impl.cpu_group_norm`` when ``onednn.enabled()``, with ``act`` fused into them when it
    is SiLU (``jax.nn.silu``, the networks' ``swish``); elsewhere the dot formulation below.
    """

    num_groups: int = 32
    epsilon: float = 1e-6

    @nn.compact
    def __call__(self, x: jax.Array, act: Callable[[jax.Array], jax.Array] | None = None) -> jax.Array:
        C = x.shape[-1]
        if x.ndim < 2:
            raise ValueError(f"GroupNorm: expected [N, ..., C], got shape {x.shape}")
        if self.num_groups < 1 or C % self.num_groups:
            raise ValueError(f"GroupNorm: {C} channels are not divisible into {self.num_groups} groups")
        scale = self.param("scale", nn.initializers.ones, (C,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (C,), jnp.float32)
        if x.dtype == jnp.float32 and onednn.enabled():
            fused = act is jax.nn.silu
            y = cpu_group_norm.group_norm_act(x, scale, bias, groups=self.num_groups, eps=self.epsilon,
                                              act="silu" if fused else None)
            return y if fused or act is None else act(y)
        y = self._dots(x, scale, bias)
        return y if act is None else act(y)

    def _dots(self, x, scale, bias):
        """The normalisation with its sums as dots on the CPU (module docstring); [N, ..., C]."""
        C = x.shape[-1]
        dtype = jnp.promote_types(x.dtype, jnp.float32)
        N, M = x.shape[0], math.prod(x.shape[1:-1])
        count = M * (C // self.num_groups)
        h = x.astype(dtype).reshape(N, M, C)
        mu = group_average(sum_per_example(h), self.num_groups, count)                  # [N, C]
        d = h - broadcast_per_example(mu, M)
        var = group_average(sum_per_example(d * d), self.num_groups, count)             # [N, C]
        mul = lax.rsqrt(var + self.epsilon) * scale.astype(dtype)[None, :]              # [N, C]
        y = d * broadcast_per_example(mul, M)
        return add_bias(y, bias.astype(dtype)).reshape(x.shape)


def _pairs(padding, n: int) -> tuple[tuple[int, int], ...]:
    if isinstance(padding, int):
        return ((padding, padding),) * n
    if isinstance(padding, str):
        raise ValueError(f"Conv: padding must be an int or (lo, hi) pairs, not {padding!r} "
                         "(explicit padding keeps stride-2 convolutions symmetric as in torch)")
    pairs = tuple(tuple(int(v) for v in p) for p in padding)
    if len(pairs) != n or any(len(p) != 2 for p in pairs):
        raise ValueError(f"Conv: padding needs {n} (lo, hi) pairs, got {padding!r}")
    return pairs


class Conv(nn.Module):
    """Channels-last convolution ``x`` [N, *spatial, C_in] -> [N, *spatial', features]:
    ``flax.linen.Conv`` with explicit padding, whose bias is added by ``add_bias``.

    Params ``kernel`` [*kernel_size, C_in, features] (``kernel_init``, flax's
    ``lecun_normal`` by default) and ``bias`` [features] (``bias_init``), float32, created
    in that order as flax's, so the same key gives the same initial values. ``padding`` is
    an int (the same on both sides of every spatial axis, torch's meaning) or one
    ``(lo, hi)`` pair per spatial axis.

    A 2-D float32 convolution runs as oneDNN's kernels (``jax_impl.onednn.conv2d``) when
    ``onednn.enabled()`` (the CPU backend with one device, the custom calls built, and
    ``SCOREDIFF_ONEDNN`` not ``0``), else as ``lax.conv_general_dilated``; the two agree to
    float32 rounding. The choice is made when the layer is traced.
    """

    features: int
    kernel_size: Sequence[int]
    strides: Sequence[int] | int = 1
    padding: Any = 0
    use_bias: bool = True
    kernel_init: Callable = nn.initializers.lecun_normal()
    bias_init: Callable = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        n = len(self.kernel_size)
        if x.ndim != n + 2:
            raise ValueError(f"Conv: a {n}-D kernel needs [N, *{n} spatial, C] inputs, got shape {x.shape}")
        if not 1 <= n <= 3:
            raise ValueError(f"Conv: 1-, 2- or 3-D kernels, got kernel_size {tuple(self.kernel_size)}")
        strides = (self.strides,) * n if isinstance(self.strides, int) else tuple(self.strides)
        padding = _pairs(self.padding, n)
        kernel = self.param("kernel", self.kernel_init, tuple(self.kernel_size) + (x.shape[-1], self.features),
                            jnp.float32)
        dtype = jnp.promote_types(x.dtype, kernel.dtype)
        spatial = "HWD"[:n]
        dims = ("N" + spatial + "C", spatial + "IO", "N" + spatial + "C")
        if n == 2 and dtype == jnp.float32 and onednn.enabled():
            y = onednn.conv2d(x.astype(dtype), kernel.astype(dtype), strides, padding)
        else:
            y = lax.conv_general_dilated(x.astype(dtype), kernel.astype(dtype), strides, padding,
                                         dimension_numbers=dims)
        if self.use_bias:
            bias = self.param("bias", self.bias_init, (self.features,), jnp.float32)
            y = add_bias(y, bias.astype(dtype))
        return y


class Dense(nn.Module):
    """``y = x kernel + bias`` over the last axis, ``x`` [..., K] -> [..., features]:
    ``flax.linen.Dense``, whose bias is added by ``add_bias``.

    Params ``kernel`` [K, features] (``kernel_init``, flax's ``lecun_normal`` by default) and
    ``bias`` [features] (``bias_init``), float32, as flax's, so the same key gives the same
    initial values and checkpoints and the torch converter are unchanged.

    A float32 product with at least ``cpu_matmul.MIN_ROWS`` rows runs as oneDNN's sgemm
    (``jax_impl.cpu_matmul.dense``) when ``onednn.enabled()``, else as XLA's dot; the two
    agree to float32 rounding. The choice is made when the layer is traced (measurements:
    ``jax_impl/cpu_matmul.py``).
    """

    features: int
    use_bias: bool = True
    kernel_init: Callable = nn.initializers.lecun_normal()
    bias_init: Callable = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = jnp.asarray(x)
        if x.ndim < 1:
            raise ValueError(f"Dense: inputs need a feature axis, got shape {x.shape}")
        kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features), jnp.float32)
        dtype = jnp.promote_types(x.dtype, kernel.dtype)
        y = cpu_matmul.dense(x.astype(dtype), kernel.astype(dtype))
        if self.use_bias:
            bias = self.param("bias", self.bias_init, (self.features,), jnp.float32)
            y = add_bias(y, bias.astype(dtype))
        return y
