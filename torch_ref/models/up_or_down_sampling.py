"""FIR up/down-sampling (StyleGAN2's ``upfirdn2d``, as used by NCSN++), PyTorch, NCHW.

Twin: ``jax_impl/models/up_or_down_sampling.py`` (NHWC).

``upfirdn2d(x, k, up, down, pad)``: insert ``up - 1`` zeros after every sample, pad by
``pad = (p0, p1)`` on both spatial axes, convolve with the 2-D FIR kernel ``k`` (a true
convolution, i.e. correlation with the flipped kernel), keep every ``down``-th sample.
Written out step by step here (the JAX twin fuses it into one dilated convolution), and
the up-sampling convolution uses ``conv_transpose2d`` (the JAX twin a dilated
correlation), so the parity tests compare two different formulations.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from torch_ref.models.layers import default_init_

__all__ = [
    "setup_kernel",
    "upfirdn2d",
    "naive_upsample_2d",
    "naive_downsample_2d",
    "upsample_2d",
    "downsample_2d",
    "upsample_conv_2d",
    "conv_downsample_2d",
    "Conv2d",
]


def setup_kernel(k: Sequence[float]) -> np.ndarray:
    """2-D FIR kernel normalised to sum 1 (outer product of a 1-D kernel), float32."""
    k = np.asarray(k, dtype=np.float32)
    if k.ndim == 1:
        k = np.outer(k, k)
    if k.ndim != 2 or k.shape[0] != k.shape[1]:
        raise ValueError(f"FIR kernel must be 1-D or square 2-D, got shape {k.shape}")
    return k / np.sum(k)


def upfirdn2d(x: torch.Tensor, k: np.ndarray, *, up: int = 1, down: int = 1,
              pad: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """Up-sample by zero insertion, FIR-filter with ``k`` [kh, kw], down-sample. NCHW.

    Output size per axis: ``(H * up + p0 + p1 - kh) // down + 1``.
    """
    B, C, H, W = x.shape
    if up > 1:
        x = x.reshape(B, C, H, 1, W, 1)
        x = F.pad(x, (0, up - 1, 0, 0, 0, up - 1))
        x = x.reshape(B, C, H * up, W * up)
    p0, p1 = pad
    x = F.pad(x, (p0, p1, p0, p1))
    kernel = torch.as_tensor(np.ascontiguousarray(k), dtype=x.dtype, device=x.device)
    kernel = torch.flip(kernel, (0, 1))[None, None].repeat(C, 1, 1, 1)
    x = F.conv2d(x, kernel, groups=C)
    return x[:, :, ::down, ::down]


def naive_upsample_2d(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """Nearest-neighbour up-sampling by ``factor`` (NCHW)."""
    B, C, H, W = x.shape
    x = x.reshape(B, C, H, 1, W, 1).expand(B, C, H, factor, W, factor)
    return x.reshape(B, C, H * factor, W * factor)


def naive_downsample_2d(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """Mean over ``factor x factor`` blocks (NCHW)."""
    B, C, H, W = x.shape
    return x.reshape(B, C, H // factor, factor, W // factor, factor).mean(dim=(3, 5))


def upsample_2d(x: torch.Tensor, k: Sequence[float] | None = None, factor: int = 2,
                gain: float = 1.0) -> torch.Tensor:
    """FIR up-sampling ``[B, C, H, W] -> [B, C, H*factor, W*factor]``.

    Kernel ``setup_kernel(k) * gain * factor**2``; ``p = kh - factor``;
    pad ``((p + 1) // 2 + factor - 1, p // 2)``.
    """
    k = setup_kernel([1] * factor if k is None else k) * (gain * factor**2)
    p = k.shape[0] - factor
    return upfirdn2d(x, k, up=factor, pad=((p + 1) // 2 + factor - 1, p // 2))


def downsample_2d(x: torch.Tensor, k: Sequence[float] | None = None, factor: int = 2,
                  gain: float = 1.0) -> torch.Tensor:
    """FIR down-sampling ``[B, C, H, W] -> [B, C, H//factor, W//factor]``.

    Kernel ``setup_kernel(k) * gain``; ``p = kh - factor``; pad ``((p + 1) // 2, p // 2)``.
    """
    k = setup_kernel([1] * factor if k is None else k) * gain
    p = k.shape[0] - factor
    return upfirdn2d(x, k, down=factor, pad=((p + 1) // 2, p // 2))


def upsample_conv_2d(x: torch.Tensor, w: torch.Tensor, k: Sequence[float] | None = None, factor: int = 2,
                     gain: float = 1.0) -> torch.Tensor:
    """Up-sampling transposed convolution followed by the FIR filter (fused in StyleGAN2).

    ``w`` is an OIHW kernel [out, in, K, K]; the transposed convolution (stride
    ``factor``) uses it spatially flipped with in/out swapped, output ``(H - 1) factor + K``;
    then ``upfirdn2d`` with kernel ``setup_kernel(k) * gain * factor**2`` and pad
    ``((p + 1) // 2 + factor - 1, p // 2 + 1)``, ``p = kh - factor - (K - 1)``.
    """
    if w.ndim != 4 or w.shape[2] != w.shape[3]:
        raise ValueError(f"upsample_conv_2d: w must be a square OIHW kernel, got shape {tuple(w.shape)}")
    K = w.shape[2]
    k = setup_kernel([1] * factor if k is None else k) * (gain * factor**2)
    p = (k.shape[0] - factor) - (K - 1)
    w_t = torch.flip(w, (2, 3)).transpose(0, 1)  # [in, out, K, K]
    x = F.conv_transpose2d(x, w_t, stride=factor)
    return upfirdn2d(x, k, pad=((p + 1) // 2 + factor - 1, p // 2 + 1))


def conv_downsample_2d(x: torch.Tensor, w: torch.Tensor, k: Sequence[float] | None = None, factor: int = 2,
                       gain: float = 1.0) -> torch.Tensor:
    """FIR filter then a stride-``factor`` convolution with the OIHW kernel ``w`` (no padding).

    Filter pad ``((p + 1) // 2, p // 2)`` with ``p = kh - factor + K - 1``.
    """
    if w.ndim != 4 or w.shape[2] != w.shape[3]:
        raise ValueError(f"conv_downsample_2d: w must be a square OIHW kernel, got shape {tuple(w.shape)}")
    K = w.shape[2]
    k = setup_kernel([1] * factor if k is None else k) * gain
    p = (k.shape[0] - factor) + (K - 1)
    x = upfirdn2d(x, k, pad=((p + 1) // 2, p // 2))
    return F.conv2d(x, w, stride=factor, padding=0)


class Conv2d(nn.Module):
    """Convolution with optional FIR up- or down-sampling (StyleGAN2 ``Conv2d``).

    Params ``weight`` [out_ch, in_ch, K, K] and ``bias`` [out_ch]. Plain case: 'same'
    padding K // 2. Initialised with the DDPM initialiser.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int, up: bool = False, down: bool = False,
                 resample_kernel: Sequence[int] = (1, 3, 3, 1), use_bias: bool = True):
        super().__init__()
        if up and down:
            raise ValueError("Conv2d: up and down are exclusive")
        if kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"Conv2d: kernel must be odd and >= 1, got {kernel}")
        self.weight = nn.Parameter(default_init_(torch.empty(out_ch, in_ch, kernel, kernel)))
        if use_bias:
            self.bias = nn.Parameter(torch.zeros(out_ch))
        self.in_ch, self.up, self.down = in_ch, up, down
        self.resample_kernel = tuple(resample_kernel)
        self.kernel, self.use_bias = kernel, use_bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.in_ch:
            raise ValueError(f"Conv2d: expected {self.in_ch} input channels, got shape {tuple(x.shape)}")
        if self.up:
            x = upsample_conv_2d(x, self.weight, k=self.resample_kernel)
        elif self.down:
            x = conv_downsample_2d(x, self.weight, k=self.resample_kernel)
        else:
            x = F.conv2d(x, self.weight, padding=self.kernel // 2)
        if self.use_bias:
            x = x + self.bias.reshape(1, -1, 1, 1)
        return x
