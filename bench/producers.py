"""What producer sequences cost ingest, and what the ledger holds per producer.

    python3 dev.py bench producers [--rounds 5] [--seconds 2] [--connections 64]
    python3 dev.py bench producers --count [--pushes 300] [--clients 64] [--load-pushes 1280]
    python3 dev.py bench producers --storage

By default, pushes through the whole path: two services on DuckDB files, served
at once and loaded in turn by wrk (bench/harness.py's `interleaved`). Both take
`bench ingest`'s record with three attributes; on, they are a producer sequence
(each wrk thread a producer, numbering its pushes from 0); off, the same three
under other names, which nothing reads. After the run the `on` ledger is
checked: every push accounted for, none as a duplicate. Prints msgs/s and the
ratio on / off with its range over the rounds (goal ≥ 0.9).

With `--count`, instructions per push, with no machine noise: each service runs
under valgrind's callgrind, pushes are sent one at a time (each its own group
commit, so what the ledger adds per append counts in full), and the instructions
are divided by the pushes: the event loop's thread (what holds a push back), and
every thread of the process (the applier's DuckDB work included; the journal's
writer is a process of its own, writing a frame either way). Then the same under
load: `--load-pushes` sent by `--clients` connections at once as two producers
(as wrk's two threads are), so that group commits hold many pushes, and what the
ledger does once a batch is shared by them while what it does per row is not
(the batches' sizes follow the timing, so this count moves by a percent or so
between runs where the one-at-a-time count does not). Then the store
alone under load, in CPU time rather than instructions: group commits of
`--batch` records appended to the DuckDB store, on and off taken in turn
`--store-rounds` times (valgrind would slow the process fifty times while the
ledger's table is still written once a second of wall time, fifty times too often).

With `--storage`, the ledger's entry per producer epoch as every store keeps it
(msgpack, app/store/producers.py), in the cases that bound it, and what 10,000
producers take in a DuckDB file.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import http.client
import itertools
import json
import os
import random
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import msgspec
from litestar import Litestar

from app.asgi import create_app
from app.errors import StoreUnavailable
from app.query.page_token import PageTokens
from app.query.producers import Producers
from app.records import Record
from app.settings import Settings
from app.store.duckdb import producers as book
from app.store.duckdb.store import DuckDBStore
from app.store.producers import (
    MAX_EPOCHS,
    MAX_GAPS,
    MAX_RETIRED,
    EpochEntry,
    Gap,
    decode_entry,
    encode_entry,
)
from bench.harness import (
    DONE_LUA,
    RECORD,
    free_port,
    interleaved,
    server,
    table,
    uvicorn_argv,
)
from bench.ingest import ratio

GOAL = 0.9
WARM_UP = 100
_PUBLISHED = 1_714_219_201_000_000

# As bench/harness.py's PUSH_LUA, the attributes numbered per request: each wrk
# thread (its own Lua state) is a producer of its own, numbering from 0.
# As bench/harness.py's PUSH_LUA, the attributes numbered per request: each wrk
# thread is a producer of its own, numbering from 0. Its message ids and producer id
# are the run's start and the thread's number: every run's pushes are new messages
# (math.random gives every thread, and every run, the same first number).
_LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local data = "%(data)s"
local threads = 0
setup = function(thread)
  threads = threads + 1
  thread:set("index", threads)
end
local counter = -1
local prefix = nil
request = function()
  if prefix == nil then
    prefix = tostring(os.time()) .. "-" .. tostring(index)
  end
  counter = counter + 1
  local id = prefix .. "-" .. counter
  local body = '{"message":{"data":"' .. data .. '","messageId":"' .. id ..
    '","publishTime":"2024-04-27T12:00:01Z","attributes":{"%(producer)s":"bench-' ..
    prefix .. '","%(epoch)s":"1","%(sequence)s":"' .. counter .. '"}},' ..
    '"subscription":"projects/bench/subscriptions/records-push"}'
  return wrk.format(nil, "/pubsub/push", nil, body)
end
"""
NAMES = {
    "on": ("recordline-producer", "recordline-epoch", "recordline-seq"),
    # The same bytes under names nothing reads.
    "off": ("recordline-producex", "recordline-epochx", "recordline-seqx"),
}


def script(variant: str) -> str:
    import base64

    producer, epoch, sequence = NAMES[variant]
    values = {
        "data": base64.b64encode(RECORD.encode()).decode(),
        "producer": producer,
        "epoch": epoch,
        "sequence": sequence,
    }
    return _LUA % values + DONE_LUA


def app() -> Litestar:
    """`recordline serve`'s app on BENCH_DUCKDB."""
    return create_app(Settings.load(), store=DuckDBStore(os.environ["BENCH_DUCKDB"]))


def whole_path(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        files = {name: Path(tmp) / f"{name}.duckdb" for name in NAMES}
        env = {
            name: {"BENCH_DUCKDB": str(path), "RECORDLINE_LOG_LEVEL": "WARNING"}
            for name, path in files.items()
        }
        loads = interleaved(
            {name: lambda port: uvicorn_argv("bench.producers:app", port) for name in NAMES},
            script("off"),
            scripts={name: script(name) for name in NAMES},
            rounds=args.rounds,
            seconds=args.seconds,
            connections=args.connections,
            env=env,
        )
        with duckdb.connect(str(files["on"]), read_only=True) as con:
            stored = con.execute("SELECT count(*) FROM records").fetchone()
            entries = _every_entry(con)
    accounted = sum(e.stored + e.rejected + e.duplicates for e in entries)
    duplicates = sum(e.duplicates for e in entries)
    if not stored or accounted != stored[0] or duplicates:
        raise SystemExit(
            f"bench producers: {stored} records, the ledger accounts for {accounted} "
            f"({duplicates} as duplicates)"
        )
    rows = [["sequences", "msgs/s", "p99 ms"]]
    for name in ("off", "on"):
        runs = loads[name]
        rows.append(
            [
                name,
                f"{sum(r.rate for r in runs) / len(runs):,.0f}",
                f"{sorted(r.p99 for r in runs)[len(runs) // 2]:.1f}",
            ]
        )
    print(
        f"POST /pubsub/push on DuckDB, wrk {args.connections} connections, "
        f"{args.rounds} rounds of {args.seconds:g} s each, taken in turn; "
        f"{len(entries)} producers, {accounted:,} pushes in the ledger:"
    )
    print(table(rows))
    print(f"on / off = {ratio(loads['on'], loads['off'])}  (goal ≥ {GOAL})")
    return 0


def _every_entry(con: duckdb.DuckDBPyConnection) -> list[EpochEntry]:
    rows = con.execute(f"SELECT entry FROM {book.TABLE}").fetchall()
    return [decode_entry(data) for (data,) in rows]


# -- instructions ---------------------------------------------------------------------------


def _pusher(port: int, variant: str, producer_id: str = "bench") -> Callable[[int], None]:
    import base64

    data = base64.b64encode(RECORD.encode()).decode()
    producer, epoch, sequence = NAMES[variant]
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)

    def push(i: int) -> None:
        body = json.dumps(
            {
                "message": {
                    "data": data,
                    "messageId": f"{producer_id}-{i}",
                    "publishTime": "2024-04-27T12:00:01Z",
                    "attributes": {producer: producer_id, epoch: "1", sequence: str(i)},
                },
                "subscription": "projects/bench/subscriptions/records-push",
            }
        )
        nonlocal connection
        try:
            response = _send(connection, body)
        except (ConnectionError, http.client.RemoteDisconnected):
            # An idle connection the server closed (valgrind makes every wait long):
            # sent again on a new one, a redelivery if the first was stored.
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
            response = _send(connection, body)
        if response.status != 204:
            raise RuntimeError(f"push answered {response.status}")

    return push


def _send(connection: http.client.HTTPConnection, body: str) -> http.client.HTTPResponse:
    connection.request("POST", "/pubsub/push", body, {"content-type": "application/json"})
    response = connection.getresponse()
    response.read()
    return response


def _load(port: int, variant: str, first: int, pushes: int, clients: int) -> None:
    """`pushes` sent by `clients` connections at once, as two producers (wrk's threads in
    the whole-path run): each connection takes the next sequence of its producer, so
    they arrive a little out of order, as under wrk."""
    counters = {name: itertools.count(first) for name in ("bench-0", "bench-1")}
    lock = threading.Lock()

    def client(index: int) -> None:
        name = f"bench-{index % 2}"
        push = _pusher(port, variant, name)
        for _ in range(pushes // clients):
            with lock:
                number = next(counters[name])
            push(number)

    with concurrent.futures.ThreadPoolExecutor(max_workers=clients) as pool:
        for done in [pool.submit(client, index) for index in range(clients)]:
            done.result()


def instructions(variant: str, pushes: int, clients: int = 1) -> tuple[float, float]:
    """Instructions per push of the event loop's thread, and of every thread; with
    `clients` above one, pushes sent by that many connections at once."""
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        argv = [
            "valgrind",
            "--tool=callgrind",
            "--separate-threads=yes",
            "--instr-atstart=no",
            f"--callgrind-out-file={out}",
            *uvicorn_argv("bench.producers:app", port),
        ]
        env = {
            "PYTHONHASHSEED": "0",
            "BENCH_DUCKDB": str(Path(tmp) / "records.duckdb"),
            "RECORDLINE_LOG_LEVEL": "WARNING",
        }
        with server(argv, port, env, ready_seconds=600, stop_seconds=300) as running:
            if clients > 1:
                _load(port, variant, 0, WARM_UP * 2, 2)
            else:
                push = _pusher(port, variant)
                for i in range(WARM_UP):
                    push(i)
            subprocess.run(
                ["callgrind_control", "--instr=on", str(running.process.pid)],
                check=True,
                capture_output=True,
            )
            if clients > 1:
                pushes -= pushes % clients
                _load(port, variant, WARM_UP, pushes, clients)
            else:
                for i in range(WARM_UP, WARM_UP + pushes):
                    push(i)
        counts = {}
        for part in Path(tmp).glob("callgrind.out-*"):
            found = re.search(r"^summary: (\d+)$", part.read_text(), re.MULTILINE)
            if found is not None:
                counts[part.name] = int(found.group(1))
        if "callgrind.out-01" not in counts:
            raise RuntimeError(f"no callgrind summary for the event loop of {variant}")
        return counts["callgrind.out-01"] / pushes, sum(counts.values()) / pushes


def _rows(variant: str, count: int) -> list[Record]:
    producer, epoch, sequence = NAMES[variant]
    return [
        Record(
            message_id=f"m-{n}",
            publish_time=_PUBLISHED,
            ingest_time=_PUBLISHED + n,
            id=f"r-{n}",
            data=json.dumps({"text": "Ejemplo de datos", "n": n}),
            attributes=json.dumps(
                {producer: "bench", epoch: "1", sequence: str(n)}, separators=(",", ":")
            ),
        )
        for n in range(count)
    ]


async def _append(path: str, rows: list[Record], batch: int) -> None:
    store = DuckDBStore(path)
    await store.start()
    try:
        for start in range(0, len(rows), batch):
            outcomes = await store.append(rows[start : start + batch])
            assert all(o is None for o in outcomes), outcomes
            # Each group commit applied on its own: the same batches in every run.
            # Under valgrind an apply may take longer than a read's barrier waits.
            while True:
                try:
                    await store.barrier()
                    break
                except StoreUnavailable:
                    continue
    finally:
        await store.close()


def worker(argv: list[str]) -> int:
    """Append `count` records in group commits of `batch`; print the CPU seconds the
    process spent (user and system, every thread of it)."""
    variant, count, batch = argv[0], int(argv[1]), int(argv[2])
    rows = _rows(variant, count)
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "records.duckdb")
        before = resource.getrusage(resource.RUSAGE_SELF)
        asyncio.run(_append(path, rows, batch))
        after = resource.getrusage(resource.RUSAGE_SELF)
        with duckdb.connect(path, read_only=True) as con:
            stored = con.execute("SELECT count(*) FROM records").fetchone()
            entries = _every_entry(con)
    assert stored == (count,), stored
    assert sum(e.stored for e in entries) == (count if variant == "on" else 0)
    spent = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    print(f"{spent:.6f}")
    return 0


def store_cpu(variant: str, count: int, batch: int) -> float:
    """CPU seconds of a process appending `count` records (its imports not counted)."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.producers", "--worker", variant, str(count), str(batch)],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return float(done.stdout.strip().splitlines()[-1])


def _print_instructions(counted: dict[str, tuple[float, float]], title: str) -> None:
    rows = [["sequences", "event loop / push", "off / on", "all threads / push", "off / on"]]
    for name in ("off", "on"):
        loop, every = counted[name]
        rows.append(
            [
                name,
                f"{loop:,.0f}",
                f"{counted['off'][0] / loop:.3f}",
                f"{every:,.0f}",
                f"{counted['off'][1] / every:.3f}",
            ]
        )
    print(title)
    print(table(rows))
    loop_ratio = counted["off"][0] / counted["on"][0]
    print(
        f"event loop off / on = {loop_ratio:.3f} (goal ≥ {GOAL}: "
        f"{'met' if loop_ratio >= GOAL else 'NOT met'})"
    )


def count(args: argparse.Namespace) -> int:
    if not (shutil.which("valgrind") and shutil.which("callgrind_control")):
        print("bench producers --count needs valgrind (apt-get install valgrind)", file=sys.stderr)
        return 2
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:  # two CPUs
        futures = {name: pool.submit(instructions, name, args.pushes) for name in NAMES}
        counted = {name: future.result() for name, future in futures.items()}
    _print_instructions(
        counted,
        f"instructions per push (callgrind), {args.pushes} pushes sent one at a time to the "
        "DuckDB store (each its own append, journal frame and ledger entry):",
    )
    if args.clients > 1:
        # Under load, as in the whole-path run, a group commit holds many pushes: what
        # the ledger adds once per batch is shared by them, what it adds per row is not.
        with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
            futures = {
                name: pool.submit(instructions, name, args.load_pushes, args.clients)
                for name in NAMES
            }
            counted = {name: future.result() for name, future in futures.items()}
        _print_instructions(
            counted,
            f"\ninstructions per push (callgrind) under load: {args.load_pushes} pushes sent by "
            f"{args.clients} connections at once, as two producers (group commits of many):",
        )
    # Under load a group commit holds many pushes: the store alone, in batches. Not
    # under valgrind: DuckDB's ledger table is written once a second, and a process
    # fifty times slower would write it fifty times as often a record.
    n, batch, rounds = args.records, args.batch, args.store_rounds
    spent: dict[str, list[float]] = {name: [] for name in NAMES}
    for _ in range(rounds):
        for name in NAMES:
            spent[name].append(store_cpu(name, n, batch))
    each = [off / on for off, on in zip(spent["off"], spent["on"], strict=True)]
    mean = {name: statistics.mean(values) for name, values in spent.items()}
    print(
        f"\nthe DuckDB store alone, {n:,} records in group commits of {batch} (each applied "
        f"before the next), CPU of the whole process (its threads; the journal's writer "
        f"aside), {rounds} runs each, taken in turn:"
    )
    print(
        table(
            [
                ["sequences", "µs a record", "off / on"],
                ["off", f"{mean['off'] / n * 1e6:.1f}", "1.000"],
                [
                    "on",
                    f"{mean['on'] / n * 1e6:.1f}",
                    f"{mean['off'] / mean['on']:.3f} (runs {min(each):.2f}-{max(each):.2f})",
                ],
            ]
        )
    )
    return 0


# -- storage ---------------------------------------------------------------------------------


def _entry(*, gaps: int, big: bool, conflicts: int = 0, ends: int = 0) -> EpochEntry:
    """An entry with `gaps` gaps, `conflicts` ranges in conflict and `ends` counts said;
    `big`: numbers near 2^63."""
    top = 2**62 if big else 10_000_000
    now = _PUBLISHED
    return EpochEntry(
        producer="p" * 64,
        epoch=now,
        highest=top,
        gaps=[
            Gap(first=top // 2 + 3 * n, last=top // 2 + 3 * n + 1, opened=now) for n in range(gaps)
        ],
        stored=top,
        rejected=top // 10,
        duplicates=top // 10,
        zombies=top // 100,
        refused=gaps,
        end=top + ends if ends else None,
        end_said=now if ends else None,
        first_seen=now,
        last_seen=now,
        conflicts=top // 100 if conflicts else 0,
        conflicted=[
            Gap(first=top // 4 + 3 * n, last=top // 4 + 3 * n, opened=now) for n in range(conflicts)
        ],
        ends=[top + n for n in range(ends)],
    )


def storage(_: argparse.Namespace) -> int:
    cases = {
        "in order": _entry(gaps=0, big=False),
        "100 gaps open": _entry(gaps=100, big=False),
        f"at the bound: {MAX_GAPS} gaps and ranges in conflict, 8 ends, numbers near 2^63": (
            _entry(gaps=MAX_GAPS, conflicts=MAX_GAPS, ends=8, big=True)
        ),
    }
    rows = [
        [
            "one epoch's entry",
            "bytes (msgpack)",
            f"times {MAX_EPOCHS} epochs (and {MAX_RETIRED} retired markers): a producer's most",
        ]
    ]
    marker = len(encode_entry(msgspec.structs.replace(_entry(gaps=0, big=True), retired=True)))
    for name, entry in cases.items():
        size = len(encode_entry(entry))
        rows.append([name, f"{size:,}", f"{size * MAX_EPOCHS + marker * MAX_RETIRED:,}"])
    print("The ledger's entry per producer epoch, as DuckDB and Spanner keep it (64-char ids):")
    print(table(rows))
    return 0


# -- many producers -------------------------------------------------------------------------

# Producers seeded per append: a busy system's group commit, each row another producer.
_SEED_BATCH = 5_000


def _seed_rows(variant: str, start: int, count: int) -> list[Record]:
    producer, epoch, sequence = NAMES[variant]
    return [
        Record(
            message_id=f"seed-{n}",
            publish_time=_PUBLISHED,
            ingest_time=_PUBLISHED + n,
            id=f"r-{n}",
            data=json.dumps({"text": "Ejemplo de datos", "n": n}),
            attributes=json.dumps(
                {producer: f"host-{n:08}", epoch: "1", sequence: "0"}, separators=(",", ":")
            ),
        )
        for n in range(start, start + count)
    ]


class _LoopSteps:
    """The longest the event loop went without coming back to this task (`longest`: a
    step anything else took, within a millisecond, or the machine not running the
    process), and the most CPU its thread spent meanwhile (`busiest`: what the steps
    themselves cost, whatever else the machine ran)."""

    def __init__(self) -> None:
        self.longest = 0.0
        self.busiest = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before, spent = loop.time(), time.thread_time()
            await asyncio.sleep(0.001)
            self.longest = max(self.longest, loop.time() - before - 0.001)
            self.busiest = max(self.busiest, time.thread_time() - spent)

    def __enter__(self) -> _LoopSteps:
        self._task = asyncio.ensure_future(self._watch())
        return self

    def __exit__(self, *_: object) -> None:
        assert self._task is not None
        self._task.cancel()


async def _scale(variant: str, producers: int, path: str) -> dict[str, float]:
    """Seed `producers` producers through the store (one message each, group commits of
    _SEED_BATCH), then, on `on`, start the store again and read its ledger while
    pushes come; the figures, as one JSON line."""
    figures: dict[str, float] = {}
    store = DuckDBStore(path)
    await store.start()
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    try:
        for start in range(0, producers, _SEED_BATCH):
            rows = _seed_rows(variant, start, min(_SEED_BATCH, producers - start))
            outcomes = await store.append(rows)
            assert all(o is None for o in outcomes)
        await store.barrier()
    finally:
        await store.close()
    after = resource.getrusage(resource.RUSAGE_SELF)
    figures["seconds"] = time.perf_counter() - started
    figures["cpu"] = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    figures["file"] = Path(path).stat().st_size
    if variant == "off":
        # The same appends on the file started again, with nothing to read back.
        store = DuckDBStore(path)
        await store.start()
        try:
            for n in range(400):
                row = _seed_rows("off", n * (producers // 400), 1)[0]
                await store.append([msgspec.structs.replace(row, message_id=f"next-{n}")])
            figures["resident"] = _resident()
        finally:
            await store.close()
        return figures
    started = time.perf_counter()
    store = DuckDBStore(path)
    await store.start()
    figures["start"] = time.perf_counter() - started
    reads = Producers(store, tokens=PageTokens("bench-secret-of-sixteen"), grace_seconds=1800)
    try:
        assert store.completeness is not None
        # The day before now: the hours the seeding counted, as it counts them (at the
        # time each append was settled).
        until = datetime.now(UTC) + timedelta(minutes=1)
        since = until - timedelta(hours=24)
        audits: list[float] = []
        pushes: list[float] = []
        with _LoopSteps() as steps:

            async def audit_loop() -> None:
                for _ in range(5):
                    begun = time.perf_counter()
                    report = await reads.audit(since, until)
                    audits.append(time.perf_counter() - begun)
                    assert sum(h.received for h in report.hours) >= producers

            async def push_loop() -> None:
                for n in range(400):
                    # A producer seeded (read back from the file), and one never seen.
                    row = _seed_rows("on", n * (producers // 400), 1)[0]
                    again = msgspec.structs.replace(
                        row,
                        message_id=f"next-{n}",
                        attributes=row.attributes.replace('"0"}', '"1"}'),
                    )
                    new = msgspec.structs.replace(
                        row,
                        message_id=f"new-{n}",
                        attributes=row.attributes.replace("host-", "new-"),
                    )
                    begun = time.perf_counter()
                    await store.append([again, new])
                    pushes.append(time.perf_counter() - begun)

            await asyncio.gather(audit_loop(), push_loop())
        figures["audit"] = max(audits)
        figures["step"] = steps.longest
        figures["busiest"] = steps.busiest
        pushes.sort()
        figures["append_p99"] = pushes[int(len(pushes) * 0.99)]
        begun = time.perf_counter()
        await reads.worst(100)
        figures["worst"] = time.perf_counter() - begun
        begun = time.perf_counter()
        await store.completeness.producers("", 1)
        figures["page"] = time.perf_counter() - begun
        figures["live"] = store.live_producers
        # What the process holds once started again on the file and read: the ledger of
        # the producers heard of since, not of every producer in it.
        figures["resident"] = _resident()
    finally:
        await store.close()
    return figures


def _resident() -> int:
    """The process's resident memory now, in bytes."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize()


def scale_worker(argv: list[str]) -> int:
    variant, producers = argv[0], int(argv[1])
    with tempfile.TemporaryDirectory() as tmp:
        figures = asyncio.run(_scale(variant, producers, str(Path(tmp) / "records.duckdb")))
    print(json.dumps(figures))
    return 0


def _scale_run(variant: str, producers: int) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-m", "bench.producers", "--scale-worker", variant, str(producers)],
        check=True,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    found: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return found


def scale(args: argparse.Namespace) -> int:
    counts = [int(n) for n in args.producers.split(",")]
    rows = [
        [
            "producers",
            "µs a record off / on",
            "off / on",
            "disk a producer",
            "held",
            "RSS reopened off / on",
            "start s",
            "audit ms",
            "worst ms",
            "page ms",
            "longest step ms (its CPU)",
            "append p99 ms",
        ]
    ]
    for producers in counts:
        off = _scale_run("off", producers)
        on = _scale_run("on", producers)
        held = on["live"]
        rows.append(
            [
                f"{producers:,}",
                f"{off['cpu'] / producers * 1e6:.0f} / {on['cpu'] / producers * 1e6:.0f}",
                f"{off['cpu'] / on['cpu']:.2f}",
                f"{(on['file'] - off['file']) / producers:,.0f} B",
                f"{held:,.0f}",
                f"{off['resident'] / 2**20:,.0f} / {on['resident'] / 2**20:,.0f} MB",
                f"{on['start']:.2f}",
                f"{on['audit'] * 1000:,.0f}",
                f"{on['worst'] * 1000:,.0f}",
                f"{on['page'] * 1000:,.0f}",
                f"{on['step'] * 1000:.1f} ({on['busiest'] * 1000:.1f})",
                f"{on['append_p99'] * 1000:,.0f}",
            ]
        )
    print(
        f"The DuckDB store with N producers, each one message, appended in group commits of "
        f"{_SEED_BATCH:,} (CPU of the whole process, sequences off and on, a process each); "
        "then started again on the file and read while appends come: the producers memory "
        "holds and the process's RSS after (off: the same appends, nothing read), the "
        "longest /v1/audit of a day (5 of them), the producers missing and in conflict most, "
        "a page of one producer, the longest step of the event loop meanwhile, and the p99 "
        "of 400 appends each of a producer read back from the file and a new one (disk a "
        "producer: the file on less off, over N):"
    )
    print(table(rows))
    return 0


async def _serving_audit(producers: int, gapped: float) -> dict[str, float]:
    """On the Spanner emulator: `producers` producers' entries (and ranges for a share
    `gapped` of them), then the audit's and the listing's reads."""
    import base64

    from app.records import moment
    from app.store.open import spanner_database
    from app.store.producers import entry_ranges
    from app.store.spanner import producers as serving_book
    from app.store.spanner.producers import SpannerCompleteness
    from app.store.spanner.serving import SpannerServing
    from tests.spanner.emulator import SpannerEmulator, find_emulator

    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        emulator = SpannerEmulator(find_emulator(), Path(tmp) / "spanner.log")
        try:
            url = emulator.database()
            database = emulator.client.instance(url.split("/")[-3]).database(url.split("/")[-1])
            now = time.time_ns() // 1000
            rng = random.Random(61)
            started = time.perf_counter()
            for start in range(0, producers, 2_000):
                entries = []
                for n in range(start, min(producers, start + 2_000)):
                    entry = EpochEntry(
                        producer=f"host-{n:08}",
                        epoch=1,
                        highest=10,
                        stored=11,
                        first_seen=now,
                        last_seen=now,
                    )
                    if rng.random() < gapped:
                        entry.gaps = [Gap(first=3, last=4, opened=now - 3_600_000_000)]
                    entries.append(entry)
                ranges = [r for e in entries for r in entry_ranges(e, e.epoch)]
                with database.batch() as batch:
                    batch.insert(
                        serving_book.TABLE,
                        serving_book.NAMES,
                        [
                            [
                                e.producer,
                                e.epoch,
                                base64.b64encode(encode_entry(e)),
                                moment(e.last_seen),
                            ]
                            for e in entries
                        ],
                    )
                    if ranges:
                        batch.insert(
                            serving_book.RANGES,
                            serving_book.RANGE_NAMES,
                            [
                                [r.producer, r.epoch, r.kind, r.first, r.last, r.opened]
                                for r in ranges
                            ],
                        )
            figures["seeded"] = time.perf_counter() - started
            serving = SpannerServing(spanner_database(url), emulator_host=emulator.host)
            await serving.start()
            try:
                completeness = serving.completeness
                assert isinstance(completeness, SpannerCompleteness)
                audits = []
                for _ in range(5):
                    begun = time.perf_counter()
                    found = await completeness.audit(
                        now - 86_400_000_000, now + 1, cutoff=now, limit=100
                    )
                    audits.append(time.perf_counter() - begun)
                figures["audit"] = max(audits)
                figures["missing"] = sum(found.missing_by_hour.values())
                begun = time.perf_counter()
                await completeness.worst(cutoff=now, since=now - 86_400_000_000, top=100)
                figures["worst"] = time.perf_counter() - begun
                begun = time.perf_counter()
                await completeness.producers("", 1)
                figures["page"] = time.perf_counter() - begun
            finally:
                await serving.close()
        finally:
            emulator.stop()
    return figures


def serving_audit(args: argparse.Namespace) -> int:
    rows = [["producers", "with a gap", "seeded s", "audit ms", "worst ms", "page ms", "missing"]]
    for producers in [int(n) for n in args.producers.split(",")]:
        found = asyncio.run(_serving_audit(producers, args.gapped))
        rows.append(
            [
                f"{producers:,}",
                f"{args.gapped:.0%}",
                f"{found['seeded']:.0f}",
                f"{found['audit'] * 1000:,.0f}",
                f"{found['worst'] * 1000:,.0f}",
                f"{found['page'] * 1000:,.0f}",
                f"{found['missing']:,.0f}",
            ]
        )
    print(
        "The serving tier's ledger on the Spanner emulator: N producers' entries, a share of "
        "them with a gap of two sequences an hour old; the longest of 5 audits of a day, "
        "the producers missing and in conflict most, a page of one producer (the emulator "
        "is one process, not an instance: its times are no production latency):"
    )
    print(table(rows))
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench producers", description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--count", action="store_true", help="instructions per push")
    parser.add_argument("--pushes", type=int, default=300)
    parser.add_argument("--clients", type=int, default=64, help="connections at once (1: none)")
    parser.add_argument("--load-pushes", type=int, default=1280)
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--store-rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--storage", action="store_true", help="the ledger's bytes per producer")
    parser.add_argument("--scale", action="store_true", help="the DuckDB store with many producers")
    parser.add_argument(
        "--serving", action="store_true", help="the serving tier's audit with many producers"
    )
    parser.add_argument("--producers", default="1000,100000,1000000")
    parser.add_argument(
        "--gapped", type=float, default=0.01, help="the share of producers with a gap (0.01)"
    )
    args = parser.parse_args(argv)
    if not 0 <= args.gapped <= 1:
        parser.error("--gapped is a share of the producers, from 0 to 1")
    if args.storage:
        return storage(args)
    if args.scale:
        return scale(args)
    if args.serving:
        return serving_audit(args)
    if args.count:
        return count(args)
    return whole_path(args)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        sys.exit(worker(sys.argv[2:]))
    if sys.argv[1:2] == ["--scale-worker"]:
        sys.exit(scale_worker(sys.argv[2:]))
    sys.exit(main(sys.argv[1:]))
