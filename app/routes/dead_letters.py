"""The dead letters' route: GET /v1/dead-letters, an operator's read of the messages
Pub/Sub gave up on, newest first, to redrive through POST /v1/replay.

Thin, like every read route: parameters checked, one call, its answer. Behind the
operators' guards (`create_app`), as a replay is: a dead letter is a message's payload
whole, never masked.
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
    NotFound,
    QueryTooCostly,
    StoreUnavailable,
    Unauthorized,
)
from app.problems import problem_responses
from app.query.dead_letters import DEFAULT_DEAD_LETTERS, DeadLetterReads, DeadLettersPage
from app.query.page_token import MAX_TOKEN_LENGTH
from app.routes.query import refuse_unknown, time_of, time_parameter
from app.store.dead_letters import MOST_DEAD_LETTERS

# What the route takes, each once (as `/v1/access`).
PARAMETERS: Final = frozenset({"since", "until", "limit", "page_token"})


@get(
    "/v1/dead-letters",
    summary="The dead letters: messages Pub/Sub gave up on, newest first",
    description=(
        "Each row Pub/Sub's BigQuery subscription on the dead-letter topic wrote to the "
        "dataset's `dead_letters`, one for each message id and publish time: its "
        "`message_id`, `publish_time` (when it was dead-lettered), `data` (base64; `text`, "
        "the same where it is UTF-8), `attributes` (an object where they are a JSON object "
        "of strings, else `attributes_text`), what Pub/Sub added as it gave up "
        "(`source_subscription`, `delivery_count`, `source_publish_time`), whether its "
        "message is `stored` since, and why `POST /v1/replay` would refuse it as it "
        "stands (`unreplayable`), if it would. Replayed, a dead letter is sent as "
        "`message_id`, `publish_time` (`source_publish_time` where there is one), `data`, "
        "`attributes` and `subscription` (`source_subscription`). A page reads one UTC "
        "day at most (BigQuery bills a day of the table whole), the newest of what is "
        "asked, and 4 MiB of data and attributes (a larger dead letter alone): one whose "
        "day holds fewer than `limit` ends short, even empty, with a `next_page_token` to "
        "the newest older day holding any, and none where no day does. 404 on a store "
        "that reads none (DuckDB): they are on the system's dead-letter subscription. "
        "Operators only."
    ),
    tags=["operations"],
    responses=problem_responses(
        BadParameter,
        Unauthorized,
        Forbidden,
        NotFound,
        StoreUnavailable,
        QueryTooCostly,
        CertsUnavailable,
    ),
)
async def dead_letters(
    request: Request[Any, Any, Any],
    dead_letter_reads: NamedDependency[DeadLetterReads],
    since: Annotated[
        str | None, time_parameter("Dead letters published to the dead-letter topic at or after it")
    ] = None,
    until: Annotated[
        str | None,
        time_parameter("Dead letters published to the dead-letter topic before it (default: now)"),
    ] = None,
    limit: Annotated[
        int, Parameter(ge=1, le=MOST_DEAD_LETTERS, description="Dead letters per page")
    ] = DEFAULT_DEAD_LETTERS,
    page_token: Annotated[
        str | None,
        Parameter(max_length=MAX_TOKEN_LENGTH, description="From the previous page"),
    ] = None,
) -> DeadLettersPage:
    refuse_unknown(request, PARAMETERS)
    return await dead_letter_reads.page(
        since=time_of("since", since),
        until=time_of("until", until),
        limit=limit,
        page_token=page_token,
    )


DEAD_LETTER_ROUTES = [dead_letters]
