"""Read routes: thin, they parse parameters and call the Reader."""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import quote, unquote_to_bytes

import msgspec
from litestar import MediaType, Request, Response, get
from litestar.datastructures import ResponseHeader
from litestar.di import NamedDependency
from litestar.openapi.spec import Example, OpenAPIFormat, OpenAPIType, Schema
from litestar.params import Parameter, PathParameter

from app.docs import RecordsOperation, RejectionsOperation
from app.errors import (
    AmbiguousRequest,
    BadParameter,
    CertsUnavailable,
    ExportForbidden,
    Forbidden,
    Gone,
    NotFound,
    QueryTooCostly,
    StoreUnavailable,
    TooManyExports,
    TooManyFollowers,
    TooManyReads,
    TooMuchInFlight,
    Unauthorized,
)
from app.http.events import stream_head
from app.http.head import HEAD_REQUEST, charge_of
from app.problems import problem_responses
from app.query.filters import (
    ATTRIBUTE_PATTERN,
    FIELD_PATTERN,
    FILTER_PARAMETERS,
    REPEATABLE,
    row_filter,
)
from app.query.follow import MAX_WAIT_SECONDS, Followers
from app.query.page_token import MAX_TOKEN_LENGTH
from app.query.select import MAX_ENTRIES, MAX_SELECT_BYTES, Selection, refuse_masked, selection_of
from app.query.select import PARAMETER as SELECT
from app.query.service import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    RECORDS,
    REJECTIONS,
    CountsView,
    Listing,
    MessageView,
    Reader,
    RecordsPage,
    RecordView,
    RejectionsPage,
    complete,
)
from app.query.streams import Streams
from app.records import (
    AGO_PATTERN,
    ID_PATTERN,
    MAX_ID_LENGTH,
    RFC3339_PATTERN,
    NotATime,
    micros,
    time_or_ago,
)
from app.routes.follow import (
    COMPLETE_UNTIL,
    NEGOTIATED,
    STREAMING,
    answer,
    stream,
    until_gone,
    wants_stream,
)
from app.store import MAX_BUCKETS
from app.store.filters import MAX_CONDITIONS, RowFilter
from app.store.producers import MAX_PRODUCER_LENGTH
from app.store.where import MAX_WHERE_BYTES

_AGO = re.compile(AGO_PATTERN)
_PAGE_PARAMETERS = (
    frozenset({"since", "until", "limit", "page_token", "wait", "order", "select"})
    | FILTER_PARAMETERS
)
_COUNT_PARAMETERS = frozenset({"since", "until", "buckets"}) | FILTER_PARAMETERS
# Buckets a count answers unless asked for another number.
DEFAULT_BUCKETS = 60


def time_parameter(description: str) -> Any:
    """A `since` or `until` parameter, as `time_of` takes it."""
    return Parameter(
        description=f"{description}: an RFC 3339 time with an offset, such as "
        "`2024-04-27T12:00:00Z`, or how long before the request (`30s`, `15m`, `2h`, `7d`). "
        "A time before the year 1 or after 9999 once in UTC reads from the start, or to the end",
        # Either a date-time (its numbers a real date, as the format says) or an age.
        schema_extra={
            "one_of": [
                Schema(
                    type=OpenAPIType.STRING,
                    format=OpenAPIFormat.DATE_TIME,
                    pattern=RFC3339_PATTERN,
                ),
                Schema(type=OpenAPIType.STRING, pattern=AGO_PATTERN),
            ]
        },
    )


# The parameters of both paged lists, /v1/records and /v1/rejections.
Since = Annotated[str | None, time_parameter("Rows stored at or after it")]
Until = Annotated[str | None, time_parameter("Rows stored before it, later than `since`")]
Limit = Annotated[int, Parameter(ge=1, le=MAX_LIMIT, description="Rows per page")]
Wait = Annotated[
    float,
    Parameter(
        ge=0,
        le=MAX_WAIT_SECONDS,
        description=(
            "Seconds a page that would be empty waits for a row past the cursor (long-poll); "
            "at the end it is answered empty, with the same cursor"
        ),
    ),
]
Order = Annotated[
    Literal["oldest", "newest"],
    Parameter(
        description=(
            "`oldest` (the default): in ingest order, from `since`. `newest`: the newest rows "
            "first, before `until` or now and none older than `since`, each page's token going "
            "on to older rows; a page read only (no `wait`, no event stream): to follow what "
            "comes after it, read oldest first from its `complete_until` as `since`"
        ),
    ),
]
# A count's (`/v1/counts/…`): its range, and how many buckets it is cut into.
CountSince = Annotated[str, time_parameter("Rows stored at or after it: the first bucket's start")]
CountUntil = Annotated[
    str | None,
    time_parameter(
        "Rows stored before it, later than `since` (default: now): the last bucket's end"
    ),
]
Buckets = Annotated[
    int,
    Parameter(
        ge=1,
        le=MAX_BUCKETS,
        description="How many buckets of equal length `[since, until)` is cut into",
    ),
]
PageTokenText = Annotated[
    str | None,
    Parameter(
        max_length=MAX_TOKEN_LENGTH,
        description="From the previous page, opaque: overrides `since`; sent with an "
        "`until`, the one of the first page",
    ),
]
# A list's filter (`app.query.filters`): every condition holds; a page token carries it.
AttributeFilter = Annotated[
    list[str] | None,
    Parameter(
        description=(
            "Rows whose Pub/Sub attribute KEY is exactly VALUE, as `KEY:VALUE` (the key ends at "
            f"the first `:`); repeat it for more (all must hold, {MAX_CONDITIONS} conditions at "
            "most in all)"
        ),
        max_items=MAX_CONDITIONS,
        schema_extra={"items": {"type": "string", "pattern": ATTRIBUTE_PATTERN}},
    ),
]
ProducerFilter = Annotated[
    str | None,
    Parameter(
        description="Rows a producer published (its `recordline-producer` attribute)",
        min_length=1,
        max_length=MAX_PRODUCER_LENGTH,
    ),
]
RecordIdFilter = Annotated[
    str | None,
    Parameter(
        description="Records of this id (every version)", min_length=1, max_length=MAX_ID_LENGTH
    ),
]
MessageIdFilter = Annotated[
    str | None,
    Parameter(
        description="The row of this Pub/Sub message", min_length=1, max_length=MAX_ID_LENGTH
    ),
]
FieldFilter = Annotated[
    list[str] | None,
    Parameter(
        description=(
            "Records whose typed field PATH equals VALUE, as `PATH:VALUE` "
            "(`customer.email:a@b.c`), read as the field's type (STRING, INT64, NUMERIC, BOOL "
            "or DATE); on stores with typed columns (DuckDB, BigQuery); repeatable"
        ),
        max_items=MAX_CONDITIONS,
        schema_extra={"items": {"type": "string", "pattern": FIELD_PATTERN}},
    ),
]
WhereFilter = Annotated[
    str | None,
    Parameter(
        description=(
            "Rows an expression of the filter language keeps: comparisons (`=`, `!=`, `<`, "
            "`<=`, `>`, `>=`), `IN (…)`, `STARTS WITH`, `CONTAINS` and `EXISTS` on `data.PATH`, "
            "`attributes.KEY`, `id`, `message_id`, `producer`, `reason`, `publish_time`, "
            "`ingest_time` and `timestamp`, joined by AND, OR, NOT and parentheses "
            "(`data.amount > 100 AND attributes.region IN ('eu', 'uk')`)"
        ),
        min_length=1,
        max_length=MAX_WHERE_BYTES,
    ),
]

SELECT_DESCRIPTION = (
    "What to keep of each row, comma-separated: fields by name (`id`, `ingest_time`) and "
    "paths into the payload and the attributes as `where` writes them (`data.customer.id`, "
    '`data["x y"]`, `attributes.origin`), a path keeping its nesting '
    '(`id,data.amount` is `{"id": …, "data": {"amount": …}}`). What is not selected, and a '
    f"path a row lacks, is absent from the row. At most {MAX_ENTRIES} entries and "
    f"{MAX_SELECT_BYTES:,} bytes; it changes no row, order nor cursor"
)


def select_parameter(description: str = SELECT_DESCRIPTION) -> Any:
    """The `select` parameter as every read documents it."""
    return Parameter(
        description=description,
        min_length=1,
        max_length=MAX_SELECT_BYTES,
        examples=[
            Example(summary="Fields", value="message_id,id,ingest_time"),
            Example(summary="Paths", value='id,data.customer.id,data["x y"],attributes.origin'),
        ],
    )


SelectText = Annotated[str | None, select_parameter()]


def select_once(request: Request[Any, Any, Any]) -> None:
    """400 for `select` given more than once, on a read that takes its other parameters
    as the framework does: it would keep one and drop what the other names."""
    if len(request.query_params.getall(SELECT, [])) > 1:
        raise BadParameter(SELECT, "given more than once; give it once")


@functools.cache
def _field_names(view: type[msgspec.Struct]) -> tuple[str, ...]:
    """A row view's fields, by name (read once a view: msgspec reads its annotations)."""
    return tuple(f.name for f in msgspec.structs.fields(view))


def selected(listing: Listing[Any], text: str | None, reader: Reader) -> Selection | None:
    """What `select` keeps of `listing`'s rows (None: every field): 400 naming it for
    what cannot be read, 403 for what `reader`'s mask hides."""
    if text is None:
        return None
    chosen = selection_of(text, _field_names(listing.view), payload=listing is RECORDS)
    refuse_masked(chosen, reader.mask)
    return chosen


@dataclasses.dataclass(frozen=True)
class Filter:
    """A list's filter parameters, as the route was given them."""

    attribute: list[str] | None = None
    producer: str | None = None
    record_id: str | None = None
    message_id: str | None = None
    field: list[str] | None = None
    where: str | None = None

    def of(self, listing: Listing[Any]) -> RowFilter | None:
        """The filter they ask of `listing`; BadParameter naming what cannot be one."""
        return row_filter(
            listing.name,
            attribute=self.attribute or (),
            producer=self.producer,
            record_id=self.record_id,
            message_id=self.message_id,
            field=self.field or (),
            where=self.where,
        )


# What any read may be answered with besides its own errors: no valid token, not
# a reader, the store (or its cost cap) or the token keys unavailable.
_READ_ERRORS = (
    AmbiguousRequest,
    Unauthorized,
    Forbidden,
    StoreUnavailable,
    QueryTooCostly,
    TooManyReads,
    TooMuchInFlight,
    CertsUnavailable,
)
PAGE_ERRORS = problem_responses(BadParameter, Gone, TooManyFollowers, *_READ_ERRORS)
COUNT_ERRORS = problem_responses(BadParameter, Gone, *_READ_ERRORS)
LOOKUP_ERRORS = problem_responses(BadParameter, NotFound, *_READ_ERRORS)
STREAM_ERRORS = problem_responses(BadParameter, NotFound, Gone, TooManyFollowers, *_READ_ERRORS)
EXPORT_ERRORS = problem_responses(
    BadParameter, NotFound, Gone, TooManyExports, ExportForbidden, *_READ_ERRORS
)
# Either list's page: it says up to when it is complete.
P = TypeVar("P", RecordsPage, RejectionsPage)


@dataclasses.dataclass(frozen=True)
class Paging:
    """What the paged lists and their streams read with: the reader, what every
    follower shares, and the streams (on the same reader). One dependency, not
    several: Litestar resolves several side by side in a task group, which costs
    a page more than its read."""

    reader: Reader
    followers: Followers
    streams: Streams
    # What every export is bound by besides its own parameters (app.routes.export).
    export_max_bytes: int


# An id may hold any character, `/` included (`orders/123`, asked for as
# `orders%2F123`). The router decodes a path before matching it, so the id is
# a `path` parameter (the rest of the path, slashes and all) and is read from
# the raw, still-encoded path: the decoded one has lost where each `/` was
# (`a%2F%2Fb%2F` arrives as `/a/b`).
RECORDS_PREFIX = "/v1/records/"
MESSAGES_PREFIX = "/v1/messages/"


def _path_id(description: str) -> Any:
    return PathParameter(
        description=f"{description}, as percent-encoded UTF-8 (`/` as `%2F`, `%` as `%25`); "
        f"at most {MAX_ID_LENGTH} characters, the longest the push path stores",
        # Documented only: exact_id checks the id as the client encoded it.
        schema_extra={"minLength": 1, "maxLength": MAX_ID_LENGTH, "pattern": ID_PATTERN},
    )


def exact_id(request: Request[Any, Any, Any], prefix: str, name: str, matched: str) -> str:
    """The id in the path after `prefix`, exactly as the client encoded it.

    Its bytes, percent-decoded, must be UTF-8: a 400 says where they are not,
    rather than a look-up of an id with U+FFFD where the client's bytes were.
    """
    found = matched.removeprefix("/")
    raw: bytes | None = request.scope.get("raw_path")
    if raw:
        path = raw.decode("latin-1")  # ASGI: the bytes as sent, one character each
        path = path.removeprefix(quote(request.scope.get("root_path", "")))
        if path.startswith(prefix):
            found = _decoded(name, path[len(prefix) :].encode("latin-1"))
    if not found:
        raise BadParameter(name, "empty")
    # Longer ids are never stored (records: a rejection; messages: a 400 at push):
    # refused before any query.
    if len(found) > MAX_ID_LENGTH:
        raise BadParameter(name, f"{len(found)} characters, more than the {MAX_ID_LENGTH} stored")
    return found


_BAD_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")


def _decoded(name: str, encoded: bytes) -> str:
    """Percent-encoded UTF-8 as text; BadParameter naming what is not."""
    bad = _BAD_ESCAPE.search(encoded)
    if bad is not None:
        raise BadParameter(
            name,
            f"`%` at character {bad.start() + 1} is not followed by two hex digits; "
            "percent-encode the id (`%` as `%25`)",
        )
    try:
        return unquote_to_bytes(encoded).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadParameter(
            name,
            f"not UTF-8 once percent-decoded (byte {exc.start + 1} of the id is not valid "
            "there); percent-encode the id's UTF-8",
        ) from None


def time_of(name: str, value: str | None, now: datetime | None = None) -> datetime | None:
    """`since` or `until` as every list and the audit take it: an RFC 3339 time, or how
    long before `now` (by default, the clock's) (BadParameter naming both otherwise)."""
    if value is None:
        return None
    try:
        return time_or_ago(value, now=now)
    except NotATime as exc:
        raise BadParameter(name, str(exc)) from None


def refuse_unknown(
    request: Request[Any, Any, Any], known: frozenset[str] = _PAGE_PARAMETERS
) -> None:
    """BadParameter for a parameter `known` does not hold (a misspelt filter would
    otherwise read as none), or one given twice that is not REPEATABLE."""
    params = request.query_params
    unknown = sorted(set(params) - known)
    if unknown:
        raise BadParameter(unknown[0], "unknown parameter")
    # Each is one value: given twice, the framework would take one and drop the other.
    for name in params:
        if name not in REPEATABLE and len(params.getall(name)) > 1:
            raise BadParameter(name, "given more than once; give it once")


def _freshness(rows: str) -> list[ResponseHeader]:
    return [
        ResponseHeader(
            name=COMPLETE_UNTIL,
            description=f"Every {rows} before this time is in this page or an earlier one",
            # Litestar derives the header's schema (OpenAPI requires one) from a value's
            # type: an RFC 3339 time is a string. Documentation only: never sent as is.
            value="2024-04-27T12:00:01.123456Z",
            documentation_only=True,
        )
    ]


async def _paged(
    request: Request[Any, Any, Any],
    paging: Paging,
    listing: Listing[P],
    since: str | None,
    until: str | None,
    limit: int,
    page_token: str | None,
    wait: float,
    asked: Filter,
    order: str = "oldest",
    select: str | None = None,
) -> Response[Any]:
    """One page of either list, its parameters checked the same way; or, asked for
    `text/event-stream`, the pages as they come (`app.routes.follow`)."""
    reader, followers = paging.reader, paging.followers
    refuse_unknown(request)
    start, end = time_of("since", since), time_of("until", until)
    keep = asked.of(listing)
    chosen = selected(listing, select, reader)
    streaming = wants_stream(request)
    if order == "newest":
        if wait or streaming:
            raise BadParameter(
                "order",
                "newest first is read a page at a time, never followed (`wait`, an event "
                "stream): follow oldest first from a page's `complete_until` as `since`",
            )
        newest = await reader.newest_page(
            listing,
            since=start,
            until=end,
            limit=limit,
            page_token=page_token,
            filter=keep,
            fields=None if chosen is None else chosen.fields,
        )
        # Never kept by a cache: its first page changes as rows come.
        return answer(request, newest, full=False, final=False, followers=followers, select=chosen)
    if streaming:
        # A client resuming a stream sends the last event's id, which is its token.
        resumed = request.headers.get("last-event-id")
        token = resumed or page_token
        # The token came in the header: a refusal names it, not a parameter never sent.
        where = "Last-Event-ID" if resumed else "page_token"
        cursor = reader.cursor(listing, start, end, limit, token, sent_as=where, filter=keep)
        # A seat taken before anything is awaited: streams asking at once cannot all pass.
        seat = followers.admit()
        try:
            await reader.check_filter(listing, keep)
        except BaseException:
            seat.release()
            raise
        if request.scope.get(HEAD_REQUEST):
            # Its head alone: a HEAD follows nothing, and leaves its connection free.
            seat.release()
            return stream_head(STREAMING | NEGOTIATED)
        return stream(
            request,
            followers,
            listing,
            cursor,
            page_token=token,
            limit=limit,
            seat=seat,
            select=chosen,
        )
    if wait:
        # The cursor first: its refusal takes no seat.
        cursor = reader.cursor(listing, start, end, limit, page_token, filter=keep)
        seat = followers.admit()
        async with until_gone(request, followers, seat) as follow:
            page = await follow.page(listing, cursor, limit, wait=wait, first=page_token is None)
    else:
        # What the page shows alone is read (a follower's read above is shared, whole).
        page = await reader.page(
            listing,
            since=start,
            until=end,
            limit=limit,
            page_token=page_token,
            filter=keep,
            fields=None if chosen is None else chosen.fields,
        )
    full = complete(page, limit)
    rows = page.records if isinstance(page, RecordsPage) else page.rejections
    kept = reader.kept_seconds(micros(rows[0].ingest_time)) if rows else None
    # A bound given as an age (`since=2h`) is another time at each request: the same URL
    # names other rows later, so its page is revalidated, never kept as it is.
    moving = _ago(until) or (page_token is None and _ago(since))
    final = listing.final and not moving
    return answer(
        request, page, full=full, final=final, followers=followers, kept=kept, select=chosen
    )


def _ago(value: str | None) -> bool:
    """Whether a `since` or `until` is how long before the request (`30s`, `2h`)."""
    return value is not None and _AGO.fullmatch(value) is not None


@get(
    "/v1/records",
    summary="Records in ingest order, one page at a time",
    description=(
        "Ordered by (ingest_time, message_id). Follow `next_page_token` to read on; a client "
        "that keeps following it sees every record exactly once, even while writes continue."
    ),
    tags=["records"],
    operation_class=RecordsOperation,
    response_headers=_freshness("record ingested"),
    responses=PAGE_ERRORS,
)
async def list_records(
    request: Request[Any, Any, Any],
    paging: NamedDependency[Paging],
    since: Since = None,
    until: Until = None,
    limit: Limit = DEFAULT_LIMIT,
    page_token: PageTokenText = None,
    wait: Wait = 0.0,
    attribute: AttributeFilter = None,
    producer: ProducerFilter = None,
    record_id: RecordIdFilter = None,
    message_id: MessageIdFilter = None,
    field: FieldFilter = None,
    where: WhereFilter = None,
    order: Order = "oldest",
    select: SelectText = None,
) -> Response[RecordsPage]:
    asked = Filter(attribute, producer, record_id, message_id, field, where)
    return await _paged(
        request, paging, RECORDS, since, until, limit, page_token, wait, asked, order, select
    )


@get(
    "/v1/rejections",
    summary="Rejected messages in ingest order, one page at a time",
    description=(
        "Ordered by (ingest_time, message_id), paged like `/v1/records`; `data` is the payload "
        "exactly as received, base64."
    ),
    tags=["records"],
    operation_class=RejectionsOperation,
    response_headers=_freshness("rejection stored"),
    responses=PAGE_ERRORS,
)
async def list_rejections(
    request: Request[Any, Any, Any],
    paging: NamedDependency[Paging],
    since: Since = None,
    until: Until = None,
    limit: Limit = DEFAULT_LIMIT,
    page_token: PageTokenText = None,
    wait: Wait = 0.0,
    attribute: AttributeFilter = None,
    producer: ProducerFilter = None,
    message_id: MessageIdFilter = None,
    where: WhereFilter = None,
    order: Order = "oldest",
    select: SelectText = None,
) -> Response[RejectionsPage]:
    # Rejections have no record id nor typed fields: asked for, the filter says so.
    given = request.query_params
    asked = Filter(
        attribute, producer, given.get("record_id"), message_id, given.getall("field", []), where
    )
    return await _paged(
        request, paging, REJECTIONS, since, until, limit, page_token, wait, asked, order, select
    )


async def _counted(
    request: Request[Any, Any, Any],
    reader: Reader,
    listing: Listing[Any],
    since: str,
    until: str | None,
    buckets: int,
    asked: Filter,
) -> CountsView:
    """How many rows of either list a filter keeps per bucket, its parameters checked as
    a page's are: an age (`since=1h`) is read from the same moment `until` defaults to,
    so that an hour in 60 buckets is 60 buckets of a minute."""
    refuse_unknown(request, _COUNT_PARAMETERS)
    now = datetime.now(UTC)
    start, end = time_of("since", since, now), time_of("until", until, now)
    if start is None:  # a required parameter: never absent here
        raise BadParameter("since", "missing")
    keep = asked.of(listing)
    return await reader.counts(
        listing, since=start, until=end, buckets=buckets, filter=keep, now=now
    )


_COUNTS_DESCRIPTION = (
    "The rows a walk of the list's pages over `[since, until)` with the same filters would "
    "meet, counted in `buckets` buckets of equal length from `since` (the last one cut at "
    "`until`): what a console shows above a filtered list. One read of the store; nothing "
    "past the read horizon is counted (`complete_until`)."
)


@get(
    "/v1/counts/records",
    summary="How many records the filters keep, per bucket of time",
    description=_COUNTS_DESCRIPTION + " Records are counted once each, as the list shows them.",
    tags=["records"],
    responses=COUNT_ERRORS,
)
async def count_records(
    request: Request[Any, Any, Any],
    reader: NamedDependency[Reader],
    since: CountSince,
    until: CountUntil = None,
    buckets: Buckets = DEFAULT_BUCKETS,
    attribute: AttributeFilter = None,
    producer: ProducerFilter = None,
    record_id: RecordIdFilter = None,
    message_id: MessageIdFilter = None,
    field: FieldFilter = None,
    where: WhereFilter = None,
) -> CountsView:
    asked = Filter(attribute, producer, record_id, message_id, field, where)
    return await _counted(request, reader, RECORDS, since, until, buckets, asked)


@get(
    "/v1/counts/rejections",
    summary="How many rejections the filters keep, per bucket of time",
    description=_COUNTS_DESCRIPTION + " Every rejection is counted, as the list shows each.",
    tags=["records"],
    responses=COUNT_ERRORS,
)
async def count_rejections(
    request: Request[Any, Any, Any],
    reader: NamedDependency[Reader],
    since: CountSince,
    until: CountUntil = None,
    buckets: Buckets = DEFAULT_BUCKETS,
    attribute: AttributeFilter = None,
    producer: ProducerFilter = None,
    message_id: MessageIdFilter = None,
    where: WhereFilter = None,
) -> CountsView:
    # Rejections have no record id nor typed fields: asked for, the filter says so.
    given = request.query_params
    asked = Filter(
        attribute, producer, given.get("record_id"), message_id, given.getall("field", []), where
    )
    return await _counted(request, reader, REJECTIONS, since, until, buckets, asked)


@get(
    RECORDS_PREFIX + "{record_id:path}",
    summary="The latest version of a record",
    tags=["records"],
    responses=LOOKUP_ERRORS,
)
async def get_record(
    request: Request[Any, Any, Any],
    reader: NamedDependency[Reader],
    record_id: Annotated[str, _path_id("The record's id, from its payload")],
    select: SelectText = None,
) -> Response[RecordView]:
    found = exact_id(request, RECORDS_PREFIX, "record_id", record_id)
    select_once(request)
    chosen = selected(RECORDS, select, reader)
    record = await reader.record(found, charge=charge_of(request.scope))
    return _projected(record, chosen, chosen.row if chosen else None)


@get(
    MESSAGES_PREFIX + "{message_id:path}",
    summary="What happened to one Pub/Sub message: stored, or rejected and why",
    tags=["records"],
    responses=LOOKUP_ERRORS,
)
async def get_message(
    request: Request[Any, Any, Any],
    reader: NamedDependency[Reader],
    message_id: Annotated[str, _path_id("The Pub/Sub message id")],
    select: Annotated[
        str | None,
        select_parameter(
            SELECT_DESCRIPTION + ". Of the `record` a stored message holds: the rest of the "
            "answer is about the message, and kept whole"
        ),
    ] = None,
) -> Response[MessageView]:
    found = exact_id(request, MESSAGES_PREFIX, "message_id", message_id)
    select_once(request)
    chosen = selected(RECORDS, select, reader)
    message = await reader.message(found, charge=charge_of(request.scope))
    return _projected(message, chosen, chosen.message if chosen else None)


def _projected(
    view: Any, chosen: Selection | None, project: Callable[[Any], Any] | None
) -> Response[Any]:
    """A look-up's answer: `view` whole, or what `project` keeps of it under `chosen`."""
    if chosen is None or project is None:
        return Response(view)
    return Response(chosen.encoded(project(view)), media_type=MediaType.JSON)


# Called by readers.
READ_ROUTES = [
    list_records,
    list_rejections,
    count_records,
    count_rejections,
    get_record,
    get_message,
]
