"""A producer's sequence is a claim: what a publisher claiming another's can do, against
`recordline serve` on a DuckDB file.

Nothing ties `recordline-producer` to who published a message. A publisher (or a
second instance of a service deriving the same producer id and epoch) can send
another producer's id, epoch and sequences with messages of its own, forge epochs
near 2^63, and say anything of how an epoch ended. Whatever it sends, the other
producer's messages are stored, its losses stay named, and every conflict is
named where the audit looks (`/v1/producers`, `/v1/audit`, `recordline audit`).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from app.commands import audit as auditing
from app.records import Record
from app.store.duckdb.store import DuckDBStore
from recordline_dev.processes import free_port
from tests.processes import RECORDLINE, Terminal, wait_ready
from tests.waiting import until, until_blocking

# Short enough that a test waits for a gap to count as missing in well under a second.
GRACE_SECONDS = 0.3


class Service:
    def __init__(self, url: str) -> None:
        self.url = url
        self.http = httpx.Client(base_url=url, timeout=30)

    def push(self, message_id: str, attributes: dict[str, str], payload: Any) -> int:
        published = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        body = {
            "message": {
                "data": base64.b64encode(json.dumps(payload).encode()).decode(),
                "messageId": message_id,
                "publishTime": published,
                "attributes": attributes,
            },
            "subscription": "projects/demo/subscriptions/records-push",
        }
        return self.http.post("/pubsub/push", json=body).status_code

    def status(self, message_id: str) -> str | None:
        answer = self.http.get(f"/v1/messages/{message_id}")
        if answer.status_code == 404:
            return None
        assert answer.status_code == 200, answer.text
        status: str = answer.json()["status"]
        return status

    def producer(self, producer: str) -> dict[str, Any]:
        answer = self.http.get(f"/v1/producers/{producer}")
        assert answer.status_code == 200, answer.text
        found: dict[str, Any] = answer.json()
        return found

    def audit(self) -> dict[str, Any]:
        since = (datetime.now(UTC) - timedelta(hours=2)).isoformat().replace("+00:00", "Z")
        answer = self.http.get("/v1/audit", params={"since": since})
        assert answer.status_code == 200, answer.text
        found: dict[str, Any] = answer.json()
        return found


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """One `recordline serve` on a DuckDB file for the module; each test its own producers."""
    directory: Path = tmp_path_factory.mktemp("claims")
    port = free_port()
    env = {
        **_environment(),
        "RECORDLINE_PRODUCER_GRACE_SECONDS": str(GRACE_SECONDS),
        "RECORDLINE_LOG_LEVEL": "WARNING",
    }
    store = f"duckdb://{directory / 'records.duckdb'}"
    terminal = Terminal(
        [RECORDLINE, "serve", "--port", str(port), "--store", store], env=env, cwd=directory
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, terminal)
        service = Service(url)
        yield service
        service.http.close()
    finally:
        terminal.kill_everything()


def _environment() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("RECORDLINE_")}


def sequence(producer: str, epoch: int, number: int, **more: str) -> dict[str, str]:
    return {
        "recordline-producer": producer,
        "recordline-epoch": str(epoch),
        "recordline-seq": str(number),
        **more,
    }


def now_micros() -> int:
    return time.time_ns() // 1000


def audit_exit(service: Service, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """`recordline audit`'s exit status, and what it printed."""
    args = SimpleNamespace(
        since=datetime.now(UTC) - timedelta(hours=2), until=None, url=service.url, token=None
    )
    capsys.readouterr()
    code = auditing.run(args)
    printed = capsys.readouterr()
    return code, printed.out + printed.err


def named(audit: dict[str, Any], producer: str, key: str) -> list[dict[str, Any]]:
    return [r for r in audit[key] if r["producer"] == producer]


@pytest.mark.slow
def test_another_publisher_claiming_a_producers_sequences_hides_none_of_its_messages(
    service: Service, capsys: pytest.CaptureFixture[str]
) -> None:
    victim, epoch = "orders-hijacked", now_micros()

    def own(n: int, message_id: str | None = None) -> int:
        payload = {"id": f"order-{n}", "data": {"n": n}}
        return service.push(message_id or f"h-v-{n}", sequence(victim, epoch, n), payload)

    assert own(0) == own(1) == 204
    # Another publisher takes the producer's next five sequences, its own message ids
    # and payloads, before the producer's own messages 2 to 6 arrive.
    for n in range(2, 7):
        forged = {"id": f"fake-{n}", "data": "forged"}
        assert service.push(f"h-x-{n}", sequence(victim, epoch, n), forged) == 204
    for n in range(2, 7):
        assert own(n) == 204
    # The producer's retry of 3 (the same message under a new id) is still a retry.
    assert own(3, "h-v-3-retry") == 204
    assert {n: service.status(f"h-v-{n}") for n in range(7)} == dict.fromkeys(range(7), "stored")
    assert {n: service.status(f"h-x-{n}") for n in range(2, 7)} == dict.fromkeys(
        range(2, 7), "stored"
    )
    assert service.status("h-v-3-retry") is None
    ledger = service.producer(victim)
    (found,) = ledger["epochs"]
    assert (ledger["conflicts"], ledger["missing"], found["duplicates"]) == (5, 0, 1)
    assert [(c["first"], c["last"]) for c in found["conflicted"]] == [(2, 6)]
    audit = service.audit()
    (conflict,) = named(audit, victim, "conflict_ranges")
    assert (conflict["kind"], conflict["first"], conflict["last"]) == ("sequences", 2, 6)
    assert audit["conflicts"] >= 5
    code, printed = audit_exit(service, capsys)
    assert code == 1
    assert f"conflict: producer {victim!r} epoch {epoch} sequences 2 to 6" in printed


@pytest.mark.slow
def test_two_instances_with_one_producer_id_and_epoch_keep_each_others_messages(
    service: Service,
) -> None:
    # Two instances of a service that derive the same producer id and epoch (one
    # hostname, one start second) each number their own messages from 0.
    producer, epoch = "orders-twins", int(time.time())
    for n in range(5):
        for instance in ("a", "b"):
            payload = {"id": f"{instance}-{n}", "data": instance}
            assert service.push(f"t-{instance}-{n}", sequence(producer, epoch, n), payload) == 204
    statuses = {f"t-{i}-{n}": service.status(f"t-{i}-{n}") for i in "ab" for n in range(5)}
    assert set(statuses.values()) == {"stored"}
    ledger = service.producer(producer)
    assert (ledger["conflicts"], ledger["missing"]) == (5, 0)
    assert [(c["first"], c["last"]) for c in ledger["epochs"][0]["conflicted"]] == [(0, 4)]


def test_forged_epochs_near_2_63_neither_erase_a_loss_nor_outrank_the_real_epoch(
    service: Service,
) -> None:
    victim, epoch = "orders-outranked", now_micros()

    def own(n: int, message_id: str | None = None, at: int = epoch) -> int:
        payload = {"id": f"o-{n}", "data": n}
        return service.push(message_id or f"e-v-{n}", sequence(victim, at, n), payload)

    # Sequences 1 and 2 never come: missing once the grace period is over.
    assert own(0) == own(3) == 204
    until_blocking(
        lambda: service.producer(victim)["missing"] == 2, timeout=10, what="the gap to be missing"
    )
    # Eight epochs near 2^63: no publisher started one, and each is refused, named.
    for k in range(8):
        forged = sequence(victim, 2**63 - 1 - k, 0)
        assert service.push(f"e-x-{k}", forged, {"id": f"x-{k}", "data": 0}) == 204
        reason = service.http.get(f"/v1/messages/e-x-{k}").json()["reason"]
        assert reason.startswith("recordline-epoch: 9223372036854775"), reason
    # Eight more a day ahead at most, settled: they make room for each other.
    for k in range(3 * 8):
        forged = sequence(victim, epoch + 1 + k, 0)
        assert service.push(f"e-y-{k}", forged, {"id": f"y-{k}", "data": 0}) == 204
    ledger = service.producer(victim)
    kept = {e["epoch"]: e for e in ledger["epochs"]}
    assert kept[epoch]["missing"] == 2
    assert not kept[epoch]["retired"]
    assert ledger["missing"] == 2
    (missing,) = named(service.audit(), victim, "missing_ranges")
    assert (missing["epoch"], missing["first"], missing["last"]) == (epoch, 1, 2)
    # The producer's retries are still told apart: stored once.
    assert own(3, "e-v-3-retry") == 204
    assert service.status("e-v-3-retry") is None


def test_a_forged_epoch_end_neither_hides_a_lost_tail_nor_inflates_it(
    service: Service,
) -> None:
    victim = "orders-ended"

    def own(epoch: int, n: int, message_id: str, **more: str) -> int:
        payload = {"id": f"{epoch}-{n}", "data": n}
        return service.push(message_id, sequence(victim, epoch, n, **more), payload)

    # Epoch 100 publishes ten messages; 5 to 9 are lost in a crash.
    for n in range(5):
        assert own(100, n, f"d-100-{n}") == 204
    # A forger says first that epoch 100 published five, then the producer's own
    # next epoch says ten, then a forger says 2^63 - 1.
    assert own(150, 0, "d-x-150", **{"recordline-epoch-ended": "100:5"}) == 204
    assert own(200, 0, "d-200-0", **{"recordline-epoch-ended": "100:10"}) == 204
    absurd = {"recordline-epoch-ended": f"100:{2**63 - 1}"}
    assert own(300, 0, "d-x-300", **absurd) == 204
    until_blocking(
        lambda: service.producer(victim)["missing"] == 5, timeout=10, what="the tail to be missing"
    )
    ledger = service.producer(victim)
    first = next(e for e in ledger["epochs"] if e["epoch"] == 100)
    assert (first["published"], first["ends_said"], first["end_conflict"]) == (
        10,
        [5, 10, 2**63 - 1],
        True,
    )
    assert [(g["first"], g["last"]) for g in first["gaps"]] == [(5, 9)]
    audit = service.audit()
    (missing,) = named(audit, victim, "missing_ranges")
    assert (missing["first"], missing["last"]) == (5, 9)
    (conflict,) = named(audit, victim, "conflict_ranges")
    assert (conflict["kind"], conflict["first"], conflict["last"]) == ("ends", 5, 2**63 - 1)
    # The producer's retry of 4 is still a retry.
    assert own(100, 4, "d-100-4-retry") == 204
    assert service.status("d-100-4-retry") is None


# -- as many producers as publishers care to name ------------------------------------------

# Producers in the ledger before the service starts: enough that a sweep of every
# producer per read (sorting their ids once per 500 of them) took the audit past 4 s.
SEEDED = 100_000


async def _seed(path: Path, producers: int) -> None:
    store = DuckDBStore(str(path))
    await store.start()
    try:
        now = now_micros()
        for start in range(0, producers, 5000):
            await store.append(
                [
                    Record(
                        message_id=f"seed-{i}",
                        publish_time=now,
                        ingest_time=now,
                        id=f"seed-{i}",
                        attributes=json.dumps(sequence(f"seeded-{i:07}", 1, 0)),
                    )
                    for i in range(start, min(producers, start + 5000))
                ]
            )
    finally:
        await store.close()


@pytest.fixture(scope="module")
def crowded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """`recordline serve` on a file whose ledger holds SEEDED producers."""
    directory: Path = tmp_path_factory.mktemp("crowded")
    path = directory / "records.duckdb"
    asyncio.run(_seed(path, SEEDED))
    port = free_port()
    env = {**_environment(), "RECORDLINE_LOG_LEVEL": "WARNING"}
    terminal = Terminal(
        [RECORDLINE, "serve", "--port", str(port), "--store", f"duckdb://{path}"],
        env=env,
        cwd=directory,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, terminal)
        service = Service(url)
        yield service
        service.http.close()
    finally:
        terminal.kill_everything()


@pytest.mark.slow
async def test_many_producers_slow_neither_a_push_nor_the_audit(crowded: Service) -> None:
    since = (datetime.now(UTC) - timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    audits: list[float] = []
    pushes: list[float] = []
    done = asyncio.Event()
    async with httpx.AsyncClient(base_url=crowded.url, timeout=60) as http:

        async def audit_loop() -> None:
            while not done.is_set():
                started = time.perf_counter()
                until_ = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()
                params = {"since": since, "until": until_.replace("+00:00", "Z")}
                answer = await http.get("/v1/audit", params=params)
                audits.append(time.perf_counter() - started)
                assert answer.status_code == 200, answer.text
                # The seeded rows are counted, whichever hour the clock is in.
                assert sum(hour["received"] for hour in answer.json()["hours"]) >= 1

        async def lane(lane: int) -> None:
            for n in range(40):
                # A seeded producer's next message, and a producer never seen.
                for producer, number in (
                    (f"seeded-{lane * 1000 + n:07}", 1),
                    (f"new-{lane}-{n}", 0),
                ):
                    body = {
                        "message": {
                            "data": base64.b64encode(b'{"id": "x", "data": 1}').decode(),
                            "messageId": f"p-{producer}-{number}",
                            "publishTime": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
                            "attributes": sequence(producer, 1, number),
                        }
                    }
                    started = time.perf_counter()
                    answer = await http.post("/pubsub/push", json=body)
                    pushes.append(time.perf_counter() - started)
                    assert answer.status_code == 204, answer.text

        reading = asyncio.create_task(audit_loop())
        try:
            await asyncio.gather(*(lane(n) for n in range(4)))
            # At least one audit whole while pushes came.
            await until(lambda: len(audits) >= 2, timeout=60, what="two audits answered")
        finally:
            done.set()
            await reading
        ledger = (await http.get(f"/v1/producers/seeded-{2 * 1000 + 3:07}")).json()
    pushes.sort()
    assert pushes[int(len(pushes) * 0.99)] < 1.0, pushes[-10:]
    assert max(audits) < 2.0, audits
    assert ledger["epochs"][0]["highest"] == 1
