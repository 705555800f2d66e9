"""Two serving instances of one system, no affinity between a client and either: each
keeps the lines of what it answered in the system's one access record (BigQuery's
`access_record` behind the serving tier), and an operator reading it through either
instance finds both instances' lines, each once, newest first."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from tests.bigquery.threaded import ThreadedBigQuery
from tests.conftest import envelope, served
from tests.spanner.emulator import SpannerEmulator
from tests.test_streams_clients import serving_app
from tests.waiting import until


@pytest.mark.emulator
async def test_an_operator_reads_both_instances_lines_through_either(
    spanner_emulator: SpannerEmulator, threaded_bigquery: ThreadedBigQuery
) -> None:
    # The BigQuery fake is the session's: the lines of the apps of tests before this one
    # are in its access record too, older than this.
    started = datetime.now(UTC).isoformat()
    database = spanner_emulator.database()
    one = serving_app(spanner_emulator, database, threaded_bigquery)
    two = serving_app(spanner_emulator, database, threaded_bigquery)
    async with served(one) as first, served(two) as second:
        pushed = await first.post("/pubsub/push", json=envelope({"id": "a", "data": 1}))
        assert pushed.status_code == 204, pushed.text
        # Each instance answers reads of its own, told apart by what they asked.
        for n, client in enumerate([first, second, first, second]):
            answer = await client.get(f"/v1/records/a?select=id&n={n}")
            assert answer.status_code in (200, 400), answer.text
        for n, client in enumerate([first, second]):
            assert (
                await client.get("/v1/records", params={"limit": str(n + 1)})
            ).status_code == 200

        async def read_through(client: httpx.AsyncClient) -> list[dict[str, Any]]:
            answer = await client.get("/v1/access", params={"limit": "500", "since": started})
            assert answer.status_code == 200, answer.text
            lines: list[dict[str, Any]] = answer.json()["lines"]
            return lines

        async def both() -> list[dict[str, Any]] | None:
            lines = await read_through(second)
            limits = {
                value
                for line in lines
                if line["line"]["path"] == "/v1/records"
                for name, value in line["line"]["parameters"]
                if name == "limit"
            }
            return lines if limits >= {"1", "2"} else None

        lines = await until(both, timeout=30, what="both instances' lines")
        ids = [line["id"] for line in lines]
        assert len(ids) == len(set(ids))
        # Two instances made them: each line's id starts with its instance's own.
        assert len({line_id.rsplit("-", 1)[0] for line_id in ids}) == 2
        keys = [(line["time"], line["id"]) for line in lines]
        assert keys == sorted(keys, reverse=True)
        assert await read_through(first) != []
