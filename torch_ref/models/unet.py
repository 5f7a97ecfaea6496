"""improved-diffusion's ``UNetModel`` (Nichol & Dhariwal 2021), PyTorch, NCHW.

Twin: ``jax_impl/models/unet.py`` (NHWC). Config: ``spec.unet_model.UNetModelConfig``.

Module attributes and registration order are the official ones, so a state_dict of the
official ``improved_diffusion/unet.py`` loads key for key, with no renaming
(``time_embed.{0,2}``, ``label_emb``, ``input_blocks.{i}.{j}``, ``middle_block.{0,1,2}``,
``output_blocks.{i}.{j}``, ``out.{0,2}``; inside a ResBlock ``in_layers.{0,2}``,
``emb_layers.1``, ``out_layers.{0,3}``, ``skip_connection``; inside an AttentionBlock
``norm``, ``qkv``, ``proj_out`` (1-D convs); ``op`` / ``conv`` in Downsample / Upsample).
The blocks are built from ``spec.unet_model.unet_model_plan(config)``, which the twin and
the key table walk too.

- ``forward(x [B, C, H, W], t [B], y=None) -> [B, out_channels, H, W]``; ``t`` are the
  timesteps as the diffusion feeds them (possibly rescaled, fractional); ``y`` (int
  ``[B]``) is required iff ``config.num_classes > 0`` (``ValueError`` naming ``y``).
- GroupNorm32: 32 groups, eps 1e-5, computed in float32, cast back to the input dtype.
- ``timestep_embedding``: the official one (max_period 10000, cos then sin).
- Attention: the official legacy QKV layout (the 3C channels split into heads first,
  then q, k, v); softmax in float32.
- The output convs of every ResBlock, AttentionBlock and of ``out`` are zero-initialised
  (as ``zero_module``); other initialisations are torch's defaults.
- ``use_checkpoint``: ResBlocks and AttentionBlocks run under ``torch.utils.checkpoint``
  while gradients are enabled (same numbers, less memory).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from spec.unet_model import UNetLayer, UNetModelConfig, unet_model_plan

__all__ = [
    "UNetModel",
    "UNetModelConfig",
    "timestep_embedding",
]


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: int = 10000) -> torch.Tensor:
    """Sinusoidal embedding ``[B, dim]`` of (possibly fractional) timesteps ``[B]``:
    ``cat(cos(t f), sin(t f))`` with ``f_i = exp(-log(max_period) i / half)``, float32
    (a zero column appended for odd ``dim``)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half).to(timesteps.device)
    args = timesteps[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm (32 groups, eps 1e-5) computed in float32, returned in the input's dtype."""

    def __init__(self, channels: int):
        super().__init__(32, channels, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type(x.dtype)


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        p.detach().zero_()
    return module


class ResBlock(nn.Module):
    """``skip(x) + out_layers(in_layers(x) + emb_layers(emb))``, or with scale-shift norm
    ``skip(x) + out_rest(norm(h) * (1 + scale) + shift)``."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float, use_scale_shift_norm: bool,
                 use_checkpoint: bool):
        super().__init__()
        self.use_scale_shift_norm = use_scale_shift_norm
        self.use_checkpoint = use_checkpoint
        self.in_layers = nn.Sequential(GroupNorm32(in_ch), nn.SiLU(), nn.Conv2d(in_ch, out_ch, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, 2 * out_ch if use_scale_shift_norm else out_ch))
        self.out_layers = nn.Sequential(GroupNorm32(out_ch), nn.SiLU(), nn.Dropout(p=dropout),
                                        _zero(nn.Conv2d(out_ch, out_ch, 3, padding=1)))
        self.skip_connection = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)

    def _forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        emb_out = self.emb_layers(emb).type(h.dtype)[:, :, None, None]
        if self.use_scale_shift_norm:
            scale, shift = torch.chunk(emb_out, 2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.use_checkpoint and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(self._forward, x, emb, use_reentrant=False)
        return self._forward(x, emb)


class QKVAttention(nn.Module):
    """``[N, 3c, T] -> [N, c, T]``: softmax(q^T k / sqrt(c)) applied to v, q, k, v the three
    thirds of the channels (the legacy layout: heads were folded into N before)."""

    def forward(self, qkv: torch.Tensor) -> torch.Tensor:
        ch = qkv.shape[1] // 3
        q, k, v = torch.split(qkv, ch, dim=1)
        scale = 1 / math.sqrt(math.sqrt(ch))
        weight = torch.einsum("bct,bcs->bts", q * scale, k * scale)
        weight = torch.softmax(weight.float(), dim=-1).type(weight.dtype)
        return torch.einsum("bts,bcs->bct", weight, v)


class AttentionBlock(nn.Module):
    """``x + proj_out(attention(qkv(norm(x))))`` over the H*W positions, ``num_heads`` heads."""

    def __init__(self, channels: int, num_heads: int, use_checkpoint: bool):
        super().__init__()
        self.num_heads = num_heads
        self.use_checkpoint = use_checkpoint
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.attention = QKVAttention()
        self.proj_out = _zero(nn.Conv1d(channels, channels, 1))

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(x))
        h = self.attention(qkv.reshape(b * self.num_heads, -1, qkv.shape[2]))
        h = self.proj_out(h.reshape(b, -1, h.shape[-1]))
        return (x + h).reshape(b, c, *spatial)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_checkpoint and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)


class Downsample(nn.Module):
    """3x3 stride-2 conv (padding 1) as ``op``, or 2x2 average pooling."""

    def __init__(self, channels: int, with_conv: bool):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1) if with_conv else nn.AvgPool2d(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 ``conv`` when ``with_conv``."""

    def __init__(self, channels: int, with_conv: bool):
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.with_conv else x


class TimestepEmbedSequential(nn.Sequential):
    """A block of layers; ResBlocks also receive the embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


def _layer(layer: UNetLayer, cfg: UNetModelConfig) -> nn.Module:
    if layer.kind == "conv":
        return nn.Conv2d(layer.in_ch, layer.out_ch, 3, padding=1)
    if layer.kind == "res":
        return ResBlock(layer.in_ch, layer.out_ch, cfg.time_embed_dim, cfg.dropout, cfg.use_scale_shift_norm,
                        cfg.use_checkpoint)
    if layer.kind == "attn":
        return AttentionBlock(layer.in_ch, layer.num_heads, cfg.use_checkpoint)
    if layer.kind == "down":
        return Downsample(layer.in_ch, layer.with_conv)
    return Upsample(layer.in_ch, layer.with_conv)


def _check_inputs(cfg: UNetModelConfig, x: torch.Tensor, t: torch.Tensor, y) -> None:
    """Shapes and dtypes of ``(x [B, C, H, W], t [B], y)``; ``y`` iff class-conditional."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise ValueError(f"x must be an NCHW tensor [B, C, H, W], got shape {tuple(getattr(x, 'shape', ()))}")
    if x.shape[1] != cfg.in_channels:
        raise ValueError(f"x has {x.shape[1]} channels (axis 1, NCHW) but the model expects {cfg.in_channels}")
    f = cfg.downsampling_factor
    if x.shape[2] % f or x.shape[3] % f:
        raise ValueError(f"x spatial size {x.shape[2]}x{x.shape[3]} is not divisible by the down-sampling factor {f}")
    if not x.is_floating_point():
        raise TypeError(f"x must have a floating dtype, got {x.dtype}")
    if t.ndim != 1 or t.shape[0] != x.shape[0]:
        raise ValueError(f"t (the timesteps) must have shape [B] = [{x.shape[0]}], got shape {tuple(t.shape)}")
    if cfg.num_classes:
        if y is None:
            raise ValueError(f"y (the class labels, int [B]) is required: the model is class-conditional "
                             f"(num_classes={cfg.num_classes})")
        if y.ndim != 1 or y.shape[0] != x.shape[0]:
            raise ValueError(f"y must have shape [B] = [{x.shape[0]}], got shape {tuple(y.shape)}")
        if y.is_floating_point() or y.dtype == torch.bool:
            raise TypeError(f"y must hold integer class labels, got dtype {y.dtype}")
    elif y is not None:
        raise ValueError("y was given but the model is unconditional (num_classes=0)")


class UNetModel(nn.Module):
    """``forward(x [B, C, H, W], t [B], y=None) -> [B, out_channels, H, W]``."""

    def __init__(self, config: UNetModelConfig):
        super().__init__()
        if not isinstance(config, UNetModelConfig):
            raise TypeError(f"config must be a UNetModelConfig, got {type(config).__name__}")
        self.config = cfg = config
        plan = unet_model_plan(cfg)
        emb = cfg.time_embed_dim
        self.time_embed = nn.Sequential(nn.Linear(cfg.model_channels, emb), nn.SiLU(), nn.Linear(emb, emb))
        if cfg.num_classes:
            self.label_emb = nn.Embedding(cfg.num_classes, emb)
        block = lambda layers: TimestepEmbedSequential(*(_layer(lay, cfg) for lay in layers))  # noqa: E731
        self.input_blocks = nn.ModuleList([block(b) for b in plan.input_blocks])
        self.middle_block = block(plan.middle_block)
        self.output_blocks = nn.ModuleList([block(b) for b in plan.output_blocks])
        self.out = nn.Sequential(GroupNorm32(plan.out_ch), nn.SiLU(),
                                 _zero(nn.Conv2d(plan.out_ch, cfg.out_channels, 3, padding=1)))

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        cfg = self.config
        t = torch.as_tensor(t, device=x.device if isinstance(x, torch.Tensor) else None)
        if y is not None:
            y = torch.as_tensor(y, device=t.device)
        _check_inputs(cfg, x, t, y)
        emb = self.time_embed(timestep_embedding(t, cfg.model_channels).to(self.time_embed[0].weight.dtype))
        if cfg.num_classes:
            emb = emb + self.label_emb(y.long())
        hs = []
        h = x
        for module in self.input_blocks:
            h = module(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for module in self.output_blocks:
            h = module(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h)
