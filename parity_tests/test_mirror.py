"""The mirror's public API: every ``jax_impl`` module and its ``torch_ref`` twin export the
same ``__all__``, every exported name exists on both sides, and each docstring names its twin.

Imports only (no compute). Pairs are discovered from the file tree, so a new module pair is
covered automatically. Skipped: the package ``__init__.py`` files (no public names of their
own) and ``jax_impl/demo.py`` (no twin).

``convert`` is checked by a weaker rule: the pair is deliberately asymmetric (the torch side
holds the key-table core, the flax side re-exports part of it and adds orbax / flax entry
points with no torch counterpart), so its two ``__all__`` need only agree on the names that
exist in both modules.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NO_TWIN = {"demo"}
ASYMMETRIC = {"convert"}


def _modules(side: str) -> set[str]:
    names = set()
    for sub in ("", "models/"):
        for path in (ROOT / side / sub).glob("*.py"):
            if path.name != "__init__.py":
                names.add(sub + path.stem)
    return names


JAX_MODULES = _modules("jax_impl") - NO_TWIN
PAIRS = sorted(JAX_MODULES)


def _load(side: str, rel: str):
    return importlib.import_module(f"{side}.{rel.replace('/', '.')}")


def test_every_module_has_a_twin():
    assert JAX_MODULES == _modules("torch_ref")
    assert len(PAIRS) >= 24


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


@pytest.mark.parametrize("rel", [r for r in PAIRS if r not in ASYMMETRIC])
def test_all_identical(rel):
    jax_mod, torch_mod = _load("jax_impl", rel), _load("torch_ref", rel)
    jax_all, torch_all = set(jax_mod.__all__), set(torch_mod.__all__)
    assert jax_all == torch_all, (
        f"{rel}: jax-only {sorted(jax_all - torch_all)}, torch-only {sorted(torch_all - jax_all)}")
    missing = sorted(n for n in jax_all if not (hasattr(jax_mod, n) and hasattr(torch_mod, n)))
    assert not missing, f"{rel}: exported names missing on one side: {missing}"


@pytest.mark.parametrize("rel", sorted(ASYMMETRIC))
def test_asymmetric_pair_agrees_on_shared_names(rel):
    jax_mod, torch_mod = _load("jax_impl", rel), _load("torch_ref", rel)
    jax_all, torch_all = set(jax_mod.__all__), set(torch_mod.__all__)
    # A name exported on one side that also exists on the other must be exported there too.
    assert not {n for n in jax_all if hasattr(torch_mod, n)} - torch_all
    assert not {n for n in torch_all if hasattr(jax_mod, n)} - jax_all
    shared = jax_all & torch_all
    assert {"key_table", "from_score_sde", "load_checkpoint", "score_sde_state_dict"} <= shared
