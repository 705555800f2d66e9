"""The read-path uptime check: a token the service accepts, and a read that costs cents.

Cloud Monitoring mints the probe's ID token for `https://HOST`, HOST being the host it
probes; the service accepts only the audiences in RECORDLINE_READ_AUDIENCE. Both are
evaluated here from the Terraform expressions, for a project number and region. What
the probe reads is sent through the service on the BigQuery fakes, billed by their
model of BigQuery's rules, over 30 days of 1,000 msg/s.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from app.asgi import create_app
from app.records import TABLES, columns
from app.settings import Settings
from tests.bigquery.billing import DOLLARS_PER_TIB, MIB, BillingModel
from tests.bigquery.fake_jobs import LAYOUTS, FakeBigQueryJobs
from tests.bigquery.fake_storage_write import FakeBigQueryWrite
from tests.bigquery.stream import NOW, SECOND, make_stream
from tests.conftest import served
from tests.infra.test_terraform import _evaluate, _locals, _resources, _template

SERVICE_URL = "https://orders-123456789012.europe-west1.run.app"
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


def _value(template: str, **given: str) -> Any:
    """A module string (as python-hcl2 keeps it) evaluated by terraform, with the
    variables and locals in `given` (HCL) and any other local it names bound in turn."""
    bound = dict(given)
    todo = [template]
    while todo:
        for name in re.findall(r"\blocal\.(\w+)", todo.pop()):
            if name not in bound:
                raw = _locals()[name]
                bound[name] = _hcl(raw)
                todo.append(raw)
    return _evaluate(_hcl(template), tuple(sorted(bound.items())))


def _hcl(raw: str) -> str:
    """A string as python-hcl2 keeps it, as HCL again: a template is kept as written
    (escapes and all), a plain literal comes back unescaped."""
    if "${" not in raw:
        return json.dumps(raw)
    return _template(re.sub(r"\b(var|local)\.", "local.", raw))


def _check() -> dict[str, Any]:
    (check,) = _resources("google_monitoring_uptime_check_config").values()
    return check


def _probe_host() -> str:
    """The host the uptime check requests."""
    (resource,) = _check()["monitored_resource"]
    host = resource["labels"]["host"]
    assert "google_cloud_run_v2_service" not in host, (
        f"the probe's host ({host}) must be known before the service exists: the "
        "deterministic URL, whose audience the service accepts"
    )
    return str(_value(host, service_url=f'"{SERVICE_URL}"'))


def _probe_path() -> str:
    """The path (and query) the uptime check requests."""
    (http,) = _check()["http_check"]
    return str(_value(http["path"], canary_attribute='"recordline-canary"'))


def _read_audiences() -> list[str]:
    env = _locals()["service_env"]
    found = re.search(r'RECORDLINE_READ_AUDIENCE\s*=\s*"([^"]*)"', env)
    assert found, "the service gets RECORDLINE_READ_AUDIENCE"
    value = _value(
        found.group(1), read_audience=f'"{SERVICE_URL}/v1"', service_url=f'"{SERVICE_URL}"'
    )
    return [a.strip() for a in value.split(",") if a.strip()]


def test_the_probes_token_is_for_an_audience_the_service_accepts() -> None:
    host = _probe_host()
    assert host == SERVICE_URL.removeprefix("https://")
    assert f"https://{host}" in _read_audiences()
    # Cloud Run's invoker check admits the token too: the audience is one of the
    # service's own URLs (the deterministic one), and the probe's agent is an invoker.
    assert _locals()["service_url"].startswith("https://${var.service_name}-${var.project_number}.")
    invoker = _resources("google_cloud_run_v2_service_iam_member")["uptime_invoker"]
    assert invoker["member"] == "serviceAccount:${local.monitoring_service_agent}"
    assert "local.monitoring_service_agent" in _locals()["read_principals"]


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
    settings = Settings.load(
        {
            "BIGQUERY_EMULATOR_HOST": jobs.endpoint,
            "RECORDLINE_STORE": f"bigquery://{PROJECT}/{DATASET}",
            "RECORDLINE_BIGQUERY_WRITE_ENDPOINT": write.address,
            "RECORDLINE_SETTLE_SECONDS": "0",
        }
    )
    try:
        async with served(create_app(settings)) as client:
            yield client, jobs
    finally:
        jobs.stop()
        await write.stop()


async def _billed(bigquery: Any, path: str) -> tuple[Any, int]:
    client, jobs = bigquery
    before = len(jobs.queries)
    answer = await client.get(path)
    return answer, sum(q.bill.bytes_billed for q in jobs.queries[before:] if q.bill is not None)


async def test_the_probe_reads_for_the_10_mib_minimum_however_much_is_stored(
    bigquery: Any,
) -> None:
    answer, billed = await _billed(bigquery, _probe_path())
    assert answer.status_code == 200, answer.text
    (matcher,) = _check()["content_matchers"]
    assert matcher["matcher"] == "CONTAINS_STRING"
    assert _value(matcher["content"]) in answer.text
    assert billed == 10 * MIB
    # Cents a day: every region, every period.
    check = _check()
    checkers = sum(CHECKERS[region] for region in check["selected_regions"])
    assert checkers == 3  # three regions, the fewest a check may have, one checker each
    probes_a_day = checkers * 86_400 // int(check["period"].rstrip("s"))
    dollars = probes_a_day * billed / 2**40 * DOLLARS_PER_TIB
    assert dollars < 0.10, f"${dollars:.2f} a day"
    # What a look-up of the canary bills at this rate, for comparison: the
    # write-optimized tail of the table, read whole.
    _, lookup = await _billed(bigquery, "/v1/records/recordline-canary")
    assert lookup > 50 * billed
