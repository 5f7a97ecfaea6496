"""The mirror's public API (docs/ARCHITECTURE.md, "The mirror").

Every ``jax_impl`` module has a ``torch_ref`` twin of the same relative path, and per pair:

* each docstring names its twin (``jax_impl/x.py`` <-> ``torch_ref/x.py``);
* both export an ``__all__`` whose names exist, and the two ``__all__`` are identical, except
  for ONE-SIDED names: a name exported on one side only is allowed when that module's
  docstring lists it, with its justification, in the paragraph that starts at a line
  ``One-sided names:``, e.g.::

      One-sided names:
        check_key -- a JAX PRNG key has no torch counterpart (torch draws from a Generator).

  (the grammar is in ``one_sided_names``). A listed name must exist in its module and
  must not be exported by the twin;
* every public function and class exported by both (and every public method of such a
  class) has the same signature: parameter names, order, kinds and defaults agree, with
  exactly these allowances, written once in ``_comparable``:

  (a) randomness: a JAX function whose first parameter is ``rng`` corresponds to a torch
      function without it that has a keyword-only ``generator`` parameter (default
      ``None``);
  (b) framework objects as defaults: a dtype compares by name (``jnp.float32`` ==
      ``torch.float32``), and any other default that is a jax / flax / torch object
      compares by type name;
  (c) a Flax linen class's ``parent`` / ``name`` fields (added by flax to every module) are
      not part of the mirrored signature (nor is its ``setup``). A network's call (flax
      ``__call__`` / torch ``forward``) is not compared: flax passes ``train`` per call,
      torch sets ``module.train()``;
  (d) a documented design difference: a function or method (``name`` or
      ``Class.method``) listed, each with its justification, in the JAX module's docstring
      paragraph that starts at a line ``Signature differences:`` (same grammar as the
      one-sided names) is not compared; a listed name must exist on both sides and its
      signatures must really differ, so a stale entry fails.

ONE-SIDED MODULES: a module without a twin is allowed when its own docstring has a
paragraph that starts at a line ``One-sided module:`` and justifies it (at least five words:
why the other framework has no counterpart), e.g. ``jax_impl/sharding.py`` (``jax.sharding``
meshes). The rule is checked both ways: a module without a twin and without that paragraph
fails, and so does a stale paragraph in a module that has a twin, or one with no
justification (``one_sided_module``). A one-sided module still needs a well-formed
``__all__``; the pair tests below cover only the modules present on both sides.

Imports only (no compute). Pairs are discovered from the file tree, so a new module pair is
covered automatically; the package ``__init__.py`` files (no public names of their own)
are skipped. There is no exception list: the application (``scorediff``) lives outside
both packages, and one-sided names and modules are documented where they are defined.
"""

from __future__ import annotations

import ast
import enum
import importlib
import inspect
import re
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
FRAMEWORKS = ("jax", "jaxlib", "flax", "torch", "numpy", "optax")


def _modules(side: str) -> set[str]:
    names = set()
    for sub in ("", "models/"):
        for path in (ROOT / side / sub).glob("*.py"):
            if path.name != "__init__.py":
                names.add(sub + path.stem)
    return names


def _docstring(side: str, rel: str) -> str:
    """A module's docstring read from its source (no import)."""
    return ast.get_docstring(ast.parse((ROOT / side / f"{rel}.py").read_text())) or ""


def one_sided_module(doc: str | None) -> str | None:
    """The justification of a ``One-sided module:`` paragraph in a module docstring (the
    text after the header up to the next blank line, whitespace collapsed), or None when
    the docstring has no such paragraph."""
    lines = (doc or "").splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith("One-sided module:"):
            text = [line.strip().removeprefix("One-sided module:")]
            for more in lines[i + 1:]:
                if not more.strip():
                    break
                text.append(more.strip())
            return " ".join(" ".join(text).split())
    return None


JAX_MODULES = _modules("jax_impl")
TORCH_MODULES = _modules("torch_ref")
PAIRS = sorted(JAX_MODULES & TORCH_MODULES)
ONE_SIDED = sorted([("jax_impl", rel) for rel in JAX_MODULES - TORCH_MODULES]
                   + [("torch_ref", rel) for rel in TORCH_MODULES - JAX_MODULES])


def _load(side: str, rel: str):
    return importlib.import_module(f"{side}.{rel.replace('/', '.')}")


_IDENT = r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)?"  # a name, or Class.method
_NAME = rf"(?:``{_IDENT}``|`{_IDENT}`|{_IDENT})(?![\w.`])"
_ENTRY = re.compile(rf"(?P<bullet>[-*]\s+)?(?P<names>{_NAME}(?:\s*(?:/|,|and)\s*{_NAME})*)"
                    rf"\s*(?P<sep>--|:|-)?\s*(?P<why>.*)$")


def one_sided_names(doc: str | None, header: str = "One-sided names:") -> dict[str, str]:
    """``{name: justification}`` listed under ``One-sided names:`` (or another ``header``,
    e.g. ``Signature differences:``) in a module docstring.

    The list is the paragraph that starts at that line (it ends at a blank or a less
    indented line). An entry is a line starting with a name (bare or in backticks) or
    several names joined by ``/``, ``,`` or ``and``, after a bullet or followed by a
    separator (``--``, ``:``, ``-``), then the justification; names in backticks right
    after ``One-sided names:`` on the same line need neither. Any other line, and every
    more indented line, continues the entry above.
    """
    lines = (doc or "").splitlines()
    for i, line in enumerate(lines):
        _, sep, rest = line.partition(header)
        if not sep:
            continue
        paragraph = ([rest.strip()] if rest.strip() else []) + lines[i + 1:]
        found: dict[str, str] = {}
        base, last = None, []
        for k, raw in enumerate(paragraph):
            text = raw.strip()
            if not text:
                break
            depth = len(raw) - len(raw.lstrip())
            base = depth if base is None else base
            if depth < base:
                break
            m = _ENTRY.match(text) if depth == base else None
            inline = k == 0 and rest.strip() and "`" in m.group("names") if m else False
            if m and (m.group("bullet") or m.group("sep") or inline):
                last = [n for n in re.findall(_IDENT, m.group("names")) if n != "and"]
                for name in last:
                    found[name] = m.group("why").strip()
            else:
                for name in last:
                    found[name] = (found[name] + " " + text).strip()
        return found
    return {}


def test_one_sided_parser():
    doc = ("Title.\n\nOne-sided names:\n- ``check_key``: keys are JAX's (torch uses a\n"
           "  ``Generator``).\n- `save_variables`: orbax I/O.\n\nMore text with ``other``.\n")
    assert one_sided_names(doc) == {"check_key": "keys are JAX's (torch uses a ``Generator``).",
                                    "save_variables": "orbax I/O."}
    doc = "T.\n\nOne-sided names:\n  check_key -- PRNG keys are a JAX concept.\n"
    assert one_sided_names(doc) == {"check_key": "PRNG keys are a JAX concept."}
    doc = ("T.\n\nOne-sided names: ``save_variables`` / ``load_variables`` store flax variables\n"
           "as orbax (the torch side writes ``.pt``:\n``save_state_dict``).\n")
    why = "store flax variables as orbax (the torch side writes ``.pt``: ``save_state_dict``)."
    assert one_sided_names(doc) == {"save_variables": why, "load_variables": why}
    assert one_sided_names("no list here ``x``") == {}
    doc = "T.\n\nSignature differences:\n  A.weights, f -- functional state here.\n"
    assert one_sided_names(doc, "Signature differences:") == {"A.weights": "functional state here.",
                                                               "f": "functional state here."}


def test_one_sided_module_parser():
    doc = ("Title.\n\nOne-sided module: JAX only; ``jax.sharding`` meshes have no\n"
           "  torch counterpart here.\n\nMore text.\n")
    assert one_sided_module(doc) == "JAX only; ``jax.sharding`` meshes have no torch counterpart here."
    assert one_sided_module("T.\n\nOne-sided module:\n  why it is so.\n") == "why it is so."
    assert one_sided_module("T.\n\nOne-sided names:\n- f: why.\n") is None
    assert one_sided_module(None) is None


def test_every_module_has_a_twin_or_is_documented_one_sided():
    problems = []
    for side, rel in ONE_SIDED:
        twin = "torch_ref" if side == "jax_impl" else "jax_impl"
        why = one_sided_module(_docstring(side, rel))
        if why is None:
            problems.append(f"{side}/{rel}.py has no twin {twin}/{rel}.py and its docstring has no "
                            f"'One-sided module:' paragraph saying why")
        elif len(re.findall(r"\w+", why)) < 5:
            problems.append(f"{side}/{rel}.py: 'One-sided module:' has no justification ({why!r})")
    for rel in PAIRS:
        for side in ("jax_impl", "torch_ref"):
            if one_sided_module(_docstring(side, rel)) is not None:
                problems.append(f"{side}/{rel}.py says 'One-sided module:' but has a twin (stale)")
    assert not problems, "\n".join(problems)
    assert len(PAIRS) >= 24


@pytest.mark.parametrize("side,rel", ONE_SIDED, ids=[f"{s}/{r}" for s, r in ONE_SIDED])
def test_one_sided_module_all_is_well_formed(side, rel):
    mod = _load(side, rel)
    exported = getattr(mod, "__all__", None)
    assert isinstance(exported, list) and exported, f"{mod.__name__} has no __all__"
    assert len(exported) == len(set(exported)), f"duplicates in {mod.__name__}.__all__"
    missing = [n for n in exported if not hasattr(mod, n)]
    assert not missing, f"{mod.__name__}.__all__ lists undefined names {missing}"


@pytest.mark.parametrize("rel", PAIRS)
def test_docstring_names_twin(rel):
    jax_mod, torch_mod = _load("jax_impl", rel), _load("torch_ref", rel)
    for mod, twin in ((jax_mod, "torch_ref"), (torch_mod, "jax_impl")):
        doc = mod.__doc__ or ""
        forms = (f"{twin}/{rel}.py", f"{twin}.{rel.replace('/', '.')}")
        assert any(f in doc for f in forms), f"{mod.__name__} docstring does not name {forms[0]}"


@pytest.mark.parametrize("rel", PAIRS)
def test_all_exists_and_is_well_formed(rel):
    for side in ("jax_impl", "torch_ref"):
        mod = _load(side, rel)
        exported = getattr(mod, "__all__", None)
        assert isinstance(exported, list) and exported, f"{mod.__name__} has no __all__"
        assert len(exported) == len(set(exported)), f"duplicates in {mod.__name__}.__all__"
        assert all(isinstance(n, str) and not n.startswith("_") for n in exported)
        missing = [n for n in exported if not hasattr(mod, n)]
        assert not missing, f"{mod.__name__}.__all__ lists undefined names {missing}"


@pytest.mark.parametrize("rel", PAIRS)
def test_all_identical_except_documented_one_sided_names(rel):
    mods = {"jax_impl": _load("jax_impl", rel), "torch_ref": _load("torch_ref", rel)}
    problems = []
    for side, twin in (("jax_impl", "torch_ref"), ("torch_ref", "jax_impl")):
        mod, other = mods[side], mods[twin]
        listed = one_sided_names(mod.__doc__)
        for name in sorted(set(mod.__all__) - set(other.__all__)):
            if name not in listed:
                problems.append(f"{side}/{rel}: {name!r} is exported here only and not listed "
                                f"under 'One-sided names:' in the docstring")
        for name, why in listed.items():
            if not hasattr(mod, name):
                problems.append(f"{side}/{rel}: one-sided name {name!r} is not defined")
            elif name in other.__all__:
                problems.append(f"{side}/{rel}: {name!r} is listed as one-sided but {twin} exports it")
            if len(re.findall(r"\w+", why)) < 2:
                problems.append(f"{side}/{rel}: one-sided name {name!r} has no justification")
    assert not problems, "\n".join(problems)


# --- signatures -------------------------------------------------------------------------


def _is_flax_module(cls) -> bool:
    return any(c.__module__.startswith("flax.") and c.__name__ == "Module" for c in cls.__mro__)


def _dtype_name(value):
    """The dtype's name (``float32``) for a numpy / jax / torch dtype, else None."""
    if type(value).__module__.startswith("torch") and type(value).__name__ == "dtype":
        return str(value).removeprefix("torch.")
    if isinstance(value, np.dtype) or (isinstance(value, type) and issubclass(value, np.generic)):
        return np.dtype(value).name
    if hasattr(value, "dtype") and isinstance(value, type):  # jnp.float32 and friends
        try:
            return np.dtype(value.dtype).name
        except TypeError:
            return None
    try:  # jax's scalar-type objects (jnp.float32) are not numpy classes
        if type(value).__module__.startswith("jax"):
            return np.dtype(value).name
    except TypeError:
        pass
    return None


def _is_framework_object(value) -> bool:
    mod = type(value).__module__ or ""
    return mod.split(".")[0] in FRAMEWORKS and not isinstance(value, (bool, int, float, str))


def _default_key(value):
    """What a default is compared by (allowance (b))."""
    if value is inspect.Parameter.empty:
        return ("no default",)
    name = _dtype_name(value)
    if name is not None:
        return ("dtype", name)
    if isinstance(value, enum.Enum):
        return ("enum", type(value).__name__, value.name)
    if _is_framework_object(value) or inspect.isfunction(value) or inspect.isbuiltin(value):
        if callable(value) and hasattr(value, "__name__"):
            return ("callable", value.__name__)
        return ("type", type(value).__name__)
    return ("value", repr(value))


def _comparable(sig: inspect.Signature, side: str, *, drop=()) -> list[tuple]:
    """Parameters as (name, kind, default key), after the documented allowances."""
    params = [p for p in sig.parameters.values() if p.name not in drop]
    first = 1 if params and params[0].name in ("self", "cls") else 0
    if side == "jax_impl" and len(params) > first and params[first].name == "rng":
        del params[first]  # allowance (a), checked against torch's generator in _compare
    if side == "torch_ref":
        params = [p for p in params if not (p.name == "generator"
                                            and p.kind is inspect.Parameter.KEYWORD_ONLY
                                            and p.default is None)]
    return [(p.name, p.kind.description, _default_key(p.default)) for p in params]


def _signature(obj):
    try:
        return inspect.signature(obj)
    except (TypeError, ValueError):
        return None


def _compare(label: str, jax_obj, torch_obj, *, drop=()) -> list[str]:
    js, ts = _signature(jax_obj), _signature(torch_obj)
    if js is None or ts is None:
        return []
    problems = []
    names = [n for n in js.parameters if n not in ("self", "cls")][:1]
    j_rng = names == ["rng"]
    t_gen = "generator" in ts.parameters
    if j_rng and not t_gen:
        problems.append(f"{label}: JAX takes `rng` first, torch has no keyword-only `generator=None`")
    if t_gen and not j_rng:
        problems.append(f"{label}: torch takes `generator`, JAX has no `rng` first parameter")
    if t_gen:
        g = ts.parameters["generator"]
        if g.kind is not inspect.Parameter.KEYWORD_ONLY or g.default is not None:
            problems.append(f"{label}: torch `generator` must be keyword-only with default None")
    jp, tp = _comparable(js, "jax_impl", drop=drop), _comparable(ts, "torch_ref", drop=drop)
    if jp != tp:
        problems.append(f"{label}: signatures differ: {_diff(jp, tp)}\n"
                        f"    jax:   {js}\n    torch: {ts}")
    return problems


def _diff(jp: list[tuple], tp: list[tuple]) -> str:
    jn, tn = [p[0] for p in jp], [p[0] for p in tp]
    if set(jn) != set(tn):
        return (f"JAX-only parameters {[n for n in jn if n not in tn]}, "
                f"torch-only parameters {[n for n in tn if n not in jn]}")
    if jn != tn:
        return f"parameter order {jn} vs {tn}"
    out = []
    for (name, jk, jd), (_, tk, td) in zip(jp, tp):
        if jk != tk:
            out.append(f"{name}: kind {jk} vs {tk}")
        if jd != td:
            out.append(f"{name}: default {jd[-1]} vs {td[-1]}")
    return "; ".join(out)


def _own_public_methods(cls) -> dict[str, object]:
    """Public methods defined by the project's classes in ``cls``'s MRO (not the framework's)."""
    out = {}
    for klass in reversed(cls.__mro__):
        if not (klass.__module__ or "").split(".")[0] in ("jax_impl", "torch_ref", "spec"):
            continue
        for name, value in vars(klass).items():
            if name.startswith("_"):
                continue
            if isinstance(value, (staticmethod, classmethod)):
                value = value.__func__
            if inspect.isfunction(value):
                out[name] = value
    return out


def _signature_problems(rel: str) -> list[str]:
    jax_mod, torch_mod = _load("jax_impl", rel), _load("torch_ref", rel)
    problems = []
    documented = one_sided_names(jax_mod.__doc__, "Signature differences:")  # allowance (d)
    for qual, why in documented.items():
        j, t = _resolve(jax_mod, qual), _resolve(torch_mod, qual)
        if j is None or t is None:
            problems.append(f"{rel}: 'Signature differences:' lists {qual!r}, not defined on both sides")
        elif not _compare(qual, j, t):
            problems.append(f"{rel}: 'Signature differences:' lists {qual!r} but the twins agree")
        if len(re.findall(r"\w+", why)) < 2:
            problems.append(f"{rel}: signature difference {qual!r} has no justification")
    for name in sorted(set(jax_mod.__all__) & set(torch_mod.__all__)):
        j, t = getattr(jax_mod, name), getattr(torch_mod, name)
        if j is t:
            continue  # the same object re-exported from spec
        label = f"{rel}.{name}"
        if inspect.isclass(j) and inspect.isclass(t):
            flax = _is_flax_module(j)
            drop = ("parent", "name") if flax else ()  # allowance (c)
            problems += _compare(label, j, t, drop=drop)
            jm, tm = _own_public_methods(j), _own_public_methods(t)
            if flax:
                jm.pop("setup", None)  # allowance (c)
            for meth in sorted(set(jm) & set(tm)):
                if f"{name}.{meth}" not in documented:
                    problems += _compare(f"{label}.{meth}", jm[meth], tm[meth])
        elif inspect.isclass(j) or inspect.isclass(t):
            problems.append(f"{label}: a class on one side, not on the other")
        elif callable(j) and callable(t) and name not in documented:
            problems += _compare(label, j, t)
    return problems


def _resolve(mod, qual: str):
    """``mod.name`` or ``mod.Class.method`` (None when absent)."""
    obj = mod
    for part in qual.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def test_signature_rules_themselves():
    import jax.numpy as jnp
    import torch

    def jf(rng, sde, shape, *, x_T=None, dtype=jnp.float32):
        pass

    def tf(sde, shape, *, x_T=None, dtype=torch.float32, generator=None):
        pass

    def tbad(sde, shape, x_T=None, *, dtype=torch.float64):
        pass

    assert _compare("f", jf, tf) == []
    bad = _compare("f", jf, tbad)
    assert len(bad) == 2 and "generator" in bad[0] and "x_T: kind" in bad[1] and "dtype: default" in bad[1]


@pytest.mark.parametrize("rel", PAIRS)
def test_twin_signatures_agree(rel):
    problems = _signature_problems(rel)
    assert not problems, "\n".join(problems)
