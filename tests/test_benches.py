"""Every benchmark the docs quote runs, at a small size, and prints its table (each of
its modes too: `followers --peer` is not `followers`; a test finds any cited and not run).

No figure is judged here (a small run on a shared machine says nothing about one):
what fails is a benchmark that no longer runs, such as one sending a request the
service now refuses, or setting up what the service no longer takes. The figures in
the docs come from the full-size runs their commands give.

`bench calls` runs in tests/test_request_cost.py, its counts held to their budgets.
The counts taken under valgrind (`bench instructions`, `bench server --measure
instructions`, `bench producers --count`, `bench typedingest --count`) start each
server some fifty times slower, minutes rather than seconds, and are not run here.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest

from recordline_dev.cache import NginxMissing, find_nginx
from recordline_dev.devstack import find_emulator
from recordline_dev.processes import EmulatorNotFound
from tests.console.browser import CHROMIUM
from tests.node import npm_package
from tests.processes import ROOT
from tests.spanner.emulator import find_emulator as find_spanner_emulator

# A small run's arguments, and a line of the table it prints.
BENCHES = [
    ("ingest --rounds 1 --seconds 1 --connections 4 --designs b", "b floor (decode, 204)", "wrk"),
    ("query --rows 70000 --seconds 1 --ingest 50", "pages/s / 1 client", "wrk"),
    ("query --filters --rows 300 --rates 10", "billed what its ranges bill unfiltered", None),
    ("bqcost --rates 100 --days 1 --repeat 1", "follower-day at 100 msg/s", None),
    ("bqcost --layouts --rate 1 --days 7", "one table for both questions", None),
    ("storage --rows 2000", "logical / compressed", None),
    ("access --seconds 2", "ratio to the model's ACCESS_KEPT_LINE_BYTES", None),
    ("latest --ids 20", "answers that differ: 0", "emulator"),
    ("cost --rates 100 --followers 1 --seconds 0.5", "A month, at list prices", "emulator"),
    ("writer --producers 10 --seconds 0.5", "added latency", None),
    ("auth --seconds 1 --connections 4 --rounds 1", "push check, token cached", "wrk"),
    (
        "telemetry --seconds 1 --rounds 1 --processes 1 --connections 4 --rows off,metrics",
        "metrics: metrics only",
        "wrk",
    ),
    ("e2e --rate 50 --seconds 1 --lanes 1 --stores duckdb", "server-sent events", "emulator"),
    ("stops --runs 1 --seed 1", "1 Ctrl-Cs", None),
    ("followers --followers 5 --rounds 1 --poll 0.1", "server-sent events", None),
    (
        "followers --cache --followers 5 --writes 1 --records 200 --readers 2",
        "through the cache",
        "nginx",
    ),
    ("followers --heap --followers 5", "Python heap (tracemalloc)", None),
    ("followers --serving --followers 5 --rounds 1", "vs one follower", "emulator"),
    (
        "followers --peer --rounds 1 --trials 5 --followers 5 --records 500",
        "the first read after a restart",
        "node",
    ),
    ("outage --seconds 1 --fault refuses", "Spanner refuses", "emulator"),
    ("server --rounds 1 --seconds 1 --only httptools,bounded --measure load", "bounded", "wrk"),
    ("typedcost --rate 1 --days 1 --stored-per-day 10", "typed / JSON billed", None),
    ("durable --rows 4 --rounds 1 --seconds 0.2", "DuckDB commit a batch", None),
    ("devrate --rates 50 --seconds 1", "--serving", "emulator"),
    (
        "typedingest --rounds 1 --seconds 1 --connections 4 --records 20 --batch 10",
        "with typed fields",
        "wrk",
    ),
    (
        "exporter --systems 1 --trials 1 --rows 50 --idle 0.5 --only memory --only busy",
        "One exporter, busy",
        "emulator",
    ),
    ("producers --rounds 1 --seconds 1 --connections 4", "on / off", "wrk"),
    ("producers --storage", "one epoch's entry", None),
    ("producers --scale --producers 100 --gapped 0.1", "longest step ms", None),
    ("producers --serving --producers 50 --gapped 0.1", "with a gap", "emulator"),
    (
        "cell --systems 2 --pushes 20 --concurrency 2 --idle 0.5 --settle 0",
        "a cell of 2",
        "emulator",
    ),
    ("cell --flood --slices 2 --slice-seconds 1", "worst flooded/unflooded p99", None),
    ("console --rows 2000 --rounds 1 --pushes 1", "a push shown within a second", "browser"),
]


def needs(test: pytest.Item) -> None:
    """Skip, naming what is missing, where the benchmark needs what is not here (a
    failure in CI, tests/conftest.py)."""
    try:
        if test.get_closest_marker("emulator"):
            find_emulator()
            find_spanner_emulator()
        if test.get_closest_marker("nginx"):
            find_nginx()
    except (EmulatorNotFound, FileNotFoundError, NginxMissing) as exc:
        pytest.skip(str(exc))
    if test.get_closest_marker("browser") and not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: run scripts/install-browser.sh")
    if test.get_closest_marker("wrk") and shutil.which("wrk") is None:
        pytest.skip("wrk is not installed: run scripts/install-wrk.sh")
    if test.get_closest_marker("node"):
        npm_package("@durable-streams/server")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("command", "says"),
    [
        pytest.param(command, says, marks=[getattr(pytest.mark, m)] if m else [], id=command)
        for command, says, m in BENCHES
    ],
)
def test_a_benchmark_the_docs_quote_runs_at_a_small_size(
    command: str, says: str, request: pytest.FixtureRequest
) -> None:
    needs(request.node)
    done = subprocess.run(
        [sys.executable, "-m", "bench", *command.split()],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    said = f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    # It runs and prints its table; no figure is judged here, so a bench that exits 1
    # for a target missed (at this size, on a loaded machine) passes when it said why.
    assert done.returncode in (0, 1), said
    assert "Traceback" not in done.stderr, said
    assert says in done.stdout, said


# The flags that make a benchmark measure something else, each cited on its own.
MODES = frozenset(
    {
        "--peer",
        "--cache",
        "--heap",
        "--serving",
        "--layouts",
        "--flood",
        "--storage",
        "--scale",
        "--filters",
    }
)
# Cited, and run elsewhere (calls) or not at all (instructions: the docstring says why).
NOT_HERE = frozenset({("calls", None), ("instructions", None)})


def cited() -> set[tuple[str, str | None]]:
    """Each benchmark the docs cite (`bench NAME`), with its mode flag if it has one."""
    from bench.__main__ import NAMES

    found: set[tuple[str, str | None]] = set()
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for name, flag in re.findall(r"bench ([a-z]+)(?: (--[a-z-]+))?", page.read_text()):
            if name in NAMES:
                found.add((name, flag if flag in MODES else None))
    return found


def run_here(name: str, mode: str | None) -> bool:
    for command, _, _ in BENCHES:
        words = command.split()
        if words[0] == name and (mode in words if mode else not MODES & set(words)):
            return True
    return False


def test_every_benchmark_the_docs_cite_runs_here() -> None:
    found = cited()
    # The search finds what it looks for: a mode, and a benchmark without one.
    assert ("followers", "--peer") in found
    assert ("bqcost", None) in found
    missing = sorted((n, m or "") for n, m in found - NOT_HERE if not run_here(n, m))
    assert not missing, f"cited in the docs, never run at a small size: {missing}"
