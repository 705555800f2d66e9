"""What a sender controls in a cell's path: any method, any system name, any path after
it, answered with a problem document and never 5xx, and nothing stored in any system's
store but a push to that system's own push path (Hypothesis)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.cell.app import create_cell
from app.settings import Settings
from app.store.duckdb.store import DuckDBStore
from tests.conftest import envelope, served_in_thread
from tests.fakes import FaultyStore

SYSTEMS = ("alpha", "beta")
_SEGMENT = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=0, max_size=12
)


@pytest.fixture(scope="module")
def cell() -> Iterator[tuple[httpx.Client, dict[str, FaultyStore]]]:
    stores = {name: FaultyStore(DuckDBStore(":memory:")) for name in SYSTEMS}
    loaded = Settings.load(
        {
            "RECORDLINE_CELL": "cell-1",
            "RECORDLINE_SYSTEMS": json.dumps({name: {"store": "memory:"} for name in SYSTEMS}),
        }
    )
    made = create_cell(loaded, stores={name: (lambda s=s: s) for name, s in stores.items()})
    with served_in_thread(made) as client:  # type: ignore[arg-type]
        yield client, stores


@pytest.mark.slow
@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]),
    system=st.one_of(st.sampled_from([*SYSTEMS, "gamma", "Alpha", ""]), _SEGMENT),
    rest=st.lists(_SEGMENT, max_size=4),
)
def test_any_path_of_a_cell_is_answered_and_stores_only_its_own_systems_push(
    cell: tuple[httpx.Client, dict[str, FaultyStore]],
    method: str,
    system: str,
    rest: list[str],
) -> None:
    client, stores = cell
    before = {name: sum(store.appends) for name, store in stores.items()}
    path = "/systems/" + "/".join(quote(part, safe="") for part in [system, *rest])
    body: Any = envelope({"id": "fuzz", "data": "x"}, message_id="fuzz")
    answer = client.request(method, path, json=body if method in ("POST", "PUT", "PATCH") else None)
    assert answer.status_code < 500, (method, path, answer.text)
    if answer.status_code >= 400 and method != "HEAD":
        assert answer.headers["content-type"].startswith("application/problem+json"), path
    pushed = method == "POST" and system in SYSTEMS and rest == ["pubsub", "push"]
    after = {name: sum(store.appends) for name, store in stores.items()}
    for name in SYSTEMS:
        grew = after[name] - before[name]
        assert grew == (1 if pushed and name == system and answer.status_code == 204 else 0), (
            method,
            path,
            name,
        )
