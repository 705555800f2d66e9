"""A system of a cell started again under the supervisor stops as a fresh one does.

Once, a system whose first start failed had begun the cell's clock of the stop as its
failed app was ended: at SIGTERM the cell found no time left ("system alpha did not
stop within 0.0 s"), answered the pushes in flight 503, and left the DuckDB journals
behind. Here `recordline serve` runs a cell whose alpha cannot open its file at first
(another process holds it), starts it again once it can, and is stopped during pushes:
every push answered 204 is stored once, within the stop's budget, and no journal is
left.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import httpx
import pytest

from tests.conftest import envelope
from tests.processes import free_port
from tests.waiting import until_blocking

# Among the slowest: left out by `dev.py test --quick`.
pytestmark = pytest.mark.slow

SYSTEMS = ("alpha", "beta")


def test_a_system_started_again_drains_and_closes_at_sigterm(tmp_path: Path) -> None:
    files = {name: tmp_path / f"{name}.duckdb" for name in SYSTEMS}
    # Alpha's file is held by another process's connection: its first start fails.
    holder = duckdb.connect(str(files["alpha"]))
    port = free_port()
    log = tmp_path / "serve.log"
    env = {
        **os.environ,
        "RECORDLINE_CELL": "cell-1",
        "RECORDLINE_SYSTEMS": json.dumps(
            {name: {"store": f"duckdb://{path}"} for name, path in files.items()}
        ),
    }
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    stored: dict[str, list[str]] = {name: [] for name in SYSTEMS}
    try:
        with httpx.Client(base_url=url, timeout=30) as client:

            def not_ready() -> dict[str, str] | None:
                assert process.poll() is None, log.read_text()[-3000:]
                try:
                    found: dict[str, str] = client.get("/readyz").json()["not_ready"]
                except (httpx.TransportError, ValueError):
                    return None
                return found

            until_blocking(
                lambda: "alpha" in (not_ready() or {}) and "beta" not in (not_ready() or {}),
                timeout=60,
                what="beta serving and alpha's start refused",
            )
            holder.close()
            until_blocking(lambda: not_ready() == {}, timeout=30, what="alpha started again")
        stop = threading.Event()

        def push(name: str) -> None:
            with httpx.Client(base_url=url, timeout=15) as client:
                n = 0
                while not stop.is_set():
                    n += 1
                    message = f"{name}-{n}"
                    body = envelope({"id": message, "data": n}, message_id=message)
                    try:
                        answer = client.post(f"/systems/{name}/pubsub/push", json=body)
                    except httpx.TransportError:
                        return  # the server closed: the stop
                    if answer.status_code == 204:
                        stored[name].append(message)

        pushing = [threading.Thread(target=push, args=(name,)) for name in SYSTEMS]
        for thread in pushing:
            thread.start()
        until_blocking(
            lambda: all(len(ids) >= 20 for ids in stored.values()),
            timeout=30,
            what="pushes stored on both systems",
        )
        stopped = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) in (0, -signal.SIGTERM), log.read_text()[-3000:]
        took = time.monotonic() - stopped
        stop.set()
        for thread in pushing:
            thread.join()
    finally:
        holder.close()
        if process.poll() is None:
            process.kill()
    said = log.read_text()
    assert "did not stop within" not in said, said[-3000:]
    assert "shutdown grace ran out" not in said, said[-3000:]
    assert "every system's accepted rows drained" in said, said[-3000:]
    assert took < 10
    # Every push answered 204 is stored, once; and nothing is left to replay.
    for name, path in files.items():
        with duckdb.connect(str(path), read_only=True) as db:
            rows = [r[0] for r in db.execute("SELECT message_id FROM records").fetchall()]
        assert len(rows) == len(set(rows)), name
        assert set(stored[name]) <= set(rows), name
    left = sorted(p.name for p in tmp_path.iterdir() if "journal" in p.name)
    assert left == [], left
