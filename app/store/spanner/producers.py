"""The completeness ledger in Spanner: `producer_epochs`, written in each group commit.

A group commit whose rows carry producer sequences reads their producers' entries
(a key range per producer, at most MAX_EPOCHS rows), settles the batch against
them (`app.store.producers.Tally`) and writes the entries it changed in the same
transaction as the rows: of two instances committing one producer's messages,
Spanner aborts one, so one producer's commits take turns across the fleet.

Design: docs/producers.md#exactly-once-by-producer-sequence
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from typing import Any, Final

from google.cloud import spanner

from app.records import moment
from app.store.producers import (
    MAX_PRODUCER_LENGTH,
    EpochEntry,
    Settled,
    decode_entry,
    encode_entry,
)

# One row per producer and epoch, its state a msgpack value (`encode_entry`), so its
# fields change without a schema change; `last_seen` carries the row deletion
# policy: an epoch not heard of for the retention goes with its rows.
TABLE: Final = "producer_epochs"
NAMES: Final = ["producer", "epoch", "entry", "last_seen"]
# Column, type and nullable, as INFORMATION_SCHEMA names them.
COLUMNS: Final = [
    ("producer", f"STRING({MAX_PRODUCER_LENGTH})", False),
    ("epoch", "INT64", False),
    ("entry", "BYTES(MAX)", False),
    ("last_seen", "TIMESTAMP", False),
]


def keys_of(producers: Iterable[str]) -> Any:
    """Every epoch of each of these producers: a key range per producer."""
    return spanner.KeySet(  # type: ignore[no-untyped-call]
        ranges=[
            spanner.KeyRange(start_closed=[p], end_closed=[p])  # type: ignore[no-untyped-call]
            for p in sorted(set(producers))
        ]
    )


def entries_of(found: Iterable[list[Any]]) -> list[EpochEntry]:
    """Entries from rows read with NAMES (the client hands BYTES back base64)."""
    return [decode_entry(base64.b64decode(row[2])) for row in found]


def write(transaction: Any, settled: Settled) -> None:
    """The batch's changes to the ledger, as mutations of the caller's transaction."""
    if settled.changed:
        transaction.insert_or_update(
            TABLE,
            NAMES,
            [
                [e.producer, e.epoch, base64.b64encode(encode_entry(e)), moment(e.last_seen)]
                for e in settled.changed.values()
            ],
        )
    if settled.dropped:
        transaction.delete(
            TABLE,
            spanner.KeySet(keys=[list(key) for key in sorted(settled.dropped)]),  # type: ignore[no-untyped-call]
        )


PAGE_SQL: Final = (
    f"SELECT producer, epoch, entry, last_seen FROM {TABLE} "
    "WHERE producer > @after ORDER BY producer, epoch LIMIT @limit"
)
