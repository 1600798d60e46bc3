"""The package's layout holds: subpackages import only those below them, and few modules sit at the top."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "cascadepsp"
# Bottom to top; a subpackage may import its own modules and those of the layers before it (docs/design.md).
LAYERS = ["constants", "configs", "devices", "lazy", "io", "models", "weights", "deploy", "inference", "instances",
          "evaluation", "training", "jobs", "serve", "cli"]


def _imported_units(path: Path, root: Path = PACKAGE) -> set[str]:
    """First component under ``cascadepsp`` of every module ``path`` (inside ``root``) imports."""
    parts = path.relative_to(root).with_suffix("").parts
    here = list(parts[:-1])  # the package the module is in, below cascadepsp
    units = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)]
                target = [*base, *(node.module.split(".") if node.module else [])]
                if not target:  # "from . import x" at the top: x is the unit
                    units.update(alias.name for alias in node.names)
                    continue
            elif node.module and node.module.split(".")[0] == "cascadepsp":
                target = node.module.split(".")[1:]
                if not target:
                    units.update(alias.name for alias in node.names)
                    continue
            else:
                continue
            units.add(target[0])
        elif isinstance(node, ast.Import):
            units.update(a.name.split(".")[1] for a in node.names if a.name.startswith("cascadepsp."))
    return units


def _unit(path: Path, root: Path = PACKAGE) -> str:
    rel = path.relative_to(root)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def test_every_module_belongs_to_a_layer_and_imports_only_layers_below_it():
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        unit = _unit(path)
        if unit == "__init__":
            continue
        assert unit in LAYERS, f"{path.relative_to(PACKAGE)}: not in a known layer (add it to LAYERS and docs/design.md)"
        for used in _imported_units(path) - {unit, "__version__"}:
            if used not in LAYERS or LAYERS.index(used) > LAYERS.index(unit):
                problems.append(f"{path.relative_to(PACKAGE)} ({unit}) imports {used}")
    assert not problems, problems


def test_the_top_of_the_package_holds_at_most_eight_modules():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= 8, top


def test_the_checker_sees_an_upward_import(tmp_path):
    """The rule can fail: a module of io that imported the inference layer would be reported."""
    (tmp_path / "io").mkdir()
    bad = tmp_path / "io" / "probe.py"
    bad.write_text("from ..inference.refiner import Refiner\nfrom cascadepsp.models import config\nfrom . import images\n")
    assert _imported_units(bad, tmp_path) == {"inference", "models", "io"}
    assert LAYERS.index("inference") > LAYERS.index(_unit(bad, tmp_path))
