"""Configuration errors are said one way for every setting, and `recordline config`
shows what a process would run with."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from app.cli import main
from app.ingest import batcher, schemas
from app.query import follow
from app.settings import (
    BODY_TIMEOUT_SECONDS,
    EXPORT_MAX_BYTES,
    HEADER_TIMEOUT_SECONDS,
    KEEP_ALIVE_SECONDS,
    LONG_POLL_SECONDS,
    MAX_HEADER_BYTES,
    PUSH_RESERVE,
    QUEUE_MAX_ROWS,
    RETIRED,
    SEND_TIMEOUT_SECONDS,
    SETTLE_SECONDS,
    SHUTDOWN_GRACE_SECONDS,
    TOOL_VARIABLES,
    Settings,
    SettingsError,
    every_setting,
)
from tests.processes import free_port
from tests.waiting import until_blocking

# A value each setting refuses. Every setting is here or in FREE_TEXT: a new one
# must say which.
BAD_VALUES = {
    "RECORDLINE_HOST": "two words",
    "PORT": "abc",
    "RECORDLINE_MAX_BODY_BYTES": "-5",
    "RECORDLINE_MAX_CONNECTIONS": "0",
    "RECORDLINE_MEMORY_BUDGET_BYTES": "67108864",
    "RECORDLINE_LOG_FORMAT": "xml",
    "RECORDLINE_LOG_LEVEL": "LOUD",
    "RECORDLINE_STORE": "bogus://x",
    "RECORDLINE_WRITE_DEADLINE_SECONDS": "soon",
    "RECORDLINE_QUERY_TIMEOUT_SECONDS": "-1",
    "RECORDLINE_BIGQUERY_WRITE_ENDPOINT": "localhost",
    "BIGQUERY_EMULATOR_HOST": "localhost:9050",
    "RECORDLINE_SERVING": "spanner://my-db",
    "RECORDLINE_EXPORT_IN_SERVICE": "sometimes",
    "SPANNER_EMULATOR_HOST": "http://localhost:9010",
    "RECORDLINE_READ_CACHE_SECONDS": "-1",
    "RECORDLINE_STREAM_SECONDS": "3601",
    "RECORDLINE_SHARED_CACHE": "sometimes",
    "RECORDLINE_MAX_FOLLOWERS": "0",
    "RECORDLINE_PRODUCER_GRACE_SECONDS": "0",
    "RECORDLINE_RETENTION_DAYS": "1.5",
    "RECORDLINE_QUEUE_MAX_BYTES": "0",
    "RECORDLINE_ID_FIELD": "meta..id",
    "RECORDLINE_TIME_FIELD": "created at",
    "PUBSUB_EMULATOR_HOST": "8085",
    "RECORDLINE_TOPIC": "orders",
    "RECORDLINE_DEDUPE_WINDOW_SECONDS": "forever",
    "RECORDLINE_QUERY_MAX_BYTES_BILLED": "1024",
    "RECORDLINE_PUSH_SERVICE_ACCOUNTS": "push-account",
    "RECORDLINE_OIDC_CERTS_URL": "www.googleapis.com/oauth2/v3/certs",
    "RECORDLINE_PUSH_TOKEN": "short-secret",
    "RECORDLINE_PRODUCER_KEYS": "orders-api",
    "RECORDLINE_READ_PRINCIPALS": "group:readers@example.com",
    "RECORDLINE_OPERATOR_PRINCIPALS": "user:ada@example.com",
    "RECORDLINE_EXPORT_PRINCIPALS": "group:auditors@example.com",
    "RECORDLINE_TRUST_CLOUD_RUN_IAM": "maybe",
    "RECORDLINE_PUBLIC_READS": "if you like",
    "RECORDLINE_READ_PASS_KEYS": "k1=AAECAwQFBgcICQoLDA0ODw",
    "RECORDLINE_READ_PASS_URL": "https://records.example.com/v1/",
    "RECORDLINE_READ_PASS_SECONDS": "86400",
    "RECORDLINE_SYSTEM": "Orders",
    "RECORDLINE_URL": "recordline.example.com",
    "RECORDLINE_JSON_TOPIC_SCHEMA": '"string"',
    "OTEL_TRACES_EXPORTER": "zipkin",
    "OTEL_METRICS_EXPORTER": "statsd",
    "OTEL_TRACES_SAMPLER": "sometimes",
    "OTEL_TRACES_SAMPLER_ARG": "2",
    "OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318",
    "OTEL_METRIC_EXPORT_INTERVAL": "1000",
    "GOOGLE_CLOUD_PROJECT": "My Project",
    "RECORDLINE_SLO_READ_LATENCY_SECONDS": "0",
    "RECORDLINE_SLO_FRESHNESS_SECONDS": "-1",
    "RECORDLINE_CELL": "Cell 1",
    # What makes the whole file unusable: one entry's own fault is that system's alone
    # (tests/cell/test_settings.py).
    "RECORDLINE_SYSTEMS": '{"orders": {"store": "memory:"},}',
    "RECORDLINE_CELL_MAX_SYSTEMS": "0",
    "RECORDLINE_THROTTLES": "throttles.json",
}
# Any text is a value of these.
FREE_TEXT = {
    "OTEL_SERVICE_NAME",
    # Names, any text: a name no payload member or attribute has masks nothing.
    "RECORDLINE_MASK_ATTRIBUTES",
    "RECORDLINE_MASK_FIELDS",
    "RECORDLINE_PAGE_TOKEN_SECRET",
    "RECORDLINE_PUSH_AUDIENCE",
    "RECORDLINE_READ_AUDIENCE",
}
# Settings of several parts, whose refusal names the part at fault.
PARTS_NAMED = {"RECORDLINE_SYSTEMS"}
SECRETS = {
    "RECORDLINE_PAGE_TOKEN_SECRET",
    "RECORDLINE_PUSH_TOKEN",
    "RECORDLINE_PRODUCER_KEYS",
    "RECORDLINE_READ_PASS_KEYS",
}


def test_every_setting_is_checked_or_takes_any_text() -> None:
    variables = {setting.var for setting in every_setting()}
    assert set(BAD_VALUES) | FREE_TEXT == variables
    assert {setting.var for setting in every_setting() if setting.secret} == SECRETS


@pytest.mark.parametrize(("variable", "value"), sorted(BAD_VALUES.items()))
def test_a_bad_value_is_one_line_naming_the_variable_and_what_it_accepts(
    variable: str, value: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError):
        Settings.load()

    # `recordline config` reads the settings as `serve` does, and starts nothing.
    assert main(["config"]) == 2
    said = capsys.readouterr()
    assert said.out == ""
    [line] = said.err.splitlines()
    assert line.startswith(f"recordline: {variable}=")
    assert "is not accepted" in line
    assert ": expected " in line
    (setting,) = [s for s in every_setting() if s.var == variable]
    assert line.endswith(setting.accepts)
    # A secret is never repeated, not even a wrong one.
    assert (value in line) is (variable not in SECRETS)


@pytest.mark.parametrize(("variable", "value"), sorted(BAD_VALUES.items()))
def test_a_refusal_names_its_setting_however_msgspec_words_its_error(
    variable: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # msgspec's messages are written for people and may be reworded in any
    # release; the setting at fault is known without reading them.
    convert = msgspec.convert
    refusals = []

    def reworded(*args: Any, **kwargs: Any) -> Any:
        try:
            return convert(*args, **kwargs)
        except msgspec.ValidationError:
            refusals.append(args)
            raise msgspec.ValidationError("Wert ungültig") from None

    monkeypatch.setattr(msgspec, "convert", reworded)
    with pytest.raises(SettingsError) as refused:
        Settings.load({variable: value})

    assert refusals or variable in PARTS_NAMED, "msgspec was not asked"
    (setting,) = [s for s in every_setting() if s.var == variable]
    shown = f"<{len(value)} characters, not shown>" if variable in SECRETS else repr(value)
    said = str(refused.value)
    if variable in PARTS_NAMED:
        # Which part is wrong, in words of its own beside msgspec's.
        said = re.sub(r" \(.*?\): expected ", ": expected ", said, count=1)
    assert said == f"{variable}={shown} is not accepted: expected {setting.accepts}"


def test_of_several_bad_values_the_first_setting_in_the_reference_is_named() -> None:
    order = [setting.var for setting in every_setting()]
    bad = sorted(BAD_VALUES.items(), key=lambda item: order.index(item[0]), reverse=True)
    with pytest.raises(SettingsError, match=f"^{order[0]}="):
        Settings.load(dict(bad))


@pytest.mark.parametrize(
    ("variable", "value", "accepted"),
    [
        ("RECORDLINE_STORE", "bogus://x", "bigquery://PROJECT/DATASET"),
        ("RECORDLINE_LOG_LEVEL", "LOUD", "CRITICAL"),
        ("RECORDLINE_LOG_FORMAT", "xml", "`json`"),
    ],
)
def test_serve_refuses_a_bad_setting_in_one_line_with_status_2(
    variable: str, value: str, accepted: str, tmp_path: Path
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "serve", "--port", "0"],
        env={**os.environ, variable: value},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith(f"recordline: {variable}={value!r} is not accepted")
    assert accepted in line


def serve(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "serve", *args],
        env={**os.environ, "RECORDLINE_LOG_FORMAT": "json", **env},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def errors_said(done: subprocess.CompletedProcess[str]) -> list[str]:
    """The messages of the lines at ERROR or above, and no traceback anywhere."""
    said = done.stdout + done.stderr
    assert "Traceback" not in said
    assert "ExceptionGroup" not in said
    lines = [json.loads(line) for line in said.splitlines() if line.startswith("{")]
    return [line["message"] for line in lines if line["severity"] in {"ERROR", "CRITICAL"}]


@pytest.mark.slow
def test_a_store_that_fails_at_start_is_one_line(tmp_path: Path) -> None:
    # The store logged its error, then `cannot start:` said it again, then
    # uvicorn said that start-up failed: three lines for one cause.
    store = f"duckdb://{tmp_path}/no/such/directory/records.duckdb"
    done = serve(tmp_path, "--port", "0", RECORDLINE_STORE=store)
    assert done.returncode == 3, done.stdout + done.stderr
    [line] = errors_said(done)
    assert line.startswith("cannot start: ")
    assert "no/such/directory/records.duckdb" in line
    assert "No such file or directory" in line


@pytest.mark.slow
def test_a_store_held_by_another_process_is_one_line(tmp_path: Path) -> None:
    store = f"duckdb://{tmp_path / 'records.duckdb'}"
    port = str(free_port())
    holder = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", port, "--store", store],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        ready(f"http://127.0.0.1:{port}", holder)
        done = serve(tmp_path, "--port", "0", "--store", store)
    finally:
        holder.terminate()
        holder.wait(30)
    assert done.returncode == 3, done.stdout + done.stderr
    [line] = errors_said(done)
    assert line.startswith("cannot start: ")
    assert "lock" in line


@pytest.mark.slow
def test_a_port_in_use_is_one_line_and_opens_no_store(tmp_path: Path) -> None:
    # The store was opened (its file made, "recordline ready" said) before the
    # bind failed, and the bind's error came between start-up and shutdown lines.
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        done = serve(tmp_path, "--port", str(port), "--store", "duckdb:records.duckdb")
    assert done.returncode == 3, done.stdout + done.stderr
    [line] = errors_said(done)
    assert line.startswith(f"cannot start: 127.0.0.1:{port} cannot be listened on (")
    assert "choose another port (--port, PORT)" in line
    assert "recordline ready" not in done.stdout + done.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_serve_says_where_it_serves(tmp_path: Path) -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--store", "memory:"],
        env={**os.environ, "RECORDLINE_LOG_FORMAT": "json"},
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        ready(f"http://127.0.0.1:{port}", process)
    finally:
        process.terminate()
        said, _ = process.communicate(timeout=30)
    messages = [json.loads(line)["message"] for line in said.splitlines() if line.startswith("{")]
    assert f"serving on http://127.0.0.1:{port}" in messages


def ready(url: str, process: subprocess.Popen[str] | subprocess.Popen[bytes]) -> None:
    def answers() -> bool:
        assert process.poll() is None, f"exited with {process.returncode}"
        try:
            return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    until_blocking(answers, timeout=60, interval=0.1, what=f"{url}/readyz to answer 200")


@pytest.mark.parametrize(
    ("variable", "meant"),
    [
        ("RECORDLINE_RETENTION_DAY", "RECORDLINE_RETENTION_DAYS"),
        ("RECORDLINE_STORAGE", "RECORDLINE_STORE"),
        ("RECORDLINE_PUSHTOKEN", "RECORDLINE_PUSH_TOKEN"),
        ("RECORDLINE_PORT", "PORT"),
        ("RECORDLINE_PUBSUB_EMULATR", "RECORDLINE_PUBSUB_EMULATOR"),
        ("RECORDLINE_WHATEVER", None),
    ],
)
def test_a_misspelled_variable_is_refused_naming_the_closest_one(
    variable: str,
    meant: str | None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Read by nothing, it would leave the setting meant at its default in silence.
    with pytest.raises(SettingsError):
        Settings.load({"RECORDLINE_STORE": "memory:", variable: "7"})
    monkeypatch.setenv(variable, "7")
    assert main(["config"]) == 2
    [line] = capsys.readouterr().err.splitlines()
    hint = f": did you mean {meant}?" if meant else ""
    assert line == (
        f"recordline: {variable} is not a setting of Recordline{hint} "
        "(`recordline config --reference` lists them all)"
    )


# What each retired setting's message says became of it, from the code that took its place.
ANSWERS: dict[str, Callable[[], str]] = {
    "RECORDLINE_EXPORT_SYSTEMS": lambda: "RECORDLINE_SYSTEMS",
    "RECORDLINE_BATCH_MAX_ROWS": lambda: f"{batcher.MAX_BATCH_ROWS:,} rows",
    "RECORDLINE_BATCH_MAX_BYTES": lambda: f"{batcher.MAX_BATCH_BYTES / 2**20:g} MiB",
    "RECORDLINE_BATCH_MAX_DELAY_MS": lambda: (
        "waits for no more rows" if "max_delay" not in batcher.BatchLimits._fields else "(waits)"
    ),
    "RECORDLINE_HEARTBEAT_SECONDS": lambda: f"every {follow.HEARTBEAT_SECONDS:g} s",
    "RECORDLINE_SCHEMA_FETCH_TIMEOUT_SECONDS": lambda: f"after {schemas.FETCH_SECONDS:g} s",
    "RECORDLINE_QUEUE_MAX_ROWS": lambda: f"at most {QUEUE_MAX_ROWS:,} rows",
    "RECORDLINE_SETTLE_SECONDS": lambda: f"once {SETTLE_SECONDS:g} s old",
    "RECORDLINE_HEADER_TIMEOUT_SECONDS": lambda: f"within {HEADER_TIMEOUT_SECONDS:g} s",
    "RECORDLINE_KEEP_ALIVE_SECONDS": lambda: f"kept {KEEP_ALIVE_SECONDS:g} s",
    "RECORDLINE_BODY_TIMEOUT_SECONDS": lambda: f"within {BODY_TIMEOUT_SECONDS:g} s",
    "RECORDLINE_SEND_TIMEOUT_SECONDS": lambda: f"for {SEND_TIMEOUT_SECONDS:g} s",
    "RECORDLINE_MAX_HEADER_BYTES": lambda: f"at most {MAX_HEADER_BYTES // 1024} KiB",
    "RECORDLINE_LONG_POLL_SECONDS": lambda: f"waits {LONG_POLL_SECONDS:g} s",
    "RECORDLINE_SHUTDOWN_GRACE_SECONDS": lambda: f"within {SHUTDOWN_GRACE_SECONDS:g} s",
    "RECORDLINE_EXPORT_MAX_BYTES": lambda: f"at most {EXPORT_MAX_BYTES // 2**20} MiB",
    "RECORDLINE_PUSH_RESERVE": lambda: f"pushes {PUSH_RESERVE:g} of the connections",
}


@pytest.mark.parametrize(
    "variable",
    [
        # The exporter's former name of RECORDLINE_SYSTEMS, and numbers that are the
        # code's own constants: a deployment that still sets one does not start.
        "RECORDLINE_EXPORT_SYSTEMS",
        "RECORDLINE_BATCH_MAX_ROWS",
        "RECORDLINE_BATCH_MAX_BYTES",
        "RECORDLINE_BATCH_MAX_DELAY_MS",
        "RECORDLINE_HEARTBEAT_SECONDS",
        "RECORDLINE_SCHEMA_FETCH_TIMEOUT_SECONDS",
        "RECORDLINE_PUSH_RESERVE",
        "RECORDLINE_QUEUE_MAX_ROWS",
        "RECORDLINE_SETTLE_SECONDS",
        "RECORDLINE_HEADER_TIMEOUT_SECONDS",
        "RECORDLINE_KEEP_ALIVE_SECONDS",
        "RECORDLINE_BODY_TIMEOUT_SECONDS",
        "RECORDLINE_SEND_TIMEOUT_SECONDS",
        "RECORDLINE_MAX_HEADER_BYTES",
        "RECORDLINE_LONG_POLL_SECONDS",
        "RECORDLINE_SHUTDOWN_GRACE_SECONDS",
        "RECORDLINE_EXPORT_MAX_BYTES",
    ],
)
def test_a_variable_that_is_no_longer_a_setting_is_refused_saying_what_became_of_it(
    variable: str,
) -> None:
    with pytest.raises(SettingsError) as refused:
        Settings.load({"RECORDLINE_STORE": "memory:", variable: "1"})
    assert str(refused.value) == (
        f"{variable} is no longer a setting of Recordline: {RETIRED[variable]}; remove it "
        "(`recordline config --reference` lists them all)"
    )
    # And what became of it is true: the constant that took its place has that value.
    assert RETIRED.keys() == set(ANSWERS)
    assert ANSWERS[variable]() in RETIRED[variable]


def test_serve_refuses_a_misspelled_variable_before_starting_anything(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "serve", "--port", "0"],
        env={**os.environ, "RECORDLINE_STORAGE": "memory:"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith("recordline: RECORDLINE_STORAGE is not a setting of Recordline")
    assert "did you mean RECORDLINE_STORE?" in line
    assert list(tmp_path.iterdir()) == []  # no store was made at the default's place


def variables_named_in(path: Path) -> set[str]:
    """RECORDLINE_ names the file gives as whole strings (Python) or assigns (Terraform,
    the Dockerfile): the variables it reads or sets."""
    text = path.read_text()
    if path.suffix == ".py":
        return set(re.findall(r"[\"'](RECORDLINE_[A-Z0-9_]+)[\"']", text))
    return set(re.findall(r"\b(RECORDLINE_[A-Z0-9_]+)\s*=", text))


def test_every_recordline_variable_the_repository_uses_is_known() -> None:
    # A variable the tools, tests or deployment read or set that the service
    # does not know would make it refuse to start wherever they set it.
    root = Path(__file__).resolve().parent.parent
    files = [root / "dev.py", root / "Dockerfile"]
    for directory, pattern in [
        ("app", "*.py"),
        ("recordline_dev", "*.py"),
        ("bench", "*.py"),
        ("tests", "*.py"),
        ("infra", "*.tf"),
    ]:
        files += sorted((root / directory).rglob(pattern))
    used: set[str] = set()
    for path in files:
        if path != Path(__file__).resolve():
            used |= variables_named_in(path)
    # Retired names are only told apart where the settings are read, and set nowhere.
    used -= RETIRED.keys()
    elsewhere = [p for p in files if p.name != "settings.py" and p != Path(__file__).resolve()]
    assert not any(RETIRED.keys() & variables_named_in(p) for p in elsewhere)
    known = {setting.var for setting in every_setting()} | TOOL_VARIABLES
    assert used - known == set()
    assert used >= TOOL_VARIABLES  # none listed that nothing uses


def test_config_shows_each_value_and_where_it_came_from(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for setting in every_setting():
        monkeypatch.delenv(setting.var, raising=False)
    monkeypatch.setenv("PORT", "9090")
    monkeypatch.setenv("RECORDLINE_LOG_LEVEL", "debug")
    monkeypatch.setenv("RECORDLINE_PUSH_TOKEN", "a-very-secret-push-token")
    monkeypatch.setenv("RECORDLINE_PAGE_TOKEN_SECRET", "another-secret")

    assert main(["config"]) == 0
    said = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in said.splitlines()[1:]}
    assert set(rows) == {setting.var for setting in every_setting()}
    assert rows["PORT"][1:] == ["9090", "environment"]
    assert rows["RECORDLINE_LOG_LEVEL"][1:] == ["'debug'", "environment"]
    assert rows["RECORDLINE_HOST"][1:] == ["'127.0.0.1'", "default"]
    assert rows["RECORDLINE_STORE"][1:] == ["'duckdb:recordline.duckdb'", "default"]
    assert rows["RECORDLINE_PUSH_TOKEN"][-1] == "environment"
    assert "a-very-secret-push-token" not in said
    assert "another-secret" not in said
    assert "not shown" in " ".join(rows["RECORDLINE_PAGE_TOKEN_SECRET"])


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (
            ["--port", "99999"],
            "--port '99999' is not accepted: expected an integer from 0 to 65535",
        ),
        (["--store", "bogus://x"], "--store 'bogus://x' is not accepted"),
        (["--host", "two words"], "--host 'two words' is not accepted"),
    ],
)
def test_a_bad_flag_of_serve_is_named_as_it_was_typed(
    argv: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from app.cli import main

    assert main(["serve", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"recordline: {said}"), err
    # The variable it stands for is named too, for whoever looks for it in the docs.
    assert "(it sets " in err


@pytest.mark.parametrize("mask", ["RECORDLINE_MASK_FIELDS", "RECORDLINE_MASK_ATTRIBUTES"])
def test_a_shared_cache_is_refused_where_anything_is_masked(mask: str) -> None:
    # One answer per URL for everyone: an operator's unmasked page would reach readers.
    with pytest.raises(SettingsError, match="RECORDLINE_SHARED_CACHE=true and") as refused:
        Settings.load({"RECORDLINE_SHARED_CACHE": "true", mask: "email"})
    assert refused.value.var == "RECORDLINE_SHARED_CACHE"
    assert Settings.load({"RECORDLINE_SHARED_CACHE": "true"}).query.shared_cache
