"""NCSN++ / DDPM++ (Song et al. 2021; score_sde model name ``ncsnpp``), PyTorch, NCHW.

Twin: ``jax_impl/models/ncsnpp.py`` (NHWC; its docstring lists the module order).
Config: ``spec.model_configs.NCSNppConfig``.

Attribute names and registration order are score_sde_pytorch's (``sigmas`` buffer, then
``all_modules.{i}``), so official state_dicts load key for key and ``parameters()`` is
in the order of score_sde's EMA ``shadow_params``. The Fourier projection ``W`` is a
frozen parameter (``requires_grad=False``). The parameter-free pyramid resamplers of
``output_skip`` / ``input_skip`` are plain function calls (score_sde_pytorch keeps them
outside ``all_modules`` too). ``scale_by_sigma`` divides by the used sigma cast to the
output dtype.

The modules are built from ``spec.unet_plans.ncsnpp_plan(config)``, the layout data the
twin and the checkpoint key table walk too; the forward pass consumes them in plan order.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from spec.model_configs import NCSNppConfig
from spec.unet_plans import ncsnpp_plan
from torch_ref.models import layerspp
from torch_ref.models import up_or_down_sampling as ud
from torch_ref.models.layers import (
    check_image_inputs,
    get_act,
    get_timestep_embedding,
    plan_modules,
    res_attn_stage,
)

__all__ = [
    "NCSNpp",
    "NCSNppConfig",
]

SQRT2 = layerspp.SQRT2


class NCSNpp(nn.Module):
    """``forward(x [B, C, H, W], labels [B]) -> [B, C, H, W]``."""

    def __init__(self, config: NCSNppConfig):
        super().__init__()
        if not isinstance(config, NCSNppConfig):
            raise TypeError(f"config must be an NCSNppConfig, got {type(config).__name__}")
        self.config = cfg = config
        self.act = get_act(cfg.nonlinearity)
        self.register_buffer("sigmas", torch.as_tensor(cfg.sigmas))
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
        self.all_modules = nn.ModuleList(modules)

    def _pyramid_downsample(self, x: torch.Tensor) -> torch.Tensor:
        if self.config.fir:
            return ud.downsample_2d(x, self.config.fir_kernel, factor=2)
        return F.avg_pool2d(x, kernel_size=2, stride=2)

    def _pyramid_upsample(self, x: torch.Tensor) -> torch.Tensor:
        if self.config.fir:
            return ud.upsample_2d(x, self.config.fir_kernel, factor=2)
        _, _, H, W = x.shape
        return F.interpolate(x, (2 * H, 2 * W), mode="nearest")

    def _skip_sum(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a + b) / SQRT2 if self.config.skip_rescale else a + b

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        labels = torch.as_tensor(labels, device=x.device)
        check_image_inputs(x, labels, num_channels=cfg.num_channels, factor=cfg.downsampling_factor)
        biggan = cfg.resblock_type == "biggan"
        modules = self.all_modules
        m = 0
        if cfg.embedding_type == "fourier":
            used_sigmas = labels
            temb = modules[m](torch.log(labels.to(torch.float32)))
            m += 1
        else:
            # score_sde looks sigma up here even without scale_by_sigma: only when needed.
            used_sigmas = self.sigmas[labels.long()] if cfg.scale_by_sigma else None
            temb = get_timestep_embedding(labels, cfg.nf)
        if cfg.conditional:
            temb = temb.to(modules[m].weight.dtype)
            temb = modules[m](temb)
            temb = modules[m + 1](self.act(temb))
            m += 2
        else:
            temb = None
        if not cfg.centered:
            x = 2 * x - 1.0
        input_pyramid = x if cfg.progressive_input != "none" else None
        hs = [modules[m](x)]
        m += 1
        for level in range(cfg.num_resolutions):
            m = res_attn_stage(modules, m, hs, temb, num_blocks=cfg.num_res_blocks,
                               attn=cfg.all_resolutions[level] in cfg.attn_resolutions)
            if level != cfg.num_resolutions - 1:
                h = modules[m](hs[-1], temb) if biggan else modules[m](hs[-1])
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
        h = modules[m](h, temb)
        h = modules[m + 1](h)
        h = modules[m + 2](h, temb)
        m += 3
        pyramid = None
        for level in reversed(range(cfg.num_resolutions)):
            for _ in range(cfg.num_res_blocks + 1):
                h = modules[m](torch.cat([h, hs.pop()], dim=1), temb)
                m += 1
            if cfg.all_resolutions[level] in cfg.attn_resolutions:
                h = modules[m](h)
                m += 1
            if cfg.progressive != "none":
                if level == cfg.num_resolutions - 1:
                    pyramid = modules[m + 1](self.act(modules[m](h)))
                    m += 2
                elif cfg.progressive == "output_skip":
                    pyramid = self._pyramid_upsample(pyramid)
                    pyramid = pyramid + modules[m + 1](self.act(modules[m](h)))
                    m += 2
                else:
                    pyramid = self._skip_sum(modules[m](pyramid), h)
                    m += 1
                    h = pyramid
            if level != 0:
                h = modules[m](h, temb) if biggan else modules[m](h)
                m += 1
        assert not hs
        if cfg.progressive == "output_skip":
            h = pyramid
        else:
            h = modules[m + 1](self.act(modules[m](h)))
            m += 2
        assert m == len(modules)
        if cfg.scale_by_sigma:
            h = h / used_sigmas.to(h.dtype)[:, None, None, None]
        return h
