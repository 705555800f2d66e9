"""Durable Streams offsets: the keyset cursor, written so that it sorts.

The protocol wants an offset opaque, URL-safe, short, lexicographically sortable
and strictly increasing with the data. A page token is none of the last two (it
is signed msgpack in base64), so a stream offset is another encoding of the same
cursor, `(after_time, after_message_id)`, signed and naming its stream.

Design: docs/streams.md#what-the-protocol-gets-here
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from typing import Final

from app.errors import BadParameter
from app.query.page_token import PageToken
from app.records import MAX_ID_LENGTH, MAX_MICROS

# 64 characters in ascending ASCII order: base 64 written with them sorts as
# the numbers and byte strings it stands for.
# <after_time: 10 characters><after_message_id: 0 or more>-<signature: 16>
#
# Both parts of the position are base 64 in an alphabet in ASCII order (`.`,
# digits, capitals, `_`, small letters), so comparing two offsets as text compares
# their positions: the time is fixed-width (60 bits, big endian), the message id is
# its UTF-8 bytes as base 64 (which keeps the order of byte strings, a prefix
# first), and `-`, below every letter of the alphabet, ends the position (so `t`
# sorts before `t` and any message id). The signature comes last: it never decides
# an order, since equal positions carry equal signatures; it makes a forged or
# altered offset a 400, as a token's MAC does, and names the stream. Most offsets
# name a time alone, 27 characters; one names a message id only where a chunk ends
# inside the rows of one microsecond, and Pub/Sub's message ids (about 17 digits)
# keep those under 60. An offset never contains `,`, `&`, `=`, `?` or `/`, and is
# never `-1` or `now`.
ALPHABET: Final = ".0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz"
# Ends the position: below every character of the alphabet.
SEPARATOR: Final = "-"
TIME_CHARACTERS: Final = 10  # 60 bits; every time a store holds needs 58
_MAC_BYTES: Final = 12  # 16 characters
# Longer text is refused before it is decoded (the longest message id, as UTF-8
# in base 64, with the rest, is about 5,500 characters).
MAX_OFFSET_LENGTH: Final = 6_000
# The protocol's sentinels, never issued as offsets.
BEGINNING: Final = "-1"
NOW: Final = "now"
# The shape of what `offset` takes, for the OpenAPI document: a sentinel, or a
# position (at least the time's characters) and its signature.
OFFSET_PATTERN: Final = r"^(-1|now|[.0-9A-Z_a-z]{10,}-[.0-9A-Z_a-z]+)$"

_STANDARD = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_TO_SORTED = bytes.maketrans(_STANDARD, ALPHABET.encode())
_FROM_SORTED = bytes.maketrans(ALPHABET.encode(), _STANDARD)
_VALID = frozenset(ALPHABET)


def _sorted_base64(data: bytes) -> str:
    return base64.b64encode(data).rstrip(b"=").translate(_TO_SORTED).decode()


def _from_sorted_base64(text: str) -> bytes:
    raw = text.encode().translate(_FROM_SORTED)
    return base64.b64decode(raw + b"=" * (-len(raw) % 4), validate=True)


def _time_text(us: int) -> str:
    digits = []
    for _ in range(TIME_CHARACTERS):
        digits.append(ALPHABET[us & 63])
        us >>= 6
    return "".join(reversed(digits))


def _time_value(text: str) -> int:
    value = 0
    for character in text:
        value = value * 64 + ALPHABET.index(character)
    return value


class Offsets:
    """Stream offsets of one service: what signs them is the page tokens' secret."""

    def __init__(self, secret: str) -> None:
        # A key of its own, so a page token's MAC is never an offset's.
        self._key = hashlib.sha256(b"durable-streams offsets\0" + secret.encode()).digest()

    def _mac(self, stream: str, position: str, scope: str) -> str:
        # hmac.new, not the one-shot hmac.digest: that one lets go of the GIL for
        # every call, and on the event loop's thread waiting to take it back cost
        # ~160 µs a call while a worker thread held it (profiled under load).
        signed = f"{stream}\0{position}" + (f"\0{scope}" if scope else "")
        digest = hmac.new(self._key, signed.encode(), "sha256").digest()
        return _sorted_base64(digest[:_MAC_BYTES])

    def encode(
        self, stream: str, after_time: int, after_message_id: str = "", *, scope: str = ""
    ) -> str:
        """The offset of the position after `(after_time, after_message_id)` in `stream`,
        signed for `scope` too (a filtered stream's filter: an offset read with another
        filter is refused, as a page token is)."""
        position = _time_text(after_time)
        if after_message_id:
            position += _sorted_base64(after_message_id.encode())
        return f"{position}{SEPARATOR}{self._mac(stream, position, scope)}"

    def decode(self, stream: str, text: str, *, scope: str = "") -> PageToken:
        """The cursor an offset of `stream` (and `scope`) stands for; BadParameter (400)
        naming `offset` if it is none, was altered, or is another stream's (or scope's)."""
        if not text:
            raise BadParameter("offset", "empty; omit it, or send -1, to read from the start")
        if len(text) > MAX_OFFSET_LENGTH:
            raise BadParameter("offset", f"longer than {MAX_OFFSET_LENGTH} characters")
        position, separator, mac = text.partition(SEPARATOR)
        if (
            not separator
            or len(position) < TIME_CHARACTERS
            or not _VALID.issuperset(position)
            or not _VALID.issuperset(mac)
        ):
            raise BadParameter("offset", "not an offset of this stream")
        if not hmac.compare_digest(mac, self._mac(stream, position, scope)):
            if scope and hmac.compare_digest(mac, self._mac(stream, position, "")):
                raise BadParameter(
                    "offset", "an offset of this stream unfiltered: start again with the filter"
                )
            raise BadParameter(
                "offset", "not an offset of this stream, or altered, or issued for another filter"
            )
        after_time = _time_value(position[:TIME_CHARACTERS])
        try:
            message_id = _from_sorted_base64(position[TIME_CHARACTERS:]).decode()
        except (binascii.Error, ValueError):
            raise BadParameter("offset", "not an offset of this stream") from None
        # A signature proves who made an offset, not that it is sane (see PageToken).
        if after_time > MAX_MICROS or len(message_id) > MAX_ID_LENGTH:
            raise BadParameter("offset", "holds a position out of range")
        return PageToken(after_time, message_id, None, listing=stream)
