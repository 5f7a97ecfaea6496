"""improved-diffusion's ``UNetModel`` (Nichol & Dhariwal 2021), Flax linen, NHWC.

Twin: ``torch_ref/models/unet.py`` (NCHW). Config: ``spec.unet_model.UNetModelConfig``.

Submodules are named after the official torch attributes, each ``.<index>`` of a torch key
joined by ``_``: ``time_embed_0`` / ``time_embed_2`` (Dense), ``label_emb`` (Embed),
``input_blocks_{i}_{j}``, ``middle_block_{j}``, ``output_blocks_{i}_{j}``, ``out_0``
(GroupNorm32) and ``out_2`` (Conv); inside a ResBlock ``in_layers_0``, ``in_layers_2``,
``emb_layers_1``, ``out_layers_0``, ``out_layers_3``, ``skip_connection``; inside an
AttentionBlock ``norm``, ``qkv``, ``proj_out`` (1-D convs over the H*W positions, kernels
``[1, C_in, C_out]``); ``op`` / ``conv`` in Downsample / Upsample. So the torch key
``input_blocks.1.0.in_layers.0.weight`` is the flax leaf ``input_blocks_1_0/in_layers_0/scale``
(``spec.keytables.improved_unet_key_table`` lists every tensor). The blocks come from
``spec.unet_model.unet_model_plan(config)``, the layout the twin walks too.

- ``apply(variables, x [B, H, W, C], t [B], y=None, train=False) -> [B, H, W, out_channels]``;
  ``t``: the timesteps the diffusion feeds (possibly rescaled, fractional); ``y``: int
  ``[B]`` class labels, required iff ``config.num_classes > 0`` (``ValueError`` naming
  ``y``); ``train=True`` enables dropout and needs ``rngs={'dropout': key}``.
- GroupNorm32: 32 groups, eps 1e-5, computed in float32, cast back to the input dtype.
- ``timestep_embedding``: the official one (max_period 10000, cos then sin, float32).
- Attention: the official legacy QKV layout (the 3C channels split into heads first, then
  q, k, v); softmax in float32.
- Output convs of the ResBlocks, AttentionBlocks and ``out_2`` are zero-initialised (as the
  official ``zero_module``); other initialisers are flax defaults (the structure, not
  torch's random draws, is what matches).
- ``use_checkpoint``: every ResBlock and AttentionBlock is wrapped in ``nn.remat``
  (rematerialised in the backward pass; same parameters, same numbers).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from jax_impl.models.xla_cpu_layers import Conv, GroupNorm
from spec.unet_model import UNetLayer, UNetModelConfig, unet_model_plan

__all__ = [
    "UNetModel",
    "UNetModelConfig",
    "timestep_embedding",
]


def timestep_embedding(timesteps: jax.Array, dim: int, max_period: int = 10000) -> jax.Array:
    """Sinusoidal embedding ``[B, dim]`` of (possibly fractional) timesteps ``[B]``:
    ``concat(cos(t f), sin(t f))`` with ``f_i = exp(-log(max_period) i / half)``, float32
    (a zero column appended for odd ``dim``)."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = jnp.asarray(timesteps).astype(jnp.float32)[:, None] * freqs[None]
    emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
    if dim % 2:
        emb = jnp.concatenate([emb, jnp.zeros_like(emb[:, :1])], axis=-1)
    return emb


def _group_norm32(name: str) -> GroupNorm:
    """GroupNorm32 (32 groups, eps 1e-5, float32) named ``name`` (leaves ``<name>/scale``,
    ``<name>/bias``); apply it through ``_norm``. The two-pass variance, as torch's."""
    return GroupNorm(num_groups=32, epsilon=1e-5, name=name)


def _norm(module: nn.Module, x: jax.Array, act=None) -> jax.Array:
    """The norm computed in float32 over all non-batch axes, cast back to ``x``'s dtype, then
    ``act`` (if given) in that dtype; for float32 ``x`` the norm module applies ``act`` itself
    (fused with the normalisation on the CPU, ``xla_cpu_layers.GroupNorm``)."""
    if x.dtype == jnp.float32:
        return module(x, act=act)
    h = module(x.astype(jnp.float32)).astype(x.dtype)
    return h if act is None else act(h)


def _conv3x3(features: int, name: str, *, stride: int = 1, zero: bool = False) -> Conv:
    kw = {"kernel_init": nn.initializers.zeros, "bias_init": nn.initializers.zeros} if zero else {}
    return Conv(features, (3, 3), strides=stride, padding=1, name=name, **kw)


class ResBlock(nn.Module):
    """``skip(x) + out_layers(in_layers(x) + emb_layers(emb))`` (or scale-shift norm)."""

    in_ch: int
    out_ch: int
    dropout: float
    use_scale_shift_norm: bool

    @nn.compact
    def __call__(self, x: jax.Array, emb: jax.Array, train: bool = False) -> jax.Array:
        h = _norm(_group_norm32("in_layers_0"), x, act=nn.silu)
        h = _conv3x3(self.out_ch, "in_layers_2")(h)
        width = 2 * self.out_ch if self.use_scale_shift_norm else self.out_ch
        emb_out = nn.Dense(width, name="emb_layers_1")(nn.silu(emb)).astype(h.dtype)[:, None, None, :]
        out_norm = _group_norm32("out_layers_0")
        if self.use_scale_shift_norm:
            scale, shift = jnp.split(emb_out, 2, axis=-1)
            h = nn.silu(_norm(out_norm, h) * (1 + scale) + shift)
        else:
            h = _norm(out_norm, h + emb_out, act=nn.silu)
        h = nn.Dropout(rate=self.dropout, deterministic=not train)(h)
        h = _conv3x3(self.out_ch, "out_layers_3", zero=True)(h)
        skip = x if self.in_ch == self.out_ch else Conv(self.out_ch, (1, 1), name="skip_connection")(x)
        return skip + h


def qkv_attention(qkv: jax.Array, num_heads: int) -> jax.Array:
    """``[B, T, 3C] -> [B, T, C]`` with the official legacy layout: channel
    ``head * 3c + part * c + i`` (``c = C / num_heads``; part 0, 1, 2 = q, k, v);
    ``softmax(q k^T / sqrt(c)) v`` per head, the softmax in float32."""
    b, t, width = qkv.shape
    ch = width // (3 * num_heads)
    qkv = qkv.reshape(b, t, num_heads, 3, ch)
    q, k, v = qkv[:, :, :, 0], qkv[:, :, :, 1], qkv[:, :, :, 2]
    scale = 1 / math.sqrt(math.sqrt(ch))
    weight = jnp.einsum("bthc,bshc->bhts", q * scale, k * scale)
    weight = jax.nn.softmax(weight.astype(jnp.float32), axis=-1).astype(weight.dtype)
    return jnp.einsum("bhts,bshc->bthc", weight, v).reshape(b, t, num_heads * ch)


class AttentionBlock(nn.Module):
    """``x + proj_out(attention(qkv(norm(x))))`` over the H*W positions."""

    channels: int
    num_heads: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, hh, ww, c = x.shape
        x = x.reshape(b, hh * ww, c)
        qkv = Conv(3 * c, (1,), name="qkv")(_norm(_group_norm32("norm"), x))
        h = qkv_attention(qkv, self.num_heads)
        h = Conv(c, (1,), kernel_init=nn.initializers.zeros, name="proj_out")(h)
        return (x + h).reshape(b, hh, ww, c)


def _upsample(x: jax.Array) -> jax.Array:
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def check_inputs(cfg: UNetModelConfig, x: jax.Array, t: jax.Array, y) -> None:
    """Static shape / dtype checks (trace time, before compute); ``y`` iff class-conditional."""
    if x.ndim != 4:
        raise ValueError(f"x must be NHWC [B, H, W, C], got shape {x.shape}")
    if x.shape[-1] != cfg.in_channels:
        raise ValueError(f"x has {x.shape[-1]} channels (last axis, NHWC) but the model expects {cfg.in_channels}")
    f = cfg.downsampling_factor
    if x.shape[1] % f or x.shape[2] % f:
        raise ValueError(f"x spatial size {x.shape[1]}x{x.shape[2]} is not divisible by the down-sampling factor {f}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"x must have a floating dtype, got {x.dtype}")
    if t.ndim != 1 or t.shape[0] != x.shape[0]:
        raise ValueError(f"t (the timesteps) must have shape [B] = [{x.shape[0]}], got shape {t.shape}")
    if cfg.num_classes:
        if y is None:
            raise ValueError(f"y (the class labels, int [B]) is required: the model is class-conditional "
                             f"(num_classes={cfg.num_classes})")
        if y.ndim != 1 or y.shape[0] != x.shape[0]:
            raise ValueError(f"y must have shape [B] = [{x.shape[0]}], got shape {y.shape}")
        if not jnp.issubdtype(y.dtype, jnp.integer):
            raise TypeError(f"y must hold integer class labels, got dtype {y.dtype}")
    elif y is not None:
        raise ValueError("y was given but the model is unconditional (num_classes=0)")


class UNetModel(nn.Module):
    """``apply(variables, x [B, H, W, C], t [B], y=None, train=False) -> [B, H, W, out_channels]``."""

    config: UNetModelConfig

    def _block(self, layers: tuple[UNetLayer, ...], prefix: str, h: jax.Array, emb: jax.Array,
               train: bool) -> jax.Array:
        """One ``TimestepEmbedSequential``: its layers named ``{prefix}_{j}``."""
        cfg = self.config
        for j, layer in enumerate(layers):
            name = f"{prefix}_{j}"
            if layer.kind == "conv":
                h = _conv3x3(layer.out_ch, name)(h)
            elif layer.kind == "res":
                cls = nn.remat(ResBlock, static_argnums=(3,)) if cfg.use_checkpoint else ResBlock
                h = cls(layer.in_ch, layer.out_ch, cfg.dropout, cfg.use_scale_shift_norm, name=name)(h, emb, train)
            elif layer.kind == "attn":
                cls = nn.remat(AttentionBlock) if cfg.use_checkpoint else AttentionBlock
                h = cls(layer.in_ch, layer.num_heads, name=name)(h)
            else:
                h = _Resample(layer.kind, layer.out_ch, layer.with_conv, name=name)(h)
        return h

    @nn.compact
    def __call__(self, x: jax.Array, t: jax.Array, y: jax.Array | None = None, train: bool = False) -> jax.Array:
        cfg = self.config
        if not isinstance(cfg, UNetModelConfig):
            raise TypeError(f"config must be a UNetModelConfig, got {type(cfg).__name__}")
        x, t = jnp.asarray(x), jnp.asarray(t)
        y = None if y is None else jnp.asarray(y)
        check_inputs(cfg, x, t, y)
        plan = unet_model_plan(cfg)
        emb_dim = cfg.time_embed_dim
        emb = nn.Dense(emb_dim, name="time_embed_0")(timestep_embedding(t, cfg.model_channels))
        emb = nn.Dense(emb_dim, name="time_embed_2")(nn.silu(emb))
        if cfg.num_classes:
            emb = emb + nn.Embed(cfg.num_classes, emb_dim, name="label_emb")(y)
        hs = []
        h = x
        for i, block in enumerate(plan.input_blocks):
            h = self._block(block, f"input_blocks_{i}", h, emb, train)
            hs.append(h)
        h = self._block(plan.middle_block, "middle_block", h, emb, train)
        for i, block in enumerate(plan.output_blocks):
            h = self._block(block, f"output_blocks_{i}", jnp.concatenate([h, hs.pop()], axis=-1), emb, train)
        h = _norm(_group_norm32("out_0"), h, act=nn.silu)
        return _conv3x3(cfg.out_channels, "out_2", zero=True)(h)


class _Resample(nn.Module):
    """Downsample (``op``: 3x3 stride-2 conv, or 2x2 average pool) / Upsample (nearest x2,
    then ``conv``)."""

    kind: str
    channels: int
    with_conv: bool

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        if self.kind == "down":
            if self.with_conv:
                return _conv3x3(self.channels, "op", stride=2)(h)
            return nn.avg_pool(h, (2, 2), strides=(2, 2))
        h = _upsample(h)
        return _conv3x3(self.channels, "conv")(h) if self.with_conv else h
