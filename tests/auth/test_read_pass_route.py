"""Read passes through the real app: a reader's token gets one, the pass alone then
reads as a reader (masked, `private`), and every pass that is not this service's,
or not valid now, is a 401, logged without the cookie."""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from litestar.testing import TestClient

from app.asgi import create_app
from app.auth.passes import COOKIE_NAME, MAX_VALUE_CHARS, ReadPasses, pass_value
from app.http.head import Recordline
from app.settings import Settings
from tests.auth.fake_google import PUSH_AUDIENCE, PUSHER, READ_AUDIENCE, FakeGoogle
from tests.fuzz.budget import EXAMPLES
from tests.test_streams import push_body

ANALYST = "analyst@example.org"
OPERATOR = "oncall@example.org"
STRANGER = "stranger@example.org"
KEY = bytes(range(16))
URL = "https://records.example.com"
PASSES = {
    "RECORDLINE_READ_PASS_KEYS": f"k1:{base64.urlsafe_b64encode(KEY).decode()}",
    "RECORDLINE_READ_PASS_URL": URL,
}
PAGE = "/v1/records"
STREAM = "/v1/streams/records"


def serve(google: FakeGoogle, **env: str) -> TestClient[Recordline]:
    settings = Settings.load(
        {
            "RECORDLINE_STORE": "memory:",
            "RECORDLINE_PUSH_AUDIENCE": PUSH_AUDIENCE,
            "RECORDLINE_PUSH_SERVICE_ACCOUNTS": PUSHER,
            "RECORDLINE_READ_AUDIENCE": READ_AUDIENCE,
            "RECORDLINE_READ_PRINCIPALS": ANALYST,
            "RECORDLINE_OPERATOR_PRINCIPALS": OPERATOR,
            "RECORDLINE_OIDC_CERTS_URL": google.certs_url,
            "RECORDLINE_MASK_FIELDS": "secret",
            **env,
        }
    )
    return TestClient(create_app(settings))


@pytest.fixture(scope="module")
def google() -> Iterator[FakeGoogle]:
    fake = FakeGoogle().start()
    yield fake
    fake.stop()


@pytest.fixture
def client(google: FakeGoogle) -> Iterator[TestClient[Recordline]]:
    with serve(google, **PASSES) as client:
        for n in range(3):
            body = push_body(n, data={"secret": f"s-{n}", "n": n})
            answer = client.post("/pubsub/push", json=body, headers=token(google, PUSHER))
            assert answer.status_code == 204, answer.text
        yield client


def token(google: FakeGoogle, email: str) -> dict[str, str]:
    audience = PUSH_AUDIENCE if email == PUSHER else READ_AUDIENCE
    return {"Authorization": f"Bearer {google.mint(aud=audience, email=email)}"}


def get_pass(client: TestClient[Recordline], headers: dict[str, str]) -> Any:
    answer = client.post("/v1/read-pass", headers=headers)
    # The client keeps no cookie: each request here says what it carries.
    client.cookies.clear()
    return answer


def with_pass(cookie: str) -> dict[str, str]:
    return {"Cookie": f"theme=dark; {cookie}"}


def test_a_readers_token_gets_a_pass_and_the_pass_alone_reads(
    client: TestClient[Recordline], google: FakeGoogle
) -> None:
    answer = get_pass(client, token(google, ANALYST))
    assert answer.status_code == 200, answer.text
    issued = answer.json()
    assert issued["url_prefix"] == f"{URL}/v1/"
    assert issued["cookie"].startswith(f"{COOKIE_NAME}=URLPrefix=")
    expires = datetime.fromisoformat(issued["expires"].replace("Z", "+00:00"))
    assert abs(expires.timestamp() - (time.time() + 600)) <= 2
    assert answer.headers["cache-control"] == "no-store"
    assert answer.headers["set-cookie"] == (
        f"{issued['cookie']}; Path=/v1/; Max-Age=600; Secure; HttpOnly; SameSite=Lax"
    )
    for path in (PAGE, STREAM, "/v1/records/r-1", "/v1/rejections", "/v1/producers"):
        read = client.get(path, headers=with_pass(issued["cookie"]))
        assert read.status_code in (200, 404), (path, read.text)  # producers: no ledger
    page = client.get(PAGE, params={"limit": 2}, headers=with_pass(issued["cookie"]))
    assert [r["message_id"] for r in page.json()["records"]] == ["m-0", "m-1"]


def test_an_answer_to_a_pass_is_private_as_one_to_a_token(
    client: TestClient[Recordline], google: FakeGoogle
) -> None:
    cookie = get_pass(client, token(google, ANALYST)).json()["cookie"]
    for path, params in ((PAGE, {"limit": 2}), (STREAM, {})):
        by_pass = client.get(path, params=params, headers=with_pass(cookie))
        by_token = client.get(path, params=params, headers=token(google, ANALYST))
        assert by_pass.status_code == by_token.status_code == 200
        # Cloud CDN keeps it for other pass holders whatever it says; no other cache may.
        assert "private" in by_pass.headers["cache-control"], path
        assert "private" in by_token.headers["cache-control"], path
        assert by_pass.content == by_token.content


def test_a_pass_reads_as_a_reader_whoever_asked_for_it(
    client: TestClient[Recordline], google: FakeGoogle
) -> None:
    operator = token(google, OPERATOR)
    cookie = get_pass(client, operator).json()["cookie"]
    by_pass = client.get(PAGE, headers=with_pass(cookie)).json()["records"]
    by_operator = client.get(PAGE, headers=operator).json()["records"]
    assert [r["data"]["secret"] for r in by_pass] == ["[masked]"] * 3
    assert [r["data"]["secret"] for r in by_operator] == ["s-0", "s-1", "s-2"]
    # A pass never replays.
    assert (
        client.post("/v1/replay", json={"messages": []}, headers=with_pass(cookie)).status_code
        == 401
    )


def test_a_pass_cannot_mint_a_pass(client: TestClient[Recordline], google: FakeGoogle) -> None:
    cookie = get_pass(client, token(google, ANALYST)).json()["cookie"]
    again = get_pass(client, with_pass(cookie))
    assert again.status_code == 401
    assert again.headers["www-authenticate"].startswith("Bearer")
    assert "set-cookie" not in again.headers


def test_a_pass_opens_no_push_console_or_replay(
    client: TestClient[Recordline], google: FakeGoogle
) -> None:
    cookie = get_pass(client, token(google, OPERATOR)).json()["cookie"]
    for method, path, body in (
        ("POST", "/pubsub/push", push_body(9)),
        ("GET", "/console", None),
        ("GET", "/console/records", None),
        ("POST", "/v1/replay", {"messages": []}),
    ):
        answer = client.request(method, path, json=body, headers=with_pass(cookie))
        assert answer.status_code == 401, (path, answer.text)
    # Nothing was written by the push it tried.
    page = client.get(PAGE, headers=token(google, ANALYST)).json()["records"]
    assert [r["message_id"] for r in page] == ["m-0", "m-1", "m-2"]


@pytest.mark.slow
def test_only_a_reader_gets_a_pass(client: TestClient[Recordline], google: FakeGoogle) -> None:
    assert get_pass(client, {}).status_code == 401
    assert get_pass(client, token(google, STRANGER)).status_code == 403


def test_a_request_with_a_token_is_judged_by_its_token(
    client: TestClient[Recordline], google: FakeGoogle
) -> None:
    cookie = get_pass(client, token(google, ANALYST)).json()["cookie"]
    stranger = client.get(PAGE, headers={**token(google, STRANGER), **with_pass(cookie)})
    assert stranger.status_code == 403
    # A token with a bad pass beside it: the token decides.
    reader = client.get(
        PAGE, params={"limit": 2}, headers={**token(google, ANALYST), "Cookie": f"{COOKIE_NAME}=x"}
    )
    assert reader.status_code == 200
    assert "private" in reader.headers["cache-control"]


def forged(**changes: Any) -> str:
    """A pass as another issuer would make it: its key, URL, lifetime or clock."""
    key = changes.pop("keys", {"k1": KEY})
    url = changes.pop("url", URL)
    prefix = changes.pop("prefix", "/v1/")
    now = changes.pop("now", time.time())
    seconds = changes.pop("seconds", 600)
    assert not changes
    return ReadPasses(key, url, seconds).issue(prefix, now).cookie


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        # Made as the test runs, not as it is collected: a pass made then would have
        # expired by the time a long run reaches the test, and be refused for that.
        (lambda: forged(keys={"k1": bytes(16)}), "wrong signature"),
        (lambda: forged(keys={"k2": KEY}), "unknown key 'k2'"),
        (lambda: forged(now=time.time() - 601), "expired pass"),
        (lambda: forged(seconds=3600), "later than any"),
        (lambda: forged(prefix="/systems/orders/v1/"), "another URL prefix"),
        (lambda: forged(url="https://elsewhere.example.com"), "another URL prefix"),
        (lambda: forged().replace("Expires=", "Expires=9"), "wrong signature"),
        (lambda: forged() + "A" * MAX_VALUE_CHARS, "longer than"),
        (lambda: f"{COOKIE_NAME}=" + "x" * 100, "malformed"),
        (lambda: f"{COOKIE_NAME}=" + "\u00e9" * 10, "malformed"),
        (lambda: f"{forged()}; {forged()}", "2 Cloud-CDN-Cookie cookies"),
    ],
)
def test_a_pass_not_valid_here_is_401_logged_without_the_cookie(
    client: TestClient[Recordline],
    caplog: pytest.LogCaptureFixture,
    make: Callable[[], str],
    reason: str,
) -> None:
    cookie = make()
    with caplog.at_level(logging.WARNING):
        for path in (PAGE, STREAM, "/v1/records/r-1"):
            # As bytes: a header need not be ASCII.
            answer = client.get(path, headers={"Cookie": cookie.encode()})
            assert answer.status_code == 401, (path, answer.text)
            assert answer.headers["www-authenticate"] == (
                'Bearer realm="recordline", error="invalid_token"'
            )
            assert answer.json()["type"] == "/problems/unauthorized"
    said = [r.getMessage() for r in caplog.records if "read with a pass" in r.getMessage()]
    assert said
    assert all(reason in line for line in said), said
    value = cookie.partition("=")[2]
    assert all(value[:40] not in r.getMessage() for r in caplog.records)


@pytest.mark.slow
@settings(
    max_examples=EXAMPLES * 4,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    cookie=st.one_of(
        st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=200),
        st.builds(
            lambda cut, text: (lambda c: c[:cut] + text + c[cut + 1 :])(forged()),
            st.integers(0, 170),
            st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=2),
        ),
    )
)
def test_any_cookie_is_read_or_refused_never_a_server_error(
    client: TestClient[Recordline], cookie: str
) -> None:
    answer = client.get(PAGE, headers={"Cookie": cookie.encode("latin-1")})
    assert answer.status_code in (200, 401), answer.text
    if answer.status_code == 200:
        # Read only with a pass as issued (a changed character that changed nothing).
        value = pass_value([cookie])
        assert value is not None
        assert ReadPasses({"k1": KEY}, URL, 600).verify(value, "/v1/", time.time())


def test_headers_too_long_for_a_pass_are_401(client: TestClient[Recordline]) -> None:
    cookie = forged()
    answer = client.get(PAGE, headers={"Cookie": f"{cookie}; filler={'x' * 9000}"})
    assert answer.status_code == 401


def test_a_service_without_passes_says_so_and_reads_only_with_tokens(google: FakeGoogle) -> None:
    with serve(google) as client:
        refused = get_pass(client, token(google, ANALYST))
        assert refused.status_code == 403
        assert refused.json()["type"] == "/problems/read-passes-not-configured"
        # Its cookie is nothing to this service: a read without a token is refused.
        answer = client.get(PAGE, headers={"Cookie": forged()})
        assert answer.status_code == 401
        assert "error=" not in answer.headers["www-authenticate"]


def test_the_route_is_documented(client: TestClient[Recordline]) -> None:
    document = client.get("/docs/openapi.json").json()
    operation = document["paths"]["/v1/read-pass"]["post"]
    answer = operation["responses"]["200"]["content"]["application/json"]["schema"]
    schema = document["components"]["schemas"][answer["$ref"].rpartition("/")[2]]
    assert set(schema["required"]) == {"cookie", "url_prefix", "expires"}
    assert {"400", "401", "403", "503"} == set(operation["responses"]) - {"200"}
