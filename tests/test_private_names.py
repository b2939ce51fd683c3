"""The library uses no private name of another project: each one breaks on some release of it."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [ROOT / "tbhooks", *sorted((ROOT / "plugins").glob("*/src"))]

ALLOWED: dict[str, str] = {}
"""``"file:name"`` -> why no public alternative exists (empty: every use has one)."""

PUBLIC = {"_asdict", "_fields", "_make", "_replace", "_field_defaults", "_exit", "_getframe"}
"""Documented public API despite the underscore (namedtuple's, os._exit, sys._getframe)."""


def private(name: str) -> bool:
    return name.startswith("_") and not name.endswith("__") and name not in PUBLIC


def own_names(trees: list[ast.AST]) -> set[str]:
    """Every name the project defines itself: functions, classes, assignments, attributes of self, arguments."""
    names: set[str] = set()
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.arg):
                names.add(node.arg)
    return names


def uses(path: Path, tree: ast.AST, own: set[str]) -> list[str]:
    found = []
    for node in ast.walk(tree):
        name = None
        if isinstance(node, ast.Attribute) and private(node.attr) and node.attr not in own:
            name = node.attr
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "hasattr", "setattr", "delattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and private(node.args[1].value)
            and node.args[1].value not in own
        ):
            name = node.args[1].value
        elif isinstance(node, ast.ImportFrom) and node.module and not node.module.startswith(("tbhooks", "_")):
            parts = [*node.module.split("."), *(alias.name for alias in node.names)]
            name = next((part for part in parts if private(part)), None)
        if name is not None and f"{path.relative_to(ROOT)}:{name}" not in ALLOWED:
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {name}")
    return found


def scan() -> list[str]:
    files = [path for root in SOURCES for path in sorted(root.rglob("*.py"))]
    trees = [(path, ast.parse(path.read_text(), str(path))) for path in files]
    own = own_names([tree for _, tree in trees])
    return [use for path, tree in trees for use in uses(path, tree, own)]


def test_no_private_names_of_other_projects():
    assert scan() == []


def test_the_scan_finds_each_form_of_use(tmp_path, monkeypatch):
    # The check can fail: a file with one use of each form is reported three times.
    bad = tmp_path / "tbhooks"
    bad.mkdir()
    (bad / "bad.py").write_text(
        "import torch\nfrom torch._dynamo import config\n"
        "graph = torch.jit._get_trace_graph\nfound = getattr(torch.jit, '_trace')\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "SOURCES", [bad])
    assert sorted(use.split(": ")[1] for use in scan()) == ["_dynamo", "_get_trace_graph", "_trace"]
