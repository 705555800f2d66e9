"""Supply-chain and permission rules for .github/workflows that zizmor does not enforce."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

WORKFLOWS = Path(__file__).resolve().parents[2] / ".github" / "workflows"
FILES = sorted(WORKFLOWS.glob("*.yml"))

# owner/repo[/path]@<40 hex> # vX.Y.Z
PINNED = re.compile(r"^[\w.-]+/[\w./-]+@[0-9a-f]{40} # v\d+\.\d+\.\d+$")


def _load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def _steps(workflow: dict[str, Any]) -> list[dict[str, Any]]:
    return [step for job in workflow["jobs"].values() for step in job.get("steps", [])]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_actions_are_pinned_to_a_commit_with_its_version(path: Path) -> None:
    for line in path.read_text().splitlines():
        match = re.match(r"^\s*(?:-\s+)?uses:\s*(.+?)\s*$", line)
        if not match or match.group(1).startswith("./"):
            continue
        assert PINNED.match(match.group(1)), line.strip()


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_top_level_permissions_are_read_only(path: Path) -> None:
    assert _load(path)["permissions"] == {"contents": "read"}


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_checkout_does_not_keep_credentials(path: Path) -> None:
    for step in _steps(_load(path)):
        if step.get("uses", "").startswith("actions/checkout@"):
            assert step["with"]["persist-credentials"] is False


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_expressions_do_not_reach_shell_scripts(path: Path) -> None:
    for step in _steps(_load(path)):
        assert "${{" not in step.get("run", ""), step.get("name", step["run"][:40])


def test_only_google_authenticating_jobs_get_an_id_token() -> None:
    for path in FILES:
        for name, job in _load(path)["jobs"].items():
            if job.get("permissions", {}).get("id-token") != "write":
                continue
            calls_reusable = job.get("uses", "").startswith("./")
            authenticates = any(
                s.get("uses", "").startswith("google-github-actions/auth@")
                for s in job.get("steps", [])
            )
            assert calls_reusable or authenticates, f"{path.name}: {name}"


def test_ci_runs_the_project_commands_and_the_infra_checks() -> None:
    runs = [s.get("run", "") for s in _steps(_load(WORKFLOWS / "ci.yml"))]
    assert "python3 dev.py test" in runs
    assert "python3 dev.py lint" in runs
    assert "bash infra/check.sh" in runs


def test_prod_deploys_and_applies_wait_for_an_environment() -> None:
    deploy = _load(WORKFLOWS / "deploy.yml")
    assert deploy["jobs"]["prod"]["needs"] == "dev"
    assert deploy["jobs"]["prod"]["with"]["environment"] == "prod"
    rollout = _load(WORKFLOWS / "deploy-environment.yml")
    assert rollout["jobs"]["deploy"]["environment"] == "${{ inputs.environment }}"
    apply = _load(WORKFLOWS / "terraform.yml")["jobs"]["apply"]
    assert apply["environment"] == "terraform-${{ matrix.environment }}"
    assert apply["strategy"]["max-parallel"] == 1
