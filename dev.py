#!/usr/bin/env python3
"""Set up and run Recordline from a fresh checkout, with nothing but Python 3.11+.

    python3 dev.py serve [options]     # the service, on DuckDB (`recordline serve`)
    python3 dev.py config [--reference]   # every setting's value here, and where it came from
    python3 dev.py schema [spanner] [--write]   # the table schemas, derived from the code
    python3 dev.py dev [options]       # the local stack: Pub/Sub emulator → service
    python3 dev.py publish [options]   # publish records to a topic (the emulator's)
    python3 dev.py tail [options]      # follow /v1/records as JSON lines
    python3 dev.py replay [options]    # replay rejected or dead-lettered messages
    python3 dev.py sql [--dev|--serving] "SQL"   # SQL on a DuckDB store, or dev --serving's
    python3 dev.py audit --since 24h   # producer sequences by hour; exit 1 naming what is missing
    python3 dev.py typed backfill …    # project stored records into typed columns again
    python3 dev.py export status …     # the serving tier's export: status, retry, verify, …
    python3 dev.py restore rows …      # the serving tier: write back rows a database lost
    python3 dev.py exporter            # the exporter pool (RECORDLINE_SYSTEMS)
    python3 dev.py test [pytest options]   # the whole test suite (--quick: the inner loop's)
    python3 dev.py fuzz [--minutes N]  # the fuzzers, for longer than the test suite runs them
    python3 dev.py lint                # ruff check, ruff format --check, mypy --strict
    python3 dev.py docs [--serve]      # the documentation site, built strict into site/
    python3 dev.py bench [ingest|query|...]   # benchmarks (see bench/)

`python3 dev.py COMMAND --help` shows a command's options. The first run
installs uv (pinned) into .tools/ unless uv is already on PATH, then creates
.venv exactly as uv.lock says (`uv sync --frozen`). Later runs sync again only
when uv.lock or pyproject.toml changed, or a package was added to or removed from
.venv, since the last sync (a stamp in .venv says which: a millisecond or two to
check, where `uv sync` takes ~0.1 s and its start as much again). Ctrl-C during
the set-up stops it; the next run goes on from there. The commands are the
`recordline` ones in .venv (`.venv/bin/recordline`, the same with the environment
activated); serve, test, lint and bench run in the checkout, the others where you
are.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import TextIO

ROOT = Path(__file__).resolve().parent
UV_VERSION = "0.13.9"
TOOLS = ROOT / ".tools"
VENV = ROOT / ".venv"
# Commands of the `recordline` CLI this script forwards to.
RECORDLINE_COMMANDS = (
    "serve",
    "config",
    "schema",
    "dev",
    "publish",
    "tail",
    "replay",
    "sql",
    "audit",
    "typed",
    "export",
    "restore",
    "exporter",
    "tables",
)
COMMANDS = (*RECORDLINE_COMMANDS, "test", "fuzz", "lint", "bench", "docs")
LINT_HELP = """usage: python3 dev.py lint

Checks the checkout as CI does, stopping at the first that fails (its exit status):
  ruff check .            the lint rules of pyproject.toml
  ruff format --check .   the formatting (`.venv/bin/ruff format .` fixes it)
  mypy app recordline_dev strict type checking"""
# A child of this script (uv sync, a lint step) gets this long to stop after
# the signal that stopped us, before it is killed.
CHILD_STOP_SECONDS = 10.0


# What the last `uv sync` made .venv from (lock_state), so that a run with nothing
# changed starts the command at once.
SYNCED = VENV / ".dev-py-synced"


def uv() -> str:
    found = shutil.which("uv")
    if found:
        return found
    tool = TOOLS / "bin" / "uv"
    if not tool.exists():
        import venv

        print(f"dev.py: installing uv {UV_VERSION} into {TOOLS}", file=sys.stderr)
        venv.create(TOOLS, with_pip=True)
        installed = call(
            [str(TOOLS / "bin" / "python"), "-m", "pip", "install", "-q", f"uv=={UV_VERSION}"]
        )
        if installed != 0 or not tool.exists():
            sys.exit(f"dev.py: installing uv {UV_VERSION} failed (see above)")
    return str(tool)


def lock_state() -> str | None:
    """The lock and project file as .venv was synced from them, and the state of its
    packages (their directory's mtime moves when one is added or removed); None
    when there is no .venv."""
    packages = sorted(VENV.glob("lib/python3*/site-packages"))
    if not packages:
        return None
    digest = hashlib.sha256()
    for path in (ROOT / "uv.lock", ROOT / "pyproject.toml"):
        digest.update(path.read_bytes())
    return f"{digest.hexdigest()} {packages[0].stat().st_mtime_ns}"


def sync() -> None:
    # One environment with the dev tools for every command: switching between
    # a lean and a full one on each call would reinstall them every time.
    try:
        if SYNCED.read_text() == lock_state():
            return
    except OSError:
        pass  # no stamp: never synced by this script, or .venv is new
    tool = uv()
    # Said, since `--quiet` shows nothing for as long as it takes.
    show(
        f"dev.py: installing the locked dependencies into {VENV} (the first run takes a "
        "minute or two)"
        if lock_state() is None
        else f"dev.py: bringing {VENV} up to date with uv.lock",
        sys.stderr,
    )
    if call([tool, "sync", "--frozen", "--quiet"], cwd=ROOT) != 0:
        sys.exit("dev.py: `uv sync --frozen` failed (see above)")
    state = lock_state()
    if state is not None:
        SYNCED.write_text(state)


def environment() -> dict[str, str]:
    """The environment `uv run` gives: .venv activated, and uv's own directory on PATH,
    so that what runs finds uvx (the infrastructure policy tests run checkov
    through it) even where uv was installed into .tools/ by this script."""
    path = os.pathsep.join([str(VENV / "bin"), str(Path(uv()).parent), os.environ.get("PATH", "")])
    env = {**os.environ, "PATH": path, "VIRTUAL_ENV": str(VENV)}
    env.pop("PYTHONHOME", None)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def replace_with(program: str, *args: str, cwd: Path | None = None) -> None:
    """Become `program` from .venv: the process a signal reaches is the one that stops.

    A child under this script (and under `uv run`) would leave the server and
    its journal writer holding the DuckDB lock when only this script got the
    SIGTERM.
    """
    env = environment()
    # The recordline commands name themselves as typed (banners, usage, mistakes); not
    # passed on to the suite, whose own `recordline` runs are no user's `dev.py`.
    here = Path.cwd() == ROOT
    env.pop("RECORDLINE_DEV_COMMAND", None)
    if program == "recordline":
        env["RECORDLINE_DEV_COMMAND"] = "python3 dev.py" if here else f"python3 {ROOT / 'dev.py'}"
    if cwd is not None:
        os.chdir(cwd)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(VENV / "bin" / program, [program, *args], env)  # noqa: S606 - our own argv


def call(command: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None) -> int:
    """Run a child to its end; SIGINT, SIGTERM or SIGHUP for us stop it too, within bounds.

    The child shares our process group, so a Ctrl-C at the terminal reaches
    it already; a signal sent to this process alone is passed on.
    """
    # Imported here: most runs start no child of their own (they become the command).
    import subprocess
    import time

    child = subprocess.Popen(command, cwd=cwd, env=env)
    received: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        received.append(signum)
        if child.poll() is None:
            child.send_signal(signum)

    stop_signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {signum: signal.signal(signum, forward) for signum in stop_signals}
    try:
        deadline = None
        while (code := child.poll()) is None:
            if received and deadline is None:
                deadline = time.monotonic() + CHILD_STOP_SECONDS
            if deadline is not None and time.monotonic() > deadline:
                child.kill()
                code = child.wait(timeout=CHILD_STOP_SECONDS)
                break
            time.sleep(0.05)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if received:
        show(f"dev.py: stopped ({signal.Signals(received[0]).name})", sys.stderr)
        sys.exit(128 + received[0])
    return code


def show(text: str, stream: TextIO) -> None:
    """Print `text`; a reader that left (`python3 dev.py --help | head -1`) is no error."""
    try:
        print(text, file=stream, flush=True)
    except BrokenPipeError:
        # Nothing more can be said there, at exit included: the rest goes nowhere.
        os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())


def main(argv: list[str]) -> int:
    if argv and argv[0] in {"-h", "--help", "help"}:
        show(__doc__ or "", sys.stdout)
        return 0
    if not argv or argv[0] not in COMMANDS:
        if argv:
            import difflib

            close = difflib.get_close_matches(argv[0], COMMANDS, n=1)
            hint = f": did you mean {close[0]!r}?" if close else ""
            show(f"dev.py: no command {argv[0]!r}{hint}", sys.stderr)
        show(__doc__ or "", sys.stderr)
        return 2
    command, rest = argv[0], argv[1:]
    sync()
    match command:
        case "serve":
            # In the checkout: its default store is ./recordline.duckdb there.
            replace_with("recordline", "serve", *rest, cwd=ROOT)
        case name if name in RECORDLINE_COMMANDS:
            # Where you are: their file arguments are relative to it. (`schema
            # --write` writes into the checkout .venv's recordline runs from.)
            replace_with("recordline", name, *rest)
        case "test":
            # The suite starts the service, the CLI and pytest itself in many Python
            # processes: without compiled bytecode each compiles every module it
            # imports again (seconds each). So it is kept, in .tools/pycache, outside
            # the source tree: also where PYTHONDONTWRITEBYTECODE keeps it from
            # beside the sources.
            os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
            os.environ.setdefault("PYTHONPYCACHEPREFIX", str(ROOT / ".tools" / "pycache"))
            # A worker more than the machine's cores, up to four (pytest-xdist; each
            # worker starts the emulators it needs): much of the suite waits on servers
            # and subprocesses. (On two cores, two workers kept them 72% busy and took
            # 26 min; three took 22.5 min in the same hour, every test passing the first
            # time; four took 19 min once, but tests that time faults failed under that
            # load.) `-n 0` runs it in one process.
            if not any(a == "-n" or a.startswith(("-n", "--numprocesses")) for a in rest):
                rest = ["-n", str(min((os.cpu_count() or 1) + 1, 4)), *rest]
            replace_with("pytest", *rest, cwd=ROOT)
        case "bench":
            replace_with("python", "-m", "bench", *rest, cwd=ROOT)
        case "fuzz":
            replace_with("python", "-m", "tests.fuzz", *rest, cwd=ROOT)
        case "docs":
            # Warnings (a broken link or anchor) fail the build. (Material's notice of
            # its successor is not one of ours.)
            os.environ.setdefault("NO_MKDOCS_2_WARNING", "1")
            if rest[:1] == ["--serve"]:
                replace_with("mkdocs", "serve", "--strict", *rest[1:], cwd=ROOT)
            replace_with("mkdocs", "build", "--strict", *rest, cwd=ROOT)
        case "lint":
            if rest in (["-h"], ["--help"]):
                show(LINT_HELP, sys.stdout)
                return 0
            if rest:
                show(f"dev.py lint: takes no arguments, given {' '.join(rest)}", sys.stderr)
                show(LINT_HELP, sys.stderr)
                return 2
            env = environment()
            steps = (
                ["ruff", "check", "."],
                ["ruff", "format", "--check", "."],
                ["mypy", "app", "recordline_dev"],
            )
            for step in steps:
                code = call([str(VENV / "bin" / step[0]), *step[1:]], cwd=ROOT, env=env)
                if code:
                    return code
            return 0
    return 2


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        # Ctrl-C while this script itself works (making .tools/): nothing is half-done
        # that the next run does not redo.
        show("\ndev.py: interrupted; run the command again to go on", sys.stderr)
        sys.exit(130)
