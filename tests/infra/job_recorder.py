"""Stands in for `recordline` in a cell's ops and export jobs (infra/terraform/ops.tf,
exporter.tf) in the runbook tests: the service's own command line parses the commands
the runbook runs as those jobs (`replay`, `audit`, `export` and `restore`, each as the
image's `recordline` takes it: a flag it does not know, or a missing one, fails the
job), and they are recorded in replays.jsonl beside the fake cloud's world with the
environment the job's command gave it (infra/terraform/job.py), instead of running them.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from app.cli import OneLineParser, add_operator_commands

parser = OneLineParser(prog="recordline")
add_operator_commands(parser.add_subparsers(dest="command", required=True).add_parser)
args = parser.parse_command(sys.argv[1:])
given = {
    **{k: v for k, v in vars(args).items() if k != "command_parser"},
    "env": {k: v for k, v in os.environ.items() if k.startswith(("RECORDLINE_", "CLOUD_RUN_"))},
}
# The fake cloud runs a job in the directory its world is in: the job's environment
# holds only the settings its command names.
with (Path.cwd() / "replays.jsonl").open("a") as f:
    f.write(json.dumps(given, default=str) + "\n")
print(f"recorded: {args.command}")
