"""A publisher that numbers its messages, so Recordline stores each once and names any lost.

`SequencedPublisher` is google-cloud-pubsub's own `PublisherClient` underneath,
batching, flow control and retries kept: each message gets the producer sequence
attributes (`app.store.producers`) when handed to the client, so a publish the
library sends again carries the same sequence, and its signature when given the
producer's key. It persists nothing: the epoch is the time it started;
`published`, kept by the caller, is the next epoch's `ended`.

Design and usage: docs/producers.md#publishing-with-sequences
"""

from __future__ import annotations

import threading
import time
from typing import Any

from app.ingest.signing import MIN_KEY_BYTES, signature
from app.store.producers import (
    EPOCH_ATTRIBUTE,
    EPOCH_ENDED_ATTRIBUTE,
    MAX_NUMBER,
    PRODUCER_ATTRIBUTE,
    SEQUENCE_ATTRIBUTE,
    SIGNATURE_ATTRIBUTE,
    read_sequence,
)


class SequencedPublisher:
    """Publishes through `client` (a `google.cloud.pubsub_v1.PublisherClient`), numbering
    every message of this producer and epoch from 0, and signing each with `key` (the
    producer's, as RECORDLINE_PRODUCER_KEYS holds it) when given one."""

    def __init__(
        self,
        client: Any,
        producer: str,
        *,
        epoch: int | None = None,
        ended: tuple[int, int] | None = None,
        key: bytes | None = None,
    ) -> None:
        if key is not None and len(key) < MIN_KEY_BYTES:
            raise ValueError(f"a producer's key is at least {MIN_KEY_BYTES} bytes")
        self.client = client
        self.producer = producer
        self._key = key
        self.epoch = time.time_ns() // 1000 if epoch is None else epoch
        self._fixed = {
            PRODUCER_ATTRIBUTE: producer,
            EPOCH_ATTRIBUTE: str(self.epoch),
        }
        if ended is not None:
            self._fixed[EPOCH_ENDED_ATTRIBUTE] = f"{ended[0]}:{ended[1]}"
        # What the service would say of them, said here, before anything is published.
        read_sequence({**self._fixed, SEQUENCE_ATTRIBUTE: "0"})
        self._next = 0
        self._lock = threading.Lock()

    @property
    def published(self) -> int:
        """Messages handed to the client in this epoch: the next epoch's `ended` count."""
        return self._next

    def publish(
        self,
        topic: str,
        data: bytes,
        *,
        ordering_key: str = "",
        retry: Any = None,
        timeout: Any = None,
        **attributes: str,
    ) -> Any:
        """`client.publish` with the next sequence number set (`retry`, `timeout` and
        `ordering_key` are the client's, passed on when given); the client's future (its
        message id, or its error)."""
        with self._lock:
            sequence = self._next
            if sequence > MAX_NUMBER:
                raise OverflowError(f"epoch {self.epoch} has published 2^63 messages")
            self._next += 1
        numbered = {**attributes, **self._fixed, SEQUENCE_ATTRIBUTE: str(sequence)}
        if self._key is not None:
            numbered[SIGNATURE_ATTRIBUTE] = signature(self._key, numbered, data)
        options: dict[str, Any] = {}
        if ordering_key:
            options["ordering_key"] = ordering_key
        if retry is not None:
            options["retry"] = retry
        if timeout is not None:
            options["timeout"] = timeout
        return self.client.publish(topic, data, **options, **numbered)

    def stop(self) -> None:
        """Publish what is batched, then stop the client (`PublisherClient.stop`)."""
        self.client.stop()
