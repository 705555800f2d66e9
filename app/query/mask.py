"""What readers who are not operators do not see: payload fields and attributes by name.

`RECORDLINE_MASK_FIELDS` names payload members, masked wherever an object in a
record's `data` has one (any depth); `RECORDLINE_MASK_ATTRIBUTES` names attributes.
A masked value reads MASKED. A rejection's payload is masked the same way where it
is JSON, withheld where it is not. Every read of a non-operator goes through a Reader
that masks (`ReadSide` in app.asgi): pages, streams, look-ups, exports, the console.

Design: docs/security.md#who-sees-what
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final, TypeVar

import msgspec

MASKED: Final = "[masked]"
# What a record's data reads as for a reader when it is nested too deeply to be masked.
WITHHELD: Final = "[withheld: nested too deeply to mask]"
_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.encode

T = TypeVar("T")


class Mask:
    """Masks the payload members `fields` and the attributes `attributes` name."""

    def __init__(self, fields: Iterable[str] = (), attributes: Iterable[str] = ()) -> None:
        self.fields = frozenset(fields)
        self.attributes = frozenset(attributes)
        # A member is named in JSON text as `"name"`, or with escapes (`"\u0065mail"`):
        # text with no such quoted name and no backslash holds none of them, and is
        # passed on as it is without being decoded.
        self._field_marks = tuple(_encode(name) for name in self.fields)
        self._attribute_marks = tuple(_encode(name) for name in self.attributes)

    def __bool__(self) -> bool:
        return bool(self.fields or self.attributes)

    def view(self, row: T) -> T:
        """`row` (a RecordView or RejectionView) with what it names masked."""
        changes: dict[str, Any] = {}
        attributes = getattr(row, "attributes", None)
        if self.attributes and isinstance(attributes, msgspec.Raw):
            masked = self._json(attributes, self._attribute_marks, self._attributes)
            if masked is not None:
                changes["attributes"] = masked
        data = getattr(row, "data", None)
        if self.fields and isinstance(data, msgspec.Raw):
            masked = self._json(data, self._field_marks, self._members)
            if masked is not None:
                changes["data"] = masked
        elif self.fields and isinstance(data, bytes):
            changes["data"] = self._received(data)
        record = getattr(row, "record", None)
        if record is not None:
            changes["record"] = self.view(record)
        return msgspec.structs.replace(row, **changes) if changes else row  # type: ignore[type-var]

    def _json(self, raw: msgspec.Raw, marks: tuple[bytes, ...], mask: Any) -> msgspec.Raw | None:
        text = bytes(raw)
        if not _may_name(text, marks):
            return None
        try:
            return msgspec.Raw(_encode(mask(_decode(text))))
        except RecursionError:
            # Nested deeper than the decoder or encoder go: withheld, said so.
            return msgspec.Raw(_encode(WITHHELD))

    def _attributes(self, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        return {k: MASKED if k in self.attributes else v for k, v in value.items()}

    def _members(self, value: Any) -> Any:
        """`value` with every member `fields` names MASKED, at any depth: walked with a
        list of its own, not the interpreter's stack, which a payload nested ~500 deep
        would exhaust."""
        fields = self.fields

        def copy(value: Any) -> Any:
            if isinstance(value, dict):
                return {k: MASKED if k in fields else v for k, v in value.items()}
            if isinstance(value, list):
                return list(value)
            return value

        top = copy(value)
        left = [top] if isinstance(top, dict | list) else []
        while left:
            node = left.pop()
            for key, member in list(node.items() if isinstance(node, dict) else enumerate(node)):
                if isinstance(member, dict | list):
                    node[key] = copied = copy(member)
                    left.append(copied)
        return top

    def _received(self, data: bytes) -> bytes:
        """A rejection's payload as received: as it is if it is JSON naming no masked
        member, masked if it is JSON that may, else withheld (b""). Text of another
        shape (a repr, YAML, a form) may hold a masked value under a name no JSON
        quotes, and bytes of another encoding under no name at all."""
        try:
            value = _decode(data)
            if not _may_name(data, self._field_marks):
                return data
            return _encode(self._members(value))
        except (msgspec.DecodeError, RecursionError):
            return b""


def _may_name(text: bytes, marks: tuple[bytes, ...]) -> bool:
    """Whether JSON `text` may name a member `marks` quote: one of them in it, or an
    escape, which may spell a name otherwise."""
    return b"\\" in text or any(mark in text for mark in marks)
