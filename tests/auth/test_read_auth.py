"""Reads can require a Google ID token from named principals; health and push are unaffected."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from litestar.testing import AsyncTestClient

from app.asgi import create_app
from app.http.head import Recordline
from app.settings import Settings
from tests.auth.fake_google import PUSH_AUDIENCE, PUSHER, READ_AUDIENCE, FakeGoogle
from tests.conftest import envelope

ANALYST = "analyst@example.org"


@pytest.fixture
async def client(google: FakeGoogle) -> AsyncIterator[AsyncTestClient[Recordline]]:
    settings = Settings.load(
        {
            "RECORDLINE_STORE": "memory:",
            "RECORDLINE_PUSH_AUDIENCE": PUSH_AUDIENCE,
            "RECORDLINE_PUSH_SERVICE_ACCOUNTS": PUSHER,
            "RECORDLINE_READ_AUDIENCE": READ_AUDIENCE,
            "RECORDLINE_READ_PRINCIPALS": (
                f"{ANALYST}, domain:corp.example.com, domain:demo.iam.gserviceaccount.com"
            ),
            "RECORDLINE_OIDC_CERTS_URL": google.certs_url,
        }
    )
    async with AsyncTestClient(create_app(settings)) as client:
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.slow
@pytest.mark.parametrize(
    "claims",
    [
        {"email": ANALYST},
        {"email": "ANALYST@example.org"},
        {"email": "someone@corp.example.com", "hd": "corp.example.com"},
        # A Workspace account whose address is elsewhere but whose organisation matches.
        {"email": "someone@alias.example.net", "hd": "corp.example.com"},
        {"email": "reporting@demo.iam.gserviceaccount.com"},
    ],
)
@pytest.mark.parametrize("path", ["/v1/records", "/v1/records/1", "/v1/messages/m-1"])
async def test_allowed_principals_read(
    google: FakeGoogle, client: AsyncTestClient[Recordline], claims: dict[str, str], path: str
) -> None:
    token = google.mint(aud=READ_AUDIENCE, **claims)
    response = await client.get(path, headers=bearer(token))
    # 404 for the ids nobody stored: past the guard, answered by the reader.
    assert response.status_code in (200, 404)
    assert response.headers["content-type"].startswith(("application/json", "application/problem"))
    if response.status_code == 404:
        assert response.json()["title"] == "Not found"


@pytest.mark.slow
@pytest.mark.parametrize(
    "claims",
    [
        {"email": "someone@example.net"},
        {"email": "someone@corp.example.com.evil.net"},
        {"email": "evil@example.net", "hd": "example.net"},
    ],
)
async def test_other_principals_get_403(
    google: FakeGoogle, client: AsyncTestClient[Recordline], claims: dict[str, str]
) -> None:
    response = await client.get(
        "/v1/records", headers=bearer(google.mint(aud=READ_AUDIENCE, **claims))
    )
    assert response.status_code == 403
    assert response.headers["content-type"].startswith("application/problem+json")


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Basic YW5hbHlzdDpwdw=="},
        {"Authorization": "Bearer nonsense"},
    ],
)
async def test_reads_without_a_valid_token_get_401(
    client: AsyncTestClient[Recordline], headers: dict[str, str]
) -> None:
    for path in ("/v1/records", "/v1/rejections"):
        response = await client.get(path, headers=headers)
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith('Bearer realm="recordline"')


async def test_the_push_token_does_not_open_reads(
    google: FakeGoogle, client: AsyncTestClient[Recordline]
) -> None:
    # Same issuer, same keys, but minted for the push audience.
    assert (await client.get("/v1/records", headers=bearer(google.mint()))).status_code == 401


async def test_a_read_token_cannot_push(
    google: FakeGoogle, client: AsyncTestClient[Recordline]
) -> None:
    token = google.mint(aud=READ_AUDIENCE, email=PUSHER)
    response = await client.post("/pubsub/push", json=envelope({"id": "1"}), headers=bearer(token))
    assert response.status_code == 401


async def test_health_and_docs_need_no_token(client: AsyncTestClient[Recordline]) -> None:
    for path in ("/healthz", "/readyz", "/docs/openapi.json"):
        assert (await client.get(path)).status_code == 200, path


async def test_any_of_several_read_audiences_is_accepted_and_no_other(google: FakeGoogle) -> None:
    # Cloud Monitoring's uptime check mints its token for the URL it probes (the service's
    # own URL), so Terraform gives the service that audience besides the read audience.
    probe = "https://recordline-123.europe-west1.run.app"
    settings = Settings.load(
        {
            "RECORDLINE_STORE": "memory:",
            "RECORDLINE_PUSH_TOKEN": "a-long-enough-push-secret",
            "RECORDLINE_READ_AUDIENCE": f"{READ_AUDIENCE}, {probe}",
            "RECORDLINE_READ_PRINCIPALS": ANALYST,
            "RECORDLINE_OIDC_CERTS_URL": google.certs_url,
        }
    )
    async with AsyncTestClient(create_app(settings)) as client:
        for audience, expected in ((READ_AUDIENCE, 200), (probe, 200), (f"{probe}/v1", 401)):
            token = google.mint(aud=audience, email=ANALYST)
            response = await client.get("/v1/records", headers=bearer(token))
            assert response.status_code == expected, audience
