"""Exports: a list's rows, filtered, as CSV or JSON Lines, streamed (`app.query.export`).

Design: docs/reading.md#exporting-a-filtered-set
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Final

from litestar import Request, get
from litestar.datastructures import ResponseHeader
from litestar.di import NamedDependency
from litestar.params import Parameter, PathParameter
from litestar.response import Stream

from app.docs import ExportOperation
from app.errors import BadParameter
from app.http.head import charge_of
from app.query.export import (
    DEFAULT_ROWS,
    MAX_COLUMN_LENGTH,
    MAX_COLUMNS,
    MAX_ROWS,
    MEDIA_TYPES,
    Bounds,
    Export,
    Format,
    Walk,
    columns_of,
    fields_of,
    selected_columns,
)
from app.query.filters import FILTER_PARAMETERS, REPEATABLE
from app.query.streams import STREAMS
from app.records import MAX_MICROS, micros, moment
from app.routes.query import (
    EXPORT_ERRORS,
    SELECT_DESCRIPTION,
    AttributeFilter,
    FieldFilter,
    Filter,
    MessageIdFilter,
    PageTokenText,
    Paging,
    ProducerFilter,
    RecordIdFilter,
    Since,
    Until,
    WhereFilter,
    select_parameter,
    selected,
    time_of,
)

ROW_BOUND: Final = "Recordline-Export-Max-Rows"
# Where every export is: what it is refused on its head under (`app.asgi.refused_on_head`).
EXPORT_PATH: Final = "/v1/export/"
_PARAMETERS: Final = (
    frozenset({"format", "columns", "select", "since", "until", "max_rows", "page_token"})
    | FILTER_PARAMETERS
)


_COLUMN: Final = f"[^,]{{1,{MAX_COLUMN_LENGTH}}}"
_COLUMNS_PATTERN: Final = f"^{_COLUMN}(,{_COLUMN}){{0,{MAX_COLUMNS - 1}}}$"
Name = Annotated[
    str,
    PathParameter(
        description=f"The list: {' or '.join(STREAMS)}", schema_extra={"enum": list(STREAMS)}
    ),
]
FormatParameter = Annotated[
    Format, Parameter(description="`csv` (a header, then a line a row) or `jsonl`")
]
Columns = Annotated[
    str | None,
    Parameter(
        description=(
            "Comma-separated: fields of the list's rows (all, by default), "
            "`attributes.KEY`, and for records `data.PATH` (a value inside the payload)"
        ),
        pattern=_COLUMNS_PATTERN,
    ),
]
MaxRows = Annotated[
    int,
    Parameter(
        ge=1,
        le=MAX_ROWS,
        description="Rows sent at most; past them (or 256 MiB, or four "
        "minutes) the export ends with a note and the `page_token` to go on with",
    ),
]


@get(
    "/v1/export/{name:str}",
    summary="A list's rows, filtered, as CSV or JSON Lines",
    description=(
        "Every row of the list the filters keep, from `since` (or a `page_token`) up to "
        "`until` (by default, when the export was asked), in ingest order, streamed page "
        "by page. An export cut at a bound ends with a line saying so: a JSON object under "
        "`recordline_export` (JSON Lines) or a line starting `# recordline_export` (CSV), "
        "with the `page_token` another export goes on from. The `Recordline-Export-Max-Rows` "
        "header says the row bound before the first row."
    ),
    tags=["records"],
    responses=EXPORT_ERRORS,
    operation_class=ExportOperation,
    response_headers=[
        ResponseHeader(
            name=ROW_BOUND,
            description="The most rows the export sends (`max_rows`)",
            value="100000",
            documentation_only=True,
        ),
        ResponseHeader(
            name="Content-Disposition",
            description="An attachment named after the list and the time",
            value='attachment; filename="records-20240427T120000Z.csv"',
            documentation_only=True,
        ),
    ],
)
async def export_rows(
    request: Request[Any, Any, Any],
    paging: NamedDependency[Paging],
    name: Name,
    format: FormatParameter = Format.CSV,
    columns: Columns = None,
    since: Since = None,
    until: Until = None,
    max_rows: MaxRows = DEFAULT_ROWS,
    page_token: PageTokenText = None,
    attribute: AttributeFilter = None,
    producer: ProducerFilter = None,
    record_id: RecordIdFilter = None,
    message_id: MessageIdFilter = None,
    field: FieldFilter = None,
    where: WhereFilter = None,
    select: Annotated[
        str | None,
        select_parameter(
            SELECT_DESCRIPTION + ". Here each entry is a column, headed as written; in place "
            "of `columns`, as the other reads write it"
        ),
    ] = None,
) -> Stream:
    given = request.query_params
    unknown = sorted(set(given) - _PARAMETERS)
    if unknown:
        raise BadParameter(unknown[0], "unknown parameter")
    for parameter in given:
        if parameter not in REPEATABLE and len(given.getall(parameter)) > 1:
            raise BadParameter(parameter, "given more than once; give it once")
    reader = paging.reader
    listing = paging.streams.named(name)
    keep = Filter(attribute, producer, record_id, message_id, field, where).of(listing)
    if select is not None and columns is not None:
        raise BadParameter("select", "give `select` or `columns`, not both")
    # `select` is read as every read reads it, a masked name refused (403) alike.
    picked = selected(listing, select, reader)
    chosen = columns_of(listing, columns) if picked is None else selected_columns(picked)
    bounds = Bounds.of(max_rows, paging.export_max_bytes)
    export = Export(format, chosen, bounds, fields=fields_of(listing))
    start, end = time_of("since", since), time_of("until", until)
    # Up to when it was asked (every row acknowledged by then, by the store's clock): a
    # snapshot, which the token of a cut export goes on with. A `since` later than that
    # asks for nothing, up to a moment after it.
    asked = await reader.settled()
    if end is None and page_token is None:
        end = moment(asked)
        if start is not None and start >= end:
            # (At the last time every store holds, no later one: an empty range.)
            end = moment(min(micros(start) + 1, MAX_MICROS))
    token = reader.token(listing, since=start, until=end, page_token=page_token, filter=keep)
    # The first page is read before the response begins: a refusal is a status. Each is
    # read for the fields the columns show (a record's `data` or `attributes` left
    # unread where none is).
    first = await reader.page(
        listing,
        since=None,
        until=None,
        limit=export.first_limit(),
        page_token=token,
        fields=export.fields,
    )

    async def read(after: str, limit: int) -> Any:
        return await reader.page(
            listing, since=None, until=None, limit=limit, page_token=after, fields=export.fields
        )

    walk = Walk(read, reader.token_after)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return Stream(
        export.run(token, first, walk, asked, held=charge_of(request.scope)),
        media_type=MEDIA_TYPES[format],
        headers={
            "Content-Disposition": f'attachment; filename="{listing.name}-{stamp}.{format}"',
            ROW_BOUND: str(max_rows),
            "Cache-Control": "no-store",
        },
    )


EXPORT_ROUTES = [export_rows]
