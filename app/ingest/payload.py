"""What a payload says: its record id, its event time and the data to store.

A message that names a topic schema is decoded with that revision and stored
whole as JSON; with no schema, the default mapping reads the `{"id", "timestamp",
"data"}` contract (`data` stored as the exact JSON text sent), and a publisher's
own mapping stores the whole payload. A reader raises `Invalid` with the rule that
failed, which becomes the rejection's reason, and nothing else: no message is a 500.

Design: docs/schemas.md
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, NamedTuple, Protocol

import msgspec
from msgspec import Meta

from app.ingest.limits import TOO_DEEP, too_deep
from app.ingest.schemas import Decoder, SchemaRef, Schemas
from app.ingest.shape import FieldPaths, Invalid, contract_id
from app.records import MAX_ID_LENGTH, AwareDatetime, TimeOutOfRange, micros, unaddressable


class Payload(msgspec.Struct, kw_only=True, frozen=True):
    """The contract producers publish by default. Fields they add are ignored, not refused."""

    # Text, or an integer kept as its digits (contract_id), as under a mapping.
    id: Annotated[str, Meta(min_length=1, max_length=MAX_ID_LENGTH)] | int
    timestamp: AwareDatetime | None = None
    # Kept as the exact JSON text the producer sent: stored without re-encoding.
    data: msgspec.Raw = msgspec.Raw(b"null")


_decode_payload = msgspec.json.Decoder(Payload).decode
_decode_json = msgspec.json.Decoder().decode
_encode = msgspec.json.encode
# Half of a character: the escape of a high surrogate (`\uD800` to `\uDBFF`) with no low
# one's after it, which JSON text (Unicode) cannot hold. The decoder says so, at the
# byte after the escape, where six bytes or more follow it; where fewer do, it says the
# input was truncated, which tells a publisher nothing.
_PAIR_ENDED = re.compile(
    r"unexpected end of (?:escaped utf-16 surrogate pair|hex escape) \(byte ([0-9]+)\)"
)
_HIGH_ESCAPE = re.compile(rb"\\u[dD][89abAB][0-9a-fA-F]{2}")
# The start of a low surrogate's escape, running to the end: a payload cut short there
# may be missing the rest of its character, and is truncated indeed.
_LOW_ESCAPE_BEGUN = re.compile(rb"\\(?:u(?:[dD](?:[c-fC-F][0-9a-fA-F]?)?)?)?\Z")


def not_json(data: bytes, exc: Exception) -> Invalid:
    """The rejection of `data`, which is not JSON: what the decoder said, where a
    payload holds half of a character in its words, which name no value."""
    said = str(exc)
    at = _half_character(data, said)
    if at is not None:
        said = (
            f"half of a character at byte {at}: an escape of a high surrogate "
            "(\\uD800 to \\uDBFF) with no low one after it, which JSON text cannot hold"
        )
    return Invalid(f"payload is not JSON: {said}")


def _half_character(data: bytes, said: str) -> int | None:
    """Where `data` holds half of a character, as the decoder's `said` shows it; None
    where it shows none. Looks at the payload's last bytes alone: a few µs whatever its
    size."""
    ended = _PAIR_ENDED.search(said)
    if ended is not None:
        # The byte after the escape (a value's or, skipped unread, the contract's `data`):
        # named only where a high surrogate's escape is there.
        at = int(ended.group(1)) - 6
        return at if at >= 0 and _HIGH_ESCAPE.fullmatch(data, at, at + 6) else None
    if said != "Input data was truncated":
        return None
    # An escape within the last 11 bytes: fewer than six after it.
    for found in _HIGH_ESCAPE.finditer(data, max(0, len(data) - 11)):
        rest = data[found.end() :]
        if not rest or _LOW_ESCAPE_BEGUN.match(rest):
            continue  # cut short where the rest of its character may be
        # An escape only where its backslash is not itself escaped: an odd run of them
        # (counted in the 64 bytes before it: a longer run is no publisher's text, and
        # keeps the decoder's words).
        start = found.start()
        before = data[max(0, start - 64) : start + 1]
        run = len(before) - len(before.rstrip(b"\\"))
        if run % 2 and (run < len(before) or start < 64):
            return start
    return None


class PayloadValues(NamedTuple):
    """What a payload says: its record id, its event time and the data to store."""

    id: str
    timestamp: int | None  # µs since the epoch
    data: str  # JSON text


class PayloadReader(Protocol):
    @property
    def schema(self) -> str | None:
        """The schema revision the message named (`projects/P/schemas/S@REVISION`)."""
        ...

    def read(self, data: bytes) -> PayloadValues:
        """What `data` says; raises Invalid naming the rule it broke."""
        ...


class ContractReader:
    """`{"id", "timestamp", "data"}`, as JSON."""

    schema = None

    def read(self, data: bytes) -> PayloadValues:
        try:
            payload = _decode_payload(data)
            # The decoder passes `data` through unread: its text is checked here (decoded
            # from the message's own bytes, not from a copy of them).
            text = str(payload.data, "utf-8")
        except msgspec.ValidationError as exc:
            raise Invalid(f"payload: {exc}") from None
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            raise not_json(data, exc) from None
        except RecursionError:
            raise Invalid(f"payload: {TOO_DEEP}") from None
        try:
            timestamp = None if payload.timestamp is None else micros(payload.timestamp)
        except TimeOutOfRange as exc:
            raise Invalid(f"payload: `$.timestamp`: {exc}") from None
        if too_deep(text):
            raise Invalid(f"payload: `$.data` is {TOO_DEEP}")
        record_id = contract_id(payload.id)
        problem = unaddressable(record_id)
        if problem is not None:
            raise Invalid(f"payload: `$.id` is {problem}")
        return PayloadValues(record_id, timestamp, text)


CONTRACT = ContractReader()


class JsonReader:
    """Any JSON object, its id and event time where the mapping says."""

    schema = None

    def __init__(self, paths: FieldPaths) -> None:
        self._paths = paths

    def read(self, data: bytes) -> PayloadValues:
        try:
            payload = _decode_json(data)
            text = data.decode()
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            raise not_json(data, exc) from None
        except RecursionError:
            raise Invalid(f"payload is {TOO_DEEP}") from None
        if too_deep(text):
            raise Invalid(f"payload is {TOO_DEEP}")
        try:
            return PayloadValues(
                self._paths.record_id(payload), self._paths.event_time(payload), text
            )
        except Invalid as exc:
            raise Invalid(f"payload: {exc}") from None


class SchemaReader:
    """A message in a topic schema's encoding, decoded with the revision it names."""

    def __init__(self, decoder: Decoder, encoding: str, paths: FieldPaths) -> None:
        self.schema = decoder.schema
        self._decoder = decoder
        self._encoding = encoding
        self._paths = paths

    def read(self, data: bytes) -> PayloadValues:
        decoder = self._decoder
        under = f"payload under schema {decoder.schema} ({self._encoding})"
        if decoder.codec is None:
            raise Invalid(f"{under}: {decoder.problem}")
        try:
            if self._encoding == "BINARY":
                payload: Any = decoder.codec.binary(data)
            else:
                payload = decoder.codec.json(data)
            record_id = self._paths.record_id(payload)
            timestamp = self._paths.event_time(payload)
            text = _encode(payload).decode()
        except Invalid as exc:
            raise Invalid(f"{under}: {exc}") from None
        except (TypeError, ValueError, msgspec.EncodeError) as exc:
            raise Invalid(f"{under}: not representable as JSON: {exc}") from None
        except RecursionError:
            raise Invalid(f"{under}: {TOO_DEEP}") from None
        if too_deep(text):
            raise Invalid(f"{under}: {TOO_DEEP}")
        return PayloadValues(record_id, timestamp, text)


class Payloads:
    """Chooses each message's reader: by the topic schema it names, else by the mapping."""

    def __init__(self, paths: FieldPaths, schemas: Schemas) -> None:
        self._paths = paths
        self._schemas = schemas
        self.plain: PayloadReader = CONTRACT if paths.is_contract else JsonReader(paths)
        # By (decoder, encoding): a few per revision, made once.
        self._readers: dict[tuple[Decoder, str], SchemaReader] = {}

    def ready(self, attributes: Mapping[str, str]) -> PayloadReader | None:
        """The reader, when choosing it needs no fetch: no schema, or a revision seen before."""
        ref = SchemaRef.named(attributes)
        if ref is None:
            return self.plain
        decoder = self._schemas.ready(ref)
        return None if decoder is None else self._reader(decoder, ref.encoding)

    async def reader(self, attributes: Mapping[str, str]) -> PayloadReader:
        """Raises SchemaUnavailable when the named revision cannot be fetched."""
        ref = SchemaRef.named(attributes)
        if ref is None:
            return self.plain
        unusable = ref.problem()
        if unusable is not None:
            # A malformed reference: its reader says so for each message, kept nowhere.
            return SchemaReader(unusable, ref.encoding or "no encoding", self._paths)
        return self._reader(await self._schemas.decoder(ref.name, ref.revision_id), ref.encoding)

    def _reader(self, decoder: Decoder, encoding: str) -> SchemaReader:
        reader = self._readers.get((decoder, encoding))
        if reader is None:
            reader = self._readers[decoder, encoding] = SchemaReader(decoder, encoding, self._paths)
        return reader
