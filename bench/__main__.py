"""usage: python3 dev.py bench NAME [options]

NAME: ingest | query | bqcost | cost | writer | auth | telemetry | instructions | e2e |
      stops | followers | outage | server | typedcost | devrate |
      typedingest | exporter | calls | producers | cell | storage | latest | durable |
      access | console.
`python3 dev.py bench NAME --help` shows a benchmark's options.
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
    "followers",
    "outage",
    "server",
    "typedcost",
    "devrate",
    "typedingest",
    "exporter",
    "calls",
    "producers",
    "cell",
    "storage",
    "latest",
    "durable",
    "access",
    "console",
)


def run(argv: list[str]) -> int:
    if argv and argv[0] in {"-h", "--help", "help"}:
        print(__doc__)
        return 0
    if not argv or argv[0] not in NAMES:
        if argv:
            print(f"bench: no benchmark {argv[0]!r}", file=sys.stderr)
        print(__doc__, file=sys.stderr)
        return 2
    module = importlib.import_module(f"bench.{argv[0]}")
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
