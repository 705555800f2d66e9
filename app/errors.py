"""One error hierarchy, raised by every layer and answered by the app.

Services and stores raise these; no route catches them. The web layer turns
each into an RFC 9457 problem document (`app/problems.py`) with the status its
callers act on: Pub/Sub redelivers on 503 and honours nothing but the status;
API clients read `type`, `detail` and `parameter`. Nothing here knows the web
framework, so a store or a service can raise them without importing it.
"""

from __future__ import annotations

from typing import ClassVar

# What a problem document echoes of its request is cut here, once for every
# answer: a 5,000-character id in a path would otherwise come back whole in
# `detail`, and in every log line that quotes it. A text longer than this keeps
# its start and its end (where a message names what it expected) and says how
# much was left out.
MAX_ECHO = 300
_ECHO_HEAD = 200
_ECHO_TAIL = 60


def shortened(text: str) -> str:
    """`text`, or its start and end with the count of characters left out between."""
    if len(text) <= MAX_ECHO:
        return text
    left_out = len(text) - _ECHO_HEAD - _ECHO_TAIL
    return f"{text[:_ECHO_HEAD]}…[{left_out} characters left out]…{text[-_ECHO_TAIL:]}"


class Misconfigured(ValueError):
    """What the service was given cannot be used: a setting's value (`SettingsError`),
    or a store unlike the one it reads and writes (a Spanner schema that differs).
    Said in one line when it stops a start; never the answer to a request."""


class FillFailed(Exception):
    """A table of a system's own cannot be filled from `records` as it stands (it does
    not exist, is not labelled to be filled, or cannot take `records`' columns):
    `recordline tables fill` says so in one line and exits 1; never the answer to a
    request."""


class RecordlineError(Exception):
    """Base of every error Recordline answers with a problem document."""

    status: ClassVar[int] = 500
    title: ClassVar[str] = "Internal error"
    # The last part of the problem's `type` URI, `/problems/<problem>`, where
    # the service describes it; it names the kind of error, never one instance.
    problem: ClassVar[str] = "internal-error"
    headers: dict[str, str] | None = None

    def __init__(self, detail: str, **extra: object) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra

    def __init_subclass__(cls, **kwargs: object) -> None:
        # A subclass is a kind of error of its own, described at its own
        # `/problems/<problem>`: one that kept its parent's name would take over
        # the parent's description. An occurrence that differs only in its
        # detail or headers is the same kind, raised with other arguments.
        super().__init_subclass__(**kwargs)
        own = {"problem": "problem", "title": "title", "__doc__": "docstring"}
        missing = [word for name, word in own.items() if not cls.__dict__.get(name)]
        if missing:
            raise TypeError(
                f"{cls.__qualname__} is a kind of error of its own: declare its "
                + " and ".join(missing)
            )


class BadRequest(RecordlineError):
    """The request cannot be used as sent; `detail` says why."""

    status = 400
    title = "Bad request"
    problem = "bad-request"


class BadEnvelope(BadRequest):
    """The body is not a Pub/Sub push delivery at all: only a misconfigured caller sends it."""

    title = "Not a Pub/Sub push envelope"
    problem = "not-a-push-envelope"


class AmbiguousRequest(BadRequest):
    """The request names its sender or its destination more than once, or not at all: two
    `Authorization` or two `X-Serverless-Authorization` headers, or no `Host` or more than
    one. Which of two a proxy (Cloud Run's invoker check) read cannot be known, so neither
    is used."""

    title = "Ambiguous request"
    problem = "ambiguous-request"


class UpgradeNotServed(BadRequest):
    """The request asks to switch protocols (`Connection: Upgrade`, such as `h2c` or
    `websocket`) or to open a tunnel (`CONNECT`): this service speaks HTTP/1.1 and serves
    neither. The connection is closed."""

    title = "Upgrade not served"
    problem = "upgrade-not-served"


class MalformedRequest(BadRequest):
    """The request cannot be read as HTTP/1.1 at all: a malformed request line or header,
    HTTP/0.9, a version other than 1.0 and 1.1, a bare LF, a body framed two ways. The
    connection is closed."""

    title = "Malformed request"
    problem = "malformed-request"


class BadParameter(BadRequest):
    """A query parameter cannot be used; `parameter` names it."""

    title = "Invalid parameter"
    problem = "invalid-parameter"

    def __init__(self, parameter: str, detail: str) -> None:
        super().__init__(f"{parameter}: {detail}", parameter=parameter)


class InvalidBody(BadRequest):
    """A field of the request's JSON body cannot be used; `field` names it, as a path
    from the body (`messages[0].publish_time`, `$` for the body itself)."""

    title = "Invalid body"
    problem = "invalid-body"

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"{field}: {detail}", field=field)


class BodyTooLarge(RecordlineError):
    """The request body is larger than the service takes; `max_bytes` says how large it may be.

    The limit is RECORDLINE_MAX_BODY_BYTES. A Pub/Sub message is at most 10 MB, ~13.4 MB
    once base64-wrapped in a push envelope.
    """

    status = 413
    title = "Body too large"
    problem = "body-too-large"

    def __init__(self, max_bytes: int) -> None:
        super().__init__(
            f"the body is larger than {max_bytes} bytes (RECORDLINE_MAX_BODY_BYTES)",
            max_bytes=max_bytes,
        )


class HeadersTooLarge(RecordlineError):
    """The request line and headers, or a chunked body's trailers and framing, are larger
    than the service reads (256 KiB, MAX_HEADER_BYTES, and at most 256 header fields).
    The connection is closed."""

    status = 431
    title = "Request headers too large"
    problem = "headers-too-large"


class RequestTimeout(RecordlineError):
    """The request's body did not arrive within 30 s (BODY_TIMEOUT_SECONDS) of its
    headers. The connection is closed."""

    status = 408
    title = "Request timeout"
    problem = "request-timeout"


class MethodNotAllowed(RecordlineError):
    """The path exists, not for this method; the `Allow` header lists the methods it takes."""

    status = 405
    title = "Method not allowed"
    problem = "method-not-allowed"


class NotFound(RecordlineError):
    """Nothing is stored under that id (ids are exact: no prefix or case folding)."""

    status = 404
    title = "Not found"
    problem = "not-found"


class UnknownSystem(NotFound):
    """No system of that name is served here: a cell serves each of its systems under
    `/systems/{system}/`, and no other. Nothing was stored."""

    title = "Unknown system"
    problem = "unknown-system"


class Gone(RecordlineError):
    """A read from before the retention: its rows are deleted, so a page would be incomplete."""

    status = 410
    title = "Gone"
    problem = "gone"

    def __init__(self, parameter: str, detail: str, *, retention_days: int) -> None:
        super().__init__(
            f"{parameter}: {detail}", parameter=parameter, retention_days=retention_days
        )


class Unauthorized(RecordlineError):
    """No bearer token, or one that is not valid for this service: send a Google ID token.

    A credential that was sent and did not verify is also said in `WWW-Authenticate`
    with RFC 6750's `error="invalid_token"`.
    """

    status = 401
    title = "Unauthorized"
    problem = "unauthorized"

    def __init__(
        self,
        detail: str = "A valid bearer token is required.",
        *,
        realm: str,
        invalid_token: bool = False,
    ) -> None:
        super().__init__(detail)
        challenge = f'Bearer realm="{realm}"'
        if invalid_token:
            challenge += ', error="invalid_token"'
        self.headers = {"WWW-Authenticate": challenge}


class Forbidden(RecordlineError):
    """A valid token of a principal that may not call this route."""

    status = 403
    title = "Forbidden"
    problem = "forbidden"


class PassesNotConfigured(Forbidden):
    """This service issues no read passes (RECORDLINE_READ_PASS_KEYS is not set here):
    read with a token."""

    title = "Read passes not configured"
    problem = "read-passes-not-configured"


class ExportForbidden(Forbidden):
    """A reader who may not export: where exports are a permission of their own
    (RECORDLINE_EXPORT_PRINCIPALS; a cell's system: its `export_principals`), only the
    identities named there and the operators export, each with a token of their own (a
    read pass names no one). Nothing of the export is sent."""

    title = "Export not permitted"
    problem = "export-forbidden"


class MaskedFilter(Forbidden):
    """A filter on a value masked for this reader (`attribute=` on a masked attribute,
    `field=` through a masked member): what it keeps would tell the value it asks
    about. `parameter` names it."""

    title = "Filter on a masked value"
    problem = "masked-filter"

    def __init__(self, parameter: str, detail: str) -> None:
        super().__init__(f"{parameter}: {detail}", parameter=parameter)


class MaskedLookUp(Forbidden):
    """A look-up by a value masked for this reader (a producer's id where the producer
    attribute is masked): its answer would tell that the value exists. The detail
    names the setting that masks it."""

    title = "Look-up by a masked value"
    problem = "masked-look-up"


class MisdirectedRequest(RecordlineError):
    """The request names a host this service does not answer for: bound to a loopback
    address, it answers `localhost`, `127.0.0.1` and `[::1]` only. A page whose own
    name a DNS rebinding pointed at this machine cannot reach it as its own origin."""

    status = 421
    title = "Misdirected request"
    problem = "misdirected-request"


class CrossSite(Forbidden):
    """A browser sent this write for a page of another site or origin (its `Origin` or
    `Sec-Fetch-Site` says so): a page may not store rows through a reader's browser,
    whatever credentials or proxy that browser reaches the service with."""

    title = "Cross-site request"
    problem = "cross-site-request"


class UnsupportedMediaType(RecordlineError):
    """The body is not of the media type the route takes (`application/json`): a
    browser sends a form or text to another site without asking, JSON only if the
    site allows it."""

    status = 415
    title = "Unsupported media type"
    problem = "unsupported-media-type"


class RetryLater(RecordlineError):
    """Not stored, not acknowledged: Pub/Sub redelivers after `Retry-After`."""

    status = 503
    title = "Service unavailable"
    problem = "unavailable"
    cause: ClassVar[str] = "unavailable"

    def __init__(self, detail: str, *, retry_after: int = 1) -> None:
        super().__init__(detail)
        self.headers = {"Retry-After": str(retry_after)}


class TopicUnavailable(RetryLater):
    """The system's topic did not take the test message (Pub/Sub refused or did not
    answer in time, or there are no credentials): nothing was published. Publish again;
    a refusal names what Pub/Sub said (a missing `roles/pubsub.publisher` grant, a topic
    deleted)."""

    title = "Topic unavailable"
    problem = "topic-unavailable"
    cause = "topic"


class StoreUnavailable(RetryLater):
    """The store did not take or answer the request; nothing was stored.

    Retry after `Retry-After`.
    """

    title = "Store unavailable"
    problem = "store-unavailable"
    cause = "store"


class SchemaUnavailable(RetryLater):
    """The topic schema revision a message names could not be fetched from the Pub/Sub
    Schema API, so the message could not be decoded; nothing was stored.

    Our failure, not the publisher's: `/readyz`'s warnings say which schema and why. Pub/Sub
    redelivers after `Retry-After`.
    """

    title = "Topic schema unavailable"
    problem = "schema-unavailable"
    cause = "schema"


class QueryTooCostly(RetryLater):
    """A read BigQuery refused because it would bill more than the cap allows."""

    title = "Read over its cost cap"
    problem = "read-over-cost-cap"
    cause = "cost"


class QueueFull(RetryLater):
    """Too many rows are waiting to be stored; nothing was accepted. Retry after `Retry-After`."""

    title = "Ingest queue full"
    problem = "queue-full"
    cause = "queue_full"


class WriteTimeout(RetryLater):
    """The row was not durably stored within the write deadline, so it is not acknowledged."""

    title = "Write deadline exceeded"
    problem = "write-deadline-exceeded"
    cause = "deadline"


class ShuttingDown(RetryLater):
    """This instance is stopping; another one (or this one, restarted) takes the retry."""

    title = "Shutting down"
    problem = "shutting-down"
    cause = "shutdown"


class TooManyFollowers(RetryLater):
    """This instance already holds as many waiting pages and streams as it serves
    (RECORDLINE_MAX_FOLLOWERS); retry after `Retry-After`, when another instance (or
    this one) may have room."""

    title = "Too many followers"
    problem = "too-many-followers"
    cause = "followers"


class TooManyReads(RetryLater):
    """This instance already serves as many reads, waiting pages, streams and replays at once
    as it has room for: RECORDLINE_MAX_CONNECTIONS less the share kept for pushes
    (a fifth, `app.settings.PUSH_RESERVE`). Retry after `Retry-After`."""

    title = "Too many reads"
    problem = "too-many-reads"
    cause = "reads"


class TooManyExports(RetryLater):
    """This system already sends as many exports at once as it may (one for each 16 MiB
    of RECORDLINE_MEMORY_BUDGET_BYTES, shared among a cell's systems), each holding a
    chunk until its client takes it. Retry after `Retry-After`."""

    title = "Too many exports"
    problem = "too-many-exports"
    cause = "exports"


class TooMuchInFlight(RetryLater):
    """What this instance holds for the requests and answers in flight (their heads and
    bodies, the rows read for them, what is made of those and not yet sent) is at its bound,
    RECORDLINE_MEMORY_BUDGET_BYTES, and this request would take it past what it may: a push
    at once, a read after waiting a moment. Retry after `Retry-After`."""

    title = "Too much in flight"
    problem = "too-much-in-flight"
    cause = "in_flight"


class TooManyConnections(RetryLater):
    """Every connection this instance keeps (RECORDLINE_MAX_CONNECTIONS) carries a request, so
    none could be closed to make room for this one's; it is closed once answered. Retry
    after `Retry-After`."""

    title = "Too many connections"
    problem = "too-many-connections"
    cause = "connections"


class TooManyPipelined(RetryLater):
    """The connection sent more requests ahead of their answers than the service holds for
    one connection (32, and their heads together at most MAX_HEADER_BYTES): the
    requests ahead are answered, this one and what follows it are not read, and the
    connection is closed. Send the rest again, on a new connection."""

    title = "Too many pipelined requests"
    problem = "too-many-pipelined-requests"
    cause = "pipelined"


class SystemUnavailable(RetryLater):
    """This system of the cell is not serving yet (it is starting, or its store could
    not be opened and is being opened again); the cell's other systems are not
    affected. Nothing was stored: retry after `Retry-After`."""

    title = "System unavailable"
    problem = "system-unavailable"
    cause = "system"


class Throttled(RetryLater):
    """On-call has slowed this system of the cell (RECORDLINE_THROTTLES: each instance
    admits at most so many of its pushes a second) and this push came past it. Nothing
    was stored: Pub/Sub delivers it again, with backoff. Retry after `Retry-After`."""

    status = 429
    title = "System throttled"
    problem = "system-throttled"
    cause = "throttled"


class CertsUnavailable(RetryLater):
    """Google's token-signing keys could not be fetched, so no token can be verified: not
    the caller's fault, so 503 rather than 401. Retry after `Retry-After`.

    `/readyz` names where the keys are fetched from and why they could not be.
    """

    title = "Token verification unavailable"
    problem = "token-verification-unavailable"
    cause = "certs"
