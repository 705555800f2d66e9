"""A cell's ops job's commands (infra/terraform/ops.tf): `recordline audit` and `recordline
replay`, each for one system (`--system`), reaching the cell at RECORDLINE_URL under
the system's paths with ID tokens for RECORDLINE_READ_AUDIENCE that google-auth mints
from the metadata server, as on Cloud Run (here a stand-in of the metadata server on
a loopback port, handing out the fake Google's tokens for the operator account)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from app.cell.app import create_cell
from app.commands.replay import dead_letters_of
from app.settings import Settings
from tests.auth.fake_google import FakeGoogle
from tests.conftest import envelope, served

CELL_URL = "https://cell-1-123.europe-west1.run.app"
READ_AUDIENCE = f"{CELL_URL}/v1"
OPERATOR = "cell-operator@recordline-prod.iam.gserviceaccount.com"
SYSTEMS = {
    name: {"store": "memory:", "operator_principals": OPERATOR, "read_principals": OPERATOR}
    for name in ("orders", "beta")
}


class MetadataServer:
    """Google's metadata server as google-auth asks it for an ID token: its ping, and
    the account's identity endpoint, which answers the fake Google's token for
    OPERATOR and the audience asked. What it was asked is kept."""

    def __init__(self, google: FakeGoogle) -> None:
        self.asked: list[dict[str, list[str]]] = []
        metadata = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path, _, query = self.path.partition("?")
                body = b""
                account = "/computeMetadata/v1/instance/service-accounts/default/"
                if path.startswith(account) and self.headers.get("Metadata-Flavor") != "Google":
                    self.send_response(403)
                    self.end_headers()
                    return
                if path == account:  # who the instance runs as
                    body = json.dumps({"email": OPERATOR, "aliases": ["default"]}).encode()
                if path == f"{account}identity":
                    asked = urllib.parse.parse_qs(query)
                    metadata.asked.append(asked)
                    body = google.mint(aud=asked["audience"][0], email=OPERATOR).encode()
                self.send_response(200)
                self.send_header("Metadata-Flavor", "Google")
                kind = "application/json" if path == account else "application/text"
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.address = f"127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def google() -> Iterator[FakeGoogle]:
    fake = FakeGoogle().start()
    yield fake
    fake.stop()


@pytest.fixture
def metadata(google: FakeGoogle) -> Iterator[MetadataServer]:
    server = MetadataServer(google)
    yield server
    server.stop()


def job_environment(tmp_path: Path, url: str, metadata: MetadataServer) -> dict[str, str]:
    """What the cell's ops job runs with (ops.tf): the cell, its systems' file, its URL
    and read audience; its credentials are the metadata server's, nothing else."""
    systems = tmp_path / "systems.json"
    systems.write_text(json.dumps(SYSTEMS))
    kept = {"PATH", "PYTHONPATH", "SYSTEMROOT"}
    return {
        **{k: v for k, v in os.environ.items() if k in kept},
        "HOME": str(tmp_path),
        "CLOUDSDK_CONFIG": str(tmp_path / "gcloud"),
        "GCE_METADATA_HOST": metadata.address,
        "GCE_METADATA_IP": metadata.address,
        "RECORDLINE_CELL": "cell-1",
        "RECORDLINE_SYSTEMS": f"@{systems}",
        "RECORDLINE_LOG_FORMAT": "json",
        "RECORDLINE_URL": url,
        "RECORDLINE_READ_AUDIENCE": READ_AUDIENCE,
    }


def recordline(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def cell(google: FakeGoogle) -> Any:
    return create_cell(
        Settings.load(
            {
                "RECORDLINE_CELL": "cell-1",
                "RECORDLINE_SYSTEMS": json.dumps(SYSTEMS),
                "RECORDLINE_READ_AUDIENCE": f"{READ_AUDIENCE},{CELL_URL}",
                "RECORDLINE_OIDC_CERTS_URL": google.certs_url,
            }
        )
    )


@pytest.mark.slow
async def test_audit_asks_its_systems_paths_with_a_token_the_metadata_server_minted(
    google: FakeGoogle, metadata: MetadataServer, tmp_path: Path
) -> None:
    async with served(cell(google)) as client:
        env = job_environment(tmp_path, str(client.base_url).rstrip("/"), metadata)
        done = await asyncio.to_thread(recordline, env, "audit", "--system=orders", "--since=1h")
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("hour ")
        # The token was minted for the cell's read audience, naming the account.
        assert metadata.asked == [{"audience": [READ_AUDIENCE], "format": ["full"]}]
        # Without it, the cell's read guard refuses: the token is what let it in.
        refused = await client.get(
            "/systems/orders/v1/audit", params={"since": "2026-01-01T00:00:00Z"}
        )
        assert refused.status_code == 401
        # In a cell, a command names its system, one of the cell's.
        done = await asyncio.to_thread(recordline, env, "audit", "--since=1h")
        assert done.returncode == 2
        assert "name the system (--system=SYSTEM; the cell's: orders, beta)" in done.stderr
        done = await asyncio.to_thread(recordline, env, "audit", "--system=gamma", "--since=1h")
        assert done.returncode == 2
        assert "--system=gamma: no such system in RECORDLINE_SYSTEMS" in done.stderr


@pytest.mark.slow
async def test_replay_reaches_its_system_alone_as_the_operator_account(
    google: FakeGoogle, metadata: MetadataServer, tmp_path: Path
) -> None:
    async with served(cell(google)) as client:
        # A payload each system rejects (no record id): one rejection in each.
        for system in ("orders", "beta"):
            bad = envelope({"data": "no id"}, message_id=f"{system}-bad")
            answer = await client.post(f"/systems/{system}/pubsub/push", json=bad)
            assert answer.status_code == 204, answer.text
        env = job_environment(tmp_path, str(client.base_url).rstrip("/"), metadata)
        argv = ("replay", "rejected", "--system=orders", "--dry-run")
        done = await asyncio.to_thread(recordline, env, *argv)
        assert done.returncode == 0, done.stderr
        # orders' one rejection, sent back (its validation rejects it again); not beta's.
        assert "replay rejected: 0 stored, 1 rejected" in done.stderr
        assert {a["audience"][0] for a in metadata.asked} == {READ_AUDIENCE}
        # With a token of no operator of the system, it says so and stops.
        done = await asyncio.to_thread(
            recordline, env, *argv, "--token", google.mint(aud=READ_AUDIENCE, email="x@y.z")
        )
        assert done.returncode == 1
        assert "replay needs an operator's token" in done.stderr


def test_a_cells_dead_letters_are_its_systems_replay_subscription() -> None:
    loaded = Settings.load(
        {
            "RECORDLINE_CELL": "cell-1",
            "RECORDLINE_SYSTEMS": json.dumps(
                {"orders": {"store": "bigquery://recordline-prod/orders"}, "beta": SYSTEMS["beta"]}
            ),
        }
    )
    # The subscription Terraform makes for the system (modules/system/pubsub.tf), in its
    # dataset's project.
    assert dead_letters_of(loaded, "orders", None) == (
        "projects/recordline-prod/subscriptions/orders-dead-letter-replay"
    )
    given = "projects/p/subscriptions/elsewhere"
    assert dead_letters_of(loaded, "orders", given) == given
