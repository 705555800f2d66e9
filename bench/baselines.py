"""The two designs Recordline's ingest is measured against, in the same run.

- `floor`: decode the push envelope, its base64 and the record with msgspec,
  answer 204. Nothing is stored: no design can be faster in this framework.
- `per_message`: the design the reference systems use: the same decoding,
  then one INSERT per request into DuckDB (off the event loop), no batching.

Both are served like Recordline (uvicorn, uvloop, httptools, one process).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import duckdb
from litestar import Litestar, Request, get, post

from app.cli import quiet_garbage_collector
from app.ingest.envelope import decode_wrapped
from app.ingest.service import to_row
from app.records import Record, columns
from app.store.duckdb.sql import ddl


@get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


def floor() -> Litestar:
    @post("/pubsub/push", status_code=204)
    async def push(request: Request[Any, Any, Any]) -> None:
        to_row(
            decode_wrapped(await request.body()), ingest_time=time.time_ns() // 1000, trace_id=None
        )

    quiet_garbage_collector()  # the same runtime tuning as Recordline
    return Litestar([push, healthz], logging_config=None)


def per_message() -> Litestar:
    path = os.environ.get("BENCH_DUCKDB") or os.path.join(tempfile.mkdtemp(), "pm.duckdb")
    con = duckdb.connect(path)
    con.execute(ddl("records", Record))
    writer = ThreadPoolExecutor(1)
    names = [c.name for c in columns(Record)]
    # make_timestamptz: the TIMESTAMP columns arrive as epoch microseconds.
    values = ", ".join(
        f"make_timestamptz(${n})" if c.kind == "TIMESTAMP" else f"${n}"
        for n, c in enumerate(columns(Record), start=1)
    )
    insert = f"INSERT OR IGNORE INTO records ({', '.join(names)}) VALUES ({values})"

    @post("/pubsub/push", status_code=204)
    async def push(request: Request[Any, Any, Any]) -> None:
        row = to_row(
            decode_wrapped(await request.body()), ingest_time=time.time_ns() // 1000, trace_id=None
        )
        params = [getattr(row, n) for n in names]
        await asyncio.get_running_loop().run_in_executor(writer, con.execute, insert, params)

    quiet_garbage_collector()
    return Litestar([push, healthz], logging_config=None)
