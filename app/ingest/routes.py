"""The ingest routes: POST /pubsub/push and POST /v1/replay.

Thin: each decodes, calls one service, and lets the acknowledgement contract
(app.errors, app.problems) choose the status. `create_app` puts each list
behind the guards of who may call it.
"""

from __future__ import annotations

from typing import Any

from litestar import Request, post
from litestar.di import NamedDependency
from litestar.params import JSONBody
from litestar.status_codes import HTTP_204_NO_CONTENT

from app.ingest.envelope import decode_unwrapped, decode_wrapped, is_unwrapped
from app.ingest.replay import MAX_REPLAY_MESSAGES, Replay, ReplayAnswer, ReplayRequest
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


@post(
    "/v1/replay",
    status_code=200,
    summary="Replay messages through today's validation (operators only)",
    description=(
        f"Up to {MAX_REPLAY_MESSAGES} messages as Pub/Sub delivered them, each under its "
        "original message id, publish time and attributes. Each is stored as a record if "
        "today's validation accepts it, kept rejected if not, and skipped if a record with "
        "its message id exists already. Answers once every stored row is durable; a 503 "
        "means retry the request. `dry_run` says what would happen and stores nothing."
    ),
    tags=["operations"],
)
async def replay(data: JSONBody[ReplayRequest], replayer: NamedDependency[Replay]) -> ReplayAnswer:
    return await replayer.replay(data)


# Called by the push subscription.
PUSH_ROUTES = [push]
# Called by operators.
REPLAY_ROUTES = [replay]
