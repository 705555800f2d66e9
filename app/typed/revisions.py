"""The typed fields of every schema revision this process decoded, by revision name.

The push path learns a revision's fields as it builds the revision's decoder;
a store that projects typed columns looks them up by the `schema` a record
names (`projects/P/schemas/S@REVISION`). Revisions are immutable, so an entry
never changes once learned.
"""

from __future__ import annotations

from app.typed.mapping import Field


class Revisions:
    """Revision name → typed fields; shared by the push path and the store."""

    def __init__(self) -> None:
        self._fields: dict[str, tuple[Field, ...]] = {}

    def learn(self, revision: str, fields: tuple[Field, ...]) -> None:
        self._fields[revision] = fields

    def fields(self, revision: str) -> tuple[Field, ...] | None:
        """The fields of `revision`, or None when it was never decoded here."""
        return self._fields.get(revision)
