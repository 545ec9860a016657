"""docs/architecture.md names real code: every function, method and class it quotes exists where it says."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "architecture.md").read_text()


def defined() -> tuple[set[str], set[str]]:
    """Names defined in coremq_broker and coremq_client: plain ones, and ``Class.method`` pairs."""
    names: set[str] = set()
    methods: set[str] = set()
    for path in [*(ROOT / "coremq_broker").rglob("*.py"), *(ROOT / "coremq_client").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            if isinstance(node, ast.ClassDef):
                for item in ast.walk(node):
                    if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        methods.add(f"{node.name}.{item.name}")
                    elif isinstance(item, ast.Attribute) and isinstance(item.value, ast.Name) and item.value.id == "self":
                        methods.add(f"{node.name}.{item.attr}")  # attributes (raw_loads, handle_frames)
    return names, methods


def test_every_quoted_function_and_method_exists():
    """The path of one message names functions that exist (a rename must update the doc)."""
    names, methods = defined()
    quoted = set(re.findall(r"`([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)?)`", DOC))
    calls = {name for name in quoted if "." in name and name[0].isupper() or "_" in name or name[0].isupper()}
    missing = []
    for name in sorted(calls):
        if name.isupper() or name.startswith(("MAX_", "coremq", "run_coremq")) or name.endswith((".py", ".md")):
            continue  # settings, files and the command
        if "." in name and name.split(".")[0][0].isupper():
            if name not in methods:
                missing.append(name)
        elif name.split(".")[-1] not in names:
            missing.append(name)
    assert not missing, f"docs/architecture.md names what the code does not define: {missing}"
    assert len(calls) > 30
