"""Layers of the NCSN (RefineNet) score networks, Flax linen NHWC.

Twin: ``torch_ref/models/ncsn_layers.py`` (same public names, PyTorch NCHW; see its
docstring for the official facts reproduced: InstanceNorm++ with the unbiased variance
of the channel means, size-preserving dilated convolutions that do not downsample,
max-pool CRP in ``RefineBlock`` and zero-counting average-pool CRP in
``CondRefineBlock``, bilinear ``align_corners=True`` fusion).

Flax names mirror the torch attributes so the key table is mechanical: a ModuleList
entry ``res1.0`` is the submodule ``res1_0``, a convolution's ``weight`` (OIHW) is its
``kernel`` (HWIO), an embedding's ``weight`` is ``embed/embedding``. Convolutions are
written with explicit padding and PyTorch's default initialisation
(``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` for kernel and bias), never flax ``'SAME'``.

The layout tables (``Stage``, ``Refine``, ``RefineNetPlan``, ``REFINENET_PLANS``),
``ACTIVATIONS``, ``INSTANCE_NORM_EPS`` and ``lookup_config`` are framework-neutral data
defined once in ``spec/ncsn_configs.py`` and re-exported here.

Framework-specific helpers, not part of the mirrored API: ``take_rows``, ``Embed``, ``Conv2d``,
``max_pool5``, ``avg_pool5``, ``resize_bilinear``.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jax_impl.models.layers import get_act  # one activation table per side (also re-exported)
from jax_impl.validate import check_floating, is_concrete
from spec.ncsn_configs import (  # noqa: F401  (re-exported: configs and layouts live once in spec)
    ACTIVATIONS,
    INSTANCE_NORM_EPS,
    REFINENET_PLANS,
    Refine,
    RefineNetPlan,
    Stage,
    lookup_config,
)

__all__ = [
    "ACTIVATIONS",
    "INSTANCE_NORM_EPS",
    "get_act",
    "instance_norm_plus",
    "InstanceNorm2dPlus",
    "ConditionalInstanceNorm2dPlus",
    "conv3x3",
    "conv1x1",
    "dilated_conv3x3",
    "ConvMeanPool",
    "CRPBlock",
    "CondCRPBlock",
    "RCUBlock",
    "CondRCUBlock",
    "MSFBlock",
    "CondMSFBlock",
    "RefineBlock",
    "CondRefineBlock",
    "ResidualBlock",
    "ConditionalResidualBlock",
    "check_inputs",
    "lookup_config",
    "Stage",
    "Refine",
    "RefineNetPlan",
    "REFINENET_PLANS",
]

# ----------------------------------------------------------------------------- norms


def _per_channel(p: jax.Array, x: jax.Array) -> jax.Array:
    """``[C]`` or ``[B, C]`` -> broadcastable against NHWC ``x``."""
    p = jnp.asarray(p)
    if p.ndim == 1:
        return p.reshape(1, 1, 1, -1)
    return p.reshape(p.shape[0], 1, 1, p.shape[-1])


def instance_norm_plus(
    x: jax.Array,
    alpha: jax.Array,
    gamma: jax.Array,
    beta: jax.Array | None = None,
    eps: float = INSTANCE_NORM_EPS,
) -> jax.Array:
    """InstanceNorm++ of NHWC ``x`` with per-channel ``alpha, gamma, beta`` (``[C]`` or ``[B, C]``).

    ``h = (x - mu) / sqrt(var_hw(x) + eps) + alpha * (mu - mean_c(mu)) / sqrt(var_c(mu) + eps)``,
    ``out = gamma * h + beta``; ``var_hw`` biased, ``var_c`` unbiased (official).
    """
    means = jnp.mean(x, axis=(1, 2))  # [B, C]
    m = jnp.mean(means, axis=-1, keepdims=True)
    v = jnp.var(means, axis=-1, keepdims=True, ddof=1)
    means_plus = (means - m) / jnp.sqrt(v + eps)
    var_x = jnp.var(x, axis=(1, 2), keepdims=True)
    h = (x - means[:, None, None, :]) / jnp.sqrt(var_x + eps)
    h = h + means_plus[:, None, None, :] * _per_channel(alpha, x)
    out = _per_channel(gamma, x) * h
    if beta is not None:
        out = out + _per_channel(beta, x)
    return out


def _check_width(module: str, x: jax.Array, expected: int) -> int:
    """The channel count of NHWC ``x``, which must be ``expected`` (ValueError naming ``module``)."""
    if x.shape[-1] != expected:
        raise ValueError(f"{module}: expected {expected} input channels, got shape {tuple(x.shape)}")
    return expected


def _normal_one(key, shape, dtype=jnp.float32):
    """N(1, 0.02), the official init of InstanceNorm++ scales."""
    return 1.0 + 0.02 * jax.random.normal(key, shape, dtype)


class InstanceNorm2dPlus(nn.Module):
    """Unconditional InstanceNorm++ (NCSNv2) over ``num_features`` channels; params
    ``alpha, gamma, beta`` of shape ``[C]``."""

    num_features: int
    bias: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = _check_width("InstanceNorm2dPlus", x, self.num_features)
        alpha = self.param("alpha", _normal_one, (c,), jnp.float32)
        gamma = self.param("gamma", _normal_one, (c,), jnp.float32)
        beta = self.param("beta", nn.initializers.zeros, (c,), jnp.float32) if self.bias else None
        return instance_norm_plus(x, alpha, gamma, beta)


def take_rows(table: jax.Array, y: jax.Array) -> jax.Array:
    """``table[y]`` for labels ``y`` in ``[0, len(table))``; any other label (negative ones
    included, which NumPy indexing would wrap) gives NaN rows, so a bad label that slips
    past the eager checks inside ``jit`` shows in the output instead of silently picking
    another noise level."""
    n = table.shape[0]
    y = jnp.where(y < 0, n, y)
    return jnp.take(table, y, axis=0, mode="fill", fill_value=jnp.nan)


class Embed(nn.Module):
    """``torch.nn.Embedding`` lookup with the checked ``take_rows``; param ``embedding [n, features]``."""

    num_embeddings: int
    features: int
    embedding_init: Callable = nn.initializers.normal(1.0)

    @nn.compact
    def __call__(self, y: jax.Array) -> jax.Array:
        table = self.param("embedding", self.embedding_init, (self.num_embeddings, self.features), jnp.float32)
        return take_rows(table, y)


class ConditionalInstanceNorm2dPlus(nn.Module):
    """Conditional InstanceNorm++ (NCSN): ``embed/embedding [num_classes, 3C]`` holds
    ``(gamma, alpha, beta)`` per noise level (``[num_classes, 2C]`` without bias)."""

    num_features: int
    num_classes: int
    bias: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
        c = _check_width("ConditionalInstanceNorm2dPlus", x, self.num_features)
        n = 3 if self.bias else 2

        def init(key, shape, dtype=jnp.float32):
            w = _normal_one(key, shape, dtype)
            return w.at[:, 2 * c :].set(0.0) if self.bias else w

        emb = Embed(self.num_classes, n * c, embedding_init=init, name="embed")(y)
        if self.bias:
            gamma, alpha, beta = jnp.split(emb, 3, axis=-1)
        else:
            (gamma, alpha), beta = jnp.split(emb, 2, axis=-1), None
        return instance_norm_plus(x, alpha, gamma, beta)


# ----------------------------------------------------------------------------- convs


def _torch_uniform(bound: float):
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class Conv2d(nn.Module):
    """``torch.nn.Conv2d`` in NHWC: stride 1, symmetric ``padding``, ``dilation``.

    Params ``kernel [k, k, C_in, C_out]`` (HWIO) and ``bias [C_out]``.
    """

    features: int
    kernel_size: int = 3
    padding: int = 1
    dilation: int = 1
    use_bias: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, cin = self.kernel_size, x.shape[-1]
        bound = 1.0 / math.sqrt(cin * k * k)
        kernel = self.param("kernel", _torch_uniform(bound), (k, k, cin, self.features), jnp.float32)
        dtype = jnp.result_type(x.dtype, kernel.dtype)
        p = self.padding
        y = jax.lax.conv_general_dilated(
            x.astype(dtype), kernel.astype(dtype), window_strides=(1, 1), padding=((p, p), (p, p)),
            rhs_dilation=(self.dilation, self.dilation), dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        if self.use_bias:
            bias = self.param("bias", _torch_uniform(bound), (self.features,), jnp.float32)
            y = y + bias.astype(dtype).reshape(1, 1, 1, -1)
        return y


def conv3x3(in_planes: int, out_planes: int, bias: bool = True) -> Conv2d:
    """3x3 convolution ``in_planes -> out_planes``, padding 1 (``in_planes``: the twin's
    signature; flax reads the width from the input)."""
    del in_planes
    return Conv2d(out_planes, 3, 1, 1, bias)


def conv1x1(in_planes: int, out_planes: int, bias: bool = True) -> Conv2d:
    """1x1 convolution ``in_planes -> out_planes``."""
    del in_planes
    return Conv2d(out_planes, 1, 0, 1, bias)


def dilated_conv3x3(in_planes: int, out_planes: int, dilation: int, bias: bool = True) -> Conv2d:
    """3x3 convolution with dilation ``d`` and padding ``d`` (size preserving)."""
    del in_planes
    return Conv2d(out_planes, 3, dilation, dilation, bias)


def _conv3x3(features: int, bias: bool = True, *, name: str) -> Conv2d:
    return Conv2d(features, 3, 1, 1, bias, name=name)


def _dilated(features: int, dilation: int, *, name: str) -> Conv2d:
    return Conv2d(features, 3, dilation, dilation, True, name=name)


class ConvMeanPool(nn.Module):
    """Convolution (padding k//2, submodule ``conv``), then 2x2 mean pooling written as
    the mean of the four phases ``o[::2, ::2], o[1::2, ::2], o[::2, 1::2], o[1::2, 1::2]``."""

    input_dim: int
    output_dim: int
    kernel_size: int = 3
    biases: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        _check_width("ConvMeanPool", x, self.input_dim)
        o = Conv2d(self.output_dim, self.kernel_size, self.kernel_size // 2, 1, self.biases, name="conv")(x)
        return (o[:, ::2, ::2] + o[:, 1::2, ::2] + o[:, ::2, 1::2] + o[:, 1::2, 1::2]) / 4.0


# --------------------------------------------------------------- pooling, resizing


_POOL_PAD = ((0, 0), (2, 2), (2, 2), (0, 0))


def max_pool5(x: jax.Array) -> jax.Array:
    """``nn.MaxPool2d(5, stride=1, padding=2)`` on NHWC (padding never wins: -inf)."""
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 5, 5, 1), (1, 1, 1, 1), _POOL_PAD)


def avg_pool5(x: jax.Array) -> jax.Array:
    """``nn.AvgPool2d(5, stride=1, padding=2)`` on NHWC: zero padding counted, divisor 25."""
    s = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 5, 5, 1), (1, 1, 1, 1), _POOL_PAD)
    return s / 25.0


def _linear_taps(n_in: int, n_out: int, dtype):
    """Source indices and weights of 1-D linear interpolation with ``align_corners=True``,
    computed as PyTorch does, in the data's precision: ``src = i * ((n_in-1)/(n_out-1))``."""
    dt = np.float64 if np.dtype(dtype) == np.float64 else np.float32
    scale = dt(n_in - 1) / dt(n_out - 1) if n_out > 1 else dt(0.0)
    src = (scale * np.arange(n_out, dtype=dt)).astype(dt)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    lam1 = np.clip(src - i0.astype(dt), 0.0, 1.0).astype(dt)
    i1 = np.where(i0 < n_in - 1, i0 + 1, i0)
    return i0, i1, (dt(1.0) - lam1).astype(dt), lam1


def resize_bilinear(x: jax.Array, shape: Sequence[int]) -> jax.Array:
    """``F.interpolate(mode='bilinear', align_corners=True)`` of NHWC ``x`` to ``shape = (H, W)``.

    Width first, then height: ``out = w0_h (w0_w a + w1_w b) + w1_h (w0_w c + w1_w d)``
    as PyTorch's CPU kernel evaluates it. Same-size resizing is the identity.
    """
    H, W = int(shape[0]), int(shape[1])
    h, w = x.shape[1], x.shape[2]
    if (h, w) == (H, W):
        return x
    i0, i1, w0, w1 = _linear_taps(w, W, x.dtype)
    x = (jnp.take(x, i0, axis=2) * jnp.asarray(w0, x.dtype).reshape(1, 1, -1, 1)
         + jnp.take(x, i1, axis=2) * jnp.asarray(w1, x.dtype).reshape(1, 1, -1, 1))
    i0, i1, w0, w1 = _linear_taps(h, H, x.dtype)
    return (jnp.take(x, i0, axis=1) * jnp.asarray(w0, x.dtype).reshape(1, -1, 1, 1)
            + jnp.take(x, i1, axis=1) * jnp.asarray(w1, x.dtype).reshape(1, -1, 1, 1))


# ------------------------------------------------------------------ RefineNet blocks


class CRPBlock(nn.Module):
    """Chained residual pooling: ``x = act(x)``; per stage ``path = conv(pool(path)); x = x + path``."""

    features: int
    n_stages: int
    act: str
    maxpool: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        pool = max_pool5 if self.maxpool else avg_pool5
        x = get_act(self.act)(x)
        path = x
        for i in range(self.n_stages):
            path = _conv3x3(self.features, False, name=f"convs_{i}")(pool(path))
            x = path + x
        return x


class CondCRPBlock(nn.Module):
    """Conditional CRP: ``path = conv(avgpool(norm(path, y)))`` per stage."""

    features: int
    n_stages: int
    num_classes: int
    act: str

    @nn.compact
    def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
        x = get_act(self.act)(x)
        path = x
        for i in range(self.n_stages):
            path = ConditionalInstanceNorm2dPlus(self.features, self.num_classes, name=f"norms_{i}")(path, y)
            path = _conv3x3(self.features, False, name=f"convs_{i}")(avg_pool5(path))
            x = path + x
        return x


class RCUBlock(nn.Module):
    """Residual conv units: ``n_blocks`` times ``x = x + (conv . act)^n_stages (x)``;
    convolutions ``"{i}_{j}_conv"`` (1-based), without bias."""

    features: int
    n_blocks: int
    n_stages: int
    act: str

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        act = get_act(self.act)
        for i in range(1, self.n_blocks + 1):
            residual = x
            for j in range(1, self.n_stages + 1):
                x = _conv3x3(self.features, False, name=f"{i}_{j}_conv")(act(x))
            x = x + residual
        return x


class CondRCUBlock(nn.Module):
    """Conditional RCU: ``x = conv(act(norm(x, y)))`` per stage, norms ``"{i}_{j}_norm"``."""

    features: int
    n_blocks: int
    n_stages: int
    num_classes: int
    act: str

    @nn.compact
    def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
        act = get_act(self.act)
        for i in range(1, self.n_blocks + 1):
            residual = x
            for j in range(1, self.n_stages + 1):
                x = ConditionalInstanceNorm2dPlus(self.features, self.num_classes, name=f"{i}_{j}_norm")(x, y)
                x = _conv3x3(self.features, False, name=f"{i}_{j}_conv")(act(x))
            x = x + residual
        return x


class MSFBlock(nn.Module):
    """Multi-resolution fusion: ``sum_i resize(conv_i(x_i), shape)``."""

    in_planes: tuple[int, ...]
    features: int

    @nn.compact
    def __call__(self, xs: Sequence[jax.Array], shape: Sequence[int]) -> jax.Array:
        sums = jnp.zeros((xs[0].shape[0], *shape, self.features), xs[0].dtype)
        for i, x in enumerate(xs):
            sums = sums + resize_bilinear(_conv3x3(self.features, name=f"convs_{i}")(x), shape)
        return sums


class CondMSFBlock(nn.Module):
    """Conditional MSF: ``sum_i resize(conv_i(norm_i(x_i, y)), shape)``."""

    in_planes: tuple[int, ...]
    features: int
    num_classes: int

    @nn.compact
    def __call__(self, xs: Sequence[jax.Array], y: jax.Array, shape: Sequence[int]) -> jax.Array:
        sums = jnp.zeros((xs[0].shape[0], *shape, self.features), xs[0].dtype)
        for i, (c, x) in enumerate(zip(self.in_planes, xs)):
            h = ConditionalInstanceNorm2dPlus(c, self.num_classes, name=f"norms_{i}")(x, y)
            sums = sums + resize_bilinear(_conv3x3(self.features, name=f"convs_{i}")(h), shape)
        return sums


class RefineBlock(nn.Module):
    """RefineNet block: RCU(2, 2) per input, MSF (unless ``start``), CRP(2), RCU(3 if end else 1, 2)."""

    in_planes: tuple[int, ...]
    features: int
    act: str
    start: bool = False
    end: bool = False
    maxpool: bool = True

    @nn.compact
    def __call__(self, xs: Sequence[jax.Array], output_shape: Sequence[int]) -> jax.Array:
        hs = [RCUBlock(c, 2, 2, self.act, name=f"adapt_convs_{i}")(x)
              for i, (c, x) in enumerate(zip(self.in_planes, xs))]
        if len(self.in_planes) > 1:
            h = MSFBlock(tuple(self.in_planes), self.features, name="msf")(hs, output_shape)
        else:
            h = hs[0]
        h = CRPBlock(self.features, 2, self.act, self.maxpool, name="crp")(h)
        return RCUBlock(self.features, 3 if self.end else 1, 2, self.act, name="output_convs")(h)


class CondRefineBlock(nn.Module):
    """Conditional RefineNet block (NCSN v1): conditional RCU, MSF and (average-pool) CRP."""

    in_planes: tuple[int, ...]
    features: int
    num_classes: int
    act: str
    start: bool = False
    end: bool = False

    @nn.compact
    def __call__(self, xs: Sequence[jax.Array], y: jax.Array, output_shape: Sequence[int]) -> jax.Array:
        L = self.num_classes
        hs = [CondRCUBlock(c, 2, 2, L, self.act, name=f"adapt_convs_{i}")(x, y)
              for i, (c, x) in enumerate(zip(self.in_planes, xs))]
        if len(self.in_planes) > 1:
            h = CondMSFBlock(tuple(self.in_planes), self.features, L, name="msf")(hs, y, output_shape)
        else:
            h = hs[0]
        h = CondCRPBlock(self.features, 2, L, self.act, name="crp")(h, y)
        return CondRCUBlock(self.features, 3 if self.end else 1, 2, L, self.act, name="output_convs")(h, y)


# ------------------------------------------------------------------- residual blocks


def _residual_convs(input_dim: int, output_dim: int, resample: str | None, dilation: int | None):
    """``(conv1, conv2, shortcut, mid_dim)`` of the official residual block (shortcut
    None: identity)."""
    if resample == "down":
        if dilation is not None:
            return (_dilated(input_dim, dilation, name="conv1"), _dilated(output_dim, dilation, name="conv2"),
                    _dilated(output_dim, dilation, name="shortcut"), input_dim)
        return (_conv3x3(input_dim, name="conv1"), ConvMeanPool(input_dim, output_dim, 3, name="conv2"),
                ConvMeanPool(input_dim, output_dim, 1, name="shortcut"), input_dim)
    if resample is None:
        if dilation is not None:
            shortcut = _dilated(output_dim, dilation, name="shortcut") if output_dim != input_dim else None
            return (_dilated(output_dim, dilation, name="conv1"), _dilated(output_dim, dilation, name="conv2"),
                    shortcut, output_dim)
        shortcut = Conv2d(output_dim, 1, 0, 1, True, name="shortcut") if output_dim != input_dim else None
        return _conv3x3(output_dim, name="conv1"), _conv3x3(output_dim, name="conv2"), shortcut, output_dim
    raise ValueError(f"resample must be None or 'down', got {resample!r}")


class ResidualBlock(nn.Module):
    """NCSNv2 residual block ``input_dim -> output_dim``:
    ``skip(x) + conv2(act(norm2(conv1(act(norm1(x))))))``; ``act`` None is ELU."""

    input_dim: int
    output_dim: int
    resample: str | None = None
    act: str | None = None
    dilation: int | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        act = get_act(self.act or "elu")
        _check_width("ResidualBlock", x, self.input_dim)
        conv1, conv2, shortcut, mid = _residual_convs(self.input_dim, self.output_dim, self.resample, self.dilation)
        h = conv1(act(InstanceNorm2dPlus(self.input_dim, name="normalize1")(x)))
        h = conv2(act(InstanceNorm2dPlus(mid, name="normalize2")(h)))
        skip = x if shortcut is None else shortcut(x)
        return skip + h


class ConditionalResidualBlock(nn.Module):
    """NCSN v1 residual block: as ``ResidualBlock`` with conditional InstanceNorm++."""

    input_dim: int
    output_dim: int
    num_classes: int
    resample: str | None = None
    act: str | None = None
    dilation: int | None = None

    @nn.compact
    def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
        act = get_act(self.act or "elu")
        _check_width("ConditionalResidualBlock", x, self.input_dim)
        conv1, conv2, shortcut, mid = _residual_convs(self.input_dim, self.output_dim, self.resample, self.dilation)
        L = self.num_classes
        h = conv1(act(ConditionalInstanceNorm2dPlus(self.input_dim, L, name="normalize1")(x, y)))
        h = conv2(act(ConditionalInstanceNorm2dPlus(mid, L, name="normalize2")(h, y)))
        skip = x if shortcut is None else shortcut(x)
        return skip + h


# ---------------------------------------------------------------------- input checks


def check_inputs(x, y, *, image_size: int, num_channels: int, num_scales: int) -> None:
    """Validate a network call ``(x [B, H, W, C], y [B])`` before any compute.

    Raises ``TypeError`` for a non-floating ``x`` or non-integer ``y``; ``ValueError``
    naming the argument for a wrong rank, channel count, spatial size (must be
    ``image_size x image_size``), label shape, or (when ``y`` holds concrete values,
    i.e. outside ``jit``) a label outside ``[0, num_scales)``. Inside ``jit`` the values
    are unknown; an out-of-range label then yields NaN (``take_rows``).
    """
    check_floating("x", x)
    x_shape, y_shape = jnp.shape(x), jnp.shape(y)
    if len(x_shape) != 4:
        raise ValueError(f"x must be [B, H, W, C] (NHWC), got shape {x_shape}")
    if x_shape[-1] != num_channels:
        raise ValueError(f"x has {x_shape[-1]} channels (shape {x_shape}, NHWC); the config expects "
                         f"num_channels={num_channels}")
    if tuple(x_shape[1:3]) != (image_size, image_size):
        raise ValueError(f"x has spatial size {tuple(x_shape[1:3])}; this network is configured for "
                         f"image_size={image_size} ({image_size}x{image_size})")
    y_dtype = jnp.result_type(y)
    if not jnp.issubdtype(y_dtype, jnp.integer):
        raise TypeError(f"y must hold integer noise-level labels, got dtype {y_dtype}")
    if len(y_shape) != 1 or y_shape[0] != x_shape[0]:
        raise ValueError(f"y must have shape [B] = ({x_shape[0]},), got {y_shape}")
    if is_concrete(y) and y_shape[0]:
        yv = np.asarray(y)
        if yv.min() < 0 or yv.max() >= num_scales:
            raise ValueError(f"y must lie in [0, num_scales) = [0, {num_scales}), got values in "
                             f"[{yv.min()}, {yv.max()}]")
