"""What tracing and metrics cost on the push path: msgs/s off against on.

Starts the service (uvicorn, one process, `memory:` store) twice per round,
once with telemetry off (the default exporters `none`) and once with every
span sampled into a BatchSpanProcessor whose exporter drops the batch in the
process, plus metrics behind a Prometheus reader; wrk drives POST
/pubsub/push at 64 connections. Each push carries a fresh `traceparent`, as
Cloud Run's front end adds one to every request. The budget is 15%.

    uv run python bench/telemetry.py                 # 2 rounds of 10 s each way
    uv run python bench/telemetry.py --seconds 5 --rounds 1
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# A 310-byte record in a ~570-byte envelope, as in PERF_NOTES.md.
DATA = '{"text": "Ejemplo de datos", "values": [1, 2, 3], "note": "' + "x" * 180 + '"}'
RECORD = json.dumps({"id": "r", "timestamp": "2024-04-27T12:00:00Z", "data": json.loads(DATA)})

# {id} is replaced per request by the Lua script, so every message is new.
LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local data = "%(data)s"
local counter = 0
local prefix = tostring(math.random(1, 1000000000))
request = function()
  counter = counter + 1
  local id = prefix .. "-" .. counter
  local body = '{"message":{"data":"' .. data .. '","messageId":"' .. id ..
    '","publishTime":"2024-04-27T12:00:01Z","attributes":{"origin":"bench"}},' ..
    '"subscription":"projects/bench/subscriptions/records-push"}'
  wrk.headers["traceparent"] = string.format("00-%%08x%%08x%%08x%%08x-%%08x%%08x-01",
    math.random(0, 0x7fffffff), math.random(0, 0x7fffffff), math.random(0, 0x7fffffff),
    math.random(1, 0x7fffffff), math.random(0, 0x7fffffff), math.random(1, 0x7fffffff))
  return wrk.format(nil, "/pubsub/push", nil, body)
end
"""


def serve(mode: str, port: int) -> None:
    """The server process: the real app, telemetry off or on."""
    import uvicorn
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON
    from prometheus_client import CollectorRegistry

    from app.asgi import create_app
    from app.settings import Settings
    from app.telemetry import Telemetry

    class Discard(SpanExporter):
        def export(self, spans: Sequence[object]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    settings = Settings.load(
        {
            "RECORDLINE_STORE": "memory:",
            "OTEL_TRACES_EXPORTER": "none",
            "OTEL_METRICS_EXPORTER": "none",
            "RECORDLINE_LOG_LEVEL": "WARNING",
        }
    )
    if mode == "on":
        tracer_provider = TracerProvider(sampler=ALWAYS_ON, shutdown_on_exit=False)
        tracer_provider.add_span_processor(BatchSpanProcessor(Discard()))
        registry = CollectorRegistry()
        telemetry = Telemetry(
            tracer_provider=tracer_provider,
            meter_provider=MeterProvider(
                metric_readers=[PrometheusMetricReader(registry=registry)],
                shutdown_on_exit=False,
                exemplar_filter=AlwaysOffExemplarFilter(),  # as Telemetry.from_settings
            ),
            prometheus=registry,
        )
    else:
        telemetry = Telemetry.from_settings(settings)
    app = create_app(settings, telemetry=telemetry)
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_config=None,
        log_level="warning",
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def server(mode: str) -> Iterator[int]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, __file__, "--serve", mode, "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
                break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server ({mode}) did not start")
            time.sleep(0.1)
        yield port
    finally:
        process.terminate()
        process.wait(15)


def drive(port: int, seconds: float, script: Path, connections: int) -> tuple[float, int]:
    """Stored messages per second (204s only) and the count of other answers."""
    out = subprocess.run(
        [
            "wrk",
            "-t2",
            f"-c{connections}",
            f"-d{seconds:g}s",
            "-s",
            str(script),
            f"http://127.0.0.1:{port}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    total = re.search(r"(\d+) requests in ([\d.]+)s", out)
    assert total is not None, out
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    refused = int(bad.group(1)) if bad else 0
    return (int(total.group(1)) - refused) / float(total.group(2)), refused


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--serve", choices=["off", "on"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port)
        return 0

    data = base64.b64encode(RECORD.encode()).decode()
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as lua:
        lua.write(LUA % {"data": data})
    script = Path(lua.name)
    rates: dict[str, list[float]] = {"off": [], "on": []}
    try:
        # Alternate, so drift on a shared machine hits both sides alike.
        for _ in range(args.rounds):
            for mode in ("off", "on"):
                with server(mode) as port:
                    drive(port, 1, script, args.connections)  # warm up
                    rate, bad = drive(port, args.seconds, script, args.connections)
                rates[mode].append(rate)
                print(f"{mode:>3}: {rate:8.0f} msgs/s  ({bad} non-2xx)", flush=True)
    finally:
        script.unlink()
    off, on = statistics.mean(rates["off"]), statistics.mean(rates["on"])
    print(f"\ntelemetry off {off:.0f} msgs/s, on {on:.0f} msgs/s: on/off = {on / off:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
