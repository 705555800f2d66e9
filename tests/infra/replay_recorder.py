"""Stands in for `.venv/bin/recordline` in the runbook tests: the real command line
parses the arguments (a flag it does not know fails), and they are recorded in
replays.jsonl beside the fake cloud's world instead of replaying or restoring anything."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from app.store.spanner import restore
from recordline_dev import commands

parser = argparse.ArgumentParser(prog="recordline")
sub = parser.add_subparsers(dest="command", required=True)
add_arguments, _ = commands()["replay"].load()
add_arguments(sub.add_parser("replay"))
restore.add_arguments(sub.add_parser("restore"))
args = parser.parse_args()
with Path(os.environ["FAKE_CLOUD_WORLD"]).with_name("replays.jsonl").open("a") as f:
    f.write(json.dumps(vars(args), default=str) + "\n")
