"""A minimal HTTP/1.1 client for load in tests.

httpx spends ~5 ms of CPU per request on this machine, so a thousand truly
concurrent pushes would measure the client, not the server. This sends
prebuilt requests on raw keep-alive connections and reads only the status line
and headers (a push answer has no body, or a short problem document).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
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
        return await status(reader)
    finally:
        writer.close()


async def status(reader: asyncio.StreamReader) -> int:
    """The status of the answer the connection reads next (its body read and dropped)."""
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


def read_by_server(port: int, client_port: int) -> bool:
    """Whether the server on 127.0.0.1:`port` has read every byte the client at
    `client_port` sent it: its socket's receive queue (Linux's /proc/net/tcp) is
    empty. A request read is one the server is answering, stop or no stop."""
    local, remote = f"0100007F:{port:04X}", f"0100007F:{client_port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == local and fields[2] == remote:
            return int(fields[4].split(":")[1], 16) == 0
    return False
