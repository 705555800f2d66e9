"""What tracing and metrics cost on the push path: msgs/s off against on.

    python3 dev.py bench telemetry [--seconds 10] [--rounds 2] [--connections 64]

Serves the app (one uvicorn process, `memory:` store) three times per round:
with telemetry off (no tracer provider, no metrics); on, with every span
sampled into a BatchSpanProcessor whose exporter drops the batch in the
process, plus metrics behind a Prometheus reader; and on with one trace in ten
sampled. wrk drives POST /pubsub/push; each push
carries a fresh `traceparent`, as Cloud Run's front end adds one to every
request. Rounds alternate so drift on a shared machine hits both. Budget: 15%.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence

from litestar import Litestar

from bench.harness import free_port, push_script, server, table, uvicorn_argv, wrk

# A new random trace per push, as Cloud Run's front end would start.
TRACEPARENT_LUA = """
  wrk.headers["traceparent"] = string.format("00-%08x%08x%08x%08x-%08x%08x-01",
    math.random(0, 0x7fffffff), math.random(0, 0x7fffffff), math.random(0, 0x7fffffff),
    math.random(1, 0x7fffffff), math.random(0, 0x7fffffff), math.random(1, 0x7fffffff))
"""


def _app(*, on: bool, ratio: float = 1.0) -> Litestar:
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
    from opentelemetry.sdk.trace.sampling import TraceIdRatioBased
    from prometheus_client import CollectorRegistry

    from app.asgi import create_app
    from app.cli import quiet_garbage_collector
    from app.settings import Settings
    from app.telemetry import Telemetry

    class Discard(SpanExporter):
        def export(self, spans: Sequence[object]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    settings = Settings.load({"RECORDLINE_STORE": "memory:", "RECORDLINE_LOG_LEVEL": "WARNING"})
    telemetry = Telemetry()
    if on:
        tracer_provider = TracerProvider(sampler=TraceIdRatioBased(ratio), shutdown_on_exit=False)
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
    app = create_app(settings, telemetry=telemetry)
    quiet_garbage_collector()  # as `recordline serve`
    return app


def telemetry_off() -> Litestar:
    return _app(on=False)


def telemetry_on() -> Litestar:
    return _app(on=True)


def telemetry_sampled() -> Litestar:
    """On, sampling one trace in ten, as a busy production service would."""
    return _app(on=True, ratio=0.1)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench telemetry")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args(argv)
    script = push_script(per_request=TRACEPARENT_LUA)
    rates: dict[str, list[float]] = {"off": [], "on": [], "sampled": []}
    rows = [["round", "telemetry", "msgs/s", "p50 ms", "p99 ms", "non-2xx"]]
    for round_ in range(1, args.rounds + 1):
        for mode in rates:
            port = free_port()
            with server(uvicorn_argv(f"bench.telemetry:telemetry_{mode}", port), port) as srv:
                wrk(srv.url, script, connections=args.connections, seconds=2)  # warm up
                load = wrk(srv.url, script, connections=args.connections, seconds=args.seconds)
            rates[mode].append(load.rate)
            rows.append(
                [
                    str(round_),
                    mode,
                    f"{load.rate:,.0f}",
                    f"{load.p50:.1f}",
                    f"{load.p99:.1f}",
                    str(load.non2xx + load.socket_errors),
                ]
            )
    print(f"POST /pubsub/push, wrk {args.connections} connections, {args.seconds:g} s per run")
    print(table(rows))
    off, on, sampled = (statistics.mean(rates[mode]) for mode in ("off", "on", "sampled"))
    print(f"on/off = {on / off:.2f}  (budget: ≥ 0.85), every push traced")
    print(f"sampled/off = {sampled / off:.2f}, one trace in ten")
    return 0
