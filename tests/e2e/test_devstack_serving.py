"""`recordline dev --serving`: the serving tier in one command, as a user runs it.

Google's Pub/Sub emulator pushes to the service, which stores on the BigQuery
stand-in with Spanner's emulator serving reads: every record published reads
back, and is in both Spanner and BigQuery; one published in the example Avro
schema's encoding has typed columns there too. A stop at any moment of start-up,
the database's making included, leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from google.api_core.exceptions import BadRequest
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery, spanner

from recordline_dev.client import DEV_PROJECT
from recordline_dev.devstack import (
    DEV_DATABASE,
    DEV_DATASET,
    DEV_INSTANCE,
    EXAMPLE_SCHEMAS,
    find_emulator,
)
from recordline_dev.processes import EmulatorNotFound, port_is_free
from recordline_dev.serving import find_spanner_emulator
from tests.processes import (
    BANNER,
    RECORDLINE,
    START_SECONDS,
    Terminal,
    assert_nothing_left,
    dev_terminal,
    free_port,
    stop,
)
from tests.waiting import until_blocking

pytestmark = pytest.mark.emulator

SEED = int(os.environ.get("RECORDLINE_SEED", time.time_ns() % 1_000_000))


@pytest.fixture
def emulators() -> None:
    try:
        find_emulator()
        find_spanner_emulator()
    except EmulatorNotFound as exc:
        pytest.skip(str(exc))  # "Pub/Sub emulator" or "Spanner emulator": CI fails it


def two_free_ports() -> int:
    """A free port whose next one is free too (the BigQuery stand-in's two)."""
    while not port_is_free((port := free_port()) + 1):
        continue
    return port


def serving_terminal(
    tmp_path: Path, terminals: list[Terminal], *more: str
) -> tuple[Terminal, int, int, int]:
    spanner_port = free_port()
    terminal, port, emulator_port = dev_terminal(
        tmp_path, "--serving", "--spanner-port", str(spanner_port), *more
    )
    terminals.append(terminal)
    return terminal, port, emulator_port, spanner_port


def served_ids(url: str) -> set[str]:
    page = httpx.get(f"{url}/v1/records", params={"since": "2000-01-01T00:00:00Z"}).json()
    return {r["id"] for r in page["records"]}


def in_spanner(host: str) -> set[str]:
    client = spanner.Client(
        project=DEV_PROJECT,
        credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
        client_options={"api_endpoint": host},
        disable_builtin_metrics=True,
    )
    try:
        database = client.instance(DEV_INSTANCE).database(DEV_DATABASE)
        with database.snapshot() as snapshot:
            return {row[0] for row in snapshot.execute_sql("SELECT id FROM records")}
    finally:
        client.close()


def typed_in_bigquery(jobs: str) -> list[tuple[int, int]]:
    """Each typed record's `fields.data.n` and how many projection errors it has."""
    client = bigquery.Client(
        project=DEV_PROJECT,
        credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
        client_options={"api_endpoint": jobs},
    )
    try:
        rows = client.query_and_wait(
            "SELECT fields.data.n, ARRAY_LENGTH(projection_errors) "
            f"FROM `{DEV_PROJECT}.{DEV_DATASET}.records` WHERE fields IS NOT NULL"
        )
    except BadRequest:  # no `fields` column until the first typed record is exported
        return []
    return [(row[0], row[1]) for row in rows]


def in_bigquery(jobs: str) -> set[str]:
    client = bigquery.Client(
        project=DEV_PROJECT,
        credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
        client_options={"api_endpoint": jobs},
    )
    rows = client.query_and_wait(f"SELECT id FROM `{DEV_PROJECT}.{DEV_DATASET}.records`")
    return {row["id"] for row in rows}


@pytest.mark.usefixtures("emulators")
def test_dev_serving_runs_the_serving_tier_in_one_command(
    tmp_path: Path, terminals: list[Terminal]
) -> None:
    bigquery_port = two_free_ports()
    terminal, port, emulator_port, spanner_port = serving_terminal(
        tmp_path, terminals, "--bigquery-port", str(bigquery_port)
    )
    assert terminal.wait_for(BANNER, timeout=START_SECONDS), terminal.output
    banner = terminal.output
    database = f"projects/{DEV_PROJECT}/instances/{DEV_INSTANCE}/databases/{DEV_DATABASE}"
    assert f"serving    spanner://{database}" in banner
    assert f"store      bigquery://{DEV_PROJECT}/{DEV_DATASET}" in banner
    assert f"Spanner's emulator at 127.0.0.1:{spanner_port}" in banner
    jobs = re.search(r"jobs\.query at (http://\S+)", banner)
    assert jobs is not None, banner
    # On the ports asked for: Storage Write on the one given, jobs.query the next.
    assert jobs[1] == f"http://127.0.0.1:{bigquery_port + 1}", banner
    assert f"127.0.0.1:{bigquery_port}" in banner

    want = {f"serving-{n}" for n in range(3)}
    lines = tmp_path / "records.jsonl"
    lines.write_text("".join(json.dumps({"id": i, "data": i}) + "\n" for i in sorted(want)))
    published = subprocess.run(
        [RECORDLINE, "publish", "--topic", "records", "--file", str(lines)],
        env={**os.environ, "PUBSUB_EMULATOR_HOST": f"127.0.0.1:{emulator_port}"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert published.returncode == 0, published.stderr
    url = f"http://127.0.0.1:{port}"
    until_blocking(
        lambda: want <= served_ids(url),
        timeout=60,
        interval=0.2,
        what=lambda: f"{want} to be served\n{terminal.output[-3000:]}",
    )
    assert served_ids(url) == want
    # Stored in Spanner, which serves the reads, and exported from it to BigQuery
    # within seconds.
    assert in_spanner(f"127.0.0.1:{spanner_port}") == want
    until_blocking(lambda: in_bigquery(jobs[1]) == want, timeout=60, what="the export to BigQuery")

    # Published in the example Avro schema's encoding (the emulator keeps it as the
    # topic's schema): Spanner keeps JSON, and the export projects each record onto
    # typed columns, read back by an analyst's query.
    published = subprocess.run(
        [RECORDLINE, "publish", "--topic", "records", "--count", "5",
         "--schema", str(EXAMPLE_SCHEMAS / "record.avsc"), "--encoding", "BINARY"],
        env={**os.environ, "PUBSUB_EMULATOR_HOST": f"127.0.0.1:{emulator_port}"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )  # fmt: skip
    assert published.returncode == 0, published.stderr
    until_blocking(
        lambda: len(typed_in_bigquery(jobs[1])) == 5,
        timeout=60,
        what=lambda: f"5 typed records in BigQuery\n{terminal.output[-3000:]}",
    )
    typed = typed_in_bigquery(jobs[1])
    assert sorted(n for n, _ in typed) == [0, 1, 2, 3, 4]
    assert {errors for _, errors in typed} == {0}
    assert len(in_bigquery(jobs[1])) == len(want) + 5  # each once

    stop(terminal, "ctrl-c")
    assert_nothing_left(terminal, "ctrl-c", "once the serving tier ran")
    # Each part's log is kept in the session's directory.
    (session,) = (tmp_path / "sessions").iterdir()
    assert {"emulator.log", "spanner.log", "bigquery.log"} <= {p.name for p in session.iterdir()}


@pytest.mark.usefixtures("emulators")
@pytest.mark.parametrize(
    ("after", "within"),
    [
        ("starting Spanner's emulator", 1.0),
        ("creating its instance and database", 1.5),
        ("starting the BigQuery stand-in", 2.0),
    ],
)
def test_a_stop_while_the_serving_tier_starts_leaves_no_process(
    tmp_path: Path, terminals: list[Terminal], after: str, within: float
) -> None:
    terminal, _port, _emulator_port, _spanner_port = serving_terminal(tmp_path, terminals)
    assert terminal.wait_for(after, timeout=START_SECONDS), terminal.output
    delay = random.Random(f"{SEED}-{after}").uniform(0, within)
    time.sleep(delay)  # the moment of the stop is what is tested: a random one
    how = random.Random(f"{SEED}-{after}-how").choice(["ctrl-c", "terminal closes", "SIGTERM"])
    stop(terminal, how)
    assert_nothing_left(terminal, how, f"{delay:.2f} s after {after!r}, seed {SEED}")
