"""CPU of an idle instance while Spanner fails, against the same instance while it answers.

    python3 dev.py bench outage [--seconds 20] [--fault refuses|hangs|both]

One `recordline serve` on the serving tier (Google's Spanner emulator, the
BigQuery stand-in), idle: no pushes, no followers, its exporter and loops
running, `/readyz` asked once a second as Cloud Run's probe would. Its CPU
(user and system, from /proc) is measured over `--seconds` while Spanner
answers (the baseline, in the same run), then while it refuses connections
(the emulator killed) or hangs (stopped with SIGSTOP), each in a run of its
own. Then SIGTERM with a push in flight (its write hung or refused), timed to
the exit; the push's answer is shown beside it. The ratio is the outage's CPU over the
baseline's; the issue's bound is 0.1 of a core.

Before deadlines were given to every Spanner call, Spanner refusing
connections took 0.43 of a core of an idle instance here (its client
restarted streamed reads at once, forever), and SIGTERM did not end the
process (it waited for those threads). Then, with a push in flight while
Spanner hung, the exit took 8.6 s: the push's own 8 s write deadline, now cut
to what is left of the stop's budget.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from app.settings import QuerySettings
from bench.followers import cpu_seconds
from bench.harness import ROOT, free_port, table
from recordline_dev.serving import (
    BigQueryStandIn,
    SpannerEmulator,
    find_spanner_emulator,
    service_database,
)
from tests import rawhttp
from tests.bigquery.conftest import DATASET, PROJECT
from tests.conftest import envelope

SERVE = [sys.executable, "-m", "app.cli", "serve"]
# How long the instance is left to settle after a change before it is measured.
SETTLE_SECONDS = 3.0


def idle_cores(pid: int, url: str, seconds: float) -> tuple[float, float]:
    """CPU cores the process took over `seconds`, probed for readiness once a
    second; and the longest probe's answer (seconds)."""
    before = cpu_seconds(pid)
    slowest = 0.0
    ends = time.monotonic() + seconds
    while time.monotonic() < ends:
        asked = time.monotonic()
        with contextlib.suppress(httpx.HTTPError):
            httpx.get(f"{url}/readyz", timeout=10)
        slowest = max(slowest, time.monotonic() - asked)
        time.sleep(max(0.0, 1.0 - (time.monotonic() - asked)))
    return (cpu_seconds(pid) - before) / seconds, slowest


def one_run(fault: str, seconds: float) -> list[str]:
    with tempfile.TemporaryDirectory(prefix="recordline-outage-") as tmp_name:
        tmp = Path(tmp_name)
        emulator = SpannerEmulator(find_spanner_emulator(), log_path=tmp / "spanner.log")
        process: subprocess.Popen[bytes] | None = None
        try:
            database = service_database(
                emulator,
                project=PROJECT,
                instance="serving",
                database="recordline",
                window=QuerySettings().dedupe_window_seconds,
            )
            with BigQueryStandIn(PROJECT, DATASET, log_path=tmp / "bigquery.log") as fakes:
                port = free_port()
                url = f"http://127.0.0.1:{port}"
                env = {
                    **os.environ,
                    **fakes.settings,
                    "RECORDLINE_SERVING": database,
                    "SPANNER_EMULATOR_HOST": emulator.host,
                    # Its exporter too, as the figures before the exporter service had it.
                    "RECORDLINE_EXPORT_IN_SERVICE": "true",
                    "RECORDLINE_LOG_LEVEL": "ERROR",
                }
                with (tmp / "service.log").open("ab") as log:
                    process = subprocess.Popen(
                        [*SERVE, "--port", str(port)],
                        env=env,
                        cwd=ROOT,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                deadline = time.monotonic() + 60
                while True:
                    with contextlib.suppress(httpx.HTTPError):
                        if httpx.get(f"{url}/readyz").status_code == 200:
                            break
                    if time.monotonic() > deadline or process.poll() is not None:
                        raise SystemExit(f"the service did not start: see {tmp}/service.log")
                    time.sleep(0.1)
                time.sleep(SETTLE_SECONDS)
                healthy, _ = idle_cores(process.pid, url, seconds)
                if fault == "refuses":
                    os.killpg(emulator.process.pid, signal.SIGKILL)
                    emulator.process.wait(10)
                else:
                    os.killpg(emulator.process.pid, signal.SIGSTOP)
                time.sleep(SETTLE_SECONDS)
                failing, slowest = idle_cores(process.pid, url, seconds)
                # The stop's worst case: a push in flight, its row in a write
                # that Spanner does not answer.
                with socket.create_connection(("127.0.0.1", port), timeout=30) as push:
                    push.sendall(rawhttp.request("/pubsub/push", envelope({"id": "last"})))
                    client_port = push.getsockname()[1]
                    while not rawhttp.read_by_server(port, client_port):
                        time.sleep(0.01)
                    stopping = time.monotonic()
                    process.send_signal(signal.SIGTERM)
                    answer = push.recv(64).split(b" ")[1].decode()
                try:
                    process.wait(30)
                    stop = f"{time.monotonic() - stopping:.1f} s (push: {answer})"
                except subprocess.TimeoutExpired:
                    stop = "> 30 s"
        finally:
            if process is not None and process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(emulator.process.pid, signal.SIGCONT)  # a stopped one cannot stop
            emulator.stop()
    ratio = failing / healthy if healthy > 0 else float("inf")
    return [
        f"Spanner {fault}",
        f"{healthy:.3f}",
        f"{failing:.3f}",
        f"{ratio:.1f}x",
        f"{slowest:.1f} s",
        stop,
        "yes" if failing < 0.1 else "NO",
    ]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench outage", description=__doc__)
    parser.add_argument("--seconds", type=float, default=20.0, help="each measure (20)")
    parser.add_argument("--fault", choices=["refuses", "hangs", "both"], default="both")
    args = parser.parse_args(argv)
    faults = ["refuses", "hangs"] if args.fault == "both" else [args.fault]
    header = ["fault", "cores, answering", "cores, failing", "ratio", "slowest /readyz"]
    rows = [[*header, "SIGTERM to exit", "< 0.1 core"]]
    rows += [one_run(fault, args.seconds) for fault in faults]
    print(table(rows))
    print(
        "\ncores: CPU of one idle `recordline serve` (user + system, /proc) with /readyz "
        "probed once a second; ratio = failing / answering, in the same run."
    )
    return 0 if all(row[-1] == "yes" for row in rows[1:]) else 1
