"""The house rules of docs/architecture.md, checked on the source: rooms depend one way, the layers
inside ``benchmark/`` depend one way, no module imports a private name of another (product,
tests and tools alike), no import cycle, and imports sit at the top of a module. Each rule is a
function of a source tree, so ``test_each_rule_fails_on_a_planted_violation`` can show it fails."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("regularizers", "models", "benchmark")
# Importers checked for private names only (they are not rooms of the product).
CONSUMERS = ("tests", "tools", "examples")
# What each room may import from the project (architecture.md).
ALLOWED = {"regularizers": {"regularizers"}, "models": {"models", "regularizers"},
           "benchmark": {"benchmark", "models", "regularizers"}}
# The layers inside benchmark/, bottom to top (docs/architecture.md draws them): a module may
# import its own layer and those below, never one above. A prefix ending in "." is a room.
LAYERS = (
    ("base", ("benchmark", "benchmark.config", "benchmark.records", "benchmark.progress",
              "benchmark.stopping", "benchmark.plugins", "benchmark.machine",
              "benchmark.correct_bits")),
    ("data", ("benchmark.data", "benchmark.data.")),
    ("training", ("benchmark.training", "benchmark.training.")),
    ("plan", ("benchmark.suites", "benchmark.tuning")),
    ("sweep", ("benchmark.sweep", "benchmark.sweep.")),
    ("analysis", ("benchmark.analysis", "benchmark.analysis.")),
    ("tools", ("benchmark.tools", "benchmark.tools.")),
    ("cli", ("benchmark.cli", "benchmark.__main__")),
)
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
LAZY_MODULES = {"benchmark.cli", "benchmark.tools.gpu_check"}


def _modules(root: Path, packages=PACKAGES) -> dict[str, Path]:
    out = {}
    for pkg in packages:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


MODULES = _modules(ROOT)


def _resolve(module: str, node: ast.ImportFrom, modules: dict) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    is_pkg = modules[module].name == "__init__.py"
    base = base if is_pkg else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str, modules: dict = MODULES, known: dict = MODULES):
    """(imported module, imported name or None, line, at top level?) for every import."""
    tree = ast.parse(modules[module].read_text(), filename=str(modules[module]))
    top = {id(n) for n in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, None, node.lineno, id(node) in top
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, node, modules)
            for a in node.names:
                sub = f"{target}.{a.name}"
                if sub in known:  # `from . import data` imports a module, not a name
                    yield sub, None, node.lineno, id(node) in top
                else:
                    yield target, a.name, node.lineno, id(node) in top


def _project(name: str) -> bool:
    return name.split(".")[0] in PACKAGES


def layer_of(module: str) -> int | None:
    """The index of ``module``'s layer in LAYERS (None outside benchmark/)."""
    for i, (_, members) in enumerate(LAYERS):
        if any(module == m or (m.endswith(".") and module.startswith(m)) for m in members):
            return i
    return None


def room_violations(modules: dict) -> list[str]:
    return [f"{m}:{line} imports {target}" for m in modules for target, _, line, _ in _imports(m, modules, modules)
            if _project(target) and target.split(".")[0] not in ALLOWED[m.split(".")[0]]]


def layer_violations(modules: dict) -> list[str]:
    bad = []
    for m in modules:
        if not m.startswith("benchmark"):
            continue
        mine = layer_of(m)
        if mine is None:
            bad.append(f"{m} sits in no layer of LAYERS (docs/architecture.md)")
            continue
        for target, _, line, _ in _imports(m, modules, modules):
            theirs = layer_of(target) if target.startswith("benchmark") else None
            if theirs is not None and theirs > mine:
                bad.append(f"{m}:{line} ({LAYERS[mine][0]}) imports {target} ({LAYERS[theirs][0]}), a layer above")
    return bad


def private_violations(importers: dict, known: dict) -> list[str]:
    bad = []
    for m in importers:
        for target, name, line, _ in _imports(m, importers, known):
            if not _project(target) or target == m:
                continue
            private_module = any(p.startswith("_") and p != "__init__" for p in target.split("."))
            private_name = name and name.startswith("_") and not name.startswith("__")
            if private_name or private_module:
                bad.append(f"{m}:{line} imports {target}{'.' + name if name else ''}")
    return bad


def cycles_in(modules: dict) -> list[str]:
    graph = {m: set() for m in modules}
    for m in modules:
        for target, _, _, _ in _imports(m, modules, modules):
            # a package's __init__ re-exporting its own modules is not a cycle of rooms
            if target in modules and target != m and not m.startswith(target + "."):
                if not (modules[m].name == "__init__.py" and target.startswith(m + ".")):
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
    return cycles


def lazy_violations(modules: dict) -> list[str]:
    return [f"{m}:{line} imports {target} inside a function" for m in modules
            for target, _, line, top in _imports(m, modules, modules) if not top and target not in LAZY_OK
            and m not in LAZY_MODULES]


def test_rooms_depend_one_way():
    bad = room_violations(MODULES)
    assert not bad, "\n".join(bad)


def test_layers_inside_benchmark_depend_one_way():
    bad = layer_violations(MODULES)
    assert not bad, "\n".join(bad)


def test_no_private_name_crosses_a_module():
    """Product modules, and the tests, tools and examples that use them."""
    consumers = _modules(ROOT, tuple(c for c in CONSUMERS if (ROOT / c).is_dir()))
    bad = private_violations(MODULES, MODULES) + private_violations(consumers, MODULES)
    assert not bad, "\n".join(bad)


def test_no_import_cycle_between_modules():
    cycles = cycles_in(MODULES)
    assert not cycles, "\n".join(cycles)


def test_imports_sit_at_the_top():
    bad = lazy_violations(MODULES)
    assert not bad, "\n".join(bad)


PLANTS = [  # (file, line planted at its end, rule, what the rule must name)
    # progress.py (base) importing the statistics (analysis): the violation a review found passing
    ("benchmark/progress.py", "from benchmark.analysis import stats\n", layer_violations,
     "benchmark.analysis.stats"),
    ("regularizers/energy.py", "from benchmark.analysis import stats\n", room_violations,
     "benchmark.analysis.stats"),
    ("benchmark/config.py", "from benchmark.plugins import load_plugins\n", cycles_in,
     "benchmark.plugins"),
    ("benchmark/progress.py", "def late():\n    import pandas\n", lazy_violations, "pandas"),
    ("benchmark/sweep/status.py", "from benchmark.analysis.choice import _protocol_value\n",
     lambda m: private_violations(m, m), "_protocol_value"),
]


@pytest.mark.parametrize("plant, line, check, named", PLANTS, ids=[p[2].__name__ for p in PLANTS])
def test_each_rule_fails_on_a_planted_violation(tmp_path, plant, line, check, named):
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__", "configs"))
    assert not check(_modules(tmp_path))  # the copy is clean
    target = tmp_path / plant
    target.write_text(target.read_text() + line)
    bad = check(_modules(tmp_path))
    assert len(bad) >= 1 and all(named in b for b in bad), bad


def test_the_private_rule_covers_tests(tmp_path):
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_planted.py").write_text(
        "from benchmark.analysis.choice import _protocol_value\n")
    consumers = _modules(tmp_path, ("tests",))
    assert private_violations(consumers, MODULES) == [
        "tests.test_planted:1 imports benchmark.analysis.choice._protocol_value"]


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
