"""Signed producer sequences: where a producer must be told from an impostor.

An operator sets a key for a producer id, or for every id with a prefix
(`RECORDLINE_PRODUCER_KEYS`); such a producer's messages carry
`recordline-signature`, an HMAC-SHA256 over its producer, epoch, sequence, the
epoch-ended it declares and the SHA-256 of its payload. A message of it that is
unsigned, or signed wrongly, is kept as a rejection saying so (no producer's, in
the ledger). `SequencedPublisher` signs when given the key.

Design: docs/producers.md#signed-sequences
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping
from typing import Final

from app.store.producers import (
    EPOCH_ATTRIBUTE,
    EPOCH_ENDED_ATTRIBUTE,
    PRODUCER_ATTRIBUTE,
    SEQUENCE_ATTRIBUTE,
    SIGNATURE_ATTRIBUTE,
)

# Keys shorter than this are refused: HMAC-SHA256 wants at least 16 random bytes.
MIN_KEY_BYTES: Final = 16


class ProducerKeys:
    """Which producers sign their sequences, and with which key."""

    def __init__(self, exact: Mapping[str, bytes], prefixes: Mapping[str, bytes]) -> None:
        self._exact = dict(exact)
        # Longest prefix first: `orders-eu-*` before `orders-*`.
        self._prefixes = sorted(prefixes.items(), key=lambda item: -len(item[0]))

    @classmethod
    def parse(cls, text: str) -> ProducerKeys | None:
        """The keys `text` sets (RECORDLINE_PRODUCER_KEYS), None if it sets none;
        ValueError, naming the producer and never the key, if one cannot be used."""
        exact: dict[str, bytes] = {}
        prefixes: dict[str, bytes] = {}
        for entry in filter(None, text.split(",")):
            name, _, encoded = entry.partition("=")
            try:
                key = base64.urlsafe_b64decode(_padded(encoded.replace("+", "-").replace("/", "_")))
            except (binascii.Error, ValueError):
                raise ValueError(f"the key of {name!r} is not base64") from None
            if len(key) < MIN_KEY_BYTES:
                raise ValueError(
                    f"the key of {name!r} is {len(key)} bytes, fewer than {MIN_KEY_BYTES}"
                )
            named = prefixes if name.endswith("*") else exact
            if name.removesuffix("*") in named:
                # One of the two would be dropped unsaid: whichever came last.
                raise ValueError(f"{name!r} is given a key twice")
            named[name.removesuffix("*")] = key
        if not exact and not prefixes:
            return None
        return cls(exact, prefixes)

    def key_for(self, producer: str) -> bytes | None:
        key = self._exact.get(producer)
        if key is not None:
            return key
        for prefix, found in self._prefixes:
            if producer.startswith(prefix):
                return found
        return None

    def problem(self, attributes: Mapping[str, str], data: bytes) -> str | None:
        """Why a message may not be taken as its producer's (naming the attribute), or
        None: its producer signs nothing, or it is signed with the producer's key."""
        producer = attributes.get(PRODUCER_ATTRIBUTE)
        if producer is None:
            return None
        key = self.key_for(producer)
        if key is None:
            return None
        given = attributes.get(SIGNATURE_ATTRIBUTE)
        if given is None:
            return (
                f"{SIGNATURE_ATTRIBUTE}: missing; producer {producer!r} signs its sequences "
                "(RECORDLINE_PRODUCER_KEYS)"
            )
        expected = signature(key, attributes, data)
        if not hmac.compare_digest(given.encode(), expected.encode()):
            return (
                f"{SIGNATURE_ATTRIBUTE}: not producer {producer!r}'s signature of its "
                "producer, epoch, sequence, epoch-ended and payload"
            )
        return None


def signature(key: bytes, attributes: Mapping[str, str], data: bytes) -> str:
    """`recordline-signature` of a message: HMAC-SHA256 (base64url, unpadded) of the
    producer, epoch, sequence and epoch-ended attributes as given, one a line, and the
    payload's SHA-256 (hex)."""
    signed = "\n".join(
        [
            attributes.get(PRODUCER_ATTRIBUTE, ""),
            attributes.get(EPOCH_ATTRIBUTE, ""),
            attributes.get(SEQUENCE_ATTRIBUTE, ""),
            attributes.get(EPOCH_ENDED_ATTRIBUTE, ""),
            hashlib.sha256(data).hexdigest(),
        ]
    )
    mac = hmac.new(key, signed.encode(errors="surrogatepass"), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def _padded(text: str) -> str:
    return text + "=" * (-len(text) % 4)
