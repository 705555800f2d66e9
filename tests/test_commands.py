"""The commands a new user types, as the README gives them, run as processes."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import msgspec
import pytest

from app.asgi import create_app
from app.commands.tail import FollowError, follow
from app.settings import Settings
from app.store.duckdb.store import DuckDBStore
from recordline_dev.devstack import DevStack, instructions
from tests.bigquery.fake_jobs import FakeBigQueryJobs
from tests.conftest import envelope, served, settings
from tests.processes import (
    RECORDLINE,
    ROOT,
    STOP_SECONDS,
    Terminal,
    assert_nothing_left,
    free_port,
    wait_ready,
)
from tests.waiting import until_blocking


def run(
    *argv: str, cwd: Path = ROOT, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


# -- dev.py -----------------------------------------------------------------------


def test_dev_py_help_lists_every_command_and_exits_0() -> None:
    done = run(sys.executable, "dev.py", "--help")
    assert done.returncode == 0, done.stderr
    for command in ("serve", "dev", "publish", "tail", "replay", "test", "lint", "bench"):
        assert f"python3 dev.py {command}" in done.stdout
    unknown = run(sys.executable, "dev.py", "nonsense")
    assert unknown.returncode == 2
    assert "no command 'nonsense'" in unknown.stderr
    assert "did you mean" not in unknown.stderr
    misspelt = run(sys.executable, "dev.py", "serv")
    assert misspelt.returncode == 2
    assert "no command 'serv': did you mean 'serve'?" in misspelt.stderr


def to_a_reader_that_left(*argv: str) -> subprocess.CompletedProcess[str]:
    """`argv | head -1` where head has gone before a byte is written: every write fails."""
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run(
            list(argv), cwd=ROOT, stdout=write, stderr=subprocess.PIPE, text=True, timeout=120
        )
    finally:
        os.close(write)


@pytest.mark.slow
@pytest.mark.parametrize(
    "argv",
    [
        (sys.executable, "dev.py", "--help"),
        (RECORDLINE, "--help"),
        (RECORDLINE, "schema"),
        (RECORDLINE, "config", "--reference"),
    ],
    ids=["dev.py --help", "recordline --help", "schema", "config --reference"],
)
def test_output_to_a_reader_that_left_is_no_error(argv: tuple[str, ...]) -> None:
    done = to_a_reader_that_left(*argv)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""


def test_dev_py_bench_help_lists_the_benchmarks_and_exits_0() -> None:
    done = run(sys.executable, "dev.py", "bench", "--help")
    assert done.returncode == 0, done.stderr
    assert "NAME: ingest | query" in done.stdout
    unknown = run(sys.executable, "dev.py", "bench", "nonsense")
    assert unknown.returncode == 2
    assert "no benchmark 'nonsense'" in unknown.stderr


@pytest.mark.slow
def test_dev_py_runs_the_service_commands_the_readme_shows(tmp_path: Path) -> None:
    config = run(sys.executable, str(ROOT / "dev.py"), "config", cwd=tmp_path)
    assert config.returncode == 0, config.stderr
    store = r"^RECORDLINE_STORE +'duckdb:recordline.duckdb' +default$"
    assert re.search(store, config.stdout, re.M)
    reference = run(sys.executable, str(ROOT / "dev.py"), "config", "--reference", cwd=tmp_path)
    assert reference.returncode == 0, reference.stderr
    assert reference.stdout.startswith("| Variable | Default | Meaning |")
    spanner = run(sys.executable, str(ROOT / "dev.py"), "schema", "spanner", cwd=tmp_path)
    assert spanner.returncode == 0, spanner.stderr
    assert spanner.stdout.startswith("CREATE TABLE records (")
    bigquery = run(sys.executable, str(ROOT / "dev.py"), "schema", cwd=tmp_path)
    assert bigquery.returncode == 0, bigquery.stderr
    assert bigquery.stdout.startswith("# records.json")


@pytest.mark.slow
def test_dev_py_runs_the_dev_tools_where_the_user_is(tmp_path: Path) -> None:
    # As the README writes it, from any directory: tail gives up on a service
    # that is not there, and says what it waited for.
    url = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    done = run(
        sys.executable, str(ROOT / "dev.py"), "tail", "--url", url, "--wait", "1", cwd=tmp_path
    )
    assert done.returncode == 1, done.stderr
    assert f"recordline tail: waiting for {url}: connection refused" in done.stderr
    assert f"{url} has not answered for 1 s" in done.stderr
    assert "is the service running there?" in done.stderr
    assert time.monotonic() - started < 60


def checkout_copy(tmp_path: Path) -> tuple[Path, dict[str, str], Path]:
    """dev.py in a checkout of its own: the lock it reads, a .venv whose `recordline`
    says it ran, and a `uv` first on PATH that notes each call (and does nothing)."""
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    for name in ("dev.py", "uv.lock", "pyproject.toml"):
        shutil.copy(ROOT / name, checkout / name)
    (checkout / ".venv" / "lib" / "python3.11" / "site-packages").mkdir(parents=True)
    recordline = checkout / ".venv" / "bin" / "recordline"
    recordline.parent.mkdir()
    recordline.write_text('#!/bin/sh\necho ran "$@"\n')
    calls = tmp_path / "uv-calls"
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "uv").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    for script in (recordline, tools / "uv"):
        script.chmod(0o755)
    env = {**os.environ, "PATH": f"{tools}{os.pathsep}{os.environ['PATH']}"}
    return checkout, env, calls


def test_dev_py_syncs_only_when_the_lock_or_the_environment_changed(tmp_path: Path) -> None:
    # Every command ran `uv sync` first: ~0.4 s of the ~0.65 s dev.py added to each.
    checkout, env, calls = checkout_copy(tmp_path)

    def syncs() -> int:
        done = run(sys.executable, str(checkout / "dev.py"), "config", "--reference", env=env)
        assert done.returncode == 0, done.stderr
        assert done.stdout == "ran config --reference\n"
        return len(calls.read_text().splitlines()) if calls.exists() else 0

    assert syncs() == 1  # never synced
    assert syncs() == 1  # nothing changed: the command at once
    with (checkout / "uv.lock").open("a") as lock:
        lock.write("\n")
    assert syncs() == 2  # the lock changed
    assert syncs() == 2
    (checkout / ".venv" / "lib" / "python3.11" / "site-packages" / "extra").mkdir()
    assert syncs() == 3  # a package added (or removed) by hand
    assert syncs() == 3


def test_dev_py_names_itself_to_the_recordline_commands_only(tmp_path: Path) -> None:
    # The suite run by `dev.py test` inherited it, and every `recordline` it ran then
    # said "python3 dev.py …" where it had been typed as `recordline`.
    checkout, env, _ = checkout_copy(tmp_path)
    for program in ("recordline", "pytest"):
        script = checkout / ".venv" / "bin" / program
        script.write_text(f'#!/bin/sh\necho "{program} [$RECORDLINE_DEV_COMMAND]"\n')
        script.chmod(0o755)
    env = {**env, "RECORDLINE_DEV_COMMAND": "from the shell"}
    config = run(sys.executable, str(checkout / "dev.py"), "config", env=env, cwd=checkout)
    assert config.stdout == "recordline [python3 dev.py]\n", config.stderr
    suite = run(sys.executable, str(checkout / "dev.py"), "test", env=env, cwd=checkout)
    assert suite.stdout == "pytest []\n", suite.stderr


def test_ctrl_c_during_the_first_run_set_up_is_said_in_one_line(
    tmp_path: Path, terminals: list[Terminal]
) -> None:
    # The first run installs uv into .tools/; a Ctrl-C there ended in a KeyboardInterrupt
    # traceback.
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    shutil.copy(ROOT / "dev.py", checkout / "dev.py")
    path = [p for p in os.environ["PATH"].split(os.pathsep) if not (Path(p) / "uv").exists()]
    env = {**os.environ, "PATH": os.pathsep.join(path)}
    terminal = Terminal([sys.executable, "dev.py", "config"], env=env, cwd=checkout)
    terminals.append(terminal)
    assert terminal.wait_for("dev.py: installing uv", timeout=60), terminal.output
    terminal.ctrl_c()
    assert terminal.wait(STOP_SECONDS) == 130, terminal.output
    said = terminal.output.split("into")[1]
    assert "Traceback" not in said, terminal.output
    assert "KeyboardInterrupt" not in said, terminal.output
    assert re.search(r"dev\.py: (interrupted; run the command again|stopped \(SIGINT\))", said)


def test_the_readme_gives_only_commands_dev_py_has() -> None:
    import dev

    readme = (ROOT / "README.md").read_text()
    used = set(re.findall(r"python3 dev\.py ([a-z]+)", readme))
    assert {"serve", "dev", "publish", "tail", "replay", "config", "schema"} <= used
    assert used <= set(dev.COMMANDS)
    # Every `recordline` command the README names runs through dev.py as well.
    commands = set(run(RECORDLINE, "--help").stdout.split("{", 1)[1].split("}", 1)[0].split(","))
    named = set(re.findall(r"recordline ([a-z]+)", readme)) & commands
    assert {"serve", "config", "schema", "dev"} <= named
    assert named <= set(dev.COMMANDS)
    # No dev tool is given as a command to type with a bare `recordline …`, which
    # is not on PATH after set-up: neither a line of a code block nor inline code
    # that sets the environment first.
    tools = r"recordline (?:dev|publish|tail|replay)\b"
    bare = re.findall(rf"^\s*(?:\S+=\S+ )*{tools}.*$", readme, re.M)
    bare += re.findall(rf"`(?:[A-Z_]+=\S+ )+{tools}", readme)
    assert bare == []


def test_the_banner_gives_commands_as_they_run_here() -> None:
    stack = DevStack(
        service_url="http://127.0.0.1:8080",
        store="duckdb:///x/records.duckdb",
        session="/x/.recordline-dev/session-1",
        emulator_host="127.0.0.1:8085",
        command="python3 dev.py",
    )
    text = instructions(stack)
    assert "PUBSUB_EMULATOR_HOST=127.0.0.1:8085 python3 dev.py publish" in text
    assert "python3 dev.py tail --url http://127.0.0.1:8080" in text
    assert " recordline " not in text
    assert "--rate 100" in text
    assert "later and later" not in text
    # How to query the typed columns, on the session's own file.
    assert 'python3 dev.py sql --store duckdb:///x/records.duckdb "SELECT' in text


def test_the_serving_banner_suggests_a_rate_it_keeps_up_with_and_says_why() -> None:
    # Measured by `bench devrate` on 2 cores: --serving kept up with 100 msg/s and fell
    # behind from 150, where the DuckDB stack kept up with 300.
    stack = DevStack(
        service_url="http://127.0.0.1:8080",
        store="bigquery://recordline-dev/recordline",
        emulator_host="127.0.0.1:8085",
        command="python3 dev.py",
        serving="projects/recordline-dev/instances/dev/databases/serving",
    )
    text = instructions(stack)
    assert "--count 1000 --rate 50\n" in text
    assert "past ~100 msg/s on 2 cores records arrive later and later" in text
    assert "python3 dev.py bench devrate" in text


# -- publish and tail give up -----------------------------------------------------


@pytest.mark.slow
def test_tail_gives_up_when_it_says_it_will_on_a_service_that_never_answers() -> None:
    # A service that takes connections and never answers (stopped, wedged): each
    # request used to wait out its own 30 s, so "giving up after 2 s" came a
    # minute late. It stops at the time it named.
    with socket.create_server(("127.0.0.1", 0)) as hung:
        url = f"http://127.0.0.1:{hung.getsockname()[1]}"
        started = time.monotonic()
        done = run(RECORDLINE, "tail", "--url", url, "--wait", "2", timeout=25)
        took = time.monotonic() - started
    assert done.returncode == 1, done.stderr
    assert f"waiting for {url}: no answer in time; giving up after 2 s" in done.stderr
    assert f"{url} has not answered for 2 s" in done.stderr
    assert took < 15, took


async def test_tail_rides_out_an_outage_shorter_than_its_wait() -> None:
    # Three 503s, a refused connection, then the page: waited for, said, and read on.
    answers: list[httpx.Response | Exception] = [httpx.Response(503) for _ in range(3)]
    answers.append(httpx.ConnectError("refused", request=httpx.Request("GET", "http://x")))
    answers.append(httpx.Response(200, json={"records": [{"id": "r1"}], "next_page_token": None}))

    def answer(request: httpx.Request) -> httpx.Response:
        found = answers.pop(0)
        if isinstance(found, Exception):
            raise found
        return found

    said: list[str] = []
    transport = httpx.MockTransport(answer)
    async with httpx.AsyncClient(base_url="http://svc", transport=transport) as http:
        pages = [
            page
            async for page in follow(http, since="1h", idle=0.01, give_up_after=30, say=said.append)
        ]
    assert [[bytes(r) for r in page] for page in pages] == [[b'{"id":"r1"}']]
    assert said == [
        "waiting for http://svc: it answers 503; giving up after 30 s",
        "http://svc answers again",
    ]


@pytest.mark.slow
def test_publish_without_an_emulator_says_what_it_waits_for_and_gives_up() -> None:
    host = f"127.0.0.1:{free_port()}"
    env = {**os.environ, "PUBSUB_EMULATOR_HOST": host}
    started = time.monotonic()
    done = run(RECORDLINE, "publish", "--topic", "records", "--count", "1", "--wait", "1", env=env)
    assert done.returncode == 1, done.stderr
    assert f"waiting for the Pub/Sub emulator at {host} (PUBSUB_EMULATOR_HOST)" in done.stderr
    assert f"no Pub/Sub emulator answers at {host} (PUBSUB_EMULATOR_HOST) after 1 s" in done.stderr
    assert "Traceback" not in done.stderr
    assert time.monotonic() - started < 60


# -- serve ------------------------------------------------------------------------


@pytest.mark.slow
def test_ctrl_c_stops_serve_quietly(tmp_path: Path, terminals: list[Terminal]) -> None:
    # Ctrl-C used to end in a traceback and ~50 lines of "nanobind: leaked"
    # from DuckDB's bindings: objects frozen out of the garbage collector at
    # start-up were still alive when the interpreter exited.
    port = free_port()
    terminal = Terminal(
        [RECORDLINE, "serve", "--port", str(port), "--store", f"duckdb://{tmp_path / 'r.duckdb'}"],
        cwd=tmp_path,
    )
    terminals.append(terminal)
    wait_ready(f"http://127.0.0.1:{port}", terminal)
    terminal.ctrl_c()
    assert_nothing_left(terminal, "ctrl-c", "once ready", statuses=frozenset({130}))
    assert "accepted rows drained, store closed" in terminal.output
    assert "nanobind" not in terminal.output
    assert "Traceback" not in terminal.output


# -- schema --write ---------------------------------------------------------------


@pytest.mark.slow
def test_schema_write_refuses_outside_a_checkout(tmp_path: Path) -> None:
    # As installed from a wheel: app/ alone in site-packages, no repository around it.
    site = tmp_path / "site-packages"
    shutil.copytree(ROOT / "app", site / "app", ignore=shutil.ignore_patterns("__pycache__"))
    # Nor are the dev tools there (see test_the_dev_tools_are_not_part_of_the_service).
    script = (
        f"import sys; sys.path.insert(0, {str(site)!r}); sys.modules['recordline_dev'] = None; "
        "from app.cli import main; sys.exit(main(['schema', '--write']))"
    )
    done = run(sys.executable, "-c", script, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert f"recordline schema --write: {site} is not a checkout of Recordline" in done.stderr
    assert "Traceback" not in done.stderr
    assert sorted(p.name for p in site.iterdir()) == ["app"]  # nothing written
    from app.cli import in_checkout

    assert in_checkout()  # where the tests run, it would write


# -- the image --------------------------------------------------------------------


def runtime_stage() -> list[str]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [
        line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")
    ]
    start = max(i for i, line in enumerate(lines) if line.startswith("FROM "))
    return lines[start:]


def image_environment() -> dict[str, str]:
    """The variables the image's runtime stage sets (its ENV lines)."""
    found: dict[str, str] = {}
    for line in runtime_stage():
        if line.startswith("ENV "):
            for word in shlex.split(line.removeprefix("ENV ")):
                name, _, value = word.partition("=")
                found[name] = value
    return found


def test_the_image_runs_in_a_directory_it_may_write_where_the_default_store_is() -> None:
    # `docker run IMAGE` started in /, where user 10001 may not write, and the
    # default store was relative to it.
    stage = runtime_stage()
    (workdir,) = [line.split()[1] for line in stage if line.startswith("WORKDIR ")]
    (user,) = [line.split()[1] for line in stage if line.startswith("USER ")]
    uid, gid = user.split(":")
    assert workdir.startswith("/")
    assert any(
        f"install --directory --owner {uid} --group {gid}" in line and workdir in line
        for line in stage
        if line.startswith("RUN ")
    ), "the working directory is not made the service user's"
    # The default store is a file relative to it.
    store = Settings.load({}).store.url
    assert store.startswith("duckdb:"), store
    assert not store.startswith("duckdb:///"), store


def test_every_process_of_a_cell_starts_from_the_images_environment() -> None:
    # The image is a cell's service, exporter pool and jobs: a deployment of one's own
    # variable set there (RECORDLINE_STORE was) made each of them refuse to start.
    environment = image_environment()
    assert environment["PORT"] == "8080"
    cell = {
        "RECORDLINE_CELL": "cell-1",
        "RECORDLINE_SYSTEMS": json.dumps({"orders": {"store": "memory:"}}),
    }
    loaded = Settings.load({**environment, **cell})
    assert list(loaded.systems()) == ["orders"]


@pytest.mark.skipif(
    shutil.which("hadolint", path=str(Path(sys.executable).parent)) is None,
    reason="hadolint is not installed",
)
def test_hadolint_passes() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert hadolint is not None
    done = run(hadolint, "Dockerfile")
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    "argv",
    [["tail", "--url", "127.0.0.1:8080"], ["replay", "rejected", "--url", "localhost:8080"]],
)
def test_a_url_without_its_scheme_is_refused_at_once(argv: list[str]) -> None:
    # Without http://, it was retried for 30 s as if the service were down.
    started = time.monotonic()
    done = run(RECORDLINE, *argv)
    assert done.returncode == 2, done.stderr
    assert f"did you mean http://{argv[-1]}?" in done.stderr
    assert time.monotonic() - started < 20


def test_each_run_of_publish_numbers_its_records_under_ids_of_its_own() -> None:
    from recordline_dev.client import generated_records, run_prefix

    first, second = run_prefix(), run_prefix()
    assert first != second  # two runs in the same second too
    ids = [msgspec.json.decode(r)["id"] for r in generated_records(2, prefix=first)]
    # From 0, as the producer sequences the run numbers its messages with.
    assert ids == [f"{first}0", f"{first}1"]


# What no command's --help may import: each costs a start of its own (the Pub/Sub
# client alone ~0.2 s, httpx ~0.2 s with the command-line tools it loads, rich
# ~0.05 s), and together they made every --help take ~1.5 s.
HEAVY = (
    "litestar",
    "duckdb",
    "grpc",
    "google.cloud.pubsub_v1",
    "google.cloud.bigquery",
    "httpx",
    "rich",
)
HELP_PROBE = """
import sys
from app.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
heavy = sorted({m.split(".")[0] if m.split(".")[0] in HEAVY else m for m in sys.modules
                if m in HEAVY or m.startswith(tuple(h + "." for h in HEAVY))})
print(" ".join(heavy), file=sys.stderr)
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    "command",
    [
        [],
        ["serve"],
        ["config"],
        ["schema"],
        ["export"],
        ["typed", "backfill"],
        ["dev"],
        ["publish"],
        ["tail"],
        ["replay"],
        ["sql"],
    ],
)
def test_help_imports_nothing_heavy(command: list[str]) -> None:
    probe = f"HEAVY = {HEAVY!r}\n{HELP_PROBE}"
    done = run(sys.executable, "-c", probe, *command, "--help")
    assert "usage: recordline" in done.stdout
    assert done.stderr.strip() == "", (
        f"recordline {' '.join(command)} --help imported {done.stderr}"
    )


# -- a newcomer's mistakes: one line each, no traceback ---------------------------------


def said_in_one_line(done: subprocess.CompletedProcess[str], *, status: int = 2) -> str:
    assert done.returncode == status, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("argv", "prog"),
    [
        (["serve", "--prot", "1"], "recordline serve"),
        (["replay", "dead-letters", "--url", "http://x", "--subscription", "s", "--x"],
         "recordline replay dead-letters"),
        (["typed", "backfill", "--sincee", "1h"], "recordline typed backfill"),
    ],
)  # fmt: skip
def test_an_unknown_option_is_said_by_the_command_it_was_given_to(
    argv: list[str], prog: str
) -> None:
    # `recordline serve --prot` said "recordline: unrecognized arguments", pointing at
    # `recordline --help`, which lists the commands, not serve's options.
    line = said_in_one_line(run(RECORDLINE, *argv))
    assert line.startswith(f"{prog}: unrecognized arguments: "), line
    assert f"(`{prog} --help` shows every option)" in line
    # Through dev.py, as the user typed it there.
    through = said_in_one_line(run(sys.executable, "dev.py", *argv))
    assert through.startswith(f"python3 dev.py {prog.removeprefix('recordline ')}: "), through


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["--count", "-5"], "argument --count: -5 is not 1 or more"),
        (["--count", "0"], "argument --count: 0 is not 1 or more"),
        (["--rate", "-1"], "argument --rate: -1 is negative"),
        (["--wait", "0"], "argument --wait: 0 is not more than 0 seconds"),
        # A FileNotFoundError traceback, once the emulator had been waited for.
        (["--file", "no/such/file.jsonl"], "--file no/such/file.jsonl: No such file"),
    ],
)
def test_publish_refuses_what_it_cannot_do_in_one_line(argv: list[str], said: str) -> None:
    env = {**os.environ, "PUBSUB_EMULATOR_HOST": f"127.0.0.1:{free_port()}"}
    started = time.monotonic()
    done = run(RECORDLINE, "publish", "--topic", "records", *argv, env=env, timeout=60)
    assert said in said_in_one_line(done)
    assert time.monotonic() - started < 20  # nothing was waited for


def without_google_credentials(tmp_path: Path, metadata: str) -> dict[str, str]:
    """No emulator, no key file, no gcloud login; Google's metadata server at `metadata`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"PUBSUB_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS"}
    }
    return {
        **env,
        "HOME": str(tmp_path),
        "CLOUDSDK_CONFIG": str(tmp_path / "gcloud"),
        "GCE_METADATA_HOST": metadata,
        "GCE_METADATA_IP": metadata,
    }


@pytest.mark.slow
@pytest.mark.parametrize(
    "argv",
    [
        ["publish", "--topic", "projects/p/topics/records", "--count", "1"],
        [
            "replay",
            "dead-letters",
            "--url",
            "http://127.0.0.1:9",
            "--subscription",
            "projects/p/subscriptions/dl",
        ],
    ],
    ids=["publish", "replay"],
)
def test_without_an_emulator_or_credentials_the_tool_says_what_to_set_at_once(
    tmp_path: Path, argv: list[str]
) -> None:
    # Where the metadata server's address takes connections and never answers (publish)
    # google-auth waited ~14 s for it, then printed a 29-line DefaultCredentialsError;
    # where nothing is there (replay), the traceback came sooner.
    with socket.create_server(("127.0.0.1", 0)) as hung:
        metadata = f"127.0.0.1:{hung.getsockname()[1] if argv[0] == 'publish' else free_port()}"
        started = time.monotonic()
        done = run(RECORDLINE, *argv, env=without_google_credentials(tmp_path, metadata))
        took = time.monotonic() - started
    line = said_in_one_line(done, status=2 if argv[0] == "publish" else 1)
    assert "no Google credentials" in line
    assert "PUBSUB_EMULATOR_HOST" in line
    assert "gcloud auth application-default login" in line
    assert took < 10, took


def test_a_topic_that_does_not_exist_is_said_so_not_given_up_on() -> None:
    # It was "1 failed (each given up after 30 s, --wait)", 0.0 s after the start.
    import concurrent.futures

    from google.api_core.exceptions import NotFound

    from recordline_dev.client import publish

    class NoSuchTopic:
        def publish(self, topic: str, data: bytes, **_: object) -> concurrent.futures.Future[str]:
            future: concurrent.futures.Future[str] = concurrent.futures.Future()
            future.set_exception(NotFound("Topic not found"))
            return future

    result = publish(NoSuchTopic(), ["projects/p/topics/nosuchtopic"], [b"{}", b"{}"])
    assert result.failed == 2
    assert result.first_error is not None
    assert result.first_error.startswith("projects/p/topics/nosuchtopic does not exist")
    assert "given up" not in result.first_error


@pytest.mark.slow
def test_tail_refuses_a_since_it_cannot_read_in_one_line() -> None:
    # It printed the service's problem document, raw JSON.
    done = run(RECORDLINE, "tail", "--since", "yesterday", "--url", "http://127.0.0.1:9")
    line = said_in_one_line(done)
    assert "--since: 'yesterday' is not an RFC 3339 time" in line
    assert "how long ago" in line
    assert "{" not in line


def test_audit_with_no_service_says_what_it_asked_and_what_to_start() -> None:
    # It printed a bare `[Errno 111] Connection refused`.
    done = run(RECORDLINE, "audit", "--since", "1h", "--url", "http://127.0.0.1:9")
    line = said_in_one_line(done)
    assert "http://127.0.0.1:9 does not answer (connection refused)" in line
    assert "recordline serve" in line


async def test_a_refusal_the_tail_meets_is_said_by_its_detail() -> None:
    problem = {"status": 400, "type": "/problems/invalid-parameter", "detail": "since: no"}
    transport = httpx.MockTransport(lambda request: httpx.Response(400, json=problem))
    async with httpx.AsyncClient(base_url="http://svc", transport=transport) as http:
        with pytest.raises(FollowError) as raised:
            async for _ in follow(http, since="x"):
                pass
    assert str(raised.value) == "GET /v1/records answered 400: since: no"


async def test_a_404_at_a_cells_root_says_to_name_the_system() -> None:
    problem = {"status": 404, "detail": "no such route"}
    transport = httpx.MockTransport(lambda request: httpx.Response(404, json=problem))
    async with httpx.AsyncClient(base_url="http://cell", transport=transport) as http:
        with pytest.raises(FollowError) as raised:
            async for _ in follow(http, since="1h"):
                pass
    assert "under /systems/SYSTEM: --system SYSTEM" in str(raised.value)


async def test_a_page_token_a_stopped_follower_was_given_goes_on_after_what_it_read() -> None:
    # `--since` the last record's time printed that record again.
    store = DuckDBStore(":memory:")
    async with served(create_app(settings(), store=store)) as http:
        for n in range(3):
            body = envelope({"id": f"r{n}"}, message_id=f"m{n}")
            assert (await http.post("/pubsub/push", json=body)).status_code == 204
        tokens: list[str] = []
        read = []
        async for page in follow(http, since="1h", wait=0.1, read_on=tokens.append):
            read += [json.loads(bytes(r))["id"] for r in page]
            break  # stopped once it printed what there was
        assert read == ["r0", "r1", "r2"]
        assert tokens
        body = envelope({"id": "r3"}, message_id="m3")
        assert (await http.post("/pubsub/push", json=body)).status_code == 204
        async for page in follow(http, page_token=tokens[-1], wait=0.1):
            assert [json.loads(bytes(r))["id"] for r in page] == ["r3"]
            break


# -- recordline sql ---------------------------------------------------------------------


@pytest.mark.slow
def test_sql_reads_a_duckdb_store_while_its_service_runs_and_after(
    tmp_path: Path, terminals: list[Terminal]
) -> None:
    # Nothing said how to query a session's file, and opening it while the service ran
    # failed on DuckDB's lock (no duckdb CLI in .venv either).
    store = f"duckdb://{tmp_path / 'r.duckdb'}"
    port = free_port()
    server = Terminal([RECORDLINE, "serve", "--port", str(port), "--store", store], cwd=tmp_path)
    terminals.append(server)
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, server)
    body = {
        "message": {
            "data": "eyJpZCI6InNxbC0xIn0=",  # {"id":"sql-1"}
            "messageId": "m-sql",
            "publishTime": "2024-04-27T12:00:01Z",
        }
    }
    assert httpx.post(f"{url}/pubsub/push", json=body, timeout=30).status_code == 204
    query = "SELECT id, message_id FROM records_typed"

    # Acknowledged once journaled, applied to the file within a quarter of a second:
    # the copy has the row once the service applied it, and never a half-written file.
    def applied() -> subprocess.CompletedProcess[str] | None:
        answer = run(RECORDLINE, "sql", "--store", store, query)
        assert answer.returncode == 0, answer.stderr
        return answer if "sql-1" in answer.stdout else None

    while_running = until_blocking(applied, timeout=10, interval=0.1, what="the row in the copy")
    assert "m-sql" in while_running.stdout
    assert "reading a copy" in while_running.stderr
    server.ctrl_c()
    server.wait(STOP_SECONDS)
    after = run(RECORDLINE, "sql", "--store", store, query)
    assert after.returncode == 0, after.stderr
    assert "sql-1" in after.stdout
    assert after.stderr == ""
    # Read-only: what would change the store is refused, in one line.
    write = run(RECORDLINE, "sql", "--store", store, "DELETE FROM records")
    assert "read-only" in said_in_one_line(write, status=1)


@pytest.mark.slow
def test_sql_finds_the_newest_dev_session(tmp_path: Path) -> None:
    import duckdb

    for name, value in (("session-20260101-000000", "old"), ("session-20260102-000000", "new")):
        (tmp_path / ".recordline-dev" / name).mkdir(parents=True)
        with duckdb.connect(str(tmp_path / ".recordline-dev" / name / "records.duckdb")) as con:
            con.execute(f"CREATE TABLE t AS SELECT '{value}' AS v")
    done = run(RECORDLINE, "sql", "--dev", "SELECT v FROM t", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "new" in done.stdout
    assert "old" not in done.stdout


def session(root: Path, name: str, **stack: str) -> Path:
    """A `recordline dev` session's directory under `root`/.recordline-dev, with what
    its stack runs (as `recordline dev` writes it once up)."""
    from recordline_dev.sessions import Stack

    directory = root / ".recordline-dev" / name
    directory.mkdir(parents=True)
    written = Stack(
        store=stack.pop("store", f"duckdb://{directory / 'records.duckdb'}"),
        service_url="http://127.0.0.1:9",
        started="2026-01-01T00:00:00Z",
        **stack,
    )
    (directory / "stack.json").write_bytes(msgspec.json.encode(written))
    return directory


@pytest.mark.slow
def test_sql_dev_names_the_session_it_reads_and_refuses_one_older_than_a_running_stack(
    tmp_path: Path,
) -> None:
    # While `dev --serving` ran, `sql --dev` read an earlier DuckDB session's file and
    # said nothing of it: none of the records just published were there.
    import duckdb

    from recordline_dev.sessions import holding, sessions

    older = session(tmp_path, "session-20260101-000000")
    with duckdb.connect(str(older / "records.duckdb")) as con:
        con.execute("CREATE TABLE t AS SELECT 'old' AS v")
    read = run(RECORDLINE, "sql", "--dev", "SELECT v FROM t", cwd=tmp_path)
    assert read.returncode == 0, read.stderr
    assert "old" in read.stdout
    assert "session session-20260101-000000 (stopped)" in read.stderr
    newer = session(
        tmp_path,
        "session-20260102-000000",
        store="bigquery://recordline-dev/recordline",
        serving="spanner://projects/recordline-dev/instances/recordline/databases/recordline",
    )
    stack = sessions(tmp_path / ".recordline-dev")[-1].stack
    assert stack is not None
    with holding(newer, stack):
        refused = run(RECORDLINE, "sql", "--dev", "SELECT v FROM t", cwd=tmp_path)
    line = said_in_one_line(refused)
    assert "the newest session, session-20260102-000000, runs on the serving tier" in line
    assert "which `recordline sql --serving` queries" in line
    assert f"--store duckdb:{older / 'records.duckdb'}" in line
    # Once it stopped (its rows went with it), the older file is read again, named.
    again = run(RECORDLINE, "sql", "--dev", "SELECT v FROM t", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "session session-20260101-000000 (stopped)" in again.stderr


@pytest.mark.slow
def test_sql_serving_queries_the_stand_in_by_the_names_bigquery_resolves(
    tmp_path: Path, jobs_fake: FakeBigQueryJobs
) -> None:
    # Typed columns on --serving had no command; and in the stand-in `recordline.records`
    # failed where BigQuery resolves it in the job's project.
    from recordline_dev.sessions import holding, sessions

    nothing = run(RECORDLINE, "sql", "--serving", "SELECT 1", cwd=tmp_path)
    assert "no `recordline dev --serving` runs from here" in said_in_one_line(nothing)
    directory = session(
        tmp_path,
        "session-20260102-000000",
        store=f"bigquery://{jobs_fake.project}/{jobs_fake.dataset}",
        serving="spanner://projects/recordline-dev/instances/recordline/databases/recordline",
        bigquery_jobs=jobs_fake.endpoint,
        project=jobs_fake.project,
        dataset=jobs_fake.dataset,
    )
    stack = sessions(tmp_path / ".recordline-dev")[-1].stack
    assert stack is not None
    with holding(directory, stack):
        for table in (
            "records",
            f"{jobs_fake.dataset}.records",
            f"`{jobs_fake.project}.{jobs_fake.dataset}.records`",
        ):
            done = run(
                RECORDLINE, "sql", "--serving", f"SELECT count(*) AS n FROM {table}", cwd=tmp_path
            )
            assert done.returncode == 0, (table, done.stderr)
            assert re.search(r"│ +0 │", done.stdout), (table, done.stdout)
            assert "session session-20260102-000000 (running)" in done.stderr
        wrong = run(RECORDLINE, "sql", "--serving", "SELECT nope FROM records", cwd=tmp_path)
    # The stand-in's own words, as BigQuery's would be, in a line after the session's.
    assert wrong.returncode == 1, wrong.stderr
    said = wrong.stderr.strip().splitlines()
    assert len(said) == 2, wrong.stderr
    assert said[1].startswith('recordline sql: Binder Error: Referenced column "nope"'), said


@pytest.mark.slow
def test_sql_reaches_nothing_but_the_store(tmp_path: Path) -> None:
    """Read-only is the store and everything else: no file written or read, no
    extension installed from the network, no database attached, and the setting that
    forbids them cannot be changed back by the statement itself."""
    import duckdb

    path = tmp_path / "r.duckdb"
    made = duckdb.connect(str(path))
    made.execute("CREATE TABLE records AS SELECT 'sql-1' AS id")
    made.close()
    store = f"duckdb://{path}"
    outside = tmp_path / "out.csv"
    for query in (
        f"COPY (SELECT 1) TO '{outside}'",
        "INSTALL httpfs",
        f"SELECT * FROM read_csv('{path}')",
        f"ATTACH '{tmp_path / 'other.duckdb'}'",
        "SET enable_external_access = true",
    ):
        done = run(RECORDLINE, "sql", "--store", store, query, cwd=tmp_path)
        said_in_one_line(done, status=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.duckdb"]
    read = run(RECORDLINE, "sql", "--store", store, "SELECT id FROM records", cwd=tmp_path)
    assert read.returncode == 0, read.stderr
    assert "sql-1" in read.stdout


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["--store", "memory:"], "reads a DuckDB file"),
        (["--store", "duckdb:nothing-here.duckdb"], "nothing-here.duckdb does not exist"),
        (["--dev"], "no `recordline dev` session with a DuckDB store"),
    ],
)
def test_sql_says_in_one_line_what_it_cannot_read(
    tmp_path: Path, argv: list[str], said: str
) -> None:
    done = run(RECORDLINE, "sql", *argv, "SELECT 1", cwd=tmp_path)
    assert said in said_in_one_line(done)


# -- recordline export: what on-call reads at 3 a.m. ---------------------------------------

SERVING = "spanner://projects/recordline-prod/instances/serving/databases/recordline"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("argv", "extra", "code", "said"),
    [
        # No credentials where it runs: one line, not google.auth's traceback.
        (
            ["status"],
            {"GOOGLE_APPLICATION_CREDENTIALS": "/nonexistent/key.json"},
            4,
            "unavailable: Spanner: no usable credentials",
        ),
        # Spanner refusing connections: unavailable, within the read timeout.
        (
            ["status"],
            {"SPANNER_EMULATOR_HOST": "127.0.0.1:{port}", "RECORDLINE_QUERY_TIMEOUT_SECONDS": "1"},
            4,
            "unavailable: Spanner",
        ),
        # A decision without its reason is a usage error.
        (["retry", "records", "--operator", "ada@example.com"], {}, 2, "--reason"),
    ],
    ids=["no-credentials", "spanner-refuses", "no-reason"],
)
def test_export_commands_say_one_line_and_a_distinct_exit_code(
    argv: list[str], extra: dict[str, str], code: int, said: str
) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    env = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/tmp"),
        "RECORDLINE_STORE": "bigquery://recordline-prod/recordline",
        "RECORDLINE_SERVING": SERVING,
        **{k: v.format(port=port) for k, v in extra.items()},
    }
    done = run(str(RECORDLINE), "export", *argv, env=env, timeout=60)
    assert done.returncode == code, done.stderr
    assert said in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    # One line says what went wrong (argparse's usage lines aside).
    errors = [line for line in done.stderr.splitlines() if line.startswith("recordline export")]
    assert len(errors) == 1, done.stderr
