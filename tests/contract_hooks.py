"""schemathesis hooks for the contract run (tests/test_contract.py), loaded through
SCHEMATHESIS_HOOKS. Each changes what the run sends or counts in one named way, and
says why; everything else is the document against the service as it is.
"""

from __future__ import annotations

from typing import Any

import schemathesis

# Seconds a generated long-poll is held at most: a valid `wait` (up to 60) on a page
# with nothing new holds the request that long, and the run has a minute in all.
# The request keeps its shape; only the time it holds is shorter.
HELD_SECONDS = 0.05


@schemathesis.hook
def before_call(
    context: schemathesis.HookContext, case: schemathesis.Case, kwargs: dict[str, Any]
) -> None:
    wait = (case.query or {}).get("wait")
    if isinstance(wait, int | float) and not isinstance(wait, bool) and 0 < wait <= 60:
        case.query["wait"] = min(wait, HELD_SECONDS)


# The refusals of requests the document calls valid that it cannot call invalid: an
# OpenAPI parameter's schema speaks of that parameter alone. Each is a 400 naming the
# parameter, its reason said in the parameter's description; by the problem's
# `parameter` and the start of its `detail`:
BEYOND_A_SCHEMA = {
    # A token is opaque and signed (app/query/page_token.py): no schema says which
    # strings are tokens. The run reaches real ones through the links (`next`).
    ("page_token", "not a page token"),
    # A stream's offset likewise (app/query/offsets.py); the links do not reach
    # one (a header gives it), so the run meets only offsets it made up.
    ("offset", "not an offset of this stream"),
    # Relations between two parameters.
    ("page_token", "was issued for another `until`"),
    ("until", "must be later than since"),
    ("until", "at most 168 hours after since"),
    # A count's range ends now unless `until` says otherwise: a `since` must lie before.
    ("since", "must be earlier than now"),
    ("page_token", "was issued for another filter"),
    ("order", "newest first is read a page at a time"),  # with `wait=`
    ("page_token", "was issued for pages newest first"),
    ("page_token", "was issued for pages oldest first"),
    # A filter's size in all, across its parameters (app/query/filters.py).
    ("attribute", "the filter's names and values take"),
    ("field", "the filter's names and values take"),
    # One path for both streams: the rejections' have neither (the path's name decides).
    ("record_id", "/v1/rejections has no record id"),
    ("field", "/v1/rejections has no typed fields"),
    # What the store holds: typed fields of a topic schema, none on this run's store.
    ("field", "no typed field"),
}
# The same, said after the value the client sent (which the detail quotes first).
BEYOND_A_SCHEMA_AFTER = {
    # A calendar: a pattern says the shape of a date, not that the month has that day.
    ("since", "names no date and time in"),
    ("until", "names no date and time in"),
    # An export's columns: the names its list's rows have (and each named once).
    ("columns", "is none of"),
    ("columns", "a column named twice"),
    # A filter's conditions, counted across its parameters.
    ("attribute", "conditions; a filter holds"),
    ("field", "conditions; a filter holds"),
}

# Parameters any of whose refusals is beyond a schema: an expression of the filter
# language (app/store/where.py) is a grammar, which no schema's pattern says; its
# description names the language, and a 400 says where the text departs from it.
BEYOND_A_SCHEMA_WHOLLY = frozenset({"where", "select"})


@schemathesis.hook
def filter_failure(
    context: schemathesis.HookContext,
    failure: Any,
    case: schemathesis.Case,
    response: schemathesis.Response,
) -> bool:
    """Keep every failure but a valid-by-the-document request refused for one of
    the reasons BEYOND_A_SCHEMA."""
    # ST202: a request the document calls valid was refused.
    if getattr(failure, "code", None) != "ST202" or response.status_code != 400:
        return True
    try:
        problem = response.json()
    except ValueError:
        return True
    if not isinstance(problem, dict) or problem.get("type") != "/problems/invalid-parameter":
        return True
    detail = str(problem.get("detail"))
    parameter = problem.get("parameter")
    if parameter in BEYOND_A_SCHEMA_WHOLLY and detail.startswith(f"{parameter}: "):
        return False
    return not any(
        parameter == name and detail.startswith(f"{name}: {reason}")
        for name, reason in BEYOND_A_SCHEMA
    ) and not any(
        parameter == name and detail.startswith(f"{name}: ") and reason in detail
        for name, reason in BEYOND_A_SCHEMA_AFTER
    )
