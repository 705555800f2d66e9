"""Opaque, signed page tokens.

A token carries the key of the last row served and the page's upper bound.
It is signed so that a token that was cut, altered or made up is refused with
a 400 rather than silently moving a reader's cursor. The signature is for
integrity, not secrecy: anyone may read a token, nobody can forge one. A token
whose cursor is a value a reader must not see (a masked producer's id) is sealed
instead (`PageTokens.sealed`): encrypted and authenticated, read by no one else.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from typing import Annotated

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from msgspec import Meta

from app.errors import BadParameter
from app.records import MAX_ID_LENGTH, MAX_MICROS
from app.store.filters import MAX_FILTER_BYTES, RowFilter, filter_bytes
from app.store.where import parse

_VERSION = 1
_MAC_BYTES = 16
# A token holds a row key (a Pub/Sub message id, ~20 digits) and a MAC, ~80
# characters, and a filtered list's filter (MAX_FILTER_BYTES at most, ~1,400 more);
# 2048 leaves room for odd ids and refuses junk before decoding it, wherever it was
# sent (the `page_token` parameter or a `Last-Event-ID` header).
MAX_TOKEN_LENGTH = 2048


# A signature proves who made a token, not that what it says is sane: whoever
# holds the key (or a leaked one) could sign any value, so every field is held to
# what this service ever puts in one, and anything else is refused with a 400.
Micros = Annotated[int, Meta(ge=0, le=MAX_MICROS)]


class PageToken(msgspec.Struct, array_like=True, frozen=True):
    after_time: Micros
    after_message_id: Annotated[str, Meta(max_length=MAX_ID_LENGTH)]
    until: Micros | None = None  # exclusive; None follows the stream forever
    version: int = _VERSION
    # The list it pages (`records`, `rejections`); empty in tokens of older releases.
    listing: Annotated[str, Meta(max_length=16)] = ""
    # The rows the list keeps (`attribute=`, `record_id=`, …), which every later page
    # keeps too; None for every row, as in tokens of older releases.
    filter: RowFilter | None = None
    # A newest-first page's (`order=newest`): the rows before the key (`until`,
    # `before_message_id`), no older than `after_time`, the newest first.
    newest: bool = False
    before_message_id: Annotated[str, Meta(max_length=MAX_ID_LENGTH)] = ""


_encode = msgspec.msgpack.encode
_decode = msgspec.msgpack.Decoder(PageToken).decode


# A sealed token's nonce: random, 96 bits (AES-GCM's own size).
_NONCE_BYTES = 12


class PageTokens:
    def __init__(self, secret: str, *, sealed: bool = False) -> None:
        self._key = hashlib.sha256(secret.encode()).digest()
        # A key of its own for sealing, never the signing key itself.
        self._seal = AESGCM(hmac.new(self._key, b"sealed page tokens", "sha256").digest())
        self._sealed = sealed

    def sealed(self) -> PageTokens:
        """Tokens of the same secret whose contents only this service can read."""
        tokens = PageTokens.__new__(PageTokens)
        tokens._key, tokens._seal, tokens._sealed = self._key, self._seal, True
        return tokens

    def _mac(self, body: bytes) -> bytes:
        # Not the one-shot hmac.digest, which lets go of the GIL (see app.query.offsets).
        return hmac.new(self._key, body, "sha256").digest()[:_MAC_BYTES]

    def encode(self, token: PageToken) -> str:
        body = _encode(token)
        if self._sealed:
            nonce = os.urandom(_NONCE_BYTES)
            sealed = nonce + self._seal.encrypt(nonce, body, None)
            return base64.urlsafe_b64encode(sealed).rstrip(b"=").decode()
        return base64.urlsafe_b64encode(self._mac(body) + body).rstrip(b"=").decode()

    def _opened(self, raw: bytes, parameter: str) -> bytes:
        if self._sealed:
            try:
                return self._seal.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], None)
            except (InvalidTag, ValueError):
                raise BadParameter(parameter, "not a page token, or altered") from None
        mac, body = raw[:_MAC_BYTES], raw[_MAC_BYTES:]
        if len(mac) != _MAC_BYTES or not hmac.compare_digest(mac, self._mac(body)):
            raise BadParameter(parameter, "not a page token, or altered") from None
        return body

    def decode(self, text: str, *, parameter: str = "page_token") -> PageToken:
        """The token `text` stands for; BadParameter naming `parameter` (where the
        client sent it) if it is none, was altered, or is of another version."""
        if len(text) > MAX_TOKEN_LENGTH:
            raise BadParameter(parameter, f"longer than {MAX_TOKEN_LENGTH} characters")
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        except (binascii.Error, ValueError):
            raise BadParameter(parameter, "not a page token") from None
        body = self._opened(raw, parameter)
        try:
            token = _decode(body)
        except msgspec.ValidationError as exc:
            raise BadParameter(parameter, f"holds a value out of range ({exc})") from None
        except msgspec.DecodeError:
            raise BadParameter(parameter, "not a page token") from None
        if token.version != _VERSION:
            raise BadParameter(parameter, "issued by an incompatible version; start again")
        if token.filter is not None and (
            not token.filter or filter_bytes(token.filter) > MAX_FILTER_BYTES
        ):
            raise BadParameter(parameter, "holds a filter out of range")
        if token.filter is not None and token.filter.where is not None:
            # One of another release may hold an expression this one does not read:
            # refused here, before a page or a stream's 200, not as a `where` never sent.
            try:
                parse(token.filter.where, token.listing or None)
            except BadParameter:
                raise BadParameter(
                    parameter, "holds an expression this release does not read; start again"
                ) from None
        return token
