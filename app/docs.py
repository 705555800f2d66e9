"""The API's description: the OpenAPI document, and the page that shows it, offline.

The page is Swagger UI (swagger-ui-dist 5.35.0 from npm, Apache-2.0; its LICENSE,
NOTICE and the licenses of what it bundles are beside it) served from files in
this package, `app/docs_ui/`: `/docs` loads without reaching any other host,
and every version of the service shows the page it was tested with. Swagger UI
5 reads OpenAPI 3.1, which Litestar writes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from litestar import Request, Response
from litestar.datastructures import CacheControlHeader
from litestar.exceptions import NotFoundException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import (
    Link,
    OpenAPIFormat,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    RequestBody,
    Schema,
    Server,
)
from litestar.router import Router
from litestar.static_files import create_static_files_router
from litestar.types import Middleware

from app.ingest.envelope import (
    MAX_ATTRIBUTE_KEY,
    MAX_ATTRIBUTE_VALUE,
    MAX_ATTRIBUTES,
    MAX_DATA_BYTES,
    MAX_DELIVERY_ATTEMPT,
    MAX_SUBSCRIPTION,
)
from app.ingest.replay import MAX_NOTE_CHARACTERS
from app.records import ID_PATTERN, MAX_ID_LENGTH

DOCS_PATH = "/docs"
ASSETS_PATH = f"{DOCS_PATH}/ui"
ASSETS = Path(__file__).resolve().parent / "docs_ui"


def openapi_config(middleware: Sequence[Middleware] = (), mounted_at: str = "") -> OpenAPIConfig:
    """The document and its page, served through `middleware`; its server the path the
    app is `mounted_at` (a cell's system's), so that a client made from it, or the
    page's "Try it out", calls this app's routes there."""
    ui = SwaggerRenderPlugin(
        js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
        css_url=f"{ASSETS_PATH}/swagger-ui.css",
        standalone_preset_js_url=f"{ASSETS_PATH}/swagger-ui-standalone-preset.js",
        # The default icon is fetched from a CDN.
        favicon=f"<link rel='icon' type='image/png' href='{ASSETS_PATH}/favicon-32x32.png'>",
    )
    return OpenAPIConfig(
        title="Recordline",
        version="1",
        description=(
            "Pub/Sub push in, analytics-grade records out. Every error is an RFC 9457 "
            "problem document (application/problem+json) whose `type` the service describes "
            "at `/problems/<name>`."
        ),
        render_plugins=[ui],
        servers=[Server(url=mounted_at or "/")],
        # As Litestar makes it when given none, with `middleware`.
        openapi_router=Router(
            DOCS_PATH,
            route_handlers=[],
            include_in_schema=False,
            dto=None,
            return_dto=None,
            middleware=middleware,
            before_request=rows_selectable,
            after_request=_problem_if_absent,
        ),
    )


async def _problem_if_absent(response: Response[Any]) -> Response[Any]:
    """Litestar answers a path under /docs that no page has (`/docs/redoc`) with an HTML
    404 of its own; here, as everywhere else, an error is a problem document."""
    if response.status_code == 404:
        raise NotFoundException
    return response


def docs_assets() -> Router:
    """The page's scripts and styles, from the package; they change only with a release."""
    return create_static_files_router(
        path=ASSETS_PATH,
        directories=[ASSETS],
        include_in_schema=False,
        cache_control=CacheControlHeader(max_age=86_400),
    )


# -- what the routes' signatures cannot say ------------------------------------------
#
# Litestar writes each operation from its handler's signature. The push route reads
# its body by hand (two formats, decoded once), and no signature says where a
# list's rows lead: these operations add both, so that the document is the
# contract a client (or schemathesis) can be generated from.

_NULL = Schema(type=OpenAPIType.NULL)


def _nullable(schema: Schema) -> Schema:
    return Schema(one_of=[schema, _NULL])


def _present(*names: str) -> Schema:
    """At least one of `names` is there and not null (Pub/Sub sends two spellings)."""
    return Schema(
        any_of=[
            Schema(required=[name], properties={name: Schema(schema_not=_NULL)}) for name in names
        ]
    )


def push_envelope_schema() -> Schema:
    """The wrapped push body, as app.ingest.envelope.decode_wrapped takes it."""
    message_id = Schema(
        type=OpenAPIType.STRING,
        min_length=1,
        max_length=MAX_ID_LENGTH,
        pattern=ID_PATTERN,
        description="The Pub/Sub message id (the same under both spellings)",
    )
    publish_time = Schema(
        type=OpenAPIType.STRING,
        format=OpenAPIFormat.DATE_TIME,
        description="When Pub/Sub accepted the message: RFC 3339, with an offset",
    )
    message = Schema(
        type=OpenAPIType.OBJECT,
        properties={
            "data": Schema(
                type=OpenAPIType.STRING,
                # Base64 of the largest message Pub/Sub holds.
                max_length=(MAX_DATA_BYTES + 2) // 3 * 4,
                description="The payload, base64 (absent for a message of attributes "
                "alone). What is not base64, or not a valid payload, is kept as a "
                "rejection and acknowledged",
            ),
            "attributes": _nullable(
                Schema(
                    type=OpenAPIType.OBJECT,
                    max_properties=MAX_ATTRIBUTES,
                    property_names=Schema(type=OpenAPIType.STRING, max_length=MAX_ATTRIBUTE_KEY),
                    additional_properties=Schema(
                        type=OpenAPIType.STRING, max_length=MAX_ATTRIBUTE_VALUE
                    ),
                )
            ),
            "messageId": _nullable(message_id),
            "message_id": _nullable(message_id),
            "publishTime": _nullable(publish_time),
            "publish_time": _nullable(publish_time),
            "orderingKey": _nullable(Schema(type=OpenAPIType.STRING)),
        },
        all_of=[_present("messageId", "message_id"), _present("publishTime", "publish_time")],
    )
    return Schema(
        type=OpenAPIType.OBJECT,
        required=["message"],
        properties={
            "message": message,
            "subscription": _nullable(Schema(type=OpenAPIType.STRING, max_length=MAX_SUBSCRIPTION)),
            "deliveryAttempt": _nullable(
                Schema(type=OpenAPIType.INTEGER, minimum=0, maximum=MAX_DELIVERY_ATTEMPT)
            ),
        },
        description="A Pub/Sub push delivery, wrapped (the default). Fields Google adds "
        "later are ignored. An unwrapped delivery (`no_wrapper` with `write_metadata`) is "
        "the payload itself, its metadata in `x-goog-pubsub-*` headers and each attribute "
        "a header of its own",
    )


@dataclass
class PushOperation(Operation):
    """POST /pubsub/push: its body is required, and is a push delivery; its 204 has no
    content (the handler returns a `Response[None]` made once, which Litestar would
    otherwise describe as a JSON `null`)."""

    def __post_init__(self) -> None:
        self.request_body = RequestBody(
            required=True,
            content={"application/json": OpenAPIMediaType(schema=push_envelope_schema())},
        )
        stored = (self.responses or {}).get("204")
        if isinstance(stored, OpenAPIResponse):
            stored.content = None


def _operation(path: str) -> str:
    """A JSON pointer to the GET operation at `path` (RFC 6901: `/` is `~1`)."""
    return "#/paths/" + path.replace("~", "~0").replace("/", "~1") + "/get"


RECORD = _operation("/v1/records/{record_id}")
MESSAGE = _operation("/v1/messages/{message_id}")


def _links(operation: Operation, links: dict[str, Link]) -> None:
    answer = (operation.responses or {}).get("200")
    if isinstance(answer, OpenAPIResponse):
        answer.links = {**(answer.links or {}), **links}


def _next_page(listing: str) -> Link:
    return Link(
        operation_ref=_operation(listing),
        parameters={"page_token": "$response.body#/next_page_token"},
        description="The next page (absent once a bounded range is read to its end)",
    )


def rows_selectable(request: Request[Any, Any, Any]) -> None:
    """Before the document is served: a record's and a rejection's fields are each
    present unless `select` leaves them out, which no view's signature can say (its
    fields are all required). Once: the document is kept."""
    schemas = request.app.openapi_schema.components.schemas or {}
    for view in ("RecordView", "RejectionView"):
        found = schemas.get(view)
        if found is not None and found.required:
            found.required = None
            found.description = (
                f"{found.description or ''} Every field is present unless `select` leaves it out."
            ).strip()


@dataclass
class RecordsOperation(Operation):
    """GET /v1/records: a page leads to each record, its message, and the next page."""

    def __post_init__(self) -> None:
        _links(
            self,
            {
                "record": Link(
                    operation_ref=RECORD,
                    parameters={"record_id": "$response.body#/records/0/id"},
                    description="The latest version of the page's first record",
                ),
                "message": Link(
                    operation_ref=MESSAGE,
                    parameters={"message_id": "$response.body#/records/0/message_id"},
                    description="What became of the page's first record's message",
                ),
                "next": _next_page("/v1/records"),
            },
        )


@dataclass
class RejectionsOperation(Operation):
    """GET /v1/rejections: a page leads to each rejected message, and the next page."""

    def __post_init__(self) -> None:
        _links(
            self,
            {
                "message": Link(
                    operation_ref=MESSAGE,
                    parameters={"message_id": "$response.body#/rejections/0/message_id"},
                    description="What became of the page's first rejected message",
                ),
                "next": _next_page("/v1/rejections"),
            },
        )


@dataclass
class ProducersOperation(Operation):
    """GET /v1/producers: a page leads to each producer, and the next page."""

    def __post_init__(self) -> None:
        _links(
            self,
            {
                "producer": Link(
                    operation_ref=_operation("/v1/producers/{producer}"),
                    parameters={"producer": "$response.body#/producers/0/producer"},
                    description="Every gap and count of the page's first producer",
                ),
                "next": _next_page("/v1/producers"),
            },
        )


@dataclass
class ReplayOperation(Operation):
    """POST /v1/replay: each outcome leads to its message."""

    def __post_init__(self) -> None:
        _links(
            self,
            {
                "message": Link(
                    operation_ref=MESSAGE,
                    parameters={"message_id": "$response.body#/results/0/message_id"},
                    description="What became of the first message replayed",
                )
            },
        )


def _attributes_schema() -> Schema:
    """A message's attributes, as a push may carry them."""
    return Schema(
        type=OpenAPIType.OBJECT,
        max_properties=MAX_ATTRIBUTES,
        property_names=Schema(type=OpenAPIType.STRING, max_length=MAX_ATTRIBUTE_KEY),
        additional_properties=Schema(type=OpenAPIType.STRING, max_length=MAX_ATTRIBUTE_VALUE),
    )


def publish_request_schema() -> Schema:
    """POST /v1/publish's body, as app.ingest.topic.PublishRequest takes it: no member
    besides these (a misspelt `dry_run` is refused, never published)."""
    return Schema(
        type=OpenAPIType.OBJECT,
        required=["data"],
        properties={
            "data": Schema(type=OpenAPIType.STRING, description="The message data, base64"),
            "attributes": _attributes_schema(),
            "dry_run": Schema(
                type=OpenAPIType.BOOLEAN,
                description="Say what today's validation makes of it; publish nothing",
            ),
            "note": Schema(
                one_of=[
                    Schema(type=OpenAPIType.STRING, max_length=MAX_NOTE_CHARACTERS),
                    Schema(type=OpenAPIType.NULL),
                ],
                description="Why, in the operator's words: kept with the message id in the "
                "access record",
            ),
        },
        additional_properties=False,
    )


@dataclass
class PublishOperation(Operation):
    """POST /v1/publish: its body has no member besides its own (the struct refuses
    any other, which the generated schema would allow); the message published leads to
    what became of it."""

    def __post_init__(self) -> None:
        self.request_body = RequestBody(
            required=True,
            content={"application/json": OpenAPIMediaType(schema=publish_request_schema())},
        )
        _links(
            self,
            {
                "message": Link(
                    operation_ref=MESSAGE,
                    parameters={"message_id": "$response.body#/message_id"},
                    description="What became of the message once its push is answered",
                )
            },
        )


@dataclass
class StreamOperation(Operation):
    """GET /v1/streams/{name}: a chunk as JSON, events with `live=sse`, and the answers
    a live or conditional read may get besides (204 at the long-poll's end, 304)."""

    def __post_init__(self) -> None:
        answer = (self.responses or {}).get("200")
        if isinstance(answer, OpenAPIResponse):
            answer.content = {
                "application/json": OpenAPIMediaType(
                    schema=Schema(
                        type=OpenAPIType.ARRAY,
                        items=Schema(type=OpenAPIType.OBJECT),
                        description="The rows `/v1/records` (or `/v1/rejections`) lists",
                    )
                ),
                # One event's schema: its `event` and its `data` line.
                "text/event-stream": OpenAPIMediaType(
                    schema=Schema(
                        type=OpenAPIType.OBJECT,
                        required=["event", "data"],
                        properties={
                            "event": Schema(type=OpenAPIType.STRING, enum=["data", "control"]),
                            "data": Schema(
                                type=OpenAPIType.STRING,
                                description="`data`: a JSON array of rows; `control`: a JSON "
                                "object of `streamNextOffset`, `streamCursor` and `upToDate`",
                            ),
                        },
                        description="With `live=sse`: `data` events, each followed by a "
                        "`control` event",
                    )
                ),
            }
            headers = answer.headers
        else:
            headers = None
        self.responses = {
            **(self.responses or {}),
            "204": OpenAPIResponse(
                description="A long-poll that found nothing new before its end: read again "
                "from `Stream-Next-Offset`",
                headers=headers,
            ),
            "304": OpenAPIResponse(
                description="The chunk is the one `If-None-Match` names", headers=headers
            ),
        }


@dataclass
class ExportOperation(Operation):
    """GET /v1/export/{name}: the rows as CSV or JSON Lines (text, streamed)."""

    def __post_init__(self) -> None:
        answer = (self.responses or {}).get("200")
        if isinstance(answer, OpenAPIResponse):
            answer.content = {
                "text/csv": OpenAPIMediaType(
                    schema=Schema(
                        type=OpenAPIType.STRING,
                        description="A header line, then a line a row (RFC 4180); a last "
                        "line starting `# recordline_export` if the export was cut",
                    )
                ),
                "application/jsonl": OpenAPIMediaType(
                    schema=Schema(
                        type=OpenAPIType.STRING,
                        description="A JSON object a line, a row each; a last one under "
                        "`recordline_export` if the export was cut",
                    )
                ),
            }
