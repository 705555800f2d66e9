"""The console's Access page: `recordline serve` on DuckDB checking Google ID tokens (a
fake Google's keys), where exporting is a permission of its own
(RECORDLINE_EXPORT_PRINCIPALS); the browser sends a reader's token or an operator's.
A reader is offered no export and is refused one asked for anyway, sees no Access link
and is refused the page and its API; the operator then finds that refused export on
the Access page, read again until it is kept (a few seconds after its request), pages
back with Older, and sees a principal, a path and a parameter holding markup as text."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from playwright.sync_api import expect

from tests.auth.fake_google import READ_AUDIENCE, FakeGoogle
from tests.console.browser import served
from tests.waiting import until_blocking

pytestmark = pytest.mark.browser

READER = "analyst@example.org"
# A second reader, whose refused exports fill more than a page.
FILLER = "filler@example.org"
EXPORTER = "exporter@example.org"
OPERATOR = "oncall@example.org"
# Markup in what a line names: a principal (a token's e-mail, refused as no reader), a
# path and a parameter; each would run, or show an element, if it were read as HTML.
MARKUP_PRINCIPAL = '<img src=x onerror="document.title=1">@example.org'
MARKUP_NAME = "<img src=x onerror=alert(1)>"
MARKUP_VALUE = "<script>alert(2)</script>"
# How long a line may take to be kept after its request (about 2 s), with room to spare.
KEPT_WITHIN = 20.0


@pytest.fixture(scope="module")
def google() -> Iterator[FakeGoogle]:
    fake = FakeGoogle().start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def service(
    browser: Any, google: FakeGoogle, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("access")
    with served(
        folder,
        1,
        RECORDLINE_READ_AUDIENCE=READ_AUDIENCE,
        RECORDLINE_READ_PRINCIPALS=f"{READER},{FILLER}",
        RECORDLINE_EXPORT_PRINCIPALS=EXPORTER,
        RECORDLINE_OPERATOR_PRINCIPALS=OPERATOR,
        RECORDLINE_OIDC_CERTS_URL=google.certs_url,
    ) as url:
        yield url


def bearer(google: FakeGoogle, who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {google.mint(aud=READ_AUDIENCE, email=who)}"}


@pytest.fixture
def as_who(browser: Any, google: FakeGoogle) -> Iterator[Callable[[str], Any]]:
    """A page of a browser context sending `who`'s token with every request; the test
    fails on any uncaught error in the page's script or any dialog it opens."""
    contexts, errors = [], []

    def dialog(said: Any) -> None:
        errors.append(f"a dialog: {said.message}")
        said.dismiss()

    def opened(who: str) -> Any:
        context = browser.new_context(extra_http_headers=bearer(google, who))
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("dialog", dialog)
        page.set_default_timeout(10_000)
        return page

    yield opened
    for context in contexts:
        context.close()
    assert not errors, errors


def read_until(
    page: Any, shown: Any, kept: tuple[str, FakeGoogle, str, Callable[[dict[str, Any]], bool]]
) -> None:
    """Read the page's filters again (its Read button, as an operator would) once the
    line `shown` stands for is kept (a few seconds after its request), and find it on
    the page. Kept is asked of the API (`kept`: the service, its Google, the line's
    principal and what picks the line out), as an operator waiting for it would."""
    service, google, principal, picked = kept

    def found() -> bool:
        answer = httpx.get(
            f"{service}/v1/access",
            params={"principal": principal, "limit": "500"},
            headers=bearer(google, OPERATOR),
        )
        return any(picked(line["line"]) for line in answer.json()["lines"])

    until_blocking(found, timeout=KEPT_WITHIN, what="the line kept")
    expect(page.locator("#lines[aria-busy]")).to_have_count(0)
    page.locator("#filters button[type=submit]").click()
    expect(page.locator("#lines[aria-busy]")).to_have_count(0)
    expect(shown.first).to_be_visible()


def asking(name: str, value: str) -> Callable[[dict[str, Any]], bool]:
    """Picks out a line whose request asked `name` = `value`."""
    return lambda line: [name, value] in line["parameters"]


def test_an_operator_sees_the_export_a_reader_was_refused(
    service: str, google: FakeGoogle, as_who: Callable[[str], Any]
) -> None:
    reader = as_who(READER)
    reader.goto(f"{service}/console/records")
    expect(reader.locator("#rows tbody tr.row")).to_have_count(1)
    expect(reader.locator("#export")).to_have_count(0)
    expect(reader.locator("button", has_text="Export")).to_have_count(0)
    # The export asked for anyway, at its address.
    refused = reader.evaluate(
        "fetch('../v1/export/records?format=csv&producer=asked-anyway')"
        ".then(async r => [r.status, (await r.json()).type])"
    )
    assert refused == [403, "/problems/export-forbidden"]

    operator = as_who(OPERATOR)
    operator.goto(f"{service}/console/access?action=export&principal={quote(READER)}&since=1h")
    expect(operator.locator("header nav a[aria-current=page]")).to_have_text("Access")
    expect(operator.locator("select[name=action]")).to_have_value("export")
    expect(operator.locator("input[name=principal]")).to_have_value(READER)
    expect(operator.locator("input[name=since]")).to_have_value("1h")
    line = operator.locator("#lines tbody tr.row", has_text="producer=asked-anyway")
    read_until(operator, line, (service, google, READER, asking("producer", "asked-anyway")))
    expect(line).to_have_count(1)
    cells = line.locator("td")
    expect(cells.nth(1)).to_have_text(READER)
    expect(cells.nth(2)).to_have_text("export")
    expect(cells.nth(3)).to_have_text("GET /v1/export/records")
    expect(cells.nth(4)).to_have_text("format=csv producer=asked-anyway")
    expect(cells.nth(5)).to_have_text("403")
    expect(cells.nth(6)).to_have_text("0")
    expect(cells.nth(8)).to_have_text("no")
    # The filters the page read are kept in its address.
    assert "action=export" in operator.url
    assert "since=1h" in operator.url
    # Opened, the line is shown whole.
    line.click()
    expect(operator.locator("tr.detail pre")).to_contain_text('"status": 403')
    # A count serves no rows: its line says what it counted.
    counted = reader.evaluate(
        "fetch('../v1/counts/records?since=1h&where=' + encodeURIComponent('data.n = 0'))"
        ".then(r => r.status)"
    )
    assert counted == 200
    operator.select_option("select[name=action]", "read")
    operator.locator("#filters button[type=submit]").click()
    count = operator.locator("#lines tbody tr.row", has_text="GET /v1/counts/records")
    read_until(
        operator,
        count,
        (service, google, READER, lambda line: line["path"] == "/v1/counts/records"),
    )
    expect(count.locator("td").nth(6)).to_have_text("1 counted")
    # A filter no line meets says so.
    operator.select_option("select[name=action]", "export")
    operator.fill("input[name=principal]", "nobody@example.org")
    operator.press("input[name=principal]", "Enter")
    expect(operator.locator("#lines tbody tr")).to_have_count(0)
    expect(operator.locator("#status")).to_have_text(
        "No line in the access record for these filters yet."
    )
    assert "principal=nobody%40example.org" in operator.url


def test_a_reader_is_shown_no_access_page_and_refused_it(
    service: str, as_who: Callable[[str], Any]
) -> None:
    reader = as_who(READER)
    reader.goto(f"{service}/console/records")
    expect(reader.locator("header nav a")).to_have_text(
        ["Records", "Rejections", "Producers", "Health"]
    )
    answer = reader.goto(f"{service}/console/access")
    assert answer is not None
    assert answer.status == 403
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert answer.json()["type"] == "/problems/forbidden"
    reader.goto(f"{service}/console/records")
    refused = reader.evaluate(
        "fetch('../v1/access').then(async r => [r.status, (await r.json()).type])"
    )
    assert refused == [403, "/problems/forbidden"]
    operator = as_who(OPERATOR)
    operator.goto(f"{service}/console/records")
    expect(operator.locator("header nav a")).to_have_text(
        ["Records", "Rejections", "Dead letters", "Producers", "Access", "Health"]
    )


def test_older_reads_on_by_the_page_s_token(
    service: str, google: FakeGoogle, as_who: Callable[[str], Any]
) -> None:
    """More lines than a page: Older reads the rest by the page's token (the filters
    sent again), each line once, newest first."""
    refusals = 130
    with httpx.Client(base_url=service, headers=bearer(google, FILLER)) as client:
        for n in range(refusals):
            assert client.get(f"/v1/export/records?n={n}").status_code == 403
    operator = as_who(OPERATOR)
    operator.goto(f"{service}/console/access?principal={quote(FILLER)}")
    rows = operator.locator("#lines tbody tr.row")
    newest = operator.locator("#lines tbody tr.row", has_text="n=129")
    read_until(operator, newest, (service, google, FILLER, asking("n", "129")))
    expect(rows).to_have_count(100)
    # The first page is the newest: the last refusal first.
    expect(rows.first.locator("td").nth(4)).to_have_text("n=129")
    more = operator.locator("#more")
    expect(more).to_be_visible()
    # Every refusal is kept once the last is: the lines are kept in the order of their
    # requests, each made once the one before was answered.
    more.click()
    expect(rows).to_have_count(refusals)
    expect(more).to_be_hidden()
    shown = [row.locator("td").nth(4).inner_text() for row in rows.all()]
    assert shown == [f"n={n}" for n in reversed(range(refusals))]
    times = [row.locator("td").first.inner_text() for row in rows.all()]
    assert times == sorted(times, reverse=True)


def test_markup_in_a_line_shows_as_text(
    service: str, google: FakeGoogle, as_who: Callable[[str], Any]
) -> None:
    with httpx.Client(base_url=service) as client:
        # Refused as no reader: a line naming who they proved to be.
        stranger = client.get("/v1/records?marked=1", headers=bearer(google, MARKUP_PRINCIPAL))
        assert stranger.status_code == 403
        # A path and a parameter of the reader's, an export refused.
        path = f"/v1/export/{quote(MARKUP_NAME, safe='')}"
        asked = client.get(path, params={"q": MARKUP_VALUE}, headers=bearer(google, READER))
        assert asked.status_code == 403
    operator = as_who(OPERATOR)
    operator.goto(f"{service}/console/access?principal={quote(MARKUP_PRINCIPAL)}")
    by_stranger = operator.locator("#lines tbody tr.row", has_text="marked=1")
    read_until(operator, by_stranger, (service, google, MARKUP_PRINCIPAL, asking("marked", "1")))
    expect(by_stranger.locator("td").nth(1)).to_have_text(MARKUP_PRINCIPAL.lower())
    expect(by_stranger.locator("td").nth(5)).to_have_text("403")
    assert_text_only(operator)
    operator.goto(f"{service}/console/access?action=export&principal={quote(READER)}")
    with_path = operator.locator("#lines tbody tr.row", has_text=MARKUP_VALUE)
    read_until(operator, with_path, (service, google, READER, asking("q", MARKUP_VALUE)))
    expect(with_path.locator("td").nth(3)).to_have_text(f"GET /v1/export/{MARKUP_NAME}")
    expect(with_path.locator("td").nth(4)).to_have_text(f"q={MARKUP_VALUE}")
    with_path.click()
    expect(operator.locator("tr.detail pre")).to_contain_text(MARKUP_VALUE)
    assert_text_only(operator)


def assert_text_only(page: Any) -> None:
    """Text, not elements: nothing of a line made an image or a script in the table, and
    no handler ran (the page's title is its own; no dialog opened: `as_who`)."""
    expect(page.locator("#lines img, #lines script")).to_have_count(0)
    assert page.title().endswith("Recordline · access"), page.title()
