"""Read routes: thin, they parse parameters and call the Reader."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Request, get
from litestar.params import Parameter

from app.errors import BadParameter
from app.ingest.envelope import AwareDatetime
from app.query.service import DEFAULT_LIMIT, MAX_LIMIT, MessageView, Page, Reader, RecordView

_decode_time = msgspec.json.Decoder(AwareDatetime).decode
_PAGE_PARAMETERS = frozenset({"since", "until", "limit", "page_token"})


def _time(name: str, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return _decode_time(msgspec.json.encode(value))
    except msgspec.DecodeError:
        raise BadParameter(name, f"{value!r} is not an RFC 3339 time with an offset") from None


@get(
    "/v1/records",
    summary="Records in ingest order, one page at a time",
    description=(
        "Ordered by (ingest_time, message_id). Follow `next_page_token` to read on; a client "
        "that keeps following it sees every record exactly once, even while writes continue."
    ),
    tags=["records"],
)
async def list_records(
    request: Request[Any, Any, Any],
    reader: Reader,
    since: Annotated[
        str | None, Parameter(description="RFC 3339; records ingested at or after it")
    ] = None,
    until: Annotated[
        str | None, Parameter(description="RFC 3339; records ingested before it")
    ] = None,
    limit: Annotated[
        int, Parameter(ge=1, le=MAX_LIMIT, description="Records per page")
    ] = DEFAULT_LIMIT,
    page_token: Annotated[
        str | None, Parameter(description="From the previous page; overrides since and until")
    ] = None,
) -> Page:
    unknown = sorted(set(request.query_params) - _PAGE_PARAMETERS)
    if unknown:
        raise BadParameter(unknown[0], "unknown parameter")
    return await reader.page(
        since=_time("since", since),
        until=_time("until", until),
        limit=limit,
        page_token=page_token,
    )


@get("/v1/records/{record_id:str}", summary="The latest version of a record", tags=["records"])
async def get_record(reader: Reader, record_id: str) -> RecordView:
    return await reader.record(record_id)


@get(
    "/v1/messages/{message_id:str}",
    summary="What happened to one Pub/Sub message: stored, or rejected and why",
    tags=["records"],
)
async def get_message(reader: Reader, message_id: str) -> MessageView:
    return await reader.message(message_id)
