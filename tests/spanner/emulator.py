"""Google's Spanner emulator, started for the tests that need a real Spanner.

It ships with the Google Cloud CLI (`bin/cloud_spanner_emulator/emulator_main`
under the SDK root), or set RECORDLINE_SPANNER_EMULATOR to the binary. One
emulator serves a test session; each test gets a database of its own, made
with exactly the statements `recordline schema spanner` prints. The emulator
keeps everything in memory and aborts a read-write transaction that races
another, which exercises the retry path the real Spanner needs too.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from google.auth.credentials import AnonymousCredentials
from google.cloud import spanner

from app.settings import QuerySettings
from app.store.spanner.schema import ddl
from recordline_dev.devstack import emulator_in_sdk, free_port

PROJECT = "recordline-test"
INSTANCE = "serving"
EMULATOR_IN_SDK = Path("bin/cloud_spanner_emulator/emulator_main")


def find_emulator() -> Path:
    """The emulator binary; raises EmulatorNotFound with a message starting "Spanner emulator"."""
    explicit = os.environ.get("RECORDLINE_SPANNER_EMULATOR", "")
    if explicit:
        return Path(explicit)
    return emulator_in_sdk(
        "Spanner emulator",
        EMULATOR_IN_SDK,
        install="`gcloud components install cloud-spanner-emulator`",
        override="RECORDLINE_SPANNER_EMULATOR",
    )


class SpannerEmulator:
    """One emulator process on a loopback port, with one instance made in it."""

    def __init__(self, binary: Path, log: Path) -> None:
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self._log = log.open("wb")
        self.process = subprocess.Popen(
            [str(binary), "--host_port", self.host],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._names = itertools.count()
        self.client = self._wait_for_client()
        config = f"projects/{PROJECT}/instanceConfigs/emulator-config"
        instance = self.client.instance(INSTANCE, configuration_name=config, node_count=1)
        instance.create().result(60)
        self.instance = instance

    def _wait_for_client(self) -> spanner.Client:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the Spanner emulator exited ({self.process.returncode})")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2),
            ):
                return spanner.Client(
                    project=PROJECT,
                    credentials=AnonymousCredentials(),
                    client_options={"api_endpoint": self.host},
                    disable_builtin_metrics=True,
                )
            time.sleep(0.05)
        raise RuntimeError("the Spanner emulator did not listen within 30 s")

    def database(self, statements: list[str] | None = None) -> str:
        """A new database with `statements` (the service's schema by default): its URL."""
        name = f"db{next(self._names)}"
        window = QuerySettings().dedupe_window_seconds
        database = self.instance.database(
            name, ddl_statements=ddl(window) if statements is None else statements
        )
        database.create().result(60)
        return f"spanner://projects/{PROJECT}/instances/{INSTANCE}/databases/{name}"

    def pause(self) -> None:
        """Stop answering (as an unreachable Spanner), keeping every row."""
        os.killpg(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.killpg(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGCONT)
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        self.client.close()
        self._log.close()
