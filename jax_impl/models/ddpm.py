"""The DDPM U-Net (Ho et al. 2020) as ported by score_sde (model name ``ddpm``), Flax, NHWC.

Twin: ``torch_ref/models/ddpm.py`` (NCHW). Config: ``spec.model_configs.DDPMConfig``.

``all_modules`` (flax ``all_modules_{i}``, torch ``all_modules.{i}``), in order:

- conditional: ``Dense(nf -> 4nf)``, ``Dense(4nf -> 4nf)`` on the sinusoidal embedding of
  the label (computed in float32; ``temb = Dense_1(act(Dense_0(emb(label))))``);
- ``conv3x3(C -> nf)`` on ``x`` (or ``2x - 1`` unless ``centered``);
- down path, per level: ``num_res_blocks`` x (ResnetBlockDDPM [+ AttnBlock at
  ``attn_resolutions``]), then Downsample (conv or 2x2 mean) except at the last level;
- middle: ResnetBlockDDPM, AttnBlock, ResnetBlockDDPM;
- up path, per level: ``num_res_blocks + 1`` x ResnetBlockDDPM on ``concat(h, skip)``,
  then ONE AttnBlock at attention levels (``up_attention="per_level"``, score_sde's
  port), or an AttnBlock after EVERY one of them (``"per_block"``: the TF original and
  diffusers' ``AttnUpBlock2D``), then Upsample except at level 0;
- GroupNorm(32), act, ``conv3x3(-> C)``, or ``conv3x3(-> 2C)`` (eps, then the variance
  values v, split by ``GaussianDiffusion``) with improved-diffusion's ``learn_sigma``;
  with ``scale_by_sigma`` the output is divided by ``sigmas[label]`` (integer labels).

The label embedding is ``timestep_embedding`` (score_sde's sin-then-cos with
``freq_shift=1`` by default; diffusers' ``flip_sin_to_cos`` / ``freq_shift`` options).

Attention is placed by level (the resolution ``image_size // 2**level`` of the config),
which is what score_sde does for inputs of size ``image_size``; other sizes divisible by
``2**(len(ch_mult)-1)`` run the same network. The ``vp/ddpm/cifar10`` preset has
35,218,947 parameters (35,746,307 with ``up_attention="per_block"``). The list above is
data: ``spec.diffusers_format.ddpm_layout_plan(config)`` (``spec.unet_plans.ddpm_plan``
with ``up_attention`` applied), from which this module, its twin and the key tables build.
Diffusers' ``UNet2DModel`` directories load with ``jax_impl.diffusers_format.from_diffusers``.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from jax_impl.models.layers import (
    AttnBlock,
    Downsample,
    ResnetBlockDDPM,
    Upsample,
    check_image_inputs,
    get_act,
    get_timestep_embedding,
    plan_modules,
    res_attn_stage,
)
from spec.diffusers_format import ddpm_layout_plan
from spec.model_configs import DDPMConfig

__all__ = [
    "DDPM",
    "DDPMConfig",
    "timestep_embedding",
]


def timestep_embedding(labels: jax.Array, embedding_dim: int, *, flip_sin_to_cos: bool = False,
                       freq_shift: int = 1) -> jax.Array:
    """The DDPM label embedding (float32), in score_sde's and diffusers' variants.

    ``[sin(t w), cos(t w)]`` (``[cos(t w), sin(t w)]`` with ``flip_sin_to_cos``),
    ``w_i = exp(-i log(10000) / (h - freq_shift))``, ``i < h = embedding_dim // 2``,
    zero-padded to ``embedding_dim`` when odd. The defaults are score_sde's
    ``get_timestep_embedding`` (computed by it, bit for bit).

    Args:
      labels: ``[B]`` (possibly fractional) timesteps.
      embedding_dim: output width (>= 4); ``freq_shift`` must be < ``embedding_dim // 2``.
    Returns:
      ``[B, embedding_dim]`` float32.
    """
    if not flip_sin_to_cos and freq_shift == 1:
        return get_timestep_embedding(labels, embedding_dim)
    if jnp.ndim(labels) != 1:
        raise ValueError(f"timesteps must have shape [B], got shape {jnp.shape(labels)}")
    half = embedding_dim // 2
    if embedding_dim < 4 or not 0 <= freq_shift < half:
        raise ValueError(f"timestep_embedding: need embedding_dim >= 4 and 0 <= freq_shift < embedding_dim // 2, "
                         f"got embedding_dim={embedding_dim}, freq_shift={freq_shift}")
    rate = math.log(10000) / (half - freq_shift)
    freqs = jnp.exp(jnp.arange(half, dtype=jnp.float32) * -rate)
    args = jnp.asarray(labels).astype(jnp.float32)[:, None] * freqs[None, :]
    parts = [jnp.cos(args), jnp.sin(args)] if flip_sin_to_cos else [jnp.sin(args), jnp.cos(args)]
    emb = jnp.concatenate(parts, axis=1)
    if embedding_dim % 2 == 1:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


class DDPM(nn.Module):
    """``apply(variables, x [B, H, W, C], labels [B], train=False) -> [B, H, W, C]``
    (``[B, H, W, 2C]`` with ``config.learn_sigma``).

    ``train=True`` enables dropout and needs ``rngs={'dropout': key}``.
    """

    config: DDPMConfig

    def setup(self):
        cfg = self.config
        if not isinstance(cfg, DDPMConfig):
            raise TypeError(f"config must be a DDPMConfig, got {type(cfg).__name__}")
        temb_dim = 4 * cfg.nf

        modules = plan_modules(ddpm_layout_plan(cfg), {
            "resnet": lambda b: ResnetBlockDDPM(cfg.nonlinearity, b.in_ch, b.out_ch, temb_dim=temb_dim,
                                                dropout=cfg.dropout),
            "attn": lambda b: AttnBlock(b.in_ch),
            "downsample": lambda b: Downsample(b.in_ch, with_conv=b.with_conv),
            "upsample": lambda b: Upsample(b.in_ch, with_conv=b.with_conv),
        })
        self.all_modules = modules

    def __call__(self, x: jax.Array, labels: jax.Array, train: bool = False) -> jax.Array:
        cfg = self.config
        x, labels = jnp.asarray(x), jnp.asarray(labels)
        check_image_inputs(x, labels, num_channels=cfg.num_channels, factor=cfg.downsampling_factor)
        act = get_act(cfg.nonlinearity)
        modules = self.all_modules
        m = 0
        temb = None
        if cfg.conditional:
            temb = timestep_embedding(labels, cfg.nf, flip_sin_to_cos=cfg.flip_sin_to_cos,
                                      freq_shift=cfg.freq_shift)
            temb = modules[m](temb)
            temb = modules[m + 1](act(temb))
            m += 2
        h = x if cfg.centered else 2 * x - 1.0
        hs = [modules[m](h)]
        m += 1
        for level in range(cfg.num_resolutions):
            m = res_attn_stage(modules, m, hs, temb, train, num_blocks=cfg.num_res_blocks,
                               attn=cfg.all_resolutions[level] in cfg.attn_resolutions)
            if level != cfg.num_resolutions - 1:
                hs.append(modules[m](hs[-1]))
                m += 1
        h = hs[-1]
        h = modules[m](h, temb, train)
        h = modules[m + 1](h)
        h = modules[m + 2](h, temb, train)
        m += 3
        per_block = cfg.up_attention == "per_block"
        for level in reversed(range(cfg.num_resolutions)):
            attn = cfg.all_resolutions[level] in cfg.attn_resolutions
            for _ in range(cfg.num_res_blocks + 1):
                h = modules[m](jnp.concatenate([h, hs.pop()], axis=-1), temb, train)
                m += 1
                if attn and per_block:
                    h = modules[m](h)
                    m += 1
            if attn and not per_block:
                h = modules[m](h)
                m += 1
            if level != 0:
                h = modules[m](h)
                m += 1
        assert not hs
        h = modules[m](h, act=act)
        h = modules[m + 1](h)
        m += 2
        assert m == len(modules)
        if cfg.scale_by_sigma:
            sigmas = jnp.asarray(cfg.sigmas, h.dtype)
            h = h / sigmas[labels.astype(jnp.int32)][:, None, None, None]
        return h
