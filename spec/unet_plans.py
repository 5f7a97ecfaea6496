"""The layouts of score_sde's U-Nets (DDPM, NCSN++ / DDPM++) as data: one plan per config.

Framework-neutral (stdlib only). A plan is the ordered tuple of the network's
``all_modules`` entries (flax ``all_modules_{i}``, torch ``all_modules.{i}``), each a
``Block`` with its kind, index, input / output channels, stage and level, and the few
flags that change its tensors. Three readers walk the same plan, so the layout is
written once:

- ``jax_impl/models/ddpm.py`` / ``ncsnpp.py`` build their flax submodules from it;
- ``torch_ref/models/ddpm.py`` / ``ncsnpp.py`` build their torch submodules from it;
- ``spec/keytables.py`` lists every tensor (torch key, flax path, shape) from it.

The forward passes consume the modules in plan order (each asserts it used them all).

Block kinds (``BLOCK_KINDS``) and the fields they use:

  ``fourier``     GaussianFourierProjection, ``out_ch`` = embedding size (frozen ``W``)
  ``dense``       Dense / Linear ``in_ch -> out_ch`` (timestep embedding MLP)
  ``conv3x3``     3x3 convolution ``in_ch -> out_ch``, DDPM initialiser ``init_scale``
  ``resnet``      ResnetBlockDDPM(pp) or, ``resblock="biggan"``, ResnetBlockBigGANpp
                  (``resample`` ``"down"`` / ``"up"`` / None)
  ``attn``        AttnBlock (DDPM) / AttnBlockpp (NCSN++) over ``in_ch`` channels
  ``downsample``  2x down-sampling ``in_ch -> out_ch``, a conv when ``with_conv``
                  (``fir``: named ``Conv2d_0``, else ``Conv_0``)
  ``upsample``    2x up-sampling, same fields
  ``combine``     layerspp.Combine: 1x1 conv of the input pyramid ``in_ch -> out_ch``
                  (``method`` ``"sum"`` / ``"cat"``)
  ``group_norm``  GroupNorm over ``in_ch`` channels in ``groups`` groups

``stage`` is ``"embed" | "input" | "down" | "middle" | "up" | "output"``; ``role`` marks
the input / output pyramid modules of NCSN++ (``"pyramid"``), empty otherwise.

``ddpm_plan(config)`` and ``ncsnpp_plan(config)`` follow score_sde_pytorch's ``__init__``
(current ``ncsnpp.py``: the parameter-free pyramid resamplers are not in ``all_modules``).
"""

from __future__ import annotations

import dataclasses
import functools

__all__ = ["BLOCK_KINDS", "Block", "ddpm_plan", "ncsnpp_plan", "unet_plan"]

BLOCK_KINDS = ("fourier", "dense", "conv3x3", "resnet", "attn", "downsample", "upsample", "combine", "group_norm")
STAGES = ("embed", "input", "down", "middle", "up", "output")


@dataclasses.dataclass(frozen=True)
class Block:
    """One entry of ``all_modules`` (see the module docstring for the kinds)."""

    kind: str
    index: int
    in_ch: int
    out_ch: int
    stage: str
    level: int | None = None
    role: str = ""
    resblock: str = "ddpm"
    resample: str | None = None
    with_conv: bool = False
    fir: bool = False
    init_scale: float = 1.0
    groups: int = 0
    method: str = ""

    def __post_init__(self):
        if self.kind not in BLOCK_KINDS:
            raise ValueError(f"Block: unknown kind {self.kind!r}; valid: {BLOCK_KINDS}")
        if self.stage not in STAGES:
            raise ValueError(f"Block: unknown stage {self.stage!r}; valid: {STAGES}")


class _Plan:
    """Appends blocks with consecutive ``all_modules`` indices."""

    def __init__(self):
        self.blocks: list[Block] = []

    def add(self, kind: str, in_ch: int, out_ch: int, stage: str, **fields) -> None:
        self.blocks.append(Block(kind, len(self.blocks), in_ch, out_ch, stage, **fields))

    def down_level(self, config, level: int, in_ch: int, hs_c: list, **resnet_fields) -> int:
        """``num_res_blocks`` x (resnet [+ attn]) at ``level``, pushing each output width
        on the skip stack ``hs_c``; returns the width."""
        attn = config.all_resolutions[level] in config.attn_resolutions
        for _ in range(config.num_res_blocks):
            out_ch = config.nf * config.ch_mult[level]
            self.add("resnet", in_ch, out_ch, "down", level=level, **resnet_fields)
            in_ch = out_ch
            if attn:
                self.add("attn", in_ch, in_ch, "down", level=level)
            hs_c.append(in_ch)
        return in_ch

    def middle(self, ch: int, **resnet_fields) -> int:
        """resnet, attn, resnet at the lowest resolution."""
        self.add("resnet", ch, ch, "middle", **resnet_fields)
        self.add("attn", ch, ch, "middle")
        self.add("resnet", ch, ch, "middle", **resnet_fields)
        return ch

    def up_level(self, config, level: int, in_ch: int, hs_c: list, **resnet_fields) -> int:
        """``num_res_blocks + 1`` x resnet on ``concat(h, skip)`` (popping ``hs_c``), then
        ONE attn at attention levels (score_sde's ports); with a DDPMConfig's
        ``up_attention="per_block"`` (the TF original, diffusers) an attn after EACH of
        those resnets instead. Returns the width."""
        attn = config.all_resolutions[level] in config.attn_resolutions
        per_block = getattr(config, "up_attention", "per_level") == "per_block"
        for _ in range(config.num_res_blocks + 1):
            out_ch = config.nf * config.ch_mult[level]
            self.add("resnet", in_ch + hs_c.pop(), out_ch, "up", level=level, **resnet_fields)
            in_ch = out_ch
            if attn and per_block:
                self.add("attn", in_ch, in_ch, "up", level=level)
        if attn and not per_block:
            self.add("attn", in_ch, in_ch, "up", level=level)
        return in_ch


def _pp_groups(channels: int) -> int:
    """NCSN++'s GroupNorm groups: ``min(C // 4, 32)``."""
    return min(channels // 4, 32)


@functools.lru_cache(maxsize=64)
def ddpm_plan(config) -> tuple[Block, ...]:
    """The ``all_modules`` of score_sde's ``ddpm`` for a ``DDPMConfig``.

    [Dense(nf -> 4nf), Dense(4nf -> 4nf)] (conditional), conv3x3(C -> nf); per level
    ``num_res_blocks`` x (resnet [+ attn]) [+ downsample]; middle resnet, attn, resnet;
    per level (reversed) ``num_res_blocks + 1`` x resnet on ``concat(h, skip)``, ONE attn
    at attention levels (``up_attention="per_block"``: one after each of them) [+ upsample]; GroupNorm(32), conv3x3(-> ``out_channels``,
    init_scale 0): C, or 2C (eps, v) with ``learn_sigma``.
    """
    p = _Plan()
    nf, C = config.nf, config.num_channels
    temb = 4 * nf
    if config.conditional:
        p.add("dense", nf, temb, "embed")
        p.add("dense", temb, temb, "embed")
    p.add("conv3x3", C, nf, "input")
    hs_c = [nf]
    in_ch = nf
    for level in range(config.num_resolutions):
        in_ch = p.down_level(config, level, in_ch, hs_c)
        if level != config.num_resolutions - 1:
            p.add("downsample", in_ch, in_ch, "down", level=level, with_conv=config.resamp_with_conv)
            hs_c.append(in_ch)
    in_ch = p.middle(hs_c[-1])
    for level in reversed(range(config.num_resolutions)):
        in_ch = p.up_level(config, level, in_ch, hs_c)
        if level != 0:
            p.add("upsample", in_ch, in_ch, "up", level=level, with_conv=config.resamp_with_conv)
    assert not hs_c
    p.add("group_norm", in_ch, in_ch, "output", groups=32)
    p.add("conv3x3", in_ch, config.out_channels, "output", init_scale=0.0)
    return tuple(p.blocks)


@functools.lru_cache(maxsize=64)
def ncsnpp_plan(config) -> tuple[Block, ...]:
    """The ``all_modules`` of score_sde's ``ncsnpp`` (NCSN++ / DDPM++) for an ``NCSNppConfig``.

    See ``jax_impl/models/ncsnpp.py`` for the order in words. Resnet blocks are
    ``config.resblock_type``; between levels the down- / up-sampling is a BigGAN block
    with ``resample`` for ``"biggan"``, a (FIR) Downsample / Upsample otherwise; the
    input pyramid (``progressive_input``) and output pyramid (``progressive``) add
    ``role="pyramid"`` modules.
    """
    p = _Plan()
    nf, C = config.nf, config.num_channels
    temb = 4 * nf
    biggan = config.resblock_type == "biggan"
    rb = config.resblock_type
    fir = config.fir
    init_scale = config.init_scale

    def resample(kind, level, ch):
        if biggan:
            p.add("resnet", ch, ch, "down" if kind == "downsample" else "up", level=level, resblock=rb,
                  resample="down" if kind == "downsample" else "up")
        else:
            p.add(kind, ch, ch, "down" if kind == "downsample" else "up", level=level,
                  with_conv=config.resamp_with_conv, fir=fir)

    if config.embedding_type == "fourier":
        p.add("fourier", 1, nf, "embed")
    if config.conditional:
        p.add("dense", config.embed_dim, temb, "embed")
        p.add("dense", temb, temb, "embed")
    p.add("conv3x3", C, nf, "input")
    input_pyramid_ch = C
    hs_c = [nf]
    in_ch = nf
    for level in range(config.num_resolutions):
        in_ch = p.down_level(config, level, in_ch, hs_c, resblock=rb)
        if level != config.num_resolutions - 1:
            resample("downsample", level, in_ch)
            if config.progressive_input == "input_skip":
                p.add("combine", input_pyramid_ch, in_ch, "down", level=level, role="pyramid",
                      method=config.progressive_combine)
                if config.progressive_combine == "cat":
                    in_ch *= 2
            elif config.progressive_input == "residual":
                p.add("downsample", input_pyramid_ch, in_ch, "down", level=level, role="pyramid",
                      with_conv=True, fir=fir)
                input_pyramid_ch = in_ch
            hs_c.append(in_ch)
    in_ch = p.middle(hs_c[-1], resblock=rb)
    pyramid_ch = 0
    for level in reversed(range(config.num_resolutions)):
        in_ch = p.up_level(config, level, in_ch, hs_c, resblock=rb)
        if config.progressive != "none":
            if level == config.num_resolutions - 1:
                p.add("group_norm", in_ch, in_ch, "up", level=level, role="pyramid", groups=_pp_groups(in_ch))
                if config.progressive == "output_skip":
                    p.add("conv3x3", in_ch, C, "up", level=level, role="pyramid", init_scale=init_scale)
                    pyramid_ch = C
                else:
                    p.add("conv3x3", in_ch, in_ch, "up", level=level, role="pyramid")
                    pyramid_ch = in_ch
            elif config.progressive == "output_skip":
                p.add("group_norm", in_ch, in_ch, "up", level=level, role="pyramid", groups=_pp_groups(in_ch))
                p.add("conv3x3", in_ch, C, "up", level=level, role="pyramid", init_scale=init_scale)
                pyramid_ch = C
            else:
                p.add("upsample", pyramid_ch, in_ch, "up", level=level, role="pyramid", with_conv=True, fir=fir)
                pyramid_ch = in_ch
        if level != 0:
            resample("upsample", level, in_ch)
    assert not hs_c
    if config.progressive != "output_skip":
        p.add("group_norm", in_ch, in_ch, "output", groups=_pp_groups(in_ch))
        p.add("conv3x3", in_ch, C, "output", init_scale=init_scale)
    return tuple(p.blocks)


def unet_plan(config) -> tuple[Block, ...]:
    """``ddpm_plan`` or ``ncsnpp_plan`` by the config's ``name`` (``"ddpm"`` / ``"ncsnpp"``)."""
    name = getattr(config, "name", None)
    if name == "ddpm":
        return ddpm_plan(config)
    if name == "ncsnpp":
        return ncsnpp_plan(config)
    raise TypeError(f"no U-Net plan for config type {type(config).__name__}; expected DDPMConfig or NCSNppConfig")
