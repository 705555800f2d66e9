"""What each HTTP server costs a push, and what bounding every request costs it.

    python3 dev.py bench server [--pushes 300] [--rounds 3] [--seconds 5]
                                [--only ROWS] [--measure both|instructions|load]
                                [--app floor|deployed] [--unpinned]

`recordline serve` serves HTTP/1.1 with uvicorn's httptools protocol and a
bound on every byte of every request, in size and in time (`app.http.limits`),
which httptools alone does not have. Rows, each serving the same app (`--app`:
the throughput floor's, Litestar and msgspec answering 204 with no threads of
its own, by default; or Recordline as deployed, `bench.telemetry:telemetry_on`,
whose store and telemetry run threads of their own):

- httptools: uvicorn's httptools protocol alone, no bounds (the baseline, and
  the server of the throughput floor);
- bounded: as `recordline serve` serves it;
- h11: uvicorn's h11 protocol (`h11_max_incomplete_event_size` bounds a head's
  size, not its time);
- hypercorn: Hypercorn on uvloop, HTTP/1.1 (h11), its head size and read timeout set;
- granian: Granian (Rust, hyper), HTTP/1 only, no WebSocket, its buffer and
  header-read timeout set.

Two measures:
- instructions: each row under valgrind's callgrind, pushes sent one at a time
  on one connection, counted from the first push to the last (start and stop
  left out), divided by the pushes: those of the event loop's thread (the main
  thread), and those of every thread of the process (Granian parses in threads
  of its own, so the event loop's thread alone would flatter it). No machine
  noise, but no kernel time either;
- load: wrk at 64 connections, rows taken in turn for `--rounds` short runs
  (as `bench.harness.interleaved`), servers on one CPU and wrk on the other
  (`--unpinned`: all on every CPU): pushes a second, p99, and the server
  process's CPU time (user and system, every thread) a push, as ratios to
  httptools in the same run. On a shared machine a server with more threads
  takes a larger share of its CPU from other jobs, so its pushes a second
  flatter it: its CPU a push does not.

Granian and Hypercorn are no dependencies of Recordline: the bench runs itself
again under `uv run --with` them when they are missing, leaving .venv as it is.
The instructions need valgrind (Debian: `apt-get install valgrind`), the load wrk.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import importlib
import importlib.util
import math
import os
import shutil
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.harness import free_port, push_script, server, split_cpus, table, wrk
from bench.instructions import by_thread

# The app each row serves: the throughput floor's (Litestar, msgspec, a 204; no
# threads of its own, so every thread's count is the server's and the app's), or
# Recordline as deployed (its store's and telemetry's threads count too).
APPS = {"floor": "bench.baselines:floor", "deployed": "bench.telemetry:telemetry_on"}
ROWS = ("httptools", "bounded", "h11", "hypercorn", "granian")
# The servers measured against uvicorn, pinned: their figures are for these versions.
CANDIDATES = {"granian": "granian==2.8.7", "hypercorn": "hypercorn==0.18.0"}


def argv(row: str, port: int, app: str, *, patient: bool = False) -> list[str]:
    """`app` (`module:factory`) served by `row` on `port`; `patient`: with the time bounds
    as wide as they go (`PATIENT`)."""
    return [
        sys.executable,
        "-m",
        "bench.server",
        "--serve",
        row,
        str(port),
        app,
        *(["--patient"] if patient else []),
    ]


# Under valgrind a server runs ~50 times slower: a request's head may take that much
# longer, and a connection stay idle that much longer between pushes.
PATIENT = {"header_timeout_seconds": 300.0, "keep_alive_seconds": 3600.0}


def serve(row: str, port: int, app: str, *, patient: bool = False) -> None:
    import msgspec

    from app.settings import ServerSettings

    limits = ServerSettings.from_env(os.environ)
    if patient:
        limits = msgspec.structs.replace(limits, **PATIENT)
    if row == "hypercorn":
        _hypercorn(port, limits, app)
    elif row == "granian":
        _granian(port, limits, app)
    else:
        _uvicorn(row, port, limits, app)


def _factory(app: str) -> Any:
    module, _, name = app.partition(":")
    return getattr(importlib.import_module(module), name)


def _uvicorn(row: str, port: int, limits: Any, app: str) -> None:
    import uvicorn

    http: Any = row
    served: Any = app
    factory = True
    if row == "bounded":
        from app.http.limits import bounded_connections

        served, factory = _answering(_factory(app)()), False
        http = bounded_connections(served, limits)
    uvicorn.run(
        served,
        factory=factory,
        port=port,
        loop="uvloop",
        http=http,
        ws="none",
        h11_max_incomplete_event_size=limits.max_header_bytes,
        timeout_keep_alive=math.ceil(limits.keep_alive_seconds),
        access_log=False,
        log_level="warning",
    )


def _answering(app: Any) -> Any:
    """`app`, giving back each request's charge of the budget once it has answered, as
    Recordline's app does (`app.http.head`): the floor's app knows of no budget, and
    under the bounds alone its pushes would be refused once the budget had filled."""
    from app.http.limits import CHARGE

    async def answering(scope: Any, receive: Any, send: Any) -> None:
        try:
            await app(scope, receive, send)
        finally:
            charge = scope.get(CHARGE)
            if charge is not None:
                charge.release()

    return answering


def _hypercorn(port: int, limits: Any, app: str) -> None:
    import uvloop
    from hypercorn.asyncio import serve as hypercorn_serve
    from hypercorn.config import Config

    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.h11_max_incomplete_size = limits.max_header_bytes
    config.read_timeout = int(limits.header_timeout_seconds)
    config.keep_alive_timeout = limits.keep_alive_seconds
    config.accesslog = None
    config.loglevel = "WARNING"
    uvloop.run(hypercorn_serve(_factory(app)(), config, mode="asgi"))


def _granian(port: int, limits: Any, app: str) -> None:
    import asyncio

    import uvloop
    from granian.constants import HTTPModes, Interfaces
    from granian.http import HTTP1Settings
    from granian.server.embed import Server

    # In-process (the embedded server) so that valgrind counts the Rust threads too;
    # the worker is the one a `granian` process would fork.
    server = Server(
        _factory(app),
        port=port,
        interface=Interfaces.ASGI,
        http=HTTPModes.http1,
        websockets=False,
        factory=True,
        log_level="warning",  # type: ignore[arg-type]
        http1_settings=HTTP1Settings(
            # Granian takes at most 60 s.
            header_read_timeout=int(min(limits.header_timeout_seconds, 60) * 1000),
            max_buffer_size=limits.max_header_bytes,
        ),
    )

    async def run() -> None:
        loop = asyncio.get_running_loop()
        import signal

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, server.stop)
        await server.serve()

    uvloop.run(run())


@dataclasses.dataclass(frozen=True)
class Round:
    rate: float  # pushes answered a second
    p99: float  # ms
    cpu_us: float  # the server process's CPU time (user and system) a push
    errors: int


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load(
    rows: Sequence[str], app: str, *, rounds: int, seconds: float, pinned: bool
) -> dict[str, list[Round]]:
    """Every row served at once, loaded in turn (as `bench.harness.interleaved`), with
    the CPU time each server spent on its pushes: on a shared machine a server with
    more threads gets a larger share of a CPU, so pushes a second alone flatter it."""
    cpus = split_cpus() if pinned else None
    server_cpus, load_cpus = cpus if cpus else (None, None)
    script = push_script()
    found: dict[str, list[Round]] = {row: [] for row in rows}
    with contextlib.ExitStack() as stack:
        servers = {}
        for row in rows:
            port = free_port()
            servers[row] = stack.enter_context(server(argv(row, port, app), port, {}, server_cpus))
        for row in rows:  # warm up
            wrk(servers[row].url, script, connections=64, seconds=2, cpus=load_cpus)
        for n in range(rounds):
            for row in [*rows[n % len(rows) :], *rows[: n % len(rows)]]:
                pid = servers[row].process.pid
                before = _cpu_seconds(pid)
                done = wrk(
                    servers[row].url, script, connections=64, seconds=seconds, cpus=load_cpus
                )
                spent = _cpu_seconds(pid) - before
                pushes = max(done.rate * seconds, 1)
                found[row].append(
                    Round(
                        done.rate, done.p99, spent / pushes * 1e6, done.non2xx + done.socket_errors
                    )
                )
    return found


def _with_candidates(argv_: Sequence[str]) -> int | None:
    """Run this bench again under `uv run --with` the candidate servers if one is
    missing here; None if they are all importable (or uv is nowhere)."""
    missing = [spec for name, spec in CANDIDATES.items() if importlib.util.find_spec(name) is None]
    uv = shutil.which("uv")
    if not missing or uv is None or os.environ.get("BENCH_SERVER_CANDIDATES"):
        return None
    withs = [arg for spec in CANDIDATES.values() for arg in ("--with", spec)]
    os.environ["BENCH_SERVER_CANDIDATES"] = "1"
    os.execvp(uv, [uv, "run", "--frozen", *withs, "python", "-m", "bench", "server", *argv_])
    return 0  # not reached


def instructions(rows: Sequence[str], pushes: int, app: str) -> dict[str, tuple[float, float]]:
    """Per push, for each row: the main thread's instructions (the event loop), and every
    thread's, counted from the first push to the last."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:  # two CPUs
        counting = {}
        for row in rows:
            port = free_port()
            counting[row] = pool.submit(
                by_thread, argv(row, port, app, patient=True), port, "00", pushes, until_stop=False
            )
        counted = {row: future.result() for row, future in counting.items()}
    return {row: (c[1] / pushes, sum(c.values()) / pushes) for row, c in counted.items()}


def main(argv_: list[str]) -> int:
    if argv_[:1] == ["--serve"]:
        serve(argv_[1], int(argv_[2]), argv_[3], patient=argv_[4:] == ["--patient"])
        return 0
    parser = argparse.ArgumentParser(prog="bench server")
    parser.add_argument("--pushes", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--only", default=",".join(ROWS), help="rows, comma-separated")
    parser.add_argument("--measure", choices=["both", "instructions", "load"], default="both")
    parser.add_argument("--app", choices=sorted(APPS), default="floor", help="the app served")
    parser.add_argument(
        "--unpinned", action="store_true", help="servers and wrk share every CPU (load)"
    )
    args = parser.parse_args(argv_)
    rows = [row for row in args.only.split(",") if row]
    app = APPS[args.app]
    if any(row in CANDIDATES for row in rows):
        rerun = _with_candidates(argv_)
        if rerun is not None:
            return rerun
        rows = [r for r in rows if r not in CANDIDATES or importlib.util.find_spec(r)]
    base = rows[0]
    if args.measure in ("both", "instructions"):
        if not (shutil.which("valgrind") and shutil.which("callgrind_control")):
            print("bench server needs valgrind (apt-get install valgrind)", file=sys.stderr)
            return 2
        counted = instructions(rows, args.pushes, app)
        main_base, every_base = counted[base]
        lines = [["server", "event loop", f"/ {base}", "every thread", f"/ {base}"]]
        lines += [
            [r, f"{m:,.0f}", f"{m / main_base:.3f}", f"{e:,.0f}", f"{e / every_base:.3f}"]
            for r, (m, e) in counted.items()
        ]
        print(
            f"instructions a push (callgrind), {args.pushes} pushes one at a time, "
            "from the first to the last"
        )
        print(table(lines))
    if args.measure in ("both", "load"):
        if not shutil.which("wrk"):
            print("bench server needs wrk for the load", file=sys.stderr)
            return 2
        loads = load(rows, app, rounds=args.rounds, seconds=args.seconds, pinned=not args.unpinned)
        rate = {r: statistics.median(x.rate for x in runs) for r, runs in loads.items()}
        p99 = {r: statistics.median(x.p99 for x in runs) for r, runs in loads.items()}
        cpu = {r: statistics.median(x.cpu_us for x in runs) for r, runs in loads.items()}
        errors = {r: sum(x.errors for x in runs) for r, runs in loads.items()}
        lines = [
            ["server", "pushes/s", f"/ {base}", "p99 ms", f"/ {base}", "CPU µs a push", f"/ {base}"]
        ]
        lines += [
            [
                r,
                f"{rate[r]:,.0f}",
                f"{rate[r] / rate[base]:.3f}",
                f"{p99[r]:.1f}",
                f"{p99[r] / p99[base]:.2f}",
                f"{cpu[r]:.0f}",
                f"{cpu[r] / cpu[base]:.3f}",
            ]
            for r in rows
        ]
        where = "servers and wrk on every CPU" if args.unpinned else "servers on one CPU"
        print(
            f"wrk, 64 connections, {args.rounds} rounds of {args.seconds:g} s in turn (medians), "
            f"{where}; CPU: the server process's user and system time"
        )
        print(table(lines))
        if any(errors.values()):
            print(f"errors (non-2xx or socket): {errors}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
