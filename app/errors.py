"""One error hierarchy, and the one table that maps it to problem details.

Services raise these; no route catches them. `PROBLEMS` turns each into an
RFC 9457 answer with the status its callers act on: Pub/Sub redelivers on 503
and honours nothing but the status; API clients read `detail` and `parameter`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from litestar.exceptions import ValidationException
from litestar.plugins.problem_details import ProblemDetailsException


class RecordlineError(Exception):
    """Base of every error Recordline answers with a problem document."""

    status: ClassVar[int] = 500
    title: ClassVar[str] = "Internal error"
    headers: dict[str, str] | None = None

    def __init__(self, detail: str, **extra: object) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class BadRequest(RecordlineError):
    status = 400
    title = "Bad request"


class BadEnvelope(BadRequest):
    """The body is not a Pub/Sub push delivery at all: only a misconfigured caller sends it."""

    title = "Not a Pub/Sub push envelope"


class BadParameter(BadRequest):
    """A query parameter cannot be used; `parameter` names it."""

    title = "Invalid parameter"

    def __init__(self, parameter: str, detail: str) -> None:
        super().__init__(f"{parameter}: {detail}", parameter=parameter)


class NotFound(RecordlineError):
    status = 404
    title = "Not found"


class Gone(RecordlineError):
    """A read from before the retention: its rows are deleted, so a page would be incomplete."""

    status = 410
    title = "Gone"

    def __init__(self, parameter: str, detail: str, *, retention_days: int) -> None:
        super().__init__(
            f"{parameter}: {detail}", parameter=parameter, retention_days=retention_days
        )


class Unauthorized(RecordlineError):
    status = 401
    title = "Unauthorized"

    def __init__(self, detail: str = "A valid bearer token is required.", *, realm: str) -> None:
        super().__init__(detail)
        self.headers = {"WWW-Authenticate": f'Bearer realm="{realm}"'}


class Forbidden(RecordlineError):
    status = 403
    title = "Forbidden"


class RetryLater(RecordlineError):
    """Not stored, not acknowledged: Pub/Sub redelivers after `Retry-After`."""

    status = 503
    title = "Service unavailable"
    cause: ClassVar[str] = "unavailable"

    def __init__(self, detail: str, *, retry_after: int = 1) -> None:
        super().__init__(detail)
        self.headers = {"Retry-After": str(retry_after)}


class StoreUnavailable(RetryLater):
    title = "Store unavailable"
    cause = "store"


class QueryTooCostly(RetryLater):
    """A read BigQuery refused because it would bill more than the cap allows."""

    title = "Read over its cost cap"
    cause = "cost"


class QueueFull(RetryLater):
    title = "Ingest queue full"
    cause = "queue_full"


class WriteTimeout(RetryLater):
    title = "Write deadline exceeded"
    cause = "deadline"


class ShuttingDown(RetryLater):
    title = "Shutting down"
    cause = "shutdown"


def to_problem(exc: RecordlineError) -> ProblemDetailsException:
    return ProblemDetailsException(
        status_code=exc.status,
        title=exc.title,
        detail=exc.detail,
        headers=exc.headers,
        extra=exc.extra or None,
    )


PROBLEMS: dict[type[Exception], Callable[[Any], ProblemDetailsException]] = {
    RecordlineError: to_problem
}


def validation_to_problem(exc: ValidationException) -> ProblemDetailsException:
    """Litestar's own parameter validation, in the same shape as BadParameter."""
    errors = exc.extra if isinstance(exc.extra, list) else []
    keys = [e.get("key") for e in errors if isinstance(e, dict) and e.get("key")]
    extra: dict[str, object] = {"errors": errors}
    if keys:
        extra["parameter"] = keys[0]
    return ProblemDetailsException(
        status_code=400, title="Invalid parameter", detail=exc.detail, extra=extra
    )


PROBLEMS[ValidationException] = validation_to_problem
