"""Typed, frozen training configuration (score_sde's names and defaults, improved-diffusion's
options), and ``RunConfig``: everything a training run needs in one hashable value.

Sections and fields follow score_sde's ``config.training`` / ``config.optim`` /
``config.model`` (the CIFAR-10 defaults of ``configs/default_cifar10_configs.py``), plus
improved-diffusion's training options:

* ``TrainingConfig`` (``training``): batch_size=128, n_iters=1300001, snapshot_freq=50000,
  log_freq=50, eval_freq=100, snapshot_freq_for_preemption=10000, continuous=True,
  reduce_mean=False, likelihood_weighting=False, sde="vpsde"; ``loss`` picks the objective
  ("auto" = score_sde's rule: continuous -> "sde", discrete VE -> "smld", discrete VP ->
  "ddpm"; or "sde" | "smld" | "ddpm" | "anneal_dsm" (NCSN / NCSNv2) | "diffusion"
  (``GaussianDiffusion.training_losses``)); schedule_sampler ("uniform" |
  "loss-second-moment"), microbatch (-1: off), seed, keep (checkpoints kept),
  label_dropout (0.0: off; see below).
* ``OptimConfig`` (``optim``): optimizer "Adam" (torch.optim.Adam, L2 weight decay) or
  "AdamW" (decoupled), lr=2e-4, beta1=0.9, eps=1e-8, weight_decay=0, warmup=5000 (linear,
  on the pre-increment step), grad_clip=1 (< 0 disables), lr_anneal_steps=0 (> 0: linear
  decay to 0 at that step, improved-diffusion).
* ``EMAConfig`` (section ``model``): ema_rate, a tuple of rates (``0.9999`` or
  ``"0.9999,0.999"``), and ema_warmup (True: score_sde_pytorch's
  ``min(rate, (1 + n) / (10 + n))``; False: constant, as score_sde JAX and improved-diffusion).

Class-conditional training (a model config with ``num_classes = K > 0``: batches are
``(x, y)`` with int labels ``y`` in ``[0, K)``, and the network is called with ``y=``):
``training.label_dropout = p`` replaces each example's label, independently with
probability p, by the NULL CLASS, the last label ``K - 1`` (``null_label(model_config)``),
so that one network learns both p(x | y) and p(x) for classifier-free guidance (Ho &
Salimans 2021; ``jax_impl.guidance`` / ``torch_ref.guidance`` take it as ``null_label=``).
With p > 0 the model needs ``num_classes >= 2`` (one real class and the null one); a data
set of C classes therefore trains with ``num_classes = C + 1``. Labels equal to ``K - 1``
in the data are null already (e.g. unlabelled examples). The JAX trainer draws example i's
decision from ``fold_in(fold_in(step_key, i), 2)`` (slots 0 and 1 are its t and noise).

``TrainConfig.from_score_sde_config(d)`` reads score_sde's ``config.to_dict()``;
``with_overrides(["optim.lr=1e-3", ...])`` applies command-line ``--set`` overrides
(validated names, values parsed to the field type); ``to_dict`` / ``from_dict`` round-trip
through JSON. numpy / stdlib only.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import typing
from typing import Any, Mapping, Optional

from spec.validate import check_bool, check_choice, check_float, check_int

__all__ = [
    "EMAConfig",
    "LOSSES",
    "OptimConfig",
    "RunConfig",
    "SCHEDULE_SAMPLERS",
    "TrainConfig",
    "TrainingConfig",
    "null_label",
    "num_classes",
]

#: training.loss values
LOSSES = ("auto", "sde", "smld", "ddpm", "anneal_dsm", "diffusion")
#: training.schedule_sampler values (improved-diffusion's names)
SCHEDULE_SAMPLERS = ("uniform", "loss-second-moment")
SDE_NAMES = ("vesde", "vpsde", "subvpsde")
OPTIMIZERS = ("Adam", "AdamW")


def _check_str(name: str, value, choices) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, one of {', '.join(map(repr, choices))}; "
                        f"got {type(value).__name__} {value!r}")
    check_choice(name, value, choices)
    return value


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """score_sde's ``config.training`` plus improved-diffusion's loop options (see the
    module docstring for the meaning of each field)."""

    batch_size: int = 128
    n_iters: int = 1300001
    snapshot_freq: int = 50000
    log_freq: int = 50
    eval_freq: int = 100
    snapshot_freq_for_preemption: int = 10000
    continuous: bool = True
    reduce_mean: bool = False
    likelihood_weighting: bool = False
    sde: str = "vpsde"
    loss: str = "auto"
    schedule_sampler: str = "uniform"
    microbatch: int = -1
    seed: int = 42
    keep: int = 3
    label_dropout: float = 0.0

    def __post_init__(self):
        s = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        for k in ("batch_size", "n_iters", "snapshot_freq", "log_freq", "eval_freq",
                  "snapshot_freq_for_preemption", "keep"):
            s(k, check_int(f"training.{k}", getattr(self, k), minimum=1))
        for k in ("continuous", "reduce_mean", "likelihood_weighting"):
            s(k, check_bool(f"training.{k}", getattr(self, k)))
        s("sde", _check_str("training.sde", self.sde, SDE_NAMES))
        s("loss", _check_str("training.loss", self.loss, LOSSES))
        s("schedule_sampler", _check_str("training.schedule_sampler", self.schedule_sampler,
                                         SCHEDULE_SAMPLERS))
        mb = check_int("training.microbatch", self.microbatch)
        if mb == 0 or mb < -1:
            raise ValueError(f"training.microbatch must be -1 (off) or >= 1, got {mb}")
        if mb > 0 and self.batch_size % mb:
            raise ValueError(f"training.microbatch={mb} must divide training.batch_size="
                             f"{self.batch_size}")
        s("microbatch", mb)
        s("seed", check_int("training.seed", self.seed, minimum=0))
        p = check_float("training.label_dropout", self.label_dropout, nonnegative=True)
        if p >= 1.0:
            raise ValueError(f"training.label_dropout must lie in [0, 1) (the probability of "
                             f"replacing a label by the null class), got {p}")
        s("label_dropout", p)

    @property
    def num_microbatches(self) -> int:
        """How many micro-batches one step's batch is split into (1 without microbatch)."""
        return 1 if self.microbatch < 0 else self.batch_size // self.microbatch


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """score_sde's ``config.optim`` plus improved-diffusion's AdamW / ``lr_anneal_steps``."""

    optimizer: str = "Adam"
    lr: float = 2e-4
    beta1: float = 0.9
    eps: float = 1e-8
    weight_decay: float = 0.0
    warmup: int = 5000
    grad_clip: float = 1.0
    lr_anneal_steps: int = 0

    def __post_init__(self):
        s = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        s("optimizer", _check_str("optim.optimizer", self.optimizer, OPTIMIZERS))
        s("lr", check_float("optim.lr", self.lr, nonnegative=True))
        b1 = check_float("optim.beta1", self.beta1, nonnegative=True)
        if b1 >= 1.0:
            raise ValueError(f"optim.beta1 must lie in [0, 1), got {b1}")
        s("beta1", b1)
        s("eps", check_float("optim.eps", self.eps, nonnegative=True))
        s("weight_decay", check_float("optim.weight_decay", self.weight_decay, nonnegative=True))
        s("warmup", check_int("optim.warmup", self.warmup, minimum=0))
        s("grad_clip", check_float("optim.grad_clip", self.grad_clip))
        s("lr_anneal_steps", check_int("optim.lr_anneal_steps", self.lr_anneal_steps, minimum=0))

    def learning_rate(self, step: int) -> float:
        """The lr of the update made at (pre-increment) ``step`` (float64 oracle):
        ``lr * min(step / warmup, 1)`` (warmup > 0) ``* (1 - step / lr_anneal_steps)``
        (lr_anneal_steps > 0)."""
        lr = self.lr
        if self.warmup > 0:
            lr = lr * min(step / self.warmup, 1.0)
        if self.lr_anneal_steps > 0:
            lr = lr * (1.0 - step / self.lr_anneal_steps)
        return lr


def _parse_rates(value) -> tuple[float, ...]:
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",") if p.strip()]
        try:
            value = [float(p) for p in parts]
        except ValueError:
            raise ValueError(f"model.ema_rate must be a rate or comma-separated rates such as "
                             f"'0.9999,0.999', got {value!r}") from None
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value:
        raise TypeError(f"model.ema_rate must be a float, a non-empty tuple of floats or a string "
                        f"'0.9999,0.999', got {value!r}")
    rates = tuple(check_float("model.ema_rate", r) for r in value)
    for r in rates:
        if not 0.0 <= r <= 1.0:
            raise ValueError(f"model.ema_rate must lie in [0, 1], got {r}")
    return rates


@dataclasses.dataclass(frozen=True)
class EMAConfig:
    """The EMA part of score_sde's ``config.model``: one or several rates (improved-diffusion
    keeps one average per rate) and whether the rate warms up (score_sde_pytorch)."""

    ema_rate: tuple[float, ...] = (0.9999,)
    ema_warmup: bool = True

    def __post_init__(self):
        object.__setattr__(self, "ema_rate", _parse_rates(self.ema_rate))
        object.__setattr__(self, "ema_warmup", check_bool("model.ema_warmup", self.ema_warmup))


_SECTIONS = {"training": TrainingConfig, "optim": OptimConfig, "model": EMAConfig}


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _parse_value(dotted: str, text: str, typ):
    """A ``--set`` string parsed to the field type ``typ`` (bool, int, float, str, tuples)."""
    if not isinstance(text, str):
        return text
    if typ is bool:
        low = text.strip().lower()
        if low in ("true", "1", "yes"):
            return True
        if low in ("false", "0", "no"):
            return False
        raise ValueError(f"{dotted}: cannot parse {text!r} as a bool (true/false)")
    if typ is int:
        try:
            return int(text)
        except ValueError:
            try:
                f = float(text)
            except ValueError:
                f = None
            if f is not None and f.is_integer():
                return int(f)
            raise ValueError(f"{dotted}: cannot parse {text!r} as an integer") from None
    if typ is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"{dotted}: cannot parse {text!r} as a number") from None
    return text  # str fields, and tuple fields parse themselves (ema_rate "0.9999,0.999")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """``TrainConfig(training, optim, model)``: the three sections of score_sde's config that
    shape training (``model`` holds only the EMA options here; the network is a model config)."""

    training: TrainingConfig = dataclasses.field(default_factory=TrainingConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    model: EMAConfig = dataclasses.field(default_factory=EMAConfig)

    def __post_init__(self):
        for name, cls in _SECTIONS.items():
            if not isinstance(getattr(self, name), cls):
                raise TypeError(f"TrainConfig.{name} must be a {cls.__name__}, got "
                                f"{type(getattr(self, name)).__name__}")

    # -- construction ---------------------------------------------------------------
    @classmethod
    def from_score_sde_config(cls, config: Mapping[str, Any]) -> "TrainConfig":
        """From score_sde's nested ``config.to_dict()``: its ``training``, ``optim`` and
        ``model`` sections; keys that are not fields here (``snapshot_sampling``,
        ``model.nf``, ...) are ignored, missing ones take the defaults."""
        if not isinstance(config, Mapping):
            raise TypeError("config must be a nested dict (score_sde's config.to_dict()), got "
                            f"{type(config).__name__}")
        sections = {}
        for name, scls in _SECTIONS.items():
            part = config.get(name, {}) or {}
            if not isinstance(part, Mapping):
                raise TypeError(f"config[{name!r}] must be a dict, got {type(part).__name__}")
            fields = {f.name for f in dataclasses.fields(scls)}
            sections[name] = scls(**{k: v for k, v in part.items() if k in fields})
        return cls(**sections)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """Every dotted name ``with_overrides`` accepts (``training.batch_size``, ...)."""
        return tuple(f"{s}.{f.name}" for s, scls in _SECTIONS.items() for f in dataclasses.fields(scls))

    def with_overrides(self, overrides) -> "TrainConfig":
        """A copy with ``overrides`` applied: a list of ``"section.field=value"`` strings (the
        command line's ``--set``) or a dict ``{"section.field": value}``. Unknown names raise
        ``KeyError`` listing the valid ones; string values are parsed to the field's type and
        then validated like any constructor argument."""
        if isinstance(overrides, Mapping):
            items = list(overrides.items())
        elif isinstance(overrides, (list, tuple)):
            items = []
            for entry in overrides:
                if not isinstance(entry, str) or "=" not in entry:
                    raise ValueError(f"override {entry!r} must look like 'section.field=value'")
                key, _, value = entry.partition("=")
                items.append((key.strip(), value.strip()))
        else:
            raise TypeError(f"overrides must be a list of 'section.field=value' strings or a dict, "
                            f"got {type(overrides).__name__}")
        valid = self.field_names()
        changes: dict[str, dict[str, Any]] = {}
        for key, value in items:
            if key not in valid:
                raise KeyError(f"unknown training option {key!r}; valid names: {', '.join(valid)}")
            section, field = key.split(".", 1)
            typ = _field_types(_SECTIONS[section])[field]
            changes.setdefault(section, {})[field] = _parse_value(key, value, typ)
        new = {s: dataclasses.replace(getattr(self, s), **changes.get(s, {})) for s in _SECTIONS}
        return type(self)(**new)

    # -- serialisation --------------------------------------------------------------
    def to_dict(self) -> dict:
        """JSON-able nested dict ``{"training": {...}, "optim": {...}, "model": {...}}``."""
        return {s: _to_json(getattr(self, s)) for s in _SECTIONS}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainConfig":
        """Inverse of ``to_dict`` (unknown keys raise, naming them)."""
        if not isinstance(d, Mapping):
            raise TypeError(f"TrainConfig.from_dict needs a dict, got {type(d).__name__}")
        extra = set(d) - set(_SECTIONS)
        if extra:
            raise KeyError(f"TrainConfig.from_dict: unknown sections {sorted(extra)}; valid: "
                           f"{list(_SECTIONS)}")
        return cls(**{s: _from_json(scls, d.get(s, {}), s) for s, scls in _SECTIONS.items()})


# ------------------------------------------------------------------ JSON helpers


def _to_json(obj) -> dict:
    out = {}
    for f in dataclasses.fields(obj):
        if not f.init:
            continue
        v = getattr(obj, f.name)
        if isinstance(v, enum.Enum):
            v = v.name
        elif isinstance(v, tuple):
            v = list(v)
        out[f.name] = v
    return out


def _from_json(cls, d: Mapping[str, Any], where: str):
    if not isinstance(d, Mapping):
        raise TypeError(f"{where} must be a dict, got {type(d).__name__}")
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = set(d) - fields
    if unknown:
        raise KeyError(f"{where}: unknown keys {sorted(unknown)} for {cls.__name__}; valid: "
                       f"{sorted(fields)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def _model_classes() -> dict[str, type]:
    from spec.model_configs import DDPMConfig, MLPConfig, NCSNppConfig
    from spec.ncsn_configs import NCSNConfig, NCSNv2Config

    classes = [MLPConfig, DDPMConfig, NCSNppConfig, NCSNConfig, NCSNv2Config]
    try:  # improved-diffusion's UNetModel (spec/unet_model.py)
        from spec.unet_model import UNetModelConfig
    except ImportError:
        pass
    else:
        classes.append(UNetModelConfig)
    return {c.__name__: c for c in classes}


def num_classes(model_config) -> int:
    """The class count of a network config: ``num_classes`` (0 = unconditional)."""
    return int(getattr(model_config, "num_classes", 0) or 0)


def null_label(model_config) -> int:
    """The classifier-free guidance null class of a class-conditional model config: the
    last label, ``num_classes - 1`` (what ``training.label_dropout`` replaces labels by).
    ``ValueError`` for an unconditional config or one with fewer than 2 classes."""
    k = num_classes(model_config)
    if k < 2:
        raise ValueError(f"null_label: {type(model_config).__name__} has num_classes={k}; a null class "
                         "needs num_classes >= 2 (the data's classes plus the null one)")
    return k - 1


def _process_classes() -> dict[str, type]:
    from spec.configs import DiffusionConfig, VESDEConfig, VPSDEConfig, subVPSDEConfig

    return {c.__name__: c for c in (VESDEConfig, VPSDEConfig, subVPSDEConfig, DiffusionConfig)}


def _data_class():
    from spec.datasets import DataConfig

    return DataConfig


def _tagged(obj) -> Optional[dict]:
    return None if obj is None else {"type": type(obj).__name__, **_to_json(obj)}


def _untag(d, classes: dict[str, type], where: str):
    if d is None:
        return None
    if not isinstance(d, Mapping) or "type" not in d:
        raise TypeError(f"{where} must be a dict with a 'type' entry, got {d!r}")
    body = dict(d)
    name = body.pop("type")
    if name not in classes:
        raise ValueError(f"{where}: unknown type {name!r}; valid: {sorted(classes)}")
    return _from_json(classes[name], body, where)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """One training run: ``model`` (MLPConfig | DDPMConfig | NCSNppConfig | NCSNConfig |
    NCSNv2Config | UNetModelConfig), ``train`` (TrainConfig), ``data`` (``spec.datasets.DataConfig``) and
    ``process`` (VESDEConfig | VPSDEConfig | subVPSDEConfig | DiffusionConfig, or None for
    ``anneal_dsm``, whose noise ladder is the NCSN config's ``sigmas``).

    Combinations are checked at construction (``ValueError`` naming what clashes):
    ``loss`` resolves (``resolved_loss``) against the process type; "smld" needs a
    VESDEConfig, "ddpm" a VPSDEConfig (not sub-VP), "sde" any SDE config, "diffusion" a
    DiffusionConfig, "anneal_dsm" an NCSN / NCSNv2 model and no process; the NCSN models
    take integer noise-level labels, so they train only with "anneal_dsm" or "smld"; the
    "loss-second-moment" sampler needs the "diffusion" loss; the SMLD labels index the
    model's sigma ladder, so a VE process for "smld" must have N == model.num_scales; a
    DiffusionConfig with ``model_var_type`` "learned" / "learned_range" needs a model with
    ``learn_sigma=True`` (any config with that option, e.g. MLPConfig / DDPMConfig /
    UNetModelConfig: ``2C`` output channels, eps then v) and ``learn_sigma=True`` needs such
    a process; ``training.label_dropout > 0`` needs a class-conditional model with
    ``num_classes >= 2`` (the last class is the null one, ``null_label``).
    """

    model: Any
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    data: Any = None
    process: Any = None

    def __post_init__(self):
        models = _model_classes()
        if type(self.model).__name__ not in models or not isinstance(self.model, tuple(models.values())):
            raise TypeError(f"RunConfig.model must be one of {sorted(models)}, got "
                            f"{type(self.model).__name__}")
        if not isinstance(self.train, TrainConfig):
            raise TypeError(f"RunConfig.train must be a TrainConfig, got {type(self.train).__name__}")
        if self.data is not None:
            try:
                data_cls = _data_class()
            except ImportError:
                data_cls = None
            if data_cls is not None and not isinstance(self.data, data_cls):
                raise TypeError(f"RunConfig.data must be a spec.datasets.DataConfig, got "
                                f"{type(self.data).__name__}")
        procs = _process_classes()
        if self.process is not None and not isinstance(self.process, tuple(procs.values())):
            raise TypeError(f"RunConfig.process must be one of {sorted(procs)} or None, got "
                            f"{type(self.process).__name__}")
        self._check_combination()

    @property
    def resolved_loss(self) -> str:
        """The objective: ``train.training.loss``, with "auto" resolved by score_sde's rule."""
        from spec.configs import DiffusionConfig, VESDEConfig, VPSDEConfig, subVPSDEConfig

        loss = self.train.training.loss
        if loss != "auto":
            return loss
        p = self.process
        if p is None:
            return "anneal_dsm"
        if isinstance(p, DiffusionConfig):
            return "diffusion"
        if self.train.training.continuous or isinstance(p, subVPSDEConfig):
            return "sde"
        return "smld" if isinstance(p, VESDEConfig) else "ddpm" if isinstance(p, VPSDEConfig) else "sde"

    def _check_combination(self) -> None:
        from spec.configs import DiffusionConfig, VESDEConfig, VPSDEConfig, subVPSDEConfig
        from spec.ncsn_configs import NCSNConfig, NCSNv2Config

        loss, p, m = self.resolved_loss, self.process, self.model
        pname = "None" if p is None else type(p).__name__
        ncsn = isinstance(m, (NCSNConfig, NCSNv2Config))
        need = {"smld": "a VESDEConfig", "ddpm": "a VPSDEConfig", "sde": "an SDE config "
                "(VESDEConfig, VPSDEConfig or subVPSDEConfig)", "diffusion": "a DiffusionConfig",
                "anneal_dsm": "None (the ladder is the NCSN config's sigmas)"}[loss]
        ok = {"smld": isinstance(p, VESDEConfig),
              "ddpm": isinstance(p, VPSDEConfig) and not isinstance(p, subVPSDEConfig),
              "sde": isinstance(p, (VESDEConfig, VPSDEConfig)),
              "diffusion": isinstance(p, DiffusionConfig),
              "anneal_dsm": p is None}[loss]
        if not ok:
            raise ValueError(f"RunConfig: training.loss={loss!r} needs process = {need}, got {pname}")
        if loss == "anneal_dsm" and not ncsn:
            raise ValueError(f"RunConfig: training.loss='anneal_dsm' needs an NCSNConfig or "
                             f"NCSNv2Config model, got {type(m).__name__}")
        if ncsn and loss not in ("anneal_dsm", "smld"):
            raise ValueError(f"RunConfig: {type(m).__name__} takes integer noise-level labels; "
                             f"train it with training.loss 'anneal_dsm' or 'smld', not {loss!r}")
        if loss == "smld" and hasattr(m, "num_scales") and m.num_scales != p.N:
            raise ValueError(f"RunConfig: the SMLD labels index the model's sigmas: "
                             f"model.num_scales={m.num_scales} must equal process.N={p.N}")
        self._check_learned_variance()
        p = self.train.training.label_dropout
        if p > 0 and num_classes(m) < 2:
            raise ValueError(
                f"RunConfig: training.label_dropout={p} replaces labels by the null class "
                f"(the last of num_classes), so it needs a class-conditional model with "
                f"num_classes >= 2; {type(m).__name__} has num_classes={num_classes(m)}"
                + ("" if hasattr(m, "num_classes") else " (no num_classes option)"))
        if self.train.training.schedule_sampler != "uniform" and loss != "diffusion":
            raise ValueError(f"RunConfig: training.schedule_sampler="
                             f"{self.train.training.schedule_sampler!r} needs the 'diffusion' loss, "
                             f"got {loss!r}")

    def _check_learned_variance(self) -> None:
        """A learned-variance process (``model_var_type`` LEARNED / LEARNED_RANGE) reads eps
        and v from a ``2C``-channel output, so it needs ``model.learn_sigma=True``; such a model
        needs that process (the other objectives read a ``C``-channel output)."""
        from spec.configs import DiffusionConfig, ModelVarType

        p, m = self.process, self.model
        learned = isinstance(p, DiffusionConfig) and p.model_var_type in (
            ModelVarType.LEARNED, ModelVarType.LEARNED_RANGE)
        learn_sigma = bool(getattr(m, "learn_sigma", False))
        if learned and not learn_sigma:
            has = hasattr(m, "learn_sigma")
            raise ValueError(
                f"RunConfig: process.model_var_type={p.model_var_type.value!r} needs "
                f"model.learn_sigma=True (a network with twice the data's channels: eps, then v)"
                + ("" if has else f"; {type(m).__name__} has no learn_sigma option (use an MLPConfig, "
                                  "DDPMConfig or UNetModelConfig)"))
        if learn_sigma and not learned:
            got = (f"process.model_var_type={p.model_var_type.value!r}" if isinstance(p, DiffusionConfig)
                   else f"process = {'None' if p is None else type(p).__name__}")
            raise ValueError(
                f"RunConfig: model.learn_sigma=True needs a DiffusionConfig process with "
                f"process.model_var_type 'learned' or 'learned_range', got {got}")

    def to_dict(self) -> dict:
        """JSON-able: ``{"model": {"type": ..., ...}, "train": {...}, "data": {"type": ...},
        "process": {"type": ..., ...} | None}`` (enums by name, tuples as lists)."""
        return {"model": _tagged(self.model), "train": self.train.to_dict(),
                "data": _tagged(self.data), "process": _tagged(self.process)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "RunConfig":
        """Inverse of ``to_dict``."""
        if not isinstance(d, Mapping):
            raise TypeError(f"RunConfig.from_dict needs a dict, got {type(d).__name__}")
        extra = set(d) - {"model", "train", "data", "process"}
        if extra:
            raise KeyError(f"RunConfig.from_dict: unknown keys {sorted(extra)}")
        if "model" not in d:
            raise KeyError("RunConfig.from_dict: no 'model' entry")
        data = d.get("data")
        data = None if data is None else _untag(data, {_data_class().__name__: _data_class()}, "data")
        return cls(model=_untag(d["model"], _model_classes(), "model"),
                   train=TrainConfig.from_dict(d.get("train", {})),
                   data=data,
                   process=_untag(d.get("process"), _process_classes(), "process"))

    def to_json(self) -> str:
        """``json.dumps(to_dict())`` with sorted keys (the run directory's config.json)."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)
