"""The newest records in memory: what a follower at the tail reads, with no query.

A store keeps the records of the last `window_seconds` here and answers a page
whose cursor lies within them from memory, so its load does not grow with
followers. `start` is the key before the oldest record held: a page after a
cursor at or past it is answered from here alone. The store says up to when the
tail is complete: the embedded store as it applies rows, the serving tier as it
reads what was committed since (`app.store.spanner.tail`).

Design: docs/reading.md#following-the-tail
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable
from typing import Final

from app.records import Record
from app.store.pages import Page, PageQuery, most_bytes, row_bytes
from app.store.where import reads_data

# Records held at most, and their bytes (`held`) at most: a burst larger than this
# since the window began makes the tail start after it, and its followers read the
# store until they are near the tail again. 50,000 records of 1 KiB are 49 MiB; the
# bytes bound the tail when records are large (six of 10 MB), not its row count.
MAX_ROWS: Final = 50_000
MAX_BYTES: Final = 64 * 1024 * 1024
# The records' bytes after a cursor an expression on payloads is matched on here at
# most: decoding 50 MiB of them held the event loop 0.4-0.8 s, pushes waiting; 4 MiB
# is a few tens of milliseconds. Past it the store's SQL reads the page.
PAYLOADS_MATCHED_AT_MOST: Final = 4 * 1024 * 1024

Key = tuple[int, str]
# Before every key: where a tail starts that holds every record of its store.
BEGINNING: Final[Key] = (-(2**62), "")


def held(record: Record) -> int:
    """What the tail counts a record as holding: what a reader is shown of it, and the
    message data it was decoded from, if it still carries it (`Record.received`)."""
    received = record.received
    return row_bytes(record) + (0 if received is None else len(received))


class Tail:
    """Records of the last `window_seconds`, in key order."""

    def __init__(
        self,
        *,
        window_seconds: float = 60.0,
        max_rows: int = MAX_ROWS,
        max_bytes: int = MAX_BYTES,
    ) -> None:
        self._window = int(window_seconds * 1_000_000)
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self._rows: list[Record] = []
        self._keys: list[Key] = []
        # What the rows count as (`row_bytes`) up to each, from the first ever held
        # (`_before`: the rows let go of): a page's bytes are two look-ups, its cut at
        # its byte budget one bisection.
        self._ends: list[int] = []
        self._before = 0
        # What the rows held hold together (`held`).
        self.bytes = 0
        # Nothing lies after (start, "") until the first rows: a tail starts
        # where it was made, and older records are read from the store.
        self.start: Key = (2**62, "")

    def __len__(self) -> int:
        return len(self._rows)

    def covers(self, query: PageQuery) -> bool:
        """Whether every record after the query's cursor is here (up to `page`'s `until`),
        and the query's filter is one the tail applies here (a typed field's is not: only
        the store's SQL reads typed columns; nor an expression on payloads when those
        after the cursor hold more than PAYLOADS_MATCHED_AT_MOST: the matcher decodes
        each on the event loop, the store's SQL off it, within its read deadline)."""
        cursor = (query.after_time, query.after_message_id)
        keep = query.filter
        if keep is not None and keep.fields:
            return False
        if cursor < self.start:
            return False
        if keep is not None and keep.where is not None and reads_data(keep.expression("records")):
            first = bisect.bisect_right(self._keys, cursor)
            base = self._ends[first - 1] if first else self._before
            held = (self._ends[-1] if self._ends else self._before) - base
            return held <= PAYLOADS_MATCHED_AT_MOST
        return True

    @property
    def window(self) -> int:
        """How far back the tail holds records (µs)."""
        return self._window

    def reset(self, at: int) -> None:
        """Hold nothing, from `at` on: records after it are added as they come."""
        self._rows, self._keys, self._ends = [], [], []
        self._before = 0
        self.bytes = 0
        self.start = (at, "")

    def fill(self, start: Key, records: list[Record]) -> None:
        """Hold `records`, every record after `start` in key order (a store warming
        its tail from storage as it starts)."""
        self._rows = list(records)
        self._keys = [(r.ingest_time, r.message_id) for r in records]
        self._ends = list(itertools.accumulate(map(row_bytes, records)))
        self._before = 0
        self.bytes = sum(map(held, records))
        self.start = start
        self._evict(0)

    def add(self, records: Iterable[Record], *, now: int) -> None:
        """Records stored since: after `start`, in any order (each lands in key order)."""
        ends = self._ends
        # The first place a row stored late landed: the totals from there on are made
        # once the batch is in, in one pass (not one pass a late row over those after it).
        late: int | None = None
        for record in records:
            key = (record.ingest_time, record.message_id)
            if key <= self.start:
                continue
            size = row_bytes(record)
            if not self._keys or key > self._keys[-1]:
                self._keys.append(key)
                self._rows.append(record)
                if late is None:
                    ends.append((ends[-1] if ends else self._before) + size)
            else:  # stored late, behind rows already here: rare, in order all the same
                at = bisect.bisect_left(self._keys, key)
                self._keys.insert(at, key)
                self._rows.insert(at, record)
                late = at if late is None else min(late, at)
            received = record.received
            self.bytes += size + (0 if received is None else len(received))
        if late is not None:
            base = ends[late - 1] if late else self._before
            del ends[late:]
            sizes = map(row_bytes, itertools.islice(self._rows, late, None))
            ends.extend(itertools.accumulate(sizes, initial=base))
            del ends[late]  # the base itself
        self._evict(now - self._window)

    def page(self, query: PageQuery, until: int) -> Page[Record]:
        """The page after a covered cursor, complete up to min(before_time, until); it
        ends early, full, once its rows hold `query.max_bytes`."""
        before = min(query.before_time, until)
        cursor = (query.after_time, query.after_message_id)
        first = bisect.bisect_right(self._keys, cursor)
        last = bisect.bisect_left(self._keys, (before, ""), lo=first)
        keep = query.filter
        if keep:
            # The rows between that do not match are examined and left out: a full
            # page still resumes after its last row, a short one at `before`.
            rows = self._rows
            kept = (rows[at] for at in range(first, last) if keep.matches(rows[at]))
            records = list(itertools.islice(kept, query.limit))
        else:
            records = self._rows[first : min(last, first + query.limit)]
        full = len(records) == query.limit
        if query.max_bytes is not None and records:
            if keep:
                if most_bytes(records) >= query.max_bytes:
                    total = 0
                    for at, record in enumerate(records):
                        total += row_bytes(record)
                        if total >= query.max_bytes:
                            full, records = True, records[: at + 1]
                            break
            else:
                # The first row whose bytes, with those before it, reach the budget.
                ends, base = self._ends, self._ends[first - 1] if first else self._before
                end = first + len(records)
                if ends[end - 1] - base >= query.max_bytes:
                    at = bisect.bisect_left(ends, base + query.max_bytes, first, end)
                    full, records = True, records[: at - first + 1]
        after = (records[-1].ingest_time, records[-1].message_id) if full else (before, "")
        return Page(records, *after, complete_until=before)

    def _evict(self, oldest: int) -> None:
        rows = self._rows
        cut = bisect.bisect_left(self._keys, (oldest, ""))
        cut = max(cut, len(self._keys) - self.max_rows)
        left = self.bytes - sum(map(held, rows[:cut]))
        while left > self.max_bytes:
            left -= held(rows[cut])
            cut += 1
        if cut > 0:
            self.start = self._keys[cut - 1]
            self._before = self._ends[cut - 1]
            del self._rows[:cut], self._keys[:cut], self._ends[:cut]
            self.bytes = left
