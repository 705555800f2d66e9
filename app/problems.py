"""Problem documents (RFC 9457): how every error leaves the service.

`app.errors` holds what went wrong, free of the web framework; this module is the
one table that turns it into an answer. Each kind of error has a `type` URI,
`/problems/<name>`, which the service answers with what the kind means. `Problem`
is both the body every error answer carries and the schema the OpenAPI document
gives for it (`problem_responses`), so the document cannot promise a shape the
service does not send.
"""

from __future__ import annotations

import http
import inspect
import logging
import re
from collections.abc import Callable
from typing import Annotated, Any, Final

import msgspec
from litestar import get
from litestar.exceptions import (
    HTTPException,
    InternalServerException,
    MethodNotAllowedException,
    NotFoundException,
    ValidationException,
)
from litestar.exceptions.http_exceptions import RequestEntityTooLarge
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import Example
from litestar.params import PathParameter
from litestar.plugins.problem_details import ProblemDetailsException
from msgspec import Meta

from app.errors import (
    MAX_ECHO,
    BadParameter,
    BadRequest,
    BodyTooLarge,
    InvalidBody,
    MethodNotAllowed,
    NotFound,
    RecordlineError,
    shortened,
)

log = logging.getLogger("recordline")

PROBLEM_PATH = "/problems"
MEDIA_TYPE = "application/problem+json"


def problem_type(error: type[RecordlineError]) -> str:
    return f"{PROBLEM_PATH}/{error.problem}"


class FieldError(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    """One field of a request that failed validation."""

    message: str
    key: Annotated[str | None, Meta(description="Where: `limit`, `messages[3].message_id`")] = None
    source: Annotated[str | None, Meta(description="`query`, `path`, `body`…")] = None


class Problem(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    """An RFC 9457 problem document: the body of every error answer (application/problem+json)."""

    type: Annotated[
        str,
        Meta(description="`/problems/<name>`: the kind of error; GET it for what it means"),
    ]
    status: Annotated[int, Meta(description="The HTTP status, repeated")]
    title: Annotated[str, Meta(description="The kind of error, in words; the same for every one")]
    detail: Annotated[
        str, Meta(description=f"This occurrence; an echoed input is cut to {MAX_ECHO} characters")
    ]
    parameter: Annotated[
        str | None, Meta(description="The query parameter, path part or header at fault")
    ] = None
    field: Annotated[
        str | None,
        Meta(description="The JSON body's field at fault, as a path (`$`: the body itself)"),
    ] = None
    errors: Annotated[
        list[FieldError] | None, Meta(description="Each field that failed validation")
    ] = None
    retention_days: Annotated[
        int | None, Meta(description="410: rows older than this many days are deleted")
    ] = None
    max_bytes: Annotated[int | None, Meta(description="413: the largest body taken")] = None


# The members of Problem the plugin sends as they are; the rest travel as `extra`.
_STANDARD = frozenset({"type", "status", "title", "detail"})


def _problem(kind: type[RecordlineError], detail: str, **extra: Any) -> Problem:
    return Problem(
        type=problem_type(kind),
        status=kind.status,
        title=kind.title,
        detail=shortened(detail),
        **extra,
    )


NO_STORE: Final = {"Cache-Control": "no-store"}
# What Litestar says when a request's connection ends before its body does.
CLIENT_DISCONNECTED: Final = "client disconnected prematurely"


class Problems:
    """The one table from an exception to the problem document it is answered with."""

    def __init__(self, *, max_body_bytes: int) -> None:
        self._max_body_bytes = max_body_bytes

    def of(self, exc: Exception) -> tuple[Problem, dict[str, str]]:
        """The document `exc` is answered with, and the headers that go with it: those of
        its kind, and `no-store` for every one. An error is this request's answer, never
        another's: no cache keeps one (a 410 or a 503 kept by a shared cache would be
        served after it stopped being so), whether the routes answer it or the server
        before any route is found (app.http.limits)."""
        problem, headers = self._of(exc)
        return problem, (headers or {}) | NO_STORE

    def _of(self, exc: Exception) -> tuple[Problem, dict[str, str] | None]:
        match exc:
            case RecordlineError():
                return _problem(type(exc), exc.detail, **exc.extra), exc.headers
            case ValidationException():
                return _validation(exc), None
            case RequestEntityTooLarge():
                too_large = BodyTooLarge(self._max_body_bytes)
                return _problem(BodyTooLarge, too_large.detail, **too_large.extra), None
            case NotFoundException():
                return _problem(NotFound, "nothing is served at this path"), None
            case MethodNotAllowedException():
                allowed = (exc.headers or {}).get("allow", "")
                return _problem(
                    MethodNotAllowed, f"this path takes {allowed or 'other methods'}"
                ), exc.headers
            case InternalServerException() if exc.detail == CLIENT_DISCONNECTED:
                # Litestar's word for a body whose connection ended before it did (its
                # request's stream says no other): the sender's doing, never a failure
                # of this service's; the answer reaches no one.
                return _problem(BadRequest, "the connection ended before the body did"), None
            case HTTPException() if exc.status_code == BadRequest.status:
                # Litestar's own refusals of a body it cannot decode.
                return _problem(BadRequest, exc.detail), exc.headers
            case HTTPException() if exc.status_code < 500:
                phrase = http.HTTPStatus(exc.status_code).phrase
                return Problem(
                    type="about:blank", status=exc.status_code, title=phrase, detail=exc.detail
                ), exc.headers
        # Nothing the service meant to raise: a bug, said as little as possible
        # to the caller and whole in the log.
        log.error("unexpected error answered 500", exc_info=exc)
        return _problem(RecordlineError, "an unexpected error; it is logged"), None

    def exception(self, exc: Exception) -> ProblemDetailsException:
        """`exc` as the problem details plugin sends it."""
        problem, headers = self.of(exc)
        fields = msgspec.to_builtins(problem)
        return ProblemDetailsException(
            type_=problem.type,
            status_code=problem.status,
            title=problem.title,
            detail=problem.detail,
            headers=headers,
            extra={k: v for k, v in fields.items() if k not in _STANDARD} or None,
        )

    @property
    def exception_map(self) -> dict[type[Exception], Callable[[Any], ProblemDetailsException]]:
        """For the problem details plugin: every exception, Litestar's own included."""
        return {Exception: self.exception}


def _validation(exc: ValidationException) -> Problem:
    """Litestar's own parameter and body validation, in the same shape as BadParameter."""
    found = exc.extra if isinstance(exc.extra, list) else []
    errors = [
        FieldError(
            message=shortened(_plainly(str(e.get("message", "")))),
            key=str(e["key"]) if e.get("key") else None,
            # Litestar names a parameter's source with an enum member.
            source=str(getattr(e["source"], "value", e["source"])) if e.get("source") else None,
        )
        for e in found
        if isinstance(e, dict)
    ]
    keys = [e.key for e in errors if e.key]
    if errors and errors[0].source == "body":
        # Litestar names the body itself by the handler's parameter, `data`.
        field = "$" if keys[:1] in ([], ["data"]) else keys[0]
        return _problem(InvalidBody, f"{field}: {errors[0].message}", field=field, errors=errors)
    if not keys and (missing := _MISSING.match(exc.detail)) is not None:
        # A required parameter not given: Litestar names it in its words alone.
        keys = [missing[1]]
        return _problem(BadParameter, f"{keys[0]}: missing", parameter=keys[0], errors=errors)
    return _problem(
        BadParameter,
        f"{keys[0]}: {errors[0].message}" if keys else exc.detail,
        parameter=keys[0] if keys else None,
        errors=errors,
    )


_MISSING = re.compile(r"Missing required \w+ parameter '([^']{1,100})'")


# msgspec's words for a query parameter it could not take, said as a client reads
# them: `limit=1.5` was "Expected `int`, got `str`" (every query value is text).
_KINDS = {"int": "a whole number", "float": "a number", "bool": "`true` or `false`"}
_PLAIN: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"Expected `(int|float|bool)`, got `str`"), "must be {kind}"),
    (re.compile(r"Expected `(?:int|float)` >= (\S+)"), "must be at least {0}"),
    (re.compile(r"Expected `(?:int|float)` > (\S+)"), "must be more than {0}"),
    (re.compile(r"Expected `(?:int|float)` <= (\S+)"), "must be at most {0}"),
    (re.compile(r"Expected `(?:int|float)` < (\S+)"), "must be less than {0}"),
]


def _plainly(message: str) -> str:
    for pattern, words in _PLAIN:
        if (found := pattern.fullmatch(message)) is not None:
            return words.format(found[1], kind=_KINDS.get(found[1], ""))
    return message


def problem_responses(*kinds: type[RecordlineError]) -> dict[int, ResponseSpec]:
    """The OpenAPI responses of a route that answers with these kinds of error, by status."""
    by_status: dict[int, list[type[RecordlineError]]] = {}
    for kind in kinds:
        by_status.setdefault(kind.status, []).append(kind)
    return {
        status: ResponseSpec(
            data_container=Problem,
            media_type=MEDIA_TYPE,
            description="\n".join(
                f"- `{problem_type(kind)}`: {_description(kind)}" for kind in group
            ),
            generate_examples=False,
            examples=[
                Example(
                    summary=kind.title,
                    value={
                        "type": problem_type(kind),
                        "status": kind.status,
                        "title": kind.title,
                        "detail": "…",
                    },
                )
                for kind in group
            ],
        )
        for status, group in sorted(by_status.items())
    }


def _description(kind: type[RecordlineError]) -> str:
    return inspect.cleandoc(kind.__doc__ or kind.title).split("\n\n")[0].replace("\n", " ")


class ProblemType(msgspec.Struct, kw_only=True, frozen=True):
    """What one problem `type` means."""

    type: str
    status: int
    title: str
    description: str


def _kinds(root: type[RecordlineError] = RecordlineError) -> list[type[RecordlineError]]:
    kinds = [root]
    for sub in root.__subclasses__():
        kinds += _kinds(sub)
    return kinds


def problem_types() -> dict[str, ProblemType]:
    """Every kind of error the service answers with, by its `type` name."""
    return {
        kind.problem: ProblemType(
            type=problem_type(kind),
            status=kind.status,
            title=kind.title,
            description=inspect.cleandoc(kind.__doc__ or kind.title),
        )
        for kind in _kinds()
    }


# A problem's name is short; a longer one cannot be one.
MAX_PROBLEM_NAME = 64


@get(
    f"{PROBLEM_PATH}/{{name:str}}",
    summary="What a problem document's `type` means",
    tags=["health"],
    sync_to_thread=False,
    responses=problem_responses(BadParameter, NotFound),
)
def describe_problem(
    name: Annotated[
        str,
        PathParameter(
            max_length=MAX_PROBLEM_NAME,
            # Every error kind is defined in app.errors, imported above: the
            # document lists each name there is, and any other is a 404.
            schema_extra={"enum": sorted(kind.problem for kind in _kinds())},
        ),
    ],
) -> ProblemType:
    known = problem_types()
    if name not in known:
        raise NotFound(f"no problem type {name!r}")
    return known[name]
