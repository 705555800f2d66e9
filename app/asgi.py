"""create_app: the one place where Recordline is assembled.

Backends are arguments: tests and benchmarks pass their own Store; the
command line passes Settings it read once. Clients are opened in the lifespan
and closed there; nothing connects at import time.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from litestar import Litestar, Request, Router
from litestar.di import NamedDependency, Provide
from litestar.middleware import DefineMiddleware
from litestar.plugins.problem_details import ProblemDetailsConfig, ProblemDetailsPlugin
from litestar.types import AfterExceptionHookHandler, Scope
from litestar.utils import normalize_path

from app.auth.browsers import json_only, same_origin
from app.auth.guards import Auth
from app.auth.oidc import GoogleCerts
from app.budget import LARGE_ROOM, Budget, Places, Share
from app.docs import docs_assets, openapi_config
from app.errors import RecordlineError, SchemaUnavailable, StoreUnavailable
from app.health import Readiness, healthz, readyz
from app.http.access import AccessRecord
from app.http.codings import compression
from app.http.head import Recordline
from app.http.limits import BODY_COPIES
from app.ingest.batcher import Batcher, BatchLimits
from app.ingest.payload import Payloads
from app.ingest.pubsub_schemas import PubSubSchemas
from app.ingest.replay import Replay
from app.ingest.replay import refusal as replay_refusal
from app.ingest.schemas import FETCH_SECONDS, Schemas, SchemaSource
from app.ingest.service import Ingest, PushObserver
from app.ingest.shape import FieldPaths
from app.ingest.signing import ProducerKeys
from app.ingest.topic import Topic
from app.lifespan import AppLoops, Lifespan, Loop
from app.problems import Problems, describe_problem, problem_responses
from app.process import StopBudget
from app.query.access import (
    KEEP_EVERY_SECONDS,
    MOST_WAITING_BYTES,
    AccessKeeper,
    AccessReads,
)
from app.query.canary import PROBE_SECONDS, CanaryProbe
from app.query.dead_letters import DeadLetterReads
from app.query.follow import Followers
from app.query.mask import Mask, MaskError, Pseudonyms
from app.query.offsets import Offsets
from app.query.page_token import PageTokens
from app.query.producers import WATCH_SECONDS, MissingWatch, Producers
from app.query.service import EncodedViews, Reader
from app.query.streams import Streams
from app.routes.access import ACCESS_ROUTES
from app.routes.console import console_router, template_config
from app.routes.dead_letters import DEAD_LETTER_ROUTES
from app.routes.export import EXPORT_PATH, EXPORT_ROUTES
from app.routes.ingest import (
    PUBLISH_ROUTES,
    PUSH_PATH,
    REPLAY_ROUTES,
    PushPace,
    push_refusals,
    push_routes,
)
from app.routes.producers import PRODUCER_ROUTES
from app.routes.query import READ_ROUTES, Paging
from app.routes.read_pass import read_pass_routes
from app.routes.reads import (
    export_places,
    exports_middleware,
    exports_refusal,
    reads_middleware,
)
from app.routes.streams import STREAM_ROUTES
from app.settings import (
    PUSH_RESERVE,
    SYSTEM_TOPIC,
    QuerySettings,
    ServerSettings,
    Settings,
    SettingsError,
    names,
)
from app.store import Store
from app.store.access import KeepsAccess
from app.store.copies import LaterCopies, told_all
from app.store.open import open_store
from app.store.producers import PRODUCER_ATTRIBUTE
from app.store.supervisor import Supervisor
from app.telemetry import Telemetry
from app.telemetry.store import ObservedStore, observed_reads
from app.typed.revisions import DeclaredSchemaError, Revisions

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    # Imported with the serving tier only: the client takes most of a second to import.
    from app.store.spanner.calls import SpannerClients


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


def fetching_schemas(settings: Settings, source: SchemaSource | None = None) -> Schemas:
    """The schema revisions' decoders, fetched from `source` (the Schema API by
    default) as messages name them; their typed fields, with those of the schema a
    JSON topic's system declares (`declared`), are learned in `schemas.revisions`."""
    schemas = Schemas(
        source
        if source is not None
        else PubSubSchemas(emulator_host=settings.schema.emulator_host, timeout=FETCH_SECONDS),
        timeout=FETCH_SECONDS,
    )
    declared(settings, schemas.revisions)
    return schemas


def store_revisions(schemas: Schemas) -> Revisions:
    """The typed fields `schemas` learn, as a store sees them: a revision no push
    here decoded (one another instance decoded) is fetched as a push fetches it; a
    fetch that fails is the store's StoreUnavailable, so that what waits on it is
    retried as any store outage."""

    async def fetch(revision: str) -> None:
        name, _, revision_id = revision.rpartition("@")
        try:
            await schemas.decoder(name, revision_id)
        except SchemaUnavailable as exc:
            raise StoreUnavailable(exc.detail) from None

    return Revisions(fetch, sharing=schemas.revisions)


@dataclass(frozen=True)
class Shared:
    """What a cell gives each of its systems' apps (app.cell): its one key client for
    tokens, its Spanner clients (one per project), the process's stop (one clock, one
    SIGTERM handler), and whether each system looks for its canary itself. The
    telemetry each app is given is the system's view of the cell's."""

    certs: GoogleCerts | None
    spanner: SpannerClients | None
    budget: StopBudget
    # What requests and answers in flight are charged to: the process's one (app.budget),
    # and the system's share of it.
    in_flight: Budget | None = None
    share: Share | None = None
    # The reads, followers and exports the system may hold at once: its shares of the
    # process's (`app.budget.Places`).
    reads: Places | None = None
    followers: Places | None = None
    exports: Places | None = None
    probe_canary: bool = True
    # What signs the system's page tokens and stream offsets, where not
    # RECORDLINE_PAGE_TOKEN_SECRET itself: a cell gives each system a key of its own
    # (`app.cell.app.system_token_secret`), so that one system's token is not another's.
    page_token_secret: str | None = None
    # Why a push of the system is refused before anything else is asked, if it is: the
    # throttle on-call set on it (`app.cell.throttles`).
    throttled: PushPace | None = None
    # Records' encoded views, made once for every system's stream reads (the process's).
    encoded: EncodedViews | None = None
    # The bytes of the access record the system's store may leave waiting: its share of
    # the process's MOST_WAITING_BYTES.
    access_waiting_bytes: int | None = None


def create_app(
    settings: Settings | None = None,
    *,
    store: Store | None = None,
    telemetry: Telemetry | None = None,
    schemas: Schemas | None = None,
    shared: Shared | None = None,
) -> Recordline:
    settings = settings if settings is not None else Settings.load()
    # First: a configuration that would leave the service open never gets further.
    auth = Auth.from_settings(settings, certs=None if shared is None else shared.certs)
    telemetry = telemetry if telemetry is not None else Telemetry.from_settings(settings)
    # Each decoded schema revision's typed fields, from the push path to the
    # store that projects them (a store passed in is given `store_revisions` of
    # the `schemas` passed with it).
    schemas = schemas if schemas is not None else fetching_schemas(settings)
    # Later copies of stored messages that said something else, for `/v1/messages/{id}`:
    # told by the store as telemetry is (a store passed in tells whom it was given).
    later_copies = LaterCopies()
    if store is None:
        revisions = store_revisions(schemas)
        # The export's metrics are its lease holder's: a store that leaves the
        # export to the exporter pool reports none.
        observers = telemetry.store_observers(exports=settings.store.export_in_service)
        observers = dataclasses.replace(
            observers, conflicts=told_all(observers.conflicts, later_copies)
        )
        store = open_store(
            settings,
            revisions=revisions,
            observers=observers,
            spanner=None if shared is None else shared.spanner,
        )
    # Ingest and reads go through the observed store (spans, durations);
    # the lifespan and readiness probe talk to the store itself.
    # With a serving tier every row is exported once: what the store holds (rows
    # stored and rejected, their freshness, the newest canary) is counted there, by
    # the holder of the export's lease, not by every instance that pushes.
    telemetry.metrics.counted_at_export = bool(settings.store.serving)
    observed = telemetry.observe(store)
    batcher = group_commit(settings, store, observed, telemetry)
    pushes = PushSide.of(settings, batcher, schemas, telemetry)
    budget = (
        shared.in_flight
        if shared is not None and shared.in_flight is not None
        else in_flight(settings.server)
    )
    reads = ReadSide.of(
        settings,
        store,
        observed,
        pending_horizon=batcher.horizon,
        later_copies=later_copies,
        budget=budget,
        share=None if shared is None else shared.share,
        followed=None if shared is None else shared.followers,
        page_token_secret=None if shared is None else shared.page_token_secret,
        encoded=EncodedViews() if shared is None or shared.encoded is None else shared.encoded,
    )
    if reads.masked is not None and auth.everyone_operates:
        log.warning(
            "RECORDLINE_MASK_FIELDS and RECORDLINE_MASK_ATTRIBUTES mask nothing here: with no "
            "authentication every caller is an operator. Set RECORDLINE_PUSH_TOKEN (operators "
            "send it as a bearer token), or RECORDLINE_READ_AUDIENCE with "
            "RECORDLINE_OPERATOR_PRINCIPALS."
        )
    loops = app_loops(store, reads.producers, telemetry, named=reads.metric_producer)
    keeper = (
        AccessKeeper(
            store,
            observer=telemetry.loop_observer(),
            most_bytes=MOST_WAITING_BYTES
            if shared is None or shared.access_waiting_bytes is None
            else shared.access_waiting_bytes,
        )
        if isinstance(store, KeepsAccess)
        else None
    )
    if keeper is not None:
        loops.add(Loop("access", keeper.forever, interval=KEEP_EVERY_SECONDS))
    access = AccessRecord(
        system=settings.telemetry.system,
        shown=None if reads.mask is None else reads.mask.parameter,
        keeper=keeper,
    )
    if shared is not None and shared.probe_canary and probes_canary(settings):
        probe = CanaryProbe(store, found=telemetry.metrics.canary)
        loops.add(Loop("canary", probe.run, interval=PROBE_SECONDS))
    readiness = Readiness(
        store,
        checks=[auth.check, loops.check],
        warnings=[schemas.warnings] + ([] if keeper is None else [keeper.warnings]),
    )
    telemetry.watch(
        queue_depth=lambda: batcher.depth,
        horizon=reads.paging.reader.horizon,
        followers=lambda: reads.paging.followers.open,
        held=lambda: budget.held,
    )
    topic = Topic(
        # In a cell, each system's: the template names it.
        settings.schema.topic.replace(SYSTEM_TOPIC, settings.telemetry.system),
        pushes.ingest,
        emulator_host=settings.schema.emulator_host,
    )
    lifespan = Lifespan(
        store,
        batcher,
        schemas,
        reads.paging.followers,
        readiness,
        telemetry,
        loops,
        StopBudget(
            settings.server.shutdown_grace_seconds,
            within=None if shared is None else shared.budget,
        ),
        store_url=settings.store.url,
        signals=shared is None,
        keep_last=None if keeper is None else last_lines(access, keeper),
        clients=(topic.close,),
    )
    problems = Problems(max_body_bytes=settings.server.max_body_bytes)
    exporting = (
        shared.exports
        if shared is not None and shared.exports is not None
        else export_places(settings.server.memory_budget_bytes)
    )
    app = http_app(
        routers(
            auth,
            telemetry,
            pushes.ingest,
            problems,
            reads=reads_middleware(
                shared.reads
                if shared is not None and shared.reads is not None
                else Places(settings.server.max_reads)
            ),
            exports=exports_middleware(exporting),
            access=access,
            system=settings.telemetry.system,
            throttled=None if shared is None else shared.throttled,
        ),
        constants(
            readiness=readiness,
            replayer=Replay(
                pushes.ingest,
                observed,
                hides=None if reads.mask is None else reads.mask.hides_in_payload,
            ),
            topic=topic,
            access_reads=reads.access,
            dead_letter_reads=reads.dead_letters,
        )
        | reads.for_callers(auth),
        lifespan=[auth.lifespan, access.lifespan, lifespan],
        after_exception=[push_refusals(pushes.outcomes, problems)],
        problems=problems,
        max_body_bytes=settings.server.max_body_bytes,
        mounted_at=settings.mounted_at,
    )
    app.connections = telemetry.connection_observer()
    app.stopping = lifespan.stopping
    app.readiness = readiness
    app.budget = budget
    app.share = None if shared is None else shared.share
    app.unsliced = PUSH_PATH
    app.refused = refused_on_head(
        pushes.ingest, exporting, None if shared is None else shared.throttled
    )
    return app


def refused_on_head(
    ingest: Ingest,
    exports: Places,
    throttled: PushPace | None = None,
) -> Callable[[Scope, int], RecordlineError | None]:
    """Why a request is refused on its head, before it is routed, if it is (given what its
    body says it holds): a push of a system on-call throttled past its pace, or one its
    system's queue has no room for (`Ingest.room`), an export past the system's share.
    Each such refusal costs the server's parse of its head and this, nothing of
    Litestar's; the route's own checks still hold the bound."""

    def refused(scope: Scope, declared: int) -> RecordlineError | None:
        path = scope["path"]
        if path != PUSH_PATH and ("//" in path or path.endswith("/")):
            # As Litestar's router reads it: `/pubsub/push/` and `//pubsub/push` are the
            # push's route too, and refused as it is.
            path = normalize_path(path)
        if path == PUSH_PATH:
            if scope.get("method") != "POST":
                return None
            refusal = None if throttled is None else throttled(spend=False)
            return refusal if refusal is not None else ingest.room(declared)
        if path.startswith(EXPORT_PATH) and exports.full():
            return exports_refusal(exports)
        return None

    return refused


def probes_canary(settings: Settings) -> bool:
    """Whether a system looks for its canary in its own store (`CanaryProbe`): not on
    BigQuery alone, where each look-up is a query billed at least 10 MiB (~14 GiB a
    day for one a minute), and the push path reports the canaries it stores there;
    nor with a serving tier, whose export reports the newest canary it exports, from
    the holder of its lease alone (every instance probing wrote a series each)."""
    return not (settings.store.url.startswith("bigquery:") or settings.store.serving)


def in_flight(server: ServerSettings) -> Budget:
    """The process's budget for requests and answers in flight: reads leave pushes
    PUSH_RESERVE of it, and at least room for the largest push beside what
    large pushes leave to small ones (`app.budget`)."""
    most = server.memory_budget_bytes
    largest_push = server.max_header_bytes + BODY_COPIES * server.max_body_bytes
    room = max(round(most * PUSH_RESERVE), largest_push + round(most * LARGE_ROOM))
    return Budget(most, read_room=room)


def http_app(
    routes: list[Router],
    dependencies: dict[str, Provide],
    *,
    lifespan: Sequence[Callable[[Litestar], AbstractAsyncContextManager[None]]],
    after_exception: Sequence[AfterExceptionHookHandler[Exception]],
    problems: Problems,
    max_body_bytes: int,
    signature_types: Sequence[type] = (Reader, Readiness, Replay, Paging, Producers),
    mounted_at: str = "",
) -> Recordline:
    """The app serving `routes` (Litestar, behind `Recordline`'s HEAD): every error
    answered through `problems`, a body over `max_body_bytes` refused, its OpenAPI
    document compressed and its server the path it is `mounted_at` (a cell's system's);
    the types its handlers' dependencies are declared with, `signature_types`."""
    litestar = Litestar(
        route_handlers=routes,
        dependencies=dependencies,
        lifespan=lifespan,
        after_exception=after_exception,
        plugins=[
            ProblemDetailsPlugin(
                # Every exception, Litestar's own included, through one table.
                ProblemDetailsConfig(exception_to_problem_detail_map=problems.exception_map)
            ),
        ],
        request_max_body_size=max_body_bytes,
        openapi_config=openapi_config(middleware=[compression()], mounted_at=mounted_at),
        template_config=template_config(),
        signature_types=list(signature_types),
        # Logging is configured by the process (app.telemetry), not per app.
        logging_config=None,
    )
    app = Recordline(litestar)
    app.problems = problems
    return app


def group_commit(
    settings: Settings, store: Store, observed: Store, telemetry: Telemetry
) -> Batcher:
    """The batcher: pushes' rows appended to `observed` in batches, as many at once
    as `store` takes."""
    return Batcher(
        observed,
        BatchLimits.of(settings.batch),
        deadline=settings.store.write_deadline_seconds,
        max_in_flight=store.max_in_flight,
        observer=telemetry.flush_observer(),
    )


@dataclass(frozen=True)
class PushSide:
    """The push path: each delivery decoded by its schema and its row group-committed,
    its outcome counted."""

    ingest: Ingest
    outcomes: PushObserver

    @classmethod
    def of(
        cls, settings: Settings, batcher: Batcher, schemas: Schemas, telemetry: Telemetry
    ) -> PushSide:
        outcomes = telemetry.push_outcomes()
        paths = FieldPaths(
            id_field=settings.payload.id_field, time_field=settings.payload.time_field
        )
        keys = producer_keys(settings)
        ingest = Ingest(
            batcher,
            Payloads(paths, schemas),
            observer=outcomes,
            keys=keys,
            max_body=settings.server.max_body_bytes,
        )
        return cls(ingest, outcomes)


def producer_keys(settings: Settings) -> ProducerKeys | None:
    """The producers whose sequences must be signed; SettingsError naming the producer
    (never the key) whose key cannot be used."""
    try:
        return ProducerKeys.parse(settings.auth.producer_keys)
    except ValueError as exc:
        raise SettingsError(
            f"RECORDLINE_PRODUCER_KEYS: {exc}", var="RECORDLINE_PRODUCER_KEYS"
        ) from None


@dataclass(frozen=True)
class ReadSide:
    """The reads: pages and streams of rows no further than the pushes still in hand
    (`pending_horizon`), the followers parked on them, and the producers' ledger."""

    paging: Paging  # the reader, the followers and the streams
    producers: Producers
    # The same reads, masked, for callers who are not operators (app.query.mask);
    # None where nothing is masked.
    masked: Paging | None = None
    # The ledger as they read it, where a producer's id is masked.
    masked_producers: Producers | None = None
    # How a producer is named in a metric's label: by its pseudonym where its id is
    # masked (a metric is read by whoever reads /metrics or Cloud Monitoring).
    metric_producer: Callable[[str], str] = str
    # What the readers' reads mask; None where nothing is masked.
    mask: Mask | None = None
    # The access record as operators read it.
    access: AccessReads | None = None
    # The dead letters as operators read them.
    dead_letters: DeadLetterReads | None = None

    def for_callers(self, auth: Auth) -> dict[str, Provide]:
        """The `reader`, `paging` and `producers` dependencies: the masked ones for a
        caller who is not an operator, where something is masked; else the same for
        every caller."""
        masked = self.masked
        if masked is None:
            return constants(
                reader=self.paging.reader, paging=self.paging, producers=self.producers
            )
        everyone = self.paging
        ledger, masked_ledger = self.producers, self.masked_producers or self.producers

        async def operates(request: Request[Any, Any, Any]) -> bool:
            return await auth.operates(request)

        async def paging(operator: NamedDependency[bool]) -> Paging:
            return everyone if operator else masked

        async def reader(paging: NamedDependency[Paging]) -> Reader:
            return paging.reader

        async def producers(operator: NamedDependency[bool]) -> Producers:
            return ledger if operator else masked_ledger

        return {
            "operator": Provide(operates),
            "paging": Provide(paging),
            "reader": Provide(reader),
            "producers": Provide(producers),
        }

    @classmethod
    def of(
        cls,
        settings: Settings,
        store: Store,
        observed: ObservedStore,
        *,
        pending_horizon: Callable[[], int],
        later_copies: LaterCopies | None = None,
        budget: Budget | None = None,
        share: Share | None = None,
        followed: Places | None = None,
        page_token_secret: str | None = None,
        encoded: EncodedViews | None = None,
    ) -> ReadSide:
        query = settings.query
        secret = page_token_secret or query.page_token_secret
        tokens = PageTokens(secret)
        # The access record's reads and dead letters', observed as the rows' are.
        access_store, letter_store = observed_reads(observed)

        def made(mask: Mask | None = None) -> Reader:
            return Reader(
                observed,
                pending_horizon=pending_horizon,
                tokens=tokens,
                retention_days=settings.store.retention_days,
                later_copies=later_copies,
                mask=mask,
                budget=budget,
                share=share,
                # A masked reader's views are made of the record's fields each time.
                encoded=encoded if mask is None else None,
            )

        reader = made()
        followers = parked_followers(
            reader, query, slow_seconds=settings.server.send_timeout_seconds, places=followed
        )
        offsets = Offsets(secret)
        streams = Streams(reader, offsets, encodings=followers.encodings)
        pseudonyms = Pseudonyms(secret)
        mask = masked_as(query.mask_fields, query.mask_attributes, pseudonyms)
        honoured(mask, settings)
        producers = Producers(store, tokens=tokens, grace_seconds=query.producer_grace_seconds)
        masked = masked_producers = None
        if mask.masks_attribute(PRODUCER_ATTRIBUTE):
            masked_producers = producers.masked(pseudonyms)
        if mask:
            # Reads of their own (no follower shares a read with an operator's), the
            # followers' bounds and stop shared.
            masked_reader = made(mask)
            masked = Paging(
                masked_reader,
                followers.reading(masked_reader),
                Streams(masked_reader, offsets, encodings=followers.encodings),
                query.export_max_bytes,
            )
        return cls(
            Paging(reader, followers, streams, query.export_max_bytes),
            producers,
            masked,
            masked_producers,
            metric_producer=pseudonyms.of if masked_producers is not None else str,
            mask=mask if mask else None,
            access=AccessReads(access_store, tokens),
            dead_letters=DeadLetterReads(letter_store, observed, tokens, refusal=replay_refusal),
        )


def masked_as(fields: str, attributes: str, pseudonyms: Pseudonyms) -> Mask:
    """The mask RECORDLINE_MASK_FIELDS and RECORDLINE_MASK_ATTRIBUTES say, or a
    SettingsError naming the one that names no member or a mode there is not."""
    try:
        return Mask(names(fields), names(attributes), pseudonyms)
    except MaskError as exc:
        var = "RECORDLINE_MASK_ATTRIBUTES" if exc.attributes else "RECORDLINE_MASK_FIELDS"
        raise SettingsError(f"{var}: {exc}", var=var) from None


def honoured(mask: Mask, settings: Settings) -> None:
    """SettingsError, naming RECORDLINE_MASK_FIELDS, for a mask that would name the
    field a record's id or event time is read from: the id and time columns, look-ups
    by id and every page's `id` would show what `data` masks."""
    payload = settings.payload
    for setting, path in (
        ("RECORDLINE_ID_FIELD", payload.id_field),
        ("RECORDLINE_TIME_FIELD", payload.time_field),
    ):
        masked = mask.names_in(path.split("."))
        if masked is not None:
            raise SettingsError(
                f"RECORDLINE_MASK_FIELDS masks {masked!r}, which {setting} ({path!r}) reads "
                "the record's id or event time from: the id and timestamp columns and "
                "look-ups by id would show it unmasked. Mask another member, or read the "
                "id or time from a member that is not masked",
                var="RECORDLINE_MASK_FIELDS",
            )


def app_loops(
    store: Store,
    producers: Producers,
    telemetry: Telemetry,
    *,
    named: Callable[[str], str] = str,
) -> AppLoops:
    """The app's own loops, their restarts counted: the batcher's (it adds them as it
    starts) and, where the store keeps a producer ledger, the watch of its `missing`
    metric (a store with no ledger has none), each producer `named` in its label."""
    loops = AppLoops(Supervisor(observer=telemetry.loop_observer()))
    if store.completeness is not None:
        watch = MissingWatch(producers)
        telemetry.metrics.producers_missing = lambda: {
            named(p): n for p, n in watch.missing.items()
        }
        telemetry.metrics.producers_conflicts = lambda: {
            named(p): n for p, n in watch.conflicts.items()
        }
        loops.add(Loop("producers", watch.run, interval=WATCH_SECONDS))
    return loops


def last_lines(access: AccessRecord, keeper: AccessKeeper) -> Callable[[float], Awaitable[None]]:
    """What the app writes of its access record as it stops: the followers' sums, then
    every line still waiting for the store."""

    async def keep(within: float) -> None:
        access.flush()
        await keeper.close(within)

    return keep


def parked_followers(
    reader: Reader, query: QuerySettings, *, slow_seconds: float, places: Places | None = None
) -> Followers:
    """Long-polls and streams of `reader`'s lists, as many and as long as `query` allows
    (or `places`, a system's share of a cell's); a stream whose client takes no event for
    `slow_seconds` is cut off."""
    return Followers(
        reader,
        places=places,
        stream_seconds=query.stream_seconds,
        max_open=query.max_followers,
        long_poll_seconds=query.long_poll_seconds,
        slow_seconds=slow_seconds,
        # Private unless configured: an outer gate (Cloud Run's invoker check) may
        # guard reads this service does not check itself.
        shared_cache=query.shared_cache,
    )


def routers(
    auth: Auth,
    telemetry: Telemetry,
    ingest: Ingest,
    problems: Problems,
    *,
    reads: DefineMiddleware,
    exports: DefineMiddleware,
    throttled: PushPace | None = None,
    access: AccessRecord,
    system: str = "",
) -> list[Router]:
    """The routes, each group behind its guards and middleware.

    Every route but the push is compressed where the client accepts it; the push
    is answered with no content, and with no middleware of its own (tracing off)
    is spared Litestar's second exception layer and the coding's negotiation, ~10
    of its calls. Reads in flight leave room for pushes on the connections the
    server keeps (`reads`). Probes, scrapes and the docs are not traced: they say
    nothing about a message.
    """
    traced = telemetry.middleware()
    compressed = [compression()]

    if telemetry.serves_metrics and auth.metrics_refused:
        log.warning("GET /metrics will answer 403: %s", auth.metrics_refused)

    def recorded(action: str) -> list[DefineMiddleware]:
        # Outermost: a refusal by the middleware within (too many reads) is recorded too.
        return [access.middleware(action)]

    return [
        # Called by the push subscription; a wrapped push is judged by what a browser
        # says too (`push_routes`, in line: a guard of Litestar's copies the handler).
        Router(
            "/",
            route_handlers=push_routes(ingest, telemetry.push_traces, throttled),
            guards=auth.push_guards,
            middleware=traced,
        ),
        # A read pass, where configured, opens these as a token does.
        Router(
            "/",
            route_handlers=[*READ_ROUTES, *STREAM_ROUTES],
            guards=auth.pass_read_guards,
            middleware=[*recorded("read"), reads, *traced, *telemetry.read_timing(), *compressed],
        ),
        # Exports are reads too, and at most so many at once (`exports_middleware`);
        # where exporting is a permission of its own, an exporter's alone.
        Router(
            "/",
            route_handlers=EXPORT_ROUTES,
            guards=auth.export_guards,
            middleware=[
                *recorded("export"),
                reads,
                exports,
                *traced,
                *telemetry.read_timing(),
                *compressed,
            ],
        ),
        # Only a token gets a pass.
        Router(
            "/",
            route_handlers=read_pass_routes(auth.passes),
            guards=[*auth.read_guards, same_origin],
            middleware=[*recorded("pass"), *traced],
        ),
        # The access record names every reader, and a dead letter is a payload whole,
        # never masked: an operator's, as a replay is.
        Router(
            "/",
            route_handlers=[*ACCESS_ROUTES, *DEAD_LETTER_ROUTES],
            guards=auth.operator_read_guards,
            middleware=[*recorded("read"), reads, *traced, *compressed],
        ),
        Router(
            "/",
            route_handlers=REPLAY_ROUTES,
            guards=[*auth.replay_guards, same_origin, json_only],
            middleware=[*recorded("replay"), reads, *traced, *compressed],
        ),
        Router(
            "/",
            route_handlers=PUBLISH_ROUTES,
            guards=[*auth.publish_guards, same_origin, json_only],
            middleware=[*recorded("publish"), reads, *traced, *compressed],
        ),
        Router(
            "/",
            route_handlers=[
                healthz,
                readyz,
                describe_problem,
                docs_assets(),
            ],
            middleware=compressed,
        ),
        # The scrape: anyone's on loopback, an operator's beyond it (said at start where
        # no one can be admitted, rather than at the first scrape).
        Router(
            "/",
            route_handlers=telemetry.metrics_routes(
                # Documented, the refusals its guards can answer (none on loopback).
                problem_responses(*auth.metrics_refusals) if auth.metrics_refusals else None
            ),
            guards=auth.metrics_guards,
            middleware=compressed,
        ),
        Router(
            "/",
            route_handlers=PRODUCER_ROUTES,
            guards=auth.pass_read_guards,
            middleware=[*recorded("read"), reads, *traced, *compressed],
        ),
        console_router(
            auth, problems, guards=auth.read_guards, middleware=compressed, system=system
        ),
    ]


def constants(**values: object) -> dict[str, Provide]:
    """Each value as the dependency of its name, the same object for every request."""
    return {name: _constant(value) for name, value in values.items()}


def _constant(value: object) -> Provide:
    return Provide(lambda: value, use_cache=True, sync_to_thread=False)
