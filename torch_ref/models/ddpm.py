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
  AttnBlock at attention levels (``up_attention="per_level"``) or one after EVERY res
  block there (``"per_block"``, the TF original / diffusers), Upsample except at level 0;
- GroupNorm(32), act, ``conv3x3(-> C)`` (``-> 2C``, eps then v, with improved-diffusion's
  ``learn_sigma``); ``scale_by_sigma`` divides by ``sigmas[label]``
  (cast to the output dtype; score_sde divides by the float64 buffer and so returns
  float64 there).

Attention is placed by level, from the config (see the twin's docstring); the label
embedding is ``timestep_embedding`` (score_sde's by default, diffusers' ``flip_sin_to_cos``
/ ``freq_shift`` options). The modules are built from
``spec.diffusers_format.ddpm_layout_plan(config)`` (``spec.unet_plans.ddpm_plan`` with
``up_attention`` applied), the layout the twin and the key tables walk too. Diffusers'
``UNet2DModel`` directories load with ``torch_ref.diffusers_format.from_diffusers``.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from spec.diffusers_format import ddpm_layout_plan
from spec.model_configs import DDPMConfig
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
    "timestep_embedding",
]


def timestep_embedding(labels: torch.Tensor, embedding_dim: int, *, flip_sin_to_cos: bool = False,
                       freq_shift: int = 1) -> torch.Tensor:
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
    labels = torch.as_tensor(labels)
    if labels.ndim != 1:
        raise ValueError(f"timesteps must have shape [B], got shape {tuple(labels.shape)}")
    half = embedding_dim // 2
    if embedding_dim < 4 or not 0 <= freq_shift < half:
        raise ValueError(f"timestep_embedding: need embedding_dim >= 4 and 0 <= freq_shift < embedding_dim // 2, "
                         f"got embedding_dim={embedding_dim}, freq_shift={freq_shift}")
    rate = math.log(10000) / (half - freq_shift)
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=labels.device) * -rate)
    args = labels.to(torch.float32)[:, None] * freqs[None, :]
    parts = [torch.cos(args), torch.sin(args)] if flip_sin_to_cos else [torch.sin(args), torch.cos(args)]
    emb = torch.cat(parts, dim=1)
    if embedding_dim % 2 == 1:
        emb = F.pad(emb, (0, 1))
    return emb


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

        modules = plan_modules(ddpm_layout_plan(cfg), {
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
            temb = timestep_embedding(labels, cfg.nf, flip_sin_to_cos=cfg.flip_sin_to_cos,
                                      freq_shift=cfg.freq_shift).to(modules[0].weight.dtype)
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
        per_block = cfg.up_attention == "per_block"
        for level in reversed(range(cfg.num_resolutions)):
            attn = cfg.all_resolutions[level] in cfg.attn_resolutions
            for _ in range(cfg.num_res_blocks + 1):
                h = modules[m](torch.cat([h, hs.pop()], dim=1), temb)
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
        h = self.act(modules[m](h))
        h = modules[m + 1](h)
        m += 2
        assert m == len(modules)
        if cfg.scale_by_sigma:
            used_sigmas = self.sigmas.to(h.dtype)[labels.long()]
            h = h / used_sigmas[:, None, None, None]
        return h
