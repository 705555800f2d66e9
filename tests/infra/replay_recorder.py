"""Stands in for `.venv/bin/recordline` in the runbook tests: the real command line
parses the arguments (a flag it does not know fails), and they are recorded in
replays.jsonl beside the fake cloud's world instead of replaying anything."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from recordline_dev import commands

parser = argparse.ArgumentParser(prog="recordline")
sub = parser.add_subparsers(dest="command", required=True)
add_arguments, _ = commands()["replay"].load()
add_arguments(sub.add_parser("replay"))
args = parser.parse_args()
with Path(os.environ["FAKE_CLOUD_WORLD"]).with_name("replays.jsonl").open("a") as f:
    f.write(json.dumps(vars(args)) + "\n")
