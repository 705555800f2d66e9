"""A cell serving three systems, each on a store of its own (DuckDB in memory): every
push stored in its own system's store alone, a token of one system refused for
another, an unknown system refused with nothing stored, and a system whose store
fails, or will not start, answered for that system alone while the others serve."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from litestar.testing import TestClient

from app.cell.app import Cell, create_cell
from app.errors import StoreUnavailable
from app.settings import SECRET_MOST_BYTES, Settings, SettingsError
from app.store import Store
from app.store.duckdb.store import DuckDBStore
from tests.auth.fake_google import FakeGoogle
from tests.bigquery.conftest import PROJECT
from tests.bigquery.fake_jobs import FakeBigQueryJobs
from tests.bigquery.fake_storage_write import Abort, FakeBigQueryWrite
from tests.conftest import envelope, served
from tests.fakes import FaultyStore
from tests.waiting import until, until_blocking

SYSTEMS = ("alpha", "beta", "gamma")
RECORD = {"id": "r-1", "data": "x"}
CELL_URL = "https://cell-1.example"


def audience(system: str) -> str:
    return f"{CELL_URL}/systems/{system}/pubsub/push"


def pusher(system: str) -> str:
    return f"push-{system}@cell-1.iam.gserviceaccount.com"


class Stores:
    """Each system's store as the cell made it last (a new one each start)."""

    def __init__(self) -> None:
        self.made: dict[str, FaultyStore] = {}
        # Starts to refuse, per system.
        self.refused_starts: dict[str, int] = {}

    def maker(self, system: str) -> Callable[[], Store]:
        def make() -> Store:
            refused = self.refused_starts.get(system, 0)
            store: FaultyStore = (
                RefusingStart(DuckDBStore(":memory:"))
                if refused
                else FaultyStore(DuckDBStore(":memory:"))
            )
            if refused:
                self.refused_starts[system] = refused - 1
            self.made[system] = store
            return store

        return make


class RefusingStart(FaultyStore):
    """A store whose start fails: its database is gone."""

    async def start(self) -> None:
        raise StoreUnavailable("injected: the database is gone")


def settings(systems: dict[str, dict[str, Any]], **extra: str) -> Settings:
    return Settings.load(
        {"RECORDLINE_CELL": "cell-1", "RECORDLINE_SYSTEMS": json.dumps(systems), **extra}
    )


@pytest.fixture
def stores() -> Stores:
    return Stores()


def cell_of(stores: Stores, systems: dict[str, dict[str, Any]], **extra: str) -> Cell:
    return create_cell(
        settings(systems, **extra), stores={name: stores.maker(name) for name in systems}
    )


def stored_ids(client: TestClient[Any], system: str) -> set[str]:
    answer = client.get(f"/systems/{system}/v1/records")
    assert answer.status_code == 200, answer.text
    return {r["message_id"] for r in answer.json()["records"]}


@pytest.fixture
def memory_cell(stores: Stores) -> Iterator[TestClient[Any]]:
    cell = cell_of(stores, {name: {"store": "memory:"} for name in SYSTEMS})
    with TestClient(cell) as client:
        yield client


@pytest.mark.slow
def test_each_push_is_stored_in_its_own_systems_store_alone(
    memory_cell: TestClient[Any], stores: Stores
) -> None:
    for system in SYSTEMS:
        for n in range(3):
            answer = memory_cell.post(
                f"/systems/{system}/pubsub/push",
                json=envelope(RECORD, message_id=f"{system}-{n}"),
            )
            assert answer.status_code == 204, answer.text
    for system in SYSTEMS:
        assert stored_ids(memory_cell, system) == {f"{system}-{n}" for n in range(3)}
        assert stores.made[system].appends, system
    # The same message id in two systems is two messages: each system's own.
    answer = memory_cell.post(
        "/systems/beta/pubsub/push", json=envelope(RECORD, message_id="alpha-0")
    )
    assert answer.status_code == 204
    assert "alpha-0" in stored_ids(memory_cell, "beta")


@pytest.mark.slow
def test_a_page_token_or_offset_of_one_system_is_refused_by_another(
    memory_cell: TestClient[Any],
) -> None:
    for system in ("alpha", "beta"):
        for n in range(2):
            answer = memory_cell.post(
                f"/systems/{system}/pubsub/push",
                json=envelope(RECORD, message_id=f"{system}-{n}"),
            )
            assert answer.status_code == 204, answer.text
    page = memory_cell.get("/systems/alpha/v1/records", params={"limit": 1}).json()
    token = page["next_page_token"]
    assert memory_cell.get("/systems/alpha/v1/records", params={"page_token": token}).is_success
    refused = memory_cell.get("/systems/beta/v1/records", params={"page_token": token})
    assert refused.status_code == 400, refused.text
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert "page_token" in refused.json()["detail"]
    first = memory_cell.get("/systems/alpha/v1/streams/records", params={"offset": "-1"})
    assert first.status_code == 200, first.text
    offset = first.headers["stream-next-offset"]
    again = memory_cell.get("/systems/alpha/v1/streams/records", params={"offset": offset})
    assert again.status_code == 200, again.text
    refused = memory_cell.get("/systems/beta/v1/streams/records", params={"offset": offset})
    assert refused.status_code == 400, refused.text
    assert "offset" in refused.json()["detail"]


def test_each_system_reads_payloads_of_its_own_shape(stores: Stores) -> None:
    # orders' publishers keep the id in `order_id` and the time in `meta.created_at`
    # (its entry's id_field, time_field); the others send the service's own shape.
    shaped = {"store": "memory:", "id_field": "order_id", "time_field": "meta.created_at"}
    cell = cell_of(stores, {"orders": shaped, "alpha": {"store": "memory:"}})
    order = {"order_id": "o-1", "meta": {"created_at": "2026-11-24T09:00:00Z"}, "total": 3}
    with TestClient(cell) as client:
        for system, payload in (("orders", order), ("alpha", RECORD), ("alpha", order)):
            answer = client.post(
                f"/systems/{system}/pubsub/push",
                json=envelope(payload, message_id=f"{system}-{len(payload)}"),
            )
            assert answer.status_code == 204, answer.text
        stored = client.get("/systems/orders/v1/records/o-1").json()
        assert stored["timestamp"] == "2026-11-24T09:00:00Z"
        assert client.get("/systems/alpha/v1/records/r-1").status_code == 200
        # An order in alpha has no `id`: kept as a rejection naming alpha's field.
        said = client.get("/systems/alpha/v1/messages/alpha-3").json()
        assert said["status"] == "rejected"
        assert "`id`" in said["reason"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "path",
    [
        "/systems/delta/pubsub/push",
        "/systems/Alpha/pubsub/push",
        "/systems//pubsub/push",
        "/systems/alpha-/pubsub/push",
        # Alpha serves, and none of these is its path.
        "/systems//alpha/pubsub/push",
        "/systems///alpha/pubsub/push",
        "/pubsub/push",  # a deployment of one system's path: not a cell's
    ],
)
def test_a_push_for_no_system_of_the_cell_is_refused_and_nothing_is_stored(
    memory_cell: TestClient[Any], stores: Stores, path: str
) -> None:
    answer = memory_cell.post(path, json=envelope(RECORD, message_id="lost"))
    assert answer.status_code == 404, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    if path.startswith("/systems/") and path != "/systems//pubsub/push":
        assert answer.json()["type"] == "/problems/unknown-system"
    for system in SYSTEMS:
        assert stored_ids(memory_cell, system) == set()
        assert stores.made[system].appends == []


@pytest.mark.slow
def test_the_cells_own_routes_are_at_the_root(memory_cell: TestClient[Any]) -> None:
    assert memory_cell.get("/healthz").json() == {"status": "ok"}
    assert memory_cell.get("/readyz").json() == {"status": "ready", "not_ready": {}}
    assert memory_cell.head("/systems/alpha/v1/records").status_code == 200
    assert "recordline_" in memory_cell.get("/metrics").text
    # Each system's own readiness too, and its problem documents.
    assert memory_cell.get("/systems/alpha/readyz").json() == {"status": "ready"}
    bad = memory_cell.get("/systems/alpha/v1/records", params={"since": "yesterday"})
    assert bad.status_code == 400
    assert bad.json()["type"] == "/problems/invalid-parameter"


@pytest.mark.slow
def test_a_systems_failing_store_is_its_own_503_and_readiness_names_it(
    memory_cell: TestClient[Any], stores: Stores
) -> None:
    stores.made["alpha"].failing = True
    refused = memory_cell.post("/systems/alpha/pubsub/push", json=envelope(RECORD, message_id="a"))
    assert refused.status_code == 503
    assert "Retry-After" in refused.headers
    for system in ("beta", "gamma"):
        answer = memory_cell.post(
            f"/systems/{system}/pubsub/push", json=envelope(RECORD, message_id=system)
        )
        assert answer.status_code == 204
        assert stored_ids(memory_cell, system) == {system}
    ready = memory_cell.get("/readyz")
    assert ready.status_code == 200
    assert set(ready.json()["not_ready"]) == {"alpha"}
    # Every system down: the cell cannot serve.
    for system in ("beta", "gamma"):
        stores.made[system].failing = True
    assert memory_cell.get("/readyz").status_code == 503
    stores.made["alpha"].failing = False
    assert (
        memory_cell.post(
            "/systems/alpha/pubsub/push", json=envelope(RECORD, message_id="a")
        ).status_code
        == 204
    )
    assert stored_ids(memory_cell, "alpha") == {"a"}


@pytest.mark.slow
def test_a_system_that_will_not_start_is_answered_503_and_started_again(
    stores: Stores,
) -> None:
    stores.refused_starts["alpha"] = 2
    cell = cell_of(stores, {name: {"store": "memory:"} for name in SYSTEMS})
    with TestClient(cell) as client:
        refused = client.post("/systems/alpha/pubsub/push", json=envelope(RECORD))
        assert refused.status_code == 503
        assert refused.json()["type"] == "/problems/system-unavailable"
        assert "the database is gone" in refused.json()["detail"]
        assert client.post("/systems/beta/pubsub/push", json=envelope(RECORD)).status_code == 204
        assert "alpha" in client.get("/readyz").json()["not_ready"]

        # Started again, with backoff (1 s, then 2 s), by the cell's supervisor.
        def serves() -> bool:
            answer = client.post("/systems/alpha/pubsub/push", json=envelope(RECORD))
            return answer.status_code == 204

        until_blocking(serves, timeout=15, interval=0.1, what="alpha started again")
        assert client.get("/readyz").json()["not_ready"] == {}


def test_a_system_whose_settings_cannot_be_used_is_unavailable_and_the_others_serve(
    stores: Stores, tmp_path: Path
) -> None:
    # Once, one system's invalid json_topic_schema stopped the whole cell at its start.
    shared = f"duckdb:{tmp_path}/shared.duckdb"
    systems: dict[str, dict[str, Any]] = {
        "alpha": {"store": "memory:"},
        "beta": {"store": "memory:", "json_topic_schema": '{"type": "string"}'},
        "gamma": {"store": shared},
        "delta": {"store": shared},
        "epsilon": {"store": "memory:", "stroe": "memory:"},
        "zeta": {"store": "memory:", "operator_principals": "not a principal"},
    }
    cell = cell_of(stores, systems)
    with TestClient(cell) as client:
        assert client.post("/systems/alpha/pubsub/push", json=envelope(RECORD)).status_code == 204
        ready = client.get("/readyz")
        assert ready.status_code == 200
        not_ready = ready.json()["not_ready"]
        # Both systems of one store: the file does not say which it was made for.
        assert sorted(not_ready) == ["beta", "delta", "epsilon", "gamma", "zeta"]
        assert "RECORDLINE_JSON_TOPIC_SCHEMA" in not_ready["beta"]
        assert "'delta' and 'gamma'" in not_ready["delta"]
        assert "'delta' and 'gamma'" in not_ready["gamma"]
        assert "stroe" in not_ready["epsilon"]
        assert "operator_principals" in not_ready["zeta"]
        for name in ("beta", "delta", "epsilon", "gamma", "zeta"):
            refused = client.post(f"/systems/{name}/pubsub/push", json=envelope(RECORD))
            assert refused.status_code == 503
            assert refused.headers["retry-after"]
            assert refused.json()["type"] == "/problems/system-unavailable"
            assert "settings" in refused.json()["detail"]
    assert sum(stores.made["alpha"].appends) == 1
    assert sum(stores.made["beta"].appends) == 0
    assert not {"gamma", "delta"} & set(stores.made)  # the store they name is never opened


def test_a_cells_own_setting_that_cannot_be_used_still_stops_it(stores: Stores) -> None:
    with pytest.raises(SettingsError) as refused:
        cell_of(
            stores,
            {"alpha": {"store": "memory:"}},
            RECORDLINE_PRODUCER_KEYS="not a key",
        )
    assert refused.value.var == "RECORDLINE_PRODUCER_KEYS"


@pytest.mark.slow
def test_a_token_of_one_system_is_refused_for_another(stores: Stores) -> None:
    google = FakeGoogle().start()
    try:
        systems = {
            name: {
                "store": "memory:",
                "push_audience": audience(name),
                "push_service_accounts": pusher(name),
            }
            for name in SYSTEMS
        }
        cell = cell_of(stores, systems, RECORDLINE_OIDC_CERTS_URL=google.certs_url)
        alphas = google.mint(aud=audience("alpha"), email=pusher("alpha"))
        with TestClient(cell) as client:

            def push(system: str, token: str, message_id: str) -> int:
                return client.post(
                    f"/systems/{system}/pubsub/push",
                    json=envelope(RECORD, message_id=message_id),
                    headers={"Authorization": f"Bearer {token}"},
                ).status_code

            assert push("alpha", alphas, "a-1") == 204
            # Alpha's token at beta's path: another audience.
            assert push("beta", alphas, "b-1") in (401, 403)
            # A token for beta's audience, but from alpha's service account.
            crossed = google.mint(aud=audience("beta"), email=pusher("alpha"))
            assert push("beta", crossed, "b-2") in (401, 403)
            assert (
                push("beta", google.mint(aud=audience("beta"), email=pusher("beta")), "b-3") == 204
            )
            assert stored_ids(client, "alpha") == {"a-1"}
            assert stored_ids(client, "beta") == {"b-3"}
            assert stored_ids(client, "gamma") == set()
            # One key client for the cell: the keys were fetched once.
            assert google.requests == 1
    finally:
        google.stop()


@pytest.mark.slow
async def test_a_follower_storm_on_one_system_is_refused_for_that_system_alone(
    stores: Stores,
) -> None:
    systems: dict[str, dict[str, Any]] = {name: {"store": "memory:"} for name in SYSTEMS}
    systems["alpha"]["max_followers"] = 2
    cell = cell_of(stores, systems)
    async with served(cell) as client:  # type: ignore[arg-type]

        async def tail(system: str) -> str:
            answer = await client.get(f"/systems/{system}/v1/records")
            token: str = answer.json()["next_page_token"]
            return token

        def follow(system: str, token: str) -> asyncio.Future[Any]:
            path = f"/systems/{system}/v1/records"
            return asyncio.ensure_future(client.get(path, params={"page_token": token, "wait": 30}))

        alpha, beta = await tail("alpha"), await tail("beta")
        # Alpha's two followers wait for rows; a third is refused at once.
        waiting = [follow("alpha", alpha) for _ in range(2)]

        async def both_wait() -> bool:
            # The cell's gauge: followers of every system (alpha's alone here).
            metrics = (await client.get("/metrics")).text.splitlines()
            return any(
                line.startswith("recordline_followers{") and line.endswith(" 2.0")
                for line in metrics
            )

        await until(both_wait, timeout=10, what="alpha's two followers waiting")
        path = "/systems/alpha/v1/records"
        third = await client.get(path, params={"page_token": alpha, "wait": 30})
        assert third.status_code == 503
        assert third.json()["type"] == "/problems/too-many-followers"
        # Beta's followers and pushes are not alpha's.
        followed = follow("beta", beta)
        pushed = await client.post("/systems/beta/pubsub/push", json=envelope(RECORD))
        assert pushed.status_code == 204
        answer = await followed
        assert answer.status_code == 200
        assert [r["message_id"] for r in answer.json()["records"]] == ["m-1"]
        # Alpha's followers are answered too, by the push that reaches alpha.
        pushed = await client.post("/systems/alpha/pubsub/push", json=envelope(RECORD))
        assert pushed.status_code == 204
        for follower in await asyncio.gather(*waiting):
            assert follower.status_code == 200


@pytest.mark.slow
async def test_a_system_whose_dataset_is_gone_is_refused_alone(
    write_fake: FakeBigQueryWrite, jobs_fake: FakeBigQueryJobs
) -> None:
    # Two systems on BigQuery alone, each its own dataset; alpha's is deleted.
    systems = {name: {"store": f"bigquery://{PROJECT}/cell_{name}"} for name in ("alpha", "beta")}
    cell = create_cell(
        settings(
            systems,
            RECORDLINE_BIGQUERY_WRITE_ENDPOINT=write_fake.address,
            BIGQUERY_EMULATOR_HOST=jobs_fake.endpoint,
            RECORDLINE_WRITE_DEADLINE_SECONDS="3",
        )
    )
    gone = f"projects/{PROJECT}/datasets/cell_alpha/tables/records"
    write_fake.broken[gone] = Abort(grpc.StatusCode.NOT_FOUND, details="Not found: Dataset")
    async with served(cell) as client:  # type: ignore[arg-type]
        refused = await client.post(
            "/systems/alpha/pubsub/push", json=envelope(RECORD, message_id="a-1")
        )
        assert refused.status_code == 503, refused.text
        stored = await client.post(
            "/systems/beta/pubsub/push", json=envelope(RECORD, message_id="b-1")
        )
        assert stored.status_code == 204, stored.text
    beta = f"projects/{PROJECT}/datasets/cell_beta/tables/records"
    assert [row["message_id"] for row in write_fake.rows(beta)] == ["b-1"]
    assert write_fake.rows(gone) == []


@pytest.mark.slow
def test_each_systems_console_is_under_its_prefix(memory_cell: TestClient[Any]) -> None:
    redirect = memory_cell.get("/systems/alpha/console", follow_redirects=False)
    assert redirect.headers["location"] == "console/records"  # relative: under the prefix
    page = memory_cell.get("/systems/alpha/console/records")
    assert page.status_code == 200
    # Each page names the system it reads.
    assert '<span class="system" title="the system this console reads">alpha</span>' in page.text
    assert "<title>alpha · Recordline · records</title>" in page.text
    beta = memory_cell.get("/systems/beta/console/records").text
    assert "<title>beta · Recordline · records</title>" in beta
    # An operator's page too (on loopback with no authentication, everyone operates).
    access = memory_cell.get("/systems/alpha/console/access")
    assert "<title>alpha · Recordline · access</title>" in access.text
    assert '<a href="access" aria-current="page">Access</a>' in access.text
    # The page's assets and reads are relative to it, so they reach this system's.
    assert memory_cell.get("/systems/alpha/console/static/console.js").status_code == 200
    assert 'const ROOT = ".."' in memory_cell.get("/systems/alpha/console/static/console.js").text
    # With a trailing slash, the system's first page, still under its prefix.
    slash = memory_cell.get("/systems/alpha/console/", follow_redirects=False)
    assert slash.headers["location"] == "records"
    assert memory_cell.get("/systems/alpha/console/").url.path == "/systems/alpha/console/records"


@pytest.mark.slow
def test_each_systems_api_document_names_its_prefix_as_its_server(
    memory_cell: TestClient[Any],
) -> None:
    """A client made from a system's OpenAPI document (or its page's "Try it out") calls
    that system's routes under its prefix, not the cell's root, which serves none; the
    cell's own document names the root."""
    for system in SYSTEMS:
        document = memory_cell.get(f"/systems/{system}/docs/openapi.json").json()
        assert document["servers"] == [{"url": f"/systems/{system}"}]
        called = memory_cell.get(document["servers"][0]["url"] + "/v1/records")
        assert called.status_code == 200, called.text
        # The page shows the same document.
        assert (
            f'"servers":[{{"url":"/systems/{system}"}}]'
            in memory_cell.get(f"/systems/{system}/docs").text
        )
    assert memory_cell.get("/docs/openapi.json").json()["servers"] == [{"url": "/"}]
    assert memory_cell.get("/v1/records").status_code == 404


def test_an_id_that_holds_its_system_s_path_is_looked_up_as_any_other(
    memory_cell: TestClient[Any],
) -> None:
    """A system's app is given its path below the prefix, and no root path: Litestar
    takes a path apart at a root path's first occurrence anywhere in it, which read
    `/v1/records//systems/alpha` (the id `/systems/alpha`) as no path at all."""
    for record_id in ("/systems/alpha", "x/systems/alpha/y"):
        message_id = f"/systems/alpha{record_id}"
        answer = memory_cell.post(
            "/systems/alpha/pubsub/push",
            json=envelope({**RECORD, "id": record_id}, message_id=message_id),
        )
        assert answer.status_code == 204, answer.text
        quoted = record_id.replace("/", "%2F")
        found = memory_cell.get(f"/systems/alpha/v1/records/{quoted}")
        assert found.status_code == 200, found.text
        assert found.json()["id"] == record_id
        message = memory_cell.get(f"/systems/alpha/v1/messages/{message_id.replace('/', '%2F')}")
        assert message.status_code == 200, message.text
        assert message.json()["status"] == "stored"


@pytest.mark.slow
def test_the_cell_s_console_lists_its_systems(memory_cell: TestClient[Any]) -> None:
    """The cell's root /console links each system's console (relative, with a trailing
    slash too); an unknown system's stays a 404."""
    for path, up in (("/console", ""), ("/console/", "../")):
        page = memory_cell.get(path)
        assert page.status_code == 200, page.text
        assert page.headers["content-type"].startswith("text/html")
        assert page.headers["x-frame-options"] == "DENY"
        for system in SYSTEMS:
            link = f'<a href="{up}systems/{system}/console/records">{system}</a>'
            assert link in page.text, path
            target = page.url.join(f"{up}systems/{system}/console/records")
            assert memory_cell.get(str(target)).status_code == 200
        sheet = page.url.join("static/console.css" if up else "console/static/console.css")
        assert memory_cell.get(str(sheet)).status_code == 200
    assert memory_cell.get("/systems/delta/console/records").status_code == 404


def test_a_system_at_its_queue_floor_takes_one_push_of_the_largest_body(stores: Stores) -> None:
    # A push of 260,196 bytes (the bound 262,144) to a system at its floor was once 503
    # queue-full "0 rows are waiting" on an idle cell: the floor was the body's length,
    # and its row counts its text and its data, each up to that.
    largest = 262_144
    systems = {name: {"store": "memory:"} for name in SYSTEMS}
    cell = cell_of(
        stores,
        systems,
        RECORDLINE_MAX_BODY_BYTES=str(largest),
        RECORDLINE_QUEUE_MAX_BYTES=str(largest),
    )
    data = json.dumps({"id": "large", "data": "x" * 195_000}).encode()
    body = json.dumps(envelope(None, message_id="large", raw_data=data)).encode()
    assert largest - 2048 < len(body) <= largest
    with TestClient(cell) as client:
        answer = client.post(
            "/systems/alpha/pubsub/push",
            content=body,
            headers={"content-type": "application/json"},
        )
        assert answer.status_code == 204, answer.text
    assert sum(stores.made["alpha"].appends) == 1


async def test_a_push_its_systems_queue_has_no_room_for_is_refused_on_its_head(
    stores: Stores,
) -> None:
    # A refused push once cost 3.8 ms of the process's CPU: its body was read, decoded
    # and checked first. Now one its queue has no room for is answered from its head.
    systems: dict[str, dict[str, Any]] = {name: {"store": "memory:"} for name in SYSTEMS}
    systems["alpha"]["queue_bytes"] = 64 * 1024
    cell = cell_of(stores, systems)
    async with served(cell, bounded=True) as client:  # type: ignore[arg-type]
        stores.made["alpha"].release.clear()  # alpha's store takes no append meanwhile
        data = json.dumps({"id": "held", "data": "x" * 20_000}).encode()
        held = asyncio.ensure_future(
            client.post(
                "/systems/alpha/pubsub/push",
                json=envelope(None, message_id="held", raw_data=data),
            )
        )
        await until(lambda: stores.made["alpha"].appending == 1, what="alpha's queue in use")
        port = client.base_url.port
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        # A head that declares 40,000 bytes, and no byte of the body: answered anyway.
        writer.write(
            b"POST /systems/alpha/pubsub/push HTTP/1.1\r\nHost: localhost\r\n"
            b"Content-Type: application/json\r\nContent-Length: 40000\r\n\r\n"
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        problem = json.loads(await reader.readexactly(length))
        writer.close()
        assert head.startswith(b"HTTP/1.1 503 "), head
        assert b"retry-after:" in head.lower()
        assert problem["type"] == "/problems/queue-full", problem
        # Beta's queue is beta's.
        pushed = await client.post("/systems/beta/pubsub/push", json=envelope(RECORD))
        assert pushed.status_code == 204
        stores.made["alpha"].release.set()
        assert (await held).status_code == 204


def test_a_schema_in_a_file_of_its_own_is_served_and_refused_as_one_written_inline(
    stores: Stores, tmp_path: Path
) -> None:
    # A cell's file names each system's schema where Terraform mounts it: checked as
    # one written in the entry, a bad or missing one that system's fault alone.
    schema = {"type": "record", "name": "Order", "fields": [{"name": "total", "type": "double"}]}
    (tmp_path / "orders.json").write_text(json.dumps(schema))
    (tmp_path / "beta.json").write_text('{"type": "string"}')
    # One byte more than a secret holds.
    (tmp_path / "large.json").write_text(json.dumps(schema).ljust(SECRET_MOST_BYTES + 1))
    systems: dict[str, dict[str, Any]] = {
        "orders": {"store": "memory:", "json_topic_schema": f"@{tmp_path}/orders.json"},
        "inline": {"store": "memory:", "json_topic_schema": json.dumps(schema)},
        "beta": {"store": "memory:", "json_topic_schema": f"@{tmp_path}/beta.json"},
        "inline-beta": {"store": "memory:", "json_topic_schema": '{"type": "string"}'},
        "gamma": {"store": "memory:", "json_topic_schema": f"@{tmp_path}/gone.json"},
        "delta": {"store": "memory:", "json_topic_schema": f"@{tmp_path}/large.json"},
    }
    with TestClient(cell_of(stores, systems)) as client:
        for name in ("orders", "inline"):
            pushed = client.post(
                f"/systems/{name}/pubsub/push", json=envelope({"id": "o-1", "total": 2.5})
            )
            assert pushed.status_code == 204, pushed.text
            assert client.get(f"/systems/{name}/v1/records/o-1").status_code == 200
        ready = client.get("/readyz")
        assert ready.status_code == 200
        not_ready = ready.json()["not_ready"]
        assert sorted(not_ready) == ["beta", "delta", "gamma", "inline-beta"]
        # As an inline schema that is no Avro record is said.
        said = 'its settings: RECORDLINE_JSON_TOPIC_SCHEMA: an Avro schema of `"type": "record"`'
        assert said in not_ready["inline-beta"], not_ready
        assert said in not_ready["beta"], not_ready
        assert f"'json_topic_schema': {tmp_path}/gone.json cannot be read" in not_ready["gamma"]
        large = f"'json_topic_schema': {tmp_path}/large.json is over {SECRET_MOST_BYTES} bytes"
        assert large in not_ready["delta"], not_ready
        for name in ("beta", "gamma", "delta"):
            refused = client.post(f"/systems/{name}/pubsub/push", json=envelope(RECORD))
            assert refused.status_code == 503
            assert refused.headers["retry-after"]
            assert refused.json()["type"] == "/problems/system-unavailable"
