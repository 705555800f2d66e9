"""POST /pubsub/push: decode, hand over, answer with the acknowledgement contract."""

from __future__ import annotations

from typing import Any

from litestar import Request, post
from litestar.di import NamedDependency
from litestar.status_codes import HTTP_204_NO_CONTENT

from app.ingest.envelope import decode_unwrapped, decode_wrapped, is_unwrapped
from app.ingest.service import Ingest
from app.telemetry import push_received


@post(
    "/pubsub/push",
    status_code=HTTP_204_NO_CONTENT,
    summary="Receive one Pub/Sub push delivery",
    description=(
        "Answers 204 once the message is durably stored, as a record or, when its payload is "
        "invalid, as a rejection. 503 with Retry-After means it was not stored: Pub/Sub "
        "redelivers. 400 means the body is not a push delivery at all."
    ),
    tags=["ingest"],
)
async def push(request: Request[Any, Any, Any], ingest: NamedDependency[Ingest]) -> None:
    body = await request.body()
    headers = request.headers
    message = decode_unwrapped(body, headers) if is_unwrapped(headers) else decode_wrapped(body)
    await ingest.accept(message, trace_id=push_received(message, len(body), headers))
