"""The docs' examples pass the service's own validation: the curl commands, every
setting written as `VARIABLE=value`, the `systems` examples' readers and operators
as Terraform hands them to the service, and the reasons the README quotes."""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import hcl2
import pytest
from litestar.testing import TestClient

from app.asgi import create_app
from app.auth.guards import Auth
from app.cell.app import create_cell
from app.http.head import Recordline
from app.settings import Settings, every_setting
from app.store.duckdb.store import DuckDBStore
from tests.conftest import envelope, settings

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "infra" / "README.md"]
TERRAFORM = ROOT / "infra" / "terraform"
# What the docs write for a value to fill in, and a value of that shape.
PLACEHOLDERS = {
    "http://host:port": "http://127.0.0.1:9050",
    "host:port": "127.0.0.1:9010",
}


def code_blocks(path: Path, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", path.read_text(), flags=re.DOTALL)


def commands(path: Path) -> Iterator[str]:
    """Each shell command of the file's `sh` blocks, its continuation lines joined."""
    return shell_commands(path.read_text())


def shell_commands(text: str) -> Iterator[str]:
    """Each shell command of the text's `sh` blocks, in order, continuation lines joined."""
    for block in re.findall(r"```sh\n(.*?)```", text, flags=re.DOTALL):
        for command in block.replace("\\\n", " ").splitlines():
            command = command.split("  #", 1)[0].strip()  # a comment after the command
            if command and not command.startswith("#"):
                yield command


def curls() -> list[tuple[str, list[str]]]:
    found = []
    for path in DOCS:
        for command in commands(path):
            if command.startswith("curl "):
                found.append((path.name, shlex.split(command)))
    return found


@pytest.fixture
def client() -> Iterator[TestClient[Recordline]]:
    # A stream the docs open (the tour's follower) ends after half a second here.
    app = create_app(settings(RECORDLINE_STREAM_SECONDS="0.5"), store=DuckDBStore(":memory:"))
    with TestClient(app) as client:
        yield client


def doc_systems() -> dict[str, str]:
    """The system each doc's commands name (its `SYSTEM=name` line), by doc."""
    found = {}
    for path in DOCS:
        names = set(re.findall(r"^SYSTEM=([a-z][a-z0-9-]*)\b", path.read_text(), flags=re.M))
        if names:
            (found[path.name],) = names
    return found


@pytest.fixture
def cell() -> Iterator[TestClient[Any]]:
    """A cell (app/cell) serving the systems the docs' commands name, each on a store of
    its own, and a system they do not name."""
    systems = {name: {"store": "memory:"} for name in {*doc_systems().values(), "other"}}
    loaded = Settings.load(
        {
            "RECORDLINE_CELL": "cell-1",
            "RECORDLINE_SYSTEMS": json.dumps(systems),
            "RECORDLINE_STREAM_SECONDS": "0.5",
        }
    )
    stores = {name: (lambda: DuckDBStore(":memory:")) for name in systems}
    with TestClient(create_cell(loaded, stores=stores)) as client:
        yield client


@pytest.mark.slow
def test_every_curl_in_the_docs_is_answered_as_the_docs_say(
    client: TestClient[Recordline], cell: TestClient[Any]
) -> None:
    found = curls()
    assert len(found) >= 5  # the quick start's four and the runbook's read
    systems = doc_systems()
    asked_cell = 0
    for source, words in found:
        method, body, headers, url = "GET", None, {}, ""
        # `-G --data-urlencode name=value`: the value percent-encoded into the query.
        encoded: list[str] = []
        options = iter(words[1:])
        for word in options:
            if word == "-G":
                continue
            if word == "--data-urlencode":
                name, _, value = next(options).partition("=")
                encoded.append(f"{name}={quote(value, safe='')}")
            elif word == "-X":
                method = next(options)
            elif word == "-d":
                body = next(options)
            elif word == "-H":
                name, _, value = next(options).partition(":")
                if "$(" not in value:  # a token minted by gcloud: not here
                    headers[name.strip()] = value.strip()
            elif word in ("-w", "-o"):
                next(options)
            elif not word.startswith("-"):
                url = word
        # The service is wherever the docs say ($URL, localhost:8080); the path is ours.
        parts = urlsplit(url if "://" in url else f"http://{url}")
        query = "&".join(filter(None, [parts.query, *encoded]))
        target = parts.path + (f"?{query}" if query else "")
        # A system's path in a cell (the runbook's) is asked of a cell, for the system
        # the doc's `SYSTEM=` line names.
        service, prefix = client, ""
        if target.startswith("/systems/$SYSTEM/"):
            assert source in systems, (source, "names no SYSTEM= for", url)
            prefix = f"/systems/{systems[source]}"
            target = prefix + target.removeprefix("/systems/$SYSTEM")
            service = cell
            asked_cell += 1
        answer = service.request(method, target, content=body, headers=headers)
        assert answer.status_code in (200, 204), (source, url, answer.text)
        if target.startswith(f"{prefix}/pubsub/push"):
            # The example is a valid record, not a rejection.
            message_id = re.search(r'"messageId":"([^"]+)"', body or "")
            assert message_id is not None
            status = service.get(f"{prefix}/v1/messages/{message_id[1]}").json()
            assert status["status"] == "stored", status
    assert asked_cell >= 3  # the runbook's reads of a system


def test_a_cells_path_for_a_system_it_does_not_serve_is_refused(cell: TestClient[Any]) -> None:
    # What the examples above rely on: the cell answers a system's path from that
    # system's app, and no other path of that shape.
    assert cell.get("/systems/missing/v1/records?limit=1").status_code == 404
    assert cell.get("/v1/records?limit=1").status_code == 404
    assert cell.get("/systems/other/v1/records?limit=1").status_code == 200


def settings_written() -> list[tuple[str, str, str]]:
    """(doc, variable, value) for every `VARIABLE=value` of a setting in the docs."""
    variables = {setting.var for setting in every_setting()}
    found = []
    for path in DOCS:
        text = path.read_text()
        for match in re.finditer(r"\b([A-Z][A-Z0-9_]+)=([^\s`'\",)]+)", text):
            variable, value = match.groups()
            if variable not in variables:
                continue
            for placeholder, example in PLACEHOLDERS.items():
                if value == placeholder:
                    value = example
            # `A|B|C` lists the choices: each must be one.
            for choice in value.split("|"):
                found.append((path.name, variable, choice))
    return found


@pytest.mark.slow
def test_every_setting_the_docs_write_is_accepted() -> None:
    written = settings_written()
    assert {"RECORDLINE_ID_FIELD", "PUBSUB_EMULATOR_HOST", "OTEL_TRACES_EXPORTER"} <= {
        variable for _, variable, _ in written
    }
    for source, variable, value in written:
        Settings.load({variable: value})  # raises SettingsError, naming it
        assert source


def systems_examples() -> list[tuple[str, dict[str, object]]]:
    """Each system of the docs' examples: a cell's file (JSON) or HCL."""
    found = []
    for path in DOCS:
        for block in code_blocks(path, "hcl"):
            if "systems = {" in block:
                parsed = hcl2.loads(block)
                for name, system in parsed["systems"].items():
                    found.append((f"{path.name}: {name}", system))
        for block in code_blocks(path, "json"):
            if '"systems"' in block:
                for name, system in json.loads(block)["systems"].items():
                    found.append((f"{path.name}: {name}", system))
    return found


def unquoted(values: object) -> list[str]:
    assert isinstance(values, list)
    return [str(v).strip('"') for v in values]


def test_the_systems_examples_readers_and_operators_are_what_the_service_takes() -> None:
    found = systems_examples()
    assert any("readers" in system for _, system in found)
    # Terraform's mapping from IAM members to the service's principals (the cell's
    # systems' file, cell.tf), and the check it makes at plan (variables.tf): the test
    # follows both.
    mapping = 'trimprefix(trimprefix(m, "user:"), "serviceAccount:")'
    assert mapping in (TERRAFORM / "cell.tf").read_text()
    planned = re.compile(r"^(user|serviceAccount|domain):[^\s,]+$")
    assert planned.pattern.replace("\\", "\\\\") in (TERRAFORM / "variables.tf").read_text()
    for where, system in found:
        for key, variable in (
            ("readers", "RECORDLINE_READ_PRINCIPALS"),
            ("operators", "RECORDLINE_OPERATOR_PRINCIPALS"),
        ):
            members = unquoted(system.get(key, []))
            assert all(planned.match(m) for m in members), (where, members)
            principals = ",".join(
                m.removeprefix("user:").removeprefix("serviceAccount:") for m in members
            )
            if principals:
                loaded = Settings.load(
                    {
                        "RECORDLINE_STORE": "memory:",
                        "RECORDLINE_READ_AUDIENCE": "https://recordline.example.com/v1",
                        "RECORDLINE_READ_PRINCIPALS": "reader@example.com",
                        variable: principals,
                    }
                )
                Auth.from_settings(loaded)


def test_a_group_is_refused_by_terraform_and_by_the_service_saying_why() -> None:
    with pytest.raises(ValueError, match="group:"):
        Settings.load({"RECORDLINE_READ_PRINCIPALS": "group:readers@example.com"})


@pytest.mark.slow
def test_the_reasons_the_docs_quote_are_the_ones_given() -> None:
    page = (ROOT / "docs" / "schemas.md").read_text()
    quoted = "`$.order_id` (the record id, RECORDLINE_ID_FIELD): missing"
    assert quoted in page
    app = create_app(
        settings(RECORDLINE_ID_FIELD="order_id", RECORDLINE_TIME_FIELD="meta.created_at"),
        store=DuckDBStore(":memory:"),
    )
    with TestClient(app) as client:
        assert client.post("/pubsub/push", json=envelope({"meta": {}})).status_code == 204
        assert quoted in client.get("/v1/messages/m-1").json()["reason"]


def test_every_page_the_readme_links_exists() -> None:
    """The README is the front door: each of its links into the repository leads
    somewhere (the site's own links and anchors are checked by its strict build)."""
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme)
    local = [link for link in links if "://" not in link]
    assert {"docs/security.md", "docs/operations.md", "docs/configuration.md"} <= set(local)
    missing = [link for link in local if not (ROOT / link).exists()]
    assert missing == []
