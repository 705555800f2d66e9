"""Read passes in a cell: a system's pass opens that system's reads alone, under
`/systems/{system}/v1/`, and a pass of one system is refused by every other."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from litestar.testing import TestClient

from app.cell.app import create_cell
from app.settings import Settings
from app.store.duckdb.store import DuckDBStore
from tests.auth.fake_google import READ_AUDIENCE, FakeGoogle
from tests.cell.test_cell import audience, pusher
from tests.conftest import envelope

SYSTEMS = ("alpha", "beta")
URL = "https://cell-1.example"
KEY = base64.urlsafe_b64encode(bytes(range(16))).decode()


def reader(system: str) -> str:
    return f"reader-{system}@example.org"


def entry(system: str) -> dict[str, str]:
    """`system`'s entry in the cell's RECORDLINE_SYSTEMS: its reader is `reader(system)`."""
    return {
        "store": "memory:",
        "push_audience": audience(system),
        "push_service_accounts": pusher(system),
        "read_principals": reader(system),
    }


@pytest.fixture
def cell() -> Iterator[tuple[TestClient[Any], FakeGoogle]]:
    with serving({name: entry(name) for name in SYSTEMS}) as served:
        yield served


@contextmanager
def serving(systems: dict[str, dict[str, str]]) -> Iterator[tuple[TestClient[Any], FakeGoogle]]:
    """A cell of `systems`, with read passes, each system's record `{system}-m` pushed."""
    google = FakeGoogle().start()
    settings = Settings.load(
        {
            "RECORDLINE_CELL": "cell-1",
            "RECORDLINE_SYSTEMS": json.dumps(systems),
            "RECORDLINE_OIDC_CERTS_URL": google.certs_url,
            "RECORDLINE_READ_AUDIENCE": READ_AUDIENCE,
            "RECORDLINE_READ_PASS_KEYS": f"k1:{KEY}",
            "RECORDLINE_READ_PASS_URL": URL,
        }
    )
    made = create_cell(settings, stores={name: lambda: DuckDBStore(":memory:") for name in systems})
    try:
        with TestClient(made) as client:
            for name in systems:
                token = google.mint(aud=audience(name), email=pusher(name))
                answer = client.post(
                    f"/systems/{name}/pubsub/push",
                    json=envelope({"id": f"{name}-1", "data": 1}, message_id=f"{name}-m"),
                    headers={"Authorization": f"Bearer {token}"},
                )
                assert answer.status_code == 204, answer.text
            yield client, google
    finally:
        google.stop()


def pass_of(client: TestClient[Any], google: FakeGoogle, system: str) -> str:
    token = google.mint(aud=READ_AUDIENCE, email=reader(system))
    answer = client.post(
        f"/systems/{system}/v1/read-pass", headers={"Authorization": f"Bearer {token}"}
    )
    client.cookies.clear()
    assert answer.status_code == 200, answer.text
    assert answer.json()["url_prefix"] == f"{URL}/systems/{system}/v1/"
    assert f"; Path=/systems/{system}/v1/;" in answer.headers["set-cookie"]
    cookie: str = answer.json()["cookie"]
    return cookie


@pytest.mark.slow
def test_a_systems_pass_reads_that_system_alone(
    cell: tuple[TestClient[Any], FakeGoogle],
) -> None:
    client, google = cell
    alphas = pass_of(client, google, "alpha")
    read = client.get("/systems/alpha/v1/records", headers={"Cookie": alphas})
    assert read.status_code == 200, read.text
    assert [r["message_id"] for r in read.json()["records"]] == ["alpha-m"]
    stream = client.get("/systems/alpha/v1/streams/records", headers={"Cookie": alphas})
    assert stream.status_code == 200
    assert "private" in stream.headers["cache-control"]
    for path in ("/systems/beta/v1/records", "/systems/beta/v1/streams/records"):
        refused = client.get(path, headers={"Cookie": alphas})
        assert refused.status_code == 401, refused.text
    # Beta's own pass reads beta's records.
    betas = pass_of(client, google, "beta")
    read = client.get("/systems/beta/v1/records", headers={"Cookie": betas})
    assert [r["message_id"] for r in read.json()["records"]] == ["beta-m"]


@pytest.mark.slow
def test_a_reader_of_one_system_gets_no_pass_for_another(
    cell: tuple[TestClient[Any], FakeGoogle],
) -> None:
    client, google = cell
    token = google.mint(aud=READ_AUDIENCE, email=reader("alpha"))
    answer = client.post("/systems/beta/v1/read-pass", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 403
    # Nor does a pass mint one, at its own system's path.
    alphas = pass_of(client, google, "alpha")
    again = client.post("/systems/alpha/v1/read-pass", headers={"Cookie": alphas})
    assert again.status_code == 401


@pytest.mark.slow
def test_no_spelling_of_a_path_lets_a_systems_pass_read_another(
    cell: tuple[TestClient[Any], FakeGoogle],
) -> None:
    client, google = cell
    alphas = pass_of(client, google, "alpha")
    for path in (
        "/systems/alpha/v1/%2e%2e/%2e%2e/beta/v1/records",
        "/systems/alpha%2F..%2Fbeta/v1/records",
        "/systems/alpha/v1/records/..%2F..%2F..%2Fbeta%2Fv1%2Frecords",
        "/systems//beta/v1/records",
        "/systems/beta//v1/records",
        "/systems/BETA/v1/records",
        "/systems/beta%2Fv1%2Frecords",
        "/systems/beta/v1/records/",
        "/systems/beta/v1/records?prefix=/systems/alpha/v1/",
        "/systems/beta/v1/streams/records?offset=-1&live=long-poll",
    ):
        answer = client.get(path, headers={"Cookie": alphas})
        assert answer.status_code in (401, 404), (path, answer.status_code, answer.text)
        assert "beta-m" not in answer.text, path
