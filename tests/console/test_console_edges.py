"""Paths and methods under /console that the console's own tests do not send."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from litestar.testing import TestClient

from app.asgi import create_app
from app.http.head import Recordline
from tests.conftest import settings
from tests.console.test_console import assert_protected


@pytest.fixture
def client() -> Iterator[TestClient[Recordline]]:
    # Loopback, no authentication: the console opens for anyone who reaches it (as it
    # does with RECORDLINE_PUBLIC_READS anywhere).
    with TestClient(create_app(settings())) as client:
        yield client


@pytest.mark.parametrize("path", ["/console/static/%00", "/console/static/app%00.js"])
def test_an_asset_path_with_a_nul_is_a_404_not_a_500(
    client: TestClient[Recordline], path: str
) -> None:
    # Proves: Litestar's static files router hands the path to the file system, whose
    # "embedded null byte" ValueError is answered 500 and logged as an unexpected
    # error: a 5xx anyone who may open the console can cause at will.
    answer = client.get(path)
    assert answer.status_code == 404, answer.text


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/console/static"),
        ("GET", "/console/static/"),
        ("POST", "/console/records"),
        ("PUT", "/console"),
        ("PUT", "/console/static/console.js"),
        ("DELETE", "/console/records/x"),
    ],
)
def test_every_answer_under_the_console_carries_its_protections(
    client: TestClient[Recordline], method: str, path: str
) -> None:
    # Proves: the promise "every answer under /console carries the console's security
    # headers, its 401s and 404s too" holds only for what reaches a console route;
    # what the router refuses itself (a 404 at /console/static, a 405 for a method
    # no console route takes) is answered by the app's handler, without them.
    answer = client.request(method, path)
    assert answer.status_code in (404, 405), answer.text
    assert_protected(answer.headers)
