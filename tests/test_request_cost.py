"""What a push and a page read cost, held to their budgets (bench/budgets.json).

Counted in calls on the event loop's thread (bench/calls.py), not in time: the
same on a busy machine as on a quiet one, so the check neither fails at random
nor lets a regression through.
"""

from __future__ import annotations

from bench import calls


def test_a_push_and_a_page_read_cost_what_their_budgets_say() -> None:
    budget = calls.budgets()
    assert set(budget["paths"]) == set(calls.PATHS)
    found = calls.costs()
    assert calls.verdicts(found, budget) == [], {path: c["each"] for path, c in found.items()}


def test_the_check_names_a_path_over_or_under_its_budget() -> None:
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
    (over,) = calls.verdicts({**on_budget, "push": {"calls": 511}}, budget)
    assert over.startswith("push (POST /pubsub/push) costs 511 calls, more than its budget of 500")
    (under,) = calls.verdicts({**on_budget, "page": {"calls": 979}}, budget)
    assert under.startswith("page (GET /v1/records) costs 979 calls, less than its budget")
