"""A cell where alpha makes exporting a permission of its own (`export_principals`, from
a file as `@/path`) and beta does not: alpha's readers are refused its exports and
offered none in its console, beta's export as before, and alpha's exporter exports
alpha's rows alone."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from app.http.access import log as access_log
from app.telemetry.logs import LABELS_FIELD, CloudLoggingFormatter
from tests.auth.fake_google import READ_AUDIENCE, FakeGoogle
from tests.cell.test_read_passes import SYSTEMS, entry, pass_of, reader, serving

EXPORTER = "exporter-alpha@example.org"


@pytest.fixture
def cell(tmp_path: Path) -> Iterator[tuple[TestClient[Any], FakeGoogle]]:
    exporters = tmp_path / "alpha.exporters"
    exporters.write_text(f"{EXPORTER}\n")
    systems = {name: entry(name) for name in SYSTEMS}
    systems["alpha"]["export_principals"] = f"@{exporters}"
    with serving(systems) as served:
        yield served


def token(google: FakeGoogle, email: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {google.mint(aud=READ_AUDIENCE, email=email)}"}


def read_pass(client: TestClient[Any], google: FakeGoogle, system: str) -> dict[str, str]:
    return {"Cookie": pass_of(client, google, system)}


def export(
    client: TestClient[Any], system: str, headers: dict[str, str], method: str = "GET"
) -> Any:
    return client.request(
        method, f"/systems/{system}/v1/export/records", params={"format": "jsonl"}, headers=headers
    )


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


def test_each_access_line_names_the_system_it_was_for(
    cell: tuple[TestClient[Any], FakeGoogle],
) -> None:
    client, google = cell
    # Each line as Cloud Logging gets it, formatted as it is written.
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(CloudLoggingFormatter())
    access_log.addHandler(handler)
    try:
        for system in SYSTEMS:
            answer = export(client, system, token(google, EXPORTER))
            assert answer.status_code == (200 if system == "alpha" else 403)
    finally:
        access_log.removeHandler(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    # Which system each line is for, as the sink of each system's access record selects
    # it (its `labels.system`, from the dispatcher), and as the line itself says.
    assert [line[LABELS_FIELD]["system"] for line in lines] == list(SYSTEMS)
    assert [line["access"]["system"] for line in lines] == list(SYSTEMS)
    assert [line["access"]["status"] for line in lines] == [200, 403]
