"""Node packages the tests and benchmarks run (the Durable Streams TypeScript client, its
reference server and conformance suite): installed from npm on first use into
.tools/npm/, outside the source tree, at the versions pinned here; never committed.

Without node and npm the tests that need them skip, saying so; CI machines have both.
"""

from __future__ import annotations

import contextlib
import fcntl
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NPM_DIR = ROOT / ".tools" / "npm"
# The versions tested against (the reference server's is the one bench followers
# --peer compares with).
PACKAGES = {
    "@durable-streams/client": "0.2.7",
    "@durable-streams/server": "0.3.7",
    "@durable-streams/server-conformance-tests": "0.3.6",
}
# npm install of one package, its dependencies included, at most.
INSTALL_SECONDS = 300


class NodeMissing(RuntimeError):
    """node or npm is not on PATH."""


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One install at a time, whichever process asks (two test runs side by side)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def installed(name: str) -> Path:
    """The directory whose node_modules holds `name` at its pinned version, installed
    there first if need be; NodeMissing without node or npm."""
    npm, node = shutil.which("npm"), shutil.which("node")
    if npm is None or node is None:
        raise NodeMissing(f"{name} needs node and npm on PATH")
    version = PACKAGES[name]
    where = NPM_DIR / f"{name.replace('/', '+')}@{version}"
    marker = where / "node_modules" / name / "package.json"
    with _locked(NPM_DIR / ".lock"):
        if not marker.exists():
            where.mkdir(parents=True, exist_ok=True)
            (where / "package.json").write_text('{"private": true}\n')
            subprocess.run(
                [
                    npm,
                    "install",
                    "--no-audit",
                    "--no-fund",
                    "--loglevel=error",
                    f"{name}@{version}",
                ],
                cwd=where,
                check=True,
                timeout=INSTALL_SECONDS,
                stdout=subprocess.DEVNULL,
            )
    return where


def npm_package(name: str) -> Path:
    """`installed`, or the test skips saying why."""
    try:
        return installed(name)
    except NodeMissing as exc:
        pytest.skip(str(exc))
