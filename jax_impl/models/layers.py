"""DDPM-style layers (Ho et al. 2020, as ported by score_sde) in Flax linen, NHWC.

Twin: ``torch_ref/models/layers.py`` (NCHW). Submodules and parameters are named after
the torch attributes (``GroupNorm_0``, ``Conv_0``, ``Dense_0``, ``NIN_0``, ``W``, ``b``)
so the converter's key table reads one-to-one. Layout differences handled by the key
table: conv kernels HWIO here vs OIHW in torch, dense kernels (in, out) vs (out, in);
GroupNorm ``scale`` here is torch's ``weight``. Every GroupNorm uses eps = 1e-6 (the
flax default; torch's default 1e-5 is overridden on the other side).

All blocks take their input width (``in_ch`` / ``channels``) as an attribute, like the
torch modules, and check it against the input at call time (before any compute).

Framework-specific helpers, not part of the mirrored API: ``default_init``, ``naive_upsample``;
``res_attn_stage`` (the U-Nets' down-path stage; flax passes ``train`` per call, its twin
relies on ``module.train()``).

The convolutions, GroupNorms, NIN products and NIN biases are ``jax_impl.models.xla_cpu_layers``'
(flax's ``Conv`` / ``GroupNorm`` maths and parameter names, their reductions written as dots
on the CPU backend, where XLA runs those on every core; 2-D convolutions and NIN products as
oneDNN convolutions there when ``jax_impl.onednn.enabled()``).
"""

from __future__ import annotations

import math
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jax_impl.models.xla_cpu_layers import Conv, GroupNorm, add_bias, channel_dense
from spec.model_configs import NONLINEARITIES
from spec.validate import check_choice

__all__ = [
    "GROUPNORM_EPS",
    "NONLINEARITIES",
    "get_act",
    "get_timestep_embedding",
    "group_norm",
    "ddpm_conv1x1",
    "ddpm_conv3x3",
    "check_channels",
    "check_image_inputs",
    "self_attention",
    "NIN",
    "AttnBlock",
    "Upsample",
    "Downsample",
    "ResnetBlockDDPM",
    "plan_modules",
]

GROUPNORM_EPS = 1e-6


def get_act(nonlinearity: str) -> Callable[[jax.Array], jax.Array]:
    """The activation named by score_sde's ``config.model.nonlinearity``.

    ``elu``; ``relu``; ``lrelu`` (negative slope 0.2); ``swish`` = SiLU, x * sigmoid(x).
    """
    name = nonlinearity.lower() if isinstance(nonlinearity, str) else nonlinearity
    check_choice("nonlinearity", name, NONLINEARITIES)
    if name == "elu":
        return jax.nn.elu
    if name == "relu":
        return jax.nn.relu
    if name == "lrelu":
        return lambda x: jax.nn.leaky_relu(x, negative_slope=0.2)
    return jax.nn.silu


def default_init(scale: float = 1.0):
    """DDPM initialiser: variance scaling, fan_avg, uniform (scale 0 -> 1e-10)."""
    scale = 1e-10 if scale == 0 else scale
    return nn.initializers.variance_scaling(scale, "fan_avg", "uniform")


def get_timestep_embedding(timesteps: jax.Array, embedding_dim: int, max_positions: int = 10000) -> jax.Array:
    """Sinusoidal embedding of (possibly fractional) timesteps, computed in float32.

    ``emb[b] = [sin(t_b w_0..w_{h-1}), cos(t_b w_0..w_{h-1})]`` with ``h = dim // 2``,
    ``w_i = exp(-i log(max_positions) / (h - 1))``; zero-padded to ``dim`` when odd.

    Args:
      timesteps: ``[B]``.
      embedding_dim: output width (>= 4).
    Returns:
      ``[B, embedding_dim]`` float32.
    """
    if jnp.ndim(timesteps) != 1:
        raise ValueError(f"timesteps must have shape [B], got shape {jnp.shape(timesteps)}")
    if embedding_dim < 4:
        raise ValueError(f"embedding_dim must be >= 4, got {embedding_dim}")
    half_dim = embedding_dim // 2
    rate = math.log(max_positions) / (half_dim - 1)
    freqs = jnp.exp(jnp.arange(half_dim, dtype=jnp.float32) * -rate)
    args = jnp.asarray(timesteps).astype(jnp.float32)[:, None] * freqs[None, :]
    emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=1)
    if embedding_dim % 2 == 1:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


def ddpm_conv1x1(in_ch: int, out_ch: int, stride: int = 1, bias: bool = True, init_scale: float = 1.0,
                 padding: int = 0) -> Conv:
    """1x1 convolution ``in_ch -> out_ch`` with the DDPM initialiser (zero bias).

    ``in_ch`` is not stored (flax reads the width from the input); it is the twin's
    signature, so a layout reads the same on both sides.
    """
    del in_ch
    return Conv(out_ch, (1, 1), strides=stride, padding=padding, use_bias=bias, kernel_init=default_init(init_scale))


def ddpm_conv3x3(in_ch: int, out_ch: int, stride: int = 1, bias: bool = True, init_scale: float = 1.0,
                 padding=1) -> Conv:
    """3x3 convolution ``in_ch -> out_ch`` with the DDPM initialiser (zero bias).

    ``padding`` is an int (symmetric, torch's meaning) or explicit ``((lo, hi), (lo, hi))``;
    never flax's ``'SAME'``, which pads stride-2 convolutions asymmetrically. ``in_ch``
    as in ``ddpm_conv1x1``.
    """
    del in_ch
    return Conv(out_ch, (3, 3), strides=stride, padding=padding, use_bias=bias, kernel_init=default_init(init_scale))


def group_norm(channels: int, num_groups: int) -> GroupNorm:
    """GroupNorm(num_groups, eps=1e-6) over ``channels``, raising early if they don't divide
    (``xla_cpu_layers.GroupNorm``: flax's two-pass GroupNorm, its reductions as dots on the CPU)."""
    if num_groups < 1 or channels % num_groups:
        raise ValueError(f"GroupNorm: {channels} channels are not divisible into {num_groups} groups")
    return GroupNorm(num_groups=num_groups, epsilon=GROUPNORM_EPS)


def check_channels(module: str, x: jax.Array, expected: int) -> None:
    """Raise ``ValueError`` unless ``x`` is NHWC with ``expected`` channels."""
    if x.ndim != 4 or x.shape[-1] != expected:
        raise ValueError(f"{module}: expected an NHWC input with {expected} channels, got shape {x.shape}")


def check_image_inputs(x: jax.Array, labels: jax.Array, *, num_channels: int, factor: int) -> None:
    """Model-level checks (static shapes, so they run at trace time, before compute).

    ``x`` must be ``[B, H, W, num_channels]`` with H, W multiples of ``factor``; ``labels``
    must be ``[B]``.
    """
    if x.ndim != 4:
        raise ValueError(f"x must be NHWC [B, H, W, C], got shape {x.shape}")
    if x.shape[-1] != num_channels:
        raise ValueError(f"x has {x.shape[-1]} channels (last axis, NHWC) but the model expects {num_channels}")
    if x.shape[1] % factor or x.shape[2] % factor:
        raise ValueError(
            f"x spatial size {x.shape[1]}x{x.shape[2]} is not divisible by the down-sampling factor {factor}"
        )
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"x must have a floating dtype, got {x.dtype}")
    if jnp.ndim(labels) != 1 or jnp.shape(labels)[0] != x.shape[0]:
        raise ValueError(f"labels must have shape [B] = [{x.shape[0]}], got shape {jnp.shape(labels)}")


def res_attn_stage(modules, m: int, hs: list, temb, train: bool, *, num_blocks: int,
                   attn: bool) -> int:
    """One resolution of a score_sde U-Net's down path: ``num_blocks`` times
    ``h = ResBlock(hs[-1], temb)`` (then ``AttnBlock(h)`` when ``attn``), appending each
    ``h`` to ``hs``. ``modules[m]`` is the first block; returns the next module index."""
    for _ in range(num_blocks):
        h = modules[m](hs[-1], temb, train)
        m += 1
        if attn:
            h = modules[m](h)
            m += 1
        hs.append(h)
    return m


class NIN(nn.Module):
    """Network-in-network: a per-pixel dense layer, ``y = x W + b`` over the channel axis.

    Params ``W [in_dim, num_units]`` (same layout as torch) and ``b [num_units]``.
    """

    in_dim: int
    num_units: int
    init_scale: float = 0.1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if x.shape[-1] != self.in_dim:
            raise ValueError(f"NIN: expected {self.in_dim} input channels, got shape {x.shape}")
        W = self.param("W", default_init(self.init_scale), (self.in_dim, self.num_units), jnp.float32)
        b = self.param("b", nn.initializers.zeros, (self.num_units,), jnp.float32)
        return add_bias(channel_dense(x, W), b)


def self_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """Spatial self-attention of NHWC maps: ``softmax_{ij}(q_hw . k_ij / sqrt(C)) v_ij``."""
    B, H, W, C = q.shape
    w = jnp.einsum("bhwc,bijc->bhwij", q, k) * (C ** -0.5)
    w = jax.nn.softmax(w.reshape(B, H, W, H * W), axis=-1).reshape(B, H, W, H, W)
    return jnp.einsum("bhwij,bijc->bhwc", w, v)


class AttnBlock(nn.Module):
    """DDPM self-attention block: ``x + NIN_3(attn(GroupNorm_0(x)))`` (32 groups)."""

    channels: int

    def setup(self):
        self.GroupNorm_0 = group_norm(self.channels, 32)
        self.NIN_0 = NIN(self.channels, self.channels)
        self.NIN_1 = NIN(self.channels, self.channels)
        self.NIN_2 = NIN(self.channels, self.channels)
        self.NIN_3 = NIN(self.channels, self.channels, init_scale=0.0)

    def __call__(self, x: jax.Array) -> jax.Array:
        check_channels("AttnBlock", x, self.channels)
        h = self.GroupNorm_0(x)
        h = self_attention(self.NIN_0(h), self.NIN_1(h), self.NIN_2(h))
        return x + self.NIN_3(h)


def naive_upsample(x: jax.Array, factor: int = 2) -> jax.Array:
    """Nearest-neighbour up-sampling of NHWC maps by an integer factor."""
    return jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)


class Upsample(nn.Module):
    """Nearest x2, then (``with_conv``) a 3x3 convolution ``Conv_0``."""

    channels: int
    with_conv: bool = False

    def setup(self):
        if self.with_conv:
            self.Conv_0 = ddpm_conv3x3(self.channels, self.channels)

    def __call__(self, x: jax.Array) -> jax.Array:
        check_channels("Upsample", x, self.channels)
        h = naive_upsample(x, 2)
        if self.with_conv:
            h = self.Conv_0(h)
        return h


class Downsample(nn.Module):
    """x1/2: a stride-2 3x3 conv ``Conv_0`` after padding (0, 1) ('SAME' as TF), or a 2x2 mean."""

    channels: int
    with_conv: bool = False

    def setup(self):
        if self.with_conv:
            self.Conv_0 = ddpm_conv3x3(self.channels, self.channels, stride=2, padding=((0, 1), (0, 1)))

    def __call__(self, x: jax.Array) -> jax.Array:
        check_channels("Downsample", x, self.channels)
        if self.with_conv:
            return self.Conv_0(x)
        return nn.avg_pool(x, (2, 2), strides=(2, 2), padding="VALID")


class ResnetBlockDDPM(nn.Module):
    """DDPM residual block (GroupNorm 32 groups, eps 1e-6)::

        h = Conv_0(act(GroupNorm_0(x))) + Dense_0(act(temb))
        h = Conv_1(Dropout_0(act(GroupNorm_1(h))))
        return shortcut(x) + h          # shortcut: identity, NIN_0 or Conv_2 (conv_shortcut)
    """

    nonlinearity: str
    in_ch: int
    out_ch: int | None = None
    temb_dim: int | None = None
    conv_shortcut: bool = False
    dropout: float = 0.1

    def setup(self):
        out_ch = self.out_ch or self.in_ch
        self.GroupNorm_0 = group_norm(self.in_ch, 32)
        self.Conv_0 = ddpm_conv3x3(self.in_ch, out_ch)
        if self.temb_dim is not None:
            self.Dense_0 = nn.Dense(out_ch, kernel_init=default_init(), bias_init=nn.initializers.zeros)
        self.GroupNorm_1 = group_norm(out_ch, 32)
        self.Dropout_0 = nn.Dropout(self.dropout)
        self.Conv_1 = ddpm_conv3x3(out_ch, out_ch, init_scale=0.0)
        if self.in_ch != out_ch:
            if self.conv_shortcut:
                self.Conv_2 = ddpm_conv3x3(self.in_ch, out_ch)
            else:
                self.NIN_0 = NIN(self.in_ch, out_ch)

    def __call__(self, x: jax.Array, temb: jax.Array | None = None, train: bool = False) -> jax.Array:
        check_channels("ResnetBlockDDPM", x, self.in_ch)
        act = get_act(self.nonlinearity)
        out_ch = self.out_ch or self.in_ch
        h = self.Conv_0(self.GroupNorm_0(x, act=act))
        if temb is not None:
            h = h + self.Dense_0(act(temb))[:, None, None, :]
        elif self.temb_dim is not None and self.is_initializing():
            # torch creates Dense_0 whenever temb_dim is set: create its params too.
            self.Dense_0(jnp.zeros((1, self.temb_dim), h.dtype))
        h = self.GroupNorm_1(h, act=act)
        h = self.Dropout_0(h, deterministic=not train)
        h = self.Conv_1(h)
        if self.in_ch != out_ch:
            x = self.Conv_2(x) if self.conv_shortcut else self.NIN_0(x)
        return x + h


def plan_modules(plan, builders) -> list:
    """The modules of a U-Net plan (``spec.unet_plans``), in ``all_modules`` order.

    ``dense``, ``conv3x3`` and ``group_norm`` blocks are built here (DDPM initialiser,
    GroupNorm with the block's ``groups``); every other kind by ``builders[kind](block)``,
    the network's own blocks. An unknown kind raises ``KeyError`` naming it.
    """
    common = {
        "dense": lambda b: nn.Dense(b.out_ch, kernel_init=default_init(), bias_init=nn.initializers.zeros),
        "conv3x3": lambda b: ddpm_conv3x3(b.in_ch, b.out_ch, init_scale=b.init_scale),
        "group_norm": lambda b: group_norm(b.in_ch, b.groups),
    }
    make = {**common, **builders}
    missing = sorted({b.kind for b in plan} - set(make))
    if missing:
        raise KeyError(f"plan_modules: no builder for block kind(s) {missing}")
    return [make[b.kind](b) for b in plan]
