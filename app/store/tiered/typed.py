"""Typed columns on the way from Spanner to BigQuery: the exporter's rows of `records`.

The exporter projects each payload Spanner keeps as JSON onto the typed columns of
`records` (`app.store.bigquery.typed`) as it appends it. A revision this process
never saw is fetched (`Revisions.lookup`); while it cannot be, the export pauses.
A batch that needs fields the write path lacks waits in Spanner, at most
`WAIT_SECONDS`. A batch appended again may be encoded with more fields than its
first attempt, but goes to the same offset, so BigQuery keeps one of them.

Design: docs/typed-columns.md#behind-the-serving-tier
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

from google.protobuf import descriptor_pb2

from app.records import Record
from app.store.bigquery.layout import NO_COPIES, Copies
from app.store.bigquery.proto import RowEncoder
from app.store.bigquery.typed import TypedTable, typed_columns, typed_descriptor
from app.typed.mapping import Field
from app.typed.revisions import Revisions

log = logging.getLogger(__name__)

# How long a batch waits in Spanner for the write path to take its new typed
# fields: the Storage Write API documents "on the order of minutes"; the
# export's lag ticket fires long before Spanner's deletion could matter.
WAIT_SECONDS: Final = 600.0
# How long one export round asks the write path before it lets the other table go.
_ROUND_SECONDS: Final = 1.0

# How one batch is appended: the writer schema and each row's bytes.
Encoding = tuple[descriptor_pb2.DescriptorProto, Callable[[Any], bytes]]


class TypedExport:
    """Encodes the exporter's `records` rows with the typed columns BigQuery takes."""

    def __init__(
        self,
        table: TypedTable,
        revisions: Revisions,
        *,
        wait_seconds: float = WAIT_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        copies: Callable[[], Copies] = lambda: NO_COPIES,
    ) -> None:
        self.table = table
        self._revisions = revisions
        self._wait_seconds = wait_seconds
        self._clock = clock
        # The layout's copies each row carries, asked for each batch (StoreUnavailable
        # until they are known); the encoders are made again if they change.
        self._copies = copies
        self._encoded_copies: Copies = NO_COPIES
        self._plain = RowEncoder(Record)
        self._encoders: dict[tuple[Field, ...] | None, RowEncoder] = {}
        # Since when batches wait for the write path (None: none does).
        self.waiting_since: float | None = None
        self._outwaited = False  # said so once, until the write path catches up

    async def encoding(self, rows: Sequence[Record]) -> Encoding | None:
        """How to append `rows`; None while they wait for the write path.

        Raises StoreUnavailable while a revision they name cannot be fetched.
        """
        copies = self._copies()
        if copies is not self._encoded_copies:
            self._plain = RowEncoder(Record, derived=copies)
            self._encoders.clear()
            self._encoded_copies = copies
        revision_of = self._revisions.revision_of
        known = await self.table.hold(self._revisions, (revision_of(r.schema) for r in rows))
        writable = await self.table.catch_up(self._clock() + _ROUND_SECONDS)
        if not self.table.caught_up:
            now = self._clock()
            if self.waiting_since is None:
                self.waiting_since = now
                log.info(
                    "records wait in Spanner until BigQuery's write path takes the new "
                    "typed fields of %s (at most %g s)",
                    self.table.table,
                    self._wait_seconds,
                )
            if now - self.waiting_since < self._wait_seconds:
                return None
            if not self._outwaited:
                self._outwaited = True
                log.warning(
                    "BigQuery's write path still lacks typed fields of %s after %g s: "
                    "records are exported without them, named in projection_errors",
                    self.table.table,
                    self._wait_seconds,
                )
        else:
            self.waiting_since = None
            self._outwaited = False
        if not self.table.takes_typed_rows:
            return self._plain.descriptor, self._plain.encode
        encoder = self._encoder(writable)

        def encode(record: Record) -> bytes:
            revision = revision_of(record.schema)
            here = revision is not None and known[revision]
            unmapped = self.table.unmapped(revision)
            return encoder.encode(record, typed_columns(record, revision, writable, here, unmapped))

        return encoder.descriptor, encode

    def _encoder(self, writable: tuple[Field, ...] | None) -> RowEncoder:
        encoder = self._encoders.get(writable)
        if encoder is None:
            # One per schema the write path has had: a handful over a table's life.
            encoder = self._encoders[writable] = RowEncoder(
                Record, typed_descriptor(writable), derived=self._encoded_copies
            )
        return encoder
