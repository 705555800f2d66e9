"""A fake of the Pub/Sub Schema API: GetSchema only, over real gRPC.

The service's own client (google-cloud-pubsub's SchemaServiceAsyncClient)
reaches it as it reaches an emulator, through `PUBSUB_EMULATOR_HOST`. It
stands in where the emulator cannot: the emulator refuses Protocol Buffer
schemas ("not implemented in emulator"), and a test needs the API down on cue.

Run alone for benchmarks, serving one schema revision:
    python -m tests.fake_schema_api --port 0 --name projects/p/schemas/s \
        --revision r1 --type AVRO --definition-file schema.avsc
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path
from typing import Any

import grpc
from google.pubsub_v1.types import GetSchemaRequest, Schema

SERVICE = "google.pubsub.v1.SchemaService"
_Request: Any = GetSchemaRequest.pb()
_Schema: Any = Schema.pb()


class FakeSchemaApi:
    """Revisions by `projects/P/schemas/S@REVISION`; the latest answers the bare name."""

    def __init__(self) -> None:
        self.revisions: dict[str, Any] = {}
        self.latest: dict[str, str] = {}
        # While set, every call fails with this status (the API is down).
        self.failing: grpc.StatusCode | None = None
        self.calls: list[str] = []
        self.address = ""
        self._server: grpc.aio.Server | None = None

    def add(self, name: str, revision_id: str, kind: str, definition: str) -> str:
        """Serve a revision of `kind` (AVRO or PROTOCOL_BUFFER); the last one added is latest."""
        self.revisions[f"{name}@{revision_id}"] = Schema.pb(
            Schema(
                name=name,
                type_=Schema.Type[kind],
                definition=definition,
                revision_id=revision_id,
            )
        )
        self.latest[name] = revision_id
        return f"{name}@{revision_id}"

    async def start(self, port: int = 0, host: str = "127.0.0.1") -> str:
        handler = grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "GetSchema": grpc.unary_unary_rpc_method_handler(
                    self._get_schema,
                    request_deserializer=_Request.FromString,
                    response_serializer=_Schema.SerializeToString,
                )
            },
        )
        self._server = grpc.aio.server()
        self._server.add_generic_rpc_handlers((handler,))
        bound = self._server.add_insecure_port(f"{host}:{port}")
        await self._server.start()
        self.address = f"{host}:{bound}"
        return self.address

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(grace=None)
            self._server = None

    async def _get_schema(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        self.calls.append(request.name)
        if self.failing is not None:
            await context.abort(self.failing, "injected: the Schema API is down")
        name, _, revision_id = request.name.partition("@")
        key = f"{name}@{revision_id or self.latest.get(name, '')}"
        if key not in self.revisions:
            await context.abort(grpc.StatusCode.NOT_FOUND, "Schema revision not found")
        return self.revisions[key]


async def _serve(args: argparse.Namespace) -> None:
    fake = FakeSchemaApi()
    fake.add(args.name, args.revision, args.type, Path(args.definition_file).read_text())
    address = await fake.start(args.port)
    print(f"listening on {address}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await fake.stop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="fake_schema_api")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--name", required=True)
    parser.add_argument("--revision", required=True)
    parser.add_argument("--type", choices=["AVRO", "PROTOCOL_BUFFER"], required=True)
    parser.add_argument("--definition-file", required=True)
    asyncio.run(_serve(parser.parse_args()))


if __name__ == "__main__":
    main()
