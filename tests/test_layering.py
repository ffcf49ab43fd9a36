"""The module layering that docs/index.md describes is true: a module imports only modules above it."""

from __future__ import annotations

import ast
from pathlib import Path

import vlens

# Top to bottom: the data path of a run, then the layers over it (docs/index.md).
LAYERS = [
    "_version", "_io", "values", "models", "runner", "data", "stats", "distributed", "scores", "neurons", "stability",
    "activations", "locate", "interventions", "controls", "instruments", "evaluate", "generation", "calibrate",
    "significance", "experiment", "validate",
    "selectors", "viz", "cards", "report", "display", "pipeline", "sweep", "explain", "cli", "__init__",
]  # fmt: skip
ROOT = Path(vlens.__file__).parent


def layer_of(module: str) -> str:
    return module.split(".")[1] if module.startswith("vlens.") else ""


def imports_of(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vlens"):
            if node.module != "vlens":
                found.add(layer_of(node.module))
            else:  # `from vlens import x`: a module, or a name from the package itself (which imports everything)
                found.update(a.name if a.name in LAYERS else "__init__" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(layer_of(a.name) for a in node.names if a.name.startswith("vlens."))
    return found - {""}


def test_every_module_has_a_layer():
    modules = {p.stem if p.parent == ROOT else p.relative_to(ROOT).parts[0] for p in ROOT.rglob("*.py")}
    assert modules - {"__init__", "__main__"} <= set(LAYERS), sorted(modules - set(LAYERS))


def test_no_module_imports_one_below_it():
    bad = []
    for path in ROOT.rglob("*.py"):
        if path == ROOT / "__init__.py":
            continue  # the public surface re-exports everything
        own = path.stem if path.parent == ROOT else path.relative_to(ROOT).parts[0]
        if own == "__main__":
            continue
        for other in imports_of(path):
            if other != own and LAYERS.index(other) > LAYERS.index(own):
                bad.append(f"{path.relative_to(ROOT)} imports vlens.{other}")
    assert not bad, "\n".join(sorted(bad))
