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
"""

from __future__ import annotations

import collections
import dataclasses
import os
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from spec.schedules import geometric_sigmas
from spec.validate import check_choice, check_float, check_int
from torch_ref.convert import KeyMap, strip_prefix
from torch_ref.models.ncsn_layers import (
    ACTIVATIONS,
    REFINENET_PLANS,
    InstanceNorm2dPlus,
    RefineBlock,
    ResidualBlock,
    check_inputs,
    get_act,
    lookup_config,
    refinenet_key_table,
)

__all__ = [
    "NCSNv2Config",
    "NCSNV2_CIFAR10",
    "NCSNv2",
    "key_table",
    "ncsnv2_state_dict",
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
      image_size, num_channels: input ``[B, num_channels, image_size, image_size]``.
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
        centered = bool(lookup_config(cfg, "data.logit_transform", False)) or bool(lookup_config(cfg, "data.rescaled", False))
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


def key_table(config: NCSNv2Config) -> tuple[KeyMap, ...]:
    """Explicit torch-key <-> flax-path table of every NCSNv2 parameter (not the ``sigmas``
    buffer, which the flax model computes from ``config``)."""
    if not isinstance(config, NCSNv2Config):
        raise TypeError(f"config must be an NCSNv2Config, got {type(config).__name__}")
    return refinenet_key_table(config.name, conditional=False)


# ----------------------------------------------------------- official checkpoints


def _expected_shapes(config: NCSNv2Config) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = NCSNv2(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _check_keys(what: str, state: Mapping[str, Any], expected: Mapping[str, tuple[int, ...]],
                optional: tuple[str, ...] = ()) -> None:
    unexpected = sorted(k for k in state if k not in expected)
    if unexpected:
        raise KeyError(f"unexpected key(s) in {what}: {unexpected[:10]}"
                       + (f" (+{len(unexpected) - 10} more)" if len(unexpected) > 10 else ""))
    missing = [k for k in expected if k not in state and k not in optional]
    if missing:
        raise KeyError(f"missing key(s) in {what}: {missing[:10]}"
                       + (f" (+{len(missing) - 10} more)" if len(missing) > 10 else ""))
    for k, v in state.items():
        shape = tuple(v.shape) if hasattr(v, "shape") else tuple(np.shape(v))
        if shape != expected[k]:
            raise ValueError(f"{what}: {k!r} has shape {shape}, the model expects {expected[k]}")


def _as_config(config: Any) -> NCSNv2Config:
    if isinstance(config, NCSNv2Config):
        return config
    return NCSNv2Config.from_ncsnv2_config(config)


def ncsnv2_state_dict(checkpoint: Any, config: Any, *, weights: str | None = None
                      ) -> "collections.OrderedDict[str, torch.Tensor]":
    """The validated NCSNv2 ``state_dict`` held by an ermongroup/ncsnv2 checkpoint.

    Args:
      checkpoint: a path to ``checkpoint_*.pth``; or the list it holds,
        ``[model_state, optimizer_state, epoch, step(, ema_state)]`` (keys prefixed
        ``module.`` by DataParallel; the EMA helper's shadow dict holds the trainable
        parameters only); or a bare state_dict (prefixed or not).
      config: the run's YAML config as a nested dict (see
        ``NCSNv2Config.from_ncsnv2_config``) or an ``NCSNv2Config``.
      weights: ``"ema"`` (the EMA shadow parameters with the model's buffers, as the
        official sampler does with ``model.ema``), ``"raw"`` (the trained parameters),
        or None: ``"ema"`` when the checkpoint holds an EMA state, else ``"raw"``.
        A bare state_dict is taken as it is (``weights="ema"`` is then an error).

    Returns:
      an OrderedDict with exactly the model's keys (``module.`` stripped), ``sigmas``
      included (filled from the config when a bare dict lacks it).

    Raises:
      KeyError naming a missing or unexpected key; ValueError naming a key of the
      wrong shape, a ``sigmas`` buffer that disagrees with the config, or an EMA
      request the checkpoint cannot satisfy; TypeError for an unknown checkpoint type.
    """
    cfg = _as_config(config)
    if weights is not None:
        check_choice("weights", weights, ("ema", "raw"))
    if isinstance(checkpoint, (str, os.PathLike)):
        checkpoint = torch.load(os.fspath(checkpoint), map_location="cpu", weights_only=True)
    expected = _expected_shapes(cfg)
    if isinstance(checkpoint, Mapping):
        if weights == "ema":
            raise ValueError("weights='ema' needs the checkpoint list [model, optimizer, epoch, step, ema]; "
                             "a bare state_dict is loaded as it is (use weights=None or 'raw')")
        state = strip_prefix(dict(checkpoint))
        _check_keys("state_dict", state, expected, optional=("sigmas",))
    elif isinstance(checkpoint, (list, tuple)):
        if not checkpoint or not isinstance(checkpoint[0], Mapping):
            raise ValueError("an ncsnv2 checkpoint list must start with the model state_dict")
        state = strip_prefix(dict(checkpoint[0]))
        _check_keys("checkpoint[0] (model state_dict)", state, expected, optional=("sigmas",))
        has_ema = len(checkpoint) >= 5 and isinstance(checkpoint[4], Mapping)
        use = weights or ("ema" if has_ema else "raw")
        if use == "ema":
            if not has_ema:
                raise ValueError(f"weights='ema' but the checkpoint list has {len(checkpoint)} entries and no "
                                 "EMA state at index 4 (trained with model.ema false?); use weights='raw'")
            shadow = strip_prefix(dict(checkpoint[4]))
            params = {k: v for k, v in expected.items() if k != "sigmas"}
            _check_keys("checkpoint[4] (EMA shadow)", shadow, params)
            state = {**state, **shadow}
    else:
        raise TypeError("checkpoint must be a path, the ncsnv2 checkpoint list or a state_dict, "
                        f"got {type(checkpoint).__name__}")
    sig_cfg = torch.tensor(cfg.sigmas, dtype=torch.float32)
    if "sigmas" in state:
        sig = torch.as_tensor(state["sigmas"]).detach().cpu().to(torch.float32)
        if not torch.allclose(sig, sig_cfg, rtol=1e-6, atol=0.0):
            raise ValueError(
                "checkpoint buffer 'sigmas' disagrees with the config ladder (sigma_max="
                f"{cfg.sigma_max}, sigma_min={cfg.sigma_min}, num_scales={cfg.num_scales}, "
                f"sigma_dist={cfg.sigma_dist!r}): first/last {sig[0].item()}/{sig[-1].item()} vs "
                f"{sig_cfg[0].item()}/{sig_cfg[-1].item()}")
    else:
        state["sigmas"] = sig_cfg
    return collections.OrderedDict((k, torch.as_tensor(state[k])) for k in expected)


def from_ncsnv2(checkpoint: Any, config: Any, *, weights: str | None = None) -> NCSNv2:
    """An ``NCSNv2`` module (eval mode, NCHW) with the weights of an ermongroup/ncsnv2
    checkpoint; arguments as ``ncsnv2_state_dict``."""
    cfg = _as_config(config)
    state = ncsnv2_state_dict(checkpoint, cfg, weights=weights)
    model = NCSNv2(cfg)
    model.load_state_dict(state, strict=True)
    return model.eval()
