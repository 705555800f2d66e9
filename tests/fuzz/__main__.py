"""A long fuzzing run: `python3 dev.py fuzz [--minutes N] [--examples N]`.

Runs the fuzzer (tests/fuzz), the schemathesis and decoder fuzzing of
tests/auth/test_hostile_input.py and the request heads split at random of
tests/test_server_limits.py in rounds, each with a fresh Hypothesis seed
and RECORDLINE_FUZZ_EXAMPLES examples per test, until the time is up or a
round fails (its output is printed: Hypothesis names the failing input and how
to reproduce it). Then it says how many pushes it tried, by store and format.
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TARGETS = (
    "tests/fuzz",
    "tests/auth/test_hostile_input.py",
    "tests/test_server_limits.py::test_a_head_is_measured_whole_however_it_is_split",
)


def main() -> int:
    parser = argparse.ArgumentParser(prog="dev.py fuzz", description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long to fuzz (10)")
    parser.add_argument(
        "--examples", type=int, default=60, help="examples per test in each round (60)"
    )
    args = parser.parse_args()
    deadline = time.monotonic() + args.minutes * 60
    tried: collections.Counter[tuple[str, str]] = collections.Counter()
    rounds = 0
    env = {**os.environ, "RECORDLINE_FUZZ_EXAMPLES": str(args.examples)}
    while time.monotonic() < deadline:
        rounds += 1
        print(f"fuzz: round {rounds}", flush=True)
        try:
            done = subprocess.run(
                [sys.executable, "-m", "pytest", "-q", "-p", "no:logging", "-x", *TARGETS],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                check=False,
            )
        except KeyboardInterrupt:
            # The round's pytest got the Ctrl-C too (one process group) and stops.
            print(
                f"\nfuzz: interrupted in round {rounds}; {rounds - 1} rounds before it passed "
                f"({sum(tried.values()):,} pushes tried)",
                file=sys.stderr,
            )
            return 130
        for line in done.stdout.splitlines():
            if line.startswith("fuzz-tried "):
                _, store, fmt, count = line.split()
                tried[(store, fmt)] += int(count)
        if done.returncode != 0:
            print(done.stdout[-20_000:], done.stderr[-5_000:], sep="\n")
            print(f"fuzz: round {rounds} failed (above)", file=sys.stderr)
            return 1
    print(f"fuzz: {rounds} rounds in {args.minutes:g} minutes, nothing failed; pushes tried:")
    for (store, fmt), count in sorted(tried.items()):
        print(f"  {store:<9} {fmt:<13} {count:>7,}")
    print(f"  {'all':<23} {sum(tried.values()):>7,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
