"""``--set section.key=value``: command-line overrides of a ``spec.RunConfig``, validated
against the typed configs.

Sections:

* ``training.*``, ``optim.*`` and the EMA options ``model.ema_rate`` / ``model.ema_warmup``
  (score_sde's names) go to ``TrainConfig.with_overrides``;
* any other ``model.*`` is a field of the network config (``model.nf=64``,
  ``model.hidden_dims=256,256``);
* ``data.*`` a field of ``spec.DataConfig`` (``data.dataset=array``, ``data.path=x.npy``);
  a preset without data starts from ``DataConfig()``;
* ``process.*`` (also spelled ``sde.*`` or ``diffusion.*``) a field of the SDE or
  diffusion config (``process.N=500``, ``diffusion.noise_schedule=cosine``).

Values are parsed to the field's type (bool: true/false; tuples: ``1,2,2``; ``none`` for
optional fields), the configs are rebuilt (so their own checks run), and the run is
re-checked as a whole (``RunConfig``). Errors name the override: ``ValueError`` /
``KeyError`` with the valid names.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Sequence

from spec.datasets import DataConfig
from spec.train_config import EMAConfig, RunConfig, TrainConfig, _parse_value

__all__ = ["apply_overrides", "parse_overrides"]

_PROCESS_ALIASES = ("process", "sde", "diffusion")


def parse_overrides(items: Sequence[str]) -> list[tuple[str, str, str]]:
    """``["model.nf=64", ...]`` -> ``[(section, field, text), ...]``."""
    out = []
    for item in items:
        if not isinstance(item, str) or "=" not in item or "." not in item.partition("=")[0]:
            raise ValueError(f"--set {item!r}: expected section.key=value, e.g. training.n_iters=1000")
        key, _, value = item.partition("=")
        section, _, field = key.strip().partition(".")
        if not field:
            raise ValueError(f"--set {item!r}: expected section.key=value")
        out.append((section, field, value.strip()))
    return out


def _unwrap_optional(typ):
    args = typing.get_args(typ)
    if typing.get_origin(typ) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else Any), True
    return typ, False


def _parse(dotted: str, text: str, typ):
    typ, optional = _unwrap_optional(typ)
    if optional and text.strip().lower() in ("none", "null", ""):
        return None
    if typ in (bool, int, float):  # the training sections' own parser
        return _parse_value(f"--set {dotted}", text, typ)
    origin = typing.get_origin(typ)
    if typ is tuple or origin is tuple:
        args = typing.get_args(typ)
        elem = args[0] if args else float
        parts = [p for p in text.strip().strip("()[]").split(",") if p.strip()]
        return tuple(_parse(dotted, p.strip(), elem if elem is not Ellipsis else float) for p in parts)
    return text  # strings; enums are coerced from their names by the configs, with their own error


def _replace(dotted_section: str, obj, fields: dict[str, str]):
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    values = {}
    for field, text in fields.items():
        if field not in names:
            raise KeyError(f"--set {dotted_section}.{field}: {type(obj).__name__} has no field "
                           f"{field!r}; valid: {', '.join(names)}")
        values[field] = _parse(f"{dotted_section}.{field}", text, hints[field])
    try:
        return dataclasses.replace(obj, **values)
    except (TypeError, ValueError) as e:
        raise ValueError(f"--set {dotted_section}.*: {e}") from None


def apply_overrides(config: RunConfig, items: Sequence[str]) -> RunConfig:
    """``config`` with the ``--set`` ``items`` applied (see the module docstring)."""
    train_items: list[str] = []
    model_f: dict[str, str] = {}
    data_f: dict[str, str] = {}
    proc_f: dict[str, str] = {}
    ema_fields = {f.name for f in dataclasses.fields(EMAConfig)}
    for section, field, text in parse_overrides(items):
        if section in ("training", "optim") or (section == "model" and field in ema_fields):
            train_items.append(f"{section}.{field}={text}")
        elif section == "model":
            model_f[field] = text
        elif section == "data":
            data_f[field] = text
        elif section in _PROCESS_ALIASES:
            proc_f[field] = text
        else:
            raise KeyError(f"--set {section}.{field}: unknown section {section!r}; valid: training, "
                           f"optim, model, data, process (or sde / diffusion)")
    train = config.train
    if train_items:
        try:
            train = train.with_overrides(train_items)
        except KeyError as e:
            raise KeyError(f"--set: {e.args[0]}") from None
        except (TypeError, ValueError) as e:
            raise ValueError(f"--set: {e}") from None
    model = _replace("model", config.model, model_f) if model_f else config.model
    data = config.data
    if data_f:
        data = _replace("data", data if data is not None else DataConfig(), data_f)
    process = config.process
    if proc_f:
        if process is None:
            raise ValueError(f"--set process.*: this run has no SDE or diffusion (NCSN's ladder is "
                             f"model.sigma_min / model.sigma_max / model.num_scales)")
        process = _replace("process", process, proc_f)
    try:
        return RunConfig(model=model, train=train if isinstance(train, TrainConfig) else config.train,
                         data=data, process=process)
    except (TypeError, ValueError) as e:
        raise ValueError(f"--set: {e}") from None
