"""Pub/Sub push deliveries, in both of their formats, decoded into one shape.

Google adds fields to the push envelope over time, so unknown fields are
ignored, never forbidden. Both spellings of the message fields are accepted:
Pub/Sub itself sends `messageId` and `message_id`, `publishTime` and
`publish_time`, side by side.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated

import msgspec
from msgspec import Meta

from app.errors import BadEnvelope
from app.records import AwareDatetime, TimeOutOfRange, micros, unaddressable
from app.store.producers import SIGNATURE_ATTRIBUTE

# Pub/Sub allows at most 100 attributes per message, keys of at most 256 bytes
# and values of at most 1,024: more means the caller is not Pub/Sub. Counted
# here in characters (at most 4 bytes each), which every message Pub/Sub
# delivers passes, and which keeps a row's attributes within what every store
# holds (~0.5 MB at most).
MAX_ATTRIBUTES = 100
MAX_ATTRIBUTE_KEY = 256
MAX_ATTRIBUTE_VALUE = 1024
# A subscription's full name is ~300 characters at most (a 30-character
# project, a 255-character subscription id).
MAX_SUBSCRIPTION = 1024
# Pub/Sub's own field is an int32.
MAX_DELIVERY_ATTEMPT = 2**31 - 1
# A Pub/Sub message's data is at most 10 MB: more is no message at all. Taken
# as 10 MiB (10,485,760 bytes), which is also what a Spanner BYTES(MAX) cell
# holds, so every message the push path takes fits a rejection, everywhere.
MAX_DATA_BYTES = 10 * 1024 * 1024

PushAttributes = Annotated[
    dict[
        Annotated[str, Meta(max_length=MAX_ATTRIBUTE_KEY)],
        Annotated[str, Meta(max_length=MAX_ATTRIBUTE_VALUE)],
    ],
    Meta(max_length=MAX_ATTRIBUTES),
]


class _Message(msgspec.Struct, kw_only=True, frozen=True):
    # Base64 text, decoded by hand: data that is not base64 is the publisher's
    # problem (a rejection), not a reason to refuse the whole delivery.
    data: str = ""
    attributes: PushAttributes | None = None
    # None when absent: an id sent empty is said to be empty, not missing.
    messageId: str | None = None
    message_id: str | None = None
    publishTime: AwareDatetime | None = None
    publish_time: AwareDatetime | None = None
    orderingKey: str | None = None


class _Envelope(msgspec.Struct, kw_only=True, frozen=True):
    message: _Message
    subscription: Annotated[str, Meta(max_length=MAX_SUBSCRIPTION)] | None = None
    # JSON has one kind of number: `5.0` is the integer 5 to JSON Schema (and so to the
    # OpenAPI document), if not to msgspec, and is taken as 5.
    deliveryAttempt: (
        Annotated[int, Meta(ge=0, le=MAX_DELIVERY_ATTEMPT)]
        | Annotated[float, Meta(ge=0, le=MAX_DELIVERY_ATTEMPT)]
        | None
    ) = None


_decode_envelope = msgspec.json.Decoder(_Envelope).decode


class PushedMessage(msgspec.Struct, kw_only=True, frozen=True):
    """One delivered message, whichever format it came in."""

    message_id: str
    publish_time: int  # µs since the epoch
    data: bytes | None  # None when the wrapped data was not valid base64
    # The data exactly as delivered where it is kept as is: unwrapped, the body; wrapped,
    # the base64 text only when it is not valid base64 (a decoded message keeps its data
    # once, not twice).
    raw_data: bytes
    attributes: dict[str, str]
    subscription: str | None = None
    delivery_attempt: int | None = None
    ordering_key: str | None = None


def decode_wrapped(body: bytes) -> PushedMessage:
    try:
        envelope = _decode_envelope(body)
    except msgspec.ValidationError as exc:
        raise BadEnvelope(f"not a Pub/Sub push envelope: {exc}") from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise BadEnvelope(f"body is not JSON: {exc}") from None
    except RecursionError:
        raise BadEnvelope("not a Pub/Sub push envelope: nested too deeply to read") from None
    message = envelope.message
    # Pub/Sub sends each field under both spellings. Each one sent must be usable (the
    # OpenAPI document says so), and the camel-case one is used where both are.
    # (Pub/Sub sends the two alike: the second is checked only where it differs.)
    message_id = publish_time = None
    if message.messageId is not None:
        message_id = _message_id(message.messageId, "`$.message.messageId`")
    if message.message_id is not None and message.message_id != message_id:
        snake_id = _message_id(message.message_id, "`$.message.message_id`")
        message_id = message_id if message_id is not None else snake_id
    if message_id is None:
        raise BadEnvelope("not a Pub/Sub push envelope: `$.message.messageId` is missing")
    if message.publishTime is not None:
        publish_time = _publish_time(message.publishTime, "`$.message.publishTime`")
    if message.publish_time is not None and message.publish_time != message.publishTime:
        snake_time = _publish_time(message.publish_time, "`$.message.publish_time`")
        publish_time = publish_time if publish_time is not None else snake_time
    if publish_time is None:
        raise BadEnvelope("not a Pub/Sub push envelope: `$.message.publishTime` is missing")
    raw = b""
    try:
        # From the text itself: a bytes copy of it would be a fourth copy of the message.
        data: bytes | None = binascii.a2b_base64(message.data, strict_mode=True)
    except (binascii.Error, ValueError):  # ValueError: not ASCII
        data = None
        raw = message.data.encode()
    _check_size(len(raw) if data is None else len(data), "`$.message.data`")
    return PushedMessage(
        message_id=message_id,
        publish_time=publish_time,
        data=data,
        raw_data=raw,
        attributes=message.attributes or {},
        subscription=envelope.subscription,
        delivery_attempt=_whole(envelope.deliveryAttempt),
        ordering_key=message.orderingKey,
    )


# With `no_wrapper` + `write_metadata`, Pub/Sub sends the metadata in these
# headers and each attribute as a header of its own, named as the publisher named it
# (`Content-Type` is Pub/Sub's own example: the attribute declares the body's type).
# A header is an attribute unless the delivery path writes it: HTTP's framing and
# hop-by-hop fields, what Pub/Sub's push client writes on every push, what Google's
# front end, Cloud Run, a proxy or a tracer on the way adds, and any header whose name
# looks like a credential's (an attribute is served to every reader, and a caller's
# cookie, key or token must never be). None of these can carry a publisher's
# attribute: the path's own value would stand in for it, on every message. A browser
# is on no push's path, so what only a browser sends (`Origin`, `Referer`,
# `Sec-Fetch-*`, `DNT`) is a publisher's attribute here. The credential rule errs
# toward withholding: an attribute whose name holds one of its words, or one of the
# path's names, is kept by the wrapped format only.
_METADATA_PREFIX = "x-goog-pubsub-"
_NOT_ATTRIBUTES = frozenset(
    {
        # HTTP's framing and hop-by-hop fields (RFC 9110 §7.6.1, RFC 9112): the
        # connection's, never the message's.
        "connection",
        "content-length",
        "expect",
        "host",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        # What Pub/Sub's push client writes on every push.
        "accept",
        "accept-encoding",
        "from",
        "user-agent",
        # What Google's front end, Cloud Run and other proxies add on the way.
        "cdn-loop",
        "disguised-host",
        "early-data",
        "forwarded",
        "max-forwards",
        "true-client-ip",
        "via",
        "x-client-ip",
        "x-cluster-client-ip",
        "x-real-ip",
        # What a proxy writes anew on every request it passes on: each delivery of one
        # message would carry another, and every redelivery count as a differing copy.
        "x-request-id",
        "x-correlation-id",
        # Tracing and its baggage (which may carry a user's identity).
        "b3",
        "baggage",
        "traceparent",
        "tracestate",
        "uber-trace-id",
    }
)
# `proxy-authorization` and `x-serverless-authorization` (Cloud Run's) among them.
_NOT_ATTRIBUTE_PREFIXES = (
    "x-goog-",
    "x-google-",
    "x-appengine-",
    "x-cloud-",
    "x-serverless-",
    "x-forwarded-",
    "x-original-",
    "x-envoy-",
    "x-amzn-",
    "x-amz-",
    "x-ms-",
    "x-arr-",
    "x-azure-",
    "x-vault-",
    "x-b3-",
    "x-datadog-",
    "x-ot-",
    "ot-",
    "proxy-",
    "cf-",
    "akamai-",
    "fastly-",
    # An identity an authenticating proxy or a TLS terminator vouches for, under a name
    # of its own (Authelia's Remote-User, Kong's X-Consumer-*, Tailscale's, Pomerium's,
    # nginx's and HAProxy's X-SSL-Client-*).
    "remote-",
    "x-consumer-",
    "tailscale-",
    "x-pomerium-",
    "x-ssl-",
)
# Words of a credential's name, anywhere in it: `authorization`, `authentication`,
# `apikey`, `x-auth-request-access-token`, `x-ms-token-aad-id-token`, `session-id`,
# `x-endpoint-api-userinfo` (an identity a gateway vouches for)…
_CREDENTIAL_WORDS = re.compile(
    r"auth|token|key|secret|passw|pwd|credential|cookie|session|signature|jwt|bearer"
    r"|csrf|xsrf|userinfo|principal|identity|assertion|saml|oidc|nonce"
)
# The producer's own signature (`app.ingest.signing`) is an attribute like any other.
_ATTRIBUTES_ALWAYS = frozenset({SIGNATURE_ATTRIBUTE})


def is_attribute(name: str) -> bool:
    """Whether a header of an unwrapped push (its lower-case name) is a publisher's
    attribute: not HTTP's, a proxy's or a tracer's, and not named as a credential."""
    if name in _ATTRIBUTES_ALWAYS:
        return True
    return not (
        name in _NOT_ATTRIBUTES
        or name.startswith(_NOT_ATTRIBUTE_PREFIXES)
        or _CREDENTIAL_WORDS.search(name)
    )


_decode_time = msgspec.json.Decoder(AwareDatetime).decode


def is_unwrapped(headers: Mapping[str, str]) -> bool:
    return f"{_METADATA_PREFIX}message-id" in headers


def decode_unwrapped(body: bytes, headers: Mapping[str, str]) -> PushedMessage:
    """`headers` must have lower-case names, as ASGI gives them."""
    message_id = _message_id(
        headers.get(f"{_METADATA_PREFIX}message-id", ""), f"{_METADATA_PREFIX}message-id"
    )
    where = f"{_METADATA_PREFIX}publish-time"
    published = headers.get(where, "")
    try:
        publish_time = _publish_time(_decode_time(msgspec.json.encode(published)), where)
    except msgspec.DecodeError:
        raise BadEnvelope(f"{where} is not an RFC 3339 time: {published!r}") from None
    attributes: dict[str, str] = {}
    for name, value in headers.items():
        if not is_attribute(name):
            continue
        if name in attributes:
            # Pub/Sub's names are case-sensitive, HTTP's are not: `Region` and `region`
            # of one message arrive as two `region` headers, whose values cannot be told
            # apart. Refused, the message is dead-lettered whole, its attributes kept.
            raise BadEnvelope(
                f"attribute header {name[:64]!r} sent twice: attributes whose names differ "
                "only by case cannot be told apart unwrapped (a wrapped push keeps them)"
            )
        attributes[name] = _text(value)
    # Content-Type may be the push client's own, where the publisher set none.
    if len(attributes) > MAX_ATTRIBUTES + ("content-type" in attributes):
        raise BadEnvelope(f"more than {MAX_ATTRIBUTES} attribute headers")
    for name, value in attributes.items():
        if len(name) > MAX_ATTRIBUTE_KEY or len(value) > MAX_ATTRIBUTE_VALUE:
            raise BadEnvelope(
                f"attribute header {name[:64]!r}: names are at most {MAX_ATTRIBUTE_KEY} "
                f"characters and values at most {MAX_ATTRIBUTE_VALUE}, as Pub/Sub allows"
            )
    subscription = headers.get(f"{_METADATA_PREFIX}subscription-name")
    if subscription is not None and len(subscription) > MAX_SUBSCRIPTION:
        raise BadEnvelope(
            f"{_METADATA_PREFIX}subscription-name is longer than {MAX_SUBSCRIPTION} characters"
        )
    _check_size(len(body), "the body")
    return PushedMessage(
        message_id=message_id,
        publish_time=publish_time,
        data=body,
        raw_data=body,
        attributes=attributes,
        subscription=subscription,
        delivery_attempt=_attempt(headers.get(f"{_METADATA_PREFIX}delivery-attempt")),
    )


def _text(value: str) -> str:
    """A header's value as Pub/Sub wrote it: the UTF-8 of an attribute's text, which the
    server reads as Latin-1 (each byte a character), read as UTF-8 again where it is."""
    if value.isascii():
        return value
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:  # not UTF-8, or not bytes read as Latin-1: as it came
        return value


def _message_id(value: str, where: str) -> str:
    # Stored under it, it must be one that look-ups and replay take (app.records).
    if not value:
        raise BadEnvelope(f"not a Pub/Sub push envelope: {where} is empty")
    problem = unaddressable(value)
    if problem is not None:
        raise BadEnvelope(
            f"not a Pub/Sub push envelope: {where} is {problem} (Pub/Sub's are ~16 digits)"
        )
    return value


def _check_size(size: int, where: str) -> None:
    if size > MAX_DATA_BYTES:
        raise BadEnvelope(
            f"not a Pub/Sub push envelope: {where} is {size:,} bytes, more than a Pub/Sub "
            f"message holds ({MAX_DATA_BYTES:,})"
        )


def _publish_time(published: datetime, where: str) -> int:
    try:
        return micros(published)
    except TimeOutOfRange as exc:
        raise BadEnvelope(f"not a Pub/Sub push envelope: {where}: {exc}") from None


def _whole(attempt: float | None) -> int | None:
    if isinstance(attempt, float):
        if not attempt.is_integer():
            raise BadEnvelope(
                f"not a Pub/Sub push envelope: `$.deliveryAttempt` {attempt!r} is not whole"
            )
        return int(attempt)
    return attempt


def _attempt(header: str | None) -> int | None:
    # isdigit() alone also admits "²" and other digits int() refuses.
    if header is None:
        return None
    if header.isascii() and header.isdigit() and int(header) <= MAX_DELIVERY_ATTEMPT:
        return int(header)
    raise BadEnvelope(
        f"{_METADATA_PREFIX}delivery-attempt {header[:64]!r} is not a whole number "
        f"from 0 to {MAX_DELIVERY_ATTEMPT}"
    )
