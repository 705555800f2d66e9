"""Behind Cloud Run, the caller is whom Cloud Run's invoker check verified, and nobody else.

Cloud Run checks `X-Serverless-Authorization` when a request carries it, and then
forwards `Authorization` exactly as the caller wrote it; a token it verified
reaches the service with its signature replaced (`SIGNATURE_REMOVED_BY_GOOGLE`).
So any principal allowed to invoke the service could send its own token to Cloud
Run and a forged, "stripped" one beside it: each case here is that attack, or a
token no Google key ever signed, and each is refused.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

import pytest
from litestar.testing import AsyncTestClient

from app.asgi import create_app
from app.http.head import Recordline
from app.settings import Settings
from tests.auth.fake_google import PUSH_AUDIENCE, PUSHER, READ_AUDIENCE, FakeGoogle
from tests.conftest import envelope

READER = "reader@example.org"
OPERATOR = "oncall@example.org"
RECORD = {"id": "1", "data": "Ejemplo de datos"}


def cloud_run_settings(google: FakeGoogle, *, trust: bool = True) -> Settings:
    return Settings.load(
        {
            "RECORDLINE_STORE": "memory:",
            "RECORDLINE_PUSH_AUDIENCE": PUSH_AUDIENCE,
            "RECORDLINE_PUSH_SERVICE_ACCOUNTS": PUSHER,
            "RECORDLINE_READ_AUDIENCE": READ_AUDIENCE,
            "RECORDLINE_READ_PRINCIPALS": READER,
            "RECORDLINE_OPERATOR_PRINCIPALS": OPERATOR,
            "RECORDLINE_OIDC_CERTS_URL": google.certs_url,
            "RECORDLINE_TRUST_CLOUD_RUN_IAM": "true" if trust else "false",
        }
    )


@pytest.fixture
async def client(google: FakeGoogle) -> AsyncIterator[AsyncTestClient[Recordline]]:
    async with AsyncTestClient(create_app(cloud_run_settings(google))) as client:
        yield client


def stripped(google: FakeGoogle, **claims: object) -> str:
    """A token as Cloud Run forwards one it verified; made up here, as an attacker would."""
    return google.strip_signature(google.mint(**claims))


def as_forwarded(
    *, serverless: str | None = None, authorization: str | None = None
) -> dict[str, str]:
    headers = {}
    if serverless is not None:
        headers["X-Serverless-Authorization"] = f"Bearer {serverless}"
    if authorization is not None:
        headers["Authorization"] = f"Bearer {authorization}"
    return headers


@pytest.mark.slow
async def test_a_forged_pusher_beside_a_readers_verified_token_is_refused(
    google: FakeGoogle, client: AsyncTestClient[Recordline]
) -> None:
    # The reader's own token passed Cloud Run's check in X-Serverless-Authorization;
    # Authorization claims the push account, its signature "removed by Google".
    reader = stripped(google, aud=READ_AUDIENCE, email=READER)
    forged = stripped(google, email=PUSHER)
    response = await client.post(
        "/pubsub/push",
        json=envelope(RECORD, message_id="m-forged"),
        headers=as_forwarded(serverless=reader, authorization=forged),
    )

    assert response.status_code == 401
    assert response.headers["www-authenticate"].endswith('error="invalid_token"')
    message = await client.get("/v1/messages/m-forged", headers=as_forwarded(serverless=reader))
    assert message.status_code == 404


async def test_a_forged_operator_beside_a_readers_verified_token_cannot_replay(
    google: FakeGoogle, client: AsyncTestClient[Recordline]
) -> None:
    reader = stripped(google, aud=READ_AUDIENCE, email=READER)
    operator = stripped(google, aud=READ_AUDIENCE, email=OPERATOR)
    body = {"messages": [{"message_id": "m-r", "publish_time": "2024-04-27T12:00:01Z", "data": ""}]}
    forged = as_forwarded(serverless=reader, authorization=operator)

    assert (await client.post("/v1/replay", json=body, headers=forged)).status_code == 401
    # The reader, named by the header Cloud Run verified, reads and may not replay.
    own = as_forwarded(serverless=reader)
    assert (await client.get("/v1/records", headers=own)).status_code == 200
    assert (await client.post("/v1/replay", json=body, headers=own)).status_code == 403
    # The same token in both headers is one caller, and the one Cloud Run checked.
    same = as_forwarded(serverless=reader, authorization=reader)
    assert (await client.get("/v1/records", headers=same)).status_code == 200


async def test_the_identity_cloud_run_verified_is_the_caller(
    google: FakeGoogle, client: AsyncTestClient[Recordline]
) -> None:
    pusher = stripped(google, email=PUSHER)
    for n, headers in enumerate(
        (as_forwarded(serverless=pusher), as_forwarded(authorization=pusher))
    ):
        response = await client.post(
            "/pubsub/push", json=envelope(RECORD, message_id=f"m-{n}"), headers=headers
        )
        assert response.status_code == 204, headers


async def test_without_the_trust_setting_a_stripped_token_proves_nothing_in_either_header(
    google: FakeGoogle,
) -> None:
    settings = cloud_run_settings(google, trust=False)
    pusher = stripped(google, email=PUSHER)
    async with AsyncTestClient(create_app(settings)) as client:
        for headers in (
            as_forwarded(serverless=pusher),
            as_forwarded(authorization=pusher),
            as_forwarded(serverless=pusher, authorization=pusher),
        ):
            response = await client.post("/pubsub/push", json=envelope(RECORD), headers=headers)
            assert response.status_code == 401, headers
        # A token with its signature is verified as ever; X-Serverless-Authorization
        # is Cloud Run's, and means nothing to a service that does not trust it.
        signed = google.mint()
        ok = await client.post(
            "/pubsub/push", json=envelope(RECORD), headers=as_forwarded(authorization=signed)
        )
        assert ok.status_code == 204


NOW = int(time.time())
LIFETIMES = {
    "ten billion seconds": (NOW, NOW + 10**10),
    "a day": (NOW, NOW + 86_400),
    "exp infinite": (NOW, "1e400"),
    "iat minus infinity": ("-1e400", NOW + 3600),
}


def claims_text(issued: object, expires: object) -> str:
    claims = {
        "iss": "https://accounts.google.com",
        "aud": PUSH_AUDIENCE,
        "sub": "111",
        "email": PUSHER,
        "email_verified": True,
    }
    # Written by hand: json.dumps cannot write 1e400, the literal an attacker sends.
    return json.dumps(claims)[:-1] + f', "iat": {issued}, "exp": {expires}}}'


@pytest.mark.slow
@pytest.mark.parametrize("case", list(LIFETIMES))
@pytest.mark.parametrize("signature", ["signed", "stripped"])
async def test_a_token_living_past_googles_hour_is_refused(
    google: FakeGoogle, client: AsyncTestClient[Recordline], case: str, signature: str
) -> None:
    token = google.mint_text(claims_text(*LIFETIMES[case]))
    if signature == "stripped":
        token = google.strip_signature(token)
    response = await client.post(
        "/pubsub/push", json=envelope(RECORD), headers=as_forwarded(authorization=token)
    )

    assert response.status_code == 401
