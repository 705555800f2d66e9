"""python3 dev.py bench NAME [options].

NAME: ingest | query | bqcost | cost | writer | auth | telemetry | instructions | e2e | stops.
"""

from __future__ import annotations

import importlib
import sys

NAMES = (
    "ingest",
    "query",
    "bqcost",
    "cost",
    "writer",
    "auth",
    "telemetry",
    "instructions",
    "e2e",
    "stops",
)


def run(argv: list[str]) -> int:
    if not argv or argv[0] not in NAMES:
        print(__doc__, file=sys.stderr)
        return 2
    module = importlib.import_module(f"bench.{argv[0]}")
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
