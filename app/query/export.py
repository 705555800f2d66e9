"""A list's rows taken away: CSV or JSON Lines, streamed page by page, within bounds.

An export walks the list's pages as a follower does (the same Reader, filter and
cursor rules; masked for who is not an operator), up to the time it was asked
(`until`, by default then), and sends each page's rows as they are read, so the
process holds one page at a time whatever the export's size. It stops at its row
bound, its byte bound or its time, whichever comes first, and says so in a last
line with the page token to go on from (`NOTE_KEY`), which another export takes.

Design: docs/reading.md#exporting-a-filtered-set
"""

from __future__ import annotations

import base64
import csv
import enum
import io
import logging
import time
import unicodedata
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import msgspec

from app.budget import Charge
from app.errors import BadParameter, RetryLater, TooMuchInFlight
from app.query.select import Selection
from app.query.service import MAX_LIMIT, RECORDS, Listing, RecordsPage
from app.records import micros

log = logging.getLogger(__name__)

# Rows an export sends by default, and at most (`max_rows`).
DEFAULT_ROWS: Final = 100_000
MAX_ROWS: Final = 1_000_000
# An export ends after this long (with its note): well inside Cloud Run's request
# timeout (330 s), and a longer one goes on from its token.
MAX_SECONDS: Final = 240.0
# Columns one export may name, and how long a name may be.
MAX_COLUMNS: Final = 32
MAX_COLUMN_LENGTH: Final = 300
# The last line of an export that stopped short: a JSON object under this one key
# (JSON Lines), or a CSV line starting `#` saying the same.
NOTE_KEY: Final = "recordline_export"

_encode = msgspec.json.encode
_decode = msgspec.json.Decoder().decode


class Format(enum.StrEnum):
    CSV = "csv"
    JSONL = "jsonl"


MEDIA_TYPES: Final = {Format.CSV: "text/csv", Format.JSONL: "application/jsonl"}


@dataclass(frozen=True, slots=True)
class Column:
    """One column of an export: a field of the list's rows, or a value inside one
    (`data.customer.email`, `attributes.region`)."""

    name: str
    field: str
    path: tuple[str, ...] = ()

    def value(self, row: dict[str, Any]) -> Any:
        found = row.get(self.field)
        for step in self.path:
            if not isinstance(found, dict):
                return None
            found = found.get(step)
        return found


def fields_of(listing: Listing[Any]) -> tuple[str, ...]:
    """The fields a list's rows have, in the order its view declares them."""
    return tuple(f.name for f in msgspec.structs.fields(listing.view))


def columns_of(listing: Listing[Any], text: str | None) -> tuple[Column, ...]:
    """The columns `text` (comma-separated) names, every field by default; BadParameter
    naming `columns` for one the list has not, a name twice, or too many."""
    fields = fields_of(listing)
    if text is None or not text.strip():
        return tuple(Column(name, name) for name in fields)
    names = [name.strip() for name in text.split(",")]
    if len(names) > MAX_COLUMNS:
        raise BadParameter("columns", f"{len(names)} columns; {MAX_COLUMNS} at most")
    found: list[Column] = []
    for name in names:
        if not name:
            raise BadParameter("columns", "an empty name (two commas, or one at an end)")
        if len(name) > MAX_COLUMN_LENGTH:
            raise BadParameter("columns", f"a name of {len(name)} characters")
        field, dot, rest = name.partition(".")
        if field == "attributes" and dot and rest:
            found.append(Column(name, field, (rest,)))  # a key may hold dots itself
        elif field == "data" and dot and listing is RECORDS and all(rest.split(".")):
            found.append(Column(name, field, tuple(rest.split("."))))
        elif name in fields:
            found.append(Column(name, name))
        else:
            inside = "`data.PATH`, " if listing is RECORDS else ""
            raise BadParameter(
                "columns",
                f"{name[:60]!r} is none of {', '.join(fields)}, {inside}`attributes.KEY`",
            )
    if len({c.name for c in found}) < len(found):
        raise BadParameter("columns", "a column named twice")
    return tuple(found)


def selected_columns(chosen: Selection) -> tuple[Column, ...]:
    """The columns a `select=` names (`app.query.select`: the reads' own parser, bounds
    and masks): each entry a column headed as written (`data["x y"]`, `attributes.origin`)."""
    return tuple(Column(e.text, e.field, e.path) for e in chosen.entries)


@dataclass(frozen=True, slots=True)
class Bounds:
    rows: int
    bytes: int
    seconds: float = MAX_SECONDS

    @classmethod
    def of(cls, max_rows: int, max_bytes: int) -> Bounds:
        if not 1 <= max_rows <= MAX_ROWS:
            raise BadParameter("max_rows", f"must be between 1 and {MAX_ROWS:,}")
        return cls(max_rows, max_bytes)


class Walk:
    """How an export reads its list: a page after a token, and the token that resumes
    after one of a page's rows (an export cut inside a page goes on from there)."""

    def __init__(
        self,
        read: Callable[[str, int], Awaitable[Any]],
        after: Callable[[str, Any], str | None],
    ) -> None:
        self.read = read
        self.after = after


class Export:
    """One export's lines: a CSV header or nothing, each row, and a note if cut."""

    def __init__(
        self,
        fmt: Format,
        columns: tuple[Column, ...],
        bounds: Bounds,
        *,
        fields: tuple[str, ...] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.format = fmt
        self.columns = columns
        self.bounds = bounds
        self._clock = clock
        # Every field, in the view's order: a row's line is its view's JSON as it is.
        self._whole = tuple(c.name for c in columns) == fields
        # The fields the columns read (a page's read need not read a record's `data`
        # or `attributes` outside them), in the view's order; every field when whole.
        named = dict.fromkeys(c.field for c in columns)
        self.fields = fields if self._whole else tuple(f for f in fields or named if f in named)

    def head(self) -> bytes:
        if self.format is Format.JSONL:
            return b""
        # A column's name is the caller's own text (`columns=`): a cell like any other.
        return _csv_line([_inert(c.name) for c in self.columns])

    def lines(self, views: list[Any]) -> list[bytes]:
        """Each row's line. A row is made JSON values one at a time (times as RFC 3339,
        the payload decoded), not the page at once; every field as JSON Lines needs
        no decoding at all."""
        if self.format is Format.JSONL and self._whole:
            return [_encode(view) + b"\n" for view in views]
        lines = []
        for view in views:
            row = _row(view, self.fields)
            if self.format is Format.JSONL:
                lines.append(_encode({c.name: c.value(row) for c in self.columns}) + b"\n")
            else:
                lines.append(_csv_line([_cell(c.value(row)) for c in self.columns]))
        return lines

    def note(self, sent: int, why: str, token: str | None) -> bytes:
        """The last line of an export cut short: why, and the token to go on from."""
        if self.format is Format.JSONL:
            body = {"complete": False, "rows": sent, "reason": why, "next_page_token": token}
            return _encode({NOTE_KEY: body}) + b"\n"
        go_on = f"; go on with page_token={token}" if token else ""
        return f"# {NOTE_KEY}: incomplete after {sent} rows, {why}{go_on}\n".encode()

    def first_limit(self) -> int:
        return min(MAX_LIMIT, self.bounds.rows)

    async def run(
        self, token: str, first: Any, walk: Walk, asked: int, *, held: Charge | None = None
    ) -> AsyncIterator[bytes]:
        """The export's bytes: `first`, the page `token` names (read before the response
        began, so that its refusals are statuses), then each page after it, up to `asked`
        (µs: the read horizon when it was asked). A token with a later `until`, or none,
        ends there too: an export never follows the rows stored after it began. Each
        chunk is charged to `held` (the request's charge) until its client has taken it."""
        started = self._clock()
        sent_rows, sent_bytes = 0, 0
        # What the request holds besides the chunk being sent.
        base = 0 if held is None else held.size
        # The head goes with the first page's rows. No page is held while a chunk waits
        # to be taken (at a `yield`): a client that leaves mid-export leaves this
        # generator suspended until the cyclic collector finds it, and what a page holds
        # of the budget would be held until then. The chunk is the request's charge
        # instead, which the app gives back once the request ends, whatever became of
        # this generator.
        pending = self.head()
        sent_bytes += len(pending)
        page = first
        del first
        while True:
            views = page.records if isinstance(page, RecordsPage) else page.rejections
            # Rows stored after it was asked are not the export's: it is complete there.
            passed = next(
                (at for at, v in enumerate(views) if micros(v.ingest_time) >= asked), None
            )
            if passed is not None:
                views = views[:passed]
            try:
                lines = self.lines(views)
            except Exception:
                log.exception("an export's rows could not be written")
                yield pending + self.note(sent_rows, "a row could not be written", token)
                return
            # Every row that fits both bounds, its lines sent together.
            fits, size = 0, 0
            for line in lines[: self.bounds.rows - sent_rows]:
                if sent_bytes + size + len(line) > self.bounds.bytes:
                    break
                fits, size = fits + 1, size + len(line)
            chunk = pending + b"".join(lines[:fits])
            pending = b""
            cut = fits < len(lines)
            resume = walk.after(token, views[fits - 1]) if cut and fits else token
            following = page.next_page_token
            drained = not views and micros(page.complete_until) >= asked
            del page, views, lines
            if chunk:
                if held is not None:
                    # Charged until the client has taken it (the page's own charge is
                    # given back as the page goes), a moment's wait for room at most.
                    try:
                        await held.read(base + len(chunk))
                    except TooMuchInFlight as exc:
                        yield self.note(sent_rows, exc.detail, token)
                        return
                yield chunk
                if held is not None:
                    held.shrink(base)
            del chunk
            sent_rows, sent_bytes = sent_rows + fits, sent_bytes + size
            if cut:
                bound = "byte" if sent_rows < self.bounds.rows else "row"
                limit = self.bounds.bytes if bound == "byte" else self.bounds.rows
                yield self.note(sent_rows, f"at its {limit:,}-{bound} bound", resume)
                return
            if following is None or passed is not None:
                return  # the whole range: complete
            if drained:
                return  # nothing more before it was asked: complete
            if sent_rows >= self.bounds.rows:
                yield self.note(sent_rows, f"at its {self.bounds.rows:,}-row bound", following)
                return
            if self._clock() - started >= self.bounds.seconds:
                yield self.note(sent_rows, f"after {self.bounds.seconds:g} s", following)
                return
            token = following
            try:
                page = await walk.read(token, min(MAX_LIMIT, self.bounds.rows - sent_rows))
            except RetryLater as exc:
                yield self.note(sent_rows, f"the store did not answer: {exc.detail}", token)
                return
            except Exception:
                # The response began: whatever fails ends it with its note, not cut off.
                log.exception("an export's page could not be read")
                yield self.note(sent_rows, "a page could not be read", token)
                return


# A spreadsheet reads a cell starting with one of these as a formula (CSV injection),
# after any whitespace, and in their compatibility forms (full-width U+FF1D, small U+FE66,
# which some read as the ASCII ones): such a text is sent with a `'` before it, which
# the spreadsheet shows it without. A cell that starts with whitespace (a tab, a line
# break, a space) or an invisible format character (a zero-width space, a byte order
# mark) is sent so too, whatever follows, since what a spreadsheet trims before
# reading it differs.
FORMULA_STARTS: Final = frozenset("=+-@")
# Unicode's categories of control and format characters (tab, CR, U+200B, U+FEFF).
_INVISIBLE: Final = frozenset({"Cc", "Cf"})


def _row(view: Any, fields: tuple[str, ...]) -> Any:
    """`view`'s `fields` as JSON values (a page read for them alone may hold no other's
    value). A record's data is stored as sent where the contract carries it, unread: a
    number no decoder here holds (beyond a float, an integer of thousands of digits)
    leaves it as its text, so that the row, and the export, go on."""
    values = {name: getattr(view, name) for name in fields}
    try:
        return _decode(_encode(values))
    except msgspec.DecodeError:
        data = values.get("data")
        if not isinstance(data, msgspec.Raw):
            raise
        return _decode(_encode(values | {"data": bytes(data).decode()}))


def _cell(value: Any) -> str:
    match value:
        case None:
            return ""
        case bool():
            return "true" if value else "false"
        case str():
            return _inert(value)
        case int() | float():
            return str(value)
        case bytes():
            return _inert(base64.b64encode(value).decode())
        case _:
            return _encode(value).decode()


def _inert(text: str) -> str:
    """`text` as a cell no spreadsheet runs: with a `'` before it where it starts with a
    formula's sign, in any compatibility form, or with whitespace or an invisible
    character (`FORMULA_STARTS`)."""
    if not text:
        return text
    first = text[0]
    if (
        first.isspace()
        or unicodedata.category(first) in _INVISIBLE
        or unicodedata.normalize("NFKC", first)[:1] in FORMULA_STARTS
    ):
        return "'" + text
    return text


def _csv_line(cells: list[str]) -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerow(cells)
    return out.getvalue().encode()
