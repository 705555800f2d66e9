"""`POST /v1/publish` against hostile callers, bodies, Pub/Sub answers and stops: none
but an operator publishes, no body is a 5xx, no publish outlives its deadline or the
stop, and failures leave no connections behind. Pub/Sub is tests/fake_publisher.py."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from app.asgi import create_app
from app.ingest import schemas, topic
from app.settings import Settings
from app.store.duckdb.store import DuckDBStore
from recordline_dev.devstack import wait_until_ready
from recordline_dev.processes import free_port, stop_group
from tests.auth.fake_google import PUSH_AUDIENCE, PUSHER, READ_AUDIENCE, FakeGoogle
from tests.conftest import served, settings
from tests.fake_publisher import FakePublisher
from tests.waiting import until, until_blocking

SECRET = "a-push-secret-long-enough"
OPERATOR_SECRET = {"Authorization": f"Bearer {SECRET}"}
TOPIC = "projects/demo-project/topics/orders"
PAYLOAD = b'{"id": "t-1", "data": 1}'
GOOD = {"data": base64.b64encode(PAYLOAD).decode()}
ANALYST = "analyst@example.org"
OPERATOR = "oncall@example.org"
STRANGER = "stranger@example.org"
PASS_KEY = base64.urlsafe_b64encode(bytes(range(16))).decode()


@pytest.fixture
async def pubsub() -> AsyncIterator[FakePublisher]:
    fake = FakePublisher()
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


@pytest.fixture(scope="module")
def google() -> Iterator[FakeGoogle]:
    fake = FakeGoogle().start()
    yield fake
    fake.stop()


def token(google: FakeGoogle, email: str, audience: str = READ_AUDIENCE) -> dict[str, str]:
    return {"Authorization": f"Bearer {google.mint(aud=audience, email=email)}"}


@contextlib.asynccontextmanager
async def secret_service(pubsub: FakePublisher, **env: str) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(
        settings(
            RECORDLINE_PUSH_TOKEN=SECRET,
            RECORDLINE_TOPIC=TOPIC,
            PUBSUB_EMULATOR_HOST=pubsub.address,
            **env,
        ),
        store=DuckDBStore(":memory:"),
    )
    async with served(app) as client:
        yield client


# -- who may publish ---------------------------------------------------------------


async def test_none_but_an_operator_publishes_and_pubsub_hears_of_no_one_else(
    pubsub: FakePublisher, google: FakeGoogle
) -> None:
    app = create_app(
        Settings.load(
            {
                "RECORDLINE_STORE": "memory:",
                "RECORDLINE_PUSH_AUDIENCE": PUSH_AUDIENCE,
                "RECORDLINE_PUSH_SERVICE_ACCOUNTS": PUSHER,
                "RECORDLINE_READ_AUDIENCE": READ_AUDIENCE,
                "RECORDLINE_READ_PRINCIPALS": ANALYST,
                "RECORDLINE_OPERATOR_PRINCIPALS": OPERATOR,
                "RECORDLINE_OIDC_CERTS_URL": google.certs_url,
                "RECORDLINE_READ_PASS_KEYS": f"k1:{PASS_KEY}",
                "RECORDLINE_READ_PASS_URL": "https://records.example.com",
                "RECORDLINE_TOPIC": TOPIC,
                "PUBSUB_EMULATOR_HOST": pubsub.address,
            }
        ),
        store=DuckDBStore(":memory:"),
    )
    async with served(app) as http:
        # A read pass, the operator's own included, reads as a reader and no more.
        cookies = []
        for who in (ANALYST, OPERATOR):
            answer = await http.post("/v1/read-pass", headers=token(google, who))
            assert answer.status_code == 200, answer.text
            cookies.append(answer.json()["cookie"])
            http.cookies.clear()
        cross_site = {"Origin": "https://elsewhere.example", "Sec-Fetch-Site": "cross-site"}
        attempts: list[tuple[str, dict[str, str], Any, set[int]]] = [
            ("no token", {}, GOOD, {401}),
            ("a reader", token(google, ANALYST), GOOD, {403}),
            ("a stranger", token(google, STRANGER), GOOD, {403}),
            ("the pusher", token(google, PUSHER, PUSH_AUDIENCE), GOOD, {401, 403}),
            (
                "an operator's push-audience token",
                token(google, OPERATOR, PUSH_AUDIENCE),
                GOOD,
                {401, 403},
            ),
            (
                "a forged token",
                {"Authorization": f"Bearer {google.forge_none()}"},
                GOOD,
                {401, 403},
            ),
            *[
                (f"read pass {n}", {"Cookie": cookie}, GOOD, {401})
                for n, cookie in enumerate(cookies)
            ],
            ("a cross-site page", {**token(google, OPERATOR), **cross_site}, GOOD, {403}),
            (
                "a same-site sibling",
                {**token(google, OPERATOR), "Sec-Fetch-Site": "same-site"},
                GOOD,
                {403},
            ),
            ("a null origin", {**token(google, OPERATOR), "Origin": "null"}, GOOD, {403}),
        ]
        for what, headers, body, statuses in attempts:
            answer = await http.post("/v1/publish", json=body, headers=headers)
            assert answer.status_code in statuses, (what, answer.status_code, answer.text)
            assert "message_id" not in answer.text, what
        # A form a page may send without asking (no preflight): refused by its type.
        for kind in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
            answer = await http.post(
                "/v1/publish",
                content=json.dumps(GOOD).encode(),
                headers={**token(google, OPERATOR), "Content-Type": kind},
            )
            assert answer.status_code == 415, (kind, answer.text)
        assert pubsub.calls == 0
        # The operator publishes: the one call Pub/Sub heard.
        answer = await http.post("/v1/publish", json=GOOD, headers=token(google, OPERATOR))
        assert answer.status_code == 200, answer.text
        assert pubsub.calls == 1
        assert [t for t, *_ in pubsub.published] == [TOPIC]


# -- bodies -------------------------------------------------------------------------

NESTED = '{"data": "", "attributes": ' + "[" * 100_000 + "]" * 100_000 + "}"


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(NESTED, id="nested-deep"),
        pytest.param('{"data": null}', id="data-null"),
        pytest.param('{"data": "", "attributes": null}', id="attributes-null"),
        pytest.param('{"data": "", "dry_run": "true"}', id="dry-run-text"),
        pytest.param('{"data": "", "dry_run": 1}', id="dry-run-number"),
        pytest.param('{"data": "", "note": 5}', id="note-number"),
        pytest.param('{"data": "QQ==\\n"}', id="base64-newline"),
        pytest.param('{"data": "QQ== "}', id="base64-space"),
        pytest.param('{"data": "Q\\u0000Q=="}', id="base64-nul"),
        pytest.param('{"data": "QQ==QQ=="}', id="base64-twice"),
        pytest.param('{"data": "===="}', id="base64-padding-only"),
        pytest.param('{"data": "QQ"}', id="base64-unpadded"),
        pytest.param('{"data": "QQ-_"}', id="base64-urlsafe"),
        pytest.param('{"data": "\\u00e9\\u00e9\\u00e9\\u00e9"}', id="base64-not-ascii"),
        pytest.param('{"data": "\\ud800"}', id="lone-surrogate"),
        pytest.param(b'{"data": "\xff\xfe"}', id="invalid-utf8"),
        pytest.param('{"data": "", "attributes": {"k": "\\udc00"}}', id="surrogate-attribute"),
        pytest.param(
            json.dumps({"data": "", "attributes": {f"k{n}": "v" for n in range(101)}}),
            id="attributes-101",
        ),
        pytest.param(
            json.dumps({"data": "", "attributes": {"k": "v" * 1025}}), id="attribute-value-long"
        ),
        pytest.param(json.dumps({"data": "", "note": "é" * 501}), id="note-501-unicode"),
        pytest.param("[" + json.dumps(GOOD) + "]", id="array"),
        pytest.param('"' + GOOD["data"] + '"', id="string"),
        pytest.param("", id="empty"),
        pytest.param("{}" * 2, id="two-objects"),
        pytest.param('{"data": "QQ==", "extra": {"a": [1, 2, {"b": null}]}}', id="unknown-field"),
    ],
)
async def test_no_body_is_a_5xx_nor_published(pubsub: FakePublisher, body: str | bytes) -> None:
    async with secret_service(pubsub) as http:
        answer = await http.post(
            "/v1/publish",
            content=body if isinstance(body, bytes) else body.encode(),
            headers={**OPERATOR_SECRET, "Content-Type": "application/json"},
        )
        assert 400 <= answer.status_code < 500, answer.text
        assert answer.headers["content-type"].startswith("application/problem+json")
        assert pubsub.calls == 0


async def test_data_at_and_past_a_messages_bound(pubsub: FakePublisher) -> None:
    from app.ingest.envelope import MAX_DATA_BYTES

    async with secret_service(pubsub) as http:
        at = base64.b64encode(b"x" * MAX_DATA_BYTES).decode()
        answer = await http.post(
            "/v1/publish", json={"data": at, "dry_run": True}, headers=OPERATOR_SECRET
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["verdict"] == "rejected"  # not JSON
        past = base64.b64encode(b"x" * (MAX_DATA_BYTES + 1)).decode()
        answer = await http.post("/v1/publish", json={"data": past}, headers=OPERATOR_SECRET)
        assert answer.status_code == 400, answer.text
        assert answer.json()["field"] == "data"
        # The body past the service's bound: 413, read no further.
        huge = base64.b64encode(b"x" * (MAX_DATA_BYTES + 2_000_000)).decode()
        answer = await http.post("/v1/publish", json={"data": huge}, headers=OPERATOR_SECRET)
        assert answer.status_code == 413, answer.text
        assert pubsub.calls == 0


@pytest.mark.parametrize(
    "attributes",
    [
        pytest.param({"": "empty key"}, id="empty-key"),
        pytest.param({"goog-anything": "x"}, id="goog-key"),
        pytest.param({"GOOGclient_x": "x"}, id="goog-key-upper"),
        pytest.param({"é" * 256: "x"}, id="key-256-characters-512-bytes"),
        pytest.param({"k": "é" * 1024}, id="value-1024-characters-2048-bytes"),
        pytest.param({f"k{n}": "v" for n in range(100)}, id="attributes-100"),
        pytest.param({"k\u0000": "\u0000\u001b[31m"}, id="control-characters"),
        pytest.param({"googclient_schemaname": "projects/p/schemas/nope"}, id="schema-name"),
        pytest.param(
            {
                "googclient_schemaname": "projects/p/schemas/s",
                "googclient_schemarevisionid": "r",
                "googclient_schemaencoding": "BINARY",
            },
            id="schema-attributes",
        ),
    ],
)
async def test_attributes_pubsub_may_refuse_are_never_a_5xx(
    pubsub: FakePublisher, attributes: dict[str, str]
) -> None:
    # Pub/Sub refuses what it refuses of a message as INVALID_ARGUMENT: said as a 400.
    pubsub.failing = (grpc.StatusCode.INVALID_ARGUMENT, "attribute refused")
    async with secret_service(pubsub) as http:
        for dry_run in (True, False):
            answer = await http.post(
                "/v1/publish",
                json={**GOOD, "attributes": attributes, "dry_run": dry_run},
                headers=OPERATOR_SECRET,
            )
            assert answer.status_code < 500 or answer.json()["type"].endswith(
                "/schema-unavailable"
            ), (dry_run, answer.text)


@pytest.mark.parametrize(
    "note",
    [
        "a\u0000b\u001b[2Jc\r\nd\u2028e\u202ef",
        "<script>alert(1)</script>",
        "\U0001f600" * 500,
        "",
        " " * 500,
    ],
    ids=["control", "markup", "emoji-500", "empty", "spaces"],
)
async def test_a_note_of_any_characters_is_kept_as_sent(pubsub: FakePublisher, note: str) -> None:
    async with secret_service(pubsub) as http:
        answer = await http.post(
            "/v1/publish", json={**GOOD, "note": note}, headers=OPERATOR_SECRET
        )
        assert answer.status_code == 200, answer.text

        async def kept() -> list[dict[str, Any]]:
            lines = await http.get(
                "/v1/access", params={"action": "publish"}, headers=OPERATOR_SECRET
            )
            assert lines.status_code == 200, lines.text
            return [line["line"] for line in lines.json()["lines"]]

        (line,) = await until(kept, interval=0.05, what="the publish's line")
        assert line["note"] == note
        assert line["messages"] == [[answer.json()["message_id"], "stored"]]


# -- what Pub/Sub answers -----------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (grpc.StatusCode.PERMISSION_DENIED, 503),  # a topic of another project
        (grpc.StatusCode.NOT_FOUND, 503),  # no such topic
        (grpc.StatusCode.UNAUTHENTICATED, 503),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, 503),
        (grpc.StatusCode.UNAVAILABLE, 503),
        (grpc.StatusCode.INTERNAL, 503),
        (grpc.StatusCode.FAILED_PRECONDITION, 503),
        (grpc.StatusCode.INVALID_ARGUMENT, 400),
        (grpc.StatusCode.UNKNOWN, 503),
    ],
)
async def test_each_refusal_by_pubsub_is_said_and_never_a_500(
    pubsub: FakePublisher, code: grpc.StatusCode, status: int
) -> None:
    pubsub.failing = (code, f"injected {code.name} for {TOPIC}")
    async with secret_service(pubsub) as http:
        answer = await http.post("/v1/publish", json=GOOD, headers=OPERATOR_SECRET)
        assert answer.status_code == status, answer.text
        said = answer.json()
        if status == 503:
            assert said["type"].endswith("/topic-unavailable")
            assert code.name in said["detail"]
            assert int(answer.headers["retry-after"]) >= 1


async def test_many_failures_leave_one_connection_and_one_client(
    pubsub: FakePublisher, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[str] = []
    real_made = topic._made

    def counted(host: str, credentials: Any) -> Any:
        made.append(host)
        return real_made(host, credentials)

    monkeypatch.setattr(topic, "_made", counted)
    monkeypatch.setattr(topic, "PUBLISH_SECONDS", 0.5)
    port = int(pubsub.address.rpartition(":")[2])
    async with secret_service(pubsub) as http:
        for round_ in range(3):
            pubsub.failing = (grpc.StatusCode.UNAVAILABLE, "down")
            for _ in range(15):
                answer = await http.post("/v1/publish", json=GOOD, headers=OPERATOR_SECRET)
                assert answer.status_code == 503, answer.text
            pubsub.failing = None
            pubsub.hold()
            for _ in range(3):
                answer = await http.post("/v1/publish", json=GOOD, headers=OPERATOR_SECRET)
                assert answer.status_code == 503, answer.text
            pubsub.release()
            answer = await http.post("/v1/publish", json=GOOD, headers=OPERATOR_SECRET)
            assert answer.status_code == 200, (round_, answer.text)
            assert len(_connections_to(port)) <= 1, _connections_to(port)
    assert made == [pubsub.address]


async def test_a_refused_port_many_times_leaves_no_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port = free_port()
    fake = FakePublisher()
    fake.address = f"127.0.0.1:{port}"  # nothing listens
    async with secret_service(fake) as http:
        for _ in range(40):
            answer = await http.post("/v1/publish", json=GOOD, headers=OPERATOR_SECRET)
            assert answer.status_code == 503, answer.text
            assert (
                "did not answer" in answer.json()["detail"]
                or "UNAVAILABLE" in (answer.json()["detail"])
            )
        assert _connections_to(port) == []


def _unread_at(port: int) -> bool:
    """Whether bytes wait unread on a connection accepted at 127.0.0.1:`port`."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                local, state, queues = fields[1], fields[3], fields[4]
                received = int(queues.partition(":")[2], 16)
                if int(local.rpartition(":")[2], 16) == port and state == "01" and received:
                    return True
    return False


def _connections_to(port: int) -> list[str]:
    """This network namespace's TCP connections, in any state but LISTEN, whose remote
    end is 127.0.0.1:`port` (this process's clients of it)."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                remote, state = fields[2], fields[3]
                if int(remote.rpartition(":")[2], 16) == port and state != "0A":
                    found.append(line.strip())
    return found


# -- deadlines and stops, as processes ----------------------------------------------


class Paused:
    """tests/fake_publisher.py as a process of its own, to pause with SIGSTOP."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.fake_publisher", "--port", "0"],
            stdout=subprocess.PIPE,
            start_new_session=True,
        )
        assert self.process.stdout is not None
        self.address = self.process.stdout.readline().decode().strip()

    def pause(self) -> None:
        os.kill(self.process.pid, signal.SIGSTOP)

    def close(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)
        stop_group(self.process, timeout=15)


@pytest.fixture
def paused() -> Iterator[Paused]:
    fake = Paused()
    try:
        yield fake
    finally:
        fake.close()


async def test_a_paused_pubsub_ends_each_publish_within_five_seconds(paused: Paused) -> None:
    fake = FakePublisher()
    fake.address = paused.address
    async with secret_service(fake) as http:
        answer = await http.post("/v1/publish", json=GOOD, headers=OPERATOR_SECRET)
        assert answer.status_code == 200, answer.text  # connected, then paused
        paused.pause()
        for _ in range(2):
            began = time.monotonic()
            answer = await http.post("/v1/publish", json=GOOD, headers=OPERATOR_SECRET)
            took = time.monotonic() - began
            assert answer.status_code == 503, answer.text
            # Its 5 s, and a margin for a loaded machine.
            assert took < topic.PUBLISH_SECONDS + 2, took


def test_a_stop_mid_publish_ends_within_cloud_runs_grace(tmp_path: Path, paused: Paused) -> None:
    port = free_port()
    env = {
        **os.environ,
        "RECORDLINE_PUSH_TOKEN": SECRET,
        "RECORDLINE_TOPIC": TOPIC,
        "PUBSUB_EMULATOR_HOST": paused.address,
    }
    log = tmp_path / "service.log"
    with log.open("ab") as out:
        service = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "app.cli",
                "serve",
                "--port",
                str(port),
                "--store",
                f"duckdb://{tmp_path / 'r.duckdb'}",
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_ready(f"{url}/readyz", timeout=60, process=service)
        with httpx.Client(base_url=url, timeout=30) as http:
            assert http.post("/v1/publish", json=GOOD, headers=OPERATOR_SECRET).status_code == 200
            paused.pause()
            with httpx.Client(base_url=url, timeout=30) as second:
                answers: list[httpx.Response | Exception] = []

                def publish() -> None:
                    try:
                        answers.append(
                            second.post("/v1/publish", json=GOOD, headers=OPERATOR_SECRET)
                        )
                    except httpx.HTTPError as exc:
                        answers.append(exc)

                thread = threading.Thread(target=publish)
                thread.start()
                # In flight once its request waits, unread, at the paused fake.
                fake_port = int(paused.address.rpartition(":")[2])
                until_blocking(lambda: _unread_at(fake_port), what="the publish to reach Pub/Sub")
                began = time.monotonic()
                service.send_signal(signal.SIGTERM)
                service.wait(timeout=30)
                took = time.monotonic() - began
                thread.join(30)
        assert took < 10, (took, log.read_text()[-2000:])
    finally:
        stop_group(service, timeout=15)


async def test_a_slow_schema_and_a_silent_pubsub_end_the_publish_within_its_five_seconds(
    pubsub: FakePublisher,
) -> None:
    """The check reads the schema the attributes name (up to FETCH_SECONDS), then the
    publish waits on Pub/Sub: the operator's call ends within the 5 s said, not their sum."""
    schema = {"type": "record", "name": "T", "fields": [{"name": "id", "type": "string"}]}
    name = "projects/demo-project/schemas/orders"
    pubsub.schemas.add(name, "r1", "AVRO", json.dumps(schema))
    pubsub.schema_delay = schemas.FETCH_SECONDS * 0.9
    pubsub.hold()
    attributes = {
        "googclient_schemaname": name,
        "googclient_schemarevisionid": "r1",
        "googclient_schemaencoding": "JSON",
    }
    async with secret_service(pubsub) as http:
        began = time.monotonic()
        answer = await http.post(
            "/v1/publish", json={**GOOD, "attributes": attributes}, headers=OPERATOR_SECRET
        )
        took = time.monotonic() - began
        assert pubsub.calls == 1  # the check passed, and Pub/Sub was asked
        assert answer.status_code == 503, answer.text
        assert took < topic.PUBLISH_SECONDS + 1.5, took


async def test_a_refused_publish_is_told_and_logged_as_a_publish(
    pubsub: FakePublisher, google: FakeGoogle, caplog: pytest.LogCaptureFixture
) -> None:
    """Whoever may not publish is told they may not publish (not replay), and the log
    line an alert reads says which was refused."""
    oidc = {
        "RECORDLINE_STORE": "memory:",
        "RECORDLINE_PUSH_AUDIENCE": PUSH_AUDIENCE,
        "RECORDLINE_PUSH_SERVICE_ACCOUNTS": PUSHER,
        "RECORDLINE_OIDC_CERTS_URL": google.certs_url,
        "RECORDLINE_TOPIC": TOPIC,
        "PUBSUB_EMULATOR_HOST": pubsub.address,
    }
    operators = {
        **oidc,
        "RECORDLINE_READ_AUDIENCE": READ_AUDIENCE,
        "RECORDLINE_READ_PRINCIPALS": ANALYST,
        "RECORDLINE_OPERATOR_PRINCIPALS": OPERATOR,
    }
    secret = {"RECORDLINE_STORE": "memory:", "RECORDLINE_PUSH_TOKEN": SECRET}
    secret |= {"RECORDLINE_TOPIC": TOPIC, "PUBSUB_EMULATOR_HOST": pubsub.address}
    for environ, headers in (
        (operators, token(google, ANALYST)),  # a reader
        (secret, {}),  # no token where the push secret is the operator's
        (oidc, {}),  # no operator can be told here at all
    ):
        app = create_app(Settings.load(environ), store=DuckDBStore(":memory:"))
        async with served(app) as http:
            caplog.clear()
            answer = await http.post("/v1/publish", json=GOOD, headers=headers)
            assert answer.status_code in (401, 403), answer.text
            detail = answer.json()["detail"]
            assert "replay" not in detail.lower(), detail
            assert "publish" in detail.lower(), detail
            refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
            assert refusals, caplog.text
            assert not any("replay" in line for line in refusals), refusals
    assert pubsub.calls == 0
