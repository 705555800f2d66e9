"""What one push and one page read cost, in function calls: a count no machine's load moves.

    python3 dev.py bench calls [--check] [--write] [--profile push|page]

Throughput on a shared two-core machine moves by up to 2x between runs, so a
test of it either fails at random or lets a regression of 30% through. This
counts instead. The app is built as `recordline serve` builds it (default
settings, a DuckDB file store, uvloop) and called in process through ASGI, so
the service's own work is counted, not a client's or an HTTP parser's. Every
call of a Python function, and of a C function from Python, that the event
loop's thread makes while a request is answered counts once (cProfile's call
counts). A coroutine counts again each time it resumes: every wake-up costs a
call for each frame it passes through. The store's threads are not counted:
under load their work is spread over many pushes.

Paths:
- push: `POST /pubsub/push` of the benchmarks' ~570-byte envelope, one at a
  time, so each is its own batch; before each, a look-up of the message before
  waits until the store has applied it, so no push meets an earlier one's work;
- page: `GET /v1/records?limit=100`, a full page read from the DuckDB file
  (not from the tail in memory: the file holds a record from 1970 besides the
  150 pushed, older than the tail's window), with 151 records stored.

Each path is counted REPEATS times after WARM_UP requests (caches filled,
every module imported), and the least count is its cost: a timer of the
service's own that fires during a request (the batcher's sweep of deadlines,
every 50 ms) only ever adds to it. The process runs with PYTHONHASHSEED=0 and
the garbage collector held during each request. On one interpreter and one
lockfile the count is the same on every machine and every run.

`bench/budgets.json` holds each path's budget: a ceiling. A path that costs more
than its budget and the tolerance fails the check (tests/test_request_cost.py runs
it in the suite); one that costs less than its budget less the tolerance is said
(`lower` below), and its budget lowered in a change of its own (`--write`, then
commit the file), so that no later change can spend what was saved unseen. A
budget is raised only beside a row of docs/benchmarks.md's table of raised budgets
saying what the calls buy and the ingest ratio before and after, in one run: the
test refuses a budget above its path's last figure there (`documented`).
`--profile push` prints the functions one push calls, most called first.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import cProfile
import gc
import json
import logging
import os
import platform
import pstats
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BUDGETS = Path(__file__).with_name("budgets.json")
PATHS = ("push", "page")
WARM_UP = 20
REPEATS = 15
# Records stored before pages are read: more than a page, so the page is full.
STORED = 150
PAGE_QUERY = b"limit=100"
# The benchmarks' record (bench.harness.RECORD), kept here so that this file
# alone counts any commit of the service.
RECORD = json.dumps(
    {
        "id": "r",
        "timestamp": "2024-04-27T12:00:00Z",
        "data": {"text": "Ejemplo de datos", "values": [1, 2, 3], "note": "x" * 180},
    }
)
DATA = base64.b64encode(RECORD.encode()).decode()
JSON_BODY = [(b"content-type", b"application/json")]

Costs = dict[str, dict[str, Any]]


def envelope(i: int) -> bytes:
    return json.dumps(
        {
            "message": {
                "data": DATA,
                "messageId": f"m-{i}",
                "publishTime": "2024-04-27T12:00:01Z",
                "attributes": {"origin": "bench"},
            },
            "subscription": "projects/bench/subscriptions/records-push",
        }
    ).encode()


async def call(
    app: Any,
    method: str,
    path: str,
    *,
    query: bytes = b"",
    body: bytes = b"",
    headers: list[tuple[bytes, bytes]] | None = None,
) -> int:
    """One request through the ASGI app, made as uvicorn makes it; its status."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "server": ("127.0.0.1", 8080),
        "client": ("127.0.0.1", 50000),
        "scheme": "http",
        "method": method,
        "root_path": "",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "headers": [
            (b"host", b"127.0.0.1:8080"),
            (b"content-length", str(len(body)).encode()),
            *(headers or []),
        ],
        "state": {},
    }
    received = False
    # After the body, receive waits for a disconnect that never comes.
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def receive() -> dict[str, Any]:
        nonlocal received
        if not received:
            received = True
            return {"type": "http.request", "body": body, "more_body": False}
        await never
        return {"type": "http.disconnect"}

    status: list[int] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])

    await app(scope, receive, send)
    return status[0]


async def counted(request: Awaitable[int], expect: int) -> tuple[int, cProfile.Profile]:
    """The calls made on this thread until `request` is answered, and their profile."""
    profile = cProfile.Profile()
    gc.disable()
    try:
        profile.enable()
        status = await request
        profile.disable()
    finally:
        gc.enable()
    if status != expect:
        raise RuntimeError(f"answered {status}, not {expect}")
    return sum(entry.callcount for entry in profile.getstats()), profile


async def lifespan(app: Any) -> Callable[[], Awaitable[None]]:
    """Start the app's lifespan, as a server does; what stops it."""
    inbox: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    running = asyncio.ensure_future(app(scope, inbox.get, outbox.put))
    await inbox.put({"type": "lifespan.startup"})
    started = await outbox.get()
    if started["type"] != "lifespan.startup.complete":
        raise RuntimeError(f"the app did not start: {started}")

    async def stop() -> None:
        await inbox.put({"type": "lifespan.shutdown"})
        await outbox.get()
        await running

    return stop


async def measure(profile: str | None = None) -> Costs:
    """Each path's counts; with `profile`, that path's last request's profile on stderr."""
    from app.asgi import create_app
    from app.settings import Settings

    counts: dict[str, list[int]] = {path: [] for path in PATHS}
    profiles: dict[str, cProfile.Profile] = {}
    with tempfile.TemporaryDirectory() as folder:
        await _stored_long_ago(f"{folder}/calls.duckdb")
        # These settings alone: nothing in the caller's environment changes the count.
        app = create_app(Settings.load({"RECORDLINE_STORE": f"duckdb://{folder}/calls.duckdb"}))
        stop = await lifespan(app)
        try:

            def push(i: int) -> Awaitable[int]:
                return call(app, "POST", "/pubsub/push", body=envelope(i), headers=JSON_BODY)

            async def applied(i: int) -> None:
                # A point read waits until every acknowledged push is applied.
                if (status := await call(app, "GET", f"/v1/messages/m-{i}")) != 200:
                    raise RuntimeError(f"the look-up of m-{i} answered {status}")

            for i in range(WARM_UP + REPEATS):
                calls, profiles["push"] = await counted(push(i), 204)
                await applied(i)
                if i >= WARM_UP:
                    counts["push"].append(calls)
            # The rest at once: only their rows are wanted.
            rest = await asyncio.gather(*(push(i) for i in range(WARM_UP + REPEATS, STORED)))
            if set(rest) != {204}:
                raise RuntimeError(f"pushes answered {sorted(set(rest))}")
            await applied(STORED - 1)
            for i in range(WARM_UP + REPEATS):
                page = call(app, "GET", "/v1/records", query=PAGE_QUERY)
                calls, profiles["page"] = await counted(page, 200)
                if i >= WARM_UP:
                    counts["page"].append(calls)
        finally:
            await stop()
    if profile is not None:
        pstats.Stats(profiles[profile], stream=sys.stderr).sort_stats("ncalls").print_stats(400)
    return {path: {"calls": min(each), "each": each} for path, each in counts.items()}


async def _stored_long_ago(path: str) -> None:
    """A record stored in 1970 in the DuckDB file at `path`: a store holding a record
    older than its tail's window starts the tail at the window, so a page from the first
    record is read from the file (a store holding only younger ones reads it from memory)."""
    from app.records import Record
    from app.store.duckdb.store import DuckDBStore

    store = DuckDBStore(path)
    await store.start()
    try:
        old = Record(message_id="m-old", publish_time=0, ingest_time=1_000_000, id="old", data="{}")
        await store.append([old])
        await store.barrier()
    finally:
        await store.close()


def interpreter() -> str:
    return f"{platform.python_implementation()} {platform.python_version()}"


def costs(profile: str | None = None) -> Costs:
    """Each path's cost, counted in a fresh interpreter with PYTHONHASHSEED=0."""
    argv = [sys.executable, "-m", "bench.calls", "--count"]
    if profile is not None:
        argv += ["--profile", profile]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    if profile is not None:
        print(done.stderr, file=sys.stderr)
    if done.returncode != 0:
        raise RuntimeError(f"counting failed:\n{done.stderr[-4000:]}")
    found: Costs = json.loads(done.stdout.splitlines()[-1])
    return found


def budgets() -> dict[str, Any]:
    found: dict[str, Any] = json.loads(BUDGETS.read_text())
    return found


def verdicts(found: Costs, budget: dict[str, Any]) -> list[str]:
    """Each path that costs more than its budget and the tolerance: one line each, none
    if every path is within its budget."""
    tolerance = budget["tolerance"]
    wrong = []
    for path, each in budget["paths"].items():
        calls, allowed = found[path]["calls"], each["calls"]
        if calls > allowed * (1 + tolerance):
            wrong.append(
                f"{path} ({each['request']}) costs {calls:,} calls, more than its budget of "
                f"{allowed:,} and {tolerance:.0%}: see where they go with "
                f"`python3 dev.py bench calls --profile {path}`"
            )
    if wrong and budget["interpreter"] != interpreter():
        counted_on = budget["interpreter"]
        wrong.append(f"(the budgets were counted on {counted_on}, this is {interpreter()})")
    return wrong


def lower(found: Costs, budget: dict[str, Any]) -> list[str]:
    """Each path that costs less than its budget less the tolerance: what it saved may
    be kept, by lowering its budget in a change of its own."""
    tolerance = budget["tolerance"]
    return [
        f"{path} ({each['request']}) costs {found[path]['calls']:,} calls, less than its "
        f"budget of {each['calls']:,} less {tolerance:.0%}: lower the budget to what it costs "
        "(`python3 dev.py bench calls --write`), in a change of its own"
        for path, each in budget["paths"].items()
        if found[path]["calls"] < each["calls"] * (1 - tolerance)
    ]


# The table of docs/benchmarks.md that names each raise of a budget, by its head.
RAISED = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
RAISED_HEAD = "| budgets | push | page | what the calls buy | ingest / floor, before → after |"


def documented(text: str) -> dict[str, int]:
    """Each path's last budget in the table of raised budgets (`RAISED_HEAD`) of `text`:
    the most its budget may be until another row says why more."""
    lines = text.splitlines()
    if RAISED_HEAD not in lines:
        raise ValueError(f"no table headed {RAISED_HEAD!r}")
    last: dict[str, int] = {}
    for line in lines[lines.index(RAISED_HEAD) + 2 :]:
        if not line.startswith("|"):
            break
        cells = [cell.strip().strip("*") for cell in line.strip("|").split("|")]
        for path, cell in zip(PATHS, cells[1:3], strict=True):
            last[path] = int(cell.replace(",", ""))
    return last


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench calls")
    parser.add_argument("--check", action="store_true", help="exit 1 unless each path is on budget")
    parser.add_argument("--write", action="store_true", help="make the counts the budgets")
    parser.add_argument("--profile", choices=PATHS, help="print where one request's calls go")
    parser.add_argument("--count", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.count:  # the fresh interpreter `costs` starts
        # Quiet: the service warns that push is open on loopback.
        logging.basicConfig(handlers=[logging.NullHandler()], force=True)
        import uvloop

        print(json.dumps(uvloop.run(measure(args.profile))))
        return 0
    found = costs(args.profile)
    budget = budgets()
    rows = [["path", "calls", "budget", "each request counted"]]
    for path, cost in found.items():
        allowed = budget["paths"][path]["calls"]
        rows.append([path, f"{cost['calls']:,}", f"{allowed:,}", " ".join(map(str, cost["each"]))])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print(f"calls one request makes on the event loop's thread, {interpreter()}; the least of each")
    print("\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows))
    if args.write:
        for path, cost in found.items():
            budget["paths"][path]["calls"] = cost["calls"]
        budget["interpreter"] = interpreter()
        BUDGETS.write_text(json.dumps(budget, indent=2, ensure_ascii=False) + "\n")
        print(f"written to {BUDGETS.relative_to(ROOT)}")
        return 0
    wrong = verdicts(found, budget)
    for line in [*wrong, *lower(found, budget)]:
        print(line)
    return 1 if args.check and wrong else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
