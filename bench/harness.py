"""What every benchmark shares: a push body, server processes, wrk, peak RSS.

Figures on a shared 2-core machine move by up to 2x between runs, so every
benchmark measures its baseline in the same run and reports ratios.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from recordline_dev.processes import free_port as free_port  # bench modules take it from here

ROOT = Path(__file__).resolve().parent.parent
RECORDLINE = str(Path(sys.executable).with_name("recordline"))

# A 310-byte record in a ~570-byte envelope: every ingest figure in the README
# is measured at this size.
DATA = {"text": "Ejemplo de datos", "values": [1, 2, 3], "note": "x" * 180}
RECORD = json.dumps({"id": "r", "timestamp": "2024-04-27T12:00:00Z", "data": DATA})

# wrk's Lua: every request carries a new message id (so nothing is deduplicated
# away), and `done` prints one JSON line of results, p95 included, which wrk's
# own report lacks. Each of wrk's threads runs the script in a Lua state of its
# own whose `math.random` starts from the same seed: ids drawn there were the
# same in every thread and every run, and most pushes were copies of earlier
# ones. The main state, seeded with the time, gives each thread its prefix.
PUSH_LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
%(headers)s
local data = "%(data)s"
local counter = 0
math.randomseed(os.time())
local run = os.time() .. "-" .. math.random(1, 1000000000)
local threads = 0
setup = function(thread)
  threads = threads + 1
  thread:set("prefix", run .. "-" .. threads)
end
request = function()
%(per_request)s
  counter = counter + 1
  local id = prefix .. "-" .. counter
  local body = '{"message":{"data":"' .. data .. '","messageId":"' .. id ..
    '","publishTime":"2024-04-27T12:00:01Z","attributes":%(attributes)s},' ..
    '"subscription":"projects/bench/subscriptions/records-push"}'
  return wrk.format(nil, "%(path)s", nil, body)
end
"""
DONE_LUA = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK {"requests":%d,"seconds":%f,"p50":%f,"p95":%f,"p99":%f,"non2xx":%d,' ..
    '"socket_errors":%d}\\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1000,
    latency:percentile(95) / 1000, latency:percentile(99) / 1000, e.status,
    e.connect + e.read + e.write + e.timeout))
end
"""


def push_script(
    path: str = "/pubsub/push",
    headers: dict[str, str] | None = None,
    per_request: str = "",
    *,
    data: bytes = RECORD.encode(),
    attributes: dict[str, str] | None = None,
    pause_ms: int = 0,
) -> str:
    """wrk's Lua for pushes of `data`; `per_request` is Lua run before each one is built.

    With `pause_ms`, each connection waits that long before its next push:
    a load bounded at about connections * 1000 / pause_ms pushes a second.
    """
    import base64

    lines = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in (headers or {}).items())
    encoded = base64.b64encode(data).decode()
    attributes_json = json.dumps(attributes or {"origin": "bench"}, separators=(",", ":"))
    values = {
        "headers": lines,
        "data": encoded,
        "path": path,
        "per_request": per_request,
        "attributes": attributes_json,
    }
    pause = f"delay = function() return {pause_ms} end\n" if pause_ms else ""
    return PUSH_LUA % values + pause + DONE_LUA


@dataclass(frozen=True)
class Load:
    rate: float  # answered requests per second
    p50: float  # ms
    p95: float
    p99: float
    non2xx: int
    socket_errors: int


def wrk(
    url: str,
    script: str,
    *,
    connections: int,
    seconds: float,
    threads: int = 2,
    cpus: Sequence[int] | None = None,
) -> Load:
    """Load `url` for `seconds`; on `cpus` only, with one thread each, if given."""
    if cpus:
        threads = len(cpus)
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
    try:
        out = subprocess.run(
            [
                *_taskset(cpus),
                "wrk",
                "-t",
                str(min(threads, connections)),
                "-c",
                str(connections),
                "-d",
                f"{seconds:g}s",
                "-s",
                f.name,
                url,
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        os.unlink(f.name)
    line = next(ln for ln in out.splitlines() if ln.startswith("WRK "))
    r = json.loads(line[4:])
    return Load(
        rate=r["requests"] / r["seconds"],
        p50=r["p50"],
        p95=r["p95"],
        p99=r["p99"],
        non2xx=r["non2xx"],
        socket_errors=r["socket_errors"],
    )


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]

    def peak_rss_mb(self) -> float:
        """Peak resident memory of the server and its child processes (the
        DuckDB store's journal writer), each at its own peak: an upper bound."""
        pids = [self.process.pid]
        for pid in pids:  # grows as children are found
            for task in Path(f"/proc/{pid}/task").iterdir():
                pids.extend(int(c) for c in (task / "children").read_text().split())
        return sum(_peak_kb(pid) for pid in pids) / 1024


def _peak_kb(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM"))


def _taskset(cpus: Sequence[int] | None) -> list[str]:
    return ["taskset", "--cpu-list", ",".join(map(str, cpus))] if cpus else []


def split_cpus() -> tuple[list[int], list[int]] | None:
    """Servers on the first CPU this process may use, the load generator on the
    others; None with fewer than two (or without taskset)."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2 or not shutil.which("taskset"):
        return None
    return cpus[:1], cpus[1:]


@contextlib.contextmanager
def server(
    argv: Sequence[str],
    port: int,
    env: dict[str, str] | None = None,
    cpus: Sequence[int] | None = None,
    *,
    ready_seconds: float = 60,
    stop_seconds: float = 30,
) -> Iterator[Server]:
    """Run a server process (on `cpus`, if given) until the block ends.

    Ready once /healthz answers, within `ready_seconds`; stopped with SIGTERM,
    and killed if it has not exited `stop_seconds` later. Its log goes to a
    file (a pipe nobody reads would stall it once full), shown if it fails to
    start, and after it stops when RECORDLINE_BENCH_LOGS is set.
    """
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            [*_taskset(cpus), *argv],
            env={**os.environ, **(env or {})},
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )

        def output() -> str:
            log.seek(0)
            return log.read().decode(errors="replace")[-4000:]

        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + ready_seconds
            while True:
                if process.poll() is not None:
                    raise RuntimeError(output())
                with contextlib.suppress(httpx.TransportError):
                    if httpx.get(f"{url}/healthz").status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{argv} did not start:\n{output()}")
                time.sleep(0.1)
            yield Server(url, process)
        finally:
            process.terminate()
            try:
                process.wait(timeout=stop_seconds)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if os.environ.get("RECORDLINE_BENCH_LOGS"):
                print(output(), file=sys.stderr)


def interleaved(
    apps: dict[str, Callable[[int], Sequence[str]]],
    script: str,
    *,
    rounds: int,
    seconds: float,
    connections: int,
    env: Mapping[str, Mapping[str, str]] | None = None,
    scripts: Mapping[str, str] | None = None,
    inspect: Callable[[str, Server], None] | None = None,
    pinned: bool = False,
) -> dict[str, list[Load]]:
    """Serve every app at once (argv for a port) and load them in turn, `rounds` times over.

    On a shared two-core machine throughput drifts by ±20% over a minute;
    short runs taken in turn put the same drift on every app, so their
    ratio holds where separate long runs would not. Each round starts with
    the next app, so none always runs first. `env` adds variables per app,
    `scripts` a wrk script of its own in place of `script`; `inspect` sees
    each server after the last round, before it stops. `pinned` puts the
    servers on one CPU and wrk on the rest (see `split_cpus`), so wrk never
    takes CPU from the server it measures.
    """
    cpus = split_cpus() if pinned else None
    server_cpus, load_cpus = cpus if cpus else (None, None)
    scripts = scripts or {}
    loads: dict[str, list[Load]] = {name: [] for name in apps}
    with contextlib.ExitStack() as stack:
        servers = {}
        for name, argv in apps.items():
            port = free_port()
            extra = dict((env or {}).get(name, {}))
            servers[name] = stack.enter_context(server(argv(port), port, extra, server_cpus))
        names = list(servers)
        for name in names:  # warm up
            each = scripts.get(name, script)
            wrk(servers[name].url, each, connections=connections, seconds=2, cpus=load_cpus)
        for round_ in range(rounds):
            for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
                each = scripts.get(name, script)
                loads[name].append(
                    wrk(
                        servers[name].url,
                        each,
                        connections=connections,
                        seconds=seconds,
                        cpus=load_cpus,
                    )
                )
        if inspect is not None:
            for name, srv in servers.items():
                inspect(name, srv)
    return loads


def uvicorn_argv(target: str, port: int) -> list[str]:
    """A bench app (`module:factory`) served the way `recordline serve` serves."""
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        target,
        "--port",
        str(port),
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--no-access-log",
        "--log-level",
        "warning",
    ]


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


# The service as a process of its own, on loopback (`recordline serve`).
SERVE = [sys.executable, "-m", "app.cli", "serve"]


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def push_body(n: int) -> dict[str, Any]:
    data = base64.b64encode(json.dumps({"id": f"r-{n}", "data": n}).encode()).decode()
    return {"message": {"data": data, "messageId": f"b-{n}", "publishTime": "2024-04-27T12:00:01Z"}}


def rss_kb(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS"))
