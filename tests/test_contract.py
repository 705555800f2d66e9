"""The OpenAPI document is the contract: schemathesis, with every check and every
phase (examples, coverage, fuzzing, stateful through the document's links), against
`recordline serve` on a DuckDB file, finds nothing the service does that the document
does not say.

The run is bounded (CONTRACT_EXAMPLES cases per operation and phase, about half a
minute here); `python3 dev.py fuzz` is where longer runs belong. What the run sends
or counts differently is in tests/contract_hooks.py, each with its reason.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests import tuned
from tests.processes import ROOT, Terminal, free_port, wait_ready

SCHEMATHESIS = str(Path(sys.executable).with_name("schemathesis"))
# Cases per operation in each phase: enough for coverage's boundaries and a few
# hundred requests in all, inside the suite's budget.
CONTRACT_EXAMPLES = int(os.environ.get("CONTRACT_EXAMPLES", "25"))
RUN_SECONDS = 300
# The run's seed: the same cases on every machine, so that the suite passes or fails
# on what the service does, not on which links a random run happened to follow.
# CONTRACT_SEED=random (or any number) runs other cases.
CONTRACT_SEED = os.environ.get("CONTRACT_SEED", "20261126")


def push(
    url: str, message_id: str, payload: bytes, attributes: dict[str, str] | None = None
) -> None:
    envelope = {
        "message": {
            "data": base64.b64encode(payload).decode(),
            "messageId": message_id,
            "publishTime": "2024-04-27T12:00:01Z",
            "attributes": attributes or {},
        }
    }
    assert httpx.post(f"{url}/pubsub/push", json=envelope, timeout=30).status_code == 204


@pytest.mark.slow
def test_the_service_does_what_its_openapi_document_says(
    tmp_path: Path, terminals: list[Terminal]
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    store = f"duckdb://{tmp_path / 'contract.duckdb'}"
    # A stream's long-poll that finds nothing is answered at its end: soon, in this run.
    soon = {"query": {"long_poll_seconds": 0.5}}
    server = Terminal(
        tuned.argv(soon, "--port", str(port), "--store", store), env=dict(os.environ), cwd=tmp_path
    )
    terminals.append(server)
    wait_ready(url, server)
    # Rows for the links to lead to: records (one id with a slash), and a rejection.
    for n, record_id in enumerate(("r-1", "orders/2", "r-3")):
        push(url, f"m-{n}", json.dumps({"id": record_id, "data": {"n": n}}).encode())
    push(url, "m-bad", b"not json")
    # A producer for the ledger's links: two of its sequences, one missing between.
    for seq in (1, 3):
        push(
            url,
            f"p-{seq}",
            json.dumps({"id": f"p-{seq}", "data": {}}).encode(),
            {
                "recordline-producer": "orders/writer",
                "recordline-epoch": "1",
                "recordline-seq": str(seq),
            },
        )

    done = subprocess.run(
        [
            SCHEMATHESIS,
            "run",
            f"{url}/docs/openapi.json",
            "--checks",
            "all",
            "--phases",
            "examples,coverage,fuzzing,stateful",
            "--max-examples",
            str(CONTRACT_EXAMPLES),
            "--workers",
            "1",
            *(["--seed", CONTRACT_SEED] if CONTRACT_SEED != "random" else []),
            "--request-timeout",
            "10",
            "--report",
            "junit",
            "--report-dir",
            str(tmp_path / "report"),
        ],
        # Its cache goes where it runs: not into the checkout.
        cwd=tmp_path,
        env={
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "SCHEMATHESIS_HOOKS": "tests.contract_hooks",
            "NO_COLOR": "1",
        },
        capture_output=True,
        text=True,
        timeout=RUN_SECONDS,
        check=False,
    )
    said = done.stdout + done.stderr
    assert done.returncode == 0, said[-12000:]
    # Every operation was tested, every phase ran, and the links were followed.
    document = httpx.get(f"{url}/docs/openapi.json", timeout=30).json()
    operations = sum(len(methods) for methods in document["paths"].values())
    assert f"Tested: {operations}" in said, said[-4000:]
    # Every operation reaches the service's logic, but two that this deployment answers
    # 404 by design: the embedded store keeps no dead letters (Pub/Sub's subscription
    # does), and a service naming no topic publishes no test message.
    missing = re.search(r"Missing test data: .*?\n\n((?:\s+- .+\n)+)", said)
    named = set(re.findall(r"- (\S+ \S+)", missing[1])) if missing else set()
    assert named <= {"GET /v1/dead-letters", "POST /v1/publish"}, said[-4000:]
    for phase in ("Examples", "Coverage", "Fuzzing", "Stateful"):
        assert f"{phase} (in" in said, (phase, said[-4000:])
    assert "API Links:" in said, said[-4000:]
    assert " 0 covered" not in said, said[-4000:]
    assert "Traceback" not in server.output, server.output[-4000:]
