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
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jax_impl.models.ncsn_layers import (
    ACTIVATIONS,
    REFINENET_PLANS,
    Conv2d,
    InstanceNorm2dPlus,
    RefineBlock,
    ResidualBlock,
    check_inputs,
    get_act,
    lookup_config,
    take_rows,
)
from jax_impl.utils import append_dims
from spec.schedules import geometric_sigmas
from spec.validate import check_choice, check_float, check_int

__all__ = [
    "NCSNv2Config",
    "NCSNV2_CIFAR10",
    "NCSNv2",
    "key_table",
    "from_ncsnv2",
]

NCSNV2_NAMES = ("ncsnv2_64", "ncsnv2_128", "ncsnv2_256")
SIGMA_DISTS = ("geometric", "uniform")
NORMALIZATIONS = ("InstanceNorm++",)
# ermongroup/ncsnv2 runners/ncsn_runner.py ``get_model``: dataset -> architecture.
_DATASET_ARCH = {"CIFAR10": "ncsnv2_64", "CELEBA": "ncsnv2_64", "LSUN": "ncsnv2_128", "FFHQ": "ncsnv2_256"}


def _arch_for_image_size(image_size: int) -> str:
    """score_sde ``ncsnv2.get_network``: < 96 px, 96-128 px, 129-256 px."""
    if image_size < 96:
        return "ncsnv2_64"
    if image_size <= 128:
        return "ncsnv2_128"
    if image_size <= 256:
        return "ncsnv2_256"
    raise ValueError(f"no NCSNv2 layout for image_size={image_size} (the official ones cover up to 256 px)")


@dataclasses.dataclass(frozen=True)
class NCSNv2Config:
    """Frozen NCSNv2 config (hashable, jit-static); fields follow score_sde's ``config.model``.

    Attributes:
      name: layout, ``"ncsnv2_64" | "ncsnv2_128" | "ncsnv2_256"``.
      ngf: base width (score_sde ``nf``).
      num_scales: L, the number of noise levels (ermongroup ``num_classes``).
      sigma_min, sigma_max: ends of the noise ladder; ``sigmas[0] = sigma_max``.
      sigma_dist: ``"geometric"`` (default) or ``"uniform"`` spacing of the ladder.
      normalization: ``"InstanceNorm++"`` (the only one the official configs use).
      nonlinearity: ``"elu" | "relu" | "lrelu" | "swish"``.
      image_size, num_channels: input ``[B, image_size, image_size, num_channels]``.
      centered: data already in [-1, 1]; otherwise the network maps x to 2x - 1.
    """

    name: str = "ncsnv2_64"
    ngf: int = 128
    num_scales: int = 232
    sigma_min: float = 0.01
    sigma_max: float = 50.0
    sigma_dist: str = "geometric"
    normalization: str = "InstanceNorm++"
    nonlinearity: str = "elu"
    image_size: int = 32
    num_channels: int = 3
    centered: bool = False

    def __post_init__(self):
        check_choice("name", self.name, NCSNV2_NAMES)
        # InstanceNorm++ takes an unbiased variance over channels: at least 2 of them.
        object.__setattr__(self, "ngf", check_int("ngf", self.ngf, minimum=2))
        object.__setattr__(self, "num_scales", check_int("num_scales", self.num_scales, minimum=1))
        smin = check_float("sigma_min", self.sigma_min, positive=True)
        smax = check_float("sigma_max", self.sigma_max, positive=True)
        if not smin < smax:
            raise ValueError(f"sigma_min must be < sigma_max, got sigma_min={smin}, sigma_max={smax}")
        object.__setattr__(self, "sigma_min", smin)
        object.__setattr__(self, "sigma_max", smax)
        check_choice("sigma_dist", self.sigma_dist, SIGMA_DISTS)
        check_choice("normalization", self.normalization, NORMALIZATIONS)
        check_choice("nonlinearity", str(self.nonlinearity).lower(), ACTIVATIONS)
        object.__setattr__(self, "nonlinearity", str(self.nonlinearity).lower())
        object.__setattr__(self, "image_size", check_int("image_size", self.image_size, minimum=1))
        object.__setattr__(self, "num_channels", check_int("num_channels", self.num_channels, minimum=1))
        if not isinstance(self.centered, (bool, np.bool_)):
            raise TypeError(f"centered must be a bool, got {type(self.centered).__name__}")
        object.__setattr__(self, "centered", bool(self.centered))
        factor = REFINENET_PLANS[self.name].down_factor
        if self.image_size % factor:
            raise ValueError(f"image_size={self.image_size} is not divisible by {factor}, the downsampling "
                             f"factor of {self.name!r}")

    @property
    def nf(self) -> int:
        """score_sde's name for ``ngf``."""
        return self.ngf

    @property
    def sigmas(self) -> np.ndarray:
        """The noise ladder, float64 ``[num_scales]``, decreasing from sigma_max to sigma_min."""
        if self.sigma_dist == "geometric":
            return geometric_sigmas(self.sigma_max, self.sigma_min, self.num_scales)
        return np.linspace(self.sigma_max, self.sigma_min, self.num_scales, dtype=np.float64)

    @classmethod
    def from_ncsnv2_config(cls, cfg: Any) -> "NCSNv2Config":
        """From an ermongroup/ncsnv2 YAML config (nested dict or namespace).

        Uses ``model.{ngf, num_classes, sigma_begin, sigma_end, sigma_dist, normalization,
        nonlinearity, spec_norm}`` and ``data.{dataset, image_size, channels,
        logit_transform, rescaled}``; the layout follows the official ``get_model``
        (CIFAR10/CELEBA, LSUN, FFHQ), other datasets score_sde's image-size rule.
        """
        if lookup_config(cfg, "model.spec_norm", False):
            raise ValueError("model.spec_norm=True (spectrally normalised convolutions) is not supported")
        image_size = int(lookup_config(cfg, "data.image_size"))
        dataset = lookup_config(cfg, "data.dataset", None)
        name = _DATASET_ARCH.get(str(dataset).upper(), None) if dataset is not None else None
        centered = (bool(lookup_config(cfg, "data.logit_transform", False))
                    or bool(lookup_config(cfg, "data.rescaled", False)))
        return cls(
            name=name or _arch_for_image_size(image_size),
            ngf=lookup_config(cfg, "model.ngf"),
            num_scales=lookup_config(cfg, "model.num_classes"),
            sigma_min=lookup_config(cfg, "model.sigma_end"),
            sigma_max=lookup_config(cfg, "model.sigma_begin"),
            sigma_dist=lookup_config(cfg, "model.sigma_dist", "geometric"),
            normalization=lookup_config(cfg, "model.normalization", "InstanceNorm++"),
            nonlinearity=lookup_config(cfg, "model.nonlinearity", "elu"),
            image_size=image_size,
            num_channels=lookup_config(cfg, "data.channels"),
            centered=centered,
        )

    @classmethod
    def from_score_sde_config(cls, cfg: Any) -> "NCSNv2Config":
        """From a score_sde config (``config.to_dict()`` or the ConfigDict) of an ncsnv2 model."""
        return cls(
            name=lookup_config(cfg, "model.name"),
            ngf=lookup_config(cfg, "model.nf"),
            num_scales=lookup_config(cfg, "model.num_scales"),
            sigma_min=lookup_config(cfg, "model.sigma_min"),
            sigma_max=lookup_config(cfg, "model.sigma_max"),
            normalization=lookup_config(cfg, "model.normalization", "InstanceNorm++"),
            nonlinearity=lookup_config(cfg, "model.nonlinearity", "elu"),
            image_size=lookup_config(cfg, "data.image_size"),
            num_channels=lookup_config(cfg, "data.num_channels"),
            centered=lookup_config(cfg, "data.centered", False),
        )


# score_sde configs/ve/ncsnv2/cifar10.py (= ermongroup/ncsnv2 configs/cifar10.yml):
# nf 128, 232 geometric sigmas 50 -> 0.01, InstanceNorm++, ELU; 29,694,083 parameters.
NCSNV2_CIFAR10 = NCSNv2Config()


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
        for stage, ch in zip(plan.stages, plan.channels(cfg.ngf)):
            h = ResidualBlock(ch, stage.resample, act_name, stage.dilation, name=f"{stage.name}_0")(h)
            h = ResidualBlock(ch, None, act_name, stage.dilation, name=f"{stage.name}_1")(h)
            layers.append(h)
        ref = None
        for r in plan.refines(cfg.ngf):
            skip = layers[r.stage_index]
            block = RefineBlock(r.in_planes, r.features, act_name, r.start, r.end, name=r.name)
            ref = block([skip] if ref is None else [skip, ref], skip.shape[1:3])
        h = get_act(act_name)(InstanceNorm2dPlus(name="normalizer")(ref))
        h = Conv2d(cfg.num_channels, 3, 1, name="end_conv")(h)
        used_sigmas = take_rows(jnp.asarray(cfg.sigmas, jnp.float32), y)
        return h / append_dims(used_sigmas, h.ndim)


def key_table(config: NCSNv2Config) -> tuple:
    """Explicit torch-key <-> flax-path table (``tuple[KeyMap, ...]``) of every NCSNv2
    parameter; the torch ``sigmas`` buffer is not listed (the flax model computes it)."""
    if not isinstance(config, NCSNv2Config):
        raise TypeError(f"config must be an NCSNv2Config, got {type(config).__name__}")
    from torch_ref.models.ncsn_layers import refinenet_key_table

    return refinenet_key_table(config.name, conditional=False)


def _variable_shapes(model: nn.Module, config) -> Any:
    """``jax.eval_shape`` of ``model.init`` (no allocation)."""
    x = jax.ShapeDtypeStruct((1, config.image_size, config.image_size, config.num_channels), jnp.float32)
    y = jax.ShapeDtypeStruct((1,), jnp.int32)
    return jax.eval_shape(model.init, jax.random.PRNGKey(0), x, y)


def from_ncsnv2(checkpoint: Any, config: Any, *, weights: str | None = None) -> tuple[NCSNv2, dict]:
    """``(model, variables)`` from an ermongroup/ncsnv2 checkpoint, with
    ``model.apply(variables, x_nhwc, y)`` equal to the official model's output.

    Args:
      checkpoint: a path to ``checkpoint_*.pth``; the list it holds,
        ``[model_state, optimizer_state, epoch, step(, ema_state)]`` (keys prefixed
        ``module.``); or a bare state_dict.
      config: the run's YAML config as a nested dict, or an ``NCSNv2Config``.
      weights: ``"ema"``, ``"raw"`` or None (EMA when the checkpoint holds it); see
        ``torch_ref.models.ncsnv2.ncsnv2_state_dict``, which validates every key and shape
        and checks the ``sigmas`` buffer against the config.

    Returns:
      the flax ``NCSNv2`` module and ``{"params": ...}`` (float32 ``jax.Array`` leaves).
    """
    from torch_ref.convert import torch_to_flax
    from torch_ref.models import ncsnv2 as torch_ncsnv2

    cfg = config if isinstance(config, NCSNv2Config) else NCSNv2Config.from_ncsnv2_config(config)
    state = torch_ncsnv2.ncsnv2_state_dict(
        checkpoint, torch_ncsnv2.NCSNv2Config(**dataclasses.asdict(cfg)), weights=weights)
    model = NCSNv2(cfg)
    variables = torch_to_flax(state, key_table(cfg), flax_shapes=_variable_shapes(model, cfg),
                              ignore=("sigmas",), dtype=np.float32)
    return model, jax.tree.map(jnp.asarray, variables)
