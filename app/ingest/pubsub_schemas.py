"""Schema revisions from the Pub/Sub Schema API, through google-cloud-pubsub's async client.

With `PUBSUB_EMULATOR_HOST` set, the client talks plaintext to that emulator (or a
fake) with no credentials, as Google's own clients do; otherwise it uses
Application Default Credentials, which need `pubsub.schemas.get` on the topic's
schemas (e.g. `roles/pubsub.viewer`). The client is made on the first fetch: a
service whose topic has no schema never looks for credentials (off Google Cloud,
a metadata-server probe of several seconds), nor imports the client library (a
tenth of the service's start-up), which the first fetch imports off the event loop.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import google.auth
import grpc
from google.api_core.exceptions import GoogleAPICallError, InvalidArgument, NotFound
from google.auth.exceptions import GoogleAuthError

from app.errors import SchemaUnavailable
from app.ingest.schemas import SchemaNotFound, SchemaRevision

if TYPE_CHECKING:
    from google.pubsub_v1.services.schema_service import SchemaServiceAsyncClient

_SCOPES = ("https://www.googleapis.com/auth/pubsub",)


def _imported() -> None:
    """The client library imported (in a thread, by the first call)."""
    import google.pubsub_v1  # noqa: F401


async def pubsub_credentials(emulator_host: str) -> Any:
    """What a Pub/Sub client is made with: Application Default Credentials, or None for
    an emulator; with the client library imported. Each off the event loop (they read
    files, may ask the metadata server, and take a tenth of the service's start-up), so
    the pushes and reads in flight need not wait. GoogleAuthError where there are none."""
    credentials = None
    if not emulator_host:
        credentials, _ = await asyncio.to_thread(google.auth.default, scopes=_SCOPES)
    await asyncio.to_thread(_imported)
    return credentials


def _made(emulator_host: str, credentials: Any) -> SchemaServiceAsyncClient:
    """The Schema API's client: plaintext to `emulator_host` if set, else with
    `credentials`. Made on the event loop its calls run on (grpc.aio's channel is
    bound to it)."""
    from google.pubsub_v1.services.schema_service import SchemaServiceAsyncClient
    from google.pubsub_v1.services.schema_service.transports import (
        SchemaServiceGrpcAsyncIOTransport,
    )

    if emulator_host:
        channel = grpc.aio.insecure_channel(emulator_host)
        transport = SchemaServiceGrpcAsyncIOTransport(channel=channel)
        return SchemaServiceAsyncClient(transport=transport)
    return SchemaServiceAsyncClient(credentials=credentials)


class PubSubSchemas:
    """A SchemaSource over the Schema API's GetSchema."""

    def __init__(self, *, emulator_host: str = "", timeout: float) -> None:
        self._emulator_host = emulator_host
        self._timeout = timeout
        self._client: SchemaServiceAsyncClient | None = None
        self._opening = asyncio.Lock()

    async def revision(self, name: str, revision_id: str) -> SchemaRevision:
        client = await self._open()
        from google.pubsub_v1.types import GetSchemaRequest, SchemaView  # imported by _open

        request = GetSchemaRequest(
            name=f"{name}@{revision_id}" if revision_id else name, view=SchemaView.FULL
        )
        try:
            # No retries here: Pub/Sub redelivering the push is the retry, and
            # the push must be answered within its acknowledgement deadline.
            schema = await client.get_schema(request=request, retry=None, timeout=self._timeout)
        except (NotFound, InvalidArgument) as exc:
            raise SchemaNotFound(exc.message) from None
        except GoogleAPICallError as exc:
            status = exc.grpc_status_code.name if exc.grpc_status_code else exc.code
            raise SchemaUnavailable(f"the Schema API answered {status}: {exc.message}") from None
        return SchemaRevision(
            name=schema.name,
            revision_id=schema.revision_id,
            type=schema.type_.name,
            definition=schema.definition,
        )

    async def _open(self) -> SchemaServiceAsyncClient:
        async with self._opening:
            if self._client is not None:
                return self._client
            try:
                credentials = await pubsub_credentials(self._emulator_host)
            except GoogleAuthError as exc:
                raise SchemaUnavailable(f"no credentials for the Schema API: {exc}") from None
            self._client = _made(self._emulator_host, credentials)
            return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.transport.close()  # type: ignore[no-untyped-call]
            self._client = None
