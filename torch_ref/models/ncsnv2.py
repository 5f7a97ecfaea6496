"""NCSNv2 score networks (Song & Ermon 2020), PyTorch NCHW, and official-checkpoint loading.

Twin: ``jax_impl/models/ncsnv2.py`` (same public names, flax NHWC).

``NCSNv2(config)(x, y)`` is the unconditional RefineNet of ermongroup/ncsnv2 whose output
is divided by the noise level of each example: ``s(x, y) = net(x) / sigma_y`` with
``sigma_y = sigmas[y]`` from the ``sigmas`` buffer (float32), so the network need not be
conditioned on ``y``. Three layouts (``config.name``), as score_sde registers them:

* ``"ncsnv2_64"``  -- ``NCSNv2`` (CIFAR-10, CelebA; images below 96 px), 1 downsampling;
* ``"ncsnv2_128"`` -- ``NCSNv2Deeper`` (LSUN, 96-128 px), 2 downsamplings;
* ``"ncsnv2_256"`` -- ``NCSNv2Deepest`` (FFHQ, 129-256 px), 3 downsamplings.

Input convention (official): ``x`` in [0, 1] is mapped to ``2x - 1`` unless the data are
``centered`` (ermongroup: ``logit_transform`` or ``rescaled``).

Dilated residual stages pad by the dilation and keep the resolution, as ermongroup's
code does; score_sde_pytorch's port pads them by 1 and crashes (its issue #48).

``NCSNv2Config`` and ``NCSNV2_CIFAR10`` are framework-neutral data defined once in
``spec/ncsn_configs.py`` and re-exported here (the twin exports the same objects), as is
``key_table`` (``spec.keytables.ncsnv2_key_table``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from spec.ncsn_configs import (  # noqa: F401  (re-exported: the config lives once in spec)
    NCSNV2_CIFAR10,
    NCSNV2_NAMES,
    NORMALIZATIONS,
    SIGMA_DISTS,
    NCSNv2Config,
)
from spec.convert import ncsnv2_state_dict
from spec.keytables import ncsnv2_key_table as key_table  # noqa: F401  (re-exported: the table is data in spec)
from torch_ref.models.ncsn_layers import (
    REFINENET_PLANS,
    InstanceNorm2dPlus,
    RefineBlock,
    ResidualBlock,
    check_inputs,
    get_act,
)

__all__ = [
    "NCSNv2Config",
    "NCSNV2_CIFAR10",
    "NCSNV2_NAMES",
    "NORMALIZATIONS",
    "SIGMA_DISTS",
    "NCSNv2",
    "key_table",
    "from_ncsnv2",
]

class NCSNv2(nn.Module):
    """NCSNv2 RefineNet, NCHW: ``forward(x [B, C, H, W], y [B] int) -> score [B, C, H, W]``.

    ``score = end_conv(act(normalizer(refine(...)))) / sigmas[y]``; parameters and the
    ``sigmas`` buffer carry the official names (``begin_conv``, ``res1.0.normalize1.alpha``,
    ``refine1.adapt_convs.0.1_1_conv.weight``, ...), so an official state_dict loads as is.
    """

    def __init__(self, config: NCSNv2Config):
        super().__init__()
        if not isinstance(config, NCSNv2Config):
            raise TypeError(f"config must be an NCSNv2Config, got {type(config).__name__}")
        self.config = config
        self.plan = plan = REFINENET_PLANS[config.name]
        ngf = config.ngf
        self.act = act = get_act(config.nonlinearity)
        self.register_buffer("sigmas", torch.tensor(config.sigmas, dtype=torch.float32))
        self.begin_conv = nn.Conv2d(config.num_channels, ngf, 3, stride=1, padding=1)
        self.normalizer = InstanceNorm2dPlus(ngf)
        self.end_conv = nn.Conv2d(ngf, config.num_channels, 3, stride=1, padding=1)
        prev = ngf
        for stage, ch in zip(plan.stages, plan.channels(ngf)):
            setattr(self, stage.name, nn.ModuleList([
                ResidualBlock(prev, ch, resample=stage.resample, act=act, dilation=stage.dilation),
                ResidualBlock(ch, ch, resample=None, act=act, dilation=stage.dilation),
            ]))
            prev = ch
        for r in plan.refines(ngf):
            setattr(self, r.name, RefineBlock(list(r.in_planes), r.features, act=act, start=r.start, end=r.end))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        check_inputs(x, y, image_size=cfg.image_size, num_channels=cfg.num_channels, num_scales=cfg.num_scales)
        h = x if cfg.centered else 2 * x - 1.0
        h = self.begin_conv(h)
        layers = []
        for stage in self.plan.stages:
            for block in getattr(self, stage.name):
                h = block(h)
            layers.append(h)
        ref = None
        for r in self.plan.refines(cfg.ngf):
            skip = layers[r.stage_index]
            ref = getattr(self, r.name)([skip] if ref is None else [skip, ref], skip.shape[2:])
        h = self.end_conv(self.act(self.normalizer(ref)))
        used_sigmas = self.sigmas[y].view(x.shape[0], *([1] * (x.ndim - 1)))
        return h / used_sigmas


def from_ncsnv2(checkpoint: Any, config: Any, *, weights: str | None = None) -> NCSNv2:
    """An ``NCSNv2`` module (eval mode, NCHW) with the weights of an ermongroup/ncsnv2
    checkpoint (a ``.pth`` / ``.npz`` / ``.safetensors`` path, the list a ``.pth`` holds,
    or a bare state_dict); validated by ``spec.convert.ncsnv2_state_dict``, which names
    every missing, unexpected, mis-shaped or non-finite key and checks ``sigmas``."""
    cfg = config if isinstance(config, NCSNv2Config) else NCSNv2Config.from_ncsnv2_config(config)
    state = ncsnv2_state_dict(checkpoint, cfg, weights=weights)
    model = NCSNv2(cfg)
    model.load_state_dict({k: torch.from_numpy(np.array(v, copy=True)) for k, v in state.items()}, strict=True)
    return model.eval()
