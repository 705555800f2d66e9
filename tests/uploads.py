"""A push sent straight to the ASGI app, its body produced chunk by chunk as the app
asks for it: a body larger than any test would hold, or one cut off part way."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from app.http.head import Recordline

CHUNK = 64 * 1024


class Upload:
    """An ASGI request body of `size` bytes, produced chunk by chunk as the app asks."""

    def __init__(self, size: int) -> None:
        self._chunks = self._generate(size)
        self.pulled = 0

    @staticmethod
    def _generate(size: int) -> Iterator[bytes]:
        chunk = b"x" * CHUNK  # one buffer, sent again and again: 20 MB never exists at once
        for _ in range(size // CHUNK):
            yield chunk

    async def receive(self) -> dict[str, Any]:
        chunk = next(self._chunks, None)
        if chunk is None:
            return {"type": "http.request", "body": b"", "more_body": False}
        self.pulled += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": True}


async def post(
    app: Recordline,
    upload: Upload,
    *,
    headers: dict[str, str],
    query: str = "",
    path: str = "/pubsub/push",
) -> tuple[int, dict[str, str], bytes]:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8080),
        "state": {},
    }
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, upload.receive, send)  # type: ignore[arg-type]
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, body
