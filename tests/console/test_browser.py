"""The console in a real Chromium against `recordline serve` on DuckDB: browse and filter
records, follow a live push, open a rejection and replay it, see a producer's missing
range, and download a CSV and read its rows.

One served process and one browser for the module; each test takes a second or two.
With CONSOLE_SCREENSHOTS=1 the tests write the pages' screenshots into docs/images/
(committed; docs/console.md shows them).
"""

from __future__ import annotations

import base64
import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import pytest
from playwright.sync_api import expect

from recordline_dev.processes import free_port, stop_group
from tests.console.browser import envelope, sequenced, serve, shot

pytestmark = pytest.mark.browser

# Each served console's log (its access record among its lines), by its address.
LOGS: dict[str, Path] = {}


@pytest.fixture(scope="module")
def service(browser: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`recordline serve` on a DuckDB file, on loopback with no authentication (so the
    browser is an operator), the producer grace short enough to see a range go missing.

    Two messages are rejected first (their record id is under `key`, which the service
    was not told), then the service restarts told so (RECORDLINE_ID_FIELD=key): today's
    validation stores what it rejected, once replayed."""
    folder = tmp_path_factory.mktemp("console")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    grace = {"RECORDLINE_PRODUCER_GRACE_SECONDS": "1"}
    process = serve(folder, port, **grace)
    try:
        with httpx.Client(base_url=url) as client:
            pushes = [
                envelope(f"m-{n}", {"id": f"r-{n}", "data": {"n": n}}, {"colour": colour})
                for n, colour in enumerate(["red", "blue", "red", "green", "red"])
            ]
            pushes += [
                envelope("p-0", {"id": "p-0", "data": {}}, sequenced("orders", 0)),
                envelope("p-1", {"id": "p-1", "data": {}}, sequenced("orders", 1)),
                envelope("p-3", {"id": "p-3", "data": {}}, sequenced("orders", 3)),
                envelope("bad-1", {"key": "k-1", "data": {}}, {"colour": "purple"}),
                envelope("bad-2", {"key": "k-2", "data": {}}, {"colour": "blue"}),
            ]
            for push in pushes:
                assert client.post("/pubsub/push", json=push).status_code == 204
        stop_group(process, timeout=15)
        process = serve(folder, port, RECORDLINE_ID_FIELD="key", **grace)
        LOGS[url] = folder / "service.log"
        yield url
    finally:
        stop_group(process, timeout=15)


def message_ids(page: Any) -> list[str]:
    return page.eval_on_selector_all(
        "#rows tbody tr.row", "rows => rows.map(r => r.dataset.messageId)"
    )


def test_records_browse_filter_and_show_a_record(service: str, page: Any) -> None:
    page.goto(f"{service}/console/records")
    expect(page.locator("#rows tbody tr.row[data-message-id=m-1]")).to_have_count(1)
    page.fill("input[name=attribute]", "colour:red")
    page.click("#filters button[type=submit]")
    expect(page.locator("#rows tbody tr.row")).to_have_count(3)
    # Opened at now: the newest first.
    assert message_ids(page) == ["m-4", "m-2", "m-0"]
    page.fill("input[name=attribute]", "")
    page.fill("input[name=producer]", "orders")
    page.click("#filters button[type=submit]")
    expect(page.locator("#rows tbody tr.row")).to_have_count(3)
    page.locator("#rows tbody tr.row[data-message-id=p-1]").click()
    detail = page.locator("tr.detail")
    expect(detail).to_contain_text("orders · 1 · 1")
    expect(detail).to_contain_text('"recordline-producer": "orders"')
    # Above the rows, how many the filters keep in the last hour (all of them, here).
    expect(page.locator("#count")).to_have_text("3 records match since 1h")
    shot(page, "records")
    # A filter the API refuses is said beside the filters, with its reason, its input
    # marked; the rows shown stay.
    page.fill("input[name=field]", "no such:thing")
    page.click("#filters button[type=submit]")
    expect(page.locator("#refused")).to_contain_text("400: field:")
    expect(page.locator("input[name=field]")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#rows tbody tr.row")).to_have_count(3)


def test_a_live_push_appears_while_following(service: str, page: Any) -> None:
    page.goto(f"{service}/console/records")
    expect(page.locator("#rows tbody tr.row[data-message-id=m-1]")).to_have_count(1)
    page.check("#follow")
    with httpx.Client(base_url=service) as client:
        push = envelope("live-1", {"key": "live-1", "data": {"live": True}}, {"colour": "live"})
        assert client.post("/pubsub/push", json=push).status_code == 204
    # On top, where the view opened at now, the newest first.
    expect(page.locator("#rows tbody tr.row[data-message-id=live-1]")).to_have_count(1)
    assert message_ids(page)[0] == "live-1"
    # Scrolled down to read, the tail pauses at once (its waiting read abandoned: no row is
    # added above the reader); back at the top it goes on from where it stopped.
    page.set_viewport_size({"width": 1280, "height": 300})
    page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
    expect(page.locator("#paused")).to_be_visible()
    with httpx.Client(base_url=service) as client:
        for name in ("live-2", "live-3"):
            push = envelope(name, {"key": name, "data": {}}, {"colour": "live"})
            assert client.post("/pubsub/push", json=push).status_code == 204
    # A waiting read answers a push within milliseconds: a second shows none was made.
    page.wait_for_timeout(1000)
    expect(page.locator("#rows tbody tr.row[data-message-id=live-2]")).to_have_count(0)
    assert page.evaluate("window.scrollY") > 0
    page.evaluate("window.scrollTo(0, 0)")
    expect(page.locator("#rows tbody tr.row[data-message-id=live-3]")).to_have_count(1)
    expect(page.locator("#paused")).to_be_hidden()
    # Each row once, the newest first.
    assert message_ids(page)[:3] == ["live-3", "live-2", "live-1"]
    assert len(message_ids(page)) == len(set(message_ids(page)))


def test_older_rows_are_read_on_below_the_newest(service: str, page: Any) -> None:
    with httpx.Client(base_url=service) as client:
        for n in range(105):
            push = envelope(f"old-{n:03d}", {"key": f"old-{n:03d}", "data": {}}, {"colour": "old"})
            assert client.post("/pubsub/push", json=push).status_code == 204
    page.goto(f"{service}/console/records?attribute=colour:old")
    expect(page.locator("#rows tbody tr.row")).to_have_count(100)
    assert message_ids(page)[0] == "old-104"
    page.click("#more")
    expect(page.locator("#rows tbody tr.row")).to_have_count(105)
    assert message_ids(page) == [f"old-{n:03d}" for n in range(104, -1, -1)]
    expect(page.locator("#more")).to_be_hidden()


def test_a_rejection_opened_and_replayed(service: str, page: Any) -> None:
    page.goto(f"{service}/console/rejections")
    reason = page.locator("#reasons tbody tr", has_text="missing required field `id`")
    expect(reason).to_contain_text("2")
    reason.click()
    expect(page.locator("#rows tbody tr")).to_have_count(2)
    page.check("input[aria-label='select bad-1']")
    page.click("#replay")
    # Today's validation finds its id (RECORDLINE_ID_FIELD=key): stored, and so read.
    outcome = page.locator("#outcomes tbody tr")
    expect(outcome).to_have_count(1)
    expect(outcome).to_contain_text("bad-1")
    expect(outcome).to_contain_text("stored")
    expect(page.locator("#rows tbody tr[data-message-id=bad-1]")).to_contain_text("stored since")
    with httpx.Client(base_url=service) as client:
        stored = client.get("/v1/messages/bad-1").json()
    assert stored["status"] == "stored"
    assert stored["record"]["id"] == "k-1"
    shot(page, "rejections")


def test_a_producer_s_missing_range_is_shown_with_its_remedy(service: str, page: Any) -> None:
    page.goto(f"{service}/console/producers")
    row = page.locator("#producers tbody tr", has_text="orders")
    expect(row).to_have_count(1)
    # Sequence 2 goes missing after the grace (a second); the page reads the ledger
    # again every 3 s.
    missing = page.locator("#missing .missing", has_text="sequence 2 missing")
    expect(missing).to_contain_text("orders epoch 1: sequence 2 missing since", timeout=10_000)
    expect(missing).to_contain_text("What to do")
    shot(page, "producers")
    # The producer publishes it again: stored, the range closes.
    with httpx.Client(base_url=service) as client:
        push = envelope("p-2", {"key": "p-2", "data": {}}, sequenced("orders", 2))
        assert client.post("/pubsub/push", json=push).status_code == 204
    expect(missing).to_have_count(0, timeout=10_000)
    expect(row.locator("td").nth(2)).to_have_text("4")  # stored: 0, 1, 2 and 3


def test_a_filtered_csv_download_holds_the_rows(service: str, page: Any, tmp_path: Path) -> None:
    page.goto(f"{service}/console/records")
    page.fill("input[name=attribute]", "colour:red")
    page.fill("input[name=columns]", "message_id,id,data.n,attributes.colour")
    page.click("#filters button[type=submit]")
    expect(page.locator("#rows tbody tr.row")).to_have_count(3, timeout=10_000)
    with page.expect_download() as started:
        page.click("#export button[value=csv]")
    saved = tmp_path / "export.csv"
    started.value.save_as(saved)
    rows = list(csv.reader(io.StringIO(saved.read_text())))
    assert rows[0] == ["message_id", "id", "data.n", "attributes.colour"]
    assert [r[0] for r in rows[1:4]] == ["m-0", "m-2", "m-4"]
    assert rows[1] == ["m-0", "r-0", "0", "red"]
    expect(page.locator("#progress")).to_contain_text("lines")


def test_health_charts_the_service_s_own_figures(service: str, page: Any) -> None:
    page.goto(f"{service}/console/health")
    expect(page.locator("#ready")).to_have_text("ready")
    # Two scrapes make the first point of each chart.
    expect(page.locator("#pushes canvas")).to_have_count(1)
    expect(page.locator("#tables tbody")).to_contain_text("no export on this store")
    # A chart with nothing to draw says so (DuckDB exports nothing); one that has a
    # value does not.
    expect(page.locator("#export").locator("xpath=..").locator(".empty")).to_have_text(
        "no value yet"
    )
    expect(page.locator("#followers").locator("xpath=..").locator(".empty")).to_have_count(0)
    shot(page, "health")


def test_a_download_is_said_cut_only_by_its_last_line(service: str, page: Any) -> None:
    # A row that holds the note's name is a row; the export is cut only if its last
    # line is the note.
    with httpx.Client(base_url=service) as client:
        for n in range(2):
            data = {"key": f"note-{n}", "data": {"text": "# recordline_export: incomplete"}}
            push = envelope(f"note-{n}", data, {"colour": "note"})
            assert client.post("/pubsub/push", json=push).status_code == 204
    page.goto(f"{service}/console/records")
    page.fill("input[name=attribute]", "colour:note")
    page.click("#filters button[type=submit]")
    expect(page.locator("#rows tbody tr.row")).to_have_count(2, timeout=10_000)
    progress = page.locator("#progress")
    for fmt in ("csv", "jsonl"):
        with page.expect_download():
            page.click(f"#export button[value={fmt}]")
        expect(progress).to_contain_text("3 lines" if fmt == "csv" else "2 lines")
        expect(progress).not_to_contain_text("cut")
    page.fill("input[name=max_rows]", "1")
    for fmt in ("csv", "jsonl"):
        with page.expect_download():
            page.click(f"#export button[value={fmt}]")
        expect(progress).to_contain_text("cut at a bound")


def test_a_view_s_filters_are_in_its_address_to_share_and_reload(service: str, page: Any) -> None:
    """Opened from an address, a view reads the filters it names (into the form, as
    values); each read puts its filters back in the address; an empty view says so."""
    page.goto(f"{service}/console/records?attribute=colour:red&producer=%3Cb%3Ex")
    expect(page.locator("input[name=attribute]")).to_have_value("colour:red")
    # A value is an input's text, never markup.
    expect(page.locator("input[name=producer]")).to_have_value("<b>x")
    # Following it (as the view does from the start), it says it waits; no longer
    # following, it says the filters keep nothing.
    expect(page.locator("#follow")).to_be_checked()
    expect(page.locator("#status")).to_have_text("No record yet: following.")
    page.uncheck("#follow")
    expect(page.locator("#status")).to_have_text("No record is kept by these filters.")
    page.check("#follow")
    expect(page.locator("#status")).to_have_text("No record yet: following.")
    page.fill("input[name=producer]", "")
    page.click("#filters button[type=submit]")
    expect(page.locator("#rows tbody tr.row")).to_have_count(3)
    assert message_ids(page) == ["m-4", "m-2", "m-0"]
    assert "attribute=colour%3Ared" in page.url
    assert "producer" not in page.url
    page.reload()
    expect(page.locator("#rows tbody tr.row")).to_have_count(3)
    page.locator("#rows tbody tr.row[data-message-id=m-2]").click()
    headings = page.locator("tr.detail h3")
    expect(headings).to_have_text(["attributes", "data"])
    page.goto(f"{service}/console/rejections?attribute=colour:none")
    expect(page.locator("input[name=attribute]")).to_have_value("colour:none")
    expect(page.locator("#chart .empty")).to_contain_text("No rejection is kept by these filters")
    page.goto(f"{service}/console/rejections?attribute=colour:purple")
    expect(page.locator("#reasons tbody tr.row")).to_have_count(1)
    expect(page.locator("#chart .empty")).to_have_count(0)


def test_a_crafted_address_is_filters_alone(service: str, page: Any) -> None:
    """An address sent to an operator fills the form's filters and nothing else: markup
    in a value is its text, names that are no filter (a page token, a limit, a wait, an
    export's format, a replay's messages) are neither read nor sent, nothing is asked
    of another site or by another method than GET, and malformed escapes break nothing."""
    asked: list[tuple[str, str]] = []
    page.on("request", lambda request: asked.append((request.method, request.url)))
    page.on("dialog", lambda dialog: pytest.fail(f"a dialog opened: {dialog.message}"))
    markup = '"><img src=x onerror=alert(1)><script>alert(2)</script>'
    extra = "page_token=x&limit=100000&wait=20&format=csv&columns=data&max_rows=1&messages=m-0"
    page.goto(
        f"{service}/console/records?attribute={quote(markup)}&producer=%&record_id=%E0%A4%A"
        f"&attribute=colour:red&{extra}#top"
    )
    expect(page.locator("input[name=attribute]")).to_have_value(markup)
    expect(page.locator("input[name=producer]")).to_have_value("%")
    expect(page.locator("#refused")).to_contain_text("400: attribute:")
    expect(page.locator("img")).to_have_count(0)
    page.goto(f"{service}/console/rejections?message_id={quote(markup)}&{extra}")
    expect(page.locator("input[name=message_id]")).to_have_value(markup)
    expect(page.locator("#chart .empty")).to_contain_text("No rejection is kept by these filters")
    expect(page.locator("img")).to_have_count(0)
    for name in ("page_token", "limit=100000", "wait", "format", "columns", "max_rows", "messages"):
        assert name not in page.url
    origin = f"{service}/"
    assert asked
    assert [url for _, url in asked if not url.startswith(origin)] == []
    assert {method for method, _ in asked} == {"GET"}, asked
    reads = [urlsplit(url) for _, url in asked if "/v1/" in url]
    assert {read.path for read in reads} == {"/v1/records", "/v1/counts/records", "/v1/rejections"}
    for read in reads:
        query = parse_qs(read.query)
        if read.path == "/v1/counts/records":
            # The records' count: the filters, since the last hour, in 60 buckets.
            assert query["buckets"] == ["60"], read
            assert query["since"] == ["1h"], read
            assert "limit" not in query, read
        else:
            assert query["limit"] in (["100"], ["1000"]), read
        assert not {"wait", "page_token", "format", "columns", "max_rows"} & set(query), read


def test_a_reason_its_filters_no_longer_keep_is_shown_no_more(service: str, page: Any) -> None:
    """Rejections of a reason opened, one selected, then filters that keep none of them:
    the page says it holds no rejection, and neither lists those nor offers to replay
    the one selected, which the view no longer holds."""
    page.goto(f"{service}/console/rejections")
    page.locator("#reasons tbody tr", has_text="missing required field `id`").click()
    expect(page.locator("#rows tbody tr")).not_to_have_count(0)
    page.locator("#rows tbody input[type=checkbox]").first.check()
    expect(page.locator("#replay")).to_be_enabled()
    page.fill("input[name=attribute]", "colour:none")
    page.click("#filters button[type=submit]")
    expect(page.locator("#chart .empty")).to_contain_text("No rejection is kept by these filters")
    expect(page.locator("#rows tbody tr")).to_have_count(0)
    expect(page.locator("#chosen-reason")).to_be_hidden()
    expect(page.locator("#replay")).to_be_disabled()


@pytest.mark.parametrize("view", ["records", "rejections"])
def test_a_read_overtaken_by_a_later_one_shows_nothing(service: str, page: Any, view: str) -> None:
    """Filters read, then others before the first answer came: the view is the later
    filters' alone, whatever order the answers come in (the first, late, is dropped)."""
    page.goto(f"{service}/console/{view}")
    expect(page.locator("#status")).to_be_empty()
    held: list[Any] = []
    page.route("**/v1/*colour%3Ablue*", lambda route: held.append(route))
    page.fill("input[name=attribute]", "colour:blue")
    with page.expect_request(lambda request: "colour%3Ablue" in request.url):
        page.click("#filters button[type=submit]")
    page.fill("input[name=attribute]", "colour:purple" if view == "rejections" else "colour:red")
    page.click("#filters button[type=submit]")
    if view == "records":
        expect(page.locator("#rows tbody tr.row")).to_have_count(3)
    else:
        expect(page.locator("#reasons tbody tr.row")).to_have_count(1)
    with page.expect_response(lambda answer: "colour%3Ablue" in answer.url):
        held[0].continue_()
    # A later round trip: the late answer was taken in before it came.
    page.evaluate("() => fetch('../v1/records?limit=1').then((answer) => answer.json())")
    if view == "records":
        assert message_ids(page) == ["m-4", "m-2", "m-0"]
    else:
        expect(page.locator("#reasons tbody tr.row")).to_have_count(1)
        assert page.locator("#reasons tbody tr.row").first.inner_text().split("\t")[1] == "1"
    expect(page.locator("#status")).to_be_empty()
    assert "colour%3A" + ("purple" if view == "rejections" else "red") in page.url


def test_a_rejection_fixed_in_the_browser_is_checked_replayed_and_recorded(
    service: str, page: Any
) -> None:
    """A payload wrong as sent (its record id missing) is edited in the browser: what
    changed is shown, today's validation's verdict comes before anything is sent, an
    edit that still fails cannot be sent, and the fixed one is stored under its original
    message id with the operator's note in the access record."""
    with httpx.Client(base_url=service) as client:
        pushed = client.post(
            "/pubsub/push", json=envelope("bad-3", {"data": {"n": 3}}, {"colour": "orange"})
        )
        assert pushed.status_code == 204
    page.goto(f"{service}/console/rejections?attribute=colour%3Aorange")
    page.locator("#reasons tbody tr", has_text="`$.key` (the record id").click()
    page.click("button[aria-label='fix bad-3']")
    payload = page.locator("textarea[aria-label='payload of bad-3']")
    expect(payload).to_have_value(json.dumps({"data": {"n": 3}}))  # the bytes as sent
    replay = page.locator("tr.editor .edit-replay")
    verdict = page.locator("tr.editor .edit-verdict")
    # Still without its id: rejected again, and not to be sent.
    payload.fill('{"data": {"n": 4}}')
    expect(page.locator("tr.editor .edit-changes")).to_have_text("Changed: data.data.n")
    page.click("tr.editor .edit-check")
    expect(verdict).to_contain_text("would reject it: payload: `$.key` (the record id")
    page.fill("input[aria-label='why bad-3 is fixed']", "the producer left out its key")
    expect(replay).to_be_disabled()
    # Fixed: it would be stored, and is sent once a note says why.
    payload.fill('{"key": "k-3", "data": {"n": 3}}')
    expect(page.locator("tr.editor .edit-changes")).to_have_text("Changed: data.key (added)")
    expect(replay).to_be_disabled()  # an edit needs a check of its own
    page.click("tr.editor .edit-check")
    expect(verdict).to_have_text("Today's validation would store it.")
    expect(replay).to_be_enabled()
    shot(page, "fix")
    replay.click()
    expect(page.locator("#outcomes tbody tr")).to_contain_text("stored")
    expect(page.locator("#rows tbody tr[data-message-id=bad-3]")).to_contain_text("stored since")
    with httpx.Client(base_url=service) as client:
        stored = client.get("/v1/messages/bad-3").json()
        rejected = client.get("/v1/rejections", params={"message_id": "bad-3"}).json()
    assert stored["status"] == "stored"
    assert (stored["record"]["id"], stored["record"]["data"]) == (
        "k-3",
        {"key": "k-3", "data": {"n": 3}},
    )
    # The rejection keeps the message as it came: beside the record, the edit.
    (kept,) = rejected["rejections"]
    assert json.loads(base64.b64decode(kept["data"])) == {"data": {"n": 3}}
    lines = [
        json.loads(line) for line in LOGS[service].read_text().splitlines() if line.startswith("{")
    ]
    replays = [
        line["access"]
        for line in lines
        if line.get("logger") == "recordline.access" and line["access"]["action"] == "replay"
    ]
    assert [(r["dry_run"], r["messages"], r["note"]) for r in replays[-3:]] == [
        (True, [["bad-3", "rejected"]], None),  # checked before a note was written
        (True, [["bad-3", "stored"]], "the producer left out its key"),
        (False, [["bad-3", "stored"]], "the producer left out its key"),
    ]
    # What each edit changed, as the service compared it with the rejection kept.
    assert [r["changed"] for r in replays[-3:]] == [
        [["bad-3", ["data.data.n"]]],
        [["bad-3", ["data.key (added)"]]],
        [["bad-3", ["data.key (added)"]]],
    ]


def test_a_producer_s_rejected_sequence_fixed_in_the_browser_is_counted_stored(
    service: str, page: Any
) -> None:
    """A producer's sequence 1 rejected (its record id missing) is fixed in the browser:
    stored under its message id and sequence, its producer's epoch counts it stored and
    no longer rejected, the range it left closed."""
    with httpx.Client(base_url=service) as client:
        for n, payload in enumerate([{"key": "f-0"}, {"data": {"n": 1}}, {"key": "f-2"}]):
            attributes = {**sequenced("fixer", n), "colour": "fixer"}
            push = envelope(f"fx-{n}", payload, attributes)
            assert client.post("/pubsub/push", json=push).status_code == 204
    page.goto(f"{service}/console/producers")
    row = page.locator("#producers tbody tr", has_text="fixer")
    expect(row.locator("td").nth(2)).to_have_text("2")  # stored: 0 and 2
    expect(row.locator("td").nth(3)).to_have_text("1")  # rejected: 1
    page.goto(f"{service}/console/rejections?attribute=colour%3Afixer")
    page.locator("#reasons tbody tr", has_text="`$.key` (the record id").click()
    page.click("button[aria-label='fix fx-1']")
    page.locator("textarea[aria-label='payload of fx-1']").fill('{"key": "f-1", "data": {"n": 1}}')
    page.click("tr.editor .edit-check")
    expect(page.locator("tr.editor .edit-verdict")).to_contain_text("would store it")
    page.fill("input[aria-label='why fx-1 is fixed']", "the producer left out its key")
    page.click("tr.editor .edit-replay")
    expect(page.locator("#outcomes tbody tr")).to_contain_text("stored")
    page.goto(f"{service}/console/producers")
    row = page.locator("#producers tbody tr", has_text="fixer")
    expect(row.locator("td").nth(2)).to_have_text("3")
    expect(row.locator("td").nth(3)).to_have_text("0")
    with httpx.Client(base_url=service) as client:
        listed = client.get("/v1/producers").json()["producers"]
    (fixer,) = [p for p in listed if p["producer"] == "fixer"]
    assert fixer["missing"] == 0, fixer


def test_a_payload_nested_past_comparing_still_opens_to_be_fixed(service: str, page: Any) -> None:
    """A publisher's payload nested deeper than the browser can walk: its editor still
    opens and checks it, and says it cannot tell what changed rather than failing."""
    nested = "[" * 20_000 + "]" * 20_000
    with httpx.Client(base_url=service) as client:
        deep = envelope("deep-1", None, {"colour": "teal"})
        deep["message"]["data"] = base64.b64encode(nested.encode()).decode()
        pushed = client.post("/pubsub/push", json=deep)
        assert pushed.status_code == 204
    page.goto(f"{service}/console/rejections?attribute=colour%3Ateal")
    page.locator("#reasons tbody tr.row").first.click()
    page.click("button[aria-label='fix deep-1']")
    payload = page.locator("textarea[aria-label='payload of deep-1']")
    expect(payload).to_be_visible()
    assert payload.input_value() == nested, "the payload as it came"
    payload.fill(nested[:-1] + "]")  # the same text, typed again
    expect(page.locator("tr.editor .edit-changes")).to_contain_text("Changed:")
    page.click("tr.editor .edit-check")
    expect(page.locator("tr.editor .edit-verdict")).to_contain_text("would reject it")
