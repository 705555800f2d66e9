"""What readers who are not operators do not see: payload members and attributes.

`RECORDLINE_MASK_FIELDS` names members (at any depth of a record's `data`) or paths
(`customer.email`, from its root), `RECORDLINE_MASK_ATTRIBUTES` attributes, each with
a mode: withheld, its first or last N characters, or a keyed hash that stays joinable.
JSON encoded again inside text is masked inside; text the mask cannot read that may
name one is withheld; a rejection's reason quotes no literal. Every read of a
non-operator goes through a Reader that masks (`ReadSide` in app.asgi).

Design: docs/security.md#who-sees-what
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final, TypeVar

import msgspec

from app.errors import BadParameter
from app.store import where
from app.store.producers import PRODUCER_ATTRIBUTE

MASKED: Final = "[masked]"
# What a record's data reads as for a reader when it is nested too deeply to be masked.
WITHHELD: Final = "[withheld: nested too deeply to mask]"
# What text inside a payload reads as when it opens as JSON does but is none the mask
# can read (a repr, JSON5, JSON cut short): its names cannot be found in it.
UNREADABLE: Final = "[withheld: not JSON the mask can read]"
# What stands for the characters a `firstN` or `lastN` mask leaves out.
ELIDED: Final = "…"
# The most characters a `firstN` or `lastN` mask may show.
MOST_SHOWN: Final = 64
# Text that opens so is read as JSON encoded again (an object, an array, or a string
# holding either): what a publisher that encodes twice sends, and what a reader decodes.
_OPENS_JSON: Final = ("{", "[", '"')
# A literal a reason quotes ('…' as Python's repr, "…" as JSON), withheld for readers.
_QUOTED: Final = re.compile(r"""(?<!\w)'(?:[^'\\]|\\.)*'(?!\w)|"(?:[^"\\]|\\.)*\"""", re.DOTALL)
_MODE: Final = re.compile(r"(withhold|hash|first([0-9]{1,3})|last([0-9]{1,3}))")
_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.encode

T = TypeVar("T")
# What a keyed hash reads as: this prefix, then 128 bits of HMAC-SHA256 in hex (a
# collision of two values is then a 2^-64 chance at 2^32 values).
PSEUDONYM_PREFIX: Final = "hmac:"
_PSEUDONYM_HEX: Final = 32
_PSEUDONYM: Final = re.compile(f"{PSEUDONYM_PREFIX}[0-9a-f]{{{_PSEUDONYM_HEX}}}")


class MaskError(ValueError):
    """A mask that names no member, or a mode there is not; `attributes` where it is
    the attributes' mask."""

    def __init__(self, message: str, *, attributes: bool = False) -> None:
        super().__init__(message)
        self.attributes = attributes


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


# Compared and hashed as itself (each of a mask's rules is one object): a walk keeps its
# place in the paths as (rule, step) pairs, hashed at every object of a payload.
@dataclass(frozen=True, slots=True, eq=False)
class Rule:
    """One masked member: `steps` from the payload's root (a path), or one name
    matched at any depth (`anywhere`), and what a reader sees of its value."""

    text: str
    steps: tuple[str, ...]
    anywhere: bool
    # "withhold", "hash", "first" or "last"; `keep` the characters the last two show.
    mode: str
    keep: int

    @classmethod
    def of(cls, text: str, *, paths: bool) -> Rule:
        """A setting's entry, `NAME`, `PATH` (where `paths`) or either then `:MODE`;
        MaskError for one that names nothing or no mode there is."""
        name, colon, mode = text.rpartition(":")
        if not colon:
            name, mode = text, "withhold"
        shape = _MODE.fullmatch(mode)
        if shape is None:
            raise MaskError(
                f"{text!r} names the mode {mode!r}: a mask's mode, after its last ':', is "
                "withhold, hash, firstN or lastN (N from 1 to 64)"
            )
        keep = int(shape.group(2) or shape.group(3) or 0)
        if mode[0] in "fl" and not 1 <= keep <= MOST_SHOWN:
            raise MaskError(f"{text!r} shows {keep} characters: from 1 to {MOST_SHOWN}")
        # A name as Unicode composes it (NFC): `é` is one code point or two, one name.
        name = unicodedata.normalize("NFC", name.strip())
        steps = tuple(name.split(".")) if paths else (name,)
        if not all(steps):
            raise MaskError(f"{text!r} names an empty member (a dot at an end, or two)")
        if len(steps) > 1 and any(step.isdigit() for step in steps):
            # `items.0.card` would mask nothing: a path walks through arrays, so no
            # step is an array's index, and a member named by digits is rare enough to
            # refuse rather than leave such a mask masking nothing.
            raise MaskError(
                f"{text!r} names a step by digits: a path walks through every element of "
                "an array on it (`items.card` masks each item's card)"
            )
        kind = mode.rstrip("0123456789")
        return cls(text, steps, len(steps) == 1, kind, keep)


@lru_cache(maxsize=64)
def _keyed(names: frozenset[str]) -> re.Pattern[str] | None:
    """A masked name followed by `:` or `=` (quoted or not: `'email': …`, `email=…`,
    `email: …`), or an XML element of that name (`<email>…`, `<email kind="work">…`),
    in text that is not JSON: a value the mask cannot find the end of."""
    if not names:
        return None
    either = "(?:" + "|".join(map(re.escape, sorted(names))) + ")"
    return re.compile(either + r"""['"]?\s*[:=]|<""" + either + r"[\s/>]")


def _spelled(names: Iterable[str]) -> frozenset[str]:
    """Each of `names` composed and decomposed."""
    return frozenset(spelled for name in names for spelled in (name, _decomposed(name)))


def _ends(at: _Pending) -> frozenset[str]:
    """The last members' names of the paths a walk at `at` is on, as they are spelled."""
    return _spelled(path.steps[-1] for path, _ in at)


def _from(at: _Pending, starts: _Pending) -> _Pending:
    """`at`, with each of `starts` begun again."""
    return tuple(dict.fromkeys((*at, *starts)))


def _marks(names: Iterable[str]) -> tuple[bytes, ...]:
    """How JSON spells each of `names` (composed or decomposed), unquoted."""
    return tuple(sorted(_encode(spelled)[1:-1] for spelled in _spelled(names)))


# Where a walk is in the paths masked: (rule, the step it waits for) pairs.
_Pending = tuple[tuple[Rule, int], ...]


class Mask:
    """Masks the payload members `fields` and the attributes `attributes` name, each
    `NAME[:MODE]` (a field also `PATH[:MODE]`); `pseudonyms` hashes a `hash` mode's."""

    def __init__(
        self,
        fields: Iterable[str] = (),
        attributes: Iterable[str] = (),
        pseudonyms: Pseudonyms | None = None,
    ) -> None:
        rules = [Rule.of(text, paths=True) for text in fields]
        try:
            named = [Rule.of(text, paths=False) for text in attributes]
        except MaskError as exc:
            raise MaskError(str(exc), attributes=True) from None
        for kind, spelled in (
            ("member", [".".join(rule.steps) for rule in rules]),
            ("attribute", [_attribute(rule.steps[0]) for rule in named]),
        ):
            twice = sorted({name for name in spelled if spelled.count(name) > 1})
            if twice:
                raise MaskError(
                    f"the {kind} {twice[0]!r} is masked twice", attributes=kind == "attribute"
                )
        if pseudonyms is None and any(rule.mode == "hash" for rule in [*rules, *named]):
            raise MaskError("a hash mode needs the system's key")
        self._pseudonyms = pseudonyms
        self._names = {rule.steps[0]: rule for rule in rules if rule.anywhere}
        self._paths: _Pending = tuple((rule, 0) for rule in rules if not rule.anywhere)
        self.fields = frozenset(self._names)
        # An attribute's name in lower case: an unwrapped push's attributes are HTTP
        # headers, whose names arrive lower-cased (`Client-IP` as `client-ip`).
        self._attribute_rules = {_attribute(rule.steps[0]): rule for rule in named}
        # A member is named in JSON text as `"name"`, or with escapes (`"\u0065mail"`):
        # text with no such quoted name and no backslash holds none of them, at any
        # depth (JSON inside a string holds `\"`), and is passed on without decoding.
        self._attribute_marks = tuple(_encode(name) for name in self._attribute_rules)
        # A payload's members are found inside text too (JSON encoded again, a repr, a
        # form), where a name is quoted otherwise or not at all: its text is read
        # wherever a name appears as JSON would spell it, with or without quotes. A
        # path's value is found by its last member's name.
        ends = self.fields | {rule.steps[-1] for rule, _ in self._paths}
        self._field_marks = _marks(ends)
        self._spellings = _spelled(self._names)
        self._keyed = _keyed(self._spellings)
        # Where a walk is, the names it finds as keys in text: a payload's strings
        # share a few places, which each build their pattern once.
        self._keyed_at = lru_cache(maxsize=256)(lambda at: _keyed(self._spellings | _ends(at)))

    def __bool__(self) -> bool:
        return bool(self._names or self._paths or self._attribute_rules)

    def masks_members(self) -> bool:
        """Whether it masks members of a payload: then any string in one may be shown
        masked inside (JSON again, text naming a member), as `_text` reads it."""
        return bool(self._names or self._paths)

    def masks_attribute(self, name: str) -> bool:
        """Whether the attribute `name` is masked, however it is cased."""
        return _attribute(name) in self._attribute_rules

    def names_in(self, path: Iterable[str]) -> str | None:
        """What of `path` (members from a payload's root) this mask masks, if any: a
        member of it a name masks, or a masked path that it starts or that starts it
        (a filter on either would tell what the mask hides)."""
        return self._path_masked(path, around=True)

    def hides(self, path: Iterable[str]) -> str | None:
        """What of `path` (members from a payload's root) is masked where a reader would
        see it whole: a member a name masks, or a masked path that it is or lies inside.
        (A path a masked one lies inside is shown masked inside, as the row is.)"""
        return self._path_masked(path, around=False)

    def hides_in_payload(self, path: Iterable[str]) -> str | None:
        """As `hides`, of `path` from a message's payload root rather than a record's
        data: a masked path is matched wherever it starts, as a rejection's payload is
        shown (`_received`), since a payload may hold a record's data as a member (the
        contract's `data`)."""
        return self._path_masked(path, around=False, anywhere=True)

    def _path_masked(
        self, path: Iterable[str], *, around: bool, anywhere: bool = False
    ) -> str | None:
        """A member of `path` a name masks, or a masked path it lies inside (or, `around`,
        one that lies inside it; `anywhere`, one starting at any of its steps)."""
        steps = list(path)
        named = next((step for step in steps if _named(step, self.fields)), None)
        if named is not None:
            return named
        # A member named with dots is as many steps of a path, as `_rule` masks it.
        composed = tuple(
            part for step in steps for part in unicodedata.normalize("NFC", step).split(".")
        )
        for rule, _ in self._paths:
            shared = min(len(rule.steps), len(composed)) if around else len(rule.steps)
            starts = range(len(composed) - shared + 1) if anywhere else (0,)
            if any(composed[i : i + shared] == rule.steps[:shared] for i in starts):
                return rule.text
        return None

    def told_by(self, expression: str) -> str | None:
        """What of the filter language's `expression` a reader would learn through
        this mask, said as a refusal; None if nothing: a masked attribute or member (or
        one inside a masked path) named, where members are masked a payload's text
        compared otherwise than `_whole` allows (text may hold a masked member inside,
        JSON again or a form), or a rejection's reason compared otherwise than whole with
        text that quotes nothing (a reader sees it `quiet`)."""
        for condition in where.conditions(where.parse(expression)):
            operand = condition.operand
            if self.keys(condition):
                continue  # what the reader was shown: answered by the service (`keyed`)
            if operand.root in ("attributes", "producer"):
                key = operand.path[0] if operand.path else PRODUCER_ATTRIBUTE
                if self.masks_attribute(key):
                    return f"{key!r} is masked for readers who are not operators"
            elif operand.root == "data":
                masked = self.names_in(operand.path)
                if masked is not None:
                    return f"{masked!r} is masked for readers who are not operators"
                texts = [v for v in condition.values if isinstance(v, str)]
                if self.masks_members() and texts and not self._whole(condition.op, texts):
                    return (
                        f"{operand} is compared by a part or an order of its text, or with text "
                        "a mask hides part of: a payload's text may hold a masked member inside, "
                        "so a reader compares it whole (=, !=, IN) with text shown whole"
                    )
            elif operand.root == "reason" and condition.op != "exists":
                texts = [str(v) for v in condition.values]
                if condition.op not in ("=", "!=", "in") or any(quiet(t) != t for t in texts):
                    return (
                        "a rejection's reason is shown with each literal it quotes withheld: "
                        "a reader compares it whole (=, !=, IN) with text that quotes none"
                    )
        return None

    def keys(self, condition: where.Condition) -> bool:
        """Whether `condition` compares what this mask shows by its keyed hash, whole,
        with such hashes (`=`, `!=`, `IN`): an attribute, or a member at a path no other
        rule masks part of. Such a question asks only which rows show a hash the reader
        was shown (it stays joinable); the service answers it, never a store, which
        does not hold the key."""
        if condition.op not in ("=", "!=", "in") or not all(
            isinstance(v, str) and _PSEUDONYM.fullmatch(v) for v in condition.values
        ):
            return False
        operand = condition.operand
        if operand.root in ("attributes", "producer"):
            key = operand.path[0] if operand.path else PRODUCER_ATTRIBUTE
            rule = self._attribute_rules.get(_attribute(key))
            return rule is not None and rule.mode == "hash"
        if operand.root != "data" or not operand.path:
            return False
        *above, last = operand.path
        if any(_named(step, self.fields) for step in above) or any(
            "." in step for step in operand.path
        ):
            return False  # inside a masked member, or steps a dot splits: not shown whole
        rule = self._names.get(_composed(last))
        path = tuple(_composed(step) for step in operand.path)
        for masked, _ in self._paths:
            shared = min(len(masked.steps), len(path))
            if masked.steps[:shared] == path[:shared]:
                if rule is not None or masked.steps != path:
                    return False  # a path around it, inside it, or a name besides
                rule = masked
        return rule is not None and rule.mode == "hash"

    def keyed(self, expression: where.Expression) -> where.Keyed | None:
        """The conditions of `expression` the service answers by keyed hash (`keys`),
        with the hash; None where there are none."""
        found = frozenset(c for c in where.conditions(expression) if self.keys(c))
        if not found or self._pseudonyms is None:
            return None
        return where.Keyed(found, self._pseudonyms.of)

    def _whole(self, op: str, texts: list[str]) -> bool:
        """Whether comparing a payload's text with `texts` by `op` tells a reader only
        what they see: equality with text this mask shows as it is (so the rows it
        keeps hold that text, shown whole); never a part or an order."""
        return op in ("=", "!=", "in") and all(self._text(text, ()) == text for text in texts)

    def parameter(self, name: str, value: str) -> str:
        """What an access record keeps of a request's parameter `name` (or its `path`):
        its value, or, where it filters on what this mask hides (`attribute=KEY:VALUE`,
        `field=PATH:VALUE`, `producer=ID` or `/v1/producers/ID` with the producer
        attribute masked, a `where=` that `told_by` refuses), the value's keyed hash
        (MASKED without a key)."""
        producers = self.masks_attribute(PRODUCER_ATTRIBUTE)
        if name == "where":
            # Its values are kept where it names nothing masked, else its keyed hash.
            try:
                told = self.told_by(value)
            except BadParameter:
                told = "no expression"
            return value if told is None else self._hidden(value)
        if name == "producer":
            return self._hidden(value) if producers else value
        if name == "path":
            # `/v1/producers/{id}`: a look-up by a producer's id, refused to readers.
            head, marker, rest = value.partition("/v1/producers/")
            return head + marker + self._hidden(rest) if producers and marker and rest else value
        before, colon, after = value.partition(":")
        if not colon:
            return value
        if name == "attribute" and self.masks_attribute(before):
            return f"{before}:{self._hidden(after)}"
        if name == "field" and self.names_in(before.split(".")) is not None:
            return f"{before}:{self._hidden(after)}"
        return value

    def _hidden(self, value: str) -> str:
        return MASKED if self._pseudonyms is None else self._pseudonyms.of(value)

    def view(self, row: T) -> T:
        """`row` (a RecordView, RejectionView or MessageView) with what it names masked."""
        changes: dict[str, Any] = {}
        attributes = getattr(row, "attributes", None)
        if self._attribute_rules and isinstance(attributes, msgspec.Raw):
            masked = self._json(attributes, self._attribute_marks, self._attributes, lowered=True)
            if masked is not None:
                changes["attributes"] = masked
        data = getattr(row, "data", None)
        if self._field_marks and isinstance(data, msgspec.Raw):
            masked = self._json(data, self._field_marks, self._root)
            if masked is not None:
                changes["data"] = masked
        elif self._field_marks and isinstance(data, bytes):
            changes["data"] = self._received(data)
        reason = getattr(row, "reason", None)
        if isinstance(reason, str):
            changes["reason"] = quiet(reason)
        record = getattr(row, "record", None)
        if record is not None:
            changes["record"] = self.view(record)
        return msgspec.structs.replace(row, **changes) if changes else row  # type: ignore[type-var]

    def _json(
        self,
        raw: msgspec.Raw,
        marks: tuple[bytes, ...],
        mask: Callable[[Any], tuple[Any, bool]],
        *,
        lowered: bool = False,
    ) -> msgspec.Raw | None:
        """`raw` masked, or None where it names nothing masked (it is served as sent).
        Whether it does is what `mask` found, never whether its result decodes equal:
        a member sent twice whose last value reads `[masked]` decodes as if masked,
        while the text as sent holds the first. Text with a member sent twice is served
        as it decodes, since the mask read the last value only."""
        text = bytes(raw)
        if not _may_name(_lower(text) if lowered else text, marks):
            return None
        try:
            masked, changed = mask(_decode(text))
            return msgspec.Raw(_encode(masked)) if changed or _twice(text) else None
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
        rules = self._attribute_rules
        named = {k: rules[_attribute(k)] for k in value if _attribute(k) in rules}
        masked = {k: self._shown(named[k], v) if k in named else v for k, v in value.items()}
        return masked, bool(named)

    def _shown(self, rule: Rule, value: Any) -> Any:
        """What a reader sees of a masked member's `value`: MASKED, its keyed hash, or
        its first or last characters (of its JSON where it is not text), MASKED where
        those would be half of it or more."""
        if rule.mode == "withhold":
            return MASKED
        if rule.mode == "hash":
            assert self._pseudonyms is not None  # a hash rule is refused without them
            return self._pseudonyms.of(value)
        text = value if isinstance(value, str) else _encode(value).decode()
        if len(text) < 2 * rule.keep:
            return MASKED
        return text[: rule.keep] + ELIDED if rule.mode == "first" else ELIDED + text[-rule.keep :]

    def _root(self, value: Any) -> tuple[Any, bool]:
        return self._masked(value, self._paths)

    def _rule(self, key: str, at: _Pending) -> tuple[Rule | None, _Pending]:
        """The rule masking member `key` of an object the walk reached at `at`, and
        where the walk is in the paths below it."""
        rule = self._names.get(key)
        if rule is None and not key.isascii():
            rule = self._names.get(unicodedata.normalize("NFC", key))
        if rule is not None or not at:
            return rule, ()
        composed = key if key.isascii() else unicodedata.normalize("NFC", key)
        below: list[tuple[Rule, int]] = []
        # A member named with some of the path's dots (`{"customer.email": …}`, or
        # `{"customer.address": {"zip": …}}` for `customer.address.zip`) is as many steps.
        named = (composed,) if "." not in composed else tuple(composed.split("."))
        for path, step in at:
            if path.steps[step : step + len(named)] == named:
                if step + len(named) == len(path.steps):
                    return path, ()
                below.append((path, step + len(named)))
        return None, tuple(below)

    def _masked(self, value: Any, at: _Pending, *, anywhere: bool = False) -> tuple[Any, bool]:
        """`value`, reached at `at` in the masked paths, masked, and whether a member
        was masked or a text changed; `anywhere`, each path is masked wherever it
        starts, not only from the root. Walked with a list of its own, not the
        interpreter's stack, which a payload nested ~500 deep would exhaust (JSON inside
        text goes one call deeper a level, and each level doubles its backslashes: a 10
        MB payload holds at most ~23)."""
        changed = False

        def text(member: str, at: _Pending) -> str:
            nonlocal changed
            seen = self._text(member, _from(at, self._paths) if anywhere else at, anywhere)
            changed = changed or seen is not member
            return seen

        if isinstance(value, str):
            return text(value, at), changed
        if not isinstance(value, dict | list):
            return value, False
        top = dict(value) if isinstance(value, dict) else list(value)
        left: list[tuple[Any, _Pending]] = [(top, at)]
        while left:
            node, here = left.pop()
            if anywhere:
                here = _from(here, self._paths)
            pairs = node.items() if isinstance(node, dict) else enumerate(node)
            for key, member in list(pairs):
                below = here
                if isinstance(node, dict):
                    rule, below = self._rule(key, here)
                    if rule is not None:
                        node[key] = self._shown(rule, member)
                        changed = True
                        continue
                if isinstance(member, dict | list):
                    copied = dict(member) if isinstance(member, dict) else list(member)
                    node[key] = copied
                    left.append((copied, below))
                elif isinstance(member, str):
                    node[key] = text(member, below)
        return top, changed

    def _text(self, text: str, at: _Pending, anywhere: bool = False) -> str:
        """Text inside a payload, reached at `at`: masked inside where it is JSON again
        (as it was where that masks nothing), withheld where it opens as JSON but is
        none the mask can read, or where it is text of another shape naming a masked
        member as a key."""
        if not at and not self._names:
            # No path goes on below here, and no name masks anywhere: nothing to find.
            return text
        if text.lstrip()[:1] not in _OPENS_JSON:
            keyed = self._keyed if not at else self._keyed_at(at)
            return UNREADABLE if keyed is not None and keyed.search(_composed(text)) else text
        raw = text.encode()
        if not _may_name(raw, self._field_marks):
            return text
        try:
            masked, changed = self._masked(_decode(raw), at, anywhere=anywhere)
        except msgspec.DecodeError:
            return UNREADABLE
        except RecursionError:
            return WITHHELD
        if not changed and not _twice(raw):
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
            # A path is masked wherever it starts: the payload is not known to be a
            # record's `data` (the contract's is a member of it), nor of any shape.
            masked, changed = self._masked(value, self._paths, anywhere=True)
            return _encode(masked) if changed or _twice(data) else data
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


def _twice(text: bytes) -> bool:
    """Whether JSON `text` has an object with a member sent twice: it decodes as the
    last, which is what the mask read, so the text as sent would show the first. Also
    where it cannot tell (nested too deeply), so that what is served is what was read."""
    found = False

    def members(pairs: list[tuple[str, Any]]) -> None:
        nonlocal found
        found = found or len({name for name, _ in pairs}) < len(pairs)

    try:
        json.loads(text, object_pairs_hook=members)
    except (ValueError, RecursionError):
        return True
    return found


def _attribute(name: str) -> str:
    """An attribute's name as masks compare it: lower-cased, composed (NFC)."""
    return name.lower() if name.isascii() else unicodedata.normalize("NFC", name.lower())


def _lower(text: bytes) -> bytes:
    return text.lower() if text.isascii() else text.decode(errors="replace").lower().encode()


def _composed(text: str) -> str:
    return text if text.isascii() else unicodedata.normalize("NFC", text)
