"""The console at "now" on a busy system's store: how long Records takes to show the
newest rows, and then a push, against a store of a hundred rows in the same run.

    python3 dev.py bench console [--rows 100000] [--rounds 5] [--pushes 3]

Two `recordline serve` on DuckDB files: one holding `--rows` records stored over the
last hour (100,000: about 28 a second, a busy hour), the other 100 (the baseline).
Debian's Chromium (scripts/install-browser.sh) opens each one's Records page in turn,
alternating, `--rounds` times: from the navigation's start until the newest stored row
is the first on screen ("opened at now"); then, following as the page does from the
start, `--pushes` pushes one after another, each from its 204 until its row is first on
screen. Printed: the median and the most of each, and each large store's against the
baseline's. The console's promise is a push shown within a second on the large store.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import duckdb
import httpx

from app.store.duckdb.store import DuckDBStore
from bench.harness import SERVE, free_port, server, table
from bench.query import FILL
from tests.console.browser import CHROMIUM

BASELINE_ROWS = 100
HOUR_US = 3_600_000_000


def fill(path: Path, rows: int) -> str:
    """`rows` records over the hour before now, through the store's own schema: the
    message id of the newest."""

    async def create() -> None:  # the tables exactly as the store makes them
        store = DuckDBStore(str(path))
        await store.start()
        await store.close()

    asyncio.run(create())
    step = HOUR_US // rows
    start = time.time_ns() // 1000 - rows * step
    with duckdb.connect(str(path)) as con:
        con.execute(FILL.format(start=start, step=step, rows=rows))
        con.execute("CHECKPOINT")
    return f"m-{rows - 1}"


def envelope(message_id: str) -> dict[str, Any]:
    data = {"id": message_id, "data": {"pushed": True}}
    return {
        "message": {
            "data": base64.b64encode(json.dumps(data).encode()).decode(),
            "messageId": message_id,
            "publishTime": "2026-01-02T03:04:05Z",
        },
        "subscription": "projects/bench/subscriptions/console",
    }


def first_row(page: Any) -> str | None:
    found: str | None = page.evaluate(
        "document.querySelector('#rows tbody tr.row')?.dataset.messageId ?? null"
    )
    return found


def until_first(page: Any, message_id: str, started: float, deadline: float = 30.0) -> float:
    """Seconds from `started` until `message_id` is the first row on screen."""
    page.wait_for_function(
        "id => document.querySelector('#rows tbody tr.row')?.dataset.messageId === id",
        arg=message_id,
        timeout=deadline * 1000,
        polling="raf",
    )
    return time.perf_counter() - started


def one_round(page: Any, url: str, newest: str, pushes: int, tag: str) -> tuple[float, list[float]]:
    """Records opened at `url`: seconds until `newest` is first, then each push's."""
    started = time.perf_counter()
    page.goto(f"{url}/console/records", wait_until="commit")
    opened = until_first(page, newest, started)
    shown: list[float] = []
    with httpx.Client(base_url=url, timeout=10) as client:
        for n in range(pushes):
            message_id = f"{tag}-{n}"
            answered = client.post("/pubsub/push", json=envelope(message_id))
            answered.raise_for_status()
            shown.append(until_first(page, message_id, time.perf_counter()))
    return opened, shown


@contextmanager
def browsing() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.exists():
        raise SystemExit(f"no Chromium at {CHROMIUM}: run scripts/install-browser.sh")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


def measure(rows: int, rounds: int, pushes: int) -> dict[str, dict[str, list[float]]]:
    found: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as folder, ExitStack() as stack:
        urls: dict[str, tuple[str, str]] = {}
        for name, size in (("large", rows), ("baseline", BASELINE_ROWS)):
            path = Path(folder) / f"{name}.duckdb"
            newest = fill(path, size)
            port = free_port()
            stack.enter_context(
                server([*SERVE, "--port", str(port), "--store", f"duckdb://{path}"], port)
            )
            urls[name] = (f"http://127.0.0.1:{port}", newest)
            found[name] = {"opened": [], "pushed": []}
        browser = stack.enter_context(browsing())
        for n in range(rounds):
            # Alternating, so that the machine's moods fall on both alike.
            for name in ("large", "baseline") if n % 2 == 0 else ("baseline", "large"):
                url, newest = urls[name]
                context = browser.new_context(viewport={"width": 1280, "height": 720})
                try:
                    opened, shown = one_round(
                        context.new_page(), url, newest, pushes, f"{name}-{n}"
                    )
                finally:
                    context.close()
                found[name]["opened"].append(opened)
                found[name]["pushed"].extend(shown)
                # The next round opens at the push this one made last.
                urls[name] = (url, f"{name}-{n}-{pushes - 1}") if pushes else (url, newest)
    return found


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench console", description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--pushes", type=int, default=3)
    args = parser.parse_args(argv)
    found = measure(args.rows, args.rounds, args.pushes)
    lines = [["store", "rows", "opened at now: median, most (s)", "a push shown: median, most (s)"]]
    for name, size in (("large", args.rows), ("baseline", BASELINE_ROWS)):
        opened, pushed = found[name]["opened"], found[name]["pushed"]
        lines.append(
            [
                name,
                f"{size:,}",
                f"{statistics.median(opened):.3f}, {max(opened):.3f}",
                f"{statistics.median(pushed):.3f}, {max(pushed):.3f}" if pushed else "-",
            ]
        )
    print(table(lines))
    large, small = found["large"], found["baseline"]
    median = statistics.median
    ratios = f"opened {median(large['opened']) / median(small['opened']):.2f}x"
    if large["pushed"] and small["pushed"]:
        ratios += f", a push shown {median(large['pushed']) / median(small['pushed']):.2f}x"
    print(f"\nlarge / baseline, medians: {ratios}")
    most = max(large["pushed"], default=0.0)
    within = "yes" if most < 1 else "no"
    print(f"a push shown within a second on {args.rows:,} rows: {within} (most {most:.3f} s)")
    return 0
