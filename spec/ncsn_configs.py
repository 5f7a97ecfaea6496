"""Frozen configs and layout tables of the NCSN (RefineNet) score networks: NCSN v1 and NCSNv2.

Framework-neutral data (numpy + stdlib only), shared by ``jax_impl.models`` and
``torch_ref.models``: ``models/ncsn.py``, ``models/ncsnv2.py`` and ``models/ncsn_layers.py``
on each side re-export these names, so ``jax_impl.models.ncsnv2.NCSNv2Config`` *is*
``torch_ref.models.ncsnv2.NCSNv2Config``. The layers and forward passes stay written
separately on each side.

* ``NCSNConfig`` (+ ``NCSN_CIFAR10``, ``NCSN_MNIST``): NCSN v1 (Song & Ermon 2019,
  ermongroup/ncsn ``CondRefineNetDilated``), fields after score_sde's ``config.model``.
* ``NCSNv2Config`` (+ ``NCSNV2_CIFAR10``): NCSNv2 (Song & Ermon 2020, ermongroup/ncsnv2),
  layouts ``"ncsnv2_64" | "ncsnv2_128" | "ncsnv2_256"`` as score_sde registers them.
* ``Stage``, ``Refine``, ``RefineNetPlan``, ``REFINENET_PLANS``: the stage layout of each
  RefineNet (widths, resampling, dilations, refine-block wiring), from which both sides
  build their modules and ``torch_ref`` its checkpoint key table.
* ``lookup_config``: reads ``"model.ngf"`` from nested dicts or namespaces (official
  YAML / ml_collections configs).

Configs validate themselves at construction (a bad field raises ``TypeError`` /
``ValueError`` naming it), are hashable and can be ``jax.jit`` static arguments.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np

from spec.schedules import geometric_sigmas
from spec.validate import check_choice, check_float, check_int

ACTIVATIONS = ("elu", "relu", "lrelu", "swish")
#: epsilon of InstanceNorm++ (both variances), as ``nn.InstanceNorm2d``'s default.
INSTANCE_NORM_EPS = 1e-5
NORMALIZATIONS = ("InstanceNorm++",)
NCSNV2_NAMES = ("ncsnv2_64", "ncsnv2_128", "ncsnv2_256")
SIGMA_DISTS = ("geometric", "uniform")
#: NCSN v1 shares the stage layout of NCSNv2's 32/64 px network.
NCSN_PLAN = "ncsnv2_64"
# ermongroup/ncsnv2 runners/ncsn_runner.py ``get_model``: dataset -> architecture.
_DATASET_ARCH = {"CIFAR10": "ncsnv2_64", "CELEBA": "ncsnv2_64", "LSUN": "ncsnv2_128", "FFHQ": "ncsnv2_256"}


def lookup_config(cfg: Any, dotted: str, default: Any = dataclasses.MISSING) -> Any:
    """``cfg["model"]["ngf"]`` for ``dotted="model.ngf"``, for nested mappings or attribute
    objects (argparse namespaces, ml_collections); ``KeyError`` naming the entry if absent
    and no ``default`` is given."""
    node = cfg
    for part in dotted.split("."):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif not isinstance(node, Mapping) and hasattr(node, part):
            node = getattr(node, part)
        else:
            if default is dataclasses.MISSING:
                raise KeyError(f"config has no entry {dotted!r}")
            return default
    return node


# ------------------------------------------------------------------ RefineNet plans


@dataclasses.dataclass(frozen=True)
class Stage:
    """One residual stage: two blocks (torch ``name.0, name.1``, flax ``name_0, name_1``);
    ``mult`` times ngf channels; the first block has ``resample`` (``None`` or ``"down"``);
    both use ``dilation``."""

    name: str
    mult: int
    resample: str | None
    dilation: int | None


@dataclasses.dataclass(frozen=True)
class Refine:
    """One RefineNet block: ``name``, the stage it reads, its input widths and output width."""

    name: str
    stage_index: int
    in_planes: tuple[int, ...]
    features: int
    start: bool
    end: bool


@dataclasses.dataclass(frozen=True)
class RefineNetPlan:
    """The stage layout of an NCSN-family RefineNet; refine blocks run deepest first.

    Refine block ``k`` reads stage ``s = n-1-k`` (and the previous refine output, same
    width) and outputs the width of stage ``s-1`` (stage 0's for the last one).
    """

    stages: tuple[Stage, ...]
    refine_names: tuple[str, ...]

    @property
    def down_factor(self) -> int:
        """Total downsampling: 2 per non-dilated ``"down"`` stage."""
        return 2 ** sum(1 for s in self.stages if s.resample == "down" and s.dilation is None)

    def channels(self, ngf: int) -> tuple[int, ...]:
        """Output width of each stage, ``mult * ngf``."""
        return tuple(s.mult * ngf for s in self.stages)

    def refines(self, ngf: int) -> tuple[Refine, ...]:
        """The refine blocks in execution order (deepest stage first)."""
        ch = self.channels(ngf)
        n = len(self.stages)
        out = []
        for k, name in enumerate(self.refine_names):
            s = n - 1 - k
            in_planes = (ch[s],) if k == 0 else (ch[s], ch[s])
            out.append(Refine(name, s, in_planes, ch[max(s - 1, 0)], k == 0, s == 0))
        return tuple(out)


# The published layouts: NCSN v1 ``CondRefineNetDilated`` and NCSNv2 (score_sde
# ``ncsnv2_64``) share the first; NCSNv2Deeper = ``ncsnv2_128``; NCSNv2Deepest = ``ncsnv2_256``.
REFINENET_PLANS: dict[str, RefineNetPlan] = {
    "ncsnv2_64": RefineNetPlan(
        stages=(Stage("res1", 1, None, None), Stage("res2", 2, "down", None),
                Stage("res3", 2, "down", 2), Stage("res4", 2, "down", 4)),
        refine_names=("refine1", "refine2", "refine3", "refine4"),
    ),
    "ncsnv2_128": RefineNetPlan(
        stages=(Stage("res1", 1, None, None), Stage("res2", 2, "down", None),
                Stage("res3", 2, "down", None), Stage("res4", 4, "down", 2), Stage("res5", 4, "down", 4)),
        refine_names=("refine1", "refine2", "refine3", "refine4", "refine5"),
    ),
    "ncsnv2_256": RefineNetPlan(
        stages=(Stage("res1", 1, None, None), Stage("res2", 2, "down", None),
                Stage("res3", 2, "down", None), Stage("res31", 2, "down", None),
                Stage("res4", 4, "down", 2), Stage("res5", 4, "down", 4)),
        refine_names=("refine1", "refine2", "refine31", "refine3", "refine4", "refine5"),
    ),
}


# ------------------------------------------------------------------------- configs


def _validate_refinenet_fields(cfg: Any, plan_name: str, network: str,
                               choices: tuple[tuple[str, tuple[str, ...]], ...] = ()) -> None:
    """Check and normalise the fields NCSN v1 and NCSNv2 configs share (in place on the
    frozen ``cfg``), plus the extra ``(field, valid values)`` ``choices``; ``image_size``
    must be a multiple of the downsampling factor of ``REFINENET_PLANS[plan_name]``."""
    s = lambda k, v: object.__setattr__(cfg, k, v)  # noqa: E731
    # InstanceNorm++ takes an unbiased variance over channels: at least 2 of them.
    s("ngf", check_int("ngf", cfg.ngf, minimum=2))
    s("num_scales", check_int("num_scales", cfg.num_scales, minimum=1))
    smin = check_float("sigma_min", cfg.sigma_min, positive=True)
    smax = check_float("sigma_max", cfg.sigma_max, positive=True)
    if not smin < smax:
        raise ValueError(f"sigma_min must be < sigma_max, got sigma_min={smin}, sigma_max={smax}")
    s("sigma_min", smin)
    s("sigma_max", smax)
    for field, valid in choices:
        check_choice(field, getattr(cfg, field), valid)
    check_choice("normalization", cfg.normalization, NORMALIZATIONS)
    check_choice("nonlinearity", str(cfg.nonlinearity).lower(), ACTIVATIONS)
    s("nonlinearity", str(cfg.nonlinearity).lower())
    s("image_size", check_int("image_size", cfg.image_size, minimum=1))
    s("num_channels", check_int("num_channels", cfg.num_channels, minimum=1))
    if not isinstance(cfg.centered, (bool, np.bool_)):
        raise TypeError(f"centered must be a bool, got {type(cfg.centered).__name__}")
    s("centered", bool(cfg.centered))
    factor = REFINENET_PLANS[plan_name].down_factor
    if cfg.image_size % factor:
        raise ValueError(f"image_size={cfg.image_size} is not divisible by {factor}, the downsampling "
                         f"factor of {network}")


def _ermongroup_model_fields(cfg: Any) -> dict[str, Any]:
    """``ngf, num_scales, sigma_min, sigma_max`` from the ``model`` entries that
    ermongroup/ncsn and ermongroup/ncsnv2 YAML configs name alike."""
    return dict(
        ngf=lookup_config(cfg, "model.ngf"),
        num_scales=lookup_config(cfg, "model.num_classes"),
        sigma_min=lookup_config(cfg, "model.sigma_end"),
        sigma_max=lookup_config(cfg, "model.sigma_begin"),
    )


@dataclasses.dataclass(frozen=True)
class NCSNConfig:
    """Frozen NCSN v1 config (hashable, jit-static); fields follow score_sde's ``config.model``.

    Attributes:
      ngf: base width (ermongroup ``ngf``; score_sde ``nf``).
      num_scales: L, the number of noise levels and embedding rows (``num_classes``).
      sigma_min, sigma_max: ends of the geometric ladder; label 0 is sigma_max.
      normalization: ``"InstanceNorm++"`` (conditional; the official choice).
      nonlinearity: ``"elu"`` (official) or ``"relu" | "lrelu" | "swish"``.
      image_size, num_channels: input images ``image_size x image_size`` with
        ``num_channels`` channels (NHWC in jax_impl, NCHW in torch_ref); image_size must
        be even (one 2x2 mean-pool downsampling).
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
        _validate_refinenet_fields(self, NCSN_PLAN, "NCSN")

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
            **_ermongroup_model_fields(cfg),
            image_size=lookup_config(cfg, "data.image_size"),
            num_channels=lookup_config(cfg, "data.channels"),
            centered=bool(lookup_config(cfg, "data.logit_transform", False)),
        )


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
      image_size, num_channels: input images ``image_size x image_size`` with
        ``num_channels`` channels (NHWC in jax_impl, NCHW in torch_ref).
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
        _validate_refinenet_fields(self, self.name, repr(self.name), choices=(("sigma_dist", SIGMA_DISTS),))

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
            **_ermongroup_model_fields(cfg),
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


# ------------------------------------------------------------------------- presets

# ermongroup/ncsn configs/anneal.yml: sigmas 1 -> 0.01, L = 10; ngf 128 for CIFAR-10
# (and CelebA), ngf 64 for MNIST (28 px, 1 channel).
NCSN_CIFAR10 = NCSNConfig()
NCSN_MNIST = NCSNConfig(ngf=64, image_size=28, num_channels=1)

# score_sde configs/ve/ncsnv2/cifar10.py (= ermongroup/ncsnv2 configs/cifar10.yml):
# nf 128, 232 geometric sigmas 50 -> 0.01, InstanceNorm++, ELU; 29,694,083 parameters.
NCSNV2_CIFAR10 = NCSNv2Config()


__all__ = [
    "ACTIVATIONS", "INSTANCE_NORM_EPS", "NCSNV2_CIFAR10", "NCSNV2_NAMES", "NCSN_CIFAR10", "NCSN_MNIST",
    "NCSN_PLAN", "NCSNConfig", "NCSNv2Config", "NORMALIZATIONS", "REFINENET_PLANS", "Refine",
    "RefineNetPlan", "SIGMA_DISTS", "Stage", "lookup_config",
]
