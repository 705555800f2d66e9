"""What a page of another site, open in a browser beside the dev stack, can do to it
through the Pub/Sub emulator (`recordline dev` runs it on 127.0.0.1, port 8085 by default,
with the fixed project `recordline-dev` and topic `records`)."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import pytest

from app.asgi import create_app
from recordline_dev.devstack import Emulator
from tests.conftest import served, settings
from tests.e2e.conftest import PUSH_TOKEN, Wiring
from tests.waiting import until

pytestmark = pytest.mark.emulator

ATTACKER = "http://attacker.example"


def consents(answer: httpx.Response) -> bool:
    """Whether a CORS preflight's answer lets a page of ATTACKER send the request."""
    return answer.headers.get("access-control-allow-origin") in ("*", ATTACKER)


async def test_a_page_of_another_site_cannot_publish_into_the_dev_stack(
    wiring: Wiring, emulator: Emulator
) -> None:
    # Proves: the emulator's REST API answers any origin's preflight with its consent
    # (Access-Control-Allow-Origin: the page's own, with credentials), so a page the
    # developer opens publishes `application/json` to the dev stack's topic, the
    # emulator pushes it with the service's own ?token=, and the record is stored: the
    # service's browser guards (Sec-Fetch-Site, Origin, x-goog-pubsub-message-id) never
    # see the page. Nothing in docs/dev-stack.md or docs/security.md says so.
    publish = f"http://{emulator.host}/v1/{wiring.topic_path}:publish"
    async with served(create_app(settings(RECORDLINE_PUSH_TOKEN=PUSH_TOKEN))) as http:
        await wiring.connect(str(http.base_url).rstrip("/"))
        async with httpx.AsyncClient() as browser:
            preflight = await browser.options(
                publish,
                headers={
                    "origin": ATTACKER,
                    "access-control-request-method": "POST",
                    "access-control-request-headers": "content-type",
                },
            )
            stored: Any = None
            if consents(preflight):
                # What the browser sends once the preflight consented.
                data = base64.b64encode(b'{"id": "from-another-site"}').decode()
                sent = await browser.post(
                    publish,
                    json={"messages": [{"data": data}]},
                    headers={"origin": ATTACKER, "sec-fetch-site": "cross-site"},
                )
                assert sent.status_code == 200, sent.text

                async def found() -> Any:
                    answer = await http.get("/v1/records/from-another-site")
                    return answer.json() if answer.status_code == 200 else None

                stored = await until(found, timeout=30, interval=0.2, what="the record")
    assert not consents(preflight), f"{dict(preflight.headers)}; stored: {stored}"


async def test_a_page_of_another_site_cannot_read_the_push_token_from_the_emulator(
    wiring: Wiring, emulator: Emulator
) -> None:
    # Proves: the push subscription, with its endpoint's ?token= (RECORDLINE_PUSH_TOKEN,
    # which is also replay's bearer secret on the dev stack), is readable by a page of
    # any site: the emulator answers its GET with Access-Control-Allow-Origin naming
    # the page. A page that has the token passes the push guard, which since
    # "an authenticated push is never judged as a browser's" no longer looks at what
    # the browser says (tests/test_push_from_another_site.py).
    async with served(create_app(settings(RECORDLINE_PUSH_TOKEN=PUSH_TOKEN))) as http:
        await wiring.connect(str(http.base_url).rstrip("/"))
    async with httpx.AsyncClient() as browser:
        answer = await browser.get(
            f"http://{emulator.host}/v1/{wiring.push_subscription}",
            headers={"origin": ATTACKER, "sec-fetch-site": "cross-site"},
        )
    readable = consents(answer) and PUSH_TOKEN in answer.text
    assert not readable, answer.text
