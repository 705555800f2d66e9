"""What tracing and metrics cost on the push path: msgs/s off against on.

    python3 dev.py bench telemetry [--seconds 1] [--rounds 12] [--processes 2]
                                   [--connections 64] [--rows off,on,...]

Serves every row below twice at once (uvicorn processes, `memory:` store) and
drives POST /pubsub/push at each server in turn, round after round, so drift
on a shared machine hits all of them alike; two equal Python processes can
differ by a few percent, so each row averages two. The servers share one CPU and wrk has
the other: on Cloud Run the pushes come from elsewhere, and a load generator
on the server's CPU would take a share of it that changes with the server's
own speed.

- off: no tracer provider, no metrics;
- off again: the same app a second time. How far it lands from 1.00 is how
  far this machine moves two equal apps apart in one run;
- metrics: metrics only, as `recordline serve` runs by default;
- on: as deployed, the default sampler follows the caller's decision, spans go
  to a BatchSpanProcessor whose exporter drops them in the process, metrics
  sit behind a Prometheus reader. One push in ten is flagged sampled;
- on at Cloud Run's rate: the same, with one push in 40,000 flagged sampled:
  Cloud Run samples at most 0.1 requests a second per instance, which is one
  in 40,000 at 4,000 pushes a second;
- every: every push traced, whatever the caller decided.

Each push carries a fresh `traceparent`, as Cloud Run's front end adds one to
every request. The budget (on at Cloud Run's rate and metrics within 5% of
off) is held in instructions by `bench instructions`, free of this machine's
noise; this bench reports what it is in pushes a second.

This machine's speed drifts by ±20% from one second to the next, so a single
round says little; "vs off" is the ratio of the rows' means over all rounds,
with a 95% interval from resampling rounds. With every row, a round takes 12
s; `--rows off,on --rounds 30` serves the budget's pair alone, 4 s a round,
for a closer pairing and a narrower interval.
"""

from __future__ import annotations

import argparse
import functools
import random
import statistics
from collections.abc import Sequence

from litestar import Litestar
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, DEFAULT_ON, Sampler

from bench.harness import Load, interleaved, push_script, split_cpus, table, uvicorn_argv

# A new random trace per push, as Cloud Run's front end starts one for every
# request; one in `sampled_one_in` is flagged sampled.
TRACEPARENT_LUA = """
  wrk.headers["traceparent"] = string.format("00-%%08x%%08x%%08x%%08x-%%08x%%08x-%%s",
    math.random(0, 0x7fffffff), math.random(0, 0x7fffffff), math.random(0, 0x7fffffff),
    math.random(1, 0x7fffffff), math.random(0, 0x7fffffff), math.random(1, 0x7fffffff),
    math.random(1, %(sampled_one_in)d) == 1 and "01" or "00")
"""
# Cloud Run samples at most 0.1 requests a second per instance.
CLOUD_RUN_ONE_IN = 40_000


def traceparents(sampled_one_in: int) -> str:
    return push_script(per_request=TRACEPARENT_LUA % {"sampled_one_in": sampled_one_in})


def _app(*, sampler: Sampler | None = None, metrics: bool = True) -> Litestar:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    from app.asgi import create_app
    from app.cli import quiet_garbage_collector
    from app.settings import Settings
    from app.telemetry import Telemetry

    class Discard(SpanExporter):
        def export(self, spans: Sequence[object]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    settings = Settings.load({"RECORDLINE_STORE": "memory:", "RECORDLINE_LOG_LEVEL": "WARNING"})
    tracer_provider: TracerProvider | None = None
    if sampler is not None:
        tracer_provider = TracerProvider(sampler=sampler, shutdown_on_exit=False)
        tracer_provider.add_span_processor(BatchSpanProcessor(Discard()))
    # Metrics behind a Prometheus reader, as `recordline serve` runs by default.
    telemetry = Telemetry(tracer_provider=tracer_provider, prometheus=metrics)
    app = create_app(settings, telemetry=telemetry)
    quiet_garbage_collector()  # as `recordline serve`
    return app


def telemetry_off() -> Litestar:
    return _app(metrics=False)


def telemetry_metrics() -> Litestar:
    """Metrics on, tracing off: the default of `recordline serve`."""
    return _app()


def telemetry_on() -> Litestar:
    """As deployed: OTEL_TRACES_SAMPLER's default, the caller decides."""
    return _app(sampler=DEFAULT_ON)


def telemetry_every() -> Litestar:
    """Every push traced whatever its caller decided: the worst case."""
    return _app(sampler=ALWAYS_ON)


MODES = {
    "off": "no tracer provider, no metrics",
    "off_again": "the same app as off: how far two equal apps differ",
    "metrics": "metrics only (the local default)",
    "on": "as deployed: the caller decides (1 in 10 sampled)",
    "cloud_run": "as deployed, at Cloud Run's rate (1 in 40,000)",
    "every": "every push traced, whatever the caller decided",
}
# Rows served by another row's app: cloud_run differs from on in its traffic
# only; off_again is off a second time.
_FACTORY = {"cloud_run": "on", "off_again": "off"}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench telemetry")
    parser.add_argument("--seconds", type=float, default=1)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--processes", type=int, default=2, help="servers per row")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument(
        "--rows",
        default=",".join(MODES),
        help="rows to serve (off is always one): fewer rows, shorter rounds, closer pairs",
    )
    args = parser.parse_args(argv)
    modes = ["off", *(m for m in args.rows.split(",") if m != "off")]
    if unknown := set(modes) - set(MODES):
        parser.error(f"unknown rows {sorted(unknown)}; choose from {', '.join(MODES)}")
    servers = {
        f"{mode}#{i}": mode for mode in modes for i in range(args.processes)
    }  # one Python process differs from an equal one by up to ~5%: average a few
    by_server = interleaved(
        {
            name: functools.partial(
                uvicorn_argv, f"bench.telemetry:telemetry_{_FACTORY.get(mode, mode)}"
            )
            for name, mode in servers.items()
        },
        traceparents(10),
        rounds=args.rounds,
        seconds=args.seconds,
        connections=args.connections,
        scripts={
            name: traceparents(CLOUD_RUN_ONE_IN)
            for name, mode in servers.items()
            if mode == "cloud_run"
        },
        pinned=True,
    )
    loads: dict[str, list[Load]] = {mode: [] for mode in modes}
    for name, mode in servers.items():
        loads[mode].extend(by_server[name])
    # Round r of every row (its servers averaged), in the order they were taken.
    rounds = {
        mode: [
            statistics.mean(by_server[f"{mode}#{i}"][r].rate for i in range(args.processes))
            for r in range(args.rounds)
        ]
        for mode in modes
    }
    # Each row against off: the ratio of means, and its 95% interval.
    vs_off = {
        mode: (ratio(rounds[mode], rounds["off"]), *interval(rounds[mode], rounds["off"]))
        for mode in modes
    }
    rows = [
        [
            "telemetry",
            "msgs/s",
            "p50 ms",
            "p99 ms",
            "non-2xx",
            "vs off",
            "95% interval",
            "per round",
        ]
    ]
    for mode in modes:
        runs = loads[mode]
        per_round = [a / b for a, b in zip(rounds[mode], rounds["off"], strict=True)]
        vs, low, high = vs_off[mode]
        rows.append(
            [
                f"{mode}: {MODES[mode]}",
                f"{statistics.mean(rounds[mode]):,.0f}",
                f"{statistics.median(load.p50 for load in runs):.1f}",
                f"{statistics.median(load.p99 for load in runs):.1f}",
                str(sum(load.non2xx + load.socket_errors for load in runs)),
                f"{vs:.2f}",
                f"{low:.2f}-{high:.2f}",
                f"{min(per_round):.2f}-{max(per_round):.2f}",
            ]
        )
    print(
        f"POST /pubsub/push, wrk {args.connections} connections; {args.processes} servers per "
        f"row, {args.rounds} rounds of {args.seconds:g} s per server, taken in turn; "
        "medians of p50/p99; 95% interval of vs off by resampling rounds"
    )
    print("servers on one CPU, wrk on the other" if split_cpus() else "servers and wrk share CPUs")
    print(table(rows))
    for mode in ("on", "cloud_run"):
        if mode in vs_off:
            vs, low, high = vs_off[mode]
            print(f"{mode}/off = {vs:.2f} (95% interval {low:.2f}-{high:.2f})")
    return 0


def ratio(rates: Sequence[float], off: Sequence[float]) -> float:
    return statistics.mean(rates) / statistics.mean(off)


def interval(
    rates: Sequence[float], off: Sequence[float], resamples: int = 4000
) -> tuple[float, float]:
    """A 95% bootstrap interval of `ratio`, resampling whole rounds (both rows alike).

    A round's rows are taken seconds apart, so the machine's drift is shared
    within a round and differs between rounds; resampling rounds keeps the
    pairs together.
    """
    pairs = list(zip(rates, off, strict=True))
    draw = random.Random(0)
    ratios = sorted(
        ratio(*zip(*draw.choices(pairs, k=len(pairs)), strict=True)) for _ in range(resamples)
    )
    return ratios[int(0.025 * resamples)], ratios[int(0.975 * resamples) - 1]
