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

Jobs (`jobs.insert`, `jobs.get`) follow BigQuery's rules where a caller's correctness
rests on them: a job id is used once in a project (inserting it again is answered 409
`duplicate`, "Already Exists: Job …", whether the first one succeeded, failed or still
runs), a job that fails keeps its id and says why in `status.errorResult`, and a DML
`INSERT INTO t (cols) SELECT …` adds its rows to `t` at once, all or none. An INSERT is
billed as BigQuery bills DML on on-demand pricing: what its SELECT reads, and the
10 MB minimum for every table the statement names, the destination among them (BigQuery
may bill the destination less; the fake never bills less than BigQuery). A test may make
the next jobs fail (`job_failures`) or hold them running until it finishes them
(`hold_jobs`, `finish`), or another account's (`foreign_jobs`: jobs.get answers 403, as
it does a holder of roles/bigquery.jobUser alone). Table functions Terraform makes
(`records_unique`) are run as their body, rendered from the template Terraform renders,
their arguments bound.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import json
import re
import string
import threading
import time
from collections.abc import Callable, Collection
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import duckdb
import hcl2
import pyarrow as pa
import sqlglot

from app.records import BIGQUERY_TABLES, CLOCK_SKEW_MICROS, Kind, columns
from app.settings import QuerySettings
from tests.bigquery.billing import (
    Bill,
    BillingModel,
    Layout,
    billed,
    data_type,
    partition_id,
    partition_of,
)
from tests.bigquery.fake_storage_write import FakeBigQueryWrite, SchemaRefused

# sqlglot loads a dialect on its first use and registers its class before it has made
# the class's tokenizer: two of the fake's request threads meeting BigQuery's SQL first
# at once may tokenize it as the default dialect, which reads no backquoted name (a drift
# test was refused "Unexpected token" at `fake-project`'s dash, once). Loaded here, as
# the fake is imported, before any thread serves.
for _dialect in ("bigquery", "duckdb"):
    sqlglot.Dialect.get_or_raise(_dialect)

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
        field = partitioning[0].get("field")
        clustering = table.get("clustering") or ()
        granularity = partitioning[0].get("type", "DAY")
        if isinstance(clustering, str) and clustering.startswith("${var.layout."):
            # A system's layout (root layouts.tf): its default, today's, unless a test
            # lays the table out otherwise (tests/infra/test_layout_variables.py keeps it equal).
            field, clustering, granularity = (
                DEFAULT_LAYOUT.partition,
                DEFAULT_LAYOUT.clustering,
                DEFAULT_LAYOUT.granularity,
            )
        layouts[table["table_id"]] = Layout(
            partition=field,
            clustering=tuple(clustering),
            search_index=frozenset(indexed.get(name, ())),
            granularity=granularity,
        )
    return layouts


# The layout of `records` a system has unless it chooses another.
DEFAULT_LAYOUT = Layout(partition="ingest_time", clustering=("ingest_time",))
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
# `client.query(sql).result()`: jobs.insert, then jobs.getQueryResults and jobs.get.
_JOBS = re.compile(r"^/bigquery/v2/projects/(?P<project>[^/]+)/jobs$")
_JOB = re.compile(r"^/bigquery/v2/projects/(?P<project>[^/]+)/jobs/(?P<job>[^/]+)$")
_RESULTS = re.compile(r"^/bigquery/v2/projects/(?P<project>[^/]+)/queries/(?P<job>[^/]+)$")
_TABLE = re.compile(
    r"^/bigquery/v2/projects/(?P<project>[^/]+)/datasets/(?P<dataset>[^/]+)/tables/(?P<table>[^/]+)$"
)
_TABLES = re.compile(
    r"^/bigquery/v2/projects/(?P<project>[^/]+)/datasets/(?P<dataset>[^/]+)/tables$"
)
# A column of a table the fake was asked to create, as the billing model sizes it.
_KINDS = {"STRING": Kind.STRING, "INT64": Kind.INT64, "INTEGER": Kind.INT64, "BYTES": Kind.BYTES}
_KINDS |= {"TIMESTAMP": Kind.TIMESTAMP, "JSON": Kind.JSON}
# The tables Terraform creates with the columns of a row of app/records.py: every one
# the service queries, partitioned and clustered as bigquery.tf lays it out.
TABLES = BIGQUERY_TABLES
# …and those whose columns are Pub/Sub's, hand-written beside them (the dead-letter
# subscription's `dead_letters`): every fake holds them as Terraform creates them,
# empty until a test writes rows (`write.tables[path]`, or the Storage Write API).
SCHEMAS = BIGQUERY_TF.parent / "schemas"
HAND_WRITTEN: dict[str, list[dict[str, Any]]] = {
    "dead_letters": json.loads((SCHEMAS / "dead_letters.json").read_text())
}
# The row's place in its table, in the copy a DML statement runs on.
_ROW = "__row"
SQL_TEMPLATES = BIGQUERY_TF.parent / "sql"


def routine_body(name: str, project: str, dataset: str, **variables: object) -> str:
    """A table function's body as Terraform renders it (modules/system/bigquery.tf's
    templatefile) in `project`.`dataset`: `${records}` the table, the other `${…}` from
    `variables`. Every `${…}` of the templates is a plain value (no directive)."""
    text = (SQL_TEMPLATES / f"{name}.sql.tftpl").read_text()
    values = {"records": f"`{project}.{dataset}.records`", **variables}
    rendered = string.Template(text).safe_substitute({k: str(v) for k, v in values.items()})
    body = "\n".join(line for line in rendered.splitlines() if not line.startswith("--"))
    assert "${" not in body, f"{name}: a variable left unrendered"
    return body


def default_routines(project: str, dataset: str) -> dict[str, str]:
    """The table functions every system's dataset has, for the service's defaults."""
    window = int(QuerySettings().dedupe_window_seconds * 1_000_000)
    return {
        "records_unique": routine_body(
            "records_unique",
            project,
            dataset,
            window_micros=window,
            clock_skew_micros=CLOCK_SKEW_MICROS,
        )
    }


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


class _Refused(ValueError):
    """A parameter BigQuery would refuse, or the query holding it."""


def _scalar(kind: str, value: Any) -> Any:
    if value is None:
        return None
    if kind == "STRING" and not isinstance(value, str):
        # A client that sends a number as a STRING parameter (google-cloud-bigquery sends
        # a float's value as a JSON number, whatever type it is given) meets a query that
        # BigQuery refuses: it coerces no STRING parameter to a number, where DuckDB,
        # given the value, casts it to whatever the query compares it with.
        raise _Refused(f"a STRING parameter holding {value!r}: no matching signature")
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
            kinds={
                **{t: {c.name: c.kind for c in columns(r)} for t, r in TABLES.items()},
                **{t: _kinds(fields) for t, fields in HAND_WRITTEN.items()},
            },
        )
        for table, fields in HAND_WRITTEN.items():
            if self._path(table) not in write.schemas:
                write.define(self._path(table), fields)
        self.queries: list[ReceivedQuery] = []
        self._lock = threading.Lock()
        self._db: tuple[tuple[object, ...], duckdb.DuckDBPyConnection] | None = None
        # (HTTP status, reason) answered to the next queries instead of running them.
        self.failures: list[tuple[int, str]] = []
        # …and to the next table patches; every patch body received.
        self.table_failures: list[tuple[int, str]] = []
        # …and to the next `tables.get`.
        self.get_failures: list[tuple[int, str]] = []
        self.table_patches: list[dict[str, Any]] = []
        # Called once each, in turn, by a `tables.get` once it has read the table and
        # before its answer is sent (a change landing between another instance's
        # read and its write).
        self.after_get: list[Callable[[], None]] = []
        # How long each `tables.get` and `tables.patch` takes to answer (seconds),
        # as BigQuery's REST API takes a while; and the patches refused for a
        # stale ETag (412). A patch is checked and applied at once, as BigQuery
        # applies it: two at the same time never both pass one ETag.
        self.table_latency = 0.0
        self.stale_patches = 0
        # …and those applied (none refused for any reason).
        self.applied_patches = 0
        self._tables_lock = threading.Lock()
        # Tables made through `tables.insert` (their request bodies), by name, and
        # the names of those dropped since.
        self.created: dict[str, dict[str, Any]] = {}
        # Each table's labels, by name.
        self.labels: dict[str, dict[str, str]] = {}
        self.dropped: list[str] = []
        # DML statements applied.
        self.updates = 0
        # Query jobs inserted (`client.query`), by id: the job and its answer, each run
        # to its end as it is inserted unless held.
        self.jobs: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
        # (reason, message) of the next jobs inserted: each fails as it runs (inserted,
        # then DONE with that errorResult), changing nothing.
        self.job_failures: list[tuple[str, str]] = []
        # While set, a job inserted stays RUNNING until `finish` runs it; the held
        # jobs' ids, in order.
        self.hold_jobs = False
        self.held: list[str] = []
        # Every jobs.insert received: the job id, and the status answered.
        self.job_inserts: list[tuple[str, int]] = []
        # Jobs another account inserted: a caller holding only roles/bigquery.jobUser
        # gets 403 for each (jobs.get reads one's own jobs), though its id is taken.
        self.foreign_jobs: set[str] = set()
        # Answers to the next `jobs.insert` calls, each refused before BigQuery keeps the
        # job (its id still free), and to the next `tables.list` calls: (status, reason).
        self.insert_refusals: list[tuple[int, str]] = []
        self.list_failures: list[tuple[int, str]] = []
        # Table functions by name, as a call of one is run (see the module notes).
        self.routines: dict[str, str] = default_routines(project, dataset)
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
                if _TABLES.match(self.path.split("?", 1)[0]):
                    self._answer(*fake.create_table(self.path, body))
                    return
                if _JOBS.match(self.path.split("?", 1)[0]):
                    self._answer(*fake.insert_job(self.path, body))
                    return
                self._answer(*fake.handle(self.path, body))

            def do_DELETE(self) -> None:
                status, answer = fake.delete_table(self.path)
                if status == 204:
                    self.send_response(204)
                    self.end_headers()
                    return
                self._answer(status, answer)

            def do_GET(self) -> None:
                if _TABLES.match(self.path.split("?", 1)[0]):
                    self._answer(*fake.list_tables(self.path))
                    return
                if _JOB.match(self.path.split("?", 1)[0]) or _RESULTS.match(
                    self.path.split("?", 1)[0]
                ):
                    self._answer(*fake.job(self.path))
                    return
                if fake.get_failures:
                    status, reason = fake.get_failures.pop(0)
                    self._answer(status, _error(status, reason, "injected failure"))
                    return
                # The change lands after the read and before its answer is sent. Run
                # after the answer, it could fire on a read made before the hook was
                # set (the client already past it), or land after the client's write.
                answer = fake.table(self.path, None, None)
                if fake.after_get:
                    fake.after_get.pop(0)()
                self._answer(*answer)

            def do_PATCH(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                self._answer(*fake.table(self.path, body, self.headers.get("If-Match")))

            def _answer(self, status: int, answer: dict[str, Any]) -> None:
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

    def table(
        self, path: str, patch: dict[str, Any] | None, if_match: str | None
    ) -> tuple[int, dict[str, Any]]:
        """`tables.get`, or `tables.patch` of the schema (with `If-Match`, as
        `Client.update_table` sends the ETag it read), of a table the write fake
        holds a schema of."""
        match = _TABLE.match(path.split("?", 1)[0])
        if match is None:
            return 404, _error(404, "notFound", f"no such endpoint: {path}")
        full = f"projects/{match['project']}/datasets/{match['dataset']}/tables/{match['table']}"
        if full not in self.write.schemas:
            return 404, _error(404, "notFound", f"Not found: Table {match['table']}")
        if self.table_latency:
            time.sleep(self.table_latency)
        with self._tables_lock:
            if patch is not None and "schema" not in patch and "labels" in patch:
                # Labels alone: each key set, or removed where null.
                labels = self.labels.setdefault(match["table"], {})
                for key, value in patch["labels"].items():
                    if value is None:
                        labels.pop(key, None)
                    else:
                        labels[key] = value
            elif patch is not None:
                self.table_patches.append(patch)
                if self.table_failures:
                    status, reason = self.table_failures.pop(0)
                    return status, _error(status, reason, "injected failure")
                try:
                    self.write.patch(full, patch["schema"]["fields"], if_match)
                except ValueError as exc:
                    self.stale_patches += 1
                    message = f"Precondition check failed: {exc}"
                    return 412, _error(412, "conditionNotMet", message)
                except SchemaRefused as exc:
                    return 400, _error(400, "invalid", str(exc))
                self.applied_patches += 1
            schema = self.write.schemas[full]
            fields, etag = schema.fields, schema.etag
        layout = self.billing.layouts.get(match["table"])
        laid_out: dict[str, Any] = {}
        if layout is not None and layout.partition is not None:
            laid_out["timePartitioning"] = {"type": layout.granularity, "field": layout.partition}
        if layout is not None and layout.clustering:
            laid_out["clustering"] = {"fields": list(layout.clustering)}
        return 200, {
            "kind": "bigquery#table",
            "id": f"{match['project']}:{match['dataset']}.{match['table']}",
            "tableReference": {
                "projectId": match["project"],
                "datasetId": match["dataset"],
                "tableId": match["table"],
            },
            "schema": {"fields": fields},
            "etag": etag,
            "location": "US",
            "labels": dict(self.labels.get(match["table"], {})),
            **laid_out,
        }

    def list_tables(self, path: str) -> tuple[int, dict[str, Any]]:
        """`tables.list` of the dataset: every table the fake holds, with its labels."""
        match = _TABLES.match(path.split("?", 1)[0])
        assert match is not None
        if self.list_failures:
            status, reason = self.list_failures.pop(0)
            return status, _error(status, reason, "injected failure")
        prefix = f"projects/{match['project']}/datasets/{match['dataset']}/tables/"
        names = sorted(p.removeprefix(prefix) for p in self.write.schemas if p.startswith(prefix))
        listed = [
            {
                "kind": "bigquery#table",
                "id": f"{match['project']}:{match['dataset']}.{name}",
                "tableReference": {
                    "projectId": match["project"],
                    "datasetId": match["dataset"],
                    "tableId": name,
                },
                "type": "TABLE",
                "labels": dict(self.labels.get(name, {})),
            }
            for name in names
        ]
        return 200, {"kind": "bigquery#tableList", "tables": listed, "totalItems": len(listed)}

    def create_table(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """`tables.insert` of a table in the dataset (a backfill's staging table): its
        schema goes to the write fake, which takes appends to it from then on."""
        match = _TABLES.match(path.split("?", 1)[0])
        assert match is not None
        name = body["tableReference"]["tableId"]
        full = f"projects/{match['project']}/datasets/{match['dataset']}/tables/{name}"
        with self._tables_lock:
            if full in self.write.schemas:
                return 409, _error(409, "duplicate", f"Already Exists: Table {name}")
            self.created[name] = body
            self.labels[name] = dict(body.get("labels") or {})
            self.write.define(full, body["schema"]["fields"])
            self.billing.kinds[name] = _kinds(body["schema"]["fields"])
            partitioning = body.get("timePartitioning")
            if partitioning is not None and name not in self.billing.layouts:
                # Laid out as asked, as BigQuery lays it out: what prunes its reads.
                self.billing.layouts[name] = Layout(
                    partition=partitioning.get("field"),
                    clustering=tuple((body.get("clustering") or {}).get("fields", ())),
                    granularity=partitioning.get("type", "DAY"),
                )
        return self.table(f"{path.split('?', 1)[0]}/{name}", None, None)

    def delete_table(self, path: str) -> tuple[int, dict[str, Any]]:
        """`tables.delete` of a table the fake was asked to create."""
        match = _TABLE.match(path.split("?", 1)[0])
        if match is None or match["table"] not in self.created:
            return 404, _error(404, "notFound", f"Not found: {path}")
        full = f"projects/{match['project']}/datasets/{match['dataset']}/tables/{match['table']}"
        with self._tables_lock:
            self.created.pop(match["table"])
            self.dropped.append(match["table"])
            self.write.drop(full)
            self.billing.kinds.pop(match["table"], None)
        return 204, {}

    def insert_job(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """`jobs.insert` of a query job (`client.query(sql)`): run as `jobs.query` runs
        a query, at once unless held; its answer kept for `jobs.getQueryResults`. A job
        id already used is refused (409 duplicate), as BigQuery refuses it for as long
        as it keeps the job. A query refused is refused here, as BigQuery refuses one it
        cannot parse, and its id is taken all the same."""
        match = _JOBS.match(path.split("?", 1)[0])
        assert match is not None
        query = (body.get("configuration") or {}).get("query")
        if not isinstance(query, dict) or "query" not in query:
            return 400, _error(400, "invalid", "only query jobs are served here")
        reference = {
            "projectId": match["project"],
            "jobId": (body.get("jobReference") or {}).get("jobId") or f"fake-{len(self.jobs)}",
            "location": "US",
        }
        job_id = reference["jobId"]
        if self.insert_refusals:
            status, reason = self.insert_refusals.pop(0)
            return status, _error(status, reason, "injected refusal")
        job: dict[str, Any] = {
            "kind": "bigquery#job",
            "id": f"{reference['projectId']}:US.{job_id}",
            "jobReference": reference,
            "configuration": body["configuration"],
            "status": {"state": "RUNNING"},
            "statistics": {"query": {}},
        }
        with self._lock:
            if job_id in self.jobs:
                self.job_inserts.append((job_id, 409))
                message = f"Already Exists: Job {reference['projectId']}:US.{job_id}"
                return 409, _error(409, "duplicate", message)
            self.jobs[job_id] = (job, {"jobComplete": False, "jobReference": reference})
            failure = self.job_failures.pop(0) if self.job_failures else None
            held = self.hold_jobs and failure is None
            if held:
                self.held.append(job_id)
            self.job_inserts.append((job_id, 200))
        if held:
            return 200, job
        if failure is not None:
            self._failed(job_id, *failure)
            return 200, self.jobs[job_id][0]
        status, answer = self._run_job(job_id)
        return (status, answer) if status != 200 else (200, self.jobs[job_id][0])

    def finish(self, job_id: str | None = None) -> tuple[int, dict[str, Any]]:
        """Run a held job (the first held, if none is named) to its end now."""
        with self._lock:
            job_id = job_id or self.held[0]
            self.held.remove(job_id)
        return self._run_job(job_id)

    def _run_job(self, job_id: str) -> tuple[int, dict[str, Any]]:
        """Run an inserted job's query, and keep the job DONE with its answer or error."""
        job, _ = self.jobs[job_id]
        reference = job["jobReference"]
        query = job["configuration"]["query"]
        status, answer = self.handle(
            f"/bigquery/v2/projects/{reference['projectId']}/queries", query
        )
        if status != 200:
            first = answer["error"]["errors"][0]
            self._failed(job_id, first["reason"], first["message"])
            return status, answer
        answer = {**answer, "jobReference": reference}
        statistics = {
            "totalBytesProcessed": answer.get("totalBytesProcessed", "0"),
            "totalBytesBilled": answer.get("totalBytesBilled", "0"),
            "cacheHit": False,
        }
        if "numDmlAffectedRows" in answer:
            statistics["numDmlAffectedRows"] = answer["numDmlAffectedRows"]
        done = {**job, "status": {"state": "DONE"}, "statistics": {"query": statistics}}
        with self._lock:
            self.jobs[job_id] = (done, answer)
        return 200, done

    def _failed(self, job_id: str, reason: str, message: str) -> None:
        """Keep the job DONE with an error: BigQuery keeps a failed job, and its id."""
        with self._lock:
            job, _ = self.jobs[job_id]
            error = {"reason": reason, "message": message}
            failed = {**job, "status": {"state": "DONE", "errorResult": error, "errors": [error]}}
            self.jobs[job_id] = (failed, {"jobComplete": True, "jobReference": job["jobReference"]})

    def job(self, path: str) -> tuple[int, dict[str, Any]]:
        """`jobs.get` (the job as it stands) or `jobs.getQueryResults` (its rows, all at
        once; not complete while it runs; its error if it failed)."""
        bare = path.split("?", 1)[0]
        found = _RESULTS.match(bare) or _JOB.match(bare)
        assert found is not None
        kept = self.jobs.get(found["job"])
        if kept is None:
            return 404, _error(404, "notFound", f"Not found: Job {found['job']}")
        if found["job"] in self.foreign_jobs:
            message = (
                f"Access Denied: Job {self.project}:US.{found['job']}: User does not have "
                "bigquery.jobs.get permission for job"
            )
            return 403, _error(403, "accessDenied", message)
        job, answer = kept
        if _RESULTS.match(bare):
            error = job["status"].get("errorResult")
            if error is not None:
                return 400, _error(400, error["reason"], error["message"])
            return 200, {**answer, "kind": "bigquery#getQueryResultsResponse"}
        return 200, job

    def handle(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        match = _PATH.match(path.split("?", 1)[0])
        if match is None:
            return 404, _error(404, "notFound", f"no such endpoint: {path}")
        sql = body["query"]
        try:
            params = {p["name"]: _param_value(p) for p in body.get("queryParameters", [])}
        except _Refused as exc:
            return 400, _error(400, "invalid", str(exc))
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
            sql = self.inlined(sql)
            sql = qualified(sql, match["project"], body.get("defaultDataset"))
            statement = _parsed(sql)
        except sqlglot.errors.SqlglotError as exc:
            return 400, _error(400, "invalidQuery", str(exc))
        except Unqualified as exc:
            return 400, _error(400, "invalid", str(exc))
        if isinstance(statement, sqlglot.exp.Update):
            return self._update(statement, sql, params, received, body.get("maximumBytesBilled"))
        if isinstance(statement, sqlglot.exp.Insert):
            return self._insert(statement, params, received, body.get("maximumBytesBilled"))
        try:
            bill = self.bill(sql, params)
        except (duckdb.Error, sqlglot.errors.SqlglotError) as exc:
            return 400, _error(400, "invalidQuery", str(exc))
        received.bill = bill
        over = _over_limit(bill, body.get("maximumBytesBilled"))
        if over is not None:
            return over
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

    def _update(
        self,
        statement: sqlglot.exp.Update,
        sql: str,
        params: dict[str, Any],
        received: ReceivedQuery,
        limit: str | None,
    ) -> tuple[int, dict[str, Any]]:
        """A DML UPDATE, as BigQuery runs one: every row it matches changes at once
        (one transaction), and it is billed as DML on a partitioned table is, what
        it reads plus every column of each partition it changes."""
        table = statement.this.name
        path = self._path(table)
        if path not in self.write.schemas:
            return 404, _error(404, "notFound", f"Not found: Table {table}")
        # What it reads: its assignments' values over its tables, where it matches.
        reads = sqlglot.select(*(a.expression.copy() for a in statement.expressions))
        reads = reads.from_(statement.this.copy())
        source = statement.find(sqlglot.exp.From)
        if source is not None:
            reads = reads.join(source.this.copy())
        where = statement.find(sqlglot.exp.Where)
        if where is not None:
            reads = reads.where(where.this.copy())
        try:
            read = self.bill(reads.sql(dialect="bigquery"), params)
            changes = self._run_update(statement, sql, params)
        except (duckdb.Error, sqlglot.errors.SqlglotError) as exc:
            return 400, _error(400, "invalidQuery", str(exc))
        except _AmbiguousUpdate as exc:
            return 400, _error(400, "invalidQuery", str(exc))
        rows = self._rows(table)
        partitions = {self.billing.partition_of(table, rows[i]) for i in changes}
        types = {f["name"]: data_type(_sql_type(f)) for f in self.write.schemas[path].fields}
        bill = _dml_bill(read, table, self.billing.modified(table, rows, partitions, types))
        received.bill = bill
        over = _over_limit(bill, limit)
        if over is not None:
            return over
        self.write.update_rows(path, changes)
        self.billing.forget(table)
        self.updates += 1
        return 200, {
            "kind": "bigquery#queryResponse",
            "jobComplete": True,
            "numDmlAffectedRows": str(len(changes)),
            "dmlStats": {"updatedRowCount": str(len(changes))},
            "queryId": f"fake-{len(self.queries)}",
            "location": "US",
            "cacheHit": False,
            "totalBytesProcessed": str(bill.bytes_processed),
            "totalBytesBilled": str(bill.bytes_billed),
        }

    def _insert(
        self,
        statement: sqlglot.exp.Insert,
        params: dict[str, Any],
        received: ReceivedQuery,
        limit: str | None,
    ) -> tuple[int, dict[str, Any]]:
        """A DML `INSERT INTO t [(cols)] SELECT …`, as BigQuery runs one: its rows are
        added at once (one transaction), each value to the column it is named for; a
        column `t` lacks, or a count of values that differs, is refused. Billed what
        its SELECT reads, and at least 10 MB for each table named, `t` among them."""
        target = statement.this
        table = target.this.name if isinstance(target, sqlglot.exp.Schema) else target.name
        path = self._path(table)
        if path not in self.write.schemas:
            return 404, _error(404, "notFound", f"Not found: Table {self.dataset}.{table}")
        fields = {f["name"]: f for f in self.write.schemas[path].fields}
        named = (
            [c.name for c in target.expressions]
            if isinstance(target, sqlglot.exp.Schema)
            else list(fields)
        )
        unknown = [c for c in named if c not in fields]
        if unknown:
            message = f"Column {unknown[0]} is not present in table {self.dataset}.{table}"
            return 400, _error(400, "invalidQuery", message)
        select = statement.expression.sql(dialect="bigquery")
        try:
            read = self.bill(select, params)
            _, _, rows = self.run(select, params)
        except (duckdb.Error, sqlglot.errors.SqlglotError) as exc:
            return 400, _error(400, "invalidQuery", str(exc))
        if rows and len(rows[0]) != len(named):
            message = (
                f"Inserted row has wrong column count; Has {len(rows[0])}, expected {len(named)}"
            )
            return 400, _error(400, "invalidQuery", message)
        bill = _dml_bill(read, table, 0)
        received.bill = bill
        over = _over_limit(bill, limit)
        if over is not None:
            return over
        stored = [
            {c: _stored_value(v, fields[c]) for c, v in zip(named, row, strict=True)}
            for row in rows
        ]
        with self._tables_lock:
            self.write.append_rows(path, stored)
            self.billing.forget(table)
        return 200, {
            "kind": "bigquery#queryResponse",
            "jobComplete": True,
            "numDmlAffectedRows": str(len(stored)),
            "dmlStats": {"insertedRowCount": str(len(stored))},
            "queryId": f"fake-{len(self.queries)}",
            "location": "US",
            "cacheHit": False,
            "totalBytesProcessed": str(bill.bytes_processed),
            "totalBytesBilled": str(bill.bytes_billed),
        }

    def inlined(self, sql: str) -> str:
        """`sql` with each call of a table function (`ds.records_unique`(a, b) AS u) run
        as its body, its arguments (`since`, `until`) bound to the call's."""
        if not any(f"{name}`(" in sql for name in self.routines):
            return sql
        tree = sqlglot.parse_one(sql, read="bigquery")

        def inline(node: sqlglot.exp.Expression) -> sqlglot.exp.Expression:
            if not (
                isinstance(node, sqlglot.exp.Table) and isinstance(node.this, sqlglot.exp.Anonymous)
            ):
                return node
            body = self.routines.get(node.this.name.rsplit(".", 1)[-1])
            if body is None:
                return node
            arguments = dict(zip(("since", "until"), node.this.expressions, strict=True))

            def bind(inner: sqlglot.exp.Expression) -> sqlglot.exp.Expression:
                if (
                    isinstance(inner, sqlglot.exp.Column)
                    and not inner.table
                    and inner.name in arguments
                ):
                    return arguments[inner.name].copy()
                return inner

            bound = sqlglot.parse_one(body, read="bigquery").transform(bind)
            return sqlglot.exp.Subquery(this=bound, alias=node.args.get("alias"))

        return str(tree.transform(inline).sql(dialect="bigquery"))

    def _run_update(
        self, statement: sqlglot.exp.Update, sql: str, params: dict[str, Any]
    ) -> dict[int, dict[str, Any]]:
        """The rows an UPDATE changes, by their place in the target table, and their
        new values in the write fake's form; run on a copy of the tables it names."""
        target = statement.this.name
        named = {t.name for t in statement.find_all(sqlglot.exp.Table)}
        con = duckdb.connect(":memory:")
        try:
            con.execute(f"ATTACH ':memory:' AS \"{self.project}\"")
            con.execute(f'CREATE SCHEMA "{self.project}"."{self.dataset}"')
            for table in named:
                self._fill(con, table, numbered=table == target)
            assigned = [a.this.name for a in statement.expressions]
            translated = sqlglot.transpile(sql, read="bigquery", write="duckdb")[0]
            returning = ", ".join(f'"{c}"' for c in (_ROW, *assigned))
            translated = f"{translated} RETURNING {returning}"
            used = {k: v for k, v in params.items() if re.search(rf"\${k}\b", translated)}
            found = con.execute(translated, used).fetchall()
        finally:
            con.close()
        places = [row[0] for row in found]
        if len(set(places)) != len(places):
            raise _AmbiguousUpdate(
                "UPDATE/MERGE must match at most one source row for each target row"
            )
        fields = {f["name"]: f for f in self.write.schemas[self._path(target)].fields}
        return {
            row[0]: {c: _wire_value(v, fields[c]) for c, v in zip(assigned, row[1:], strict=True)}
            for row in found
        }

    def _path(self, table: str) -> str:
        return f"projects/{self.project}/datasets/{self.dataset}/tables/{table}"

    def bill(self, sql: str, params: dict[str, Any]) -> Bill:
        """What BigQuery would bill this query over the rows stored now."""
        schema = {
            self.project: {
                self.dataset: {
                    **{
                        table: {
                            **{c.name: c.kind.value for c in columns(row_type)},
                            # Typed columns by type, so a query bills the leaves it names.
                            **{f["name"]: _sql_type(f) for f in self._typed_columns(table)},
                        }
                        for table, row_type in TABLES.items()
                    },
                    **{
                        table: {f["name"]: _sql_type(f) for f in fields}
                        for table, fields in self._created_fields().items()
                    },
                    PARTITIONS_VIEW: PARTITIONS_COLUMNS,
                }
            }
        }
        return self.billing.bill(sql, params, self._rows, schema)

    def _created_fields(self) -> dict[str, list[dict[str, Any]]]:
        """The columns of each table made through `tables.insert` that still exists, and
        of each hand-written one."""
        found = {}
        for table in [*HAND_WRITTEN, *self.created]:
            schema = self.write.schemas.get(self._path(table))
            if schema is not None:
                found[table] = schema.fields
        return found

    def _typed_columns(self, table: str) -> list[dict[str, Any]]:
        """Columns of the table's schema that its Record does not have (typed columns)."""
        path = f"projects/{self.project}/datasets/{self.dataset}/tables/{table}"
        schema = self.write.schemas.get(path)
        if schema is None:
            return []
        own = {c.name for c in columns(TABLES[table])}
        return [f for f in schema.fields if f["name"] not in own]

    def _rows(self, table: str) -> list[dict[str, Any]]:
        return self.write.rows(f"projects/{self.project}/datasets/{self.dataset}/tables/{table}")

    def run(
        self, sql: str, params: dict[str, Any]
    ) -> tuple[list[str], list[str], list[tuple[Any, ...]]]:
        translated = in_duckdb(sql)
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

    def _fill(self, con: duckdb.DuckDBPyConnection, table: str, *, numbered: bool = False) -> None:
        """Create `table` in `con` and load its stored rows; `numbered`: with a first
        column `__row`, each row's place in the write fake's table."""
        name = f'"{self.project}"."{self.dataset}"."{table}"'
        rows = self._rows(table)
        if table in TABLES:
            cols = columns(TABLES[table])
            typed = self._typed_columns(table)
            ddl = [f'"{c.name}" {_DUCKDB_TYPES[c.kind]}' for c in cols]
            arrow = [(c.name, _ARROW_TYPES[c.kind]) for c in cols]
        else:
            schema = self.write.schemas.get(self._path(table))
            typed = schema.fields if schema is not None else []
            ddl, arrow = [], []
        ddl += [f'"{f["name"]}" {_duckdb_type(f)}' for f in typed]
        arrow += [(f["name"], _arrow_type(f)) for f in typed]
        if numbered:
            ddl.insert(0, f'"{_ROW}" BIGINT')
            arrow.insert(0, (_ROW, pa.int64()))
        con.execute(f"CREATE TABLE {name} ({', '.join(ddl)})")
        if not rows:
            return
        if typed:
            rows = [_typed_row(row, typed) for row in rows]
        if numbered:
            rows = [{_ROW: place, **row} for place, row in enumerate(rows)]
        con.register("incoming", pa.Table.from_pylist(rows, schema=pa.schema(arrow)))
        con.execute(f"INSERT INTO {name} SELECT * FROM incoming")
        con.unregister("incoming")

    def _loaded(self) -> duckdb.DuckDBPyConnection:
        """An in-memory DuckDB holding the stored rows, loaded again once they change."""
        stored = {table: self._rows(table) for table in TABLES}
        created = self._created_fields()
        version = (
            self.write.rows_changed,
            *(_version(rows) for rows in stored.values()),
            *(json.dumps(self._typed_columns(t)) for t in TABLES),
            *(_version(self._rows(t)) for t in created),
            json.dumps(created),
        )
        with self._lock:
            if self._db is not None and self._db[0] == version:
                return self._db[1]
            con = duckdb.connect(":memory:")
            con.execute(f"ATTACH ':memory:' AS \"{self.project}\"")
            con.execute(f'CREATE SCHEMA "{self.project}"."{self.dataset}"')
            for table in (*TABLES, *created):
                self._fill(con, table)
            _partitions_view(
                con,
                f'"{self.project}"."{self.dataset}"',
                self._rows,
                self.billing.layouts,
                tables=[*TABLES, *HAND_WRITTEN],
            )
            if self._db is not None:
                self._db[1].close()
            self._db = (version, con)
            return con


_NESTED_TYPES = {
    "STRING": ("VARCHAR", pa.string()),
    "BYTES": ("BLOB", pa.binary()),
    "INT64": ("BIGINT", pa.int64()),
    "INTEGER": ("BIGINT", pa.int64()),
    "FLOAT64": ("DOUBLE", pa.float64()),
    "FLOAT": ("DOUBLE", pa.float64()),
    "NUMERIC": ("DECIMAL(38, 9)", pa.decimal128(38, 9)),
    "BIGNUMERIC": ("VARCHAR", pa.string()),
    "BOOL": ("BOOLEAN", pa.bool_()),
    "BOOLEAN": ("BOOLEAN", pa.bool_()),
    "TIMESTAMP": ("TIMESTAMPTZ", pa.timestamp("us", tz="UTC")),
    "DATE": ("DATE", pa.date32()),
    "TIME": ("VARCHAR", pa.string()),
    "DATETIME": ("VARCHAR", pa.string()),
    "JSON": ("JSON", pa.string()),
}


# One statement comes again and again with new parameters (a walk over pages sends it
# hundreds of times), and sqlglot takes tens of milliseconds to parse or translate it:
# each is done once a statement. The tree is never changed (what builds on it copies).
@functools.lru_cache(maxsize=256)
def _parsed(sql: str) -> sqlglot.exp.Expression:
    return sqlglot.parse_one(sql, read="bigquery")


@functools.lru_cache(maxsize=256)
def in_duckdb(sql: str) -> str:
    return _parsed(sql).transform(_as_bigquery_reads).sql(dialect="duckdb")


def _as_bigquery_reads(node: sqlglot.exp.Expression) -> sqlglot.exp.Expression:
    """Where BigQuery and DuckDB differ on the same words: TO_JSON_STRING of what a
    JSON_QUERY did not find (SQL NULL) is the text `null` in BigQuery, as a JSON null's
    is, and NULL in DuckDB."""
    if isinstance(node, sqlglot.exp.JSONFormat) and isinstance(node.this, sqlglot.exp.JSONExtract):
        return sqlglot.exp.Coalesce(
            this=node.copy(), expressions=[sqlglot.exp.Literal.string("null")]
        )
    return node


def _kinds(fields: list[dict[str, Any]]) -> dict[str, Kind]:
    """A table's columns as the billing model sizes them, from its schema's fields."""
    return {
        f["name"]: _KINDS[f["type"]]
        for f in fields
        if f["type"] in _KINDS and f.get("mode") != "REPEATED"
    }


def _duckdb_type(field: dict[str, Any]) -> str:
    """A RECORD or typed column of the table's schema as DuckDB declares it."""
    if field["type"] in ("RECORD", "STRUCT"):
        inner = ", ".join(f'"{f["name"]}" {_duckdb_type(f)}' for f in field["fields"])
        base = f"STRUCT({inner})"
    else:
        base = _NESTED_TYPES[field["type"]][0]
    return f"{base}[]" if field.get("mode") == "REPEATED" else base


def _sql_type(field: dict[str, Any]) -> str:
    """A column of the table's schema as GoogleSQL spells its type (`STRUCT<...>`)."""
    if field["type"] in ("RECORD", "STRUCT"):
        inner = ", ".join(f"`{f['name']}` {_sql_type(f)}" for f in field["fields"])
        base = f"STRUCT<{inner}>"
    else:
        base = _SQL_NAMES.get(field["type"], field["type"])
    return f"ARRAY<{base}>" if field.get("mode") == "REPEATED" else base


_SQL_NAMES = {"INTEGER": "INT64", "FLOAT": "FLOAT64", "BOOLEAN": "BOOL"}


def _arrow_type(field: dict[str, Any]) -> pa.DataType:
    if field["type"] in ("RECORD", "STRUCT"):
        base = pa.struct([(f["name"], _arrow_type(f)) for f in field["fields"]])
    else:
        base = _NESTED_TYPES[field["type"]][1]
    return pa.list_(base) if field.get("mode") == "REPEATED" else base


def _typed_row(row: dict[str, Any], typed: list[dict[str, Any]]) -> dict[str, Any]:
    """A stored row with its typed columns as Arrow takes them (from their wire form)."""
    return {**row, **{f["name"]: _typed_value(row.get(f["name"]), f) for f in typed}}


def _typed_value(value: Any, field: dict[str, Any]) -> Any:
    if value is None:
        return None
    if field.get("mode") == "REPEATED":
        single = {**field, "mode": "NULLABLE"}
        return [_typed_value(v, single) for v in value]
    match field["type"]:
        case "RECORD" | "STRUCT":
            return {f["name"]: _typed_value(value.get(f["name"]), f) for f in field["fields"]}
        case "NUMERIC":
            return Decimal(value)
        case "TIMESTAMP":
            return datetime.fromtimestamp(0, tz=UTC) + timedelta(microseconds=value)
        case "DATE":
            return date(1970, 1, 1) + timedelta(days=value)
        case _:
            return value


def _stored_value(value: Any, field: dict[str, Any]) -> Any:
    """A value a DuckDB query gave, in the form the write fake keeps for `field`: the
    service's own TIMESTAMP columns come back without a zone (they are UTC)."""
    if field["type"] == "TIMESTAMP" and isinstance(value, datetime) and value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return _wire_value(value, field)


def _wire_value(value: Any, field: dict[str, Any]) -> Any:
    """A value DuckDB gives back, in the form the write fake keeps (`_typed_value`'s inverse)."""
    if value is None:
        return None
    if field.get("mode") == "REPEATED":
        single = {**field, "mode": "NULLABLE"}
        return [_wire_value(v, single) for v in value]
    match field["type"]:
        case "RECORD" | "STRUCT":
            return {f["name"]: _wire_value(value.get(f["name"]), f) for f in field["fields"]}
        case "NUMERIC":
            return format(value, "f")
        case "TIMESTAMP":
            return (value - datetime.fromtimestamp(0, tz=UTC)) // timedelta(microseconds=1)
        case "DATE":
            return (value - date(1970, 1, 1)).days
        case _:
            return value


class _AmbiguousUpdate(Exception):
    """An UPDATE matched a target row with more than one source row: BigQuery refuses it."""


def _version(rows: list[dict[str, Any]]) -> tuple[int, int, int]:
    """Which rows a table holds: rows are only appended, or a table replaced whole."""
    return (len(rows), id(rows[0]), id(rows[-1])) if rows else (0, 0, 0)


# Partition ids of a DAY-partitioned table are its UTC dates, YYYYMMDD.
PARTITIONS_VIEW = "INFORMATION_SCHEMA.PARTITIONS"
PARTITIONS_COLUMNS = {"table_name": "STRING", "partition_id": "STRING", "total_rows": "INT64"}


def _partitions_view(
    con: duckdb.DuckDBPyConnection,
    dataset: str,
    rows: Callable[[str], list[dict[str, Any]]],
    layouts: dict[str, Layout],
    *,
    tables: Collection[str] = TABLES,
) -> None:
    """The dataset's INFORMATION_SCHEMA.PARTITIONS: rows per partition of each table, by
    its partition column (`__NULL__`, `__UNPARTITIONED__` as BigQuery names them)."""
    con.execute(
        f'CREATE TABLE {dataset}."{PARTITIONS_VIEW}" '
        "(table_name VARCHAR, partition_id VARCHAR, total_rows BIGINT)"
    )
    counts: dict[tuple[str, str], int] = {}
    for table in tables:
        layout = layouts.get(table, DEFAULT_LAYOUT)
        for row in rows(table):
            if layout.partition is None:
                continue
            found = partition_of(layout, row.get(layout.partition))
            key = (table, partition_id(layout, found))
            counts[key] = counts.get(key, 0) + 1
    if counts:
        con.executemany(
            f'INSERT INTO {dataset}."{PARTITIONS_VIEW}" VALUES (?, ?, ?)',
            [(table, day, n) for (table, day), n in counts.items()],
        )


class Unqualified(ValueError):
    """A table named without its dataset, in a request that sets no default one."""


def qualified(sql: str, project: str, default_dataset: dict[str, str] | None) -> str:
    """`sql` with every table named in full, as BigQuery resolves a name: `dataset.table`
    in the job's project, a bare `table` in the request's default dataset (Unqualified,
    in BigQuery's words, where it sets none). Unchanged when every name is full."""
    default = (
        (default_dataset["datasetId"], default_dataset.get("projectId"))
        if default_dataset
        else None
    )
    return _qualified(sql, project, default)


@functools.lru_cache(maxsize=256)
def _qualified(sql: str, project: str, default: tuple[str, str | None] | None) -> str:
    """`qualified`, once for each statement: a walk over pages sends one statement again
    and again with new parameters, and sqlglot's parse takes milliseconds."""
    statement = sqlglot.parse_one(sql, read="bigquery")
    common = {cte.alias_or_name for cte in statement.find_all(sqlglot.exp.CTE)}
    changed = False
    for table in statement.find_all(sqlglot.exp.Table):
        if table.catalog or (not table.db and table.name in common):
            continue
        if not table.db:
            if not default:
                raise Unqualified(
                    f'Table "{table.name}" must be qualified with a dataset (e.g. dataset.table).'
                )
            table.set("db", sqlglot.exp.to_identifier(default[0]))
            table.set("catalog", sqlglot.exp.to_identifier(default[1] or project))
        else:
            table.set("catalog", sqlglot.exp.to_identifier(project))
        changed = True
    return statement.sql(dialect="bigquery") if changed else sql


def _dml_bill(read: Bill, table: str, modified: int) -> Bill:
    """A DML statement's bill: what it reads (`read`, by table), and `modified` bytes of
    the `table` it changes, billed as one statement (each table its 10 MB minimum)."""
    per_table: dict[str, int] = {}
    for name, scanned in read.scans:
        per_table[name] = per_table.get(name, 0) + scanned
    per_table[table] = per_table.get(table, 0) + modified
    return Bill(
        bytes_processed=sum(per_table.values()),
        bytes_billed=billed(per_table),
        scans=tuple(per_table.items()),
    )


def _over_limit(bill: Bill, limit: str | int | None) -> tuple[int, dict[str, Any]] | None:
    """BigQuery's refusal of a query billed over its `maximumBytesBilled`, in its own
    words (so the client raises what it would raise); None within it."""
    if limit is None or bill.bytes_billed <= int(limit):
        return None
    message = (
        f"Query exceeded limit for bytes billed: {int(limit)}. "
        f"{bill.bytes_billed} or higher required."
    )
    return 400, _error(400, "bytesBilledLimitExceeded", message)


def _error(status: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "error": {
            "code": status,
            "message": message,
            "errors": [{"reason": reason, "message": message}],
        }
    }
