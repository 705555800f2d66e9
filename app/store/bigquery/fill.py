"""Filling a system's tables of its own (`records_<name>`, labelled `recordline-fill =
records`) from `records`, a whole day of `ingest_time` at a time, each day exactly once,
through one DML job a day whose id is fixed: `recordline tables fill`. How, and why it
is exactly once: `Filler`'s notes.

Design: docs/layouts.md#records-as-today-beside-tables-of-your-own
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from google.api_core.exceptions import (
    ClientError,
    Conflict,
    Forbidden,
    GoogleAPIError,
    NotFound,
    PreconditionFailed,
    RetryError,
)
from google.cloud import bigquery
from google.cloud.bigquery.retry import DEFAULT_RETRY

from app.errors import FillFailed, QueryTooCostly, StoreUnavailable
from app.records import DAY_MICROS
from app.store.bigquery.layout import Copy, copy_of
from app.store.bigquery.queries import QueryRunner

log = logging.getLogger(__name__)

# The label Terraform gives a table the filler fills, and its value.
FILL_LABEL: Final = "recordline-fill"
FILL_SOURCE: Final = "records"
# The hint: every day up to this one (YYYYMMDD, UTC) is copied.
FILLED_THROUGH: Final = "recordline-filled-through"
# BigQuery keeps a project's job history for about six months (180 days); days within
# this many of now are checked by their job ids, older ones by the table's own rows.
JOB_HISTORY_DAYS: Final = 170
# New attempts at one day in one run: a day whose jobs keep failing is left, and said,
# after this many, rather than retried all run long.
ATTEMPTS_PER_RUN: Final = 2
# Waits between two reads of a running job grow to this (seconds).
_MOST_POLL_SECONDS: Final = 10.0
# What a table's name is, as BigQuery names one (and as a job id and SQL take it).
TABLE_NAME: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,1023}\Z")


class _Foreign(Exception):
    """A day's job id taken by a job this account may not read."""


class _Refused(Exception):
    """A day's job refused as it was inserted, and not kept: nothing ran."""


def job_id(dataset: str, table: str, day: int, attempt: int) -> str:
    """The id of a day's job (`day`: days since the epoch), for its `attempt`."""
    return f"recordline_fill_{dataset}_{table}_{_yyyymmdd(day)}_{attempt}"


def _yyyymmdd(day: int) -> str:
    return datetime.fromtimestamp(day * 86_400, UTC).strftime("%Y%m%d")


def _day_of(text: str) -> int | None:
    try:
        moment = datetime.strptime(text, "%Y%m%d").replace(tzinfo=UTC)
    except ValueError:
        return None
    return int(moment.timestamp()) // 86_400


def copy_sql(copy: Copy, alias: str = "u") -> str:
    """A copy's value in a row of `records` as SQL: an attribute's text where it is a
    JSON string (NULL where absent or of another kind, as the service writes it); a
    typed field's value at its path under `fields`."""
    if copy.attribute is not None:
        if (
            not copy.attribute
            or any(c in copy.attribute for c in '"\\')
            or not copy.attribute.isprintable()
        ):
            # BigQuery's JSONPath quotes a member in `"` and escapes nothing inside it
            # (app/store/where.py): `a"."b` would read member b of member a.
            raise FillFailed(
                f"{copy.column} copies attribute {copy.attribute!r}, which no JSONPath "
                'names: a key holding `"`, `\\` or a control character'
            )
        path = "'$.\"" + copy.attribute.replace("'", "\\'") + "\"'"
        return (
            f"IF(STARTS_WITH(TO_JSON_STRING(JSON_QUERY({alias}.attributes, {path})), '\"'), "
            f"JSON_VALUE({alias}.attributes, {path}), NULL)"
        )
    if not all(TABLE_NAME.match(name) for name in copy.field):
        # A description edited by hand: a backtick would end the quoted name.
        raise FillFailed(f"{copy.column} copies field {'.'.join(copy.field)!r}, no column path")
    return ".".join([alias, "`fields`", *(f"`{name}`" for name in copy.field)])


def fill_sql(
    project: str,
    dataset: str,
    table: str,
    columns: Sequence[str],
    copies: Sequence[Copy],
    day: int,
    *,
    unique: bool = True,
) -> str:
    """The one statement that copies `day` (days since the epoch) into `table`: through
    `records_unique`, which leaves out later copies (reading the dedupe window before the
    day as well), or, where `records` holds none (`unique` False: behind a serving tier,
    whose export appends each row once), the day's partition alone."""
    since, until = day * DAY_MICROS, (day + 1) * DAY_MICROS
    names = [*columns, *(c.column for c in copies)]
    values = [*(f"u.`{c}`" for c in columns), *(copy_sql(c) for c in copies)]
    source = (
        f"`{project}.{dataset}.records_unique`"
        f"(TIMESTAMP_MICROS({since}), TIMESTAMP_MICROS({until})) AS u"
        if unique
        else f"`{project}.{dataset}.records` AS u\n"
        f"WHERE u.ingest_time >= TIMESTAMP_MICROS({since}) "
        f"AND u.ingest_time < TIMESTAMP_MICROS({until})"
    )
    return (
        f"{_insert_into(project, dataset, table)}({', '.join(f'`{n}`' for n in names)})\n"
        f"SELECT {', '.join(values)}\n"
        f"FROM {source}"
    )


def _insert_into(project: str, dataset: str, table: str) -> str:
    """How a day's statement into `table` starts, and so how its job is told from the job
    of another table under the same id (`job_id` joins names by `_`, which they hold:
    dataset `shop` with `records_x_records_y`, and `shop_records_x` with `records_y`)."""
    return f"INSERT INTO `{project}.{dataset}.{table}` "


@dataclass
class Filled:
    """What a run did for one table: the days copied (by this run's jobs or found
    copied), bytes its own jobs billed, through which day the table is now whole, and
    why it stopped short of the last whole day (None: it did not)."""

    table: str
    copied: list[int] = field(default_factory=list)
    found: list[int] = field(default_factory=list)
    bytes_billed: int = 0
    through: int | None = None
    left: str | None = None


@dataclass(frozen=True)
class FillOptions:
    # Each API call's deadline, retries included (seconds).
    call_seconds: float = 30.0
    # How long a run waits for one day's job before leaving it to the next run.
    wait_seconds: float = 600.0
    # Refused by BigQuery before it runs if a day's job would bill more.
    max_bytes_billed: int = 50 << 30
    # Behind a serving tier: a day is whole once below the export watermark.
    serving: bool = False
    # On BigQuery alone: a day is whole once it ended this long ago (µs).
    settle_micros: int = 15_000_000


class Filler:
    """Fills the tables of one dataset labelled `recordline-fill = records`.

    A table of the system's own beside `records` has `records`' columns
    and copies of its own, last, each described `Recordline layout copy of SOURCE`
    (`layout.py`, as `records`' are), and the label `recordline-fill = records`. Each day of
    `ingest_time` that `records` holds whole is copied in ONE query job:

        INSERT INTO records_<name> (columns…, copies…)
        SELECT u.columns…, <each copy's value> FROM records_unique(day, day + 1) AS u

    `records_unique` keeps the first copy of each message, as the read API shows it (Terraform
    gives every dataset the function: modules/system/sql/records_unique.sql.tftpl). A day is
    whole once it ended longer ago than the store's settle time on BigQuery alone (every row
    stamped in it was acknowledged by then, `BigQueryStore.read_horizon`), and behind a
    serving tier once it is below `export_watermarks`' watermark for `records` (every row
    before it is in BigQuery, `app/store/tiered/exporter.py`).

    Exactly once rests on BigQuery's job ids: an id is used once in a project, and a DML job
    commits all its rows or none. A day's job id is fixed, `recordline_fill_<dataset>_<table>_
    <YYYYMMDD>_<attempt>`. For attempt 0, 1, …: `jobs.get`; not found: `jobs.insert` it
    (a 409 `duplicate` says another filler inserted it first: get it); DONE without error:
    the day is copied; DONE with an error: the next attempt; running: wait for it up to the
    run's deadline, else leave the day (and the days after it) to the next run. Two fillers at
    once insert one job between them; a filler killed mid-job leaves a job that the next run
    finds; a failed job copied nothing and its attempt's id is spent.

    BigQuery keeps a project's job history about 180 days: past that a job id is forgotten
    and could run again. So a day is checked by its job ids only within JOB_HISTORY_DAYS; an
    older day is copied already if the table holds any row of its `ingest_time` (its one
    job committed whole), which one query of the table's `ingest_time` column tells.

    The label `recordline-filled-through` (YYYYMMDD) says up to which day every day is
    copied, so that a run starts after it. It is a hint: a day after it is checked again by
    its job ids, and without it (or with one after the last whole day, which no run set), or
    with one older than the job history, a run reads which days
    `records` holds rows of, and takes the old days' answer from the table's own rows.
    """

    def __init__(
        self,
        runner: QueryRunner,
        dataset: str,
        options: FillOptions,
        *,
        clock: Callable[[], int],
        sleep: Callable[[float], Any] = asyncio.sleep,
    ) -> None:
        self._runner = runner
        self.project = runner.project
        self.dataset = dataset
        self._options = options
        # Now, in µs since the epoch.
        self._clock = clock
        self._sleep = sleep
        self._retry = DEFAULT_RETRY.with_timeout(options.call_seconds)

    def _id(self, table: str) -> str:
        return f"{self.project}.{self.dataset}.{table}"

    async def _call(self, function: Callable[[bigquery.Client], Any]) -> Any:
        try:
            return await self._runner.call(function, seconds=self._options.call_seconds)
        except TimeoutError:
            raise StoreUnavailable(
                f"BigQuery did not answer within {self._options.call_seconds:g} s"
            ) from None

    async def tables(self) -> list[str]:
        """The dataset's tables the filler fills, by name."""
        seconds = self._options.call_seconds
        try:
            listed = await self._call(
                lambda c: list(
                    c.list_tables(
                        f"{self.project}.{self.dataset}", retry=self._retry, timeout=seconds
                    )
                )
            )
        except GoogleAPIError as exc:
            raise StoreUnavailable(f"BigQuery tables.list: {exc}") from exc
        return sorted(t.table_id for t in listed if (t.labels or {}).get(FILL_LABEL) == FILL_SOURCE)

    async def complete_until(self) -> int:
        """The first day (since the epoch) `records` may not hold whole yet."""
        now = self._clock()
        if not self._options.serving:
            return (now - self._options.settle_micros) // DAY_MICROS
        rows = await self._query(
            f"SELECT UNIX_MICROS(MAX(w.watermark)) FROM `{self._id('export_watermarks')}` AS w "
            "WHERE w.table_name = 'records'"
        )
        watermark = rows[0][0] if rows and rows[0][0] is not None else 0
        return int(watermark) // DAY_MICROS

    async def _query(self, sql: str) -> list[tuple[Any, ...]]:
        try:
            return await self._runner.run(sql, {})
        except QueryTooCostly:
            # Which days records holds (every day since the hint; all of them on a first
            # run, or the hint lost): refused the same way each run until one run by hand
            # with a larger cap reads them, and sets the hint.
            raise FillFailed(
                f"reading which days records holds would bill more than --max-bytes-billed "
                f"({self._options.max_bytes_billed} bytes): run it once by hand with more"
            ) from None

    async def fill(self, table: str) -> Filled:
        """Copy every whole day not yet copied into `table`, in order; see the module notes."""
        if not TABLE_NAME.match(table):
            raise FillFailed(f"{table!r} is not a table's name")
        done = Filled(table)
        until = await self.complete_until()
        target = await self._get_table(table)
        if (target.labels or {}).get(FILL_LABEL) != FILL_SOURCE:
            # `--table records` would copy records into itself, each day again.
            raise FillFailed(
                f"{self._id(table)} is not labelled {FILL_LABEL}={FILL_SOURCE}: not a table "
                "of the system's own (Terraform labels each it declares)"
            )
        records = await self._get_table("records")
        location = records.location
        hint = _day_of((target.labels or {}).get(FILLED_THROUGH, ""))
        if hint is not None and hint >= until:
            # No run copies a day before it is whole: edited by hand, or set by a run whose
            # clock ran ahead. Trusted, it would stop every run here, saying all is done.
            log.warning(
                "%s: %s says %s, after the last whole day %s: not trusted, every day asked",
                self._id(table),
                FILLED_THROUGH,
                _iso(hint),
                _iso(until - 1),
            )
            hint = None
        first = 0 if hint is None else hint + 1
        if first >= until:
            done.through = hint
            return done
        # Only days that hold rows need a job: an empty whole day stays empty.
        days = await self._days_held("records", first, until)
        history = self._clock() // DAY_MICROS - JOB_HISTORY_DAYS
        old = [day for day in days if day < history]
        # Before the job history, a day's rows in the table say its one job committed.
        held = set(await self._days_held(table, old[0], history)) if old else set()
        columns, copies = await self._columns(table, target, records)
        through = until - 1
        for day in days:
            if day in held:
                done.found.append(day)
                continue
            outcome = await self._fill_day(table, day, columns, copies, location, done)
            if outcome is not None:
                done.left = outcome
                through = day - 1
                break
        if through >= first:
            done.through = through
            await self._hint(table, through, until)
        else:
            done.through = hint
        return done

    async def _get_table(self, table: str) -> bigquery.Table:
        seconds = self._options.call_seconds
        try:
            found: bigquery.Table = await self._call(
                lambda c: c.get_table(self._id(table), retry=self._retry, timeout=seconds)
            )
        except NotFound:
            raise FillFailed(f"{self._id(table)} does not exist") from None
        except GoogleAPIError as exc:
            raise StoreUnavailable(f"BigQuery: {exc}") from exc
        return found

    async def _days_held(self, table: str, first: int, until: int) -> list[int]:
        """The days in [first, until) of which `table` holds a row, in order, from its
        rows' `ingest_time` alone (one narrow column: partition metadata may not count
        the last half hour's rows yet, and a table of the system's own is partitioned by
        other days)."""
        rows = await self._query(
            f"SELECT DISTINCT DIV(UNIX_MICROS(t.ingest_time), {DAY_MICROS}) AS day FROM "
            f"`{self._id(table)}` AS t "
            f"WHERE t.ingest_time >= TIMESTAMP_MICROS({first * DAY_MICROS}) "
            f"AND t.ingest_time < TIMESTAMP_MICROS({until * DAY_MICROS}) ORDER BY day"
        )
        return [int(r[0]) for r in rows]

    async def _columns(
        self, table: str, target: bigquery.Table, records: bigquery.Table
    ) -> tuple[list[str], list[Copy]]:
        """The columns a day's job writes: each of `records`' own (the table widened to
        take those it lacks: a release's new column, a schema revision's typed fields),
        then the table's copies."""
        copies = [c for c in (copy_of(col) for col in target.schema) if c is not None]
        copied = {c.column for c in copies}
        own = [col for col in records.schema if copy_of(col) is None and col.name not in copied]
        have = {col.name: col for col in target.schema}
        if any(have.get(col.name) != col for col in own):
            await self._widen(table, own)
        return [col.name for col in own], copies

    async def _widen(self, table: str, own: Sequence[bigquery.SchemaField]) -> None:
        """Give `table` each of `records`' columns as `records` has it now (added at the
        end, or a RECORD's new fields), with the ETag read; BigQuery refuses any other
        change, and FillFailed says so."""
        seconds = self._options.call_seconds
        for _ in range(3):
            target = await self._get_table(table)
            wanted = {col.name: col for col in own}
            schema = [wanted.get(col.name, col) for col in target.schema]
            names = {col.name for col in target.schema}
            schema += [col for col in own if col.name not in names]
            if schema == list(target.schema):
                return
            target.schema = schema

            def patch(client: bigquery.Client, widened: bigquery.Table = target) -> Any:
                return client.update_table(widened, ["schema"], retry=self._retry, timeout=seconds)

            try:
                await self._call(patch)
            except PreconditionFailed:
                continue
            except GoogleAPIError as exc:
                raise FillFailed(f"{self._id(table)} cannot take records' columns: {exc}") from exc
            return
        raise StoreUnavailable(f"changes of {self._id(table)} raced its widening three times")

    async def _fill_day(
        self,
        table: str,
        day: int,
        columns: Sequence[str],
        copies: Sequence[Copy],
        location: str | None,
        done: Filled,
    ) -> str | None:
        """Copy one day, once; None once it is copied, else why it is left."""
        sql = fill_sql(
            self.project,
            self.dataset,
            table,
            columns,
            copies,
            day,
            unique=not self._options.serving,
        )
        attempt, tried, last_error = 0, 0, ""
        while True:
            name = job_id(self.dataset, table, day, attempt)
            try:
                job = await self._get_job(name, location)
                ours = False
                if job is None:
                    if tried == ATTEMPTS_PER_RUN:
                        return f"{_iso(day)}: {tried} jobs failed this run, the last {last_error}"
                    tried += 1
                    job, ours = await self._insert(name, sql, location)
                found = getattr(job, "query", None) or ""
                if not found.startswith(_insert_into(self.project, self.dataset, table)):
                    # Another table's job: it copied nothing here, and its id is spent.
                    log.warning(
                        "%s: %s: job %s is another table's, the day takes its next attempt",
                        self._id(table),
                        _iso(day),
                        name,
                    )
                    attempt += 1
                    continue
                job = await self._until_done(job, location)
            except _Refused as exc:
                return f"{_iso(day)}: {exc}"
            except _Foreign:
                # Its one job committed all its rows or none: rows of the day say it did.
                if await self._days_held(table, day, day + 1):
                    done.found.append(day)
                    return None
                return (
                    f"{_iso(day)}: job {name} is another account's, which this one may not "
                    "read, and the table holds no row of the day: still running, or failed. "
                    "Once it is done the day is found copied; if it failed, run `tables fill` "
                    "again as that account (it takes the next attempt)"
                )
            if job.state != "DONE":
                return f"{_iso(day)}: job {name} still {job.state.lower()}, left to the next run"
            if job.error_result is None:
                if ours:  # inserted, and billed, by this run
                    done.bytes_billed += job.total_bytes_billed or 0
                    done.copied.append(day)
                    log.info(
                        "%s: %s copied by %s (%s rows, %s bytes billed)",
                        self._id(table),
                        _iso(day),
                        name,
                        job.num_dml_affected_rows,
                        job.total_bytes_billed,
                    )
                else:
                    done.found.append(day)
                return None
            last_error = f"{name}: {job.error_result.get('message')}"
            log.warning("%s: %s failed: %s", self._id(table), _iso(day), last_error)
            attempt += 1

    async def _get_job(self, name: str, location: str | None) -> bigquery.QueryJob | None:
        seconds = self._options.call_seconds
        try:
            job: bigquery.QueryJob = await self._call(
                lambda c: c.get_job(name, location=location, retry=self._retry, timeout=seconds)
            )
        except NotFound:
            return None
        except Forbidden:
            # Its id is taken by a job this account may not read: another account's (a
            # backfill run as a person, where the fill account reads its own jobs alone).
            raise _Foreign(name) from None
        except GoogleAPIError as exc:
            raise StoreUnavailable(f"BigQuery jobs.get {name}: {exc}") from exc
        return job

    async def _insert(
        self, name: str, sql: str, location: str | None
    ) -> tuple[bigquery.QueryJob, bool]:
        """Insert the day's job, and True; if another filler inserted it first (409),
        that one, and False."""
        seconds = self._options.call_seconds
        config = bigquery.QueryJobConfig(
            maximum_bytes_billed=self._options.max_bytes_billed,
            labels={"recordline-fill": "records"},
        )
        # BigQuery stops the job itself once the run would have stopped waiting for it.
        config.job_timeout_ms = int(self._options.wait_seconds * 1000)
        try:
            job: bigquery.QueryJob = await self._call(
                lambda c: c.query(
                    sql,
                    job_config=config,
                    job_id=name,
                    location=location,
                    retry=self._retry,
                    timeout=seconds,
                    job_retry=None,
                )
            )
            return job, True
        except Conflict:
            found = await self._get_job(name, location)
            if found is None:
                raise StoreUnavailable(f"BigQuery said {name} exists, then not") from None
            return found, False
        except GoogleAPIError as exc:
            # Refused as it was inserted (a query BigQuery cannot run): the job, if
            # BigQuery kept it, says why; if not, nothing ran and the next run tries it.
            found = await self._get_job(name, location)
            if found is not None:
                return found, True
            if isinstance(exc, ClientError) and not isinstance(exc, RetryError):
                raise _Refused(f"jobs.insert {name} refused: {exc}") from exc
            raise StoreUnavailable(f"BigQuery jobs.insert {name}: {exc}") from exc

    async def _until_done(self, job: bigquery.QueryJob, location: str | None) -> bigquery.QueryJob:
        """The job once DONE, or as it stands when the run's wait for it is over."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._options.wait_seconds
        pause = 0.5
        while job.state != "DONE" and loop.time() < deadline:
            await self._sleep(min(pause, max(0.0, deadline - loop.time())))
            pause = min(pause * 2, _MOST_POLL_SECONDS)
            found = await self._get_job(job.job_id, location)
            if found is not None:
                job = found
        return job

    async def _hint(self, table: str, through: int, until: int) -> None:
        """Set the hint, unless another run's says a later day (before `until`, the first
        day not whole: a later one no run set); best effort."""
        seconds = self._options.call_seconds
        try:
            target = await self._get_table(table)
            now = _day_of((target.labels or {}).get(FILLED_THROUGH, ""))
            if now is not None and through <= now < until:
                return
            target.labels = {**(target.labels or {}), FILLED_THROUGH: _yyyymmdd(through)}
            await self._call(
                lambda c: c.update_table(target, ["labels"], retry=self._retry, timeout=seconds)
            )
        except (GoogleAPIError, StoreUnavailable, FillFailed) as exc:
            log.warning("%s: the hint %s not kept: %s", self._id(table), FILLED_THROUGH, exc)


def _iso(day: int) -> str:
    return datetime.fromtimestamp(day * 86_400, UTC).strftime("%Y-%m-%d")
