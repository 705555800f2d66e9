"""What each part of telemetry costs a push, in instructions: no machine noise.

    python3 dev.py bench instructions [--pushes 300]
    python3 dev.py bench instructions --against REF [--against REF ...] [--pushes 300]

`bench telemetry` measures throughput, which on a shared machine moves by up
to ±8% between two equal apps. This counts instead: each app is served under
valgrind's callgrind, pushes are sent one at a time (so each is its own batch
and per-batch costs show at full size), and the instructions the event loop's
thread runs are divided by the pushes. Two runs agree to within ~1%.

Rows measured:
- off: no tracer provider, no metrics (the baseline);
- metrics: the instruments, recorded per push and per append;
- on, caller not sampled: as deployed; the server middleware reads the
  caller's context, as for nearly every push on Cloud Run;
- on, caller sampled: the server span, the flush span and the append span;
- every push traced: a sampler that records whatever the caller decided.
Rows computed from those, as a mix of sampled and unsampled pushes:
- on at Cloud Run's rate: one push in 40,000 sampled (Cloud Run samples ~0.1
  requests a second per instance: one in 40,000 at 4,000 pushes a second);
- on, one in ten sampled.

Targets: on at Cloud Run's rate, and metrics, within 5% of off (off / row ≥ 0.95).

`--against REF` counts instead what a push costs `recordline serve` (on a DuckDB
file, as `bench ingest` serves design a) at this checkout and at each earlier commit
REF (its files from git, run by this checkout's interpreter and lockfile), the
event loop's thread and every thread: where `bench ingest --against` needs a quiet
machine to tell 5% apart, this tells it on any. The event loop's figure repeats
within ~1%; every thread's moves by up to ~8% between runs (DuckDB's and the
allocator's own threads), so only the first is a verdict.

Needs valgrind (Debian: `apt-get install valgrind`).
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import http.client
import json
import random
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from bench.harness import RECORD, ROOT, free_port, server, table, uvicorn_argv
from bench.ingest import reference_argv, reference_design

ROWS = {
    "off": ("telemetry_off", "00"),
    "metrics": ("telemetry_metrics", "00"),
    "on, caller not sampled": ("telemetry_on", "00"),
    "on, caller sampled": ("telemetry_on", "01"),
    "every push traced": ("telemetry_every", "00"),
}
# Sampled pushes in each mix, as a fraction.
MIXES = {"on at Cloud Run's rate (1 in 40,000)": 1 / 40_000, "on, 1 in 10 sampled": 1 / 10}
TARGET = 0.95
WARM_UP = 100
# Every app gets the same trace ids.
SEED = 1


def count(factory: str, flags: str, pushes: int) -> float:
    """Event-loop thread instructions per push for `bench.telemetry:<factory>`."""
    port = free_port()
    return per_push(uvicorn_argv(f"bench.telemetry:{factory}", port), port, flags, pushes)


def per_push(server_argv: list[str], port: int, flags: str, pushes: int) -> float:
    """Event-loop thread instructions per push of the server `server_argv` starts."""
    threads = by_thread(server_argv, port, flags, pushes)
    # Thread 1 is the main thread: uvicorn's event loop.
    return threads[1] / pushes


def by_thread(
    server_argv: list[str],
    port: int,
    flags: str,
    pushes: int,
    *,
    until_stop: bool = True,
    env: dict[str, str] | None = None,
) -> dict[int, int]:
    """The instructions each thread (numbered from 1, the main thread) of the server
    `server_argv` starts (with `env` besides the caller's) runs from the first push
    counted to its exit, or, without `until_stop`, to the last push."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        argv = [
            "valgrind",
            "--tool=callgrind",
            "--separate-threads=yes",
            "--instr-atstart=no",
            f"--callgrind-out-file={out}",
            *server_argv,
        ]
        # Under valgrind Python starts ~50 times slower, and writes its counts as it stops.
        with server(
            argv, port, {**(env or {}), "PYTHONHASHSEED": "0"}, ready_seconds=600, stop_seconds=300
        ) as running:
            push = _pusher(port, flags)
            for i in range(WARM_UP):
                push(i)
            subprocess.run(
                ["callgrind_control", "--instr=on", str(running.process.pid)],
                check=True,
                capture_output=True,
            )
            for i in range(WARM_UP, WARM_UP + pushes):
                push(i)
            if not until_stop:
                # A dump of its own (callgrind.out.1-NN): what the pushes cost, alone.
                subprocess.run(
                    ["callgrind_control", "--dump", str(running.process.pid)],
                    check=True,
                    capture_output=True,
                )
        dump = "callgrind.out" if until_stop else "callgrind.out.1"
        counts = {}
        for path in Path(tmp).glob(f"{dump}-[0-9]*"):
            found = re.search(r"^summary: (\d+)$", path.read_text(), re.MULTILINE)
            if found is not None:
                counts[int(path.name.rsplit("-", 1)[1])] = int(found.group(1))
        if not counts.get(1):
            raise RuntimeError(f"no callgrind summary for {server_argv}")
        return counts


def _pusher(port: int, flags: str) -> Callable[[int], None]:
    """Push message `i`, with a fresh `traceparent` whose flags are `flags`."""
    data = base64.b64encode(RECORD.encode()).decode()
    rng = random.Random(SEED)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def push(i: int) -> None:
        body = json.dumps(
            {
                "message": {
                    "data": data,
                    "messageId": f"m-{i}",
                    "publishTime": "2024-04-27T12:00:01Z",
                    "attributes": {"origin": "bench"},
                },
                "subscription": "projects/bench/subscriptions/records-push",
            }
        )
        traceparent = f"00-{rng.getrandbits(127) | 1:032x}-{rng.getrandbits(63) | 1:016x}-{flags}"
        headers = {"content-type": "application/json", "traceparent": traceparent}
        connection.request("POST", "/pubsub/push", body, headers)
        response = connection.getresponse()
        response.read()
        if response.status != 204:
            raise RuntimeError(f"push answered {response.status}")

    return push


def served(source: Path, pushes: int) -> tuple[float, float]:
    """Instructions per push of `recordline serve` of the files in `source`: the event
    loop's thread, and every thread, to the last push."""
    with tempfile.TemporaryDirectory() as folder:
        port = free_port()
        argv = reference_argv(source, Path(folder) / "counted.duckdb", port)
        quiet = {"PYTHONPATH": str(source), "RECORDLINE_LOG_LEVEL": "warning"}
        threads = by_thread(argv, port, "00", pushes, until_stop=False, env=quiet)
    return threads[1] / pushes, sum(threads.values()) / pushes


def against(refs: list[str], pushes: int) -> int:
    """`recordline serve` here and at each of `refs`, counted side by side."""
    with tempfile.TemporaryDirectory() as folder:
        sources = {"here": ROOT}
        for ref in refs:
            name, source = reference_design(ref, Path(folder))
            sources[name.split(" ", 1)[0].removeprefix("a@")] = source
        with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:  # two CPUs
            counting = {name: pool.submit(served, src, pushes) for name, src in sources.items()}
            counted = {name: future.result() for name, future in counting.items()}
    loop, every = counted["here"]
    rows = [["recordline serve", "event loop a push", "every thread", "here / it: loop, every"]]
    for name, (its_loop, its_every) in counted.items():
        ratios = f"{loop / its_loop:.3f}, {every / its_every:.3f}"
        rows.append([name, f"{its_loop:,.0f}", f"{its_every:,.0f}", ratios])
    print(
        f"instructions per push (callgrind), `recordline serve` on a DuckDB file, {pushes} "
        "pushes sent one at a time after 100; below 1.000 a push costs less here"
    )
    print(table(rows))
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench instructions")
    parser.add_argument("--pushes", type=int, default=300)
    parser.add_argument(
        "--against",
        action="append",
        default=[],
        metavar="REF",
        help="count `recordline serve` here and at this earlier commit instead",
    )
    args = parser.parse_args(argv)
    if not (shutil.which("valgrind") and shutil.which("callgrind_control")):
        print("bench instructions needs valgrind (apt-get install valgrind)", file=sys.stderr)
        return 2
    if args.against:
        return against(args.against, args.pushes)
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:  # two CPUs
        counting = {
            name: pool.submit(count, factory, flags, args.pushes)
            for name, (factory, flags) in ROWS.items()
        }
        counted = {name: future.result() for name, future in counting.items()}
    for name, sampled in MIXES.items():
        counted[name] = (1 - sampled) * counted["on, caller not sampled"] + sampled * counted[
            "on, caller sampled"
        ]
    off = counted["off"]
    rows = [["telemetry", "instructions a push", "off / row", "over off"]]
    for name, instructions in counted.items():
        mark = " (computed)" if name in MIXES else ""
        rows.append(
            [
                name + mark,
                f"{instructions:,.0f}",
                f"{off / instructions:.3f}",
                f"{instructions - off:+,.0f}",
            ]
        )
    print(
        f"event-loop thread instructions per push (callgrind), {args.pushes} pushes sent one at "
        "a time: each is its own batch, so per-append costs count in full"
    )
    print(table(rows))
    for name in ("metrics", next(iter(MIXES))):
        ratio = off / counted[name]
        verdict = "met" if ratio >= TARGET else "MISSED"
        print(f"target {name}: off / row = {ratio:.3f} >= {TARGET}: {verdict}")
    return 0
