"""`recordline tail` against a service that answers as it likes, and over a token's life."""

from __future__ import annotations

import argparse
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import msgspec
import pytest

from app.commands import tail
from app.commands.tail import FollowError, follow
from app.commands.target import Target
from tests.conftest import settings


class _Expiring(BaseHTTPRequestHandler):
    """GET /v1/records: a page that goes on, then the last one; the first token is
    refused (401) once the first page is served, as an ID token is after its hour."""

    seen: list[str | None] = []

    def do_GET(self) -> None:
        authorization = self.headers.get("Authorization")
        self.seen.append(authorization)
        if len(self.seen) == 1:
            self._answer(200, {"records": [], "next_page_token": "after-1"})
        elif authorization == "Bearer minted-first":
            self._answer(401, {"status": 401, "detail": "the token expired"})
        else:
            self._answer(200, {"records": [{"ingest_time": "2026-01-01T00:00:00Z"}]})

    def _answer(self, status: int, body: object) -> None:
        data = msgspec.json.encode(body)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def expiring_service() -> Iterator[str]:
    _Expiring.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Expiring)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_tail_that_outlives_its_id_token_reads_on_with_a_new_one(
    expiring_service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Proves: `tail` asks its target for a token once, at the start. In a cell's job
    # (RECORDLINE_URL and RECORDLINE_READ_AUDIENCE) the target mints ID tokens that
    # last an hour and are minted again once expired (`IdTokens`), as `replay` asks
    # for one per request; a tail runs for hours, and is refused 401 (exit 1) at the
    # first request after its token's hour.
    minted = iter(["minted-first", "minted-again", "minted-again", "minted-again"])
    monkeypatch.setattr(
        tail,
        "service_target",
        lambda *_, **__: Target(expiring_service, lambda: next(minted)),
    )
    args = argparse.Namespace(
        system=None, url=None, token=None, since="2026-01-01T00:00:00Z", page_token=None, wait=5.0
    )
    assert tail.run(args, settings()) == 0
    assert _Expiring.seen[-1] == "Bearer minted-again"


@pytest.mark.parametrize(
    "answer",
    [
        # Cloud Run's answer to http:// (it serves https only): `--url http://…run.app`.
        httpx.Response(302, headers={"Location": "https://svc.example/v1/records"}),
        # A proxy's sign-in page (IAP, a captive portal) answered 200.
        httpx.Response(200, text="<html>Sign in</html>"),
        httpx.Response(200, json={"records": "not a list"}),
    ],
    ids=["redirect", "html", "not-a-page"],
)
async def test_an_answer_that_is_no_page_is_said_in_one_line(answer: httpx.Response) -> None:
    # Proves: a 2xx or 3xx that is not a page of records ends `tail` in msgspec's
    # DecodeError/ValidationError (a traceback from `recordline tail`), not in a
    # FollowError naming what the service answered, as a 4xx is.
    transport = httpx.MockTransport(lambda request: answer)
    async with httpx.AsyncClient(base_url="http://svc.example", transport=transport) as http:
        with pytest.raises(FollowError):
            async for _ in follow(http, since="2026-01-01T00:00:00Z"):
                pass


def test_what_a_stopped_tail_says_holds_no_control_character_a_server_sent() -> None:
    # Proves: the page token a stopped tail prints (new with --page-token) is the
    # service's text as it sent it, escapes decoded: a hostile service (or one a
    # careless --url names) writes ESC sequences to the operator's terminal (a
    # window title, OSC 52 into the clipboard) with the line "--page-token … goes on".
    hostile = "tok\x1b]52;c;Y3VybCBldmlsfHNo\x07\x1b[2J"
    said = tail.Tailed(records=1, last_ingest_time="2026-01-01T00:00:00Z", read_on=hostile)
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in said.summary())
