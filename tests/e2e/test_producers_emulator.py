"""Producer sequences through the Pub/Sub emulator: what a publisher sent reached the
store once, and what never arrived is named.

- A publish whose answer is lost after Pub/Sub stored it: a TCP proxy between the
  publisher and the emulator passes the Publish request on and cuts the connection
  when the answer comes back, so google-cloud-pubsub publishes the batch again and
  Pub/Sub stores every message of it a second time, under new message ids. Each
  event is stored once; the copies are counted.
- Messages withheld: some dead-lettered (the store refuses them until fixed), one
  never published (the publisher died with it), and the last of an epoch lost (the
  next epoch says how many there were). After the grace period each is missing, by
  its exact range; `recordline audit` exits 1 naming the first until replaying the
  dead letters and publishing the rest again closes every gap.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from google.cloud import pubsub_v1
from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

from app.asgi import create_app
from app.commands import audit as auditing
from app.commands.replay import Service, replay_dead_letters
from app.ingest import batcher
from app.ingest.publisher import SequencedPublisher
from app.records import Record, Rejection
from app.store import PublisherDuplicate, RowOutcome
from app.store.duckdb.store import DuckDBStore
from recordline_dev.client import publish, publisher_client
from tests.conftest import served, settings
from tests.e2e.conftest import PUSH_TOKEN, Follower, RecordingStore, Wiring, payloads
from tests.waiting import until


def quiet(line: str) -> None:
    """What a replay says of a message it could not send: unheard here."""


pytestmark = pytest.mark.emulator

_FRAME = struct.Struct(">I")  # HTTP/2: 24-bit length, then type, flags, stream id
_HEADERS = 1


class LosesAnswers:
    """A TCP proxy to the emulator that passes every request on and, `drops` times, cuts
    the connection when the answer to a call comes back (after holding it `hold` s): the
    client sees the call fail (UNAVAILABLE) though Pub/Sub did what it asked."""

    def __init__(self, target: str, *, drops: int, hold: float) -> None:
        self.host, port = target.rsplit(":", 1)
        self.port = int(port)
        self.drops = drops
        self.hold = hold
        self.dropped = 0
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self.address = ""

    async def __aenter__(self) -> LosesAnswers:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.address = f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        task.add_done_callback(self._connections.discard)
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await self._relay(reader, writer)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(self.host, self.port)
        forward = asyncio.create_task(_pipe(reader, upstream_writer))
        try:
            await self._answers(upstream_reader, writer)
        finally:
            forward.cancel()
            for end in (writer, upstream_writer):
                end.close()

    async def _answers(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Frame by frame from the emulator to the client; the first answer's HEADERS
        frame, while drops are left, ends the connection instead."""
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                head = await reader.readexactly(9)
                length = _FRAME.unpack(b"\0" + head[:3])[0]
                kind, stream = head[3], _FRAME.unpack(head[5:9])[0] & 0x7FFFFFFF
                payload = await reader.readexactly(length)
                if kind == _HEADERS and stream and self.dropped < self.drops:
                    self.dropped += 1
                    await asyncio.sleep(self.hold)  # late, then never
                    return
                writer.write(head + payload)
                await writer.drain()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, asyncio.CancelledError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()


class CountingStore(RecordingStore):
    """What the store made of every row it was given, by message id."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.delivered: Counter[str] = Counter()
        self.duplicates: Counter[str] = Counter()

    async def append(self, rows: Sequence[Record | Rejection]) -> Sequence[RowOutcome]:
        outcomes = await super().append(rows)
        for row, outcome in zip(rows, outcomes, strict=True):
            self.delivered[row.message_id] += 1
            if isinstance(outcome, PublisherDuplicate):
                self.duplicates[row.message_id] += 1
        return outcomes


async def _quiet(store: CountingStore) -> bool:
    """Whether a second went by with no delivery (a quiet second, what is waited for)."""
    before = sum(store.delivered.values())
    await asyncio.sleep(1)
    return sum(store.delivered.values()) == before


@contextlib.asynccontextmanager
async def service(store: RecordingStore, **env: str) -> AsyncIterator[tuple[Any, str]]:
    app = create_app(settings(RECORDLINE_PUSH_TOKEN=PUSH_TOKEN, **env), store=store)
    async with served(app) as http:
        yield http, str(http.base_url).rstrip("/")


async def test_a_publish_answered_too_late_is_published_again_and_stored_once(
    wiring: Wiring, emulator: Any
) -> None:
    store = CountingStore(DuckDBStore(":memory:"))
    async with (
        service(store) as (http, url),
        Follower(http) as follower,
        LosesAnswers(emulator.host, drops=1, hold=0.5) as proxy,
    ):
        await wiring.connect(url)
        client = publisher_client(emulator_host=proxy.address)
        publisher = SequencedPublisher(client, "orders-api", epoch=3)
        try:
            sent = await asyncio.to_thread(
                publish, publisher, [wiring.topic_path], payloads("late", 30), keep_ids=True
            )
        finally:
            client.stop()
        assert sent.failed == 0, sent.first_error
        assert proxy.dropped == 1
        await follower.wait_for({f"late-{n}" for n in range(30)}, timeout=60)
        # Pub/Sub stored the lost batch twice: the copies came under ids of their own.
        await until(
            lambda: len(store.delivered) > 30,
            timeout=30,
            what=lambda: f"the copies to be delivered ({len(store.delivered)} messages were)",
        )
        await until(lambda: _quiet(store), timeout=30, what="deliveries to end")
        ledger = (await http.get("/v1/producers/orders-api")).json()
        duplicates = sum(store.duplicates.values())
        copies = set(store.delivered) - set(follower.message_ids)
    follower.assert_exactly_once({f"late-{n}" for n in range(30)})
    assert copies, "the client library published nothing again"
    assert copies == set(store.duplicates)  # every copy, and only copies, was a duplicate
    (epoch,) = ledger["epochs"]
    assert (epoch["epoch"], epoch["contiguous"], epoch["gaps"], epoch["stored"]) == (3, 29, [], 30)
    assert epoch["duplicates"] == duplicates


def sequence(epoch: int, number: int, **more: str) -> dict[str, str]:
    return {
        "recordline-producer": "orders-api",
        "recordline-epoch": str(epoch),
        "recordline-seq": str(number),
        **more,
    }


async def test_withheld_messages_are_missing_until_replayed_and_audit_says_so(
    wiring: Wiring,
    publisher: Any,
    emulator: Any,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    poison = frozenset({"held-3", "held-4", "held-8"})
    store = CountingStore(DuckDBStore(":memory:"), poison=poison)
    data = payloads("held", 12)
    # One push an append: a store refuses a whole append, and a message that shared
    # every delivery's append with a poisoned one would be dead-lettered too (their
    # redeliveries come together), which is not what is tested here.
    monkeypatch.setattr(batcher, "MAX_BATCH_ROWS", 1)
    async with (
        service(store, RECORDLINE_PRODUCER_GRACE_SECONDS="1") as (http, url),
        Follower(http) as follower,
    ):
        await wiring.connect(url)
        # A second subscription to the dead-letter topic shows the dead letters arrive;
        # the kept one stays untouched for the replay.
        watch = f"{wiring.topic}-dead-letter-watch"
        await wiring.admin.create_pull_subscription(watch, topic=f"{wiring.topic}-dead-letter")
        try:
            # Epoch 1: sequence 6 is never published (the publisher died with it), and
            # 3, 4 and 8 the store refuses until fixed. Epoch 2 says epoch 1 published
            # 12: 11, lost with the epoch's end, never arrives either.
            sends = [
                publisher.publish(wiring.topic_path, data[n], **sequence(1, n))
                for n in range(11)
                if n != 6
            ]
            sends.append(
                publisher.publish(
                    wiring.topic_path,
                    payloads("next", 1)[0],
                    **sequence(2, 0, **{"recordline-epoch-ended": "1:12"}),
                )
            )
            await asyncio.to_thread(lambda: [f.result(timeout=30) for f in sends])
            dead: set[str] = set()

            async def all_dead() -> bool:
                pulled = await wiring.admin.pull(watch)
                dead.update(m["attributes"]["recordline-seq"] for m in pulled)
                return len(dead) == 3

            await until(all_dead, timeout=120, interval=0.5, what=lambda: f"dead: {dead}")
        finally:
            await wiring.admin.delete_subscription(watch)
        assert dead == {"3", "4", "8"}
        stored = {f"held-{n}" for n in (0, 1, 2, 5, 7, 9, 10)}
        await follower.wait_for(stored | {"next-0"}, timeout=30)

        async def missing() -> list[tuple[int, int]]:
            found = (await http.get("/v1/producers/orders-api")).json()
            gaps = found["epochs"][0]["gaps"]
            return [(g["first"], g["last"]) for g in gaps if g["missing"]]

        # Exact ranges, once past the grace period.
        everything = [(3, 4), (6, 6), (8, 8), (11, 11)]
        await until(lambda: _equal(missing, everything), timeout=30, interval=0.2)
        args = SimpleNamespace(
            since=datetime.now(UTC) - timedelta(hours=1), until=None, url=url, token=None
        )
        capsys.readouterr()
        assert await asyncio.to_thread(auditing.run, args) == 1
        said = capsys.readouterr().err
        assert "missing: producer 'orders-api' epoch 1 sequences " in said
        assert "5 in all" in said

        # Fixed, then replayed: the dead letters fill their gaps; the rest stay missing.
        store.poison = frozenset()
        subscriber = pubsub_v1.SubscriberClient(
            transport=SubscriberGrpcTransport(channel=grpc.insecure_channel(emulator.host))
        )
        replayer = Service(url, token=PUSH_TOKEN)
        try:
            counts = await asyncio.to_thread(
                replay_dead_letters, replayer, subscriber, wiring.dead_letters,
                limit=None, dry_run=False, say=quiet,
            )  # fmt: skip
        finally:
            replayer.close()
            subscriber.close()
        assert counts["stored"] == 3
        assert await missing() == [(6, 6), (11, 11)]
        assert await asyncio.to_thread(auditing.run, args) == 1
        assert "2 in all" in capsys.readouterr().err
        # The producer publishes what it never did, with the same attributes: each
        # stored once, and the ledger is complete.
        resent = [publisher.publish(wiring.topic_path, data[n], **sequence(1, n)) for n in (6, 11)]
        await asyncio.to_thread(lambda: [f.result(timeout=30) for f in resent])
        await follower.wait_for({"held-6", "held-11"}, timeout=30)
        assert await missing() == []
        assert await asyncio.to_thread(auditing.run, args) == 0
        ledger = (await http.get("/v1/producers/orders-api")).json()
    follower.assert_exactly_once({f"held-{n}" for n in range(12)} | {"next-0"})
    first, second = ledger["epochs"]
    assert (first["contiguous"], first["end"], first["published"], first["stored"]) == (
        11,
        "said",
        12,
        12,
    )
    assert (second["epoch"], second["end"]) == (2, "open")


async def _equal(read: Any, expected: Any) -> bool:
    return bool(await read() == expected)
