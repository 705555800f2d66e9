"""The whole path with Google's Pub/Sub emulator as the push client.

One emulator serves the session (its JVM takes seconds to start); every test
gets topics and subscriptions of its own, deleted when it ends, so a test's
leftovers never push into the next one's service.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import msgspec
import pytest

from app.commands.tail import follow
from app.errors import StoreUnavailable
from app.records import Record, Rejection, micros
from app.store import RowOutcome
from recordline_dev.client import publish, publisher_client, trace_publishes
from recordline_dev.devstack import (
    MIN_DELIVERY_ATTEMPTS,
    Emulator,
    PubSubAdmin,
    find_emulator,
    wait_until_ready,
    wire,
)
from recordline_dev.processes import EmulatorNotFound, free_port, stop_group
from tests.fakes import FaultyStore
from tests.waiting import until

PUSH_TOKEN = "e2e-push-secret-0123456789"


@pytest.fixture(scope="session")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    try:
        launcher = find_emulator()
    except EmulatorNotFound as exc:
        pytest.skip(str(exc))  # starts "Pub/Sub emulator": CI turns it into a failure
    log = tmp_path_factory.mktemp("emulator") / "emulator.log"
    with Emulator(launcher, log_path=log) as running:
        yield running


@pytest.fixture(scope="session")
def publisher(emulator: Emulator) -> Any:
    # Tracing on, as `recordline publish` has it: messages carry a traceparent.
    trace_publishes()
    client = publisher_client(emulator_host=emulator.host)
    yield client
    client.stop()


class Wiring(msgspec.Struct, kw_only=True):
    """One test's topic, push subscription and dead-letter queue."""

    admin: PubSubAdmin
    topic: str
    topic_path: str = ""
    push_subscription: str = ""
    dead_letters: str = ""

    async def connect(
        self,
        service_url: str,
        *,
        ack_deadline_seconds: int = 10,
        dead_letters: bool = True,
        push_token: str | None = PUSH_TOKEN,
        unwrapped: bool = False,
    ) -> None:
        self.push_subscription, kept = await wire(
            self.admin,
            topic=self.topic,
            service_url=service_url,
            push_token=push_token,
            ack_deadline_seconds=ack_deadline_seconds,
            max_delivery_attempts=MIN_DELIVERY_ATTEMPTS if dead_letters else None,
            unwrapped=unwrapped,
        )
        self.dead_letters = kept or ""

    async def dead_lettered(self, *, timeout: float) -> list[dict[str, Any]]:
        """Pull the dead-letter queue until something arrives."""
        subscription = self.dead_letters.rsplit("/", 1)[1]
        with contextlib.suppress(AssertionError):  # the time ran out: nothing arrived
            return await until(lambda: self.admin.pull(subscription), timeout=timeout, interval=0.5)
        return []


@pytest.fixture
async def wiring(emulator: Emulator) -> AsyncIterator[Wiring]:
    topic = f"e2e-{uuid.uuid4().hex[:12]}"
    async with PubSubAdmin(emulator.host) as admin:
        wired = Wiring(admin=admin, topic=topic, topic_path=admin.topic_path(topic))
        try:
            yield wired
        finally:
            # The push subscription first: its push loops stop with it.
            for subscription in (f"{topic}-push", f"{topic}-dead-letter-kept"):
                await admin.delete_subscription(subscription)
            for name in (topic, f"{topic}-dead-letter"):
                await admin.delete_topic(name)


def payloads(prefix: str, count: int) -> list[bytes]:
    """Valid records whose ids say which test and which message they are."""
    return [
        msgspec.json.encode({"id": f"{prefix}-{n}", "data": {"n": n, "text": "Ejemplo de datos"}})
        for n in range(count)
    ]


async def publish_all(
    client: Any, topic_path: str, data: Sequence[bytes], *, rate: float = 0.0
) -> list[str]:
    """Publish in a thread (the library blocks), so the service in this loop keeps serving."""
    result = await asyncio.to_thread(publish, client, [topic_path], data, rate=rate, keep_ids=True)
    assert result.failed == 0, result.first_error
    return result.message_ids


class Seen(msgspec.Struct, frozen=True):
    message_id: str
    id: str
    publish_time: str
    ingest_time: datetime
    attributes: dict[str, str]


_decode_seen = msgspec.json.Decoder(Seen).decode


class Follower:
    """A consumer of /v1/records by page token, noting when each record first showed up."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http
        self.ids: Counter[str] = Counter()  # record id → times answered
        self.message_ids: Counter[str] = Counter()
        self.visible_at: dict[str, float] = {}  # record id → wall clock when first seen
        self.published_at: dict[str, float] = {}
        self.attributes: dict[str, dict[str, str]] = {}
        self.ingest_times: dict[str, int] = {}  # message id → ingest time (µs)
        self.order: list[str] = []  # message ids in the order they were answered
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Follower:
        self._task = asyncio.create_task(self._follow())
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _follow(self) -> None:
        # since=None: from the start of this test's store.
        async for page in follow(self.http, idle=0.05):
            now = time.time()
            for raw in page:
                seen = _decode_seen(raw)
                self.ids[seen.id] += 1
                self.message_ids[seen.message_id] += 1
                self.ingest_times[seen.message_id] = micros(seen.ingest_time)
                self.order.append(seen.message_id)
                if seen.id not in self.visible_at:
                    self.visible_at[seen.id] = now
                    self.published_at[seen.id] = _epoch(seen.publish_time)
                    self.attributes[seen.id] = seen.attributes

    async def wait_for(self, ids: set[str], *, timeout: float) -> None:
        def seen() -> bool:
            assert self._task is not None
            if self._task.done():
                self._task.result()  # it failed: its error
            return ids <= self.ids.keys()

        def missing() -> str:
            missing = ids - self.ids.keys()
            return f"all {len(ids)} to show, {len(missing)} never did, e.g. {sorted(missing)[:5]}"

        try:
            await until(seen, timeout=timeout, interval=0.1, what=missing)
        except AssertionError as exc:
            found = await self.whereabouts(sorted(ids - self.ids.keys())[:5])
            raise AssertionError(f"{exc}; {found}") from None

    async def whereabouts(self, record_ids: Sequence[str]) -> str:
        """What the service has of records the follower never got: stored but behind
        what it was answered (a page said it was complete past them), stored ahead of it
        (it stopped reading), or not stored (acknowledged and lost, or never pushed
        again after a push that was not acknowledged: the service log says which)."""
        newest = max(self.ingest_times.values(), default=0)
        said = []
        for record_id in record_ids:
            try:
                response = await self.http.get(f"/v1/records/{quote(record_id, safe='')}")
            except httpx.HTTPError as exc:
                said.append(f"{record_id} unknown (the service did not answer: {exc!r})")
                continue
            if response.status_code == 404:
                said.append(f"{record_id} is not in the store")
            elif response.status_code != 200:
                said.append(f"{record_id} unknown (the service answered {response.status_code})")
            else:
                stored = _decode_seen(response.content)
                where = "behind" if micros(stored.ingest_time) < newest else "after"
                said.append(
                    f"{record_id} is in the store (message {stored.message_id}, ingest time "
                    f"{stored.ingest_time.isoformat()}), {where} the newest record followed"
                )
        return "; ".join(said)

    async def wait_count(self, count: int, *, timeout: float) -> None:
        await until(
            lambda: len(self.ids) >= count,
            timeout=timeout,
            interval=0.05,
            what=lambda: f"{count} to show, {len(self.ids)} did",
        )

    def assert_exactly_once(self, ids: set[str]) -> None:
        assert self.ids.keys() == ids, f"unexpected records: {sorted(self.ids.keys() - ids)[:5]}"
        repeated = {i: n for i, n in self.ids.items() if n != 1}
        assert not repeated, f"answered more than once: {list(repeated.items())[:5]}"
        assert len(self.message_ids) == len(ids)
        assert set(self.message_ids.values()) == {1}

    def latencies(self, ids: set[str]) -> list[float]:
        """Publish-to-visible seconds, sorted."""
        return sorted(self.visible_at[i] - self.published_at[i] for i in ids)


def _epoch(rfc3339: str) -> float:
    return datetime.fromisoformat(rfc3339).timestamp()


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    index = min(len(sorted_values) - 1, round(fraction * (len(sorted_values) - 1)))
    return sorted_values[index]


class RecordingStore(FaultyStore):
    """A FaultyStore that also refuses every append holding a poison id, and counts refusals.

    A store refuses a whole append, so rows that share a flush with a poison
    row are refused with it (and redelivered), as they would be in production.
    """

    def __init__(self, *args: Any, poison: frozenset[str] = frozenset(), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.poison = poison
        self.refusals: Counter[str] = Counter()  # record id → appends refused with it in

    async def append(self, rows: Sequence[Record | Rejection]) -> Sequence[RowOutcome]:
        ids = {row.id for row in rows if isinstance(row, Record)}
        if self.failing or ids & self.poison:
            self.refusals.update(ids)
            raise StoreUnavailable("injected: refused")
        return await super().append(rows)


class ServiceProcess:
    """`recordline serve` as a real process on a fixed port, to stop and restart in place."""

    def __init__(
        self, *, port: int, store: str, log: Path, env: dict[str, str] | None = None
    ) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.store = store  # empty: RECORDLINE_STORE from `env`
        self.log = log
        self.env = env or {}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {
            **os.environ,
            **self.env,
            "RECORDLINE_PUSH_TOKEN": PUSH_TOKEN,
            "RECORDLINE_LOG_FORMAT": "json",
        }
        store = ["--store", self.store] if self.store else []
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "serve", "--port", str(self.port), *store],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_until_ready(f"{self.url}/readyz", timeout=60, process=self.process)

    def terminate(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)

    def signal(self, sig: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def close(self) -> None:
        if self.process is not None:
            # A paused process ignores SIGTERM until it runs again.
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGCONT)
            stop_group(self.process, timeout=15)


@pytest.fixture
def service_process(tmp_path: Path) -> Iterator[ServiceProcess]:
    service = ServiceProcess(
        port=free_port(),
        store=f"duckdb://{tmp_path / 'records.duckdb'}",
        log=tmp_path / "service.log",
    )
    try:
        yield service
    finally:
        service.close()
