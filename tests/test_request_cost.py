"""What a push and a page read cost, held to their budgets (bench/budgets.json).

Counted in calls on the event loop's thread (bench/calls.py), not in time: the
same on a busy machine as on a quiet one, so the check neither fails at random
nor lets a regression through.
"""

from __future__ import annotations

import os

import pytest
from litestar.handlers import HTTPRouteHandler

from app.asgi import create_app
from app.settings import Settings
from bench import calls


@pytest.mark.slow
def test_a_push_and_a_page_read_cost_what_their_budgets_say() -> None:
    budget = calls.budgets()
    assert set(budget["paths"]) == set(calls.PATHS)
    if budget["interpreter"] != calls.interpreter() and not os.environ.get("CI"):
        # Another interpreter makes other calls; CI runs the one the budgets name.
        pytest.skip(
            f"the budgets were counted on {budget['interpreter']}, this is "
            f"{calls.interpreter()}: `python3 dev.py bench calls` shows this one's"
        )
    found = calls.costs()
    assert calls.verdicts(found, budget) == [], {path: c["each"] for path, c in found.items()}


def test_the_check_fails_a_path_over_its_budget_and_names_one_well_under_it() -> None:
    budget = {
        "tolerance": 0.02,
        "interpreter": calls.interpreter(),
        "paths": {
            "push": {"request": "POST /pubsub/push", "calls": 500},
            "page": {"request": "GET /v1/records", "calls": 1000},
        },
    }
    on_budget = {"push": {"calls": 510}, "page": {"calls": 981}}
    assert calls.verdicts(on_budget, budget) == []
    assert calls.lower(on_budget, budget) == []
    (over,) = calls.verdicts({**on_budget, "push": {"calls": 511}}, budget)
    assert over.startswith("push (POST /pubsub/push) costs 511 calls, more than its budget of 500")
    # Cheaper than its budget: no failure, and said, for a change of its own to keep.
    cheaper = {**on_budget, "page": {"calls": 979}}
    assert calls.verdicts(cheaper, budget) == []
    (under,) = calls.lower(cheaper, budget)
    assert under.startswith("page (GET /v1/records) costs 979 calls, less than its budget")


def test_no_budget_is_above_the_last_figure_the_benchmarks_page_gives_it() -> None:
    # A budget is raised beside a row of docs/benchmarks.md saying what the calls buy
    # and the ingest ratio before and after: raised in bench/budgets.json alone, it fails.
    ceilings = calls.documented(calls.RAISED.read_text())
    budgets = {path: each["calls"] for path, each in calls.budgets()["paths"].items()}
    assert set(ceilings) == set(budgets) == set(calls.PATHS)
    assert {path: n for path, n in budgets.items() if n > ceilings[path]} == {}
    table = [
        calls.RAISED_HEAD,
        "|---|---|---|---|---|",
        "| as first set | 415 | 798 | | |",
        "| a check on every push | 420 | 798 | what it checks | 0.61 → 0.60 |",
        "",
        "| budgets | push | page | after the table |",
    ]
    assert calls.documented("\n".join(table)) == {"push": 420, "page": 798}


def test_no_route_asks_litestar_for_more_than_one_dependency() -> None:
    # Litestar resolves two or more dependencies of one request side by side in a
    # task group of their own: a second one on the push handler cost a push half
    # as much again as everything else it did. One is resolved in line.
    app = create_app(Settings.load({"RECORDLINE_STORE": "duckdb://:memory:"}))
    asked = {}
    for route in app.litestar.routes:
        for handler in getattr(route, "route_handlers", []):
            assert isinstance(handler, HTTPRouteHandler)
            parameters = set(handler.parsed_fn_signature.parameters)
            asked[f"{route.path} {handler.handler_name}"] = parameters & set(
                handler.resolve_dependencies()
            )
    assert asked["/v1/records list_records"] == {"paging"}  # the check sees dependencies
    assert {route: names for route, names in asked.items() if len(names) > 1} == {}
