"""Problem documents (RFC 9457): how every error leaves the service.

`app.errors` holds what went wrong, free of the web framework; this module is
the one table that turns it into an answer. Each kind of error has a `type`
URI, `/problems/<name>`, and the service answers that path with what the kind
means, so a client can branch on `type` and a person can look it up.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Annotated, Any

import msgspec
from litestar import get
from litestar.exceptions import ValidationException
from litestar.params import PathParameter
from litestar.plugins.problem_details import ProblemDetailsException

from app.errors import BadParameter, NotFound, RecordlineError

PROBLEM_PATH = "/problems"


def problem_type(error: type[RecordlineError]) -> str:
    return f"{PROBLEM_PATH}/{error.problem}"


def to_problem(exc: RecordlineError) -> ProblemDetailsException:
    return ProblemDetailsException(
        type_=problem_type(type(exc)),
        status_code=exc.status,
        title=exc.title,
        detail=exc.detail,
        headers=exc.headers,
        extra=exc.extra or None,
    )


def validation_to_problem(exc: ValidationException) -> ProblemDetailsException:
    """Litestar's own parameter validation, in the same shape as BadParameter."""
    errors = exc.extra if isinstance(exc.extra, list) else []
    keys = [e.get("key") for e in errors if isinstance(e, dict) and e.get("key")]
    extra: dict[str, object] = {"errors": errors}
    if keys:
        extra["parameter"] = keys[0]
    return ProblemDetailsException(
        type_=problem_type(BadParameter),
        status_code=BadParameter.status,
        title=BadParameter.title,
        detail=exc.detail,
        extra=extra,
    )


PROBLEMS: dict[type[Exception], Callable[[Any], ProblemDetailsException]] = {
    RecordlineError: to_problem,
    ValidationException: validation_to_problem,
}


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


@get(
    f"{PROBLEM_PATH}/{{name:str}}",
    summary="What a problem document's `type` means",
    tags=["health"],
    sync_to_thread=False,
)
def describe_problem(name: Annotated[str, PathParameter(max_length=64)]) -> ProblemType:
    known = problem_types()
    if name not in known:
        raise NotFound(f"no problem type {name!r}")
    return known[name]
