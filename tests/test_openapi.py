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
from litestar.testing import TestClient

from app.asgi import create_app
from app.docs import ASSETS
from app.http.head import Recordline
from app.ingest.topic import Topic
from app.query.offsets import Offsets
from app.records import MAX_ID_LENGTH
from app.settings import DEFAULT_PAGE_TOKEN_SECRET, Settings
from app.store.duckdb.store import DuckDBStore
from recordline_dev.processes import free_port
from tests.auth.fake_google import PUSH_AUDIENCE, PUSHER, READ_AUDIENCE, FakeGoogle
from tests.conftest import envelope
from tests.fakes import DeadLetteredStore, FaultyStore

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
    client: TestClient[Recordline]
    store: FaultyStore
    google: FakeGoogle
    app: Recordline
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


def settings_of(google: FakeGoogle) -> Settings:
    return Settings.load(
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
            # A topic on a Pub/Sub nobody listens for: a test message is refused (503).
            "RECORDLINE_TOPIC": TOPIC,
            "PUBSUB_EMULATOR_HOST": f"127.0.0.1:{free_port()}",
        }
    )


def serve(google: FakeGoogle) -> Iterator[Service]:
    settings = settings_of(google)
    # It reads dead letters too, as BigQuery does (none, unless a test gives some).
    store = DeadLetteredStore(DuckDBStore(":memory:"))
    try:
        app = create_app(settings, store=store)
        with TestClient(app) as client:
            document = client.get("/docs/openapi.json").json()
            yield Service(client, store, google, app, document)
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
    lambda s: s.client.post(
        R,
        content=b"x" * (LIMIT + 1),
        headers={**s.token(OPERATOR), "Content-Type": "application/json"},
    )
)
case(R, "post", 415)(lambda s: s.client.post(R, content=b"{}", headers=s.token(OPERATOR)))
case(R, "post", 503, failing_reads)(
    lambda s: s.client.post(R, json=REPLAY, headers=s.token(OPERATOR))
)
# -- test messages -------------------------------------------------------------------
PU = "/v1/publish"
TOPIC = "projects/demo-project/topics/orders"
TEST_MESSAGE = {"data": "eyJpZCI6ICIxIn0="}


def no_topic(s: Service) -> None:
    """A deployment naming no topic (RECORDLINE_TOPIC empty)."""
    topic: Topic = s.app.litestar.dependencies["topic"].dependency()
    topic.name = ""


case(PU, "post", 400)(lambda s: s.client.post(PU, json={"data": "?"}, headers=s.token(OPERATOR)))
case(PU, "post", 401)(lambda s: s.client.post(PU, json=TEST_MESSAGE))
case(PU, "post", 403)(lambda s: s.client.post(PU, json=TEST_MESSAGE, headers=s.token(ANALYST)))
case(PU, "post", 404, no_topic)(
    lambda s: s.client.post(PU, json=TEST_MESSAGE, headers=s.token(OPERATOR))
)
case(PU, "post", 413)(
    lambda s: s.client.post(
        PU,
        content=b"x" * (LIMIT + 1),
        headers={**s.token(OPERATOR), "Content-Type": "application/json"},
    )
)
case(PU, "post", 415)(lambda s: s.client.post(PU, content=b"{}", headers=s.token(OPERATOR)))
case(PU, "post", 503)(lambda s: s.client.post(PU, json=TEST_MESSAGE, headers=s.token(OPERATOR)))
# -- read passes (none configured here: 403) -----------------------------------------
RP = "/v1/read-pass"


def keys_unavailable(s: Service) -> None:
    """Google's token-signing keys cannot be fetched (none fetched yet)."""
    s.google.status = 500


def twice_authorized(s: Service) -> httpx.Response:
    """A request with two Authorization headers, which the test client would join in one."""
    token = s.token(ANALYST)["Authorization"]

    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=s.client.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as raw:
            return await raw.post(RP, headers=[("Authorization", token)] * 2)

    return s.client.blocking_portal.call(send)


case(RP, "post", 400)(twice_authorized)
case(RP, "post", 401)(lambda s: s.client.post(RP))
case(RP, "post", 403)(lambda s: s.client.post(RP, headers=s.token(ANALYST)))
case(RP, "post", 503, keys_unavailable)(lambda s: s.client.post(RP, headers=s.token(ANALYST)))
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
# -- the counts of either list ---------------------------------------------------------
for C in ("/v1/counts/records", "/v1/counts/rejections"):
    case(C, "get", 400)(
        lambda s, C=C: s.client.get(
            C, params={"since": "1h", "buckets": 0}, headers=s.token(ANALYST)
        )
    )
    case(C, "get", 401)(lambda s, C=C: s.client.get(C, params={"since": "1h"}))
    case(C, "get", 403)(
        lambda s, C=C: s.client.get(C, params={"since": "1h"}, headers=s.token(STRANGER))
    )
    case(C, "get", 410)(
        lambda s, C=C: s.client.get(
            C, params={"since": "2001-01-01T00:00:00Z"}, headers=s.token(ANALYST)
        )
    )
    case(C, "get", 503, failing_reads)(
        lambda s, C=C: s.client.get(C, params={"since": "1h"}, headers=s.token(ANALYST))
    )
# -- the streams -----------------------------------------------------------------
S, SR = "/v1/streams/{name}", "/v1/streams/records"
case(S, "get", 400)(lambda s: s.client.get(SR, params={"offset": "a,b"}, headers=s.token(ANALYST)))
case(S, "get", 401)(lambda s: s.client.get(SR))
case(S, "get", 403)(lambda s: s.client.get(SR, headers=s.token(STRANGER)))
case(S, "get", 404)(lambda s: s.client.get("/v1/streams/orders", headers=s.token(ANALYST)))
case(S, "get", 410)(
    lambda s: s.client.get(
        SR,
        params={"offset": Offsets(DEFAULT_PAGE_TOKEN_SECRET).encode("records", 1)},
        headers=s.token(ANALYST),
    )
)
case(S, "get", 503, failing_reads)(lambda s: s.client.get(SR, headers=s.token(ANALYST)))
# -- exports -------------------------------------------------------------------
E, ER = "/v1/export/{name}", "/v1/export/records"
case(E, "get", 400)(lambda s: s.client.get(ER, params={"columns": "x"}, headers=s.token(ANALYST)))
case(E, "get", 401)(lambda s: s.client.get(ER))
case(E, "get", 403)(lambda s: s.client.get(ER, headers=s.token(STRANGER)))
case(E, "get", 404)(lambda s: s.client.get("/v1/export/orders", headers=s.token(ANALYST)))
case(E, "get", 410)(
    lambda s: s.client.get(ER, params={"since": "2001-01-01T00:00:00Z"}, headers=s.token(ANALYST))
)
case(E, "get", 503, failing_reads)(lambda s: s.client.get(ER, headers=s.token(ANALYST)))
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
# -- the access record ---------------------------------------------------------
A = "/v1/access"
case(A, "get", 400)(lambda s: s.client.get(A, params={"limit": 0}, headers=s.token(OPERATOR)))
case(A, "get", 401)(lambda s: s.client.get(A))
case(A, "get", 403)(lambda s: s.client.get(A, headers=s.token(ANALYST)))
case(A, "get", 503, failing_reads)(lambda s: s.client.get(A, headers=s.token(OPERATOR)))
# -- dead letters ----------------------------------------------------------------
D = "/v1/dead-letters"


def on_duckdb(s: Service, path: str) -> httpx.Response:
    """`path` asked, as an operator, of the same service on DuckDB alone, whose store
    reads no dead letters."""
    with TestClient(create_app(settings_of(s.google), store=DuckDBStore(":memory:"))) as client:
        return client.get(path, headers=s.token(OPERATOR))


case(D, "get", 400)(lambda s: s.client.get(D, params={"limt": 1}, headers=s.token(OPERATOR)))
case(D, "get", 401)(lambda s: s.client.get(D))
case(D, "get", 403)(lambda s: s.client.get(D, headers=s.token(ANALYST)))
case(D, "get", 404)(lambda s: on_duckdb(s, D))
case(D, "get", 503, failing_reads)(lambda s: s.client.get(D, headers=s.token(OPERATOR)))
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


# -- the document says what the service takes --------------------------------------


@pytest.mark.slow
def test_the_document_states_the_times_a_list_takes_and_the_service_takes_those(
    service: Service,
) -> None:
    # `since=` (empty) was valid by the document (any string) and refused.
    for route in ("/v1/records", "/v1/rejections"):
        parameters = service.document["paths"][route]["get"]["parameters"]
        for name in ("since", "until"):
            [schema] = [p["schema"] for p in parameters if p["name"] == name]
            # A date-time or an age: either of the two patterns.
            patterns = [re.compile(either["pattern"]) for either in schema["oneOf"]]
            for value in (
                "",
                "yesterday",
                # How long ago, as `recordline tail --since` takes it (a 400 before).
                "1h",
                "2.5d",
                "30s",
                "-1h",
                "1y",
                # Before the year 1: from the start.
                "99999999999999999999d",
                "2999-04-27T12:00:00Z",
                "2999-04-27t12:00:00.5z",
                "2999-04-27 12:00:00+02:00",
                "2999-04-27T12:00:00+0200",
                "2999-04-27T12:00Z",
                # In the years 1 to 9999, but not once in UTC: from the start, to the end.
                "0001-01-01T00:00:00+01:00",
                "9999-12-31T23:00:00-05:00",
            ):
                answer = service.client.get(
                    route, params={name: value}, headers=service.token(ANALYST)
                )
                valid = any(pattern.search(value) for pattern in patterns)
                # (Rows older than the retention are gone: 410, a time taken.)
                expected = {200, 410} if valid else {400}
                assert answer.status_code in expected, (route, name, value, answer.text)


def test_a_push_without_a_body_is_invalid_by_the_document_too(service: Service) -> None:
    body = service.document["paths"][P]["post"]["requestBody"]
    assert body["required"] is True
    envelope_schema = body["content"]["application/json"]["schema"]
    validator = jsonschema_rs.Draft202012Validator(envelope_schema)
    assert not validator.is_valid({})
    assert validator.is_valid(envelope({"id": "1"}))
    answer = service.client.post(P, headers=pusher(service))
    assert answer.status_code == 400
    assert answer.json()["type"] == "/problems/not-a-push-envelope"


@pytest.mark.parametrize(
    ("message", "valid"),
    [
        ({"messageId": "m-1", "publishTime": "2024-04-27T12:00:01Z"}, True),
        ({"message_id": "m-1", "publish_time": "2024-04-27T12:00:01Z"}, True),
        ({"messageId": "", "message_id": "m-1", "publishTime": "2024-04-27T12:00:01Z"}, False),
        ({"messageId": "//", "publishTime": "2024-04-27T12:00:01Z"}, False),
        ({"messageId": None, "message_id": "m-1", "publishTime": "2024-04-27T12:00:01Z"}, True),
        ({"messageId": None, "publishTime": "2024-04-27T12:00:01Z"}, False),
        ({"messageId": "m-1"}, False),
        ({"messageId": "m-1", "publishTime": "soon"}, False),
        ({"messageId": "m-1", "publishTime": "2024-04-27T12:00:01Z", "data": None}, False),
    ],
)
def test_the_push_envelope_the_document_gives_is_the_one_the_service_takes(
    service: Service, message: dict[str, Any], valid: bool
) -> None:
    schema = service.document["paths"][P]["post"]["requestBody"]["content"]["application/json"]
    body = {"message": {"data": "e30=", **message}}
    validator = jsonschema_rs.Draft202012Validator(schema["schema"], validate_formats=True)
    assert validator.is_valid(body) is valid
    answer = service.client.post(P, json=body, headers=pusher(service))
    assert answer.status_code == (204 if valid else 400), answer.text


def test_replay_takes_booleans_as_booleans(service: Service) -> None:
    # `"dry_run": 0` was taken as false (and a number as a publish time).
    for body in (
        {**REPLAY, "dry_run": 0},
        {**REPLAY, "dry_run": "false"},
        {"messages": [{**REPLAY["messages"][0], "publish_time": 1714219201}]},
    ):
        answer = service.client.post(R, json=body, headers=service.token(OPERATOR))
        assert answer.status_code == 400, body
        assert answer.json()["type"] == "/problems/invalid-body"
    field = service.client.post(
        R, json={**REPLAY, "dry_run": 0}, headers=service.token(OPERATOR)
    ).json()["field"]
    assert field == "dry_run"
    assert (
        service.client.post(
            R, json={**REPLAY, "dry_run": True}, headers=service.token(OPERATOR)
        ).status_code
        == 200
    )


@pytest.mark.slow
def test_lists_link_to_what_their_rows_name(service: Service) -> None:
    # Generated clients and stateful testing follow these; there were none.
    paths = service.document["paths"]

    def links(route: str, method: str = "get") -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = paths[route][method]["responses"]["200"]["links"]
        return found

    def target(link: dict[str, Any]) -> str:
        pointer = link["operationRef"].removeprefix("#/paths/").rsplit("/", 1)[0]
        path = pointer.replace("~1", "/").replace("~0", "~")
        assert path in paths, link
        return path

    records = links("/v1/records")
    assert target(records["record"]) == "/v1/records/{record_id}"
    assert records["record"]["parameters"] == {"record_id": "$response.body#/records/0/id"}
    assert target(records["message"]) == "/v1/messages/{message_id}"
    assert target(records["next"]) == "/v1/records"
    assert target(links("/v1/rejections")["message"]) == "/v1/messages/{message_id}"
    assert target(links(R, "post")["message"]) == "/v1/messages/{message_id}"


@pytest.mark.slow
@pytest.mark.parametrize("route", ["/v1/records", "/v1/rejections"])
def test_a_parameter_given_twice_is_refused_naming_it(service: Service, route: str) -> None:
    # The last one given was taken silently.
    answer = service.client.get(f"{route}?limit=5&limit=7", headers=service.token(ANALYST))
    assert answer.status_code == 400
    assert answer.json()["parameter"] == "limit"
    assert "more than once" in answer.json()["detail"]
