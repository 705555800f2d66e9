"""Followers of the paged lists over HTTP: a page that waits (long-poll), a stream of
pages (server-sent events), and pages that say when they can never change.

`wait=SECONDS` holds a page that would be empty; `Accept: text/event-stream` streams
pages as events, resumable by `Last-Event-ID`; a full page of records carries a
strong `ETag` and may be cached. What a follower reads, and when, is its `Follow`'s
(`app.query.follow`); here it is encoded and its client watched (`app.http.events`).
docs/reading.md#following-the-tail
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Final, TypeVar

import msgspec
from litestar import Request, Response
from litestar.datastructures import CacheControlHeader, ETag
from litestar.datastructures.headers import Header
from litestar.status_codes import HTTP_304_NOT_MODIFIED

from app.auth.guards import admitted_by_pass
from app.errors import RetryLater
from app.http.events import EVENT_STREAM, EventStream, stop_of, watcher
from app.http.head import charge_of, first_header
from app.problems import problem_type
from app.query.events import Encodings, Event, event, event_bytes, framed
from app.query.follow import Follow, Followers, Seat
from app.query.page_token import PageToken
from app.query.select import Selection
from app.query.service import Excerpt, Listing, RecordsPage, RejectionsPage
from app.records import rfc3339

P = TypeVar("P", RecordsPage, RejectionsPage)

COMPLETE_UNTIL: Final = "Recordline-Complete-Until"
JSON: Final = "application/json"
# A page that can never change may be kept this long (a year: as long as HTTP allows).
IMMUTABLE_SECONDS: Final = 31_536_000
# A stream's events hold about this much at most (`app.store.row_bytes`), or one row
# when that is larger: what a follower whose client reads slowly holds while paused.
SSE_EVENT_BYTES: Final = 1024 * 1024
NO_CACHE: Final = CacheControlHeader(no_cache=True)
# RFC 9110's qvalue (section 12.4.2): 0 to 1, three decimals at most.
QVALUE: Final = re.compile(r"0(\.[0-9]{0,3})?|1(\.0{0,3})?")
# The request headers that carry a reader's credentials (`app.auth.guards.credentials`),
# as the scope names them.
CREDENTIALS: Final = (b"authorization", b"x-serverless-authorization")
# What an event stream is sent with besides its type: no cache keeps it, and no
# proxy holds its events back to send them together (nginx's header).
STREAMING: Final[dict[str, str]] = {"X-Accel-Buffering": "no", NO_CACHE.HEADER_NAME: "no-cache"}
# A paged list answers one URL with a page or a stream of them, as `Accept` asks: every
# answer says so, or a cache keeping a page by its URL would give it to a stream's client.
NEGOTIATED: Final[dict[str, str]] = {"Vary": "Accept"}
_encode = msgspec.json.encode


def as_headers(*items: Header | tuple[str, str]) -> dict[str, str]:
    """The headers of Litestar's header types (`ETag`, `CacheControlHeader`) and pairs."""
    found: dict[str, str] = {}
    for item in items:
        if isinstance(item, tuple):
            found[item[0]] = item[1]
        else:
            found[item.HEADER_NAME] = item.to_header()
    return found


def shareable(request: Request[Any, Any, Any], followers: Followers) -> bool:
    """Whether a shared cache may keep this read's answer for anyone who asks its URL:
    the service allows it (`RECORDLINE_SHARED_CACHE`) and the request carries no
    credentials. A cache keys by URL alone (Cloud CDN honours no `Vary: Authorization`),
    so an answer to a token is `private`: another client never gets it from the cache.
    So is an answer to a read pass: a cache that checks no pass would give it to anyone,
    and Cloud CDN keeps a signed request's answer a second whatever it says."""
    if admitted_by_pass(request.scope) or not followers.shared_cache:
        return False
    return not any(name.lower() in CREDENTIALS for name, _ in request.scope["headers"])


def immutable(shared: bool, kept: int | None = None) -> tuple[str, str]:
    """What a cache may do with an answer that can never change: keep it a year, or
    (`kept`) only as long as the retention keeps its rows, which no cache then serves.
    The Cache-Control header written as Litestar's `CacheControlHeader` writes it, but
    at once: that finds its directives by walking its dataclass's fields, ~50 calls a
    page."""
    max_age = IMMUTABLE_SECONDS if kept is None else min(kept, IMMUTABLE_SECONDS)
    return (
        NO_CACHE.HEADER_NAME,
        f"max-age={max_age}, {'public' if shared else 'private'}, immutable",
    )


def unchanged(request: Request[Any, Any, Any], etag: ETag) -> bool:
    """Whether the client holds what `etag` names already (`If-None-Match`)."""
    sent = first_header(request.scope, b"if-none-match")
    if not sent:
        return False
    return etag.to_header() in {tag.strip().removeprefix("W/") for tag in sent.split(",")}


def until_gone(request: Request[Any, Any, Any], followers: Followers, seat: Seat) -> _UntilGone:
    """A follower in `seat` while inside (`Follow`), until the client disconnects or the
    service stops; its seat given back on the way out."""
    return _UntilGone(request, followers, seat)


class _UntilGone:
    """`until_gone`: a context manager of slots, where contextlib's made of a generator
    held 400 bytes a parked long-poll."""

    __slots__ = ("followers", "request", "seat", "stop", "watcher")

    def __init__(self, request: Request[Any, Any, Any], followers: Followers, seat: Seat) -> None:
        self.request = request
        self.followers = followers
        self.seat = seat

    async def __aenter__(self) -> Follow:
        stop, watched = stop_of(self.request)
        self.stop = stop
        self.watcher = watcher(self.request.receive, stop, watched)
        self.followers.joined(stop)
        return self.followers.follow(stop, seat=self.seat)

    async def __aexit__(self, *_: object) -> None:
        if self.watcher is not None:
            self.watcher.cancel()
        self.followers.left(self.stop)
        self.seat.release()


def wants_stream(request: Request[Any, Any, Any]) -> bool:
    """Whether the client's `Accept` prefers a stream of events to one JSON page.

    Negotiated as RFC 9110 says (section 12.5.1): media ranges compare
    case-insensitively, each type takes the quality of the most specific range
    that matches it, and a quality of 0 is "not acceptable", so
    `text/event-stream;q=0, */*` never streams. (Litestar's `Accept.best_match`
    matches a `q=0` range like any other, and its parsing fails on `q=inf`.) A range
    whose q is no qvalue (`q=2`, `q=inf`, `q=abc`) is left out, as one that says
    nothing. The higher quality wins; a tie, no header, or nothing acceptable: JSON.
    """
    accept = first_header(request.scope, b"accept")
    if not accept:
        return False
    ranges = [r for media in accept.lower().split(",") if (r := _media_range(media))]
    stream = _quality(ranges, EVENT_STREAM)
    return stream > 0 and stream > _quality(ranges, JSON)


def _media_range(media: str) -> tuple[str, float] | None:
    """`text/*;q=0.5` → ("text/*", 0.5); without a q, 1; None where the q is no qvalue."""
    kind, *parameters = media.split(";")
    quality = 1.0
    for parameter in parameters:
        name, _, value = parameter.partition("=")
        if name.strip() == "q":
            if not QVALUE.fullmatch(value.strip()):
                return None
            quality = float(value)
    return kind.strip(), quality


def _quality(ranges: list[tuple[str, float]], media_type: str) -> float:
    """The quality of `media_type`: its most specific matching range's, or 0."""
    wildcard = media_type.partition("/")[0] + "/*"
    specificity = {media_type: 2, wildcard: 1, "*/*": 0}
    matching = [(specificity[r], q) for r, q in ranges if r in specificity]
    return max(matching)[1] if matching else 0.0


# An answer no cache keeps without asking again, as headers: written once.
NOT_CACHED: Final = as_headers(NO_CACHE)


def page_body(
    encodings: Encodings, page: RecordsPage | RejectionsPage, select: Selection | None = None
) -> bytes:
    """The page as JSON, with what `select` keeps of each row (every field without
    one): made once for every follower given it with that projection."""
    if select is None:
        return encodings.of(page, JSON, lambda: _encode(page), len)
    return encodings.of(
        page, (JSON, select.text), lambda: select.encoded(select.page(page)), len, apart=True
    )


def page_event(
    encodings: Encodings, page: RecordsPage | RejectionsPage, select: Selection | None = None
) -> Event:
    """The page as an event of a stream (`event: page`, its id the token after it):
    made once for every follower given it with the same projection (`select`), and
    sent in pieces, its body not copied, when that is larger than a slice."""
    return encodings.of(
        page,
        EVENT_STREAM if select is None else (EVENT_STREAM, select.text),
        lambda: framed(b"page", page_body(encodings, page, select), page.next_page_token),
        event_bytes,
        apart=select is not None,
    )


def answer(
    request: Request[Any, Any, Any],
    page: P,
    *,
    full: bool,
    final: bool,
    followers: Followers,
    kept: int | None = None,
    select: Selection | None = None,
) -> Response[Any]:
    """The page as JSON (with what `select` keeps of each row), with its freshness, and
    what caches may do: keep a `final` full page (while the retention keeps its rows,
    `kept` seconds), revalidate any other full one by its `ETag` (of the body sent, so
    each projection's own), ask again for the tail."""
    found = {COMPLETE_UNTIL: rfc3339(page.complete_until)} | NEGOTIATED
    body = page_body(followers.encodings, page, select)
    charge = charge_of(request.scope)
    if charge is not None:
        # The page's charge (its rows, and this body made of them) lasts while it lives:
        # until the body is sent.
        charge.keep(page)
    if not full:
        return Response(body, media_type=JSON, headers=found | NOT_CACHED)
    etag = ETag(value=hashlib.sha256(body).hexdigest()[:32])
    found |= as_headers(etag)
    found |= as_headers(immutable(shareable(request, followers), kept)) if final else NOT_CACHED
    if unchanged(request, etag):
        return Response(b"", status_code=HTTP_304_NOT_MODIFIED, headers=found)
    return Response(body, media_type=JSON, headers=found)


class PageEvents:
    """A stream of pages (`Follow.events`): each page that has rows as an `event: page`
    whose id is the token after it, and at the end, an `event: end` saying where to
    resume, and why, if a read failed."""

    __slots__ = (
        "complete",
        "cursor",
        "done",
        "first",
        "followers",
        "limit",
        "listing",
        "max_bytes",
        "select",
        "token",
    )

    def __init__(
        self,
        followers: Followers,
        listing: Listing[Any],
        cursor: PageToken,
        token: str | None,
        limit: int,
        select: Selection | None = None,
    ) -> None:
        self.followers = followers
        # What each row shows (every field without it): events are made per projection.
        self.select = select
        self.listing = listing
        self.cursor = cursor
        self.limit = limit
        self.max_bytes = SSE_EVENT_BYTES
        # The token of the next page (none, before the first page of `since`), and up to
        # when the pages sent are complete.
        self.token = token
        self.complete: Any = None
        self.first = token is None
        self.done = False

    async def sent(self, read: Excerpt[Any]) -> Event | None:
        followers = self.followers
        page = followers.page_of(read, first=self.first)
        self.first = False
        self.token, self.complete = page.next_page_token, page.complete_until
        if self.token is None:  # a bounded range, complete
            self.done = True
        if not read.rows and not read.full:
            return None
        after_time, after_message_id = read.resume
        # The filter too: a filtered stream reads on among the rows it keeps.
        self.cursor = msgspec.structs.replace(
            self.cursor, after_time=after_time, after_message_id=after_message_id
        )
        if not read.rows:
            return None  # rows read and none kept (`Reader.keyed_filter`): read on after them
        return page_event(followers.encodings, page, self.select)

    def end(self, failed: RetryLater | None) -> bytes:
        # Where to resume: the same stream, asked again with this id.
        end: dict[str, Any] = {
            "next_page_token": self.token,
            "complete_until": None if self.complete is None else rfc3339(self.complete),
        }
        if failed is not None:
            end["problem"] = {
                "type": problem_type(type(failed)),
                "title": failed.title,
                "status": failed.status,
                "detail": failed.detail,
            }
        return event(b"end", _encode(end), self.token)


def stream(
    request: Request[Any, Any, Any],
    followers: Followers,
    listing: Listing[P],
    cursor: PageToken,
    *,
    page_token: str | None,
    limit: int,
    seat: Seat,
    select: Selection | None = None,
) -> EventStream:
    """The pages from `cursor` on (`page_token`, or the first page's bounds), as events,
    in `seat` until the stream ends or its client leaves."""
    # Done once the client leaves or the service stops.
    stop, watched = stop_of(request)
    seat.until(stop)
    pages = PageEvents(followers, listing, cursor, page_token, limit, select)
    return EventStream(
        followers.follow(stop, seat=seat).events(pages, seconds=followers.stream_seconds),
        stop=stop,
        watched=watched,
        slow_seconds=followers.slow_seconds,
        headers=STREAMING | NEGOTIATED,
    )
