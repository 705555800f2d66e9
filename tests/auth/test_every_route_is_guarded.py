"""Every route refuses a caller without a token, unless it is on the allow-list.

The list is read from the assembled app, not written down twice: a route added
by any feature and not put behind a guard in `create_app` fails here.
"""

from __future__ import annotations

import re

from litestar.routes import HTTPRoute
from litestar.testing import AsyncTestClient

from app.asgi import create_app
from app.http.head import Recordline
from app.settings import Settings
from tests.auth.fake_google import PUSH_AUDIENCE, PUSHER, READ_AUDIENCE, FakeGoogle

# Open by design: probes, the scrape, the documents that describe the API and
# its problem types. Nothing here reads or writes a record.
ALLOWED = {
    "/healthz",
    "/readyz",
    "/metrics",
    "/problems/{name:str}",
    "/docs",
    "/docs/swagger",
    "/docs/oauth2-redirect.html",
    "/docs/{path:str}",
    "/docs/openapi.json",
    # The docs page's own scripts and styles (app/docs_ui/).
    "/docs/ui/{file_path:path}",
}


def guarded_app(google: FakeGoogle) -> Recordline:
    settings = Settings.load(
        {
            "RECORDLINE_STORE": "memory:",
            "RECORDLINE_PUSH_AUDIENCE": PUSH_AUDIENCE,
            "RECORDLINE_PUSH_SERVICE_ACCOUNTS": PUSHER,
            "RECORDLINE_READ_AUDIENCE": READ_AUDIENCE,
            "RECORDLINE_READ_PRINCIPALS": "analyst@example.org",
            "RECORDLINE_OPERATOR_PRINCIPALS": "oncall@example.org",
            "RECORDLINE_OIDC_CERTS_URL": google.certs_url,
            "OTEL_METRICS_EXPORTER": "prometheus",
        }
    )
    return create_app(settings)


async def test_every_route_off_the_allow_list_refuses_a_request_without_a_token(
    google: FakeGoogle,
) -> None:
    app = guarded_app(google)
    routes = [r for r in app.litestar.routes if isinstance(r, HTTPRoute)]
    paths = {r.path for r in routes}
    assert paths >= ALLOWED, f"allow-listed routes that no longer exist: {ALLOWED - paths}"
    checked = []
    async with AsyncTestClient(app) as client:
        for route in routes:
            if route.path in ALLOWED:
                continue
            url = re.sub(r"\{[^}]+\}", "some-id", route.path)
            # OPTIONS is Litestar's own answer to a CORS preflight: headers only.
            methods = route.methods - {"OPTIONS", "HEAD"}
            # HEAD is answered wherever GET is, behind the same guards.
            if "GET" in methods:
                methods |= {"HEAD"}
            for method in sorted(methods):
                answer = await client.request(method, url, content=b"{}")
                assert answer.status_code == 401, (method, route.path, answer.status_code)
                assert answer.headers["www-authenticate"].startswith("Bearer")
                checked.append((method, route.path))
    assert len(checked) >= 10  # push, four reads and their HEADs, replay
