"""Running one BigQuery query: parameters, a cost cap, a deadline, and its bill.

`google-cloud-bigquery` is synchronous, so each query runs in a worker thread.
Short queries are asked for (no job is created when BigQuery can answer at
once), every query carries `maximum_bytes_billed` and a job timeout, and what
it was billed is told to the store's `QueryObserver`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import date
from decimal import Decimal
from typing import Any, Final, NamedTuple

from google.api_core.exceptions import GoogleAPIError
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery
from google.cloud.bigquery.retry import DEFAULT_JOB_RETRY, DEFAULT_RETRY

from app.errors import QueryTooCostly, StoreUnavailable
from app.store import QueryObserver

log = logging.getLogger(__name__)

# A named query parameter: INT64, STRING, or an ARRAY<STRING> for IN UNNEST(...); BOOL,
# NUMERIC and DATE for a filter's typed field; FLOAT64 for the filter language's numbers.
QueryValue = int | float | str | list[str] | bool | Decimal | date
Rows = list[tuple[Any, ...]]

# The query itself gets the read timeout; the thread is given this much more
# for the HTTP round trip and decoding before the read is abandoned.
_QUERY_SLACK_SECONDS: Final = 2.0

# On-demand BigQuery bills at least 10 MiB per table a query references, and
# rounds up to a whole MiB; every read here references one table, the
# readiness probe's `SELECT 1` none.
_MIB: Final = 1 << 20
_MINIMUM_BILLED: Final = 10 * _MIB


def billed_bytes(processed: int, *, tables: int = 1) -> int:
    """What on-demand BigQuery bills a query over `tables` tables that processed `processed` bytes.

    The client library exposes bytes processed, not bytes billed, for short
    queries; BigQuery's documented rule turns one into the other.
    """
    if not tables:
        return 0
    return max(tables * _MINIMUM_BILLED, -(-processed // _MIB) * _MIB)


def _ignore(**_: object) -> None:
    return None


class QueryRunner:
    """One `bigquery.Client`, opened by `start`, and the rules every query runs under."""

    def __init__(
        self,
        project: str,
        *,
        timeout: float,
        max_bytes_billed: int,
        endpoint: str | None = None,
        observer: QueryObserver | None = None,
    ) -> None:
        self.project = project
        self.max_bytes_billed = max_bytes_billed
        self._timeout = timeout
        self._endpoint = endpoint
        self._observe: QueryObserver = observer or _ignore
        self._client: bigquery.Client | None = None

    async def start(self) -> None:
        self._client = await asyncio.to_thread(self._open)

    def _open(self) -> bigquery.Client:
        if self._endpoint is not None:
            endpoint = self._endpoint
            if "://" not in endpoint:
                endpoint = f"http://{endpoint}"
            return bigquery.Client(
                project=self.project,
                credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
                client_options={"api_endpoint": endpoint},
                default_job_creation_mode="JOB_CREATION_OPTIONAL",
            )
        return bigquery.Client(
            project=self.project, default_job_creation_mode="JOB_CREATION_OPTIONAL"
        )

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await asyncio.to_thread(client.close)

    async def call(
        self, function: Callable[[bigquery.Client], Any], *, seconds: float | None = None
    ) -> Any:
        """`function` of the client, in a thread; it must bound its own HTTP calls by
        `seconds` (default: the read timeout), which this waits for plus the thread's
        slack."""
        if self._client is None:
            raise StoreUnavailable("the BigQuery store is not started")
        client = self._client
        seconds = self._timeout if seconds is None else seconds
        async with asyncio.timeout(seconds + _QUERY_SLACK_SECONDS):
            return await asyncio.to_thread(function, client)

    async def run(self, sql: str, params: dict[str, QueryValue], *, tables: int = 1) -> Rows:
        """The rows of one query over `tables` tables, or StoreUnavailable / QueryTooCostly."""
        if self._client is None:
            raise StoreUnavailable("the BigQuery store is not started")
        timeout = self._timeout
        run = _blocking_query(self._client, sql, params, timeout, self.max_bytes_billed)
        try:
            async with asyncio.timeout(timeout + _QUERY_SLACK_SECONDS):
                answer = await asyncio.to_thread(run)
        except TimeoutError:
            raise StoreUnavailable(f"BigQuery did not answer within {timeout:g} s") from None
        except (GoogleAPIError, OSError) as exc:
            if isinstance(exc, GoogleAPIError) and _reason(exc) == "bytesBilledLimitExceeded":
                log.warning(
                    "BigQuery refused a read over RECORDLINE_QUERY_MAX_BYTES_BILLED: %s", exc
                )
                raise QueryTooCostly(
                    f"the read would bill more than RECORDLINE_QUERY_MAX_BYTES_BILLED "
                    f"({self.max_bytes_billed} bytes): {getattr(exc, 'message', exc)}"
                ) from exc
            # Includes RetryError once the retries ran out of time, and
            # transport errors; a read the client may simply try again.
            log.warning("BigQuery read failed: %s", exc)
            raise StoreUnavailable(f"BigQuery read failed: {exc}") from exc
        self._observe(
            bytes_processed=answer.bytes_processed,
            bytes_billed=billed_bytes(answer.bytes_processed, tables=tables),
            job_id=answer.job_id,
        )
        return answer.rows


class _Answer(NamedTuple):
    rows: Rows
    bytes_processed: int
    # The job's id where BigQuery made one, else the short query's id.
    job_id: str | None


def _parameter(name: str, value: QueryValue) -> Any:
    match value:
        case list():
            return bigquery.ArrayQueryParameter(name, "STRING", value)
        case bool():  # before int(): a bool is an int to Python
            return bigquery.ScalarQueryParameter(name, "BOOL", value)
        case Decimal():
            return bigquery.ScalarQueryParameter(name, "NUMERIC", value)
        case date():
            return bigquery.ScalarQueryParameter(name, "DATE", value)
        case int():
            return bigquery.ScalarQueryParameter(name, "INT64", value)
        case float():
            # Sent as STRING, `x > @n` would be refused: BigQuery coerces no STRING
            # parameter to a number.
            return bigquery.ScalarQueryParameter(name, "FLOAT64", value)
        case _:
            return bigquery.ScalarQueryParameter(name, "STRING", value)


def _reason(exc: GoogleAPIError) -> str | None:
    errors = getattr(exc, "errors", None) or []
    first = errors[0] if errors else None
    return first.get("reason") if isinstance(first, dict) else None


def _blocking_query(
    client: bigquery.Client,
    sql: str,
    params: dict[str, QueryValue],
    timeout: float,
    max_bytes_billed: int,
) -> Callable[[], _Answer]:
    config = bigquery.QueryJobConfig(
        query_parameters=[_parameter(name, value) for name, value in params.items()],
        # BigQuery refuses, before running it, a query that would bill more.
        maximum_bytes_billed=max_bytes_billed,
    )
    # A query keeps running, and billing, after its caller gave up: BigQuery
    # stops it at the same timeout.
    config.job_timeout_ms = int(timeout * 1000)

    def run() -> _Answer:
        # The library retries for up to 10 minutes by default; a read that a
        # client waits for has `timeout` in all, retries included.
        rows = client.query_and_wait(
            sql,
            job_config=config,
            api_timeout=timeout,
            wait_timeout=timeout,
            retry=DEFAULT_RETRY.with_timeout(timeout),
            job_retry=DEFAULT_JOB_RETRY.with_timeout(timeout),
        )
        found = [tuple(row.values()) for row in rows]
        return _Answer(found, rows.total_bytes_processed or 0, rows.job_id or rows.query_id)

    return run
