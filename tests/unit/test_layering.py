"""Imports run one way: every module's imports (module level, inside functions and under
TYPE_CHECKING alike) are read with ``ast`` and checked against the layer order below.

A module may import its own unit (a package, or a top-level module) and any unit of a lower
layer; never a unit of its own layer or of a higher one. Stage modules import only
``kdeploy.stages.base`` of their package (stages pass artifacts on disk, not code). The
README's architecture section shows the same order; ``benchmarks/code_shape.py`` prints
the count of violations beside the module and function sizes.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# highest first; a unit is a package (kdeploy.train) or a top-level module (kdeploy.data)
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("entry", ("kdeploy.__main__",)),  # `python -m kdeploy` (torchrun's -m kdeploy)
    ("cli", ("kdeploy.cli",)),
    ("api", ("kdeploy.api",)),
    ("engine", ("kdeploy.engine",)),
    ("stages", ("kdeploy.stages",)),
    ("products", ("kdeploy.packaging", "kdeploy.report")),
    ("work", ("kdeploy.train", "kdeploy.evaluation")),
    ("inputs", ("kdeploy.config", "kdeploy.data", "kdeploy.model_info")),
    ("graph", ("kdeploy.runtime", "kdeploy.onnxtools", "kdeploy.families")),
    ("core", ("kdeploy.core", "kdeploy")),
]
# within kdeploy.stages: the registry (__init__) imports every stage; a stage only the base
STAGE_BASE = "kdeploy.stages.base"


def unit_of(module: str) -> str | None:
    """The unit a dotted module name belongs to (the longest listed prefix; the bare
    ``kdeploy`` package is a unit of its own, not a prefix of every module)."""
    best = None
    for _, units in LAYERS:
        for u in units:
            inside = module == u or (u != "kdeploy" and module.startswith(u + "."))
            if inside and (best is None or len(u) > len(best)):
                best = u
    return best


def target_unit(name: str) -> str | None:
    """The unit of an imported name; ``from kdeploy import __version__`` names an
    attribute of ``kdeploy``, so the parents are tried too."""
    parts = name.split(".")
    while parts:
        unit = unit_of(".".join(parts))
        if unit is not None:
            return unit
        parts.pop()
    return None


def layer_of(unit: str) -> int:
    return next(i for i, (_, units) in enumerate(LAYERS) if unit in units)


def module_name(path: Path, package_root: Path) -> str:
    rel = path.relative_to(package_root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported(tree: ast.AST, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, dotted name) of every kdeploy import in a module, anywhere in it."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                pkg = module.split(".") if is_package else module.split(".")[:-1]
                pkg = pkg[: len(pkg) - node.level + 1]
                base = ".".join([*pkg, base] if base else pkg)
            for a in node.names:  # `from kdeploy.core import fsutil` names a submodule
                out.append((node.lineno, f"{base}.{a.name}" if a.name != "*" else base))
    return [(line, name) for line, name in out if name == "kdeploy" or name.startswith("kdeploy.")]


def violations(package_root: Path) -> list[str]:
    """Every import against the layer order under ``package_root`` (a kdeploy package)."""
    problems = []
    for path in sorted(package_root.rglob("*.py")):
        module = module_name(path, package_root)
        unit = unit_of(module)
        if unit is None:
            problems.append(f"{module}: belongs to no layer (add it to LAYERS)")
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for line, target in imported(tree, module, path.name == "__init__.py"):
            problems += _check(module, unit, f"{path.name}:{line}", target)
    return problems


def _check(module: str, unit: str, where: str, target: str) -> list[str]:
    t_unit = target_unit(target)
    if t_unit is None:
        return [f"{module} ({where}) imports {target}, which belongs to no layer"]
    if t_unit == unit:
        stage = module.startswith("kdeploy.stages.") and module != STAGE_BASE
        other_stage = target.startswith("kdeploy.stages.") and not target.startswith(STAGE_BASE)
        if stage and other_stage:
            return [f"{module} ({where}) imports another stage: {target}"]
        return []
    if layer_of(t_unit) <= layer_of(unit):
        mine, theirs = LAYERS[layer_of(unit)][0], LAYERS[layer_of(t_unit)][0]
        return [f"{module} ({where}, layer {mine}) imports {target} (layer {theirs})"]
    return []


def test_no_import_breaks_the_layer_order():
    assert violations(ROOT / "kdeploy") == []


def test_runtime_ships_alone():
    """kdeploy.runtime imports nothing of kdeploy but itself and the core."""
    for path in (ROOT / "kdeploy" / "runtime").rglob("*.py"):
        module = module_name(path, ROOT / "kdeploy")
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for _, target in imported(tree, module, path.name == "__init__.py"):
            assert target_unit(target) in ("kdeploy.runtime", "kdeploy.core", "kdeploy"), (
                module,
                target,
            )


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        ("runtime/runners.py", "from kdeploy.config import Profile\n", "layer graph"),
        ("evaluation/bench.py", "from kdeploy.train import kd\n", "layer work"),
        ("stages/verify.py", "from kdeploy.stages.bench import X\n", "another stage"),
        ("report/build.py", "def f():\n    from kdeploy.engine import runs\n", "layer engine"),
        ("core/errors.py", "from ..data import x\n", "layer inputs"),
        ("mystery.py", "import os\n", "belongs to no layer"),
    ],
)
def test_the_check_catches_each_kind_of_violation(tmp_path, module, source, expected):
    """The checker finds an upward import, a sideways one, a stage importing a stage, a
    lazy import inside a function, a relative import and a module outside every layer."""
    pkg = tmp_path / "kdeploy"
    path = pkg / module
    path.parent.mkdir(parents=True)
    for d in {path.parent, pkg}:
        (d / "__init__.py").touch()
    path.write_text(source)
    found = violations(pkg)
    assert any(expected in v for v in found), found
    path.write_text("import numpy\n")
    assert [v for v in violations(pkg) if "belongs to no layer" not in v] == []
