"""Every command the README and docs/ give runs through `python3 dev.py` and
`recordline` alike, with `--help`, and no documented command line ends silently.

The commands are read from the docs themselves (each `python3 dev.py …`,
`recordline …` and `.venv/bin/recordline …` of their `sh` blocks and inline code),
so a command documented tomorrow is covered without a change here:

- its `--help`, through both entry points where `recordline` has the command,
  exits 0 and says how to use it;
- each documented command line of an `sh` block is run as written, in a checkout
  with nothing else on the machine: no service, no emulator, no Google
  credentials, its ports free (`:8080` and `:8085` become free ports). It either
  does its work (exit 0) or says why not, without a traceback; one still running
  once it has said something is sent a Ctrl-C, and must stop saying what it did.
  What the commands do with a service and the emulators is the tour's
  (tests/e2e/test_tour.py).
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from recordline_dev.processes import free_port
from tests.processes import RECORDLINE, ROOT, STOP_SECONDS, Terminal
from tests.test_commands import without_google_credentials
from tests.test_docs_examples import shell_commands
from tests.waiting import until_blocking

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# A documented command line: settings first, then the command and its words.
INVOCATION = re.compile(
    r"(?:^|\s)(?:[A-Z_]+=\S+\s+)*(python3 dev\.py|\.venv/bin/recordline|recordline)(?=\s|$)"
    r"((?:\s+[^\s`|;&)]+)*)"
)
# This suite itself, run by the command it documents.
NOT_RUN_HERE = {"python3 dev.py test"}
# How long a command may take to say its first word, and, once it has, to end on its own.
FIRST_WORD_SECONDS = 60
SETTLE_SECONDS = 2
AT_ONCE = 6


def documented_lines() -> list[tuple[str, str]]:
    """(page, command line) for the first line of an `sh` block that runs each command
    of ours (its first word, and its second unless an option: `replay dead-letters`)."""
    found: dict[tuple[str, ...], tuple[str, str]] = {}
    for path in DOCS:
        for line in shell_commands(path.read_text()):
            if (match := INVOCATION.match(line)) and line not in NOT_RUN_HERE:
                words = match[2].split()[:2]
                command = [w for n, w in enumerate(words) if n == 0 or not w.startswith("-")]
                found.setdefault((match[1], *command), (path.name, line))
    return list(found.values())


def inline_code(text: str) -> Iterator[str]:
    """Each inline code span outside the code blocks."""
    prose = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    yield from re.findall(r"`([^`\n]+)`", prose)


def invocations() -> set[tuple[str, tuple[str, ...]]]:
    """(entry point, its words) of every command the docs name, in code blocks and inline."""
    found = set()
    for path in DOCS:
        text = path.read_text()
        for snippet in [*shell_commands(text), *inline_code(text)]:
            for match in INVOCATION.finditer(snippet):
                entry = "dev.py" if match[1] == "python3 dev.py" else "recordline"
                found.add((entry, tuple(match[2].split())))
    return found


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv), cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )


def choices(usage: str, prog: str) -> set[str]:
    """The subcommands a usage line offers after `prog` (`{rejected,dead-letters}`)."""
    found = re.search(re.escape(prog) + r"[^{]*?\{([^}]+)\}", " ".join(usage.split()))
    return set(found[1].split(",")) if found else set()


class Helps:
    """Each `ENTRY PATH --help` run once, many at a time."""

    def __init__(self) -> None:
        self.answers: dict[tuple[str, tuple[str, ...]], subprocess.CompletedProcess[str]] = {}

    def ask(self, asked: Iterable[tuple[str, tuple[str, ...]]]) -> None:
        new = sorted(set(asked) - self.answers.keys())
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            done = pool.map(lambda a: run(*_argv(*a), "--help"), new)
            self.answers.update(zip(new, done, strict=True))

    def usage(self, entry: str, path: tuple[str, ...]) -> str:
        self.ask([(entry, path)])
        return self.answers[(entry, path)].stdout


def command_path(entry: str, words: tuple[str, ...], helps: Helps) -> tuple[str, ...]:
    """The words of `words` that name a command and its subcommands, as its usage
    lines say: `replay dead-letters --url …` names ("replay", "dead-letters")."""
    path: tuple[str, ...] = ()
    if not words or not re.fullmatch(r"[a-z][a-z-]*", words[0]):
        return path  # the entry point alone, or a placeholder (`COMMAND --help`)
    path = (words[0],)
    for word in words[1:]:
        if word.startswith("-") or word not in choices(helps.usage(entry, path), " ".join(path)):
            break
        path += (word,)
    return path


def _argv(entry: str, path: tuple[str, ...]) -> list[str]:
    if entry == "dev.py":
        return [sys.executable, str(ROOT / "dev.py"), *path]
    return [RECORDLINE, *path]


def recordline_commands() -> set[str]:
    return choices(run(RECORDLINE, "--help").stdout, "recordline")


@pytest.mark.slow
def test_every_documented_command_has_help_through_dev_py_and_recordline_alike() -> None:
    # `python3 dev.py audit --help` printed nothing and exited 2: dev.py listed the
    # command, and its dispatch left it out.
    ours = recordline_commands()
    named = invocations()
    helps = Helps()
    # Every command's own usage first, all at once: it says which words are subcommands.
    helps.ask(
        (entry, words[:1])
        for entry, words in named
        if re.fullmatch(r"[a-z][a-z-]*", words[0] if words else "")
    )
    paths = {command_path(entry, words, helps) for entry, words in named}
    paths.discard(())
    assert {("audit",), ("sql",), ("replay", "dead-letters"), ("lint",)} <= paths, paths
    asked = [("dev.py", path) for path in paths]
    asked += [("recordline", path) for path in paths if path[0] in ours]
    helps.ask(asked)
    for entry, path in sorted(asked):
        done = helps.answers[(entry, path)]
        command = f"{entry} {' '.join(path)} --help"
        assert done.returncode == 0, (command, done.stdout[-500:], done.stderr[-500:])
        assert "usage" in done.stdout.lower(), (command, done.stdout[-500:])
        assert "Traceback" not in done.stderr, (command, done.stderr)
    # Every command of `recordline` runs through dev.py too.
    import dev

    assert ours <= set(dev.COMMANDS)


def checkout(tmp_path: Path) -> Path:
    """A checkout to run the documented lines in: dev.py and what it reads copied (so
    that what `serve` writes lands here), the code and its environment linked, and
    copies of what a command may write (the systems' schemas)."""
    where = tmp_path / "checkout"
    where.mkdir()
    for name in ("dev.py", "uv.lock", "pyproject.toml"):
        shutil.copy(ROOT / name, where / name)
    for name in (".venv", ".tools", "app", "recordline_dev", "tests", "bench", "infra"):
        if (ROOT / name).exists():
            (where / name).symlink_to(ROOT / name)
    shutil.copytree(ROOT / "schemas", where / "schemas")
    return where


@pytest.mark.slow
def test_every_documented_command_line_does_its_work_or_says_why(
    tmp_path: Path, terminals: list[Terminal]
) -> None:
    lines = documented_lines()
    assert ("README.md", "python3 dev.py dev") in lines
    where = checkout(tmp_path)
    nothing = tmp_path / "no-emulator"
    env = {
        **without_google_credentials(tmp_path, f"127.0.0.1:{free_port()}"),
        # `recordline` as the docs write it, with the environment activated.
        "PATH": f"{where / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "PORT": str(free_port()),
        "RECORDLINE_PUBSUB_EMULATOR": str(nothing),
        "RECORDLINE_SPANNER_EMULATOR": str(nothing),
        # What the operations guide's blocks set before their commands.
        "URL": f"http://127.0.0.1:{free_port()}",
        "TOKEN": "token",
        "PROJECT": "recordline-prod",
        "SYSTEM": "recordline",
        "INSTANCE": "recordline-serving",
        "REGION": "europe-west1",
        "T": "2026-11-24T09:00:00Z",
        "ME": "operator@example.com",
    }
    service, emulator = free_port(), free_port()
    problems: list[str] = []
    # A few at a time: each is a process tree of its own, on two cores.
    for first in range(0, len(lines), AT_ONCE):
        batch = []
        for page, line in lines[first : first + AT_ONCE]:
            here = line.replace(":8080", f":{service}").replace(":8085", f":{emulator}")
            terminal = Terminal(["bash", "-c", here], env=env, cwd=where)
            terminals.append(terminal)
            batch.append((f"{page}: {line}", terminal))
        for said, terminal in batch:
            problem = outcome(terminal)
            if problem is not None:
                problems.append(f"{said}\n  {problem}\n{terminal.output[-1500:]}")
            terminal.kill_everything()
    assert not problems, "\n\n".join(problems)


def outcome(terminal: Terminal) -> str | None:
    """What is wrong with how a command ran, or None: it said something within
    FIRST_WORD_SECONDS and either ended with exit 0 or with words saying why, or was
    still running and stopped on a Ctrl-C, saying what it did."""
    try:
        until_blocking(
            lambda: terminal.output.strip() or terminal.process.poll() is not None,
            timeout=FIRST_WORD_SECONDS,
            interval=0.1,
        )
    except AssertionError:
        return f"said nothing in {FIRST_WORD_SECONDS} s"
    try:
        status = terminal.wait(SETTLE_SECONDS)
    except subprocess.TimeoutExpired:
        before = len(terminal.output)
        terminal.ctrl_c()
        try:
            status = terminal.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            return f"still running {STOP_SECONDS} s after a Ctrl-C"
        if not terminal.output[before:].replace("^C", "").strip():
            return f"stopped by a Ctrl-C (exit {status}) without a word"
    if "Traceback" in terminal.output:
        return "a traceback"
    if status != 0 and not terminal.output.strip():
        return f"exit {status}, and nothing said"
    return None


@pytest.mark.parametrize("argv", [["lint", "--help"], ["lint", "-h"]])
def test_dev_py_lint_help_says_what_it_runs_and_runs_nothing(argv: list[str]) -> None:
    # It ran ruff and mypy, and their output was its answer.
    done = run(sys.executable, "dev.py", *argv)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: python3 dev.py lint")
    assert "mypy" in done.stdout
    assert "Success" not in done.stdout + done.stderr  # mypy's
    assert "All checks passed" not in done.stdout + done.stderr  # ruff's
