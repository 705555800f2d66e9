"""The ingest routes: POST /pubsub/push and POST /v1/replay.

Thin: each decodes, calls one service, and lets the acknowledgement contract
(app.errors, app.problems) choose the status. `create_app` puts each list
behind the guards of who may call it.
"""

from __future__ import annotations

from typing import Any, Final, Protocol

import msgspec
from litestar import Litestar, Request, Response, post
from litestar.di import NamedDependency
from litestar.exceptions import HTTPException
from litestar.handlers import HTTPRouteHandler
from litestar.params import JSONBody
from litestar.response.base import ASGIResponse
from litestar.status_codes import HTTP_204_NO_CONTENT
from litestar.types import AfterExceptionHookHandler, Scope

from app.auth.browsers import foreign
from app.docs import PublishOperation, PushOperation, ReplayOperation
from app.errors import (
    AmbiguousRequest,
    BadEnvelope,
    BadRequest,
    BodyTooLarge,
    CertsUnavailable,
    CrossSite,
    Forbidden,
    InvalidBody,
    NotFound,
    QueueFull,
    RecordlineError,
    SchemaUnavailable,
    ShuttingDown,
    StoreUnavailable,
    TooManyReads,
    TooMuchInFlight,
    TopicUnavailable,
    Unauthorized,
    UnsupportedMediaType,
    WriteTimeout,
)
from app.ingest.envelope import decode_unwrapped, decode_wrapped, is_unwrapped
from app.ingest.replay import (
    MAX_REPLAY_MESSAGES,
    Replay,
    ReplayAnswer,
    ReplayRequest,
    ReplayResult,
    check_body,
)
from app.ingest.service import Ingest, PushObserver
from app.ingest.topic import PublishAnswer, PublishRequest, Topic
from app.problems import Problems, problem_responses
from app.query.served import told
from app.telemetry import PushTraces, push_received

PUSH_PATH = "/pubsub/push"
# What stops a row from being stored in time: each a 503 with Retry-After.
NOT_STORED = (StoreUnavailable, SchemaUnavailable, QueueFull, WriteTimeout, ShuttingDown)


class PushPace(Protocol):
    """Why a push of a system is refused for its pace, if it is (a cell's throttle): looked
    at on the push's head, counted (`spend`) once its token was checked."""

    def __call__(self, *, spend: bool = True) -> RecordlineError | None: ...


def push_routes(
    ingest: Ingest, traces: PushTraces = push_received, throttled: PushPace | None = None
) -> list[HTTPRouteHandler]:
    """The push route, storing through `ingest`; `traces` gives each push its trace id;
    what a browser says is checked of a wrapped push (`browser_refusal`); a push past its
    system's throttle (`throttled`) is refused once its guards have let it through.

    The handler holds `ingest` itself rather than asking Litestar for it: a
    dependency is resolved on every request (with two or more, in a task group
    of their own), and a push is the request this service answers most.
    """

    @post(
        PUSH_PATH,
        status_code=HTTP_204_NO_CONTENT,
        summary="Receive one Pub/Sub push delivery",
        description=(
            "Answers 204 once the message is durably stored, as a record or, when its payload "
            "is invalid, as a rejection. 503 with Retry-After means it was not stored: Pub/Sub "
            "redelivers. 400 means the body is not a push delivery at all. Anything but a 2xx "
            "is not an acknowledgement: Pub/Sub delivers the message again, and after its "
            "last attempt to the dead-letter topic."
        ),
        tags=["ingest"],
        operation_class=PushOperation,
        responses=problem_responses(
            BadEnvelope,
            AmbiguousRequest,
            Unauthorized,
            Forbidden,
            CrossSite,
            BodyTooLarge,
            *NOT_STORED,
            TooMuchInFlight,
            CertsUnavailable,
        ),
    )
    async def push(request: Request[Any, Any, Any]) -> Response[None]:
        headers = request.headers
        # The browsers' check, made here on the headers the push reads anyway rather
        # than as a guard: Litestar copies a handler for each guard it runs, 75 calls,
        # a sixth of what a push costs.
        if (refusal := browser_refusal(headers)) is not None:
            raise refusal
        # Room in the system's queue for its row, by the length its head declares: a
        # system whose queue is full refuses it here, before a byte of its body is read.
        reserved = ingest.reserve(request.content_length)
        try:
            # Counted against its system's throttle here, past its token's check and
            # with room for its row: the head only looked (`app.asgi.refused_on_head`),
            # so neither a request a stranger can send nor a push refused for a full
            # queue spends what Pub/Sub's pushes are admitted.
            if throttled is not None and (past := throttled(spend=True)) is not None:
                raise past
            # Read here rather than by `request.body()`, which keeps the body until the
            # request ends: decoded, a push holds its message, not the body too, while
            # its row is stored (app.http.limits.BODY_COPIES).
            body = b"".join([chunk async for chunk in request.stream()])
            message = (
                decode_unwrapped(body, headers) if is_unwrapped(headers) else decode_wrapped(body)
            )
            trace_id = traces(message, len(body), headers)
        except BaseException:
            ingest.unreserve(reserved)
            raise
        del body
        await ingest.accept(message, trace_id=trace_id, reserved=reserved)
        return STORED

    return [push]


class Stored(Response[None]):
    """A push's answer once its row is durable: 204 and nothing else, as Litestar answers a
    handler's `None` under `status_code=204`, but made once and answered as it is: a push
    is the request this service answers most, and building its response took a tenth of
    the calls it makes (`bench calls`). Anything a layer would add (headers, cookies, a
    task to run after) makes it a response of its own again."""

    def to_asgi_response(
        self,
        app: Litestar | None,
        request: Request[Any, Any, Any],
        *,
        background: Any = None,
        cookies: Any = None,
        encoded_headers: Any = None,
        headers: dict[str, str] | None = None,
        is_head_response: bool = False,
        media_type: Any = None,
        status_code: int | None = None,
        type_encoders: Any = None,
    ) -> ASGIResponse:
        if background or cookies or encoded_headers or headers or is_head_response:
            return super().to_asgi_response(
                app,
                request,
                background=background,
                cookies=cookies,
                encoded_headers=encoded_headers,
                headers=headers,
                is_head_response=is_head_response,
                media_type=media_type,
                status_code=status_code,
                type_encoders=type_encoders,
            )
        return NO_CONTENT


STORED: Final = Stored(None, status_code=HTTP_204_NO_CONTENT)
NO_CONTENT: Final = ASGIResponse(status_code=HTTP_204_NO_CONTENT)


def browser_refusal(headers: Any) -> CrossSite | None:
    """The browser check of a push: a wrapped push that a browser says comes from another
    site's page is refused (403), as a replay is, with or without a token (a page that
    learned the push token must not write through its reader's browser). A wrapped push
    carries its attributes in its body, and Pub/Sub no browser's header, so this refuses
    no message Pub/Sub delivers (`app.auth.browsers.foreign`).

    An unwrapped push is never judged so: its attributes are headers its publisher
    named, `Origin`, `Referer` or `Sec-Fetch-Site` among them. It always carries
    `x-goog-pubsub-message-id` (`write_metadata`), which no page of another site can
    make a browser send: a header outside the CORS safelist goes to another origin only
    after a preflight the site consents to, and this service answers none (no CORS).
    """
    if is_unwrapped(headers):
        return None
    why = foreign(headers)
    if why is None:
        return None
    return CrossSite(f"a browser sent this for a page of another site ({why})")


async def _readable_body(request: Request[Any, Any, Any]) -> None:
    check_body(await request.body())


_decode_publish: Final = msgspec.json.Decoder(PublishRequest).decode


async def _readable_publish(request: Request[Any, Any, Any]) -> None:
    check_body(await request.body(), _decode_publish)


@post(
    "/v1/replay",
    status_code=200,
    summary="Replay messages through today's validation (operators only)",
    description=(
        f"Up to {MAX_REPLAY_MESSAGES} messages as Pub/Sub delivered them, each under its "
        "original message id, publish time and attributes. Each is stored as a record if "
        "today's validation accepts it, kept rejected if not, and skipped if a record with "
        "its message id exists already. Answers once every stored row is durable; a 503 "
        "means retry the request. `dry_run` says what would happen and stores nothing; "
        "`note`, why (in the operator's words), is kept with the messages' outcomes in the "
        "access record."
    ),
    tags=["operations"],
    operation_class=ReplayOperation,
    before_request=_readable_body,
    responses=problem_responses(
        InvalidBody,
        BadRequest,
        AmbiguousRequest,
        Unauthorized,
        Forbidden,
        CrossSite,
        UnsupportedMediaType,
        BodyTooLarge,
        *NOT_STORED,
        TooManyReads,
        TooMuchInFlight,
        CertsUnavailable,
    ),
)
async def replay(data: JSONBody[ReplayRequest], replayer: NamedDependency[Replay]) -> ReplayAnswer:
    answer = await replayer.replay(data)
    # Its access record says which messages became what, and why, as the operator said.
    told(
        dry_run=answer.dry_run,
        note=data.note,
        messages=[[result.message_id, result.outcome] for result in answer.results],
        # What an edit changed, by path, of each message compared with its rejection.
        changed=changed_within(answer.results),
    )
    return answer


@post(
    "/v1/publish",
    status_code=200,
    summary="Publish a test message to the system's own topic (operators only)",
    description=(
        "The message data (base64) and attributes, as a publisher would send them. The "
        "answer says what today's validation makes of it (`verdict`, and `reason` where it "
        "would be rejected), then, unless `dry_run`, publishes it to the topic the system's "
        "push subscription reads and gives Pub/Sub's `message_id`: it is delivered, and "
        "stored or rejected, as every message is (`/v1/messages/{message_id}`). A message "
        "the validation would reject is published all the same (its rejection is tested). "
        "404 where the system names no topic; 503 `topic-unavailable` where Pub/Sub did "
        "not take it. `note`, why, is kept with the message id in the access record."
    ),
    tags=["operations"],
    operation_class=PublishOperation,
    before_request=_readable_publish,
    responses=problem_responses(
        InvalidBody,
        BadRequest,
        AmbiguousRequest,
        Unauthorized,
        Forbidden,
        CrossSite,
        UnsupportedMediaType,
        BodyTooLarge,
        NotFound,
        SchemaUnavailable,
        TopicUnavailable,
        TooManyReads,
        CertsUnavailable,
    ),
)
async def publish(data: JSONBody[PublishRequest], topic: NamedDependency[Topic]) -> PublishAnswer:
    answer = await topic.publish(data)
    told(
        dry_run=answer.dry_run,
        note=data.note,
        topic=answer.topic,
        messages=[[answer.message_id or "", answer.verdict]],
    )
    return answer


# The characters of paths a replay's access line holds, all its messages' together: a
# line is one log entry (Cloud Logging takes 256 KiB), where 100 messages' 21 paths of
# 257 characters each would be over 500,000.
MOST_CHANGED_CHARACTERS = 16_384


def changed_within(results: list[ReplayResult]) -> list[list[Any]]:
    """[message id, paths] of each message compared with its rejection, the paths said
    until MOST_CHANGED_CHARACTERS are, then `…` for those of the messages after."""
    said: list[list[Any]] = []
    left = MOST_CHANGED_CHARACTERS
    for result in results:
        if result.changed is None:
            continue
        size = sum(len(path) for path in result.changed)
        said.append([result.message_id, result.changed if size <= left else ["…"]])
        left -= min(size, left)
    return said


def push_refusals(
    observer: PushObserver, problems: Problems
) -> AfterExceptionHookHandler[Exception]:
    """Tells `observer` of every push refused before it became a row (400, 401, 403, 413)."""

    def refused(exc: Exception, scope: Scope) -> None:
        if scope.get("path_template") != PUSH_PATH:
            return
        if not isinstance(exc, RecordlineError | HTTPException):
            return  # a bug: logged where it is answered
        problem, _ = problems.of(exc)
        if problem.status < 500:  # a 503 is a retry, counted by ingest
            observer.refused(problem.status, problem.type.rpartition("/")[2], problem.detail)

    return refused


# Called by operators, seldom: its one dependency is resolved in line.
REPLAY_ROUTES = [replay]
PUBLISH_ROUTES = [publish]
