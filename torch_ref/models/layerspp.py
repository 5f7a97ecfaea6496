"""NCSN++ / DDPM++ layers (Song et al. 2021, score_sde ``layerspp``), PyTorch, NCHW.

Twin: ``jax_impl/models/layerspp.py`` (NHWC). Attribute names and registration order
follow score_sde_pytorch (official state_dict keys and ``parameters()`` order).
GroupNorm here uses ``min(C // 4, 32)`` groups, eps 1e-6. ``skip_rescale`` divides a
residual sum by sqrt(2).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from torch_ref.models import up_or_down_sampling as ud
from torch_ref.models.layers import (
    NIN,
    check_channels,
    ddpm_conv1x1,
    ddpm_conv3x3,
    ddpm_linear,
    get_act,
    group_norm,
    self_attention,
)

__all__ = [
    "SQRT2",
    "pp_groups",
    "GaussianFourierProjection",
    "Combine",
    "AttnBlockpp",
    "Upsample",
    "Downsample",
    "ResnetBlockDDPMpp",
    "ResnetBlockBigGANpp",
]

SQRT2 = math.sqrt(2.0)


def pp_groups(channels: int) -> int:
    """NCSN++ GroupNorm group count: ``min(channels // 4, 32)``."""
    return min(channels // 4, 32)


class GaussianFourierProjection(nn.Module):
    """Gaussian Fourier features of a scalar: ``[sin(2 pi x W), cos(2 pi x W)]``.

    ``W ~ N(0, scale^2)`` of shape [embedding_size] is a frozen parameter
    (``requires_grad=False``: counted and stored, not trained, not in score_sde's EMA).
    Computed in float32. ``x [B] -> [B, 2 embedding_size]``.
    """

    def __init__(self, embedding_size: int = 256, scale: float = 1.0):
        super().__init__()
        self.W = nn.Parameter(torch.randn(embedding_size) * scale, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(x).to(torch.float32)
        x_proj = x[:, None] * self.W.to(torch.float32)[None, :] * (2 * math.pi)
        return torch.cat([torch.sin(x_proj), torch.cos(x_proj)], dim=-1)


class Combine(nn.Module):
    """Combine a skip input ``x`` with ``y``: ``Conv(x)`` (1x1) concatenated to or added to ``y``."""

    def __init__(self, dim1: int, dim2: int, method: str = "cat"):
        super().__init__()
        if method not in ("cat", "sum"):
            raise ValueError(f"unknown progressive_combine {method!r}; valid choices: 'cat', 'sum'")
        self.Conv = ddpm_conv1x1(dim1, dim2)
        self.method, self.dim1 = method, dim1

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        check_channels("Combine", x, self.dim1)
        h = self.Conv(x)
        if self.method == "cat":
            return torch.cat([h, y], dim=1)
        return h + y


class AttnBlockpp(nn.Module):
    """Self-attention block of NCSN++: ``(x + NIN_3(attn(GroupNorm_0(x)))) [/ sqrt 2]``."""

    def __init__(self, channels: int, skip_rescale: bool = False, init_scale: float = 0.0):
        super().__init__()
        self.GroupNorm_0 = group_norm(channels, pp_groups(channels))
        self.NIN_0 = NIN(channels, channels)
        self.NIN_1 = NIN(channels, channels)
        self.NIN_2 = NIN(channels, channels)
        self.NIN_3 = NIN(channels, channels, init_scale=init_scale)
        self.skip_rescale, self.channels = skip_rescale, channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_channels("AttnBlockpp", x, self.channels)
        h = self.GroupNorm_0(x)
        h = self.NIN_3(self_attention(self.NIN_0(h), self.NIN_1(h), self.NIN_2(h)))
        return (x + h) / SQRT2 if self.skip_rescale else x + h


class Upsample(nn.Module):
    """x2 up-sampling: nearest (+ ``Conv_0``), or FIR (+ fused ``Conv2d_0``) when ``fir``."""

    def __init__(self, in_ch: int, out_ch: int | None = None, with_conv: bool = False, fir: bool = False,
                 fir_kernel=(1, 3, 3, 1)):
        super().__init__()
        out_ch = out_ch or in_ch
        if with_conv:
            if fir:
                self.Conv2d_0 = ud.Conv2d(in_ch, out_ch, kernel=3, up=True, resample_kernel=fir_kernel, use_bias=True)
            else:
                self.Conv_0 = ddpm_conv3x3(in_ch, out_ch)
        self.in_ch, self.with_conv, self.fir = in_ch, with_conv, fir
        self.fir_kernel = tuple(fir_kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_channels("Upsample", x, self.in_ch)
        _, _, H, W = x.shape
        if not self.fir:
            h = F.interpolate(x, (H * 2, W * 2), mode="nearest")
            if self.with_conv:
                h = self.Conv_0(h)
        elif self.with_conv:
            h = self.Conv2d_0(x)
        else:
            h = ud.upsample_2d(x, self.fir_kernel, factor=2)
        return h


class Downsample(nn.Module):
    """x1/2 down-sampling: stride-2 ``Conv_0`` (pad (0, 1)) or 2x2 mean; FIR variants when ``fir``."""

    def __init__(self, in_ch: int, out_ch: int | None = None, with_conv: bool = False, fir: bool = False,
                 fir_kernel=(1, 3, 3, 1)):
        super().__init__()
        out_ch = out_ch or in_ch
        if with_conv:
            if fir:
                self.Conv2d_0 = ud.Conv2d(in_ch, out_ch, kernel=3, down=True, resample_kernel=fir_kernel,
                                          use_bias=True)
            else:
                self.Conv_0 = ddpm_conv3x3(in_ch, out_ch, stride=2, padding=0)
        self.in_ch, self.with_conv, self.fir = in_ch, with_conv, fir
        self.fir_kernel = tuple(fir_kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_channels("Downsample", x, self.in_ch)
        if not self.fir:
            if self.with_conv:
                return self.Conv_0(F.pad(x, (0, 1, 0, 1)))
            return F.avg_pool2d(x, kernel_size=2, stride=2)
        if self.with_conv:
            return self.Conv2d_0(x)
        return ud.downsample_2d(x, self.fir_kernel, factor=2)


class ResnetBlockDDPMpp(nn.Module):
    """DDPM residual block with NCSN++ GroupNorm groups, ``init_scale`` and ``skip_rescale``::

        h = Conv_0(act(GroupNorm_0(x))) + Dense_0(act(temb))
        h = Conv_1(Dropout_0(act(GroupNorm_1(h))))
        out = shortcut(x) + h   [/ sqrt 2]      # shortcut: identity, NIN_0 or Conv_2
    """

    def __init__(self, nonlinearity: str, in_ch: int, out_ch: int | None = None, temb_dim: int | None = None,
                 conv_shortcut: bool = False, dropout: float = 0.1, skip_rescale: bool = False,
                 init_scale: float = 0.0):
        super().__init__()
        out_ch = out_ch or in_ch
        self.GroupNorm_0 = group_norm(in_ch, pp_groups(in_ch))
        self.Conv_0 = ddpm_conv3x3(in_ch, out_ch)
        if temb_dim is not None:
            self.Dense_0 = ddpm_linear(temb_dim, out_ch)
        self.GroupNorm_1 = group_norm(out_ch, pp_groups(out_ch))
        self.Dropout_0 = nn.Dropout(dropout)
        self.Conv_1 = ddpm_conv3x3(out_ch, out_ch, init_scale=init_scale)
        if in_ch != out_ch:
            if conv_shortcut:
                self.Conv_2 = ddpm_conv3x3(in_ch, out_ch)
            else:
                self.NIN_0 = NIN(in_ch, out_ch)
        self.act = get_act(nonlinearity)
        self.in_ch, self.out_ch = in_ch, out_ch
        self.conv_shortcut, self.skip_rescale = conv_shortcut, skip_rescale

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        check_channels("ResnetBlockDDPMpp", x, self.in_ch)
        h = self.Conv_0(self.act(self.GroupNorm_0(x)))
        if temb is not None:
            h = h + self.Dense_0(self.act(temb))[:, :, None, None]
        h = self.act(self.GroupNorm_1(h))
        h = self.Dropout_0(h)
        h = self.Conv_1(h)
        if self.in_ch != self.out_ch:
            x = self.Conv_2(x) if self.conv_shortcut else self.NIN_0(x)
        return (x + h) / SQRT2 if self.skip_rescale else x + h


class ResnetBlockBigGANpp(nn.Module):
    """BigGAN-style residual block, optionally resampling (``up`` / ``down``) inside::

        h = act(GroupNorm_0(x));  h, x = resample(h), resample(x)
        h = Conv_0(h) + Dense_0(act(temb))
        h = Conv_1(Dropout_0(act(GroupNorm_1(h))))
        out = Conv_2(x) + h   [/ sqrt 2]        # Conv_2 (1x1) when in != out or resampling

    Resampling is FIR (``fir``) or nearest / 2x2 mean.
    """

    def __init__(self, nonlinearity: str, in_ch: int, out_ch: int | None = None, temb_dim: int | None = None,
                 up: bool = False, down: bool = False, dropout: float = 0.1, fir: bool = False,
                 fir_kernel=(1, 3, 3, 1), skip_rescale: bool = True, init_scale: float = 0.0):
        super().__init__()
        out_ch = out_ch or in_ch
        self.GroupNorm_0 = group_norm(in_ch, pp_groups(in_ch))
        self.Conv_0 = ddpm_conv3x3(in_ch, out_ch)
        if temb_dim is not None:
            self.Dense_0 = ddpm_linear(temb_dim, out_ch)
        self.GroupNorm_1 = group_norm(out_ch, pp_groups(out_ch))
        self.Dropout_0 = nn.Dropout(dropout)
        self.Conv_1 = ddpm_conv3x3(out_ch, out_ch, init_scale=init_scale)
        if in_ch != out_ch or up or down:
            self.Conv_2 = ddpm_conv1x1(in_ch, out_ch)
        self.act = get_act(nonlinearity)
        self.in_ch, self.out_ch, self.up, self.down = in_ch, out_ch, up, down
        self.fir, self.fir_kernel, self.skip_rescale = fir, tuple(fir_kernel), skip_rescale

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.up:
            return ud.upsample_2d(x, self.fir_kernel, factor=2) if self.fir else ud.naive_upsample_2d(x, 2)
        if self.down:
            return ud.downsample_2d(x, self.fir_kernel, factor=2) if self.fir else ud.naive_downsample_2d(x, 2)
        return x

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        check_channels("ResnetBlockBigGANpp", x, self.in_ch)
        h = self.act(self.GroupNorm_0(x))
        h, x = self._resample(h), self._resample(x)
        h = self.Conv_0(h)
        if temb is not None:
            h = h + self.Dense_0(self.act(temb))[:, :, None, None]
        h = self.act(self.GroupNorm_1(h))
        h = self.Dropout_0(h)
        h = self.Conv_1(h)
        if self.in_ch != self.out_ch or self.up or self.down:
            x = self.Conv_2(x)
        return (x + h) / SQRT2 if self.skip_rescale else x + h
