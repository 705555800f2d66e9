"""Imports run one way: routes and wiring on top, stores and rows at the bottom.

Read from the code with `ast`, like tests/test_public_apis.py: every import in
`app/`, at module level or inside a function, is checked against the layer
its module belongs to. A layer may use the ones listed for it and nothing
above; the web framework and the telemetry libraries stay in the layers that
need them, so a store or a service can be imported, tested and reused without
either.
"""

from __future__ import annotations

import ast
from collections import Counter
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parent.parent / "app"

# What each layer may import from the project, besides itself.
MAY_USE: dict[str, set[str]] = {
    "records": set(),
    "errors": set(),
    # Daemon threads for calls that may never return: below whatever makes such calls.
    "threads": set(),
    "settings": {"errors", "threads"},
    # What requests and answers hold in flight: one budget of bytes for the process.
    "budget": {"errors"},
    # Typed columns: pure mapping and projection, below every store.
    "typed": {"records"},
    "store": {"records", "errors", "settings", "typed", "threads"},
    "ingest": {"store", "records", "errors", "settings", "typed"},
    "query": {"store", "records", "errors", "settings", "budget"},
    "auth": {"errors", "settings"},
    "telemetry": {"store", "records", "errors", "settings"},
    # Routes and wiring: the top, free to use everything below.
    "web": {
        "budget",
        "ingest",
        "query",
        "auth",
        "telemetry",
        "store",
        "records",
        "errors",
        "settings",
        "typed",
        "threads",
    },
}
# Third-party packages only some layers may import (the framework, telemetry).
RESTRICTED = {
    "litestar": {"web", "auth", "telemetry"},
    "opentelemetry": {"web", "telemetry"},
    "prometheus_client": {"web", "telemetry"},
    "uvicorn": {"web"},
    "httptools": {"web"},
}
# The top layer: routes and wiring.
WEB_MODULES = {
    "app.asgi",
    "app.cell",
    "app.cli",
    "app.commands",
    "app.docs",
    "app.exporter",
    "app.health",
    "app.http",
    "app.lifespan",
    "app.process",
    "app.problems",
    "app.routes",
}
# Inside the store layer: each backend speaks only through its public interface,
# and only the serving tier's package composes two of them. A backend never
# imports another backend, nor the composition. Every other package of the store
# layer is a backend (`backends`): a new one is held to this without being listed.
COMPOSITION = "app.store.tiered"
# Background loops run under the supervisor (restarted, counted, named by readiness),
# which alone starts tasks for them: a store's under its own, the batcher's under the
# app's. What else starts a task in app/, and how often in that file, with why it is
# no background loop:
TASK_CALLS = {"create_task", "ensure_future", "TaskGroup"}
SUPERVISOR = "app/store/supervisor.py"
NOT_LOOPS = {
    # The reader of one journal writer process's answers: it ends with that process,
    # whose failure readiness reports; a second reader could not tell which append
    # an answer is for.
    ("app/store/duckdb/journal_process.py", "create_task"): 1,
    # Awaited by whoever starts them: an append's look-up of which of its records
    # DuckDB will keep, one tail refresh or one cached query shared by the callers
    # that arrive while it runs.
    ("app/store/duckdb/early_tail.py", "ensure_future"): 1,
    ("app/store/spanner/tail.py", "ensure_future"): 1,
    ("app/store/bigquery/cache.py", "ensure_future"): 1,
    # One batch's append: its rows' pushes wait on its outcome, the drain at close on it.
    ("app/ingest/batcher.py", "create_task"): 1,
    # One schema revision's fetch, shared by the pushes that wait on it; cancelled at close.
    ("app/ingest/schemas.py", "create_task"): 1,
    # A follower's watch for its client leaving, cancelled when its request ends.
    ("app/http/events.py", "ensure_future"): 1,
    # A request's answer, in the server's tasks: awaited when it stops, then cancelled.
    ("app/http/limits.py", "create_task"): 1,
}
# Waits between attempts come from app/store/backoff.py alone.
OTHER_BACKOFFS = {"exponential_sleep_generator"}
# The one module of the store layer that reads the settings: it opens each store
# from them, with plain values (and says which setting a bad one is).
SETTINGS_SEAM = "app/store/open.py"


def layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) < 2 or ".".join(parts[:2]) in WEB_MODULES:
        return "web"
    return parts[1]


def module_name(path: Path, app: Path = APP) -> str:
    relative = path.relative_to(app.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> list[tuple[int, str]]:
    return [(line, name) for line, name, _ in _imports(path)]


def _imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """Every import, at module level or inside a function: (line, module, names)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[int, str, list[str]]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module, [alias.name for alias in node.names]))
    return found


def module_graph(app: Path = APP) -> dict[str, set[str]]:
    """Which project modules each module imports (`from app.x import y` is app.x.y
    when that is a module, else app.x), inside functions as well as at the top."""
    modules = {module_name(path, app) for path in app.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for path in app.rglob("*.py"):
        module = module_name(path, app)
        targets: set[str] = set()
        for _, name, names in _imports(path):
            if name.split(".")[0] != "app":
                continue
            submodules = {f"{name}.{n}" for n in names} & modules
            targets |= submodules or ({name} & modules)
            if len(submodules) < len(names) and name in modules:
                targets.add(name)
        graph[module] = targets - {module}
    return graph


def cycles(app: Path = APP) -> list[list[str]]:
    """Every set of modules that import each other, round and round (Tarjan's SCCs)."""
    graph = module_graph(app)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for other in sorted(graph[module]):
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return found


def violations(app: Path = APP) -> list[str]:
    wrong = []
    for path in sorted(app.rglob("*.py")):
        module = module_name(path, app)
        own = layer(module)
        for line, name in imports(path):
            where = f"{path.relative_to(app.parent)}:{line} imports {name}"
            top = name.split(".")[0]
            if top == "app":
                other = layer(name)
                if other != own and other not in MAY_USE[own]:
                    wrong.append(f"{where} ({own} may not use {other})")
            elif top in RESTRICTED and own not in RESTRICTED[top]:
                wrong.append(f"{where} ({own} may not use {top})")
    return wrong


def _package(module: str, packages: set[str]) -> str | None:
    return next((p for p in packages if module == p or module.startswith(f"{p}.")), None)


def backends(app: Path = APP) -> set[str]:
    """The store layer's packages but the composition: its backends."""
    return {
        f"app.store.{folder.name}"
        for folder in (app / "store").iterdir()
        if folder.is_dir() and any(folder.glob("*.py"))
    } - {COMPOSITION}


def backend_violations(app: Path = APP) -> list[str]:
    """Imports from one backend into another, or into the composition above them."""
    wrong = []
    found = backends(app)
    for path in sorted(app.rglob("*.py")):
        own = _package(module_name(path, app), found)
        if own is None:
            continue
        for line, name in imports(path):
            other = _package(name, found | {COMPOSITION})
            if other is not None and other != own:
                wrong.append(f"{path.relative_to(app.parent)}:{line} imports {name}")
    return wrong


def test_no_backend_imports_another_backend_or_the_composition() -> None:
    assert backend_violations() == []


def test_the_check_finds_a_backend_importing_another(tmp_path: Path) -> None:
    store = tmp_path / "app" / "store"
    for package in ("spanner", "bigquery", "tiered"):
        (store / package).mkdir(parents=True)
    (store / "spanner" / "export.py").write_text(
        "from app.store.bigquery.stream import OffsetStream\n"
        "from app.store.spanner.schema import ddl\n"
        "from app.store import Store\n"
    )
    (store / "bigquery" / "store.py").write_text(
        "def f():\n    from app.store.tiered.store import TieredStore\n"
    )
    (store / "tiered" / "store.py").write_text("from app.store.spanner.serving import S\n")
    assert backend_violations(tmp_path / "app") == [
        "app/store/bigquery/store.py:2 imports app.store.tiered.store",
        "app/store/spanner/export.py:1 imports app.store.bigquery.stream",
    ]


def test_every_store_package_but_the_composition_is_a_backend(tmp_path: Path) -> None:
    assert {"app.store.bigquery", "app.store.duckdb", "app.store.spanner"} <= backends()
    assert COMPOSITION not in backends()
    # A store package nobody listed is held to the rule as soon as it exists.
    store = tmp_path / "app" / "store"
    for package in ("duckdb", "kafka"):
        (store / package).mkdir(parents=True)
    (store / "duckdb" / "store.py").write_text("")
    (store / "kafka" / "store.py").write_text("from app.store.duckdb.store import DuckDBStore\n")
    assert backends(tmp_path / "app") == {"app.store.duckdb", "app.store.kafka"}
    assert backend_violations(tmp_path / "app") == [
        "app/store/kafka/store.py:1 imports app.store.duckdb.store"
    ]


def tool_imports(app: Path = APP) -> list[str]:
    """Imports of the local tools (recordline_dev/) in the service: the tools import
    the service, never the reverse (they add to its command line by an entry point)."""
    return [
        f"{path.relative_to(app.parent)}:{line} imports {name}"
        for path in sorted(app.rglob("*.py"))
        for line, name in imports(path)
        if name.split(".")[0] == "recordline_dev"
    ]


@pytest.mark.slow
def test_the_service_imports_none_of_the_local_tools(tmp_path: Path) -> None:
    assert tool_imports() == []
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "cli.py").write_text("def f():\n    from recordline_dev import commands\n")
    assert tool_imports(tmp_path / "app") == ["app/cli.py:2 imports recordline_dev"]


def test_the_layers_form_no_cycle() -> None:
    try:
        order = list(TopologicalSorter(MAY_USE).static_order())
    except CycleError as exc:  # pragma: no cover - the table above is acyclic
        raise AssertionError(f"the layer table has a cycle: {exc.args[1]}") from None
    assert order[-1] == "web"
    assert set(order) == set(MAY_USE)


@pytest.mark.slow
def test_every_module_imports_only_what_its_layer_may() -> None:
    assert violations() == []


@pytest.mark.slow
def test_no_modules_import_each_other_round_and_round() -> None:
    # Even inside functions: such a cycle works only while the call comes late
    # enough, and ties the modules so that none can be read or moved alone.
    assert cycles() == []


def test_the_check_finds_a_cycle_through_a_function(tmp_path: Path) -> None:
    store = tmp_path / "app" / "store"
    (store / "duckdb").mkdir(parents=True)
    (tmp_path / "app" / "__init__.py").write_text("")
    (store / "__init__.py").write_text(
        "class Store: ...\n\ndef open_store():\n    from app.store.duckdb.store import D\n"
    )
    (store / "duckdb" / "__init__.py").write_text("")
    (store / "duckdb" / "store.py").write_text("from app.store import Store\n")
    assert cycles(tmp_path / "app") == [["app.store", "app.store.duckdb.store"]]
    (store / "__init__.py").write_text("class Store: ...\n")
    assert cycles(tmp_path / "app") == []


def test_every_module_belongs_to_a_known_layer() -> None:
    unknown = {module_name(p) for p in APP.rglob("*.py") if layer(module_name(p)) not in MAY_USE}
    assert unknown == set()


def test_the_check_finds_upward_imports(tmp_path: Path) -> None:
    # The check itself must be able to fail: a store reaching for telemetry and
    # the framework, and a service reaching for a route.
    store = tmp_path / "app" / "store"
    store.mkdir(parents=True)
    (store / "bad.py").write_text(
        "import litestar\n\ndef f():\n    from app.telemetry import record_query\n"
    )
    (tmp_path / "app" / "ingest").mkdir()
    (tmp_path / "app" / "ingest" / "service.py").write_text("from app.routes.query import X\n")
    assert violations(tmp_path / "app") == [
        "app/ingest/service.py:1 imports app.routes.query (ingest may not use web)",
        "app/store/bad.py:1 imports litestar (store may not use litestar)",
        "app/store/bad.py:4 imports app.telemetry (store may not use telemetry)",
    ]


def _called(node: ast.AST) -> str | None:
    if isinstance(node, ast.Call):
        func = node.func
        if isinstance(func, ast.Attribute):
            return func.attr
        if isinstance(func, ast.Name):
            return func.id
    return None


def task_starts(app: Path = APP) -> Counter[tuple[str, str]]:
    """Each call in app/, outside the supervisor, that starts a task: by file and call."""
    found: Counter[tuple[str, str]] = Counter()
    for path in sorted(app.rglob("*.py")):
        where = str(path.relative_to(app.parent))
        if where == SUPERVISOR:
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            called = _called(node)
            if called in TASK_CALLS:
                found[(where, called)] += 1
    return found


def other_backoffs(app: Path = APP) -> list[str]:
    """Each use in app/ of a backoff other than app/store/backoff.py's."""
    found = []
    for path in sorted(app.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.ImportFrom)
                else [node.attr]
                if isinstance(node, ast.Attribute)
                else [node.id]
                if isinstance(node, ast.Name)
                else []
            )
            for name in set(names) & OTHER_BACKOFFS:
                found.append(f"{path.relative_to(app.parent)}:{node.lineno} uses {name}")
    return found


@pytest.mark.slow
def test_background_loops_start_tasks_only_through_the_supervisor() -> None:
    assert task_starts() == Counter(NOT_LOOPS)


def test_the_check_finds_a_bare_task_in_a_store(tmp_path: Path) -> None:
    store = tmp_path / "app" / "store"
    (store / "duckdb").mkdir(parents=True)
    (store / "supervisor.py").write_text("import asyncio\nasyncio.TaskGroup().create_task(f())\n")
    (store / "duckdb" / "store.py").write_text(
        "import asyncio\n"
        "async def start():\n"
        "    asyncio.create_task(apply_forever())\n"
        "    async with asyncio.TaskGroup() as group:\n"
        "        group.create_task(expire_forever())\n"
    )
    assert task_starts(tmp_path / "app") == Counter(
        {
            ("app/store/duckdb/store.py", "create_task"): 2,
            ("app/store/duckdb/store.py", "TaskGroup"): 1,
        }
    )


def test_the_check_finds_a_bare_task_outside_the_stores(tmp_path: Path) -> None:
    (tmp_path / "app" / "ingest").mkdir(parents=True)
    (tmp_path / "app" / "ingest" / "batcher.py").write_text(
        "import asyncio\n"
        "async def start():\n"
        "    asyncio.create_task(flush_forever())\n"
        "    asyncio.ensure_future(sweep_forever())\n"
    )
    assert task_starts(tmp_path / "app") == Counter(
        {("app/ingest/batcher.py", "create_task"): 1, ("app/ingest/batcher.py", "ensure_future"): 1}
    )


@pytest.mark.slow
def test_every_wait_between_attempts_is_the_one_backoff() -> None:
    assert other_backoffs() == []


def test_the_check_finds_another_backoff(tmp_path: Path) -> None:
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "w.py").write_text(
        "from google.api_core.retry import exponential_sleep_generator\n"
        "import google.api_core.retry as r\n"
        "delays = r.exponential_sleep_generator(0.1, 5.0)\n"
    )
    assert other_backoffs(tmp_path / "app") == [
        "app/w.py:1 uses exponential_sleep_generator",
        "app/w.py:3 uses exponential_sleep_generator",
    ]


def settings_in_stores(app: Path = APP) -> list[str]:
    """Each import of the settings in app/store, but by the seam that opens the stores."""
    found = []
    for path in sorted((app / "store").rglob("*.py")):
        where = str(path.relative_to(app.parent))
        if where == SETTINGS_SEAM:
            continue
        for line, name, names in _imports(path):
            if name == "app.settings" or (name == "app" and "settings" in names):
                found.append(f"{where}:{line} imports the settings")
    return found


@pytest.mark.slow
def test_only_the_seam_of_the_store_layer_reads_the_settings() -> None:
    assert settings_in_stores() == []


def test_the_check_finds_a_store_reading_the_settings(tmp_path: Path) -> None:
    store = tmp_path / "app" / "store"
    (store / "spanner").mkdir(parents=True)
    (store / "open.py").write_text("from app.settings import Settings\n")
    (store / "spanner" / "serving.py").write_text(
        "from app.settings import SPANNER_URL\n\ndef f():\n    from app import settings\n"
    )
    assert settings_in_stores(tmp_path / "app") == [
        "app/store/spanner/serving.py:1 imports the settings",
        "app/store/spanner/serving.py:4 imports the settings",
    ]


# The push path's schemas and the stores' typed fields are wired at construction,
# in the order they depend on each other: a collaborator set on one afterwards
# (a `fetch_with`) closes a cycle that no constructor shows.
WIRED_AT_CONSTRUCTION = {"typed/revisions.py": "Revisions", "ingest/schemas.py": "Schemas"}


def late_wiring(app: Path = APP) -> list[str]:
    """Each attribute of `self` that a method of those classes, but `__init__`, sets."""
    found = []
    for relative, name in WIRED_AT_CONSTRUCTION.items():
        tree = ast.parse((app / relative).read_text())
        (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name]
        for method in cls.body:
            if not isinstance(method, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            if method.name == "__init__":
                continue
            for node in ast.walk(method):
                if (
                    isinstance(node, ast.Attribute)
                    and isinstance(node.ctx, ast.Store)
                    and isinstance(node.value, ast.Name)
                    and node.value.id == "self"
                ):
                    where = f"app/{relative}:{node.lineno}"
                    found.append(f"{where} {name}.{method.name} sets self.{node.attr}")
    return found


def test_schemas_and_revisions_are_given_what_they_use_at_construction() -> None:
    assert late_wiring() == []


def test_the_check_finds_a_collaborator_set_after_construction(tmp_path: Path) -> None:
    (tmp_path / "app" / "typed").mkdir(parents=True)
    (tmp_path / "app" / "ingest").mkdir()
    (tmp_path / "app" / "typed" / "revisions.py").write_text(
        "class Revisions:\n"
        "    def __init__(self):\n"
        "        self._fetch = None\n"
        "    def fetch_with(self, fetch):\n"
        "        self._fetch = fetch\n"
    )
    (tmp_path / "app" / "ingest" / "schemas.py").write_text(
        "class Schemas:\n    async def decoder(self):\n        self._kept[1] = 2\n"
    )
    assert late_wiring(tmp_path / "app") == [
        "app/typed/revisions.py:5 Revisions.fetch_with sets self._fetch"
    ]
