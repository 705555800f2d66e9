"""Content codings as RFC 9110 §12.5.3 negotiates them, and the compression of
responses that uses them (Litestar's own matched the coding's name as a
substring of the header: `gzip;q=0` got gzip, and `GZIP` none)."""

from __future__ import annotations

import re
from collections.abc import Sequence

from litestar.config.compression import CompressionConfig
from litestar.middleware import DefineMiddleware
from litestar.middleware.compression import CompressionMiddleware
from litestar.types import Receive, Scope, Send

from app.http.head import first_header

# Responses shorter than this go out as they are: gzip's header and the CPU
# would cost more than they save (a look-up, a problem document).
COMPRESS_FROM_BYTES = 1024


# A qvalue (RFC 9110 §12.4.2): 0 to 1 with at most three decimals.
_QVALUE = re.compile(r"0(\.[0-9]{0,3})?|1(\.0{0,3})?")


def accepted_codings(header: str) -> dict[str, float]:
    """An Accept-Encoding value as coding → qvalue (RFC 9110 §12.5.3).

    Codings and parameter names are case-insensitive; `x-gzip` is `gzip`; a
    member whose qvalue is malformed is taken as not acceptable (q=0).
    """
    codings: dict[str, float] = {}
    for member in header.split(","):
        name, *parameters = member.split(";")
        coding = name.strip().lower()
        if not coding:
            continue
        weight = 1.0
        for parameter in parameters:
            key, _, value = parameter.partition("=")
            if key.strip().lower() == "q":
                text = value.strip()
                weight = float(text) if _QVALUE.fullmatch(text) else 0.0
        coding = "gzip" if coding == "x-gzip" else coding
        codings[coding] = min(weight, codings.get(coding, weight))
    return codings


def negotiated_coding(header: str | None, offered: Sequence[str]) -> str | None:
    """The coding of `offered` the client accepts most, at least as much as none at all.

    No header, or an empty one, asks for none. `*` is any coding not listed,
    identity included. Unlisted, identity is only the fallback, acceptable
    unless excluded: the listed coding with the highest non-zero qvalue is
    preferred. On a tie between a coding and identity, the coding.
    """
    if not header:
        return None
    weights = accepted_codings(header)
    anything = weights.get("*")
    identity = weights.get("identity", 0.0 if anything is None else anything)
    best, best_weight = None, 0.0
    for coding in offered:
        weight = weights.get(coding, 0.0 if anything is None else anything)
        if weight > best_weight:
            best, best_weight = coding, weight
    return best if best is not None and best_weight >= identity else None


class NegotiatedCompression(CompressionMiddleware):
    """Litestar's compression, with the coding chosen as RFC 9110 says.

    Litestar's own looks for the coding's name as a substring of the header:
    `gzip;q=0` got gzip, and `GZIP` none.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        offered = [self.config.compression_facade.encoding]
        if self.config.gzip_fallback:
            offered.append("gzip")
        coding = negotiated_coding(first_header(scope, b"accept-encoding"), offered)
        if coding is None:
            await self.app(scope, receive, send)
            return
        compressing = self.create_compression_send_wrapper(
            send=send, compression_encoding=coding, scope=scope
        )
        await self.app(scope, receive, compressing)


def compression() -> DefineMiddleware:
    """Responses gzip-compressed where the client accepts it.

    Pages of records compress about eightfold: a follower at 1,000 msg/s would
    otherwise pay more for egress than the stores cost. Level 6 is zlib's
    default, most of level 9's ratio at a fraction of its CPU.
    """
    return DefineMiddleware(
        NegotiatedCompression,
        config=CompressionConfig(
            backend="gzip", minimum_size=COMPRESS_FROM_BYTES, gzip_compress_level=6
        ),
    )
