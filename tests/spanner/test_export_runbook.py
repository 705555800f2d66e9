"""The runbook's "Export behind" and "Export blocked" incidents, at once, walked as
on-call walks them: as a member of `oncall` acting as the operator account, with
docs/operations.md's commands run as written by bash against the fake cloud
(tests/infra/fake_cloud.py), whose cell's export job runs this checkout's `recordline
export …` with the cell's settings against the Spanner emulator and the BigQuery fakes,
each command for the system it names (`--system`), as written. Who may do what is
Terraform's IAM (tests/infra/cell_world.py: terraform_iam)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from app.store.spanner.ledger import DECISIONS_TABLE
from tests.bigquery.conftest import DATASET
from tests.bigquery.conftest import PROJECT as BIGQUERY_PROJECT
from tests.bigquery.fake_jobs import FakeBigQueryJobs
from tests.bigquery.fake_storage_write import ErrorResponse, FakeBigQueryWrite
from tests.infra.cell_world import EARLIER, ONCALL, OPERATOR
from tests.infra.test_runbook import RUNBOOK
from tests.infra.test_runbook_commands import blocks, where, with_export_job
from tests.infra.workflow_runner import Cloud
from tests.spanner.emulator import SpannerEmulator
from tests.spanner.exporting import copies, drain, exporter, settle_clock
from tests.spanner.test_export import stored

pytestmark = pytest.mark.emulator

Make = Callable[..., Any]
# The runbook's prose, each run of white space one space (a command in it may be wrapped).
RUNBOOK_TEXT = " ".join(RUNBOOK.read_text().split())


def on_call(
    tmp_path: Path,
    database: str,
    spanner_emulator: SpannerEmulator,
    write_fake: FakeBigQueryWrite,
    jobs_fake: FakeBigQueryJobs,
) -> Cloud:
    """recordline's project as Terraform leaves it with `serving`, its export job
    running with the cell's settings (its one system's store and serving database are
    here the emulator's and the fakes')."""
    system = {"store": f"bigquery://{BIGQUERY_PROJECT}/{DATASET}", "serving": database}
    return Cloud(
        tmp_path,
        with_export_job(
            {
                "RECORDLINE_CELL": "recordline",
                "RECORDLINE_SYSTEMS": json.dumps({"recordline": system}),
                "SPANNER_EMULATOR_HOST": spanner_emulator.host,
                "RECORDLINE_BIGQUERY_WRITE_ENDPOINT": write_fake.address,
                "BIGQUERY_EMULATOR_HOST": jobs_fake.endpoint,
            }
        ),
    )


async def run(cloud: Cloud, *scripts: str) -> str:
    # In a thread: the BigQuery fakes answer the job from this test's event loop.
    done = await asyncio.to_thread(cloud.shell, "\n".join(scripts))
    assert done.returncode == 0, done.stderr
    return done.stdout


def chosen(block: str, starts: str, **values: str) -> str:
    """The one line of a block of alternatives that on-call picks, `<…>` filled in."""
    (line,) = [line.strip() for line in block.splitlines() if line.strip().startswith(starts)]
    for placeholder, value in values.items():
        line = line.replace(placeholder, value)
    assert "<" not in line, line
    return line


async def test_export_behind_and_blocked_walked_as_on_call_runs_them(
    make_tiered: Make,
    database: str,
    spanner_emulator: SpannerEmulator,
    write_fake: FakeBigQueryWrite,
    jobs_fake: FakeBigQueryJobs,
    tmp_path: Path,
) -> None:
    store = await make_tiered()
    await stored(store, ["m-1", "m-bad", "m-2"])
    await stored(store, ["r-1"], rejected=True)
    await settle_clock()
    # Two incidents at once. BigQuery's `records` refuses a row (a value its column
    # will not take): the export of records stops there, and "Export blocked" fires.
    # BigQuery refuses `rejected` for a while (a quota): it falls behind, and "Export
    # behind" would fire in an hour.
    write_fake.refuse = lambda row: (
        "value too long" if row["message_id"] == "m-bad" and "reason" not in row else None
    )
    write_fake.broken["rejected"] = ErrorResponse(grpc.StatusCode.RESOURCE_EXHAUSTED, "quota")
    one = exporter(store, blocked_retry_seconds=60)
    for _ in range(3):
        await one.step()
    assert "m-bad" in one.blocked["records"]
    assert "rejected" not in one.blocked
    cloud = on_call(tmp_path, database, spanner_emulator, write_fake, jobs_fake)

    # Running commands as the cell's job: where the system is, then `status`.
    (running,) = blocks("running-commands-as-a-cells-job")
    said = await run(cloud, where("recordline"), running)
    assert "BLOCKED since" in said
    assert "BigQuery refused message m-bad of records: value too long" in said
    # `rejected` is behind, not blocked: its batch in flight, retried by itself.
    assert re.search(r"rejected: stream \S+ at offset 0; complete before", said)
    assert "in flight: 1 rows ending at message r-1" in said
    assert said.count("BLOCKED") == 1
    assert "Container called exit(1)." in said  # 1: a table is blocked
    assert cloud.world["jobs"]["recordline-export"]["image"].endswith(f"@{EARLIER}")
    who = "\n".join([where("recordline"), *running.splitlines()[:2]])  # `job`, and ME

    # Who holds the system's lease, as the export job asks it (Export behind).
    asked = r'`(job "\$EXPORT_JOB" export --system="\$SYSTEM" leases)`'
    (leases,) = re.findall(asked, RUNBOOK_TEXT)
    said = await run(cloud, who, leases)
    holder = one.ledger.lease.holder if one.ledger.lease is not None else ""
    assert f"bigquery (the export of records and rejected): held by {holder} (" in said
    assert " since " in said
    assert "Container called exit(0)." in said

    # Export blocked: the row will never fit; on-call moves it to the rejections.
    look, mitigate = blocks("export-blocked")
    reject = chosen(
        mitigate,
        'job "$EXPORT_JOB" export --system="$SYSTEM" reject',
        **{
            '"$MESSAGE_ID"': "m-bad",
            "<why, for whoever reads the rejection>": "a value BigQuery will never take",
        },
    )
    said = await run(cloud, who, reject)
    assert "m-bad: now a rejection" in said
    assert "Container called exit(0)." in said
    # The decision, its reason and who made it: in the log entry's fields...
    (decided,) = [
        e["jsonPayload"]
        for e in cloud.world["logs"]
        if "jsonPayload" in e and e["jsonPayload"].get("operator")
    ]
    assert decided["reason"] == "a value BigQuery will never take"
    assert decided["operator"].startswith("oncall@example.com (Cloud Run job execution")
    assert decided["action"] == "reject"
    # ...and in Spanner, beside the change.
    (row,) = await asyncio.to_thread(_decisions, spanner_emulator, database)
    assert row[:3] == ["records", "reject", decided["operator"]]
    assert row[3] == "a value BigQuery will never take"

    # Export behind: BigQuery's quota passes; the exporter catches up by itself, and
    # goes on without the row. Verify says BigQuery holds what Spanner holds.
    del write_fake.broken["rejected"]
    await drain(one)
    await settle_clock()
    await drain(one)
    assert copies(write_fake, "records") == {"m-1": 1, "m-2": 1}
    assert copies(write_fake, "rejected") == {"r-1": 1, "m-bad": 1}
    (check,) = [line for line in look.splitlines() if 'export --system="$SYSTEM" verify' in line]
    said = await run(cloud, who, check)
    assert "DIFFERS" not in said
    assert " same" in said
    assert "Container called exit(0)." in said
    # Everything as a member of `oncall`, the job as the operator account.
    assert cloud.world["principal"] == ONCALL
    for argv in cloud.calls():
        if argv[:2] == ["run", "jobs"]:
            assert f"--impersonate-service-account={OPERATOR}" in argv, argv


def _decisions(emulator: SpannerEmulator, database: str) -> list[list[Any]]:
    instance, name = re.fullmatch(r".*/instances/([^/]+)/databases/([^/]+)", database).groups()  # type: ignore[union-attr]
    handle = emulator.client.instance(instance).database(name)
    with handle.snapshot() as snapshot:
        return [
            list(row)
            for row in snapshot.execute_sql(
                f"SELECT table_name, action, operator, reason, detail FROM {DECISIONS_TABLE}"
            )
        ]
