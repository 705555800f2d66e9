"""`recordline audit --since T [--until T]`: what publishers sent against what was stored, by hour.

It asks a running service (`GET /v1/audit`, a read like any other: the same
token), so it works on every store, DuckDB included (whose file the service
holds). Per hour of the range it prints the messages with a producer sequence
received, stored, rejected, dropped as a publisher's copy, stored in conflict
(under a sequence another message had taken), and the sequences missing whose
gap opened then; then the missing ranges and the conflicts. Exit 0 when nothing
is missing or in conflict, 1 naming the first missing range (the oldest) or else
the first conflict, 2 when the question could not be asked.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from typing import IO

import msgspec

from app.commands.target import transport_reason
from app.query.producers import AuditReport, ConflictRange
from app.records import TIME_FORMS, time_or_ago

# The service answers from what the ledger counted by hour and the ranges it
# found, whatever the number of producers: a second at most, but a cold Spanner
# client takes a few.
_TIMEOUT_SECONDS = 60.0
_decode = msgspec.json.Decoder(AuditReport).decode


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--since",
        required=True,
        type=time_or_ago,
        help=f"the first hour's start: {TIME_FORMS}",
    )
    parser.add_argument(
        "--until", type=time_or_ago, help=f"the end of the range (default: now): {TIME_FORMS}"
    )
    parser.add_argument(
        "--url",
        default="http://127.0.0.1:8080",
        help="the service (default http://127.0.0.1:8080)",
    )
    parser.add_argument(
        "--token",
        help="bearer token for reads, e.g. $(gcloud auth print-identity-token --audiences=URL)",
    )


def run(args: argparse.Namespace, *, out: IO[str] | None = None) -> int:
    import httpx

    out = out if out is not None else sys.stdout
    until: datetime = args.until or datetime.now(UTC)
    params = {"since": _rfc3339(args.since), "until": _rfc3339(until)}
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    try:
        answer = httpx.get(
            f"{args.url.rstrip('/')}/v1/audit",
            params=params,
            headers=headers,
            timeout=_TIMEOUT_SECONDS,
        )
    except httpx.TransportError as exc:
        print(
            f"recordline audit: {args.url} does not answer ({transport_reason(exc)}): is the "
            "service running there? (`recordline serve`, or `recordline dev`; `python3 dev.py "
            "serve|dev` from a checkout; --url or RECORDLINE_URL names another)",
            file=sys.stderr,
        )
        return 2
    except httpx.HTTPError as exc:
        print(f"recordline audit: {args.url}: {exc or type(exc).__name__}", file=sys.stderr)
        return 2
    if answer.status_code != 200:
        print(f"recordline audit: {answer.status_code}: {_detail(answer.content)}", file=sys.stderr)
        return 2
    try:
        report = _decode(answer.content)
    except (msgspec.DecodeError, msgspec.ValidationError):
        kind = answer.headers.get("content-type", "no content type")[:60]
        print(
            f"recordline audit: {args.url} answered 200 with what is no audit ({kind}): is "
            "it the service?",
            file=sys.stderr,
        )
        return 2
    write(report, out)
    if report.missing and report.missing_ranges:
        first = report.missing_ranges[0]
        print(
            f"recordline audit: missing: producer {first.producer!r} epoch {first.epoch} "
            f"sequences {first.first} to {first.last} (gap opened {_rfc3339(first.opened_at)}); "
            f"{report.missing} in all",
            file=sys.stderr,
        )
        return 1
    if report.conflict_ranges:
        print(
            f"recordline audit: conflict: {_conflict(report.conflict_ranges[0])}; "
            f"{report.conflicts} sequences and {report.conflicting_ends} epochs' ends in all",
            file=sys.stderr,
        )
        return 1
    return 0


def _conflict(found: ConflictRange) -> str:
    where = f"producer {found.producer!r} epoch {found.epoch}"
    if found.kind == "ends":
        return (
            f"{where} was said to have published {found.first} and {found.last} messages "
            f"(first said {_rfc3339(found.opened_at)})"
        )
    return (
        f"{where} sequences {found.first} to {found.last} each claimed by two different "
        f"messages, both stored (first {_rfc3339(found.opened_at)})"
    )


class _Problem(msgspec.Struct):
    detail: str = ""


def _detail(body: bytes) -> str:
    """A problem document's detail, or the body itself."""
    try:
        return msgspec.json.decode(body, type=_Problem).detail or body.decode(errors="replace")
    except msgspec.DecodeError:
        return body.decode(errors="replace")


def write(report: AuditReport, out: IO[str]) -> None:
    """The report as a table, one line per hour, then the missing ranges it names."""
    out.write(f"{'hour':<21}{'received':>10}{'stored':>10}{'rejected':>10}")
    out.write(f"{'duplicates':>12}{'conflicts':>11}{'missing':>10}\n")
    for hour in report.hours:
        out.write(
            f"{_rfc3339(hour.hour):<21}{hour.received:>10}{hour.stored:>10}"
            f"{hour.rejected:>10}{hour.duplicates:>12}{hour.conflicts:>11}{hour.missing:>10}\n"
        )
    for gap in report.missing_ranges:
        out.write(
            f"missing: producer {gap.producer!r} epoch {gap.epoch} sequences {gap.first} to "
            f"{gap.last}, gap opened {_rfc3339(gap.opened_at)}\n"
        )
    if len(report.missing_ranges) < report.missing_range_count:
        out.write(
            f"(the oldest {len(report.missing_ranges)} of {report.missing_range_count} missing "
            "ranges; GET /v1/producers names every one)\n"
        )
    for found in report.conflict_ranges:
        out.write(f"conflict: {_conflict(found)}\n")
    if len(report.conflict_ranges) < report.conflict_range_count:
        out.write(
            f"(the oldest {len(report.conflict_ranges)} of {report.conflict_range_count} "
            "conflicts; GET /v1/producers names every one)\n"
        )
    if report.unknown_ends:
        out.write(
            f"{report.unknown_ends} epochs ended without saying how many messages they "
            "published (recordline-epoch-ended): a gap at their end cannot be seen\n"
        )


def _rfc3339(when: datetime) -> str:
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")
