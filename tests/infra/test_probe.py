"""The cell's uptime check: a token the cell accepts, a probe that reads no rows, and
one check a cell whatever its number of systems.

Cloud Monitoring mints the probe's ID token for `https://HOST`, HOST being the host it
probes; the cell accepts only the audiences in RECORDLINE_READ_AUDIENCE. Both are
evaluated here by `terraform console` for a cell. What the probe asks is sent through
the service on the BigQuery fakes, billed by their model of BigQuery's rules.
"""

from __future__ import annotations

from typing import Any

import pytest

from app.asgi import create_app
from app.records import TABLES, columns
from app.settings import Settings
from tests.bigquery.billing import BillingModel
from tests.bigquery.fake_jobs import LAYOUTS, FakeBigQueryJobs
from tests.bigquery.fake_storage_write import FakeBigQueryWrite
from tests.bigquery.stream import NOW, SECOND, make_stream
from tests.conftest import served, unsettled
from tests.infra.test_fleet import PROJECT_NUMBER, _root_console
from tests.infra.test_terraform import _resources

PROJECT, DATASET = "recordline-prod", "orders"

# Checker locations per uptime-check region (UptimeCheckRegion,
# https://cloud.google.com/monitoring/api/ref_v3/rest/v3/projects.uptimeCheckConfigs#uptimecheckregion):
# USA is a checker in each of Oregon, Iowa and Virginia, each probing and each billed.
CHECKERS = {
    "USA": 3,
    "USA_OREGON": 1,
    "USA_IOWA": 1,
    "USA_VIRGINIA": 1,
    "EUROPE": 1,
    "SOUTH_AMERICA": 1,
    "ASIA_PACIFIC": 1,
}


def _check() -> dict[str, Any]:
    (check,) = _resources("google_monitoring_uptime_check_config").values()
    return check


def test_the_probes_token_is_for_an_audience_the_cell_accepts() -> None:
    found = _root_console(
        '{ host = trimprefix(local.cell_url, "https://"),'
        " audiences = local.service_env.RECORDLINE_READ_AUDIENCE }",
        "{ recordline = {}, orders = {} }",
        (("cell", '"eu-1"'), ("region", '"europe-west1"')),
    )
    assert found["host"] == f"eu-1-{PROJECT_NUMBER}.europe-west1.run.app"
    assert f"https://{found['host']}" in found["audiences"].split(",")
    (resource,) = _check()["monitored_resource"]
    assert "google_cloud_run_v2_service" not in resource["labels"]["host"], (
        "the probe's host must be known before the service exists: the deterministic "
        "URL, whose audience the cell accepts"
    )


def test_one_check_a_cell_of_three_checkers() -> None:
    check = _check()
    assert "for_each" not in check
    assert "count" not in check
    checkers = sum(CHECKERS[region] for region in check["selected_regions"])
    assert checkers == 3  # three regions, the fewest a check may have, one checker each
    # 8,640 executions a checker a month: 25,920 a cell, so a thousand systems in ten
    # cells are 259,200, within the first million a month Cloud Monitoring bills nothing
    # for (https://cloud.google.com/stackdriver/pricing#monitoring-pricing-summary).
    executions = checkers * 30 * 86_400 // int(check["period"].rstrip("s"))
    assert executions == 25_920
    assert executions * 10 < 1_000_000


KINDS = {t: {c.name: c.kind for c in columns(r)} for t, r in TABLES.items()}


@pytest.fixture
async def bigquery() -> Any:
    """The service on the BigQuery fakes, over 30 days of 1,000 msg/s, billed as BigQuery
    would bill them; yields (client, jobs fake)."""
    write = FakeBigQueryWrite()
    await write.start()
    jobs = FakeBigQueryJobs(write, project=PROJECT, dataset=DATASET)
    jobs.start()
    stream = make_stream(1000, 30, stored_per_day=288)
    tables = f"projects/{PROJECT}/datasets/{DATASET}/tables"
    write.tables[f"{tables}/records"] = stream.records
    write.tables[f"{tables}/rejected"] = stream.rejections
    jobs.billing = BillingModel(
        layouts=LAYOUTS, kinds=KINDS, row_weight=stream.weight, clock=lambda: NOW / SECOND
    )
    settings = unsettled(
        Settings.load(
            {
                "BIGQUERY_EMULATOR_HOST": jobs.endpoint,
                "RECORDLINE_STORE": f"bigquery://{PROJECT}/{DATASET}",
                "RECORDLINE_BIGQUERY_WRITE_ENDPOINT": write.address,
            }
        )
    )
    try:
        async with served(create_app(settings)) as client:
            yield client, jobs
    finally:
        jobs.stop()
        await write.stop()


@pytest.mark.slow
async def test_the_probe_bills_no_query_however_much_is_stored(bigquery: Any) -> None:
    # Where a probe of each system read a record (10 MiB billed, BigQuery's least), the
    # cell's asks its readiness: at most a `SELECT 1` of its store, which reads no table
    # and bills nothing.
    client, jobs = bigquery
    (http,) = _check()["http_check"]
    before = len(jobs.queries)
    answer = await client.get(http["path"])
    assert answer.status_code == 200, answer.text
    assert [status["status_value"] for status in http["accepted_response_status_codes"]] == [200]
    probed = jobs.queries[before:]
    assert all(q.bill is not None and q.bill.bytes_billed == 0 for q in probed), probed
    assert all("FROM" not in q.sql.upper() for q in probed), probed
    before = len(jobs.queries)
    # What a look-up of a record bills, for comparison.
    await client.get("/v1/records/recordline-canary")
    billed = sum(q.bill.bytes_billed for q in jobs.queries[before:] if q.bill is not None)
    assert billed >= 10 * 2**20
