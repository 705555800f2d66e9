"""A push a browser sends for a page of another site, where the page has the push token."""

from __future__ import annotations

import json

from app.asgi import create_app
from tests.conftest import envelope, served, settings

SECRET = "dev-stack-secret-0123456789"
# What a page's `fetch(url, {method: "POST", mode: "no-cors", body})` or a form sends: no
# preflight for either (text/plain), and the browser says whose page asked.
FROM_ANOTHER_SITE = {
    "content-type": "text/plain;charset=UTF-8",
    "origin": "http://attacker.example",
    "sec-fetch-site": "cross-site",
    "sec-fetch-mode": "no-cors",
}


async def test_a_wrapped_push_a_page_of_another_site_sends_with_the_token_is_refused() -> None:
    # Proves: since "an authenticated push is never judged as a browser's", a wrapped
    # push is judged by its ?token= alone, and a page that has it (the dev stack's
    # emulator hands it to any page: tests/e2e/test_dev_stack_from_another_site.py)
    # writes through the reader's browser; before, `same_origin` refused it 403. A
    # wrapped push carries its attributes in its body, never in headers, so judging it
    # by what a browser says refuses no publisher's message: only the unwrapped one
    # needed sparing, and it already is (x-goog-pubsub-message-id).
    app = create_app(settings(RECORDLINE_PUSH_TOKEN=SECRET))
    async with served(app) as client:
        body = json.dumps(envelope({"id": "forged"}, message_id="forged-1"))
        answer = await client.post(
            f"/pubsub/push?token={SECRET}", content=body, headers=FROM_ANOTHER_SITE
        )
        assert answer.status_code == 403, answer.text
        assert (await client.get("/v1/records/forged")).status_code == 404
