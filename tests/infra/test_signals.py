"""Every signal Terraform watches is one the service writes: each application metric a
dashboard, SLO or alert names, each label it filters or groups on (and the values it
compares with), the `namespace` each series is under (a system's or the cell's), the
`job` the charts of a cell's systems and exports filter on, and the paths its uptime
check and probes ask. The service's side is a cell built from what Terraform renders
(tests/infra/test_cell_settings.py), its series as its metrics exporter is handed them."""

from __future__ import annotations

import re
import tempfile
import time
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_NAMESPACE, Resource

from app.cell.app import create_cell
from app.records import CANARY_ATTRIBUTE
from app.settings import Settings
from app.store import Store
from app.store.duckdb.store import DuckDBStore
from app.telemetry import Telemetry
from tests.auth.fake_google import FakeGoogle
from tests.conftest import envelope
from tests.infra.test_cell_settings import SECRETS, mounted, rendered, stripped
from tests.infra.test_terraform import (
    METRICS,
    TERRAFORM,
    _exported_descriptors,
    _locals,
    _resources,
)
from tests.telemetry.conftest import Exported

PUSHER = "{}-push@recordline-dev.iam.gserviceaccount.com"
SMOKE = "recordline-smoke@recordline-dev.iam.gserviceaccount.com"
# generic_task's labels, which every series of the service is written under
# (https://cloud.google.com/monitoring/api/resources#tag_generic_task), PromQL's name of
# the resource type, and the labels the queries make with label_replace.
RESOURCE_LABELS = {"project_id", "location", "namespace", "job", "task_id", "monitored_resource"}
MADE_LABELS = {"system", "cell"}

# A workload metric named in Terraform: through the metrics module's types, or a local
# holding a filter of one.
NAMED = re.compile(
    r"(?:metric_types|types|cell_metric|systems_metric|exported_metric|written_metric|fleet_metric|metric)"
    r'\["([a-z_.]+)"\]'
)
# Locals whose value is a filter or selector of recordline.slo.events.
SLO_EVENTS = re.compile(r"\$\{(?:local\.slo_events|events)\}")
FILTER_LABEL = re.compile(r'metric\.labels?\.\\?"?([a-z_]+)\\?"?(?:\s*(!=|=)\s*\\"([^"\\]*)\\")?')
PROMQL_BY = re.compile(r"\bby \(([^)]*)\)")
PROMQL_MATCHER = re.compile(r'[{,]([a-z_]+)(?:=~|!=|=)\\"([^"\\]*)\\"')


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@cache
def written() -> dict[str, dict[str, Any]]:
    """What a cell built from Terraform's rendering writes, by metric: the namespaces
    of its series, each label's values. Pushes, a stale one, a canary, a read, each with
    its system's token."""
    found = rendered()
    google = FakeGoogle().start()
    exported = Exported()
    try:
        with tempfile.TemporaryDirectory() as scratch:
            env = {
                **mounted(found["service"], Path(scratch)),
                **SECRETS,
                "RECORDLINE_OIDC_CERTS_URL": google.certs_url,
            }
            settings = Settings.load(env)
            telemetry = Telemetry(
                metric_exporters=[exported],
                # As Telemetry.from_settings names a cell's process: its service name
                # (generic_task's `job`) and the cell as the namespace of its own series.
                resource=Resource(
                    {
                        SERVICE_NAME: settings.telemetry.service_name,
                        SERVICE_NAMESPACE: settings.cell.name,
                    }
                ),
                by_system=True,
            )
            _exercise(settings, telemetry)
    finally:
        google.stop()
    data = exported.data
    assert data is not None
    series: dict[str, dict[str, Any]] = {}
    for resource in data.resource_metrics:
        attributes = resource.resource.attributes
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                name = metric.name.removeprefix("recordline.")
                seen = series.setdefault(name, {"namespaces": set(), "jobs": set(), "labels": {}})
                seen["kind"] = type(metric.data).__name__
                seen["unit"] = metric.unit
                seen["int"] = all(
                    isinstance(getattr(p, "value", None), int) for p in metric.data.data_points
                )
                seen["namespaces"].add(str(attributes[SERVICE_NAMESPACE]))
                seen["jobs"].add(str(attributes[SERVICE_NAME]))
                for point in metric.data.data_points:
                    for key, value in (point.attributes or {}).items():
                        seen["labels"].setdefault(key, set()).add(str(value))
    return series


def _exercise(settings: Settings, telemetry: Telemetry) -> None:
    def maker(_: str) -> Any:
        def make() -> Store:
            return DuckDBStore(":memory:")

        return make

    audiences = rendered()["audiences"]
    read_audience = settings.auth.read_audience.split(",")[0]
    cell = create_cell(
        settings, stores={n: maker(n) for n in settings.systems()}, telemetry=telemetry
    )
    with TestClient(cell) as client:
        for name in ("recordline", "audit"):
            token = stripped(aud=audiences[name], email=PUSHER.format(name))
            push = {"Authorization": f"Bearer {token}"}
            for n, (published, attributes) in enumerate(
                (
                    (_now(), None),
                    ("2024-04-27T12:00:01Z", None),  # stored long after: not fresh
                    (_now(), {CANARY_ATTRIBUTE: "1"}),
                )
            ):
                record = {"id": CANARY_ATTRIBUTE if attributes else f"r-{n}", "data": "x"}
                body = envelope(
                    record, message_id=f"{name}-{n}", publish_time=published, attributes=attributes
                )
                answer = client.post(f"/systems/{name}/pubsub/push", json=body, headers=push)
                assert answer.status_code == 204, answer.text
            read = {"Authorization": f"Bearer {stripped(aud=read_audience, email=SMOKE)}"}
            answer = client.get(f"/systems/{name}/v1/records", headers=read)
            assert answer.status_code == 200, answer.text
        assert telemetry.meter_provider is not None
        telemetry.meter_provider.force_flush()


def _references() -> list[tuple[Path, str, set[str]]]:
    """Each line of Terraform naming workload metrics, and which."""
    found = []
    paths = sorted(TERRAFORM.rglob("*.tf"))
    for path in paths:
        for line in path.read_text().splitlines():
            if line.lstrip().startswith("#"):
                continue
            names = set(NAMED.findall(line))
            if SLO_EVENTS.search(line):
                names.add("slo.events")
            if names:
                found.append((path, line, names))
    return found


def _labels() -> dict[str, set[str]]:
    """Each metric's labels as its descriptor declares them and the service writes them."""
    declared = {name: set(d["labels"]) for name, d in _locals(METRICS)["workload_metrics"].items()}
    for name, descriptor in _exported_descriptors().items():
        assert set(descriptor["labels"]) == declared[name], name
    for name, seen in written().items():
        assert set(seen["labels"]) <= declared[name], name
    return declared


@pytest.mark.slow
def test_every_metric_terraform_names_is_one_the_cell_or_its_exporter_writes() -> None:
    named = {name for _, _, names in _references() for name in names}
    assert {"slo.events", "ingest.lag", "export.lag", "canary.age", "messages"} <= named
    writes = set(_exported_descriptors()) | set(written())
    assert named - writes == set()
    # The SLO counter in particular: written by the cell, each system's, as its
    # descriptor declares it (a cumulative INT64 counter of {event}).
    slo = written()["slo.events"]
    declared = _locals(METRICS)["workload_metrics"]["slo.events"]
    assert (declared["kind"], declared["value"], declared["unit"]) == (
        "CUMULATIVE",
        "INT64",
        "{event}",
    )
    assert (slo["kind"], slo["int"], slo["unit"]) == ("Sum", True, "{event}")


def test_every_label_terraform_filters_or_groups_on_is_one_the_metric_is_written_with() -> None:
    labels = _labels()
    checked = 0
    for path, line, names in _references():
        used = {label for label, _, _ in FILTER_LABEL.findall(line)}
        for group in PROMQL_BY.findall(line):
            used |= {g.strip() for g in group.split(",") if g.strip()}
        used |= {label for label, _ in PROMQL_MATCHER.findall(line)}
        allowed = set().union(*(labels[n] for n in names)) | RESOURCE_LABELS | MADE_LABELS
        # Other Google metrics' labels on the same line (Pub/Sub's, Spanner's).
        if "pubsub" in line or "spanner_googleapis_com" in line:
            allowed |= {
                "subscription_id",
                "response_class",
                "instance_id",
                "priority",
                "instance_config",
            }
        assert used <= allowed, (path.name, sorted(used - allowed), line.strip()[:200])
        checked += len(used)
    assert checked > 20


def test_every_label_value_terraform_compares_with_is_one_the_service_writes() -> None:
    seen = written()["slo.events"]["labels"]
    assert seen["slo"] == {"availability", "read_latency", "freshness"}
    assert seen["good"] == {"true", "false"}
    compared: dict[str, set[str]] = {}
    for _, line, names in _references():
        if "slo.events" not in names and "messages" not in names:
            continue
        for label, _, value in FILTER_LABEL.findall(line):
            if value and "$" not in value:
                compared.setdefault(label, set()).add(value)
        for label, value in PROMQL_MATCHER.findall(line):
            if label in ("slo", "good") and "$" not in value:
                compared.setdefault(label, set()).add(value)
    # The SLOs' names (modules/system's filters, the cell's reads', modules/symptoms)
    # and the outcomes' too.
    slos = {v["slo"] for v in _locals(TERRAFORM)["cell_slos_by_key"].values()}
    compared.setdefault("slo", set()).update(slos)
    assert "freshness" in compared["slo"]
    assert compared["good"] == {"true", "false"}
    assert compared["slo"] <= seen["slo"]
    assert compared["outcome"] <= written()["messages"]["labels"]["outcome"]


def test_a_systems_series_are_under_its_name_and_the_cells_under_the_cells() -> None:
    series = written()
    cell = rendered()["service"]["RECORDLINE_CELL"]
    systems = {"recordline", "audit"}
    # What the cell's dashboard (dashboard.tf) reads under the cell's namespace, and
    # under its systems' (by the writer's job) and the fleet's per system.
    for name in ("ingest.lag", "read.duration", "query.duration", "append.rows"):
        assert series[name]["namespaces"] == {cell}, name
    # A system's: what its store holds, counted by the service for `audit` (DuckDB here,
    # no serving tier); `recordline`'s, with a serving tier, by its export lease holder
    # (tests/cell/test_telemetry.py). Reads' SLO events are the cell's.
    for name in ("messages", "canary.age"):
        assert series[name]["namespaces"] == {"audit"}, name
    assert series["slo.events"]["namespaces"] == {"audit", cell}
    assert systems >= {"audit"}
    charts = _locals(TERRAFORM)
    assert 'namespace\\"=\\"${local.cell}' in charts["cell_metric"]


def test_the_job_terraform_filters_on_is_the_service_name_each_process_runs_with(
    tmp_path: Path,
) -> None:
    found = rendered()
    cell = found["service"]["RECORDLINE_CELL"]
    ingest = Settings.load({**mounted(found["service"], tmp_path), **SECRETS})
    exporter = Settings.load(mounted(found["exporter"], tmp_path))
    # generic_task's `job` is the resource's service.name (OTEL_SERVICE_NAME).
    assert written()["messages"]["jobs"] == {ingest.telemetry.service_name}
    charts = _locals(TERRAFORM)
    assert f'job\\"=\\"{ingest.telemetry.service_name}' in charts["systems_metric"].replace(
        "${local.cell}", cell
    )
    assert f'job\\"=\\"{exporter.telemetry.service_name}' in charts["exported_metric"].replace(
        "${local.cell}", cell
    )
    assert ingest.telemetry.service_name != exporter.telemetry.service_name
    # The export gate asks for the writer the rollout names: the pool's service name,
    # and its canary's beside it.
    gate = (TERRAFORM.parents[1] / ".github" / "workflows" / "deploy-cell.yml").read_text()
    assert "OTEL_SERVICE_NAME=$POOL-canary" in gate
    assert "writer: ${{ needs.exporter-canary.outputs.pool }}-canary" in gate
    assert 'OTEL_SERVICE_NAME=$POOL"' in gate
    assert "writer: ${{ needs.exporter-canary.outputs.pool }}\n" in gate
    assert exporter.telemetry.service_name == f"{cell}-exporter"
    # The pool is named so too (its logs' worker_pool_name, the rollout's POOL).
    assert '= "${local.cell}-exporter"' in _locals(TERRAFORM)["exporter"]


@pytest.mark.slow
def test_the_paths_the_uptime_check_and_probes_ask_are_the_cells_own(tmp_path: Path) -> None:
    check = _resources("google_monitoring_uptime_check_config")["cell"]
    (http,) = check["http_check"]
    (container,) = _resources("google_cloud_run_v2_service")["ingest"]["template"][0]["containers"]
    paths = {
        "uptime": http["path"],
        "startup": container["startup_probe"][0]["http_get"][0]["path"],
        "liveness": container["liveness_probe"][0]["http_get"][0]["path"],
    }
    assert paths == {"uptime": "/readyz", "startup": "/readyz", "liveness": "/healthz"}
    found = rendered()
    google = FakeGoogle().start()
    try:
        env = {
            **mounted(found["service"], tmp_path),
            **SECRETS,
            "RECORDLINE_OIDC_CERTS_URL": google.certs_url,
        }
        settings = Settings.load(env)
        stores = {n: (lambda: DuckDBStore(":memory:")) for n in settings.systems()}
        with TestClient(create_cell(settings, stores=stores, telemetry=Telemetry())) as client:
            for probe, path in paths.items():
                # Cloud Run's probes send no token; the uptime check's is for the cell's
                # URL, which its read audience holds (test_probe.py).
                answer = client.get(path)
                assert answer.status_code == 200, (probe, answer.text)
    finally:
        google.stop()
