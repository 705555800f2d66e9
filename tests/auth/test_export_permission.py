"""Exporting as a permission of its own (RECORDLINE_EXPORT_PRINCIPALS): unset, every
reader exports, as before; set, a reader not named (nor an operator) is refused 403
`export-forbidden` on every export path and method, with a token or a read pass, and
nothing of the export is sent; the console offers no export to such a reader."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from typing import Any

import pytest
from litestar.routes import HTTPRoute
from litestar.testing import TestClient

from app.asgi import create_app
from app.http.head import Recordline
from app.query.streams import STREAMS
from app.routes.export import EXPORT_PATH
from app.settings import Settings, SettingsError
from tests.auth.fake_google import PUSH_AUDIENCE, PUSHER, READ_AUDIENCE, FakeGoogle
from tests.test_streams import push_body

ANALYST = "analyst@example.org"
EXPORTER = "exporter@example.org"
OPERATOR = "oncall@example.org"
STRANGER = "stranger@example.org"
KEY = base64.urlsafe_b64encode(bytes(range(16))).decode()
PASSES = {
    "RECORDLINE_READ_PASS_KEYS": f"k1:{KEY}",
    "RECORDLINE_READ_PASS_URL": "https://records.example.com",
}
FORBIDDEN = "/problems/export-forbidden"


def settings(google: FakeGoogle, **env: str) -> Settings:
    return Settings.load(
        {
            "RECORDLINE_STORE": "memory:",
            "RECORDLINE_PUSH_AUDIENCE": PUSH_AUDIENCE,
            "RECORDLINE_PUSH_SERVICE_ACCOUNTS": PUSHER,
            "RECORDLINE_READ_AUDIENCE": READ_AUDIENCE,
            "RECORDLINE_READ_PRINCIPALS": ANALYST,
            "RECORDLINE_OPERATOR_PRINCIPALS": OPERATOR,
            "RECORDLINE_OIDC_CERTS_URL": google.certs_url,
            **PASSES,
            **env,
        }
    )


@pytest.fixture(scope="module")
def google() -> Iterator[FakeGoogle]:
    fake = FakeGoogle().start()
    yield fake
    fake.stop()


def serve(google: FakeGoogle, **env: str) -> Iterator[TestClient[Recordline]]:
    with TestClient(create_app(settings(google, **env))) as client:
        for n in range(3):
            body = push_body(n, data={"n": n})
            answer = client.post("/pubsub/push", json=body, headers=token(google, PUSHER))
            assert answer.status_code == 204, answer.text
        yield client


@pytest.fixture
def restricted(google: FakeGoogle) -> Iterator[TestClient[Recordline]]:
    yield from serve(google, RECORDLINE_EXPORT_PRINCIPALS=EXPORTER)


@pytest.fixture
def unrestricted(google: FakeGoogle) -> Iterator[TestClient[Recordline]]:
    yield from serve(google)


def token(google: FakeGoogle, email: str) -> dict[str, str]:
    audience = PUSH_AUDIENCE if email == PUSHER else READ_AUDIENCE
    return {"Authorization": f"Bearer {google.mint(aud=audience, email=email)}"}


def read_pass(client: TestClient[Recordline], google: FakeGoogle, email: str) -> dict[str, str]:
    answer = client.post("/v1/read-pass", headers=token(google, email))
    client.cookies.clear()
    assert answer.status_code == 200, answer.text
    return {"Cookie": answer.json()["cookie"]}


def export_urls(app: Recordline) -> list[tuple[str, str]]:
    """Every export route of `app`, each list it exports, and each method it answers
    (HEAD wherever GET is): read from the app, so an export route added later is here."""
    routes = [
        r
        for r in app.litestar.routes
        if isinstance(r, HTTPRoute) and r.path.startswith(EXPORT_PATH)
    ]
    assert routes
    found: list[tuple[str, str]] = []
    for route in routes:
        methods = route.methods - {"OPTIONS"}
        if "GET" in methods:
            methods |= {"HEAD"}
        for name in STREAMS:
            url = re.sub(r"\{[^}]+\}", name, route.path)
            found += [(str(method), url) for method in sorted(methods)]
    return found


def assert_refused(answer: Any, what: str) -> None:
    assert answer.status_code == 403, (what, answer.status_code, answer.text)
    assert "content-disposition" not in answer.headers, what
    assert "recordline-export-max-rows" not in answer.headers, what
    assert answer.headers["content-type"].startswith("application/problem+json"), what
    if answer.request.method != "HEAD":
        problem = answer.json()
        assert problem["type"] == FORBIDDEN, what
        assert "export" in problem["detail"], what
        assert "m-0" not in answer.text, what


def test_a_reader_not_named_is_refused_every_export_with_a_token_or_a_pass(
    restricted: TestClient[Recordline], google: FakeGoogle
) -> None:
    urls = export_urls(create_app(settings(google, RECORDLINE_EXPORT_PRINCIPALS=EXPORTER)))
    assert {method for method, _ in urls} >= {"GET", "HEAD"}
    by_pass = read_pass(restricted, google, ANALYST)
    for method, url in urls:
        for kind, headers in (("token", token(google, ANALYST)), ("pass", by_pass)):
            answer = restricted.request(method, url, params={"format": "jsonl"}, headers=headers)
            assert_refused(answer, f"{method} {url} with a {kind}")
    # A reader still: the same token and pass read the pages.
    for headers in (token(google, ANALYST), by_pass):
        page = restricted.get("/v1/records", headers=headers)
        assert page.status_code == 200, page.text
        assert len(page.json()["records"]) == 3


def test_a_named_exporter_and_an_operator_export_with_their_tokens(
    restricted: TestClient[Recordline], google: FakeGoogle
) -> None:
    for who in (EXPORTER, OPERATOR):
        answer = restricted.get(
            "/v1/export/records", params={"format": "jsonl"}, headers=token(google, who)
        )
        assert answer.status_code == 200, (who, answer.text)
        assert answer.text.count('"message_id"') == 3, who
        assert answer.headers["content-disposition"].startswith("attachment")
        head = restricted.head("/v1/export/records", headers=token(google, who))
        assert head.status_code == 200, who
    # An exporter reads what it exports.
    page = restricted.get("/v1/records", headers=token(google, EXPORTER))
    assert page.status_code == 200, page.text
    # A pass names no one: an exporter's pass exports nothing.
    assert_refused(
        restricted.get("/v1/export/records", headers=read_pass(restricted, google, EXPORTER)),
        "an exporter's pass",
    )


def test_who_may_not_read_is_refused_as_before(
    restricted: TestClient[Recordline], google: FakeGoogle
) -> None:
    stranger = restricted.get("/v1/export/records", headers=token(google, STRANGER))
    assert stranger.status_code == 403
    assert stranger.json()["type"] == "/problems/forbidden"
    nobody = restricted.get("/v1/export/records")
    assert nobody.status_code == 401
    assert nobody.headers["www-authenticate"].startswith("Bearer")


def test_unset_every_reader_exports_as_before(
    unrestricted: TestClient[Recordline], google: FakeGoogle
) -> None:
    by_pass = read_pass(unrestricted, google, ANALYST)
    for headers in (token(google, ANALYST), by_pass):
        answer = unrestricted.get("/v1/export/records", params={"format": "jsonl"}, headers=headers)
        assert answer.status_code == 200, answer.text
        assert answer.text.count('"message_id"') == 3


def test_the_console_offers_an_export_to_exporters_alone(
    restricted: TestClient[Recordline], unrestricted: TestClient[Recordline], google: FakeGoogle
) -> None:
    def page(client: TestClient[Recordline], who: str) -> str:
        answer = client.get("/console/records", headers=token(google, who))
        assert answer.status_code == 200, answer.text
        return answer.text

    assert 'id="export"' not in page(restricted, ANALYST)
    assert "Export CSV" not in page(restricted, ANALYST)
    assert 'id="export"' in page(restricted, EXPORTER)
    assert 'id="export"' in page(restricted, OPERATOR)
    assert 'id="export"' in page(unrestricted, ANALYST)


@pytest.mark.parametrize(
    ("env", "said"),
    [
        ({"RECORDLINE_EXPORT_PRINCIPALS": "domain:"}, "RECORDLINE_EXPORT_PRINCIPALS="),
        (
            {
                "RECORDLINE_EXPORT_PRINCIPALS": EXPORTER,
                "RECORDLINE_READ_AUDIENCE": "",
                "RECORDLINE_READ_PRINCIPALS": "",
                "RECORDLINE_OPERATOR_PRINCIPALS": "",
                "RECORDLINE_READ_PASS_KEYS": "",
                "RECORDLINE_READ_PASS_URL": "",
            },
            "needs RECORDLINE_READ_AUDIENCE",
        ),
    ],
)
def test_exporters_that_cannot_be_checked_refuse_to_start(
    google: FakeGoogle, env: dict[str, str], said: str
) -> None:
    with pytest.raises(SettingsError, match=re.escape(said)) as refused:
        create_app(settings(google, **env))
    assert refused.value.var == "RECORDLINE_EXPORT_PRINCIPALS"


@pytest.mark.parametrize(
    "path",
    [
        "/v1/export/records/",
        "/v1//export/records",
        "/v1/export//records",
        "/v1/%65xport/records",
        "/v1/export/%72ecords",
        "/v1/export/records%2F",
        "/v1/export/records;format=jsonl",
        "/v1/./export/records",
        "/v1/x/../export/records",
        "/v1/export/records?format=csv&format=jsonl",
    ],
)
def test_no_spelling_of_an_exports_path_lets_a_reader_not_named_export(
    restricted: TestClient[Recordline], google: FakeGoogle, path: str
) -> None:
    for method in ("GET", "HEAD"):
        answer = restricted.request(method, path, headers=token(google, ANALYST))
        assert_refused(answer, f"{method} {path}")


@pytest.mark.parametrize("path", ["//v1/export/records", "/V1/EXPORT/RECORDS"])
def test_a_path_no_export_is_served_at_is_not_found(
    restricted: TestClient[Recordline], google: FakeGoogle, path: str
) -> None:
    answer = restricted.get(path, headers=token(google, ANALYST))
    assert answer.status_code == 404, answer.text
    assert "m-0" not in answer.text
