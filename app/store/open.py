"""The store a RECORDLINE_STORE URL names: where the service chooses its backend.

The one module of the store layer that reads the settings: each store is made
here from plain values. Each store's module is imported only when named: the
Google clients the BigQuery store and the serving tier need take most of a
second to import, which a service on DuckDB never pays.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from app.settings import (
    BIGQUERY_URL,
    SPANNER_URL,
    QuerySettings,
    Settings,
    SettingsError,
    StoreSettings,
    every_setting,
    invalid,
)
from app.store import Reprojecting, Store
from app.store.observers import NO_OBSERVERS, StoreObservers

if TYPE_CHECKING:
    from app.store.bigquery.queries import QueryRunner
    from app.store.bigquery.store import BigQueryOptions, BigQueryStore
    from app.store.spanner.calls import SpannerClients
    from app.store.spanner.serving import SpannerDatabase, SpannerServing
    from app.store.tiered.balance import Balance
    from app.store.tiered.exporter import ExportThrottle
    from app.store.tiered.fleet import SystemExport
    from app.typed.revisions import Revisions


class UnknownStore(SettingsError):
    """RECORDLINE_STORE names no store this build has."""


def open_store(
    settings: Settings,
    *,
    revisions: Revisions | None = None,
    observers: StoreObservers = NO_OBSERVERS,
    spanner: SpannerClients | None = None,
) -> Store:
    """The store a `RECORDLINE_STORE` URL names (not started yet), telling `observers`
    what it does; `revisions` holds each decoded schema revision's typed fields (every
    store projects them: the serving tier keeps JSON in Spanner and projects on export).
    A serving tier calls Spanner through `spanner`, the process's clients, if given."""
    url = settings.store.url
    scheme, _, rest = url.partition(":")
    if settings.store.serving and scheme != "bigquery":
        raise UnknownStore(
            f"RECORDLINE_SERVING is a serving tier beside the BigQuery store; "
            f"RECORDLINE_STORE={url!r} is not one"
        )
    match scheme:
        case "memory":
            from app.store.duckdb.store import DuckDBStore

            return DuckDBStore(
                ":memory:",
                retention_days=settings.store.retention_days,
                conflicts=observers.conflicts,
                revisions=revisions,
                loops=observers.loops,
                read_seconds=settings.store.query_timeout_seconds,
            )
        case "duckdb":
            from app.store.duckdb.store import DuckDBStore

            # duckdb:///abs/file.duckdb is absolute (an empty host, then the path);
            # duckdb:file.duckdb is relative to the working directory.
            path = rest.removeprefix("//")
            return DuckDBStore(
                path or "recordline.duckdb",
                retention_days=settings.store.retention_days,
                conflicts=observers.conflicts,
                revisions=revisions,
                loops=observers.loops,
                read_seconds=settings.store.query_timeout_seconds,
            )
        case "bigquery":
            analytics = open_bigquery(settings, revisions=revisions, observers=observers)
            if not settings.store.serving:
                # Each copy is appended; reads keep the first (BigQuery cannot tell at write).
                return analytics
            return _tiered(settings, analytics, observers, spanner)
        case _:
            # Settings.load refuses such a URL already; Settings built by hand get here.
            accepts = next(d.accepts for d in every_setting() if d.var == "RECORDLINE_STORE")
            raise UnknownStore(f"RECORDLINE_STORE={url!r} is not accepted: expected {accepts}")


def open_reprojecting(settings: Settings, *, revisions: Revisions) -> Reprojecting:
    """The store a `RECORDLINE_STORE` URL names (not started yet), where it keeps the
    typed fields of its records itself; UnknownStore where it does not."""
    store = open_store(settings, revisions=revisions)
    if not isinstance(store, Reprojecting):
        raise UnknownStore(
            f"RECORDLINE_STORE={settings.store.url!r} keeps no typed fields of its own "
            "to project again"
        )
    return store


def open_bigquery(
    settings: Settings,
    *,
    revisions: Revisions | None = None,
    observers: StoreObservers = NO_OBSERVERS,
) -> BigQueryStore:
    """The BigQuery store RECORDLINE_STORE names (`bigquery://PROJECT/DATASET`), not
    started yet; the observers as `open_store`'s."""
    try:
        from app.store.bigquery.store import BigQueryStore
    except ImportError as exc:  # pragma: no cover - arrives with the BigQuery store
        raise UnknownStore(f"the BigQuery store is not available: {exc}") from None
    url = settings.store.url
    # Both names are put into SQL as identifiers: the pattern holds them to
    # BigQuery's own character sets.
    match = re.fullmatch(BIGQUERY_URL, url)
    if match is None:
        raise invalid("RECORDLINE_STORE", url, "bigquery://PROJECT/DATASET")
    return BigQueryStore(
        match["project"],
        match["dataset"],
        options=bigquery_options(settings.store, settings.query),
        query_endpoint=settings.store.bigquery_query_endpoint or None,
        observer=observers.query,
        revisions=revisions,
        patches=observers.patches,
        loops=observers.loops,
    )


def bigquery_options(store: StoreSettings, query: QuerySettings) -> BigQueryOptions:
    """The BigQuery store's options, as the settings give them."""
    from app.store.bigquery.store import BigQueryOptions

    return BigQueryOptions(
        settle_seconds=store.settle_seconds,
        write_deadline_seconds=store.write_deadline_seconds,
        query_timeout_seconds=store.query_timeout_seconds,
        read_cache_seconds=store.read_cache_seconds,
        max_bytes_billed=query.max_bytes_billed,
        dedupe_window_seconds=query.dedupe_window_seconds,
        write_endpoint=store.bigquery_write_endpoint or None,
    )


def spanner_database(url: str, *, var: str = "RECORDLINE_SERVING") -> SpannerDatabase:
    """The database a `spanner://projects/P/instances/I/databases/D` URL names (the
    value of `var`, which a SettingsError names if it is none)."""
    from app.store.spanner.serving import SpannerDatabase

    match = re.fullmatch(SPANNER_URL, url)
    if match is None:
        raise invalid(var, url, "spanner://projects/P/instances/I/databases/D")
    return SpannerDatabase(match["project"], match["instance"], match["name"])


class Operated(NamedTuple):
    """The stores `recordline export`'s commands work on (`app.commands.export`), as
    the settings name them (`operated`): each made when a command needs it, not started."""

    # The serving tier; None if there is none (RECORDLINE_SERVING is not set).
    serving: Callable[[], SpannerServing] | None
    analytics: Callable[[], BigQueryStore]
    # Queries of the BigQuery project named, bounded for a command rather than a request.
    queries: Callable[[str], QueryRunner]
    dedupe_window_seconds: float


def operated(settings: Settings) -> Operated:
    """What `recordline export`'s commands work on, as the settings name it."""
    # Imported here: the clients take most of a second to import, which the
    # parser of every other command need not pay.
    from app.store.bigquery.queries import QueryRunner
    from app.store.tiered.verify import BIGQUERY_SECONDS

    store = settings.store

    def queries(project: str) -> QueryRunner:
        return QueryRunner(
            project,
            timeout=max(store.query_timeout_seconds, BIGQUERY_SECONDS),
            max_bytes_billed=settings.query.max_bytes_billed,
            endpoint=store.bigquery_query_endpoint or None,
        )

    return Operated(
        serving=(lambda: _serving(settings)) if store.serving else None,
        analytics=lambda: open_bigquery(settings),
        queries=queries,
        dedupe_window_seconds=settings.query.dedupe_window_seconds,
    )


def spanner_clients(settings: Settings) -> SpannerClients:
    """The process's Spanner clients, for every serving database it opens."""
    from app.store.spanner.calls import SpannerClients

    return SpannerClients(emulator_host=settings.store.spanner_emulator_host or None)


def _serving(settings: Settings, clients: SpannerClients | None = None) -> SpannerServing:
    from app.store.spanner.serving import SpannerServing

    store = settings.store
    return SpannerServing(
        spanner_database(store.serving),
        emulator_host=store.spanner_emulator_host or None,
        timeout_seconds=store.query_timeout_seconds,
        clients=clients,
    )


def _tiered(
    settings: Settings,
    analytics: BigQueryStore,
    observers: StoreObservers,
    spanner: SpannerClients | None,
) -> Store:
    from app.store.tiered.store import TieredStore

    return TieredStore(
        _serving(settings, spanner),
        analytics,
        write_deadline_seconds=settings.store.write_deadline_seconds,
        dedupe_window_seconds=settings.query.dedupe_window_seconds,
        # A fleet's services leave the export to the exporter service (open_export).
        export=settings.store.export_in_service,
        observers=observers,
    )


def open_export(
    name: str,
    settings: Settings,
    *,
    revisions: Revisions | None = None,
    observers: StoreObservers = NO_OBSERVERS,
    spanner: SpannerClients | None = None,
    balance: Balance | None = None,
    throttle: ExportThrottle | None = None,
) -> SystemExport:
    """System `name`'s export to BigQuery as the exporter service runs it (not started
    yet): from its serving tier (RECORDLINE_SERVING) into its BigQuery store
    (RECORDLINE_STORE), as `settings` name them; the observers as `open_store`'s; paced
    by `throttle`, if on-call slows it."""
    from app.store.tiered.fleet import SystemExport

    if not settings.store.serving or not settings.store.url.startswith("bigquery:"):
        raise UnknownStore(
            f"{name}: an export needs a serving tier (RECORDLINE_SERVING) and a BigQuery "
            f"store (RECORDLINE_STORE), not {settings.store.url!r}"
        )
    analytics = open_bigquery(settings, revisions=revisions, observers=observers)
    return SystemExport(
        name,
        _serving(settings, spanner),
        analytics,
        observer=observers.exports,
        loops=observers.loops,
        balance=balance,
        throttle=throttle,
    )
