"""Only Pub/Sub's push identity can write: every forged or misdirected token is refused."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

import pytest
from litestar.testing import AsyncTestClient

from app.asgi import create_app
from app.http.head import Recordline
from app.settings import Settings
from tests.auth.fake_google import PUSH_AUDIENCE, PUSHER, FakeGoogle, rsa_key
from tests.conftest import envelope

RECORD = {"id": "1", "data": "Ejemplo de datos"}
OTHER_PUSHER = "other-pusher@demo.iam.gserviceaccount.com"


def oidc_settings(google: FakeGoogle, **extra: str) -> Settings:
    return Settings.load(
        {
            "RECORDLINE_STORE": "memory:",
            "RECORDLINE_PUSH_AUDIENCE": PUSH_AUDIENCE,
            "RECORDLINE_PUSH_SERVICE_ACCOUNTS": f"{PUSHER}, {OTHER_PUSHER}",
            "RECORDLINE_OIDC_CERTS_URL": google.certs_url,
            **extra,
        }
    )


@pytest.fixture
async def client(google: FakeGoogle) -> AsyncIterator[AsyncTestClient[Recordline]]:
    async with AsyncTestClient(create_app(oidc_settings(google))) as client:
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


NOW = int(time.time())

# Each builds the request headers from the fake issuer.
UNAUTHENTICATED: dict[str, Callable[[FakeGoogle], dict[str, str]]] = {
    "no header": lambda g: {},
    "wrong scheme": lambda g: {"Authorization": f"Basic {g.mint()}"},
    "empty bearer": lambda g: {"Authorization": "Bearer "},
    "garbage": lambda g: bearer("not.a.token"),
    "alg none": lambda g: bearer(g.forge_none()),
    "HS256 keyed with the public key": lambda g: bearer(g.forge_hs256()),
    "unknown kid": lambda g: bearer(g.mint(kid="k-unknown", key=rsa_key("k1"))),
    "wrong key": lambda g: bearer(g.mint(key=rsa_key("attacker"))),
    "expired": lambda g: bearer(g.mint(iat=NOW - 7200, exp=NOW - 3600)),
    "iat in the future": lambda g: bearer(g.mint(iat=NOW + 3600, exp=NOW + 7200)),
    "no exp": lambda g: bearer(g.mint(exp=None)),
    "wrong aud": lambda g: bearer(g.mint(aud=PUSH_AUDIENCE + "/")),
    "wrong iss": lambda g: bearer(g.mint(iss="https://accounts.example.com")),
    "email_verified false": lambda g: bearer(g.mint(email_verified=False)),
    "email_verified as a string": lambda g: bearer(g.mint(email_verified="true")),
    "no email": lambda g: bearer(g.mint(email=None)),
    "valid token for a different service": lambda g: bearer(
        g.mint(aud="https://billing.example.com/pubsub/push")
    ),
    "signature removed by Google": lambda g: bearer(g.strip_signature(g.mint())),
    "oversized": lambda g: bearer("a" * 10_000),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(UNAUTHENTICATED))
async def test_forged_token_is_refused_with_401(
    case: str,
    google: FakeGoogle,
    client: AsyncTestClient[Recordline],
    caplog: pytest.LogCaptureFixture,
) -> None:
    headers = UNAUTHENTICATED[case](google)
    with caplog.at_level(logging.WARNING, logger="app.auth"):
        response = await client.post("/pubsub/push", json=envelope(RECORD), headers=headers)

    assert response.status_code == 401, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.headers["www-authenticate"].startswith('Bearer realm="pubsub-push"')
    # The answer tells a client what to bring, not which check failed; a token that
    # was sent and did not verify is RFC 6750's `invalid_token`, none sent is not.
    assert response.json()["type"] == "/problems/unauthorized"
    assert response.json()["detail"] == "A valid bearer token is required."
    sent = case not in {"no header", "wrong scheme", "empty bearer"}
    invalid = ', error="invalid_token"' if sent else ""
    assert response.headers["www-authenticate"] == f'Bearer realm="pubsub-push"{invalid}'
    [logged] = [r for r in caplog.records if r.name.startswith("app.auth")]
    assert logged.levelno == logging.WARNING
    assert "401" in logged.getMessage()
    if "Authorization" in headers and len(headers["Authorization"]) > 12:
        assert headers["Authorization"].split(" ", 1)[1] not in logged.getMessage()
    # Nothing was stored.
    assert (await client.get("/v1/messages/m-1")).status_code == 404


@pytest.mark.slow
async def test_a_token_for_another_service_account_is_refused_with_403(
    google: FakeGoogle, client: AsyncTestClient[Recordline], caplog: pytest.LogCaptureFixture
) -> None:
    token = google.mint(email="intruder@demo.iam.gserviceaccount.com")
    with caplog.at_level(logging.WARNING, logger="app.auth"):
        response = await client.post("/pubsub/push", json=envelope(RECORD), headers=bearer(token))

    assert response.status_code == 403
    assert response.headers["content-type"].startswith("application/problem+json")
    assert "intruder" not in response.text
    assert "intruder@demo.iam.gserviceaccount.com is not in" in caplog.text
    assert token not in caplog.text


async def test_a_valid_token_pushes(
    google: FakeGoogle, client: AsyncTestClient[Recordline]
) -> None:
    response = await client.post(
        "/pubsub/push", json=envelope(RECORD), headers=bearer(google.mint())
    )

    assert response.status_code == 204
    assert (await client.get("/v1/messages/m-1")).json()["status"] == "stored"


@pytest.mark.slow
async def test_certs_are_fetched_once_across_many_pushes(
    google: FakeGoogle, client: AsyncTestClient[Recordline]
) -> None:
    # Several distinct tokens (two accounts, re-minted), each pushed many times.
    now = int(time.time())
    tokens = [
        google.mint(),
        google.mint(iat=now - 1, exp=now + 3599),
        google.mint(email=PUSHER.upper()),
    ]
    for n in range(60):
        headers = bearer(tokens[n % len(tokens)])
        response = await client.post(
            "/pubsub/push", json=envelope(RECORD, message_id=f"m-{n}"), headers=headers
        )
        assert response.status_code == 204

    assert google.requests == 1


async def test_refused_token_does_not_poison_the_cache_for_a_valid_one(
    google: FakeGoogle, client: AsyncTestClient[Recordline]
) -> None:
    for n in range(20):
        bogus = bearer(google.mint(kid=f"bogus-{n}", key=rsa_key("attacker")))
        assert (
            await client.post("/pubsub/push", json=envelope(RECORD), headers=bogus)
        ).status_code == 401

    response = await client.post(
        "/pubsub/push", json=envelope(RECORD), headers=bearer(google.mint())
    )
    assert response.status_code == 204
    # The first bogus kid could refetch; the other 19 fall within the rate limit.
    assert google.requests <= 2


async def test_unreachable_certs_mean_retry_later_not_unauthorized(google: FakeGoogle) -> None:
    google.status = 500
    async with AsyncTestClient(create_app(oidc_settings(google))) as client:
        response = await client.post(
            "/pubsub/push", json=envelope(RECORD), headers=bearer(google.mint())
        )

    # Pub/Sub redelivers a 503; a 401 would be the same nack, but it would blame the sender.
    assert response.status_code == 503
    assert "retry-after" in response.headers
    assert response.json()["type"] == "/problems/token-verification-unavailable"


async def test_health_stays_open(client: AsyncTestClient[Recordline]) -> None:
    assert (await client.get("/healthz")).status_code == 200
    assert (await client.get("/readyz")).status_code == 200


async def test_behind_cloud_run_iam_a_stripped_token_is_judged_by_its_claims(
    google: FakeGoogle,
) -> None:
    settings = oidc_settings(google, RECORDLINE_TRUST_CLOUD_RUN_IAM="true")
    async with AsyncTestClient(create_app(settings)) as client:
        stripped = google.strip_signature(google.mint())
        response = await client.post(
            "/pubsub/push", json=envelope(RECORD), headers=bearer(stripped)
        )
        assert response.status_code == 204
        # The claims still decide: another audience, an expired token, another sender.
        refused = {
            "audience": google.mint(aud="https://billing.example.com/pubsub/push"),
            "expired": google.mint(exp=NOW - 3600, iat=NOW - 7200),
            "sender": google.mint(email="mallory@evil.example.com"),
        }
        for case, token in refused.items():
            answer = await client.post(
                "/pubsub/push",
                json=envelope(RECORD, message_id=f"m-{case}"),
                headers=bearer(google.strip_signature(token)),
            )
            assert answer.status_code in (401, 403), case
        # A token with a real signature is still verified against the keys.
        forged = google.mint(key=rsa_key("attacker"))
        answer = await client.post("/pubsub/push", json=envelope(RECORD), headers=bearer(forged))
        assert answer.status_code == 401


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        ({"certs": "none here"}, "neither a JWKS"),
        ({"keys": [{"kty": "EC", "kid": "e1", "crv": "P-256"}]}, "no usable RS256 signing key"),
        ([1, 2, 3], "neither a JWKS"),
    ],
    ids=["neither-format", "no-rsa-key", "not-an-object"],
)
async def test_a_document_with_no_usable_key_fails_readiness_and_pushes_wait(
    google: FakeGoogle, document: object, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    google.document = document
    async with AsyncTestClient(create_app(oidc_settings(google))) as client:
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        detail = ready.json()["detail"]
        assert google.certs_url in detail
        assert reason in detail
        push = await client.post(
            "/pubsub/push", json=envelope(RECORD), headers=bearer(google.mint())
        )
        assert push.status_code == 503
    logged = [r.getMessage() for r in caplog.records]
    assert any(google.certs_url in line and reason in line for line in logged), logged


@pytest.mark.parametrize("window", ["expired", "not yet valid"])
async def test_a_certificate_outside_its_validity_window_is_not_used(window: str) -> None:
    # Only the v1 format carries certificates, and so a validity window.
    google = FakeGoogle("x509").start()
    now = datetime.now(UTC)
    if window == "expired":
        google.valid_from, google.valid_until = now - timedelta(days=30), now - timedelta(days=1)
    else:
        google.valid_from, google.valid_until = now + timedelta(days=1), now + timedelta(days=30)
    try:
        async with AsyncTestClient(create_app(oidc_settings(google))) as client:
            ready = await client.get("/readyz")
            assert ready.status_code == 503
            assert "no usable RS256 signing key" in ready.json()["detail"]
            push = await client.post(
                "/pubsub/push", json=envelope(RECORD), headers=bearer(google.mint())
            )
            assert push.status_code == 503
    finally:
        google.stop()
