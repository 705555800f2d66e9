"""A message id used twice for different content is never stored silently: the first
copy stays, the push is acknowledged (retrying could never store it), and the conflict
is logged and counted, on every store that sees copies as it writes them."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from litestar.testing import TestClient

from app.asgi import create_app
from app.http.head import Recordline
from app.records import Record, Rejection
from app.store import Store
from app.store.duckdb.store import DuckDBStore
from tests.bigquery.threaded import ThreadedBigQuery, serving_store
from tests.conftest import envelope, settings
from tests.spanner.emulator import SpannerEmulator
from tests.telemetry.conftest import Observed

FIRST = {"id": "order-1", "data": {"total": 10}}


@pytest.fixture(
    params=["memory", "duckdb-file", pytest.param("serving", marks=pytest.mark.emulator)]
)
def conflicted(
    request: pytest.FixtureRequest, observed: Observed, tmp_path: Path
) -> Iterator[TestClient[Recordline]]:
    conflicts = observed.telemetry.conflicts()
    store: Store
    match request.param:
        case "memory":
            store = DuckDBStore(":memory:", conflicts=conflicts)
        case "duckdb-file":
            store = DuckDBStore(str(tmp_path / "records.duckdb"), conflicts=conflicts)
        case _:
            emulator: SpannerEmulator = request.getfixturevalue("spanner_emulator")
            bigquery: ThreadedBigQuery = request.getfixturevalue("threaded_bigquery")
            store = serving_store(emulator.database(), emulator.host, bigquery, conflicts=conflicts)
    app = create_app(settings(), store=store, telemetry=observed.telemetry)
    with TestClient(app) as client:
        yield client


def conflicts(observed: Observed) -> dict[str, float]:
    return {
        point.attributes["reason"]: point.value for point in observed.points("recordline.conflicts")
    }


@pytest.mark.slow
def test_a_redelivery_is_no_conflict(
    conflicted: TestClient[Recordline], observed: Observed, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        for attempt in (1, 2, 3):
            again = envelope(FIRST, message_id="m-1", deliveryAttempt=attempt)
            assert conflicted.post("/pubsub/push", json=again).status_code == 204
        assert conflicted.get("/v1/messages/m-1").json()["status"] == "stored"
    assert conflicts(observed) == {}
    assert not [r for r in caplog.records if "later copy differs" in r.getMessage()]


def test_a_message_id_used_again_for_other_content_is_logged_and_counted(
    conflicted: TestClient[Recordline], observed: Observed, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        pushes = [
            envelope(FIRST, message_id="m-1"),
            envelope({"id": "order-1", "data": {"total": 99}}, message_id="m-1"),
            envelope(FIRST, message_id="m-1", attributes={"origin": "elsewhere"}),
            envelope({"id": "order-2", "data": {"total": 10}}, message_id="m-1"),
            # Rejections conflict too: the raw bytes differ.
            envelope(["not", "a", "record"], message_id="m-2"),
            envelope(["something", "else"], message_id="m-2"),
        ]
        # Acknowledged: the id is taken, so no retry could ever store the later ones.
        assert [conflicted.post("/pubsub/push", json=p).status_code for p in pushes] == [204] * 6
        kept = conflicted.get("/v1/messages/m-1").json()["record"]

    assert (kept["id"], kept["data"], kept["attributes"]) == ("order-1", {"total": 10}, {})
    assert conflicts(observed) == {"data": 2, "attributes": 1, "id": 1}
    lines = [r for r in caplog.records if "later copy differs" in r.getMessage()]
    assert [(r.fields["message_id"], r.fields["differs"]) for r in lines] == [  # type: ignore[attr-defined]
        ("m-1", ["data"]),
        ("m-1", ["attributes"]),
        ("m-1", ["id"]),
        ("m-2", ["data"]),
    ]
    assert all(r.fields["table"] for r in lines)  # type: ignore[attr-defined]


@pytest.mark.slow
async def test_copies_in_one_append_and_across_a_restart_are_compared(tmp_path: Path) -> None:
    seen: list[tuple[str, str]] = []

    def observe(kept: Record | Rejection, later: Record | Rejection) -> None:
        assert isinstance(kept, Record)
        assert isinstance(later, Record)
        seen.append((kept.data, later.data))

    def record(data: str, ingest_time: int) -> Record:
        return Record(message_id="m-1", publish_time=1, ingest_time=ingest_time, id="r", data=data)

    path = str(tmp_path / "records.duckdb")
    store = DuckDBStore(path, conflicts=observe)
    await store.start()
    await store.append([record("1", 10), record("1", 11), record("2", 12)])
    await store.barrier()
    assert seen == [("1", "2")]
    await store.close()

    # The journal is replayed at every start, applied or not: its copies were told
    # when first applied, and are not told again at each restart.
    store = DuckDBStore(path, conflicts=observe)
    await store.start()
    await store.append([record("3", 20)])
    await store.barrier()
    assert seen == [("1", "2"), ("1", "3")]
    assert (await store.latest("r")) == record("1", 10)
    await store.close()
