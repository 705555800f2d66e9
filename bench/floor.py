"""The floor under a follower's memory: an ASGI app that does nothing else, run by
uvicorn as `recordline serve` runs Recordline (uvloop, httptools).

    python -m bench.floor PORT

`HEAD /records` answers an offset; `GET /records?live=sse` sends its headers
and one event, then waits for the client to leave. What an idle SSE follower
costs here is what the server and the event loop hold for one open response
(its connection, parser, request cycle, task): every follower of an ASGI app
under this server costs at least that, whatever the app does.
"""

from __future__ import annotations

import sys
from typing import Any

OFFSET = (b"stream-next-offset", b"0")


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["method"] == "HEAD" or b"live=sse" not in scope["query_string"]:
        await send({"type": "http.response.start", "status": 200, "headers": [OFFSET]})
        await send({"type": "http.response.body", "body": b""})
        return
    headers = [(b"content-type", b"text/event-stream"), OFFSET]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    body = b'event: control\ndata: {"streamNextOffset":"0"}\n\n'
    await send({"type": "http.response.body", "body": body, "more_body": True})
    while (await receive())["type"] != "http.disconnect":
        pass


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        loop="uvloop",
        http="httptools",
        ws="none",
        lifespan="on",
        access_log=False,
        log_level="warning",
    )
