"""The house rules of docs/architecture.md, checked on the source: rooms depend one way, no module
imports a private name of another, no import cycle, and imports sit at the top of a module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("regularizers", "models", "benchmark")
# What each room may import from the project (architecture.md).
ALLOWED = {"regularizers": {"regularizers"}, "models": {"models", "regularizers"},
           "benchmark": {"benchmark", "models", "regularizers"}}
# Imports a module may make inside a function, and why (everything else sits at the top).
LAZY_OK = {
    "torch._dynamo", "torch._inductor",  # compile internals, only where compiling
    "timm", "models.timm_models",  # timm's import costs ~1 s; only timm:<name> models need it
    "torchvision", "torchvision.datasets", "torchvision.transforms", "sklearn.datasets", "sklearn.model_selection",
    "submitit", "pynvml", "statsmodels", "statsmodels.api", "statsmodels.formula.api",
    "statsmodels.stats.power", "matplotlib", "matplotlib.pyplot", "tqdm", "tqdm.auto",
}


# The command line imports each command's room when that command runs, so `--help`, `list` and
# one-line errors do not wait for torch, pandas and matplotlib to load.
LAZY_MODULES = {"benchmark.cli", "benchmark.gpu_check"}


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


MODULES = _modules()


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    is_pkg = MODULES[module].name == "__init__.py"
    base = base if is_pkg else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str):
    """(imported module, imported name or None, line, at top level?) for every import."""
    tree = ast.parse(MODULES[module].read_text(), filename=str(MODULES[module]))
    top = {id(n) for n in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, None, node.lineno, id(node) in top
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, node)
            for a in node.names:
                sub = f"{target}.{a.name}"
                if sub in MODULES:  # `from . import data` imports a module, not a name
                    yield sub, None, node.lineno, id(node) in top
                else:
                    yield target, a.name, node.lineno, id(node) in top


def _project(name: str) -> bool:
    return name.split(".")[0] in PACKAGES


def test_rooms_depend_one_way():
    bad = [f"{m}:{line} imports {target}" for m in MODULES for target, _, line, _ in _imports(m)
           if _project(target) and target.split(".")[0] not in ALLOWED[m.split(".")[0]]]
    assert not bad, "\n".join(bad)


def test_no_private_name_crosses_a_module():
    bad = []
    for m in MODULES:
        for target, name, line, _ in _imports(m):
            if not _project(target) or target == m:
                continue
            private_module = any(p.startswith("_") and p != "__init__" for p in target.split("."))
            private_name = name and name.startswith("_") and not name.startswith("__")
            if private_name or private_module:
                bad.append(f"{m}:{line} imports {target}{'.' + name if name else ''}")
    assert not bad, "\n".join(bad)


def test_no_import_cycle_between_modules():
    graph = {m: set() for m in MODULES}
    for m in MODULES:
        for target, _, _, _ in _imports(m):
            # a package's __init__ re-exporting its own modules is not a cycle of rooms
            if target in MODULES and target != m and not m.startswith(target + "."):
                if not (MODULES[m].name == "__init__.py" and target.startswith(m + ".")):
                    graph[m].add(target)
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "\n".join(cycles)


def test_imports_sit_at_the_top():
    bad = [f"{m}:{line} imports {target} inside a function" for m in MODULES
           for target, _, line, top in _imports(m) if not top and target not in LAZY_OK
           and m not in LAZY_MODULES]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("name", ["examples/spectral_plugin/comhe_example_plugin.py",
                                  "tests/regularizers/test_registry_roles.py"])
def test_plugins_use_only_the_public_extension_api(name):
    """No ``self._x`` where ``_x`` belongs to the base class (a plugin's own state is its own)."""
    import regularizers

    base = regularizers.Regularizer
    private = {n for n in dir(base) if n.startswith("_") and not n.startswith("__")}
    private |= {n for n in vars(base(**{})) if n.startswith("_")} if not base.HPARAMS else set()
    tree = ast.parse((ROOT / name).read_text())
    used = sorted({f"self.{n.attr}" for n in ast.walk(tree) if isinstance(n, ast.Attribute)
                   and isinstance(n.value, ast.Name) and n.value.id == "self" and n.attr in private})
    assert not used, used
