"""The core's imports: nothing from Django or a transport, no import inside a function, no circle."""

from __future__ import annotations

import ast
from pathlib import Path

import coremq_broker.core

CORE = Path(coremq_broker.core.__file__).parent
MODULES = {path.stem: ast.parse(path.read_text(), str(path)) for path in sorted(CORE.glob("*.py"))}


def imports(tree: ast.Module) -> list[tuple[ast.AST, str, bool]]:
    """Every import of a module: (node, what it names, whether it runs at import time outside TYPE_CHECKING)."""
    found = []
    type_only = {id(node) for block in tree.body if isinstance(block, ast.If)
                 and getattr(block.test, "id", "") == "TYPE_CHECKING" for node in ast.walk(block)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node, alias.name, id(node) not in type_only) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            found.append((node, base, id(node) not in type_only))
    return found


def test_the_core_imports_neither_django_nor_a_transport():
    """coremq_broker/core imports the standard library, coremq_client and itself, type hints included."""
    for name, tree in MODULES.items():
        for _, target, _ in imports(tree):
            assert not target.startswith(("django", "channels", "daphne", "twisted", "..", "coremq_broker")), (
                f"core/{name}.py imports {target}")


def test_no_import_inside_a_function_of_the_core():
    """Imports sit at the top of each core module (or under TYPE_CHECKING): none is hidden in a function."""
    for name, tree in MODULES.items():
        for function in ast.walk(tree):
            if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                hidden = [node.lineno for node in ast.walk(function) if isinstance(node, (ast.Import, ast.ImportFrom))]
                assert not hidden, f"core/{name}.py imports inside {function.name} (line {hidden[0]})"


def test_the_core_modules_import_each_other_without_a_circle():
    """The runtime imports between core modules form no cycle (type-only references back are allowed)."""
    graph = {name: {target[1:].split(".")[0] for _, target, runtime in imports(tree)
                    if runtime and target.startswith(".") and not target.startswith("..")}
             for name, tree in MODULES.items()}
    assert "registry" not in graph["access"] and "transports" not in str(graph)
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"import circle: {' -> '.join(path + (name,))}"
        if name in done:
            return
        for target in graph.get(name, ()):
            visit(target, path + (name,))
        done.add(name)

    for name in graph:
        visit(name, ())
