"""infra/provider_schema.py catches what `terraform validate` would, and the configuration passes.

The checker runs in its own environment (the provider bindings and python-hcl2 as
pinned in infra/check.sh), once over the fixtures and the real configuration.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from functools import cache
from pathlib import Path

import pytest

# Slow, every test: they share one run of the provider-schema checker, tens of seconds.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parent / "schema_fixtures"
TERRAFORM = ROOT / "infra" / "terraform"
# <dir>/<file>.tf: resource <type>.<name>[.<block>[i]...]: <problem>
PROBLEM = re.compile(r"^\S+: (?:resource|data) \w+\.(?P<name>\w+)[^:]*: (?P<problem>.*)$")


def _pin(name: str) -> str:
    match = re.search(rf"^{name}=(\S+)$", (ROOT / "infra" / "check.sh").read_text(), re.M)
    assert match, f"infra/check.sh must set {name}"
    return match.group(1).strip("\"'")


@cache
def _run() -> tuple[int, str]:
    run = subprocess.run(
        [
            "uv",
            "run",
            "--no-project",
            "--python",
            "3.11",
            "--with",
            f"cdktf-cdktf-provider-google=={_pin('PROVIDER_SCHEMA_VERSION')}",
            "--with",
            f"cdktf-cdktf-provider-google-beta=={_pin('PROVIDER_SCHEMA_VERSION')}",
            "--with",
            f"python-hcl2=={_pin('PYTHON_HCL2_VERSION')}",
            "python",
            str(ROOT / "infra" / "provider_schema.py"),
            str(TERRAFORM),
            str(FIXTURES),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    return run.returncode, run.stdout


@pytest.fixture(scope="module")
def problems() -> dict[str, list[str]]:
    """Problems reported, by fixture resource name ('' for the real configuration)."""
    if shutil.which("uv") is None:
        pytest.skip("uv is not installed: the schema check runs in its own environment")
    code, out = _run()
    assert code == 1, out  # the fixtures are broken
    found: dict[str, list[str]] = {}
    for line in out.splitlines():
        match = PROBLEM.match(line)
        if line.startswith(str(FIXTURES)) and match:
            found.setdefault(match["name"], []).append(match["problem"])
        else:
            found.setdefault("", []).append(line)
    return found


def test_the_configuration_matches_the_provider_schema(problems: dict[str, list[str]]) -> None:
    assert problems.get("", []) == []


@pytest.mark.parametrize(
    ("resource", "expected"),
    [
        ("misspelled_argument", 'unsupported argument or block "message_retention_durtion"'),
        ("missing_required", 'missing required argument or block "topic"'),
        ("unknown_block", 'unsupported argument or block "expiry_days"'),
        ("unknown_block", 'unsupported argument or block "range_partitionning"'),
        ("block_as_argument", '"time_partitioning" is a block, not an argument'),
        ("dynamic_block_misspelled", 'dynamic "envs": no such block'),
        ("missing_required_in_block", 'missing required argument or block "key"'),
        ("unknown_resource", "the google provider has no such resource"),
        # Beta-only: without `provider = google-beta` it does not exist...
        ("beta_resource_on_ga", "the google provider has no such resource"),
        # ...and with it, it is checked against the beta schema.
        ("beta_misspelled", 'unsupported argument or block "servce"'),
    ],
)
def test_a_broken_resource_is_reported(
    problems: dict[str, list[str]], resource: str, expected: str
) -> None:
    assert any(expected in p for p in problems.get(resource, [])), problems.get(resource)
