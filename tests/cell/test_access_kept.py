"""A cell's systems each keep their own access record: alpha's operator reads alpha's
lines (its reader's read, its refused stranger) and none of beta's, and is refused
beta's record; each system's lines are in its own store."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from litestar.testing import TestClient

from tests.auth.fake_google import READ_AUDIENCE, FakeGoogle
from tests.cell.test_read_passes import SYSTEMS, entry, reader, serving
from tests.waiting import until_blocking


def operator(system: str) -> str:
    return f"operator-{system}@example.org"


@pytest.fixture
def cell() -> Iterator[tuple[TestClient[Any], FakeGoogle]]:
    systems = {name: entry(name) | {"operator_principals": operator(name)} for name in SYSTEMS}
    with serving(systems) as served:
        yield served


def token(google: FakeGoogle, email: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {google.mint(aud=READ_AUDIENCE, email=email)}"}


def test_each_system_keeps_and_serves_its_own_access_record(
    cell: tuple[TestClient[Any], FakeGoogle],
) -> None:
    client, google = cell
    for name in SYSTEMS:
        read = client.get(f"/systems/{name}/v1/records", headers=token(google, reader(name)))
        assert read.status_code == 200, read.text
    # Beta's reader is a stranger to alpha.
    assert (
        client.get("/systems/alpha/v1/records", headers=token(google, reader("beta"))).status_code
        == 403
    )

    def lines(system: str) -> list[dict[str, Any]]:
        answer = client.get(f"/systems/{system}/v1/access", headers=token(google, operator(system)))
        assert answer.status_code == 200, answer.text
        found: list[dict[str, Any]] = [line["line"] for line in answer.json()["lines"]]
        return found

    alphas = until_blocking(lambda: len(lines("alpha")) >= 2 and lines("alpha"), what="alpha's")
    assert {(line["principal"], line["status"], line["system"]) for line in alphas} >= {
        (reader("alpha"), 200, "alpha"),
        (reader("beta"), 403, "alpha"),
    }
    assert all(line["system"] == "alpha" for line in alphas)
    betas = until_blocking(lambda: lines("beta"), what="beta's")
    assert {line["principal"] for line in betas} == {reader("beta")}
    # Alpha's operator is nobody to beta, and beta's reader no operator of its own.
    refused = client.get("/systems/beta/v1/access", headers=token(google, operator("alpha")))
    assert refused.status_code == 403
    assert (
        client.get("/systems/beta/v1/access", headers=token(google, reader("beta"))).status_code
        == 403
    )
