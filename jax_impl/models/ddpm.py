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
- GroupNorm(32), act, ``conv3x3(-> C)``, or ``conv3x3(-> 2C)`` (eps, then the variance
  values v, split by ``GaussianDiffusion``) with improved-diffusion's ``learn_sigma``;
  with ``scale_by_sigma`` the output is divided by ``sigmas[label]`` (integer labels).

Attention is placed by level (the resolution ``image_size // 2**level`` of the config),
which is what score_sde does for inputs of size ``image_size``; other sizes divisible by
``2**(len(ch_mult)-1)`` run the same network. The ``vp/ddpm/cifar10`` preset has
35,218,947 parameters. The list above is data: ``spec.unet_plans.ddpm_plan(config)``,
from which this module, its twin and the checkpoint key table build.
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
    get_act,
    get_timestep_embedding,
    plan_modules,
    res_attn_stage,
)
from spec.model_configs import DDPMConfig
from spec.unet_plans import ddpm_plan

__all__ = [
    "DDPM",
    "DDPMConfig",
]


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

        modules = plan_modules(ddpm_plan(cfg), {
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
