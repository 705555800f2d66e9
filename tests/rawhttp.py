"""A minimal HTTP/1.1 client for load in tests.

httpx spends ~5 ms of CPU per request on this machine, so a thousand truly
concurrent pushes would measure the client, not the server. This sends
prebuilt requests on raw keep-alive connections and reads only the status line
and headers (a push answer has no body, or a short problem document).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any


def request(path: str, body: Any, headers: dict[str, str] | None = None) -> bytes:
    data = json.dumps(body).encode()
    head = [
        f"POST {path} HTTP/1.1",
        "Host: 127.0.0.1",
        "Content-Type: application/json",
        f"Content-Length: {len(data)}",
        *(f"{k}: {v}" for k, v in (headers or {}).items()),
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + data


async def send(host: str, port: int, raw: bytes) -> int:
    """One request on its own connection; the answer's status code."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(raw)
        await writer.drain()
        return await _status(reader)
    finally:
        writer.close()


async def _status(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.lower() == "content-length":
            length = int(value)
    if length:
        await reader.readexactly(length)
    return status
