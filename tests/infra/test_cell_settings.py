"""What Terraform gives a cell's processes is what they take: the ingest service's and
the exporter pool's environment and the systems' file mounted beside them, as the cell
root renders them (`terraform console` over its variables and plain locals, as
tests/infra/test_fleet.py evaluates it), read by the service's own settings loader,
built into a cell that answers each system's pushes with that system's token alone,
and opened by the exporter as the systems it exports."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from app.cell.app import create_cell
from app.exporter.service import Pool, exported_systems, pool_throttles
from app.settings import Settings, SystemEntry, every_setting, system_settings
from app.store import Store
from app.store.duckdb.store import DuckDBStore
from app.store.open import spanner_clients
from app.store.tiered.balance import Balance
from app.store.tiered.exporter import LEASE_SECONDS
from app.telemetry import Telemetry
from tests.auth.fake_google import FakeGoogle
from tests.conftest import envelope
from tests.fakes import FaultyStore
from tests.infra.test_fleet import DEV_ACCOUNTS, PROJECT_NUMBER, _root_console
from tests.infra.test_terraform import TERRAFORM, _locals, _resources
from tests.infra.test_topic_schemas import AVRO, TYPED

URL = f"https://recordline-{PROJECT_NUMBER}.europe-west1.run.app"
# Two serving systems and one that only stores to BigQuery; one names its own payload
# fields, one its readers and rate.
SYSTEMS = (
    "{ recordline = { serving = true },"
    ' orders = { serving = true, id_field = "order_id", time_field = "meta.created_at",'
    '  canary_file = "schemas/orders-canary.json", readers = ["user:ada@example.com"],'
    "  rate = 2.5 },"
    " audit = {} }"
)
# What Cloud Run puts in the ingest container besides the rendered variables: the
# page-token key, from its secret (cell.tf).
# The canary a system of its own payload shape publishes (systems.tf reads the file).
CANARY = (("schemas/orders-canary.json", b'{"order_id": "recordline-canary"}'),)
SECRETS = {"RECORDLINE_PAGE_TOKEN_SECRET": "k" * 43}


@cache
def rendered() -> dict[str, Any]:
    return dict(
        _root_console(
            "{ service = local.service_env, exporter = local.exporter_env,"
            " file = local.systems_json, directory = local.systems_directory,"
            " setting = local.systems_setting, audiences = local.push_audiences }",
            SYSTEMS,
            files=CANARY,
        )
    )


def mounted(env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """`env` with the systems' file where Cloud Run mounts it, here under `tmp_path`, and
    the throttles' file as Terraform first writes it (none throttled)."""
    found = rendered()
    directory = tmp_path / found["directory"].lstrip("/")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "systems.json").write_text(found["file"])
    setting = env["RECORDLINE_SYSTEMS"]
    assert setting == found["setting"] == f"@{found['directory']}/systems.json"
    mounts = {"RECORDLINE_SYSTEMS": f"@{directory}/systems.json"}
    if "RECORDLINE_THROTTLES" in env:  # the service's and the exporter pool's
        throttles = tmp_path / env["RECORDLINE_THROTTLES"].lstrip("/")
        throttles.parent.mkdir(parents=True, exist_ok=True)
        first = _resources("google_secret_manager_secret_version", TERRAFORM)["throttles"]
        throttles.write_text(first["secret_data"])
        mounts["RECORDLINE_THROTTLES"] = str(throttles)
    return {**env, **mounts}


def stripped(**claims: object) -> str:
    """A token as Cloud Run forwards one its invoker check verified (cell.tf sets
    RECORDLINE_TRUST_CLOUD_RUN_IAM): its signature replaced."""
    now = int(time.time())
    body = {
        "iss": "https://accounts.google.com",
        "sub": "1",
        "email_verified": True,
        "iat": now,
        "exp": now + 600,
        **claims,
    }

    def part(value: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    return f"{part({'alg': 'RS256', 'kid': 'k1'})}.{part(body)}.SIGNATURE_REMOVED_BY_GOOGLE"


def test_the_ingest_services_environment_is_accepted_with_each_systems_own_settings(
    tmp_path: Path,
) -> None:
    found = rendered()
    settings = Settings.load({**mounted(found["service"], tmp_path), **SECRETS})
    assert settings.cell.name == "recordline"
    systems = settings.systems()
    assert sorted(systems) == ["audit", "orders", "recordline"]
    for name, entry in systems.items():
        assert entry.push_audience == found["audiences"][name]
        assert entry.push_audience == f"{URL}/systems/{name}/pubsub/push"
        assert entry.push_service_accounts == f"{name}-push@recordline-dev.iam.gserviceaccount.com"
        assert entry.store == f"bigquery://recordline-dev/{name}"
        assert f"recordline-smoke@{DEV_ACCOUNTS}" in entry.read_principals
        assert f"recordline-operator@{DEV_ACCOUNTS}" in entry.operator_principals
    assert systems["recordline"].serving == (
        "spanner://projects/recordline-dev/instances/recordline-serving/databases/recordline"
    )
    assert systems["audit"].serving == ""
    orders = system_settings(settings, "orders", systems["orders"])
    assert (orders.payload.id_field, orders.payload.time_field) == ("order_id", "meta.created_at")
    assert orders.auth.push_audience == f"{URL}/systems/orders/pubsub/push"
    assert orders.auth.read_principals.startswith("ada@example.com,")
    assert systems["orders"].rate == 2.5
    assert orders.telemetry.system == "orders"
    # The cell's own, for every system: its read audience names the cell.
    assert URL in settings.auth.read_audience.split(",")
    assert settings.auth.trust_cloud_run_iam is True


@pytest.mark.slow
def test_the_cell_built_from_it_takes_each_systems_push_with_that_systems_token_alone(
    tmp_path: Path,
) -> None:
    found = rendered()
    google = FakeGoogle().start()
    try:
        # Google's keys, which the cell fetches before it is ready, served here.
        certs = {"RECORDLINE_OIDC_CERTS_URL": google.certs_url}
        settings = Settings.load({**mounted(found["service"], tmp_path), **SECRETS, **certs})
        pushed = push_to_each_system(settings, found["audiences"])
    finally:
        google.stop()
    assert pushed == {"recordline": [1], "orders": [1], "audit": [1]}


def push_to_each_system(settings: Settings, audiences: dict[str, str]) -> dict[str, list[int]]:
    """Each system's push with its own token, and orders' token at audit; the rows each
    system's store was given."""
    stores: dict[str, FaultyStore] = {}

    def maker(name: str) -> Any:
        def make() -> Store:
            stores[name] = FaultyStore(DuckDBStore(":memory:"))
            return stores[name]

        return make

    # Each system's store in memory here, and telemetry that exports nowhere: the rest is
    # what Terraform rendered.
    cell = create_cell(
        settings, stores={n: maker(n) for n in settings.systems()}, telemetry=Telemetry()
    )
    with TestClient(cell) as client:
        assert client.get("/readyz").json() == {"status": "ready", "not_ready": {}}
        for name in ("recordline", "orders", "audit"):
            token = stripped(
                aud=audiences[name],
                email=f"{name}-push@recordline-dev.iam.gserviceaccount.com",
            )
            payload = (
                {"order_id": "o-1", "meta": {"created_at": "2026-11-24T09:00:00Z"}}
                if name == "orders"
                else {"id": "r-1", "timestamp": "2026-11-24T09:00:00Z"}
            )
            answer = client.post(
                f"/systems/{name}/pubsub/push",
                json=envelope(payload, message_id=f"{name}-1"),
                headers={"Authorization": f"Bearer {token}"},
            )
            assert answer.status_code == 204, (name, answer.text)
        # orders' token at audit: refused by audit's guard, nothing stored there.
        orders_token = stripped(
            aud=audiences["orders"],
            email="orders-push@recordline-dev.iam.gserviceaccount.com",
        )
        answer = client.post(
            "/systems/audit/pubsub/push",
            json=envelope({"id": "r-2"}, message_id="audit-2"),
            headers={"Authorization": f"Bearer {orders_token}"},
        )
        assert answer.status_code in (401, 403), answer.text
    return {name: store.appends for name, store in stores.items()}


def test_the_exporter_pools_environment_is_accepted_and_exports_the_serving_systems(
    tmp_path: Path,
) -> None:
    found = rendered()
    env = mounted(found["exporter"], tmp_path)
    settings = Settings.load(env)
    assert settings.cell.name == "recordline"
    assert settings.telemetry.service_name == "recordline-exporter"
    serving = sorted(name for name, entry in settings.systems().items() if entry.serving)
    assert serving == ["orders", "recordline"]
    # Opened as `recordline exporter` opens them (nothing connects yet), on a pool
    # whose telemetry exports nowhere.
    balance = Balance("test", len(serving), lease_seconds=LEASE_SECONDS)
    pool = Pool("test", Telemetry(), spanner_clients(settings), balance)
    throttles = pool_throttles(settings)
    assert throttles is not None
    exported = exported_systems(settings, pool=pool, throttles=throttles)
    assert sorted(e.name for e in exported) == ["orders", "recordline"]
    # The throttles' file as Terraform first writes it: read, none throttled, nothing wrong.
    asyncio.run(throttles.read())
    assert throttles.in_force() == {}
    assert throttles.problems() == []
    throttles.close()


CONFIGURATION = TERRAFORM.parents[1] / "docs" / "configuration.md"
SETTING_KEY = re.compile(r"\b([A-Z][A-Z0-9_]+) +=  *")


def _documented() -> tuple[dict[str, tuple[set[str], str]], dict[str, str]]:
    """docs/configuration.md's tables of where Terraform sets a cell's settings: each
    setting's files and value, and each field of a system's entry and its value."""
    text = CONFIGURATION.read_text().split("## Where Terraform sets a cell's settings", 1)[1]
    settings: dict[str, tuple[set[str], str]] = {}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("| `"):
            continue
        if len(cells) == 3:
            files = set(re.findall(r"`([a-z_]+\.tf)`", cells[1]))
            settings[cells[0].strip("`")] = (files, cells[2])
        else:
            for field in re.findall(r"`([a-z_]+)`", cells[0]):
                fields[field] = cells[1]
    return settings, fields


def _set_by_terraform() -> dict[str, dict[str, str]]:
    """Each file's settings, to the expression that sets each."""
    found: dict[str, dict[str, str]] = {}
    service = _locals(TERRAFORM)["service_env"] + _locals(TERRAFORM)["retention_env"]
    exporter = _locals(TERRAFORM)["exporter_env"]
    ops = ", ".join(f"{k} = {v}" for k, v in _locals(TERRAFORM)["ops_env"].items())
    for name, text in (("cell.tf", service), ("exporter.tf", exporter), ("ops.tf", ops)):
        found[name] = {}
        for match in SETTING_KEY.finditer(text):
            rest = text[match.end() :]
            found[name][match[1]] = re.split(r",\s*[A-Z]|\n", rest, maxsplit=1)[0]
    for env in _resources("google_cloud_run_v2_service")["ingest"]["template"][0]["containers"][0][
        "env"
    ]:
        found["cell.tf"][env["name"]] = json.dumps(env["value_source"])
    return found


def test_configuration_md_says_where_terraform_sets_each_of_a_cells_settings() -> None:
    documented, fields = _documented()
    by_file = _set_by_terraform()
    every = {setting for settings in by_file.values() for setting in settings}
    assert set(documented) == every
    for setting, (files, value) in documented.items():
        assert files == {name for name, settings in by_file.items() if setting in settings}, setting
        # Each Terraform variable the value names is in what sets it (or in a local it
        # reads).
        for variable in re.findall(r"`var\.([a-z_]+)`", value):
            expressions = [by_file[f][setting] for f in files]
            expanded = " ".join(
                [
                    *expressions,
                    *(
                        str(_locals(TERRAFORM)[name])
                        for e in expressions
                        for name in re.findall(r"local\.([a-z_]+)", e)
                    ),
                ]
            )
            assert f"var.{variable}" in expanded, (setting, variable)
    assert rendered()["setting"] in documented["RECORDLINE_SYSTEMS"][1]
    # Every setting named is one of the service's.
    known = {s.var for s in every_setting()}
    assert every <= known
    # The fields Terraform writes for a system are the fields documented, each a field
    # of a system's entry.
    written = set(re.findall(r"\b([a-z_]+) = ", _locals(TERRAFORM)["systems_file"])) - {
        "field",
        "value",
    }
    assert set(fields) == written
    assert written <= set(SystemEntry.__struct_fields__)


# A cell with Cloud CDN and its read passes (cdn.tf): the pass keys come from their secret.
CDN = (("cdn", '{ enabled = true, domains = ["records.example.com"] }'),)
PASS_KEYS = {"RECORDLINE_READ_PASS_KEYS": "pass-1:" + base64.urlsafe_b64encode(b"p" * 16).decode()}


@cache
def rendered_with_passes() -> dict[str, str]:
    return dict(_root_console("local.service_env", SYSTEMS, overrides=CDN, files=CANARY))


@pytest.mark.slow
def test_with_read_passes_the_cell_verifies_every_token_itself_and_a_pass_reads_one_system(
    tmp_path: Path,
) -> None:
    env = rendered_with_passes()
    google = FakeGoogle().start()
    try:
        certs = {"RECORDLINE_OIDC_CERTS_URL": google.certs_url}
        settings = Settings.load({**mounted(env, tmp_path), **SECRETS, **PASS_KEYS, **certs})
        # The invoker check is off with passes: nothing is trusted for having passed it.
        assert settings.auth.trust_cloud_run_iam is False
        assert settings.auth.read_pass_url == "https://records.example.com"
        cell = create_cell(
            settings,
            stores={n: (lambda: DuckDBStore(":memory:")) for n in settings.systems()},
            telemetry=Telemetry(),
        )
        audiences = rendered()["audiences"]
        pusher = "orders-push@recordline-dev.iam.gserviceaccount.com"
        order = {"order_id": "o-1", "meta": {"created_at": "2026-11-24T09:00:00Z"}}
        with TestClient(cell) as client:
            push = "/systems/orders/pubsub/push"
            # A token whose signature Cloud Run's check would have removed is refused now.
            stripped_token = stripped(aud=audiences["orders"], email=pusher)
            refused = client.post(
                push,
                json=envelope(order, message_id="o-m"),
                headers={"Authorization": f"Bearer {stripped_token}"},
            )
            assert refused.status_code == 401, refused.text
            signed = google.mint(aud=audiences["orders"], email=pusher)
            pushed = client.post(
                push,
                json=envelope(order, message_id="o-m"),
                headers={"Authorization": f"Bearer {signed}"},
            )
            assert pushed.status_code == 204, pushed.text
            reader = google.mint(aud=URL, email="ada@example.com")
            issued = client.post(
                "/systems/orders/v1/read-pass", headers={"Authorization": f"Bearer {reader}"}
            )
            assert issued.status_code == 200, issued.text
            assert issued.json()["url_prefix"] == "https://records.example.com/systems/orders/v1/"
            client.cookies.clear()
            cookie = {"Cookie": issued.json()["cookie"]}
            read = client.get("/systems/orders/v1/records", headers=cookie)
            assert read.status_code == 200, read.text
            assert [r["message_id"] for r in read.json()["records"]] == ["o-m"]
            assert client.get("/systems/recordline/v1/records", headers=cookie).status_code == 401
    finally:
        google.stop()


# A system with a declared schema and more readers than a file's entry holds inline.
READERS = [f"user:reader-{n:02d}@example.com" for n in range(12)]
BULKY = (
    "{ recordline = { serving = true },"
    ' shop = { serving = true, json_schema = "schemas/shop.avsc",'
    f" readers = {json.dumps(READERS)} }} }}"
)


def test_what_the_file_names_rather_than_holds_is_mounted_beside_it_and_read_as_written(
    tmp_path: Path,
) -> None:
    found = _root_console(
        "{ service = local.service_env, exporter = local.exporter_env,"
        " file = local.systems_json, directory = local.systems_directory,"
        " values = local.systems_values, values_directory = local.values_directory }",
        BULKY,
        files=(("schemas/shop.avsc", AVRO), ("schemas/shop.avsc.bigquery.json", TYPED)),
    )
    # The file holds neither the schema nor the long list: each is a value of its own.
    assert sorted(found["values"]) == ["shop.readers", "shop.schema"]
    assert AVRO.decode() not in found["file"]
    assert READERS[0][5:] not in found["file"]
    # Mounted as Cloud Run mounts them, here under tmp_path: the file, and each value a
    # file named by its key in the values' directory.
    root = str(tmp_path)
    values = tmp_path / found["values_directory"].lstrip("/")
    values.mkdir(parents=True)
    for key, value in found["values"].items():
        (values / key).write_text(value)
    directory = tmp_path / found["directory"].lstrip("/")
    directory.mkdir(parents=True)
    (directory / "systems.json").write_text(
        found["file"].replace(
            f'"@{found["values_directory"]}/', f'"@{root}{found["values_directory"]}/'
        )
    )
    for env in (found["service"], found["exporter"]):
        settings = Settings.load(
            {**env, "RECORDLINE_SYSTEMS": f"@{directory}/systems.json", **SECRETS}
        )
        shop = system_settings(settings, "shop", settings.systems()["shop"])
        assert shop.schema.json_topic_schema == AVRO.decode()
        readers = shop.auth.read_principals.split(",")
        assert {r.removeprefix("user:") for r in READERS} < set(readers)
        assert f"recordline-smoke@{DEV_ACCOUNTS}" in readers
        # Short lists stay in the entry.
        assert shop.auth.operator_principals == f"recordline-operator@{DEV_ACCOUNTS}"
        assert settings.cell.faults() == {}


def mounting_the_file(block: object) -> list[dict[str, Any]]:
    """Each template in `block` (a resource's body, at any depth) with a volume of the
    systems' file."""
    found = []
    if isinstance(block, dict):
        volumes = block.get("volumes")
        if isinstance(volumes, list) and any(v.get("name") == "systems" for v in volumes):
            found.append(block)
        for value in block.values():
            found += mounting_the_file(value)
    elif isinstance(block, list):
        for value in block:
            found += mounting_the_file(value)
    return found


def test_every_template_mounting_the_file_mounts_its_values_as_the_one_local_has_them() -> None:
    # The service, the exporter pool and the jobs: each reads the file, so each must find
    # what it names where it names it (local.values_volumes, cell.tf).
    templates = {
        f"{kind}.{name}": template
        for kind in (
            "google_cloud_run_v2_service",
            "google_cloud_run_v2_worker_pool",
            "google_cloud_run_v2_job",
        )
        for name, body in _resources(kind, TERRAFORM).items()
        for template in mounting_the_file(body)
    }
    assert sorted(templates) == [
        "google_cloud_run_v2_job.export",
        "google_cloud_run_v2_job.fill",
        "google_cloud_run_v2_job.ops",
        "google_cloud_run_v2_service.ingest",
        "google_cloud_run_v2_worker_pool.exporter",
    ]
    for name, template in templates.items():
        volumes = [d["volumes"] for d in template.get("dynamic", []) if "volumes" in d]
        assert [v["for_each"] for v in volumes] == ["${local.values_volumes}"], name
        (container,) = template["containers"]
        mounts = [d["volume_mounts"] for d in container.get("dynamic", []) if "volume_mounts" in d]
        assert [m["for_each"] for m in mounts] == ["${local.values_volumes}"], name
        assert "systems" in {m["name"] for m in container["volume_mounts"]}, name
    # One volume at most (the secret's, where there is one), mounted in the directory
    # the file's entries name (local.values_directory).
    values = _locals(TERRAFORM)["values_volumes"]
    assert "in google_secret_manager_secret.systems_values :" in values
    assert "mount_path = local.values_directory" in values
