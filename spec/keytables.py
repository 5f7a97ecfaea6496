"""Checkpoint key tables: every tensor of every network, torch key <-> flax path, as data.

Framework-neutral (numpy + stdlib only); used by ``spec/convert.py`` and by both
``jax_impl/convert.py`` and ``torch_ref/convert.py``.

A ``KeyTable`` lists, for every tensor, a ``KeyMap``: the torch key, the flax path
(collection first, e.g. ``("params", "all_modules_3", "Conv_0", "kernel")``), the layout
change between them,

  ``"conv"``   torch OIHW  <-> flax HWIO   (2-D convolution kernels)
  ``"conv1d"`` torch OIK   <-> flax KIO    (1-D convolution kernels: improved-diffusion's
               attention ``qkv`` / ``proj_out``)
  ``"dense"``  torch (out, in) <-> flax (in, out)
  ``"same"``   identical layout (biases, norm scales, embeddings)

the torch ``shape`` and whether the tensor is ``trainable`` (a frozen parameter such as
the Fourier projection ``W`` is not: it lives in the flax ``'constants'`` collection and
is not part of score_sde's EMA).

Tables list the tensors in torch ``state_dict`` order, so the trainable entries come out
in ``model.parameters()`` order (the order of score_sde's EMA ``shadow_params``):

- ``mlp_key_table``: our ``MLP`` (``models/mlp.py``);
- ``ddpm_key_table`` / ``ncsnpp_key_table``: walk the U-Net plan of
  ``spec.unet_plans`` -- the same plan both model constructors walk;
- ``refinenet_key_table`` (``ncsn_key_table``, ``ncsnv2_key_table``): NCSN v1 / NCSNv2,
  walking ``spec.ncsn_configs.REFINENET_PLANS``;
- ``improved_unet_key_table``: improved-diffusion's ``UNetModel`` (``models/unet.py``),
  walking ``spec.unet_model.unet_model_plan``; torch keys are the official ones, flax paths
  the torch key with every ``.<index>`` joined by ``_`` (``input_blocks.1.0.in_layers.0.weight``
  -> ``input_blocks_1_0/in_layers_0/scale``);
- ``key_table(config)`` dispatches on the config type.

Buffers a network holds but the flax side recomputes from the config (score_sde's and
NCSNv2's ``sigmas``) are not in the tables: ``derived_buffers(config)`` gives them.
``num_parameters(table)`` counts parameters from the shapes.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

import numpy as np

from spec.model_configs import DDPMConfig, MLPConfig, ModelConfig, NCSNppConfig
from spec.ncsn_configs import NCSN_PLAN, REFINENET_PLANS, NCSNConfig, NCSNv2Config
from spec.unet_model import UNetLayer, UNetModelConfig, unet_model_plan
from spec.unet_plans import Block, ddpm_plan, ncsnpp_plan

__all__ = [
    "LAYOUTS",
    "KeyMap",
    "KeyTable",
    "check_table",
    "derived_buffers",
    "ddpm_key_table",
    "improved_unet_key_table",
    "key_table",
    "mlp_key_table",
    "ncsn_key_table",
    "ncsnpp_key_table",
    "ncsnv2_key_table",
    "num_parameters",
    "refinenet_key_table",
]

LAYOUTS = ("conv", "conv1d", "dense", "same")


@dataclasses.dataclass(frozen=True)
class KeyMap:
    """One tensor: ``torch_key`` in the state_dict <-> ``flax_path`` in the variables.

    ``shape`` (the torch shape), when given, is checked in both directions.
    ``trainable`` is False for frozen parameters (not trained, not in the EMA).
    """

    torch_key: str
    flax_path: tuple[str, ...]
    layout: str = "same"
    shape: tuple[int, ...] | None = None
    trainable: bool = True

    def __post_init__(self):
        if self.layout not in LAYOUTS:
            raise ValueError(f"KeyMap({self.torch_key!r}): unknown layout {self.layout!r}; valid: {LAYOUTS}")
        if not self.flax_path:
            raise ValueError(f"KeyMap({self.torch_key!r}): empty flax_path")
        object.__setattr__(self, "flax_path", tuple(self.flax_path))
        if self.shape is not None:
            object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))

    @property
    def flax_shape(self) -> tuple[int, ...] | None:
        """The flax leaf's shape (HWIO for conv, KIO for conv1d, (in, out) for dense)."""
        if self.shape is None or self.layout == "same":
            return self.shape
        if self.layout == "conv":
            return self.shape[2:] + (self.shape[1], self.shape[0])
        return self.shape[::-1]  # dense (out, in) -> (in, out); conv1d (O, I, K) -> (K, I, O)


KeyTable = tuple[KeyMap, ...]


def check_table(table: Iterable[KeyMap]) -> KeyTable:
    """The table as a tuple; ``ValueError`` if a torch key or flax path appears twice."""
    table = tuple(table)
    keys, paths = set(), set()
    for km in table:
        if not isinstance(km, KeyMap):
            raise TypeError(f"a key table holds KeyMap entries, got {type(km).__name__}")
        if km.torch_key in keys:
            raise ValueError(f"key table lists torch key {km.torch_key!r} twice")
        if km.flax_path in paths:
            raise ValueError(f"key table maps two tensors to flax path {'/'.join(km.flax_path)!r}")
        keys.add(km.torch_key)
        paths.add(km.flax_path)
    return table


class _Table:
    """Accumulates ``KeyMap`` entries; one method per kind of layer. Torch prefixes end
    with ``'.'``; flax prefixes are tuples."""

    def __init__(self):
        self.entries: list[KeyMap] = []

    def add(self, torch_key, flax_path, layout, shape, trainable=True):
        self.entries.append(KeyMap(torch_key, tuple(flax_path), layout, tuple(shape), trainable))

    def conv(self, t: str, f: tuple, in_ch: int, out_ch: int, k: int, *, bias: bool = True):
        self.add(f"{t}weight", f + ("kernel",), "conv", (out_ch, in_ch, k, k))
        if bias:
            self.add(f"{t}bias", f + ("bias",), "same", (out_ch,))

    def dense(self, t: str, f: tuple, in_f: int, out_f: int):
        self.add(f"{t}weight", f + ("kernel",), "dense", (out_f, in_f))
        self.add(f"{t}bias", f + ("bias",), "same", (out_f,))

    def group_norm(self, t: str, f: tuple, channels: int):
        self.add(f"{t}weight", f + ("scale",), "same", (channels,))
        self.add(f"{t}bias", f + ("bias",), "same", (channels,))

    def nin(self, t: str, f: tuple, in_dim: int, out_dim: int):
        self.add(f"{t}W", f + ("W",), "same", (in_dim, out_dim))
        self.add(f"{t}b", f + ("b",), "same", (out_dim,))

    def fourier(self, t: str, f_module: tuple, size: int):
        """Frozen Fourier projection: flax ``('constants', ..., 'W')``."""
        self.add(f"{t}W", ("constants",) + f_module + ("W",), "same", (size,), trainable=False)

    def attn(self, t: str, f: tuple, channels: int):
        self.group_norm(t + "GroupNorm_0.", f + ("GroupNorm_0",), channels)
        for i in range(4):
            self.nin(f"{t}NIN_{i}.", f + (f"NIN_{i}",), channels, channels)

    def resnet(self, t: str, f: tuple, block: Block, temb_dim: int | None):
        """ResnetBlockDDPM / ResnetBlockDDPMpp (NIN shortcut) or ResnetBlockBigGANpp
        (1x1 ``Conv_2`` shortcut, also when it resamples)."""
        in_ch, out_ch = block.in_ch, block.out_ch
        self.group_norm(t + "GroupNorm_0.", f + ("GroupNorm_0",), in_ch)
        self.conv(t + "Conv_0.", f + ("Conv_0",), in_ch, out_ch, 3)
        if temb_dim is not None:
            self.dense(t + "Dense_0.", f + ("Dense_0",), temb_dim, out_ch)
        self.group_norm(t + "GroupNorm_1.", f + ("GroupNorm_1",), out_ch)
        self.conv(t + "Conv_1.", f + ("Conv_1",), out_ch, out_ch, 3)
        if block.resblock == "biggan":
            if in_ch != out_ch or block.resample is not None:
                self.conv(t + "Conv_2.", f + ("Conv_2",), in_ch, out_ch, 1)
        elif in_ch != out_ch:
            self.nin(t + "NIN_0.", f + ("NIN_0",), in_ch, out_ch)

    def table(self) -> KeyTable:
        return check_table(self.entries)


def _unet_key_table(plan: tuple[Block, ...], temb_dim: int) -> KeyTable:
    """The tensors of ``all_modules`` for a U-Net plan (``spec.unet_plans``). Every
    resnet block has its ``Dense_0`` temb projection, conditional or not (score_sde)."""
    tb = _Table()
    for b in plan:
        t, f = f"all_modules.{b.index}.", ("params", f"all_modules_{b.index}")
        if b.kind == "fourier":
            tb.fourier(t, f[1:], b.out_ch)
        elif b.kind == "dense":
            tb.dense(t, f, b.in_ch, b.out_ch)
        elif b.kind == "conv3x3":
            tb.conv(t, f, b.in_ch, b.out_ch, 3)
        elif b.kind == "resnet":
            tb.resnet(t, f, b, temb_dim)
        elif b.kind == "attn":
            tb.attn(t, f, b.in_ch)
        elif b.kind in ("downsample", "upsample"):
            if b.with_conv:
                name = "Conv2d_0" if b.fir else "Conv_0"
                tb.conv(f"{t}{name}.", f + (name,), b.in_ch, b.out_ch, 3)
        elif b.kind == "combine":
            tb.conv(t + "Conv.", f + ("Conv",), b.in_ch, b.out_ch, 1)
        elif b.kind == "group_norm":
            tb.group_norm(t, f, b.in_ch)
        else:  # pragma: no cover (Block validates its kind)
            raise ValueError(f"unknown block kind {b.kind!r}")
    return tb.table()


def mlp_key_table(config: MLPConfig) -> KeyTable:
    """Key table of ``MLP(config)`` (``models/mlp.py``), in torch state_dict order."""
    tb = _Table()
    E, T = config.embedding_dim, config.temb_dim
    if config.conditional:
        if config.embedding_type == "fourier":
            tb.fourier("embed.", ("embed",), E // 2)
        tb.dense("temb_0.", ("params", "temb_0"), E, T)
        tb.dense("temb_1.", ("params", "temb_1"), T, T)
        for i, w in enumerate(config.hidden_dims):
            tb.dense(f"temb_proj.{i}.", ("params", f"temb_proj_{i}"), T, w)
        if config.num_classes:  # the class embedding [K, 4E], registered after temb_proj
            tb.add("label_emb.weight", ("params", "label_emb", "embedding"), "same", (config.num_classes, T))
    widths = (config.data_dim,) + tuple(config.hidden_dims)
    for i in range(len(config.hidden_dims)):
        tb.dense(f"layers.{i}.", ("params", f"layers_{i}"), widths[i], widths[i + 1])
    tb.dense("out.", ("params", "out"), widths[-1], config.out_channels)  # D, or 2D with learn_sigma
    return tb.table()


def ddpm_key_table(config: DDPMConfig) -> KeyTable:
    """Key table of score_sde's ``ddpm`` (``models/ddpm.py``), state_dict order, from
    ``spec.unet_plans.ddpm_plan`` (``sigmas`` not listed: see ``derived_buffers``)."""
    return _unet_key_table(ddpm_plan(config), 4 * config.nf)


def ncsnpp_key_table(config: NCSNppConfig) -> KeyTable:
    """Key table of score_sde's ``ncsnpp`` (``models/ncsnpp.py``), state_dict order, from
    ``spec.unet_plans.ncsnpp_plan`` (``sigmas`` not listed: see ``derived_buffers``)."""
    return _unet_key_table(ncsnpp_plan(config), 4 * config.nf)


# ------------------------------------------------------------------ RefineNet (NCSN)
#
# Flax naming (jax_impl/models/ncsn_layers.py) is the image of the torch naming: a
# ModuleList index joins its list name with "_" (``res1.0`` -> ``res1_0``), a conv
# ``weight`` is the flax ``kernel`` (OIHW <-> HWIO), an embedding ``weight`` is the flax
# ``embedding``; every other name is unchanged.


class _RefineNetTable(_Table):
    def __init__(self, conditional: bool, num_classes: int):
        super().__init__()
        self.conditional = conditional
        self.num_classes = num_classes

    def norm(self, t: str, f: tuple, channels: int, *, conditional: bool | None = None):
        """InstanceNorm++: ``alpha, gamma, beta [C]``, or conditional ``embed.weight [L, 3C]``."""
        if self.conditional if conditional is None else conditional:
            self.add(f"{t}embed.weight", ("params",) + f + ("embed", "embedding"), "same",
                     (self.num_classes, 3 * channels))
        else:
            for p in ("alpha", "gamma", "beta"):
                self.add(f"{t}{p}", ("params",) + f + (p,), "same", (channels,))

    def conv2d(self, t: str, f: tuple, in_ch: int, out_ch: int, k: int, bias: bool = True):
        self.conv(t, ("params",) + f, in_ch, out_ch, k, bias=bias)

    def rcu(self, t: str, f: tuple, features: int, n_blocks: int, n_stages: int = 2):
        for i in range(1, n_blocks + 1):
            for j in range(1, n_stages + 1):
                if self.conditional:
                    self.norm(f"{t}{i}_{j}_norm.", f + (f"{i}_{j}_norm",), features)
                self.conv2d(f"{t}{i}_{j}_conv.", f + (f"{i}_{j}_conv",), features, features, 3, bias=False)

    def refine(self, t: str, f: tuple, in_planes: tuple[int, ...], features: int, start: bool, end: bool):
        for i, c in enumerate(in_planes):
            self.rcu(f"{t}adapt_convs.{i}.", f + (f"adapt_convs_{i}",), c, 2)
        self.rcu(f"{t}output_convs.", f + ("output_convs",), features, 3 if end else 1)
        if not start:
            for i, c in enumerate(in_planes):
                self.conv2d(f"{t}msf.convs.{i}.", f + ("msf", f"convs_{i}"), c, features, 3)
            if self.conditional:
                for i, c in enumerate(in_planes):
                    self.norm(f"{t}msf.norms.{i}.", f + ("msf", f"norms_{i}"), c)
        for i in range(2):
            self.conv2d(f"{t}crp.convs.{i}.", f + ("crp", f"convs_{i}"), features, features, 3, bias=False)
        if self.conditional:
            for i in range(2):
                self.norm(f"{t}crp.norms.{i}.", f + ("crp", f"norms_{i}"), features)

    def residual(self, t: str, f: tuple, in_ch: int, out_ch: int, resample: str | None, dilation: int | None):
        """The official residual block, registration order conv1, normalize2, conv2,
        shortcut, normalize1 (see ``_residual_convs`` in ``models/ncsn_layers.py``)."""
        if resample == "down" and dilation is None:  # conv3x3, then ConvMeanPool convs
            self.conv2d(f"{t}conv1.", f + ("conv1",), in_ch, in_ch, 3)
            self.norm(f"{t}normalize2.", f + ("normalize2",), in_ch)
            self.conv2d(f"{t}conv2.conv.", f + ("conv2", "conv"), in_ch, out_ch, 3)
            self.conv2d(f"{t}shortcut.conv.", f + ("shortcut", "conv"), in_ch, out_ch, 1)
        elif resample == "down":  # dilated: no resolution change
            self.conv2d(f"{t}conv1.", f + ("conv1",), in_ch, in_ch, 3)
            self.norm(f"{t}normalize2.", f + ("normalize2",), in_ch)
            self.conv2d(f"{t}conv2.", f + ("conv2",), in_ch, out_ch, 3)
            self.conv2d(f"{t}shortcut.", f + ("shortcut",), in_ch, out_ch, 3)
        else:
            self.conv2d(f"{t}conv1.", f + ("conv1",), in_ch, out_ch, 3)
            self.norm(f"{t}normalize2.", f + ("normalize2",), out_ch)
            self.conv2d(f"{t}conv2.", f + ("conv2",), out_ch, out_ch, 3)
            if in_ch != out_ch:
                self.conv2d(f"{t}shortcut.", f + ("shortcut",), in_ch, out_ch, 3 if dilation is not None else 1)
        self.norm(f"{t}normalize1.", f + ("normalize1",), in_ch)


def refinenet_key_table(plan_name: str, *, conditional: bool, ngf: int, num_channels: int,
                        num_classes: int = 0) -> KeyTable:
    """Every parameter of a RefineNet score network, with shapes, in state_dict order.

    ``plan_name`` is a key of ``REFINENET_PLANS``; ``conditional`` selects NCSN v1 blocks
    (conditional InstanceNorm++ with ``num_classes`` rows everywhere) or NCSNv2 blocks.
    Buffers (NCSNv2's ``sigmas``) are not parameters and are not listed.
    """
    if plan_name not in REFINENET_PLANS:
        raise ValueError(f"unknown RefineNet plan {plan_name!r}; valid choices: {tuple(REFINENET_PLANS)}")
    plan = REFINENET_PLANS[plan_name]
    tb = _RefineNetTable(conditional, num_classes)
    tb.conv2d("begin_conv.", ("begin_conv",), num_channels, ngf, 3)
    tb.norm("normalizer.", ("normalizer",), ngf)
    tb.conv2d("end_conv.", ("end_conv",), ngf, num_channels, 3)
    prev = ngf
    for stage, ch in zip(plan.stages, plan.channels(ngf)):
        tb.residual(f"{stage.name}.0.", (f"{stage.name}_0",), prev, ch, stage.resample, stage.dilation)
        tb.residual(f"{stage.name}.1.", (f"{stage.name}_1",), ch, ch, None, stage.dilation)
        prev = ch
    for r in plan.refines(ngf):
        tb.refine(f"{r.name}.", (r.name,), r.in_planes, r.features, r.start, r.end)
    return tb.table()


def ncsn_key_table(config: NCSNConfig) -> KeyTable:
    """Key table of NCSN v1 ``CondRefineNetDilated(config)`` (conditional InstanceNorm++)."""
    if not isinstance(config, NCSNConfig):
        raise TypeError(f"config must be an NCSNConfig, got {type(config).__name__}")
    return refinenet_key_table(NCSN_PLAN, conditional=True, ngf=config.ngf, num_channels=config.num_channels,
                               num_classes=config.num_scales)


def ncsnv2_key_table(config: NCSNv2Config) -> KeyTable:
    """Key table of ``NCSNv2(config)``; the ``sigmas`` buffer is not listed (see ``derived_buffers``)."""
    if not isinstance(config, NCSNv2Config):
        raise TypeError(f"config must be an NCSNv2Config, got {type(config).__name__}")
    return refinenet_key_table(config.name, conditional=False, ngf=config.ngf, num_channels=config.num_channels)


# ------------------------------------------------------------ improved-diffusion UNetModel


def _unet_layer_entries(tb: _Table, t: str, f: tuple, layer: UNetLayer, emb_dim: int, scale_shift: bool) -> None:
    """The tensors of one ``UNetLayer`` under torch prefix ``t`` / flax path ``f``, in the
    official registration order."""
    if layer.kind == "conv":
        tb.conv(t, f, layer.in_ch, layer.out_ch, 3)
    elif layer.kind == "res":
        i, o = layer.in_ch, layer.out_ch
        tb.group_norm(t + "in_layers.0.", f + ("in_layers_0",), i)
        tb.conv(t + "in_layers.2.", f + ("in_layers_2",), i, o, 3)
        tb.dense(t + "emb_layers.1.", f + ("emb_layers_1",), emb_dim, 2 * o if scale_shift else o)
        tb.group_norm(t + "out_layers.0.", f + ("out_layers_0",), o)
        tb.conv(t + "out_layers.3.", f + ("out_layers_3",), o, o, 3)
        if i != o:
            tb.conv(t + "skip_connection.", f + ("skip_connection",), i, o, 1)
    elif layer.kind == "attn":
        c = layer.in_ch
        tb.group_norm(t + "norm.", f + ("norm",), c)
        for name, out in (("qkv", 3 * c), ("proj_out", c)):
            tb.add(f"{t}{name}.weight", f + (name, "kernel"), "conv1d", (out, c, 1))
            tb.add(f"{t}{name}.bias", f + (name, "bias"), "same", (out,))
    elif layer.with_conv:  # down: ``op`` conv, up: ``conv`` (average pooling / nearest have no tensors)
        name = "op" if layer.kind == "down" else "conv"
        tb.conv(f"{t}{name}.", f + (name,), layer.in_ch, layer.out_ch, 3)


def improved_unet_key_table(config: UNetModelConfig) -> KeyTable:
    """Key table of improved-diffusion's ``UNetModel(config)`` (``models/unet.py``): the
    official state_dict keys in order (``time_embed``, ``label_emb``, ``input_blocks``,
    ``middle_block``, ``output_blocks``, ``out``), from ``spec.unet_model.unet_model_plan``.

    Flax paths: the torch key with each ``.<index>`` joined by ``_`` (``time_embed.0`` ->
    ``time_embed_0``, ``input_blocks.4.1.qkv`` -> ``input_blocks_4_1/qkv``); leaves
    ``weight`` -> ``kernel`` (conv / linear), ``scale`` (GroupNorm), ``embedding``
    (``label_emb``).
    """
    if not isinstance(config, UNetModelConfig):
        raise TypeError(f"config must be a UNetModelConfig, got {type(config).__name__}")
    plan = unet_model_plan(config)
    mc, emb = config.model_channels, config.time_embed_dim
    tb = _Table()
    tb.dense("time_embed.0.", ("params", "time_embed_0"), mc, emb)
    tb.dense("time_embed.2.", ("params", "time_embed_2"), emb, emb)
    if config.num_classes:
        tb.add("label_emb.weight", ("params", "label_emb", "embedding"), "same", (config.num_classes, emb))
    ss = config.use_scale_shift_norm
    blocks = [(f"input_blocks.{i}.", f"input_blocks_{i}", b) for i, b in enumerate(plan.input_blocks)]
    blocks.append(("middle_block.", "middle_block", plan.middle_block))
    blocks += [(f"output_blocks.{i}.", f"output_blocks_{i}", b) for i, b in enumerate(plan.output_blocks)]
    for t, f, block in blocks:
        for j, layer in enumerate(block):
            _unet_layer_entries(tb, f"{t}{j}.", ("params", f"{f}_{j}"), layer, emb, ss)
    tb.group_norm("out.0.", ("params", "out_0"), plan.out_ch)
    tb.conv("out.2.", ("params", "out_2"), plan.out_ch, config.out_channels, 3)
    return tb.table()


def key_table(config) -> KeyTable:
    """The key table of the network a config describes (MLP, DDPM, NCSN++, NCSN, NCSNv2,
    improved-diffusion's UNetModel)."""
    if isinstance(config, UNetModelConfig):
        return improved_unet_key_table(config)
    if isinstance(config, MLPConfig):
        return mlp_key_table(config)
    if isinstance(config, DDPMConfig):
        return ddpm_key_table(config)
    if isinstance(config, NCSNppConfig):
        return ncsnpp_key_table(config)
    if isinstance(config, NCSNConfig):
        return ncsn_key_table(config)
    if isinstance(config, NCSNv2Config):
        return ncsnv2_key_table(config)
    raise TypeError(f"no key table for config type {type(config).__name__}; expected MLPConfig, "
                    "DDPMConfig, NCSNppConfig, NCSNConfig, NCSNv2Config or UNetModelConfig")


def derived_buffers(config) -> dict[str, np.ndarray]:
    """Buffers the torch module holds but flax recomputes from the config.

    score_sde's image networks hold ``sigmas`` (float64, decreasing; see
    ``spec.model_configs.get_sigmas``), NCSNv2 a float32 ``sigmas``; the MLP and NCSN v1
    hold none.
    """
    if isinstance(config, ModelConfig):
        return {"sigmas": config.sigmas}
    if isinstance(config, NCSNv2Config):  # ermongroup/ncsnv2 keeps a float32 buffer
        return {"sigmas": np.asarray(config.sigmas, np.float32)}
    return {}


def num_parameters(table: Iterable[KeyMap], *, trainable_only: bool = False) -> int:
    """Parameter count from a key table's shapes (all entries, or trainable ones)."""
    total = 0
    for km in table:
        if km.shape is None:
            raise ValueError(f"{km.torch_key}: the key table entry has no shape")
        if km.trainable or not trainable_only:
            total += int(np.prod(km.shape))
    return total
