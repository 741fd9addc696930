"""Imports flow one way (docs/architecture.md): what each folder may import is checked here.

Read from the source (each module's import statements), so a lazy import inside a function counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers.server import REPO

# Folder -> the Loupe packages and the third-party UI it must never import.
FORBIDDEN = {
    "models": ("chat", "chainlit"),
    "chat/store": ("chat.ui", "chat.arena", "chat.dataset", "chat.app", "chainlit"),
    "chat/dataset": ("chat.ui", "chat.arena", "chat.app", "chainlit"),
    "chat/arena": ("chat.ui", "chat.dataset", "chat.app", "chainlit"),
    "chat/documents": ("chat.ui", "chat.arena", "chat.dataset", "chat.app", "chainlit"),
    "chat/dashboard": ("chat.ui", "chat.app", "chainlit"),
    "chat/ui": ("chat.app",),
}


def imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("folder", FORBIDDEN)
def test_imports_flow_one_way(folder: str) -> None:
    wrong = {
        f"{path.relative_to(REPO)} imports {name}"
        for path in (REPO / folder).rglob("*.py")
        for name in imported(path)
        if any(name == banned or name.startswith(f"{banned}.") for banned in FORBIDDEN[folder])
    }
    assert not wrong


def test_tests_and_benchmarks_share_only_the_helpers() -> None:
    """No benchmark imports a test, and no test imports another test's helpers: they live in tests/helpers/."""
    wrong = {
        f"{path.relative_to(REPO)} imports {name}"
        for folder in ("bench", "tests")
        for path in (REPO / folder).rglob("*.py")
        for name in imported(path)
        if name.startswith("tests.") and not name.startswith("tests.helpers")
    }
    assert not wrong
