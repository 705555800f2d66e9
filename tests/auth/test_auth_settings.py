"""Fail closed: unauthenticated push is allowed on loopback only, and says so loudly."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from litestar.testing import AsyncTestClient

from app.asgi import create_app
from app.cli import main
from app.settings import Settings, SettingsError
from tests.conftest import envelope

RECORD = {"id": "1", "data": "Ejemplo de datos"}
PUSH_TOKEN = "a1b2c3d4e5f6a7b8c9d0"


def settings(**env: str) -> Settings:
    return Settings.load({"RECORDLINE_STORE": "memory:", **env})


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.7", "recordline.internal"])
def test_unauthenticated_push_refuses_to_start_off_loopback(host: str) -> None:
    with pytest.raises(SettingsError) as raised:
        create_app(settings(RECORDLINE_HOST=host))

    message = str(raised.value)
    for variable in (
        "RECORDLINE_PUSH_AUDIENCE",
        "RECORDLINE_PUSH_SERVICE_ACCOUNTS",
        "RECORDLINE_PUSH_TOKEN",
    ):
        assert variable in message


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost"])
def test_unauthenticated_push_starts_on_loopback_with_a_warning(
    host: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="app.auth"):
        create_app(settings(RECORDLINE_HOST=host))

    [warning] = [r for r in caplog.records if "UNAUTHENTICATED" in r.getMessage()]
    assert warning.levelno == logging.WARNING


PAGE_SECRET = "a-page-token-key-of-this-deployment"


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.7"])
def test_unauthenticated_reads_refuse_to_start_off_loopback(host: str) -> None:
    with pytest.raises(SettingsError) as raised:
        create_app(
            settings(
                RECORDLINE_HOST=host,
                RECORDLINE_PUSH_TOKEN=PUSH_TOKEN,
                RECORDLINE_PAGE_TOKEN_SECRET=PAGE_SECRET,
            )
        )

    message = str(raised.value)
    for variable in (
        "RECORDLINE_READ_AUDIENCE",
        "RECORDLINE_READ_PRINCIPALS",
        "RECORDLINE_PUBLIC_READS",
    ):
        assert variable in message


def test_public_reads_off_loopback_start_only_when_declared_and_say_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="app.auth"):
        create_app(public_settings())

    [warning] = [r for r in caplog.records if "READS ARE PUBLIC" in r.getMessage()]
    assert warning.levelno == logging.WARNING


def test_public_reads_and_a_read_audience_contradict() -> None:
    with pytest.raises(SettingsError, match="RECORDLINE_PUBLIC_READS and RECORDLINE_READ_AUDIENCE"):
        create_app(
            settings(
                RECORDLINE_PUBLIC_READS="true",
                RECORDLINE_READ_AUDIENCE="https://x",
                RECORDLINE_READ_PRINCIPALS="a@example.com",
            )
        )


@pytest.mark.parametrize(
    "secret", [None, "recordline-page-token", "short"], ids=["unset", "default", "short"]
)
def test_a_published_or_short_page_token_key_refuses_to_start_off_loopback(
    secret: str | None,
) -> None:
    env = {"RECORDLINE_PAGE_TOKEN_SECRET": secret} if secret is not None else {}
    with pytest.raises(SettingsError, match="RECORDLINE_PAGE_TOKEN_SECRET"):
        create_app(
            settings(
                RECORDLINE_HOST="0.0.0.0",
                RECORDLINE_PUSH_TOKEN=PUSH_TOKEN,
                RECORDLINE_PUBLIC_READS="true",
                **env,
            )
        )
    # On loopback the default still serves, for a first run on this machine.
    create_app(settings(RECORDLINE_PUSH_TOKEN=PUSH_TOKEN, **env))


def public_settings(**env: str) -> Settings:
    """Bound beyond loopback with every setting that takes: a push secret, a page-token
    key of its own, and reads declared public."""
    return settings(
        RECORDLINE_HOST="0.0.0.0",
        RECORDLINE_PUSH_TOKEN=PUSH_TOKEN,
        RECORDLINE_PAGE_TOKEN_SECRET=PAGE_SECRET,
        RECORDLINE_PUBLIC_READS="true",
        **env,
    )


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"RECORDLINE_PUSH_AUDIENCE": "https://x"}, "RECORDLINE_PUSH_SERVICE_ACCOUNTS"),
        ({"RECORDLINE_PUSH_SERVICE_ACCOUNTS": "a@b.com"}, "RECORDLINE_PUSH_AUDIENCE"),
        ({"RECORDLINE_READ_AUDIENCE": "https://x"}, "RECORDLINE_READ_PRINCIPALS"),
        ({"RECORDLINE_READ_PRINCIPALS": "domain:example.com"}, "RECORDLINE_READ_AUDIENCE"),
        ({"RECORDLINE_PUSH_TOKEN": "short"}, "RECORDLINE_PUSH_TOKEN"),
        (
            {"RECORDLINE_PUSH_AUDIENCE": "https://x", "RECORDLINE_PUSH_SERVICE_ACCOUNTS": "nobody"},
            "RECORDLINE_PUSH_SERVICE_ACCOUNTS",
        ),
        (
            {"RECORDLINE_READ_AUDIENCE": "https://x", "RECORDLINE_READ_PRINCIPALS": "domain:"},
            "RECORDLINE_READ_PRINCIPALS",
        ),
    ],
)
def test_half_configured_auth_is_refused(env: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        create_app(settings(**env))


@pytest.fixture
def keep_logging() -> Iterator[None]:
    # `recordline serve` configures the root logger before it builds the app.
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


@pytest.mark.usefixtures("keep_logging")
def test_serve_prints_the_refusal_and_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for variable in (
        "RECORDLINE_PUSH_AUDIENCE",
        "RECORDLINE_PUSH_TOKEN",
        "RECORDLINE_READ_AUDIENCE",
    ):
        monkeypatch.delenv(variable, raising=False)

    assert main(["serve", "--host", "0.0.0.0", "--store", "memory:"]) == 2
    said = capsys.readouterr().err
    # One line naming all that is missing (it took a run per setting), and the flag
    # typed rather than the variable it sets.
    assert said.count("\n") == 1, said
    assert said.startswith("recordline: --host '0.0.0.0' is not a loopback address"), said
    for variable in (
        "RECORDLINE_PUSH_TOKEN",
        "RECORDLINE_READ_AUDIENCE",
        "RECORDLINE_PUBLIC_READS",
        "RECORDLINE_PAGE_TOKEN_SECRET",
    ):
        assert variable in said


@pytest.mark.parametrize(
    ("env", "missing"),
    [
        ({}, {"push", "read", "page-token"}),
        ({"RECORDLINE_PUSH_TOKEN": PUSH_TOKEN}, {"read", "page-token"}),
        ({"RECORDLINE_PUBLIC_READS": "true"}, {"push", "page-token"}),
        ({"RECORDLINE_PAGE_TOKEN_SECRET": PAGE_SECRET}, {"push", "read"}),
    ],
)
def test_one_refusal_names_everything_a_service_beyond_loopback_lacks(
    env: dict[str, str], missing: set[str]
) -> None:
    with pytest.raises(SettingsError) as raised:
        create_app(settings(RECORDLINE_HOST="0.0.0.0", **env))
    said = {
        kind
        for kind, text in (
            ("push", "push authentication"),
            ("read", "read authentication"),
            ("page-token", "page-token key"),
        )
        if text in str(raised.value)
    }
    assert said == missing, str(raised.value)


async def test_shared_token_in_the_url_admits_the_emulator() -> None:
    app = create_app(public_settings())
    async with AsyncTestClient(app) as client:
        body = envelope(RECORD)
        accepted = await client.post(f"/pubsub/push?token={PUSH_TOKEN}", json=body)
        wrong = await client.post("/pubsub/push?token=a1b2c3d4e5f6a7b8c9d1", json=body)
        not_ascii = await client.post("/pubsub/push?token=%C3%A9%00", json=body)
        missing = await client.post("/pubsub/push", json=body)
        # A bearer token is no substitute when only the shared secret is configured.
        bearer = await client.post(
            "/pubsub/push", json=body, headers={"Authorization": f"Bearer {PUSH_TOKEN}"}
        )

    assert accepted.status_code == 204
    for refused in (wrong, not_ascii, missing, bearer):
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"].startswith("Bearer")
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert refused.json()["type"] == "/problems/unauthorized"
    # Each is told what was wrong with it: not that a bearer token is required. A
    # secret that was sent and is wrong is RFC 6750's `invalid_token`; none sent is not.
    for refused in (wrong, not_ascii):
        assert refused.json()["detail"] == "The ?token= in the push URL is wrong."
        assert refused.headers["www-authenticate"].endswith(', error="invalid_token"')
    for refused in (missing, bearer):
        assert refused.json()["detail"] == "A push needs the shared secret as ?token= in its URL."
        assert "error=" not in refused.headers["www-authenticate"]
