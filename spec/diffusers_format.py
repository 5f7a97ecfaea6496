"""diffusers' DDPM model directories as data: ``config.json``, the weights, ``scheduler_config.json``.

Framework-neutral (numpy + stdlib; ``safetensors`` is imported when a ``.safetensors``
file is read and ``torch`` only when a ``.bin`` file is read). diffusers itself is never
imported: its file formats and defaults (version 0.42.1) are written down here as data.
``jax_impl/diffusers_format.py`` and ``torch_ref/diffusers_format.py`` (twins) build the
flax / torch models and the ``GaussianDiffusion`` from what this module returns.

A diffusers DDPM directory (``save_pretrained`` of a ``UNet2DModel``, e.g. the
``unet/`` folder of a ``DDPMPipeline``, or the model folder itself) holds:

- ``config.json``: the ``UNet2DModel`` arguments. ``ddpm_config_from_diffusers`` turns
  them into a ``DDPMConfig`` in the TF original's layout (``up_attention="per_block"``,
  the embedding's ``flip_sin_to_cos`` / ``freq_shift``); every argument this U-Net cannot
  express (block types other than ``DownBlock2D`` / ``AttnDownBlock2D`` / ``UpBlock2D`` /
  ``AttnUpBlock2D`` and the ``UNetMidBlock2D``, more than one attention head, a norm or
  activation it lacks, class embeddings, symmetric down-sampling padding, ...) is
  listed, by field, in ONE ``ValueError``. A field missing from the file takes
  diffusers' default (``UNET2D_DEFAULTS``); a field diffusers does not know is ignored
  with a warning, as diffusers ignores it. ``find_unet_directory`` accepts a pipeline
  folder too (its ``unet/``).
- ``diffusion_pytorch_model.safetensors`` (read without torch) or
  ``diffusion_pytorch_model.bin`` (a torch pickle, read with
  ``torch.load(weights_only=True)``): ``read_diffusers_weights``.
- ``scheduler_config.json`` (next to it, or in the pipeline folder above ``unet/``):
  a ``DDPMScheduler`` / ``DDIMScheduler`` config. ``scheduler_settings_from_diffusers``
  maps it onto a ``spec.DiffusionConfig`` (improved-diffusion's process) plus the
  samplers' ``clip_denoised``, or names the field it cannot map.

The key table ``diffusers_key_table(config)`` lists, for every tensor, the diffusers
name, our DDPM name (score_sde's ``all_modules.{i}.*``, the torch state_dict key; the
flax path is in ``ddpm_layout_key_table``), the layout change and the diffusers shape.
Our module walk is ``ddpm_layout_plan(config)``: ``spec.unet_plans.ddpm_plan`` with
``config.up_attention`` applied (one attention block after every up-path res block at
the attention levels for ``"per_block"``). The correspondence, per block:

==============================  ===============================================
ours (``all_modules.{i}.``)     diffusers
==============================  ===============================================
dense 0, 1                      ``time_embedding.linear_1``, ``linear_2``
input conv3x3                   ``conv_in``
down resnet j at level l        ``down_blocks.{l}.resnets.{j}``
down attn j at level l          ``down_blocks.{l}.attentions.{j}``
downsample at level l           ``down_blocks.{l}.downsamplers.0.conv``
middle resnet, attn, resnet     ``mid_block.resnets.0``, ``attentions.0``, ``resnets.1``
up resnet / attn j at level l   ``up_blocks.{L-1-l}.resnets.{j}`` / ``attentions.{j}``
upsample at level l             ``up_blocks.{L-1-l}.upsamplers.0.conv``
output GroupNorm, conv3x3       ``conv_norm_out``, ``conv_out``
==============================  ===============================================

Inside a res block ``GroupNorm_0, Conv_0, Dense_0, GroupNorm_1, Conv_1, NIN_0`` are
diffusers' ``norm1, conv1, time_emb_proj, norm2, conv2, conv_shortcut`` (a 1x1 conv
``[out, in, 1, 1]``, our ``NIN_0.W [in, out]``: layout ``"nin_conv1x1"``); inside an
attention block ``GroupNorm_0, NIN_0..3`` are ``group_norm, to_q, to_k, to_v,
to_out.0`` (Linear ``[out, in]`` vs ``W [in, out]``: layout ``"nin_linear"``). Older
checkpoints name the attention projections ``query, key, value, proj_attn``
(diffusers renames them on load); both spellings are read.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
import re
import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from spec.checkpoints import read_checkpoint, tree_to_numpy
from spec.configs import DiffusionConfig, ModelMeanType, ModelVarType
from spec.convert import check_state_dict
from spec.keytables import KeyMap, KeyTable, _unet_key_table, check_table, derived_buffers
from spec.model_configs import DDPMConfig
from spec.unet_plans import Block, ddpm_plan
from spec.validate import check_bool, check_int

__all__ = [
    "DDIM_SCHEDULER_DEFAULTS",
    "DDPM_SCHEDULER_DEFAULTS",
    "DEPRECATED_ATTENTION_NAMES",
    "DIFFUSERS_LAYOUTS",
    "DiffusersKeyMap",
    "SCHEDULER_CONFIG_NAME",
    "SchedulerSettings",
    "UNET2D_DEFAULTS",
    "UNET_CONFIG_NAME",
    "WEIGHTS_NAMES",
    "ddpm_config_from_diffusers",
    "ddpm_layout_key_table",
    "ddpm_layout_plan",
    "ddpm_state_dict_from_diffusers",
    "diffusers_key_table",
    "diffusers_state_dict_from_ddpm",
    "find_diffusers_weights",
    "find_unet_directory",
    "find_scheduler_config",
    "read_diffusers_config",
    "read_diffusers_weights",
    "scheduler_settings_from_diffusers",
]

UNET_CONFIG_NAME = "config.json"
SCHEDULER_CONFIG_NAME = "scheduler_config.json"
#: the weight files ``find_diffusers_weights`` looks for, in order of preference
WEIGHTS_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")

#: ``UNet2DModel.__init__`` defaults (diffusers 0.42.1): a ``config.json`` that omits a
#: field means this value, as diffusers' ``from_config`` fills it in.
UNET2D_DEFAULTS = {
    "sample_size": None,
    "in_channels": 3,
    "out_channels": 3,
    "center_input_sample": False,
    "time_embedding_type": "positional",
    "time_embedding_dim": None,
    "freq_shift": 0,
    "flip_sin_to_cos": True,
    "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    "mid_block_type": "UNetMidBlock2D",
    "up_block_types": ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (224, 448, 672, 896),
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "downsample_padding": 1,
    "downsample_type": "conv",
    "upsample_type": "conv",
    "dropout": 0.0,
    "act_fn": "silu",
    "attention_head_dim": 8,
    "norm_num_groups": 32,
    "attn_norm_num_groups": None,
    "norm_eps": 1e-5,
    "resnet_time_scale_shift": "default",
    "add_attention": True,
    "class_embed_type": None,
    "num_class_embeds": None,
    "num_train_timesteps": None,
}

_SCHEDULER_COMMON = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "trained_betas": None,
    "clip_sample": True,
    "prediction_type": "epsilon",
    "thresholding": False,
    "dynamic_thresholding_ratio": 0.995,
    "clip_sample_range": 1.0,
    "sample_max_value": 1.0,
    "timestep_spacing": "leading",
    "steps_offset": 0,
    "rescale_betas_zero_snr": False,
}
#: ``DDPMScheduler.__init__`` defaults (diffusers 0.42.1)
DDPM_SCHEDULER_DEFAULTS = {**_SCHEDULER_COMMON, "variance_type": "fixed_small"}
#: ``DDIMScheduler.__init__`` defaults (diffusers 0.42.1)
DDIM_SCHEDULER_DEFAULTS = {**_SCHEDULER_COMMON, "set_alpha_to_one": True}
_SCHEDULER_DEFAULTS = {"DDPMScheduler": DDPM_SCHEDULER_DEFAULTS, "DDIMScheduler": DDIM_SCHEDULER_DEFAULTS}

#: diffusers' variance types -> ours (``fixed_small_log`` is the same variance in log form)
_VARIANCE_TYPES = {
    "fixed_small": ModelVarType.FIXED_SMALL,
    "fixed_small_log": ModelVarType.FIXED_SMALL,
    "fixed_large": ModelVarType.FIXED_LARGE,
    "learned_range": ModelVarType.LEARNED_RANGE,
}
_PREDICTION_TYPES = {"epsilon": ModelMeanType.EPSILON, "sample": ModelMeanType.START_X}
_BETA_SCHEDULES = {"linear": "linear", "squaredcos_cap_v2": "cosine"}

#: old attention-projection names (diffusers < 0.15 checkpoints) -> today's
DEPRECATED_ATTENTION_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}

#: how a diffusers tensor becomes ours: identical; 1x1 conv ``[out, in, 1, 1]`` -> NIN
#: ``W [in, out]``; Linear ``[out, in]`` -> NIN ``W [in, out]``
DIFFUSERS_LAYOUTS = ("same", "nin_conv1x1", "nin_linear")

_DOWN_BLOCKS = ("DownBlock2D", "AttnDownBlock2D")
_UP_BLOCKS = ("UpBlock2D", "AttnUpBlock2D")


# ------------------------------------------------------------------------- files


def _json_file(path, name: str, what: str) -> Path:
    """``path`` itself (a file) or ``path / name`` (a directory), checked to exist."""
    if isinstance(path, bytes) or not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{what} must be a directory or a {name} path (str or os.PathLike), "
                        f"got {type(path).__name__} {path!r}")
    p = Path(path)
    if p.is_dir():
        p = p / name
    if not p.is_file():
        raise FileNotFoundError(f"{what}: no {name} at {str(p)!r}")
    return p


def read_diffusers_config(path, name: str = UNET_CONFIG_NAME) -> dict:
    """The JSON object of ``path`` (a file), or of ``path / name`` (a directory)."""
    p = _json_file(path, name, "diffusers config")
    try:
        with open(p, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"cannot read the diffusers config {str(p)!r}: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"the diffusers config {str(p)!r} holds a JSON {type(data).__name__}, not an object")
    return data


def find_scheduler_config(path) -> Path:
    """The ``scheduler_config.json`` for ``path``: the file itself, or inside the
    directory, or in a ``scheduler/`` folder beside it (a pipeline's layout: ``unet/`` and
    ``scheduler/`` in one folder), or in the directory's parent's ``scheduler/``."""
    if isinstance(path, bytes) or not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a directory or a {SCHEDULER_CONFIG_NAME} path, got {type(path).__name__}")
    p = Path(path)
    if p.is_file():
        return p
    candidates = [p / SCHEDULER_CONFIG_NAME, p / "scheduler" / SCHEDULER_CONFIG_NAME,
                  p.parent / "scheduler" / SCHEDULER_CONFIG_NAME]
    for c in candidates:
        if c.is_file():
            return c
    raise FileNotFoundError(f"no {SCHEDULER_CONFIG_NAME} for {str(p)!r}; looked at "
                            + ", ".join(repr(str(c)) for c in candidates))


def find_unet_directory(path) -> Path:
    """The ``UNet2DModel`` folder of ``path``: ``path`` itself when it holds
    ``config.json``, else its ``unet/`` (a pipeline folder with ``model_index.json``)."""
    if isinstance(path, bytes) or not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"directory must be a str or os.PathLike, got {type(path).__name__} {path!r}")
    p = Path(path)
    if not p.is_dir():
        raise NotADirectoryError(f"diffusers model directory {str(p)!r} does not exist or is not a directory")
    for d in (p, p / "unet"):
        if (d / UNET_CONFIG_NAME).is_file():
            return d
    raise FileNotFoundError(f"no {UNET_CONFIG_NAME} in {str(p)!r} or in its unet/ folder: not a diffusers "
                            "UNet2DModel (save_pretrained) or pipeline directory")


def find_diffusers_weights(directory) -> Path:
    """The weight file of a diffusers model directory: ``diffusion_pytorch_model.safetensors``,
    else ``diffusion_pytorch_model.bin``. A directory with only sharded weights
    (``*.index.json``) or none raises naming the directory and what it holds."""
    if isinstance(directory, bytes) or not isinstance(directory, (str, os.PathLike)):
        raise TypeError(f"directory must be a str or os.PathLike, got {type(directory).__name__} {directory!r}")
    d = Path(directory)
    if not d.is_dir():
        raise NotADirectoryError(f"diffusers model directory {str(d)!r} does not exist or is not a directory")
    for name in WEIGHTS_NAMES:
        if (d / name).is_file():
            return d / name
    held = sorted(x.name for x in d.iterdir())
    sharded = [n for n in held if n.endswith(".index.json")]
    if sharded:
        raise ValueError(f"{str(d)!r} holds sharded weights ({', '.join(sharded)}), which are not supported; "
                         f"save the model unsharded (save_pretrained(..., max_shard_size=...) large enough)")
    raise FileNotFoundError(f"{str(d)!r} holds neither {' nor '.join(WEIGHTS_NAMES)} (it holds: "
                            f"{', '.join(held) or 'nothing'})")


def read_diffusers_weights(path) -> "collections.OrderedDict[str, np.ndarray]":
    """The flat ``{name: numpy array}`` of a ``.safetensors`` (no torch needed) or a
    torch ``.bin`` state_dict (``torch.load(map_location="cpu", weights_only=True)``;
    torch is imported here, only for such a file)."""
    if isinstance(path, bytes) or not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__} {path!r}")
    p = Path(path)
    if p.suffix.lower() == ".safetensors":
        return collections.OrderedDict(read_checkpoint(p))
    if p.suffix.lower() != ".bin":
        raise ValueError(f"diffusers weights {str(p)!r}: expected a .safetensors or .bin file")
    if not p.is_file():
        raise FileNotFoundError(f"diffusers weights {str(p)!r} do not exist")
    try:
        import torch  # the one lazy import: only when a .bin file is read
    except ImportError:
        raise ImportError(f"reading {str(p)!r} needs PyTorch, which is not installed; save the model with "
                          "safe_serialization=True (diffusion_pytorch_model.safetensors) to load it without "
                          "torch") from None
    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 (any unpickling failure is a bad file)
        raise ValueError(f"cannot read the diffusers weights {str(p)!r}: {type(e).__name__}: "
                         f"{str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}") from None
    if not isinstance(obj, Mapping):
        raise ValueError(f"the diffusers weights {str(p)!r} hold a {type(obj).__name__}, not a state_dict")
    return collections.OrderedDict(tree_to_numpy(obj, str(p.name)))


def _config_dict(config, name: str) -> tuple[dict, str]:
    """``(dict, where)`` of a config given as a mapping, a JSON file or a directory."""
    if isinstance(config, Mapping):
        return dict(config), name
    data = read_diffusers_config(config, name)
    return data, str(_json_file(config, name, "diffusers config"))


def _fields(data: dict, defaults: Mapping, where: str) -> dict:
    """The config's fields with the defaults filled in. Fields the class does not take
    are ignored with a ``UserWarning`` naming them, as diffusers' ``from_config`` ignores
    them (old configs carry retired keys); private ``_*`` entries are dropped."""
    unknown = sorted(k for k in data if not k.startswith("_") and k not in defaults)
    if unknown:
        warnings.warn(f"{where}: ignoring field(s) {', '.join(unknown)}: not arguments of diffusers 0.42.1's "
                      f"{data.get('_class_name', 'class')} (diffusers ignores them too)", UserWarning, stacklevel=3)
    out = dict(defaults)
    out.update({k: v for k, v in data.items() if not k.startswith("_") and k in defaults})
    return out


def _raise_problems(where: str, what: str, problems: list[str]) -> None:
    if problems:
        raise ValueError(f"{where}: {what}:\n  - " + "\n  - ".join(problems))


# --------------------------------------------------------------------- the U-Net


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def ddpm_config_from_diffusers(unet_config) -> DDPMConfig:
    """A ``DDPMConfig`` (TF / diffusers layout) of a diffusers ``UNet2DModel`` config.

    Args:
      unet_config: the ``config.json`` dict, the file, or the model directory.

    Returns:
      ``DDPMConfig(image_size=sample_size, num_channels=in_channels, nf=block_out_channels[0],
      ch_mult=block_out_channels / nf, num_res_blocks=layers_per_block,
      attn_resolutions=<sizes of the Attn*Block2D levels>, dropout, centered=not
      center_input_sample, learn_sigma=(out_channels == 2 in_channels),
      up_attention="per_block", flip_sin_to_cos, freq_shift)``.

    Raises:
      ValueError: naming every field (and value) this U-Net does not express, in one
        message; ``_class_name`` other than ``UNet2DModel``.
    """
    data, where = _config_dict(unet_config, UNET_CONFIG_NAME)
    cls = data.get("_class_name", "UNet2DModel")
    if cls != "UNet2DModel":
        raise ValueError(f"{where}: _class_name {cls!r} is not supported; only diffusers' UNet2DModel "
                         "(the DDPM U-Net) loads into this DDPM")
    c = _fields(data, UNET2D_DEFAULTS, where)
    problems: list[str] = []

    def bad(field: str, why: str) -> None:
        problems.append(f"{field}={c[field]!r}: {why}")

    def want(field: str, allowed: tuple, why: str) -> None:
        if c[field] not in allowed or isinstance(c[field], bool) != any(isinstance(a, bool) for a in allowed):
            bad(field, why)

    want("time_embedding_type", ("positional",), "only the sinusoidal ('positional') timestep embedding")
    want("mid_block_type", ("UNetMidBlock2D",), "only the UNetMidBlock2D middle (resnet, attention, resnet)")
    want("add_attention", (True,), "the middle block always has its attention block here")
    want("downsample_type", ("conv",), "only stride-2 convolution down-sampling")
    want("upsample_type", ("conv",), "only nearest-neighbour + convolution up-sampling")
    if c["downsample_padding"] != 0 or isinstance(c["downsample_padding"], bool):
        bad("downsample_padding", "this U-Net pads a stride-2 convolution on the right and bottom only "
                                  "(TF 'SAME', diffusers downsample_padding=0)")
    if c["act_fn"] not in ("silu", "swish"):
        bad("act_fn", "this U-Net uses SiLU (swish) everywhere: diffusers' time embedding and output "
                      "activation are SiLU whatever act_fn says")
    want("resnet_time_scale_shift", ("default",), "only the additive timestep embedding ('default'; "
                                                  "'scale_shift' is improved-diffusion's UNetModel)")
    if c["norm_num_groups"] != 32 or isinstance(c["norm_num_groups"], bool):
        bad("norm_num_groups", "this U-Net's GroupNorm has 32 groups")
    if c["attn_norm_num_groups"] not in (None, 32):
        bad("attn_norm_num_groups", "the attention GroupNorm has 32 groups (null or 32)")
    eps = c["norm_eps"]
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isclose(eps, 1e-6, rel_tol=1e-9):
        bad("norm_eps", "this U-Net's GroupNorm eps is 1e-6 (diffusers' DDPM checkpoints); diffusers' "
                        "default 1e-5 is not supported")
    if c["class_embed_type"] is not None:
        bad("class_embed_type", "class embeddings are not supported (unconditional DDPM only)")
    if c["num_class_embeds"] is not None:
        bad("num_class_embeds", "class embeddings are not supported (unconditional DDPM only)")
    msf = c["mid_block_scale_factor"]
    if isinstance(msf, bool) or not isinstance(msf, (int, float)) or msf != 1:
        bad("mid_block_scale_factor", "the middle block's output is not rescaled here (must be 1)")

    chans = c["block_out_channels"]
    down, up = c["down_block_types"], c["up_block_types"]
    ok_lists = True
    for field, value in (("block_out_channels", chans), ("down_block_types", down), ("up_block_types", up)):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)) or not value:
            bad(field, "must be a non-empty list")
            ok_lists = False
    nf = None
    if ok_lists:
        if not all(_is_int(ch) and ch > 0 for ch in chans):
            bad("block_out_channels", "must be positive integers")
            ok_lists = False
        else:
            nf = chans[0]
            if any(ch % nf for ch in chans):
                bad("block_out_channels", f"every width must be a multiple of the first ({nf}): this U-Net's "
                                          "widths are nf * ch_mult")
            if any(ch % 32 for ch in chans):
                bad("block_out_channels", "every width must be a multiple of 32 (GroupNorm with 32 groups)")
        for field, value, allowed in (("down_block_types", down, _DOWN_BLOCKS), ("up_block_types", up, _UP_BLOCKS)):
            others = sorted({str(b) for b in value if b not in allowed})
            if others:
                bad(field, f"unsupported block type(s) {', '.join(others)}; supported: {', '.join(allowed)}")
                ok_lists = False
            if len(value) != len(chans):
                bad(field, f"{len(value)} blocks for {len(chans)} block_out_channels")
                ok_lists = False
    attn_levels: list[int] = []
    if ok_lists:
        L = len(chans)
        attn_levels = [lvl for lvl in range(L) if down[lvl] == "AttnDownBlock2D"]
        up_attn = sorted(L - 1 - i for i in range(L) if up[i] == "AttnUpBlock2D")
        if up_attn != attn_levels:
            bad("up_block_types", f"attention at levels {up_attn} of the up path but {attn_levels} of the down "
                                  "path (down_block_types); this U-Net has attention at the same resolutions on "
                                  "both paths")
        head = c["attention_head_dim"]
        widths = sorted({chans[lvl] for lvl in attn_levels} | ({chans[-1]} if c["add_attention"] else set()))
        if head is not None and any(head != w for w in widths):
            bad("attention_head_dim", f"this U-Net's attention has ONE head over all channels; heads = "
                                      f"channels // attention_head_dim = "
                                      f"{[w // head if _is_int(head) and head > 0 else '?' for w in widths]} for "
                                      f"attention widths {widths} (use null, or the width itself)")
    size = c["sample_size"]
    if isinstance(size, (list, tuple)) and len(size) == 2 and size[0] == size[1]:
        size = size[0]
    if not _is_int(size) or size < 1:
        bad("sample_size", "must be a positive integer (or a square [size, size]): attention is placed by "
                           "resolution")
    for field in ("in_channels", "out_channels", "layers_per_block"):
        if not _is_int(c[field]) or c[field] < 1:
            bad(field, "must be a positive integer")
    if _is_int(c["in_channels"]) and _is_int(c["out_channels"]) and \
            c["out_channels"] not in (c["in_channels"], 2 * c["in_channels"]):
        bad("out_channels", f"must be in_channels ({c['in_channels']}) or twice it (eps and the learned "
                            "variance, learn_sigma)")
    if nf is not None and c["time_embedding_dim"] not in (None, 4 * nf):
        bad("time_embedding_dim", f"this U-Net's timestep embedding has 4 * block_out_channels[0] = {4 * nf} "
                                  "features (null or that)")
    shift = c["freq_shift"]
    if isinstance(shift, float) and shift.is_integer():
        shift = int(shift)
    if not _is_int(shift):
        bad("freq_shift", "must be an integer")
    for field in ("flip_sin_to_cos", "center_input_sample"):
        if not isinstance(c[field], bool):
            bad(field, "must be true or false")
    _raise_problems(where, "this UNet2DModel is not a DDPM U-Net in the layout supported here", problems)

    return DDPMConfig(
        image_size=size,
        num_channels=c["in_channels"],
        centered=not c["center_input_sample"],
        nf=nf,
        ch_mult=tuple(ch // nf for ch in chans),
        num_res_blocks=c["layers_per_block"],
        attn_resolutions=tuple(size // 2**lvl for lvl in attn_levels),
        dropout=c["dropout"],
        resamp_with_conv=True,
        conditional=True,
        scale_by_sigma=False,
        nonlinearity="swish",
        learn_sigma=c["out_channels"] == 2 * c["in_channels"],
        up_attention="per_block",
        flip_sin_to_cos=c["flip_sin_to_cos"],
        freq_shift=shift,
    )


def ddpm_layout_plan(config: DDPMConfig) -> tuple[Block, ...]:
    """``spec.unet_plans.ddpm_plan(config)`` with ``config.up_attention`` applied.

    ``"per_level"``: the plan itself. ``"per_block"``: every up-path attention block is
    removed and one is put after EACH up-path res block at the attention levels, the
    indices renumbered (idempotent, so it stays right once ``ddpm_plan`` itself honours
    the field).
    """
    if not isinstance(config, DDPMConfig):
        raise TypeError(f"config must be a DDPMConfig, got {type(config).__name__}")
    plan = ddpm_plan(config)
    if config.up_attention == "per_level":
        return plan
    blocks: list[Block] = []
    for b in plan:
        if b.kind == "attn" and b.stage == "up":
            continue
        blocks.append(b)
        if b.kind == "resnet" and b.stage == "up" and config.all_resolutions[b.level] in config.attn_resolutions:
            blocks.append(Block("attn", 0, b.out_ch, b.out_ch, "up", level=b.level))
    return tuple(dataclasses.replace(b, index=i) for i, b in enumerate(blocks))


def ddpm_layout_key_table(config: DDPMConfig) -> KeyTable:
    """Our DDPM's key table (torch key <-> flax path, ``spec.keytables`` entries) for
    ``ddpm_layout_plan(config)``: ``spec.keytables.ddpm_key_table`` for ``"per_level"``."""
    return _unet_key_table(ddpm_layout_plan(config), 4 * config.nf)


@dataclasses.dataclass(frozen=True)
class DiffusersKeyMap:
    """One tensor: ``diffusers_key`` (shape ``shape``) <-> ``key``, our DDPM's
    ``KeyMap`` (torch key, flax path, torch shape); ``layout`` in ``DIFFUSERS_LAYOUTS``."""

    diffusers_key: str
    key: KeyMap
    layout: str
    shape: tuple[int, ...]

    def to_ours(self, array: np.ndarray) -> np.ndarray:
        """The diffusers tensor in our torch layout."""
        if self.layout == "nin_conv1x1":
            return np.ascontiguousarray(array[:, :, 0, 0].T)
        if self.layout == "nin_linear":
            return np.ascontiguousarray(array.T)
        return array

    def to_diffusers(self, array: np.ndarray) -> np.ndarray:
        """Our torch tensor in diffusers' layout."""
        if self.layout == "nin_conv1x1":
            return np.ascontiguousarray(array.T[:, :, None, None])
        if self.layout == "nin_linear":
            return np.ascontiguousarray(array.T)
        return array


_RESNET_NAMES = {"GroupNorm_0": "norm1", "Conv_0": "conv1", "Dense_0": "time_emb_proj", "GroupNorm_1": "norm2",
                 "Conv_1": "conv2", "NIN_0": "conv_shortcut"}
_ATTN_NAMES = {"GroupNorm_0": "group_norm", "NIN_0": "to_q", "NIN_1": "to_k", "NIN_2": "to_v", "NIN_3": "to_out.0"}
_PARAM_NAMES = {"W": "weight", "b": "bias", "weight": "weight", "bias": "bias"}


def _check_diffusers_layout(config: DDPMConfig) -> None:
    """ValueError naming each field of ``config`` diffusers' UNet2DModel cannot express."""
    wrong = [f"{k}={getattr(config, k)!r} (diffusers: {v!r})" for k, v in (
        ("up_attention", "per_block"), ("resamp_with_conv", True), ("conditional", True),
        ("scale_by_sigma", False), ("nonlinearity", "swish")) if getattr(config, k) != v]
    if wrong:
        raise ValueError("config has no diffusers UNet2DModel layout: " + ", ".join(wrong))


def _block_prefixes(config: DDPMConfig, plan: tuple[Block, ...]) -> dict[int, tuple[str, str]]:
    """``{block index: (diffusers module prefix, kind of sub-names)}`` for the plan."""
    L = config.num_resolutions
    out: dict[int, tuple[str, str]] = {}
    counters: collections.Counter = collections.Counter()
    for b in plan:
        if b.stage == "embed":
            out[b.index] = (f"time_embedding.linear_{counters['embed'] + 1}.", "plain")
            counters["embed"] += 1
        elif b.stage == "input":
            out[b.index] = ("conv_in.", "plain")
        elif b.stage == "output":
            out[b.index] = ("conv_norm_out." if b.kind == "group_norm" else "conv_out.", "plain")
        elif b.stage == "middle":
            kind = "resnets" if b.kind == "resnet" else "attentions"
            out[b.index] = (f"mid_block.{kind}.{counters['mid', kind]}.", b.kind)
            counters["mid", kind] += 1
        else:
            block = b.level if b.stage == "down" else L - 1 - b.level
            root = f"{b.stage}_blocks.{block}."
            if b.kind in ("downsample", "upsample"):
                out[b.index] = (f"{root}{b.kind}rs.0.", "resample")
            else:
                kind = "resnets" if b.kind == "resnet" else "attentions"
                out[b.index] = (f"{root}{kind}.{counters[b.stage, block, kind]}.", b.kind)
                counters[b.stage, block, kind] += 1
    return out


def diffusers_key_table(config: DDPMConfig) -> tuple[DiffusersKeyMap, ...]:
    """Every tensor of diffusers' ``UNet2DModel`` for ``config`` (in our state_dict order)
    with our DDPM's name (see the module docstring's table).

    ``config`` must be in diffusers' layout (``up_attention="per_block"``, conv
    resampling, conditional, swish, no ``scale_by_sigma``): ``ValueError`` otherwise.
    """
    if not isinstance(config, DDPMConfig):
        raise TypeError(f"config must be a DDPMConfig, got {type(config).__name__}")
    _check_diffusers_layout(config)
    plan = ddpm_layout_plan(config)
    prefixes = _block_prefixes(config, plan)
    out = []
    for km in ddpm_layout_key_table(config):
        _, index, rest = km.torch_key.split(".", 2)
        prefix, kind = prefixes[int(index)]
        layout = "same"
        if kind in ("resnet", "attn"):
            module, param = rest.split(".")
            names = _RESNET_NAMES if kind == "resnet" else _ATTN_NAMES
            sub = f"{names[module]}.{_PARAM_NAMES[param]}"
            if param == "W":
                layout = "nin_conv1x1" if kind == "resnet" else "nin_linear"
        elif kind == "resample":
            sub = f"conv.{rest.split('.')[1]}"
        else:
            sub = rest
        shape = km.shape
        if layout == "nin_conv1x1":
            shape = (km.shape[1], km.shape[0], 1, 1)
        elif layout == "nin_linear":
            shape = km.shape[::-1]
        out.append(DiffusersKeyMap(prefix + sub, km, layout, tuple(shape)))
    check_table(KeyMap(e.diffusers_key, e.key.flax_path) for e in out)  # diffusers names unique
    return tuple(out)


_DEPRECATED = re.compile(r"^(.*\.attentions\.\d+\.)(query|key|value|proj_attn)\.(weight|bias)$")


def _renamed_deprecated(state_dict: Mapping[str, Any], what: str) -> "collections.OrderedDict[str, Any]":
    out: "collections.OrderedDict[str, Any]" = collections.OrderedDict()
    for k, v in state_dict.items():
        m = _DEPRECATED.match(str(k))
        new = f"{m.group(1)}{DEPRECATED_ATTENTION_NAMES[m.group(2)]}.{m.group(3)}" if m else k
        if new in out:
            raise KeyError(f"{what} holds both {k!r} and its new name {new!r}")
        out[new] = v
    return out


def ddpm_state_dict_from_diffusers(state_dict: Mapping[str, Any], config: DDPMConfig, *,
                                   what: str = "diffusers state_dict") -> "collections.OrderedDict[str, np.ndarray]":
    """Our DDPM's torch state_dict (numpy, ``sigmas`` first, then ``all_modules.{i}.*`` in
    order) of a diffusers ``UNet2DModel`` state_dict (numpy arrays or tensors).

    Every diffusers key is used and every shape checked: missing / unexpected keys, a
    wrong shape, a non-floating or non-finite tensor raise naming the key (and ``what``,
    e.g. the file). The old attention names (``DEPRECATED_ATTENTION_NAMES``) are read.
    """
    table = diffusers_key_table(config)
    state_dict = _renamed_deprecated(state_dict, what)
    checked = check_state_dict(state_dict, (KeyMap(e.diffusers_key, e.key.flax_path, "same", e.shape) for e in table),
                               what=what)
    out: "collections.OrderedDict[str, np.ndarray]" = collections.OrderedDict(
        (k, np.asarray(v)) for k, v in derived_buffers(config).items())
    for e in table:
        out[e.key.torch_key] = e.to_ours(checked[e.diffusers_key])
    return out


def diffusers_state_dict_from_ddpm(state_dict: Mapping[str, Any], config: DDPMConfig) \
        -> "collections.OrderedDict[str, np.ndarray]":
    """The inverse of ``ddpm_state_dict_from_diffusers``: diffusers' names and layouts
    (numpy) of our DDPM's torch state_dict (the ``sigmas`` buffer, if present, is
    checked against the config and dropped)."""
    table = diffusers_key_table(config)
    checked = check_state_dict(state_dict, (e.key for e in table), derived=derived_buffers(config),
                               what="DDPM state_dict")
    return collections.OrderedDict((e.diffusers_key, e.to_diffusers(checked[e.key.torch_key])) for e in table)


# ---------------------------------------------------------------------- schedulers


@dataclasses.dataclass(frozen=True)
class SchedulerSettings:
    """What a diffusers ``DDPMScheduler`` / ``DDIMScheduler`` config means here.

    ``diffusion``: the ``spec.DiffusionConfig`` of the same process (respaced to the
    scheduler's inference grid when ``num_inference_steps`` was given);
    ``clip_denoised``: the scheduler's ``clip_sample`` (our samplers' keyword);
    ``scheduler``: the diffusers class name.
    """

    diffusion: DiffusionConfig
    clip_denoised: bool
    scheduler: str

    @property
    def sampler_kwargs(self) -> dict:
        """Keyword arguments of our DDPM / DDIM samplers: ``{"clip_denoised": ...}``."""
        return {"clip_denoised": self.clip_denoised}


def _close(a, b) -> bool:
    return isinstance(a, (int, float)) and not isinstance(a, bool) and math.isclose(float(a), b, rel_tol=1e-9)


def scheduler_settings_from_diffusers(scheduler_config, *, num_inference_steps: int | None = None) \
        -> SchedulerSettings:
    """Map a diffusers scheduler config onto ``SchedulerSettings``.

    Args:
      scheduler_config: the ``scheduler_config.json`` dict, the file, or a directory
        (see ``find_scheduler_config``).
      num_inference_steps: the diffusers ``set_timesteps`` count to reproduce (default:
        ``num_train_timesteps``, the full process). With ``timestep_spacing="leading"``
        diffusers steps on ``0, r, 2r, ..., (n-1) r`` with ``r = T // n``, which is our
        ``timestep_respacing="ddim{n}"`` when ``n`` divides ``T``.

    Mapping: ``beta_schedule`` ``"linear"`` (with improved-diffusion's
    ``beta_start = 1e-4 * 1000 / T``, ``beta_end = 0.02 * 1000 / T``: 1e-4 and 0.02 at
    T = 1000) -> ``"linear"``, ``"squaredcos_cap_v2"`` -> ``"cosine"``;
    ``variance_type`` ``fixed_small`` / ``fixed_small_log`` / ``fixed_large`` /
    ``learned_range`` -> the ``ModelVarType`` of that name; ``prediction_type``
    ``epsilon`` / ``sample`` -> ``EPSILON`` / ``START_X``; ``clip_sample`` ->
    ``clip_denoised``.

    Raises:
      ValueError: naming every field whose value has no counterpart here
        (``scaled_linear`` / ``sigmoid`` schedules, other linear ranges,
        ``trained_betas``, ``v_prediction``, ``variance_type="learned"`` (diffusers reads
        it as a variance, improved-diffusion as a log-variance), thresholding, a clip
        range other than 1, ``rescale_betas_zero_snr``, ``steps_offset``, DDIM's
        ``set_alpha_to_one=False``, a spacing or step count whose grid differs).
    """
    if isinstance(scheduler_config, Mapping):
        data, where = dict(scheduler_config), SCHEDULER_CONFIG_NAME
    else:
        p = find_scheduler_config(scheduler_config)
        data, where = read_diffusers_config(p, SCHEDULER_CONFIG_NAME), str(p)
    cls = data.get("_class_name")
    if cls not in _SCHEDULER_DEFAULTS:
        raise ValueError(f"{where}: _class_name {cls!r} is not supported; supported schedulers: "
                         f"{', '.join(_SCHEDULER_DEFAULTS)}")
    c = _fields(data, _SCHEDULER_DEFAULTS[cls], where)
    problems: list[str] = []

    def bad(field: str, why: str) -> None:
        problems.append(f"{field}={c[field]!r}: {why}")

    T = c["num_train_timesteps"]
    if not _is_int(T) or T < 1:
        bad("num_train_timesteps", "must be a positive integer")
        T = None
    schedule = _BETA_SCHEDULES.get(c["beta_schedule"])
    if schedule is None:
        bad("beta_schedule", f"supported: {', '.join(_BETA_SCHEDULES)} (spec.DiffusionConfig has the linear "
                             "and cosine schedules only)")
    elif schedule == "linear" and T is not None:
        start, end = 1e-4 * 1000 / T, 0.02 * 1000 / T
        if not _close(c["beta_start"], start):
            bad("beta_start", f"the linear schedule here is improved-diffusion's, beta_start = 1e-4 * 1000 / T "
                              f"= {start:g} for num_train_timesteps={T}")
        if not _close(c["beta_end"], end):
            bad("beta_end", f"the linear schedule here is improved-diffusion's, beta_end = 0.02 * 1000 / T "
                            f"= {end:g} for num_train_timesteps={T}")
        if T <= 20:
            bad("num_train_timesteps", "the linear schedule needs T > 20 (betas 0.02 * 1000 / T < 1)")
    if c["trained_betas"] is not None:
        bad("trained_betas", "explicit betas are not supported (spec.DiffusionConfig has named schedules)")
    mean_type = _PREDICTION_TYPES.get(c["prediction_type"])
    if mean_type is None:
        bad("prediction_type", f"supported: {', '.join(_PREDICTION_TYPES)}")
    var_type = ModelVarType.FIXED_SMALL
    if cls == "DDPMScheduler":
        var_type = _VARIANCE_TYPES.get(c["variance_type"])
        if var_type is None:
            bad("variance_type", f"supported: {', '.join(_VARIANCE_TYPES)}")
    elif c["set_alpha_to_one"] is not True:
        bad("set_alpha_to_one", "our DDIM's last step goes to alpha_bar = 1 (diffusers' set_alpha_to_one=True)")
    if c["thresholding"] is not False:
        bad("thresholding", "dynamic thresholding is not supported")
    if not isinstance(c["clip_sample"], bool):
        bad("clip_sample", "must be true or false")
    elif c["clip_sample"] and not _close(c["clip_sample_range"], 1.0):
        bad("clip_sample_range", "our samplers clip the predicted x_0 to [-1, 1]")
    if c["rescale_betas_zero_snr"] is not False:
        bad("rescale_betas_zero_snr", "zero-terminal-SNR rescaling is not supported")
    if c["steps_offset"] != 0:
        bad("steps_offset", "our timestep grids start at 0")
    respacing = ""
    if num_inference_steps is not None and T is not None:
        n = check_int("num_inference_steps", num_inference_steps, minimum=1)
        if n > T:
            raise ValueError(f"num_inference_steps={n} exceeds num_train_timesteps={T}")
        if n < T:
            if c["timestep_spacing"] != "leading":
                bad("timestep_spacing", f"only 'leading' grids (0, T//n, 2 T//n, ...) are respacings here "
                                        f"(num_inference_steps={n} < num_train_timesteps={T})")
            elif T % n:
                raise ValueError(f"num_inference_steps={n} must divide num_train_timesteps={T}: diffusers' "
                                 f"'leading' grid has stride {T // n} and ends at {(n - 1) * (T // n)}, which no "
                                 "timestep_respacing here reproduces")
            respacing = f"ddim{n}"
    _raise_problems(where, f"this {cls} config has no counterpart here", problems)
    diffusion = DiffusionConfig(steps=T, noise_schedule=schedule, timestep_respacing=respacing,
                                model_mean_type=mean_type, model_var_type=var_type)
    return SchedulerSettings(diffusion=diffusion, clip_denoised=check_bool("clip_sample", c["clip_sample"]),
                             scheduler=cls)
