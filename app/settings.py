"""Settings, one Struct per concern, read from the environment once.

Each field names its environment variable, says what it does and what it
accepts; the configuration table of docs/configuration.md is generated from these declarations
(`recordline config --reference`) and a test keeps the two equal. Every value
is checked here, when the settings are read, and a bad one is refused in one
way: a line naming the variable, the value and what it accepts. Nothing here
runs at import time: `Settings.load` is called by the command line or by
`create_app`.
"""

from __future__ import annotations

import difflib
import functools
import ipaddress
import json
import math
import os
import re
import typing
from collections.abc import Collection, Iterable, Mapping
from concurrent import futures
from concurrent.futures import Future
from typing import Annotated, Any, Final, Literal, NamedTuple, Self, cast

import msgspec
from msgspec import Meta

from app.errors import Misconfigured
from app.threads import DaemonThreads


def env(name: str, doc: str, *, accepts: str | None = None, secret: bool = False) -> Meta:
    """A setting's variable and meaning; `accepts` says in words what a pattern
    admits (other types say it themselves); a `secret` is never shown."""
    extra: dict[str, Any] = {"env": name}
    if accepts is not None:
        extra["accepts"] = accepts
    if secret:
        extra["secret"] = True
    return Meta(description=doc, extra=extra)


class SettingsError(Misconfigured):
    """A setting has a value that cannot be used; the message names the variable
    (`var`, when one value is the cause, and what it `accepts`)."""

    def __init__(self, message: str, *, var: str | None = None, accepts: str = "") -> None:
        super().__init__(message)
        self.var = var
        self.accepts = accepts


def invalid(
    var: str, value: str, accepts: str, *, secret: bool = False, why: str = ""
) -> SettingsError:
    """The one way a bad value is refused: the variable, the value, what is wrong with it
    where a part of it is (`why`), what it accepts."""
    shown = f"<{len(value)} characters, not shown>" if secret else repr(value)
    said = f" ({why})" if why else ""
    return SettingsError(
        f"{var}={shown} is not accepted{said}: expected {accepts}", var=var, accepts=accepts
    )


class Section(msgspec.Struct, kw_only=True, frozen=True):
    """A group of settings; every field carries its variable and its meaning."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Self:
        by_field = _settings_of(cls)
        values: dict[str, Any] = {}
        for field in msgspec.structs.fields(cls):
            setting = by_field.get(field.name)
            if setting is None or environ.get(setting.var, "") == "":
                continue
            value = environ[setting.var]
            # Each value on its own, against its field's type and constraints, so
            # a refusal names its setting without reading msgspec's message (which
            # is worded for people). strict=False converts "8080" to 8080 and
            # "true" to True.
            try:
                values[field.name] = msgspec.convert(value, field.type, strict=False)
            except msgspec.ValidationError:
                raise invalid(setting.var, value, setting.accepts, secret=setting.secret) from None
        return cls(**values)


class Setting(NamedTuple):
    """One setting: its field, its variable, what it means, what it accepts, whether secret."""

    field: str
    var: str
    doc: str
    accepts: str
    secret: bool


def _settings_of(cls: type[Section]) -> dict[str, Setting]:
    hints = typing.get_type_hints(cls, include_extras=True)
    out = {}
    for field in cls.__struct_fields__:
        if typing.get_origin(hints[field]) is not Annotated:
            continue  # no variable: set by the service itself (`ServerSettings.system_reads`)
        base, *metas = typing.get_args(hints[field])
        for meta in metas:
            if isinstance(meta, Meta) and meta.extra and "env" in meta.extra:
                out[field] = Setting(
                    field,
                    meta.extra["env"],
                    meta.description or "",
                    meta.extra.get("accepts") or _accepts(base, metas),
                    bool(meta.extra.get("secret")),
                )
    return out


def _accepts(base: Any, metas: list[Any]) -> str:
    """What a setting of this type and these constraints admits, in words."""
    if typing.get_origin(base) is Literal:
        *first, last = (f"`{choice}`" for choice in typing.get_args(base))
        return f"{', '.join(first)} or {last}" if first else last
    if base is bool:
        return "`true` or `false`"
    noun = {int: "an integer", float: "a number"}.get(base, "text")
    limits: dict[str, float] = {}
    for meta in metas:
        if isinstance(meta, Meta):
            for name in ("ge", "gt", "le", "lt"):
                if getattr(meta, name) is not None:
                    limits[name] = getattr(meta, name)
    if "ge" in limits and "le" in limits:
        return f"{noun} from {limits['ge']:g} to {limits['le']:g}"
    words = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}
    bounds = [f"{words[name]} {bound:g}" for name, bound in limits.items()]
    return f"{noun} {' and '.join(bounds)}" if bounds else noun


# The stores a RECORDLINE_STORE URL may name, and Spanner's resource names
# (their stores parse them with these very patterns).
BIGQUERY_URL = (
    r"bigquery://(?P<project>[a-z][a-z0-9.:-]{4,61}[a-z0-9])/(?P<dataset>[A-Za-z0-9_]{1,1024})/?"
)
SPANNER_URL = (
    r"spanner://(?P<database>projects/(?P<project>[a-z][a-z0-9.:-]{4,61}[a-z0-9])"
    r"/instances/(?P<instance>[a-z][a-z0-9-]{0,62}[a-z0-9])"
    r"/databases/(?P<name>[a-z][a-z0-9_-]{0,28}[a-z0-9]))"
)
_STORE_URL = rf"^(memory:|duckdb:.+|{BIGQUERY_URL})$"
# host:port, the host a name, an IPv4 address or a bracketed IPv6 one.
_HOST_PORT = r"^(|(\[[0-9A-Fa-f:.]+\]|[^\s:/\[\]]+):[0-9]{1,5})$"
# A Pub/Sub topic's full name: a project's id (a domain-scoped one too), then the
# topic's (a letter, then 2 to 254 of Pub/Sub's characters, never `goog` first); in a
# cell, each system's with SYSTEM_TOPIC standing for its name (a letter first too).
SYSTEM_TOPIC: Final = "{system}"
_TOPIC = (
    r"^(|projects/[a-z][a-z0-9.:-]{4,61}/topics/(?!goog)(?:[A-Za-z][A-Za-z0-9._~%+-]{2,254}"
    r"|(?:[A-Za-z][A-Za-z0-9._~%+-]*)?\{system\}[A-Za-z0-9._~%+-]*))$"
)
_HTTP_URL = r"^https?://\S+$"
_EMAIL = r"[^\s,:@]+@[^\s,:@]+"
_EMAILS = rf"^\s*({_EMAIL}\s*(,\s*{_EMAIL}\s*)*)?,?\s*$"
_PRINCIPAL = rf"(domain:[^\s,:@/]+|{_EMAIL})"
_PRINCIPALS = rf"^\s*({_PRINCIPAL}\s*(,\s*{_PRINCIPAL}\s*)*)?,?\s*$"
# The shared push secret travels in a URL anyone may probe; 16 characters of a
# random string are beyond guessing at any request rate.
MIN_PUSH_TOKEN_LENGTH = 16
# Page tokens are signed with this key: the published default, or a short key,
# would let anyone sign a cursor. Beyond loopback, a key of 16 or more characters.
DEFAULT_PAGE_TOKEN_SECRET = "recordline-page-token"  # noqa: S105 - refused beyond loopback
MIN_PAGE_TOKEN_SECRET_LENGTH = 16
# The server's bounds on each connection (app.http.limits) and its stop's time: the
# defaults of `ServerSettings` fields that no variable sets (each says why there); a
# test that needs a real process with a shorter one builds its `ServerSettings`
# (tests/tuned.py).
HEADER_TIMEOUT_SECONDS: Final = 10.0
KEEP_ALIVE_SECONDS: Final = 75.0
BODY_TIMEOUT_SECONDS: Final = 30.0
SEND_TIMEOUT_SECONDS: Final = 30.0
MAX_HEADER_BYTES: Final = 256 * 1024
SHUTDOWN_GRACE_SECONDS: Final = 7.0
# Share of the connections, and of the memory budget, kept for pushes: reads, waiting
# pages, streams and replays in flight at once are at most the rest (800 of 1,000), and
# hold at most the rest of the budget. A constant, not a setting: the two bounds it
# divides (RECORDLINE_MAX_CONNECTIONS, RECORDLINE_MEMORY_BUDGET_BYTES) are the ones an
# instance's size calls for, and a fifth for pushes holds at any size.
PUSH_RESERVE: Final = 0.2
PRINCIPALS_ACCEPTED = (
    "comma-separated e-mails (`ada@example.com`, `etl@P.iam.gserviceaccount.com`: no "
    "`user:` or `serviceAccount:` prefix) and `domain:example.com` entries; a token names "
    "no groups, so `group:` cannot be checked"
)


class ServerSettings(Section, frozen=True):
    host: Annotated[
        str,
        Meta(pattern=r"^[^\s/]+$"),
        env("RECORDLINE_HOST", "Address to bind", accepts="a host name or an IP address"),
    ] = "127.0.0.1"
    port: Annotated[
        int, Meta(ge=0, le=65535), env("PORT", "Port to serve on (Cloud Run sets it)")
    ] = 8080
    # On SIGTERM, the time within which the process exits: in-flight pushes are answered
    # 2 s before it ends, whatever the store does. A constant, not a setting: Cloud Run kills
    # at 10 s, whatever the deployment.
    shutdown_grace_seconds: Annotated[float, Meta(gt=0)] = SHUTDOWN_GRACE_SECONDS
    max_body_bytes: Annotated[
        int,
        Meta(gt=0),
        env(
            "RECORDLINE_MAX_BODY_BYTES",
            "Largest push body accepted; a 10 MB Pub/Sub message is ~13.4 MB once base64-wrapped",
        ),
    ] = 14 * 1024 * 1024
    # Largest request line and headers together, and largest trailers and framing of a
    # chunked body; more is a 431 and a closed connection. A constant, not a setting: it is
    # what Pub/Sub sends at most (an unwrapped push with 100 attributes of its largest sends
    # ~130 KB), with room.
    max_header_bytes: Annotated[int, Meta(ge=16 * 1024, le=16 * 1024 * 1024)] = MAX_HEADER_BYTES
    header_timeout_seconds: Annotated[float, Meta(gt=0, le=300)] = HEADER_TIMEOUT_SECONDS
    # How long a request's body (and a chunked body's trailers) may take to arrive, from
    # the end of its headers; then it is answered 408 and closed. A constant, not a setting:
    # Pub/Sub sends from Google's network, and the largest push (13.4 MB) within 30 s needs
    # 0.45 MB/s.
    body_timeout_seconds: Annotated[float, Meta(gt=0, le=600)] = BODY_TIMEOUT_SECONDS
    # How long an answer may wait for its client to take any of it (a stream: its next
    # event); then the connection is closed and what was not sent is dropped. A constant,
    # not a setting: a client that reads takes some of its answer within seconds, and what
    # one that does not holds is bounded by RECORDLINE_MEMORY_BUDGET_BYTES meanwhile.
    send_timeout_seconds: Annotated[float, Meta(gt=0, le=600)] = SEND_TIMEOUT_SECONDS
    keep_alive_seconds: Annotated[float, Meta(gt=0, le=3600)] = KEEP_ALIVE_SECONDS
    max_connections: Annotated[
        int,
        Meta(ge=1),
        env(
            "RECORDLINE_MAX_CONNECTIONS",
            "Most connections one process keeps open: one more closes the one that has held "
            "no request longest (idle, or its head still arriving), and a request that finds "
            "every one busy is answered 503. Cloud Run's own concurrency is at most 1,000 per "
            "instance",
        ),
    ] = 1000
    memory_budget_bytes: Annotated[
        int,
        # Room for the largest push (four times 14 MiB) beside what reads need for the largest
        # row (twice 13.4 MiB) or a stream's chunk.
        Meta(ge=128 * 1024 * 1024),
        env(
            "RECORDLINE_MEMORY_BUDGET_BYTES",
            "Most bytes the process holds for requests and answers in flight at once, "
            "whatever the connections: heads and bodies being read and decoded, rows read "
            "and what is made of them until sent. Past it a push is answered 503 at once and "
            "a read after waiting a second, `too-much-in-flight`; reads leave a fifth "
            "of it (and at least the largest push) to pushes. Sized "
            "for a 1 GiB instance: the process's bound is this and about 600 MiB more at the "
            "defaults (docs/security.md, What the process holds)",
        ),
    ] = 256 * 1024 * 1024
    log_format: Annotated[
        Literal["auto", "json", "text"],
        env(
            "RECORDLINE_LOG_FORMAT", "`json` (Cloud Logging), `text`, or `auto`: text on a terminal"
        ),
    ] = "auto"
    log_level: Annotated[
        str,
        Meta(pattern=r"(?i)^(debug|info|warning|error|critical)$"),
        env(
            "RECORDLINE_LOG_LEVEL",
            "Logging level",
            accepts="`DEBUG`, `INFO`, `WARNING`, `ERROR` or `CRITICAL` (any case)",
        ),
    ] = "INFO"

    # A system's reads in flight in a cell (its share: `SystemShare`); 0 elsewhere.
    system_reads: int = 0

    @property
    def max_reads(self) -> int:
        """Reads in flight at once: a system's share in a cell, else what
        PUSH_RESERVE leaves (at least one)."""
        if self.system_reads:
            return self.system_reads
        return max(1, self.max_connections - round(self.max_connections * PUSH_RESERVE))


# BigQuery only: rows younger than this are not served yet, so a page never races a
# commit still in flight on another instance (docs/reading.md). A constant, not a
# setting: it is what keeps a follower's exactly-once promise, and nothing about a
# deployment makes a shorter one safe. (Tests on BigQuery's fakes build a
# `StoreSettings` without it, to read at once what they pushed.)
SETTLE_SECONDS: Final = 15.0


class StoreSettings(Section, frozen=True):
    url: Annotated[
        str,
        Meta(pattern=_STORE_URL),
        env(
            "RECORDLINE_STORE",
            "`duckdb:FILE` (relative), `duckdb:///abs/FILE`, `memory:` (throwaway) or "
            "`bigquery://PROJECT/DATASET`",
            accepts="`duckdb:FILE`, `duckdb:///abs/FILE`, `memory:` or "
            "`bigquery://PROJECT/DATASET` (a project id, then a dataset of letters, digits "
            "and `_`)",
        ),
    ] = "duckdb:recordline.duckdb"
    write_deadline_seconds: Annotated[
        float,
        Meta(gt=0),
        env(
            "RECORDLINE_WRITE_DEADLINE_SECONDS",
            "A push waits this long for its row to be stored, then gets 503; keep it below "
            "the subscription's acknowledgement deadline",
        ),
    ] = 8.0
    query_timeout_seconds: Annotated[
        float, Meta(gt=0), env("RECORDLINE_QUERY_TIMEOUT_SECONDS", "Longest a read may run")
    ] = 10.0
    bigquery_write_endpoint: Annotated[
        str,
        Meta(pattern=_HOST_PORT),
        env(
            "RECORDLINE_BIGQUERY_WRITE_ENDPOINT",
            "`host:port` of an insecure Storage Write API endpoint (a fake or emulator)",
            accepts="`host:port`",
        ),
    ] = ""
    bigquery_query_endpoint: Annotated[
        str,
        Meta(pattern=r"^(|https?://\S+)$"),
        env(
            "BIGQUERY_EMULATOR_HOST",
            "`http://host:port` of a BigQuery `jobs.query` endpoint (a fake or emulator), "
            "queried with anonymous credentials",
            accepts="an `http://` or `https://` URL",
        ),
    ] = ""
    serving: Annotated[
        str,
        Meta(pattern=rf"^(|{SPANNER_URL})$"),
        env(
            "RECORDLINE_SERVING",
            "`spanner://projects/P/instances/I/databases/D`: a serving tier in front of "
            "the BigQuery store: pushes are stored in Spanner, recent rows read from it, "
            "and an exporter copies every row to BigQuery once (see docs/stores.md, Serving tier); "
            "empty: BigQuery stores and serves every row",
            accepts="`spanner://projects/P/instances/I/databases/D` (Spanner's own names), "
            "or nothing",
        ),
    ] = ""
    export_in_service: Annotated[
        bool,
        env(
            "RECORDLINE_EXPORT_IN_SERVICE",
            "With RECORDLINE_SERVING: `recordline serve` runs the export to BigQuery itself, "
            "for a single process (`recordline dev --serving`). A fleet leaves it off: the "
            "exporter service (`recordline exporter`) exports every system, and ingest "
            "scales with its own traffic",
        ),
    ] = False
    spanner_emulator_host: Annotated[
        str,
        Meta(pattern=_HOST_PORT),
        env(
            "SPANNER_EMULATOR_HOST",
            "`host:port` of a Spanner emulator, used with anonymous credentials",
            accepts="`host:port`",
        ),
    ] = ""
    read_cache_seconds: Annotated[
        float,
        Meta(ge=0),
        env("RECORDLINE_READ_CACHE_SECONDS", "TTL of the BigQuery read cache; 0 turns it off"),
    ] = 0.0
    settle_seconds: Annotated[float, Meta(ge=0)] = SETTLE_SECONDS
    retention_days: Annotated[
        int,
        Meta(ge=0),
        env(
            "RECORDLINE_RETENTION_DAYS",
            "Days rows are kept (0 keeps them forever): DuckDB deletes older rows hourly, "
            "BigQuery expires partitions (Terraform), and reads from before it answer 410",
        ),
    ] = 0


# Rows waiting to be stored before pushes get 503. A constant, not a setting: what an
# instance can hold is bounded by bytes (RECORDLINE_QUEUE_MAX_BYTES, sized with its
# memory); this bounds the count of rows, for many small ones. (Tests build a
# `BatchSettings` with a queue of a few rows.)
QUEUE_MAX_ROWS: Final = 20_000


class BatchSettings(Section, frozen=True):
    queue_rows: Annotated[int, Meta(gt=0)] = QUEUE_MAX_ROWS
    queue_bytes: Annotated[
        int,
        Meta(gt=0),
        env("RECORDLINE_QUEUE_MAX_BYTES", "Bytes waiting to be stored before pushes get 503"),
    ] = 256 * 1024 * 1024


# A field path: names joined by dots, e.g. `order_id` or `meta.created_at`.
_FIELD_PATH = r"^[^.\s]+(\.[^.\s]+)*$"
_FIELD_PATH_ACCEPTED = "field names joined by dots, e.g. `order_id` or `meta.created_at`"


class PayloadSettings(Section, frozen=True):
    """Where a payload keeps its record id and event time: the publisher's own message shape.

    With both defaults and no topic schema, a payload is the `{"id", "timestamp",
    "data"}` contract and `data` is stored as sent; otherwise the whole decoded
    payload is stored as `data`.
    """

    id_field: Annotated[
        str,
        Meta(pattern=_FIELD_PATH),
        env(
            "RECORDLINE_ID_FIELD",
            "Field path of the record id in the payload, e.g. `order_id` or `meta.key` "
            "(text, or an integer stored as its digits)",
            accepts=_FIELD_PATH_ACCEPTED,
        ),
    ] = "id"
    time_field: Annotated[
        str,
        Meta(pattern=_FIELD_PATH),
        env(
            "RECORDLINE_TIME_FIELD",
            "Field path of the event time, e.g. `created_at` or `meta.created_at`: RFC 3339 "
            "text, Avro `timestamp-millis`/`-micros` or a protobuf `Timestamp`; may be absent",
            accepts=_FIELD_PATH_ACCEPTED,
        ),
    ] = "timestamp"


class SchemaSettings(Section, frozen=True):
    """The Pub/Sub Schema API, asked for the topic schema revision a message names."""

    emulator_host: Annotated[
        str,
        Meta(pattern=_HOST_PORT),
        env(
            "PUBSUB_EMULATOR_HOST",
            "`host:port` of a Pub/Sub emulator to fetch topic schemas from and publish "
            "operators' test messages to (plaintext, no credentials) instead of Google's",
            accepts="`host:port`",
        ),
    ] = ""
    topic: Annotated[
        str,
        Meta(pattern=_TOPIC),
        env(
            "RECORDLINE_TOPIC",
            "The topic the system's push subscription reads: where an operator publishes a "
            "test message (`POST /v1/publish`, the console); in a cell it names each system's "
            "own, `{system}` in it standing for the system's name. Empty: nowhere (a 404 "
            "says so)",
            accepts="`projects/PROJECT/topics/TOPIC` (`{system}` in TOPIC), or empty",
        ),
    ] = ""
    json_topic_schema: Annotated[
        str,
        # A JSON object here; that it is an Avro record schema is checked where the
        # typed columns are set up (`create_app`), which refuses it naming this variable.
        Meta(pattern=r"(?s)^\s*\{.*\}\s*$"),
        env(
            "RECORDLINE_JSON_TOPIC_SCHEMA",
            "For a topic with no schema (JSON): an Avro record schema, its JSON text, whose "
            "fields become typed columns (`fields`) of the records that name no revision. "
            "Payloads are validated as without it; a value that does not fit is a projection "
            "error, and stays in `data`",
            accepts="the JSON text of an Avro schema of type record, or empty",
        ),
    ] = ""


# How long a stream's long-poll waits for rows before its 204. A constant, not a
# setting: it is under the clients' read timeout (30 s in the Durable Streams Python
# client), which no deployment chooses; a shared cache in front is set a few seconds
# longer (docs/deploying.md). (Tests build a `QuerySettings` with a shorter one.)
LONG_POLL_SECONDS: Final = 20.0


# Most bytes one export sends (`QuerySettings.export_max_bytes`).
EXPORT_MAX_BYTES: Final = 256 * 1024 * 1024


class QuerySettings(Section, frozen=True):
    page_token_secret: Annotated[
        str,
        env(
            "RECORDLINE_PAGE_TOKEN_SECRET",
            "Key that signs page tokens so a tampered token is refused; set the same value "
            "on every instance",
            secret=True,
        ),
    ] = DEFAULT_PAGE_TOKEN_SECRET
    dedupe_window_seconds: Annotated[
        float,
        Meta(gt=0),
        env(
            "RECORDLINE_DEDUPE_WINDOW_SECONDS",
            "BigQuery only: how far back a read looks for an earlier copy of a message; "
            "cover the subscription's retention",
        ),
    ] = 7 * 24 * 3600.0
    max_bytes_billed: Annotated[
        int,
        Meta(ge=10 * 1024 * 1024),
        env(
            "RECORDLINE_QUERY_MAX_BYTES_BILLED",
            "BigQuery only: most bytes one query may bill (2 GiB is ~$0.01 on demand); a read "
            "that would bill more is refused with 503 instead of run",
        ),
    ] = 2 * 1024**3
    stream_seconds: Annotated[
        float,
        Meta(gt=0, le=3600),
        env(
            "RECORDLINE_STREAM_SECONDS",
            "How long a stream of pages (server-sent events) stays open before it ends with "
            "the token to resume from, so load balancers spread followers again",
        ),
    ] = 300.0
    max_followers: Annotated[
        int,
        Meta(ge=1),
        env(
            "RECORDLINE_MAX_FOLLOWERS",
            "Most waiting pages (`wait=`) and streams one instance holds at once; one more is "
            "answered 503 with Retry-After",
        ),
    ] = 1000
    # How long a stream's long-poll (`/v1/streams/...?live=long-poll`) waits for rows
    # before it answers 204 (LONG_POLL_SECONDS).
    long_poll_seconds: Annotated[float, Meta(gt=0, le=60)] = LONG_POLL_SECONDS
    shared_cache: Annotated[
        bool,
        env(
            "RECORDLINE_SHARED_CACHE",
            "Let shared caches (a CDN) keep full pages and stream chunks, and collapse "
            "stream long-polls, for reads sent without credentials (one with a token is "
            "always `private`); without it only the client's own cache may (`private`). "
            "Refused with RECORDLINE_MASK_FIELDS or RECORDLINE_MASK_ATTRIBUTES: one answer "
            "per URL would serve an operator's unmasked pages to readers",
        ),
    ] = False
    producer_grace_seconds: Annotated[
        float,
        Meta(gt=0, le=7 * 24 * 3600),
        env(
            "RECORDLINE_PRODUCER_GRACE_SECONDS",
            "How long a gap in a producer's sequence may stay open before its messages are "
            "missing (/v1/producers, the recordline.producer.missing metric, recordline "
            "audit): longer than a message may take to arrive out of order, well inside "
            "the subscription's retention",
        ),
    ] = 1800.0
    mask_fields: Annotated[
        str,
        env(
            "RECORDLINE_MASK_FIELDS",
            "Comma-separated payload members masked for readers who are not operators: a "
            "name masks that member wherever an object in a record's `data` has one (any "
            "depth), a path (`customer.email`) that member from the root; each withheld, or "
            "after a `:` its mode: `hash` (a keyed hash, the same for the same value), "
            "`firstN` or `lastN` (its first or last N characters): in every read, stream, "
            "export and the console",
            accepts="comma-separated names or paths, each with an optional `:MODE`, such as "
            "`email,customer.card:last4,customer.id:hash`",
        ),
    ] = ""
    mask_attributes: Annotated[
        str,
        env(
            "RECORDLINE_MASK_ATTRIBUTES",
            "Comma-separated Pub/Sub attribute names masked for readers who are not operators, "
            "each with an optional `:MODE` as RECORDLINE_MASK_FIELDS",
            accepts="comma-separated names, each with an optional `:MODE`, such as "
            "`client-ip:hash`",
        ),
    ] = ""
    # Most bytes one export (`/v1/export/...`) sends; past it the export ends with a note
    # and the token to go on from. A constant, not a setting, as its other bounds are
    # (`max_rows`, four minutes): an export goes on from its token, whatever the size.
    export_max_bytes: Annotated[int, Meta(ge=1024 * 1024, le=16 * 1024**3)] = EXPORT_MAX_BYTES


def names(value: str) -> list[str]:
    """`a, b,c` → ["a", "b", "c"]: a setting's comma-separated names, as written."""
    return [name.strip() for name in value.split(",") if name.strip()]


# RECORDLINE_PRODUCER_KEYS: `PRODUCER=KEY`, comma-separated (app/ingest/signing.py).
_PRODUCER_KEY_ENTRY = r"[^=,\s]+=[A-Za-z0-9+/_-]+={0,2}"
_PRODUCER_KEYS = rf"^(|{_PRODUCER_KEY_ENTRY}(,{_PRODUCER_KEY_ENTRY})*)$"


# RECORDLINE_READ_PASS_KEYS: `NAME:KEY`, comma-separated (app/auth/passes.py checks each).
_CDN_KEY_ENTRY = r"[a-z][-a-z0-9]{0,62}:[A-Za-z0-9_-]+={0,2}"
_CDN_KEYS = rf"^(|{_CDN_KEY_ENTRY}(,{_CDN_KEY_ENTRY})*)$"


class AuthSettings(Section, frozen=True):
    push_audience: Annotated[
        str,
        env(
            "RECORDLINE_PUSH_AUDIENCE",
            "Audience of the push subscription's OIDC token; with "
            "RECORDLINE_PUSH_SERVICE_ACCOUNTS, only Google-signed pushes are accepted",
        ),
    ] = ""
    push_service_accounts: Annotated[
        str,
        Meta(pattern=_EMAILS),
        env(
            "RECORDLINE_PUSH_SERVICE_ACCOUNTS",
            "Comma-separated e-mails of the service accounts a push token may belong to",
            accepts="comma-separated e-mails",
        ),
    ] = ""
    oidc_certs_url: Annotated[
        str,
        Meta(pattern=_HTTP_URL),
        env(
            "RECORDLINE_OIDC_CERTS_URL",
            "Where Google's token-signing keys are served: "
            "`https://www.googleapis.com/oauth2/v3/certs` (JWKS) or "
            "`https://www.googleapis.com/oauth2/v1/certs` (X.509 certificates)",
            accepts="an `http://` or `https://` URL",
        ),
    ] = "https://www.googleapis.com/oauth2/v3/certs"
    producer_keys: Annotated[
        str,
        Meta(pattern=_PRODUCER_KEYS),
        env(
            "RECORDLINE_PRODUCER_KEYS",
            "Producers whose sequences must be signed, and their keys: comma-separated "
            "`PRODUCER=KEY`, PRODUCER an id (recordline-producer) or a prefix ending in `*`, "
            "KEY at least 16 random bytes in base64. A message of such a producer unsigned or "
            "wrongly signed (recordline-signature) is kept as a rejection saying so; "
            "`recordline publish` signs with the same keys",
            accepts="comma-separated `PRODUCER=BASE64KEY`",
            secret=True,
        ),
    ] = ""
    push_token: Annotated[
        str,
        Meta(pattern=rf"^(|.{{{MIN_PUSH_TOKEN_LENGTH},}})$"),
        env(
            "RECORDLINE_PUSH_TOKEN",
            "Shared secret a push must carry as `?token=` in its URL, for the Pub/Sub "
            "emulator, which sends no OIDC token",
            accepts=f"at least {MIN_PUSH_TOKEN_LENGTH} random characters",
            secret=True,
        ),
    ] = ""
    read_audience: Annotated[
        str,
        env(
            "RECORDLINE_READ_AUDIENCE",
            "Audience of the Google ID tokens `/v1/*` requires (comma-separated: any of them); "
            "with RECORDLINE_READ_PRINCIPALS reads need a token",
        ),
    ] = ""
    read_principals: Annotated[
        str,
        Meta(pattern=_PRINCIPALS),
        env(
            "RECORDLINE_READ_PRINCIPALS",
            "Comma-separated e-mails and `domain:example.com` entries that may read",
            accepts=PRINCIPALS_ACCEPTED,
        ),
    ] = ""
    operator_principals: Annotated[
        str,
        Meta(pattern=_PRINCIPALS),
        env(
            "RECORDLINE_OPERATOR_PRINCIPALS",
            "Comma-separated e-mails and `domain:example.com` entries that may replay "
            "(`POST /v1/replay`) and read; tokens for RECORDLINE_READ_AUDIENCE",
            accepts=PRINCIPALS_ACCEPTED,
        ),
    ] = ""
    export_principals: Annotated[
        str,
        Meta(pattern=_PRINCIPALS),
        env(
            "RECORDLINE_EXPORT_PRINCIPALS",
            "Comma-separated e-mails and `domain:example.com` entries that may export "
            "(`/v1/export/...`) and read; tokens for RECORDLINE_READ_AUDIENCE. Empty: every "
            "reader may export. Set, only they and the operators may: a reader not named is "
            "refused 403 `export-forbidden`, as is a read pass, which names no one",
            accepts=PRINCIPALS_ACCEPTED,
        ),
    ] = ""
    trust_cloud_run_iam: Annotated[
        bool,
        env(
            "RECORDLINE_TRUST_CLOUD_RUN_IAM",
            "Accept tokens whose signature Cloud Run replaced after verifying it, checking "
            "their claims only; set it only where every request passes Cloud Run's invoker "
            "check",
        ),
    ] = False
    public_reads: Annotated[
        bool,
        env(
            "RECORDLINE_PUBLIC_READS",
            "Serve `/v1` reads without a token on a service bound beyond loopback; without "
            "it (or RECORDLINE_READ_AUDIENCE) such a service refuses to start",
        ),
    ] = False
    read_pass_keys: Annotated[
        str,
        Meta(pattern=_CDN_KEYS),
        env(
            "RECORDLINE_READ_PASS_KEYS",
            "Keys of read passes (Cloud CDN signed cookies, `POST /v1/read-pass`): "
            "comma-separated `NAME:KEY`, NAME the key's name on the CDN's backend, KEY its "
            "16 random bytes in base64url. The first signs, every one verifies (rotation). "
            "Needs RECORDLINE_READ_AUDIENCE and RECORDLINE_READ_PASS_URL, and "
            "RECORDLINE_TRUST_CLOUD_RUN_IAM false: a pass reaches the service without a token",
            accepts="comma-separated `NAME:BASE64URLKEY`",
            secret=True,
        ),
    ] = ""
    read_pass_url: Annotated[
        str,
        Meta(pattern=r"^(|https?://[^/?#\s@]+/?)$"),
        env(
            "RECORDLINE_READ_PASS_URL",
            "The origin clients read through the CDN at, such as "
            "`https://records.example.com`: a pass opens `{url}/v1/` (a cell's system: "
            "`{url}/systems/{system}/v1/`); `http://` on a loopback address only",
            accepts="an `http://` or `https://` origin, without a path",
        ),
    ] = ""
    read_pass_seconds: Annotated[
        int,
        Meta(ge=60, le=3600),
        env(
            "RECORDLINE_READ_PASS_SECONDS",
            "How long a read pass lasts; a pass cannot be revoked, only outlived (or its "
            "key removed from RECORDLINE_READ_PASS_KEYS and the CDN)",
        ),
    ] = 600


# A system's name, as RECORDLINE_SYSTEM accepts it.
_SYSTEM = r"^[a-z][a-z0-9-]{0,62}$"
SYSTEM_ACCEPTED: Final = "up to 63 lower-case letters, digits and `-`, a letter first"
_SYSTEM_ACCEPTED = SYSTEM_ACCEPTED


def is_system_name(text: str) -> bool:
    """Whether `text` is a system's name (RECORDLINE_SYSTEM, a cell's systems)."""
    return re.fullmatch(_SYSTEM, text) is not None


# What a cell's entry for a system (RECORDLINE_SYSTEMS) holds, in words.
def _once(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object of RECORDLINE_SYSTEMS, refused if it names a key twice."""
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise SettingsError(
                f"RECORDLINE_SYSTEMS: {key!r} is given twice in one object: one would be dropped",
                var="RECORDLINE_SYSTEMS",
            )
        found[key] = value
    return found


def _store_place(url: str) -> str | None:
    """Where a store or serving URL keeps its rows, the same for every spelling of one
    place (a DuckDB file's real path, symlinks and `//` resolved; a BigQuery dataset; a
    Spanner database); None for one of its own (`memory:`, an in-memory DuckDB)."""
    if match := re.fullmatch(BIGQUERY_URL, url):
        return f"BigQuery dataset {match['project']}.{match['dataset']}"
    if match := re.fullmatch(SPANNER_URL, url):
        return f"Spanner database {match['database']}"
    scheme, _, rest = url.partition(":")
    if scheme != "duckdb":
        return None
    path = rest.removeprefix("//") or "recordline.duckdb"  # as the store opens it
    if path.startswith(":memory:"):
        return None
    return f"DuckDB file {os.path.realpath(path)}"


_CELL_SYSTEMS_ACCEPTED = (
    "a JSON object of at most RECORDLINE_CELL_MAX_SYSTEMS systems, each name (as "
    'RECORDLINE_SYSTEM) to {"store": RECORDLINE_STORE, and optionally "serving", '
    '"json_topic_schema", "push_audience", "push_service_accounts", "read_principals", '
    '"operator_principals", "export_principals", "id_field", "time_field" (each as the '
    'variable of that name), "rate" (declared pushes a second), "queue_bytes", '
    '"max_followers", "max_reads"}, "json_topic_schema", "read_principals", '
    '"operator_principals" and "export_principals" each either its '
    "value or `@/absolute/path` naming a file holding it; or `@/absolute/path.json`, a "
    "file holding the object"
)

# An entry's settings whose values may be long (a schema, a list of principals): each
# may name a file holding its value (`@/absolute/path`), so that a cell's file holds
# its systems, not their bulk (a mounted secret holds 64 KiB).
REFERABLE: Final = (
    "json_topic_schema",
    "read_principals",
    "operator_principals",
    "export_principals",
)


# What one version of a Secret Manager secret holds: the systems' file and each value's
# file are one (docs/cells.md#size). A larger file is none of them, and is not read past
# this (a path to /dev/zero would otherwise be read until memory ran out).
SECRET_MOST_BYTES: Final = 65536
# A read of a mounted secret is a call to Secret Manager; one that has not returned by
# then (or a FIFO no one writes) is a file that cannot be read. Its thread, a daemon, is
# left to it, and no read of its path starts while it is held: a file that hangs costs a
# start this once, and holds no stop.
FILE_READ_DEADLINE_SECONDS: Final = 2.0
# Files read at once, at most: a mount that does not answer holds these threads, no more.
FILE_READERS = DaemonThreads(8, prefix="settings-file", idle_seconds=FILE_READ_DEADLINE_SECONDS)
# Each path whose read outlived its deadline, while it is still being read.
_held_reads: dict[str, Future[bytes]] = {}


def read_secret(path: str) -> bytes:
    """The first SECRET_MOST_BYTES and one of the file at `path`: enough to tell one too
    large, which is read no further."""
    with open(path, "rb") as file:
        return file.read(SECRET_MOST_BYTES + 1)


def _files_bytes(paths: Collection[str]) -> dict[str, bytes | OSError | TimeoutError]:
    """What `read_secret` reads of each file at `paths`, or why it could not: read at
    once (on `FILE_READERS`), within one FILE_READ_DEADLINE_SECONDS for them all (TimeoutError
    past it). A mount that does not answer costs a start one deadline, however many of
    its files the systems name."""
    reads: dict[str, Future[bytes]] = {}
    found: dict[str, bytes | OSError | TimeoutError] = {}
    for path in dict.fromkeys(paths):
        held = _held_reads.get(path)
        if held is not None and not held.done():
            found[path] = TimeoutError()
        else:
            _held_reads.pop(path, None)
            reads[path] = FILE_READERS.submit(read_secret, path)
    futures.wait(reads.values(), timeout=FILE_READ_DEADLINE_SECONDS)
    for path, read in reads.items():
        if not read.done():
            if not read.cancel():  # under way: held until it returns
                _held_reads[path] = read
            found[path] = TimeoutError()
            continue
        failed = read.exception()
        found[path] = read.result() if failed is None else cast("OSError", failed)
    return found


def _file_text(
    said: str, value: str, read: Mapping[str, bytes | OSError | TimeoutError] | None = None
) -> str:
    """The text of the file `value` names (`@/absolute/path`), as `read` found it (read
    now where it has none of it); SettingsError of RECORDLINE_SYSTEMS, `said` saying
    whose value it is, for one that cannot be read, holds more than a secret, or is not
    read within its deadline."""
    path = value[1:]
    if not os.path.isabs(path):
        raise SettingsError(
            f"RECORDLINE_SYSTEMS: {said}{value!r} is not accepted: expected `@` and an "
            "absolute path",
            var="RECORDLINE_SYSTEMS",
            accepts=_CELL_SYSTEMS_ACCEPTED,
        )
    found = read.get(path) if read is not None else None
    if found is None:
        found = _files_bytes([path])[path]
    try:
        if isinstance(found, BaseException):
            raise found
        content = found
    except TimeoutError:
        raise SettingsError(
            f"RECORDLINE_SYSTEMS: {said}{path} was not read within "
            f"{FILE_READ_DEADLINE_SECONDS:g} s (a mounted secret Secret Manager did not "
            "answer for, or a FIFO no one writes)",
            var="RECORDLINE_SYSTEMS",
        ) from None
    except OSError as exc:
        raise SettingsError(
            f"RECORDLINE_SYSTEMS: {said}{path} cannot be read ({exc.strerror or exc})",
            var="RECORDLINE_SYSTEMS",
        ) from None
    if len(content) > SECRET_MOST_BYTES:
        raise SettingsError(
            f"RECORDLINE_SYSTEMS: {said}{path} is over {SECRET_MOST_BYTES} bytes, more than "
            "a secret holds (it is read no further)",
            var="RECORDLINE_SYSTEMS",
        )
    try:
        return content.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SettingsError(
            f"RECORDLINE_SYSTEMS: {said}{path} cannot be read ({exc})",
            var="RECORDLINE_SYSTEMS",
        ) from None


def _referenced(
    name: str, entry: object, read: Mapping[str, bytes | OSError | TimeoutError]
) -> tuple[object, dict[str, str]]:
    """`entry` with each value of `REFERABLE` that names a file replaced by the file's
    text (its surrounding white space dropped) as `read` found it, and the files read, by
    field; a SettingsError naming the system and the field for a file that cannot be
    read."""
    if not isinstance(entry, dict):
        return entry, {}
    resolved = dict(entry)
    files = {}
    for field in REFERABLE:
        value = entry.get(field)
        if isinstance(value, str) and value.strip().startswith("@"):
            files[field] = value.strip()[1:]
            said = f"system {name!r}: {field!r}: "
            resolved[field] = _file_text(said, value.strip(), read).strip()
    return resolved, files


def _paths(entries: Iterable[object]) -> list[str]:
    """The absolute path of each file `entries`' values of `REFERABLE` name."""
    return [
        value.strip()[1:]
        for entry in entries
        if isinstance(entry, dict)
        for field in REFERABLE
        if isinstance(value := entry.get(field), str)
        and value.strip().startswith("@")
        and os.path.isabs(value.strip()[1:])
    ]


def _entry_error(entry: object, exc: msgspec.ValidationError) -> str:
    """What is wrong with a system's entry, by its field: a field no entry has, with the
    one it is closest to; one whose value is not accepted, by its name."""
    fields = sorted(f.name for f in msgspec.structs.fields(SystemEntry))
    if not isinstance(entry, dict):
        return f"expected an object of its settings ({', '.join(fields)})"
    unknown = sorted(set(entry) - set(fields))
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), fields, n=1, cutoff=0.6)
        hint = f": did you mean {close[0]!r}?" if close else f" (an entry has {', '.join(fields)})"
        return f"{unknown[0]!r} is not a system's setting{hint}"
    said = str(exc)
    where = said.rpartition(" - at `$.")[2].rstrip("`") if " - at `$." in said else ""
    what = said.partition(" - at `")[0]
    if where and "matching regex" in what:  # a pattern says little to a reader
        what = (
            f"not accepted: expected what RECORDLINE_{where.upper()} accepts "
            "(`recordline config --reference`)"
        )
    return f"{where!r}: {what}" if where else what


class SystemEntry(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """One system of a cell (RECORDLINE_SYSTEMS): the settings that are its own, each as
    the variable of the same name has it for a deployment of one system; what is not
    here is the cell's. (The configuration's own fields: a misspelt one is refused.)"""

    store: Annotated[str, Meta(pattern=_STORE_URL)]
    serving: Annotated[str, Meta(pattern=rf"^(|{SPANNER_URL})$")] = ""
    json_topic_schema: Annotated[str, Meta(pattern=r"(?s)^(\s*\{.*\}\s*)?$")] = ""
    push_audience: str = ""
    push_service_accounts: Annotated[str, Meta(pattern=_EMAILS)] = ""
    read_principals: Annotated[str, Meta(pattern=_PRINCIPALS)] = ""
    operator_principals: Annotated[str, Meta(pattern=_PRINCIPALS)] = ""
    export_principals: Annotated[str, Meta(pattern=_PRINCIPALS)] = ""
    # Where this system's payloads keep their record id and event time: each system's
    # publishers send messages of their own shape (RECORDLINE_ID_FIELD, _TIME_FIELD).
    id_field: Annotated[str, Meta(pattern=_FIELD_PATH)] = PayloadSettings().id_field
    time_field: Annotated[str, Meta(pattern=_FIELD_PATH)] = PayloadSettings().time_field
    # Declared pushes a second: the system's weight in the cell's queue (and the
    # cell's sizing and billing mode, which Terraform reads from it).
    rate: Annotated[float, Meta(gt=0)] = 10.0
    # Admission set for this system alone; 0: its share of the cell's bound
    # (`SystemShare`).
    queue_bytes: Annotated[int, Meta(ge=0)] = 0
    max_followers: Annotated[int, Meta(ge=0)] = 0
    max_reads: Annotated[int, Meta(ge=0)] = 0


# Of a cell's bounds, the least any system is given: one push of the largest body
# (RECORDLINE_MAX_BODY_BYTES) always fits in a system's queue (`queued_bytes`), and
# every system may hold a follower and a read.
MIN_SYSTEM_QUEUE_ROWS: Final = 100
MIN_SYSTEM_FOLLOWERS: Final = 1
# What a row counts in the queue besides its text and the message data it came from.
QUEUED_ROW_BYTES: Final = 256


def queued_bytes(data: int) -> int:
    """What the row of a message of `data` bytes counts in the queue while it waits to be
    stored (RECORDLINE_QUEUE_MAX_BYTES): the record's text and the message data it came
    from, each at most the data's length. A push's body holds its data at most (all of
    it unwrapped, three quarters of it as base 64), so `queued_bytes(body)` bounds it."""
    return 2 * data + QUEUED_ROW_BYTES


class SystemShare(NamedTuple):
    """What one system of a cell may hold at once: its queue (rows, bytes), its
    followers, and its reads in flight. Each is the entry's own if it sets one, else
    the system's share of the cell's bound: the queue by its declared `rate` among
    the cell's, followers and reads evenly (who reads is not who pushes)."""

    queue_rows: int
    queue_bytes: int
    max_followers: int
    max_reads: int


class CellSettings(Section, frozen=True, dict=True):
    """A cell: one ingest service (and one exporter pool) for many systems, each with
    its own store, identity and admission (docs/cells.md). Its systems' file and the
    files it names are read once, when first asked for (`entries`, `faults`)."""

    name: Annotated[
        str,
        Meta(pattern=rf"^(|{_SYSTEM[1:-1]})$"),
        env(
            "RECORDLINE_CELL",
            "The cell's name: set, the service is a cell serving each system of "
            "RECORDLINE_SYSTEMS under `/systems/{system}/` (docs/cells.md), and its "
            "process-wide metrics carry it as their namespace",
            accepts=_SYSTEM_ACCEPTED,
        ),
    ] = ""
    systems: Annotated[
        str,
        env(
            "RECORDLINE_SYSTEMS",
            "A cell's systems: a JSON object, each name to the settings that are its own "
            "(`store`, `serving`, `push_audience`, …), or `@/absolute/path.json` naming a "
            "file holding it (a secret mounted as a file: 64 KiB, where a variable holds "
            "32). The exporter pool reads it too",
            accepts=_CELL_SYSTEMS_ACCEPTED,
        ),
    ] = ""
    max_systems: Annotated[
        int,
        Meta(ge=1, le=1000),
        env(
            "RECORDLINE_CELL_MAX_SYSTEMS",
            "Most systems RECORDLINE_SYSTEMS may name: a cell is sized (and its bounds "
            "shared) for this many",
        ),
    ] = 100
    throttles: Annotated[
        str,
        Meta(pattern=r"^(|/.+)$"),
        env(
            "RECORDLINE_THROTTLES",
            "A file of the systems on-call has slowed (each name to its "
            '{"instance_pushes_per_second", "export_rows_per_second", "by", "reason"}: its '
            "pushes' pace, its export's, or both), read again every 10 s by every instance "
            "of the cell and of its exporter pool, so a throttle needs no deploy "
            "(docs/cells.md#throttles); Terraform mounts the `<cell>-throttles` secret there "
            "at its latest version. Unset: no system is throttled",
            accepts="an absolute path",
        ),
    ] = ""

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> CellSettings:
        settings = super().from_env(environ)
        # Refused here, naming the variable, or never; a system's own faults are its own.
        entries = settings.entries() or settings.faults()
        if entries and not settings.name:
            raise SettingsError(
                "RECORDLINE_SYSTEMS needs RECORDLINE_CELL: the name of the cell that "
                "serves (and exports) them",
                var="RECORDLINE_CELL",
            )
        if settings.name and not entries:
            raise SettingsError(
                f"RECORDLINE_CELL={settings.name!r} needs RECORDLINE_SYSTEMS: the systems "
                "the cell serves",
                var="RECORDLINE_SYSTEMS",
            )
        if settings.name:
            own = sorted(var for var in SYSTEMS_OWN if environ.get(var, ""))
            if own:
                raise SettingsError(
                    f"RECORDLINE_CELL is set, and {', '.join(own)} would be read by no "
                    "system: in a cell each system's are in its entry of RECORDLINE_SYSTEMS",
                    var=own[0],
                )
        return settings

    def text(self) -> str:
        """RECORDLINE_SYSTEMS's JSON: its value, or the file it names."""
        value = self.systems.strip()
        if not value.startswith("@"):
            return value
        if not os.path.isabs(value[1:]):
            raise invalid("RECORDLINE_SYSTEMS", value, "`@` and an absolute path")
        return _file_text("", value)

    def entries(self) -> dict[str, SystemEntry]:
        """Each system's entry, by name, in the order given, but those that cannot be
        used (`faults`); SettingsError for what makes the whole of RECORDLINE_SYSTEMS
        unusable (not JSON, a bad name, a name or field given twice, too many systems)."""
        return dict(self._systems[0])

    def faults(self) -> dict[str, SettingsError]:
        """Each system whose own entry cannot be used, and why: a field it misspells or
        gives a value it cannot take, a serving tier without a BigQuery store, or a push
        audience or a store another system takes as well (every system of the clash).
        Those systems alone do not serve (a typo in one entry must not stop the cell's
        hundred systems)."""
        return dict(self._systems[1])

    @functools.cached_property
    def _systems(self) -> tuple[dict[str, SystemEntry], dict[str, SettingsError]]:
        """The entries and the faults, from one read of the files: a start asks for them
        several times, and each would otherwise read every file again (and could find a
        file changed between two of them). A SettingsError is not kept: asked again, the
        files are read again."""
        text = self.text()
        if not text.strip():
            return {}, {}
        var = "RECORDLINE_SYSTEMS"
        try:
            raw = msgspec.json.decode(text)
        except msgspec.DecodeError as exc:
            raise invalid(var, self.systems, _CELL_SYSTEMS_ACCEPTED, why=str(exc)) from None
        if not isinstance(raw, dict) or not raw:
            raise invalid(var, self.systems, _CELL_SYSTEMS_ACCEPTED)
        # A name (or a field) given twice would be read as the last one, the other
        # dropped unsaid.
        json.loads(text, object_pairs_hook=_once)
        if len(raw) > self.max_systems:
            raise SettingsError(
                f"RECORDLINE_SYSTEMS names {len(raw)} systems, more than "
                f"RECORDLINE_CELL_MAX_SYSTEMS={self.max_systems}",
                var=var,
            )
        # Every system's files read at once (no more of them than its systems name),
        # within one deadline for them all.
        contents = _files_bytes(_paths(raw.values()))
        found: dict[str, SystemEntry] = {}
        faults: dict[str, SettingsError] = {}
        for name, entry in raw.items():
            if not re.fullmatch(_SYSTEM, name):
                raise SettingsError(
                    f"RECORDLINE_SYSTEMS: {name!r} is not a system's name: expected "
                    f"{_SYSTEM_ACCEPTED}",
                    var=var,
                    accepts=_CELL_SYSTEMS_ACCEPTED,
                )
            try:
                # A value in a file of its own is read as if it were written here.
                entry, files = _referenced(name, entry, contents)
                found[name] = msgspec.convert(entry, SystemEntry)
            except SettingsError as exc:
                faults[name] = exc
            except msgspec.ValidationError as exc:
                # Its own fault: said by the system and the field, not the whole file.
                why = f"system {name!r}: {_entry_error(entry, exc)}"
                read = [
                    path
                    for field, path in files.items()
                    if why.startswith(f"system {name!r}: {field!r}")
                ]
                if read:
                    why += f" (its value read from {read[0]})"
                faults[name] = SettingsError(f"RECORDLINE_SYSTEMS: {why}", var=var)
        for name, fault in _clashes(found).items():
            faults[name] = SettingsError(f"RECORDLINE_SYSTEMS: {fault}", var=var)
        return {n: e for n, e in found.items() if n not in faults}, faults


def _clashes(entries: dict[str, SystemEntry]) -> dict[str, str]:
    """Why each system's entry cannot be used beside the others, of those that cannot: a
    serving tier without a BigQuery store, or a push audience or a place of storage that
    another system takes as well. Every system of a clash is refused, whatever their order
    in the file (which Terraform sorts by name): of two entries naming one store, the one
    copied from the other may come first, and neither may serve the other's records."""
    faults: dict[str, str] = {}
    # Whose each push audience and place of storage is, in the file's order.
    holders: dict[tuple[str, str], list[str]] = {}
    for name, entry in entries.items():
        if entry.serving and not entry.store.startswith("bigquery://"):
            faults[name] = (
                f"system {name!r} has a serving tier, which stands in front of a BigQuery "
                f"store; its store {entry.store!r} is not one"
            )
            continue
        audience = entry.push_audience.strip()
        if audience:
            holders.setdefault(("audience", audience), []).append(name)
        for place in {p for p in (_store_place(entry.store), _store_place(entry.serving)) if p}:
            holders.setdefault(("place", place), []).append(name)
    for (kind, what), names in holders.items():
        if len(names) < 2:
            continue
        names.sort()
        both = f"{', '.join(map(repr, names[:-1]))} and {names[-1]!r}"
        why = (
            f"take the same push_audience {what!r}: a token for one would be taken by the other"
            if kind == "audience"
            else f"are stored in the same {what}: each would read and write the other's records"
        )
        for name in names:
            faults.setdefault(
                name, f"systems {both} {why}; none of them serves until their entries differ"
            )
    return faults


# A deployment of one system's variables that a cell reads from each system's entry: a
# setting of these that cannot be used is that system's fault alone.
SYSTEMS_OWN: Final = (
    "RECORDLINE_STORE",
    "RECORDLINE_SERVING",
    "RECORDLINE_JSON_TOPIC_SCHEMA",
    "RECORDLINE_PUSH_AUDIENCE",
    "RECORDLINE_PUSH_SERVICE_ACCOUNTS",
    "RECORDLINE_READ_PRINCIPALS",
    "RECORDLINE_OPERATOR_PRINCIPALS",
    "RECORDLINE_EXPORT_PRINCIPALS",
    "RECORDLINE_ID_FIELD",
    "RECORDLINE_TIME_FIELD",
    "RECORDLINE_SYSTEM",
)


def system_shares(settings: Settings, entries: Mapping[str, SystemEntry]) -> dict[str, SystemShare]:
    """Each system's share of the cell's bounds (`SystemShare`)."""
    batch, query = settings.batch, settings.query
    reads = settings.server.max_reads
    total = sum(entry.rate for entry in entries.values())
    count = len(entries)
    shares = {}
    for name, entry in entries.items():
        weight = entry.rate / total
        shares[name] = SystemShare(
            queue_rows=max(MIN_SYSTEM_QUEUE_ROWS, math.ceil(batch.queue_rows * weight)),
            queue_bytes=entry.queue_bytes
            or max(
                queued_bytes(settings.server.max_body_bytes),
                math.ceil(batch.queue_bytes * weight),
            ),
            max_followers=entry.max_followers
            or max(MIN_SYSTEM_FOLLOWERS, query.max_followers // count),
            max_reads=entry.max_reads or max(1, reads // count),
        )
    return shares


def system_settings(
    settings: Settings,
    name: str,
    entry: SystemEntry,
    share: SystemShare | None = None,
) -> Settings:
    """The settings system `name` runs with: the process's (the cell's), with the
    system's own stores, schema, payload shape, identities and name, and, given its `share`, its
    admission."""
    replace = msgspec.structs.replace
    own = replace(
        settings,
        store=replace(settings.store, url=entry.store, serving=entry.serving),
        schema=replace(settings.schema, json_topic_schema=entry.json_topic_schema),
        payload=replace(settings.payload, id_field=entry.id_field, time_field=entry.time_field),
        telemetry=replace(settings.telemetry, system=name),
        auth=replace(
            settings.auth,
            push_audience=entry.push_audience,
            push_service_accounts=entry.push_service_accounts,
            read_principals=entry.read_principals,
            operator_principals=entry.operator_principals,
            export_principals=entry.export_principals,
        ),
    )
    if share is None:
        return own
    return replace(
        own,
        batch=replace(own.batch, queue_rows=share.queue_rows, queue_bytes=share.queue_bytes),
        query=replace(own.query, max_followers=share.max_followers),
        server=replace(own.server, system_reads=share.max_reads),
    )


class TelemetrySettings(Section, frozen=True):
    """OpenTelemetry, configured through its standard `OTEL_*` variables where one exists."""

    service_name: Annotated[str, env("OTEL_SERVICE_NAME", "Service name on traces and metrics")] = (
        "recordline"
    )
    system: Annotated[
        str,
        Meta(pattern=_SYSTEM),
        env(
            "RECORDLINE_SYSTEM",
            "Which system this is, where several share a project: on every metric (resource "
            "`service.namespace`, Cloud Monitoring's `namespace` label), trace and log line "
            "(label `system`)",
            accepts=_SYSTEM_ACCEPTED,
        ),
    ] = "recordline"
    traces_exporter: Annotated[
        Literal["none", "console", "otlp", "gcp_trace"],
        env(
            "OTEL_TRACES_EXPORTER",
            "`none`, `console` (stdout), `otlp` (OTLP/HTTP) or `gcp_trace` (Cloud Trace)",
        ),
    ] = "none"
    metrics_exporter: Annotated[
        Literal["none", "prometheus", "otlp", "gcp_monitoring"],
        env(
            "OTEL_METRICS_EXPORTER",
            "`prometheus` (served at `GET /metrics`), `otlp`, `gcp_monitoring` (Cloud "
            "Monitoring) or `none`",
        ),
    ] = "prometheus"
    traces_sampler: Annotated[
        Literal[
            "always_on",
            "always_off",
            "traceidratio",
            "parentbased_always_on",
            "parentbased_always_off",
            "parentbased_traceidratio",
        ],
        env(
            "OTEL_TRACES_SAMPLER",
            "Which requests are traced; `parentbased_*` follow the caller's sampling decision",
        ),
    ] = "parentbased_always_on"
    traces_sampler_arg: Annotated[
        float,
        Meta(ge=0, le=1),
        env(
            "OTEL_TRACES_SAMPLER_ARG", "Fraction of new traces kept by the `*traceidratio` samplers"
        ),
    ] = 1.0
    otlp_endpoint: Annotated[
        str,
        Meta(pattern=_HTTP_URL),
        env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTLP/HTTP collector base URL; `/v1/traces` and `/v1/metrics` are appended",
            accepts="an `http://` or `https://` URL",
        ),
    ] = "http://localhost:4318"
    metric_export_interval_ms: Annotated[
        int,
        Meta(ge=5000),
        env(
            "OTEL_METRIC_EXPORT_INTERVAL",
            "Milliseconds between pushes to OTLP or Cloud Monitoring, which takes at most one "
            "point per series every 5 s",
        ),
    ] = 60_000
    slo_read_latency_seconds: Annotated[
        float,
        Meta(gt=0, le=60),
        env(
            "RECORDLINE_SLO_READ_LATENCY_SECONDS",
            "A user's read (not a long-poll or a stream) answered within this is a good "
            "`read_latency` event of `recordline.slo.events`",
        ),
    ] = 1.0
    slo_freshness_seconds: Annotated[
        float,
        Meta(gt=0),
        env(
            "RECORDLINE_SLO_FRESHNESS_SECONDS",
            "A message stored within this of its publish time is a good `freshness` event "
            "of `recordline.slo.events`",
        ),
    ] = 10.0
    project: Annotated[
        str,
        Meta(pattern=r"^(|[a-z]([a-z0-9.:-]{0,61}[a-z0-9])?)$"),
        env(
            "GOOGLE_CLOUD_PROJECT",
            "Project of the Cloud Trace links in log lines and of the exporters; defaults to "
            "the BigQuery store's project",
            accepts="a project id (lower-case letters, digits and `-`, a letter first)",
        ),
    ] = ""


class CommandSettings(Section, frozen=True):
    """What the commands that go through a running service (`recordline audit`,
    `recordline replay`) ask it at: where a cell's ops job runs them (docs/cells.md)."""

    url: Annotated[
        str,
        Meta(pattern=r"^(|https?://[^\s/]+(/\S*)?)$"),
        env(
            "RECORDLINE_URL",
            "Where the service answers, for the commands that ask it (`recordline audit`, "
            "`recordline replay`) when no `--url` is given; for a cell, its URL, each "
            "system's paths under `/systems/{system}` (`--system`). Their ID tokens are "
            "then minted for RECORDLINE_READ_AUDIENCE by the metadata server",
            accepts="an `http://` or `https://` URL",
        ),
    ] = ""


# Where a cell serves each of its systems, as if it were served alone: `/systems/{name}`
# (docs/cells.md#paths). The one place the prefix is spelt.
SYSTEMS_PREFIX: Final = "/systems/"


def system_path(system: str) -> str:
    """The path a cell serves system `system` under (no `/` at its end)."""
    return SYSTEMS_PREFIX + system


class Settings(msgspec.Struct, kw_only=True, frozen=True):
    server: ServerSettings = msgspec.field(default_factory=ServerSettings)
    store: StoreSettings = msgspec.field(default_factory=StoreSettings)
    batch: BatchSettings = msgspec.field(default_factory=BatchSettings)
    payload: PayloadSettings = msgspec.field(default_factory=PayloadSettings)
    schema: SchemaSettings = msgspec.field(default_factory=SchemaSettings)
    query: QuerySettings = msgspec.field(default_factory=QuerySettings)
    auth: AuthSettings = msgspec.field(default_factory=AuthSettings)
    telemetry: TelemetrySettings = msgspec.field(default_factory=TelemetrySettings)
    cell: CellSettings = msgspec.field(default_factory=CellSettings)
    command: CommandSettings = msgspec.field(default_factory=CommandSettings)

    def systems(self) -> dict[str, SystemEntry]:
        """The cell's systems (RECORDLINE_SYSTEMS); none for a deployment of one."""
        return self.cell.entries()

    @property
    def mounted_at(self) -> str:
        """The path this app's own paths are under: none for a deployment of one, the
        system's in a cell (`system_path`; the cell gives its app the path below it)."""
        return system_path(self.telemetry.system) if self.cell.name else ""

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """The settings `environ` gives; SettingsError for a value that cannot be used,
        or a RECORDLINE_ variable that is no setting (a misspelling would go unread)."""
        environ = os.environ if environ is None else environ
        refuse_unknown(environ)
        settings = cls(
            **{
                name: typing.get_type_hints(cls)[name].from_env(environ)
                for name in cls.__struct_fields__
            }
        )
        _refuse_shared_masked(settings.query)
        _refuse_shared_topic(settings)
        return settings


def _refuse_shared_topic(settings: Settings) -> None:
    """A cell's systems each publish their operators' test messages to the topic
    RECORDLINE_TOPIC names: without `{system}` that is one topic for them all, read by
    one system, and another system's operator would publish into it."""
    topic = settings.schema.topic
    if settings.cell.name and topic and SYSTEM_TOPIC not in topic:
        raise SettingsError(
            f"RECORDLINE_TOPIC={topic!r} names one topic for every system of the cell: "
            "each system's operator would publish there. Name each system's own with "
            f"{SYSTEM_TOPIC} (projects/PROJECT/topics/{SYSTEM_TOPIC}), or leave it empty",
            var="RECORDLINE_TOPIC",
        )


def _refuse_shared_masked(query: QuerySettings) -> None:
    """A shared cache keeps one answer per URL for everyone: with a mask, it would serve
    an operator's unmasked page to readers, or a reader's masked one to operators."""
    if query.shared_cache and (names(query.mask_fields) or names(query.mask_attributes)):
        raise SettingsError(
            "RECORDLINE_SHARED_CACHE=true and RECORDLINE_MASK_FIELDS or "
            "RECORDLINE_MASK_ATTRIBUTES cannot work together: a shared cache keeps one "
            "answer per URL, and would serve an operator's unmasked pages to readers. "
            "Leave RECORDLINE_SHARED_CACHE unset where anything is masked",
            var="RECORDLINE_SHARED_CACHE",
        )


# RECORDLINE_ variables that are not the service's settings: the local tools',
# the tests' and the benchmarks' own (recordline_dev/, tests/, bench/, dev.py),
# which the service inherits when they start it.
TOOL_VARIABLES = frozenset(
    {
        "RECORDLINE_BENCH_LOGS",
        "RECORDLINE_CONTRACT_MUTANT",
        "RECORDLINE_DEV_COMMAND",
        "RECORDLINE_FUZZ_EXAMPLES",
        "RECORDLINE_LIVE_DATASET",
        "RECORDLINE_PUBSUB_EMULATOR",
        "RECORDLINE_SEED",
        "RECORDLINE_SPANNER_EMULATOR",
    }
)
_OURS = "RECORDLINE_"
# Settings of earlier releases, and what became of each: a deployment that still sets
# one is told that, rather than a name merely close to it.
RETIRED: dict[str, str] = {
    "RECORDLINE_EXPORT_SYSTEMS": "set RECORDLINE_CELL and RECORDLINE_SYSTEMS instead",
    "RECORDLINE_BATCH_MAX_ROWS": "an append is at most 1,000 rows",
    "RECORDLINE_BATCH_MAX_BYTES": "an append is at most 8 MiB",
    "RECORDLINE_BATCH_MAX_DELAY_MS": "a flush waits for no more rows",
    "RECORDLINE_HEARTBEAT_SECONDS": "a stream's heartbeat comes every 15 s",
    "RECORDLINE_SCHEMA_FETCH_TIMEOUT_SECONDS": "a schema revision's fetch ends after 3 s",
    "RECORDLINE_QUEUE_MAX_ROWS": "at most 20,000 rows wait to be stored; "
    "RECORDLINE_QUEUE_MAX_BYTES bounds their bytes",
    "RECORDLINE_SETTLE_SECONDS": "BigQuery's rows are served once 15 s old",
    "RECORDLINE_HEADER_TIMEOUT_SECONDS": "a request's line and headers arrive within 10 s",
    "RECORDLINE_KEEP_ALIVE_SECONDS": "an idle connection is kept 75 s between requests",
    "RECORDLINE_BODY_TIMEOUT_SECONDS": "a request's body arrives within 30 s of its headers",
    "RECORDLINE_SEND_TIMEOUT_SECONDS": "a client taking none of its answer for 30 s is cut off",
    "RECORDLINE_MAX_HEADER_BYTES": "a request's line and headers are at most 256 KiB",
    "RECORDLINE_LONG_POLL_SECONDS": "a stream's long-poll waits 20 s for rows",
    "RECORDLINE_SHUTDOWN_GRACE_SECONDS": "on SIGTERM the process exits within 7 s",
    "RECORDLINE_EXPORT_MAX_BYTES": "an export sends at most 256 MiB, then the token to go on from",
    "RECORDLINE_PUSH_RESERVE": "reads leave pushes 0.2 of the connections and of the memory budget",
}


def refuse_unknown(environ: Mapping[str, str]) -> None:
    """SettingsError naming the first RECORDLINE_ variable in `environ` that nothing reads,
    and the known variable it is closest to."""
    known = {setting.var for setting in every_setting()} | TOOL_VARIABLES
    unknown = sorted(var for var in environ if var.startswith(_OURS) and var not in known)
    if not unknown:
        return
    var = unknown[0]
    if var in RETIRED:
        raise SettingsError(
            f"{var} is no longer a setting of Recordline: {RETIRED[var]}; remove it "
            "(`recordline config --reference` lists them all)"
        )
    # Compared without the prefix they all share, which would make any name look close.
    # (PORT is compared as it is: RECORDLINE_PORT is close to it.)
    names = {name.removeprefix(_OURS): name for name in known}
    close = difflib.get_close_matches(var.removeprefix(_OURS), sorted(names), n=1, cutoff=0.6)
    hint = f": did you mean {names[close[0]]}?" if close else ""
    raise SettingsError(
        f"{var} is not a setting of Recordline{hint} "
        "(`recordline config --reference` lists them all)"
    )


def _sections() -> list[tuple[str, type[Section]]]:
    return list(typing.get_type_hints(Settings).items())


def every_setting() -> list[Setting]:
    """Every setting, in the order of the configuration table."""
    return [d for _, section in _sections() for d in _settings_of(section).values()]


def reference() -> list[tuple[str, str, str]]:
    """(variable, default, meaning) for every setting, for the configuration table."""
    rows = []
    for _, section in _sections():
        defaults = section()
        for field, setting in _settings_of(section).items():
            rows.append((setting.var, repr(getattr(defaults, field)), setting.doc))
    return rows


class Effective(NamedTuple):
    """One setting as a process would run with it."""

    var: str
    value: str
    source: Literal["environment", "default"]


def effective(settings: Settings, environ: Mapping[str, str]) -> list[Effective]:
    """Every setting's value in `settings` and whether `environ` set it; secrets hidden."""
    rows = []
    for name, section in _sections():
        values = getattr(settings, name)
        for field, setting in _settings_of(section).items():
            value = getattr(values, field)
            source: Literal["environment", "default"] = (
                "environment" if environ.get(setting.var, "") != "" else "default"
            )
            shown = repr(value)
            if setting.secret and source == "environment":
                shown = f"(set: {len(str(value))} characters, not shown)"
            rows.append(Effective(setting.var, shown, source))
    return rows


# --- the service's own checks, across settings: what would leave it open ---------------


def is_loopback(host: str) -> bool:
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _refuse_open_service(settings: Settings, *, push_authenticated: bool) -> None:
    """Beyond loopback, pushes and reads are authenticated (or reads declared public),
    and page tokens are signed with a key of this deployment's own. What is missing is
    said all at once: one refusal per run would take a run per setting to learn."""
    auth, host = settings.auth, settings.server.host
    if auth.public_reads and auth.read_audience:
        raise SettingsError(
            "RECORDLINE_PUBLIC_READS and RECORDLINE_READ_AUDIENCE contradict each other: "
            "reads are either public or authenticated"
        )
    if is_loopback(host):
        return
    missing = []
    if not push_authenticated:
        missing.append(
            "push authentication (RECORDLINE_PUSH_AUDIENCE and RECORDLINE_PUSH_SERVICE_ACCOUNTS "
            "for Google-signed pushes, or RECORDLINE_PUSH_TOKEN, the emulator's ?token=)"
        )
    if not auth.read_audience and not auth.public_reads:
        missing.append(
            "read authentication (RECORDLINE_READ_AUDIENCE and RECORDLINE_READ_PRINCIPALS, or "
            "RECORDLINE_PUBLIC_READS=true if an outer gate such as Cloud Run's invoker check "
            "decides who reads)"
        )
    secret = settings.query.page_token_secret
    if secret == DEFAULT_PAGE_TOKEN_SECRET or len(secret) < MIN_PAGE_TOKEN_SECRET_LENGTH:
        missing.append(
            f"a page-token key of its own (RECORDLINE_PAGE_TOKEN_SECRET: at least "
            f"{MIN_PAGE_TOKEN_SECRET_LENGTH} random characters, the same on every instance; "
            "the published default, or a shorter one, lets anyone sign page tokens)"
        )
    if missing:
        raise SettingsError(
            f"RECORDLINE_HOST={host!r} is not a loopback address, and a service beyond "
            f"loopback needs {'; '.join(missing)}. Set {'it' if len(missing) == 1 else 'them'}, "
            "or bind to 127.0.0.1",
            var="RECORDLINE_HOST",
        )


def _pair(name: str, value: str, other: str, values: object) -> None:
    if bool(value) != bool(values):
        raise SettingsError(f"{name} and {other} work together: set both, or neither", var=name)


def _entries(value: str) -> list[str]:
    return [item.strip().lower() for item in value.split(",") if item.strip()]


def check_access(settings: Settings) -> None:
    """SettingsError for settings the service must not run with: one of a pair set
    without the other, an entry that names nobody, a guessable push token, and, beyond
    loopback, anything left open (`_refuse_open_service`)."""
    auth = settings.auth
    accounts = _entries(auth.push_service_accounts)
    principals = _entries(auth.read_principals)
    operators = _entries(auth.operator_principals)
    exporters = _entries(auth.export_principals)
    _pair(
        "RECORDLINE_PUSH_AUDIENCE", auth.push_audience, "RECORDLINE_PUSH_SERVICE_ACCOUNTS", accounts
    )
    _pair("RECORDLINE_READ_AUDIENCE", auth.read_audience, "RECORDLINE_READ_PRINCIPALS", principals)
    if any("@" not in account for account in accounts):
        raise SettingsError("RECORDLINE_PUSH_SERVICE_ACCOUNTS: list service-account e-mails")
    if "domain:" in principals:
        raise SettingsError("RECORDLINE_READ_PRINCIPALS: `domain:` needs a domain")
    if "domain:" in operators:
        raise SettingsError("RECORDLINE_OPERATOR_PRINCIPALS: `domain:` needs a domain")
    if operators and not auth.read_audience:
        raise SettingsError(
            "RECORDLINE_OPERATOR_PRINCIPALS needs RECORDLINE_READ_AUDIENCE: operators "
            "sign in with tokens for it"
        )
    if "domain:" in exporters:
        raise SettingsError(
            "RECORDLINE_EXPORT_PRINCIPALS: `domain:` needs a domain",
            var="RECORDLINE_EXPORT_PRINCIPALS",
        )
    if exporters and not auth.read_audience:
        raise SettingsError(
            "RECORDLINE_EXPORT_PRINCIPALS needs RECORDLINE_READ_AUDIENCE: exporters sign in "
            "with tokens for it, and without it no export could be told from another",
            var="RECORDLINE_EXPORT_PRINCIPALS",
        )
    if auth.push_token and len(auth.push_token) < MIN_PUSH_TOKEN_LENGTH:
        raise SettingsError(
            f"RECORDLINE_PUSH_TOKEN: use at least {MIN_PUSH_TOKEN_LENGTH} random characters"
        )
    if settings.cell.name and auth.public_reads and not is_loopback(settings.server.host):
        raise SettingsError(
            "RECORDLINE_PUBLIC_READS: a cell's invoker check admits every system's readers, "
            "so only the service can tell whose records they may read; beyond loopback a "
            "cell takes RECORDLINE_READ_AUDIENCE and each system's read_principals",
            var="RECORDLINE_PUBLIC_READS",
        )
    if settings.cell.name and auth.push_token and not is_loopback(settings.server.host):
        raise SettingsError(
            "RECORDLINE_PUSH_TOKEN: one secret for every system of the cell would let one "
            "system's publisher write another's; beyond loopback a cell takes each system's "
            "pushes with its own push_audience and push_service_accounts (RECORDLINE_SYSTEMS)",
            var="RECORDLINE_PUSH_TOKEN",
        )
    _check_read_passes(settings)
    if (auth.push_audience or auth.read_audience) and not auth.oidc_certs_url.startswith(
        ("https://", "http://")
    ):
        raise SettingsError("RECORDLINE_OIDC_CERTS_URL: must be an http(s) URL")
    _refuse_open_service(settings, push_authenticated=bool(auth.push_audience or auth.push_token))


def _check_read_passes(settings: Settings) -> None:
    """Read passes are issued to verified readers only, and reach the service without a
    token: with them every token's signature is verified here (no invoker check)."""
    auth = settings.auth
    if bool(auth.read_pass_keys) != bool(auth.read_pass_url):
        raise SettingsError(
            "RECORDLINE_READ_PASS_KEYS and RECORDLINE_READ_PASS_URL work together: set both, "
            "or neither",
            var="RECORDLINE_READ_PASS_URL" if auth.read_pass_keys else "RECORDLINE_READ_PASS_KEYS",
        )
    if not auth.read_pass_keys:
        return
    if not auth.read_audience:
        raise SettingsError(
            "RECORDLINE_READ_PASS_KEYS needs RECORDLINE_READ_AUDIENCE: a pass is issued only "
            "to a reader whose token the service verified",
            var="RECORDLINE_READ_PASS_KEYS",
        )
    if auth.read_pass_url.startswith("http://") and not is_loopback(settings.server.host):
        raise SettingsError(
            "RECORDLINE_READ_PASS_URL: beyond loopback a pass opens an https:// origin; over "
            "plain http its cookie, which reads without a token, crosses the network in clear",
            var="RECORDLINE_READ_PASS_URL",
        )
    if auth.trust_cloud_run_iam:
        raise SettingsError(
            "RECORDLINE_READ_PASS_KEYS and RECORDLINE_TRUST_CLOUD_RUN_IAM cannot work together: "
            "a read with a pass reaches the service without a token, so no invoker check "
            "stands in front of it, and every token's signature must be verified here",
            var="RECORDLINE_TRUST_CLOUD_RUN_IAM",
        )
