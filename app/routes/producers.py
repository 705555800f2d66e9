"""The completeness ledger's routes: GET /v1/producers, /v1/producers/{id} and /v1/audit.

Thin, like every read route: parameters checked, one call, its answer. They are
behind the read guards (`create_app`): whoever may read records may read what
was received of them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from litestar import Request, get
from litestar.di import NamedDependency
from litestar.params import Parameter

from app.docs import ProducersOperation
from app.errors import (
    BadParameter,
    CertsUnavailable,
    Forbidden,
    NotFound,
    StoreUnavailable,
    Unauthorized,
)
from app.problems import problem_responses
from app.query.page_token import MAX_TOKEN_LENGTH
from app.query.producers import (
    DEFAULT_PRODUCERS,
    MAX_PRODUCERS,
    AuditReport,
    Producers,
    ProducersPage,
    ProducerView,
)
from app.routes.query import _path_id, exact_id, time_of, time_parameter

PRODUCERS_PREFIX = "/v1/producers/"
# 404: no such producer, or a store that keeps no ledger (BigQuery alone).
_ERRORS = problem_responses(
    BadParameter, NotFound, Unauthorized, Forbidden, StoreUnavailable, CertsUnavailable
)


@get(
    "/v1/producers",
    summary="The completeness ledger: every producer's epochs, gaps and counts, by producer id",
    description=(
        "Messages that carry a producer sequence (`recordline-producer`, `recordline-epoch`, "
        "`recordline-seq`) are accounted for per producer and epoch: the highest contiguous "
        "sequence, the gaps (a gap older than RECORDLINE_PRODUCER_GRACE_SECONDS is missing), "
        "the sequences two different messages claimed (conflicts, both stored), and how many "
        "were stored, rejected and dropped as a publisher's copy (the same message again). "
        "A page lists each epoch's first 10 gaps and ranges in conflict; "
        "`/v1/producers/{producer}` lists them all. 404 on a store that keeps no ledger "
        "(BigQuery alone)."
    ),
    tags=["producers"],
    operation_class=ProducersOperation,
    responses=_ERRORS,
)
async def list_producers(
    producers: NamedDependency[Producers],
    limit: Annotated[
        int, Parameter(ge=1, le=MAX_PRODUCERS, description="Producers per page")
    ] = DEFAULT_PRODUCERS,
    page_token: Annotated[
        str | None,
        Parameter(max_length=MAX_TOKEN_LENGTH, description="From the previous page"),
    ] = None,
) -> ProducersPage:
    return await producers.page(limit=limit, page_token=page_token)


@get(
    PRODUCERS_PREFIX + "{producer:path}",
    summary="One producer's epochs, every gap and count",
    tags=["producers"],
    responses=_ERRORS,
)
async def get_producer(
    request: Request[Any, Any, Any],
    producers: NamedDependency[Producers],
    producer: Annotated[str, _path_id("The producer's id (`recordline-producer`)")],
) -> ProducerView:
    return await producers.producer(exact_id(request, PRODUCERS_PREFIX, "producer", producer))


@get(
    "/v1/audit",
    summary="Per hour: messages with a producer sequence received, stored, rejected, "
    "dropped as a publisher's copy, stored in conflict, and missing",
    description=(
        "Hours of ingest from `since` to `until` (at most a week, the counts the ledger "
        "keeps; `until` is now unless given), the oldest missing ranges whose gap opened "
        "then, and the oldest conflicts (sequences two different messages claimed, epochs "
        "whose declared ends disagree) first seen then: what `recordline audit` prints, "
        "exiting non-zero while any is missing or in conflict."
    ),
    tags=["producers"],
    responses=_ERRORS,
)
async def audit(
    producers: NamedDependency[Producers],
    since: Annotated[str, time_parameter("The first hour's start")],
    until: Annotated[
        str | None,
        time_parameter(
            "The end of the range, later than since and at most 168 hours after it (default: now)"
        ),
    ] = None,
) -> AuditReport:
    return await producers.audit(_required_time("since", since), time_of("until", until))


def _required_time(name: str, value: str) -> datetime:
    when = time_of(name, value)
    if when is None:  # a required parameter: never absent here
        raise BadParameter(name, "missing")
    return when


# Called by readers.
PRODUCER_ROUTES = [list_producers, get_producer, audit]
