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
``spec/ncsn_configs.py`` and re-exported here (the twin exports the same objects).

Framework-specific helpers, not part of the mirrored API: ``ncsnv2_state_dict``.
"""

from __future__ import annotations

import collections
import os
from typing import Any, Mapping

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
from spec.validate import check_choice
from torch_ref.convert import KeyMap, strip_prefix
from torch_ref.models.ncsn_layers import (
    REFINENET_PLANS,
    InstanceNorm2dPlus,
    RefineBlock,
    ResidualBlock,
    check_inputs,
    get_act,
    refinenet_key_table,
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
