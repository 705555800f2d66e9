"""The contract bites: every deliberately broken store fails it.

Each mutant (mutants.py) is the memory store with one promise broken; the
contract suite runs on it alone, in a process of its own, and must fail on at
least one assertion. A mutant that passes means the contract lets that
breakage through.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.store_contract.mutants import MUTANTS

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", sorted(MUTANTS))
def test_the_contract_fails_a_broken_store(name: str) -> None:
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-x",
            "-p",
            "no:randomly",
            "-p",
            "no:cacheprovider",
            "tests/store_contract/test_contract.py",
        ],
        cwd=ROOT,
        env={**os.environ, "RECORDLINE_CONTRACT_MUTANT": name},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    summary = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else run.stderr
    # Failed tests, not a suite that could not run: exit code 1, failures counted.
    assert run.returncode == 1, f"{name}: the contract passed or could not run: {summary}"
    assert " failed" in summary, summary
