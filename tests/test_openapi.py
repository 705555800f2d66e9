"""The OpenAPI document says what the service answers: every error status of every
route is documented, and each answer a request gets matches the documented schema.
Its page, `/docs`, loads from files the package ships."""

from __future__ import annotations

import re
import shutil
import subprocess
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jsonschema_rs
import pytest
from litestar import Litestar
from litestar.testing import TestClient

from app.asgi import create_app
from app.docs import ASSETS
from app.records import MAX_ID_LENGTH
from app.settings import Settings
from app.store.duckdb.store import DuckDBStore
from tests.auth.fake_google import PUSH_AUDIENCE, PUSHER, READ_AUDIENCE, FakeGoogle
from tests.conftest import envelope
from tests.fakes import FaultyStore

ROOT = Path(__file__).resolve().parent.parent
LIMIT = 4096
ANALYST = "analyst@example.org"
OPERATOR = "oncall@example.org"
STRANGER = "stranger@example.org"
REPLAY = {
    "messages": [{"message_id": "m-r", "publish_time": "2024-04-27T12:00:01Z", "data": "e30="}]
}


@dataclass
class Service:
    client: TestClient[Litestar]
    store: FaultyStore
    google: FakeGoogle
    document: dict[str, Any] = field(default_factory=dict)

    def token(self, email: str, audience: str = READ_AUDIENCE) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.google.mint(aud=audience, email=email)}"}


@pytest.fixture
def service() -> Iterator[Service]:
    yield from serve(FakeGoogle().start())


@pytest.fixture
def unverifiable() -> Iterator[Service]:
    """The service while Google's token-signing keys cannot be fetched."""
    google = FakeGoogle().start()
    google.status = 500
    yield from serve(google)


def serve(google: FakeGoogle) -> Iterator[Service]:
    settings = Settings.load(
        {
            "RECORDLINE_STORE": "memory:",
            "RECORDLINE_MAX_BODY_BYTES": str(LIMIT),
            "RECORDLINE_RETENTION_DAYS": "1",
            "RECORDLINE_PUSH_AUDIENCE": PUSH_AUDIENCE,
            "RECORDLINE_PUSH_SERVICE_ACCOUNTS": PUSHER,
            "RECORDLINE_READ_AUDIENCE": READ_AUDIENCE,
            "RECORDLINE_READ_PRINCIPALS": ANALYST,
            "RECORDLINE_OPERATOR_PRINCIPALS": OPERATOR,
            "RECORDLINE_OIDC_CERTS_URL": google.certs_url,
        }
    )
    store = FaultyStore(DuckDBStore(":memory:"))
    try:
        with TestClient(create_app(settings, store=store)) as client:
            document = client.get("/docs/openapi.json").json()
            yield Service(client, store, google, document)
    finally:
        google.stop()


def pusher(s: Service) -> dict[str, str]:
    return s.token(PUSHER, PUSH_AUDIENCE)


def failing(s: Service) -> None:
    s.store.failing = True


def failing_reads(s: Service) -> None:
    s.store.failing_reads = True


Request = Callable[[Service], httpx.Response]
# (route, method, status) -> a request that gets that status, and what to do first.
CASES: dict[tuple[str, str, int], tuple[Request, Callable[[Service], None] | None]] = {}


def case(route: str, method: str, status: int, setup: Callable[[Service], None] | None = None):  # type: ignore[no-untyped-def]
    def register(request: Request) -> Request:
        CASES[(route, method, status)] = (request, setup)
        return request

    return register


# -- push ----------------------------------------------------------------------
P = "/pubsub/push"
case(P, "post", 400)(lambda s: s.client.post(P, content=b"{", headers=pusher(s)))
case(P, "post", 401)(lambda s: s.client.post(P, json=envelope({"id": "1"})))
case(P, "post", 403)(
    lambda s: s.client.post(P, json=envelope({"id": "1"}), headers=s.token(STRANGER, PUSH_AUDIENCE))
)
case(P, "post", 413)(lambda s: s.client.post(P, content=b"x" * (LIMIT + 1), headers=pusher(s)))
case(P, "post", 503, failing)(
    lambda s: s.client.post(P, json=envelope({"id": "1"}), headers=pusher(s))
)
# -- replay --------------------------------------------------------------------
R = "/v1/replay"
case(R, "post", 400)(lambda s: s.client.post(R, json={"messages": []}, headers=s.token(OPERATOR)))
case(R, "post", 401)(lambda s: s.client.post(R, json=REPLAY))
case(R, "post", 403)(lambda s: s.client.post(R, json=REPLAY, headers=s.token(ANALYST)))
case(R, "post", 413)(
    lambda s: s.client.post(R, content=b"x" * (LIMIT + 1), headers=s.token(OPERATOR))
)
case(R, "post", 503, failing_reads)(
    lambda s: s.client.post(R, json=REPLAY, headers=s.token(OPERATOR))
)
# -- the two lists -------------------------------------------------------------
for L in ("/v1/records", "/v1/rejections"):
    case(L, "get", 400)(
        lambda s, L=L: s.client.get(L, params={"limit": 0}, headers=s.token(ANALYST))
    )
    case(L, "get", 401)(lambda s, L=L: s.client.get(L))
    case(L, "get", 403)(lambda s, L=L: s.client.get(L, headers=s.token(STRANGER)))
    case(L, "get", 410)(
        lambda s, L=L: s.client.get(
            L, params={"since": "2001-01-01T00:00:00Z"}, headers=s.token(ANALYST)
        )
    )
    case(L, "get", 503, failing_reads)(lambda s, L=L: s.client.get(L, headers=s.token(ANALYST)))
# -- look-ups ------------------------------------------------------------------
for route, prefix in (
    ("/v1/records/{record_id}", "/v1/records/"),
    ("/v1/messages/{message_id}", "/v1/messages/"),
):
    case(route, "get", 400)(
        lambda s, p=prefix: s.client.get(p + "x" * (MAX_ID_LENGTH + 1), headers=s.token(ANALYST))
    )
    case(route, "get", 401)(lambda s, p=prefix: s.client.get(p + "x"))
    case(route, "get", 403)(lambda s, p=prefix: s.client.get(p + "x", headers=s.token(STRANGER)))
    case(route, "get", 404)(
        lambda s, p=prefix: s.client.get(p + "nothing/here", headers=s.token(ANALYST))
    )
    case(route, "get", 503, failing_reads)(
        lambda s, p=prefix: s.client.get(p + "x", headers=s.token(ANALYST))
    )
# -- the completeness ledger -------------------------------------------------------


def no_ledger(s: Service) -> None:
    """The store keeps no ledger of producer sequences, as BigQuery alone keeps none."""
    s.store.completeness = None


AUDIT = {"since": "2024-04-27T00:00:00Z", "until": "2024-04-27T06:00:00Z"}
for route, path, params in (
    ("/v1/producers", "/v1/producers", {}),
    ("/v1/producers/{producer}", "/v1/producers/orders-api", {}),
    ("/v1/audit", "/v1/audit", AUDIT),
):
    case(route, "get", 401)(lambda s, p=path, q=params: s.client.get(p, params=q))
    case(route, "get", 403)(
        lambda s, p=path, q=params: s.client.get(p, params=q, headers=s.token(STRANGER))
    )
    case(route, "get", 503, failing_reads)(
        lambda s, p=path, q=params: s.client.get(p, params=q, headers=s.token(ANALYST))
    )
case("/v1/producers", "get", 400)(
    lambda s: s.client.get("/v1/producers", params={"limit": 0}, headers=s.token(ANALYST))
)
case("/v1/producers", "get", 404, no_ledger)(
    lambda s: s.client.get("/v1/producers", headers=s.token(ANALYST))
)
case("/v1/producers/{producer}", "get", 400)(
    lambda s: s.client.get("/v1/producers/" + "p" * (MAX_ID_LENGTH + 1), headers=s.token(ANALYST))
)
case("/v1/producers/{producer}", "get", 404)(
    lambda s: s.client.get("/v1/producers/nobody", headers=s.token(ANALYST))
)
case("/v1/audit", "get", 400)(
    lambda s: s.client.get(
        "/v1/audit", params={**AUDIT, "until": AUDIT["since"]}, headers=s.token(ANALYST)
    )
)
case("/v1/audit", "get", 404, no_ledger)(
    lambda s: s.client.get("/v1/audit", params=AUDIT, headers=s.token(ANALYST))
)
# -- open routes -----------------------------------------------------------------
case("/problems/{name}", "get", 400)(lambda s: s.client.get("/problems/" + "p" * 100))
case("/problems/{name}", "get", 404)(lambda s: s.client.get("/problems/no-such-thing"))
case("/readyz", "get", 503, failing)(lambda s: s.client.get("/readyz"))


def test_every_documented_error_has_a_request_that_gets_it(service: Service) -> None:
    documented = {
        (route, method, int(status))
        for route, item in service.document["paths"].items()
        for method, operation in item.items()
        for status in operation["responses"]
        if int(status) >= 400
    }
    assert documented == set(CASES)
    # The statuses a push can get, as the acknowledgement contract lists them.
    assert {s for r, _, s in documented if r == P} == {400, 401, 403, 413, 503}


@pytest.mark.parametrize(("route", "method", "status"), sorted(CASES))
def test_each_error_answer_is_what_the_document_says(
    service: Service, route: str, method: str, status: int
) -> None:
    request, setup = CASES[(route, method, status)]
    if setup is not None:
        setup(service)
    answer = request(service)

    assert answer.status_code == status, answer.text
    documented = service.document["paths"][route][method]["responses"][str(status)]
    [(media_type, content)] = documented["content"].items()
    assert media_type == "application/problem+json"
    assert answer.headers["content-type"].startswith(media_type)
    body = answer.json()
    schema = {**content["schema"], "components": service.document["components"]}
    errors = [str(e) for e in jsonschema_rs.Draft202012Validator(schema).iter_errors(body)]
    assert errors == [], body
    # Nothing undocumented either: every member is a property of the schema.
    problem = service.document["components"]["schemas"]["Problem"]
    assert set(body) <= set(problem["properties"]), body
    assert body["status"] == status
    assert body["type"].startswith("/problems/")
    assert service.client.get(body["type"]).json()["status"] == status
    assert (body["type"], body["title"]) in documented_kinds(content)


def documented_kinds(content: dict[str, Any]) -> set[tuple[str, str]]:
    """The (type, title) of each kind of problem a documented response lists."""
    return {(e["value"]["type"], e["value"]["title"]) for e in content["examples"].values()}


def test_every_route_documents_token_verification_unavailable_where_it_answers_it(
    unverifiable: Service,
) -> None:
    # Each route that verifies tokens (and readiness, which fetches the keys) answers
    # 503 of its own kind while the keys cannot be fetched, as its document says.
    answered = set()
    for (route, method, status), (request, _) in sorted(CASES.items()):
        if status != 503:
            continue
        answer = request(unverifiable)
        assert answer.status_code == 503, (route, answer.text)
        body = answer.json()
        documented = unverifiable.document["paths"][route][method]["responses"]["503"]
        [content] = documented["content"].values()
        assert (body["type"], body["title"]) in documented_kinds(content), route
        answered.add(route)
        assert body["type"] == "/problems/token-verification-unavailable", route
    assert "/readyz" in answered
    assert {P, R, "/v1/records"} <= answered


def test_the_old_shapes_are_gone(service: Service) -> None:
    # Litestar's default error schema (status_code, detail, extra) is sent by nothing.
    text = str(service.document)
    assert "status_code" not in text


def test_the_docs_page_loads_everything_from_the_service_itself(service: Service) -> None:
    page = service.client.get("/docs")
    assert page.status_code == 200
    html = page.text
    assert "SwaggerUIBundle" in html
    # Nothing from another host: no absolute URL anywhere in the page.
    assert not re.search(r"(?:src|href)=['\"](?:https?:)?//", html), html[:2000]
    assets = re.findall(r"(?:src|href)=['\"]([^'\"]+)['\"]", html)
    assert {a.rsplit("/", 1)[1] for a in assets} == {
        "swagger-ui-bundle.js",
        "swagger-ui-standalone-preset.js",
        "swagger-ui.css",
        "favicon-32x32.png",
    }
    for asset in assets:
        answer = service.client.get(asset)
        assert answer.status_code == 200, asset
        assert answer.content == (ASSETS / asset.rsplit("/", 1)[1]).read_bytes()
    # Swagger UI 5 reads OpenAPI 3.1, which the document is.
    assert service.document["openapi"].startswith("3.1")
    assert b'"5.35.0"' in (ASSETS / "swagger-ui-bundle.js").read_bytes()
    # Its licence travels with it.
    assert "Apache License" in (ASSETS / "LICENSE").read_text()


def test_the_wheel_ships_the_docs_page(tmp_path: Path) -> None:
    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not on PATH (python3 dev.py test puts it there)")
    subprocess.run(
        [uv, "build", "--wheel", "--out-dir", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    [wheel] = tmp_path.glob("*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    for asset in ASSETS.iterdir():
        assert f"app/docs_ui/{asset.name}" in shipped
