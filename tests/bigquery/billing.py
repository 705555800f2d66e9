"""What BigQuery bills a query on demand: a model of its documented rules.

The jobs.query fake answers every query with the bytes this model computes, so
a read that scans more than it should fails a test instead of a budget. Google
documents the rules; it does not document its block sizes or when appended
rows are reorganised, so those are parameters, stated here and printed by
`bench bqcost`.

Rules taken from BigQuery's documentation (pricing, "data type sizes",
partitioned tables, clustered tables, search indexes):

- A value's size: INT64, FLOAT64, TIMESTAMP 8 bytes; BOOL 1; STRING and BYTES
  2 + their length in bytes; JSON the UTF-8 length of its text; NULL 0.
- A query is billed for every *referenced* column of every row in the
  partitions and blocks it cannot prune, whatever its LIMIT; then rounded up
  to a whole MiB per table referenced, with a minimum of 10 MiB per table
  referenced. (A query that references no table is billed nothing.)
- Nested and repeated columns: each leaf of a RECORD (STRUCT) is a column of
  its own. A STRUCT is "0 logical bytes + the size of the contained fields"
  and an ARRAY "0 logical bytes + the size of the contained elements" (the
  pricing page's data type sizes), and a query is billed for the columns it
  reads: `fields.amount` bills that one leaf, `fields.lines[OFFSET(0)].qty`
  the `qty` leaf of every element, and `fields` (or `fields.*`, or `*`) every
  leaf of the RECORD. (https://cloud.google.com/bigquery/pricing#data_type_sizes;
  "On-demand query size calculation" in
  https://cloud.google.com/bigquery/docs/estimate-costs; Tigani & Naidu,
  *Google BigQuery Analytics*, ch. 7, table 7.3: a RECORD itself costs
  nothing, each field referenced inside it counts as any column does.)
  A leaf is sized by its type in the table's schema where the query's schema
  gives it (NUMERIC 16 bytes, BIGNUMERIC 32, DATE/TIME/DATETIME 8, ...),
  else by its Python value.
- Partitions (by DAY, MONTH or YEAR of one TIMESTAMP or DATE column, in UTC)
  are pruned only by filters on the partition column alone compared with a
  constant expression (query parameters count as constants): `col op
  constant`, `BETWEEN`, `IN`. A filter through a function of the column, a
  subquery or a join condition prunes nothing. Rows whose partition column is
  NULL are in the `__NULL__` partition, which any such filter prunes (no
  comparison holds for NULL); rows whose value lies before 1960-01-01 or from
  2160-01-01 on are in `__UNPARTITIONED__`, read by any query whose filter
  reaches outside those years
  (https://cloud.google.com/bigquery/docs/partitioned-tables#date_timestamp_partitioned_tables).
- Clustered blocks are pruned only by constant filters on a prefix of the
  clustering columns (a filter on the second column alone prunes nothing).
- A search index serves `=` and `IN` on an indexed STRING column: an indexed
  block holding none of the values is skipped. Rows not yet indexed are
  always read.

Assumptions of this model (not documented by Google):

- Rows written in the last `write_optimized_seconds` (30 minutes) sit in one
  unclustered, unindexed block per partition (write-optimized storage): only
  partition pruning skips it. A row's write time is taken to be its
  `ingest_time` (Recordline stamps it as it appends; the exporter appends a
  row seconds after), whatever the partition column; a table without one is
  written at its partition column's time.
- `__UNPARTITIONED__` is pruned as one partition spanning every time outside
  the years above (Google does not say how it prunes it).
- Older rows of a partition are sorted by the clustering columns and cut into
  blocks of `block_rows` rows (100,000: ~40 MB of Recordline rows; BigQuery's
  guidance is that clustering pays off above 64 MB a partition).
- Each table reference is scanned, and billed, on its own: a self-join reads
  the table twice.
- A query's own rows are read as they are stored: no result cache (BigQuery
  never uses it for a table that receives Storage Write appends).
- Scale: each stored row stands for `row_weight` rows, so a month of
  1,000 msg/s is modelled with a few tens of thousands of rows: bytes are
  multiplied by the weight and a block holds `block_rows / row_weight` of them.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import threading
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import duckdb
import sqlglot
from sqlglot import exp
from sqlglot.optimizer.qualify import qualify
from sqlglot.optimizer.scope import Scope, traverse_scope

from app.records import Kind

MIB = 1 << 20
# A column as a query reads it: its name, then the fields into a RECORD, if any.
Path = tuple[str, ...]
MINIMUM_PER_TABLE = 10 * MIB
DAY_MICROS = 86_400_000_000
# On-demand price per TiB in most regions (US multi-region), for dollars.
DOLLARS_PER_TIB = 6.25


@dataclasses.dataclass(frozen=True)
class Layout:
    """How one table is stored: what can prune a scan of it. The partition column is a
    TIMESTAMP (µs, as stored rows hold it) or a DATE (days since the epoch)."""

    partition: str | None = None
    clustering: tuple[str, ...] = ()
    search_index: frozenset[str] = frozenset()
    granularity: str = "DAY"
    partition_type: str = "TIMESTAMP"


NULL_PARTITION = "__NULL__"
UNPARTITIONED = "__UNPARTITIONED__"
# A partition: its first moment in the partition column's unit, or one of the two above.
PartitionKey = int | str
_EPOCH_DAY = date(1970, 1, 1)
# Time-unit column partitions cover 1960-01-01 to 2159-12-31 (days since the epoch).
FIRST_PARTITIONED_DAY = (date(1960, 1, 1) - _EPOCH_DAY).days
END_PARTITIONED_DAY = (date(2160, 1, 1) - _EPOCH_DAY).days


def _unit(layout: Layout) -> int:
    """The partition column's values in a day: µs for a TIMESTAMP, 1 for a DATE."""
    return 1 if layout.partition_type == "DATE" else DAY_MICROS


def partition_of(layout: Layout, value: Any) -> PartitionKey:
    """The partition a row whose partition column holds `value` is in."""
    if value is None:
        return NULL_PARTITION
    unit = _unit(layout)
    day: int = value // unit
    if not FIRST_PARTITIONED_DAY <= day < END_PARTITIONED_DAY:
        return UNPARTITIONED
    if layout.granularity == "DAY":
        return day * unit
    when = _EPOCH_DAY + timedelta(days=day)
    first = when.replace(day=1) if layout.granularity == "MONTH" else when.replace(month=1, day=1)
    return (first - _EPOCH_DAY).days * unit


def partition_bounds(layout: Layout, key: int) -> tuple[int, int]:
    """The first and last value (inclusive) a partition's column may hold."""
    unit = _unit(layout)
    if layout.granularity == "DAY":
        return key, key + unit - 1
    first = _EPOCH_DAY + timedelta(days=key // unit)
    if layout.granularity == "MONTH":
        after = (first.replace(day=28) + timedelta(days=4)).replace(day=1)
    else:
        after = first.replace(year=first.year + 1)
    return key, (after - _EPOCH_DAY).days * unit - 1


def partition_id(layout: Layout, key: PartitionKey) -> str:
    """A partition's id, as INFORMATION_SCHEMA.PARTITIONS names it (YYYYMMDD, YYYYMM
    or YYYY, UTC)."""
    if isinstance(key, str):
        return key
    first = _EPOCH_DAY + timedelta(days=key // _unit(layout))
    return first.strftime({"DAY": "%Y%m%d", "MONTH": "%Y%m", "YEAR": "%Y"}[layout.granularity])


@dataclasses.dataclass(frozen=True)
class Reach:
    """What one reference to a table read of it: its blocks (write-optimized ones
    included) and partitions, each of how many the table holds. Nothing is billed by
    it; it says why a scan bills what it bills."""

    table: str
    blocks: int
    of_blocks: int
    partitions: int
    of_partitions: int


@dataclasses.dataclass(frozen=True)
class Bill:
    bytes_processed: int
    bytes_billed: int
    # Bytes read per table reference, as (table, bytes), in query order.
    scans: tuple[tuple[str, int], ...] = ()
    # What each reference to a stored table read of it, in query order.
    reaches: tuple[Reach, ...] = ()

    @property
    def dollars(self) -> float:
        return self.bytes_billed / (1 << 40) * DOLLARS_PER_TIB


def value_size(kind: Kind, value: Any) -> int:
    if value is None:
        return 0
    match kind:
        case Kind.INT64 | Kind.TIMESTAMP:
            return 8
        case Kind.STRING:
            return 2 + len(value.encode())
        case Kind.BYTES:
            return 2 + len(value)
        case Kind.JSON:
            return len(value.encode()) if isinstance(value, str) else len(value)
    raise ValueError(f"no size for {kind}")


def nested_size(value: Any) -> int:
    """The size of a RECORD or REPEATED value, leaf by leaf (as decoded from a row)."""
    match value:
        case None:
            return 0
        case bool():
            return 1
        case int() | float():
            return 8
        case str():
            return 2 + len(value.encode())
        case bytes():
            return 2 + len(value)
        case dict():
            return sum(nested_size(v) for v in value.values())
        case list():
            return sum(nested_size(v) for v in value)
    raise ValueError(f"no size for {type(value).__name__}")


_T = exp.DataType.Type
# Logical bytes of the fixed-size types (pricing: data type sizes).
_FIXED_SIZES = {
    _T.BIGINT: 8,
    _T.INT: 8,
    _T.DOUBLE: 8,
    _T.FLOAT: 8,
    _T.TIMESTAMPTZ: 8,
    _T.TIMESTAMP: 8,
    _T.DATETIME: 8,
    _T.DATE: 8,
    _T.TIME: 8,
    _T.BOOLEAN: 1,
    _T.DECIMAL: 16,
    _T.BIGDECIMAL: 32,
}


@functools.lru_cache(maxsize=1024)
def data_type(text: str) -> exp.DataType:
    """A column's type as a query's schema spells it (`STRUCT<amount NUMERIC, ...>`)."""
    return exp.DataType.build(text, dialect="bigquery")


def _member(kind: exp.DataType | None, name: str) -> exp.DataType | None:
    """The type of field `name` of a STRUCT type; None if unknown."""
    if kind is None or kind.this != _T.STRUCT:
        return None
    for member in kind.expressions:
        if member.name == name and isinstance(member.args.get("kind"), exp.DataType):
            found: exp.DataType = member.args["kind"]
            return found
    return None


def _item(kind: exp.DataType | None) -> exp.DataType | None:
    """The element type of an ARRAY type; None if unknown."""
    if kind is None or kind.this != _T.ARRAY or not kind.expressions:
        return None
    found = kind.expressions[0]
    return found if isinstance(found, exp.DataType) else None


def typed_size(kind: exp.DataType | None, value: Any) -> int:
    """A value's size by its column's type: a STRUCT is the sum of its fields, an
    ARRAY of its elements; by its Python value where the type is unknown."""
    if value is None:
        return 0
    if kind is None:
        return nested_size(value)
    if kind.this == _T.ARRAY:
        return sum(typed_size(_item(kind), v) for v in value)
    if kind.this == _T.STRUCT:
        return sum(typed_size(_member(kind, name), v) for name, v in value.items())
    if kind.this == _T.JSON:
        return len(value.encode()) if isinstance(value, str) else len(value)
    fixed = _FIXED_SIZES.get(kind.this)
    # STRING and BYTES, 2 + their length, as their values are sized.
    return fixed if fixed is not None else nested_size(value)


def path_size(kind: exp.DataType | None, value: Any, path: Path) -> int:
    """The size of the leaves at `path` inside `value` (of type `kind`): through
    every element of an ARRAY, and the whole value where `path` ends."""
    if value is None:
        return 0
    if not path:
        return typed_size(kind, value)
    if isinstance(value, list):
        return sum(path_size(_item(kind), v, path) for v in value)
    if isinstance(value, dict):
        return path_size(_member(kind, path[0]), value.get(path[0]), path[1:])
    # A field of a scalar (a JSON value's member): the column is read whole.
    return typed_size(kind, value)


def billed(bytes_by_table: Mapping[str, int]) -> int:
    return sum(
        max(MINIMUM_PER_TABLE, math.ceil(scanned / MIB) * MIB)
        for scanned in bytes_by_table.values()
    )


# -- constraints ---------------------------------------------------------------


@dataclasses.dataclass
class _Range:
    """Values a column may take under a query's constant filters."""

    low: Any = None
    high: Any = None
    # Whether `low` / `high` themselves are excluded.
    low_open: bool = False
    high_open: bool = False
    # None: any value between the bounds; else only these.
    values: set[Any] | None = None
    empty: bool = False

    def above(self, value: Any, *, open: bool = False) -> None:
        if value is None:
            self.empty = True
        elif self.low is None or value > self.low or (value == self.low and open):
            self.low, self.low_open = value, open

    def below(self, value: Any, *, open: bool = False) -> None:
        if value is None:
            self.empty = True
        elif self.high is None or value < self.high or (value == self.high and open):
            self.high, self.high_open = value, open

    def only(self, values: Iterable[Any]) -> None:
        given = set(values)
        self.values = given if self.values is None else self.values & given
        if not self.values:
            self.empty = True

    def meets(self, low: Any, high: Any) -> bool:
        """Whether a block whose values lie in [low, high] can hold a match."""
        if self.empty or self._below(high) or self._above(low):
            return False
        if self.values is not None and low is not None and high is not None:
            return any(
                low <= v <= high and not self._below(v) and not self._above(v) for v in self.values
            )
        return True

    def _below(self, value: Any) -> bool:
        """Whether `value` lies under the lower bound."""
        if self.low is None or value is None:
            return False
        return bool(value < self.low or (value == self.low and self.low_open))

    def _above(self, value: Any) -> bool:
        if self.high is None or value is None:
            return False
        return bool(value > self.high or (value == self.high and self.high_open))

    def holds(self, value: Any) -> bool:
        return self.meets(value, value)


def _constant(node: exp.Expression) -> bool:
    return not any(isinstance(n, exp.Column | exp.Select | exp.Subquery) for n in node.walk())


class _Evaluator:
    """Constant expressions, evaluated the way the fake runs the query (DuckDB)."""

    def __init__(self) -> None:
        self._con = duckdb.connect(":memory:")
        self._con.execute("SET TimeZone = 'UTC'")
        # The jobs fake bills each request in a thread of its own: one connection
        # runs one statement at a time.
        self._lock = threading.Lock()

    def value(self, node: exp.Expression) -> Any:
        sql = _in_duckdb(f"SELECT {node.sql('bigquery')}")
        with self._lock:
            row = self._con.execute(sql).fetchone()
        return _comparable(row[0] if row else None)

    def values(self, node: exp.Expression) -> list[Any]:
        if isinstance(node, exp.Unnest):
            (array,) = node.expressions
            found = self.value(array)
            return list(found or [])
        return [self.value(node)]


@functools.lru_cache(maxsize=1024)
def _in_duckdb(sql: str) -> str:
    """A constant's SELECT as DuckDB reads it, translated once: the same constants (a
    page's bounds, its limit) come with query after query. Evaluated anew each time,
    since one may read the clock (CURRENT_TIMESTAMP())."""
    return sqlglot.transpile(sql, read="bigquery", write="duckdb")[0]


def _comparable(value: Any) -> Any:
    # Timestamps are compared as the microseconds the stored rows hold, dates as days.
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=UTC)
        return int(moment.timestamp() * 1_000_000)
    if isinstance(value, date):
        return (value - _EPOCH_DAY).days
    if isinstance(value, list):
        return [_comparable(v) for v in value]
    return value


_FLIPPED = {exp.GT: exp.LT, exp.GTE: exp.LTE, exp.LT: exp.GT, exp.LTE: exp.GTE, exp.EQ: exp.EQ}


def _conjuncts(where: exp.Expression | None) -> list[exp.Expression]:
    if where is None:
        return []
    node = where.this if isinstance(where, exp.Where) else where
    return list(node.flatten()) if isinstance(node, exp.And) else [node]


def _filters(scope: Scope, alias: str, evaluate: _Evaluator) -> dict[str, _Range]:
    """Constant filters on one table's own columns in the scope that reads it."""
    ranges: dict[str, _Range] = {}

    def own(node: exp.Expression) -> str | None:
        # A column itself; a field of a RECORD (`fields.amount`) is not.
        if isinstance(node, exp.Column) and node.table == alias:
            return node.name
        return None

    for predicate in _conjuncts(scope.expression.args.get("where")):
        if isinstance(predicate, exp.Paren):
            predicate = predicate.unnest()
        match predicate:
            case exp.Between():
                column = own(predicate.this)
                low, high = predicate.args["low"], predicate.args["high"]
                if column and _constant(low) and _constant(high):
                    found = ranges.setdefault(column, _Range())
                    found.above(evaluate.value(low))
                    found.below(evaluate.value(high))
            case exp.In():
                column = own(predicate.this)
                options = predicate.args.get("unnest") or None
                listed = [options] if options is not None else predicate.expressions
                if column and listed and all(_constant(o) for o in listed):
                    values = [v for o in listed for v in evaluate.values(o)]
                    ranges.setdefault(column, _Range()).only(values)
            case exp.EQ() | exp.GT() | exp.GTE() | exp.LT() | exp.LTE():
                kind: type[exp.Expression] = type(predicate)
                left, right = predicate.this, predicate.expression
                column = own(left)
                other = right
                if column is None:
                    column, other, kind = own(right), left, _FLIPPED[kind]
                if column is None or not _constant(other):
                    continue
                value = evaluate.value(other)
                found = ranges.setdefault(column, _Range())
                if kind is exp.EQ:
                    found.only([value])
                if kind in (exp.GT, exp.GTE, exp.EQ):
                    found.above(value, open=kind is exp.GT)
                if kind in (exp.LT, exp.LTE, exp.EQ):
                    found.below(value, open=kind is exp.LT)
    return ranges


# -- storage ---------------------------------------------------------------------


@dataclasses.dataclass
class _Block:
    rows: list[dict[str, Any]]
    # None: the table has no partitions.
    partition: PartitionKey | None
    # Sorted by the clustering columns and indexed; False for write-optimized rows.
    clustered: bool
    first: tuple[Any, ...] = ()
    last: tuple[Any, ...] = ()
    indexed: dict[str, set[Any]] = dataclasses.field(default_factory=dict)
    # Bytes of each column (or RECORD leaf) over the block's rows, summed once.
    sizes: dict[Path, int] = dataclasses.field(default_factory=dict)


def _sort_key(columns: Sequence[str]) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
    # NULLs first, as BigQuery sorts them ascending.
    return lambda row: tuple((row[c] is not None, row[c]) for c in columns)


def _partition_order(item: tuple[PartitionKey | None, Any]) -> tuple[bool, int, str]:
    key = item[0]
    return (not isinstance(key, int), key if isinstance(key, int) else 0, str(key))


def _blocks(
    rows: Sequence[dict[str, Any]],
    layout: Layout,
    *,
    block_rows: int,
    recent_since: int | None,
) -> list[_Block]:
    partitions: dict[PartitionKey | None, list[dict[str, Any]]] = {}
    for row in rows:
        key = None if layout.partition is None else partition_of(layout, row.get(layout.partition))
        partitions.setdefault(key, []).append(row)
    blocks = []
    for partition, members in sorted(partitions.items(), key=_partition_order):
        recent: list[dict[str, Any]] = []
        settled: list[dict[str, Any]] = []
        for row in members:
            written = row.get("ingest_time", row.get(layout.partition or ""))
            fresh = recent_since is not None and written is not None and written >= recent_since
            (recent if fresh else settled).append(row)
        if layout.clustering:
            settled.sort(key=_sort_key(layout.clustering))
        for start in range(0, len(settled), block_rows):
            chunk = settled[start : start + block_rows]
            blocks.append(
                _Block(
                    rows=chunk,
                    partition=partition,
                    clustered=True,
                    first=tuple(chunk[0][c] for c in layout.clustering),
                    last=tuple(chunk[-1][c] for c in layout.clustering),
                    indexed={c: {row[c] for row in chunk} for c in layout.search_index},
                )
            )
        if recent:
            blocks.append(_Block(rows=recent, partition=partition, clustered=False))
    return blocks


class BillingModel:
    """Bills queries over tables of rows (dicts: TIMESTAMP as µs, JSON as text)."""

    def __init__(
        self,
        *,
        layouts: Mapping[str, Layout],
        kinds: Mapping[str, Mapping[str, Kind]],
        block_rows: int = 100_000,
        row_weight: int = 1,
        write_optimized_seconds: float = 1800.0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.layouts = dict(layouts)
        self.kinds = {table: dict(k) for table, k in kinds.items()}
        self.block_rows = block_rows
        self.row_weight = row_weight
        self.write_optimized_seconds = write_optimized_seconds
        # Seconds since the epoch; the bench sets it to the end of the data it made.
        self.clock = clock
        self._evaluate = _Evaluator()
        self._cache: dict[str, tuple[int, list[_Block]]] = {}

    def _now(self) -> float:
        import time

        return self.clock() if self.clock is not None else time.time()

    def storage(self, table: str, rows: Sequence[dict[str, Any]]) -> list[_Block]:
        recent_since = int((self._now() - self.write_optimized_seconds) * 1_000_000)
        cached = self._cache.get(table)
        # Rows are only appended (or a table replaced whole), and the clock only
        # moves on: a layout is reused while neither the rows nor the recent
        # boundary (to the second) changed.
        ends = (id(rows[0]), id(rows[-1])) if rows else (0, 0)
        key = hash((len(rows), *ends, recent_since // 1_000_000))
        if cached is not None and cached[0] == key:
            return cached[1]
        per_block = max(1, self.block_rows // self.row_weight)
        found = _blocks(
            rows, self.layouts.get(table, Layout()), block_rows=per_block, recent_since=recent_since
        )
        kinds = self.kinds.get(table, {})
        for block in found:
            block.sizes = {
                (column,): sum(value_size(kind, row[column]) for row in block.rows)
                for column, kind in kinds.items()
            }
        self._cache[table] = (key, found)
        return found

    def block_sizes(self, table: str, rows: Sequence[dict[str, Any]]) -> list[int]:
        """The rows of each block `table` is stored in (each stored row counted as the
        rows it stands for), write-optimized ones included."""
        return [len(block.rows) * self.row_weight for block in self.storage(table, rows)]

    def forget(self, table: str) -> None:
        """Lay the table out again at the next bill: rows of it changed in place."""
        self._cache.pop(table, None)

    def partition_of(self, table: str, row: Mapping[str, Any]) -> PartitionKey | None:
        """The partition of `table` a row is in; None for a table without partitions."""
        layout = self.layouts.get(table, Layout())
        return None if layout.partition is None else partition_of(layout, row.get(layout.partition))

    def modified(
        self,
        table: str,
        rows: Sequence[dict[str, Any]],
        partitions: Collection[PartitionKey | None],
        types: Mapping[str, exp.DataType],
    ) -> int:
        """What a DML statement that changes rows in `partitions` (`partition_of`'s
        keys) is billed for them beyond what it reads: every column of each such
        partition, as it is before the statement ("the total size of all partitions
        being updated", BigQuery's DML pricing for partitioned tables; None: the
        whole of a table with no partitions)."""
        columns = [(c,) for c in self.kinds.get(table, {})]
        columns += [(c,) for c in types if (c,) not in columns]
        total = 0
        for block in self.storage(table, rows):
            if block.partition in partitions:
                total += sum(self._size(block, path, types) for path in columns)
        return total * self.row_weight

    def bill(
        self,
        sql: str,
        params: Mapping[str, Any],
        tables: Callable[[str], Sequence[dict[str, Any]]],
        schema: Mapping[str, Any],
    ) -> Bill:
        """Bytes a query processes and is billed.

        `tables(name)` gives a table's rows; `schema` is sqlglot's nested
        mapping (project -> dataset -> table -> column -> type) used to expand
        `*` and resolve unqualified columns, and to size the leaves of a
        RECORD column (a `STRUCT<...>` or `ARRAY<...>` type there).
        """
        tree = _substitute(_qualified(sql, json.dumps(schema, sort_keys=True)), params)
        scans: list[tuple[str, int]] = []
        reaches: list[Reach] = []
        for scope in traverse_scope(tree):
            for alias, source in scope.sources.items():
                if not isinstance(source, exp.Table):
                    continue
                table = source.name
                if table.startswith("INFORMATION_SCHEMA."):
                    # Metadata views bill the 10 MiB minimum, whatever they read.
                    scans.append((table, 0))
                    continue
                if table not in self.kinds:
                    continue
                kinds = self.kinds[table]
                referenced = _covering(_referenced(scope, alias), kinds)
                types = _column_types(schema, source)
                filters = _filters(scope, alias, self._evaluate)
                scanned, reach = self._scan(table, tables(table), referenced, filters, types)
                scans.append((table, scanned))
                reaches.append(reach)
        per_table: dict[str, int] = {}
        for table, scanned in scans:
            per_table[table] = per_table.get(table, 0) + scanned
        return Bill(
            bytes_processed=sum(per_table.values()),
            bytes_billed=billed(per_table),
            scans=tuple(scans),
            reaches=tuple(reaches),
        )

    def _scan(
        self,
        table: str,
        rows: Sequence[dict[str, Any]],
        referenced: set[Path],
        filters: Mapping[str, _Range],
        types: Mapping[str, exp.DataType],
    ) -> tuple[int, Reach]:
        """Bytes one reference to `table` reads, and the blocks and partitions it read."""
        layout = self.layouts.get(table, Layout())
        total = 0
        partition_filter = filters.get(layout.partition) if layout.partition else None
        stored = self.storage(table, rows)
        read: list[_Block] = []
        for block in stored:
            if (
                partition_filter is not None
                and block.partition is not None
                and not _partition_survives(layout, block.partition, partition_filter)
            ):
                continue
            if block.clustered and not self._block_survives(block, layout, filters):
                continue
            read.append(block)
            total += sum(self._size(block, path, types) for path in referenced)
        reach = Reach(
            table,
            blocks=len(read),
            of_blocks=len(stored),
            partitions=len({b.partition for b in read}),
            of_partitions=len({b.partition for b in stored}),
        )
        return total * self.row_weight, reach

    @staticmethod
    def _size(block: _Block, path: Path, types: Mapping[str, exp.DataType]) -> int:
        if path not in block.sizes:
            # A column no Record has (a RECORD of typed fields), or a leaf of
            # one: only the leaves the path reaches, each by its type's size.
            column, inner = path[0], path[1:]
            kind = types.get(column)
            block.sizes[path] = sum(path_size(kind, row.get(column), inner) for row in block.rows)
        return block.sizes[path]

    @staticmethod
    def _block_survives(block: _Block, layout: Layout, filters: Mapping[str, _Range]) -> bool:
        # A prefix of the clustering columns: the first, then the next while
        # the block holds a single value of the one before.
        for depth, column in enumerate(layout.clustering):
            found = filters.get(column)
            if found is None:
                break
            if not found.meets(block.first[depth], block.last[depth]):
                return False
            if block.first[depth] != block.last[depth]:
                break
        for column in layout.search_index:
            found = filters.get(column)
            if (
                found is not None
                and found.values is not None
                and not (found.values & block.indexed[column])
            ):
                return False
        return True


def _partition_survives(layout: Layout, key: PartitionKey, found: _Range) -> bool:
    """Whether a constant filter on the partition column may match rows of `key`."""
    if key == NULL_PARTITION:
        return False
    if key == UNPARTITIONED:
        unit = _unit(layout)
        first, end = FIRST_PARTITIONED_DAY * unit, END_PARTITIONED_DAY * unit
        return found.meets(None, first - 1) or found.meets(end, None)
    assert isinstance(key, int)
    return found.meets(*partition_bounds(layout, key))


def _referenced(scope: Scope, alias: str) -> set[Path]:
    """Columns of `alias` that the query reads, in its scope or correlated from
    below: each as far into a RECORD as the query names it."""
    paths = {_path(c) for c in scope.columns if c.table == alias}
    for child in scope.traverse():
        if child is scope:
            continue
        paths |= {
            _path(c)
            for c in child.external_columns
            if c.table == alias and alias not in child.sources
        }
    return paths


def _path(column: exp.Column) -> Path:
    """`r.fields.lines[OFFSET(0)].qty` reads ("fields", "lines", "qty"): the
    fields named after a column, through any subscript of a repeated one. A
    `.*` or anything else ends the path (`fields.*` reads all of `fields`)."""
    path = [column.name]
    node: exp.Expression = column
    while (parent := node.parent) is not None:
        if isinstance(parent, exp.Bracket) and parent.this is node:
            node = parent
        elif (
            isinstance(parent, exp.Dot)
            and parent.this is node
            and isinstance(parent.expression, exp.Identifier)
        ):
            path.append(parent.expression.name)
            node = parent
        else:
            break
    return tuple(path)


def _covering(paths: set[Path], scalar: Collection[str]) -> set[Path]:
    """Each column read once: a path into a column that is not a RECORD (a JSON
    member) reads the column, and a RECORD read whole covers its leaves."""
    whole = {p[:1] if p[0] in scalar else p for p in paths}
    return {p for p in whole if not any(p[:n] in whole for n in range(1, len(p)))}


def _column_types(schema: Mapping[str, Any], table: exp.Table) -> dict[str, exp.DataType]:
    """The types `schema` gives a table's columns, by name."""
    found: Any = schema
    for part in (table.catalog, table.db, table.name):
        if not isinstance(found, Mapping) or part not in found:
            return {}
        found = found[part]
    if not isinstance(found, Mapping):
        return {}
    return {column: data_type(text) for column, text in found.items() if isinstance(text, str)}


def _literal(value: Any) -> exp.Expression:
    match value:
        case None:
            return exp.Null()
        case bool():
            return exp.Boolean(this=value)
        case int() | float():
            return exp.Literal.number(value)
        case list() | tuple():
            return exp.Array(expressions=[_literal(v) for v in value])
        case _:
            return exp.Literal.string(str(value))


@functools.lru_cache(maxsize=256)
def _qualified(sql: str, schema: str) -> exp.Expression:
    """The statement's tree with its tables and columns qualified against `schema`
    (JSON): one statement comes again and again with new parameters (a walk over
    pages sends it hundreds of times), and sqlglot's parse and qualification take
    tens of milliseconds. Never changed: `_substitute` makes a copy."""
    tree = sqlglot.parse_one(sql, read="bigquery")
    return qualify(
        tree, schema=json.loads(schema), dialect="bigquery", validate_qualify_columns=False
    )


def _substitute(tree: exp.Expression, params: Mapping[str, Any]) -> exp.Expression:
    """Query parameters become the constants they are to BigQuery's planner."""

    def replace(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.Parameter):
            name = node.name
            if name in params:
                return _literal(params[name])
        return node

    return tree.transform(replace)
