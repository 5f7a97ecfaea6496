"""NCSNv2 score networks (Song & Ermon 2020), Flax linen NHWC, and official-checkpoint loading.

Twin: ``torch_ref/models/ncsnv2.py`` (same public names, PyTorch NCHW).

``NCSNv2(config).apply(variables, x, y)`` is the unconditional RefineNet of
ermongroup/ncsnv2 whose output is divided by the noise level of each example:
``s(x, y) = net(x) / sigma_y``, ``sigma_y = sigmas[y]`` (float32) with ``y`` the integer
index into the decreasing ladder ``config.sigmas`` (label 0 is sigma_max). Three
layouts (``config.name``), as score_sde registers them:

* ``"ncsnv2_64"``  -- ``NCSNv2`` (CIFAR-10, CelebA; images below 96 px), 1 downsampling;
* ``"ncsnv2_128"`` -- ``NCSNv2Deeper`` (LSUN, 96-128 px), 2 downsamplings;
* ``"ncsnv2_256"`` -- ``NCSNv2Deepest`` (FFHQ, 129-256 px), 3 downsamplings.

Input convention (official): ``x`` in [0, 1] is mapped to ``2x - 1`` unless ``centered``.

The torch model keeps the official ``sigmas`` buffer in its state_dict; the flax model
computes the same float32 ladder from ``config`` (as score_sde's JAX code does), so its
variables hold parameters only (``{"params": ...}``). Dilated residual stages pad by the
dilation and keep the resolution, as ermongroup's code does (score_sde_pytorch's port
pads them by 1 and crashes, its issue #48).

``NCSNv2Config`` and ``NCSNV2_CIFAR10`` are framework-neutral data defined once in
``spec/ncsn_configs.py`` and re-exported here (the twin exports the same objects), as is
``key_table`` (``spec.keytables.ncsnv2_key_table``).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jax_impl.models.ncsn_layers import (
    REFINENET_PLANS,
    Conv2d,
    InstanceNorm2dPlus,
    RefineBlock,
    ResidualBlock,
    check_inputs,
    get_act,
    take_rows,
)
from jax_impl.utils import append_dims
from spec.convert import ncsnv2_state_dict, torch_to_flax
from spec.keytables import ncsnv2_key_table as key_table  # noqa: F401  (re-exported: the table is data in spec)
from spec.ncsn_configs import (  # noqa: F401  (re-exported: the config lives once in spec)
    NCSNV2_CIFAR10,
    NCSNV2_NAMES,
    NORMALIZATIONS,
    SIGMA_DISTS,
    NCSNv2Config,
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
    """NCSNv2 RefineNet, NHWC: ``apply(variables, x [B, H, W, C], y [B] int) -> score``.

    ``score = end_conv(act(normalizer(refine(...)))) / sigmas[y]``. Submodules carry the
    official names (``begin_conv``, ``res1_0/normalize1/alpha``,
    ``refine1/adapt_convs_0/1_1_conv/kernel``, ...); see ``key_table``.
    """

    config: NCSNv2Config

    @nn.compact
    def __call__(self, x: jax.Array, y: jax.Array, train: bool = False) -> jax.Array:
        """Score ``[B, H, W, C]`` of ``x [B, H, W, C]`` at integer noise levels ``y [B]``.

        ``train`` is accepted for the uniform model interface; the network has no
        dropout or batch statistics, so it changes nothing.
        """
        del train
        cfg = self.config
        if not isinstance(cfg, NCSNv2Config):
            raise TypeError(f"config must be an NCSNv2Config, got {type(cfg).__name__}")
        check_inputs(x, y, image_size=cfg.image_size, num_channels=cfg.num_channels, num_scales=cfg.num_scales)
        plan = REFINENET_PLANS[cfg.name]
        act_name = cfg.nonlinearity
        h = x if cfg.centered else 2 * x - 1.0
        h = Conv2d(cfg.ngf, 3, 1, name="begin_conv")(h)
        layers = []
        prev = cfg.ngf
        for stage, ch in zip(plan.stages, plan.channels(cfg.ngf)):
            h = ResidualBlock(prev, ch, stage.resample, act_name, stage.dilation, name=f"{stage.name}_0")(h)
            h = ResidualBlock(ch, ch, None, act_name, stage.dilation, name=f"{stage.name}_1")(h)
            layers.append(h)
            prev = ch
        ref = None
        for r in plan.refines(cfg.ngf):
            skip = layers[r.stage_index]
            block = RefineBlock(r.in_planes, r.features, act_name, r.start, r.end, name=r.name)
            ref = block([skip] if ref is None else [skip, ref], skip.shape[1:3])
        h = get_act(act_name)(InstanceNorm2dPlus(cfg.ngf, name="normalizer")(ref))
        h = Conv2d(cfg.num_channels, 3, 1, name="end_conv")(h)
        used_sigmas = take_rows(jnp.asarray(cfg.sigmas, jnp.float32), y)
        return h / append_dims(used_sigmas, h.ndim)


def from_ncsnv2(checkpoint: Any, config: Any, *, weights: str | None = None) -> tuple[NCSNv2, dict]:
    """``(model, variables)`` from an ermongroup/ncsnv2 checkpoint, with
    ``model.apply(variables, x_nhwc, y)`` equal to the official model's output. No torch
    is needed unless ``checkpoint`` is a ``.pth`` file.

    Args:
      checkpoint: a path (``checkpoint_*.pth``, or ``.npz`` / ``.safetensors`` in the
        layout of ``spec.checkpoints``); the list a ``.pth`` holds, ``[model_state,
        optimizer_state, epoch, step(, ema_state)]`` (keys prefixed ``module.``); or a
        bare state_dict.
      config: the run's YAML config as a nested dict, or an ``NCSNv2Config``.
      weights: ``"ema"``, ``"raw"`` or None (EMA when the checkpoint holds it); see
        ``spec.convert.ncsnv2_state_dict``, which validates every key, shape, dtype and
        value and checks the ``sigmas`` buffer against the config.

    Returns:
      the flax ``NCSNv2`` module and ``{"params": ...}`` (float32 ``jax.Array`` leaves).
    """
    cfg = config if isinstance(config, NCSNv2Config) else NCSNv2Config.from_ncsnv2_config(config)
    state = ncsnv2_state_dict(checkpoint, cfg, weights=weights)
    model = NCSNv2(cfg)
    x = jax.ShapeDtypeStruct((1, cfg.image_size, cfg.image_size, cfg.num_channels), jnp.float32)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), x, jax.ShapeDtypeStruct((1,), jnp.int32))
    variables = torch_to_flax(state, key_table(cfg), flax_shapes=shapes, ignore=("sigmas",), dtype=np.float32)
    return model, jax.tree.map(jnp.asarray, variables)
