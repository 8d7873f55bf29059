"""The shape of medai: module and function sizes, and imports that run down the layers only.

Layers, top to bottom (ARCHITECTURE.md): cli -> jobs -> stages -> contracts -> base. A module
may import its own layer and those below it, never one above: the library never imports the
CLI, a contract never imports a stage. Imports inside functions count as much as those at the
top of a module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "medai"
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 60
LAYERS = {
    "cli": ("medai.cli", "medai.flags"),
    "jobs": (
        "medai.demo",
        "medai.export",
        "medai.nightly",
        "medai.predict",
        "medai.report",
        "medai.report.driver",
        "medai.score",
        "medai.submit",
        "medai.train",
    ),
    "contracts": (
        "medai.boxes",
        "medai.card",
        "medai.dicom",
        "medai.dicom_codecs",
        "medai.image_errors",
        "medai.images",
        "medai.labels",
        "medai.luminance",
        "medai.model",
        "medai.predictions",
        "medai.pseudonyms",
        "medai.splits",
    ),
    "base": (
        "medai",
        "medai.configs",
        "medai.console",
        "medai.cpus",
        "medai.errors",
        "medai.files",
        "medai.locks",
        "medai.paths",
        "medai.runtime",
    ),
}
RANK = {"cli": 4, "jobs": 3, "stages": 2, "contracts": 1, "base": 0}
# The package facade resolves medai.predict_image lazily (a job, on first use only).
ALLOWED = {("medai", "medai.predict")}


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _layer(module: str) -> str:
    for layer, members in LAYERS.items():
        if module in members:
            return layer
    return "stages"


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The medai modules ``path`` imports (``from medai.report import x`` counts x if a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("medai"):
            subs = {f"{node.module}.{alias.name}" for alias in node.names} & set(modules)
            found |= subs or {node.module}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("medai")}
    return found


def test_imports_run_down_the_layers():
    modules = _modules()
    wrong = []
    for module, path in modules.items():
        for target in sorted(_imports(path, modules)):
            if (module, target) in ALLOWED or target == module:
                continue
            if RANK[_layer(target)] > RANK[_layer(module)]:
                wrong.append(f"{module} ({_layer(module)}) imports {target} ({_layer(target)})")
    assert not wrong, "\n".join(wrong)


def test_the_layer_table_names_real_modules():
    modules = _modules()
    named = {m for members in LAYERS.values() for m in members}
    assert named <= set(modules), named - set(modules)


def _sizes() -> tuple[dict[str, int], dict[str, int]]:
    lines, functions = {}, {}
    for module, path in _modules().items():
        source = path.read_text()
        lines[module] = len(source.splitlines())
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                functions[f"{module}.{node.name}"] = node.end_lineno - node.lineno + 1
    return lines, functions


# Known debt, if any is ever recorded: the test fails when one grows past its recorded size or
# a new one crosses the limit. Issue 24 left none.
LONG_MODULES: dict[str, int] = {}
LONG_FUNCTIONS: dict[str, int] = {}


@pytest.mark.parametrize("kind", ["modules", "functions"])
def test_modules_and_functions_stay_short(kind):
    lines, functions = _sizes()
    sizes, limit, debt = (
        (lines, MAX_MODULE_LINES, LONG_MODULES)
        if kind == "modules"
        else (functions, MAX_FUNCTION_LINES, LONG_FUNCTIONS)
    )
    over = {name: n for name, n in sizes.items() if n > limit and n > debt.get(name, limit)}
    print(f"{kind} over {limit} lines:", sorted(n for n, s in sizes.items() if s > limit))
    assert not over, f"{kind} over {limit} lines: {over}"
