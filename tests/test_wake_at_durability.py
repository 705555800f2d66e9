"""Followers woken at durability on DuckDB: a record reaches a waiting follower once it
is journaled, before DuckDB has it, and never as a row a later read could not return
or in another order; a crash between the two loses or reorders nothing."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import threading
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import hypothesis
import pytest
from hypothesis import strategies as st

from app.asgi import create_app
from app.http.head import Recordline
from app.records import Record, Rejection
from app.store import PageQuery
from app.store.duckdb.store import DuckDBStore
from tests.conftest import served, settings
from tests.test_follow import following, push_body, tail_token, until_waiting
from tests.waiting import until


class HeldApply(DuckDBStore):
    """DuckDB whose applier waits for `released` before each insert: what a follower
    sees between a row's durability (the journal) and its apply, made as long as the
    test needs. (The applier's own thread waits; the event loop does not.)"""

    def __init__(self, path: str, **options: Any) -> None:
        super().__init__(path, **options)
        self.released = threading.Event()
        self.released.set()
        self.inserting = threading.Event()  # the applier has cut its batch
        self.inserts: list[list[str]] = []  # the message ids of each insert
        insert = self._applier.insert

        def held(rows: Sequence[Record | Rejection], *rest: Any) -> Any:
            self.inserting.set()
            self.inserts.append([r.message_id for r in rows])
            self.released.wait(30)
            return insert(rows, *rest)

        self._applier.insert = held


@pytest.fixture
def store(tmp_path: Path) -> HeldApply:
    return HeldApply(str(tmp_path / "records.duckdb"))


@pytest.fixture
def app(store: HeldApply) -> Recordline:
    return create_app(settings(), store=store)


@pytest.fixture
async def client(app: Recordline) -> AsyncIterator[httpx.AsyncClient]:
    async with served(app) as client:
        yield client


async def waiting_page(app: Recordline, client: httpx.AsyncClient, token: str) -> Any:
    page = asyncio.create_task(client.get("/v1/records", params={"page_token": token, "wait": 20}))
    await until_waiting(app, 1)
    return page


@pytest.mark.slow
async def test_a_waiting_follower_gets_a_record_once_journaled_before_duckdb_has_it(
    app: Recordline, client: httpx.AsyncClient, store: HeldApply
) -> None:
    await client.post("/pubsub/push", json=push_body(0))
    token = await tail_token(client)
    page = await waiting_page(app, client, token)
    store.released.clear()  # DuckDB gets nothing more until the test says so
    try:
        assert (await client.post("/pubsub/push", json=push_body(1))).status_code == 204
        woken = (await asyncio.wait_for(page, 10)).json()
        assert [r["message_id"] for r in woken["records"]] == ["m-1"]
        # A read right after, from the same cursor, answers the same row (from the tail).
        again = (await client.get("/v1/records", params={"page_token": token})).json()
        assert again["records"] == woken["records"]
        # A redelivery of it is no new record: a follower waiting after it hears of none.
        after = await waiting_page(app, client, woken["next_page_token"])
        assert (await client.post("/pubsub/push", json=push_body(1))).status_code == 204
        assert (await client.post("/pubsub/push", json=push_body(2))).status_code == 204
        assert [r["message_id"] for r in (await after).json()["records"]] == ["m-2"]
    finally:
        store.released.set()
    # Once applied, what DuckDB reads is what the followers were shown, in that order.
    everything = (await client.get("/v1/records", params={"limit": 1000})).json()["records"]
    assert [r["message_id"] for r in everything] == ["m-0", "m-1", "m-2"]
    assert everything[1] == woken["records"][0]


@pytest.mark.slow
async def test_a_redelivery_of_a_stored_record_is_never_shown_to_a_follower(
    app: Recordline, client: httpx.AsyncClient
) -> None:
    await client.post("/pubsub/push", json=push_body(1))  # stored, applied
    token = await tail_token(client)
    page = await waiting_page(app, client, token)
    await client.post("/pubsub/push", json=push_body(1))  # Pub/Sub delivers it again
    await client.post("/pubsub/push", json=push_body(3))
    assert [r["message_id"] for r in (await page).json()["records"]] == ["m-3"]


@pytest.mark.slow
async def test_a_crash_between_durability_and_apply_loses_and_reorders_nothing(
    tmp_path: Path,
) -> None:
    """The records a follower was shown before DuckDB had them are those the next start
    recovers from the journal, with the same keys: resumed from the follower's last
    cursor, nothing is missing or repeated. The crash is the files on disk at that
    instant (DuckDB's and the journal's), started again elsewhere."""
    live, crashed = tmp_path / "live", tmp_path / "crashed"
    live.mkdir()
    crashed.mkdir()
    first = HeldApply(str(live / "records.duckdb"))
    app = create_app(settings(), store=first)
    async with served(app) as client:
        await client.post("/pubsub/push", json=push_body(0))
        token = await tail_token(client)
        page = await waiting_page(app, client, token)
        first.released.clear()  # journaled from now on, not applied
        try:
            for n in (1, 2):
                assert (await client.post("/pubsub/push", json=push_body(n))).status_code == 204
            woken = (await page).json()
            for file in live.iterdir():  # the disk as a crash leaves it
                shutil.copy2(file, crashed / file.name)
        finally:
            first.released.set()
    shown = woken["records"]
    assert [r["message_id"] for r in shown] == ["m-1", "m-2"][: len(shown)]
    assert shown
    async with served(
        create_app(settings(), store=DuckDBStore(str(crashed / "records.duckdb")))
    ) as client:
        await client.post("/pubsub/push", json=push_body(3))
        rest = (
            await client.get("/v1/records", params={"page_token": woken["next_page_token"]})
        ).json()
        everything = (await client.get("/v1/records")).json()["records"]
    seen = ["m-0", *(r["message_id"] for r in shown), *(r["message_id"] for r in rest["records"])]
    assert seen == [r["message_id"] for r in everything] == ["m-0", "m-1", "m-2", "m-3"]
    assert everything[1 : 1 + len(shown)] == shown


def record(n: int, ingest_time: int) -> Record:
    return Record(message_id=f"m-{n}", publish_time=0, ingest_time=ingest_time, id=f"r-{n}")


async def test_a_redelivery_shown_while_its_first_copy_waits_to_apply_hides_neither() -> None:
    """A message's first copy journaled while no follower waits (so shown only once
    applied), a redelivery of it journaled while one does (shown at once, with nothing
    new in it), both applied by one insert: the record reaches the tail all the same.
    A push held up by a pause and Pub/Sub's redelivery of it land this way, and a
    follower at the tail went past the record without ever being answered it."""
    store = HeldApply(":memory:")
    await store.start()
    try:
        now = time.time_ns() // 1000
        store.released.clear()
        await store.append([record(0, now)])
        await until(store.inserting.is_set, what="the applier to take the first append")
        await store.append([record(1, now + 1)])  # nobody waits: shown once applied
        follower = asyncio.create_task(store.live.wait(store.live.version, 30))
        await until(lambda: store.live.waiting, what="a follower to wait")
        await store.append([record(1, now + 2)])  # the redelivery: nothing new to show
        store.released.set()  # the applier takes both of m-1's appends in one insert
        await store.barrier()
        await follower
        assert store.inserts == [["m-0"], ["m-1", "m-1"]]
        horizon = store.read_horizon(time.time_ns() // 1000)
        after_first = PageQuery(
            after_time=now, after_message_id="m-0", before_time=horizon, limit=100
        )
        assert store.live.covers(after_first)
        page = await store.page(Record, after_first)
        assert [(r.message_id, r.ingest_time) for r in page.rows] == [("m-1", now + 1)]
        # DuckDB has it either way: a read of it there (not from the tail, started
        # afresh after them as by a store that lost track of it) finds it.
        store.live.readable([], now=horizon, since=(horizon, ""))
        everything = PageQuery(after_time=0, after_message_id="", before_time=horizon, limit=100)
        assert not store.live.covers(everything)
        stored = await store.page(Record, everything)
        assert [r.message_id for r in stored.rows] == ["m-0", "m-1"]
    finally:
        store.released.set()
        await store.close()


class HeldEarlyRead(DuckDBStore):
    """DuckDB whose early read (which of an append's records it will keep, asked while
    followers wait) waits for `held`: an append journaled first is queued last."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.held = asyncio.Event()
        self.asked = asyncio.Event()
        new_records = self._applier.early.new_records

        async def held(records: list[Record]) -> list[Record]:
            self.asked.set()
            await self.held.wait()
            return await new_records(records)

        self._applier.early.new_records = held


def stored(message_id: str) -> Record:
    now = time.time_ns() // 1000
    return Record(
        message_id=message_id, publish_time=now, ingest_time=now, id=message_id, data="{}"
    )


async def test_a_frame_queued_after_a_later_one_is_applied_before_reads_count_it(
    tmp_path: Path,
) -> None:
    # The first append waits for its early read while the second is journaled and
    # queued. Applying in the order they were queued would say frame 1 is the last
    # applied (while frame 2 is in DuckDB), and every read waiting for frame 2 would
    # wait its whole barrier and answer 503; the journal could let frame 1 go early.
    store = HeldEarlyRead(str(tmp_path / "records.duckdb"))
    await store.start()
    waiter = asyncio.ensure_future(store.live.wait(store.live.version, 30))
    try:
        await until(lambda: store.live.waiting == 1, interval=0)
        first = asyncio.ensure_future(store.append([stored("m-1")]))
        await store.asked.wait()
        await store.append([stored("m-2")])
        store.held.set()
        await first
        seen = await asyncio.wait_for(store.seen(["m-1", "m-2"]), 2)
        assert set(seen) == {"m-1", "m-2"}
    finally:
        waiter.cancel()
        await store.close()


def tail_ids(store: DuckDBStore) -> list[str]:
    """The message ids the tail holds (without a read of DuckDB)."""
    everything = PageQuery(after_time=0, after_message_id="", before_time=2**62, limit=1000)
    return [r.message_id for r in store.live.page(everything, 2**62).rows]


async def test_a_follower_reading_when_an_append_comes_is_shown_it_once_journaled() -> None:
    # A ring leaves nobody waiting while the followers it woke read: an append then
    # is still shown at durability, not ~3 ms later once applied (a follower's
    # usual wait at the tail, when writes come one after the other).
    store = HeldApply(":memory:", apply_every=60)
    await store.start()
    try:
        store.released.clear()  # DuckDB gets nothing until the test says so
        follower = asyncio.create_task(store.live.wait(store.live.version, 30))
        await until(lambda: store.live.waiting, what="a follower to wait")
        await store.append([stored("m-1")])
        assert await follower  # woken, and reading: nobody waits now
        assert store.live.waiting == 0
        await store.append([stored("m-2")])
        assert tail_ids(store) == ["m-1", "m-2"]
        assert not store.inserting.is_set()  # neither is in DuckDB
    finally:
        store.released.set()
        await store.close()


async def test_rows_shown_at_durability_are_applied_at_leisure_and_others_at_once() -> None:
    # Records a follower was shown when journaled need not be in DuckDB for any read
    # of the tail: each follower's append would otherwise cost an INSERT (~3 ms of
    # CPU). Rows it was not shown (here a rejection) it sees only once applied.
    store = HeldApply(":memory:", apply_every=60)
    await store.start()
    try:
        follower = asyncio.create_task(store.live.wait(store.live.version, 30))
        await until(lambda: store.live.waiting, what="a follower to wait")
        await store.append([stored("m-1")])
        await follower
        assert tail_ids(store) == ["m-1"]
        # Not applied (apply_every is a minute) while nothing asks for it.
        with pytest.raises(AssertionError, match="an insert"):
            await until(store.inserting.is_set, timeout=0.5, what="an insert")
        follower = asyncio.create_task(store.live.wait(store.live.version, 30))
        await until(lambda: store.live.waiting, what="a follower to wait again")
        now = time.time_ns() // 1000
        await store.append(
            [Rejection(message_id="r-1", publish_time=now, ingest_time=now, reason="bad")]
        )
        await until(store.inserting.is_set, timeout=5, what="the rejection to be applied")
        assert await asyncio.wait_for(follower, 5)  # rung once applied
        assert store.inserts == [["m-1", "r-1"]]
    finally:
        store.released.set()
        await store.close()


# -- fuzzed: whatever is pushed, a follower is shown what reads return --------------

_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
    max_leaves=6,
)
# A push: its message id (few, so Pub/Sub's redeliveries come, with the same payload
# or another), and a payload that is a record or not (a rejection is stored too).
_PUSH = st.tuples(
    st.integers(0, 5),
    st.one_of(
        st.builds(
            lambda record_id, data: json.dumps({"id": record_id, "data": data}).encode(),
            st.text(min_size=1, max_size=8) | st.integers(0, 99),
            _JSON,
        ),
        st.binary(max_size=16),
    ),
    _TEXT,
)
# Steps of pushes sent at once (appends in flight together are never shown early).
# Before a step: the follower waits on the bell ("waiting"), or may still be reading
# its last page ("any"), or DuckDB has every row so far ("applied": a look-up by
# message id waits for that), so a redelivery meets its first copy there.
_STEPS = st.lists(
    st.tuples(
        st.sampled_from(["waiting", "any", "applied"]), st.lists(_PUSH, min_size=1, max_size=3)
    ),
    min_size=1,
    max_size=6,
)


def _envelope(push: tuple[int, bytes, str]) -> dict[str, Any]:
    n, payload, attribute = push
    return {
        "message": {
            "data": base64.b64encode(payload).decode(),
            "messageId": f"f-{n}",
            "publishTime": "2024-04-27T12:00:01Z",
            "attributes": {"fuzzed": attribute},
        },
        "subscription": "projects/p/subscriptions/s",
    }


async def _followed_while_pushed(steps: list[tuple[str, list[tuple[int, bytes, str]]]]) -> None:
    store = DuckDBStore(":memory:")
    app = create_app(settings(), store=store)
    async with served(app) as client:
        followers = await following(app)
        token = await tail_token(client)
        shown: list[Any] = []

        async def follow() -> None:
            nonlocal token
            while True:
                asked = {"page_token": token, "limit": 1000}
                page = (await client.get("/v1/records", params={**asked, "wait": 10})).json()
                # What it was shown, a read from the same place right after returns.
                again = (await client.get("/v1/records", params=asked)).json()
                assert again["records"][: len(page["records"])] == page["records"]
                shown.extend(page["records"])
                token = page["next_page_token"]

        follower = asyncio.create_task(follow())
        try:
            for before, pushes in steps:
                if before == "waiting":
                    await until(lambda: followers.open == 1, what="the follower to wait")
                elif before == "applied":
                    await client.get("/v1/messages/f-0")
                answers = await asyncio.gather(
                    *(client.post("/pubsub/push", json=_envelope(push)) for push in pushes)
                )
                assert [answer.status_code for answer in answers] == [204] * len(pushes)
            stored = (await client.get("/v1/records", params={"limit": 1000})).json()["records"]
            await until(
                lambda: follower.done() or len(shown) >= len(stored),
                what="the follower to catch up",
            )
            if follower.done():
                follower.result()  # its assertion
            assert shown == stored
            ids = [record["message_id"] for record in stored]
            assert len(ids) == len(set(ids))  # each message once, however often delivered
        finally:
            follower.cancel()
            await asyncio.gather(follower, return_exceptions=True)


@pytest.mark.slow
@hypothesis.settings(max_examples=30, deadline=None)
@hypothesis.given(steps=_STEPS)
def test_a_follower_is_shown_each_stored_message_once_in_the_order_reads_return(
    steps: list[tuple[str, list[tuple[int, bytes, str]]]],
) -> None:
    asyncio.run(_followed_while_pushed(steps))
