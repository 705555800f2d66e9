"""`recordline replay rejected|dead-letters`: messages that did not make it, back in, once.

Both hand messages to the service's `POST /v1/replay` (operators only), which runs them
through today's validation: `rejected` pages through `GET /v1/rejections`, skipping what a
replay stored since; `dead-letters` pulls a dead-letter subscription and acknowledges a
message only once the service answered for it. A message the service refuses as it
stands is named and left where it was (exit 1). In a cell, `--system` names the system
(`app.commands.target`), whose `<system>-dead-letter-replay` it pulls.

Design: docs/operations.md#replaying-dead-letters
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import re
import sys
import typing
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import msgspec

from app.commands.arguments import at_least_one, service_url, time_text
from app.commands.credentials import NoCredentials, google_credentials
from app.commands.target import (
    Target,
    TargetError,
    add_system_argument,
    service_target,
)
from app.errors import shortened
from app.ingest.replay import (
    MAX_NOTE_CHARACTERS,
    MAX_REPLAY_MESSAGES,
    Outcome,
    ReplayAnswer,
    ReplayResult,
)
from app.records import TIME_FORMS, rfc3339
from app.settings import Settings
from app.store.dead_letters import replayed

if TYPE_CHECKING:  # imported where used: `--help` must not pay for them (~0.2 s)
    import httpx

OUTCOMES: tuple[Outcome, ...] = typing.get_args(Outcome)
# Counted beside the service's outcomes: messages it refused as they stand.
REFUSED = "refused"
# Pulls wait at most this long for messages; an empty pull ends the replay.
PULL_SECONDS = 10.0

# Where a cell's system's dead letters wait to be replayed (modules/system/pubsub.tf).
REPLAY_SUBSCRIPTION = "{system}-dead-letter-replay"


class ReplayError(RuntimeError):
    """Said on one line, and the command exits 1."""


class Waiting(Protocol):
    """What a status line shows a replay waiting for (empty: nothing)."""

    waiting: str


# A status line over the counts while a replay runs (the local tools' rich one, on a
# terminal): entered once, told what the replay waits for.
StatusLine = Callable[[Counter[str]], AbstractContextManager[Waiting]]


@dataclasses.dataclass
class _Unshown:
    waiting: str = ""


@contextlib.contextmanager
def no_status_line(counts: Counter[str]) -> Iterator[Waiting]:
    """No status line: a job's log, a pipe."""
    yield _Unshown()


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class Refused(NamedTuple):
    """A message the service would not take as it stands, and why."""

    message_id: str
    field: str
    reason: str

    def __str__(self) -> str:
        return f"message {shortened(self.message_id)!r} not replayed: {self.field}: {self.reason}"


# A 400 that names one message of the batch: `messages[3].message_id`.
_ONE_MESSAGE = re.compile(r"messages\[(\d+)\](?:\.(.+))?")


class _OneRefused(Exception):
    def __init__(self, index: int, field: str, reason: str) -> None:
        super().__init__(reason)
        self.index, self.field, self.reason = index, field, reason


class _Rejection(msgspec.Struct):
    message_id: str
    reason: str
    data: str  # base64
    attributes: dict[str, str]
    publish_time: str
    subscription: str | None = None
    stored: bool = False


class _RejectionsPage(msgspec.Struct):
    rejections: list[_Rejection]
    next_page_token: str | None = None


class Service:
    """The service's replay and rejections endpoints, with clear errors. `token` is
    its bearer token, or what gives one for each request (minted ones expire)."""

    def __init__(
        self,
        url: str,
        *,
        token: str | Callable[[], str | None] | None = None,
        note: str | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        import httpx

        self._token = token
        # Why, in the operator's words: sent with each request, kept in its access record.
        self._note = note
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, timeout=60, transport=transport)

    def _headers(self) -> dict[str, str]:
        token = self._token() if callable(self._token) else self._token
        return {"Authorization": f"Bearer {token}"} if token else {}

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> bytes:
        import httpx

        try:
            headers = self._headers()
        except NoCredentials as exc:
            raise ReplayError(str(exc)) from None
        try:
            response = self._http.request(method, path, headers=headers, **kwargs)
        except httpx.TransportError as exc:
            raise ReplayError(f"cannot reach {self.url}: {exc}") from None
        if response.status_code in (401, 403):
            raise ReplayError(
                f"{method} {path} answered {response.status_code}: replay needs an operator's "
                f"token (--token; RECORDLINE_OPERATOR_PRINCIPALS): {_detail(response)}"
            )
        if response.status_code == 400:
            _raise_if_one_message(response)
        if response.is_error:
            raise ReplayError(
                f"{method} {path} answered {response.status_code}: {_detail(response)}"
            )
        return response.content

    def replay(
        self, messages: Sequence[dict[str, Any]], *, dry_run: bool
    ) -> tuple[list[ReplayResult], list[Refused]]:
        """What became of each message, and those the service refused as they stand.

        A refused message is taken out and the rest are sent again, so one bad
        message costs a request, never the batch.
        """
        pending = list(messages)
        refused: list[Refused] = []
        while pending:
            body = {"messages": pending, "dry_run": dry_run, "note": self._note}
            try:
                answer = self._call("POST", "/v1/replay", json=body)
            except _OneRefused as exc:
                if not 0 <= exc.index < len(pending):
                    raise ReplayError(f"POST /v1/replay answered 400: {exc.reason}") from None
                message = pending.pop(exc.index)
                refused.append(Refused(str(message.get("message_id")), exc.field, exc.reason))
                continue
            return msgspec.json.decode(answer, type=ReplayAnswer).results, refused
        return [], refused

    def rejections(self, *, since: str | None, until: str) -> Iterator[list[_Rejection]]:
        params: dict[str, Any] = {"until": until, "limit": 500}
        if since is not None:
            params["since"] = since
        while True:
            page = msgspec.json.decode(
                self._call("GET", "/v1/rejections", params=params), type=_RejectionsPage
            )
            yield page.rejections
            if page.next_page_token is None:
                return
            params = {"limit": 500, "page_token": page.next_page_token}


def _problem(response: httpx.Response) -> dict[str, Any]:
    try:
        problem = response.json()
    except ValueError:
        return {}
    return problem if isinstance(problem, dict) else {}


def _detail(response: httpx.Response) -> str:
    """What a problem document says went wrong, the field it names included."""
    problem = _problem(response)
    if not problem:
        return shortened(response.text)
    detail = str(problem.get("detail") or problem.get("title") or problem)
    where = problem.get("field") or problem.get("parameter")
    if where and str(where) not in detail:
        detail = f"{where}: {detail}"
    return shortened(detail)


def _raise_if_one_message(response: httpx.Response) -> None:
    """A 400 that names one message of a replay batch (by its `field`) refuses that one."""
    problem = _problem(response)
    found = _ONE_MESSAGE.fullmatch(str(problem.get("field") or ""))
    if found is None:
        return
    errors = problem.get("errors") or []
    reason = next(
        (str(e.get("message")) for e in errors if isinstance(e, dict) and e.get("message")),
        str(problem.get("detail") or "refused"),
    )
    raise _OneRefused(int(found[1]), found[2] or "message", reason)


def summary(counts: Counter[str]) -> str:
    shown = [*OUTCOMES, REFUSED] if counts[REFUSED] else OUTCOMES
    return ", ".join(f"{counts[o]} {o.replace('_', ' ')}" for o in shown)


def _report(say: Callable[[str], None], refused: Sequence[Refused], counts: Counter[str]) -> None:
    for message in refused:
        say(str(message))
    counts[REFUSED] += len(refused)


def replay_rejected(
    service: Service,
    *,
    since: str | None,
    until: str | None,
    reason_contains: str | None,
    dry_run: bool,
    say: Callable[[str], None] = _stderr,
    counts: Counter[str] | None = None,
    status: StatusLine = no_status_line,
) -> Counter[str]:
    """What became of each rejection replayed, counted into `counts` (a new Counter if
    None) as it goes, so that a caller interrupted still has them; each message the
    service refused is said (`say`)."""
    counts = Counter() if counts is None else counts
    until = until or rfc3339(datetime.now(UTC))  # a bounded range: it ends
    with status(counts):
        for page in service.rejections(since=since, until=until):
            chosen = [r for r in page if reason_contains is None or reason_contains in r.reason]
            # Stored since: the service would answer `already_stored`; nothing to send.
            already = sum(r.stored for r in chosen)
            counts["already_stored"] += already
            chosen = [r for r in chosen if not r.stored]
            for start in range(0, len(chosen), MAX_REPLAY_MESSAGES):
                batch = chosen[start : start + MAX_REPLAY_MESSAGES]
                messages = [
                    {
                        "message_id": r.message_id,
                        "publish_time": r.publish_time,
                        "attributes": r.attributes,
                        "data": r.data,
                        "subscription": r.subscription,
                    }
                    for r in batch
                ]
                results, refused = service.replay(messages, dry_run=dry_run)
                counts.update(r.outcome for r in results)
                _report(say, refused, counts)
    return counts


def replay_dead_letters(
    service: Service,
    subscriber: Any,
    subscription: str,
    *,
    limit: int | None,
    dry_run: bool,
    say: Callable[[str], None] = _stderr,
    counts: Counter[str] | None = None,
    status: StatusLine = no_status_line,
) -> Counter[str]:
    """What became of each message pulled and replayed, counted into `counts` as
    `replay_rejected`'s are."""
    from google.api_core.exceptions import DeadlineExceeded, GoogleAPICallError

    counts = Counter() if counts is None else counts
    pulled = 0
    # A dry run holds what it pulled until the end (released at once, the same
    # messages would come straight back) and counts a redelivery once.
    seen: set[str] = set()
    held: list[str] = []
    # Refused as they stand: left on the subscription, and not sent again this run.
    refused_ids: set[str] = set()
    try:
        with status(counts) as progress:
            while limit is None or pulled < limit:
                wanted = (
                    MAX_REPLAY_MESSAGES
                    if limit is None
                    else min(MAX_REPLAY_MESSAGES, limit - pulled)
                )
                progress.waiting = (
                    f"waiting up to {PULL_SECONDS:g} s for messages on {subscription}"
                )
                try:
                    response = subscriber.pull(
                        request={"subscription": subscription, "max_messages": wanted},
                        timeout=PULL_SECONDS,
                    )
                except DeadlineExceeded:
                    break  # nothing waiting
                except GoogleAPICallError as exc:
                    raise ReplayError(f"cannot pull from {subscription}: {exc.message}") from None
                finally:
                    progress.waiting = ""
                received = list(response.received_messages)
                if dry_run:
                    held += [r.ack_id for r in received]
                fresh = [
                    r
                    for r in received
                    if r.message.message_id not in seen and r.message.message_id not in refused_ids
                ]
                held += [r.ack_id for r in received if r.message.message_id in refused_ids]
                if not fresh:
                    break
                pulled += len(fresh)
                try:
                    results, refused = service.replay(
                        [_as_delivered(r.message) for r in fresh], dry_run=dry_run
                    )
                    answered = {r.message_id for r in results}
                    refused_ids.update(r.message_id for r in refused)
                    if not dry_run:
                        held += [r.ack_id for r in fresh if r.message.message_id in refused_ids]
                    if not dry_run:
                        # Only what the service answered for: it is durable (stored or rejected).
                        subscriber.acknowledge(
                            request={
                                "subscription": subscription,
                                "ack_ids": [
                                    r.ack_id for r in received if r.message.message_id in answered
                                ],
                            }
                        )
                except BaseException:
                    # Failed or interrupted: offer the batch back now. Left leased, it
                    # would be missing for the subscription's ack deadline (60 s in
                    # Terraform), and a run started meanwhile would find the queue
                    # empty and say so.
                    _release(subscriber, subscription, [r.ack_id for r in received])
                    raise
                if dry_run:
                    seen.update(r.message.message_id for r in fresh)
                counts.update(r.outcome for r in results)
                _report(say, refused, counts)
    finally:
        if held:
            # A dry run leaves every message where it was, for the real run; a
            # refused message waits there for whoever fixes it.
            _release(subscriber, subscription, held)
    return counts


def _release(subscriber: Any, subscription: str, ack_ids: list[str]) -> None:
    """Make messages pullable again at once (an ack deadline of 0, a nack)."""
    from google.api_core.exceptions import GoogleAPICallError

    # Should the nack fail too, they come back when their ack deadline passes.
    with contextlib.suppress(GoogleAPICallError):
        subscriber.modify_ack_deadline(
            request={"subscription": subscription, "ack_ids": ack_ids, "ack_deadline_seconds": 0}
        )


def _as_delivered(message: Any) -> dict[str, Any]:
    """A pulled message as the replay endpoint takes it: id, publish time, attributes, data."""
    return replayed(
        message.message_id, rfc3339(message.publish_time), message.data, dict(message.attributes)
    )


def subscriber_client() -> Any:
    """A SubscriberClient for the emulator at PUBSUB_EMULATOR_HOST, or for Google with
    the credentials found here (ReplayError, at once, where there are none)."""
    from google.cloud import pubsub_v1

    if os.environ.get("PUBSUB_EMULATOR_HOST"):
        return pubsub_v1.SubscriberClient()
    try:
        credentials = google_credentials()
    except NoCredentials as exc:
        raise ReplayError(str(exc)) from None
    return pubsub_v1.SubscriberClient(credentials=credentials)


def dead_letters_of(settings: Settings, system: str | None, given: str | None) -> str:
    """The subscription `replay dead-letters` pulls from: `--subscription`, or a cell's
    system's replay subscription, in its dataset's project (GOOGLE_CLOUD_PROJECT first)."""
    if given is not None:
        if not given.startswith("projects/") or "/subscriptions/" not in given:
            raise ReplayError("--subscription: name it as projects/P/subscriptions/S")
        return given
    if system is None:
        raise ReplayError("name the subscription to pull from (--subscription), or the system")
    entry = settings.systems().get(system)
    project = settings.telemetry.project
    if not project and entry is not None and entry.store.startswith("bigquery://"):
        project = entry.store.removeprefix("bigquery://").split("/", 1)[0]
    if not project:
        raise ReplayError(
            f"{system}: its project is not known here (GOOGLE_CLOUD_PROJECT, or a BigQuery "
            "store in RECORDLINE_SYSTEMS): name the subscription (--subscription)"
        )
    return f"projects/{project}/subscriptions/{REPLAY_SUBSCRIPTION.format(system=system)}"


def run(
    args: argparse.Namespace, settings: Settings, *, status: StatusLine = no_status_line
) -> int:
    """`recordline replay …` as `args` ask, with `settings` (the process's): its exit code."""
    counts: Counter[str] = Counter()
    try:
        target = _target(args, settings)
    except ReplayError as exc:
        print(f"recordline replay: {exc}", file=sys.stderr)
        return 2
    service = Service(target.url, token=target.token, note=args.note)
    subscription = ""
    try:
        if args.what == "rejected":
            replay_rejected(
                service,
                since=args.since,
                until=args.until,
                reason_contains=args.reason_contains,
                dry_run=args.dry_run,
                counts=counts,
                status=status,
            )
        else:
            subscription = dead_letters_of(settings, args.system, args.subscription)
            subscriber = subscriber_client()
            # Said at once: the end of the queue is known only once a pull has waited
            # PULL_SECONDS for nothing, which is all an empty queue ever shows.
            print(
                f"recordline replay: pulling from {subscription} to {target.url}; an empty "
                f"queue is known once {PULL_SECONDS:g} s pass without a message",
                file=sys.stderr,
                flush=True,
            )
            try:
                replay_dead_letters(
                    service,
                    subscriber,
                    subscription,
                    limit=args.max,
                    dry_run=args.dry_run,
                    counts=counts,
                    status=status,
                )
            finally:
                subscriber.close()
    except ReplayError as exc:
        print(f"recordline replay: {exc}", file=sys.stderr)
        if sum(counts.values()):
            print(f"recordline replay: before that, {summary(counts)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        rest = (
            "what was not replayed is still in `rejected`"
            if args.what == "rejected"
            else f"what was not replayed is still on {subscription} (a batch in hand "
            "was offered back)"
        )
        print(
            f"\nrecordline replay: interrupted: {summary(counts)}; {rest}; run it again to go "
            "on (what is stored is not stored twice)",
            file=sys.stderr,
        )
        return 130
    finally:
        service.close()
    verb = "would be" if args.dry_run else "were"
    print(f"replay {args.what}: {summary(counts)} ({verb} the outcomes)", file=sys.stderr)
    # Every other message was replayed; the refused ones are named above.
    return 1 if counts[REFUSED] else 0


def _note(text: str) -> str:
    if len(text) > MAX_NOTE_CHARACTERS:
        raise argparse.ArgumentTypeError(
            f"{len(text)} characters: a note is {MAX_NOTE_CHARACTERS} at most"
        )
    return text


def _target(args: argparse.Namespace, settings: Settings) -> Target:
    if args.url is None and not settings.command.url:
        raise ReplayError("name the service to replay to: --url, or RECORDLINE_URL")
    try:
        return service_target(settings, system=args.system, url=args.url, token=args.token)
    except TargetError as exc:
        raise ReplayError(str(exc)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    what = parser.add_subparsers(dest="what", required=True)
    for name, text in (
        ("rejected", "rejections from the service's own `rejected` table"),
        ("dead-letters", "messages on a dead-letter subscription"),
    ):
        sub = what.add_parser(name, help=f"replay {text}")
        sub.add_argument(
            "--url",
            type=service_url,
            help="the service, e.g. https://…run.app (default: RECORDLINE_URL)",
        )
        add_system_argument(sub, "to replay to")
        sub.add_argument(
            "--token",
            help="an operator's ID token for the service's read audience, e.g. "
            "$(gcloud auth print-identity-token --audiences=AUDIENCE); where pushes carry "
            "only RECORDLINE_PUSH_TOKEN (the emulator's setup), that secret. Without it, "
            "where RECORDLINE_URL and RECORDLINE_READ_AUDIENCE are set (a cell's ops job), "
            "tokens are minted for the read audience from the metadata server",
        )
        sub.add_argument(
            "--dry-run", action="store_true", help="say what would happen; store nothing"
        )
        sub.add_argument(
            "--note",
            type=_note,
            help="why (the cause fixed), in your words: kept with each request's messages "
            f"and outcomes in the service's access record ({MAX_NOTE_CHARACTERS} characters "
            "at most)",
        )
        if name == "rejected":
            sub.add_argument(
                "--since", type=time_text, help=f"rejections stored at or after it: {TIME_FORMS}"
            )
            sub.add_argument(
                "--until",
                type=time_text,
                help=f"rejections stored before it (default now): {TIME_FORMS}",
            )
            sub.add_argument("--reason-contains", help="only rejections whose reason contains this")
        else:
            sub.add_argument(
                "--subscription",
                help="projects/P/subscriptions/S to pull from (default with --system: the "
                "system's SYSTEM-dead-letter-replay, in its project)",
            )
            sub.add_argument("--max", type=at_least_one, help="stop after this many messages")
