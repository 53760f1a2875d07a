"""The package's import graph: one direction, no cycles, no hidden imports, small modules.

Read from the sources (``ast``), so a violation fails here whatever gets imported at
run time. The layers, lowest first; a module may import only its own layer and those
below it:

    errors, tflite_format, datasets, _files  <-  _keras, keras3, grid, models  <-  core  <-
    quantizers  <-  layers  <-  quantize  <-  export  <-  micro  <-  cli

``tfqnet/__init__.py`` is the lazy public facade over all of them and is left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "tfqnet"

LAYERS = [
    ("tfqnet.errors", "tfqnet.tflite_format", "tfqnet.datasets", "tfqnet._files"),
    ("tfqnet._keras", "tfqnet.keras3", "tfqnet.grid", "tfqnet.models"),
    ("tfqnet.core",),
    ("tfqnet.quantizers",),
    ("tfqnet.layers",),
    ("tfqnet.quantize",),
    ("tfqnet.export",),
    ("tfqnet.micro",),
    ("tfqnet.cli",),
]
#: the most lines a module may have, and the modules allowed more (each says why in its
#: docstring)
MAX_LINES = 500
LONG_MODULES: dict[str, str] = {}
#: marks a tfqnet import inside a function as deliberate (a heavy dependency loaded late)
LAZY_MARK = "# lazy:"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path, modules: dict[str, Path]) -> list[tuple[str, int, bool]]:
    """``(imported tfqnet module, line, inside a function)`` of every import in ``path``."""
    tree = ast.parse(path.read_text(), str(path))
    in_function: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            in_function.update(id(child) for child in ast.walk(node) if child is not node)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from tfqnet import grid` imports the module tfqnet.grid
            names = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules
                     else node.module for alias in node.names]
        else:
            continue
        for name in names:
            if name.startswith("tfqnet"):
                found.append((name, node.lineno, id(node) in in_function))
    return list(dict.fromkeys(found))


def _layer(module: str) -> int:
    for rank, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    raise AssertionError(f"{module} belongs to no layer of tests/test_architecture.py")


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {
        name: {imported for imported, _, _ in _imports(path, modules) if imported != "tfqnet"}
        for name, path in modules.items()
        if name != "tfqnet"
    }


def test_no_module_imports_a_layer_above_its_own():
    upward = [
        f"{module} (layer {_layer(module)}) imports {imported} (layer {_layer(imported)})"
        for module, imports in _graph().items()
        for imported in imports
        if _layer(imported) > _layer(module)
    ]
    assert not upward, "\n".join(upward)


def test_the_import_graph_has_no_cycle():
    graph = _graph()
    # a package imports its own submodules to re-export them: not a cycle of concepts
    edges = {m: {i for i in imports if not i.startswith(m + ".")} for m, imports in graph.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for imported in sorted(edges.get(module, ())):
            if state.get(imported) == 1:
                cycles.append(" -> ".join(path[path.index(imported):] + [imported]))
            elif imported not in state:
                visit(imported, path + [imported])
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert not cycles, "\n".join(cycles)


def test_tfqnet_imports_inside_functions_are_marked_lazy():
    modules = _modules()
    hidden = []
    for name, path in modules.items():
        if name == "tfqnet":
            continue
        lines = path.read_text().splitlines()
        for imported, line, inside in _imports(path, modules):
            context = " ".join(lines[max(0, line - 2):line])
            if inside and LAZY_MARK not in context:
                hidden.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {imported}")
    assert not hidden, "\n".join(hidden)


def test_modules_stay_small():
    long = {name: len(path.read_text().splitlines()) for name, path in _modules().items()}
    too_long = {name: n for name, n in long.items() if n > MAX_LINES and name not in LONG_MODULES}
    assert not too_long, too_long
    for name in LONG_MODULES:
        assert "one concept" in ast.get_docstring(ast.parse(_modules()[name].read_text())), name


def test_the_checker_sees_a_violation(tmp_path):
    """The graph reader finds an upward import and a hidden one (so the tests above can
    fail)."""
    source = tmp_path / "tfqnet" / "grid.py"
    source.parent.mkdir()
    source.write_text("import tfqnet.micro.runtime\n\ndef f():\n    from tfqnet import cli\n")
    modules = {"tfqnet.grid": source, "tfqnet.cli": source, "tfqnet.micro.runtime": source}
    found = _imports(source, modules)
    assert ("tfqnet.micro.runtime", 1, False) in found and ("tfqnet.cli", 4, True) in found
    assert _layer("tfqnet.micro.runtime") > _layer("tfqnet.grid")
