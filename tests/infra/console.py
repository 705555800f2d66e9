"""`terraform console` on a scratch configuration: how the infra tests evaluate HCL.

No provider is needed, so expressions over variables and plain locals are
evaluated exactly as a plan would, offline.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest


def require_terraform() -> None:
    if shutil.which("terraform") is None:
        pytest.skip("terraform is not installed")


def console_run(
    work: Path | str, expression: str, *, var_file: str | None = None
) -> subprocess.CompletedProcess[str]:
    """`jsonencode(expression)` in the configuration at `work`, as it ran."""
    return subprocess.run(
        ["terraform", "console", *([f"-var-file={var_file}"] if var_file else [])],
        input=f"jsonencode({expression})\n",
        cwd=work,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def decoded(run: subprocess.CompletedProcess[str]) -> Any:
    """The value a successful `console_run` printed."""
    assert run.returncode == 0, run.stderr
    return json.loads(json.loads(run.stdout.strip().splitlines()[-1]))


def console(work: Path | str, expression: str, *, var_file: str | None = None) -> Any:
    """`expression`'s value in the configuration at `work`."""
    return decoded(console_run(work, expression, var_file=var_file))
