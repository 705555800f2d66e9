"""Opaque, signed page tokens.

A token carries the key of the last row served and the page's upper bound.
It is signed so that a token that was cut, altered or made up is refused with
a 400 rather than silently moving a reader's cursor. The signature is for
integrity, not secrecy: anyone may read a token, nobody can forge one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

import msgspec

from app.errors import BadParameter

_VERSION = 1
_MAC_BYTES = 16


class PageToken(msgspec.Struct, array_like=True, frozen=True):
    after_time: int  # µs
    after_message_id: str
    until: int | None = None  # µs, exclusive; None follows the stream forever
    version: int = _VERSION


_encode = msgspec.msgpack.encode
_decode = msgspec.msgpack.Decoder(PageToken).decode


class PageTokens:
    def __init__(self, secret: str) -> None:
        self._key = hashlib.sha256(secret.encode()).digest()

    def _mac(self, body: bytes) -> bytes:
        return hmac.digest(self._key, body, "sha256")[:_MAC_BYTES]

    def encode(self, token: PageToken) -> str:
        body = _encode(token)
        return base64.urlsafe_b64encode(self._mac(body) + body).rstrip(b"=").decode()

    def decode(self, text: str, *, parameter: str = "page_token") -> PageToken:
        """The token `text` stands for; BadParameter naming `parameter` (where the
        client sent it) if it is none, was altered, or is of another version."""
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        except (binascii.Error, ValueError):
            raise BadParameter(parameter, "not a page token") from None
        mac, body = raw[:_MAC_BYTES], raw[_MAC_BYTES:]
        if len(mac) != _MAC_BYTES or not hmac.compare_digest(mac, self._mac(body)):
            raise BadParameter(parameter, "not a page token, or altered") from None
        try:
            token = _decode(body)
        except msgspec.DecodeError:
            raise BadParameter(parameter, "not a page token") from None
        if token.version != _VERSION:
            raise BadParameter(parameter, "issued by an incompatible version; start again")
        return token
