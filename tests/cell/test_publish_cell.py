"""`POST /systems/{system}/v1/publish` in a cell: each system's operator publishes to
that system's own topic alone, no one else publishes there, a system makes its
publisher's client only once its operator publishes, and a topic setting that cannot
name each system's own topic is refused as the cell starts."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from app.cell.app import create_cell
from app.ingest import topic
from app.settings import Settings, SettingsError
from app.store.duckdb.store import DuckDBStore
from tests.auth.fake_google import READ_AUDIENCE, FakeGoogle
from tests.cell.test_cell import audience, pusher
from tests.cell.test_read_passes import KEY, URL, reader
from tests.conftest import served
from tests.fake_publisher import FakePublisher

SYSTEMS = ("alpha", "beta", "gamma", "delta", "epsilon", "zeta")
PROJECT = "demo-project"
TEMPLATE = f"projects/{PROJECT}/topics/{{system}}"
GOOD = {"data": base64.b64encode(b'{"id": "t-1", "data": 1}').decode()}


def operator(system: str) -> str:
    return f"operator-{system}@example.org"


def entry(system: str) -> dict[str, str]:
    return {
        "store": "memory:",
        "push_audience": audience(system),
        "push_service_accounts": pusher(system),
        "read_principals": reader(system),
        "operator_principals": operator(system),
    }


def cell_settings(topic_name: str, **env: str) -> Settings:
    return Settings.load(
        {
            "RECORDLINE_CELL": "cell-1",
            "RECORDLINE_SYSTEMS": json.dumps({name: entry(name) for name in SYSTEMS}),
            "RECORDLINE_READ_AUDIENCE": READ_AUDIENCE,
            "RECORDLINE_READ_PASS_KEYS": f"k1:{KEY}",
            "RECORDLINE_READ_PASS_URL": URL,
            "RECORDLINE_TOPIC": topic_name,
            **env,
        }
    )


@pytest.fixture
async def pubsub() -> AsyncIterator[FakePublisher]:
    fake = FakePublisher()
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


@pytest.fixture
def google() -> Any:
    fake = FakeGoogle().start()
    yield fake
    fake.stop()


def token(google: FakeGoogle, email: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {google.mint(aud=READ_AUDIENCE, email=email)}"}


async def test_each_systems_operator_publishes_to_its_own_topic_alone(
    pubsub: FakePublisher, google: FakeGoogle, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[str] = []
    real_made = topic._made

    def counted(host: str, credentials: Any) -> Any:
        made.append(host)
        return real_made(host, credentials)

    monkeypatch.setattr(topic, "_made", counted)
    cell = create_cell(
        cell_settings(
            TEMPLATE,
            RECORDLINE_OIDC_CERTS_URL=google.certs_url,
            PUBSUB_EMULATOR_HOST=pubsub.address,
        ),
        stores={name: lambda: DuckDBStore(":memory:") for name in SYSTEMS},
    )
    async with served(cell) as http:  # type: ignore[arg-type]
        beta = "/systems/beta/v1/publish"
        minted = token(google, reader("beta"))
        answer = await http.post("/systems/beta/v1/read-pass", headers=minted)
        assert answer.status_code == 200, answer.text
        beta_pass = answer.json()["cookie"]
        http.cookies.clear()
        for what, headers in (
            ("alpha's operator", token(google, operator("alpha"))),
            ("beta's reader", token(google, reader("beta"))),
            ("beta's read pass", {"Cookie": beta_pass}),
            ("no token", {}),
        ):
            refused = await http.post(beta, json=GOOD, headers=headers)
            assert refused.status_code in (401, 403), (what, refused.text)
        # A path that spells another system's: no route, or that system's guard.
        for path in (
            "/systems/alpha/v1/../../beta/v1/publish",
            "/systems/alpha%2F..%2Fbeta/v1/publish",
            "/systems/BETA/v1/publish",
        ):
            refused = await http.post(path, json=GOOD, headers=token(google, operator("alpha")))
            assert refused.status_code in (401, 403, 404), (path, refused.text)
        assert pubsub.calls == 0
        assert made == []
        for _ in range(2):
            answer = await http.post(beta, json=GOOD, headers=token(google, operator("beta")))
            assert answer.status_code == 200, answer.text
            assert answer.json()["topic"] == f"projects/{PROJECT}/topics/beta"
        answer = await http.post(
            "/systems/alpha/v1/publish", json=GOOD, headers=token(google, operator("alpha"))
        )
        assert answer.status_code == 200, answer.text
        assert [t for t, *_ in pubsub.published] == [
            f"projects/{PROJECT}/topics/beta",
            f"projects/{PROJECT}/topics/beta",
            f"projects/{PROJECT}/topics/alpha",
        ]
        # A client for each system that published, none for the four that did not.
        assert made == [pubsub.address, pubsub.address]


@pytest.mark.parametrize(
    "topic_name",
    [
        # One topic for every system: each system's operator would publish to it.
        f"projects/{PROJECT}/topics/alpha",
        f"projects/{PROJECT}/topics/orders",
    ],
)
def test_a_cells_topic_that_names_no_system_is_refused_as_it_starts(topic_name: str) -> None:
    # Otherwise beta's operator publishes into alpha's topic, stored as alpha's.
    with pytest.raises(SettingsError) as refused:
        cell_settings(topic_name)
    assert refused.value.var == "RECORDLINE_TOPIC"
    assert "{system}" in str(refused.value)


@pytest.mark.parametrize(
    "topic_name",
    [
        # Pub/Sub's topic ids start with a letter, and never with `goog`.
        f"projects/{PROJECT}/topics/%{{system}}",
        f"projects/{PROJECT}/topics/-{{system}}",
        f"projects/{PROJECT}/topics/9{{system}}",
        f"projects/{PROJECT}/topics/goog{{system}}",
        f"projects/{PROJECT}/topics/goog-orders",
    ],
)
def test_a_topic_pubsub_would_refuse_is_refused_as_the_service_starts(topic_name: str) -> None:
    # Otherwise each publish is a 400 blaming the operator's message.
    environ = {"RECORDLINE_STORE": "memory:", "RECORDLINE_TOPIC": topic_name}

    def load() -> Settings:
        return cell_settings(topic_name) if "{system}" in topic_name else Settings.load(environ)

    with pytest.raises(SettingsError) as refused:
        load()
    assert refused.value.var == "RECORDLINE_TOPIC"
