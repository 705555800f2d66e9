"""What `bench bqcost --layouts` says of each layout of `records`, held at the bench's own
size (a month at 10 msg/s). The billing model is deterministic, so its figures are
judged here, where tests/test_benches.py only runs the bench small: the targets
docs/layouts.md says are met stay met, and those it says are missed are missed for the
reasons it gives (a page on event time reads the late events' blocks; no one table's
blocks let both questions under 1/20)."""

from __future__ import annotations

import asyncio

import pytest

from bench import bqlayouts
from bench.bqlayouts import CUSTOMER, EVENT_DAY, Found, both, floor_of, verdicts
from tests.bigquery.stream import Stream

pytestmark = pytest.mark.slow

# Whether each target is met, as docs/layouts.md#what-each-layout-bills says.
MET = {
    f"{EVENT_DAY} on event time / today": True,
    f"{EVENT_DAY} on event day by customer / today": True,
    f"{CUSTOMER} on customer / today": True,
    f"{CUSTOMER} on customer by ingest day / today": False,
    f"{CUSTOMER} on event day by customer / today": False,
    "read API on event time: its dearest call / today's": False,
    "read API on customer: its dearest call / today's": False,
    "read API on customer by ingest day: its dearest call / today's": False,
    "read API on event day by customer: its dearest call / today's": False,
    "both questions on one table, each at most 1/20 (their product at most 1/400)": False,
    "records as today, beside tables of the analyst's own laid out as event time and as "
    "customer: the day, a customer, the read API": True,
}


@pytest.fixture(scope="module")
def measured() -> tuple[Stream, dict[str, Found]]:
    stream, found, _ = asyncio.run(bqlayouts.measure_all(10, 30))
    return stream, found


def test_each_target_is_met_or_missed_as_the_docs_say(
    measured: tuple[Stream, dict[str, Found]],
) -> None:
    stream, found = measured
    said = {name: met for name, _, met in verdicts(stream, found)}
    assert said == MET, [(n, v) for n, v, _ in verdicts(stream, found)]


def test_no_layout_bills_both_questions_under_the_floor_its_blocks_set(
    measured: tuple[Stream, dict[str, Found]],
) -> None:
    # The floor is what the blocks allow whatever the rows are sorted by: a layout
    # billed under it would be pruning rows its blocks hold. At 10 msg/s it lies above
    # 1/400 on every layout, which is why no one table gets both questions to 1/20.
    stream, found = measured
    today = found["today"]
    for name, f in found.items():
        day, customer = both(f, today)
        floor = floor_of(stream, f, today)
        assert day * customer >= floor.least, name
        assert floor.least > 1 / 400, name
    # The layout nearest to both is within 15% of its floor: the floor is not slack.
    day, customer = both(found["event day by customer"], today)
    assert day * customer <= 1.15 * floor_of(stream, found["event day by customer"], today).least


def test_a_page_on_event_time_reads_the_blocks_its_late_events_landed_in(
    measured: tuple[Stream, dict[str, Found]],
) -> None:
    _, found = measured
    today, event = found["today"], found["event time"]
    page = "page 1 day back (limit 100)"
    # Today's page reads one block of one partition; on event time, the blocks holding
    # its range in the partitions of the days its late events happened on too.
    assert [(r.blocks, r.partitions) for r in today.api_reached[page]] == [(1, 1)]
    assert sum(r.partitions for r in event.api_reached[page]) > 1
    assert event.api[page].billed > today.api[page].billed
    # Tail polls and look-ups bill what they bill today.
    for call in ("tail poll (5 s of rows, limit 1000)", "/v1/records/{id}"):
        assert event.api[call].billed == today.api[call].billed, call
