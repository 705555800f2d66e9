"""Storage Write throughput: StorageWriter alone against the fake in another process.

Each producer builds a row, submits it, awaits the outcome, and repeats, as a
push request does through the batcher. Prints rows/s and rows per request
for each added round-trip latency.

    uv run python bench/writer.py                      # 1,000 producers, 0 and 10 ms
    uv run python bench/writer.py --latency-ms 10 --in-flight 1
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import grpc
from google.cloud.bigquery_storage_v1.services.big_query_write import BigQueryWriteAsyncClient
from google.cloud.bigquery_storage_v1.services.big_query_write.transports import (
    BigQueryWriteGrpcAsyncIOTransport,
)

from app.records import Record
from app.store.bigquery.proto import RowEncoder
from app.store.bigquery.storage_write import DEFAULT_MAX_IN_FLIGHT, StorageWriter

ROOT = Path(__file__).resolve().parent.parent
TABLE = "projects/bench/datasets/recordline/tables/records"
# A 310-byte record, as in the ingest benchmarks (bench/harness.py).
DATA = '{"text": "Ejemplo de datos", "values": [1, 2, 3], "note": "' + "x" * 180 + '"}'


def start_fake(latency_ms: float) -> tuple[subprocess.Popen[str], str]:
    fake = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.bigquery.fake_storage_write",
            "--port",
            "0",
            "--latency-ms",
            str(latency_ms),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert fake.stdout is not None
    line = fake.stdout.readline()
    if not line.startswith("listening on "):
        fake.kill()
        raise SystemExit(f"fake did not start: {line!r}")
    return fake, line.removeprefix("listening on ").strip()


async def run(address: str, *, producers: int, seconds: float, in_flight: int) -> dict[str, float]:
    channel = grpc.aio.insecure_channel(address)
    client = BigQueryWriteAsyncClient(transport=BigQueryWriteGrpcAsyncIOTransport(channel=channel))
    encoder = RowEncoder(Record)
    writer = StorageWriter(client, TABLE, encoder.descriptor, max_in_flight=in_flight)
    await writer.start()
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    done = 0
    measuring = False
    stop = False

    async def producer(number: int) -> None:
        nonlocal done
        sequence = 0
        while not stop:
            now = time.time_ns() // 1000
            row = Record(
                message_id=f"{number}-{sequence}",
                publish_time=now,
                ingest_time=now,
                id=str(number),
                data=DATA,
                attributes='{"origin": "bench"}',
                subscription="projects/bench/subscriptions/recordline",
            )
            sequence += 1
            started = loop.time()
            await writer.append([encoder.encode(row)], loop.time() + 30)
            if measuring:
                done += 1
                latencies.append(loop.time() - started)

    tasks = [asyncio.create_task(producer(n)) for n in range(producers)]
    await asyncio.sleep(1.0)  # warm up: connect, fill the pipeline
    measuring = True
    requests_before, rows_before = writer.requests_sent, writer.rows_sent
    started = time.perf_counter()
    await asyncio.sleep(seconds)
    elapsed = time.perf_counter() - started
    measuring = False
    requests, sent = writer.requests_sent - requests_before, writer.rows_sent - rows_before
    stop = True
    await asyncio.gather(*tasks)
    await writer.close()
    await client.transport.close()
    latencies.sort()
    return {
        "rows_per_second": done / elapsed,
        "rows_per_request": sent / max(requests, 1),
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
    }


def _cpu_seconds(pid: int) -> float:
    # utime + stime of the fake, so a saturated server is not mistaken for a slow writer.
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench writer", description=__doc__.splitlines()[0])
    parser.add_argument("--producers", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--in-flight", type=int, default=DEFAULT_MAX_IN_FLIGHT)
    parser.add_argument("--latency-ms", type=float, action="append")
    parser.add_argument(
        "--loop", choices=["asyncio", "uvloop"], default="asyncio", help="uvicorn uses uvloop"
    )
    args = parser.parse_args(argv)
    if args.loop == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    print(
        f"{args.producers} producers, {args.in_flight} requests in flight, "
        f"{args.seconds:g} s each, {args.loop} loop"
    )
    for latency in args.latency_ms or [0.0, 10.0]:
        fake, address = start_fake(latency)
        try:
            cpu_before = _cpu_seconds(fake.pid)
            result = asyncio.run(
                run(
                    address,
                    producers=args.producers,
                    seconds=args.seconds,
                    in_flight=args.in_flight,
                )
            )
            result["fake_cpu"] = (_cpu_seconds(fake.pid) - cpu_before) / (args.seconds + 1.0)
        finally:
            fake.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                fake.wait(timeout=5)
        print(
            f"added latency {latency:>4g} ms: {result['rows_per_second']:>9,.0f} rows/s, "
            f"{result['rows_per_request']:6.1f} rows/request, "
            f"append p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms, "
            f"fake server {result['fake_cpu']:.0%} of a core"
        )
    print("targets: ≥ 40,000 rows/s with no added latency, ≥ 20,000 with 10 ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
