"""A fake of BigQuery's REST `jobs.query`, answering from what the write fake stored.

`bigquery.Client` in short-query mode POSTs the SQL and its named parameters
to /bigquery/v2/projects/P/queries. The fake translates the SQL from the
BigQuery dialect to DuckDB's with sqlglot, loads the rows the Storage Write
fake decoded into an in-memory DuckDB, binds the parameters and answers in
the REST shape, so a read makes the real round trip through the library.

Every query is also billed by `tests.bigquery.billing` (its docstring states
the model): the answer carries `totalBytesProcessed` and `totalBytesBilled`,
and a query over the request's `maximumBytesBilled` fails as BigQuery fails
it, with `bytesBilledLimitExceeded`.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import re
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import duckdb
import hcl2
import pyarrow as pa
import sqlglot

from app.records import TABLES, Kind, columns
from tests.bigquery.billing import Bill, BillingModel, Layout
from tests.bigquery.fake_storage_write import FakeBigQueryWrite

BIGQUERY_TF = (
    Path(__file__).resolve().parents[2]
    / "infra"
    / "terraform"
    / "modules"
    / "system"
    / "bigquery.tf"
)
# `CREATE SEARCH INDEX name ON `...${google_bigquery_table.T.table_id}`(columns)`
_SEARCH_INDEX = re.compile(
    r"CREATE SEARCH INDEX[^`]*`[^`]*\$\{google_bigquery_table\.(\w+)\.table_id\}`\(([^)]*)\)"
)


def terraform_layouts(path: Path = BIGQUERY_TF) -> dict[str, Layout]:
    """How Terraform lays the tables out: partitioning, clustering, search indexes.

    Read from the configuration itself, so the fake bills queries against the
    layout that is deployed, and a change to it shows in the tests' bills.
    """
    options = hcl2.SerializationOptions(with_comments=False, strip_string_quotes=True)
    config = hcl2.load(path.open(), serialization_options=options)
    tables: dict[str, dict[str, Any]] = {}
    for block in config.get("resource", []):
        tables.update(block.get("google_bigquery_table", {}))
    indexed: dict[str, set[str]] = {}
    for name, columns_text in _SEARCH_INDEX.findall(path.read_text()):
        indexed.setdefault(name, set()).update(c.strip() for c in columns_text.split(","))
    layouts = {}
    for name, table in tables.items():
        partitioning = table.get("time_partitioning") or [{}]
        layouts[table["table_id"]] = Layout(
            partition=partitioning[0].get("field"),
            clustering=tuple(table.get("clustering") or ()),
            search_index=frozenset(indexed.get(name, ())),
        )
    return layouts


LAYOUTS = terraform_layouts()

_DUCKDB_TYPES = {
    Kind.STRING: "VARCHAR",
    Kind.INT64: "BIGINT",
    Kind.TIMESTAMP: "TIMESTAMP",
    Kind.JSON: "JSON",
    Kind.BYTES: "BLOB",
}
_ARROW_TYPES = {
    Kind.STRING: pa.string(),
    Kind.INT64: pa.int64(),
    Kind.TIMESTAMP: pa.timestamp("us"),
    Kind.JSON: pa.string(),
    Kind.BYTES: pa.binary(),
}
# DuckDB result type -> the REST schema type the client converts from.
_RESULT_TYPES = {
    "BIGINT": "INTEGER",
    "INTEGER": "INTEGER",
    "HUGEINT": "INTEGER",
    "VARCHAR": "STRING",
    "JSON": "STRING",
    "BOOLEAN": "BOOLEAN",
    "DOUBLE": "FLOAT",
    "BLOB": "BYTES",
}
_PATH = re.compile(r"^/bigquery/v2/projects/(?P<project>[^/]+)/queries$")


@dataclasses.dataclass
class ReceivedQuery:
    sql: str
    params: dict[str, Any]
    body: dict[str, Any]
    # What BigQuery would have billed it; None if it was refused before running.
    bill: Bill | None = None


def _param_value(param: dict[str, Any]) -> Any:
    kind = param["parameterType"]["type"]
    if kind == "ARRAY":
        item = {"type": param["parameterType"]["arrayType"]["type"]}
        return [
            _param_value({"parameterType": item, "parameterValue": v})
            for v in param["parameterValue"].get("arrayValues", [])
        ]
    return _scalar(kind, param["parameterValue"].get("value"))


def _scalar(kind: str, value: Any) -> Any:
    if value is None:
        return None
    match kind:
        case "INT64":
            return int(value)
        case "BOOL":
            return value == "true"
        case "FLOAT64":
            return float(value)
        case _:
            return value


def _cell(value: Any) -> Any:
    match value:
        case None:
            return None
        case bool():
            return "true" if value else "false"
        case bytes():
            return base64.b64encode(value).decode()
        case _:
            return str(value)


class FakeBigQueryJobs:
    def __init__(
        self,
        write: FakeBigQueryWrite,
        *,
        project: str,
        dataset: str,
        billing: BillingModel | None = None,
    ) -> None:
        self.write = write
        self.project = project
        self.dataset = dataset
        self.billing = billing or BillingModel(
            layouts=LAYOUTS,
            kinds={t: {c.name: c.kind for c in columns(r)} for t, r in TABLES.items()},
        )
        self.queries: list[ReceivedQuery] = []
        self._lock = threading.Lock()
        self._db: tuple[tuple[tuple[int, int, int], ...], duckdb.DuckDBPyConnection] | None = None
        # (HTTP status, reason) answered to the next queries instead of running them.
        self.failures: list[tuple[int, str]] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.endpoint = ""

    def start(self, port: int = 0) -> str:
        """Serve on 127.0.0.1:`port` (0: any free one); the endpoint URL."""
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                status, answer = fake.handle(self.path, body)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        return self.endpoint

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def handle(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        match = _PATH.match(path.split("?", 1)[0])
        if match is None:
            return 404, _error(404, "notFound", f"no such endpoint: {path}")
        sql = body["query"]
        params = {p["name"]: _param_value(p) for p in body.get("queryParameters", [])}
        received = ReceivedQuery(sql=sql, params=params, body=body)
        self.queries.append(received)
        if body.get("useLegacySql") is not False or (
            params and body.get("parameterMode") != "NAMED"
        ):
            return 400, _error(400, "invalid", "expected standard SQL with named parameters")
        if self.failures:
            status, reason = self.failures.pop(0)
            return status, _error(status, reason, "injected failure")
        try:
            bill = self.bill(sql, params)
        except (duckdb.Error, sqlglot.errors.SqlglotError) as exc:
            return 400, _error(400, "invalidQuery", str(exc))
        received.bill = bill
        limit = body.get("maximumBytesBilled")
        if limit is not None and bill.bytes_billed > int(limit):
            # BigQuery's own words, so the client raises what it would raise.
            message = (
                f"Query exceeded limit for bytes billed: {int(limit)}. "
                f"{bill.bytes_billed} or higher required."
            )
            return 400, _error(400, "bytesBilledLimitExceeded", message)
        try:
            names, types, rows = self.run(sql, params)
        except (duckdb.Error, sqlglot.errors.SqlglotError) as exc:
            return 400, _error(400, "invalidQuery", str(exc))
        return 200, {
            "kind": "bigquery#queryResponse",
            "schema": {
                "fields": [
                    {"name": name, "type": kind, "mode": "NULLABLE"}
                    for name, kind in zip(names, types, strict=True)
                ]
            },
            "jobComplete": True,
            "totalRows": str(len(rows)),
            "rows": [{"f": [{"v": _cell(v)} for v in row]} for row in rows],
            "queryId": f"fake-{len(self.queries)}",
            "location": "US",
            "cacheHit": False,
            "totalBytesProcessed": str(bill.bytes_processed),
            "totalBytesBilled": str(bill.bytes_billed),
        }

    def bill(self, sql: str, params: dict[str, Any]) -> Bill:
        """What BigQuery would bill this query over the rows stored now."""
        schema = {
            self.project: {
                self.dataset: {
                    **{
                        table: {c.name: c.kind.value for c in columns(row_type)}
                        for table, row_type in TABLES.items()
                    },
                    PARTITIONS_VIEW: PARTITIONS_COLUMNS,
                }
            }
        }
        return self.billing.bill(sql, params, self._rows, schema)

    def _rows(self, table: str) -> list[dict[str, Any]]:
        return self.write.rows(f"projects/{self.project}/datasets/{self.dataset}/tables/{table}")

    def run(
        self, sql: str, params: dict[str, Any]
    ) -> tuple[list[str], list[str], list[tuple[Any, ...]]]:
        translated = sqlglot.transpile(sql, read="bigquery", write="duckdb")[0]
        # Each request runs on a cursor of its own over the loaded tables.
        con = self._loaded().cursor()
        try:
            # Bind only what the statement names: DuckDB refuses unused parameters.
            used = {k: v for k, v in params.items() if re.search(rf"\${k}\b", translated)}
            result = con.execute(translated, used)
            names = [d[0] for d in result.description or ()]
            types = [
                _RESULT_TYPES.get(str(d[1]).upper(), "STRING") for d in result.description or ()
            ]
            return names, types, result.fetchall()
        finally:
            con.close()

    def _loaded(self) -> duckdb.DuckDBPyConnection:
        """An in-memory DuckDB holding the stored rows, loaded again once they change."""
        stored = {table: self._rows(table) for table in TABLES}
        version = tuple(_version(rows) for rows in stored.values())
        with self._lock:
            if self._db is not None and self._db[0] == version:
                return self._db[1]
            con = duckdb.connect(":memory:")
            con.execute(f"ATTACH ':memory:' AS \"{self.project}\"")
            con.execute(f'CREATE SCHEMA "{self.project}"."{self.dataset}"')
            for table, row_type in TABLES.items():
                name = f'"{self.project}"."{self.dataset}"."{table}"'
                cols = columns(row_type)
                ddl = ", ".join(f'"{c.name}" {_DUCKDB_TYPES[c.kind]}' for c in cols)
                con.execute(f"CREATE TABLE {name} ({ddl})")
                if stored[table]:
                    schema = pa.schema([(c.name, _ARROW_TYPES[c.kind]) for c in cols])
                    con.register("incoming", pa.Table.from_pylist(stored[table], schema=schema))
                    con.execute(f"INSERT INTO {name} SELECT * FROM incoming")
                    con.unregister("incoming")
            _partitions_view(con, f'"{self.project}"."{self.dataset}"', stored.__getitem__)
            if self._db is not None:
                self._db[1].close()
            self._db = (version, con)
            return con


def _version(rows: list[dict[str, Any]]) -> tuple[int, int, int]:
    """Which rows a table holds: rows are only appended, or a table replaced whole."""
    return (len(rows), id(rows[0]), id(rows[-1])) if rows else (0, 0, 0)


# Partition ids of a DAY-partitioned table are its UTC dates, YYYYMMDD.
PARTITIONS_VIEW = "INFORMATION_SCHEMA.PARTITIONS"
PARTITIONS_COLUMNS = {"table_name": "STRING", "partition_id": "STRING", "total_rows": "INT64"}


def _partitions_view(
    con: duckdb.DuckDBPyConnection, dataset: str, rows: Callable[[str], list[dict[str, Any]]]
) -> None:
    """The dataset's INFORMATION_SCHEMA.PARTITIONS: rows per day partition of each table."""
    con.execute(
        f'CREATE TABLE {dataset}."{PARTITIONS_VIEW}" '
        "(table_name VARCHAR, partition_id VARCHAR, total_rows BIGINT)"
    )
    counts: dict[tuple[str, str], int] = {}
    for table in TABLES:
        for row in rows(table):
            day = datetime.fromtimestamp(row["ingest_time"] // 1_000_000, tz=UTC)
            key = (table, day.strftime("%Y%m%d"))
            counts[key] = counts.get(key, 0) + 1
    if counts:
        con.executemany(
            f'INSERT INTO {dataset}."{PARTITIONS_VIEW}" VALUES (?, ?, ?)',
            [(table, day, n) for (table, day), n in counts.items()],
        )


def _error(status: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "error": {
            "code": status,
            "message": message,
            "errors": [{"reason": reason, "message": message}],
        }
    }
