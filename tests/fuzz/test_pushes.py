"""The fuzzer: generated pushes of every format, on every store, never break anything.

Each example is a few pushes (wrapped and unwrapped; the contract, the
publisher's own JSON shape, and Avro and Protocol Buffers topic schemas in
both encodings), sent to one service that keeps everything earlier examples
stored. After each, the service must have:
- answered every push 204 or 400, never 5xx, and 204 whenever the envelope was
  usable and the payload fit;
- a definite outcome for every acknowledged message at `/v1/messages/{id}`:
  stored when a copy fit, rejected when none did;
- served a follower every stored record exactly once, and every look-up 200;
  at the end a full walk of records and rejections reads everything again.

`python3 dev.py fuzz` runs it for as long as asked; the test run keeps a
small budget (RECORDLINE_FUZZ_EXAMPLES).
"""

from __future__ import annotations

import collections
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.asgi import create_app, fetching_schemas
from app.settings import Settings
from tests.bigquery.conftest import DATASET, PROJECT
from tests.bigquery.threaded import ThreadedBigQuery
from tests.conftest import served_in_thread, unsettled
from tests.fuzz.budget import EXAMPLES
from tests.fuzz.strategies import FORMATS, MAPPED, Push, SchemaRevisions, pushes
from tests.spanner.emulator import SpannerEmulator


def path_id(value: str) -> str:
    """An id as a path segment: every reserved character percent-encoded, and `.` too,
    since clients resolve `.` and `..` segments away (`/v1/messages/.`)."""
    return quote(value, safe="").replace(".", "%2E")


FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# Inputs tried, by store and format: the run's summary prints them.
TRIED: collections.Counter[tuple[str, str]] = collections.Counter()


class Service:
    """One running service and what the fuzzer knows it was told."""

    def __init__(self, name: str, client: httpx.Client) -> None:
        self.name = name
        self.client = client
        # Message id: its outcome so far ("stored" once any copy was a record).
        self.outcomes: dict[str, str] = {}
        self.follower_token: str | None = None
        self.followed: collections.Counter[str] = collections.Counter()

    def push(self, push: Push) -> int:
        headers, body = push.request()
        response = self.client.post("/pubsub/push", content=body, headers=headers)
        TRIED[(self.name, push.fmt)] += 1
        assert response.status_code in (204, 400), (push, response.status_code, response.text)
        if response.status_code == 400:
            assert response.headers["content-type"].startswith("application/problem+json")
        return response.status_code

    def outcome(self, message_id: str) -> dict[str, Any]:
        answer = self.client.get(f"/v1/messages/{path_id(message_id)}")
        assert answer.status_code == 200, (message_id, answer.text)
        status: dict[str, Any] = answer.json()
        return status

    def follow(self) -> None:
        """Read every page that is there now, from where the follower stopped."""
        params: dict[str, Any] = (
            {"page_token": self.follower_token, "limit": 500}
            if self.follower_token
            else {"since": "1970-01-01T00:00:00Z", "limit": 500}
        )
        while True:
            page = self.client.get("/v1/records", params=params)
            assert page.status_code == 200, page.text
            body = page.json()
            for record in body["records"]:
                self.followed[record["message_id"]] += 1
                assert self.followed[record["message_id"]] == 1, f"read twice: {record}"
            self.follower_token = body["next_page_token"]
            params = {"page_token": self.follower_token, "limit": 500}
            if not body["records"]:
                return

    def walk_everything(self) -> None:
        for path in ("/v1/records", "/v1/rejections"):
            params: dict[str, Any] = {"since": "1970-01-01T00:00:00Z", "limit": 1000}
            while True:
                page = self.client.get(path, params=params)
                assert page.status_code == 200, page.text
                body = page.json()
                rows = body.get("records") or body.get("rejections") or []
                for row in rows:
                    assert (
                        self.client.get(f"/v1/messages/{path_id(row['message_id'])}").status_code
                        == 200
                    )
                if not rows:
                    break
                params = {"page_token": body["next_page_token"], "limit": 1000}


@contextlib.contextmanager
def running(name: str, env: dict[str, str]) -> Iterator[Service]:
    config = unsettled(Settings.load(env))  # BigQuery's rows read at once
    app = create_app(config, schemas=fetching_schemas(config, SchemaRevisions()))
    with served_in_thread(app) as client:
        service = Service(name, client)
        yield service
        service.walk_everything()


# The serving tier needs the Spanner emulator.
STORES = ["memory", "duckdb", "bigquery", pytest.param("serving", marks=pytest.mark.emulator)]


@contextlib.contextmanager
def store_env(request: pytest.FixtureRequest, tmp: Path) -> Iterator[dict[str, str]]:
    """Settings of a fresh store of the requested kind (BigQuery: fakes of its own)."""
    match request.param:
        case "memory":
            yield {"RECORDLINE_STORE": "memory:"}
        case "duckdb":
            yield {"RECORDLINE_STORE": f"duckdb:{tmp / 'fuzz.duckdb'}"}
        case kind:
            fakes = ThreadedBigQuery()
            env = {
                "RECORDLINE_STORE": f"bigquery://{PROJECT}/{DATASET}",
                "BIGQUERY_EMULATOR_HOST": fakes.jobs.endpoint,
                "RECORDLINE_BIGQUERY_WRITE_ENDPOINT": fakes.write.address,
            }
            if kind == "serving":
                emulator: SpannerEmulator = request.getfixturevalue("spanner_emulator")
                env |= {
                    "RECORDLINE_SERVING": emulator.database(),
                    "SPANNER_EMULATOR_HOST": emulator.host,
                    "RECORDLINE_EXPORT_IN_SERVICE": "true",
                }
            try:
                yield env
            finally:
                fakes.stop()


@pytest.fixture(scope="module", params=STORES)
def service(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    with (
        store_env(request, tmp_path_factory.mktemp(request.param)) as env,
        running(request.param, env) as service,
    ):
        yield service


@pytest.fixture(scope="module", params=STORES)
def mapped_service(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    mapping = {"RECORDLINE_ID_FIELD": "order.key", "RECORDLINE_TIME_FIELD": "at"}
    with (
        store_env(request, tmp_path_factory.mktemp(f"{request.param}-mapped")) as env,
        running(request.param, env | mapping) as service,
    ):
        yield service


def check(service: Service, batch: list[Push]) -> None:
    answered: list[tuple[Push, int]] = [(push, service.push(push)) for push in batch]
    # The push whose copy of each message is the stored one: the first that fit.
    firsts: dict[str, Push] = {}
    # Messages an earlier copy in this batch left unknown (it may have been stored or
    # rejected): the first copy wins, so no later copy says which.
    unknown: set[str] = set()
    for push, status in answered:
        if push.fits is not None and status == 400:
            # A usable envelope: only the payload was in question.
            raise AssertionError(f"a usable envelope was refused: {push}")
        if status != 204 or push.message_id in unknown:
            continue
        known = service.outcomes.get(push.message_id)
        if push.fits:
            if known != "stored":
                firsts.setdefault(push.message_id, push)
            service.outcomes[push.message_id] = "stored"
        elif push.fits is False:
            service.outcomes.setdefault(push.message_id, "rejected")
        elif known != "stored":
            # It may have been stored: what the service says is taken below.
            service.outcomes.pop(push.message_id, None)
            firsts.pop(push.message_id, None)
            unknown.add(push.message_id)
    for push, status in answered:
        if status != 204:
            continue
        told = service.outcome(push.message_id)
        expected = service.outcomes.get(push.message_id)
        if expected is None:  # the fuzzer made no claim: what the service said stands
            service.outcomes[push.message_id] = told["status"]
        else:
            assert told["status"] == expected, (push, told)
        if told["status"] == "stored":
            service.outcomes[push.message_id] = "stored"
            record = told["record"]
            first = firsts.get(push.message_id)
            if first is push and push.stored_text is not None:
                assert record["data"] == json.loads(push.stored_text), (push, record)
            assert service.client.get(f"/v1/records/{path_id(record['id'])}").status_code == 200
        else:
            assert told["reason"], told
    service.follow()
    stored = {m for m, outcome in service.outcomes.items() if outcome == "stored"}
    assert stored <= set(service.followed), stored - set(service.followed)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", sorted(FORMATS))
@FUZZ
@given(data=st.data())
def test_any_push_of_any_format(service: Service, fmt: str, data: st.DataObject) -> None:
    batch = data.draw(st.lists(pushes({fmt: FORMATS[fmt]}), min_size=1, max_size=3))
    check(service, batch)


@pytest.mark.slow
@FUZZ
@given(batch=st.lists(pushes(MAPPED), min_size=1, max_size=3))
def test_any_push_in_the_publishers_own_shape(mapped_service: Service, batch: list[Push]) -> None:
    check(mapped_service, batch)
