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

``NCSNConfig`` and its presets are framework-neutral data defined once in
``spec/ncsn_configs.py`` and re-exported here (the twin exports the same objects), as is
``key_table`` (``spec.keytables.ncsn_key_table``: every parameter, torch key <-> flax path).
"""

from __future__ import annotations

import flax.linen as nn
import jax

from jax_impl.models.ncsn_layers import (
    REFINENET_PLANS,
    ConditionalInstanceNorm2dPlus,
    ConditionalResidualBlock,
    CondRefineBlock,
    Conv2d,
    check_inputs,
    get_act,
)
from spec.keytables import ncsn_key_table as key_table  # noqa: F401  (re-exported: the table is data in spec)
from spec.ncsn_configs import (  # noqa: F401  (re-exported: the config lives once in spec)
    NCSN_CIFAR10,
    NCSN_MNIST,
    NCSN_PLAN,
    NORMALIZATIONS,
    NCSNConfig,
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
        plan = REFINENET_PLANS[NCSN_PLAN]
        L, act_name = cfg.num_scales, cfg.nonlinearity
        h = x if cfg.centered else 2 * x - 1.0
        h = Conv2d(cfg.ngf, 3, 1, name="begin_conv")(h)
        layers = []
        prev = cfg.ngf
        for stage, ch in zip(plan.stages, plan.channels(cfg.ngf)):
            h = ConditionalResidualBlock(prev, ch, L, stage.resample, act_name, stage.dilation,
                                         name=f"{stage.name}_0")(h, y)
            h = ConditionalResidualBlock(ch, ch, L, None, act_name, stage.dilation, name=f"{stage.name}_1")(h, y)
            layers.append(h)
            prev = ch
        ref = None
        for r in plan.refines(cfg.ngf):
            skip = layers[r.stage_index]
            block = CondRefineBlock(r.in_planes, r.features, L, act_name, r.start, r.end, name=r.name)
            ref = block([skip] if ref is None else [skip, ref], y, skip.shape[1:3])
        h = get_act(act_name)(ConditionalInstanceNorm2dPlus(cfg.ngf, L, name="normalizer")(ref, y))
        return Conv2d(cfg.num_channels, 3, 1, name="end_conv")(h)
