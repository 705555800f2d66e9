"""The typed fields of every schema revision this process decoded, by revision name.

The push path learns a revision's fields as it builds its decoder; a store looks
them up by the `schema` a record names. A JSON topic's schema declared by its
system (`RECORDLINE_JSON_TOPIC_SCHEMA`) is a revision named `declared@<sha-256
prefix>`. The exporter may meet a revision this process never saw: `lookup` then
learns it through the wiring's `fetch`. A revision past a cap of the mapping is
learned as `unmapped`, with the reason its records' projection errors give.

Design: docs/typed-columns.md#a-json-topics-declared-schema
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable

import fastavro
import msgspec

from app.typed.mapping import Field, OverCap, avro_fields

DECLARED = "declared@"

# Learns a revision by its name (into the Revisions it was given to); raises
# StoreUnavailable while the revision cannot be fetched, returns having
# learned nothing when there is no such revision.
Fetch = Callable[[str], Awaitable[None]]


class DeclaredSchemaError(ValueError):
    """The declared schema is no Avro record schema with fields; the message says why."""


class Revisions:
    """Revision name → typed fields; shared by the push path and the store."""

    def __init__(self) -> None:
        self._fields: dict[str, tuple[Field, ...]] = {}
        # Revisions with no typed fields, and why (a cap of the mapping).
        self._unmapped: dict[str, str] = {}
        # The revision name records with no revision of their own are projected under.
        self.declared: str | None = None
        self._fetch: Fetch | None = None

    def fetch_with(self, fetch: Fetch) -> None:
        self._fetch = fetch

    def revision_of(self, schema: str | None) -> str | None:
        """The revision a record naming `schema` (`Record.schema`) is projected under:
        its own, or else the declared one."""
        return schema if schema is not None else self.declared

    async def lookup(self, revision: str) -> tuple[Field, ...] | None:
        """The fields of `revision`, fetched if this process never decoded it; None
        when there is no such revision."""
        fields = self._fields.get(revision)
        if (
            fields is None
            and self._fetch is not None
            and not revision.startswith(DECLARED)
            and revision not in self._unmapped
        ):
            await self._fetch(revision)
            fields = self._fields.get(revision)
        return fields

    def learn(self, revision: str, fields: tuple[Field, ...]) -> None:
        self._fields[revision] = fields

    def learn_unmapped(self, revision: str, reason: str) -> None:
        """`revision` decodes but has no typed fields, for `reason`."""
        self._unmapped[revision] = reason

    def unmapped(self, revision: str) -> str | None:
        """Why `revision` has no typed fields, when it was learned to have none."""
        return self._unmapped.get(revision)

    def fields(self, revision: str) -> tuple[Field, ...] | None:
        """The fields of `revision`, or None when it was never decoded here."""
        return self._fields.get(revision)

    def declare(self, schema: str) -> str:
        """Project records that name no revision onto the fields of this Avro record
        schema (its JSON text); returns the revision name they are projected under."""
        try:
            definition = msgspec.json.decode(schema)
        except msgspec.DecodeError as exc:
            raise DeclaredSchemaError(f"not JSON: {exc}") from None
        except RecursionError:
            raise DeclaredSchemaError("nested too deeply to read") from None
        if not isinstance(definition, dict) or definition.get("type") != "record":
            raise DeclaredSchemaError('an Avro schema of `"type": "record"` is expected')
        try:
            fastavro.parse_schema(definition)  # the schema a publisher's Avro would be
            fields = avro_fields(definition)
        except OverCap as exc:
            raise DeclaredSchemaError(str(exc)) from None
        except RecursionError:
            raise DeclaredSchemaError("nested too deeply to read") from None
        except (fastavro.schema.SchemaParseException, KeyError, TypeError, ValueError) as exc:
            why = f"{type(exc).__name__}: {exc}"
            raise DeclaredSchemaError(f"not an Avro record schema: {why}") from None
        if not fields:
            raise DeclaredSchemaError("the record declares no fields")
        # The canonical text: the same schema, however it is spaced, is one revision.
        canonical = msgspec.json.encode(definition, order="sorted")
        name = DECLARED + hashlib.sha256(canonical).hexdigest()[:16]
        self.learn(name, fields)
        self.declared = name
        return name
