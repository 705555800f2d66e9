"""What the console's browser tests share: Debian's Chromium, `recordline serve` on a
DuckDB file as a real process, pushes, and the screenshots docs/console.md shows."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from recordline_dev.devstack import wait_until_ready
from recordline_dev.processes import free_port, stop_group

# Debian's Chromium, as scripts/install-browser.sh installs it.
CHROMIUM = Path(os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"))
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "images"
SERVE = (sys.executable, "-m", "app.cli", "serve")
# With CONSOLE_SCREENSHOTS=1 the tests write the pages' screenshots (then committed).
SHOOT = bool(os.environ.get("CONSOLE_SCREENSHOTS"))


def envelope(message_id: str, payload: Any, attributes: dict[str, str]) -> dict[str, Any]:
    return {
        "message": {
            "data": base64.b64encode(json.dumps(payload).encode()).decode(),
            "messageId": message_id,
            "publishTime": "2026-01-02T03:04:05Z",
            "attributes": attributes,
        },
        "subscription": "projects/p/subscriptions/console",
    }


def sequenced(producer: str, seq: int) -> dict[str, str]:
    return {"recordline-producer": producer, "recordline-epoch": "1", "recordline-seq": str(seq)}


def serve(
    folder: Path, port: int, *, store: str | None = None, **settings: str
) -> subprocess.Popen[bytes]:
    """`recordline serve` on loopback on `folder`'s DuckDB file (or `store`) with
    `settings` (and no push token unless they name one), once ready."""
    env = {**os.environ, "RECORDLINE_LOG_FORMAT": "json"}
    env.pop("RECORDLINE_PUSH_TOKEN", None)
    with (folder / "service.log").open("ab") as log:
        process = subprocess.Popen(
            [
                *SERVE,
                "--port",
                str(port),
                "--store",
                store or f"duckdb://{folder / 'records.duckdb'}",
            ],
            env={**env, **settings},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    wait_until_ready(f"http://127.0.0.1:{port}/readyz", timeout=60, process=process)
    return process


@contextmanager
def served(
    folder: Path, pushes: int, *, store: str | None = None, **settings: str
) -> Iterator[str]:
    """`recordline serve` on `folder` (or `store`) with `settings` until the block ends,
    its records `r-0`, `r-1`, … (`data` {"n": n}) pushed `pushes` of them first (message
    ids `m-0`, `m-1`, …): the service's URL."""
    port = free_port()
    process = serve(folder, port, store=store, **settings)
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url) as client:
            for n in range(pushes):
                push = envelope(f"m-{n}", {"id": f"r-{n}", "data": {"n": n}}, {})
                assert client.post("/pubsub/push", json=push).status_code == 204
        yield url
    finally:
        stop_group(process, timeout=15)


def shot(page: Any, name: str) -> None:
    if SHOOT:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=SCREENSHOTS / f"console-{name}.png")
