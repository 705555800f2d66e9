"""The service uses its dependencies through their public APIs only.

A private name (`_x`) of OpenTelemetry, Litestar or any other library may
change in any release; code built on one breaks on an upgrade nobody
suspected. Our own private names are fine: they are found by what app/
itself defines.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _modules(root: Path) -> Iterator[tuple[Path, ast.Module]]:
    for path in sorted(root.rglob("*.py")):
        yield path, ast.parse(path.read_text(), filename=str(path))


def _defined_in(root: Path) -> set[str]:
    """Every private name the code defines: functions, classes, attributes, variables."""
    names: set[str] = set()
    for _, tree in _modules(root):
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif (
                isinstance(node, ast.Attribute)
                and isinstance(node.ctx, ast.Store)
                and isinstance(node.value, ast.Name)
                and node.value.id in {"self", "cls"}
            ):
                # Only on its own instances: `plugin._x = ...` sets a library's.
                names.add(node.attr)
            elif isinstance(node, ast.arg):
                names.add(node.arg)
            elif isinstance(node, ast.alias) and node.asname:
                names.add(node.asname)
    return {n for n in names if _private(n)}


def private_uses(root: Path) -> list[str]:
    """Where the code under `root` uses a private name it does not define itself."""
    ours = _defined_in(root)
    found = []
    for path, tree in _modules(root):
        where = path.relative_to(root.parent)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                module = node.module or ""
                if module.split(".")[0] in {"app", "recordline_dev", "__future__"}:
                    continue
                if any(_private(part) for part in module.split(".")):
                    found.append(f"{where}:{node.lineno}: from {module} import ...")
                found += [
                    f"{where}:{node.lineno}: {module}.{alias.name}"
                    for alias in node.names
                    if _private(alias.name)
                ]
            elif isinstance(node, ast.Import):
                found += [
                    f"{where}:{node.lineno}: import {alias.name}"
                    for alias in node.names
                    if any(_private(part) for part in alias.name.split("."))
                ]
            elif isinstance(node, ast.Attribute) and _private(node.attr) and node.attr not in ours:
                found.append(f"{where}:{node.lineno}: .{node.attr}")
    return found


@pytest.mark.slow
@pytest.mark.parametrize("package", ["app", "recordline_dev"])
def test_no_private_name_of_a_dependency_is_used(package: str) -> None:
    assert private_uses(ROOT / package) == []


def test_the_check_finds_private_imports_and_attributes(tmp_path: Path) -> None:
    code = tmp_path / "app"
    code.mkdir()
    (code / "bad.py").write_text(
        "from opentelemetry.sdk.metrics._internal.instrument import Histogram\n"
        "from opentelemetry.util import _decorator\n"
        "import litestar._asgi\n"
        "plugin._middleware = None\n"
        "class Ours:\n"
        "    def __init__(self) -> None:\n"
        "        self._fine = 1\n"
        "    def _also_fine(self) -> int:\n"
        "        return self._fine + self._also_fine.__hash__()\n"
    )
    found = private_uses(code)
    assert [line.split(": ", 1)[1] for line in found] == [
        "from opentelemetry.sdk.metrics._internal.instrument import ...",
        "opentelemetry.util._decorator",
        "import litestar._asgi",
        "._middleware",
    ]


@pytest.mark.slow
def test_the_project_cites_only_its_own_files() -> None:
    # Every Markdown file a comment or a document names must be in the repository.
    root = Path(__file__).resolve().parent.parent
    ours = {"app", "bench", "recordline_dev", "tests", "infra", "docs", ".github"}
    sources = [
        p
        for p in root.rglob("*")
        if p.is_file()
        and p.suffix in {".py", ".md", ".tf", ".yml", ".sh"}
        and (p.parent == root or p.relative_to(root).parts[0] in ours)
    ]
    present = {p.name for p in sources if p.suffix == ".md"}
    cited = re.compile(r"\b([A-Z][A-Z_]+\.md)\b")
    missing = {
        f"{name} (in {path.relative_to(root)})"
        for path in sources
        for name in cited.findall(path.read_text())
        if name not in present
    }
    assert missing == set()
