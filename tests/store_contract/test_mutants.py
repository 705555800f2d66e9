"""The contract bites: every deliberately broken store fails it.

Each mutant (mutants.py) is the memory store with one promise broken; the
contract suite runs on the mutants alone, in a process of its own (one for all
of them: a pytest start costs more than the contract itself), and must fail on
at least one assertion for each. A mutant that passes means the contract lets
that breakage through.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

import pytest

from tests.store_contract.mutants import MUTANTS

ROOT = Path(__file__).resolve().parents[2]


class Outcomes:
    def __init__(self, returncode: int, summary: str) -> None:
        self.returncode = returncode
        self.summary = summary
        # Per mutant: the contract tests that ran, and those that failed or errored.
        self.ran: dict[str, list[str]] = defaultdict(list)
        self.failed: dict[str, list[str]] = defaultdict(list)
        self.errored: dict[str, list[str]] = defaultdict(list)


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> Outcomes:
    """The contract run once on every mutant, each test's outcome read from its JUnit report."""
    report = tmp_path_factory.mktemp("mutants") / "contract.xml"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:randomly",
            "-p",
            "no:cacheprovider",
            f"--junitxml={report}",
            "tests/store_contract/test_contract.py",
            "tests/store_contract/test_filters.py",
            "tests/store_contract/test_counts.py",
        ],
        cwd=ROOT,
        env={**os.environ, "RECORDLINE_CONTRACT_MUTANT": ",".join(sorted(MUTANTS))},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    summary = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else run.stderr
    found = Outcomes(run.returncode, summary)
    if report.exists():
        for case in ET.parse(report).iter("testcase"):
            name = case.get("name", "")
            # The test's id names the store it ran on: test_…[mutant:NAME] (or
            # [mutant:NAME-…] with more parameters).
            for mutant in MUTANTS:
                if re.search(rf"[\[-]mutant:{re.escape(mutant)}[\]-]", name):
                    found.ran[mutant].append(name)
                    if case.find("failure") is not None:
                        found.failed[mutant].append(name)
                    if case.find("error") is not None:
                        found.errored[mutant].append(name)
    return found


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MUTANTS))
def test_the_contract_fails_a_broken_store(name: str, outcomes: Outcomes) -> None:
    # Failed tests, not a suite that could not run: exit code 1, and for this
    # mutant, contract tests that ran, none that could not, and at least one failed.
    assert outcomes.returncode == 1, f"the contract passed or could not run: {outcomes.summary}"
    assert outcomes.ran[name], f"{name}: no contract test ran on it: {outcomes.summary}"
    assert not outcomes.errored[name], f"{name}: could not run: {outcomes.errored[name]}"
    assert outcomes.failed[name], f"{name}: the contract passed"
