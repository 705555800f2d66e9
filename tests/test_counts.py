"""`/v1/counts/records` and `/v1/counts/rejections`: how many rows a list's filters keep,
per bucket of time, through the API: the same rows a walk of the list's pages meets,
every bucket of `[since, until)` answered, bad parameters a 400 naming the parameter,
an age and the default `until` read from one moment."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from litestar import Litestar

from app.asgi import create_app
from app.records import micros
from app.store import MAX_BUCKETS
from tests.conftest import served, settings
from tests.fakes import FaultyStore
from tests.test_filters import pushed, walk
from tests.waiting import until

RECORDS, REJECTIONS = "/v1/counts/records", "/v1/counts/rejections"


@pytest.fixture
def app(store: FaultyStore) -> Litestar:
    return create_app(settings(RECORDLINE_RETENTION_DAYS="30"), store=store)


@pytest.fixture
async def client(app: Litestar) -> AsyncIterator[httpx.AsyncClient]:
    async with served(app) as client:
        yield client


def moment(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def check_shape(answer: httpx.Response, buckets: int) -> dict[str, Any]:
    """The answer's body, held to what every count promises."""
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    assert set(body) == {"since", "until", "width_seconds", "total", "counts", "complete_until"}
    since, until = moment(body["since"]), moment(body["until"])
    width = timedelta(seconds=body["width_seconds"])
    assert len(body["counts"]) == buckets
    assert sum(body["counts"]) == body["total"]
    # `buckets` of one width from `since`, the last one reaching `until`.
    assert since + (buckets - 1) * width < until <= since + buckets * width
    assert since <= moment(body["complete_until"]) <= until
    return body


@pytest.mark.slow
@pytest.mark.parametrize(
    "params",
    [
        {},
        {"attribute": "colour:red"},
        {"producer": "p1", "attribute": "a.b:plain"},
        {"record_id": "r-2"},
        {"where": "data > 10 OR attributes.colour = 'red'"},
        {"where": "data >= 4 AND data < 7", "message_id": "m-005"},
    ],
)
async def test_a_count_totals_what_the_list_walks_with_the_same_filters(
    client: httpx.AsyncClient, params: dict[str, Any]
) -> None:
    await pushed(client, range(16))
    await pushed(client, range(16, 19), valid=False)  # rejections, beside the records
    listed = await walk(client, "/v1/records", {**params, "limit": 5}, "records")
    answer = await client.get(RECORDS, params={**params, "since": "1h", "buckets": 12})
    body = check_shape(answer, 12)
    assert body["total"] == len(listed)
    # Stored a moment ago: in the last bucket (or the one before, at its edge).
    assert sum(body["counts"][-2:]) == len(listed)
    # An hour in twelve buckets from one moment: five minutes each, exactly.
    assert body["width_seconds"] == 300
    assert moment(body["until"]) - moment(body["since"]) == timedelta(hours=1)
    if "record_id" not in params and "data" not in params.get("where", ""):
        refused = await walk(client, "/v1/rejections", {**params, "limit": 5}, "rejections")
        rejected = await client.get(REJECTIONS, params={**params, "since": "1h"})
        assert check_shape(rejected, 60)["total"] == len(refused)


@pytest.mark.slow
async def test_buckets_are_cut_from_since_and_nothing_after_until_is_counted(
    client: httpx.AsyncClient,
) -> None:
    await pushed(client, range(6))
    page = (await client.get("/v1/records", params={"limit": 100})).json()
    times = [moment(r["ingest_time"]) for r in page["records"]]
    # A bucket of a microsecond each for the first rows: each in its own place.
    since = times[0]
    until = since + timedelta(microseconds=MAX_BUCKETS)
    answer = await client.get(
        RECORDS,
        params={"since": since.isoformat(), "until": until.isoformat(), "buckets": MAX_BUCKETS},
    )
    body = check_shape(answer, MAX_BUCKETS)
    assert body["width_seconds"] == 1e-6
    want = [0] * MAX_BUCKETS
    for at in times:
        if at < until:
            want[micros(at) - micros(since)] += 1
    assert body["counts"] == want
    assert body["complete_until"] == body["until"]  # long past: complete
    # A range that ends before the rows counts none of them.
    earlier = {"since": "2h", "until": since.isoformat(), "buckets": 7}
    assert check_shape(await client.get(RECORDS, params=earlier), 7)["total"] == 0
    # A range reaching into the future is complete up to the read horizon, no further.
    ahead = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    body = check_shape(await client.get(RECORDS, params={"since": "1h", "until": ahead}), 60)
    assert body["total"] == 6
    assert moment(body["complete_until"]) < moment(body["until"])
    assert sum(body["counts"][30:]) == 0


@pytest.mark.parametrize(
    ("path", "params", "parameter"),
    [
        (RECORDS, {}, "since"),
        (RECORDS, {"since": "yesterday"}, "since"),
        (RECORDS, {"since": ""}, "since"),
        (RECORDS, {"since": "1h", "until": "2h"}, "until"),
        (RECORDS, {"since": "2999-01-01T00:00:00Z"}, "since"),
        (RECORDS, {"since": "1h", "buckets": "0"}, "buckets"),
        (RECORDS, {"since": "1h", "buckets": str(MAX_BUCKETS + 1)}, "buckets"),
        (RECORDS, {"since": "1h", "buckets": "many"}, "buckets"),
        (RECORDS, {"since": "1h", "limit": "5"}, "limit"),
        (RECORDS, {"since": "1h", "page_token": "x"}, "page_token"),
        (RECORDS, {"since": "1h", "attribute": "no-colon"}, "attribute"),
        (RECORDS, {"since": "1h", "where": "data >"}, "where"),
        (RECORDS, {"since": "1h", "where": "reason = 'x'"}, "where"),
        (RECORDS, {"since": "1h", "field": "amount:5"}, "field"),
        (REJECTIONS, {"since": "1h", "record_id": "r-1"}, "record_id"),
        (REJECTIONS, {"since": "1h", "field": "amount:5"}, "field"),
        (REJECTIONS, {"since": "1h", "where": "data.n = 1"}, "where"),
    ],
)
async def test_a_bad_parameter_is_a_400_naming_it(
    client: httpx.AsyncClient, path: str, params: dict[str, str], parameter: str
) -> None:
    answer = await client.get(path, params=params)
    assert answer.status_code == 400, answer.text
    assert answer.json()["type"] == "/problems/invalid-parameter"
    assert answer.json()["parameter"] == parameter


@pytest.mark.parametrize("path", [RECORDS, REJECTIONS])
async def test_a_count_is_checked_as_a_page_is(client: httpx.AsyncClient, path: str) -> None:
    # Given twice, older than the retention, a store that does not answer.
    twice = await client.get(f"{path}?since=1h&buckets=5&buckets=7")
    assert (twice.status_code, twice.json()["parameter"]) == (400, "buckets")
    gone = await client.get(path, params={"since": "2001-01-01T00:00:00Z"})
    assert (gone.status_code, gone.json()["parameter"]) == (410, "since")
    assert gone.json()["retention_days"] == 30
    # A range wholly before the epoch holds no time a row is stored at.
    before = {"since": "1900-01-01T00:00:00Z", "until": "1960-01-01T00:00:00Z"}
    assert (await client.get(path, params=before)).status_code == 410


async def test_a_store_that_does_not_answer_is_a_503(
    client: httpx.AsyncClient, store: FaultyStore
) -> None:
    store.failing_reads = True
    answer = await client.get(RECORDS, params={"since": "1h", "where": "EXISTS data.x"})
    assert answer.status_code == 503
    assert answer.json()["type"] == "/problems/store-unavailable"


async def test_a_range_before_the_epoch_counts_from_it(store: FaultyStore) -> None:
    async with served(create_app(settings(), store=store)) as client:
        await pushed(client, range(3))
        before = {"since": "1900-01-01T00:00:00Z", "until": "1960-01-01T00:00:00Z"}
        body = (await client.get(RECORDS, params=before)).json()
        assert (body["since"], body["until"], body["counts"]) == (
            "1970-01-01T00:00:00Z",
            "1970-01-01T00:00:00Z",
            [],
        )
        everything = {"since": "0001-01-01T00:00:00Z", "buckets": 3}

        async def counted() -> dict[str, Any] | None:
            # A row is counted once the readable horizon has passed it (`complete_until`),
            # which on the serving tier may be a moment after its push was answered.
            body = check_shape(await client.get(RECORDS, params=everything), 3)
            return body if body["total"] == 3 else None

        body = await until(counted, what="the three rows pushed to be counted")
        assert (body["since"], body["counts"], body["total"]) == (
            "1970-01-01T00:00:00Z",
            [0, 0, 3],
            3,
        )
