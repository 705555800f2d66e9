"""What a read keeps of each row (`select=`): fields by name and paths into the payload
and attributes as the filter language writes operands (`id`, `data.customer.id`,
`data["x y"]`, `attributes.origin`), read by its grammar (`app.store.where.operands`).

A projection changes which fields a row shows, never which rows or their order: made
of a page (masked first) as it is encoded, whose read leaves unread a `data` or
`attributes` it shows none of (`fields`; the page may end elsewhere, its cursor after
its last row). A path keeps the nested shape; one a row lacks is absent.

Design: docs/reading.md#choosing-fields
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any, Final

import msgspec

from app.errors import BadParameter, MaskedFilter
from app.store import where

PARAMETER: Final = "select"
# Entries of one selection, its text's bytes, and how deep a path goes (the filter
# language's own bound): a console's or a script's question.
MAX_ENTRIES: Final = 32
MAX_SELECT_BYTES: Final = 1024
MAX_PATH: Final = where.MAX_WHERE_PATH

_members = msgspec.json.Decoder(dict[str, msgspec.Raw]).decode
_rows = msgspec.json.Decoder(list[dict[str, msgspec.Raw]]).decode
_encode = msgspec.json.encode


@dataclasses.dataclass(frozen=True, slots=True)
class Entry:
    """One entry: a field (`field`, `path` empty) or a path inside `data` or
    `attributes`, as written (`text`)."""

    text: str
    field: str
    path: tuple[str, ...] = ()


def _tree_of(entries: Iterable[Entry]) -> dict[str, Any]:
    """field -> True (whole) or {member: subtree}; a whole field or member wins over a
    path inside it, whichever is named first."""
    tree: dict[str, Any] = {}
    for entry in entries:
        at = tree
        *through, last = (entry.field, *entry.path)
        for step in through:
            found = at.setdefault(step, {})
            if found is True:
                break
            at = found
        else:
            at[last] = True
    return tree


@dataclasses.dataclass(frozen=True)
class Selection:
    """What to keep of each row: `entries`, in the order given; `text` as it was given
    (what an encoding made of a page is kept under, beside the page)."""

    text: str
    entries: tuple[Entry, ...]
    _tree: dict[str, Any] = dataclasses.field(init=False, compare=False, hash=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_tree", _tree_of(self.entries))

    @property
    def fields(self) -> frozenset[str]:
        """The fields of a row it shows any of (whole or a path inside): a read needs
        no other (`Reader.page`'s `fields`)."""
        return frozenset(self._tree)

    def row(self, view: Any) -> dict[str, Any]:
        """`view` (a RecordView or RejectionView) with only what is selected: its fields
        in the view's order, a path's members nested, in the order first named."""
        shown: dict[str, Any] = {}
        for name in view.__struct_fields__:
            want = self._tree.get(name)
            if want is None:
                continue
            value = getattr(view, name)
            if want is True:
                shown[name] = value
                continue
            if isinstance(value, msgspec.Raw):
                inside = _inside(value, want)
                if inside is not None:
                    shown[name] = inside
        return shown

    def rows(self, body: bytes) -> list[dict[str, Any]]:
        """Each row of `body`, a JSON array of rows as a stream's chunk holds them (each
        encoded as its view is), with only what is selected: the same as `row` of each
        view, its values kept as their text."""
        tree = self._tree
        shown = []
        for members in _rows(body):
            row: dict[str, Any] = {}
            for name, value in members.items():
                want = tree.get(name)
                if want is True:
                    row[name] = value
                elif want is not None:
                    inside = _inside(value, want)
                    if inside is not None:
                        row[name] = inside
            shown.append(row)
        return shown

    def page(self, page: Any) -> dict[str, Any]:
        """A page (RecordsPage, RejectionsPage) with each row projected."""
        rows = "records" if hasattr(page, "records") else "rejections"
        return {
            rows: [self.row(view) for view in getattr(page, rows)],
            "next_page_token": page.next_page_token,
            "complete_until": page.complete_until,
        }

    def message(self, found: Any) -> dict[str, Any]:
        """A MessageView with its record projected (the rest is about the message)."""
        shown = {name: getattr(found, name) for name in found.__struct_fields__}
        if found.record is not None:
            shown["record"] = self.row(found.record)
        return shown

    def encoded(self, value: Any) -> bytes:
        """The JSON of what `row`, `page` or `message` made."""
        return _encode(value)


def _inside(raw: msgspec.Raw, want: dict[str, Any]) -> dict[str, Any] | None:
    """The members of the JSON object `raw` that `want` names, nested (None if `raw` is
    no object or holds none of them). Each value is kept as its text, unread."""
    try:
        members = _members(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    kept: dict[str, Any] = {}
    for name, sub in want.items():
        value = members.get(name)
        if value is None:
            continue
        if sub is True:
            kept[name] = value
        else:
            inner = _inside(value, sub)
            if inner is not None:
                kept[name] = inner
    return kept or None


def selection_of(
    text: str | None,
    fields: Iterable[str],
    *,
    payload: bool = True,
    parameter: str = PARAMETER,
) -> Selection | None:
    """The selection `text` says of rows with `fields` (None: no `select`, every field);
    `payload`: whether `data` is JSON to read paths in (a record's; a rejection's is the
    bytes received). BadParameter naming `parameter` and the entry for anything wrong."""
    if text is None:
        return None
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_SELECT_BYTES:
        raise BadParameter(parameter, f"{size:,} bytes; {MAX_SELECT_BYTES:,} at most")
    if not text.strip():
        raise BadParameter(parameter, "empty: name a field or a path, as `id,data.amount`")
    stripped = text.strip()
    if stripped.startswith(",") or stripped.endswith(","):
        raise BadParameter(parameter, "an empty entry (a comma at an end)")
    known = tuple(fields)
    read = where.operands(text, parameter, frozenset(known) | {"attributes"})
    if len(read) > MAX_ENTRIES:
        raise BadParameter(parameter, f"{len(read)} entries; {MAX_ENTRIES} at most")
    entries: list[Entry] = []
    for number, (operand, written, at) in enumerate(read, 1):
        if operand.root == "data" and operand.path and not payload:
            raise BadParameter(
                parameter,
                f"entry {number} ({written[:60]!r}, at character {at}): a rejection's `data` "
                "is the bytes received, base64, with no members",
            )
        entry = Entry(written, operand.root, operand.path)
        if any((e.field, e.path) == (entry.field, entry.path) for e in entries):
            raise BadParameter(
                parameter, f"entry {number} ({written[:60]!r}, at character {at}): named twice"
            )
        entries.append(entry)
    return Selection(text, tuple(entries))


def refuse_masked(selection: Selection | None, mask: Any, parameter: str = PARAMETER) -> None:
    """MaskedFilter (403) for an entry naming what `mask` (app.query.mask.Mask, or
    None) hides: a masked attribute, or a member a name masks or at or inside a masked
    path. A path that only holds a masked member (`data`, `data.customer` where
    `customer.email` is masked) is shown masked inside, as the whole row is."""
    if selection is None or mask is None:
        return
    for entry in selection.entries:
        if entry.field == "attributes" and entry.path and mask.masks_attribute(entry.path[0]):
            raise MaskedFilter(
                parameter, f"{entry.path[0]!r} is masked for readers who are not operators"
            )
        if entry.field == "data" and entry.path:
            hidden = mask.hides(entry.path)
            if hidden is not None:
                raise MaskedFilter(
                    parameter, f"{hidden!r} is masked for readers who are not operators"
                )
