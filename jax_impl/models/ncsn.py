"""NCSN v1 score network (Song & Ermon 2019): ``CondRefineNetDilated``, Flax linen NHWC.

Twin: ``torch_ref/models/ncsn.py`` (same public names, PyTorch NCHW).

A RefineNet conditioned on the noise level through conditional InstanceNorm++ in every
block: ``s(x, y) = CondRefineNetDilated(x, y)``, ``y`` the integer index of
``sigma_y`` in the decreasing ladder ``sigma_max -> sigma_min`` (the output is *not*
divided by ``sigma_y``). Layout and parameter names are ermongroup/ncsn's
(= score_sde's ``ncsn``): four residual stages (one mean-pool downsampling, then
dilations 2 and 4 at constant resolution), four conditional refine blocks. Input
``x`` in [0, 1] is mapped to ``2x - 1`` unless ``centered`` (official
``logit_transform``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from jax_impl.models.ncsn_layers import (
    ACTIVATIONS,
    REFINENET_PLANS,
    ConditionalInstanceNorm2dPlus,
    ConditionalResidualBlock,
    CondRefineBlock,
    Conv2d,
    check_inputs,
    get_act,
    lookup_config,
)
from spec.schedules import geometric_sigmas
from spec.validate import check_choice, check_float, check_int

__all__ = ["NCSNConfig", "NCSN_CIFAR10", "NCSN_MNIST", "CondRefineNetDilated", "key_table"]

NORMALIZATIONS = ("InstanceNorm++",)
_PLAN = "ncsnv2_64"  # NCSN v1 shares the stage layout of NCSNv2's 32/64 px network


@dataclasses.dataclass(frozen=True)
class NCSNConfig:
    """Frozen NCSN v1 config (hashable, jit-static); fields follow score_sde's ``config.model``.

    Attributes:
      ngf: base width (ermongroup ``ngf``; score_sde ``nf``).
      num_scales: L, the number of noise levels and embedding rows (``num_classes``).
      sigma_min, sigma_max: ends of the geometric ladder; label 0 is sigma_max.
      normalization: ``"InstanceNorm++"`` (conditional; the official choice).
      nonlinearity: ``"elu"`` (official) or ``"relu" | "lrelu" | "swish"``.
      image_size, num_channels: input ``[B, image_size, image_size, num_channels]``;
        image_size must be even (one 2x2 mean-pool downsampling).
      centered: data already centred (official ``logit_transform``); otherwise x -> 2x - 1.
    """

    ngf: int = 128
    num_scales: int = 10
    sigma_min: float = 0.01
    sigma_max: float = 1.0
    normalization: str = "InstanceNorm++"
    nonlinearity: str = "elu"
    image_size: int = 32
    num_channels: int = 3
    centered: bool = False

    def __post_init__(self):
        object.__setattr__(self, "ngf", check_int("ngf", self.ngf, minimum=2))
        object.__setattr__(self, "num_scales", check_int("num_scales", self.num_scales, minimum=1))
        smin = check_float("sigma_min", self.sigma_min, positive=True)
        smax = check_float("sigma_max", self.sigma_max, positive=True)
        if not smin < smax:
            raise ValueError(f"sigma_min must be < sigma_max, got sigma_min={smin}, sigma_max={smax}")
        object.__setattr__(self, "sigma_min", smin)
        object.__setattr__(self, "sigma_max", smax)
        check_choice("normalization", self.normalization, NORMALIZATIONS)
        check_choice("nonlinearity", str(self.nonlinearity).lower(), ACTIVATIONS)
        object.__setattr__(self, "nonlinearity", str(self.nonlinearity).lower())
        object.__setattr__(self, "image_size", check_int("image_size", self.image_size, minimum=1))
        object.__setattr__(self, "num_channels", check_int("num_channels", self.num_channels, minimum=1))
        if not isinstance(self.centered, (bool, np.bool_)):
            raise TypeError(f"centered must be a bool, got {type(self.centered).__name__}")
        object.__setattr__(self, "centered", bool(self.centered))
        factor = REFINENET_PLANS[_PLAN].down_factor
        if self.image_size % factor:
            raise ValueError(f"image_size={self.image_size} is not divisible by {factor}, the downsampling "
                             "factor of NCSN")

    @property
    def nf(self) -> int:
        """score_sde's name for ``ngf``."""
        return self.ngf

    @property
    def sigmas(self) -> np.ndarray:
        """Geometric noise ladder, float64 ``[num_scales]``, from sigma_max down to sigma_min."""
        return geometric_sigmas(self.sigma_max, self.sigma_min, self.num_scales)

    @classmethod
    def from_ncsn_config(cls, cfg: Any) -> "NCSNConfig":
        """From an ermongroup/ncsn YAML config (``model.{ngf, num_classes, sigma_begin,
        sigma_end}``, ``data.{image_size, channels, logit_transform}``)."""
        return cls(
            ngf=lookup_config(cfg, "model.ngf"),
            num_scales=lookup_config(cfg, "model.num_classes"),
            sigma_min=lookup_config(cfg, "model.sigma_end"),
            sigma_max=lookup_config(cfg, "model.sigma_begin"),
            image_size=lookup_config(cfg, "data.image_size"),
            num_channels=lookup_config(cfg, "data.channels"),
            centered=bool(lookup_config(cfg, "data.logit_transform", False)),
        )


# ermongroup/ncsn configs/anneal.yml: sigmas 1 -> 0.01, L = 10; ngf 128 for CIFAR-10
# (and CelebA), ngf 64 for MNIST (28 px, 1 channel).
NCSN_CIFAR10 = NCSNConfig()
NCSN_MNIST = NCSNConfig(ngf=64, image_size=28, num_channels=1)


class CondRefineNetDilated(nn.Module):
    """NCSN v1, NHWC: ``apply(variables, x [B, H, W, C], y [B] int) -> score [B, H, W, C]``."""

    config: NCSNConfig

    @nn.compact
    def __call__(self, x: jax.Array, y: jax.Array, train: bool = False) -> jax.Array:
        """Score ``[B, H, W, C]`` of ``x [B, H, W, C]`` at integer noise levels ``y [B]``.

        ``train`` is accepted for the uniform model interface; the network has no
        dropout or batch statistics, so it changes nothing.
        """
        del train
        cfg = self.config
        if not isinstance(cfg, NCSNConfig):
            raise TypeError(f"config must be an NCSNConfig, got {type(cfg).__name__}")
        check_inputs(x, y, image_size=cfg.image_size, num_channels=cfg.num_channels, num_scales=cfg.num_scales)
        plan = REFINENET_PLANS[_PLAN]
        L, act_name = cfg.num_scales, cfg.nonlinearity
        h = x if cfg.centered else 2 * x - 1.0
        h = Conv2d(cfg.ngf, 3, 1, name="begin_conv")(h)
        layers = []
        for stage, ch in zip(plan.stages, plan.channels(cfg.ngf)):
            h = ConditionalResidualBlock(ch, L, stage.resample, act_name, stage.dilation, name=f"{stage.name}_0")(h, y)
            h = ConditionalResidualBlock(ch, L, None, act_name, stage.dilation, name=f"{stage.name}_1")(h, y)
            layers.append(h)
        ref = None
        for r in plan.refines(cfg.ngf):
            skip = layers[r.stage_index]
            block = CondRefineBlock(r.in_planes, r.features, L, act_name, r.start, r.end, name=r.name)
            ref = block([skip] if ref is None else [skip, ref], y, skip.shape[1:3])
        h = get_act(act_name)(ConditionalInstanceNorm2dPlus(L, name="normalizer")(ref, y))
        return Conv2d(cfg.num_channels, 3, 1, name="end_conv")(h)


def key_table(config: NCSNConfig) -> tuple:
    """Explicit torch-key <-> flax-path table (``tuple[KeyMap, ...]``) of every NCSN v1 parameter."""
    if not isinstance(config, NCSNConfig):
        raise TypeError(f"config must be an NCSNConfig, got {type(config).__name__}")
    from torch_ref.models.ncsn_layers import refinenet_key_table

    return refinenet_key_table(_PLAN, conditional=True)
