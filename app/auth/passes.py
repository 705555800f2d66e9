"""Read passes: Cloud CDN signed cookies the service issues to a verified reader.

A pass names a URL prefix (one system's `/v1/`), an expiry and the key that signed
it (`RECORDLINE_READ_PASS_KEYS`); Cloud CDN checks it on every request and this
module on the requests that reach the service. Parsing is strict and bounded, and
everything wrong with a pass is one `InvalidPass`, whose reason never holds the
cookie. Standard library only: the format is Cloud CDN's, fixed.

Design: docs/security.md#read-passes
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from typing import Final, NamedTuple

from app.settings import Settings, SettingsError

COOKIE_NAME: Final = "Cloud-CDN-Cookie"
# Cloud CDN's keys are 128 bits; its key names are RFC 1035 labels.
KEY_BYTES: Final = 16
KEY_NAME: Final = r"[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?"
# How far ahead of this clock another instance's may have been when it issued a pass.
SKEW_SECONDS: Final = 30
# A pass's value is about 150 characters for a 100-character prefix; a Cookie header
# may carry a browser's other cookies too, but not this much.
MAX_VALUE_CHARS: Final = 1024
MAX_HEADER_CHARS: Final = 8192

_B64 = r"[A-Za-z0-9_-]+={0,2}"
_VALUE = re.compile(
    rf"URLPrefix=(?P<prefix>{_B64}):Expires=(?P<expires>[0-9]{{1,12}})"
    rf":KeyName=(?P<key>{KEY_NAME}):Signature=(?P<signature>[A-Za-z0-9_-]{{27}}=)",
    re.ASCII,
)
_ORIGIN = re.compile(r"https?://[^/?#\s@]+", re.ASCII)


class InvalidPass(ValueError):
    """A pass that must not be honoured; the message says why, never the cookie."""


class Pass(NamedTuple):
    """A pass as issued: the cookie (`Cloud-CDN-Cookie=…`), the URL prefix it opens,
    and when it expires (Unix seconds)."""

    cookie: str
    url_prefix: str
    expires: int


def parse_keys(text: str) -> dict[str, bytes]:
    """`name:base64urlkey[,name:key…]` → each key by name, in the order given (the first
    signs); ValueError naming the entry, never the key, for one that cannot be used."""
    keys: dict[str, bytes] = {}
    for number, entry in enumerate((e.strip() for e in text.split(",")), start=1):
        name, colon, encoded = entry.partition(":")
        if not colon or re.fullmatch(KEY_NAME, name, re.ASCII) is None:
            raise ValueError(
                f"entry {number} is not `name:key` with a key name of up to 63 lower-case "
                "letters, digits and `-`, a letter first"
            )
        if name in keys:
            raise ValueError(f"the key {name!r} is given twice")
        key = _decode(encoded)
        if key is None or len(key) != KEY_BYTES:
            raise ValueError(f"the key {name!r} is not {KEY_BYTES} bytes in base64url")
        keys[name] = key
    return keys


def _decode(text: str) -> bytes | None:
    """Strict base64url, padded or not; None if `text` is not that."""
    if re.fullmatch(_B64, text, re.ASCII) is None:
        return None
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        return None


def _sign(key: bytes, policy: str) -> str:
    mac = hmac.new(key, policy.encode("ascii"), hashlib.sha1).digest()
    return base64.urlsafe_b64encode(mac).decode("ascii")


def pass_value(headers: Iterable[str]) -> str | None:
    """The value of the one `Cloud-CDN-Cookie` among a request's `Cookie` headers, None
    if there is none; InvalidPass for headers too long, or a pass given twice."""
    found: list[str] = []
    total = 0
    for header in headers:
        total += len(header)
        if total > MAX_HEADER_CHARS:
            raise InvalidPass(f"Cookie headers longer than {MAX_HEADER_CHARS} characters")
        for pair in header.split(";"):
            name, equals, value = pair.strip().partition("=")
            if equals and name == COOKIE_NAME:
                found.append(value)
    if len(found) > 1:
        raise InvalidPass(f"{len(found)} {COOKIE_NAME} cookies: a request carries one pass")
    return found[0] if found else None


class ReadPasses:
    """Issues and checks passes for the URL prefixes under `url` (the origin clients
    reach, such as `https://records.example.com`), signed with the first of `keys` and
    checked with any of them, each valid for `seconds`."""

    def __init__(self, keys: Mapping[str, bytes], url: str, seconds: int) -> None:
        if not keys:
            raise ValueError("read passes need a key")
        if _ORIGIN.fullmatch(url) is None:
            raise ValueError("the URL of read passes is an http(s) origin, without a path")
        self._keys = dict(keys)
        self._signing = next(iter(self._keys))
        self.url = url
        self.seconds = seconds

    @classmethod
    def from_settings(cls, settings: Settings) -> ReadPasses | None:
        """The passes the settings configure, None if they configure none; SettingsError
        naming the variable (never a key) for a value that cannot be used."""
        auth = settings.auth
        if not auth.read_pass_keys:
            return None
        try:
            keys = parse_keys(auth.read_pass_keys)
        except ValueError as exc:
            raise SettingsError(
                f"RECORDLINE_READ_PASS_KEYS: {exc}", var="RECORDLINE_READ_PASS_KEYS"
            ) from None
        return cls(keys, auth.read_pass_url.rstrip("/"), auth.read_pass_seconds)

    @staticmethod
    def path_prefix(settings: Settings) -> str:
        """The path a pass of this app opens: `/v1/`, or in a cell (where each system's
        app is given its path without the prefix) `/systems/{system}/v1/`."""
        return f"{settings.mounted_at}/v1/"

    def url_prefix(self, path_prefix: str) -> str:
        """The URL prefix a pass for `path_prefix` (`/v1/`, `/systems/s/v1/`) opens."""
        return self.url + path_prefix

    def issue(self, path_prefix: str, now: float) -> Pass:
        """A pass for `path_prefix`, valid from `now` (Unix seconds) for `seconds`."""
        url_prefix = self.url_prefix(path_prefix)
        expires = int(now) + self.seconds
        encoded = base64.urlsafe_b64encode(url_prefix.encode("utf-8")).decode("ascii")
        policy = f"URLPrefix={encoded}:Expires={expires}:KeyName={self._signing}"
        signature = _sign(self._keys[self._signing], policy)
        return Pass(f"{COOKIE_NAME}={policy}:Signature={signature}", url_prefix, expires)

    def verify(self, value: str, path_prefix: str, now: float) -> int:
        """When the pass `value` (a `Cloud-CDN-Cookie`'s value) for `path_prefix` expires;
        InvalidPass if it is malformed, signed with no key of ours or wrongly, expired,
        expiring later than one of ours could, or for another prefix."""
        if len(value) > MAX_VALUE_CHARS:
            raise InvalidPass(f"a pass longer than {MAX_VALUE_CHARS} characters")
        parsed = _VALUE.fullmatch(value)
        if parsed is None:
            raise InvalidPass("a malformed pass")
        key = self._keys.get(parsed["key"])
        if key is None:
            raise InvalidPass(f"a pass signed with an unknown key {parsed['key']!r}")
        policy = value[: parsed.start("signature") - len(":Signature=")]
        expected = _sign(key, policy).encode("ascii")
        if not hmac.compare_digest(expected, parsed["signature"].encode("ascii")):
            raise InvalidPass("a pass with a wrong signature")
        expires = int(parsed["expires"])
        if expires <= now:
            raise InvalidPass("an expired pass")
        if expires > now + self.seconds + SKEW_SECONDS:
            raise InvalidPass("a pass expiring later than any this service issues")
        prefix = _decode(parsed["prefix"])
        if prefix != self.url_prefix(path_prefix).encode("utf-8"):
            raise InvalidPass("a pass for another URL prefix")
        return expires
