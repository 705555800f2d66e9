"""Traces, metrics and logs: what an operator follows one message with.

`Telemetry` holds the tracer and meter providers one app reports through. It
is built from settings in `create_app`, or passed in (tests give it in-memory
exporters). Nothing is registered globally (providers, propagators), so many
apps can live in one process, each with its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any

from litestar import Response, get
from litestar.enums import ScopeType
from litestar.handlers import HTTPRouteHandler
from litestar.plugins.opentelemetry import OpenTelemetryConfig, OpenTelemetryPlugin
from opentelemetry import metrics as metrics_api
from opentelemetry import trace as trace_api
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from app.settings import Settings, TelemetrySettings
from app.store import Store
from app.telemetry.histogram import export_through
from app.telemetry.logs import CloudLoggingFormatter, configure_logging
from app.telemetry.metrics import Metrics, PushOutcomes
from app.telemetry.spans import plain_tracer
from app.telemetry.store import ObservedStore
from app.telemetry.traces import (
    FlushTracer,
    ServerSpans,
    push_received,
    record_query,
    route_span_details,
    sampler,
)

__all__ = [
    "CloudLoggingFormatter",
    "Telemetry",
    "configure_logging",
    "google_project",
    "push_received",
    "record_query",
]

log = logging.getLogger(__name__)

INSTRUMENTATION = "recordline"
# Probes and scrapes arrive every few seconds and say nothing about a message;
# the API docs are read by people. Regexes, searched in the request path.
UNTRACED_PATHS = ["^/(healthz|readyz|metrics)$", "^/docs(/|$)"]
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
    def __init__(
        self,
        *,
        tracer_provider: trace_api.TracerProvider | None = None,
        meter_provider: metrics_api.MeterProvider | None = None,
        prometheus: CollectorRegistry | None = None,
    ) -> None:
        # Without a provider, the no-op one: spans cost next to nothing and
        # still carry the incoming trace id, so rows and log lines keep their
        # link to Cloud Run's request trace.
        # Without a tracer provider there is nothing to trace, and no server
        # span middleware.
        self.traced = tracer_provider is not None
        self.tracer_provider = tracer_provider or trace_api.NoOpTracerProvider()
        self.meter_provider = meter_provider or metrics_api.NoOpMeterProvider()
        self.tracer = plain_tracer(self.tracer_provider.get_tracer(INSTRUMENTATION))
        self.metrics = Metrics(self.meter_provider.get_meter(INSTRUMENTATION))
        if isinstance(self.meter_provider, MeterProvider):
            export_through(self.meter_provider, INSTRUMENTATION, self.metrics.counted)
        self.prometheus = prometheus

    @classmethod
    def from_settings(cls, settings: Settings) -> Telemetry:
        """Exporters as configured; the Google ones are created only when chosen
        (their constructors look for credentials and raise without them)."""
        config = settings.telemetry
        project = google_project(settings)
        resource = _resource(config)
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
        registry = None
        readers: list[MetricReader] = []
        match config.metrics_exporter:
            case "prometheus":
                from opentelemetry.exporter.prometheus import PrometheusMetricReader

                # A registry of our own, not prometheus_client's global one:
                # a second app in the process would otherwise collide with it.
                registry = CollectorRegistry(auto_describe=True)
                readers.append(PrometheusMetricReader(registry=registry))
            case "otlp":
                from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
                    OTLPMetricExporter,
                )

                readers.append(
                    PeriodicExportingMetricReader(
                        OTLPMetricExporter(endpoint=_otlp(config, "metrics")),
                        export_interval_millis=config.metric_export_interval_ms,
                    )
                )
            case "gcp_monitoring":
                from opentelemetry.exporter.cloud_monitoring import (
                    CloudMonitoringMetricsExporter,
                )

                readers.append(
                    PeriodicExportingMetricReader(
                        CloudMonitoringMetricsExporter(project_id=project),
                        export_interval_millis=config.metric_export_interval_ms,
                    )
                )
        meter_provider = (
            MeterProvider(
                metric_readers=readers,
                resource=resource,
                shutdown_on_exit=False,
                # Exemplars (a trace id kept per histogram bucket) cost ~10 µs
                # per push with every span sampled: a quarter of telemetry's
                # whole budget on this path.
                exemplar_filter=AlwaysOffExemplarFilter(),
            )
            if readers
            else None
        )
        return cls(
            tracer_provider=tracer_provider, meter_provider=meter_provider, prometheus=registry
        )

    # -- what create_app wires in ---------------------------------------------

    def plugins(self) -> list[OpenTelemetryPlugin]:
        """A SERVER span per HTTP request, current while the handler runs."""
        if not self.traced:
            return []
        config = OpenTelemetryConfig(
            tracer=self.tracer,
            middleware_class=ServerSpans,
            scope_span_details_extractor=route_span_details,
            exclude=UNTRACED_PATHS,
            scopes={ScopeType.HTTP},
        )
        plugin = OpenTelemetryPlugin(config)
        # Litestar 2.25's plugin builds its middleware from the default class,
        # not the config's `middleware_class`; the app's own adapter for a
        # middleware given in `middleware=` sets the same attribute.
        plugin._middleware = config.middleware
        return [plugin]

    def flush_observer(self) -> FlushTracer:
        return FlushTracer(self.tracer)

    def push_outcomes(self) -> PushOutcomes:
        return PushOutcomes(self.metrics)

    def observe(self, store: Store) -> ObservedStore:
        return ObservedStore(store, tracer=self.tracer, metrics=self.metrics)

    def watch(self, *, queue_depth: Callable[[], int], horizon: Callable[[], int]) -> None:
        self.metrics.watch(queue_depth=queue_depth, horizon=horizon)

    @property
    def route_handlers(self) -> list[HTTPRouteHandler]:
        if self.prometheus is None:
            return []
        registry = self.prometheus

        @get(
            "/metrics",
            summary="Metrics in Prometheus text format",
            tags=["health"],
            sync_to_thread=False,
        )
        def prometheus_metrics() -> Response[bytes]:
            return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

        return [prometheus_metrics]

    async def shutdown(self) -> None:
        """Export what is buffered, for at most SHUTDOWN_SECONDS, then stop.

        The SDK's shutdown waits up to 30 s for a failing exporter, and from a
        worker thread it would also hold up interpreter exit; a daemon thread
        and a bounded wait keep both out of the way.
        """
        providers: list[Any] = [
            p
            for p in (self.tracer_provider, self.meter_provider)
            if isinstance(p, TracerProvider | MeterProvider)
        ]
        if not providers:
            return
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        millis = int(SHUTDOWN_SECONDS * 1000)

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
            async with asyncio.timeout(SHUTDOWN_SECONDS):
                await done
        except TimeoutError:
            log.warning("telemetry not flushed within %g s; dropping the rest", SHUTDOWN_SECONDS)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _resource(config: TelemetrySettings) -> Resource:
    resource = Resource({SERVICE_NAME: config.service_name})
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
