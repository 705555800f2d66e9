"""The service uses its dependencies through their public APIs only.

A private name (`_x`) of OpenTelemetry, Litestar or any other library may
change in any release; code built on one breaks on an upgrade nobody
suspected. Our own private names are fine: they are found by what app/
itself defines. Nor is a dependency's class subclassed unless it is made for it
(EXTENSION_POINTS), nor its methods called on an object of ours (`Base.f(self)`), but
where that is known and said (KNOWN_INSIDE), a list that only shrinks.
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


# The classes of a dependency that are made to be subclassed, as their documentation
# says: a subclass of any other class depends on how that class works inside, which
# any release may change.
EXTENSION_POINTS = frozenset(
    {
        "argparse.ArgumentParser",
        "argparse.ArgumentTypeError",
        "asyncio.Protocol",
        "concurrent.futures.Executor",
        "enum.Enum",
        "enum.StrEnum",
        "litestar.Response",
        "litestar.middleware.compression.CompressionMiddleware",
        "litestar.openapi.spec.Operation",
        "litestar.response.streaming.ASGIStreamingResponse",
        "logging.Filter",
        "logging.Formatter",
        "msgspec.Struct",
        "opentelemetry.sdk.metrics.export.MetricExporter",
        "typing.Generic",
        "typing.NamedTuple",
        "typing.Protocol",
    }
)
# Where the service is built on a dependency's inside: nowhere. A use that comes fails
# the test; one that must stay is listed here, and said in its module's docstring.
KNOWN_INSIDE: list[str] = []


def _imported(tree: ast.Module) -> dict[str, str]:
    """Each name a module binds to another package's object, by its full name: imported,
    or assigned one (`_base = Imported`)."""
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] not in {"app", "recordline_dev", "__future__"}:
                for alias in node.names:
                    names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                # `import a.b` binds `a`; `import a.b as c` binds `c` to `a.b`.
                top = alias.name.split(".")[0]
                names[alias.asname or top] = alias.name if alias.asname else top
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Name)
            and node.value.id in names
        ):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    names[target.id] = names[node.value.id]
    return names


def _full_name(node: ast.expr, imported: dict[str, str]) -> str | None:
    """`node` (a name, or attributes of one) by its full name, if another package's."""
    if isinstance(node, ast.Subscript):
        return _full_name(node.value, imported)
    if isinstance(node, ast.Attribute):
        base = _full_name(node.value, imported)
        return None if base is None else f"{base}.{node.attr}"
    if isinstance(node, ast.Name):
        return imported.get(node.id)
    return None


def built_inside(root: Path) -> list[str]:
    """Where the code under `root` subclasses a dependency's class that is no extension
    point, or calls a dependency's class's method on an object of its own (`Base.f(self)`,
    a class told by its capital), one line a module and kind."""
    found: set[str] = set()
    for path, tree in _modules(root):
        where = path.relative_to(root.parent)
        imported = _imported(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                for base in node.bases:
                    name = _full_name(base, imported)
                    if name is not None and name not in EXTENSION_POINTS:
                        found.add(f"{where}: {node.name}({name})")
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.args
                and isinstance(node.args[0], ast.Name)
                and node.args[0].id == "self"
            ):
                owner = _full_name(node.func.value, imported)
                # A class's, by its name (`copy.copy(self)` is a function's).
                if owner is not None and owner.rsplit(".", 1)[-1][:1].isupper():
                    found.add(f"{where}: calls {owner}'s methods")
    return sorted(found)


@pytest.mark.slow
def test_no_dependency_is_built_on_from_inside_but_where_known() -> None:
    assert built_inside(ROOT / "app") == KNOWN_INSIDE


def test_the_check_finds_subclasses_and_calls_into_a_dependency(tmp_path: Path) -> None:
    code = tmp_path / "app"
    code.mkdir()
    (code / "inside.py").write_text(
        "import uvicorn.protocols.http.h11_impl as h11_impl\n"
        "from litestar import Response\n"
        "from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol\n"
        "_base = HttpToolsProtocol\n"
        "class Fine(Response[bytes]):\n"
        "    def f(self) -> None:\n"
        "        Response.to_asgi_response(self, None, None)\n"
        "class Mine(h11_impl.H11Protocol):\n"
        "    def data_received(self, data: bytes) -> None:\n"
        "        _base.data_received(self, data)\n"
        "        print(self, data)\n"
    )
    assert built_inside(code) == [
        "app/inside.py: Mine(uvicorn.protocols.http.h11_impl.H11Protocol)",
        "app/inside.py: calls litestar.Response's methods",
        "app/inside.py: calls uvicorn.protocols.http.httptools_impl.HttpToolsProtocol's methods",
    ]
