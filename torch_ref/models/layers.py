"""DDPM-style layers (Ho et al. 2020, as ported by score_sde) in PyTorch, NCHW.

Twin: ``jax_impl/models/layers.py`` (NHWC). Attribute names and registration order
follow score_sde_pytorch's ``models/layers.py`` (``GroupNorm_0``, ``Conv_0``,
``Dense_0``, ``NIN_0``, ``W``, ``b``), so official state_dicts load key for key and
``parameters()`` comes out in the official order (the order of score_sde's EMA
``shadow_params``). Every GroupNorm uses eps = 1e-6 (torch's default is 1e-5).

All blocks take their input width as a constructor argument and check it against the
input at call time (before any compute).

Framework-specific helpers, not part of the mirrored API: ``default_init_``, ``variance_scaling_``, ``ddpm_linear``;
``res_attn_stage`` (the U-Nets' down-path stage; the twin passes ``train`` per call).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

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


def get_act(nonlinearity: str) -> nn.Module:
    """The activation named by score_sde's ``config.model.nonlinearity``.

    ``elu``; ``relu``; ``lrelu`` (negative slope 0.2); ``swish`` = SiLU, x * sigmoid(x).
    """
    name = nonlinearity.lower() if isinstance(nonlinearity, str) else nonlinearity
    check_choice("nonlinearity", name, NONLINEARITIES)
    if name == "elu":
        return nn.ELU()
    if name == "relu":
        return nn.ReLU()
    if name == "lrelu":
        return nn.LeakyReLU(negative_slope=0.2)
    return nn.SiLU()


@torch.no_grad()
def variance_scaling_(tensor: torch.Tensor, scale: float = 1.0, in_axis: int = 1, out_axis: int = 0) -> torch.Tensor:
    """In place: U(-a, a), a = sqrt(3 scale / fan_avg), fan_avg = (fan_in + fan_out) / 2.

    Fans count the receptive field (all other axes), as JAX's ``variance_scaling``.
    """
    shape = tensor.shape
    receptive = int(np.prod(shape)) // (shape[in_axis] * shape[out_axis])
    fan_avg = (shape[in_axis] + shape[out_axis]) * receptive / 2.0
    bound = math.sqrt(3.0 * scale / fan_avg)
    return tensor.uniform_(-bound, bound)


def default_init_(tensor: torch.Tensor, scale: float = 1.0, in_axis: int = 1, out_axis: int = 0) -> torch.Tensor:
    """DDPM initialiser in place: variance scaling, fan_avg, uniform (scale 0 -> 1e-10)."""
    return variance_scaling_(tensor, 1e-10 if scale == 0 else scale, in_axis, out_axis)


def get_timestep_embedding(timesteps: torch.Tensor, embedding_dim: int, max_positions: int = 10000) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, computed in float32.

    ``emb[b] = [sin(t_b w_0..w_{h-1}), cos(t_b w_0..w_{h-1})]`` with ``h = dim // 2``,
    ``w_i = exp(-i log(max_positions) / (h - 1))``; zero-padded to ``dim`` when odd.

    Args:
      timesteps: ``[B]``.
      embedding_dim: output width (>= 4).
    Returns:
      ``[B, embedding_dim]`` float32.
    """
    timesteps = torch.as_tensor(timesteps)
    if timesteps.ndim != 1:
        raise ValueError(f"timesteps must have shape [B], got shape {tuple(timesteps.shape)}")
    if embedding_dim < 4:
        raise ValueError(f"embedding_dim must be >= 4, got {embedding_dim}")
    half_dim = embedding_dim // 2
    rate = math.log(max_positions) / (half_dim - 1)
    freqs = torch.exp(torch.arange(half_dim, dtype=torch.float32, device=timesteps.device) * -rate)
    args = timesteps.to(torch.float32)[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    if embedding_dim % 2 == 1:
        emb = F.pad(emb, (0, 1))
    return emb


def ddpm_conv1x1(in_ch: int, out_ch: int, stride: int = 1, bias: bool = True, init_scale: float = 1.0,
                 padding: int = 0) -> nn.Conv2d:
    """1x1 convolution with the DDPM initialiser (zero bias)."""
    conv = nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, padding=padding, bias=bias)
    default_init_(conv.weight, init_scale)
    if bias:
        nn.init.zeros_(conv.bias)
    return conv


def ddpm_conv3x3(in_ch: int, out_ch: int, stride: int = 1, bias: bool = True, init_scale: float = 1.0,
                 padding: int = 1) -> nn.Conv2d:
    """3x3 convolution with the DDPM initialiser (zero bias)."""
    conv = nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=padding, bias=bias)
    default_init_(conv.weight, init_scale)
    if bias:
        nn.init.zeros_(conv.bias)
    return conv


def ddpm_linear(in_features: int, out_features: int) -> nn.Linear:
    """Linear layer with the DDPM initialiser (zero bias)."""
    dense = nn.Linear(in_features, out_features)
    default_init_(dense.weight)
    nn.init.zeros_(dense.bias)
    return dense


def group_norm(channels: int, num_groups: int) -> nn.GroupNorm:
    """GroupNorm(num_groups, eps=1e-6) over ``channels``, raising early if they don't divide."""
    if num_groups < 1 or channels % num_groups:
        raise ValueError(f"GroupNorm: {channels} channels are not divisible into {num_groups} groups")
    return nn.GroupNorm(num_groups=num_groups, num_channels=channels, eps=GROUPNORM_EPS)


def res_attn_stage(modules, m: int, hs: list, temb, *, num_blocks: int, attn: bool) -> int:
    """One resolution of a score_sde U-Net's down path: ``num_blocks`` times
    ``h = ResBlock(hs[-1], temb)`` (then ``AttnBlock(h)`` when ``attn``), appending each
    ``h`` to ``hs``. ``modules[m]`` is the first block; returns the next module index."""
    for _ in range(num_blocks):
        h = modules[m](hs[-1], temb)
        m += 1
        if attn:
            h = modules[m](h)
            m += 1
        hs.append(h)
    return m


def check_channels(module: str, x: torch.Tensor, expected: int) -> None:
    """Raise ``ValueError`` unless ``x`` is NCHW with ``expected`` channels."""
    if x.ndim != 4 or x.shape[1] != expected:
        raise ValueError(f"{module}: expected an NCHW input with {expected} channels, got shape {tuple(x.shape)}")


def check_image_inputs(x: torch.Tensor, labels: torch.Tensor, *, num_channels: int, factor: int) -> None:
    """Model-level checks, before compute: ``x`` is ``[B, num_channels, H, W]`` with H, W
    multiples of ``factor``; ``labels`` is ``[B]``."""
    if x.ndim != 4:
        raise ValueError(f"x must be NCHW [B, C, H, W], got shape {tuple(x.shape)}")
    if x.shape[1] != num_channels:
        raise ValueError(f"x has {x.shape[1]} channels (axis 1, NCHW) but the model expects {num_channels}")
    if x.shape[2] % factor or x.shape[3] % factor:
        raise ValueError(
            f"x spatial size {x.shape[2]}x{x.shape[3]} is not divisible by the down-sampling factor {factor}"
        )
    if not x.dtype.is_floating_point:
        raise TypeError(f"x must have a floating dtype, got {x.dtype}")
    labels = torch.as_tensor(labels)
    if labels.ndim != 1 or labels.shape[0] != x.shape[0]:
        raise ValueError(f"labels must have shape [B] = [{x.shape[0]}], got shape {tuple(labels.shape)}")


class NIN(nn.Module):
    """Network-in-network: a per-pixel dense layer, ``y = x W + b`` over the channel axis.

    Params ``W [in_dim, num_units]`` and ``b [num_units]``.
    """

    def __init__(self, in_dim: int, num_units: int, init_scale: float = 0.1):
        super().__init__()
        self.W = nn.Parameter(default_init_(torch.empty(in_dim, num_units), init_scale))
        self.b = nn.Parameter(torch.zeros(num_units))
        self.in_dim = in_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.in_dim:
            raise ValueError(f"NIN: expected {self.in_dim} input channels, got shape {tuple(x.shape)}")
        return torch.einsum("bchw,cd->bdhw", x, self.W) + self.b[None, :, None, None]


def self_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Spatial self-attention of NCHW maps: ``softmax_{ij}(q_hw . k_ij / sqrt(C)) v_ij``."""
    B, C, H, W = q.shape
    w = torch.einsum("bchw,bcij->bhwij", q, k) * (C ** -0.5)
    w = F.softmax(w.reshape(B, H, W, H * W), dim=-1).reshape(B, H, W, H, W)
    return torch.einsum("bhwij,bcij->bchw", w, v)


class AttnBlock(nn.Module):
    """DDPM self-attention block: ``x + NIN_3(attn(GroupNorm_0(x)))`` (32 groups)."""

    def __init__(self, channels: int):
        super().__init__()
        self.GroupNorm_0 = group_norm(channels, 32)
        self.NIN_0 = NIN(channels, channels)
        self.NIN_1 = NIN(channels, channels)
        self.NIN_2 = NIN(channels, channels)
        self.NIN_3 = NIN(channels, channels, init_scale=0.0)
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_channels("AttnBlock", x, self.channels)
        h = self.GroupNorm_0(x)
        h = self_attention(self.NIN_0(h), self.NIN_1(h), self.NIN_2(h))
        return x + self.NIN_3(h)


class Upsample(nn.Module):
    """Nearest x2, then (``with_conv``) a 3x3 convolution ``Conv_0``."""

    def __init__(self, channels: int, with_conv: bool = False):
        super().__init__()
        if with_conv:
            self.Conv_0 = ddpm_conv3x3(channels, channels)
        self.with_conv = with_conv
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_channels("Upsample", x, self.channels)
        _, _, H, W = x.shape
        h = F.interpolate(x, (H * 2, W * 2), mode="nearest")
        if self.with_conv:
            h = self.Conv_0(h)
        return h


class Downsample(nn.Module):
    """x1/2: a stride-2 3x3 conv ``Conv_0`` after padding (0, 1) ('SAME' as TF), or a 2x2 mean."""

    def __init__(self, channels: int, with_conv: bool = False):
        super().__init__()
        if with_conv:
            self.Conv_0 = ddpm_conv3x3(channels, channels, stride=2, padding=0)
        self.with_conv = with_conv
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_channels("Downsample", x, self.channels)
        if self.with_conv:
            return self.Conv_0(F.pad(x, (0, 1, 0, 1)))
        return F.avg_pool2d(x, kernel_size=2, stride=2, padding=0)


class ResnetBlockDDPM(nn.Module):
    """DDPM residual block (GroupNorm 32 groups, eps 1e-6)::

        h = Conv_0(act(GroupNorm_0(x))) + Dense_0(act(temb))
        h = Conv_1(Dropout_0(act(GroupNorm_1(h))))
        return shortcut(x) + h          # shortcut: identity, NIN_0 or Conv_2 (conv_shortcut)
    """

    def __init__(self, nonlinearity: str, in_ch: int, out_ch: int | None = None, temb_dim: int | None = None,
                 conv_shortcut: bool = False, dropout: float = 0.1):
        super().__init__()
        out_ch = out_ch or in_ch
        self.GroupNorm_0 = group_norm(in_ch, 32)
        self.act = get_act(nonlinearity)
        self.Conv_0 = ddpm_conv3x3(in_ch, out_ch)
        if temb_dim is not None:
            self.Dense_0 = ddpm_linear(temb_dim, out_ch)
        self.GroupNorm_1 = group_norm(out_ch, 32)
        self.Dropout_0 = nn.Dropout(dropout)
        self.Conv_1 = ddpm_conv3x3(out_ch, out_ch, init_scale=0.0)
        if in_ch != out_ch:
            if conv_shortcut:
                self.Conv_2 = ddpm_conv3x3(in_ch, out_ch)
            else:
                self.NIN_0 = NIN(in_ch, out_ch)
        self.in_ch, self.out_ch, self.conv_shortcut = in_ch, out_ch, conv_shortcut

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        check_channels("ResnetBlockDDPM", x, self.in_ch)
        h = self.Conv_0(self.act(self.GroupNorm_0(x)))
        if temb is not None:
            h = h + self.Dense_0(self.act(temb))[:, :, None, None]
        h = self.act(self.GroupNorm_1(h))
        h = self.Dropout_0(h)
        h = self.Conv_1(h)
        if self.in_ch != self.out_ch:
            x = self.Conv_2(x) if self.conv_shortcut else self.NIN_0(x)
        return x + h


def plan_modules(plan, builders) -> list:
    """The modules of a U-Net plan (``spec.unet_plans``), in ``all_modules`` order.

    ``dense``, ``conv3x3`` and ``group_norm`` blocks are built here (DDPM initialiser,
    GroupNorm with the block's ``groups``); every other kind by ``builders[kind](block)``,
    the network's own blocks. An unknown kind raises ``KeyError`` naming it.
    """
    common = {
        "dense": lambda b: ddpm_linear(b.in_ch, b.out_ch),
        "conv3x3": lambda b: ddpm_conv3x3(b.in_ch, b.out_ch, init_scale=b.init_scale),
        "group_norm": lambda b: group_norm(b.in_ch, b.groups),
    }
    make = {**common, **builders}
    missing = sorted({b.kind for b in plan} - set(make))
    if missing:
        raise KeyError(f"plan_modules: no builder for block kind(s) {missing}")
    return [make[b.kind](b) for b in plan]
