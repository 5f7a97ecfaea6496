"""The DDPM U-Net (Ho et al. 2020) as ported by score_sde (model name ``ddpm``), PyTorch, NCHW.

Twin: ``jax_impl/models/ddpm.py`` (NHWC). Config: ``spec.model_configs.DDPMConfig``.

Module layout, attribute names and registration order are score_sde_pytorch's
(``sigmas`` buffer, then ``all_modules.{i}``), so an official state_dict loads key for key
and ``parameters()`` is in the order of score_sde's EMA ``shadow_params``:

- conditional: ``Linear(nf -> 4nf)``, ``Linear(4nf -> 4nf)`` on the sinusoidal embedding
  of the label (float32);
- ``conv3x3(C -> nf)`` on ``x`` (or ``2x - 1`` unless ``centered``);
- down path, per level: ``num_res_blocks`` x (ResnetBlockDDPM [+ AttnBlock]), then
  Downsample except at the last level; middle: Resnet, Attn, Resnet;
- up path, per level: ``num_res_blocks + 1`` x ResnetBlockDDPM on ``cat(h, skip)``, ONE
  AttnBlock, Upsample except at level 0;
- GroupNorm(32), act, ``conv3x3(-> C)`` (``-> 2C``, eps then v, with improved-diffusion's
  ``learn_sigma``); ``scale_by_sigma`` divides by ``sigmas[label]``
  (cast to the output dtype; score_sde divides by the float64 buffer and so returns
  float64 there).

Attention is placed by level, from the config (see the twin's docstring). The modules
are built from ``spec.unet_plans.ddpm_plan(config)``, the layout the twin and the key
table walk too.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from spec.model_configs import DDPMConfig
from spec.unet_plans import ddpm_plan
from torch_ref.models.layers import (
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

__all__ = [
    "DDPM",
    "DDPMConfig",
]


class DDPM(nn.Module):
    """``forward(x [B, C, H, W], labels [B]) -> [B, C, H, W]`` (``[B, 2C, H, W]`` with
    ``config.learn_sigma``)."""

    def __init__(self, config: DDPMConfig):
        super().__init__()
        if not isinstance(config, DDPMConfig):
            raise TypeError(f"config must be a DDPMConfig, got {type(config).__name__}")
        self.config = cfg = config
        self.act = get_act(cfg.nonlinearity)
        self.register_buffer("sigmas", torch.as_tensor(cfg.sigmas))
        temb_dim = 4 * cfg.nf

        modules = plan_modules(ddpm_plan(cfg), {
            "resnet": lambda b: ResnetBlockDDPM(cfg.nonlinearity, b.in_ch, b.out_ch, temb_dim=temb_dim,
                                                dropout=cfg.dropout),
            "attn": lambda b: AttnBlock(b.in_ch),
            "downsample": lambda b: Downsample(b.in_ch, with_conv=b.with_conv),
            "upsample": lambda b: Upsample(b.in_ch, with_conv=b.with_conv),
        })
        self.all_modules = nn.ModuleList(modules)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        labels = torch.as_tensor(labels, device=x.device)
        check_image_inputs(x, labels, num_channels=cfg.num_channels, factor=cfg.downsampling_factor)
        modules = self.all_modules
        m = 0
        temb = None
        if cfg.conditional:
            temb = get_timestep_embedding(labels, cfg.nf).to(modules[0].weight.dtype)
            temb = modules[m](temb)
            temb = modules[m + 1](self.act(temb))
            m += 2
        h = x if cfg.centered else 2 * x - 1.0
        hs = [modules[m](h)]
        m += 1
        for level in range(cfg.num_resolutions):
            m = res_attn_stage(modules, m, hs, temb, num_blocks=cfg.num_res_blocks,
                               attn=cfg.all_resolutions[level] in cfg.attn_resolutions)
            if level != cfg.num_resolutions - 1:
                hs.append(modules[m](hs[-1]))
                m += 1
        h = hs[-1]
        h = modules[m](h, temb)
        h = modules[m + 1](h)
        h = modules[m + 2](h, temb)
        m += 3
        for level in reversed(range(cfg.num_resolutions)):
            for _ in range(cfg.num_res_blocks + 1):
                h = modules[m](torch.cat([h, hs.pop()], dim=1), temb)
                m += 1
            if cfg.all_resolutions[level] in cfg.attn_resolutions:
                h = modules[m](h)
                m += 1
            if level != 0:
                h = modules[m](h)
                m += 1
        assert not hs
        h = self.act(modules[m](h))
        h = modules[m + 1](h)
        m += 2
        assert m == len(modules)
        if cfg.scale_by_sigma:
            used_sigmas = self.sigmas.to(h.dtype)[labels.long()]
            h = h / used_sigmas[:, None, None, None]
        return h
