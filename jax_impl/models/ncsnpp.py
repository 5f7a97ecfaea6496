"""NCSN++ / DDPM++ (Song et al. 2021; score_sde model name ``ncsnpp``), Flax, NHWC.

Twin: ``torch_ref/models/ncsnpp.py`` (NCHW). Config: ``spec.model_configs.NCSNppConfig``.

``all_modules`` (flax ``all_modules_{i}``), in score_sde_pytorch's order:

- ``embedding_type='fourier'``: GaussianFourierProjection(nf, fourier_scale) of
  ``log(sigma)`` (the label is sigma; ``W`` fixed, in the ``'constants'`` collection),
  embedding width 2nf; ``'positional'``: the sinusoidal embedding of the label (a
  discrete index), width nf, and ``used_sigma = sigmas[int(label)]``;
- conditional: ``Dense(-> 4nf)``, ``Dense(4nf -> 4nf)``;
- ``conv3x3(C -> nf)`` on ``x`` (or ``2x - 1`` unless ``centered``);
- down path, per level: ``num_res_blocks`` x (ResnetBlock [+ AttnBlockpp]); between
  levels a down-sampling (Downsample for ``resblock_type='ddpm'``, a ResnetBlockBigGANpp
  with ``down=True`` for ``'biggan'``), then the input pyramid: ``input_skip`` (FIR/mean
  down-sampled image combined by a 1x1 Combine, sum or cat), ``residual`` (a
  down-sampling conv of the pyramid, added to h, / sqrt 2 with ``skip_rescale``);
- middle: ResnetBlock, AttnBlockpp, ResnetBlock;
- up path, per level: ``num_res_blocks + 1`` x ResnetBlock on ``concat(h, skip)``, one
  AttnBlockpp at ``attn_resolutions``, the output pyramid (``output_skip``: GroupNorm +
  conv3x3 to C summed over up-sampled levels; ``residual``: as in score_sde), and an
  up-sampling (Upsample or a BigGAN block with ``up=True``) except at level 0;
- unless ``output_skip``: GroupNorm, act, ``conv3x3(-> C)``;
- ``scale_by_sigma``: divide by ``used_sigma`` (the label itself for Fourier).

Pyramid resamplers without parameters are plain functions (score_sde_pytorch keeps them
outside ``all_modules``). GroupNorm uses ``min(C // 4, 32)`` groups. Attention is placed
by level, from the config. Parameter counts of the CIFAR-10 presets: DDPM++ cont.
61,804,419 (deep 106,632,579); NCSN++ cont. 62,758,915 of which 62,758,787 trainable
(deep 107,587,075).

The modules are built from ``spec.unet_plans.ncsnpp_plan(config)``, the layout data the
twin and the checkpoint key table walk too; the forward pass consumes them in plan order.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jax_impl.models import layerspp
from jax_impl.models import up_or_down_sampling as ud
from jax_impl.models.layers import (
    check_image_inputs,
    get_act,
    get_timestep_embedding,
    naive_upsample,
    plan_modules,
    res_attn_stage,
)
from spec.model_configs import NCSNppConfig
from spec.unet_plans import ncsnpp_plan

__all__ = [
    "NCSNpp",
    "NCSNppConfig",
]

SQRT2 = layerspp.SQRT2


class NCSNpp(nn.Module):
    """``apply(variables, x [B, H, W, C], labels [B], train=False) -> [B, H, W, C]``.

    ``variables`` holds ``'params'`` and, with Fourier features, ``'constants'``.
    ``train=True`` enables dropout and needs ``rngs={'dropout': key}``.
    """

    config: NCSNppConfig

    def setup(self):
        cfg = self.config
        if not isinstance(cfg, NCSNppConfig):
            raise TypeError(f"config must be an NCSNppConfig, got {type(cfg).__name__}")
        temb_dim = 4 * cfg.nf

        def resblock(b):
            if b.resblock == "biggan":
                return layerspp.ResnetBlockBigGANpp(
                    cfg.nonlinearity, b.in_ch, b.out_ch, temb_dim=temb_dim, up=b.resample == "up",
                    down=b.resample == "down", dropout=cfg.dropout, fir=cfg.fir, fir_kernel=cfg.fir_kernel,
                    skip_rescale=cfg.skip_rescale, init_scale=cfg.init_scale)
            return layerspp.ResnetBlockDDPMpp(
                cfg.nonlinearity, b.in_ch, b.out_ch, temb_dim=temb_dim, dropout=cfg.dropout,
                skip_rescale=cfg.skip_rescale, init_scale=cfg.init_scale)

        def resample(b):
            cls = layerspp.Downsample if b.kind == "downsample" else layerspp.Upsample
            return cls(b.in_ch, b.out_ch, with_conv=b.with_conv, fir=b.fir, fir_kernel=cfg.fir_kernel)

        modules = plan_modules(ncsnpp_plan(cfg), {
            "fourier": lambda b: layerspp.GaussianFourierProjection(embedding_size=b.out_ch, scale=cfg.fourier_scale),
            "resnet": resblock,
            "attn": lambda b: layerspp.AttnBlockpp(b.in_ch, skip_rescale=cfg.skip_rescale, init_scale=cfg.init_scale),
            "downsample": resample,
            "upsample": resample,
            "combine": lambda b: layerspp.Combine(b.in_ch, b.out_ch, method=b.method),
        })
        self.all_modules = modules

    def _pyramid_downsample(self, x: jax.Array) -> jax.Array:
        if self.config.fir:
            return ud.downsample_2d(x, self.config.fir_kernel, factor=2)
        return nn.avg_pool(x, (2, 2), strides=(2, 2), padding="VALID")

    def _pyramid_upsample(self, x: jax.Array) -> jax.Array:
        if self.config.fir:
            return ud.upsample_2d(x, self.config.fir_kernel, factor=2)
        return naive_upsample(x, 2)

    def _skip_sum(self, a: jax.Array, b: jax.Array) -> jax.Array:
        return (a + b) / SQRT2 if self.config.skip_rescale else a + b

    def __call__(self, x: jax.Array, labels: jax.Array, train: bool = False) -> jax.Array:
        cfg = self.config
        x, labels = jnp.asarray(x), jnp.asarray(labels)
        check_image_inputs(x, labels, num_channels=cfg.num_channels, factor=cfg.downsampling_factor)
        act = get_act(cfg.nonlinearity)
        biggan = cfg.resblock_type == "biggan"
        modules = self.all_modules
        m = 0
        if cfg.embedding_type == "fourier":
            used_sigmas = labels
            temb = modules[m](jnp.log(labels.astype(jnp.float32)))
            m += 1
        else:
            # score_sde looks sigma up here even without scale_by_sigma: only when needed.
            used_sigmas = jnp.asarray(cfg.sigmas)[labels.astype(jnp.int32)] if cfg.scale_by_sigma else None
            temb = get_timestep_embedding(labels, cfg.nf)
        if cfg.conditional:
            temb = modules[m](temb)
            temb = modules[m + 1](act(temb))
            m += 2
        else:
            temb = None
        if not cfg.centered:
            x = 2 * x - 1.0
        input_pyramid = x if cfg.progressive_input != "none" else None
        hs = [modules[m](x)]
        m += 1
        for level in range(cfg.num_resolutions):
            m = res_attn_stage(modules, m, hs, temb, train, num_blocks=cfg.num_res_blocks,
                               attn=cfg.all_resolutions[level] in cfg.attn_resolutions)
            if level != cfg.num_resolutions - 1:
                h = modules[m](hs[-1], temb, train) if biggan else modules[m](hs[-1])
                m += 1
                if cfg.progressive_input == "input_skip":
                    input_pyramid = self._pyramid_downsample(input_pyramid)
                    h = modules[m](input_pyramid, h)
                    m += 1
                elif cfg.progressive_input == "residual":
                    input_pyramid = self._skip_sum(modules[m](input_pyramid), h)
                    m += 1
                    h = input_pyramid
                hs.append(h)
        h = hs[-1]
        h = modules[m](h, temb, train)
        h = modules[m + 1](h)
        h = modules[m + 2](h, temb, train)
        m += 3
        pyramid = None
        for level in reversed(range(cfg.num_resolutions)):
            for _ in range(cfg.num_res_blocks + 1):
                h = modules[m](jnp.concatenate([h, hs.pop()], axis=-1), temb, train)
                m += 1
            if cfg.all_resolutions[level] in cfg.attn_resolutions:
                h = modules[m](h)
                m += 1
            if cfg.progressive != "none":
                if level == cfg.num_resolutions - 1:
                    pyramid = modules[m + 1](modules[m](h, act=act))
                    m += 2
                elif cfg.progressive == "output_skip":
                    pyramid = self._pyramid_upsample(pyramid)
                    pyramid = pyramid + modules[m + 1](modules[m](h, act=act))
                    m += 2
                else:
                    pyramid = self._skip_sum(modules[m](pyramid), h)
                    m += 1
                    h = pyramid
            if level != 0:
                h = modules[m](h, temb, train) if biggan else modules[m](h)
                m += 1
        assert not hs
        if cfg.progressive == "output_skip":
            h = pyramid
        else:
            h = modules[m + 1](modules[m](h, act=act))
            m += 2
        assert m == len(modules)
        if cfg.scale_by_sigma:
            h = h / jnp.asarray(used_sigmas, h.dtype)[:, None, None, None]
        return h
