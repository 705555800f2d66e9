"""Producer sequences on the serving tier: two instances, one Spanner database, one ledger.

Two apps share a database of the Spanner emulator (each with its own client and
sessions, as two Cloud Run instances would). One producer's messages are delivered
to both, out of order: each once to one instance, some again (the same message id)
to the other, and a publisher's retries (the same sequence under a new message id)
to the other too, and another publisher's messages under some of its sequences.
Each push is delivered again on a 503, as Pub/Sub would (the emulator refuses the
second of two transactions at once). Each of the producer's messages must be
stored once, under whichever copy committed first, every other publisher's message
too, and the ledger must count what happened exactly: a redelivery of the stored
copy nothing, each delivery of a copy that lost once, each sequence claimed by
two messages a conflict.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from app.asgi import create_app
from app.settings import Settings
from tests.conftest import delivered, envelope, served
from tests.waiting import until

pytestmark = pytest.mark.emulator

SEQUENCES = 24
RETRIED = range(0, SEQUENCES, 4)  # a publisher's retry of every fourth
REDELIVERED = range(1, SEQUENCES, 3)  # Pub/Sub's redelivery of every third
FORGED = range(2, SEQUENCES, 5)  # another publisher's message under every fifth


def body(message_id: str, sequence: int, *, record: str = "order") -> dict[str, Any]:
    attributes = {
        "recordline-producer": "orders-api",
        "recordline-epoch": "7",
        "recordline-seq": str(sequence),
    }
    return envelope(
        {"id": f"{record}-{sequence}", "data": {"n": sequence}},
        message_id=message_id,
        attributes=attributes,
    )


async def deliver(client: httpx.AsyncClient, push: dict[str, Any]) -> None:
    """Until acknowledged, as Pub/Sub delivers it again after a 503."""
    answer = await delivered(client, push, attempts=200)
    assert answer.status_code == 204, (push["message"]["messageId"], answer.text)


async def test_two_instances_store_each_sequence_once_and_keep_one_exact_ledger(
    make_tiered: Callable[..., Any], serving_settings: Callable[..., Settings]
) -> None:
    settings = serving_settings()
    first = await make_tiered(start=False)
    second = await make_tiered(start=False)
    async with (
        served(create_app(settings, store=first)) as one,
        served(create_app(settings, store=second)) as two,
    ):
        rng = random.Random(61)
        deliveries: list[tuple[httpx.AsyncClient, dict[str, Any]]] = []
        for n in range(SEQUENCES):
            original, other = rng.sample([one, two], 2)
            deliveries.append((original, body(f"m-{n}", n)))
            if n in REDELIVERED:
                deliveries.append((other, body(f"m-{n}", n)))
            if n in RETRIED:
                deliveries.append((other, body(f"m-{n}-retry", n)))
            if n in FORGED:
                deliveries.append((other, body(f"m-{n}-forged", n, record="forged")))
        rng.shuffle(deliveries)
        lanes = [deliveries[i::6] for i in range(6)]  # six pushes in flight at once

        async def lane(pushes: list[tuple[httpx.AsyncClient, dict[str, Any]]]) -> None:
            for client, push in pushes:
                await deliver(client, push)

        await asyncio.gather(*(lane(pushes) for pushes in lanes))
        acknowledged = datetime.now(UTC)

        async def final() -> list[dict[str, Any]] | None:
            """The page, once it is final past the last acknowledgement: a row the
            other instance committed last may sit above the read horizon a moment."""
            params = {"since": "2000-01-01T00:00:00Z", "limit": 1000}
            page = (await one.get("/v1/records", params=params)).json()
            complete = datetime.fromisoformat(page["complete_until"])
            return page["records"] if complete >= acknowledged else None

        records = await until(final, interval=0.2, what="a page final past every acknowledgement")
        # One record per sequence, whichever copy won, and every other publisher's.
        assert Counter(r["id"] for r in records) == {
            **{f"order-{n}": 1 for n in range(SEQUENCES)},
            **{f"forged-{n}": 1 for n in FORGED},
        }
        won = {r["message_id"] for r in records}
        for n in RETRIED:
            assert len(won & {f"m-{n}", f"m-{n}-retry"}) == 1
        ledgers = [(await c.get("/v1/producers/orders-api")).json() for c in (one, two)]
    assert ledgers[0] == ledgers[1]
    (epoch,) = ledgers[0]["epochs"]
    assert (epoch["epoch"], epoch["contiguous"], epoch["highest"], epoch["gaps"]) == (
        7,
        SEQUENCES - 1,
        SEQUENCES - 1,
        [],
    )
    # Every sequence stored once; each delivery of a losing copy counted (a copy the
    # retry beat, delivered twice, counts twice: nothing of it is kept to tell); a
    # redelivery of the stored copy, as nothing.
    losing = [p for _, p in deliveries if p["message"]["messageId"] not in won]
    assert len(losing) >= len(RETRIED)
    assert (epoch["stored"], epoch["rejected"], epoch["duplicates"]) == (
        SEQUENCES + len(FORGED),
        0,
        len(losing),
    )
    assert ledgers[0]["missing"] == 0
    # Whichever came first, the other is the conflict.
    assert epoch["conflicts"] == len(FORGED)
    assert [(c["first"], c["last"]) for c in epoch["conflicted"]] == [(n, n) for n in FORGED]
