"""Topic schemas: the revision a message names, fetched once and kept.

Pub/Sub marks every message of a topic that has a schema with its schema,
revision and encoding; each message is decoded with its own revision. Revisions
are immutable: each is fetched once (concurrent pushes wait for the same fetch)
and its codec kept. One that cannot be fetched is our failure (503, nothing
stored); one that does not exist or cannot decode rejects its messages. Decoders
and typed fields (`Schemas.revisions`) are made in a worker thread, off the loop.

Design: docs/schemas.md
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import Callable, Mapping
from typing import NamedTuple, NoReturn, Protocol

import cachetools
import msgspec

from app.errors import SchemaUnavailable
from app.ingest.avro import AvroCodec
from app.ingest.codec import Codec, SchemaError
from app.ingest.protobuf import ProtobufCodec
from app.typed.mapping import Field, OverCap, decoded_avro_fields, protobuf_fields
from app.typed.revisions import Revisions

log = logging.getLogger(__name__)

SCHEMA_NAME = "googclient_schemaname"
SCHEMA_REVISION = "googclient_schemarevisionid"
SCHEMA_ENCODING = "googclient_schemaencoding"
ENCODINGS = frozenset({"JSON", "BINARY"})

# What a schema name looks like; anything else is not worth a call to the API.
_SCHEMA_NAME = re.compile(r"projects/[^/@\s]+/schemas/[^/@\s]+")
# Longest a fetch of a revision may take (a push waiting for it is then a 503, and
# delivered again): each revision is fetched once, and 3 s is many times the API's answer.
FETCH_SECONDS = 3.0
# A revision the Schema API said does not exist is asked again after this
# long, not for every message that names it (the API has a per-minute quota).
_NOT_FOUND_SECONDS = 60.0
# A message without a revision id is decoded with the schema's latest
# revision, which a commit can change: that answer is kept this long.
_LATEST_SECONDS = 60.0
# Revisions whose last fetch failed, reported by readiness as warnings (never as
# not ready: a sender names the revision, and no sender may take the service out
# of its load balancer); at most this many, each for this long after it last failed
# (Pub/Sub's longest backoff between redeliveries: a revision still failing is
# named again by then).
_MAX_FAILING = 64
_FAILING_SECONDS = 600.0
# Decoders kept at most. A topic accepts a few revisions at a time; a decoder
# is small (a parsed Avro schema, a protobuf class), so 1,024 is a few MB.
_MAX_KEPT = 1024
# Mapping a revision to the caps takes ~0.1 s (9,984 fields); one that takes
# longer than this has no typed columns, whatever made it slow.
_MAP_SECONDS = 2.0
# How long a push waits for a fetched revision's decoder (parsing Avro,
# compiling a .proto: milliseconds, and the mapping's deadline); a wait past it
# (a worker pool too busy) is our failure, answered 503 like a fetch's.
_BUILD_SECONDS = 10.0


class SchemaRevision(msgspec.Struct, kw_only=True, frozen=True):
    """One revision of a topic schema, as the Schema API describes it."""

    name: str  # projects/P/schemas/S
    revision_id: str
    type: str  # AVRO or PROTOCOL_BUFFER
    definition: str


class SchemaNotFound(Exception):
    """The Schema API answered that this schema or revision does not exist."""


class SchemaSource(Protocol):
    """Where revisions come from: the Pub/Sub Schema API, or a fake of it."""

    async def revision(self, name: str, revision_id: str) -> SchemaRevision:
        """`revision_id` of schema `name` ("" for the latest); raise SchemaNotFound
        if there is none, SchemaUnavailable if the API cannot be asked."""
        ...

    async def close(self) -> None: ...


class Decoder(msgspec.Struct, frozen=True):
    """What a message naming `schema` is decoded with; `problem` when nothing can decode it."""

    schema: str  # projects/P/schemas/S@REVISION
    codec: Codec | None = None
    problem: str | None = None
    # The typed columns the revision's fields map to (app.typed.mapping).
    fields: tuple[Field, ...] = ()
    # Why the revision has no typed columns though it decodes (a cap it passes).
    unmapped: str | None = None


def unusable(name: str, revision_id: str, problem: str) -> Decoder:
    return Decoder(f"{name}@{revision_id}" if revision_id else name, problem=problem)


class SchemaRef(NamedTuple):
    """The topic schema a message names in its attributes: the schema, its revision
    ("" for the latest) and the payload's encoding, as the sender wrote them."""

    name: str
    revision_id: str
    encoding: str

    @classmethod
    def named(cls, attributes: Mapping[str, str]) -> SchemaRef | None:
        """The schema `attributes` name, or None when they name none (a JSON topic)."""
        name = attributes.get(SCHEMA_NAME)
        if name is None:
            return None
        return cls(name, attributes.get(SCHEMA_REVISION, ""), attributes.get(SCHEMA_ENCODING, ""))

    def problem(self) -> Decoder | None:
        """What nothing can decode, when the reference itself is malformed: an unusable
        decoder naming the attribute (its value cut short), else None."""
        if _SCHEMA_NAME.fullmatch(self.name) is None:
            problem = f"{SCHEMA_NAME} {self.name[:200]!r} is not projects/P/schemas/S"
            return unusable(self.name[:200], self.revision_id[:64], problem)
        if self.encoding not in ENCODINGS:
            problem = f"{SCHEMA_ENCODING} {self.encoding[:64]!r} is neither JSON nor BINARY"
            return unusable(self.name, self.revision_id[:64], problem)
        return None


class Schemas:
    """The decoders of every revision messages have named so far."""

    def __init__(
        self,
        source: SchemaSource,
        *,
        timeout: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._source = source
        # Each decoded revision's typed fields, for a store that projects them.
        self.revisions = Revisions()
        self._timeout = timeout
        self._clock = clock
        # Each decoder until its own expiry (forever for a revision, which never
        # changes), and at most _MAX_KEPT of them: revisions a sender makes up
        # would otherwise grow it without end. One evicted is fetched again.
        self._kept: cachetools.TLRUCache[tuple[str, str], tuple[Decoder, float]] = (
            cachetools.TLRUCache(_MAX_KEPT, ttu=lambda _key, kept, _now: kept[1], timer=clock)
        )
        self._fetching: dict[tuple[str, str], asyncio.Task[Decoder]] = {}
        # Revisions whose last fetch failed, oldest first: why, and until when
        # (the clock's) it is said.
        self._failing: dict[tuple[str, str], tuple[str, float]] = {}

    def kept(self, name: str, revision_id: str) -> Decoder | None:
        """The decoder of that revision if it was fetched already (no await: the common case)."""
        kept = self._kept.get((name, revision_id))
        return None if kept is None else kept[0]

    def ready(self, ref: SchemaRef) -> Decoder | None:
        """The decoder `ref` names, when choosing it needs no fetch: a revision seen
        before, in an encoding there is."""
        kept = self._kept.get((ref.name, ref.revision_id))
        return None if kept is None or ref.encoding not in ENCODINGS else kept[0]

    async def decoder(self, name: str, revision_id: str) -> Decoder:
        """The decoder of that revision; raises SchemaUnavailable if it cannot be fetched."""
        kept = self.kept(name, revision_id)
        if kept is not None:
            return kept
        key = (name, revision_id)
        fetching = self._fetching.get(key)
        if fetching is None:
            fetching = asyncio.create_task(self._fetch(key), name=f"schema {name}@{revision_id}")
            self._fetching[key] = fetching
            fetching.add_done_callback(lambda _: self._fetching.pop(key, None))
        # Shielded: a push that gives up does not cancel the fetch others wait for.
        return await asyncio.shield(fetching)

    def warnings(self) -> list[str]:
        """The revisions pushes named lately that could not be fetched, and why: the
        pushes naming them are answered 503 until they can be. A warning for
        readiness, never a failure: the revision is the sender's to name."""
        now = self._clock()
        for key in [k for k, (_, until) in self._failing.items() if until <= now]:
            del self._failing[key]
        return [
            f"{detail}; pushes naming it are answered 503 until it can be fetched "
            f"(said for {until - now:.0f} s more unless one names it again)"
            for detail, until in self._failing.values()
        ]

    async def close(self) -> None:
        for task in list(self._fetching.values()):
            task.cancel()
        await self._source.close()

    async def _fetch(self, key: tuple[str, str]) -> Decoder:
        name, revision_id = key
        named = f"{name}@{revision_id}" if revision_id else name
        try:
            async with asyncio.timeout(self._timeout):
                revision = await self._source.revision(name, revision_id)
        except SchemaNotFound as exc:
            self._failing.pop(key, None)
            decoder = unusable(name, revision_id, f"the Schema API has no such revision ({exc})")
            self._keep(key, decoder, _NOT_FOUND_SECONDS)
            return decoder
        except TimeoutError:
            self._failed(key, f"{named}: the Schema API did not answer in {self._timeout:g} s")
        except SchemaUnavailable as exc:
            self._failed(key, f"{named}: {exc.detail}")
        try:
            async with asyncio.timeout(_BUILD_SECONDS):
                decoder = await asyncio.to_thread(decoder_of, name, revision)
        except TimeoutError:
            self._failed(key, f"{named}: its decoder was not made in {_BUILD_SECONDS:g} s")
        self._failing.pop(key, None)
        if decoder.problem is not None:
            log.error("topic schema %s cannot decode: %s", decoder.schema, decoder.problem)
        elif decoder.unmapped is not None:
            log.warning("topic schema %s: %s", decoder.schema, decoder.unmapped)
            self.revisions.learn_unmapped(decoder.schema, decoder.unmapped)
        else:
            self.revisions.learn(decoder.schema, decoder.fields)
        self._keep((name, revision.revision_id), decoder, None)
        if not revision_id:
            self._keep(key, decoder, _LATEST_SECONDS)
        return decoder

    def _keep(self, key: tuple[str, str], decoder: Decoder, seconds: float | None) -> None:
        self._kept[key] = (decoder, math.inf if seconds is None else self._clock() + seconds)

    def _failed(self, key: tuple[str, str], reason: str) -> NoReturn:
        detail = f"topic schema {reason}"
        log.warning("cannot fetch %s", detail)
        self._failing.pop(key, None)  # to the end: it is the newest failure now
        self._failing[key] = (detail, self._clock() + _FAILING_SECONDS)
        while len(self._failing) > _MAX_FAILING:
            del self._failing[next(iter(self._failing))]
        raise SchemaUnavailable(detail)


def decoder_of(name: str, revision: SchemaRevision) -> Decoder:
    """The decoder of a fetched revision (in a worker thread: it may take a while).

    Never raises: a revision is a publisher's input, so whatever it makes the
    code do ends in a decoder that says so, kept like any other, never in a
    500 and a fetch again at every redelivery.
    """
    schema = f"{name}@{revision.revision_id}"
    try:
        codec = revision_codec(revision.type, revision.definition)
    except SchemaError as exc:
        return Decoder(schema, problem=str(exc))
    except RecursionError:
        return Decoder(schema, problem="a definition nested too deeply to read")
    except Exception as exc:
        log.exception("topic schema %s: its codec failed", schema)
        return Decoder(schema, problem=f"a definition the decoder fails on ({exc!r})")
    try:
        fields = typed_fields(codec, deadline=time.monotonic() + _MAP_SECONDS)
    except OverCap as exc:
        return Decoder(schema, codec=codec, unmapped=f"no typed columns: {exc}")
    except Exception as exc:
        log.exception("topic schema %s: mapping its typed columns failed", schema)
        failed = f"no typed columns: the mapping failed ({exc!r})"
        return Decoder(schema, codec=codec, unmapped=failed)
    return Decoder(schema, codec=codec, fields=fields)


def revision_codec(kind: str, definition: str) -> Codec:
    """A revision's codec, from its type (AVRO or PROTOCOL_BUFFER) and definition;
    SchemaError when it cannot decode."""
    match kind:
        case "AVRO":
            return AvroCodec(definition)
        case "PROTOCOL_BUFFER":
            return ProtobufCodec(definition)
        case other:
            raise SchemaError(f"schema type {other} is not supported")


def typed_fields(codec: Codec, *, deadline: float | None = None) -> tuple[Field, ...]:
    """The typed fields a revision's codec maps to (app.typed.mapping); OverCap past a
    cap or `deadline` (`time.monotonic()`'s). What the push path projects records
    onto, and what `recordline schema typed` generates the columns Terraform creates
    `records` with from."""
    match codec:
        case AvroCodec():
            return decoded_avro_fields(codec.definition, deadline=deadline)
        case ProtobufCodec():
            return protobuf_fields(codec.descriptor, deadline=deadline)
        case _:
            return ()
