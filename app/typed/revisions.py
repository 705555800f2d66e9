"""The typed fields of every schema revision this process decoded, by revision name.

The push path learns a revision's fields as it builds its decoder; a store looks
them up by the `schema` a record names, through a view that shares them and
fetches a revision this process never decoded (`Revisions(fetch, sharing=...)`,
given at construction). A JSON topic's declared schema is a revision named
`declared@<sha-256 prefix>`; one past a cap of the mapping is learned `unmapped`.

Design: docs/typed-columns.md#a-json-topics-declared-schema
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import fastavro
import msgspec

from app.typed.mapping import Field, OverCap, avro_fields

DECLARED = "declared@"

# Learns a revision by its name (into the fields the view shares); raises
# StoreUnavailable while the revision cannot be fetched, returns having
# learned nothing when there is no such revision.
Fetch = Callable[[str], Awaitable[None]]


class DeclaredSchemaError(ValueError):
    """The declared schema is no Avro record schema with fields; the message says why."""


@dataclass(slots=True)
class _Learned:
    """What every view of the same revisions shares."""

    fields: dict[str, tuple[Field, ...]] = field(default_factory=dict)
    # Revisions with no typed fields, and why (a cap of the mapping).
    unmapped: dict[str, str] = field(default_factory=dict)
    # The revision name records with no revision of their own are projected under.
    declared: str | None = None


class Revisions:
    """Revision name → typed fields; shared by the push path and the store."""

    def __init__(self, fetch: Fetch | None = None, *, sharing: Revisions | None = None) -> None:
        """`fetch` learns a revision `lookup` meets that was never learned here (without
        it, such a revision is unknown); `sharing`: the Revisions this is a view of."""
        self._learned: _Learned = sharing._learned if sharing is not None else _Learned()
        self._fetch = fetch

    @property
    def declared(self) -> str | None:
        """The revision name records with no revision of their own are projected under."""
        return self._learned.declared

    def revision_of(self, schema: str | None) -> str | None:
        """The revision a record naming `schema` (`Record.schema`) is projected under:
        its own, or else the declared one."""
        return schema if schema is not None else self.declared

    async def lookup(self, revision: str) -> tuple[Field, ...] | None:
        """The fields of `revision`, fetched if this process never decoded it; None
        when there is no such revision."""
        learned = self._learned
        fields = learned.fields.get(revision)
        if (
            fields is None
            and self._fetch is not None
            and not revision.startswith(DECLARED)
            and revision not in learned.unmapped
        ):
            await self._fetch(revision)
            fields = learned.fields.get(revision)
        return fields

    def learn(self, revision: str, fields: tuple[Field, ...]) -> None:
        self._learned.fields[revision] = fields

    def learn_unmapped(self, revision: str, reason: str) -> None:
        """`revision` decodes but has no typed fields, for `reason`."""
        self._learned.unmapped[revision] = reason

    def unmapped(self, revision: str) -> str | None:
        """Why `revision` has no typed fields, when it was learned to have none."""
        return self._learned.unmapped.get(revision)

    def fields(self, revision: str) -> tuple[Field, ...] | None:
        """The fields of `revision`, or None when it was never decoded here."""
        return self._learned.fields.get(revision)

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
        self._learned.declared = name
        return name
