"""`recordline serve` as a cell: the same one command, two DuckDB files, each system's
push stored in its own file, and SIGTERM stops it within the grace, every accepted row
drained."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import httpx
import pytest

from tests.conftest import envelope
from tests.processes import free_port
from tests.waiting import until_blocking

SYSTEMS = ("alpha", "beta")


@pytest.mark.slow
def test_recordline_serve_runs_a_cell_and_stops_within_its_grace(tmp_path: Path) -> None:
    files = {name: tmp_path / f"{name}.duckdb" for name in SYSTEMS}
    port = free_port()
    env = {
        **os.environ,
        "RECORDLINE_CELL": "cell-1",
        "RECORDLINE_SYSTEMS": json.dumps(
            {name: {"store": f"duckdb://{path}"} for name, path in files.items()}
        ),
    }
    log = tmp_path / "serve.log"
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, timeout=30) as client:

            def ready() -> bool:
                assert process.poll() is None, log.read_text()[-3000:]
                try:
                    return client.get("/readyz").json() == {"status": "ready", "not_ready": {}}
                except httpx.TransportError:
                    return False

            until_blocking(ready, timeout=60, what="the cell ready")
            for name in SYSTEMS:
                body = envelope({"id": name, "data": name}, message_id=f"{name}-1")
                assert client.post(f"/systems/{name}/pubsub/push", json=body).status_code == 204
        stopped = time.monotonic()
        process.send_signal(signal.SIGTERM)
        # uvicorn drains in-flight requests, then re-raises SIGTERM.
        assert process.wait(timeout=15) in (0, -signal.SIGTERM), log.read_text()[-3000:]
        assert "every system's accepted rows drained" in log.read_text()
        # Within the grace (7 s by default): Cloud Run kills at 10 s.
        assert time.monotonic() - stopped < 10
    finally:
        if process.poll() is None:
            process.kill()
    for name, path in files.items():
        with duckdb.connect(str(path), read_only=True) as db:
            rows = db.execute("SELECT message_id FROM records").fetchall()
        assert rows == [(f"{name}-1",)], name
