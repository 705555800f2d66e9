"""The custom checkov policies in infra/checkov catch what they claim to catch.

Each policy runs over small fixtures (resources named pass_* and fail_*) and over
the real configuration, in one checkov run: a policy that stopped matching would
let every fail_* fixture through, and the real configuration must pass all three.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

# Slow, every test: they share one checkov run of tens of seconds.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parent / "policy_fixtures"
TERRAFORM = ROOT / "infra" / "terraform"
POLICIES = ("CKV_RL_1", "CKV_RL_2", "CKV_RL_3")


def _checkov_version() -> str:
    # One pin, in the script CI runs, so the tests and CI use the same checkov.
    match = re.search(r"^CHECKOV_VERSION=(\S+)$", (ROOT / "infra" / "check.sh").read_text(), re.M)
    assert match, "infra/check.sh must set CHECKOV_VERSION"
    return match.group(1).strip("\"'")


def _documents(text: str) -> list[dict[str, Any]]:
    # checkov prints one JSON document per framework, back to back.
    decoder, docs, i = json.JSONDecoder(), [], 0
    while i < len(text):
        if text[i].isspace():
            i += 1
            continue
        doc, i = decoder.raw_decode(text, i)
        docs.extend(doc if isinstance(doc, list) else [doc])
    return docs


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str, str], str]:
    """(tree, check id, resource address) -> PASSED or FAILED, tree being fixtures or infra."""
    if shutil.which("uvx") is None:
        pytest.skip("uvx is not installed: the policies run in checkov's own environment")
    work = tmp_path_factory.mktemp("checkov")
    shutil.copytree(FIXTURES, work / "fixtures")
    shutil.copytree(TERRAFORM, work / "infra", ignore=shutil.ignore_patterns(".terraform*"))
    run = subprocess.run(
        [
            "uvx",
            "--from",
            f"checkov=={_checkov_version()}",
            "checkov",
            "--skip-download",
            "--framework",
            "terraform",
            "--output",
            "json",
            "--external-checks-dir",
            str(ROOT / "infra" / "checkov"),
            "--check",
            ",".join(POLICIES),
            "--directory",
            str(work),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if run.returncode not in (0, 1):  # 1 means checks failed, which the fixtures must
        pytest.fail(f"checkov did not run ({run.returncode}):\n{run.stderr[-3000:]}")
    results: dict[tuple[str, str, str], str] = {}
    for doc in _documents(run.stdout):
        for key, outcome in (("passed_checks", "PASSED"), ("failed_checks", "FAILED")):
            for item in doc.get("results", {}).get(key, []):
                tree = Path(item["file_abs_path"]).relative_to(work).parts[0]
                # A module's resource is named by its address inside the module (checkov
                # prefixes the module call, `module.system.`), as the module declares it.
                resource = re.sub(r"^(module\.[\w\[\]\"-]+\.)+", "", item["resource"])
                results[(tree, item["check_id"], resource)] = outcome
    return results


def _fixture_resources() -> list[tuple[str, str, str]]:
    """(check id, resource address, expected outcome) for every fixture resource."""
    found = []
    for path in sorted(FIXTURES.glob("*.tf")):
        text = path.read_text()
        check = re.search(r"^# (CKV_RL_\d+)\.", text, re.M)
        assert check, f"{path.name} must say which policy it exercises"
        for rtype, name in re.findall(r'^resource "([^"]+)" "([^"]+)"', text, re.M):
            expected = "PASSED" if name.startswith("pass_") else "FAILED"
            found.append((check.group(1), f"{rtype}.{name}", expected))
    return found


@pytest.mark.parametrize(("check", "resource", "expected"), _fixture_resources())
def test_policy_judges_fixture(
    outcomes: dict[tuple[str, str, str], str], check: str, resource: str, expected: str
) -> None:
    assert outcomes.get(("fixtures", check, resource)) == expected


def test_every_policy_has_a_failing_fixture() -> None:
    failing = {check for check, _, expected in _fixture_resources() if expected == "FAILED"}
    assert failing == set(POLICIES)


@pytest.mark.parametrize(
    ("check", "resource"),
    [
        ("CKV_RL_1", "google_pubsub_subscription.push"),
        ("CKV_RL_3", "google_iam_workload_identity_pool_provider.github"),
        ("CKV_RL_2", "google_cloud_run_v2_service_iam_member.push_invoker"),
        ("CKV_RL_2", "google_bigquery_dataset.recordline"),
    ],
)
def test_configuration_passes(
    outcomes: dict[tuple[str, str, str], str], check: str, resource: str
) -> None:
    assert outcomes.get(("infra", check, resource)) == "PASSED"


def test_configuration_has_no_failures(outcomes: dict[tuple[str, str, str], str]) -> None:
    failed = sorted(k for k, v in outcomes.items() if k[0] == "infra" and v == "FAILED")
    assert failed == []
