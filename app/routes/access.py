"""The access record's route: GET /v1/access, an operator's read of who read, exported,
replayed or was refused what, newest first.

Thin, like every read route: parameters checked, one call, its answer. Behind the
operators' guards (`create_app`): the record names every reader.
"""

from __future__ import annotations

from typing import Annotated, Any, Final

from litestar import Request, get
from litestar.di import NamedDependency
from litestar.params import Parameter

from app.errors import (
    BadParameter,
    CertsUnavailable,
    Forbidden,
    StoreUnavailable,
    Unauthorized,
)
from app.problems import problem_responses
from app.query.access import DEFAULT_LINES, AccessPage, AccessReads
from app.query.page_token import MAX_TOKEN_LENGTH
from app.routes.query import refuse_unknown, time_of, time_parameter
from app.store.access import MOST_LINES

ACTIONS = ("read", "export", "replay", "pass")
# A principal is an e-mail or the service's words for who: never longer than this.
MOST_PRINCIPAL_CHARACTERS = 320
# What the route takes, each once: a filter misspelt, or given twice (the framework would
# take one and drop the other), would read lines that filter was meant to leave out.
PARAMETERS: Final = frozenset({"since", "until", "action", "principal", "limit", "page_token"})


@get(
    "/v1/access",
    summary="The access record: who read, exported, replayed or was refused what, newest first",
    description=(
        "Each line of the `recordline.access` log this system's instances wrote, kept in "
        "the system's own store as long as its rows: who (`principal`), the `action`, the "
        "request (`path`, `parameters`, a filter on a masked value by its keyed hash), "
        "`status`, `rows`, `bytes` and whether a mask showed them. A line is kept a few "
        "seconds after its request ends. A page reads a week at most, the newest of what is "
        "asked: one whose week holds fewer lines than `limit` ends short, even empty, with "
        "a `next_page_token` to the week before, until `since` (without one, the 400 days "
        "the record keeps). Operators only."
    ),
    tags=["access"],
    responses=problem_responses(
        BadParameter, Unauthorized, Forbidden, StoreUnavailable, CertsUnavailable
    ),
)
async def access_record(
    request: Request[Any, Any, Any],
    access_reads: NamedDependency[AccessReads],
    since: Annotated[str | None, time_parameter("Lines of requests ended at or after it")] = None,
    until: Annotated[
        str | None, time_parameter("Lines of requests ended before it (default: now)")
    ] = None,
    action: Annotated[
        str | None,
        Parameter(
            description="Only lines of this action", pattern="^(read|export|replay|publish|pass)$"
        ),
    ] = None,
    principal: Annotated[
        str | None,
        Parameter(
            description=(
                "Only lines of this principal, as a line names it (`anyone`: lines of no "
                "principal, where no guard named anyone)"
            ),
            min_length=1,
            max_length=MOST_PRINCIPAL_CHARACTERS,
        ),
    ] = None,
    limit: Annotated[int, Parameter(ge=1, le=MOST_LINES, description="Lines per page")] = (
        DEFAULT_LINES
    ),
    page_token: Annotated[
        str | None,
        Parameter(max_length=MAX_TOKEN_LENGTH, description="From the previous page"),
    ] = None,
) -> AccessPage:
    refuse_unknown(request, PARAMETERS)
    return await access_reads.page(
        since=time_of("since", since),
        until=time_of("until", until),
        action=action,
        principal=principal,
        limit=limit,
        page_token=page_token,
    )


ACCESS_ROUTES = [access_record]
