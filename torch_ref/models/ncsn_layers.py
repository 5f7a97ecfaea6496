"""Layers of the NCSN (RefineNet) score networks, PyTorch NCHW.

Twin: ``jax_impl/models/ncsn_layers.py`` (same public names, flax NHWC).

The blocks follow the published architecture of NCSN (Song & Ermon 2019,
ermongroup/ncsn ``CondRefineNetDilated``) and NCSNv2 (Song & Ermon 2020,
ermongroup/ncsnv2): attribute names are the official ones, so an official
``state_dict`` loads key for key.

Facts reproduced from the official code:

* InstanceNorm++ (eq. in Song & Ermon 2019, sec. 4.2): with ``mu_c`` the spatial mean
  of channel ``c`` and ``m, v`` the mean and the **unbiased** variance of the ``mu_c``
  over channels,
  ``out_c = gamma_c * ((x_c - mu_c) / sqrt(s_c^2 + 1e-5) + alpha_c (mu_c - m) / sqrt(v + 1e-5)) + beta_c``
  where ``s_c^2`` is the biased spatial variance (``nn.InstanceNorm2d``, eps 1e-5).
  The conditional version takes ``(gamma, alpha, beta)`` from an embedding of the
  noise-level label, in that order.
* Dilated 3x3 convolutions pad by the dilation (size preserving), and a residual
  block with ``resample="down"`` *and* a dilation does **not** downsample: only the
  non-dilated ``"down"`` block halves the resolution (``ConvMeanPool``: convolution,
  then the mean of the four 2x2 phases). score_sde_pytorch's port pads dilated
  convolutions by 1 and crashes there (its issue #48); we follow ermongroup.
* CRP pooling is a 5x5, stride-1, padding-2 max pool in the unconditional
  ``RefineBlock`` and an average pool (zeros counted, divisor 25) in the conditional
  one; the multi-resolution fusion upsamples bilinearly with ``align_corners=True``.
* The official ``adjust_padding`` flag (MNIST 28 px) only reaches dilated blocks,
  which ignore it, so it has no effect and is not modelled.

The layout tables (``Stage``, ``Refine``, ``RefineNetPlan``, ``REFINENET_PLANS``),
``ACTIVATIONS``, ``INSTANCE_NORM_EPS`` and ``lookup_config`` are framework-neutral data
defined once in ``spec/ncsn_configs.py`` and re-exported here; the checkpoint key table
of these blocks is data in ``spec/keytables.py`` (``refinenet_key_table``).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from spec.ncsn_configs import (  # noqa: F401  (re-exported: configs and layouts live once in spec)
    ACTIVATIONS,
    INSTANCE_NORM_EPS,
    REFINENET_PLANS,
    Refine,
    RefineNetPlan,
    Stage,
    lookup_config,
)
from torch_ref.models.layers import get_act  # one activation table per side (also re-exported)
from torch_ref.validate import check_floating

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


def _per_channel(p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``[C]`` or ``[B, C]`` -> broadcastable against NCHW ``x``."""
    if p.ndim == 1:
        return p.view(1, -1, 1, 1)
    return p.view(x.shape[0], -1, 1, 1)


def instance_norm_plus(
    x: torch.Tensor,
    alpha: torch.Tensor,
    gamma: torch.Tensor,
    beta: torch.Tensor | None = None,
    eps: float = INSTANCE_NORM_EPS,
) -> torch.Tensor:
    """InstanceNorm++ of NCHW ``x`` with per-channel ``alpha, gamma, beta`` (``[C]`` or ``[B, C]``).

    ``h = (x - mu) / sqrt(var_hw(x) + eps) + alpha * (mu - mean_c(mu)) / sqrt(var_c(mu) + eps)``,
    ``out = gamma * h + beta``; ``var_hw`` biased, ``var_c`` unbiased (official).
    """
    means = x.mean(dim=(2, 3))  # [B, C]
    m = means.mean(dim=-1, keepdim=True)
    v = means.var(dim=-1, keepdim=True, unbiased=True)
    means = (means - m) / torch.sqrt(v + eps)
    h = F.instance_norm(x, eps=eps)
    h = h + means[..., None, None] * _per_channel(alpha, x)
    out = _per_channel(gamma, x) * h
    if beta is not None:
        out = out + _per_channel(beta, x)
    return out


class InstanceNorm2dPlus(nn.Module):
    """Unconditional InstanceNorm++ (NCSNv2); parameters ``alpha, gamma, beta`` of shape ``[C]``."""

    def __init__(self, num_features: int, bias: bool = True):
        super().__init__()
        self.num_features = num_features
        self.bias = bool(bias)
        self.alpha = nn.Parameter(torch.empty(num_features).normal_(1.0, 0.02))
        self.gamma = nn.Parameter(torch.empty(num_features).normal_(1.0, 0.02))
        if self.bias:
            self.beta = nn.Parameter(torch.zeros(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return instance_norm_plus(x, self.alpha, self.gamma, self.beta if self.bias else None)


class ConditionalInstanceNorm2dPlus(nn.Module):
    """Conditional InstanceNorm++ (NCSN): ``embed.weight [num_classes, 3C]`` holds
    ``(gamma, alpha, beta)`` per noise level (``[num_classes, 2C]`` without bias)."""

    def __init__(self, num_features: int, num_classes: int, bias: bool = True):
        super().__init__()
        self.num_features = num_features
        self.bias = bool(bias)
        if self.bias:
            self.embed = nn.Embedding(num_classes, 3 * num_features)
            with torch.no_grad():
                self.embed.weight[:, : 2 * num_features].normal_(1.0, 0.02)
                self.embed.weight[:, 2 * num_features :].zero_()
        else:
            self.embed = nn.Embedding(num_classes, 2 * num_features)
            with torch.no_grad():
                self.embed.weight.normal_(1.0, 0.02)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.bias:
            gamma, alpha, beta = self.embed(y).chunk(3, dim=-1)
        else:
            (gamma, alpha), beta = self.embed(y).chunk(2, dim=-1), None
        return instance_norm_plus(x, alpha, gamma, beta)


# ----------------------------------------------------------------------------- convs


def conv3x3(in_planes: int, out_planes: int, bias: bool = True) -> nn.Conv2d:
    """3x3 convolution, stride 1, padding 1 (PyTorch default init)."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=bias)


def conv1x1(in_planes: int, out_planes: int, bias: bool = True) -> nn.Conv2d:
    """1x1 convolution."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=1, padding=0, bias=bias)


def dilated_conv3x3(in_planes: int, out_planes: int, dilation: int, bias: bool = True) -> nn.Conv2d:
    """3x3 convolution with dilation ``d`` and padding ``d`` (size preserving)."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, padding=dilation, dilation=dilation, bias=bias)


class ConvMeanPool(nn.Module):
    """Convolution (padding k//2) followed by 2x2 mean pooling written as the mean of the
    four phases ``o[::2, ::2], o[1::2, ::2], o[::2, 1::2], o[1::2, 1::2]``."""

    def __init__(self, input_dim: int, output_dim: int, kernel_size: int = 3, biases: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(input_dim, output_dim, kernel_size, stride=1, padding=kernel_size // 2, bias=biases)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = self.conv(x)
        return (o[:, :, ::2, ::2] + o[:, :, 1::2, ::2] + o[:, :, ::2, 1::2] + o[:, :, 1::2, 1::2]) / 4.0


# ------------------------------------------------------------------ RefineNet blocks


class CRPBlock(nn.Module):
    """Chained residual pooling: ``x = act(x)``; ``n_stages`` times
    ``path = conv(pool(path)); x = x + path`` (5x5 max pool, or average pool)."""

    def __init__(self, features: int, n_stages: int, act: nn.Module, maxpool: bool = True):
        super().__init__()
        self.convs = nn.ModuleList([conv3x3(features, features, bias=False) for _ in range(n_stages)])
        self.n_stages = n_stages
        if maxpool:
            self.pool = nn.MaxPool2d(kernel_size=5, stride=1, padding=2)
        else:
            self.pool = nn.AvgPool2d(kernel_size=5, stride=1, padding=2)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(x)
        path = x
        for conv in self.convs:
            path = conv(self.pool(path))
            x = path + x
        return x


class CondCRPBlock(nn.Module):
    """Conditional CRP: ``path = conv(avgpool(norm(path, y)))`` per stage."""

    def __init__(self, features: int, n_stages: int, num_classes: int, act: nn.Module):
        super().__init__()
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        for _ in range(n_stages):
            self.norms.append(ConditionalInstanceNorm2dPlus(features, num_classes, bias=True))
            self.convs.append(conv3x3(features, features, bias=False))
        self.n_stages = n_stages
        self.pool = nn.AvgPool2d(kernel_size=5, stride=1, padding=2)
        self.act = act

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = self.act(x)
        path = x
        for norm, conv in zip(self.norms, self.convs):
            path = conv(self.pool(norm(path, y)))
            x = path + x
        return x


class RCUBlock(nn.Module):
    """Residual conv units: ``n_blocks`` times ``x = x + (conv . act)^n_stages (x)``;
    convolutions are attributes ``"{i}_{j}_conv"`` (1-based), without bias."""

    def __init__(self, features: int, n_blocks: int, n_stages: int, act: nn.Module):
        super().__init__()
        for i in range(n_blocks):
            for j in range(n_stages):
                setattr(self, f"{i + 1}_{j + 1}_conv", conv3x3(features, features, bias=False))
        self.n_blocks = n_blocks
        self.n_stages = n_stages
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(self.n_blocks):
            residual = x
            for j in range(self.n_stages):
                x = getattr(self, f"{i + 1}_{j + 1}_conv")(self.act(x))
            x = x + residual
        return x


class CondRCUBlock(nn.Module):
    """Conditional RCU: ``x = conv(act(norm(x, y)))`` per stage, norms ``"{i}_{j}_norm"``."""

    def __init__(self, features: int, n_blocks: int, n_stages: int, num_classes: int, act: nn.Module):
        super().__init__()
        for i in range(n_blocks):
            for j in range(n_stages):
                setattr(self, f"{i + 1}_{j + 1}_norm", ConditionalInstanceNorm2dPlus(features, num_classes, bias=True))
                setattr(self, f"{i + 1}_{j + 1}_conv", conv3x3(features, features, bias=False))
        self.n_blocks = n_blocks
        self.n_stages = n_stages
        self.act = act

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        for i in range(self.n_blocks):
            residual = x
            for j in range(self.n_stages):
                x = getattr(self, f"{i + 1}_{j + 1}_norm")(x, y)
                x = getattr(self, f"{i + 1}_{j + 1}_conv")(self.act(x))
            x = x + residual
        return x


def _resize(h: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    return F.interpolate(h, size=tuple(shape), mode="bilinear", align_corners=True)


class MSFBlock(nn.Module):
    """Multi-resolution fusion: ``sum_i resize(conv_i(x_i), shape)`` (bilinear, align_corners)."""

    def __init__(self, in_planes: Sequence[int], features: int):
        super().__init__()
        self.convs = nn.ModuleList([conv3x3(c, features, bias=True) for c in in_planes])
        self.features = features

    def forward(self, xs: Sequence[torch.Tensor], shape: Sequence[int]) -> torch.Tensor:
        sums = torch.zeros(xs[0].shape[0], self.features, *shape, device=xs[0].device, dtype=xs[0].dtype)
        for conv, x in zip(self.convs, xs):
            sums = sums + _resize(conv(x), shape)
        return sums


class CondMSFBlock(nn.Module):
    """Conditional MSF: ``sum_i resize(conv_i(norm_i(x_i, y)), shape)``."""

    def __init__(self, in_planes: Sequence[int], features: int, num_classes: int):
        super().__init__()
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        for c in in_planes:
            self.convs.append(conv3x3(c, features, bias=True))
            self.norms.append(ConditionalInstanceNorm2dPlus(c, num_classes, bias=True))
        self.features = features

    def forward(self, xs: Sequence[torch.Tensor], y: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
        sums = torch.zeros(xs[0].shape[0], self.features, *shape, device=xs[0].device, dtype=xs[0].dtype)
        for norm, conv, x in zip(self.norms, self.convs, xs):
            sums = sums + _resize(conv(norm(x, y)), shape)
        return sums


class RefineBlock(nn.Module):
    """RefineNet block: RCU(2, 2) per input, MSF (unless ``start``), CRP(2), RCU(3 if end else 1, 2)."""

    def __init__(self, in_planes: Sequence[int], features: int, act: nn.Module, start: bool = False,
                 end: bool = False, maxpool: bool = True):
        super().__init__()
        self.n_blocks = len(in_planes)
        self.adapt_convs = nn.ModuleList([RCUBlock(c, 2, 2, act) for c in in_planes])
        self.output_convs = RCUBlock(features, 3 if end else 1, 2, act)
        if not start:
            self.msf = MSFBlock(in_planes, features)
        self.crp = CRPBlock(features, 2, act, maxpool=maxpool)

    def forward(self, xs: Sequence[torch.Tensor], output_shape: Sequence[int]) -> torch.Tensor:
        hs = [adapt(x) for adapt, x in zip(self.adapt_convs, xs)]
        h = self.msf(hs, output_shape) if self.n_blocks > 1 else hs[0]
        return self.output_convs(self.crp(h))


class CondRefineBlock(nn.Module):
    """Conditional RefineNet block (NCSN v1): conditional RCU, MSF and (average-pool) CRP."""

    def __init__(self, in_planes: Sequence[int], features: int, num_classes: int, act: nn.Module,
                 start: bool = False, end: bool = False):
        super().__init__()
        self.n_blocks = len(in_planes)
        self.adapt_convs = nn.ModuleList([CondRCUBlock(c, 2, 2, num_classes, act) for c in in_planes])
        self.output_convs = CondRCUBlock(features, 3 if end else 1, 2, num_classes, act)
        if not start:
            self.msf = CondMSFBlock(in_planes, features, num_classes)
        self.crp = CondCRPBlock(features, 2, num_classes, act)

    def forward(self, xs: Sequence[torch.Tensor], y: torch.Tensor, output_shape: Sequence[int]) -> torch.Tensor:
        hs = [adapt(x, y) for adapt, x in zip(self.adapt_convs, xs)]
        h = self.msf(hs, y, output_shape) if self.n_blocks > 1 else hs[0]
        return self.output_convs(self.crp(h, y), y)


# ------------------------------------------------------------------- residual blocks


def _residual_convs(input_dim: int, output_dim: int, resample: str | None, dilation: int | None):
    """``(conv1, conv2, shortcut, mid_dim)`` of the official residual block.

    ``shortcut`` is None when the block is an identity skip (same width, no resample).
    """
    if resample == "down":
        if dilation is not None:
            return (dilated_conv3x3(input_dim, input_dim, dilation),
                    dilated_conv3x3(input_dim, output_dim, dilation),
                    dilated_conv3x3(input_dim, output_dim, dilation), input_dim)
        return (conv3x3(input_dim, input_dim), ConvMeanPool(input_dim, output_dim, 3),
                ConvMeanPool(input_dim, output_dim, 1), input_dim)
    if resample is None:
        if dilation is not None:
            shortcut = dilated_conv3x3(input_dim, output_dim, dilation) if output_dim != input_dim else None
            return (dilated_conv3x3(input_dim, output_dim, dilation),
                    dilated_conv3x3(output_dim, output_dim, dilation), shortcut, output_dim)
        shortcut = conv1x1(input_dim, output_dim) if output_dim != input_dim else None
        return conv3x3(input_dim, output_dim), conv3x3(output_dim, output_dim), shortcut, output_dim
    raise ValueError(f"resample must be None or 'down', got {resample!r}")


class ResidualBlock(nn.Module):
    """NCSNv2 residual block: ``x + conv2(act(norm2(conv1(act(norm1(x))))))`` with a
    convolutional shortcut when the width or resolution changes."""

    def __init__(self, input_dim: int, output_dim: int, resample: str | None = None,
                 act: nn.Module | None = None, dilation: int | None = None):
        super().__init__()
        self.non_linearity = act if act is not None else nn.ELU()
        self.input_dim = input_dim
        self.output_dim = output_dim
        self.resample = resample
        conv1, conv2, shortcut, mid = _residual_convs(input_dim, output_dim, resample, dilation)
        self.conv1 = conv1
        self.normalize2 = InstanceNorm2dPlus(mid)
        self.conv2 = conv2
        if shortcut is not None:
            self.shortcut = shortcut
        self.normalize1 = InstanceNorm2dPlus(input_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.non_linearity(self.normalize1(x)))
        h = self.conv2(self.non_linearity(self.normalize2(h)))
        skip = x if (self.output_dim == self.input_dim and self.resample is None) else self.shortcut(x)
        return skip + h


class ConditionalResidualBlock(nn.Module):
    """NCSN v1 residual block: as ``ResidualBlock`` with conditional InstanceNorm++."""

    def __init__(self, input_dim: int, output_dim: int, num_classes: int, resample: str | None = None,
                 act: nn.Module | None = None, dilation: int | None = None):
        super().__init__()
        self.non_linearity = act if act is not None else nn.ELU()
        self.input_dim = input_dim
        self.output_dim = output_dim
        self.resample = resample
        conv1, conv2, shortcut, mid = _residual_convs(input_dim, output_dim, resample, dilation)
        self.conv1 = conv1
        self.normalize2 = ConditionalInstanceNorm2dPlus(mid, num_classes)
        self.conv2 = conv2
        if shortcut is not None:
            self.shortcut = shortcut
        self.normalize1 = ConditionalInstanceNorm2dPlus(input_dim, num_classes)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.non_linearity(self.normalize1(x, y)))
        h = self.conv2(self.non_linearity(self.normalize2(h, y)))
        skip = x if (self.output_dim == self.input_dim and self.resample is None) else self.shortcut(x)
        return skip + h


# ---------------------------------------------------------------------- input checks


def check_inputs(x, y, *, image_size: int, num_channels: int, num_scales: int) -> None:
    """Validate a network call ``(x [B, C, H, W], y [B])`` before any compute.

    Raises ``TypeError`` for a non-floating ``x`` or non-integer ``y``; ``ValueError``
    naming the argument for a wrong rank, channel count, spatial size (must be
    ``image_size x image_size``), label shape, or a label outside ``[0, num_scales)``.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"y must be a torch.Tensor of integer noise-level labels, got {type(y).__name__}")
    check_floating("x", x)
    if x.ndim != 4:
        raise ValueError(f"x must be [B, C, H, W] (NCHW), got shape {tuple(x.shape)}")
    if x.shape[1] != num_channels:
        raise ValueError(f"x has {x.shape[1]} channels (shape {tuple(x.shape)}, NCHW); the config expects "
                         f"num_channels={num_channels}")
    if tuple(x.shape[2:]) != (image_size, image_size):
        raise ValueError(f"x has spatial size {tuple(x.shape[2:])}; this network is configured for "
                         f"image_size={image_size} ({image_size}x{image_size})")
    if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise TypeError(f"y must hold integer noise-level labels, got dtype {y.dtype}")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"y must have shape [B] = ({x.shape[0]},), got {tuple(y.shape)}")
    if not torch.compiler.is_compiling() and y.numel():
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= num_scales:
            raise ValueError(f"y must lie in [0, num_scales) = [0, {num_scales}), got values in [{lo}, {hi}]")
