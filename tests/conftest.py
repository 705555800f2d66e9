from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import uvicorn
from litestar.testing import AsyncTestClient, TestClient

from app.asgi import create_app
from app.http.head import Recordline
from app.http.limits import bounded_connections
from app.settings import ServerSettings, Settings
from app.store.duckdb.store import DuckDBStore
from recordline_dev.processes import EmulatorNotFound
from tests import interrupts
from tests.bigquery.conftest import DATASET as BIGQUERY_DATASET
from tests.bigquery.conftest import PROJECT as BIGQUERY_PROJECT
from tests.bigquery.fake_jobs import FakeBigQueryJobs
from tests.bigquery.fake_storage_write import FakeBigQueryWrite
from tests.bigquery.threaded import ThreadedBigQuery, serving_store
from tests.fake_schema_api import FakeSchemaApi
from tests.fakes import FaultyStore
from tests.processes import Terminal
from tests.spanner.emulator import SpannerEmulator
from tests.spanner.emulator import find_emulator as find_spanner_emulator
from tests.waiting import until, until_blocking

# What `--quick` leaves out: tests marked slow (a second or more each), and those
# needing an emulator, the browser, nginx, Varnish or wrk.
NOT_QUICK = ("slow", "emulator", "browser", "nginx", "varnish", "wrk")


def pytest_configure(config: pytest.Config) -> None:
    # The first Ctrl-C stops the run, even when it lands in Hypothesis's gc callback.
    interrupts.install()
    # Written by the process that sees every test's report: with -n, the controller.
    if config.getoption("write_durations") and not hasattr(config, "workerinput"):
        config.pluginmanager.register(Durations(), "recordline-durations")


# What each module (or class) of tests took in a whole run on two cores, in seconds:
# the order the run hands them out in (`heaviest_first`). Written by `python3 dev.py
# test --write-durations`; a module it does not name is weighed by its
# tests' marks (`guessed`). Only the order of the run depends on it.
DURATIONS = Path(__file__).with_name("durations.json")
SERVERS = ("emulator", "browser", "nginx", "varnish", "wrk", "node")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--quick",
        action="store_true",
        help=f"the inner loop's subset: no test marked {', '.join(NOT_QUICK)} (README: Tests)",
    )
    parser.addoption(
        "--write-durations",
        action="store_true",
        help="write what each module of the run took into tests/durations.json",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("quick"):
        kept, left = [], []
        for item in items:
            slow = any(item.get_closest_marker(name) for name in NOT_QUICK)
            (left if slow else kept).append(item)
        if left:
            config.hook.pytest_deselected(items=left)
            items[:] = kept
    heaviest_first(items)


def scope_of(nodeid: str) -> str:
    """The unit pytest-xdist hands a worker under `--dist loadscope`: a module, or a
    class of one."""
    return nodeid.rsplit("::", 1)[0]


def guessed(item: pytest.Item) -> float:
    """About what a test takes, in seconds, by its marks alone."""
    if any(item.get_closest_marker(name) for name in SERVERS):
        return 3.0
    return 1.0 if item.get_closest_marker("slow") else 0.05


def heaviest_first(items: list[pytest.Item]) -> None:
    """Order the run's modules by what they took, the longest first (each module's tests
    in their own order). With -n, workers are handed modules in this order
    (`--no-loadscope-reorder`): a module of one long test handed out last leaves one
    worker running it alone at the end, as xdist's own order (by test count) does."""
    known: dict[str, float] = json.loads(DURATIONS.read_text()) if DURATIONS.exists() else {}
    guesses: dict[str, float] = {}
    for item in items:
        scope = scope_of(item.nodeid)
        guesses[scope] = guesses.get(scope, 0.0) + guessed(item)
    items.sort(key=lambda item: -known.get(scope_of(item.nodeid), guesses[scope_of(item.nodeid)]))


class Durations:
    """What each scope's tests took (setup, call and teardown), summed as their reports
    reach this process (with -n, the controller's), written at the end of the run."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        scope = scope_of(report.nodeid)
        self.seconds[scope] = self.seconds.get(scope, 0.0) + report.duration

    def pytest_sessionfinish(self) -> None:
        # The modules this run did not run keep what they took before.
        known = json.loads(DURATIONS.read_text()) if DURATIONS.exists() else {}
        known.update({scope: round(s, 1) for scope, s in self.seconds.items()})
        DURATIONS.write_text(json.dumps(dict(sorted(known.items())), indent=0) + "\n")


def envelope(
    payload: Any,
    *,
    message_id: str = "m-1",
    publish_time: str = "2024-04-27T12:00:01Z",
    attributes: dict[str, str] | None = None,
    raw_data: bytes | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A push envelope as Pub/Sub sends it (both id spellings, like the real thing)."""
    data = raw_data if raw_data is not None else json.dumps(payload).encode()
    message: dict[str, Any] = {
        "data": base64.b64encode(data).decode(),
        "messageId": message_id,
        "message_id": message_id,
        "publishTime": publish_time,
        "publish_time": publish_time,
    }
    if attributes is not None:
        message["attributes"] = attributes
    return {"message": message, "subscription": "projects/demo/subscriptions/records-push", **extra}


# A pause before a refused push is delivered again: Pub/Sub backs off longer, but a
# test needs only not to send it again at once.
_REDELIVERY_SECONDS = 0.05


async def delivered(
    client: httpx.AsyncClient,
    body: dict[str, Any],
    *,
    path: str = "/pubsub/push",
    attempts: int = 10,
) -> httpx.Response:
    """`body` pushed as Pub/Sub pushes it: again while it is refused (503), a moment
    later, up to `attempts` times; the last answer. On the Spanner emulator two
    instances' group commits refuse a push now and then: it runs one transaction
    at a time and aborts another begun meanwhile."""
    for attempt in range(attempts):
        if attempt:
            await asyncio.sleep(_REDELIVERY_SECONDS)
        answer = await client.post(path, json=body)
        if answer.status_code != 503:
            break
    return answer


def settings(**env: str) -> Settings:
    return Settings.load({"RECORDLINE_STORE": "memory:", **env})


def unsettled(settings: Settings) -> Settings:
    """`settings` with BigQuery's rows served as soon as they are committed, not after the
    settle window (SETTLE_SECONDS): a test on the fakes reads at once what it pushed."""
    store = msgspec.structs.replace(settings.store, settle_seconds=0)
    return msgspec.structs.replace(settings, store=store)


def long_polling(settings: Settings, seconds: float) -> Settings:
    """`settings` whose streams' long-polls wait `seconds` for rows, not LONG_POLL_SECONDS
    (20 s): a test sees one answer 204 within its run."""
    query = msgspec.structs.replace(settings.query, long_poll_seconds=seconds)
    return msgspec.structs.replace(settings, query=query)


@pytest.fixture(autouse=True)
def root_logging() -> Iterator[None]:
    """The root logger as the test found it: a command run in process (`recordline
    export`, `serve`) sets its handler on the stream it writes to, which is the test's
    captured stdout, closed once the test ends; a later test's log line would meet it."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(params=["memory", pytest.param("serving", marks=pytest.mark.emulator)])
def store(request: pytest.FixtureRequest) -> FaultyStore:
    """The store API tests run on: the embedded default, and the serving tier
    (Spanner emulator and BigQuery fakes), so every API and fault test holds on both."""
    if request.param == "memory":
        return FaultyStore(DuckDBStore(":memory:"))
    emulator: SpannerEmulator = request.getfixturevalue("spanner_emulator")
    bigquery: ThreadedBigQuery = request.getfixturevalue("threaded_bigquery")
    return FaultyStore(serving_store(emulator.database(), emulator.host, bigquery))


@pytest.fixture(scope="session")
def threaded_bigquery() -> Iterator[ThreadedBigQuery]:
    fakes = ThreadedBigQuery()
    yield fakes
    fakes.stop()


@pytest.fixture
def app(store: FaultyStore) -> Recordline:
    return create_app(settings(), store=store)


@pytest.fixture
def client(app: Recordline) -> Iterator[TestClient[Recordline]]:
    with TestClient(app) as client:
        yield client


@pytest.fixture
async def aclient(app: Recordline) -> AsyncIterator[AsyncTestClient[Recordline]]:
    async with AsyncTestClient(app) as client:
        yield client


@pytest.fixture
def duckdb_path(tmp_path: Path) -> Path:
    return tmp_path / "records.duckdb"


# How long the test servers keep an idle connection open. A client counts a
# connection's idle time from when it read the last response, the server from
# when it sent it; on a loaded machine, where the client's task may run
# seconds late, only a server that waits far longer than the client
# (httpx: 5 s by default) never closes a connection the client is reusing.
KEEP_ALIVE_SECONDS = 300


@contextlib.asynccontextmanager
async def served(app: Recordline, *, bounded: bool = False) -> AsyncIterator[httpx.AsyncClient]:
    """The app behind a real uvicorn on a loopback port, in this event loop;
    `bounded`: with the connections `recordline serve` makes (app.http.limits).

    Litestar's test clients call the app through a blocking portal, one request
    at a time; group commit and backpressure need truly concurrent requests.
    """
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        lifespan="on",
        log_config=None,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        **(
            {
                "http": bounded_connections(
                    app, ServerSettings(), budget=getattr(app, "budget", None)
                )
            }
            if bounded
            else {}
        ),
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())

    def started() -> bool:
        if task.done():
            task.result()  # it failed to start: its error
        return server.started

    await until(started, timeout=120, what="uvicorn to start")
    port = server.servers[0].sockets[0].getsockname()[1]
    # The client lets an idle connection go long before the server does:
    # otherwise a request can be sent on a connection the server is closing,
    # and fail with httpx.ReadError or RemoteProtocolError.
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200, keepalive_expiry=1)
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=30
        ) as client:
            yield client
    finally:
        server.should_exit = True
        await task


@contextlib.contextmanager
def served_in_thread(app: Recordline) -> Iterator[httpx.Client]:
    """The app behind a real uvicorn on a loopback port, on an event loop of its own
    thread: for synchronous tests (Hypothesis) that must send what a real server
    receives. Litestar's test transport decodes a path twice (`%252F` arrives as `/`)."""
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        lifespan="on",
        log_config=None,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
    )
    server = uvicorn.Server(config)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(
        target=loop.run_until_complete, args=(server.serve(),), name="uvicorn", daemon=True
    )
    thread.start()
    try:

        def started() -> bool:
            if not thread.is_alive():
                raise RuntimeError("the server did not start")
            return server.started

        until_blocking(started, timeout=120, what="uvicorn to start in its thread")
        port = server.servers[0].sockets[0].getsockname()[1]
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(30)
        loop.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """In CI, a test that needs the Pub/Sub emulator, the browser, nginx, Varnish, wrk or
    node may not skip: it fails."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    needs = any(
        item.get_closest_marker(name)
        for name in ("emulator", "browser", "nginx", "varnish", "wrk", "node")
    )
    if report.skipped and os.environ.get("CI") and needs:
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where it must run: {report.longrepr}"


@pytest.fixture
async def write_fake() -> AsyncIterator[FakeBigQueryWrite]:
    """The Storage Write fake on this test's loop (BigQuery and serving-tier tests)."""
    fake = FakeBigQueryWrite()
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
def jobs_fake(write_fake: FakeBigQueryWrite) -> Iterator[FakeBigQueryJobs]:
    """The jobs.query fake, reading what `write_fake` stored."""
    fake = FakeBigQueryJobs(write_fake, project=BIGQUERY_PROJECT, dataset=BIGQUERY_DATASET)
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture(scope="session")
def spanner_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SpannerEmulator]:
    """Google's Spanner emulator for the session; each test makes its own database."""
    try:
        emulator = SpannerEmulator(
            find_spanner_emulator(), tmp_path_factory.mktemp("spanner") / "log"
        )
    except EmulatorNotFound as exc:
        pytest.skip(str(exc))  # starts "Spanner emulator": CI turns it into a failure
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture
def terminals() -> Iterator[list[Terminal]]:
    """Terminals a test opens (tests/processes.py); whatever they hold at its end is killed."""
    started: list[Terminal] = []
    yield started
    for terminal in started:
        terminal.kill_everything()


def http_scope(method: str, path: str, query_string: bytes = b"") -> dict[str, object]:
    """An ASGI HTTP scope, for calling an app directly with a `receive` of a test's own."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": query_string,
        "headers": [(b"host", b"test")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }


@pytest.fixture
async def schema_api() -> AsyncIterator[FakeSchemaApi]:
    """The fake Pub/Sub Schema API (tests/fake_schema_api.py), served for one test."""
    fake = FakeSchemaApi()
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()
