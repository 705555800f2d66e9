"""What bounding every input costs a push, in instructions: no machine noise.

    python3 dev.py bench server [--pushes 300]

`recordline serve` serves HTTP/1.1 with uvicorn's httptools protocol and a bound
on every request head's size and time (`app.http_limits`), which httptools alone
does not have. Rows: httptools alone (the baseline), as served (bounded), and
uvicorn's h11 protocol, whose `h11_max_incomplete_event_size` bounds a head's
size (not its time). Each serves the same app
(`bench.telemetry:telemetry_on`, as deployed) under valgrind's callgrind;
pushes are sent one at a time on one connection, and the instructions the
event loop's thread runs are divided by the pushes (as `bench instructions`).
The ratio is the price of the bounds; the baseline is measured in the same run.

Needs valgrind (Debian: `apt-get install valgrind`).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import shutil
import sys
from typing import Any

from bench.harness import free_port, table
from bench.instructions import per_push

APP = "bench.telemetry:telemetry_on"


def argv(protocol: str, port: int) -> list[str]:
    """The app served by uvicorn with `protocol` as `recordline serve` configures it."""
    return [sys.executable, "-m", "bench.server", "--serve", protocol, str(port)]


def serve(protocol: str, port: int) -> None:
    import uvicorn

    from app.http_limits import bounded_httptools
    from app.settings import ServerSettings

    limits = ServerSettings()
    http: Any = protocol
    if protocol == "bounded":
        http = bounded_httptools(
            header_timeout=limits.header_timeout_seconds, max_header_bytes=limits.max_header_bytes
        )
    uvicorn.run(
        APP,
        factory=True,
        port=port,
        loop="uvloop",
        http=http,
        h11_max_incomplete_event_size=limits.max_header_bytes,
        limit_concurrency=limits.max_connections,
        access_log=False,
        log_level="warning",
    )


def main(argv_: list[str]) -> int:
    if argv_[:1] == ["--serve"]:
        serve(argv_[1], int(argv_[2]))
        return 0
    parser = argparse.ArgumentParser(prog="bench server")
    parser.add_argument("--pushes", type=int, default=300)
    args = parser.parse_args(argv_)
    if not (shutil.which("valgrind") and shutil.which("callgrind_control")):
        print("bench server needs valgrind (apt-get install valgrind)", file=sys.stderr)
        return 2
    protocols = ("httptools", "bounded", "h11")
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:  # two CPUs
        counting = {}
        for protocol in protocols:
            port = free_port()
            counting[protocol] = pool.submit(
                per_push, argv(protocol, port), port, "00", args.pushes
            )
        counted = {protocol: future.result() for protocol, future in counting.items()}
    base = counted["httptools"]
    rows = [["protocol", "instructions a push", "row / httptools"]]
    rows += [[p, f"{n:,.0f}", f"{n / base:.3f}"] for p, n in counted.items()]
    print(
        f"event-loop thread instructions per push (callgrind), {args.pushes} pushes, one at a time"
    )
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
