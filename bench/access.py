"""The access record of a day of traffic: its lines and bytes as a store keeps them,
against what infra/fleet_cost.py prices.

    python3 dev.py bench access [--seconds 20] [--rate 10] [--followers 2]

`recordline serve` on DuckDB, behind Google's checks as deployed (a fake Google's keys:
each caller a service account's e-mail, as a line names it), is sent the shape of
traffic the cost model prices for a system: pushes at `--rate` a second, `--followers`
followers long-polling (`wait=`), a reader paging a filtered list every 5 s, an export
and a refused read a minute, for `--seconds`; then stopped (SIGTERM: the followers' sums
are written as it stops). The lines its store kept are read back from its
`access_record` table and measured by kind: a follower's sums, the reader's pages, the
exports, the refusals. A day of them is each kind's lines a day at that shape (a
follower's a minute, as one instance writes them; a page each 5 s; an export and a
refusal a minute) times the bytes each measured (its JSON, the key and columns beside
it). The
ratio of a line's bytes to the model's ACCESS_KEPT_LINE_BYTES must be at most 1 (a
test runs this at a small size and holds it to that).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import duckdb
import httpx

from bench.harness import SERVE, free_port, push_body, server, table
from infra.fleet_cost import (
    ACCESS_KEPT_LINE_BYTES,
    ACCESS_KEPT_MONTHS,
    BIGQUERY_ACTIVE_GIB_MONTH,
    GIB,
    PHYSICAL_RATIO,
)
from tests.auth.fake_google import READ_AUDIENCE, FakeGoogle

# Callers as a deployment names them: service accounts' e-mails.
FOLLOWER = "orders-follower-{n}@orders-prod.iam.gserviceaccount.com"
READER = "analytics-reader@orders-prod.iam.gserviceaccount.com"
STRANGER = "someone-else@another-project.iam.gserviceaccount.com"
PUSH_TOKEN = "a-push-secret-long-enough-for-the-bench"
# What the store keeps beside a line's JSON: its time (8 bytes), id (25 characters),
# action, principal and status, as BigQuery's logical storage bills them.
KEY_BYTES = 8 + 2 + 25 + 2 + 6 + 8
# Lines a day of each kind, as the run sends them: a follower's sums a minute (for each
# follower), the reader's page every READ_SECONDS, an export and a refusal a minute.
READ_SECONDS = 5
LINES_A_DAY = {"follower": 1440, "reader": 86_400 // READ_SECONDS, "export": 1440, "refusal": 1440}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench access", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rate", type=float, default=10.0, help="pushes a second")
    parser.add_argument("--followers", type=int, default=2)
    args = parser.parse_args(argv)
    found = measure(args.seconds, args.rate, args.followers)
    rows = [["kind", "lines in the run", "bytes each (mean, most)", "lines a day", "bytes a day"]]
    for kind, sizes in found["kinds"].items():
        a_day = LINES_A_DAY[kind] * (args.followers if kind == "follower" else 1)
        mean = sum(sizes) / len(sizes) if sizes else 0.0
        most = f"{mean:.0f}, {max(sizes)}" if sizes else "-"
        rows.append([kind, str(len(sizes)), most, f"{a_day:,.0f}", f"{a_day * mean:,.0f}"])
    print(table(rows))
    if not found["most"]:
        print("no line was kept", file=sys.stderr)
        return 1
    print(
        f"\na line kept: {found['mean']:.0f} bytes on average, {found['most']} at most; "
        f"ratio to the model's ACCESS_KEPT_LINE_BYTES ({ACCESS_KEPT_LINE_BYTES}): "
        f"{found['ratio']:.2f}"
    )
    print(
        f"a day of this traffic: {found['day_bytes'] / 1e6:.1f} MB of lines; kept 400 days "
        f"in BigQuery, ${found['month']:.2f} a month"
    )
    return 0


def measure(seconds: float, rate: float = 10.0, followers: int = 2) -> dict[str, Any]:
    """The lines a run kept, by kind (their sizes), a day of them, and what a month of
    keeping them costs; `ratio`: the largest line to the model's ACCESS_KEPT_LINE_BYTES."""
    google = FakeGoogle().start()
    try:
        with tempfile.TemporaryDirectory() as directory:
            path = Path(directory) / "access.duckdb"
            traffic(google, path, seconds, rate, followers)
            with duckdb.connect(str(path), read_only=True) as con:
                kept = con.execute(
                    "SELECT principal, status, entry::VARCHAR, "
                    "json_extract(entry, '$.requests') IS NOT NULL FROM access_record"
                ).fetchall()
    finally:
        google.stop()
    kinds: dict[str, list[int]] = {kind: [] for kind in LINES_A_DAY}
    for principal, status, entry, summed in kept:
        size = len(entry.encode()) + KEY_BYTES + len((principal or "").encode())
        if summed:
            kinds["follower"].append(size)
        elif status >= 400:
            kinds["refusal"].append(size)
        elif '"action":"export"' in entry:
            kinds["export"].append(size)
        else:
            kinds["reader"].append(size)
    day_bytes = sum(
        LINES_A_DAY[kind] * (followers if kind == "follower" else 1) * sum(sizes) / len(sizes)
        for kind, sizes in kinds.items()
        if sizes
    )
    every = [size for sizes in kinds.values() for size in sizes]
    kept_gib = day_bytes * 30.44 * ACCESS_KEPT_MONTHS / PHYSICAL_RATIO / GIB
    return {
        "kinds": kinds,
        "day_bytes": day_bytes,
        "mean": sum(every) / len(every) if every else 0.0,
        "most": max(every, default=0),
        "ratio": max(every, default=0) / ACCESS_KEPT_LINE_BYTES,
        "month": kept_gib * BIGQUERY_ACTIVE_GIB_MONTH,
    }


def traffic(google: FakeGoogle, path: Path, seconds: float, rate: float, followers: int) -> None:
    """The run: the service on `path`, sent the system's traffic for `seconds`, stopped."""
    port = free_port()
    env = {
        "RECORDLINE_STORE": f"duckdb:{path}",
        "RECORDLINE_PUSH_TOKEN": PUSH_TOKEN,
        "RECORDLINE_READ_AUDIENCE": READ_AUDIENCE,
        "RECORDLINE_READ_PRINCIPALS": ",".join(
            [*(FOLLOWER.format(n=n) for n in range(followers)), READER]
        ),
        "RECORDLINE_OIDC_CERTS_URL": google.certs_url,
    }

    def bearer(email: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {google.mint(aud=READ_AUDIENCE, email=email)}"}

    with server([*SERVE, "--port", str(port)], port, env=env) as service:
        url = service.url
        stop = time.monotonic() + seconds
        done = threading.Event()

        def follow(n: int) -> None:
            # Each follower its own identity: the sums of one who follows the same list
            # twice are one line.
            token = None
            headers = bearer(FOLLOWER.format(n=n))
            with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
                while not done.is_set():
                    params = {"wait": "5", **({"page_token": token} if token else {})}
                    try:
                        page = client.get("/v1/records", params=params).json()
                    except httpx.HTTPError:
                        return  # the service stopped
                    token = page.get("next_page_token") or token

        threads = [
            threading.Thread(target=follow, args=(n,), daemon=True) for n in range(followers)
        ]
        for thread in threads:
            thread.start()
        with httpx.Client(base_url=url) as client:
            pushes = 0
            next_read = next_export = time.monotonic()
            while time.monotonic() < stop:
                pushed = client.post(
                    "/pubsub/push", json=push_body(pushes), params={"token": PUSH_TOKEN}
                )
                pushed.raise_for_status()
                pushes += 1
                now = time.monotonic()
                if now >= next_read:
                    client.get(
                        "/v1/records",
                        params={"since": "10m", "limit": "100", "where": "data >= 0"},
                        headers=bearer(READER),
                    )
                    next_read = now + READ_SECONDS
                if now >= next_export:
                    client.get("/v1/export/records", params={"since": "1m"}, headers=bearer(READER))
                    client.get("/v1/records", headers=bearer(STRANGER))
                    next_export = now + 60
                time.sleep(max(0.0, 1 / rate - (time.monotonic() - now)))
        # Each follower's poll under way is answered as the service stops.
        done.set()
    # The server stopped (SIGTERM): the followers' sums were written as it stopped.
    for thread in threads:
        thread.join(timeout=10)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
