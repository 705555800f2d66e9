"""Stands in for `recordline` in a cell's ops and export jobs (infra/terraform/ops.tf,
exporter.tf) in the runbook tests: it parses the commands the runbook runs as those
jobs, as docs/operations.md specifies them for a cell (each for one system of the cell,
`--system`, with the cell's systems' file, RECORDLINE_URL and RECORDLINE_READ_AUDIENCE in
its environment), and records them in replays.jsonl beside the fake cloud's world with
the environment the job gave it, instead of running them.

`restore rows` is parsed by the service's own parser (app/store/spanner/restore.py); the
others by the interface the runbook states: `replay dead-letters | rejected`, `audit` and
`export <command>` each take `--system`.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from app.store.spanner import restore

parser = argparse.ArgumentParser(prog="recordline")
sub = parser.add_subparsers(dest="command", required=True)
replay = sub.add_parser("replay")
replay.add_argument("what", choices=["dead-letters", "rejected"])
replay.add_argument("--system", required=True)
replay.add_argument("--dry-run", action="store_true")
replay.add_argument("--since")
replay.add_argument("--reason-contains")
audit = sub.add_parser("audit")
audit.add_argument("--system", required=True)
audit.add_argument("--since", required=True)
restore.add_arguments(sub.add_parser("restore"))
export = sub.add_parser("export")
export.add_argument("--system", required=True)
export.add_argument("action", choices=["status", "retry", "reject", "resync", "verify", "leases"])
export.add_argument("rest", nargs="*")
export.add_argument("--reason")
export.add_argument("--operator")
export.add_argument("--since")
args = parser.parse_args()
given = {
    **vars(args),
    "env": {k: v for k, v in os.environ.items() if k.startswith(("RECORDLINE_", "CLOUD_RUN_"))},
}
with Path(os.environ["FAKE_CLOUD_WORLD"]).with_name("replays.jsonl").open("a") as f:
    f.write(json.dumps(given, default=str) + "\n")
print(f"recorded: {args.command}")
