"""What readers who are not operators do not see: payload fields and attributes by name.

`RECORDLINE_MASK_FIELDS` names payload members, masked (MASKED) at any depth of a
record's `data`, and inside its text where that is JSON encoded again; text the mask
cannot read that may name one is withheld. `RECORDLINE_MASK_ATTRIBUTES` names
attributes. A rejection's payload is masked the same way where it is JSON, withheld
where not; its reason quotes no literal. Every read of a non-operator goes through a
Reader that masks (`ReadSide` in app.asgi): pages, streams, look-ups, exports, console.

Design: docs/security.md#who-sees-what
"""

from __future__ import annotations

import hashlib
import hmac
import re
import unicodedata
from collections.abc import Iterable
from typing import Any, Final, TypeVar

import msgspec

MASKED: Final = "[masked]"
# What a record's data reads as for a reader when it is nested too deeply to be masked.
WITHHELD: Final = "[withheld: nested too deeply to mask]"
# What text inside a payload reads as when it opens as JSON does but is none the mask
# can read (a repr, JSON5, JSON cut short): its names cannot be found in it.
UNREADABLE: Final = "[withheld: not JSON the mask can read]"
# Text that opens so is read as JSON encoded again (an object, an array, or a string
# holding either): what a publisher that encodes twice sends, and what a reader decodes.
_OPENS_JSON: Final = ("{", "[", '"')
# A literal a reason quotes ('…' as Python's repr, "…" as JSON), withheld for readers.
_QUOTED: Final = re.compile(r"""(?<!\w)'(?:[^'\\]|\\.)*'(?!\w)|"(?:[^"\\]|\\.)*\"""", re.DOTALL)
_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.encode

T = TypeVar("T")
# What a keyed hash reads as: this prefix, then 128 bits of HMAC-SHA256 in hex (a
# collision of two values is then a 2^-64 chance at 2^32 values).
PSEUDONYM_PREFIX: Final = "hmac:"
_PSEUDONYM_HEX: Final = 32


class Pseudonyms:
    """A value's keyed hash (HMAC-SHA256 with a system's own key): the same value reads
    the same everywhere a reader sees it, so it stays joinable, and no one without the
    key can tell a guess's hash (a plain hash of an e-mail is found by hashing guesses)."""

    def __init__(self, secret: str) -> None:
        # A key of its own, derived from the system's secret, never that secret itself.
        self._key = hmac.new(secret.encode(), b"recordline mask", hashlib.sha256).digest()

    def of(self, value: Any) -> str:
        """`value`'s pseudonym: of its text if it is text, else of its JSON."""
        data = value.encode() if isinstance(value, str) else _encode(value)
        digest = hmac.new(self._key, data, hashlib.sha256).hexdigest()
        return PSEUDONYM_PREFIX + digest[:_PSEUDONYM_HEX]


class Mask:
    """Masks the payload members `fields` and the attributes `attributes` name."""

    def __init__(self, fields: Iterable[str] = (), attributes: Iterable[str] = ()) -> None:
        # A name as Unicode composes it (NFC): `é` is one code point or two, one name.
        self.fields = frozenset(unicodedata.normalize("NFC", name) for name in fields)
        self.attributes = frozenset(attributes)
        # An attribute's name in lower case: an unwrapped push's attributes are HTTP
        # headers, whose names arrive lower-cased (`Client-IP` as `client-ip`).
        self._attributes_lowered = frozenset(name.lower() for name in self.attributes)
        # A member is named in JSON text as `"name"`, or with escapes (`"\u0065mail"`):
        # text with no such quoted name and no backslash holds none of them, at any
        # depth (JSON inside a string holds `\"`), and is passed on without decoding.
        self._attribute_marks = tuple(_encode(name) for name in self._attributes_lowered)
        # A payload's members are found inside text too (JSON encoded again, a repr, a
        # form), where a name is quoted otherwise or not at all: its text is read
        # wherever a name appears as JSON would spell it, with or without quotes.
        spellings = sorted(
            {spelled for name in self.fields for spelled in (name, _decomposed(name))}
        )
        self._field_marks = tuple(_encode(spelled)[1:-1] for spelled in spellings)
        # A masked name followed by `:` or `=` (quoted or not: `'email': …`,
        # `email=…`, `email: …`), or an XML element of that name (`<email>…`,
        # `<email kind="work">…`), in text that is not JSON: a value the mask cannot
        # find the end of, so the whole text is withheld.
        either = "(?:" + "|".join(map(re.escape, spellings)) + ")"
        self._keyed = (
            re.compile(either + r"""['"]?\s*[:=]|<""" + either + r"[\s/>]") if self.fields else None
        )

    def __bool__(self) -> bool:
        return bool(self.fields or self.attributes)

    def masks_attribute(self, name: str) -> bool:
        """Whether the attribute `name` is masked, however it is cased."""
        return name.lower() in self._attributes_lowered

    def names_in(self, path: Iterable[str]) -> str | None:
        """The first member of `path` (from a payload's root) this mask masks, if any."""
        return next((step for step in path if _named(step, self.fields)), None)

    def view(self, row: T) -> T:
        """`row` (a RecordView, RejectionView or MessageView) with what it names masked."""
        changes: dict[str, Any] = {}
        attributes = getattr(row, "attributes", None)
        if self.attributes and isinstance(attributes, msgspec.Raw):
            masked = self._json(attributes, self._attribute_marks, self._attributes, lowered=True)
            if masked is not None:
                changes["attributes"] = masked
        data = getattr(row, "data", None)
        if self.fields and isinstance(data, msgspec.Raw):
            masked = self._json(data, self._field_marks, self._masked)
            if masked is not None:
                changes["data"] = masked
        elif self.fields and isinstance(data, bytes):
            changes["data"] = self._received(data)
        reason = getattr(row, "reason", None)
        if isinstance(reason, str):
            changes["reason"] = quiet(reason)
        record = getattr(row, "record", None)
        if record is not None:
            changes["record"] = self.view(record)
        return msgspec.structs.replace(row, **changes) if changes else row  # type: ignore[type-var]

    def _json(
        self, raw: msgspec.Raw, marks: tuple[bytes, ...], mask: Any, *, lowered: bool = False
    ) -> msgspec.Raw | None:
        """`raw` masked, or None where it names nothing masked (it is served as sent).
        Whether it does is what `mask` found, never whether its result decodes equal:
        a member sent twice whose last value reads `[masked]` decodes as if masked,
        while the text as sent holds the first."""
        text = bytes(raw)
        if not _may_name(_lower(text) if lowered else text, marks):
            return None
        try:
            masked, changed = mask(_decode(text))
            return msgspec.Raw(_encode(masked)) if changed else None
        except msgspec.DecodeError:
            # Stored as sent without being read (the contract's `data`), and not JSON
            # this decoder holds (a number beyond a float, an integer of thousands of
            # digits): its names cannot be found in it.
            return msgspec.Raw(_encode(UNREADABLE))
        except RecursionError:
            # Nested deeper than the decoder or encoder go: withheld, said so.
            return msgspec.Raw(_encode(WITHHELD))

    def _attributes(self, value: Any) -> tuple[Any, bool]:
        if not isinstance(value, dict):
            return value, False
        named = {k for k in value if self.masks_attribute(k)}
        return {k: MASKED if k in named else v for k, v in value.items()}, bool(named)

    def _members(self, value: Any) -> Any:
        """`value` with every member `fields` names MASKED, at any depth, and inside any
        text that is JSON again: walked with a list of its own, not the interpreter's
        stack, which a payload nested ~500 deep would exhaust (JSON inside text goes
        one call deeper a level, and each level doubles its backslashes: a 10 MB
        payload holds at most ~23)."""
        return self._masked(value)[0]

    def _masked(self, value: Any) -> tuple[Any, bool]:
        """`_members(value)`, and whether it masked a member or changed a text."""
        fields = self.fields
        changed = False

        def text(member: str) -> str:
            nonlocal changed
            seen = self._text(member)
            changed = changed or seen is not member
            return seen

        def copy(value: Any) -> Any:
            nonlocal changed
            if isinstance(value, dict):
                named = {k for k in value if _named(k, fields)}
                changed = changed or bool(named)
                return {k: MASKED if k in named else v for k, v in value.items()}
            if isinstance(value, list):
                return list(value)
            if isinstance(value, str):
                return text(value)
            return value

        top = copy(value)
        left = [top] if isinstance(top, dict | list) else []
        while left:
            node = left.pop()
            for key, member in list(node.items() if isinstance(node, dict) else enumerate(node)):
                if isinstance(member, dict | list):
                    node[key] = copied = copy(member)
                    left.append(copied)
                elif isinstance(member, str):
                    node[key] = text(member)
        return top, changed

    def _text(self, text: str) -> str:
        """Text inside a payload: masked inside where it is JSON again (as it was where
        that masks nothing), withheld where it opens as JSON but is none the mask can
        read, or where it is text of another shape naming a masked member as a key."""
        if text.lstrip()[:1] not in _OPENS_JSON:
            keyed = self._keyed
            return UNREADABLE if keyed is not None and keyed.search(_composed(text)) else text
        raw = text.encode()
        if not _may_name(raw, self._field_marks):
            return text
        try:
            masked, changed = self._masked(_decode(raw))
        except msgspec.DecodeError:
            return UNREADABLE
        except RecursionError:
            return WITHHELD
        if not changed:
            return text
        try:
            return _encode(masked).decode()
        except RecursionError:
            return WITHHELD

    def _received(self, data: bytes) -> bytes:
        """A rejection's payload as received: as it is if it is JSON naming no masked
        member, masked if it is JSON that may, else withheld (b""). Text of another
        shape (a repr, YAML, a form) may hold a masked value under a name no JSON
        quotes, and bytes of another encoding under no name at all."""
        try:
            value = _decode(data)
            if not _may_name(data, self._field_marks):
                return data
            masked, changed = self._masked(value)
            return _encode(masked) if changed else data
        except (msgspec.DecodeError, RecursionError):
            return b""


def quiet(reason: str) -> str:
    """A rejection's reason with every literal it quotes withheld: the reasons this
    service writes name rules and paths (in backticks), never values, but a decoder's
    own words (protobuf's, Avro's) may quote what it could not read."""
    return _QUOTED.sub("'…'", reason)


def _decomposed(name: str) -> str:
    return unicodedata.normalize("NFD", name)


def _named(key: str, names: frozenset[str]) -> bool:
    """Whether `key` is one of `names`, however Unicode composes it."""
    return key in names or (not key.isascii() and unicodedata.normalize("NFC", key) in names)


def _may_name(text: bytes, marks: tuple[bytes, ...]) -> bool:
    """Whether JSON `text` may name a member `marks` spell: one of them in it (as it
    is, or composed as NFC: a Kelvin sign is a K, an Angstrom sign an Å, however its
    accents are split), or an escape, which may spell a name otherwise."""
    if b"\\" in text or any(mark in text for mark in marks):
        return True
    if text.isascii():
        return False
    composed = _composed(text.decode(errors="replace")).encode()
    return any(mark in composed for mark in marks)


def _lower(text: bytes) -> bytes:
    return text.lower() if text.isascii() else text.decode(errors="replace").lower().encode()


def _composed(text: str) -> str:
    return text if text.isascii() else unicodedata.normalize("NFC", text)
