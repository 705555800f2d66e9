"""Test messages: an operator publishes one to the system's own topic (`POST /v1/publish`).

It goes Pub/Sub's way (the topic's schema, the push subscription) and is stored or
rejected as every message is: the answer says what today's validation makes of it
first (a dry run publishes nothing), then Pub/Sub's message id. The client talks to
`PUBSUB_EMULATOR_HOST` in plaintext where set, else uses Application Default Credentials
(`roles/pubsub.publisher` on the topic alone); made on the first publish.

Design: docs/operations.md#a-test-message
"""

from __future__ import annotations

import asyncio
import binascii
import time
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal

import grpc
import msgspec
from google.api_core.exceptions import GoogleAPICallError, InvalidArgument
from google.auth.exceptions import GoogleAuthError
from msgspec import Meta

from app.errors import InvalidBody, NotFound, TopicUnavailable
from app.ingest.envelope import MAX_DATA_BYTES, PushAttributes, PushedMessage
from app.ingest.pubsub_schemas import pubsub_credentials
from app.ingest.replay import MAX_NOTE_CHARACTERS
from app.records import Rejection

if TYPE_CHECKING:
    from google.pubsub_v1.services.publisher import PublisherAsyncClient

    from app.ingest.service import Ingest

# A publish, the client's making included, ends within this long: an operator waits on
# it, nothing is retried here (they publish again), and it ends well within a stop's
# grace (Cloud Run's 10 s).
PUBLISH_SECONDS: Final = 5.0
# What a dry run's message is called while today's validation reads it.
CHECKED_ID: Final = "recordline-test-message"


class PublishRequest(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    data: Annotated[str, Meta(description="The message data, base64")]
    # Held to what a push may carry, so that what is published can be delivered.
    attributes: PushAttributes = msgspec.field(default_factory=dict)
    dry_run: Annotated[
        bool, Meta(description="Say what today's validation makes of it; publish nothing")
    ] = False
    note: (
        Annotated[
            str,
            Meta(
                max_length=MAX_NOTE_CHARACTERS,
                description="Why, in the operator's words: kept with the message id in the "
                "access record",
            ),
        ]
        | None
    ) = None


class PublishAnswer(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    topic: str
    # What today's validation makes of the message: stored as a record, or rejected
    # (`reason`). The push may still meet another (a schema changed meanwhile).
    verdict: Literal["stored", "rejected"]
    reason: str | None = None
    # Pub/Sub's id of the message published; none for a dry run.
    message_id: str | None = None
    dry_run: bool = False


class Topic:
    """The system's own topic, `name` (`projects/P/topics/T`; empty: none), where an
    operator's test messages go once `ingest` said what it makes of them."""

    def __init__(
        self, name: str, ingest: Ingest, *, emulator_host: str = "", timeout: float | None = None
    ) -> None:
        self.name = name
        self._ingest = ingest
        self._emulator_host = emulator_host
        self._timeout = PUBLISH_SECONDS if timeout is None else timeout
        self._client: PublisherAsyncClient | None = None
        self._opening = asyncio.Lock()

    async def publish(self, request: PublishRequest) -> PublishAnswer:
        if not self.name:
            raise NotFound(
                "this system names no topic to publish to (RECORDLINE_TOPIC, which "
                "Terraform sets to the system's own)"
            )
        # One deadline for the whole call: the check (which may read a topic schema
        # the attributes name) and Pub/Sub's answer together.
        deadline = asyncio.get_running_loop().time() + self._timeout
        try:
            data = binascii.a2b_base64(request.data, strict_mode=True)
        except ValueError:  # not base64 (binascii.Error), or not even ASCII
            raise InvalidBody("data", "is no base64 (RFC 4648, padded)") from None
        if len(data) > MAX_DATA_BYTES:
            raise InvalidBody("data", f"{len(data):,} bytes; a message holds {MAX_DATA_BYTES:,}")
        checked = PushedMessage(
            message_id=CHECKED_ID,
            publish_time=time.time_ns() // 1000,
            data=data,
            raw_data=b"",
            attributes=request.attributes,
        )
        row = await self._ingest.row(checked)
        rejected = isinstance(row, Rejection)
        answer = PublishAnswer(
            topic=self.name,
            verdict="rejected" if rejected else "stored",
            reason=row.reason if isinstance(row, Rejection) else None,
            dry_run=request.dry_run,
        )
        if request.dry_run:
            return answer
        message_id = await self._published(data, request.attributes, deadline)
        return msgspec.structs.replace(answer, message_id=message_id)

    async def _published(self, data: bytes, attributes: dict[str, str], deadline: float) -> str:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout_at(deadline):
                client = await self._open()
                from google.pubsub_v1.types import PubsubMessage  # imported by _open

                message = PubsubMessage(data=data, attributes=attributes)
                answer = await client.publish(
                    topic=self.name,
                    messages=[message],
                    retry=None,
                    timeout=max(deadline - loop.time(), 0.001),
                )
        except TimeoutError:
            raise TopicUnavailable(
                f"{self.name} did not answer within {self._timeout:g} s of the publish; "
                "nothing was published"
            ) from None
        except InvalidArgument as exc:
            # What Pub/Sub refuses of the message itself (an attribute named `goog…`, a
            # payload the topic's schema does not take): the operator's to change.
            raise InvalidBody("message", f"Pub/Sub refused it: {exc.message}") from None
        except GoogleAPICallError as exc:
            status = exc.grpc_status_code.name if exc.grpc_status_code else exc.code
            raise TopicUnavailable(f"{self.name} answered {status}: {exc.message}") from None
        return str(answer.message_ids[0])

    async def _open(self) -> PublisherAsyncClient:
        async with self._opening:
            if self._client is not None:
                return self._client
            try:
                credentials = await pubsub_credentials(self._emulator_host)
            except GoogleAuthError as exc:
                raise TopicUnavailable(f"no credentials for Pub/Sub: {exc}") from None
            self._client = _made(self._emulator_host, credentials)
            return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.transport.close()  # type: ignore[no-untyped-call]
            self._client = None


def _made(emulator_host: str, credentials: Any) -> PublisherAsyncClient:
    """The publisher's client: plaintext to `emulator_host` if set, else with
    `credentials`; made on the event loop its calls run on."""
    from google.pubsub_v1.services.publisher import PublisherAsyncClient
    from google.pubsub_v1.services.publisher.transports import PublisherGrpcAsyncIOTransport

    if emulator_host:
        channel = grpc.aio.insecure_channel(emulator_host)
        return PublisherAsyncClient(transport=PublisherGrpcAsyncIOTransport(channel=channel))
    return PublisherAsyncClient(credentials=credentials)
