"""NCSN++ / DDPM++ layers (Song et al. 2021, score_sde ``layerspp``), Flax linen, NHWC.

Twin: ``torch_ref/models/layerspp.py`` (NCHW). Names follow the torch attributes.
GroupNorm here uses ``min(C // 4, 32)`` groups, eps 1e-6. ``skip_rescale`` divides a
residual sum by sqrt(2).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from jax_impl.models import up_or_down_sampling as ud
from jax_impl.models.layers import (
    NIN,
    check_channels,
    ddpm_conv1x1,
    ddpm_conv3x3,
    default_init,
    get_act,
    group_norm,
    naive_upsample,
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

    ``W ~ N(0, scale^2)`` of shape [embedding_size] is fixed (not trained): it lives in
    the ``'constants'`` collection, so it is stored and converted but an optimizer over
    ``'params'`` never sees it. Computed in float32. ``x [B] -> [B, 2 embedding_size]``.
    """

    embedding_size: int = 256
    scale: float = 1.0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        W = self.variable(
            "constants", "W",
            lambda: jax.random.normal(self.make_rng("params"), (self.embedding_size,), jnp.float32) * self.scale,
        ).value
        x = jnp.asarray(x).astype(jnp.float32)
        W = W.astype(jnp.float32)
        x_proj = x[:, None] * W[None, :] * (2 * math.pi)
        return jnp.concatenate([jnp.sin(x_proj), jnp.cos(x_proj)], axis=-1)


class Combine(nn.Module):
    """Combine a skip input ``x`` with ``y``: ``Conv(x)`` (1x1) concatenated to or added to ``y``."""

    dim1: int
    dim2: int
    method: str = "cat"

    def setup(self):
        if self.method not in ("cat", "sum"):
            raise ValueError(f"unknown progressive_combine {self.method!r}; valid choices: 'cat', 'sum'")
        self.Conv = ddpm_conv1x1(self.dim1, self.dim2)

    def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
        check_channels("Combine", x, self.dim1)
        h = self.Conv(x)
        if self.method == "cat":
            return jnp.concatenate([h, y], axis=-1)
        return h + y


class AttnBlockpp(nn.Module):
    """Self-attention block of NCSN++: ``(x + NIN_3(attn(GroupNorm_0(x)))) [/ sqrt 2]``."""

    channels: int
    skip_rescale: bool = False
    init_scale: float = 0.0

    def setup(self):
        C = self.channels
        self.GroupNorm_0 = group_norm(C, pp_groups(C))
        self.NIN_0 = NIN(C, C)
        self.NIN_1 = NIN(C, C)
        self.NIN_2 = NIN(C, C)
        self.NIN_3 = NIN(C, C, init_scale=self.init_scale)

    def __call__(self, x: jax.Array) -> jax.Array:
        check_channels("AttnBlockpp", x, self.channels)
        h = self.GroupNorm_0(x)
        h = self.NIN_3(self_attention(self.NIN_0(h), self.NIN_1(h), self.NIN_2(h)))
        return (x + h) / SQRT2 if self.skip_rescale else x + h


class Upsample(nn.Module):
    """x2 up-sampling: nearest (+ ``Conv_0``), or FIR (+ fused ``Conv2d_0``) when ``fir``."""

    in_ch: int
    out_ch: int | None = None
    with_conv: bool = False
    fir: bool = False
    fir_kernel: tuple[int, ...] = (1, 3, 3, 1)

    def setup(self):
        out_ch = self.out_ch or self.in_ch
        if self.with_conv:
            if self.fir:
                self.Conv2d_0 = ud.Conv2d(self.in_ch, out_ch, kernel=3, up=True, resample_kernel=self.fir_kernel,
                                          use_bias=True)
            else:
                self.Conv_0 = ddpm_conv3x3(self.in_ch, out_ch)

    def __call__(self, x: jax.Array) -> jax.Array:
        check_channels("Upsample", x, self.in_ch)
        if not self.fir:
            h = naive_upsample(x, 2)
            if self.with_conv:
                h = self.Conv_0(h)
        elif self.with_conv:
            h = self.Conv2d_0(x)
        else:
            h = ud.upsample_2d(x, self.fir_kernel, factor=2)
        return h


class Downsample(nn.Module):
    """x1/2 down-sampling: stride-2 ``Conv_0`` (pad (0, 1)) or 2x2 mean; FIR variants when ``fir``."""

    in_ch: int
    out_ch: int | None = None
    with_conv: bool = False
    fir: bool = False
    fir_kernel: tuple[int, ...] = (1, 3, 3, 1)

    def setup(self):
        out_ch = self.out_ch or self.in_ch
        if self.with_conv:
            if self.fir:
                self.Conv2d_0 = ud.Conv2d(self.in_ch, out_ch, kernel=3, down=True, resample_kernel=self.fir_kernel,
                                          use_bias=True)
            else:
                self.Conv_0 = ddpm_conv3x3(self.in_ch, out_ch, stride=2, padding=((0, 1), (0, 1)))

    def __call__(self, x: jax.Array) -> jax.Array:
        check_channels("Downsample", x, self.in_ch)
        if not self.fir:
            if self.with_conv:
                return self.Conv_0(x)
            return nn.avg_pool(x, (2, 2), strides=(2, 2), padding="VALID")
        if self.with_conv:
            return self.Conv2d_0(x)
        return ud.downsample_2d(x, self.fir_kernel, factor=2)


class ResnetBlockDDPMpp(nn.Module):
    """DDPM residual block with NCSN++ GroupNorm groups, ``init_scale`` and ``skip_rescale``::

        h = Conv_0(act(GroupNorm_0(x))) + Dense_0(act(temb))
        h = Conv_1(Dropout_0(act(GroupNorm_1(h))))
        out = shortcut(x) + h   [/ sqrt 2]      # shortcut: identity, NIN_0 or Conv_2
    """

    nonlinearity: str
    in_ch: int
    out_ch: int | None = None
    temb_dim: int | None = None
    conv_shortcut: bool = False
    dropout: float = 0.1
    skip_rescale: bool = False
    init_scale: float = 0.0

    def setup(self):
        out_ch = self.out_ch or self.in_ch
        self.GroupNorm_0 = group_norm(self.in_ch, pp_groups(self.in_ch))
        self.Conv_0 = ddpm_conv3x3(self.in_ch, out_ch)
        if self.temb_dim is not None:
            self.Dense_0 = nn.Dense(out_ch, kernel_init=default_init(), bias_init=nn.initializers.zeros)
        self.GroupNorm_1 = group_norm(out_ch, pp_groups(out_ch))
        self.Dropout_0 = nn.Dropout(self.dropout)
        self.Conv_1 = ddpm_conv3x3(out_ch, out_ch, init_scale=self.init_scale)
        if self.in_ch != out_ch:
            if self.conv_shortcut:
                self.Conv_2 = ddpm_conv3x3(self.in_ch, out_ch)
            else:
                self.NIN_0 = NIN(self.in_ch, out_ch)

    def __call__(self, x: jax.Array, temb: jax.Array | None = None, train: bool = False) -> jax.Array:
        check_channels("ResnetBlockDDPMpp", x, self.in_ch)
        act = get_act(self.nonlinearity)
        out_ch = self.out_ch or self.in_ch
        h = self.Conv_0(self.GroupNorm_0(x, act=act))
        if temb is not None:
            h = h + self.Dense_0(act(temb))[:, None, None, :]
        elif self.temb_dim is not None and self.is_initializing():
            self.Dense_0(jnp.zeros((1, self.temb_dim), h.dtype))  # exists in torch: create it
        h = self.GroupNorm_1(h, act=act)
        h = self.Dropout_0(h, deterministic=not train)
        h = self.Conv_1(h)
        if self.in_ch != out_ch:
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

    nonlinearity: str
    in_ch: int
    out_ch: int | None = None
    temb_dim: int | None = None
    up: bool = False
    down: bool = False
    dropout: float = 0.1
    fir: bool = False
    fir_kernel: tuple[int, ...] = (1, 3, 3, 1)
    skip_rescale: bool = True
    init_scale: float = 0.0

    def setup(self):
        out_ch = self.out_ch or self.in_ch
        self.GroupNorm_0 = group_norm(self.in_ch, pp_groups(self.in_ch))
        self.Conv_0 = ddpm_conv3x3(self.in_ch, out_ch)
        if self.temb_dim is not None:
            self.Dense_0 = nn.Dense(out_ch, kernel_init=default_init(), bias_init=nn.initializers.zeros)
        self.GroupNorm_1 = group_norm(out_ch, pp_groups(out_ch))
        self.Dropout_0 = nn.Dropout(self.dropout)
        self.Conv_1 = ddpm_conv3x3(out_ch, out_ch, init_scale=self.init_scale)
        if self.in_ch != out_ch or self.up or self.down:
            self.Conv_2 = ddpm_conv1x1(self.in_ch, out_ch)

    def _resample(self, x: jax.Array) -> jax.Array:
        if self.up:
            return ud.upsample_2d(x, self.fir_kernel, factor=2) if self.fir else ud.naive_upsample_2d(x, 2)
        if self.down:
            return ud.downsample_2d(x, self.fir_kernel, factor=2) if self.fir else ud.naive_downsample_2d(x, 2)
        return x

    def __call__(self, x: jax.Array, temb: jax.Array | None = None, train: bool = False) -> jax.Array:
        check_channels("ResnetBlockBigGANpp", x, self.in_ch)
        act = get_act(self.nonlinearity)
        out_ch = self.out_ch or self.in_ch
        h = self.GroupNorm_0(x, act=act)
        h, x = self._resample(h), self._resample(x)
        h = self.Conv_0(h)
        if temb is not None:
            h = h + self.Dense_0(act(temb))[:, None, None, :]
        elif self.temb_dim is not None and self.is_initializing():
            self.Dense_0(jnp.zeros((1, self.temb_dim), h.dtype))  # exists in torch: create it
        h = self.GroupNorm_1(h, act=act)
        h = self.Dropout_0(h, deterministic=not train)
        h = self.Conv_1(h)
        if self.in_ch != out_ch or self.up or self.down:
            x = self.Conv_2(x)
        return (x + h) / SQRT2 if self.skip_rescale else x + h
