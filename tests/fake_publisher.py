"""A fake of Pub/Sub's Publisher API: Publish only, over real gRPC.

The service's own client (google-cloud-pubsub's PublisherAsyncClient) reaches it as it
reaches an emulator, through `PUBSUB_EMULATOR_HOST`. It stands in where the emulator
cannot: a test needs Pub/Sub to refuse on cue, to hold a call unanswered, and to say
what it was asked.

Run alone, to be paused (SIGSTOP) as a process:
    python -m tests.fake_publisher --port 0   # prints its host:port, then serves
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

import grpc
from google.pubsub_v1.types import PublishRequest, PublishResponse

from tests.fake_schema_api import SERVICE as SCHEMA_SERVICE
from tests.fake_schema_api import FakeSchemaApi, _Schema
from tests.fake_schema_api import _Request as _SchemaRequest

SERVICE = "google.pubsub.v1.Publisher"
_Request: Any = PublishRequest.pb()
_Response: Any = PublishResponse.pb()


class FakePublisher:
    """Answers each Publish with message ids `1`, `2`, …; `failing` a status to fail
    with instead, `holding` to answer nothing until released."""

    def __init__(self) -> None:
        # (topic, data, attributes) of each message published.
        self.published: list[tuple[str, bytes, dict[str, str]]] = []
        self.calls = 0
        self.failing: tuple[grpc.StatusCode, str] | None = None
        self.holding = False
        self.address = ""
        self._server: grpc.aio.Server | None = None
        self._release = asyncio.Event()
        # The Schema API beside it, as the emulator serves both; answering after
        # `schema_delay` seconds.
        self.schemas = FakeSchemaApi()
        self.schema_delay = 0.0

    async def start(self, port: int = 0, host: str = "127.0.0.1") -> str:
        handler = grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Publish": grpc.unary_unary_rpc_method_handler(
                    self._publish,
                    request_deserializer=_Request.FromString,
                    response_serializer=_Response.SerializeToString,
                )
            },
        )
        schemas = grpc.method_handlers_generic_handler(
            SCHEMA_SERVICE,
            {
                "GetSchema": grpc.unary_unary_rpc_method_handler(
                    self._get_schema,
                    request_deserializer=_SchemaRequest.FromString,
                    response_serializer=_Schema.SerializeToString,
                )
            },
        )
        self._server = grpc.aio.server()
        self._server.add_generic_rpc_handlers((handler, schemas))
        bound = self._server.add_insecure_port(f"{host}:{port}")
        await self._server.start()
        self.address = f"{host}:{bound}"
        return self.address

    def hold(self) -> None:
        """Answer nothing from now on, until `release`."""
        self.holding = True
        self._release.clear()

    def release(self) -> None:
        self.holding = False
        self._release.set()

    async def stop(self) -> None:
        self._release.set()
        if self._server is not None:
            await self._server.stop(grace=None)
            self._server = None

    async def _get_schema(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await asyncio.sleep(self.schema_delay)  # a slow API, as the test set it
        return await self.schemas._get_schema(request, context)

    async def _publish(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        self.calls += 1
        if self.holding:
            await self._release.wait()
        if self.failing is not None:
            await context.abort(*self.failing)
        ids = []
        for message in request.messages:
            self.published.append((request.topic, message.data, dict(message.attributes)))
            ids.append(str(len(self.published)))
        return _Response(message_ids=ids)


async def _main(port: int) -> None:
    fake = FakePublisher()
    print(await fake.start(port), flush=True)
    stopped = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopped.set)
    await stopped.wait()
    await fake.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    asyncio.run(_main(parser.parse_args().port))


@contextlib.contextmanager
def in_thread() -> Iterator[FakePublisher]:
    """A FakePublisher on an event loop of its own thread (for a test that blocks, or a
    service in another process): its attributes are set from the test's thread."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fake-publisher", daemon=True)
    thread.start()
    fake = FakePublisher()
    asyncio.run_coroutine_threadsafe(_started(fake), loop).result(30)
    try:
        yield fake
    finally:
        asyncio.run_coroutine_threadsafe(fake.stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()


async def _started(fake: FakePublisher) -> None:
    # Its event is made on the loop that waits on it.
    fake._release = asyncio.Event()
    await fake.start()
