"""Frozen, typed configs of the score networks (MLP, DDPM U-Net, NCSN++ / DDPM++).

Framework-neutral data (numpy + stdlib only), shared by ``jax_impl.models`` and
``torch_ref.models``; both re-export these classes from their ``models/configs.py``.

Field names follow score_sde's ``config.model`` (``nf, ch_mult, num_res_blocks,
attn_resolutions, dropout, resamp_with_conv, conditional, fir, fir_kernel, skip_rescale,
resblock_type, progressive, progressive_input, progressive_combine, attention_type,
embedding_type, fourier_scale, init_scale, scale_by_sigma, nonlinearity, normalization,
sigma_min, sigma_max, num_scales, conv_size``) plus the data fields the networks need
(``image_size, num_channels, centered``). ``from_score_sde_config`` builds a config from
the nested dict of an official ``config.to_dict()``. Configs validate themselves at
construction (a bad field raises ``TypeError``/``ValueError`` naming it and, for choices,
listing the valid values), are hashable and can be ``jax.jit`` static arguments.

``PRESETS`` holds the official CIFAR-10 architectures of score_sde_pytorch (NCSNv2's
config class lives in ``spec.ncsn_configs``).
"""

from __future__ import annotations

import dataclasses
import types
from typing import Optional, Any, Mapping

import numpy as np

from spec.ncsn_configs import ACTIVATIONS, NCSNV2_CIFAR10, NCSNV2_NAMES, NCSNv2Config
from spec.validate import check_bool, check_choice, check_float, check_int

NONLINEARITIES = ACTIVATIONS  # score_sde's config.model.nonlinearity values
EMBEDDING_TYPES = ("positional", "fourier")
RESBLOCK_TYPES = ("ddpm", "biggan")
PROGRESSIVE = ("none", "output_skip", "residual")
PROGRESSIVE_INPUT = ("none", "input_skip", "residual")
PROGRESSIVE_COMBINE = ("sum", "cat")
ATTENTION_TYPES = ("ddpm",)
UP_ATTENTION = ("per_level", "per_block")  # DDPMConfig.up_attention
NORMALIZATIONS = ("GroupNorm",)


def _check_int_tuple(name: str, value, *, minimum: int, allow_empty: bool) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list, np.ndarray)):
        raise TypeError(f"{name} must be a tuple of integers, got {type(value).__name__} {value!r}")
    out = tuple(check_int(f"{name}[{i}]", v, minimum=minimum) for i, v in enumerate(value))
    if not out and not allow_empty:
        raise ValueError(f"{name} must not be empty")
    return out


def _check_str_choice(name: str, value, choices) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, one of {choices}; got {type(value).__name__} {value!r}")
    low = value.lower()
    lowered = {c.lower(): c for c in choices}
    if low not in lowered:
        check_choice(name, value, choices)  # raises, listing the valid values
    return lowered[low]


def _check_learn_sigma(config) -> None:
    """``learn_sigma`` and ``scale_by_sigma`` exclude each other: the learned variance is
    improved-diffusion's (labels are timesteps), dividing by a noise level is SMLD's."""
    if config.learn_sigma and config.scale_by_sigma:
        raise ValueError("learn_sigma=True (eps and variance outputs of a learned-variance diffusion) "
                         "cannot be combined with scale_by_sigma=True (SMLD: output / sigma)")


def get_sigmas(sigma_min: float, sigma_max: float, num_scales: int) -> np.ndarray:
    """score_sde's ``utils.get_sigmas``: decreasing float64 ``[num_scales]``,
    ``exp(linspace(log sigma_max, log sigma_min, num_scales))``.

    This is the ``sigmas`` buffer every score_sde network holds in its state_dict; index
    0 is ``sigma_max`` (the VE discrete label ``round((T - t)(N - 1))`` indexes it).
    """
    return np.exp(np.linspace(np.log(sigma_max), np.log(sigma_min), num_scales, dtype=np.float64))


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Fields every score_sde image network shares (data fields + SMLD noise levels)."""

    name: str = "base"
    image_size: int = 32
    num_channels: int = 3
    centered: bool = False
    nf: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.1
    resamp_with_conv: bool = True
    conditional: bool = True
    scale_by_sigma: bool = False
    nonlinearity: str = "swish"
    normalization: str = "GroupNorm"
    sigma_min: float = 0.01
    sigma_max: float = 50.0
    num_scales: int = 1000

    _NAME = "base"

    def __post_init__(self):
        if self.name != self._NAME:
            raise ValueError(f"name must be {self._NAME!r} for {type(self).__name__}, got {self.name!r}")
        s = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        s("image_size", check_int("image_size", self.image_size, minimum=1))
        s("num_channels", check_int("num_channels", self.num_channels, minimum=1))
        s("centered", check_bool("centered", self.centered))
        s("nf", check_int("nf", self.nf, minimum=1))
        s("ch_mult", _check_int_tuple("ch_mult", self.ch_mult, minimum=1, allow_empty=False))
        s("num_res_blocks", check_int("num_res_blocks", self.num_res_blocks, minimum=1))
        s("attn_resolutions", _check_int_tuple("attn_resolutions", self.attn_resolutions, minimum=1,
                                               allow_empty=True))
        dropout = check_float("dropout", self.dropout, nonnegative=True)
        if dropout >= 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        s("dropout", dropout)
        for k in ("resamp_with_conv", "conditional", "scale_by_sigma"):
            s(k, check_bool(k, getattr(self, k)))
        s("nonlinearity", _check_str_choice("nonlinearity", self.nonlinearity, NONLINEARITIES))
        s("normalization", _check_str_choice("normalization", self.normalization, NORMALIZATIONS))
        smin = check_float("sigma_min", self.sigma_min, positive=True)
        smax = check_float("sigma_max", self.sigma_max, positive=True)
        if smin >= smax:
            raise ValueError(f"sigma_min must be < sigma_max, got sigma_min={smin} >= sigma_max={smax}")
        s("sigma_min", smin)
        s("sigma_max", smax)
        s("num_scales", check_int("num_scales", self.num_scales, minimum=1))
        factor = self.downsampling_factor
        if self.image_size % factor:
            raise ValueError(
                f"image_size {self.image_size} must be divisible by the down-sampling factor "
                f"2**(len(ch_mult)-1) = {factor}"
            )

    @property
    def num_resolutions(self) -> int:
        return len(self.ch_mult)

    @property
    def all_resolutions(self) -> tuple[int, ...]:
        """Spatial size at each level: ``image_size // 2**i``."""
        return tuple(self.image_size // (2**i) for i in range(self.num_resolutions))

    @property
    def downsampling_factor(self) -> int:
        """The input's height and width must be multiples of this."""
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def sigmas(self) -> np.ndarray:
        """The ``sigmas`` buffer (decreasing, float64); see ``get_sigmas``."""
        return get_sigmas(self.sigma_min, self.sigma_max, self.num_scales)

    @classmethod
    def from_score_sde_config(cls, config: Mapping[str, Any]):
        """Build from score_sde's nested ``config.to_dict()`` (``model`` and ``data`` parts).

        ``config["model"]`` keys that are fields of this class are taken (lists become
        tuples); other keys (``ema_rate``, ``beta_min``, ...) do not shape the network
        and are ignored. ``data.image_size``, ``data.num_channels`` and ``data.centered``
        are read from ``config["data"]``.
        """
        if not isinstance(config, Mapping) or "model" not in config or "data" not in config:
            raise TypeError("config must be a nested dict with 'model' and 'data' entries "
                            "(score_sde's config.to_dict())")
        model, data = config["model"], config["data"]
        name = model.get("name")
        if name != cls._NAME:
            raise ValueError(f"config['model']['name'] is {name!r}; {cls.__name__} needs {cls._NAME!r}")
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs = {}
        for key, value in model.items():
            if key in fields:
                kwargs[key] = tuple(value) if isinstance(value, list) else value
        for key in ("image_size", "num_channels", "centered"):
            if key not in data:
                raise KeyError(f"config['data'] has no {key!r}")
            kwargs[key] = data[key]
        cls._check_training(config.get("training", {}), kwargs)
        return cls(**kwargs)

    @staticmethod
    def _check_training(training: Mapping[str, Any], kwargs: dict) -> None:
        return None


@dataclasses.dataclass(frozen=True)
class DDPMConfig(ModelConfig):
    """score_sde's ``ddpm`` U-Net (Ho et al. 2020). Defaults: ``vp/ddpm/cifar10``.

    GroupNorm with 32 groups (eps 1e-6), so every channel count ``nf * m`` must be a
    multiple of 32.

    ``learn_sigma`` (improved-diffusion's ``create_model`` option; not score_sde's, so
    ``from_score_sde_config`` leaves it False): the final conv outputs ``2C`` channels,
    ``eps`` then the variance values ``v`` of a ``model_var_type`` "learned" /
    "learned_range" diffusion (``out_channels``). Default False: the official layout,
    checkpoints and parameter counts are unchanged.

    The layout of the TF original (Ho et al.'s ``diffusion_tf``), which diffusers' DDPM
    checkpoints (``UNet2DModel``) use too; the defaults are score_sde's port:

    - ``up_attention``: ``"per_level"`` (score_sde: ONE attention block after the
      ``num_res_blocks + 1`` res blocks of an up-path level at ``attn_resolutions``;
      35,218,947 parameters at CIFAR-10 size) or ``"per_block"`` (the TF original and
      diffusers' ``AttnUpBlock2D``: an attention block after EVERY up-path res block
      there; 35,746,307). The down path and the middle are the same in both.
    - ``flip_sin_to_cos`` / ``freq_shift``: diffusers' names for the sinusoidal label
      embedding ``[sin(t w), cos(t w)]`` (``[cos, sin]`` when flipped) with
      ``w_i = exp(-i log(10000) / (nf // 2 - freq_shift))``. score_sde and the TF
      original are ``False`` / ``1``; diffusers' ``UNet2DModel`` defaults are
      ``True`` / ``0`` (its DDPM checkpoints set ``False`` / ``1``).

    Both layouts pad a stride-2 down-sampling convolution by one pixel on the right and
    bottom only (TF ``'SAME'``; diffusers ``downsample_padding=0``).
    """

    name: str = "ddpm"
    centered: bool = True
    learn_sigma: bool = False
    up_attention: str = "per_level"
    flip_sin_to_cos: bool = False
    freq_shift: int = 1

    _NAME = "ddpm"

    def __post_init__(self):
        super().__post_init__()
        s = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        s("learn_sigma", check_bool("learn_sigma", self.learn_sigma))
        _check_learn_sigma(self)
        s("up_attention", _check_str_choice("up_attention", self.up_attention, UP_ATTENTION))
        s("flip_sin_to_cos", check_bool("flip_sin_to_cos", self.flip_sin_to_cos))
        half = self.nf // 2
        shift = check_int("freq_shift", self.freq_shift, minimum=0)
        if shift >= half:
            raise ValueError(f"freq_shift must be < nf // 2 = {half} (the embedding's frequencies are "
                             f"exp(-i log(10000) / (nf // 2 - freq_shift))), got freq_shift={shift}")
        s("freq_shift", shift)
        for m in self.ch_mult:
            if (self.nf * m) % 32:
                raise ValueError(
                    f"nf * ch_mult must be a multiple of 32 (GroupNorm with 32 groups), "
                    f"got nf={self.nf}, ch_mult={self.ch_mult}"
                )

    @property
    def out_channels(self) -> int:
        """Channels of the output: ``C``, or ``2C`` (eps, v) with ``learn_sigma``."""
        return 2 * self.num_channels if self.learn_sigma else self.num_channels


@dataclasses.dataclass(frozen=True)
class NCSNppConfig(ModelConfig):
    """score_sde's ``ncsnpp`` network: NCSN++ and DDPM++ (Song et al. 2021).

    Defaults: ``ve/cifar10_ncsnpp_continuous``. GroupNorm uses ``min(C // 4, 32)``
    groups (eps 1e-6).
    """

    name: str = "ncsnpp"
    centered: bool = False
    num_res_blocks: int = 4
    scale_by_sigma: bool = True
    fir: bool = True
    fir_kernel: tuple[int, ...] = (1, 3, 3, 1)
    skip_rescale: bool = True
    resblock_type: str = "biggan"
    progressive: str = "none"
    progressive_input: str = "residual"
    progressive_combine: str = "sum"
    attention_type: str = "ddpm"
    embedding_type: str = "fourier"
    fourier_scale: float = 16.0
    init_scale: float = 0.0
    conv_size: int = 3

    _NAME = "ncsnpp"

    def __post_init__(self):
        super().__post_init__()
        s = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        s("fir", check_bool("fir", self.fir))
        s("skip_rescale", check_bool("skip_rescale", self.skip_rescale))
        fk = _check_int_tuple("fir_kernel", self.fir_kernel, minimum=1, allow_empty=False)
        if len(fk) < 2:
            raise ValueError(f"fir_kernel must have at least 2 taps, got {fk}")
        s("fir_kernel", fk)
        s("resblock_type", _check_str_choice("resblock_type", self.resblock_type, RESBLOCK_TYPES))
        s("progressive", _check_str_choice("progressive", self.progressive, PROGRESSIVE))
        s("progressive_input", _check_str_choice("progressive_input", self.progressive_input, PROGRESSIVE_INPUT))
        s("progressive_combine",
          _check_str_choice("progressive_combine", self.progressive_combine, PROGRESSIVE_COMBINE))
        s("attention_type", _check_str_choice("attention_type", self.attention_type, ATTENTION_TYPES))
        s("embedding_type", _check_str_choice("embedding_type", self.embedding_type, EMBEDDING_TYPES))
        s("fourier_scale", check_float("fourier_scale", self.fourier_scale, positive=True))
        s("init_scale", check_float("init_scale", self.init_scale, nonnegative=True))
        cs = check_int("conv_size", self.conv_size, minimum=1)
        if cs != 3:
            raise ValueError(f"conv_size must be 3 (the only size score_sde's ncsnpp uses), got {cs}")
        s("conv_size", cs)
        if self.embedding_type == "positional" and self.nf < 4:
            raise ValueError(f"nf must be >= 4 for the positional embedding, got {self.nf}")

    @property
    def embed_dim(self) -> int:
        """Width of the noise-level embedding: ``2 nf`` (Fourier) or ``nf`` (positional)."""
        return 2 * self.nf if self.embedding_type == "fourier" else self.nf

    @staticmethod
    def _check_training(training: Mapping[str, Any], kwargs: dict) -> None:
        emb = str(kwargs.get("embedding_type", "fourier")).lower()
        if emb == "fourier" and training.get("continuous", True) is False:
            raise ValueError("embedding_type 'fourier' needs training.continuous = True "
                             "(score_sde: Fourier features are only used for continuous training)")


@dataclasses.dataclass(frozen=True)
class MLPConfig:
    """A small score / eps network for low-dimensional data (2-D points etc.).

    Attributes:
      data_dim: D, the data dimension; inputs are ``[B, D]``.
      hidden_dims: widths of the hidden layers (their number is ``num_layers``).
      embedding_type: ``"positional"`` (sinusoidal embedding of the label, as DDPM's
        timestep embedding) or ``"fourier"`` (Gaussian Fourier features of ``log label``,
        for labels that are noise levels sigma > 0).
      embedding_dim: E, width of the label embedding (even, >= 4).
      fourier_scale: std of the fixed Fourier frequencies.
      nonlinearity: ``elu | relu | lrelu | swish``.
      conditional: if False the label is ignored.
      scale_by_sigma: divide the output by the label (use when the label is sigma).
      learn_sigma: output ``[B, 2D]`` (eps, then the variance values v) for a
        ``model_var_type`` "learned" / "learned_range" diffusion (improved-diffusion's
        option name); default False: ``[B, D]``. Excludes ``scale_by_sigma``.
      image_size, num_channels: None (default): inputs are vectors ``[B, D]``. Set, the
        MLP is a network on small images: it takes ``[B, image_size, image_size,
        num_channels]`` (NHWC in JAX, NCHW in torch), flattens each image in NHWC order
        to ``D = image_size^2 num_channels`` (so ``data_dim`` must equal that), and
        returns images of the same layout (``2 num_channels`` channels, eps then v, with
        ``learn_sigma``). The parameters are those of the vector MLP of width D.
      num_classes: 0 (default): unconditional. K > 0: class-conditional, called with the
        class labels as ``y=`` (int ``[B]`` in ``[0, K)``); a learned ``[K, 4E]`` class
        embedding is added to the label features (improved-diffusion's ``label_emb``).
        For classifier-free guidance one of the K classes serves as the null class
        (``jax_impl.guidance``).
    """

    name: str = "mlp"
    data_dim: int = 2
    hidden_dims: tuple[int, ...] = (128, 128, 128)
    embedding_type: str = "positional"
    embedding_dim: int = 64
    fourier_scale: float = 16.0
    nonlinearity: str = "swish"
    conditional: bool = True
    scale_by_sigma: bool = False
    learn_sigma: bool = False
    image_size: Optional[int] = None
    num_channels: int = 1
    num_classes: int = 0

    def __post_init__(self):
        if self.name != "mlp":
            raise ValueError(f"name must be 'mlp' for MLPConfig, got {self.name!r}")
        s = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        s("data_dim", check_int("data_dim", self.data_dim, minimum=1))
        s("hidden_dims", _check_int_tuple("hidden_dims", self.hidden_dims, minimum=1, allow_empty=False))
        s("embedding_type", _check_str_choice("embedding_type", self.embedding_type, EMBEDDING_TYPES))
        e = check_int("embedding_dim", self.embedding_dim, minimum=4)
        if e % 2:
            raise ValueError(f"embedding_dim must be even, got {e}")
        s("embedding_dim", e)
        s("fourier_scale", check_float("fourier_scale", self.fourier_scale, positive=True))
        s("nonlinearity", _check_str_choice("nonlinearity", self.nonlinearity, NONLINEARITIES))
        s("conditional", check_bool("conditional", self.conditional))
        s("scale_by_sigma", check_bool("scale_by_sigma", self.scale_by_sigma))
        s("learn_sigma", check_bool("learn_sigma", self.learn_sigma))
        _check_learn_sigma(self)
        s("num_channels", check_int("num_channels", self.num_channels, minimum=1))
        s("num_classes", check_int("num_classes", self.num_classes, minimum=0))
        if self.num_classes and not self.conditional:
            raise ValueError("MLPConfig: num_classes > 0 needs conditional=True (the class embedding is "
                             "added to the label features)")
        if self.image_size is not None:
            s("image_size", check_int("image_size", self.image_size, minimum=1))
            pixels = self.image_size ** 2 * self.num_channels
            if pixels != self.data_dim:
                raise ValueError(f"MLPConfig: data_dim={self.data_dim} must equal image_size^2 * num_channels "
                                 f"= {self.image_size}^2 * {self.num_channels} = {pixels} for an image MLP")

    @property
    def num_layers(self) -> int:
        return len(self.hidden_dims)

    @property
    def out_channels(self) -> int:
        """Width of the output: ``D``, or ``2D`` (eps, v) with ``learn_sigma``."""
        return 2 * self.data_dim if self.learn_sigma else self.data_dim

    @property
    def temb_dim(self) -> int:
        """Width of the label features after the two-layer embedding MLP: ``4 E``."""
        return 4 * self.embedding_dim


_CONFIG_CLASSES = types.MappingProxyType({
    "ddpm": DDPMConfig, "ncsnpp": NCSNppConfig,
    **{name: NCSNv2Config for name in NCSNV2_NAMES},  # config.model.name picks the layout
})


def from_score_sde_config(config: Mapping[str, Any]) -> "ModelConfig | NCSNv2Config":
    """The config class named by ``config["model"]["name"]`` built from score_sde's dict."""
    if not isinstance(config, Mapping) or not isinstance(config.get("model"), Mapping):
        raise TypeError("config must be a nested dict with a 'model' entry (score_sde's config.to_dict())")
    name = config["model"].get("name")
    if name not in _CONFIG_CLASSES:
        check_choice("config['model']['name']", name, tuple(_CONFIG_CLASSES))
    return _CONFIG_CLASSES[name].from_score_sde_config(config)


def _ddpmpp(num_res_blocks: int) -> NCSNppConfig:
    return NCSNppConfig(
        centered=True, nf=128, ch_mult=(1, 2, 2, 2), num_res_blocks=num_res_blocks,
        attn_resolutions=(16,), dropout=0.1, resamp_with_conv=True, conditional=True,
        scale_by_sigma=False, fir=False, fir_kernel=(1, 3, 3, 1), skip_rescale=True,
        resblock_type="biggan", progressive="none", progressive_input="none",
        progressive_combine="sum", embedding_type="positional", fourier_scale=16.0, init_scale=0.0,
    )


def _ncsnpp(num_res_blocks: int) -> NCSNppConfig:
    return NCSNppConfig(
        centered=False, nf=128, ch_mult=(1, 2, 2, 2), num_res_blocks=num_res_blocks,
        attn_resolutions=(16,), dropout=0.1, resamp_with_conv=True, conditional=True,
        scale_by_sigma=True, fir=True, fir_kernel=(1, 3, 3, 1), skip_rescale=True,
        resblock_type="biggan", progressive="none", progressive_input="residual",
        progressive_combine="sum", embedding_type="fourier", fourier_scale=16.0, init_scale=0.0,
    )


#: Official score_sde_pytorch CIFAR-10 architectures, by config path.
PRESETS: Mapping[str, Any] = types.MappingProxyType({
    "vp/ddpm/cifar10": DDPMConfig(
        centered=True, nf=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,),
        dropout=0.1, resamp_with_conv=True, conditional=True, scale_by_sigma=False,
    ),
    "vp/cifar10_ddpmpp_continuous": _ddpmpp(4),
    "vp/cifar10_ddpmpp_deep_continuous": _ddpmpp(8),
    "subvp/cifar10_ddpmpp_deep_continuous": _ddpmpp(8),
    "ve/cifar10_ncsnpp_continuous": _ncsnpp(4),
    "ve/cifar10_ncsnpp_deep_continuous": _ncsnpp(8),
    "ve/ncsnv2/cifar10": NCSNV2_CIFAR10,
})


def get_preset(name: str) -> ModelConfig:
    """The preset config of an official score_sde config path (see ``PRESETS``)."""
    if name not in PRESETS:
        check_choice("preset", name, tuple(PRESETS))
    return PRESETS[name]


__all__ = [
    "ATTENTION_TYPES", "DDPMConfig", "EMBEDDING_TYPES", "MLPConfig", "ModelConfig", "NCSNppConfig",
    "NONLINEARITIES", "PRESETS", "PROGRESSIVE", "PROGRESSIVE_COMBINE", "PROGRESSIVE_INPUT",
    "RESBLOCK_TYPES", "UP_ATTENTION", "from_score_sde_config", "get_preset", "get_sigmas",
]
