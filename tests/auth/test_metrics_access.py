"""`/metrics` is anyone's on a loopback service, who could read its files as well; beyond
loopback, an operator's alone, as a replay is (their ID tokens, or the push secret where
that is the setup), and no one's where no operator can be told, said at start. A cell's
holds every system's figures: beyond loopback it answers no one."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from litestar.testing import TestClient

from app.asgi import create_app
from app.auth.guards import METRICS_REFUSAL
from app.cell.root import CELL_METRICS_REFUSAL
from app.settings import Settings
from tests.auth.fake_google import PUSH_AUDIENCE, PUSHER, READ_AUDIENCE, FakeGoogle
from tests.auth.test_export_permission import ANALYST, OPERATOR, token
from tests.auth.test_export_permission import settings as google_settings
from tests.cell.test_cell import SYSTEMS, Stores, cell_of

SECRET = "a-push-secret-long-enough"
# What a service beyond loopback needs besides its authentication.
BEYOND = {"RECORDLINE_HOST": "0.0.0.0", "RECORDLINE_PAGE_TOKEN_SECRET": "k" * 32}


@pytest.fixture(scope="module")
def google() -> Iterator[FakeGoogle]:
    fake = FakeGoogle().start()
    yield fake
    fake.stop()


def scraped(client: TestClient[Any], **headers: str) -> tuple[int, str]:
    answer = client.get("/metrics", headers=headers)
    return answer.status_code, answer.text


def test_on_loopback_the_scrape_needs_no_token(google: FakeGoogle) -> None:
    with TestClient(create_app(google_settings(google))) as client:
        status, text = scraped(client)
    assert status == 200
    assert "recordline_" in text


def test_beyond_loopback_only_an_operator_s_token_is_answered(google: FakeGoogle) -> None:
    with TestClient(create_app(google_settings(google, **BEYOND))) as client:
        nobody, _ = scraped(client)
        reader, said = scraped(client, **token(google, ANALYST))
        pusher, _ = scraped(client, **token(google, PUSHER))
        operator, text = scraped(client, **token(google, OPERATOR))
    # A push token names another audience: not a token for this at all.
    assert (nobody, reader, pusher, operator) == (401, 403, 401, 200)
    assert "may not read /metrics" in said
    assert "recordline_" in text


def test_beyond_loopback_the_push_secret_is_the_operator_s_where_that_is_the_setup() -> None:
    settings = Settings.load(
        {
            "RECORDLINE_STORE": "memory:",
            **BEYOND,
            "RECORDLINE_PUSH_TOKEN": SECRET,
            "RECORDLINE_PUBLIC_READS": "true",
        }
    )
    with TestClient(create_app(settings)) as client:
        nobody, said = scraped(client)
        wrong, _ = scraped(client, authorization="Bearer not-the-secret")
        holder, text = scraped(client, authorization=f"Bearer {SECRET}")
    assert (nobody, wrong, holder) == (401, 401, 200)
    assert "RECORDLINE_PUSH_TOKEN" in said
    assert "recordline_" in text


def test_beyond_loopback_with_no_operator_to_tell_it_answers_no_one_and_says_so_at_start(
    google: FakeGoogle, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings.load(
        {
            "RECORDLINE_STORE": "memory:",
            **BEYOND,
            "RECORDLINE_PUSH_AUDIENCE": PUSH_AUDIENCE,
            "RECORDLINE_PUSH_SERVICE_ACCOUNTS": PUSHER,
            "RECORDLINE_OIDC_CERTS_URL": google.certs_url,
            "RECORDLINE_PUBLIC_READS": "true",
        }
    )
    with caplog.at_level(logging.WARNING):
        app = create_app(settings)
    assert any(METRICS_REFUSAL in r.getMessage() for r in caplog.records)
    with TestClient(app) as client:
        status, said = scraped(client, **token(google, PUSHER))
        reads = client.get("/v1/records").status_code
    assert status == 403
    assert "OTEL_METRICS_EXPORTER=gcp_monitoring" in said
    assert reads == 200  # reads are public here: only the scrape is an operator's


def test_a_cell_s_scrape_beyond_loopback_answers_no_one(
    google: FakeGoogle, caplog: pytest.LogCaptureFixture
) -> None:
    systems = {
        name: {
            "store": "memory:",
            "push_audience": f"{PUSH_AUDIENCE}/{name}",
            "push_service_accounts": PUSHER,
            "read_principals": OPERATOR,
            "operator_principals": OPERATOR,
        }
        for name in SYSTEMS
    }
    with caplog.at_level(logging.WARNING):
        cell = cell_of(
            Stores(),
            systems,
            RECORDLINE_READ_AUDIENCE=READ_AUDIENCE,
            RECORDLINE_OIDC_CERTS_URL=google.certs_url,
            **BEYOND,
        )
    assert any(CELL_METRICS_REFUSAL in r.getMessage() for r in caplog.records)
    with TestClient(cell) as client:
        # Not even a system's operator: the cell's figures are every system's.
        status, said = scraped(client, **token(google, OPERATOR))
        ready = client.get("/readyz").json()
        documented = documented_statuses(client)
    assert status == 403
    assert "every system's" in said
    assert ready == {"status": "ready", "not_ready": {}}
    assert documented == {"200", "403"}


def documented_statuses(client: TestClient[Any], path: str = "/docs/openapi.json") -> set[str]:
    """The statuses the API document gives `/metrics`."""
    return set(client.get(path).json()["paths"]["/metrics"]["get"]["responses"])


def test_the_api_document_gives_the_scrape_s_refusals_where_it_has_any(
    google: FakeGoogle,
) -> None:
    with TestClient(create_app(google_settings(google))) as client:
        on_loopback = documented_statuses(client)
    with TestClient(create_app(google_settings(google, **BEYOND))) as client:
        beyond = documented_statuses(client)
    assert on_loopback == {"200"}
    assert beyond == {"200", "401", "403", "503"}


def test_the_api_document_gives_the_scrape_only_the_refusals_its_setup_can_answer(
    google: FakeGoogle,
) -> None:
    # The push secret as the operator's: a missing or wrong token is all it refuses.
    secret = Settings.load(
        {
            "RECORDLINE_STORE": "memory:",
            **BEYOND,
            "RECORDLINE_PUSH_TOKEN": SECRET,
            "RECORDLINE_PUBLIC_READS": "true",
        }
    )
    # No operator to tell: everyone is refused, with a 403.
    no_one = Settings.load(
        {
            "RECORDLINE_STORE": "memory:",
            **BEYOND,
            "RECORDLINE_PUSH_AUDIENCE": PUSH_AUDIENCE,
            "RECORDLINE_PUSH_SERVICE_ACCOUNTS": PUSHER,
            "RECORDLINE_OIDC_CERTS_URL": google.certs_url,
            "RECORDLINE_PUBLIC_READS": "true",
        }
    )
    with TestClient(create_app(secret)) as client:
        by_secret = documented_statuses(client)
    with TestClient(create_app(no_one)) as client:
        refused = documented_statuses(client)
    assert by_secret == {"200", "401"}
    assert refused == {"200", "403"}
