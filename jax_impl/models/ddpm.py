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
  then ONE AttnBlock (score_sde's port; the TF original has one after every block),
  then Upsample except at level 0;
- GroupNorm(32), act, ``conv3x3(-> C)``; with ``scale_by_sigma`` the output is divided
  by ``sigmas[label]`` (integer labels).

Attention is placed by level (the resolution ``image_size // 2**level`` of the config),
which is what score_sde does for inputs of size ``image_size``; other sizes divisible by
``2**(len(ch_mult)-1)`` run the same network. The ``vp/ddpm/cifar10`` preset has
35,218,947 parameters.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jax_impl.models.layers import (
    AttnBlock,
    Downsample,
    ResnetBlockDDPM,
    Upsample,
    check_image_inputs,
    ddpm_conv3x3,
    default_init,
    get_act,
    get_timestep_embedding,
    group_norm,
    res_attn_stage,
)
from spec.model_configs import DDPMConfig

__all__ = [
    "DDPM",
    "DDPMConfig",
]


class DDPM(nn.Module):
    """``apply(variables, x [B, H, W, C], labels [B], train=False) -> [B, H, W, C]``.

    ``train=True`` enables dropout and needs ``rngs={'dropout': key}``.
    """

    config: DDPMConfig

    def setup(self):
        cfg = self.config
        if not isinstance(cfg, DDPMConfig):
            raise TypeError(f"config must be a DDPMConfig, got {type(cfg).__name__}")
        nf = cfg.nf
        temb_dim = 4 * nf

        def resnet(in_ch, out_ch=None):
            return ResnetBlockDDPM(cfg.nonlinearity, in_ch, out_ch, temb_dim=temb_dim, dropout=cfg.dropout)

        modules = []
        if cfg.conditional:
            modules.append(nn.Dense(temb_dim, kernel_init=default_init(), bias_init=nn.initializers.zeros))
            modules.append(nn.Dense(temb_dim, kernel_init=default_init(), bias_init=nn.initializers.zeros))
        modules.append(ddpm_conv3x3(nf))
        hs_c = [nf]
        in_ch = nf
        for level, mult in enumerate(cfg.ch_mult):
            for _ in range(cfg.num_res_blocks):
                out_ch = nf * mult
                modules.append(resnet(in_ch, out_ch))
                in_ch = out_ch
                if cfg.all_resolutions[level] in cfg.attn_resolutions:
                    modules.append(AttnBlock(in_ch))
                hs_c.append(in_ch)
            if level != cfg.num_resolutions - 1:
                modules.append(Downsample(in_ch, with_conv=cfg.resamp_with_conv))
                hs_c.append(in_ch)
        in_ch = hs_c[-1]
        modules.append(resnet(in_ch))
        modules.append(AttnBlock(in_ch))
        modules.append(resnet(in_ch))
        for level in reversed(range(cfg.num_resolutions)):
            for _ in range(cfg.num_res_blocks + 1):
                out_ch = nf * cfg.ch_mult[level]
                modules.append(resnet(in_ch + hs_c.pop(), out_ch))
                in_ch = out_ch
            if cfg.all_resolutions[level] in cfg.attn_resolutions:
                modules.append(AttnBlock(in_ch))
            if level != 0:
                modules.append(Upsample(in_ch, with_conv=cfg.resamp_with_conv))
        assert not hs_c
        modules.append(group_norm(in_ch, 32))
        modules.append(ddpm_conv3x3(cfg.num_channels, init_scale=0.0))
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
            temb = get_timestep_embedding(labels, cfg.nf)
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
        for level in reversed(range(cfg.num_resolutions)):
            for _ in range(cfg.num_res_blocks + 1):
                h = modules[m](jnp.concatenate([h, hs.pop()], axis=-1), temb, train)
                m += 1
            if cfg.all_resolutions[level] in cfg.attn_resolutions:
                h = modules[m](h)
                m += 1
            if level != 0:
                h = modules[m](h)
                m += 1
        assert not hs
        h = act(modules[m](h))
        h = modules[m + 1](h)
        m += 2
        assert m == len(modules)
        if cfg.scale_by_sigma:
            sigmas = jnp.asarray(cfg.sigmas, h.dtype)
            h = h / sigmas[labels.astype(jnp.int32)][:, None, None, None]
        return h
