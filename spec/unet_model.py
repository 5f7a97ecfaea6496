"""improved-diffusion's ``UNetModel`` (Nichol & Dhariwal 2021): its config, its flags and its layout.

Framework-neutral (numpy + stdlib only). ``jax_impl/models/unet.py`` (flax, NHWC) and
``torch_ref/models/unet.py`` (torch, NCHW) build the network from ``unet_model_plan(config)``;
``spec.keytables.improved_unet_key_table`` walks the same plan to list every tensor with its
official ``state_dict`` key.

- ``UNetModelConfig``: the frozen config. Its fields are the official ``UNetModel``
  constructor's (``in_channels, model_channels, out_channels, num_res_blocks,
  attention_resolutions, dropout, channel_mult, conv_resample, dims, num_classes,
  use_checkpoint, num_heads, num_heads_upsample, use_scale_shift_norm``) plus
  ``image_size``. ``attention_resolutions`` holds the official DOWN-SAMPLING FACTORS
  (``ds``: attention where the feature map is ``image_size / ds``), which ``create_model``
  computes from the flag string (``"16,8"`` at 64 px -> ``(4, 8)``). ``num_classes`` is an
  int, 0 = unconditional (``class_cond=True`` -> ``NUM_CLASSES`` = 1000).
- ``UNetModelConfig.from_improved_diffusion_args(flags)``: the network of the official
  ``create_model`` for the dict of ``model_and_diffusion_defaults()`` keys (diffusion keys
  are accepted and ignored; ``spec.DiffusionConfig.from_improved_diffusion_args`` reads
  them). Missing keys take ``IMPROVED_DIFFUSION_DEFAULTS``; unknown keys raise, naming them;
  values may be the strings of the official command line (``"True"``, ``"64"``), parsed as
  its ``add_dict_to_argparser`` does. ``parse_improved_diffusion_flags`` turns a
  ``MODEL_FLAGS`` string (``"--image_size 64 --num_channels 128 ..."``) into that dict.
- ``IMPROVED_DIFFUSION_PRESETS``: the four released architectures whose parameter counts
  the official code gives (CIFAR-10 52,546,438; ImageNet-64 121,063,942 and class-conditional
  121,575,942; LSUN 256 124,056,710).
- ``unet_model_plan(config)``: the layout as data, ``UNetPlan(input_blocks, middle_block,
  output_blocks)``, each block a tuple of ``UNetLayer`` (one ``TimestepEmbedSequential``).

Official semantics reproduced: GroupNorm32 (32 groups, eps 1e-5, computed in float32),
SiLU everywhere, the sinusoidal ``timestep_embedding`` (max_period 10000, cos then sin) of
width ``model_channels`` through ``Linear -> SiLU -> Linear`` to ``4 model_channels``, plus
the label embedding; ResBlocks with a 1x1 skip conv when the width changes and the output
conv zero-initialised; attention with the legacy QKV layout (heads outermost, then q, k, v);
a 3x3 stride-2 conv (or 2x2 average pool) to down-sample, nearest x2 (+ 3x3 conv) to
up-sample. Where the official code would crash (``channel_mult[0] != 1``: its last conv takes
``model_channels`` inputs while the features have ``model_channels * channel_mult[0]``),
ours takes the feature width, which equals the official one whenever the official code runs.
"""

from __future__ import annotations

import dataclasses
import shlex
import types
from typing import Any, Mapping, Optional

from spec.validate import check_bool, check_choice, check_float, check_int

__all__ = [
    "IMPROVED_DIFFUSION_DEFAULTS",
    "IMPROVED_DIFFUSION_PRESETS",
    "LAYER_KINDS",
    "NUM_CLASSES",
    "UNetLayer",
    "UNetModelConfig",
    "UNetPlan",
    "check_improved_diffusion_flags",
    "default_channel_mult",
    "parse_improved_diffusion_flags",
    "unet_model_plan",
]

#: improved-diffusion's ``NUM_CLASSES`` (ImageNet): ``class_cond=True`` means this many classes.
NUM_CLASSES = 1000

#: improved-diffusion's ``model_and_diffusion_defaults()`` (improved_diffusion/script_util.py).
IMPROVED_DIFFUSION_DEFAULTS: Mapping[str, Any] = types.MappingProxyType({
    "image_size": 64,
    "num_channels": 128,
    "num_res_blocks": 2,
    "num_heads": 4,
    "num_heads_upsample": -1,
    "attention_resolutions": "16,8",
    "dropout": 0.0,
    "learn_sigma": False,
    "sigma_small": False,
    "class_cond": False,
    "diffusion_steps": 1000,
    "noise_schedule": "linear",
    "timestep_respacing": "",
    "use_kl": False,
    "predict_xstart": False,
    "rescale_timesteps": True,
    "rescale_learned_sigmas": True,
    "use_checkpoint": False,
    "use_scale_shift_norm": True,
})

#: ``create_model``'s channel multipliers per image size.
_CHANNEL_MULTS = types.MappingProxyType({256: (1, 1, 2, 2, 4, 4), 64: (1, 2, 3, 4), 32: (1, 2, 2, 2)})


def default_channel_mult(image_size: int) -> tuple[int, ...]:
    """The official ``create_model`` multipliers: 256 -> (1, 1, 2, 2, 4, 4), 64 -> (1, 2, 3, 4),
    32 -> (1, 2, 2, 2); other sizes raise ``ValueError`` naming ``channel_mult``."""
    if image_size not in _CHANNEL_MULTS:
        raise ValueError(f"channel_mult must be given for image_size {image_size}: improved-diffusion "
                         f"defines multipliers for image sizes {sorted(_CHANNEL_MULTS)} only")
    return _CHANNEL_MULTS[image_size]


def _str2bool(name: str, value) -> bool:
    """The official ``str2bool`` (bools pass; yes/true/t/y/1 and no/false/f/n/0, any case)."""
    if isinstance(value, str):
        low = value.lower()
        if low in ("yes", "true", "t", "y", "1"):
            return True
        if low in ("no", "false", "f", "n", "0"):
            return False
        raise ValueError(f"flag {name} must be a boolean (True/False), got {value!r}")
    return check_bool(f"flag {name}", value)


def _coerce_flag(name: str, value):
    """A flag value parsed by the type of its official default (as ``add_dict_to_argparser``)."""
    default = IMPROVED_DIFFUSION_DEFAULTS[name]
    if isinstance(default, bool):
        return _str2bool(name, value)
    if isinstance(default, int):
        if isinstance(value, str):
            try:
                value = int(value)
            except ValueError:
                raise ValueError(f"flag {name} must be an integer, got {value!r}") from None
        return check_int(f"flag {name}", value)
    if isinstance(default, float):
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ValueError(f"flag {name} must be a number, got {value!r}") from None
        return check_float(f"flag {name}", value)
    if name == "timestep_respacing" and isinstance(value, (list, tuple)):  # space_timesteps takes counts too
        return ",".join(str(check_int(f"flag {name}[{i}]", v, minimum=1)) for i, v in enumerate(value))
    if not isinstance(value, str):
        raise TypeError(f"flag {name} must be a string, got {type(value).__name__} {value!r}")
    return value


def check_improved_diffusion_flags(flags: Mapping[str, Any]) -> dict[str, Any]:
    """Every ``model_and_diffusion_defaults()`` key, from ``flags`` or the official default,
    parsed to its type. ``TypeError`` if ``flags`` is not a mapping; ``ValueError`` naming
    unknown keys (with the valid ones) or a bad value."""
    if not isinstance(flags, Mapping):
        raise TypeError(f"flags must be a dict of improved-diffusion's model_and_diffusion_defaults() keys, "
                        f"got {type(flags).__name__}")
    unknown = sorted(str(k) for k in flags if k not in IMPROVED_DIFFUSION_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown improved-diffusion flag(s) {unknown}; valid flags: "
                         f"{sorted(IMPROVED_DIFFUSION_DEFAULTS)}")
    return {k: _coerce_flag(k, flags.get(k, d)) for k, d in IMPROVED_DIFFUSION_DEFAULTS.items()}


def parse_improved_diffusion_flags(argv) -> dict[str, Any]:
    """``"--image_size 64 --learn_sigma True"`` (or its list of words) -> ``{"image_size": 64,
    "learn_sigma": True}``: only the flags given, parsed by their official types; unknown
    flags or a flag without a value raise ``ValueError`` naming it."""
    words = shlex.split(argv) if isinstance(argv, str) else list(argv)
    out: dict[str, Any] = {}
    i = 0
    while i < len(words):
        word = str(words[i])
        if not word.startswith("--"):
            raise ValueError(f"expected a --flag, got {word!r} in the improved-diffusion flags")
        name, eq, value = word[2:].partition("=")
        if name not in IMPROVED_DIFFUSION_DEFAULTS:
            raise ValueError(f"unknown improved-diffusion flag --{name}; valid flags: "
                             f"{sorted(IMPROVED_DIFFUSION_DEFAULTS)}")
        if not eq:
            if i + 1 >= len(words):
                raise ValueError(f"improved-diffusion flag --{name} has no value")
            i += 1
            value = str(words[i])
        out[name] = _coerce_flag(name, value)
        i += 1
    return out


def _int_tuple(name: str, value, *, minimum: int, allow_empty: bool) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list, set, frozenset)):
        raise TypeError(f"{name} must be a tuple of integers, got {type(value).__name__} {value!r}")
    items = sorted(value) if isinstance(value, (set, frozenset)) else value
    out = tuple(check_int(f"{name}[{i}]", v, minimum=minimum) for i, v in enumerate(items))
    if not out and not allow_empty:
        raise ValueError(f"{name} must not be empty")
    return out


@dataclasses.dataclass(frozen=True)
class UNetModelConfig:
    """improved-diffusion's ``UNetModel``. Defaults: ``model_and_diffusion_defaults()``'s network
    (64 px, 128 channels, 2 res blocks, 4 heads, attention at ``ds`` 4 and 8, scale-shift norm).

    Attributes:
      image_size: H = W of the training images (fixes the default ``channel_mult``).
      in_channels: C of the input (3 in every ``create_model``).
      model_channels: base width (the ``num_channels`` flag); every level's width
        ``model_channels * mult`` must be a multiple of 32 (GroupNorm32).
      out_channels: C, or 2C (eps, then the variance values v) with ``learn_sigma``.
      num_res_blocks: ResBlocks per level on the way down (one more on the way up).
      attention_resolutions: down-sampling factors ``ds`` (1, 2, 4, ...) with attention
        after each ResBlock (the official meaning; ``from_improved_diffusion_args`` computes
        them from the resolutions string as ``image_size // res``). Stored sorted.
      dropout: in every ResBlock's ``out_layers`` (train mode only).
      channel_mult: per-level multipliers; None -> ``default_channel_mult(image_size)``
        (an explicit tuple for other sizes, e.g. small test networks). Stored resolved, so
        ``dataclasses.replace(config, image_size=...)`` keeps the multipliers.
      conv_resample: 3x3 convs in Downsample / Upsample (else average pooling / plain
        nearest up-sampling).
      dims: 2 (images) only.
      num_classes: 0 = unconditional; K > 0: class-conditional with K classes, called with
        ``y=`` (int ``[B]``), a learned ``[K, 4 model_channels]`` embedding added to the
        time embedding.
      use_checkpoint: gradient checkpointing (``nn.remat`` in JAX, ``torch.utils.checkpoint``
        in torch) of every ResBlock and AttentionBlock; numbers unchanged.
      num_heads: attention heads on the down path and in the middle; ``num_heads_upsample``
        on the up path (-1 = ``num_heads``). Each attention width must divide by its heads.
      use_scale_shift_norm: FiLM-like ``norm(h) * (1 + scale) + shift`` from the embedding
        (its ``emb_layers`` output 2x wider) instead of adding the embedding.
    """

    name: str = "improved_unet"
    image_size: int = 64
    in_channels: int = 3
    model_channels: int = 128
    out_channels: int = 3
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (4, 8)
    dropout: float = 0.0
    channel_mult: Optional[tuple[int, ...]] = None
    conv_resample: bool = True
    dims: int = 2
    num_classes: int = 0
    use_checkpoint: bool = False
    num_heads: int = 4
    num_heads_upsample: int = -1
    use_scale_shift_norm: bool = True

    def __post_init__(self):
        if self.name != "improved_unet":
            raise ValueError(f"name must be 'improved_unet' for UNetModelConfig, got {self.name!r}")
        s = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        s("image_size", check_int("image_size", self.image_size, minimum=1))
        s("in_channels", check_int("in_channels", self.in_channels, minimum=1))
        s("model_channels", check_int("model_channels", self.model_channels, minimum=1))
        s("out_channels", check_int("out_channels", self.out_channels, minimum=1))
        s("num_res_blocks", check_int("num_res_blocks", self.num_res_blocks, minimum=1))
        s("attention_resolutions", tuple(sorted(set(_int_tuple(
            "attention_resolutions", self.attention_resolutions, minimum=1, allow_empty=True)))))
        dropout = check_float("dropout", self.dropout, nonnegative=True)
        if dropout >= 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        s("dropout", dropout)
        mult = default_channel_mult(self.image_size) if self.channel_mult is None else self.channel_mult
        s("channel_mult", _int_tuple("channel_mult", mult, minimum=1, allow_empty=False))
        for k in ("conv_resample", "use_checkpoint", "use_scale_shift_norm"):
            s(k, check_bool(k, getattr(self, k)))
        dims = check_int("dims", self.dims)
        if dims != 2:
            raise ValueError(f"dims must be 2 (images; the 1-D and 3-D variants are not supported), got {dims}")
        s("dims", dims)
        s("num_classes", check_int("num_classes", self.num_classes, minimum=0))
        s("num_heads", check_int("num_heads", self.num_heads, minimum=1))
        up = check_int("num_heads_upsample", self.num_heads_upsample)
        if up != -1 and up < 1:
            raise ValueError(f"num_heads_upsample must be >= 1 or -1 (= num_heads), got {up}")
        s("num_heads_upsample", up)
        for m in self.channel_mult:
            if (self.model_channels * m) % 32:
                raise ValueError(f"model_channels * channel_mult must be multiples of 32 (GroupNorm32), got "
                                 f"model_channels={self.model_channels}, channel_mult={self.channel_mult}")
        if self.image_size % self.downsampling_factor:
            raise ValueError(f"image_size {self.image_size} must be divisible by the down-sampling factor "
                             f"2**(len(channel_mult)-1) = {self.downsampling_factor}")
        for level, m in enumerate(self.channel_mult):
            if 2 ** level in self.attention_resolutions:
                width = self.model_channels * m
                for field, heads in (("num_heads", self.num_heads), ("num_heads_upsample", self.heads_upsample)):
                    if width % heads:
                        raise ValueError(f"{field}={heads} must divide the attention width {width} "
                                         f"(level {level}, ds {2 ** level})")

    # ---------------------------------------------------------------- derived values

    @property
    def heads_upsample(self) -> int:
        """Heads of the up-path attention: ``num_heads_upsample``, or ``num_heads`` for -1."""
        return self.num_heads if self.num_heads_upsample == -1 else self.num_heads_upsample

    @property
    def num_channels(self) -> int:
        """The data's channels (``in_channels``), the name the rest of the library reads."""
        return self.in_channels

    @property
    def learn_sigma(self) -> bool:
        """True when the output holds eps and v (``out_channels == 2 in_channels``)."""
        return self.out_channels == 2 * self.in_channels

    @property
    def time_embed_dim(self) -> int:
        """Width of the time (and label) embedding: ``4 model_channels``."""
        return 4 * self.model_channels

    @property
    def num_resolutions(self) -> int:
        return len(self.channel_mult)

    @property
    def downsampling_factor(self) -> int:
        """The input's height and width must be multiples of this: ``2**(len(channel_mult)-1)``."""
        return 2 ** (len(self.channel_mult) - 1)

    # ---------------------------------------------------------------- official flags

    @classmethod
    def from_improved_diffusion_args(cls, flags: Mapping[str, Any]) -> "UNetModelConfig":
        """The network of improved-diffusion's ``create_model`` for ``flags``.

        ``flags``: a dict of ``model_and_diffusion_defaults()`` keys (``image_size``,
        ``num_channels``, ``num_res_blocks``, ``learn_sigma``, ``class_cond``,
        ``attention_resolutions`` (the string ``"16,8"``), ``num_heads``,
        ``num_heads_upsample``, ``use_scale_shift_norm``, ``dropout``, ``use_checkpoint``;
        the diffusion keys are accepted and do not shape the network). Missing keys take the
        official defaults, unknown keys raise ``ValueError`` naming them. Like the official
        code, ``image_size`` must be 32, 64 or 256 (the sizes with channel multipliers).
        """
        f = check_improved_diffusion_flags(flags)
        size = f["image_size"]
        if size not in _CHANNEL_MULTS:
            raise ValueError(f"flag image_size must be one of {sorted(_CHANNEL_MULTS)} (improved-diffusion's "
                             f"create_model), got {size}; build a UNetModelConfig with channel_mult for others")
        ds = []
        for part in f["attention_resolutions"].split(","):
            try:
                res = int(part)
            except ValueError:
                raise ValueError(f"flag attention_resolutions must be comma-separated integers such as '16,8', "
                                 f"got {f['attention_resolutions']!r}") from None
            if res < 1:
                raise ValueError(f"flag attention_resolutions holds {res}; resolutions must be >= 1")
            ds.append(size // res)
        return cls(
            image_size=size, in_channels=3, model_channels=f["num_channels"],
            out_channels=6 if f["learn_sigma"] else 3, num_res_blocks=f["num_res_blocks"],
            attention_resolutions=tuple(ds), dropout=f["dropout"], channel_mult=_CHANNEL_MULTS[size],
            num_classes=NUM_CLASSES if f["class_cond"] else 0, use_checkpoint=f["use_checkpoint"],
            num_heads=f["num_heads"], num_heads_upsample=f["num_heads_upsample"],
            use_scale_shift_norm=f["use_scale_shift_norm"],
        )


# ---------------------------------------------------------------------------- layout

LAYER_KINDS = ("conv", "res", "attn", "down", "up")


@dataclasses.dataclass(frozen=True)
class UNetLayer:
    """One layer of a ``TimestepEmbedSequential`` block.

    ``kind``: ``"conv"`` (the 3x3 input conv), ``"res"`` (ResBlock ``in_ch -> out_ch``; a 1x1
    ``skip_connection`` when they differ), ``"attn"`` (AttentionBlock on ``in_ch`` channels
    with ``num_heads``), ``"down"`` / ``"up"`` (Downsample / Upsample, a 3x3 conv when
    ``with_conv``).
    """

    kind: str
    in_ch: int
    out_ch: int
    num_heads: int = 1
    with_conv: bool = True

    def __post_init__(self):
        check_choice("UNetLayer.kind", self.kind, LAYER_KINDS)


@dataclasses.dataclass(frozen=True)
class UNetPlan:
    """``input_blocks`` and ``output_blocks``: tuples of blocks; ``middle_block``: one block;
    a block is a tuple of ``UNetLayer`` (the official ``TimestepEmbedSequential``).
    ``out_ch``: the width the final GroupNorm + conv see."""

    input_blocks: tuple[tuple[UNetLayer, ...], ...]
    middle_block: tuple[UNetLayer, ...]
    output_blocks: tuple[tuple[UNetLayer, ...], ...]
    out_ch: int


def unet_model_plan(config: UNetModelConfig) -> UNetPlan:
    """The blocks of ``UNetModel(config)`` in the official construction order."""
    if not isinstance(config, UNetModelConfig):
        raise TypeError(f"config must be a UNetModelConfig, got {type(config).__name__}")
    mc, attn = config.model_channels, config.attention_resolutions
    inputs = [(UNetLayer("conv", config.in_channels, mc),)]
    chans = [mc]
    ch, ds = mc, 1
    for level, mult in enumerate(config.channel_mult):
        for _ in range(config.num_res_blocks):
            block = [UNetLayer("res", ch, mult * mc)]
            ch = mult * mc
            if ds in attn:
                block.append(UNetLayer("attn", ch, ch, num_heads=config.num_heads))
            inputs.append(tuple(block))
            chans.append(ch)
        if level != config.num_resolutions - 1:
            inputs.append((UNetLayer("down", ch, ch, with_conv=config.conv_resample),))
            chans.append(ch)
            ds *= 2
    middle = (UNetLayer("res", ch, ch), UNetLayer("attn", ch, ch, num_heads=config.num_heads),
              UNetLayer("res", ch, ch))
    outputs = []
    for level in reversed(range(config.num_resolutions)):
        mult = config.channel_mult[level]
        for i in range(config.num_res_blocks + 1):
            block = [UNetLayer("res", ch + chans.pop(), mc * mult)]
            ch = mc * mult
            if ds in attn:
                block.append(UNetLayer("attn", ch, ch, num_heads=config.heads_upsample))
            if level and i == config.num_res_blocks:
                block.append(UNetLayer("up", ch, ch, with_conv=config.conv_resample))
                ds //= 2
            outputs.append(tuple(block))
    assert not chans
    return UNetPlan(tuple(inputs), middle, tuple(outputs), ch)


def _preset(flags: Mapping[str, Any]) -> UNetModelConfig:
    return UNetModelConfig.from_improved_diffusion_args(flags)


#: The released improved-diffusion models' MODEL_FLAGS (README), with the parameter counts
#: the official code gives: CIFAR-10 52,546,438; ImageNet-64 121,063,942 (class-conditional
#: 121,575,942); LSUN 256 124,056,710.
IMPROVED_DIFFUSION_PRESETS: Mapping[str, UNetModelConfig] = types.MappingProxyType({
    "improved/cifar10_uncond": _preset({"image_size": 32, "num_channels": 128, "num_res_blocks": 3,
                                        "learn_sigma": True, "dropout": 0.3}),
    "improved/imagenet64_uncond": _preset({"image_size": 64, "num_channels": 128, "num_res_blocks": 3,
                                           "learn_sigma": True}),
    "improved/imagenet64_cond": _preset({"image_size": 64, "num_channels": 128, "num_res_blocks": 3,
                                         "learn_sigma": True, "class_cond": True}),
    "improved/lsun256": _preset({"image_size": 256, "num_channels": 128, "num_res_blocks": 2,
                                 "num_heads": 4, "learn_sigma": True}),
})
