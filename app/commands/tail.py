"""`recordline tail`: follow a running service's records, printed as JSON lines.

It reads `GET /v1/records` by page token, the way any consumer should: every record
once, in ingest order, however the writes interleave; once caught up, each request
asks the service to hold it until a record comes (long-poll). In a cell, `--system`
reads that system's paths (`app.commands.target`). Stopped (Ctrl-C), it says what it
printed and the page token that goes on after it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING

import msgspec

from app.commands.arguments import positive_seconds, service_url, time_text
from app.commands.target import (
    TargetError,
    Unreachable,
    add_system_argument,
    problem_detail,
    service_target,
    transport_reason,
)
from app.records import TIME_FORMS, rfc3339
from app.settings import SYSTEMS_PREFIX, Settings

if TYPE_CHECKING:  # imported where used: `--help` must not pay for it
    import httpx

# How long a follower at the tail asks the service to hold each request: a
# record reaches it as soon as it is stored, at one request per record or per 20 s.
FOLLOW_WAIT_SECONDS = 20.0
# Between requests while the service does not answer, or when polling (wait=0).
FOLLOW_IDLE_SECONDS = 0.5
# The largest page the API serves (app.query.service.MAX_LIMIT).
FOLLOW_PAGE_LIMIT = 1000
# How long a command waits for the service (at the start, or across a restart) before
# giving up: a restart takes a few seconds, a cold start on a busy machine more.
WAIT_SECONDS = 30.0


class _Page(msgspec.Struct):
    # Records stay raw JSON: tail prints them exactly as the API served them.
    records: list[msgspec.Raw]
    next_page_token: str | None = None


_decode_page = msgspec.json.Decoder(_Page).decode


class FollowError(RuntimeError):
    """The API refused the request for a reason waiting will not fix (4xx)."""


async def follow(
    http: httpx.AsyncClient,
    *,
    since: str | None = None,
    page_token: str | None = None,
    limit: int = FOLLOW_PAGE_LIMIT,
    idle: float = FOLLOW_IDLE_SECONDS,
    wait: float = FOLLOW_WAIT_SECONDS,
    give_up_after: float | None = None,
    say: Callable[[str], None] | None = None,
    read_on: Callable[[str], None] | None = None,
    token: Callable[[], str | None] | None = None,
) -> AsyncIterator[list[msgspec.Raw]]:
    """Every record from `since` (or after `page_token`) on, page by page, as they
    arrive; runs until cancelled.

    Once caught up (a page came back short), each request asks the service to
    hold it up to `wait` seconds until a record comes (long-poll): a record
    arrives as soon as it is stored, with no request in between. With
    `wait=0` it polls instead, `idle` seconds after each empty page. While the service is
    unreachable or answers 5xx it waits `idle` and asks again: a restarting
    service is waited for, and the page token stays valid across it. With
    `give_up_after`, a service that has not answered for that long raises
    Unreachable. `say` hears when it starts waiting and when it is over; `read_on`
    each page's token before its records are yielded: the one that goes on after them.
    `token` gives each request's bearer token (ID tokens last an hour; a tail runs for
    days). An answer that is no page of records (a redirect, a sign-in page) is a
    FollowError, as a refusal is.
    """
    import httpx

    if give_up_after is not None:
        # A held request must not look like a service that stopped answering.
        wait = min(wait, give_up_after / 2)
    params: dict[str, str | int] = {"limit": limit}
    if page_token is not None:
        params["page_token"] = page_token
    elif since is not None:
        params["since"] = since
    # When the service stopped answering: the start of the first request it
    # did not answer, so a request that hangs counts from when it was sent.
    down_since: float | None = None
    reason: str | None = None
    while True:
        started = time.monotonic()
        timeout: httpx.Timeout | None = None
        if give_up_after is not None:
            left = give_up_after - (0.0 if down_since is None else started - down_since)
            if left <= 0:
                raise Unreachable(
                    f"{http.base_url} has not answered for {give_up_after:g} s ({reason}): is "
                    "the service running there? (`recordline serve`, or `recordline dev`; "
                    "`python3 dev.py serve|dev` from a checkout)"
                )
            # No request outlasts the time left: a service that takes the
            # connection and never answers is given up on when it was said.
            timeout = httpx.Timeout(left)
        reason = None
        bearer = None if token is None else token()
        headers = {"Authorization": f"Bearer {bearer}"} if bearer else None
        try:
            if timeout is None:
                response = await http.get("/v1/records", params=params, headers=headers)
            else:
                response = await http.get(
                    "/v1/records", params=params, headers=headers, timeout=timeout
                )
            if response.status_code >= 500:
                reason = f"it answers {response.status_code}"
        except httpx.TransportError as exc:
            reason = transport_reason(exc)
        if reason is not None:
            if down_since is None:
                down_since = started
                if say is not None:
                    limit_text = (
                        "" if give_up_after is None else f"; giving up after {give_up_after:g} s"
                    )
                    say(f"waiting for {http.base_url}: {reason}{limit_text}")
            pause = idle
            if give_up_after is not None:
                pause = min(idle, max(0.0, give_up_after - (time.monotonic() - down_since)))
            await asyncio.sleep(pause)
            continue
        if down_since is not None:
            down_since = None
            if say is not None:
                say(f"{http.base_url} answers again")
        if response.status_code != 200:
            raise FollowError(_refusal(http, response))
        try:
            page = _decode_page(response.content)
        except (msgspec.DecodeError, msgspec.ValidationError):
            kind = response.headers.get("content-type", "no content type")
            raise FollowError(
                f"GET /v1/records answered 200 with what is no page of records ({kind[:60]}): "
                f"is {http.base_url} the service?"
            ) from None
        if read_on is not None and page.next_page_token is not None:
            read_on(page.next_page_token)
        if page.records:
            yield page.records
        if page.next_page_token is None:
            return  # only a bounded range ends
        params = {"limit": limit, "page_token": page.next_page_token}
        # Short: at the tail, or ended by its bytes with rows to follow (a page with
        # rows is never held, so asking to wait costs those nothing).
        if len(page.records) < limit:
            if wait > 0:
                params["wait"] = f"{wait:g}"  # the service holds it until a record comes
            elif not page.records:
                await asyncio.sleep(idle)


def _refusal(http: httpx.AsyncClient, response: httpx.Response) -> str:
    if response.is_redirect:
        where = response.headers.get("location", "")[:200]
        return (
            f"GET /v1/records answered {response.status_code}, to {printable(where)!r}: "
            "name the service's own URL (--url), https:// where it serves that alone"
        )
    said = f"GET /v1/records answered {response.status_code}: {problem_detail(response)}"
    if response.status_code == 404 and SYSTEMS_PREFIX not in str(http.base_url):
        # A cell serves no records at its root, only each system's under /systems/NAME.
        said += (
            f"; a cell serves each system's records under {SYSTEMS_PREFIX}SYSTEM: --system SYSTEM"
        )
    return said


def printable(text: str) -> str:
    """`text` with no control character a terminal would act on (a service's words,
    said to an operator), each written as its escape."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class _Stored(msgspec.Struct):
    ingest_time: str


_decode_stored = msgspec.json.Decoder(_Stored).decode


class Tailed(msgspec.Struct):
    """What a tail printed: how many records, when the last was stored, and the page
    token that goes on after it."""

    records: int = 0
    last_ingest_time: str | None = None
    read_on: str | None = None

    def summary(self) -> str:
        if self.last_ingest_time is None:
            return "no record printed"
        said = f"{self.records:,} records printed, the last stored at {self.last_ingest_time}"
        if self.read_on is not None:
            said += f" (`--page-token {printable(self.read_on)}` goes on after it)"
        return said


async def _tail(
    url: str,
    *,
    since: str | None,
    page_token: str | None,
    token: Callable[[], str | None],
    wait: float,
    out: IO[bytes],
    tailed: Tailed,
) -> None:
    import httpx

    def read_on(page_token: str) -> None:
        tailed.read_on = page_token

    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        async for records in follow(
            http,
            since=since,
            page_token=page_token,
            give_up_after=wait,
            say=_say,
            read_on=read_on,
            token=token,
        ):
            out.write(b"".join(bytes(r) + b"\n" for r in records))
            out.flush()
            tailed.records += len(records)
            tailed.last_ingest_time = _decode_stored(records[-1]).ingest_time


def run(args: argparse.Namespace, settings: Settings) -> int:
    """`recordline tail`: from `--since` (default now) or after `--page-token`."""
    from app.commands.credentials import NoCredentials

    try:
        target = service_target(settings, system=args.system, url=args.url, token=args.token)
        target.token()  # one now: a command that cannot have one says so at once
    except (TargetError, NoCredentials) as exc:
        _say(str(exc))
        return 2
    since = None
    if args.page_token is None:
        since = args.since or rfc3339(datetime.now(UTC))
    tailed = Tailed()
    try:
        asyncio.run(
            _tail(
                target.url,
                since=since,
                page_token=args.page_token,
                token=target.token,
                wait=args.wait,
                out=sys.stdout.buffer,
                tailed=tailed,
            )
        )
    except KeyboardInterrupt:
        _say(f"stopped: {tailed.summary()}")
        return 0
    except BrokenPipeError:
        # `recordline tail | head`: the reader left; say nothing more on the way out.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (FollowError, Unreachable, NoCredentials) as exc:  # a token, mid-way too
        _say(str(exc))
        return 1
    return 0


def _say(text: str) -> None:
    print(f"recordline tail: {text}", file=sys.stderr, flush=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        type=service_url,
        help="the service (default: RECORDLINE_URL, else http://127.0.0.1:8080)",
    )
    add_system_argument(parser, "to follow")
    start = parser.add_mutually_exclusive_group()
    start.add_argument(
        "--since", type=time_text, help=f"start at this time (default: now): {TIME_FORMS}"
    )
    start.add_argument(
        "--page-token",
        help="go on after the records a page token was given with (a stopped tail prints it)",
    )
    parser.add_argument(
        "--token",
        help="bearer token for reads that require one, e.g. $(gcloud auth print-identity-token)",
    )
    parser.add_argument(
        "--wait",
        type=positive_seconds,
        default=WAIT_SECONDS,
        metavar="SECONDS",
        help="how long to wait for the service while it does not answer (at the start, or "
        f"across a restart) before giving up (default {WAIT_SECONDS:g})",
    )
