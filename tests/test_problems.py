"""Problem documents: every kind of error has a `type` the service itself describes."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import subprocess
import sys
from pathlib import Path

from litestar.testing import TestClient

import app
from app.asgi import create_app
from app.errors import RecordlineError
from app.http.head import Recordline
from app.problems import problem_types
from tests.conftest import settings


def test_every_problem_type_is_described_at_its_own_uri(client: TestClient[Recordline]) -> None:
    kinds = problem_types()
    assert {"invalid-parameter", "store-unavailable", "not-a-push-envelope"} <= set(kinds)
    for name, kind in kinds.items():
        answer = client.get(kind.type)
        assert answer.status_code == 200, name
        assert answer.json() == {
            "type": f"/problems/{name}",
            "status": kind.status,
            "title": kind.title,
            "description": kind.description,
        }
    assert client.get("/problems/no-such-thing").json()["type"] == "/problems/not-found"


def test_an_error_answer_names_its_type(client: TestClient[Recordline]) -> None:
    bad = client.get("/v1/records", params={"limit": "0"})
    assert bad.status_code == 400
    assert bad.json()["type"] == "/problems/invalid-parameter"
    missing = client.get("/v1/records/nothing-here")
    assert missing.json()["type"] == "/problems/not-found"
    envelope = client.post("/pubsub/push", content=b"{}")
    assert envelope.status_code == 400
    assert envelope.json()["type"] == "/problems/not-a-push-envelope"
    described = client.get(envelope.json()["type"]).json()
    assert described["status"] == 400


def test_a_path_under_docs_that_serves_nothing_is_a_problem_document(
    client: TestClient[Recordline],
) -> None:
    # Litestar's own answer there was an HTML page ("Error 404").
    for path in ("/docs/redoc", "/docs/nothing", "/docs/a/b", "/docs/ui/nothing"):
        answer = client.get(path)
        assert answer.status_code == 404, path
        assert answer.headers["content-type"].startswith("application/problem+json"), path
        assert answer.json()["type"] == "/problems/not-found", path
    assert client.get("/docs").headers["content-type"].startswith("text/html")
    assert client.get("/docs/openapi.json").status_code == 200


def every_kind() -> list[type[RecordlineError]]:
    """Every RecordlineError class anywhere in app/, each of its modules imported first:
    what the service can raise, not what the table of problem types kept."""
    for module in pkgutil.walk_packages(app.__path__, f"{app.__name__}."):
        importlib.import_module(module.name)
    kinds: dict[type[RecordlineError], None] = {}
    unseen: list[type[RecordlineError]] = [RecordlineError]
    while unseen:
        kind = unseen.pop()
        kinds[kind] = None
        unseen += kind.__subclasses__()
    return list(kinds)


def test_every_kind_of_error_has_a_problem_name_and_a_title_of_its_own() -> None:
    kinds = every_kind()
    assert len(kinds) > 10
    by_name: dict[str, list[str]] = {}
    by_title: dict[str, list[str]] = {}
    for kind in kinds:
        by_name.setdefault(kind.problem, []).append(kind.__qualname__)
        by_title.setdefault(kind.title, []).append(kind.__qualname__)
    assert {name: k for name, k in by_name.items() if len(k) > 1} == {}
    assert {title: k for title, k in by_title.items() if len(k) > 1} == {}


def test_a_kind_of_error_without_a_name_of_its_own_is_refused_where_it_is_declared() -> None:
    # In a process of its own: the refused class stays among its parent's
    # subclasses until it is collected, and would be seen by the other tests.
    declared = """
from app.errors import RetryLater

class Vague(RetryLater):
    \"\"\"Something is unavailable.\"\"\"

    title = "Vague"
"""
    done = subprocess.run(
        [sys.executable, "-c", declared],
        cwd=Path(app.__file__).parent.parent,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == (
        "TypeError: Vague is a kind of error of its own: declare its problem"
    )


def test_every_kind_of_error_is_declared_with_the_others() -> None:
    # The service describes the kinds app.errors holds, whatever else is imported.
    kinds = every_kind()
    elsewhere = [f"{k.__module__}.{k.__qualname__}" for k in kinds if k.__module__ != "app.errors"]
    assert elsewhere == []
    assert set(problem_types()) == {kind.problem for kind in kinds}


def test_every_problem_uri_describes_its_own_kind_of_error() -> None:
    with TestClient(create_app(settings())) as client:
        for kind in every_kind():
            assert kind.__doc__, kind
            answer = client.get(f"/problems/{kind.problem}")
            assert answer.status_code == 200, kind
            assert answer.json() == {
                "type": f"/problems/{kind.problem}",
                "status": kind.status,
                "title": kind.title,
                "description": inspect.cleandoc(kind.__doc__),
            }, kind
