"""The serving tier on this machine: Spanner's emulator and a stand-in for BigQuery.

`recordline dev --serving`, the tests and the benchmarks run the service on
`RECORDLINE_STORE=bigquery://…` with `RECORDLINE_SERVING=spanner://…` through
these pieces:

- Google's Spanner emulator (`bin/cloud_spanner_emulator/emulator_main` in the
  Google Cloud CLI, `gcloud components install cloud-spanner-emulator`, or
  RECORDLINE_SPANNER_EMULATOR), with an instance and a database made from the
  service's own DDL, the statements `recordline schema spanner` prints. It
  keeps everything in memory, and runs one read-write transaction at a time.
- The BigQuery stand-in: the tests' fakes of the Storage Write API and of
  `jobs.query` (`python -m tests.bigquery.fake_storage_write --keep-rows --jobs
  PROJECT/DATASET`), in a process of their own, from the checkout. It keeps rows
  in memory too.

Each runs in a process group of its own, or, given one, in `recordline dev`'s
(which then stops it with the rest).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from recordline_dev.processes import (
    EmulatorNotFound,
    ProcessGroup,
    emulator_in_sdk,
    free_port,
    stop_group,
)
from recordline_dev.sessions import Stack

if TYPE_CHECKING:
    import pyarrow as pa

# Where the Google Cloud CLI keeps the emulator, below its SDK root.
SPANNER_IN_SDK = Path("bin/cloud_spanner_emulator/emulator_main")
# It listens within a second; a cold disk and a busy machine get more.
SPANNER_START_SECONDS = 30.0
SPANNER_STOP_SECONDS = 10.0
# Creating an instance or a database takes a second on the emulator.
SPANNER_ADMIN_SECONDS = 60.0
# The stand-in imports DuckDB, sqlglot and the BigQuery clients first.
STAND_IN_START_SECONDS = 60.0
STAND_IN_STOP_SECONDS = 10.0
# The checkout the stand-in comes from (recordline_dev/ is beside tests/ there).
CHECKOUT = Path(__file__).resolve().parent.parent
STAND_IN_MODULE = "tests.bigquery.fake_storage_write"
_POLL_SECONDS = 0.05


def find_spanner_emulator(environ: Mapping[str, str] | None = None) -> Path:
    """The emulator: RECORDLINE_SPANNER_EMULATOR, else the Google Cloud CLI's.

    Raises EmulatorNotFound with a message that starts "Spanner emulator", so a
    test that skips on it says why in words a reader can act on.
    """
    environ = os.environ if environ is None else environ
    explicit = environ.get("RECORDLINE_SPANNER_EMULATOR", "")
    if explicit:
        path = Path(explicit)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise EmulatorNotFound(
                f"Spanner emulator: RECORDLINE_SPANNER_EMULATOR={explicit} is not an executable"
            )
        return path
    return emulator_in_sdk(
        "Spanner emulator",
        SPANNER_IN_SDK,
        install="`gcloud components install cloud-spanner-emulator`",
        override="RECORDLINE_SPANNER_EMULATOR",
    )


def find_stand_in(checkout: Path = CHECKOUT) -> Path:
    """The checkout the BigQuery stand-in runs from; EmulatorNotFound where it is not one."""
    module = checkout / Path(*STAND_IN_MODULE.split(".")).with_suffix(".py")
    if not module.is_file():
        raise EmulatorNotFound(
            f"BigQuery stand-in: {module} is not here; it comes with a checkout of Recordline"
        )
    return checkout


def wait_for_port(
    port: int, *, what: str, timeout: float, process: subprocess.Popen[bytes]
) -> None:
    """Return once something listens on 127.0.0.1:`port`; RuntimeError if `process` exits
    first or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the {what} exited with status {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the {what} did not listen on 127.0.0.1:{port} in {timeout:g} s")
        time.sleep(_POLL_SECONDS)


def _start(
    name: str,
    argv: Sequence[str],
    *,
    log: Path,
    group: ProcessGroup | None,
    stop_seconds: float,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    # Output to a file: into a pipe nobody drains, a chatty child would block.
    with log.open("ab") as out:
        if group is not None:
            return group.start(
                name, argv, stop_seconds=stop_seconds, stdout=out, stderr=subprocess.STDOUT, cwd=cwd
            )
        return subprocess.Popen(  # noqa: S603 - our own argv, no shell
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,
        )


def _tail(log: Path, lines: int = 20) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    return ""


class SpannerEmulator:
    """One Spanner emulator on a loopback port; a context manager that stops it.

    In a process group of its own, or, given `group`, in that one (which then
    stops it: `recordline dev`).
    """

    def __init__(
        self,
        binary: Path,
        *,
        log_path: Path,
        port: int = 0,
        group: ProcessGroup | None = None,
    ) -> None:
        self.port = port or free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.log_path = log_path
        self._grouped = group is not None
        self.process = _start(
            "Spanner emulator",
            [str(binary), "--host_port", self.host],
            log=log_path,
            group=group,
            stop_seconds=SPANNER_STOP_SECONDS,
        )
        try:
            wait_for_port(
                self.port,
                what="Spanner emulator",
                timeout=SPANNER_START_SECONDS,
                process=self.process,
            )
        except RuntimeError as exc:
            self.stop()
            raise RuntimeError(f"{exc}\n{_tail(log_path)}") from None

    def client(self, project: str) -> Any:
        """A Spanner client of `project` on this emulator (anonymous, as it wants)."""
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import spanner

        return spanner.Client(
            project=project,
            credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
            client_options={"api_endpoint": self.host},
            disable_builtin_metrics=True,
        )

    def create_instance(self, client: Any, instance: str) -> Any:
        """Instance `instance` (two characters or more) of the client's project."""
        config = f"projects/{client.project}/instanceConfigs/emulator-config"
        made = client.instance(instance, configuration_name=config, node_count=1)
        made.create().result(SPANNER_ADMIN_SECONDS)
        return made

    def create_database(self, instance: Any, name: str, statements: Sequence[str]) -> str:
        """Database `name` made with `statements`: its RECORDLINE_SERVING URL."""
        database = instance.database(name, ddl_statements=list(statements))
        database.create().result(SPANNER_ADMIN_SECONDS)
        return f"spanner://{database.name}"

    def stop(self) -> None:
        if not self._grouped:
            stop_group(self.process, timeout=SPANNER_STOP_SECONDS)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


def service_database(
    emulator: SpannerEmulator, *, project: str, instance: str, database: str, window: float
) -> str:
    """The service's database on `emulator`, from its own DDL (`recordline schema spanner`
    for a dedupe window of `window` seconds): its RECORDLINE_SERVING URL."""
    from app.store.spanner.schema import ddl

    client = emulator.client(project)
    try:
        made = emulator.create_instance(client, instance)
        return emulator.create_database(made, database, ddl(window))
    finally:
        client.close()


class BigQueryStandIn:
    """The BigQuery fakes (Storage Write and jobs.query) in a process of their own.

    `settings` are what the service needs to use them as its BigQuery store.
    `extra` passes options to the fakes (`--latency-ms`, `--refuse-every`, …);
    `write_port` and `jobs_port` are their ports (0: any free one).
    """

    def __init__(
        self,
        project: str,
        dataset: str,
        *,
        log_path: Path,
        extra: Sequence[str] = (),
        group: ProcessGroup | None = None,
        checkout: Path = CHECKOUT,
        write_port: int = 0,
        jobs_port: int = 0,
    ) -> None:
        self.project, self.dataset = project, dataset
        self.log_path = log_path
        self._grouped = group is not None
        argv = [sys.executable, "-m", STAND_IN_MODULE, "--keep-rows", "--port", str(write_port)]
        argv += ["--jobs", f"{project}/{dataset}", "--jobs-port", str(jobs_port), *extra]
        self.process = _start(
            "BigQuery stand-in",
            argv,
            log=log_path,
            group=group,
            stop_seconds=STAND_IN_STOP_SECONDS,
            cwd=find_stand_in(checkout),
        )
        try:
            self.write, self.jobs = self._addresses()
        except RuntimeError as exc:
            self.stop()
            raise RuntimeError(f"{exc}\n{_tail(log_path)}") from None

    def _addresses(self) -> tuple[str, str]:
        """What the fakes print once they listen: `listening on HOST:PORT`, `jobs URL`."""
        deadline = time.monotonic() + STAND_IN_START_SECONDS
        while True:
            lines = self.log_path.read_text(errors="replace").splitlines()
            write = [
                x.removeprefix("listening on ") for x in lines if x.startswith("listening on ")
            ]
            jobs = [x.removeprefix("jobs ") for x in lines if x.startswith("jobs http")]
            if write and jobs:
                return write[0].strip(), jobs[0].strip()
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"the BigQuery stand-in exited with status {self.process.returncode}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the BigQuery stand-in did not listen in {STAND_IN_START_SECONDS:g} s"
                )
            time.sleep(_POLL_SECONDS)

    @property
    def url(self) -> str:
        return f"bigquery://{self.project}/{self.dataset}"

    @property
    def settings(self) -> dict[str, str]:
        return {
            "RECORDLINE_STORE": self.url,
            "RECORDLINE_BIGQUERY_WRITE_ENDPOINT": self.write,
            "BIGQUERY_EMULATOR_HOST": self.jobs,
        }

    def stop(self) -> None:
        if not self._grouped:
            stop_group(self.process, timeout=STAND_IN_STOP_SECONDS)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


# How long a query of the stand-in may take: it loads the rows it holds into DuckDB
# once they changed, a second or two for a session's hundred thousand.
QUERY_SECONDS = 60.0


class StandInError(RuntimeError):
    """The stand-in refused or failed a query; the message is its own, in one line."""


def query_stand_in(stack: Stack, sql: str) -> pa.Table:
    """`sql` run by the BigQuery stand-in of the running `stack` (`recordline dev
    --serving`), as BigQuery runs it: the session's project the job's, its dataset
    the default, so `records`, `recordline.records` and the full name all resolve."""
    from google.api_core.exceptions import GoogleAPICallError
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import bigquery

    client = bigquery.Client(
        project=stack.project,
        credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
        client_options={"api_endpoint": stack.bigquery_jobs},
    )
    config = bigquery.QueryJobConfig(default_dataset=f"{stack.project}.{stack.dataset}")
    try:
        rows = client.query_and_wait(sql, job_config=config, wait_timeout=QUERY_SECONDS)
        return rows.to_arrow(create_bqstorage_client=False)
    except GoogleAPICallError as exc:
        # BigQuery's own words are in the error's `errors`; its message starts with the
        # request's method and URL.
        said = next((e.get("message") for e in exc.errors if isinstance(e, dict)), None)
        raise StandInError(str(said or exc.message).splitlines()[0]) from None
    except OSError as exc:  # the stand-in went away meanwhile
        raise StandInError(f"the BigQuery stand-in at {stack.bigquery_jobs}: {exc}") from None
    finally:
        client.close()  # type: ignore[no-untyped-call]
