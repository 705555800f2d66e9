"""The filter language (`where=` on every read): parsed once, matched in memory, and
compiled to each store's SQL through one table of dialects.

Every condition is true or false on every row, in memory and in SQL alike (a
comparison holds only where the operand is there and of the literal's type; each SQL
term is wrapped in COALESCE), so `matches` is the oracle each store is held to. An
expression is input: bounded in text, depth and conditions; nothing it says reaches
SQL but as a bound parameter or a column name from a fixed set.

Design: docs/reading.md#the-filter-language
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
from collections.abc import Callable, Iterator
from typing import Any, Final, TypeAlias

import lark
import msgspec

from app.errors import BadParameter
from app.records import (
    RFC3339_PATTERN,
    AwareDatetime,
    Record,
    Rejection,
    TimeOutOfRange,
    micros,
)
from app.store.producers import PRODUCER_ATTRIBUTE

# The text of an expression (UTF-8): a page token carries it, within the filter's
# MAX_FILTER_BYTES (app/store/filters.py).
MAX_WHERE_BYTES: Final = 1024
# Conditions in one expression (each value of an IN counts), and how deep NOT, AND and
# OR nest (parentheses alone add no level): a console's or a script's question.
MAX_WHERE_CONDITIONS: Final = 32
MAX_WHERE_DEPTH: Final = 12
# Members in a path into the payload (BigQuery's JSON nests deeper; a question rarely).
MAX_WHERE_PATH: Final = 15

PARAMETER: Final = "where"
RFC3339: Final = re.compile(RFC3339_PATTERN)
_decode_time: Final = msgspec.json.Decoder(AwareDatetime).decode

# The operands every row has, and which listing each is on.
RECORD_COLUMNS: Final = frozenset({"id", "timestamp"})
REJECTION_COLUMNS: Final = frozenset({"reason"})
STRING_COLUMNS: Final = frozenset({"id", "message_id", "reason"})
TIME_COLUMNS: Final = frozenset({"publish_time", "ingest_time", "timestamp"})
ROOTS: Final = STRING_COLUMNS | TIME_COLUMNS | {"data", "attributes", "producer"}

_GRAMMAR: Final = r"""
?start: disjunction
?disjunction: conjunction (_OR conjunction)*
?conjunction: negation (_AND negation)*
?negation: _NOT negation -> not_
    | "(" disjunction ")"
    | condition
?condition: operand COMPARE literal -> compare
    | operand _IN "(" literal ("," literal)* ")" -> in_
    | operand _STARTS _WITH STRING -> prefix
    | operand _ENDS _WITH STRING -> suffix
    | operand _CONTAINS STRING -> contains
    | _EXISTS operand -> exists
operand: NAME ("." NAME | "[" STRING "]")*
selection: operand ("," operand)*
?literal: STRING | NUMBER | TRUE | FALSE

COMPARE: "=" | "!=" | "<=" | ">=" | "<" | ">"
_OR.2: /or\b/i
_AND.2: /and\b/i
_NOT.2: /not\b/i
_IN.2: /in\b/i
_STARTS.2: /starts\b/i
_WITH.2: /with\b/i
_ENDS.2: /ends\b/i
_CONTAINS.2: /contains\b/i
_EXISTS.2: /exists\b/i
TRUE.2: /true\b/i
FALSE.2: /false\b/i
NAME: /[A-Za-z_][A-Za-z0-9_]*/
STRING: /"(?:[^"\\\x00-\x1f]|\\.)*"/ | /'(?:[^'\x00-\x1f]|'')*'/
NUMBER: /-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?/
%ignore /[ \t\r\n]+/
"""
_PARSER: Final = lark.Lark(_GRAMMAR, parser="lalr", lexer="contextual", propagate_positions=False)
# The same grammar's operands, comma-separated, each with where it starts (`operands`).
_OPERANDS: Final = lark.Lark(
    _GRAMMAR, parser="lalr", lexer="contextual", start="selection", propagate_positions=True
)

Literal = str | float | bool


@dataclasses.dataclass(frozen=True, slots=True)
class Operand:
    """What a condition reads: `root` (one of ROOTS) and, for `data` and
    `attributes`, the members below it."""

    root: str
    path: tuple[str, ...] = ()

    def __str__(self) -> str:
        return self.root + "".join(
            f".{m}" if _PLAIN.fullmatch(m) else f"[{msgspec.json.encode(m).decode()}]"
            for m in self.path
        )


# A member written `.name` (any other is written `["…"]`).
_PLAIN: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclasses.dataclass(frozen=True, slots=True)
class Condition:
    """`operand` `op` `values`: op is a COMPARE, `in`, `prefix`, `suffix`, `contains`
    (one value or several) or `exists` (none)."""

    operand: Operand
    op: str
    values: tuple[Literal, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class Not:
    term: Expression


@dataclasses.dataclass(frozen=True, slots=True)
class All:
    terms: tuple[Expression, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class Any_:
    terms: tuple[Expression, ...]


Expression: TypeAlias = Condition | Not | All | Any_


def parse(text: str, listing: str | None = None) -> Expression:
    """The expression `text` says, checked for `listing` (`records`, `rejections`;
    None: for either); BadParameter (`where`) naming the first thing wrong."""
    return _parsed(text, listing)


@functools.lru_cache(maxsize=512)
def _parsed(text: str, listing: str | None) -> Expression:
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_WHERE_BYTES:
        raise BadParameter(PARAMETER, f"{size:,} bytes; {MAX_WHERE_BYTES:,} at most")
    if not text.strip():
        raise BadParameter(PARAMETER, "empty: give a condition, as `attributes.region = 'eu'`")
    try:
        tree = _PARSER.parse(text)
    except lark.exceptions.UnexpectedInput as exc:
        raise BadParameter(PARAMETER, _syntax_error(text, exc)) from None
    _bounded(tree)
    expression = _built(tree)
    found = list(conditions(expression))
    if sum(max(1, len(c.values)) for c in found) > MAX_WHERE_CONDITIONS:
        raise BadParameter(
            PARAMETER, f"more than {MAX_WHERE_CONDITIONS} conditions (each value of IN counts)"
        )
    for condition in found:
        _check(condition, listing)
    return expression


def operands(text: str, parameter: str, roots: frozenset[str]) -> list[tuple[Operand, str, int]]:
    """The comma-separated operands `text` names, written as an expression writes them
    (`id`, `data.a["b c"]`, `attributes.KEY`; `attributes` too, whole), roots among
    `roots`: each with its text
    and the character it starts at (from 1). BadParameter naming `parameter` and where
    for the first thing wrong: a syntax error at its character, an operand by its entry."""
    try:
        tree = _OPERANDS.parse(text)
    except lark.exceptions.UnexpectedInput as exc:
        said = _syntax_error(text, exc)
        if getattr(exc, "token", None) is not None and str(exc.token) == ",":  # type: ignore[attr-defined]
            said += " (an empty entry: two commas, or one at an end)"
        raise BadParameter(parameter, said) from None
    found = []
    for number, node in enumerate(tree.children, 1):
        assert isinstance(node, lark.Tree)  # the grammar's `selection` holds operands
        start, end = node.meta.start_pos, node.meta.end_pos
        written = text[start:end]
        try:
            read = _operand(node, parameter, roots, whole=True)
        except BadParameter as exc:
            detail = str(exc.detail).removeprefix(f"{parameter}: ").removeprefix(f"{PARAMETER}: ")
            raise BadParameter(
                parameter, f"entry {number} ({written[:60]!r}, at character {start + 1}): {detail}"
            ) from None
        found.append((read, written, start + 1))
    return found


def _syntax_error(text: str, exc: lark.exceptions.UnexpectedInput) -> str:
    at = getattr(exc, "pos_in_stream", None)
    token = getattr(exc, "token", None)
    expected = getattr(exc, "expected", None) or getattr(exc, "allowed", None) or set()
    wanted = list(dict.fromkeys(_WANTED[t] for t in sorted(expected) if t in _WANTED))
    said = f"; expected {' or '.join(wanted)}" if wanted else ""
    if at is None or (token is not None and token.type == "$END"):
        return f"the expression ends early{said or ': a condition or `)` is missing'}"
    shown = text[at : at + 20]
    if isinstance(exc, lark.exceptions.UnexpectedCharacters) and not wanted:
        return f"a syntax error at character {at + 1} ({shown!r}): no word, name or value starts so"
    return f"a syntax error at character {at + 1} ({shown!r}){said or ': not expected there'}"


# What a parser's terminal stands for, as a syntax error names what was expected.
_VALUE: Final = "a value (a string in quotes, a number, true or false)"
_TEST: Final = "a comparison (=, !=, <, <=, >, >=, IN, STARTS WITH, ENDS WITH, CONTAINS)"
_WANTED: Final = {
    "STRING": _VALUE,
    "NUMBER": _VALUE,
    "TRUE": _VALUE,
    "FALSE": _VALUE,
    "COMPARE": _TEST,
    "_IN": _TEST,
    "_STARTS": _TEST,
    "_ENDS": _TEST,
    "_CONTAINS": _TEST,
    "NAME": "an operand (data.…, attributes.…, id, producer, …)",
    "_EXISTS": "an operand (data.…, attributes.…, id, producer, …)",
    "_AND": "AND, OR or `)`",
    "_OR": "AND, OR or `)`",
    "RPAR": "AND, OR or `)`",
    "LPAR": "`(`",
}


def _bounded(tree: lark.Tree[Any]) -> None:
    # Depth measured without recursion, before anything recursive reads the tree.
    stack: list[tuple[lark.Tree[Any] | lark.Token, int]] = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, lark.Tree) and node.data != "operand":
            if depth > MAX_WHERE_DEPTH:
                raise BadParameter(
                    PARAMETER, f"nests more than {MAX_WHERE_DEPTH} deep (NOT, AND, OR)"
                )
            stack.extend((child, depth + 1) for child in node.children)


def _built(tree: lark.Tree[Any]) -> Expression:
    match tree.data:
        case "disjunction":
            return Any_(tuple(_built(child) for child in tree.children))
        case "conjunction":
            return All(tuple(_built(child) for child in tree.children))
        case "not_":
            return Not(_built(tree.children[0]))
        case "compare":
            operand, op, value = tree.children
            return Condition(_operand(operand), str(op), (_literal(_token(value)),))
        case "in_":
            operand, *values = tree.children
            read = _operand(operand)
            literals = [_literal(_token(v)) for v in values]
            # Values of several types: one IN for each type, any of which holds.
            kinds = list(dict.fromkeys(type(v) for v in literals))
            ins = [Condition(read, "in", tuple(v for v in literals if type(v) is k)) for k in kinds]
            return ins[0] if len(ins) == 1 else Any_(tuple(ins))
        case "prefix" | "suffix" | "contains":
            operand, value = tree.children
            return Condition(_operand(operand), tree.data, (_literal(_token(value)),))
        case "exists":
            return Condition(_operand(tree.children[0]), "exists")
    raise AssertionError(tree.data)  # the grammar has no other rule


def _operand(
    tree: lark.Tree[Any],
    parameter: str = PARAMETER,
    roots: frozenset[str] = ROOTS,
    *,
    whole: bool = False,
) -> Operand:
    root, *members = tree.children
    if root not in roots:
        known = ", ".join(sorted(roots))
        raise BadParameter(parameter, f"no operand {str(root)!r} (there are: {known})")
    path = tuple(str(_literal(m)) if m.type == "STRING" else str(m) for m in map(_token, members))
    if path and root not in ("data", "attributes"):
        raise BadParameter(parameter, f"{root} has no members: only data and attributes do")
    if root == "attributes" and len(path) != 1 and (path or not whole):
        raise BadParameter(parameter, 'name one attribute: attributes.KEY or attributes["KEY"]')
    if len(path) > MAX_WHERE_PATH:
        raise BadParameter(parameter, f"a path {len(path)} members deep; {MAX_WHERE_PATH} at most")
    for member in path:
        if not member or any(c in member for c in '"\\') or not member.isprintable():
            # Every store's JSONPath quotes a member in `"` and escapes nothing inside.
            raise BadParameter(
                parameter,
                f'the member {member!r} is empty or holds `"`, `\\` or a control character',
            )
    return Operand(str(root), path)


def _token(node: lark.Tree[Any] | lark.Token) -> lark.Token:
    assert isinstance(node, lark.Token)  # a literal is a terminal in the grammar
    return node


def _literal(token: lark.Token) -> Literal:
    text = str(token)
    match token.type:
        case "TRUE" | "FALSE":
            return text.lower() == "true"
        case "NUMBER":
            number = float(text)
            if not math.isfinite(number):
                raise BadParameter(PARAMETER, f"{text[:40]} is beyond a double")
            return number
    if text.startswith("'"):
        value = text[1:-1].replace("''", "'")
    else:
        try:
            value = msgspec.json.decode(text, type=str)
        except msgspec.DecodeError:
            raise BadParameter(PARAMETER, f"{text[:40]} is no string: {_escape_help}") from None
    try:
        value.encode()
    except UnicodeEncodeError:
        raise BadParameter(PARAMETER, f"{text[:40]} holds half a character") from None
    return value


_escape_help: Final = 'escape in "…" as JSON does (\\" \\\\ \\n \\u00e9), or use \'…\''


def conditions(expression: Expression) -> Iterator[Condition]:
    """Every condition of `expression`."""
    stack = [expression]
    while stack:
        node = stack.pop()
        match node:
            case Condition():
                yield node
            case Not(term):
                stack.append(term)
            case All(terms) | Any_(terms):
                stack.extend(terms)


def reads_data(expression: Expression | None) -> bool:
    """Whether `expression` reads a payload's `data` (which matching decodes)."""
    return reads(expression, "data")


def reads(expression: Expression | None, column: str) -> bool:
    """Whether `expression` reads the column `column` (`attributes` for `producer` too)."""
    if expression is None:
        return False
    roots = {column, "producer"} if column == "attributes" else {column}
    return any(c.operand.root in roots for c in conditions(expression))


def _check(condition: Condition, listing: str | None) -> None:
    root, op, values = condition.operand.root, condition.op, condition.values
    if listing is not None:
        _check_listing(root, listing)
    name = str(condition.operand)
    if op == "exists":
        return
    kind = type(values[0])  # one type: an IN of several is one IN for each
    if op in ("prefix", "suffix", "contains") and (kind is not str or values[0] == ""):
        raise BadParameter(
            PARAMETER, f"STARTS WITH, ENDS WITH and CONTAINS take a string, not empty ({name})"
        )
    if root in TIME_COLUMNS:
        if kind is not str or op in ("prefix", "suffix", "contains"):
            raise BadParameter(PARAMETER, f"{name} compares with an RFC 3339 time in quotes")
        for value in values:
            assert isinstance(value, str)
            time_value(value)
    elif root != "data" and kind is not str:
        raise BadParameter(PARAMETER, f"{name} is a string: quote the value")
    if kind is bool and op in ("<", "<=", ">", ">="):
        raise BadParameter(PARAMETER, f"{op} does not order true and false ({name})")


def _check_listing(root: str, listing: str) -> None:
    if root in RECORD_COLUMNS and listing != "records":
        raise BadParameter(
            PARAMETER, f"/v1/{listing} has no {root} (a rejection's payload was refused)"
        )
    if root in REJECTION_COLUMNS and listing != "rejections":
        raise BadParameter(PARAMETER, f"/v1/{listing} has no {root}: rejections do")
    if root == "data" and listing != "records":
        raise BadParameter(
            PARAMETER, "a rejection's data is the bytes received: paths read records' data"
        )


@functools.lru_cache(maxsize=1024)
def time_value(text: str) -> int:
    """An RFC 3339 time in a condition, in epoch microseconds (read once: the matcher
    asks for each row)."""
    # RFC 3339's date-time, as `since` and `until` take it (fromisoformat also read
    # ISO 8601's weeks, times without separators and an hour alone).
    if RFC3339.fullmatch(text):
        try:
            return micros(_decode_time(msgspec.json.encode(text)))
        except (msgspec.DecodeError, TimeOutOfRange):  # none, or beyond years 1 to 9999
            pass
    raise BadParameter(
        PARAMETER,
        f"{text[:40]!r} is no RFC 3339 time of the years 1 to 9999 "
        "(2026-05-01T12:00:00Z, with its zone)",
    )


# --- in memory ------------------------------------------------------------------------


def matches(expression: Expression, row: Record | Rejection, keyed: Keyed | None = None) -> bool:
    """Whether `row` holds to `expression`: what every store's SQL keeps. With `keyed`,
    its conditions compare the keyed hash of the operand's value, read as a mask reads
    a payload (`app.query.mask`): what a masked reader is shown there."""
    memo: dict[str, Any] = {"members": _spellings(expression), "keyed": keyed}
    return _holds(expression, row, memo)


@dataclasses.dataclass(frozen=True, slots=True)
class Keyed:
    """Conditions that compare an operand's keyed hash (`hash`) rather than its value."""

    conditions: frozenset[Condition]
    hash: Callable[[Any], str]


def relaxed(expression: Expression, loose: Callable[[Condition], bool]) -> Expression | None:
    """An expression every row `expression` keeps holds to, with no condition `loose`
    says is loose: each of those taken as true where that keeps more rows, as false
    under a NOT. None where it keeps every row. What a store can be asked where some
    conditions only the service can answer: the service then matches the rows it reads."""
    found = _relaxed(expression, loose, positive=True)
    return None if isinstance(found, bool) else found


def _relaxed(
    expression: Expression, loose: Callable[[Condition], bool], *, positive: bool
) -> Expression | bool:
    # True and False stand for a term that always or never holds: in a positive place
    # a loose condition is True (never False), under a NOT False (never True).
    match expression:
        case Condition():
            return positive if loose(expression) else expression
        case Not(term):
            inner = _relaxed(term, loose, positive=not positive)
            return (not inner) if isinstance(inner, bool) else Not(inner)
        case All(terms) | Any_(terms):
            always = isinstance(expression, Any_)  # what decides it: a True in an OR
            kept: list[Expression] = []
            for term in terms:
                found = _relaxed(term, loose, positive=positive)
                if found is always:
                    return always
                if not isinstance(found, bool):
                    kept.append(found)
            if not kept:
                return not always
            return kept[0] if len(kept) == 1 else type(expression)(tuple(kept))
    raise AssertionError(expression)


def text(expression: Expression) -> str:
    """`expression` written in the filter language: it parses back to itself."""
    match expression:
        case Condition(operand, op, values):
            name = operand.root + "".join(f"[{_written(m)}]" for m in operand.path)
            if op == "exists":
                return f"EXISTS {name}"
            said = [_written(v) for v in values]
            if op == "in":
                return f"{name} IN ({', '.join(said)})"
            return f"{name} {_WORDS.get(op, op)} {said[0]}"
        case Not(term):
            return f"NOT ({text(term)})"
        case All(terms) | Any_(terms):
            joint = " AND " if isinstance(expression, All) else " OR "
            return joint.join(f"({text(t)})" for t in terms)
    raise AssertionError(expression)


_WORDS: Final = {"prefix": "STARTS WITH", "suffix": "ENDS WITH", "contains": "CONTAINS"}


def _written(value: Literal) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return msgspec.json.encode(value).decode()


# By the expression's identity (an expression is hashed by walking it: a tail's every
# row asks), each kept with its expression, so that no other takes its id meanwhile.
_SPELLINGS: Final[dict[int, tuple[Expression, tuple[bytes, ...]]]] = {}


def _spellings(expression: Expression) -> tuple[bytes, ...]:
    """How JSON spells each member `expression` reads in a payload, quoted."""
    held = _SPELLINGS.get(id(expression))
    if held is not None and held[0] is expression:
        return held[1]
    members = {
        m for c in conditions(expression) if c.operand.root == "data" for m in c.operand.path
    }
    spelled = tuple(msgspec.json.encode(m) for m in sorted(members))
    if len(_SPELLINGS) >= 512:
        _SPELLINGS.clear()
    _SPELLINGS[id(expression)] = (expression, spelled)
    return spelled


def _first(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in pairs:
        found.setdefault(key, value)
    return found


# JSON read as every store's JSON functions read it: of a member sent twice, the first
# (msgspec keeps the last), and a number beyond a double as infinity (msgspec reads none).
_read_as_stores: Final = json.JSONDecoder(object_pairs_hook=_first)


def _data(text: str, members: tuple[bytes, ...]) -> Any:
    """A payload's `data` as the stores read it, _MISSING if it is none: by msgspec where
    no member the expression reads may be sent twice (none is spelled twice, nor by an
    escape), else by the slower decoder that keeps the first."""
    raw = text.encode()
    if b"\\u" not in raw and b"\\/" not in raw:
        for member in members:
            if raw.count(member) > 1:
                break
        else:
            try:
                return msgspec.json.decode(raw)
            except msgspec.DecodeError:
                pass  # a number beyond a double, which msgspec does not read
    try:
        return _read_as_stores.decode(text)
    except (ValueError, RecursionError):
        return _MISSING


def _holds(expression: Expression, row: Record | Rejection, memo: dict[str, Any]) -> bool:
    match expression:
        case Condition():
            return _condition(expression, row, memo)
        case Not(term):
            return not _holds(term, row, memo)
        case All(terms):
            return all(_holds(t, row, memo) for t in terms)
        case Any_(terms):
            return any(_holds(t, row, memo) for t in terms)
    raise AssertionError(expression)


_MISSING: Final = object()


def _value(operand: Operand, row: Record | Rejection, memo: dict[str, Any]) -> Any:
    """The operand's value on `row`: a str, float, bool, None (JSON null), a dict or
    list (an object or array), or _MISSING."""
    root = operand.root
    if root in ("attributes", "producer"):
        if "attributes" not in memo:
            try:
                memo["attributes"] = msgspec.json.decode(row.attributes)
            except msgspec.DecodeError:
                memo["attributes"] = {}
        attributes = memo["attributes"]
        key = PRODUCER_ATTRIBUTE if root == "producer" else operand.path[0]
        value = attributes.get(key, _MISSING) if isinstance(attributes, dict) else _MISSING
        return value if isinstance(value, str) else _MISSING
    if root == "data":
        if "data" not in memo:
            memo["data"] = _data(getattr(row, "data", "null"), memo["members"])
        value = memo["data"]
        for member in operand.path:
            value = value.get(member, _MISSING) if isinstance(value, dict) else _MISSING
        return value
    value = getattr(row, root, None)
    return _MISSING if value is None else value


def _shown(operand: Operand, row: Record | Rejection, memo: dict[str, Any]) -> Any:
    """The operand's value as a mask reads the row (of a member sent twice, the last),
    where the stores read the first: what a masked reader is shown its hash of."""
    if operand.root != "data":
        return _value(operand, row, memo)
    if "shown" not in memo:
        try:
            memo["shown"] = msgspec.json.decode(getattr(row, "data", "null"))
        except msgspec.DecodeError:
            memo["shown"] = _MISSING
    value = memo["shown"]
    for member in operand.path:
        value = value.get(member, _MISSING) if isinstance(value, dict) else _MISSING
    return value


def _condition(condition: Condition, row: Record | Rejection, memo: dict[str, Any]) -> bool:
    keyed: Keyed | None = memo["keyed"]
    if keyed is not None and condition in keyed.conditions:
        # Hashed once a row for each operand, however many conditions compare it.
        hashed: dict[Operand, Any] = memo.setdefault("hashed", {})
        operand = condition.operand
        if operand not in hashed:
            value = _shown(operand, row, memo)
            hashed[operand] = value if value is _MISSING else keyed.hash(value)
        value = hashed[operand]
    else:
        value = _value(condition.operand, row, memo)
    op = condition.op
    if op == "exists":
        return value is not _MISSING
    if condition.operand.root in TIME_COLUMNS:
        wanted: tuple[Any, ...] = tuple(time_value(str(v)) for v in condition.values)
        if not isinstance(value, int):
            return False
    else:
        wanted = condition.values
        kind = type(wanted[0])
        if kind is float:
            if isinstance(value, bool) or not isinstance(value, int | float):
                return False
            value = _double(value)
        elif type(value) is not kind:
            return False
    return _COMPARE[op](value, wanted)


def _double(number: float) -> float:
    """A JSON number as the stores compare it: its nearest double, an integer beyond
    them all infinity (as 1e400 is)."""
    try:
        return float(number)
    except OverflowError:
        return math.inf if number > 0 else -math.inf


_COMPARE: Final[dict[str, Callable[[Any, tuple[Any, ...]], bool]]] = {
    "=": lambda v, w: v == w[0],
    "!=": lambda v, w: v != w[0],
    "<": lambda v, w: v < w[0],
    "<=": lambda v, w: v <= w[0],
    ">": lambda v, w: v > w[0],
    ">=": lambda v, w: v >= w[0],
    "in": lambda v, w: v in w,
    "prefix": lambda v, w: v.startswith(w[0]),
    "suffix": lambda v, w: v.endswith(w[0]),
    "contains": lambda v, w: w[0] in v,
}


# --- in SQL ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Dialect:
    """How one store's SQL says what a condition reads. Templates take `{json}` (a
    JSON column), `{path}` (a parameter holding the path, made by `path`), `{column}`
    and `{text}`."""

    # A parameter's name as the SQL refers to it.
    parameter: Callable[[str], str]
    # A member path as the store's JSON functions take it (a JSONPath, a pointer).
    path: Callable[[tuple[str, ...]], str]
    # The member's JSON text (a string's in quotes); NULL or `null` where there is none.
    json_text: str
    # Whether the member is there (a JSON null too).
    present: str
    # A scalar member's value as a string (a JSON string unquoted), NULL otherwise.
    json_scalar: str
    # A timestamp column in epoch microseconds.
    micros: str
    # A text as a double, NULL where it is none.
    double: str
    # A column by name (`alias` given where the query has one).
    column: Callable[[str, str], str]
    # An attribute's value (`json_scalar` where empty), of the JSON this service wrote.
    attribute: str = ""
    # Where set, the payload's members an expression reads are read in one pass (its
    # `{paths}` at once, a list parameter) and the expression (`{term}`) reads each as
    # `member` (`{at}`, from 1), itself JSON: `json_text`, `present` and `json_scalar`
    # then take `{member}`. Where the store reads a member by parsing the payload
    # (DuckDB), each condition on it would parse it once more.
    members_once: str = ""
    member: str = ""


def json_path(members: tuple[str, ...]) -> str:
    """Members as a JSONPath, each quoted (`$."a"."b"`): BigQuery's and Spanner's."""
    return "$" + "".join(f'."{m}"' for m in members)


def json_pointer(members: tuple[str, ...]) -> str:
    """Members as a JSON pointer (RFC 6901): DuckDB's, which reads `$."*"` in a
    JSONPath as every member, where a pointer has no wildcard."""
    return "".join("/" + m.replace("~", "~0").replace("/", "~1") for m in members)


DUCKDB: Final = Dialect(
    parameter=lambda name: f"${name}",
    path=json_pointer,
    json_text="{member}::VARCHAR",
    present="{member} IS NOT NULL",
    json_scalar="json_extract_string({member}, '$')",
    micros="epoch_us({column})",
    double="TRY_CAST({text} AS DOUBLE)",
    column=lambda alias, name: f'{alias + "." if alias else ""}"{name}"',
    attribute="json_extract_string({json}, {path})",
    # A lambda's argument is computed once for the row: 32 conditions on a payload of
    # 200,000 rows took 14 s, a pass over each for each condition.
    members_once="list_transform([json_extract({json}, {paths})], lambda members: {term})[1]",
    member="members[{at}]",
)
BIGQUERY: Final = Dialect(
    parameter=lambda name: f"@{name}",
    path=json_path,
    # `null` where JSON_QUERY finds nothing (TO_JSON_STRING of a NULL), as for a JSON null.
    json_text="TO_JSON_STRING(JSON_QUERY({json}, {path}))",
    present="JSON_QUERY({json}, {path}) IS NOT NULL",
    json_scalar="JSON_VALUE({json}, {path})",
    micros="UNIX_MICROS({column})",
    double="SAFE_CAST({text} AS FLOAT64)",
    column=lambda alias, name: f"{alias + '.' if alias else ''}`{name}`",
)
# The serving tier keeps `data` and `attributes` as JSON text in STRING columns. Spanner's
# JSON functions read such text without parsing it: a JSON null as NULL, an escaped
# surrogate pair as two broken characters, and a member sent twice looked for in each
# copy. So `data` is parsed to JSON first (as BigQuery's column is), and read as text
# only where Spanner parses none (a number beyond a double, more than 80 levels, more
# than 2.5 MiB); the attributes this service wrote are read as text.
_PARSED: Final = "SAFE.PARSE_JSON({json}, wide_number_mode=>'round')"
SPANNER: Final = dataclasses.replace(
    BIGQUERY,
    json_text=f"IF({_PARSED} IS NULL, JSON_QUERY({{json}}, {{path}}), "
    f"TO_JSON_STRING(JSON_QUERY({_PARSED}, {{path}})))",
    json_scalar=f"IF({_PARSED} IS NULL, JSON_VALUE({{json}}, {{path}}), "
    f"JSON_VALUE({_PARSED}, {{path}}))",
    present=f"IF({_PARSED} IS NULL, JSON_QUERY({{json}}, {{path}}) IS NOT NULL, "
    f"JSON_QUERY({_PARSED}, {{path}}) IS NOT NULL)",
    attribute="JSON_VALUE({json}, {path})",
)

_SQL_OPERATOR: Final = {"=": "=", "!=": "!=", "<": "<", "<=": "<=", ">": ">", ">=": ">="}


class _Compiler:
    def __init__(self, dialect: Dialect, alias: str, prefix: str) -> None:
        self.dialect = dialect
        self.alias = alias
        self.prefix = prefix
        self.params: dict[str, Any] = {}
        # The payload's members read in one pass (`Dialect.members_once`), in order;
        # elsewhere, the parameter holding each member's path.
        self.members: list[str] = []
        self.paths: dict[str, str] = {}

    def bind(self, value: Any) -> str:
        name = f"{self.prefix}{len(self.params)}"
        self.params[name] = value
        return self.dialect.parameter(name)

    def sql(self, expression: Expression) -> str:
        match expression:
            case Condition():
                return f"COALESCE({self.condition(expression)}, FALSE)"
            case Not(term):
                return f"NOT {self.sql(term)}"
            case All(terms):
                return "(" + " AND ".join(self.sql(t) for t in terms) + ")"
            case Any_(terms):
                return "(" + " OR ".join(self.sql(t) for t in terms) + ")"
        raise AssertionError(expression)

    def condition(self, condition: Condition) -> str:
        d = self.dialect
        root, op, values = condition.operand.root, condition.op, condition.values
        if root in ("attributes", "producer"):
            key = condition.operand.path[0] if root != "producer" else PRODUCER_ATTRIBUTE
            json = d.column(self.alias, "attributes")
            path = self.bind(d.path((key,)))
            scalar = (d.attribute or d.json_scalar).format(json=json, path=path)
            if op == "exists":
                return f"{scalar} IS NOT NULL"
            return self.compared(scalar, op, values)
        if root == "data":
            members = condition.operand.path
            json = d.column(self.alias, "data")
            # A member named by digits names an object's member, never an array's
            # element, as each store's JSON functions would read it ("0"; Spanner's
            # also " 1", "+1", "0x1"): its parent is an object, or the condition is false.
            objects = [
                f"SUBSTR({self.of(d.json_text, json, members[:at])}, 1, 1) = '{{'"
                for at, member in enumerate(members)
                if any(c in "0123456789" for c in member)
            ]
            if op == "exists":
                held = self.of(d.present, json, members)
            else:
                text = self.of(d.json_text, json, members)
                held = self.member(text, self.of(d.json_scalar, json, members), op, values)
            return " AND ".join([*objects, held])
        column = d.column(self.alias, root)
        if op == "exists":
            return f"{column} IS NOT NULL"
        if root in TIME_COLUMNS:
            moments = tuple(time_value(str(v)) for v in values)
            return self.compared(d.micros.format(column=column), op, moments)
        return self.compared(column, op, values)

    def of(self, template: str, json: str, members: tuple[str, ...]) -> str:
        """`template` for the payload's member at `members`: given its path (a parameter
        made here), or where members are read once, the member itself."""
        d = self.dialect
        path = d.path(members)
        if not d.members_once:
            if path not in self.paths:
                self.paths[path] = self.bind(path)
            return template.format(json=json, path=self.paths[path])
        if path not in self.members:
            self.members.append(path)
        return template.format(member=d.member.format(at=self.members.index(path) + 1))

    def member(self, text: str, scalar: str, op: str, values: tuple[Any, ...]) -> str:
        """A comparison of a payload's member, whose JSON text and scalar are these."""
        d = self.dialect
        kind = type(values[0])
        # Each reads the member once where it can: reading it is parsing the payload.
        if kind is bool:
            # `= true` is the member's JSON text `true` (`!= true`, `false`).
            wanted = values if op != "!=" else (not values[0],)
            texts = [self.bind("true" if v else "false") for v in wanted]
            return f"{text} IN ({', '.join(texts)})"
        if kind is float:
            # Only a number's JSON text reads as a double (a string's is quoted).
            return self.compared(d.double.format(text=text), op, values)
        return f"SUBSTR({text}, 1, 1) = '\"' AND {self.compared(scalar, op, values)}"

    def compared(self, left: str, op: str, values: tuple[Any, ...]) -> str:
        if op == "in":
            return f"{left} IN ({', '.join(self.bind(v) for v in values)})"
        if op == "prefix":
            return f"STARTS_WITH({left}, {self.bind(values[0])})"
        if op == "suffix":
            return f"ENDS_WITH({left}, {self.bind(values[0])})"
        if op == "contains":
            return f"STRPOS({left}, {self.bind(values[0])}) > 0"
        return f"{left} {_SQL_OPERATOR[op]} {self.bind(values[0])}"


def to_sql(
    expression: Expression, dialect: Dialect, *, alias: str = "", prefix: str = "where"
) -> tuple[str, dict[str, Any]]:
    """`expression` as one boolean SQL term in `dialect`, never NULL, and its
    parameters (named `prefix` and a number): values and paths are parameters, columns
    are named from a fixed set."""
    compiler = _Compiler(dialect, alias, prefix)
    term = compiler.sql(expression)
    if compiler.members:
        paths = compiler.bind(compiler.members)
        data = dialect.column(alias, "data")
        term = dialect.members_once.format(json=data, paths=paths, term=term)
    return term, compiler.params
