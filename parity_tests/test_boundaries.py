"""Import boundaries between the packages (docs/ARCHITECTURE.md, "Import boundaries").

* every ``jax_impl`` module imports with ``torch`` and ``torch_ref`` blocked (the product
  never needs PyTorch; checkpoints come in as ``.npz`` / ``.safetensors``);
* every ``torch_ref`` module imports with ``jax``, ``jaxlib``, ``flax`` and ``jax_impl``
  blocked (the reference never leans on what it checks);
* every ``spec`` module imports with all of them blocked (numpy and the standard library
  only);
* nothing in ``jax_impl``, ``torch_ref`` or ``spec`` imports the application package
  ``scorediff``, and no function imports across a boundary lazily either (static check
  of the source with ``ast``). The one lazy import allowed is ``import torch`` inside a
  function of ``jax_impl`` or ``spec``: the ``.pth`` / ``.pt`` checkpoint reader.

Modules are discovered from the file tree (sub-packages such as ``jax_impl/models`` and
``spec/oracles`` included), so a new module is covered without editing this file. Each
side is imported in ONE fresh interpreter (a ``sys.meta_path`` finder that raises
``ModuleNotFoundError``, an ``ImportError``, for the blocked top-level packages, as on a
machine without them; then every module is imported in turn); the per-module tests read
that one result, so a failure names the module, the blocked import and the line of the
repository that asked for it.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

BLOCKED = {
    "jax_impl": ("torch", "torch_ref"),
    "torch_ref": ("jax", "jaxlib", "flax", "jax_impl"),
    "spec": ("jax", "jaxlib", "flax", "torch", "torch_ref", "jax_impl"),
}
# The application package sits on top of everything; the library packages never import it.
LIBRARY = tuple(BLOCKED)
APPLICATION = "scorediff"
# Lazy (function-level) imports allowed across a boundary: the .pth/.pt reader's torch.
LAZY_ALLOWED = {"jax_impl": ("torch",), "spec": ("torch",), "torch_ref": ()}


def _modules(package: str) -> list[str]:
    """Dotted names of every module of ``package`` found on disk, packages included."""
    names = []
    for path in sorted((ROOT / package).rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names.append(".".join(parts))
    return names


# Runs in the fresh interpreter: block, import every module, report per module as JSON.
_PROBE = r"""
import importlib, json, sys, traceback
blocked, modules, root = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]

class BlockFinder:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            # what `import torch` raises where torch is not installed
            raise ModuleNotFoundError(f"blocked import of {name!r}", name=name)
        return None

sys.meta_path.insert(0, BlockFinder())
report = {}
for mod in modules:
    try:
        importlib.import_module(mod)
        report[mod] = None
    except BaseException as exc:  # noqa: BLE001 - any failure is reported, not raised
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename.startswith(root)]
        where = f"{frames[-1].filename[len(root) + 1:]}:{frames[-1].lineno}" if frames else "?"
        report[mod] = f"{type(exc).__name__}: {exc} (at {where})"
leaked = sorted(m for m in sys.modules if m.split(".")[0] in blocked)
print(json.dumps({"report": report, "leaked": leaked}))
"""


@lru_cache(maxsize=None)
def _import_report(package: str) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(BLOCKED[package]), json.dumps(_modules(package)),
         str(ROOT)],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert out.returncode == 0, f"{package} probe crashed:\n{out.stderr[-3000:]}"
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_modules_discovered():
    assert len(_modules("jax_impl")) >= 26 and "jax_impl.models.ncsnpp" in _modules("jax_impl")
    assert len(_modules("torch_ref")) >= 26 and "torch_ref.models.ncsnpp" in _modules("torch_ref")
    assert "spec.oracles.gmm" in _modules("spec")


@pytest.mark.parametrize(
    "package, module", [(p, m) for p in LIBRARY for m in _modules(p)])
def test_module_imports_with_other_side_blocked(package, module):
    report = _import_report(package)
    assert module in report["report"], f"{module} was not probed"
    error = report["report"][module]
    assert error is None, f"{module} with {BLOCKED[package]} blocked: {error}"


@pytest.mark.parametrize("package", LIBRARY)
def test_no_blocked_package_loaded(package):
    # The finder refuses blocked packages, so none can be in sys.modules after the probe; a
    # leak would mean something bypassed the import system.
    assert _import_report(package)["leaked"] == []


def _imports(tree: ast.AST):
    """(top-level package, line, inside a function?) for every import in ``tree``.

    Covers ``import a.b``, ``from a.b import c`` (absolute only; a relative import stays
    inside its package) and ``importlib.import_module("a.b")`` / ``__import__("a")`` with a
    constant name.
    """
    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield alias.name.split(".")[0], child.lineno, in_function
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                yield child.module.split(".")[0], child.lineno, in_function
            elif (isinstance(child, ast.Call) and child.args
                  and isinstance(child.args[0], ast.Constant) and isinstance(child.args[0].value, str)
                  and ((isinstance(child.func, ast.Attribute) and child.func.attr == "import_module")
                       or (isinstance(child.func, ast.Name) and child.func.id in ("import_module", "__import__")))):
                yield child.args[0].value.split(".")[0], child.lineno, in_function
            yield from visit(child, nested)
    yield from visit(tree, False)


def _static_violations(package: str) -> list[str]:
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        rel = path.relative_to(ROOT)
        for top, line, lazy in _imports(ast.parse(path.read_text(), filename=str(rel))):
            if top == APPLICATION:
                bad.append(f"{rel}:{line} imports {APPLICATION} (the application sits on top)")
            elif top in BLOCKED[package] and not (lazy and top in LAZY_ALLOWED[package]):
                kind = "lazily imports" if lazy else "imports"
                bad.append(f"{rel}:{line} {kind} {top}")
    return bad


@pytest.mark.parametrize("package", LIBRARY)
def test_no_import_across_the_boundary_even_lazily(package):
    bad = _static_violations(package)
    assert not bad, f"{package} crosses its import boundary:\n  " + "\n  ".join(bad)


def test_static_check_sees_lazy_and_dynamic_imports():
    tree = ast.parse(
        "import os\n"
        "def f():\n"
        "    from scorediff.demo import main\n"
        "    import importlib\n"
        "    importlib.import_module('torch_ref.convert')\n"
        "from . import sibling\n")
    assert sorted(_imports(tree)) == [("importlib", 4, True), ("os", 1, False),
                                      ("scorediff", 3, True), ("torch_ref", 5, True)]
