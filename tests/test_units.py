"""Decoding, page tokens and the derived schemas, without a server."""

from __future__ import annotations

import base64
import json
import os
import time

import duckdb
import pytest

from app.cli import config_table, schema_files
from app.errors import BadEnvelope, BadParameter
from app.ingest.envelope import decode_unwrapped, decode_wrapped, is_unwrapped
from app.ingest.service import to_row
from app.query.page_token import PageToken, PageTokens
from app.records import Kind, Record, Rejection, columns
from app.settings import Settings, SettingsError, reference
from app.store.bigquery.schema import bigquery_schema
from app.store.duckdb.sql import ddl

# An ingest time as the batcher stamps one: now.
NOW = time.time_ns() // 1000


def wrapped(**message: object) -> bytes:
    base = {"messageId": "m", "publishTime": "2024-04-27T12:00:01.5Z", "data": ""}
    return json.dumps({"message": {**base, **message}, "subscription": "s"}).encode()


def test_both_spellings_of_message_fields() -> None:
    snake = json.dumps(
        {"message": {"message_id": "a", "publish_time": "2024-04-27T12:00:01Z", "data": ""}}
    ).encode()
    camel = wrapped(messageId="a", publishTime="2024-04-27T12:00:01Z")
    assert decode_wrapped(snake).message_id == decode_wrapped(camel).message_id == "a"
    assert decode_wrapped(snake).publish_time == decode_wrapped(camel).publish_time


def test_publish_time_keeps_microseconds() -> None:
    message = decode_wrapped(wrapped(publishTime="2024-04-27T12:00:01.123456Z"))
    assert message.publish_time % 1_000_000 == 123456


def test_data_is_base64_decoded_or_kept_raw() -> None:
    data = base64.b64encode(b'{"id": "x"}').decode()
    assert decode_wrapped(wrapped(data=data)).data == b'{"id": "x"}'
    bad = decode_wrapped(wrapped(data="%%%"))
    assert bad.data is None
    assert bad.raw_data == b"%%%"


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"null",
        b"{}",
        b'{"message": null}',
        b'{"message": {"publishTime": "2024-04-27T12:00:01Z"}}',
        b'{"message": {"messageId": "m", "publishTime": "2024-04-27T12:00:01Z", '
        b'"attributes": {"a": 1}}}',
        b'{"message": {"messageId": "m", "publishTime": "2024-04-27T12:00:01Z", "data": 5}}',
        b'{"message": {"messageId": "m"}}',
    ],
)
def test_not_an_envelope(body: bytes) -> None:
    with pytest.raises(BadEnvelope):
        decode_wrapped(body)


def test_too_many_attributes_is_not_pubsub() -> None:
    with pytest.raises(BadEnvelope, match="attributes"):
        decode_wrapped(wrapped(attributes={str(n): "v" for n in range(101)}))


def test_unwrapped_detection_and_errors() -> None:
    assert not is_unwrapped({"content-type": "application/json"})
    headers = {"x-goog-pubsub-message-id": "u", "x-goog-pubsub-publish-time": "later"}
    assert is_unwrapped(headers)
    with pytest.raises(BadEnvelope, match="publish-time"):
        decode_unwrapped(b"{}", headers)


def test_to_row_rejects_with_field_path() -> None:
    message = decode_wrapped(wrapped(data=base64.b64encode(b'{"id": ["x"]}').decode()))
    row = to_row(message, ingest_time=NOW, trace_id=None)
    assert isinstance(row, Rejection)
    assert "$.id" in row.reason
    ok = decode_wrapped(wrapped(data=base64.b64encode(b'{"id": "x", "data": {"k": [1]}}').decode()))
    record = to_row(ok, ingest_time=NOW, trace_id="ab" * 16)
    assert isinstance(record, Record)
    assert record.data == '{"k": [1]}'  # the producer's exact JSON text


def test_page_tokens_round_trip_and_refuse_tampering() -> None:
    tokens = PageTokens("k1")
    token = PageToken(123, "m-1", 456)
    text = tokens.encode(token)
    assert tokens.decode(text) == token
    with pytest.raises(BadParameter):
        PageTokens("other key").decode(text)
    for bad in ("", "x", text[:-3], "!" + text[1:], base64.urlsafe_b64encode(b"\0" * 40).decode()):
        with pytest.raises(BadParameter) as caught:
            tokens.decode(bad)
        assert caught.value.extra["parameter"] == "page_token"


def test_columns_come_from_the_row_structs() -> None:
    names = [c.name for c in columns(Record)]
    # Every field is a column but the message bytes a record carries to its store.
    assert names == [f for f in Record.__struct_fields__ if f != "received"]
    assert [c.name for c in columns(Rejection)] == list(Rejection.__struct_fields__)
    kinds = {c.name: c.kind for c in columns(Record)}
    assert kinds["data"] is Kind.JSON
    assert kinds["ingest_time"] is Kind.TIMESTAMP
    assert {c.name for c in columns(Record) if c.nullable} == {
        "timestamp",
        "subscription",
        "delivery_attempt",
        "trace_id",
        "schema",
    }
    assert {c["name"]: c["type"] for c in bigquery_schema(Rejection)}["data"] == "BYTES"


def test_duckdb_ddl_matches_the_row_definition() -> None:
    con = duckdb.connect()
    con.execute(ddl("records", Record))
    described = con.execute("DESCRIBE records").fetchall()
    assert [row[0] for row in described] == [c.name for c in columns(Record)]
    nullable = {row[0] for row in described if row[2] == "YES"}
    assert nullable == {c.name for c in columns(Record) if c.nullable}


def test_committed_schema_files_equal_what_the_code_derives() -> None:
    for path, text in schema_files().items():
        assert path.read_text() == text, f"{path} is stale: run `recordline schema --write`"


def test_the_configuration_page_table_is_current() -> None:
    from pathlib import Path

    page = (Path(__file__).parent.parent / "docs" / "configuration.md").read_text()
    assert config_table() in page, (
        "docs/configuration.md is stale: paste `recordline config --reference` into it"
    )


def test_settings_name_the_variable_on_error() -> None:
    with pytest.raises(SettingsError, match="PORT"):
        Settings.load({"PORT": "eighty"})
    assert Settings.load({"PORT": "9000"}).server.port == 9000
    assert all(var and doc for var, _default, doc in reference())


def test_the_dev_tools_are_not_part_of_the_service(capsys: pytest.CaptureFixture[str]) -> None:
    # The image installs app/ alone: there `recordline dev` says what it is.
    import sys

    from app.cli import main

    saved = {k: v for k, v in sys.modules.items() if k.startswith("recordline_dev")}
    try:
        for name in saved:
            del sys.modules[name]
        sys.modules["recordline_dev"] = None  # type: ignore[assignment]
        assert main(["dev"]) == 2
        assert "a development tool, not installed with the service" in capsys.readouterr().err
        # With its arguments too (argparse said "unrecognized arguments: --topic t").
        assert main(["publish", "--topic", "t", "--count", "3"]) == 2
        said = capsys.readouterr().err
        assert said.startswith("recordline publish: a development tool, not installed"), said
        # Nor listed as if they were there; `tail`, a reader's command, is the service's.
        with pytest.raises(SystemExit):
            main(["--help"])
        listed = capsys.readouterr().out
        assert "dev" not in listed.split("}")[0]
        assert "publish" not in listed
        with pytest.raises(SystemExit):
            main(["tail", "--help"])
        assert "--system" in capsys.readouterr().out
    finally:
        del sys.modules["recordline_dev"]
        sys.modules.update(saved)
    # Nor are they in its wheel or its image.
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    wheel = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["hatch"]["build"]
    assert wheel["targets"]["wheel"]["packages"] == ["app"]
    copied = {
        source
        for line in (root / "Dockerfile").read_text().splitlines()
        if line.startswith("COPY ") and "--from=" not in line
        for source in line.split()[1:-1]
    }
    assert copied == {"pyproject.toml", "uv.lock", "README.md", "app"}


@pytest.mark.slow
@pytest.mark.parametrize("dev_tools", [True, False], ids=["checkout", "wheel"])
def test_help_lists_the_commands_in_one_order_whatever_the_run(dev_tools: bool) -> None:
    # Without the dev tools (the wheel), they were listed in a set's order: a
    # different one in each process (string hashing is salted per process).
    import subprocess
    import sys

    script = (
        "import sys\n"
        + ("" if dev_tools else "sys.modules['recordline_dev'] = None\n")
        + "from app.cli import main\nmain(['--help'])\n"
    )
    listings = set()
    for seed in ("1", "2", "3", "4"):
        done = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={**os.environ, "PYTHONHASHSEED": seed},
        )
        listings.add(done.stdout)
    assert len(listings) == 1, listings
    commands = "serve,exporter,schema,config,sql,export,restore,typed,audit,replay,tables,tail"
    assert f"{{{commands}{',dev,publish' if dev_tools else ''}}}" in listings.pop()


@pytest.mark.slow
def test_the_service_commands_run_without_the_dev_tools_libraries() -> None:
    # `pip install -e .` without the dev group: recordline_dev imports, its
    # libraries (google-cloud-pubsub, rich) do not. The service's commands work.
    import subprocess
    import sys

    script = (
        "import sys\n"
        "for name in ('google.cloud.pubsub_v1', 'rich', 'rich.progress', 'rich.console'):\n"
        "    sys.modules[name] = None\n"
        "from app.cli import main\n"
        "assert main(['config', '--reference']) == 0\n"
        "assert main(['config']) == 0\n"
        "sys.exit(main(['dev']))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 2, done.stderr
    assert "| `RECORDLINE_STORE` |" in done.stdout
    assert "python3 dev.py dev" in done.stderr
    assert "Traceback" not in done.stderr
