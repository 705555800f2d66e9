"""The count and histogram above the console's records, in a real Chromium against
`recordline serve` on DuckDB: what the filters keep, as `GET /v1/counts/records` counts
it bucket by bucket, narrowed as a `where` expression narrows it, an empty range said,
counted again while following with one count in flight at most, and one overtaken by
newer filters abandoned. Design: docs/console.md#records"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import pytest
from playwright.sync_api import expect

from recordline_dev.processes import free_port, stop_group
from tests.console.browser import envelope, serve

pytestmark = pytest.mark.browser

# Three waves of records a moment apart, `n` from 0 to 8; the region `eu` on every third.
WAVES = 3
EACH = 3
EXPRESSION = "data.n >= 3 AND attributes.region = 'eu'"
# Since a moment before the first wave (RFC 3339), filled in by the fixture.
FROM: list[str] = []


@pytest.fixture(scope="module")
def service(browser: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`recordline serve` on a DuckDB file, on loopback with no authentication, holding
    records pushed in waves: the store's ingest time is its own clock, so the waves are
    apart only if they are pushed apart (the sleeps below, 0.6 s each)."""
    folder = tmp_path_factory.mktemp("counts")
    port = free_port()
    process = serve(folder, port)
    url = f"http://127.0.0.1:{port}"
    FROM[:] = [(datetime.now(UTC) - timedelta(seconds=1)).isoformat().replace("+00:00", "Z")]
    try:
        with httpx.Client(base_url=url) as client:
            for wave in range(WAVES):
                if wave:
                    time.sleep(0.6)
                for at in range(EACH):
                    n = wave * EACH + at
                    region = {"region": "eu" if n % 3 == 0 else "us"}
                    push = envelope(f"c-{n}", {"id": f"c-{n}", "data": {"n": n}}, region)
                    assert client.post("/pubsub/push", json=push).status_code == 204
        yield url
    finally:
        stop_group(process, timeout=15)


def counted(page: Any, total: int) -> dict[str, Any]:
    """What the page shows once it counts `total`: its count (text and number), and the
    histogram's data and label."""
    count, chart = page.locator("#count"), page.locator("#histogram")
    expect(count).to_have_attribute("data-total", str(total))
    return {
        "text": count.inner_text(),
        "counts": json.loads(chart.get_attribute("data-counts")),
        "since": chart.get_attribute("data-since"),
        "until": chart.get_attribute("data-until"),
        "label": chart.get_attribute("aria-label"),
    }


def count(service: str, **params: str) -> dict[str, Any]:
    with httpx.Client(base_url=service) as client:
        answer = client.get("/v1/counts/records", params=params)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def test_the_count_is_the_api_s_bucket_by_bucket(service: str, page: Any) -> None:
    """Opened with no `since`: the last hour's count, as text and as 60 bars a minute
    each, the same as the API counts for that hour and for the page's own range."""
    total = count(service, since="1h")["total"]
    assert total >= WAVES * EACH
    page.goto(f"{service}/console/records")
    shown = counted(page, total)
    assert shown["text"] == f"{total} records match since 1h"
    assert len(shown["counts"]) == 60
    assert sum(shown["counts"]) == total
    same = count(service, since=shown["since"], until=shown["until"], buckets="60")
    assert same["counts"] == shown["counts"]
    assert shown["label"].startswith(
        f"Histogram of the {total} records these filters keep since 1h: "
        "60 bars of 1 minute each, from "
    )
    expect(page.locator("#histogram canvas")).not_to_have_count(0)
    expect(page.locator("#count-refused")).to_be_hidden()
    # The rows are the list's, as they were.
    expect(page.locator("#rows tbody tr.row")).to_have_count(total)


def test_a_where_expression_narrows_the_count_as_the_api_does(service: str, page: Any) -> None:
    """Since the filters' own time, the waves are bars apart; an expression typed
    narrows the count to the API's for it, bucket by bucket; one that keeps nothing
    says so in place of the chart."""
    since = FROM[0]
    page.goto(f"{service}/console/records?since={quote(since)}")
    total = count(service, since=since)["total"]
    shown = counted(page, total)
    assert shown["text"] == f"{total} records match since {since}"
    assert len([bucket for bucket in shown["counts"] if bucket]) >= 2, shown["counts"]
    assert sum(shown["counts"]) == total
    box = page.locator("input[name=where]")
    box.fill(EXPRESSION)
    box.press("Enter")
    narrowed = count(service, since=since, where=EXPRESSION)
    assert narrowed["total"] == 2  # c-3 and c-6, a wave apart
    shown = counted(page, 2)
    assert shown["text"] == f"2 records match since {since}"
    same = count(
        service, since=shown["since"], until=shown["until"], where=EXPRESSION, buckets="60"
    )
    assert same["counts"] == shown["counts"]
    assert sum(shown["counts"]) == 2
    expect(page.locator("#rows tbody tr.row")).to_have_count(2)
    assert parse_qs(urlsplit(page.url).query) == {"since": [since], "where": [EXPRESSION]}
    # Nothing kept: said, not a blank chart.
    box.fill("data.n > 100")
    box.press("Enter")
    shown = counted(page, 0)
    assert shown["text"] == f"0 records match since {since}"
    assert shown["counts"] == [0] * 60
    expect(page.locator("#histogram")).to_have_text("no records in this range")
    expect(page.locator("#histogram")).to_have_attribute("aria-label", "no records in this range")
    expect(page.locator("#histogram canvas")).to_have_count(0)


# Each count the page asks, with whether it was abandoned (its signal aborted) since.
WATCH_COUNTS = """(() => {
  const fetched = window.fetch;
  window.countsAsked = [];
  window.fetch = (input, options) => {
    if (String(input).includes("/v1/counts/")) window.countsAsked.push(options.signal);
    return fetched(input, options);
  };
})()"""


def abandoned(page: Any) -> list[bool]:
    """Whether each count the page asked was abandoned since, in the order asked."""
    answer: list[bool] = page.evaluate("() => countsAsked.map((signal) => signal.aborted)")
    return answer


def test_counted_again_while_following_one_count_at_a_time(service: str, page: Any) -> None:
    """While following, counted again every minute (the page's clock run on), none while
    one is in flight, none while not following; newer filters abandon the count in
    flight and show their own."""
    page.clock.install()
    page.add_init_script(WATCH_COUNTS)
    page.goto(f"{service}/console/records?attribute=region:live")
    counted(page, 0)
    with httpx.Client(base_url=service) as client:
        push = envelope("c-live", {"id": "c-live", "data": {}}, {"region": "live"})
        assert client.post("/pubsub/push", json=push).status_code == 204
    expect(page.locator("#rows tbody tr.row")).to_have_count(1)  # followed
    page.clock.run_for(60_000)
    shown = counted(page, 1)
    assert shown["text"] == "1 record matches since 1h"
    assert abandoned(page) == [False, False]
    # Not following: not counted again.
    page.uncheck("#follow")
    page.clock.run_for(30_000)
    assert len(abandoned(page)) == 2
    page.check("#follow")
    # A count held in flight: no other is asked beside it.
    held: list[Any] = []

    def counts(url: str) -> bool:
        return "/v1/counts/records" in url

    # The first held; any later one let through.
    page.route(counts, lambda route: route.continue_() if held else held.append(route))
    with page.expect_request(lambda request: counts(request.url)):
        page.clock.run_for(60_000)
    page.clock.run_for(45_000)
    assert len(held) == 1
    assert abandoned(page) == [False, False, False]
    # Newer filters: the count in flight is abandoned, theirs shown.
    page.fill("input[name=attribute]", "region:eu")
    page.click("#filters button[type=submit]")
    total = count(service, since="1h", attribute="region:eu")["total"]
    shown = counted(page, total)
    assert shown["text"] == f"{total} records match since 1h"
    assert abandoned(page) == [False, False, True, False]
