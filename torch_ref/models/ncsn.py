"""NCSN v1 score network (Song & Ermon 2019): ``CondRefineNetDilated``, PyTorch NCHW.

Twin: ``jax_impl/models/ncsn.py`` (same public names, flax NHWC).

A RefineNet conditioned on the noise level through conditional InstanceNorm++ in every
block: ``s(x, y) = CondRefineNetDilated(x, y)``, ``y`` the integer index of
``sigma_y`` in the decreasing ladder ``sigma_max -> sigma_min`` (the output is *not*
divided by ``sigma_y``). Layout and parameter names are ermongroup/ncsn's
(= score_sde's ``ncsn``): four residual stages (one mean-pool downsampling, then
dilations 2 and 4 at constant resolution), four conditional refine blocks. Input
``x`` in [0, 1] is mapped to ``2x - 1`` unless ``centered`` (official
``logit_transform``).

``NCSNConfig`` and its presets are framework-neutral data defined once in
``spec/ncsn_configs.py`` and re-exported here (the twin exports the same objects), as is
``key_table`` (``spec.keytables.ncsn_key_table``: every parameter, torch key <-> flax path).
"""

from __future__ import annotations

import torch
from torch import nn

from spec.ncsn_configs import (  # noqa: F401  (re-exported: the config lives once in spec)
    NCSN_CIFAR10,
    NCSN_MNIST,
    NCSN_PLAN,
    NORMALIZATIONS,
    NCSNConfig,
)
from spec.keytables import ncsn_key_table as key_table  # noqa: F401  (re-exported: the table is data in spec)
from torch_ref.models.ncsn_layers import (
    REFINENET_PLANS,
    ConditionalInstanceNorm2dPlus,
    ConditionalResidualBlock,
    CondRefineBlock,
    check_inputs,
    get_act,
)

__all__ = [
    "NCSNConfig",
    "NCSN_CIFAR10",
    "NCSN_MNIST",
    "NORMALIZATIONS",
    "CondRefineNetDilated",
    "key_table",
]

class CondRefineNetDilated(nn.Module):
    """NCSN v1, NCHW: ``forward(x [B, C, H, W], y [B] int) -> score [B, C, H, W]``."""

    def __init__(self, config: NCSNConfig):
        super().__init__()
        if not isinstance(config, NCSNConfig):
            raise TypeError(f"config must be an NCSNConfig, got {type(config).__name__}")
        self.config = config
        self.plan = plan = REFINENET_PLANS[NCSN_PLAN]
        ngf, L = config.ngf, config.num_scales
        self.act = act = get_act(config.nonlinearity)
        self.begin_conv = nn.Conv2d(config.num_channels, ngf, 3, stride=1, padding=1)
        self.normalizer = ConditionalInstanceNorm2dPlus(ngf, L)
        self.end_conv = nn.Conv2d(ngf, config.num_channels, 3, stride=1, padding=1)
        prev = ngf
        for stage, ch in zip(plan.stages, plan.channels(ngf)):
            setattr(self, stage.name, nn.ModuleList([
                ConditionalResidualBlock(prev, ch, L, resample=stage.resample, act=act, dilation=stage.dilation),
                ConditionalResidualBlock(ch, ch, L, resample=None, act=act, dilation=stage.dilation),
            ]))
            prev = ch
        for r in plan.refines(ngf):
            setattr(self, r.name, CondRefineBlock(list(r.in_planes), r.features, L, act=act, start=r.start, end=r.end))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        check_inputs(x, y, image_size=cfg.image_size, num_channels=cfg.num_channels, num_scales=cfg.num_scales)
        h = x if cfg.centered else 2 * x - 1.0
        h = self.begin_conv(h)
        layers = []
        for stage in self.plan.stages:
            for block in getattr(self, stage.name):
                h = block(h, y)
            layers.append(h)
        ref = None
        for r in self.plan.refines(cfg.ngf):
            skip = layers[r.stage_index]
            ref = getattr(self, r.name)([skip] if ref is None else [skip, ref], y, skip.shape[2:])
        return self.end_conv(self.act(self.normalizer(ref, y)))
