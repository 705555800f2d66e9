"""Traces, metrics and logs: what an operator follows one message with.

`Telemetry` holds the tracer and meter providers one app reports through. It
is built from settings in `create_app`, or given (tests give it in-memory
exporters). Nothing is registered globally (providers, propagators), so many
apps can live in one process, each with its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence

import msgspec
from litestar import Response, get
from litestar.handlers import HTTPRouteHandler
from litestar.middleware import DefineMiddleware
from litestar.openapi.datastructures import ResponseSpec
from litestar.types import ASGIApp
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import (
    SERVICE_INSTANCE_ID,
    SERVICE_NAME,
    SERVICE_NAMESPACE,
    Resource,
)
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import NoOpTracerProvider
from prometheus_client import CollectorRegistry, generate_latest

from app.settings import Settings, TelemetrySettings
from app.store import QueryObserver, Store
from app.store.observers import StoreObservers
from app.telemetry.cell import BySystem
from app.telemetry.distribution import PrometheusDistributions, WithDistributions
from app.telemetry.logs import CloudLoggingFormatter, configure_logging
from app.telemetry.metrics import (
    Conflicts,
    ConnectionRefusals,
    ExportMetrics,
    LoopRestarts,
    Metrics,
    PushOutcomes,
    TypedPatches,
    push_histograms,
)
from app.telemetry.reads import ReadDurations
from app.telemetry.store import ObservedStore
from app.telemetry.traces import (
    FlushTracer,
    PushTraces,
    ServerSpans,
    follows_callers,
    push_received,
    record_query,
    sampler,
    untraced_push,
)

__all__ = [
    "CloudLoggingFormatter",
    "PushTraces",
    "Telemetry",
    "configure_logging",
    "google_project",
    "push_received",
    "record_query",
]

# What generate_latest writes, with its default escaping: the text format 0.0.4
# (prometheus_client's CONTENT_TYPE_PLAIN_0_0_4). Litestar adds `; charset=utf-8`
# to a text/ type itself, so it is left out here.
PROMETHEUS_TEXT = "text/plain; version=0.0.4"

log = logging.getLogger(__name__)

INSTRUMENTATION = "recordline"
# Cloud Run gives a stopping instance ~10 s, most of it for flushing rows; an
# exporter retrying against an unreachable endpoint gets what is left, at most.
SHUTDOWN_SECONDS = 3.0


def google_project(settings: Settings) -> str | None:
    """GOOGLE_CLOUD_PROJECT, else the project of a `bigquery://PROJECT/DATASET` store."""
    if settings.telemetry.project:
        return settings.telemetry.project
    scheme, _, rest = settings.store.url.partition("://")
    if scheme == "bigquery" and rest.split("/", 1)[0]:
        return rest.split("/", 1)[0]
    return None


class Telemetry:
    """Spans through `tracer_provider` (none: no tracing); metrics to `metric_exporters`
    (each on its own periodic reader) and, with `prometheus`, at `GET /metrics`."""

    def __init__(
        self,
        *,
        tracer_provider: TracerProvider | None = None,
        metric_exporters: Sequence[MetricExporter] = (),
        prometheus: bool = False,
        resource: Resource | None = None,
        export_interval_ms: float = math.inf,
        clock: Callable[[], float] = time.time,
        by_system: bool = False,
        read_latency_seconds: float = 1.0,
        freshness_seconds: float = 10.0,
    ) -> None:
        self.tracer_provider = tracer_provider
        # Whether this telemetry is the process's (it stops the providers), or one of
        # a cell's systems' views of it (`for_system`).
        self.owner = True
        self.read_latency_seconds = read_latency_seconds
        histograms = push_histograms()
        readers: list[MetricReader] = [
            PeriodicExportingMetricReader(
                # A cell's systems each under their own namespace (`app.telemetry.cell`).
                WithDistributions(
                    BySystem(exporter) if by_system else exporter, histograms, INSTRUMENTATION
                ),
                export_interval_millis=export_interval_ms,
            )
            for exporter in metric_exporters
        ]
        self.prometheus: CollectorRegistry | None = None
        if prometheus:
            from opentelemetry.exporter.prometheus import PrometheusMetricReader

            # A registry of our own, not prometheus_client's global one: a
            # second app in the process would otherwise collide with it.
            self.prometheus = CollectorRegistry(auto_describe=True)
            readers.append(PrometheusMetricReader(registry=self.prometheus))
            self.prometheus.register(PrometheusDistributions(histograms))
        # Without a reader nothing is measured at all (the API's no-op meter).
        self.meter_provider: MeterProvider | None = None
        meter = NoOpMeterProvider().get_meter(INSTRUMENTATION)
        if readers:
            self.meter_provider = MeterProvider(
                metric_readers=readers,
                resource=resource or Resource.create({}),
                shutdown_on_exit=False,
                # Exemplars (a trace id kept per histogram bucket) cost ~10 µs
                # a query with every span sampled.
                exemplar_filter=AlwaysOffExemplarFilter(),
            )
            meter = self.meter_provider.get_meter(INSTRUMENTATION)
        self.metrics = Metrics(
            meter, histograms if readers else None, clock=clock, freshness_seconds=freshness_seconds
        )
        # Without a tracer provider, the API's no-op tracer: its spans carry
        # the current (the caller's) trace id, so rows and log lines keep it.
        self.tracer = (tracer_provider or NoOpTracerProvider()).get_tracer(INSTRUMENTATION)

    @classmethod
    def from_settings(
        cls, settings: Settings, *, instance: str | None = None, by_system: bool = False
    ) -> Telemetry:
        """Exporters as configured; the Google ones are created only when chosen
        (their constructors look for credentials and raise without them). `instance`
        names this process where no Cloud Run service does (see `_resource`). In a
        cell, or `by_system` (the exporter pool's), each system's series are under its
        own namespace (`for_system`)."""
        config = settings.telemetry
        project = google_project(settings)
        cell = settings.cell.name
        # A cell's own series are under its name; each system's under the system's.
        resource = _resource(
            msgspec.structs.replace(config, system=cell) if cell else config, instance
        )
        tracer_provider = None
        if config.traces_exporter != "none":
            tracer_provider = TracerProvider(
                resource=resource,
                sampler=sampler(config.traces_sampler, config.traces_sampler_arg),
                # No atexit hook: shutdown is the lifespan's, and bounded.
                shutdown_on_exit=False,
            )
            # Exports run on the processor's thread; a request never waits for one.
            tracer_provider.add_span_processor(BatchSpanProcessor(_span_exporter(config, project)))
        exporters: list[MetricExporter] = []
        match config.metrics_exporter:
            case "otlp":
                from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
                    OTLPMetricExporter,
                )

                exporters.append(OTLPMetricExporter(endpoint=_otlp(config, "metrics")))
            case "gcp_monitoring":
                from opentelemetry.exporter.cloud_monitoring import (
                    CloudMonitoringMetricsExporter,
                )

                exporters.append(CloudMonitoringMetricsExporter(project_id=project))
        return cls(
            tracer_provider=tracer_provider,
            metric_exporters=exporters,
            prometheus=config.metrics_exporter == "prometheus",
            resource=resource,
            export_interval_ms=config.metric_export_interval_ms,
            by_system=by_system or bool(cell),
            read_latency_seconds=config.slo_read_latency_seconds,
            freshness_seconds=config.slo_freshness_seconds,
        )

    def for_system(self, name: str) -> Telemetry:
        """What system `name`'s app reports through in a cell: these providers, tracer
        and instruments, its counts its own (`Metrics.member`); no `/metrics` of its
        own (the cell's has every system's), and nothing to stop (the cell's is stopped
        once)."""
        view = copy.copy(self)
        view.owner = False
        view.prometheus = None
        view.metrics = self.metrics.member(name)
        return view

    # -- what create_app wires in ---------------------------------------------

    def middleware(self) -> list[DefineMiddleware]:
        """For the routers worth tracing: a SERVER span per request, current while it runs."""
        if self.tracer_provider is None:
            return []
        tracer, follow = self.tracer, follows_callers(self.tracer_provider.sampler)

        # Litestar deep-copies each router as it registers it; a closure is shared
        # as it is, where the tracer (with its locks) could not be copied.
        def server_spans(app: ASGIApp) -> ServerSpans:
            return ServerSpans(app, tracer=tracer, follow_callers=follow)

        return [DefineMiddleware(server_spans)]

    def read_timing(self) -> list[DefineMiddleware]:
        """For the read routes: recordline.read.duration of every real read."""
        histogram, slo = self.metrics.read_duration, self.metrics.reads_slo
        latency = self.read_latency_seconds

        def read_durations(app: ASGIApp) -> ReadDurations:
            return ReadDurations(app, histogram=histogram, slo=slo, latency_seconds=latency)

        return [DefineMiddleware(read_durations)]

    @property
    def push_traces(self) -> PushTraces:
        """What gives each push its trace id (and, with tracing on, describes it on its
        span): with tracing off there is no span to ask, only the caller's headers."""
        return push_received if self.tracer_provider is not None else untraced_push

    def flush_observer(self) -> FlushTracer | None:
        """For the batcher: a span per flush that serves a sampled push. None with
        tracing off: no span is ever sampled, and asking costs a push 9 calls."""
        if self.tracer_provider is None:
            return None
        return FlushTracer(self.tracer)

    def push_outcomes(self) -> PushOutcomes:
        return PushOutcomes(self.metrics)

    def export_observer(self) -> ExportMetrics:
        """What the serving tier's exporter is given to report its progress."""
        return ExportMetrics(self.metrics)

    def patch_observer(self) -> TypedPatches:
        """What the BigQuery store is given to count changes of its typed columns refused."""
        return TypedPatches(self.metrics)

    def loop_observer(self) -> LoopRestarts:
        """What a store is given to count each restart of one of its background loops."""
        return LoopRestarts(self.metrics)

    def store_observers(self, *, exports: bool = True) -> StoreObservers:
        """Everything a store is given to report what it does; without `exports`, not
        what an export does (a store that leaves its export to the exporter pool: the
        holder of the export's lease reports it)."""
        return StoreObservers(
            query=self.query_observer,
            conflicts=self.conflicts(),
            exports=self.export_observer() if exports else None,
            loops=self.loop_observer(),
            patches=self.patch_observer(),
        )

    def connection_observer(self) -> ConnectionRefusals:
        """What the server is given to count each connection a bound refused or closed."""
        return ConnectionRefusals(self.metrics)

    def conflicts(self) -> Conflicts:
        """What a store is given to report a copy of a message that differs from the stored one."""
        return Conflicts(self.metrics)

    def observe(self, store: Store) -> ObservedStore:
        return ObservedStore(store, tracer=self.tracer, metrics=self.metrics)

    # What a store is given to report each query's cost: onto the span of the
    # store call it serves, and into that call's bytes billed by route.
    query_observer: QueryObserver = staticmethod(record_query)

    def watch(
        self,
        *,
        queue_depth: Callable[[], int],
        horizon: Callable[[], int],
        followers: Callable[[], int],
        held: Callable[[], int] = lambda: 0,
    ) -> None:
        self.metrics.watch(queue_depth=queue_depth, horizon=horizon, followers=followers, held=held)

    @property
    def serves_metrics(self) -> bool:
        """Whether `/metrics` is served (`OTEL_METRICS_EXPORTER=prometheus`)."""
        return self.prometheus is not None

    def metrics_routes(
        self, responses: dict[int, ResponseSpec] | None = None
    ) -> list[HTTPRouteHandler]:
        """`/metrics`, where served, its refusals documented as `responses` (those of
        the guards the caller puts before it)."""
        if self.prometheus is None:
            return []
        registry = self.prometheus

        @get(
            "/metrics",
            summary="Metrics in Prometheus text format",
            tags=["health"],
            media_type=PROMETHEUS_TEXT,
            sync_to_thread=False,
            responses=responses,
        )
        def prometheus_metrics() -> Response[bytes]:
            return Response(generate_latest(registry), media_type=PROMETHEUS_TEXT)

        return [prometheus_metrics]

    async def shutdown(self, within: float = SHUTDOWN_SECONDS) -> None:
        """Export what is buffered, for at most `within` (and SHUTDOWN_SECONDS), then stop.

        The SDK's shutdown waits up to 30 s for a failing exporter, and from a
        worker thread it would also hold up interpreter exit; a daemon thread
        and a bounded wait keep both out of the way.
        """
        if not self.owner:
            return  # a system's view of the cell's: the cell stops them
        providers = [p for p in (self.tracer_provider, self.meter_provider) if p is not None]
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        within = min(within, SHUTDOWN_SECONDS)
        millis = int(within * 1000)

        def stop() -> None:
            try:
                for provider in providers:
                    provider.force_flush(millis)
                    provider.shutdown()
            except Exception:
                log.exception("telemetry shutdown failed")
            finally:
                with contextlib.suppress(RuntimeError):  # the loop may be gone by now
                    loop.call_soon_threadsafe(_resolve, done)

        threading.Thread(target=stop, name="telemetry-shutdown", daemon=True).start()
        try:
            async with asyncio.timeout(within):
                await done
        except TimeoutError:
            log.warning("telemetry not flushed within %g s; dropping the rest", within)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _resource(config: TelemetrySettings, instance: str | None = None) -> Resource:
    # service.namespace names the system: Cloud Monitoring's generic_task
    # resource keeps it as its `namespace` label, so fifty systems in one
    # project keep their series apart.
    resource = Resource({SERVICE_NAME: config.service_name, SERVICE_NAMESPACE: config.system})
    if instance is not None:
        # A process that names itself (the exporter service, a Cloud Run worker pool,
        # which the resource detector knows no more than as a VM): its series stay on
        # generic_task, where every alert looks, each instance's under its own task_id.
        return resource.merge(Resource({SERVICE_INSTANCE_ID: instance}))
    if config.traces_exporter == "gcp_trace" or config.metrics_exporter == "gcp_monitoring":
        # On Cloud Run this names the region, service and instance, which Cloud
        # Monitoring needs to keep each instance's series apart (generic_task).
        from opentelemetry.resourcedetector.gcp_resource_detector import (
            GoogleCloudResourceDetector,
        )

        resource = resource.merge(GoogleCloudResourceDetector(raise_on_error=False).detect())
    return resource


def _otlp(config: TelemetrySettings, signal: str) -> str:
    return f"{config.otlp_endpoint.rstrip('/')}/v1/{signal}"


def _span_exporter(config: TelemetrySettings, project: str | None) -> SpanExporter:
    match config.traces_exporter:
        case "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            return ConsoleSpanExporter()
        case "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            return OTLPSpanExporter(endpoint=_otlp(config, "traces"))
        case _:
            from opentelemetry.exporter.cloud_trace import CloudTraceSpanExporter

            return CloudTraceSpanExporter(project_id=project)  # type: ignore[no-untyped-call]
