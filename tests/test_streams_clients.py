"""The Durable Streams clients, as their users run them, following Recordline: the
Python client from PyPI (`durable-streams`) in this process, and the TypeScript one
from npm under node (tests/streams_client.mjs). Each reads from `-1`, follows live
pushes, is killed, and resumes from the last offset it reported while more rows
arrive: every stored row exactly once, in order."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import subprocess
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from durable_streams import astream

from app.asgi import create_app
from app.http.head import Recordline
from app.query import follow
from app.store.duckdb.store import DuckDBStore
from tests.bigquery.threaded import ThreadedBigQuery, serving_store
from tests.conftest import delivered, long_polling, served, settings
from tests.node import npm_package
from tests.spanner.emulator import SpannerEmulator
from tests.test_streams import push_body
from tests.waiting import until

STREAM = "/v1/streams/records"
# Short lives, so that the clients reconnect (SSE) and time out (long-poll) within the
# test, as they would over minutes.
LIVE_SETTINGS = {"RECORDLINE_STREAM_SECONDS": "1"}
LONG_POLL_SECONDS = 0.5


@pytest.fixture(autouse=True)
def short_heartbeat(monkeypatch: pytest.MonkeyPatch) -> None:
    """A quiet stream's heartbeat within the test too, as it comes within minutes."""
    monkeypatch.setattr(follow, "HEARTBEAT_SECONDS", 0.2)


class Follower:
    """One reader as a user writes it with the Python client: iterate the events, keep
    each batch's rows and `next_offset`, and when a stream ends (an SSE stream ends
    within a minute) open it again from that offset, on the next of `urls`."""

    def __init__(
        self, urls: list[str], live: str, where: str | None = None, select: str | None = None
    ) -> None:
        self.urls = urls
        self.live = live
        given = {"where": where, "select": select}
        self.params = {name: value for name, value in given.items() if value is not None}
        self.rows: list[str] = []
        # The fields of each row read, as sets (one set where a projection holds).
        self.shapes: set[frozenset[str]] = set()
        self.offset = "-1"
        self.requests = 0

    async def follow(self, until: int) -> None:
        while len(self.rows) < until:
            url = self.urls[self.requests % len(self.urls)] + STREAM
            self.requests += 1
            async with astream(url, offset=self.offset, live=self.live, params=self.params) as res:
                async for event in res.iter_events(mode="json"):
                    self.rows += [row["message_id"] for row in event.data]
                    self.shapes |= {frozenset(row) for row in event.data}
                    self.offset = event.next_offset
                    if len(self.rows) >= until or len(self.urls) > 1:
                        break  # the next batch from the other instance


async def push(client: httpx.AsyncClient, numbers: range) -> None:
    """Push each message until it is stored, as Pub/Sub delivers it again after a 503."""
    for n in numbers:
        answer = await delivered(client, push_body(n))
        assert answer.status_code == 204, answer.text


async def killed_and_resumed(
    pushers: list[httpx.AsyncClient],
    urls: list[str],
    live: str,
    where: str | None = None,
    keeps: range | set[int] = range(20),
    select: str | None = None,
) -> None:
    """Read from -1, follow live pushes, be killed, push while dead, resume from the last
    offset reported while more rows arrive; every row exactly once, in order. With
    `where`, the stream of the rows it keeps (the pushes numbered in `keeps`); with
    `select`, each row only the fields it names, whichever instance answered."""
    await push(pushers[0], range(0, 5))
    follower = Follower(urls, live, where, select)
    first = asyncio.create_task(follower.follow(until=1_000))
    await push(pushers[-1], range(5, 10))
    early = len([n for n in keeps if n < 8])
    await until(lambda: len(follower.rows) >= early, timeout=30, what="the follower's first rows")
    first.cancel()  # killed between two batches, or mid-read
    with contextlib.suppress(asyncio.CancelledError):
        await first
    await push(pushers[0], range(10, 15))
    resumed = asyncio.create_task(follower.follow(until=len(keeps)))
    await push(pushers[-1], range(15, 20))
    acknowledged = datetime.now(UTC)
    await asyncio.wait_for(resumed, 30)
    # Listed where the last push was acknowledged, whose pages reach past every row it
    # acknowledged and every row acknowledged before. (Another instance's page ends a
    # few milliseconds back, READ_LAG_MICROS: it lists the newest row a moment later.)
    everything = await listed(pushers[-1], where, acknowledged)
    assert everything == [f"m-{n}" for n in sorted(keeps)]
    assert follower.rows == everything
    if select is not None:
        assert follower.shapes == {frozenset(select.split(","))}
    others = pushers[:-1]
    await until(
        lambda: all_list(others, everything, where, acknowledged),
        what="every other instance to list them",
    )


async def listed(
    client: httpx.AsyncClient, where: str | None = None, through: datetime | None = None
) -> list[str]:
    """The rows a listing from the start names, page after page as a client reads it,
    until a page is complete `through` then (a filtered page may end short, even
    empty, before it is: its token goes on); without `through`, its first page."""
    params: dict[str, Any] = {"limit": 1000} | ({} if where is None else {"where": where})
    rows: list[str] = []
    for _ in range(100):
        page = (await client.get("/v1/records", params=params)).json()
        rows += [row["message_id"] for row in page["records"]]
        complete = datetime.fromisoformat(page["complete_until"].replace("Z", "+00:00"))
        if through is None or complete >= through or not page.get("next_page_token"):
            return rows
        params = {"limit": 1000, "page_token": page["next_page_token"]}
    raise AssertionError(f"a listing not complete through {through} in 100 pages")


async def all_list(
    clients: list[httpx.AsyncClient], rows: list[str], where: str | None, through: datetime
) -> bool:
    """Whether each client lists `rows`, page after page until complete `through` (a
    filtered page may end short of it, on a busy machine as on an idle one)."""
    return all([await listed(client, where, through) == rows for client in clients])


@pytest.fixture
async def duckdb_client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    store = DuckDBStore(str(tmp_path / "records.duckdb"))
    app = create_app(long_polling(settings(**LIVE_SETTINGS), LONG_POLL_SECONDS), store=store)
    async with served(app) as client:
        yield client


@pytest.mark.slow
@pytest.mark.parametrize("live", ["long-poll", "sse"])
async def test_the_python_client_follows_on_duckdb(
    duckdb_client: httpx.AsyncClient, live: str
) -> None:
    await killed_and_resumed([duckdb_client], [str(duckdb_client.base_url)], live)


def serving_app(emulator: SpannerEmulator, database: str, bigquery: ThreadedBigQuery) -> Recordline:
    store = serving_store(database, emulator.host, bigquery)
    return create_app(long_polling(settings(**LIVE_SETTINGS), LONG_POLL_SECONDS), store=store)


# A stream of what an expression keeps (push n's `data` is n), followed alike.
WHERE = "data >= 3 AND NOT data IN (6, 11, 17)"
KEPT = set(range(3, 20)) - {6, 11, 17}
# What of each row such a follower keeps.
SELECT = "message_id,data"


@pytest.mark.emulator
@pytest.mark.parametrize("live", ["long-poll", "sse"])
@pytest.mark.parametrize(("where", "select"), [(None, None), (WHERE, None), (WHERE, SELECT)])
async def test_the_python_client_follows_two_serving_instances_alternately(
    spanner_emulator: SpannerEmulator,
    threaded_bigquery: ThreadedBigQuery,
    live: str,
    where: str | None,
    select: str | None,
) -> None:
    database = spanner_emulator.database()
    one = serving_app(spanner_emulator, database, threaded_bigquery)
    two = serving_app(spanner_emulator, database, threaded_bigquery)
    async with served(one) as first, served(two) as second:
        urls = [str(first.base_url), str(second.base_url)]
        keeps = range(20) if where is None else KEPT
        await killed_and_resumed([first, second], urls, live, where, keeps, select)


# -- TypeScript, under node ---------------------------------------------------------

CLIENT_SCRIPT = Path(__file__).with_name("streams_client.mjs")


async def run_node(script: Path, *args: str, package_dir: Path) -> dict[str, Any]:
    """Run `script` beside the installed package (node resolves an ES module's imports
    from where the module is), and read the JSON line it prints last."""
    beside = package_dir / script.name
    beside.write_bytes(script.read_bytes())
    process = await asyncio.create_subprocess_exec(
        "node", str(beside), *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), 60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, err.decode()
    found: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return found


@pytest.mark.node
@pytest.mark.slow
@pytest.mark.parametrize("live", ["long-poll", "sse"])
async def test_the_typescript_client_follows_kill_and_resume(
    duckdb_client: httpx.AsyncClient, live: str
) -> None:
    package_dir = npm_package("@durable-streams/client")
    url = str(duckdb_client.base_url) + STREAM
    await push(duckdb_client, range(0, 5))
    # Reads from -1 until it has 8 rows while they are pushed, then exits (killed):
    # what it printed last is the offset it reported with them.
    first = asyncio.create_task(
        run_node(CLIENT_SCRIPT, url, "-1", live, "8", package_dir=package_dir)
    )
    await asyncio.sleep(0.5)  # node starting is not what is tested; the rows come meanwhile
    await push(duckdb_client, range(5, 10))
    before = await first
    await push(duckdb_client, range(10, 15))
    resumed = asyncio.create_task(
        run_node(
            CLIENT_SCRIPT,
            url,
            before["offset"],
            live,
            str(20 - len(before["rows"])),
            package_dir=package_dir,
        )
    )
    await push(duckdb_client, range(15, 20))
    after = await resumed
    everything = (await duckdb_client.get("/v1/records")).json()["records"]
    assert before["rows"] + after["rows"] == [row["message_id"] for row in everything]


# -- the docs' examples, as written ------------------------------------------------

DOCS_PAGE = Path(__file__).resolve().parent.parent / "docs" / "streams.md"
DOCS_URL = "http://127.0.0.1:8080"


def example(language: str, index: int, url: str) -> str:
    blocks = re.findall(rf"```{language}\n(.*?)```", DOCS_PAGE.read_text(), flags=re.DOTALL)
    return str(blocks[index]).replace(DOCS_URL, url)


@pytest.mark.slow
async def test_the_docs_python_catch_up_runs_as_written(
    duckdb_client: httpx.AsyncClient,
) -> None:
    await push(duckdb_client, range(3))
    namespace: dict[str, Any] = {}
    # The synchronous client, in a thread: the server runs on this event loop.
    await asyncio.to_thread(exec, example("python", 0, str(duckdb_client.base_url)), namespace)
    assert [r["message_id"] for r in namespace["records"]] == ["m-0", "m-1", "m-2"]
    tail = (await duckdb_client.head(STREAM)).headers["stream-next-offset"]
    assert namespace["offset"] == tail


@pytest.mark.node
@pytest.mark.slow
async def test_the_docs_typescript_follower_runs_as_written(
    duckdb_client: httpx.AsyncClient,
) -> None:
    package_dir = npm_package("@durable-streams/client")
    await push(duckdb_client, range(2))
    script = package_dir / "follow.mjs"
    script.write_text(example("js", 0, str(duckdb_client.base_url)))
    process = await asyncio.create_subprocess_exec(
        "node", str(script), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        lines = []
        async with asyncio.timeout(30):
            while not lines or not lines[-1].startswith("resume from"):
                lines.append((await process.stdout.readline()).decode().strip())
    finally:
        process.kill()  # it follows for ever, as the docs say
        await process.wait()
    assert [line.split()[0] for line in lines[:-1]] == ["m-0", "m-1"]
    tail = (await duckdb_client.head(STREAM)).headers["stream-next-offset"]
    assert lines[-1] == f"resume from {tail}"


# -- the official conformance suite --------------------------------------------------

# What of @durable-streams/server-conformance-tests applies to a server that only
# reads: every other test creates its own stream (PUT) and most append to it (POST),
# which a read-only server refuses (405); the suite has no way to be pointed at a
# stream that exists already. These read streams that do not exist, in each mode.
CONFORMANCE_READS = [
    "HEAD Metadata should return 404 for non-existent stream",
    "Offset Validation and Resumability should return 404 for offset=now on non-existent stream",
    "Offset Validation and Resumability should return 404 for offset=now with long-poll on "
    "non-existent stream",
    "Offset Validation and Resumability should return 404 for offset=now with SSE on "
    "non-existent stream",
]
CONFORMANCE_RUNNER = (
    'import { runConformanceTests } from "@durable-streams/server-conformance-tests"\n'
    "runConformanceTests({ baseUrl: process.env.CONFORMANCE_TEST_URL })\n"
)


@pytest.mark.node
@pytest.mark.slow
async def test_the_read_only_part_of_the_conformance_suite_passes(
    duckdb_client: httpx.AsyncClient, tmp_path: Path
) -> None:
    package_dir = npm_package("@durable-streams/server-conformance-tests")
    (package_dir / "conformance.test.mjs").write_text(CONFORMANCE_RUNNER)
    report = tmp_path / "conformance.json"
    pattern = "^(" + "|".join(re.escape(name) for name in CONFORMANCE_READS) + ")$"
    process = await asyncio.create_subprocess_exec(
        str(package_dir / "node_modules" / ".bin" / "vitest"),
        "run",
        "conformance.test.mjs",
        "--no-coverage",
        "--reporter=json",
        f"--outputFile={report}",
        "--testNamePattern",
        pattern,
        cwd=package_dir,
        env={**os.environ, "CONFORMANCE_TEST_URL": str(duckdb_client.base_url)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _, err = await asyncio.wait_for(process.communicate(), 120)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    results = json.loads(report.read_text())
    outcomes = {
        test["fullName"]: test["status"]
        for suite in results["testResults"]
        for test in suite["assertionResults"]
        if test["status"] != "skipped" and test["status"] != "pending"
    }
    assert outcomes == dict.fromkeys(CONFORMANCE_READS, "passed"), err.decode()[-2000:]
