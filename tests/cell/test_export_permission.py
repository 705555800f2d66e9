"""A cell where alpha makes exporting a permission of its own (`export_principals`, from
a file as `@/path`) and beta does not: alpha's readers are refused its exports and
offered none in its console, beta's export as before, and alpha's exporter exports
alpha's rows alone."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
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
EXPORTER = "exporter-alpha@example.org"
KEY = base64.urlsafe_b64encode(bytes(range(16))).decode()


def reader(system: str) -> str:
    return f"reader-{system}@example.org"


@pytest.fixture
def cell(tmp_path: Path) -> Iterator[tuple[TestClient[Any], FakeGoogle]]:
    google = FakeGoogle().start()
    exporters = tmp_path / "alpha.exporters"
    exporters.write_text(f"{EXPORTER}\n")
    systems: dict[str, dict[str, str]] = {
        name: {
            "store": "memory:",
            "push_audience": audience(name),
            "push_service_accounts": pusher(name),
            "read_principals": reader(name),
        }
        for name in SYSTEMS
    }
    systems["alpha"]["export_principals"] = f"@{exporters}"
    settings = Settings.load(
        {
            "RECORDLINE_CELL": "cell-1",
            "RECORDLINE_SYSTEMS": json.dumps(systems),
            "RECORDLINE_OIDC_CERTS_URL": google.certs_url,
            "RECORDLINE_READ_AUDIENCE": READ_AUDIENCE,
            "RECORDLINE_READ_PASS_KEYS": f"k1:{KEY}",
            "RECORDLINE_READ_PASS_URL": "https://cell-1.example",
        }
    )
    made = create_cell(settings, stores={name: lambda: DuckDBStore(":memory:") for name in SYSTEMS})
    try:
        with TestClient(made) as client:
            for name in SYSTEMS:
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


def token(google: FakeGoogle, email: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {google.mint(aud=READ_AUDIENCE, email=email)}"}


def read_pass(client: TestClient[Any], google: FakeGoogle, system: str) -> dict[str, str]:
    answer = client.post(f"/systems/{system}/v1/read-pass", headers=token(google, reader(system)))
    client.cookies.clear()
    assert answer.status_code == 200, answer.text
    return {"Cookie": answer.json()["cookie"]}


def export(
    client: TestClient[Any], system: str, headers: dict[str, str], method: str = "GET"
) -> Any:
    return client.request(
        method, f"/systems/{system}/v1/export/records", params={"format": "jsonl"}, headers=headers
    )


@pytest.mark.slow
def test_alpha_restricts_its_exports_and_beta_does_not(
    cell: tuple[TestClient[Any], FakeGoogle],
) -> None:
    client, google = cell
    for headers in (token(google, reader("alpha")), read_pass(client, google, "alpha")):
        for method in ("GET", "HEAD"):
            refused = export(client, "alpha", headers, method)
            assert refused.status_code == 403, refused.text
            assert "content-disposition" not in refused.headers
            if method == "GET":
                assert refused.json()["type"] == "/problems/export-forbidden"
                assert "alpha-m" not in refused.text
        # Alpha's reader reads alpha still.
        assert client.get("/systems/alpha/v1/records", headers=headers).status_code == 200
    for headers in (token(google, reader("beta")), read_pass(client, google, "beta")):
        answer = export(client, "beta", headers)
        assert answer.status_code == 200, answer.text
        assert "beta-m" in answer.text
    alphas = export(client, "alpha", token(google, EXPORTER))
    assert alphas.status_code == 200, alphas.text
    assert "alpha-m" in alphas.text
    assert "beta-m" not in alphas.text
    # Alpha's exporter is no reader of beta's.
    assert export(client, "beta", token(google, EXPORTER)).status_code == 403


@pytest.mark.slow
def test_each_systems_console_offers_an_export_as_that_system_allows(
    cell: tuple[TestClient[Any], FakeGoogle],
) -> None:
    client, google = cell

    def page(system: str, who: str) -> str:
        answer = client.get(f"/systems/{system}/console/records", headers=token(google, who))
        assert answer.status_code == 200, answer.text
        return answer.text

    assert 'id="export"' not in page("alpha", reader("alpha"))
    assert 'id="export"' in page("alpha", EXPORTER)
    assert 'id="export"' in page("beta", reader("beta"))
