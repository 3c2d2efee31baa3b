"""The map holds: the core imports nothing above it, and no feature folder imports the daemon
or the command line (they sit on top and compose everything else).

Imports are read from the source with `ast`, so a lazy import inside a function counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import hsid

PACKAGE = Path(hsid.__file__).parent
TOP = {"daemon", "commands"}  # composition: may import anything, imported by nothing below


def _imports(path: Path) -> set[str]:
    """Every hsid module or package that `path` imports, dotted."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("hsid"):
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.startswith("hsid"))
    return names


def _folder(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _arrows(source_folder: str) -> list[str]:
    return [f"{path.relative_to(PACKAGE)} -> {name}"
            for path in sorted((PACKAGE / source_folder).rglob("*.py"))
            for name in sorted(_imports(path))
            if _folder(name) not in {source_folder, ""}]


def test_the_core_imports_nothing_above_it() -> None:
    assert _arrows("core") == []


def test_no_feature_folder_imports_the_daemon_or_the_command_line() -> None:
    folders = [p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()]
    upward = [arrow for folder in folders if folder not in TOP for arrow in _arrows(folder)
              if _folder(arrow.rsplit(" -> ", 1)[1]) in TOP]
    assert upward == []
