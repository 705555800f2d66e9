"""Systems come and go without losing a message: names that fit, data that is never
destroyed by a plan, and a new system that refuses pushes until it is deployed."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.infra.test_fleet import _root_console_run
from tests.infra.test_terraform import MODULE, TERRAFORM, _load, _resources
from tests.waiting import until_blocking

# The limits of the resources named after a system, as Google documents them.
PROJECT_NUMBER = "123456789012"  # project numbers have up to 12 digits
DEPLOY_TAG = "sha-0123456"  # the longest revision tag the deploy workflow gives


def _fits_google(name: str) -> list[str]:
    """What Google would refuse among the resources named after system `name`, and the
    length the project's own texts are sized for."""
    problems = []
    # Its push account: 6 to 30, [a-z][-a-z0-9]*[a-z0-9]
    # (https://cloud.google.com/iam/docs/service-accounts-create#creating).
    account = f"{name}-push"
    if not (6 <= len(account) <= 30 and re.fullmatch(r"[a-z][-a-z0-9]*[a-z0-9]", account)):
        problems.append(f"service account {account}")
    # Pub/Sub topics and subscriptions: 3 to 255, a letter first, not starting with goog.
    for topic in (name, f"{name}-dead-letter"):
        if not (3 <= len(topic) <= 255 and re.fullmatch(r"[A-Za-z][\w.~+%-]*", topic)):
            problems.append(f"topic {topic}")
        if topic.startswith("goog"):
            problems.append(f"topic {topic}")
    # Its Spanner database, with `serving`: 2 to 30, [a-z][-_a-z0-9]*[a-z0-9].
    if not (2 <= len(name) <= 30 and re.fullmatch(r"[a-z][-_a-z0-9]*[a-z0-9]", name)):
        problems.append(f"Spanner database {name}")
    # Its path in the cell's URLs (/systems/NAME/...), and the alerts' documentation,
    # which lists systems by name and is sized for names of 24 characters (test_alerts).
    if not re.fullmatch(r"[a-z0-9-]+", name) or len(name) > 24:
        problems.append(f"a name of {len(name)} characters, or not a plain path segment")
    return problems


def _accepted(systems: str, *, service_name: str = "recordline", retired: str = "[]") -> bool:
    """Whether terraform takes `systems` (converted to its type, every check run)."""
    run = _root_console_run(
        "keys(var.systems)",
        systems,
        (("retired_systems", retired), ("service_name", f'"{service_name}"')),
    )
    refused = "Invalid value for variable" in run.stderr
    assert refused or run.returncode == 0, run.stderr
    return not refused


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("orders", ""),
        ("abc", ""),
        ("a" * 24, ""),  # the longest
        ("eu-orders-2", ""),
        ("a", "too short for its topic"),
        ("ab", "too short for its topic"),
        ("a" * 25, "longer than the alerts' texts are sized for"),
        ("orders-", "Spanner refuses a last dash"),
        ("9orders", "a letter first"),
        ("Orders", "lower case"),
        ("or_ders", "no underscore in service accounts"),
        ("google-ads", "Pub/Sub refuses topics starting with goog"),
        ("orders-dead-letter", "the dead-letter topic of a system named orders"),
    ],
)
def test_system_names_are_refused_exactly_where_google_or_another_system_would(
    name: str, why: str
) -> None:
    accepted = _accepted(f'{{ recordline = {{}}, "{name}" = {{}} }}')
    collides = name.endswith("-dead-letter")
    assert accepted is (not why), why or f"{name} fits every limit"
    assert accepted is (not _fits_google(name) and not collides), _fits_google(name)


def test_the_module_names_nothing_else_after_the_system() -> None:
    # The names _fits_google checks: every resource name the module derives from it.
    text = "\n".join(p.read_text() for p in sorted(MODULE.glob("*.tf")))
    derived = set(re.findall(r'"\$\{var\.service_name\}([-_a-z]*)"', text))
    assert derived <= {
        "",  # topic, schema, dataset, database
        "-push",  # its account, and its push subscription
        "-dead-letter",
        "-dead-letter-bigquery",
        "-dead-letter-replay",
        "-canary",
        "-fill",  # its hourly run of the cell's fill job, where it has tables of its own
    }, derived


@pytest.mark.parametrize(
    ("systems", "retired", "accepted"),
    [
        ("{}", "[]", True),  # the default: one system named service_name
        ("{ recordline = {}, orders = {} }", "[]", True),
        # Written as "add orders", it would destroy the system that exists.
        ("{ orders = {} }", "[]", False),
        ("{ orders = {} }", '["recordline"]', True),  # retired on purpose
        ("{ recordline = {}, orders = {} }", '["recordline"]', False),  # a name reused
    ],
)
def test_a_systems_map_that_would_destroy_the_existing_system_is_refused(
    systems: str, retired: str, accepted: bool
) -> None:
    assert _accepted(systems, retired=retired) is accepted


HOLDING_DATA = (
    "google_pubsub_topic",
    "google_pubsub_subscription",
    "google_bigquery_dataset",
    "google_bigquery_table",
    "google_spanner_database",
    "google_pubsub_schema",  # every message of the topic names one of its revisions
)


def test_everything_that_holds_messages_or_rows_is_never_destroyed_by_a_plan() -> None:
    found = {
        f"{rtype}.{name}": body
        for path in sorted(MODULE.glob("*.tf"))
        for block in _load(path).get("resource", [])
        for rtype, named in block.items()
        if rtype in HOLDING_DATA
        for name, body in named.items()
    }
    assert len(found) == 14, sorted(found)
    unprotected = [
        address
        for address, body in found.items()
        if not any(lc.get("prevent_destroy") is True for lc in body.get("lifecycle", []))
    ]
    assert unprotected == []


# --- a new system before its first deploy ---------------------------------------


def test_a_new_cell_starts_on_the_placeholder_and_deploys_replace_it() -> None:
    for rtype, name in (
        ("google_cloud_run_v2_service", "ingest"),
        ("google_cloud_run_v2_worker_pool", "exporter"),
    ):
        body = _resources(rtype)[name]
        (container,) = body["template"][0]["containers"]
        assert container["image"] == "${var.placeholder_image}"
        assert container["command"] == ["python3"]
        script = "placeholder.py" if name == "ingest" else "exporter_placeholder.py"
        assert container["args"] == ["-c", '${file("${path.module}/' + script + '")}']
        ignored = set(body["lifecycle"][0]["ignore_changes"])
        assert {
            "${template[0].containers[0].image}",
            "${template[0].containers[0].command}",
            "${template[0].containers[0].args}",
        } <= ignored


def test_the_exporters_placeholder_exports_nothing_and_stops_on_sigterm() -> None:
    source = (TERRAFORM / "exporter_placeholder.py").read_text()
    assert "import" in source
    assert "google" not in source
    process = subprocess.Popen(
        [sys.executable, "-c", source], cwd=Path("/"), stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        assert "waiting for the first deploy" in process.stdout.readline()
        assert process.poll() is None  # a worker pool's instance that exits is restarted
        process.terminate()
        assert process.wait(timeout=10) == 0  # stopped by Cloud Run's SIGTERM, cleanly
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def placeholder() -> Iterator[str]:
    """placeholder.py as Cloud Run runs it: `python3 -c <file>`, PORT set."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    source = (TERRAFORM / "placeholder.py").read_text()
    process = subprocess.Popen(
        [sys.executable, "-c", source], env={"PORT": str(port)}, cwd=Path("/")
    )
    url = f"http://127.0.0.1:{port}"

    def listening() -> bool:
        assert process.poll() is None, f"placeholder.py exited with {process.returncode}"
        try:
            httpx.get(f"{url}/healthz", timeout=1)
        except httpx.TransportError:
            return False
        return True

    try:
        until_blocking(listening, interval=0.05, what="placeholder.py to listen")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_the_placeholder_refuses_every_push_so_pubsub_keeps_it(placeholder: str) -> None:
    push = httpx.post(
        f"{placeholder}/pubsub/push",
        json={"message": {"data": "e30=", "messageId": "1"}, "subscription": "s"},
        timeout=5,
    )
    assert push.status_code == 503  # not 2xx: Pub/Sub keeps the message and redelivers
    assert push.headers["Retry-After"] == "60"
    assert httpx.get(f"{placeholder}/v1/records", timeout=5).status_code == 503


def test_the_placeholder_passes_cloud_runs_probes(placeholder: str) -> None:
    for probe in ("/readyz", "/healthz"):
        assert httpx.get(f"{placeholder}{probe}", timeout=5).status_code == 200


# --- how many systems a project holds -------------------------------------------------


def _accounts(directory: Path) -> list[str]:
    return [
        name
        for path in sorted(directory.glob("*.tf"))
        for block in _load(path).get("resource", [])
        for name, body in block.get("google_service_account", {}).items()
        if "for_each" not in body and "count" not in body
    ]


@pytest.mark.slow
def test_a_cell_of_a_hundred_systems_fits_its_projects_service_accounts() -> None:
    # A project holds 100 service accounts unless a quota increase is granted
    # (https://cloud.google.com/iam/quotas): one a system (its push account), two a cell
    # (its service's and its pool's; a third, its fill job's, once a system has tables of
    # its own), five the environment's where it shares the project.
    assert _accounts(MODULE) == ["push"]
    cell = [
        name
        for path in sorted(TERRAFORM.glob("*.tf"))
        for block in _load(path).get("resource", [])
        for name in block.get("google_service_account", {})
    ]
    assert sorted(cell) == ["exporter", "fill", "runtime"]
    assert len(_accounts(TERRAFORM / "environment")) == 5
    # The plan refuses what would not fit, before creating any (the quota can be raised).
    names = [f"system-{n:03d}" for n in range(1, 94)]
    fits = "{ " + ", ".join(f'"{n}" = {{}}' for n in ["recordline", *names[:-1]]) + " }"
    over = "{ " + ", ".join(f'"{n}" = {{}}' for n in ["recordline", *names]) + " }"
    assert _accepted(fits) is True  # 93 systems, 2 cell and 5 environment accounts
    assert _accepted(over) is False  # 94
    run = _root_console_run("keys(var.systems)", over, (("service_account_quota", "200"),))
    assert "Invalid value for variable" not in run.stderr, run.stderr
    # In a project of its own, without the environment's five.
    own = (("environment_project_id", '"recordline-prod"'), ("project_id", '"recordline-prod-2"'))
    run = _root_console_run("keys(var.systems)", over, own)
    assert "Invalid value for variable" not in run.stderr, run.stderr


# --- retiring a system --------------------------------------------------------------------


def test_retiring_a_system_meets_no_deletion_protection_it_cannot_lift() -> None:
    # A resource's deletion_protection is in its own state: once the system is out of
    # `systems`, nothing can set it to false, and the apply would fail on it after
    # destroying part of the system. So each one is removed from the state first, as
    # the runbook says, or has none.
    from tests.infra.test_runbook import RUNBOOK

    text = RUNBOOK.read_text()
    section = text[text.index("### Retiring a system") :]
    section = section[: section.index("\n## ") if "\n## " in section else len(section)]
    removed = set(re.findall(r"\b(google_\w+\.\w+)\b", section))
    protected = {
        f"{rtype}.{name}"
        for path in sorted(MODULE.glob("*.tf"))
        for block in _load(path).get("resource", [])
        for rtype, named in block.items()
        for name, body in named.items()
        if body.get("deletion_protection") is True
    }
    assert protected, "the tables and the Spanner database keep theirs"
    assert protected <= removed, sorted(protected - removed)


# --- supply chain --------------------------------------------------------------------------


def test_the_placeholder_is_the_services_own_base_image_pinned_by_digest() -> None:
    from tests.infra.test_terraform import _validations_hold, _variables

    default = _variables()["placeholder_image"]["default"]
    dockerfile = (MODULE.parents[3] / "Dockerfile").read_text()
    (base,) = set(re.findall(r"(?m)^FROM (\S+@sha256:[0-9a-f]{64}) AS runtime$", dockerfile))
    assert default == f"docker.io/library/{base}"
    assert _validations_hold("placeholder_image", {"placeholder_image": f'"{default}"'})
    # A tag can be moved to other bytes by whoever publishes it: refused.
    tag = '"gcr.io/distroless/python3-debian12:nonroot"'
    assert not _validations_hold("placeholder_image", {"placeholder_image": tag})


@pytest.mark.parametrize("root", ["cell", "environment"])
def test_the_providers_are_locked_with_their_hashes(root: str) -> None:
    from tests.infra.test_terraform import ENVIRONMENT, TERRAFORM, _root

    directory = TERRAFORM if root == "cell" else ENVIRONMENT
    lock = hcl_lock(directory / ".terraform.lock.hcl")
    (terraform,) = _root("terraform", directory)
    required = {
        name: spec
        for providers in terraform["required_providers"]
        for name, spec in providers.items()
    }
    assert set(lock) == {f"registry.terraform.io/{spec['source']}" for spec in required.values()}
    for address, (version, hashes) in lock.items():
        assert version, address
        assert any(h.startswith("zh:") for h in hashes), address  # every platform's package
    # The schema infra/check.sh checks the configuration against is that of the locked
    # google providers.
    check = (MODULE.parents[2] / "check.sh").read_text()
    assert "google and google-beta 6.50" in check
    assert lock["registry.terraform.io/hashicorp/google"][0] == "6.50.0"
    if root == "cell":
        assert lock["registry.terraform.io/hashicorp/google-beta"][0] == "6.50.0"


def hcl_lock(path: Path) -> dict[str, tuple[str, list[str]]]:
    """provider address: (version, hashes), as .terraform.lock.hcl records them."""
    found = {}
    for address, body in re.findall(r'(?ms)^provider "([^"]+)" \{\n(.*?)^\}', path.read_text()):
        (version,) = re.findall(r'version\s*=\s*"([^"]+)"', body)
        found[address] = (version, re.findall(r'"((?:h1|zh):[^"]+)"', body))
    return found
