"""The emulator pushes to the service in this process, whose store faults on cue.

The store is passed to `create_app`, wrapped in a fake that fails through the
Store protocol; the emulator reaches the service on a real loopback port.
"""

from __future__ import annotations

import asyncio
import base64
import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import httpx
import msgspec
import pytest
from google.cloud import pubsub_v1
from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

from app.asgi import create_app
from app.commands.replay import ReplayError, Service, replay_dead_letters
from app.ingest.envelope import is_attribute
from app.store.duckdb.store import DuckDBStore
from recordline_dev.devstack import Canary
from recordline_dev.processes import free_port
from tests.conftest import served, settings
from tests.e2e.conftest import (
    PUSH_TOKEN,
    Follower,
    RecordingStore,
    Wiring,
    payloads,
    percentile,
    publish_all,
)
from tests.waiting import until


def quiet(line: str) -> None:
    """What a replay says of a message it could not send: unheard here."""


pytestmark = pytest.mark.emulator


@asynccontextmanager
async def service(store: RecordingStore) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    app = create_app(settings(RECORDLINE_PUSH_TOKEN=PUSH_TOKEN), store=store)
    async with served(app) as http:
        yield http, str(http.base_url).rstrip("/")


def ids(prefix: str, count: int) -> set[str]:
    return {f"{prefix}-{n}" for n in range(count)}


async def test_every_published_message_is_answered_exactly_once(
    wiring: Wiring, publisher: Any
) -> None:
    store = RecordingStore(DuckDBStore(":memory:"))
    async with service(store) as (http, url), Follower(http) as follower:
        await wiring.connect(url)
        await publish_all(publisher, wiring.topic_path, payloads("bulk", 5000))
        await follower.wait_for(ids("bulk", 5000), timeout=150)
        # A quiet second, for what it tests: a redelivery that came after the
        # last first delivery would show twice by its end.
        await asyncio.sleep(1)
    follower.assert_exactly_once(ids("bulk", 5000))
    # The publisher traced every message, and the trace context reached storage.
    assert all("googclient_traceparent" in a for a in follower.attributes.values())


async def test_a_store_outage_is_redelivered_and_nothing_is_lost(
    wiring: Wiring, publisher: Any
) -> None:
    store = RecordingStore(DuckDBStore(":memory:"))
    async with service(store) as (http, url), Follower(http) as follower:
        await wiring.connect(url)
        publishing = asyncio.create_task(
            publish_all(publisher, wiring.topic_path, payloads("outage", 1000), rate=200)
        )
        await follower.wait_count(100, timeout=30)
        store.failing = True  # every append fails: pushes are answered 503
        # The outage lasts until a refused record came again and was refused
        # again: redelivery is under way. Not much longer: a record refused on
        # all 5 delivery attempts goes to the dead-letter topic, not the store.
        await until(
            lambda: max(store.refusals.values(), default=0) >= 2,
            what=lambda: f"a redelivery refused ({len(store.refusals)} records refused)",
        )
        store.failing = False
        refused = sum(store.refusals.values())
        await publishing
        await follower.wait_for(ids("outage", 1000), timeout=90)
        await asyncio.sleep(1)  # a quiet second, for what it tests: no record shows twice
    assert refused > 0, "the outage refused nothing: it did not test redelivery"
    follower.assert_exactly_once(ids("outage", 1000))


INVALID = {
    b"not json": "payload is not JSON",
    b'{"data": "no id"}': "missing required field `id`",
    b'{"id": true}': "`$.id`",
    b'{"id": "t", "timestamp": "yesterday"}': "`$.timestamp`",
    b"\xff\xfe\x00": "payload is not JSON",
}


async def test_invalid_payloads_are_rejected_with_a_reason_and_do_not_slow_the_rest(
    wiring: Wiring, publisher: Any
) -> None:
    store = RecordingStore(DuckDBStore(":memory:"))
    before, after = payloads("before", 100), payloads("after", 100)
    invalid = list(INVALID) * 6
    async with service(store) as (http, url), Follower(http) as follower:
        await wiring.connect(url)
        message_ids = await publish_all(
            publisher, wiring.topic_path, before + invalid + after, rate=50
        )
        valid = ids("before", 100) | ids("after", 100)
        await follower.wait_for(valid, timeout=60)
        await until(
            lambda: sum(store.appends) >= len(message_ids),
            what=lambda: f"all {len(message_ids)} appended, {sum(store.appends)} were",
        )
        await asyncio.sleep(1)  # a quiet second, for what it tests: none is appended twice
        rejected = message_ids[len(before) : len(before) + len(invalid)]
        for message_id, data in zip(rejected, invalid, strict=True):
            answer = (await http.get(f"/v1/messages/{message_id}")).json()
            assert answer["status"] == "rejected", answer
            assert INVALID[data] in answer["reason"], answer
    follower.assert_exactly_once(valid)
    # Each message was appended once: no push was refused, so nothing was
    # redelivered and the subscription never backed off.
    assert sum(store.appends) == len(message_ids)
    assert not store.refusals
    latencies = follower.latencies(ids("after", 100))
    assert latencies[-1] < 2.0, (
        f"published after the invalid ones, slowest took {latencies[-1]:.2f} s"
    )


async def test_a_message_the_store_always_refuses_reaches_the_dead_letter_topic(
    wiring: Wiring, publisher: Any
) -> None:
    poison = msgspec.json.encode({"id": "poison", "data": "always refused"})
    store = RecordingStore(DuckDBStore(":memory:"), poison=frozenset({"poison"}))
    async with service(store) as (http, url), Follower(http) as follower:
        await wiring.connect(url)
        message_ids = await publish_all(
            publisher, wiring.topic_path, [*payloads("dlq", 20), poison]
        )
        dead = await wiring.dead_lettered(timeout=60)
        await follower.wait_for(ids("dlq", 20), timeout=30)
        never = await http.get(f"/v1/messages/{message_ids[-1]}")
    assert len(dead) == 1, dead
    assert base64.b64decode(dead[0]["data"]) == poison
    # maxDeliveryAttempts is 5: five pushes, five refusals, then the dead-letter topic.
    assert dead[0]["attributes"]["CloudPubSubDeadLetterSourceDeliveryCount"] == "5"
    assert store.refusals["poison"] == 5
    assert never.status_code == 404
    follower.assert_exactly_once(ids("dlq", 20))


async def test_publish_to_visible_latency(wiring: Wiring, publisher: Any) -> None:
    store = RecordingStore(DuckDBStore(":memory:"))
    async with service(store) as (http, url), Follower(http) as follower:
        await wiring.connect(url)
        await publish_all(publisher, wiring.topic_path, payloads("fresh", 1000), rate=100)
        await follower.wait_for(ids("fresh", 1000), timeout=60)
    latencies = follower.latencies(ids("fresh", 1000))
    p50, p99 = percentile(latencies, 0.50), percentile(latencies, 0.99)
    print(f"publish-to-visible, 1,000 messages at 100/s: p50 {p50:.3f} s, p99 {p99:.3f} s")
    # Generous: a loaded 2-core machine must not make this flaky.
    assert p99 < 5.0


async def _canary_age(http: httpx.AsyncClient) -> float | None:
    text = (await http.get("/metrics")).text
    found = [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("recordline_canary_age_seconds")
    ]
    return found[0] if found else None


async def test_the_dev_canary_is_stored_and_its_age_grows_while_the_pipeline_stalls(
    wiring: Wiring, publisher: Any
) -> None:
    # `recordline dev --canary` publishes this, as Cloud Scheduler does in the cloud.
    store = RecordingStore(DuckDBStore(":memory:"))
    async with service(store) as (http, url):
        await wiring.connect(url, dead_letters=False)
        assert await _canary_age(http) is None  # no canary stored yet: no point
        with Canary(publisher, wiring.topic_path, every=0.5) as canary:

            async def age_below(seconds: float) -> bool:
                age = await _canary_age(http)
                return age is not None and age <= seconds

            await until(lambda: age_below(2), interval=0.2, what="a canary age of 2 s at most")
            stored = (await http.get("/v1/records/recordline-canary")).json()
            assert stored["attributes"]["recordline-canary"] == "1"
            assert stored["data"] == {"canary": True}
            # Stalled: canaries are published, the store refuses them.
            store.failing = True
            # Stalled once a canary is refused and no append is left under way.
            await until(
                lambda: store.refusals["recordline-canary"] > 0 and not store.appending,
                what="a canary to be refused",
            )
            stalled = await _canary_age(http)
            assert stalled is not None
            await asyncio.sleep(3)  # the age grows with the time that passes: what is tested
            later = await _canary_age(http)
            assert later is not None
            assert later >= stalled + 2.5
            # Recovered: redelivered canaries bring the age back down.
            store.failing = False
            await until(lambda: age_below(3), interval=0.2, what="a canary age of 3 s at most")
            # It goes on publishing (8 at least): waited for, as on a loaded machine a
            # publish takes longer than the 0.5 s between them.
            await until(lambda: canary.published >= 8, what="eight canaries published")


class StopsBeforeAcknowledging:
    """A subscriber whose first acknowledge never happens: the replay interrupted
    (Ctrl-C) after the service stored a batch and before Pub/Sub heard of it."""

    def __init__(self, subscriber: Any) -> None:
        self._subscriber = subscriber
        self.stopped = False

    def pull(self, **kwargs: Any) -> Any:
        return self._subscriber.pull(**kwargs)

    def modify_ack_deadline(self, **kwargs: Any) -> Any:
        return self._subscriber.modify_ack_deadline(**kwargs)

    def acknowledge(self, **kwargs: Any) -> None:
        if not self.stopped:
            self.stopped = True
            raise KeyboardInterrupt
        self._subscriber.acknowledge(**kwargs)


async def test_dead_letters_are_replayed_once_with_their_message_ids(
    wiring: Wiring, publisher: Any, emulator: Any
) -> None:
    # The service unreachable (nothing listens there) for five deliveries each:
    # every message goes to the dead-letter topic.
    await wiring.connect(f"http://127.0.0.1:{free_port()}")
    # A second subscription to the dead-letter topic lets the test watch the
    # dead letters arrive; the kept one stays untouched for the replays.
    watch = f"{wiring.topic}-dead-letter-watch"
    await wiring.admin.create_pull_subscription(watch, topic=f"{wiring.topic}-dead-letter")
    try:
        published = await publish_all(publisher, wiring.topic_path, payloads("dead", 20))
        dead: set[str] = set()

        async def all_dead() -> bool:
            dead.update(m["messageId"] for m in await wiring.admin.pull(watch))
            return len(dead) == len(published)

        await until(
            all_dead,
            timeout=120,
            interval=0.5,
            what=lambda: f"all 20 dead-lettered, {len(dead)} were",
        )
    finally:
        await wiring.admin.delete_subscription(watch)
    subscriber = pubsub_v1.SubscriberClient(
        transport=SubscriberGrpcTransport(channel=grpc.insecure_channel(emulator.host))
    )
    store = RecordingStore(DuckDBStore(":memory:"))
    try:
        async with service(store) as (http, url), Follower(http) as follower:
            replayer = Service(url, token=PUSH_TOKEN)
            replay_started = time.time()
            # Unknown subscription, unreachable service: clear errors, nothing acknowledged.
            with pytest.raises(ReplayError, match="cannot pull"):
                await asyncio.to_thread(
                    replay_dead_letters, replayer, subscriber,
                    f"projects/{wiring.admin.project}/subscriptions/no-such-subscription",
                    limit=None, dry_run=False, say=quiet,
                )  # fmt: skip
            with pytest.raises(ReplayError, match="cannot reach"):
                await asyncio.to_thread(
                    replay_dead_letters, Service("http://127.0.0.1:9"), subscriber,
                    wiring.dead_letters, limit=5, dry_run=False, say=quiet,
                )  # fmt: skip
            # Killed halfway: ten pulled and stored, none acknowledged.
            killed = StopsBeforeAcknowledging(subscriber)
            with pytest.raises(KeyboardInterrupt):
                await asyncio.to_thread(
                    replay_dead_letters, replayer, killed, wiring.dead_letters,
                    limit=10, dry_run=False, say=quiet,
                )  # fmt: skip
            await follower.wait_count(10, timeout=10)
            # Run again, at once: the failed and the interrupted run offered back what
            # they had pulled, so one run answers for every message and acknowledges it
            # (left leased, 15 would be missing until their ack deadline passed).
            counts = await asyncio.to_thread(
                replay_dead_letters, replayer, subscriber, wiring.dead_letters,
                limit=None, dry_run=False, say=quiet,
            )  # fmt: skip
            again = await asyncio.to_thread(
                replay_dead_letters, replayer, subscriber, wiring.dead_letters,
                limit=None, dry_run=False, say=quiet,
            )  # fmt: skip
            assert sum(again.values()) == 0
            await follower.wait_for(ids("dead", 20), timeout=30)
            # Each record names the subscription that gave up on it (the dead letter's
            # CloudPubSubDeadLetterSourceSubscription[Project]), not none.
            for message_id in follower.message_ids:
                answer = (await http.get(f"/v1/messages/{message_id}")).json()
                assert answer["record"]["subscription"] == wiring.push_subscription
            await asyncio.sleep(1)  # a quiet second, for what it tests: no record shows twice
            replayer.close()
        follower.assert_exactly_once(ids("dead", 20))
        # Pub/Sub forwards a dead letter as a new message, with an id of its own and
        # no attribute naming the original's: the record keeps the dead letter's id
        # (the same on every redelivery, so a second replay finds it stored) and the
        # original's publish time, which the forwarded message carries.
        assert not set(follower.message_ids) & set(published)
        assert all(at < replay_started - 1 for at in follower.published_at.values())
        assert counts["stored"] == 10
        assert counts["already_stored"] == 10  # the batch stored before the kill
    finally:
        subscriber.close()


# Attributes named as what a browser or HTTP itself sends, each a publisher's own.
NAMED_LIKE_HEADERS = {
    "origin": "hdr",
    "sec-fetch-site": "cross-site",
    "sec-fetch-mode": "no-cors",
    "referer": "https://billing.example/",
    "content-type": "application/json",
    "host": "billing.example",
}
# The headers the emulator's HTTP client (Java's HttpURLConnection) never sends,
# whatever the attribute: its restricted ones. Pub/Sub is no Java client; the service
# keeps them where they arrive (tests/test_push.py sends them as Pub/Sub may).
EMULATOR_DROPS = frozenset(
    {"host", "origin", "content-length", "transfer-encoding", "keep-alive", "trailer"}
    | {"upgrade", "via"}
)
EMULATOR_DROPS_PREFIXES = ("sec-", "access-control-request-")
# A header's name is a token (RFC 9110 §5.6.2), sent lower-cased here: HTTP's names
# are not case-sensitive, and the service receives every one lower-cased.
TOKEN_CHARACTERS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz"


def random_attributes(rng: random.Random, count: int) -> dict[str, str]:
    names: set[str] = set()
    while len(names) < count:
        name = "".join(rng.choices(TOKEN_CHARACTERS, k=rng.randint(1, 24)))
        if not name.startswith("goog"):  # Pub/Sub's own prefix
            names.add(name)
    return {name: f"v{n}-{rng.randrange(10**6)}" for n, name in enumerate(sorted(names))}


def delivered_by_the_emulator(name: str) -> bool:
    return name not in EMULATOR_DROPS and not name.startswith(EMULATOR_DROPS_PREFIXES)


async def test_an_unwrapped_push_is_stored_whatever_its_attributes_are_named(
    wiring: Wiring, publisher: Any
) -> None:
    # Loopback with no push authentication: where the service judges what a browser
    # says, and where an attribute named `origin` was once taken for one.
    rng = random.Random(82)
    messages = [NAMED_LIKE_HEADERS] + [
        {**random_attributes(rng, 10), "content-type": "application/json"} for _ in range(10)
    ]
    store = DuckDBStore(":memory:")
    async with served(create_app(settings(), store=store)) as http:
        await wiring.connect(str(http.base_url).rstrip("/"), push_token=None, unwrapped=True)

        def publish_each() -> list[str]:
            return [
                publisher.publish(
                    wiring.topic_path,
                    msgspec.json.encode({"id": f"named-{n}", "data": n}),
                    **attributes,
                ).result(timeout=30)
                for n, attributes in enumerate(messages)
            ]

        message_ids = await asyncio.to_thread(publish_each)

        async def all_stored() -> list[dict[str, Any]] | None:
            answers = [(await http.get(f"/v1/messages/{m}")).json() for m in message_ids]
            stored = [a for a in answers if a.get("status") == "stored"]
            return stored if len(stored) == len(message_ids) else None

        found = await until(
            all_stored, timeout=60, interval=0.2, what=f"all {len(message_ids)} stored"
        )
    assert sum(len(m) for m in messages[1:]) == 110  # a hundred random names and more
    for attributes, answer in zip(messages, found, strict=True):
        expected = {
            name: value
            for name, value in attributes.items()
            if is_attribute(name) and delivered_by_the_emulator(name)
        }
        stored = dict(answer["record"]["attributes"])
        # The publisher's own, as it traces every message.
        assert stored.pop("googclient_traceparent").startswith("00-")
        assert stored == expected
    # The names a browser sends too, where the emulator sends them at all.
    assert {**found[0]["record"]["attributes"], "googclient_traceparent": ""} == {
        "googclient_traceparent": "",
        "referer": "https://billing.example/",
        "content-type": "application/json",
    }
