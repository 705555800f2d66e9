"""What the console's browser tests share: Debian's Chromium, `recordline serve` on a
DuckDB file as a real process, pushes, and the screenshots docs/console.md shows."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from recordline_dev.devstack import wait_until_ready

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


def serve(folder: Path, port: int, **settings: str) -> subprocess.Popen[bytes]:
    """`recordline serve` on loopback on `folder`'s DuckDB file with `settings` (and no
    push token unless they name one), once ready."""
    env = {**os.environ, "RECORDLINE_LOG_FORMAT": "json"}
    env.pop("RECORDLINE_PUSH_TOKEN", None)
    with (folder / "service.log").open("ab") as log:
        process = subprocess.Popen(
            [*SERVE, "--port", str(port), "--store", f"duckdb://{folder / 'records.duckdb'}"],
            env={**env, **settings},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    wait_until_ready(f"http://127.0.0.1:{port}/readyz", timeout=60, process=process)
    return process


def shot(page: Any, name: str) -> None:
    if SHOOT:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=SCREENSHOTS / f"console-{name}.png")
