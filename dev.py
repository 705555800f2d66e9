#!/usr/bin/env python3
"""Set up and run Recordline from a fresh checkout, with nothing but Python 3.11+.

    python3 dev.py serve [recordline serve options]   # the service, on DuckDB
    python3 dev.py test [pytest options]              # the whole test suite
    python3 dev.py lint                               # ruff and mypy --strict
    python3 dev.py bench [ingest|query|...]           # benchmarks (see bench/)

The first run installs uv (pinned) into .tools/ unless uv is already on PATH,
then creates .venv exactly as uv.lock says (`uv sync --frozen`). Later runs
only check that .venv still matches the lock, which takes a few milliseconds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
UV_VERSION = "0.13.9"
TOOLS = ROOT / ".tools"


def uv() -> str:
    found = shutil.which("uv")
    if found:
        return found
    tool = TOOLS / "bin" / "uv"
    if not tool.exists():
        print(f"dev.py: installing uv {UV_VERSION} into {TOOLS}", file=sys.stderr)
        venv.create(TOOLS, with_pip=True)
        subprocess.run(
            [TOOLS / "bin" / "python", "-m", "pip", "install", "-q", f"uv=={UV_VERSION}"],
            check=True,
        )
    return str(tool)


def sync() -> None:
    # One environment with the dev tools for every command: switching between
    # a lean and a full one on each call would reinstall them every time.
    subprocess.run([uv(), "sync", "--frozen", "--quiet"], cwd=ROOT, check=True)


def run(*args: str) -> int:
    # uv's own directory goes on PATH, so that what runs finds uvx (the
    # infrastructure policy tests run checkov through it) even where uv was
    # installed into .tools/ by this script.
    tool = uv()
    path = f"{Path(tool).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    command = [tool, "run", "--frozen", "--no-sync", *args]
    return subprocess.run(command, cwd=ROOT, env={**os.environ, "PATH": path}).returncode


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"serve", "test", "lint", "bench"}:
        print(__doc__, file=sys.stderr)
        return 2
    command, rest = argv[0], argv[1:]
    sync()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    match command:
        case "serve":
            return run("recordline", "serve", *rest)
        case "test":
            return run("pytest", *rest)
        case "lint":
            return (
                run("ruff", "check", ".")
                or run("ruff", "format", "--check", ".")
                or run("mypy", "app", "recordline_dev")
            )
        case "bench":
            return run("python", "-m", "bench", *rest)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
