"""create_app: the one place where Recordline is assembled.

Backends are arguments: tests and benchmarks pass their own Store; the
command line passes Settings it read once. Clients are opened in the lifespan
and closed there; nothing connects at import time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from types import FrameType
from typing import cast

from litestar import Litestar, Router
from litestar.config.compression import CompressionConfig
from litestar.datastructures import Headers
from litestar.di import Provide
from litestar.middleware import DefineMiddleware
from litestar.middleware.compression import CompressionMiddleware
from litestar.plugins.problem_details import ProblemDetailsConfig, ProblemDetailsPlugin
from litestar.types import (
    LifeSpanReceive,
    LifeSpanScope,
    LifeSpanSend,
    Message,
    Receive,
    Scope,
    Send,
)

from app.auth.guards import Auth
from app.docs import docs_assets, openapi_config
from app.errors import StoreUnavailable
from app.health import Readiness, healthz, readyz
from app.ingest.batcher import Batcher
from app.ingest.payload import Payloads
from app.ingest.pubsub_schemas import PubSubSchemas
from app.ingest.replay import Replay
from app.ingest.schemas import Schemas, SchemaSource
from app.ingest.service import Ingest
from app.ingest.shape import Shape
from app.problems import Problems, describe_problem
from app.query.offsets import Offsets
from app.query.page_token import PageTokens
from app.query.producers import WATCH_SECONDS, MissingWatch, Producers
from app.query.service import Reader
from app.query.streams import Streams
from app.routes.follow import Followers
from app.routes.ingest import REPLAY_ROUTES, push_refusals, push_routes
from app.routes.producers import PRODUCER_ROUTES
from app.routes.query import READ_ROUTES, Paging
from app.routes.reads import Reads
from app.routes.streams import HEAD_REQUEST, STREAM_ROUTES
from app.settings import Settings, SettingsError
from app.store import Store
from app.store.open import open_store
from app.store.supervisor import Supervisor
from app.telemetry import Telemetry
from app.typed.revisions import DeclaredSchemaError, Revisions

log = logging.getLogger("recordline")

# Responses shorter than this go out as they are: gzip's header and the CPU
# would cost more than they save (a look-up, a problem document).
COMPRESS_FROM_BYTES = 1024


# A qvalue (RFC 9110 §12.4.2): 0 to 1 with at most three decimals.
_QVALUE = re.compile(r"0(\.[0-9]{0,3})?|1(\.0{0,3})?")


def accepted_codings(header: str) -> dict[str, float]:
    """An Accept-Encoding value as coding → qvalue (RFC 9110 §12.5.3).

    Codings and parameter names are case-insensitive; `x-gzip` is `gzip`; a
    member whose qvalue is malformed is taken as not acceptable (q=0).
    """
    codings: dict[str, float] = {}
    for member in header.split(","):
        name, *parameters = member.split(";")
        coding = name.strip().lower()
        if not coding:
            continue
        weight = 1.0
        for parameter in parameters:
            key, _, value = parameter.partition("=")
            if key.strip().lower() == "q":
                text = value.strip()
                weight = float(text) if _QVALUE.fullmatch(text) else 0.0
        coding = "gzip" if coding == "x-gzip" else coding
        codings[coding] = min(weight, codings.get(coding, weight))
    return codings


def negotiated_coding(header: str | None, offered: Sequence[str]) -> str | None:
    """The coding of `offered` the client accepts most, at least as much as none at all.

    No header, or an empty one, asks for none. `*` is any coding not listed,
    identity included. Unlisted, identity is only the fallback, acceptable
    unless excluded: the listed coding with the highest non-zero qvalue is
    preferred. On a tie between a coding and identity, the coding.
    """
    if not header:
        return None
    weights = accepted_codings(header)
    anything = weights.get("*")
    identity = weights.get("identity", 0.0 if anything is None else anything)
    best, best_weight = None, 0.0
    for coding in offered:
        weight = weights.get(coding, 0.0 if anything is None else anything)
        if weight > best_weight:
            best, best_weight = coding, weight
    return best if best is not None and best_weight >= identity else None


class NegotiatedCompression(CompressionMiddleware):
    """Litestar's compression, with the coding chosen as RFC 9110 says.

    Litestar's own looks for the coding's name as a substring of the header:
    `gzip;q=0` got gzip, and `GZIP` none.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        offered = [self.config.compression_facade.encoding]
        if self.config.gzip_fallback:
            offered.append("gzip")
        coding = negotiated_coding(Headers.from_scope(scope).get("accept-encoding"), offered)
        if coding is None:
            await self.app(scope, receive, send)
            return
        compressing = self.create_compression_send_wrapper(
            send=send, compression_encoding=coding, scope=scope
        )
        await self.app(scope, receive, compressing)


class Recordline(Litestar):
    """The service's app: Litestar, with HEAD answered wherever GET is.

    RFC 9110 §9.3.2: HEAD is GET without the content. A HEAD request is routed,
    guarded and answered as the GET it stands for (so the same guards apply,
    and the headers are the GET's, Content-Length included), and its body is
    not sent. Litestar answers only the methods a handler names, and a route
    declared for HEAD as well would show each operation twice in the OpenAPI
    document.
    """

    async def __call__(
        self,
        scope: Scope | LifeSpanScope,
        receive: Receive | LifeSpanReceive,
        send: Send | LifeSpanSend,
    ) -> None:
        if scope.get("method") != "HEAD":
            await super().__call__(scope, receive, send)
            return
        http_send = cast("Send", send)

        async def without_content(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await http_send(message)

        # A copy: the server keeps its own scope, which still says HEAD. A route
        # whose HEAD says something its GET does not (a stream's tail) reads the mark.
        as_get = cast("Scope", {**scope, "method": "GET", HEAD_REQUEST: True})
        await super().__call__(as_get, receive, without_content)


# Of the stop's budget, what is kept after in-flight writes are answered: the
# export lease handed back (1 s at most), the clients closed, and spans flushed.
CLOSING_SECONDS = 2.0
# The least given to flushing telemetry, last of all.
TELEMETRY_SECONDS = 0.5


class StopBudget:
    """One clock for the whole stop, started by SIGTERM (or by the lifespan's end,
    whichever comes first): each step takes what is left of it, so the process exits
    within `seconds` whatever its dependencies do. Cloud Run kills 10 s after SIGTERM."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._began: float | None = None

    def begin(self) -> float:
        """When the stop began (now, the first time)."""
        if self._began is None:
            self._began = time.monotonic()
        return self._began

    def left(self, *, keeping: float = 0.0) -> float:
        """Seconds left of the budget, less what later steps keep (never below 0)."""
        return max(0.0, self.begin() + self.seconds - keeping - time.monotonic())


@contextlib.contextmanager
def on_terminate(callback: Callable[[], None]) -> Iterator[None]:
    """Call `callback` (on the event loop) when the process is asked to stop (SIGTERM,
    or SIGINT: Ctrl-C), then let the handler that was there (the server's: drain and
    stop) do its part, while inside.

    Only the main thread may handle signals: elsewhere (an app in a test's thread)
    this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    loop = asyncio.get_running_loop()
    stops = (signal.SIGTERM, signal.SIGINT)
    previous = {signum: signal.getsignal(signum) for signum in stops}

    def terminated(signum: int, frame: FrameType | None) -> None:
        loop.call_soon_threadsafe(callback)
        before = previous[signal.Signals(signum)]
        if callable(before):
            before(signum, frame)
        elif before == signal.SIG_DFL:
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)

    for signum in stops:
        signal.signal(signum, terminated)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def declared(settings: Settings, revisions: Revisions) -> Revisions:
    """`revisions`, told the schema a JSON topic's system declares, if any; a schema
    that is no Avro record is a SettingsError naming the variable."""
    if settings.schema.json_topic_schema:
        try:
            revisions.declare(settings.schema.json_topic_schema)
        except DeclaredSchemaError as exc:
            var = "RECORDLINE_JSON_TOPIC_SCHEMA"
            raise SettingsError(f"{var}: {exc}", var=var) from None
    return revisions


def fetching_schemas(
    settings: Settings, revisions: Revisions, source: SchemaSource | None = None
) -> Schemas:
    """The schema revisions' decoders, fetched from `source` (the Schema API by
    default) as messages name them; `revisions` learns each one's typed fields, and
    fetches through them a revision a store meets that no push here decoded (one
    another instance decoded)."""
    timeout = settings.schema.fetch_timeout_seconds
    schemas = Schemas(
        source
        if source is not None
        else PubSubSchemas(emulator_host=settings.schema.emulator_host, timeout=timeout),
        timeout=timeout,
        revisions=revisions,
    )
    revisions.fetch_with(schemas.learn)
    return schemas


def create_app(
    settings: Settings | None = None,
    *,
    store: Store | None = None,
    telemetry: Telemetry | None = None,
    schema_source: SchemaSource | None = None,
    revisions: Revisions | None = None,
) -> Recordline:
    settings = settings if settings is not None else Settings.load()
    # First: a configuration that would leave the service open never gets further.
    auth = Auth.from_settings(settings)
    telemetry = telemetry if telemetry is not None else Telemetry.from_settings(settings)
    # Each decoded schema revision's typed fields, from the push path to the
    # store that projects them (a store passed in shares this one to do so).
    revisions = declared(settings, revisions if revisions is not None else Revisions())
    if store is None:
        store = open_store(
            settings,
            revisions=revisions,
            observer=telemetry.query_observer,
            conflicts=telemetry.conflicts(),
            exports=telemetry.export_observer(),
            loops=telemetry.loop_observer(),
            patches=telemetry.patch_observer(),
        )
    # Ingest and reads go through the observed store (spans, durations);
    # the lifespan and readiness probe talk to the store itself.
    observed = telemetry.observe(store)
    batch = settings.batch
    batcher = Batcher(
        observed,
        max_rows=batch.max_rows,
        max_bytes=batch.max_bytes,
        max_delay=batch.max_delay_ms / 1000,
        queue_rows=batch.queue_rows,
        queue_bytes=batch.queue_bytes,
        deadline=settings.store.write_deadline_seconds,
        max_in_flight=store.max_in_flight,
        observer=telemetry.flush_observer(),
    )
    schemas = fetching_schemas(settings, revisions, schema_source)
    shape = Shape(id_field=settings.payload.id_field, time_field=settings.payload.time_field)
    outcomes = telemetry.push_outcomes()
    ingest = Ingest(batcher, Payloads(shape, schemas), observer=outcomes)
    tokens = PageTokens(settings.query.page_token_secret)
    reader = Reader(
        observed,
        pending_horizon=batcher.horizon,
        tokens=tokens,
        retention_days=settings.store.retention_days,
    )
    followers = Followers(
        stream_seconds=settings.query.stream_seconds,
        heartbeat_seconds=settings.query.heartbeat_seconds,
        max_open=settings.query.max_followers,
        long_poll_seconds=settings.query.long_poll_seconds,
        # Private unless configured: an outer gate (Cloud Run's invoker check) may
        # guard reads this service does not check itself.
        shared_cache=settings.query.shared_cache,
    )
    # Reads in flight leave room for pushes on the connections the server keeps.
    reads = Reads(settings.server.max_reads).middleware()
    producers = Producers(store, tokens=tokens, grace_seconds=settings.query.producer_grace_seconds)
    # The ledger's `missing` metric, read by a loop of the app's own (a store with no
    # ledger has none): restarted if it fails, and named by readiness while it is down.
    watching = Supervisor(observer=telemetry.loop_observer())
    watch = MissingWatch(producers)
    telemetry.metrics.producers_missing = lambda: watch.missing

    async def watch_check() -> None:
        down = watching.down()
        if down:
            raise StoreUnavailable(f"background work down: {'; '.join(down)}")

    readiness = Readiness(store, checks=[auth.check, schemas.check, watch_check])
    problems = Problems(max_body_bytes=settings.server.max_body_bytes)
    telemetry.watch(
        queue_depth=lambda: batcher.depth,
        horizon=reader.horizon,
        followers=lambda: followers.open,
    )

    stop = StopBudget(settings.server.shutdown_grace_seconds)

    def stopping() -> None:
        # SIGTERM: the stop's clock starts now, not once uvicorn is done waiting.
        stop.begin()
        followers.stop()
        batcher.hurry(within=stop.left(keeping=CLOSING_SECONDS))

    async def drain() -> None:
        readiness.stopping = True
        followers.stop()
        await batcher.close(grace=stop.left(keeping=CLOSING_SECONDS))

    async def close_store() -> None:
        # The clients are closed in what is left; a close cut short leaves
        # only daemon threads, which do not hold the process up.
        try:
            async with asyncio.timeout(stop.left(keeping=TELEMETRY_SECONDS)):
                await store.close()
        except TimeoutError:
            log.warning("the store did not close within the stop's budget; exiting anyway")

    async def flush_telemetry() -> None:
        await telemetry.shutdown(within=max(stop.left(), TELEMETRY_SECONDS))

    @asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        # Undone in reverse, each step even when one before it failed: a store
        # that fails to close still leaves telemetry flushed.
        async with AsyncExitStack() as stack:
            stack.push_async_callback(flush_telemetry)
            await store.start()
            stack.push_async_callback(close_store)
            stack.push_async_callback(schemas.close)
            await batcher.start()
            stack.push_async_callback(drain)
            if store.completeness is not None:
                await watching.start()
                stack.push_async_callback(watching.close)
                watching.run("producers", watch.run, interval=WATCH_SECONDS)
            # uvicorn waits for open requests before the lifespan ends: waiting
            # pages and streams must hear of a SIGTERM or a Ctrl-C at once to end in the grace.
            stack.enter_context(on_terminate(stopping))
            log.info("recordline ready on store %s", settings.store.url)
            yield
        log.info("recordline stopped: accepted rows drained, store closed")

    traced = telemetry.middleware()
    # Pages of records compress about eightfold: a follower at 1,000 msg/s would
    # otherwise pay more for egress than the stores cost. Level 6 is zlib's
    # default, most of level 9's ratio at a fraction of its CPU. Every route but
    # the push, which is answered with no content: with no middleware of its own
    # (tracing off) a push is spared Litestar's second exception layer and the
    # coding's negotiation, ~10 of its calls.
    compressed = [
        DefineMiddleware(
            NegotiatedCompression,
            config=CompressionConfig(
                backend="gzip", minimum_size=COMPRESS_FROM_BYTES, gzip_compress_level=6
            ),
        )
    ]

    def constant(value: object) -> Provide:
        return Provide(lambda: value, use_cache=True, sync_to_thread=False)

    return Recordline(
        route_handlers=[
            # Called by the push subscription.
            Router(
                "/",
                route_handlers=push_routes(ingest, telemetry.push_traces),
                guards=auth.push_guards,
                middleware=traced,
            ),
            Router(
                "/",
                route_handlers=[*READ_ROUTES, *STREAM_ROUTES],
                guards=auth.read_guards,
                middleware=[reads, *traced, *telemetry.read_timing(), *compressed],
            ),
            Router(
                "/",
                route_handlers=REPLAY_ROUTES,
                guards=auth.replay_guards,
                middleware=[reads, *traced, *compressed],
            ),
            # Probes, scrapes and the docs are not traced: they say nothing about a message.
            Router(
                "/",
                route_handlers=[
                    healthz,
                    readyz,
                    describe_problem,
                    docs_assets(),
                    *telemetry.route_handlers,
                ],
                middleware=compressed,
            ),
            Router(
                "/",
                route_handlers=PRODUCER_ROUTES,
                guards=auth.read_guards,
                middleware=[reads, *traced, *compressed],
            ),
        ],
        dependencies={
            "reader": constant(reader),
            "readiness": constant(readiness),
            "replayer": constant(Replay(ingest, observed)),
            "paging": constant(
                Paging(
                    reader, followers, Streams(reader, Offsets(settings.query.page_token_secret))
                )
            ),
            "producers": constant(producers),
        },
        lifespan=[auth.lifespan, lifespan],
        after_exception=[push_refusals(outcomes, problems)],
        plugins=[
            ProblemDetailsPlugin(
                # Every exception, Litestar's own included, through one table.
                ProblemDetailsConfig(exception_to_problem_detail_map=problems.exception_map)
            ),
        ],
        request_max_body_size=settings.server.max_body_bytes,
        openapi_config=openapi_config(middleware=compressed),
        signature_types=[Reader, Readiness, Replay, Paging, Producers],
        # Logging is configured by the process (app.telemetry), not per app.
        logging_config=None,
    )
