"""Producer sequences and the completeness ledger, on the embedded store: what a push makes
of a sequence (stored once whatever its message ids, a rejection naming a malformed one),
the ledger's bounds whatever producers send, and what it tells (the API, the audit, the
metric). The store contract (tests/store_contract/) holds every store to the same rules;
the emulator tests (tests/e2e/test_producers_emulator.py) to the whole path."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from litestar.testing import TestClient
from prometheus_client import generate_latest

from app.asgi import create_app
from app.commands import audit as auditing
from app.errors import StoreUnavailable
from app.http.head import Recordline
from app.ingest.publisher import SequencedPublisher
from app.ingest.signing import ProducerKeys
from app.query.page_token import PageTokens
from app.query.producers import AuditReport, MissingWatch, Producers
from app.records import Record
from app.settings import SettingsError
from app.store import PublisherDuplicate
from app.store.duckdb.journal import Frame, Journal, encode
from app.store.duckdb.store import DuckDBStore
from app.store.producers import (
    EPOCH_QUIET_MICROS,
    HOUR_MICROS,
    MAX_EPOCHS,
    MAX_GAPS,
    SEQUENCE_ATTRIBUTES,
    EpochEntry,
    ProducerSequence,
    SequenceError,
    encode_entry,
    read_sequence,
    sequence_problem,
)
from app.store.tally import Copy, Sequenced, SequenceKey, Settled, Tally
from app.telemetry import Telemetry
from tests.conftest import envelope, served
from tests.conftest import settings as app_settings
from tests.waiting import until

NOW = 1_795_000_000_000_000  # µs
PUBLISHED = 1_714_219_201_000_000  # tests.conftest.envelope's publish time, µs


def attributes(
    sequence: int | str, *, producer: str = "orders-api", epoch: int | str = 0, **more: str
) -> dict[str, str]:
    return {
        "recordline-producer": producer,
        "recordline-epoch": str(epoch),
        "recordline-seq": str(sequence),
        **more,
    }


def row(message_id: str, sequence: int, *, producer: str = "orders-api", epoch: int = 0) -> Record:
    """A record of a producer's message: the same message (a publisher's retry) under
    any message id."""
    return Record(
        message_id=message_id,
        publish_time=NOW - 1000,
        ingest_time=NOW,
        id=f"{producer}/{epoch}/{sequence}",
        data='"Ejemplo de datos"',
        attributes=json.dumps(attributes(sequence, producer=producer, epoch=epoch)),
    )


@pytest.fixture
def client() -> Iterator[TestClient[Recordline]]:
    with TestClient(create_app(app_settings())) as test_client:
        yield test_client


def payload_of(message_id: str, attrs: dict[str, str]) -> dict[str, Any]:
    """A message's payload: its producer's sequence names it, so a publisher's retry
    (another message id) is the same message."""
    sequence = [attrs.get(name) for name in SEQUENCE_ATTRIBUTES[:3]]
    return {"id": "/".join(map(str, sequence)) if all(sequence) else message_id, "data": 1}


def push(client: TestClient[Recordline], message_id: str, attrs: dict[str, str]) -> int:
    body = envelope(payload_of(message_id, attrs), message_id=message_id, attributes=attrs)
    return client.post("/pubsub/push", json=body).status_code


# -- reading the attributes ------------------------------------------------------------------

HOSTILE = [
    ({"recordline-seq": "-1"}, "recordline-seq: '-1' is not a decimal integer"),
    ({"recordline-seq": "1e3"}, "recordline-seq: '1e3' is not a decimal integer"),
    ({"recordline-seq": " 7"}, "recordline-seq: ' 7' is not a decimal integer"),
    ({"recordline-seq": "٣"}, "recordline-seq: '٣' is not a decimal integer"),  # an Arabic 3
    ({"recordline-seq": str(2**63)}, "recordline-seq: '9223372036854775808' is not"),
    ({"recordline-seq": "9" * 400}, "recordline-seq: '" + "9" * 40 + "…' is not"),
    ({"recordline-epoch": str(2**63)}, "recordline-epoch: '9223372036854775808' is not"),
    ({"recordline-epoch": "x"}, "recordline-epoch: 'x' is not a decimal integer"),
    ({"recordline-producer": ""}, "recordline-producer: empty"),
    ({"recordline-producer": "//"}, "recordline-producer: only slashes"),
    ({"recordline-producer": "p" * 257}, "recordline-producer: 257 characters, more than 256"),
    ({"recordline-epoch-ended": "3"}, "recordline-epoch-ended: '3' is not EPOCH:COUNT"),
    ({"recordline-epoch-ended": "0:-1"}, "recordline-epoch-ended: '0:-1' is not EPOCH:COUNT"),
    ({"recordline-epoch-ended": "5:10"}, "recordline-epoch-ended: epoch 5 is not before"),
]


@pytest.mark.parametrize(("hostile", "reason"), HOSTILE)
def test_a_malformed_sequence_attribute_is_a_rejection_naming_it(
    client: TestClient[Recordline], hostile: dict[str, str], reason: str
) -> None:
    assert push(client, "m-bad", {**attributes(0, epoch=5), **hostile}) == 204
    told = client.get("/v1/messages/m-bad").json()
    assert told["status"] == "rejected"
    assert told["reason"].startswith(reason), told["reason"]
    # Accounted for nowhere: the ledger holds no word of a sequence it cannot read.
    assert client.get("/v1/producers").json()["producers"] == []


@pytest.mark.slow
@pytest.mark.parametrize("absent", ["recordline-producer", "recordline-epoch", "recordline-seq"])
def test_a_partial_set_of_sequence_attributes_names_the_one_missing(
    client: TestClient[Recordline], absent: str
) -> None:
    given = {k: v for k, v in attributes(3).items() if k != absent}
    assert push(client, "m-part", given) == 204
    reason = client.get("/v1/messages/m-part").json()["reason"]
    assert reason.startswith(f"{absent}: missing; a message with recordline-")


def test_messages_without_sequences_are_untouched(client: TestClient[Recordline]) -> None:
    assert push(client, "m-plain", {"origin": "web", "recordline-sequel": "x"}) == 204
    assert client.get("/v1/messages/m-plain").json()["status"] == "stored"
    assert client.get("/v1/producers").json() == {"producers": [], "next_page_token": None}


@pytest.mark.slow
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(
        st.sampled_from(
            ["recordline-producer", "recordline-epoch", "recordline-seq", "recordline-epoch-ended"]
        ),
        st.one_of(
            st.text(max_size=30),
            st.integers(-(2**70), 2**70).map(str),
            st.tuples(st.integers(-5, 2**64), st.integers(-5, 2**64)).map(
                lambda pair: f"{pair[0]}:{pair[1]}"
            ),
        ),
    )
)
def test_any_sequence_attributes_are_read_or_refused_with_the_attribute_named(
    given: dict[str, str],
) -> None:
    problem = sequence_problem(given)
    if problem is not None:
        # It names an attribute that was given, or one of the three a given one needs.
        named = problem.split(":", 1)[0]
        if named not in given:
            assert named in SEQUENCE_ATTRIBUTES[:3]
            assert problem.startswith(f"{named}: missing;")
        return
    found = read_sequence(given)
    if found is None:
        assert not given
        return
    assert 0 <= found.epoch < 2**63
    assert 0 <= found.sequence < 2**63
    assert 1 <= len(found.producer) <= 256


class Pushed:
    """One service for every example, and the sequences it was given so far."""

    def __init__(self, client: TestClient[Recordline]) -> None:
        self.client = client
        self.sequences: set[tuple[str, int, int]] = set()
        self.sent = 0


@pytest.fixture(scope="module")
def pushed() -> Iterator[Pushed]:
    with TestClient(create_app(app_settings())) as test_client:
        yield Pushed(test_client)


_hostile_values = st.one_of(
    st.text(max_size=20),
    st.integers(-(2**70), 2**70).map(str),
    st.sampled_from(["0", "00", str(2**63 - 1), str(2**63), "1:2", "9:0", " 1", "+1", "1.0"]),
)


@pytest.mark.slow
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    producer=st.one_of(st.none(), st.text(max_size=300), st.sampled_from(["p", "/", "q"])),
    epoch=st.one_of(st.none(), _hostile_values),
    sequence=st.one_of(st.none(), _hostile_values),
    ended=st.one_of(st.none(), _hostile_values),
)
def test_any_sequence_attributes_pushed_are_stored_or_rejected_never_answered_5xx(
    pushed: Pushed,
    producer: str | None,
    epoch: str | None,
    sequence: str | None,
    ended: str | None,
) -> None:
    client = pushed.client
    given = {
        name: value
        for name, value in zip(SEQUENCE_ATTRIBUTES, (producer, epoch, sequence, ended), strict=True)
        if value is not None
    }
    pushed.sent += 1
    message_id = f"h-{pushed.sent}"
    assert push(client, message_id, given) == 204
    answer = client.get(f"/v1/messages/{message_id}")
    problem = sequence_problem(given, PUBLISHED)
    if problem is not None:
        assert (answer.json()["status"], answer.json()["reason"]) == ("rejected", problem)
    else:
        read = read_sequence(given)
        key = None if read is None else (read.producer, read.epoch, read.sequence)
        if answer.status_code == 404:  # not stored: a copy of a sequence stored already
            assert key in pushed.sequences
        else:
            assert answer.json()["status"] == "stored"
        if key is not None:
            pushed.sequences.add(key)
    # The ledger stays readable, every entry within its bounds.
    for page in _pages(client):
        for found in page:
            assert len(found["epochs"]) <= MAX_EPOCHS
            assert all(e["gap_count"] <= MAX_GAPS + 1 for e in found["epochs"])


def _pages(client: TestClient[Recordline]) -> Iterator[list[dict[str, Any]]]:
    token = None
    while True:
        params = {"limit": 100, **({"page_token": token} if token else {})}
        answer = client.get("/v1/producers", params=params)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        yield body["producers"]
        token = body["next_page_token"]
        if token is None:
            return


# -- the ledger's rules, against a plain model ------------------------------------------------

events = st.lists(
    st.tuples(
        st.integers(0, 2),  # epoch
        st.integers(0, 40),  # sequence
        st.integers(0, 3),  # which copy: its message id
        st.booleans(),  # a record, or a rejection
        st.integers(0, 1),  # which message: the producer's own, or another under its sequence
    ),
    max_size=80,
)


class HeldCopies:
    """The messages a store holds under each sequence, as it tells `settle`; a message's
    digest is the one byte naming which message it is (`which`)."""

    def __init__(self) -> None:
        self.held: dict[SequenceKey, list[Copy]] = {}

    def of(self, tally: Tally, rows: list[Sequenced]) -> dict[SequenceKey, list[Copy]]:
        keys = {(s.producer, s.epoch, s.sequence) for s, *_ in tally.seen_rows(rows) if s}
        return {k: self.held[k] for k in keys if k in self.held}

    def keep(self, settled: Settled, digests: dict[str, bytes]) -> None:
        for producer, epoch, sequence, message_id in settled.copies:
            copy = Copy(message_id, digests[message_id])
            self.held.setdefault((producer, epoch, sequence), []).append(copy)


@pytest.mark.slow
@settings(max_examples=200, deadline=None)
@given(st.lists(events, min_size=1, max_size=5))
def test_the_ledger_says_what_a_plain_set_of_seen_messages_says(
    batches: list[list[tuple[int, int, int, bool, int]]],
) -> None:
    """A row under a sequence not seen is stored; under a seen one, a redelivery of a
    stored message id, a copy of a stored message (dropped), or another message (stored,
    a conflict): whatever order they come in, in batches of any size."""
    tally = Tally()
    store = HeldCopies()
    seen: dict[int, set[int]] = {}
    messages: dict[tuple[int, int], set[bytes]] = {}
    ids: set[str] = set()
    stored = duplicates = conflicts = 0
    for batch in batches:
        rows = [
            Sequenced(
                ProducerSequence("p", epoch, number), f"{epoch}/{number}/{copy}/{which}", is_record
            )
            for epoch, number, copy, is_record, which in batch
        ]
        digests = [bytes([which]) for *_, which in batch]
        settled = tally.settle(
            rows,
            copies=store.of(tally, rows),
            stored_before=set(ids),
            now=NOW,
            digest=digests.__getitem__,
        )
        for (sequence, message_id, _), digest, verdict in zip(
            rows, digests, settled.verdicts, strict=True
        ):
            assert sequence is not None
            numbers = seen.setdefault(sequence.epoch, set())
            held = messages.setdefault((sequence.epoch, sequence.sequence), set())
            if sequence.sequence not in numbers:
                assert verdict == "store"
                numbers.add(sequence.sequence)
            elif message_id in ids:
                assert verdict == "again"
                continue
            elif digest in held:
                assert verdict == "duplicate"
                duplicates += 1
                continue
            else:
                assert verdict == "conflict"
                conflicts += 1
            held.add(digest)
            stored += 1
            ids.add(message_id)
        tally.commit(settled)
        store.keep(settled, {r.message_id: d for r, d in zip(rows, digests, strict=True)})
    entries = tally.entries("p")
    assert set(entries) == set(seen)
    for epoch, entry in entries.items():
        numbers = seen[epoch]
        assert {n for n in range(entry.highest + 1) if entry.seen(n)} == numbers
        assert entry.highest == max(numbers)
        assert entry.contiguous == next(n for n in range(42) if n not in numbers) - 1
        assert all(g.first <= g.last for g in entry.gaps)
        assert [g.first for g in entry.gaps] == sorted(g.first for g in entry.gaps)
        in_conflict = {n for n in numbers if len(messages[(epoch, n)]) > 1}
        assert {n for g in entry.conflicted for n in range(g.first, g.last + 1)} == in_conflict
    assert sum(e.stored + e.rejected for e in entries.values()) == stored
    assert sum(e.duplicates for e in entries.values()) == duplicates
    assert sum(e.conflicts for e in entries.values()) == conflicts


# Two producers, more epochs than are kept, epochs said to end, copies and rejections:
# every path of `settle`, in batches that switch producer and epoch at any row.
mixed_events = st.lists(
    st.tuples(
        st.sampled_from(["p", "q"]),
        st.integers(0, MAX_EPOCHS + 2),  # epoch
        st.integers(0, 12),  # sequence
        st.integers(0, 2),  # which copy: its message id
        st.booleans(),  # a record, or a rejection
        st.none() | st.tuples(st.integers(0, MAX_EPOCHS + 2), st.integers(0, 12)),  # an end
        st.integers(0, 1),  # which message
    ),
    min_size=1,
    max_size=60,
)


@pytest.mark.slow
@settings(max_examples=150, deadline=None)
@given(mixed_events)
def test_a_batch_is_settled_as_its_rows_would_be_one_at_a_time(
    events: list[tuple[str, int, int, int, bool, tuple[int, int] | None, int]],
) -> None:
    """Settling looks a run of one producer's epoch up once: the same verdicts and the
    same ledger as each row settled and committed on its own."""
    rows = []
    for producer, epoch, number, copy, is_record, end, which in events:
        ended = end if end is not None and end[0] < epoch else None
        sequence = ProducerSequence(
            producer,
            epoch,
            number,
            ended_epoch=None if ended is None else ended[0],
            ended_count=None if ended is None else ended[1],
        )
        message_id = f"{producer}/{epoch}/{number}/{copy}/{which}"
        rows.append(Sequenced(sequence, message_id, is_record))
    digests = [bytes([event[-1]]) for event in events]
    whole = Tally()
    settled = whole.settle(
        rows, copies={}, stored_before=set(), now=NOW, digest=digests.__getitem__
    )
    whole.commit(settled)
    alone = Tally()
    store = HeldCopies()
    stored: set[str] = set()
    verdicts = []
    by_id = {r.message_id: d for r, d in zip(rows, digests, strict=True)}
    for row, digest in zip(rows, digests, strict=True):
        one = alone.settle(
            [row],
            copies=store.of(alone, [row]),
            stored_before=stored,
            now=NOW,
            digest=lambda _, d=digest: d,
        )
        alone.commit(one)
        store.keep(one, by_id)
        verdicts.extend(one.verdicts)
        if one.verdicts[0] in ("store", "refuse", "conflict"):
            stored.add(row[1])
    assert settled.verdicts == verdicts
    assert settled.duplicates == verdicts.count("duplicate")
    assert settled.conflicts == verdicts.count("conflict")
    for producer in ("p", "q"):
        assert whole.entries(producer) == alone.entries(producer)


def test_a_producer_that_would_open_too_many_gaps_gets_rejections_naming_it_and_nobody_else() -> (
    None
):
    tally = Tally()
    # Every other sequence: each opens a gap, up to the bound.
    noisy = [
        Sequenced(ProducerSequence("noisy", 0, 2 * n), f"n{n}", True) for n in range(MAX_GAPS + 3)
    ]
    quiet = [Sequenced(ProducerSequence("quiet", 0, n), f"q{n}", True) for n in range(3)]
    settled = tally.settle([*noisy, *quiet], copies={}, stored_before=set(), now=NOW, digest=_never)
    verdicts = settled.verdicts
    # Sequence 0 opens none: MAX_GAPS gaps are opened by the next MAX_GAPS.
    assert verdicts[: MAX_GAPS + 1] == ["store"] * (MAX_GAPS + 1)
    assert verdicts[MAX_GAPS + 1 : MAX_GAPS + 3] == ["refuse", "refuse"]
    assert settled.reasons[MAX_GAPS + 1].startswith(
        f"recordline-seq: {2 * (MAX_GAPS + 1)} of producer 'noisy' epoch 0 would open a gap"
    )
    assert verdicts[MAX_GAPS + 3 :] == ["store"] * 3
    tally.commit(settled)
    entry = tally.entries("noisy")[0]
    assert (len(entry.gaps), entry.refused, entry.rejected) == (MAX_GAPS, 2, 2)
    assert len(encode_entry(entry)) < 30_000
    # A gap filled from its middle is refused at the bound too; one from its edge is not.
    edge = Sequenced(ProducerSequence("noisy", 0, 1), "edge", True)
    settled = tally.settle([edge], copies={}, stored_before=set(), now=NOW, digest=_never)
    assert settled.verdicts == ["store"]


def _never(index: int) -> bytes:
    """The digest of a row whose sequence no other row took: never asked."""
    raise AssertionError(f"the digest of row {index} was asked")


def one(tally: Tally, sequence: ProducerSequence, message_id: str, *, now: int = NOW) -> str | None:
    """Settle and commit one row of the producer's own message; its verdict."""
    row = Sequenced(sequence, message_id, True)
    settled = tally.settle([row], copies={}, stored_before=set(), now=now, digest=lambda _: b"own")
    tally.commit(settled)
    return settled.verdicts[0]


def test_a_producer_keeps_its_newest_epochs_and_a_retired_one_is_stored_as_a_zombie() -> None:
    tally = Tally()
    # A producer restarting without its state, its epochs quiet for an hour between.
    for epoch in range(MAX_EPOCHS + 2):
        one(tally, ProducerSequence("p", epoch, 0), f"e{epoch}", now=NOW + epoch * HOUR_MICROS)
    kept = tally.entries("p")
    live = sorted(e for e, entry in kept.items() if not entry.retired)
    assert live == list(range(2, MAX_EPOCHS + 2))
    # Epochs 0 and 1 were settled, quiet, and heard of longest ago: retired, kept as
    # markers.
    assert sorted(e for e, entry in kept.items() if entry.retired) == [0, 1]
    # A late message of epoch 0 cannot be told from a copy any more: it is stored, a
    # zombie's, and opens no gap.
    later = NOW + (MAX_EPOCHS + 2) * HOUR_MICROS
    assert one(tally, ProducerSequence("p", 0, 5), "late", now=later) == "store"
    marker = tally.entries("p")[0]
    assert (marker.retired, marker.zombies, marker.gaps, marker.highest) == (True, 1, [], 0)


def test_newer_epochs_never_retire_one_still_publishing() -> None:
    """Eight forged newer epochs within the hour retire no epoch that is still heard
    of and whose end nobody declared: the ninth is untracked, and the real epoch
    keeps its gaps, its retries and its count."""
    tally = Tally()
    for n in range(5):
        one(tally, ProducerSequence("victim", 10, n), f"v{n}", now=NOW + n)
    for k in range(MAX_EPOCHS):
        one(tally, ProducerSequence("victim", 11 + k, 0), f"f{k}", now=NOW + 10 + k)
    for n in (6, 7, 8, 9):
        assert one(tally, ProducerSequence("victim", 10, n), f"v{n}", now=NOW + 20) == "store"
    real = tally.entries("victim")[10]
    assert not real.retired
    assert [(g.first, g.last) for g in real.gaps] == [(5, 5)]
    assert (real.highest, real.stored) == (9, 9)
    # The ninth epoch found no room: stored, counted as untracked on the newest.
    assert 11 + MAX_EPOCHS - 1 not in tally.entries("victim")
    newest = max(e for e, entry in tally.entries("victim").items() if not entry.retired)
    assert tally.entries("victim")[newest].untracked == 1
    retry = Sequenced(ProducerSequence("victim", 10, 7), "v7-retry", True)
    settled = tally.settle(
        [retry],
        copies={("victim", 10, 7): [Copy("v7", b"own")]},
        stored_before=set(),
        now=NOW + 21,
        digest=lambda _: b"own",
    )
    assert settled.verdicts == ["duplicate"]
    # Once it has been quiet an hour, a forged settled epoch may go; the real one,
    # owed sequence 5, stays.
    one(tally, ProducerSequence("victim", 60, 0), "after", now=NOW + 30 + EPOCH_QUIET_MICROS)
    retired = [e for e, entry in tally.entries("victim").items() if entry.retired]
    assert retired == [11]


def test_an_epoch_whose_end_is_declared_may_be_retired_at_once() -> None:
    tally = Tally()
    for n in range(3):
        one(tally, ProducerSequence("p", 10, n), f"a{n}", now=NOW)
    # Its next epoch says it published 3: settled, and done with.
    ended = Sequenced(ProducerSequence("p", 11, 0, ended_epoch=10, ended_count=3), "b0", True)
    tally.commit(tally.settle([ended], copies={}, stored_before=set(), now=NOW + 1, digest=_never))
    for k in range(MAX_EPOCHS - 1):
        one(tally, ProducerSequence("p", 12 + k, 0), f"c{k}", now=NOW + 2 + k)
    assert [e for e, entry in tally.entries("p").items() if entry.retired] == [10]
    # A count said that disagrees with what was seen is no end to retire by.
    tally = Tally()
    for n in range(3):
        one(tally, ProducerSequence("p", 10, n), f"a{n}", now=NOW)
    wrong = Sequenced(ProducerSequence("p", 11, 0, ended_epoch=10, ended_count=2), "b0", True)
    tally.commit(tally.settle([wrong], copies={}, stored_before=set(), now=NOW + 1, digest=_never))
    for k in range(MAX_EPOCHS - 1):
        one(tally, ProducerSequence("p", 12 + k, 0), f"c{k}", now=NOW + 2 + k)
    assert not any(entry.retired for entry in tally.entries("p").values())


def test_eight_forged_epochs_never_retire_one_owed_sequences() -> None:
    """An epoch with a gap stays; forged epochs past the eight kept are untracked,
    never the real one forgotten."""
    tally = Tally()
    one(tally, ProducerSequence("victim", 10, 0), "v0")
    one(tally, ProducerSequence("victim", 10, 3), "v3")  # 1 and 2 never came
    for n in range(3 * MAX_EPOCHS):
        one(tally, ProducerSequence("victim", 100 + n, 0), f"f{n}", now=NOW + n)
    real = tally.entries("victim")[10]
    assert (real.retired, [(g.first, g.last) for g in real.gaps]) == (False, [(1, 2)])
    for n in range(MAX_EPOCHS):
        one(tally, ProducerSequence("victim", 1000 + n, 5), f"g{n}")
    assert tally.entries("victim")[10].gaps
    # The real producer's retry of 3 is still a retry.
    retry = Sequenced(ProducerSequence("victim", 10, 3), "v3-retry", True)
    copies = {("victim", 10, 3): [Copy("v3", b"own")]}
    settled = tally.settle(
        [retry], copies=copies, stored_before=set(), now=NOW, digest=lambda _: b"own"
    )
    assert settled.verdicts == ["duplicate"]


@pytest.mark.slow
async def test_ten_thousand_producers_cost_an_entry_each_and_drop_nobodys_messages() -> None:
    store = DuckDBStore(":memory:")
    await store.start()
    try:
        for batch in range(10):
            rows = [row(f"m-{batch}-{n}", 0, producer=f"p-{batch}-{n}") for n in range(1000)]
            assert list(await store.append(rows)) == [None] * 1000
        # A producer at an epoch of its publish time and a sequence of 2^63 - 1: one gap.
        huge = row("m-huge", 2**63 - 1, producer="huge", epoch=NOW)
        victim = [row(f"v-{n}", n, producer="victim") for n in range(3)]
        assert list(await store.append([huge, *victim])) == [None] * 4
        await store.barrier()
        assert store.completeness is not None
        assert len(await store.completeness.producers("", 20_000)) == 10_002
        found = await store.completeness.producer("huge")
        assert found is not None
        (entry,) = found.epochs
        assert [(g.first, g.last) for g in entry.gaps] == [(0, 2**63 - 2)]
        assert len(encode_entry(entry)) < 130
        assert await store.seen([r.message_id for r in victim]) == dict.fromkeys(
            (r.message_id for r in victim), "stored"
        )
    finally:
        await store.close()


async def test_memory_holds_a_bounded_number_of_producers_and_reads_the_others_back(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "records.duckdb")
    store = DuckDBStore(path, live_producers=10)
    await store.start()
    try:
        for batch in range(5):
            rows = [row(f"m-{batch}-{n}", 0, producer=f"p-{batch}-{n}") for n in range(10)]
            rows.append(row(f"g-{batch}", 2, producer=f"p-{batch}-0"))  # 1 is owed
            await store.append(rows)
        assert store.completeness is not None
        # A read of the whole ledger writes what is owed: the oldest producers go.
        listed = await store.completeness.producers("", 100)
        assert len(listed) == 50
        assert store.live_producers <= 10
        # One let go publishes again: its entry is read back, gap and messages held.
        again = await store.append(
            [row("m-0-0-retry", 0, producer="p-0-0"), row("x", 1, producer="p-0-0")]
        )
        assert list(again) == [PublisherDuplicate("p-0-0", 0, 0), None]
        found = await store.completeness.producer("p-0-0")
        assert found is not None
        (entry,) = found.epochs
        assert (entry.highest, entry.gaps, entry.stored, entry.duplicates) == (2, [], 3, 1)
        # One never read back is told from DuckDB.
        cold = await store.completeness.producer("p-1-5")
        assert cold is not None
        assert cold.epochs[0].stored == 1
    finally:
        await store.close()


# -- DuckDB: one instance after another, a crash, a failed write --------------------------------


@pytest.mark.slow
async def test_a_restarted_store_keeps_its_ledger_and_still_drops_the_copies(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "records.duckdb")
    first = DuckDBStore(path)
    await first.start()
    await first.append([row("a", 0), row("b", 2)])
    await first.close()
    # The next instance on the file: a publisher's copy of 2 is not stored again, a
    # redelivery of a (its own id) changes nothing, 1 fills the gap.
    second = DuckDBStore(path)
    await second.start()
    try:
        outcomes = await second.append([row("b2", 2), row("a", 0), row("c", 1)])
        assert list(outcomes) == [PublisherDuplicate("orders-api", 0, 2), None, None]
        assert second.completeness is not None
        found = await second.completeness.producer("orders-api")
        assert found is not None
        (entry,) = found.epochs
        assert (entry.contiguous, entry.stored, entry.duplicates) == (2, 3, 1)
        await second.barrier()
        assert await second.message("b2") is None
    finally:
        await second.close()


@pytest.mark.slow
async def test_a_crash_recovers_the_ledger_with_the_rows_from_the_journal(tmp_path: Path) -> None:
    db = tmp_path / "records.duckdb"
    store = DuckDBStore(str(db))
    await store.start()
    await store.close()
    # What an append the process died after leaves: its rows and the ledger's word on
    # them in one frame, never applied.
    entry = EpochEntry(producer="orders-api", epoch=0, highest=1, stored=2, last_seen=NOW)
    rows = [row("a", 0), row("b", 1)]
    copies = [("orders-api", 0, n, r.message_id) for n, r in enumerate(rows)]
    journal = Journal(Path(f"{db}.journal"))
    journal.start(0)
    journal.write(encode(Frame(records=rows, rejections=[], producers=[entry], copies=copies)))
    journal.close()
    store = DuckDBStore(str(db))
    await store.start()
    try:
        assert list(await store.append([row("a2", 1)])) == [PublisherDuplicate("orders-api", 0, 1)]
        await store.barrier()
        assert await store.seen(["a", "b", "a2"]) == {"a": "stored", "b": "stored"}
    finally:
        await store.close()
    # And the table holds it: a third start reads it back from DuckDB.
    store = DuckDBStore(str(db))
    await store.start()
    try:
        assert store.completeness is not None
        found = await store.completeness.producer("orders-api")
        assert found is not None
        assert (found.epochs[0].stored, found.epochs[0].duplicates) == (2, 1)
    finally:
        await store.close()


@pytest.mark.slow
async def test_an_append_whose_ledger_is_not_written_is_refused_and_its_sequence_unseen(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "records.duckdb")
    store = DuckDBStore(path)
    await store.start()
    try:
        await store.append([row("a", 0)])
        pid = store._journal.pid if store._journal else None
        assert pid is not None
        os.kill(pid, signal.SIGKILL)

        def gone() -> bool:
            # Dead once a zombie or reaped (as tests/test_journal.py waits for it).
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except FileNotFoundError:
                return True
            return stat.rsplit(")", 1)[1].split()[0] in {"Z", "X"}

        await until(gone, what="the journal writer to die")
        with pytest.raises(StoreUnavailable, match="journal"):
            await store.append([row("b", 1)])
        assert store.completeness is not None
        found = await store.completeness.producer("orders-api")
        assert found is not None
        (entry,) = found.epochs
        assert (entry.seen(1), entry.stored) == (False, 1)
    finally:
        await store.close()
    # Pub/Sub delivers b again (503 was no acknowledgement): stored, not a duplicate.
    store = DuckDBStore(path)
    await store.start()
    try:
        assert list(await store.append([row("b", 1)])) == [None]
        await store.barrier()
        assert await store.seen(["a", "b"]) == {"a": "stored", "b": "stored"}
    finally:
        await store.close()


# -- what the ledger tells ---------------------------------------------------------------------


def test_the_api_lists_producers_in_pages_with_their_gaps(client: TestClient[Recordline]) -> None:
    for n in (0, 1, 3, 7):
        assert push(client, f"a-{n}", attributes(n, producer="a")) == 204
    assert push(client, "a-3-retry", attributes(3, producer="a")) == 204
    for producer in ("b", "c"):
        assert push(client, f"{producer}-0", attributes(0, producer=producer)) == 204
    first = client.get("/v1/producers", params={"limit": 2}).json()
    assert [p["producer"] for p in first["producers"]] == ["a", "b"]
    second = client.get("/v1/producers", params={"page_token": first["next_page_token"]})
    assert [p["producer"] for p in second.json()["producers"]] == ["c"]
    assert second.json()["next_page_token"] is None
    one = client.get("/v1/producers/a").json()
    (epoch,) = one["epochs"]
    assert (epoch["contiguous"], epoch["highest"], epoch["end"]) == (1, 7, "open")
    assert [(g["first"], g["last"], g["missing"]) for g in epoch["gaps"]] == [
        (2, 2, False),
        (4, 6, False),
    ]
    assert (epoch["stored"], epoch["duplicates"], one["missing"]) == (4, 1, 0)
    # b restarts as epoch 1 without saying where epoch 0 ended: its end is unknown.
    assert push(client, "b-e1", attributes(0, producer="b", epoch=1)) == 204
    ends = [e["end"] for e in client.get("/v1/producers/b").json()["epochs"]]
    assert ends == ["unknown", "open"]
    assert client.get("/v1/messages/a-3-retry").status_code == 404
    # A page token of another list is refused, and so is one of this list elsewhere.
    records = client.get("/v1/records", params={"limit": 1}).json()["next_page_token"]
    refused = client.get("/v1/producers", params={"page_token": records})
    assert refused.status_code == 400
    assert refused.json()["parameter"] == "page_token"


def test_a_gap_is_missing_once_older_than_the_grace_period() -> None:
    grace = "0.2"
    with TestClient(create_app(app_settings(RECORDLINE_PRODUCER_GRACE_SECONDS=grace))) as client:
        for n in (0, 2):
            assert push(client, f"g-{n}", attributes(n)) == 204
        fresh = client.get("/v1/producers/orders-api").json()
        assert fresh["missing"] == 0
        time.sleep(0.25)
        late = client.get("/v1/producers/orders-api").json()
    assert late["missing"] == 1
    assert late["epochs"][0]["gaps"][0]["missing"] is True


async def test_the_watch_reports_each_producer_missing_and_zero_once_its_gaps_close() -> None:
    store = DuckDBStore(":memory:")
    await store.start()
    try:
        producers = Producers(store, tokens=PageTokens("a-secret-of-sixteen"), grace_seconds=1e-6)
        watch = MissingWatch(producers)
        await store.append([row("a", 0), row("c", 3), row("x", 0, producer="other")])
        await asyncio.sleep(0.01)
        await watch.refresh()
        assert watch.missing == {"orders-api": 2}
        await store.append([row("b", 1), row("b2", 2)])
        await watch.refresh()
        assert watch.missing == {"orders-api": 0}  # closed: said once
        await watch.refresh()
        assert watch.missing == {}
    finally:
        await store.close()


async def test_the_watch_reports_each_producer_in_conflict() -> None:
    store = DuckDBStore(":memory:")
    await store.start()
    try:
        producers = Producers(store, tokens=PageTokens("a-secret-of-sixteen"), grace_seconds=60)
        watch = MissingWatch(producers)
        forged = msgspec.structs.replace(row("f", 1), data='"forged"')
        await store.append([row("a", 0), row("b", 1), forged, row("c", 2)])
        await watch.refresh()
        assert (watch.conflicts, watch.missing) == ({"orders-api": 1}, {})
    finally:
        await store.close()


def test_the_conflicts_metric_is_reported_per_producer() -> None:
    telemetry = Telemetry(prometheus=True)
    telemetry.metrics.producers_conflicts = lambda: {"orders-api": 2}
    assert telemetry.prometheus is not None
    text = generate_latest(telemetry.prometheus).decode()
    (line,) = [s for s in text.splitlines() if s.startswith("recordline_producer_conflicts{")]
    assert 'producer="orders-api"' in line
    assert line.endswith(" 2.0")


def test_the_missing_metric_is_reported_per_producer() -> None:
    telemetry = Telemetry(prometheus=True)
    telemetry.metrics.producers_missing = lambda: {"orders-api": 3, "billing": 0}
    assert telemetry.prometheus is not None
    text = generate_latest(telemetry.prometheus).decode()
    lines = [line for line in text.splitlines() if line.startswith("recordline_producer_missing{")]
    assert len(lines) == 2
    assert any('producer="orders-api"' in line and line.endswith(" 3.0") for line in lines)
    assert any('producer="billing"' in line and line.endswith(" 0.0") for line in lines)


async def test_audit_exits_non_zero_naming_the_first_missing_range_until_it_arrives(
    capsys: pytest.CaptureFixture[str],
) -> None:
    app = create_app(app_settings(RECORDLINE_PRODUCER_GRACE_SECONDS="0.05"))
    async with served(app) as http:
        base = str(http.base_url).rstrip("/")

        async def deliver(message_id: str, attrs: dict[str, str]) -> None:
            body = envelope(payload_of(message_id, attrs), message_id=message_id, attributes=attrs)
            assert (await http.post("/pubsub/push", json=body)).status_code == 204

        for n in (0, 1, 4, 5):
            await deliver(f"m-{n}", attributes(n))
        await deliver("m-5-retry", attributes(5))
        await deliver("bad", attributes("x"))
        # Epoch 1 says epoch 0 published 8: sequences 6 and 7 never came either.
        await deliver("e1-0", attributes(0, epoch=1, **{"recordline-epoch-ended": "0:8"}))
        await asyncio.sleep(0.1)  # past the grace period
        args = SimpleNamespace(
            since=datetime.now(UTC) - timedelta(hours=1), until=None, url=base, token=None
        )
        capsys.readouterr()
        assert await asyncio.to_thread(auditing.run, args) == 1
        printed = capsys.readouterr()
        first = "missing: producer 'orders-api' epoch 0 sequences 2 to 3"
        assert first in printed.err, printed.err
        assert "4 in all" in printed.err
        (hour,) = [line for line in printed.out.splitlines() if line.endswith(" 4")]
        # received, stored, rejected, duplicates, conflicts, missing: the malformed
        # one is no producer's; the retry is counted, not stored.
        assert [int(v) for v in hour.split()[1:]] == [6, 5, 0, 1, 0, 4]
        assert "sequences 6 to 7" in printed.out
        for n in (2, 3, 6, 7):
            await deliver(f"m-{n}", attributes(n))
        assert await asyncio.to_thread(auditing.run, args) == 0
        assert capsys.readouterr().err == ""


def test_the_report_decodes_what_the_service_answers() -> None:
    # The command decodes the route's answer with the route's own Struct.
    report = AuditReport(
        since=datetime.now(UTC) - timedelta(hours=1),
        until=datetime.now(UTC),
        hours=[],
        missing=0,
        missing_ranges=[],
        missing_range_count=0,
        unknown_ends=2,
    )
    out = io.StringIO()
    auditing.write(msgspec.json.decode(msgspec.json.encode(report), type=AuditReport), out)
    assert "2 epochs ended without saying how many messages they published" in out.getvalue()


# -- the publisher ------------------------------------------------------------------------------


class _Client:
    """A PublisherClient's `publish`, recording each call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bytes, dict[str, Any]]] = []

    def publish(self, topic: str, data: bytes, **options: Any) -> str:
        self.calls.append((topic, data, options))
        return f"future-{len(self.calls)}"


def test_the_publisher_numbers_each_message_and_passes_the_clients_options_on() -> None:
    client = _Client()
    publisher = SequencedPublisher(client, "orders-api", epoch=9, ended=(8, 120))
    assert publisher.publish("t", b"a", origin="web") == "future-1"
    publisher.publish("t", b"b", retry="a retry", timeout=5.0, ordering_key="k")
    assert publisher.published == 2
    (_, _, first), (_, _, second) = client.calls
    assert first == {
        "origin": "web",
        "recordline-producer": "orders-api",
        "recordline-epoch": "9",
        "recordline-seq": "0",
        "recordline-epoch-ended": "8:120",
    }
    assert second.pop("retry") == "a retry"
    assert second.pop("timeout") == 5.0
    assert second.pop("ordering_key") == "k"
    assert second["recordline-seq"] == "1"
    # What the service reads back is what was set.
    assert read_sequence({k: v for k, v in second.items()}) == ProducerSequence(
        "orders-api", 9, 1, ended_epoch=8, ended_count=120
    )


def test_a_publisher_starts_a_later_epoch_each_time_and_refuses_a_bad_id() -> None:
    first = SequencedPublisher(_Client(), "orders-api")
    second = SequencedPublisher(_Client(), "orders-api")
    assert 0 < first.epoch < second.epoch < 2**63
    with pytest.raises(SequenceError, match="recordline-producer: empty"):
        SequencedPublisher(_Client(), "")
    with pytest.raises(SequenceError, match="recordline-epoch-ended: epoch 3 is not before"):
        SequencedPublisher(_Client(), "p", epoch=3, ended=(3, 1))


# -- signed sequences ---------------------------------------------------------------------------

KEY = bytes(range(32))
# Standard base64 for one, URL-safe for the prefix's: both are taken.
KEYS = ",".join(
    [
        f"orders-api={base64.b64encode(KEY).decode()}",
        f"billing-*={base64.urlsafe_b64encode(bytes(16)).decode()}",
    ]
)


def test_a_signing_publisher_signs_what_the_service_checks() -> None:
    client = _Client()
    publisher = SequencedPublisher(client, "orders-api", epoch=9, ended=(8, 3), key=KEY)
    publisher.publish("t", b'{"id": "1"}', origin="web")
    ((_, data, attrs),) = client.calls
    keys = ProducerKeys.parse(KEYS)
    assert keys is not None
    assert keys.problem(attrs, data) is None
    # Any change to what is signed, and the signature is not the producer's.
    for changed in (
        {**attrs, "recordline-seq": "1"},
        {**attrs, "recordline-epoch": "10"},
        {**attrs, "recordline-epoch-ended": "8:2"},
    ):
        assert str(keys.problem(changed, data)).startswith("recordline-signature: not producer")
    assert str(keys.problem(attrs, b'{"id": "2"}')).startswith("recordline-signature: not")
    unsigned = {k: v for k, v in attrs.items() if k != "recordline-signature"}
    assert str(keys.problem(unsigned, data)).startswith("recordline-signature: missing")
    # A prefix's key covers every id it starts; other producers sign nothing.
    assert str(keys.problem({**unsigned, "recordline-producer": "billing-eu"}, data)).startswith(
        "recordline-signature: missing"
    )
    assert keys.problem({**unsigned, "recordline-producer": "payments"}, data) is None
    with pytest.raises(ValueError, match="at least 16 bytes"):
        SequencedPublisher(_Client(), "orders-api", key=b"short")


def test_a_key_that_cannot_be_used_is_refused_naming_the_producer_not_the_key() -> None:
    short = base64.b64encode(b"0123456789").decode()
    with pytest.raises(
        SettingsError, match="RECORDLINE_PRODUCER_KEYS: the key of 'orders-api' is 10 bytes"
    ) as refused:
        create_app(app_settings(RECORDLINE_PRODUCER_KEYS=f"orders-api={short}"))
    assert short not in str(refused.value)
    with pytest.raises(SettingsError) as malformed:
        app_settings(RECORDLINE_PRODUCER_KEYS="orders-api")
    assert malformed.value.var == "RECORDLINE_PRODUCER_KEYS"
    # A producer given two keys: one would be dropped unsaid.
    one, other = (base64.b64encode(bytes([n]) * 32).decode() for n in (1, 2))
    for twice in (f"orders-api={one},orders-api={other}", f"orders-*={one},orders-*={other}"):
        with pytest.raises(SettingsError, match="is given a key twice") as refused:
            create_app(app_settings(RECORDLINE_PRODUCER_KEYS=twice))
        assert one not in str(refused.value)
        assert other not in str(refused.value)
    # A prefix and an exact name are two entries.
    create_app(app_settings(RECORDLINE_PRODUCER_KEYS=f"orders-api={one},orders-api*={other}"))


def test_an_unsigned_claim_on_a_signing_producer_is_refused_and_claims_nothing() -> None:
    with TestClient(create_app(app_settings(RECORDLINE_PRODUCER_KEYS=KEYS))) as client:
        own = _Client()
        publisher = SequencedPublisher(own, "orders-api", epoch=PUBLISHED - 1, key=KEY)
        for n in range(3):
            publisher.publish("t", json.dumps({"id": f"o-{n}", "data": n}).encode())
        # An impostor takes sequences 1 and 2 first, unsigned, then signed with a wrong key.
        forged = {**own.calls[1][2]}
        forged.pop("recordline-signature")
        assert push(client, "x-1", forged) == 204
        wrong = {**own.calls[2][2], "recordline-signature": "AAAA"}
        assert push(client, "x-2", wrong) == 204
        for n, (_, data, attrs) in enumerate(own.calls):
            body = envelope({}, message_id=f"o-{n}", attributes=attrs, raw_data=data)
            assert client.post("/pubsub/push", json=body).status_code == 204
        refused = [client.get(f"/v1/messages/{m}").json() for m in ("x-1", "x-2")]
        assert [r["status"] for r in refused] == ["rejected", "rejected"]
        assert refused[0]["reason"].startswith("recordline-signature: missing")
        assert refused[1]["reason"].startswith("recordline-signature: not producer 'orders-api'")
        assert [client.get(f"/v1/messages/o-{n}").json()["status"] for n in range(3)] == [
            "stored"
        ] * 3
        (epoch,) = client.get("/v1/producers/orders-api").json()["epochs"]
        assert (epoch["stored"], epoch["rejected"], epoch["conflicts"], epoch["highest"]) == (
            3,
            0,
            0,
            2,
        )
