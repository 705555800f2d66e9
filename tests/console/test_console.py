"""The console's pages as the service serves them: every page, its assets from the
package (nothing from the internet), the operator's replay and access record offered to
operators alone, and a page that does not exist a 404 problem."""

from __future__ import annotations

import re
from typing import Any

import pytest
from litestar.testing import AsyncTestClient, TestClient

from app.asgi import create_app
from app.errors import BadParameter
from app.routes.console import OPERATOR_PAGES, PAGES
from app.settings import Settings
from app.store import where
from tests.auth.conftest import google  # noqa: F401 - the fake Google, as a fixture
from tests.auth.fake_google import READ_AUDIENCE, FakeGoogle
from tests.conftest import settings
from tests.fakes import FaultyStore

SECRET = "a-push-secret-long-enough"
OPERATOR = "oncall@example.org"
ANALYST = "analyst@example.org"
STRANGER = "someone@example.org"


@pytest.fixture
def client(store: FaultyStore) -> TestClient:  # type: ignore[type-arg]
    app = create_app(settings(RECORDLINE_PUSH_TOKEN=SECRET), store=store)
    with TestClient(app) as client:
        yield client


@pytest.mark.slow
def test_every_page_loads_only_what_the_service_serves(client: TestClient) -> None:  # type: ignore[type-arg]
    assert client.get("/console", follow_redirects=False).headers["location"] == "console/records"
    # An operator's, who may open every page.
    client.headers["Authorization"] = f"Bearer {SECRET}"
    for page in PAGES:
        answer = client.get(f"/console/{page}")
        assert answer.status_code == 200, answer.text
        sources = re.findall(r'(?:src|href)="([^"]+)"', answer.text)
        assert sources, answer.text
        for source in sources:
            # Relative to the page (so under a cell's prefix too), never another host.
            assert not source.startswith(("/", "http:", "https:")), source
            if not source.startswith("data:"):
                assert client.get(f"/console/{source}").status_code == 200, source


def test_replay_is_offered_to_operators_alone(client: TestClient) -> None:  # type: ignore[type-arg]
    reader = client.get("/console/rejections").text
    operator = client.get("/console/rejections", headers={"Authorization": f"Bearer {SECRET}"}).text
    assert 'id="replay"' not in reader
    assert "Replay is for operators" in reader
    assert 'id="replay"' in operator


def test_the_access_record_is_offered_to_operators_alone() -> None:
    """An operator's navigation links to the access page, after Producers; a reader's
    does not, and the page opened anyway is refused as `/v1/access` refuses them (here,
    where the push secret makes an operator: 401 without it or with another). The
    memory store keeps no access record, so nothing is left to write as the app stops."""
    operator = {"Authorization": f"Bearer {SECRET}"}
    nav = re.compile(r"<nav>(.*?)</nav>", re.S)

    def links(html: str) -> list[str]:
        (found,) = nav.findall(html)
        return re.findall(r'<a href="([^"]+)"', found)

    assert PAGES.index("access") == PAGES.index("producers") + 1
    with TestClient(create_app(settings(RECORDLINE_PUSH_TOKEN=SECRET))) as client:
        assert links(client.get("/console/records", headers=operator).text) == list(PAGES)
        opened = client.get("/console/access", headers=operator)
        assert opened.status_code == 200
        assert '<a href="access" aria-current="page">Access</a>' in opened.text
        for page in set(PAGES) - OPERATOR_PAGES:
            shown = links(client.get(f"/console/{page}").text)
            assert shown == [name for name in PAGES if name not in OPERATOR_PAGES], page
        for page in OPERATOR_PAGES:
            for headers in ({}, {"Authorization": "Bearer not-the-secret"}):
                refused = client.get(f"/console/{page}", headers=headers)
                api = client.get("/v1/access", headers=headers)
                assert refused.status_code == api.status_code == 401, refused.text
                assert refused.json()["type"] == api.json()["type"]
                assert refused.headers["content-type"].startswith("application/problem+json")
                assert_protected(refused.headers)


def test_the_dead_letters_are_offered_to_operators_alone_beside_the_rejections() -> None:
    """The Dead letters page follows Rejections in an operator's navigation, and is
    refused to anyone else as `/v1/dead-letters` refuses them; on the memory store,
    which reads none, the page is served and its API says where they are (404)."""
    operator = {"Authorization": f"Bearer {SECRET}"}
    assert PAGES.index("dead-letters") == PAGES.index("rejections") + 1
    assert "dead-letters" in OPERATOR_PAGES
    with TestClient(create_app(settings(RECORDLINE_PUSH_TOKEN=SECRET))) as client:
        opened = client.get("/console/dead-letters", headers=operator)
        assert opened.status_code == 200
        assert '<a href="dead-letters" aria-current="page">Dead letters</a>' in opened.text
        assert 'id="note"' in opened.text
        assert 'id="replay"' in opened.text
        assert 'href="dead-letters"' not in client.get("/console/rejections").text
        for headers in ({}, {"Authorization": "Bearer not-the-secret"}):
            refused = client.get("/console/dead-letters", headers=headers)
            api = client.get("/v1/dead-letters", headers=headers)
            assert refused.status_code == api.status_code == 401, refused.text
        assert client.get("/v1/dead-letters", headers=operator).status_code == 404


def test_a_page_that_does_not_exist_is_a_404_problem(client: TestClient) -> None:  # type: ignore[type-arg]
    for path in ("/console/secrets", "/console/records/deeper", "/console/static/none.js"):
        answer = client.get(path)
        assert answer.status_code == 404, path
        assert answer.headers["content-type"].startswith("application/problem+json")
        # Still the console's: framed by no other site, never sniffed, never kept.
        assert_protected(answer.headers)
        assert answer.headers["cache-control"] == "no-store"


def test_the_console_with_a_trailing_slash_opens_its_first_page(client: TestClient) -> None:  # type: ignore[type-arg]
    answer = client.get("/console/")
    assert answer.status_code == 200, answer.url
    assert answer.url.path == "/console/records"


def assert_protected(headers: Any) -> None:
    assert headers["content-security-policy"].startswith("default-src 'self';")
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY"
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "same-origin"


@pytest.mark.slow
async def test_the_console_obeys_the_read_rules(google: FakeGoogle) -> None:  # noqa: F811
    """With read authentication, the console is closed to a caller without a reader's
    token (401) or with another's (403), as the read API is; an analyst reads it
    without the replay or the access record, an operator with them."""
    app = create_app(
        Settings.load(
            {
                "RECORDLINE_STORE": "memory:",
                "RECORDLINE_PUSH_TOKEN": "a-long-enough-push-secret",
                "RECORDLINE_READ_AUDIENCE": READ_AUDIENCE,
                "RECORDLINE_READ_PRINCIPALS": f"{ANALYST},{OPERATOR}",
                "RECORDLINE_OPERATOR_PRINCIPALS": OPERATOR,
                "RECORDLINE_OIDC_CERTS_URL": google.certs_url,
            }
        )
    )

    def bearer(email: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {google.mint(aud=READ_AUDIENCE, email=email)}"}

    async with AsyncTestClient(app) as client:
        for path in ("/console/records", "/console/static/console.js"):
            refused = await client.get(path)
            assert refused.status_code == 401, path
            assert_protected(refused.headers)
            assert (await client.get(path, headers=bearer(STRANGER))).status_code == 403
        analyst = await client.get("/console/rejections", headers=bearer(ANALYST))
        assert analyst.status_code == 200
        assert 'id="replay"' not in analyst.text
        operator = await client.get("/console/rejections", headers=bearer(OPERATOR))
        assert 'id="replay"' in operator.text
        # The access record is an operator's: the analyst is refused it, 403, as its API.
        for path in ("/console/access", "/v1/access"):
            refused = await client.get(path, headers=bearer(ANALYST))
            assert refused.status_code == 403, path
            assert refused.json()["type"] == "/problems/forbidden"
        assert (await client.get("/console/access", headers=bearer(OPERATOR))).status_code == 200


def test_every_page_and_asset_is_sent_with_the_browser_s_protections(client: TestClient) -> None:  # type: ignore[type-arg]
    # Its own scripts only, in no other site's frame, never sniffed, its address kept.
    page = client.get("/console/records")
    sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    for answer in [page, *(client.get(f"/console/{s}") for s in sources if s != "data:,")]:
        assert answer.status_code == 200
        assert_protected(answer.headers)
    # Nothing inline a policy of the page's own files would refuse.
    assert not re.search(r"<script(?![^>]*\bsrc=)|<style|\sstyle=|\son[a-z]+=", page.text)


@pytest.mark.parametrize("page", ["records", "rejections"])
def test_the_where_box_offers_the_operands_its_list_takes(client: TestClient, page: str) -> None:  # type: ignore[type-arg]
    """The Records and Rejections pages each have a `where` box whose suggestions are
    exactly the operands the filter language takes on that list."""
    html = client.get(f"/console/{page}").text
    (box,) = re.findall(r"<input name=\"where\"[^>]*>", html)
    assert 'list="where-operands"' in box
    (options,) = re.findall(r'<datalist id="where-operands">(.*?)</datalist>', html)
    offered = re.findall(r'<option value="([^"]+)">', options)

    def taken(root: str) -> bool:
        operand = f"{root}.k" if root in ("data", "attributes") else root
        try:
            where.parse(f"EXISTS {operand}", page)
        except BadParameter:
            return False
        return True

    assert len(offered) == len(set(offered))
    assert {o.removesuffix(".") for o in offered} == set(filter(taken, where.ROOTS))
    # Those with members are offered as the start of a path.
    assert {o for o in offered if o.endswith(".")} <= {"data.", "attributes."}
