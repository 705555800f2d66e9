"""`recordline publish`: records to a Pub/Sub topic, and what the service made of them.

`publish` sends records to a Pub/Sub topic (the emulator's, or a real
project's), as JSON or in a topic schema's encoding (`--schema`), with the
client library's OpenTelemetry tracing on, so every
message carries a `googclient_traceparent` attribute and the service's push
span links back to the publish. (`follow`, which the tests and benches read with,
is `recordline tail`'s: app/commands/tail.py.)
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import functools
import io
import os
import re
import secrets
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import msgspec

from app.commands.arguments import at_least_one, not_negative, positive_seconds, service_url
from app.commands.credentials import NoCredentials, google_credentials
from app.commands.tail import WAIT_SECONDS
from app.commands.target import Unreachable, transport_reason
from app.records import micros, rfc3339
from recordline_dev.progress import POLL_SECONDS, Ledger

if TYPE_CHECKING:  # imported where used: `--help` must not pay for them (~0.2 s)
    from rich.console import RenderableType

    from app.ingest.publisher import SequencedPublisher

# The project the local tools use against the emulator when none is named.
DEV_PROJECT = "recordline-dev"
# Outstanding publishes before `publish()` blocks: bounds memory for any
# --count, and is the client library's own default message limit.
MAX_OUTSTANDING_MESSAGES = 1000
MAX_OUTSTANDING_BYTES = 10 * 1024 * 1024
# Redraw the progress bar at most this often: more is flicker, not information.
PROGRESS_SECONDS = 0.2


# -- publish ------------------------------------------------------------------


def run_prefix() -> str:
    """A prefix of ids no other run of publish uses: its start, and 16 random bits for
    two runs in the same second."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{secrets.token_hex(2)}-"


def generated_records(count: int, *, first: int = 0, prefix: str = "") -> Iterator[bytes]:
    """`count` records shaped as producers send them, ids `prefix` + `first`, `first + 1`, …"""
    encode = msgspec.json.encode
    for n in range(first, first + count):
        yield encode(
            {
                "id": f"{prefix}{n}",
                "timestamp": rfc3339(datetime.now(UTC)),
                "data": {"n": n, "text": "Ejemplo de datos"},
            }
        )


def file_records(lines: IO[bytes]) -> Iterator[bytes]:
    """Each non-blank line, as it is: invalid ones too, to exercise `rejected`."""
    for _, line in numbered_lines(lines):
        yield line


def numbered_lines(lines: IO[bytes]) -> Iterator[tuple[int, bytes]]:
    """Each non-blank line, stripped, with its number in the file (from 1)."""
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if line:
            yield number, line


# -- publish in a topic schema's encoding ---------------------------------------

# Example schemas of what `generated_records` makes, for `--schema`.
EXAMPLE_SCHEMAS = Path(__file__).resolve().parent / "schemas"


# Lines that do not fit a schema named in one error, at most.
_MISFITS_SHOWN = 10


class SchemaMismatch(ValueError):
    """A record that does not fit the schema; the message says which and why."""


class TopicSchema:
    """A schema file (`.proto`: Protocol Buffers, else Avro) and the encoding to publish in.

    Records go out as Pub/Sub expects on a topic with that schema: BINARY is
    Avro's binary encoding or the protobuf wire format, JSON is Avro's JSON
    encoding (a union value wrapped in its branch's name) or protobuf's JSON
    mapping.
    """

    def __init__(self, path: Path, encoding: str) -> None:
        self.path = path
        self.encoding = encoding
        self.definition = path.read_text()
        self.type = "PROTOCOL_BUFFER" if path.suffix == ".proto" else "AVRO"
        # The schema's id in a project: the file's name, as Pub/Sub allows ids.
        self.schema_id = re.sub(r"[^A-Za-z0-9_.~+%-]", "-", path.stem)
        if self.type == "AVRO":
            import fastavro

            from app.ingest.avro import AvroCodec

            self._avro = fastavro.parse_schema(msgspec.json.decode(self.definition))
            self._avro_json = AvroCodec(self.definition)
        else:
            from google.protobuf import descriptor_pool, message_factory

            from app.ingest.protobuf import compile_proto

            pool = descriptor_pool.DescriptorPool()
            files = compile_proto(self.definition).file
            for file in files:
                pool.Add(file)
            top = next(iter(pool.FindFileByName(files[-1].name).message_types_by_name.values()))
            self._message = message_factory.GetMessageClass(top)

    def encode(self, value: dict[str, Any]) -> bytes:
        """`value` (plain Python: datetimes, dicts, lists) in this schema's encoding."""
        try:
            if self.type == "AVRO":
                import fastavro

                if self.encoding == "BINARY":
                    out = io.BytesIO()
                    fastavro.schemaless_writer(out, self._avro, value)
                    return out.getvalue()
                text = io.StringIO()
                fastavro.json_writer(text, self._avro, [value])
                return text.getvalue().strip().encode()
            from google.protobuf import json_format

            message = json_format.ParseDict(_proto_json(value), self._message())
            if self.encoding == "BINARY":
                return bytes(message.SerializeToString())
            text_json: str = json_format.MessageToJson(message, indent=None)
            return text_json.encode()
        except Exception as exc:  # each library refuses a misfit its own way
            raise SchemaMismatch(f"does not fit {self.path.name}: {exc}") from None

    def encode_line(self, line: bytes) -> bytes:
        """A record written in this schema's JSON encoding, in the chosen encoding."""
        try:
            if self.type == "AVRO":
                # The service's own reader: it names the field that does not fit.
                value = self._avro_json.json(line)
                if not isinstance(value, dict):
                    raise SchemaMismatch(f"is not a record of {self.path.name}")
                return self.encode(value) if self.encoding == "BINARY" else line
            from google.protobuf import json_format

            message = json_format.Parse(line, self._message())
        except SchemaMismatch:
            raise
        except Exception as exc:  # Invalid (Avro), ParseError (protobuf): each names the field
            raise SchemaMismatch(f"does not fit {self.path.name}: {exc}") from None
        if self.encoding == "BINARY":
            return bytes(message.SerializeToString())
        return line

    def encode_lines(self, lines: Iterable[tuple[int, bytes]]) -> list[bytes]:
        """Every line encoded, or SchemaMismatch naming each line that does not fit
        (up to ten), before anything is published."""
        encoded: list[bytes] = []
        misfits: list[str] = []
        for number, line in lines:
            try:
                encoded.append(self.encode_line(line))
            except SchemaMismatch as exc:
                misfits.append(f"line {number} {exc}")
        if misfits:
            shown = "\n  ".join(misfits[:_MISFITS_SHOWN])
            more = len(misfits) - _MISFITS_SHOWN
            raise SchemaMismatch(
                f"{len(misfits)} records do not fit, nothing was published:\n  {shown}"
                + (f"\n  … and {more} more" if more > 0 else "")
            )
        return encoded


def _proto_json(value: Any) -> Any:
    """Plain Python values as protobuf's JSON mapping takes them: a time is an object
    of `seconds` and `nanos` (the example schema's own Timestamp message)."""
    match value:
        case datetime():
            us = micros(value)
            return {"seconds": us // 1_000_000, "nanos": us % 1_000_000 * 1000}
        case dict():
            return {k: _proto_json(v) for k, v in value.items()}
        case list():
            return [_proto_json(v) for v in value]
        case _:
            return value


def generated_values(count: int, *, first: int = 0, prefix: str = "") -> Iterator[dict[str, Any]]:
    """What `generated_records` publishes, as values for a topic schema to encode."""
    for n in range(first, first + count):
        yield {
            "id": f"{prefix}{n}",
            "timestamp": datetime.now(UTC),
            "data": {"n": n, "text": "Ejemplo de datos"},
        }


def attach_schema(
    schema: TopicSchema, topic: str, *, project: str, emulator_host: str
) -> tuple[str, str]:
    """Put `schema` into the emulator (a new revision if its text changed) and make it
    `topic`'s schema, as Terraform or gcloud would in a project. Its name and revision."""
    import grpc
    from google.api_core.exceptions import AlreadyExists
    from google.cloud.pubsub_v1 import PublisherClient
    from google.protobuf import field_mask_pb2
    from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport
    from google.pubsub_v1.services.schema_service import SchemaServiceClient
    from google.pubsub_v1.services.schema_service.transports import SchemaServiceGrpcTransport
    from google.pubsub_v1.types import Encoding, Schema

    channel = grpc.insecure_channel(emulator_host)
    try:
        schemas = SchemaServiceClient(transport=SchemaServiceGrpcTransport(channel=channel))
        name = f"projects/{project}/schemas/{schema.schema_id}"
        kind = getattr(Schema.Type, schema.type)
        wanted = {"name": name, "type_": kind, "definition": schema.definition}
        try:
            made = schemas.create_schema(
                request={
                    "parent": f"projects/{project}",
                    "schema_id": schema.schema_id,
                    "schema": wanted,
                },
                timeout=30,
            )
        except AlreadyExists:
            made = schemas.get_schema(request={"name": name, "view": "FULL"}, timeout=30)
            if made.definition != schema.definition:
                made = schemas.commit_schema(request={"name": name, "schema": wanted}, timeout=30)
        publisher = PublisherClient(transport=PublisherGrpcTransport(channel=channel))
        settings = {"schema": name, "encoding": getattr(Encoding, schema.encoding)}
        publisher.update_topic(
            request={
                "topic": {"name": topic, "schema_settings": settings},
                "update_mask": field_mask_pb2.FieldMask(paths=["schema_settings"]),
            },
            timeout=30,
        )
        return name, str(made.revision_id)
    finally:
        channel.close()


def topic_path(topic: str, project: str) -> str:
    return topic if topic.startswith("projects/") else f"projects/{project}/topics/{topic}"


def publisher_client(*, emulator_host: str | None = None, credentials: Any = None) -> Any:
    """A PublisherClient with tracing on, for the emulator at `emulator_host` or for Google
    (with `credentials`, from google_credentials())."""
    import grpc
    from google.cloud.pubsub_v1 import PublisherClient, types
    from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport

    options = types.PublisherOptions(
        enable_open_telemetry_tracing=True,
        flow_control=types.PublishFlowControl(
            message_limit=MAX_OUTSTANDING_MESSAGES,
            byte_limit=MAX_OUTSTANDING_BYTES,
            limit_exceeded_behavior=types.LimitExceededBehavior.BLOCK,
        ),
    )
    if emulator_host:
        # An explicit plaintext channel: the emulator speaks no TLS and wants no
        # credentials, whatever the environment says.
        channel = grpc.insecure_channel(emulator_host)
        return PublisherClient(
            publisher_options=options, transport=PublisherGrpcTransport(channel=channel)
        )
    return PublisherClient(publisher_options=options, credentials=credentials)


def trace_publishes(*, exporter: str = "none", otlp_endpoint: str = "") -> None:
    """Install a tracer provider, which the client library's tracing needs.

    The library traces through the global provider; without one its spans have
    no ids and no traceparent reaches the message. Spans are exported only
    when `exporter` is `otlp`; either way the ids travel with the messages.
    """
    from opentelemetry import trace
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider

    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        return  # the process has one already
    provider = TracerProvider(resource=Resource({SERVICE_NAME: "recordline-publish"}))
    if exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        endpoint = otlp_endpoint.rstrip("/") + "/v1/traces"
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    trace.set_tracer_provider(provider)


class Published(msgspec.Struct, kw_only=True):
    sent: int = 0
    acknowledged: int = 0
    failed: int = 0
    seconds: float = 0.0
    first_error: str | None = None
    # Pub/Sub's id for each payload, in input order (when asked for).
    message_ids: list[str] = msgspec.field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.acknowledged / self.seconds if self.seconds else 0.0


def publish(
    client: Any,
    topics: Sequence[str],
    payloads: Iterable[bytes],
    *,
    rate: float = 0.0,
    attributes: dict[str, str] | None = None,
    keep_ids: bool = False,
    retry: Any = None,
    result: Published | None = None,
) -> Published:
    """Publish every payload, round-robin over `topics`, at most `rate` per second (0: no limit).

    Blocks until Pub/Sub has acknowledged or refused each one; `retry` (a
    google.api_core Retry), when given, bounds how long each may take. Counts as
    it goes into `result` (a new one if None), which a caller interrupted still has.
    """
    options: dict[str, Any] = {} if retry is None else {"retry": retry}
    result = result if result is not None else Published()
    settled = threading.Condition()
    ids: dict[int, str] = {}

    def done(index: int, future: concurrent.futures.Future[str]) -> None:
        error = future.exception()
        with settled:
            if error is None:
                result.acknowledged += 1
                if keep_ids:
                    ids[index] = future.result()
            else:
                result.failed += 1
                result.first_error = result.first_error or publish_failure(error, topics)
            settled.notify()

    started = time.monotonic()
    try:
        for i, data in enumerate(payloads):
            if rate > 0:
                # Paced against the start, not the previous message: a late wake-up
                # is caught up at once instead of lowering the rate for good.
                delay = started + i / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            future = client.publish(topics[i % len(topics)], data, **options, **(attributes or {}))
            result.sent += 1
            future.add_done_callback(functools.partial(done, i))
        with settled:
            while result.acknowledged + result.failed < result.sent:
                settled.wait(timeout=PROGRESS_SECONDS)
    finally:
        result.seconds = time.monotonic() - started
        if keep_ids:
            result.message_ids = [ids.get(i, "") for i in range(result.sent)]
    return result


def publish_failure(error: BaseException, topics: Sequence[str]) -> str:
    """Why a publish failed, in words that say what to do: a topic that does not exist
    fails at once, and is not a publish "given up after" its wait."""
    from google.api_core import exceptions

    where = " or ".join(topics)
    match error:
        case exceptions.NotFound():
            return (
                f"{where} does not exist: create it, or name one that does (--topic); the dev "
                "stack's is `records` (`recordline dev` prints the command)"
            )
        case exceptions.PermissionDenied():
            return (
                f"not allowed to publish to {where} ({error.message}): the account needs "
                "roles/pubsub.publisher on it"
            )
        case exceptions.RetryError() | exceptions.DeadlineExceeded():
            return f"not acknowledged in time (--wait): {error}"
        case exceptions.GoogleAPICallError():
            return f"{type(error).__name__}: {error.message}"
    return f"{type(error).__name__}: {error}"


def publish_command(args: argparse.Namespace) -> int:
    from app.settings import Settings, SettingsError

    emulator_host = os.environ.get("PUBSUB_EMULATOR_HOST") or None
    project = args.project or os.environ.get("GOOGLE_CLOUD_PROJECT", "")
    if not project and not args.topic.startswith("projects/"):
        if emulator_host is None:
            print(
                "recordline publish: name the project (--project or GOOGLE_CLOUD_PROJECT), "
                "or set PUBSUB_EMULATOR_HOST to publish to the emulator",
                file=sys.stderr,
            )
            return 2
        project = DEV_PROJECT
    try:
        telemetry = Settings.load().telemetry
    except SettingsError as exc:
        print(f"recordline publish: {exc}", file=sys.stderr)
        return 2
    topic = topic_path(args.topic, project)
    # The file first: a mistyped path is said before anything is waited for.
    if args.file not in (None, "-"):
        try:
            with Path(args.file).open("rb"):
                pass
        except OSError as exc:
            _say_publish(f"--file {args.file}: {exc.strerror or exc}")
            return 2
    credentials = None
    if emulator_host is None:
        try:
            credentials = google_credentials()
        except NoCredentials as exc:
            _say_publish(str(exc))
            return 2
    trace_publishes(exporter=telemetry.traces_exporter, otlp_endpoint=telemetry.otlp_endpoint)
    if emulator_host is not None:
        try:
            wait_for_emulator(emulator_host, seconds=args.wait, say=_say_publish)
        except Unreachable as exc:
            _say_publish(str(exc))
            return 1
        except KeyboardInterrupt:
            _say_publish("interrupted")
            return 130
    schema: TopicSchema | None = None
    if args.schema is not None:
        try:
            schema = TopicSchema(Path(args.schema), args.encoding)
            if emulator_host is not None:
                name, revision = attach_schema(
                    schema, topic, project=project, emulator_host=emulator_host
                )
                print(
                    f"recordline publish: {topic} takes {name}@{revision} ({args.encoding})",
                    file=sys.stderr,
                )
        except Exception as exc:  # a file, a definition or the emulator said no
            print(f"recordline publish: --schema {args.schema}: {exc}", file=sys.stderr)
            return 2
    client = publisher_client(emulator_host=emulator_host, credentials=credentials)
    prefix = run_prefix() if args.id_prefix is None else args.id_prefix
    sequenced: SequencedPublisher | None = None
    if args.producer != "":
        from app.ingest.publisher import SequencedPublisher
        from app.ingest.signing import ProducerKeys
        from app.store.producers import SequenceError

        # Numbered, so the service stores a message the library publishes again (an
        # answer later than its timeout) once, and names any that never arrive; signed
        # when the service's RECORDLINE_PRODUCER_KEYS (in this environment) names it.
        producer = args.producer or f"recordline-publish-{prefix.rstrip('-')}"
        try:
            keys = ProducerKeys.parse(os.environ.get("RECORDLINE_PRODUCER_KEYS", ""))
            key = None if keys is None else keys.key_for(producer)
            sequenced = SequencedPublisher(
                client, producer, epoch=args.epoch, ended=args.epoch_ended, key=key
            )
        except (SequenceError, ValueError) as exc:
            print(f"recordline publish: {exc}", file=sys.stderr)
            return 2
        client = sequenced
        signed = ", signed" if key is not None else ""
        print(
            f"recordline publish: producer {producer!r} epoch {sequenced.epoch}, sequences from "
            f"0{signed}",
            file=sys.stderr,
        )

    source: IO[bytes] | None = None
    if args.file is None:
        # Ids of this run's own: a second run adds records, never overwrites the first's.
        # From 0, as the sequences: record {prefix}7 is sequence 7.
        total: int | None = args.count
        payloads: Iterable[bytes] = (
            generated_records(args.count, prefix=prefix)
            if schema is None
            else map(schema.encode, generated_values(args.count, prefix=prefix))
        )
        print(
            f"recordline publish: record ids {prefix}0 to {prefix}{args.count - 1}",
            file=sys.stderr,
        )
    elif schema is not None:
        # Lines in the schema's JSON encoding are all checked before any is
        # published: a file is published whole, or not at all.
        try:
            if args.file == "-":
                payloads = schema.encode_lines(numbered_lines(sys.stdin.buffer))
            else:
                with Path(args.file).open("rb") as lines:
                    payloads = schema.encode_lines(numbered_lines(lines))
        except SchemaMismatch as exc:
            print(f"recordline publish: {args.file}: {exc}", file=sys.stderr)
            return 1
        total = len(payloads)
    elif args.file == "-":
        total, payloads = None, file_records(sys.stdin.buffer)
    else:
        path = Path(args.file)
        with path.open("rb") as counted:
            total = sum(1 for line in counted if line.strip())
        source = path.open("rb")
        payloads = file_records(source)
    url = args.url or _dev_service(emulator_host)
    run = PublishRun(
        topic=topic,
        total=total,
        sequenced=sequenced,
        ledger=None
        if url is None or sequenced is None
        else Ledger(url, sequenced.producer, sequenced.epoch, token=args.token),
        wait=args.wait,
    )
    try:
        with run.shown():
            publish(
                client,
                [topic],
                payloads,
                rate=args.rate,
                retry=bounded_publish_retry(args.wait),
                keep_ids=run.ledger is not None,
                result=run.result,
            )
            run.wait_for_the_service()
    except SchemaMismatch as exc:
        print(f"\nrecordline publish: a record {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        stopped = run.summary(interrupted=True)
        print(f"\nrecordline publish: interrupted: {stopped}", file=sys.stderr)
        return 130
    finally:
        if source is not None:
            source.close()
    print(run.summary(), file=sys.stderr)
    if run.result.failed:
        said = run.result.first_error
        if schema is None and said is not None and said.startswith("InvalidArgument"):
            # Pub/Sub's words ("Could not parse message") say nothing of the schema that
            # refused it: a topic with one refuses what is not in its encoding.
            taken = topic_schema(topic, emulator_host=emulator_host, credentials=credentials)
            if taken is not None:
                said += (
                    f". {topic} takes messages in the schema {taken} only: publish in it "
                    "(--schema FILE --encoding …, the schema's file), or to a topic without "
                    "one (the dev stack's starts without one in every session)"
                )
        print(f"recordline publish: {run.result.failed} failed; the first: {said}", file=sys.stderr)
        return 1
    return 0


def topic_schema(topic: str, *, emulator_host: str | None, credentials: Any) -> str | None:
    """The schema `topic` takes messages in, and its encoding (`name (BINARY)`); None
    when it has none, or when Pub/Sub does not say."""
    from google.api_core.exceptions import GoogleAPICallError
    from google.pubsub_v1.types import Encoding

    client = publisher_client(emulator_host=emulator_host, credentials=credentials)
    try:
        found = client.get_topic(request={"topic": topic}, timeout=WAIT_SECONDS)
    except GoogleAPICallError:
        return None
    finally:
        client.stop()
    settings = found.schema_settings
    if not settings.schema:
        return None
    return f"{settings.schema} ({Encoding(settings.encoding).name})"


def _dev_service(emulator_host: str | None) -> str | None:
    """The service of the `recordline dev` stack running here whose emulator is at
    `emulator_host`, to count what it stored; None elsewhere."""
    if emulator_host is None:
        return None
    from recordline_dev.sessions import of_emulator

    session = of_emulator(emulator_host)
    return None if session is None or session.stack is None else session.stack.service_url


# Message ids looked up at most, among those the service did not store, to find the
# later copies of earlier messages they were taken for.
LOOKED_UP = 20


@dataclasses.dataclass(kw_only=True)
class PublishRun:
    """One `recordline publish`: what it sent, what Pub/Sub acknowledged and, where the
    service is known (`--url`, or the dev stack's), what the service did with them."""

    topic: str
    total: int | None
    sequenced: SequencedPublisher | None
    ledger: Ledger | None
    wait: float
    result: Published = dataclasses.field(default_factory=Published)
    waiting: bool = False
    # Of the messages the service did not store, those it took for later copies of
    # messages it stored before under the same id (looked up), and one such id.
    later_copies: int = 0
    later_copy_example: str = ""
    looked_up: int = 0
    began: datetime = dataclasses.field(default_factory=lambda: datetime.now(UTC))

    @contextlib.contextmanager
    def shown(self) -> Iterator[None]:
        """The status line while the block runs, the ledger read meanwhile."""
        from recordline_dev.progress import Rate, StatusLine, bar

        rate = Rate()

        def render() -> RenderableType:
            done = self.result
            text = f"{done.sent:,}" + (f"/{self.total:,}" if self.total else "")
            # Once all is sent, the run's own rate: the last seconds' would fall to nothing
            # while the service is waited for.
            per_second = done.rate if self.waiting else rate(done.acknowledged)
            text += f" sent · {per_second:,.0f}/s · {done.acknowledged:,} acked"
            if done.failed:  # before the service's counts: a line too long loses its end
                text += f" · {done.failed:,} failed"
            if self.ledger is not None:
                text += f" · {self.ledger.stored:,} stored · {self.ledger.rejected:,} rejected"
            if self.waiting:
                text += " · waiting for the service"
            return bar(done.sent, self.total, text)

        with contextlib.ExitStack() as stack:
            if self.ledger is not None:
                stack.enter_context(self.ledger)
            stack.enter_context(StatusLine(render))
            yield

    def wait_for_the_service(self) -> None:
        """Until the service answered for every message Pub/Sub acknowledged (stored,
        rejected, or a copy), or `wait` seconds with nothing new; then look up those it
        has not seen."""
        ledger = self.ledger
        if ledger is None:
            return
        self.waiting = True
        last, since = -1, time.monotonic()
        while True:
            ledger.read()
            if ledger.accounted >= self.result.acknowledged:
                break
            if ledger.accounted != last:
                last, since = ledger.accounted, time.monotonic()
            elif time.monotonic() - since > self.wait:
                break
            time.sleep(POLL_SECONDS)
        self.waiting = False
        self._look_up_copies()

    def _look_up_copies(self) -> None:
        """Whether messages of this run were taken for later copies of messages the
        service stored before under the same ids (`/v1/messages/{id}` says so, with
        `later_copies_differ` seen since the run began): up to LOOKED_UP of its ids,
        spread over the run. (The ledger counts such a copy with what was stored.)"""
        import httpx

        ledger = self.ledger
        ids = [message_id for message_id in self.result.message_ids if message_id]
        if ledger is None or not ids:
            return
        step = max(1, len(ids) // LOOKED_UP)
        # One connection for them all: a connection each took ~0.2 s, seconds in all after
        # everything was stored.
        with httpx.Client(
            base_url=ledger.url, headers=ledger.headers, timeout=WAIT_SECONDS
        ) as http:
            for message_id in ids[::step][:LOOKED_UP]:
                try:
                    answer = http.get(f"/v1/messages/{urllib.parse.quote(message_id, safe='')}")
                except httpx.HTTPError:
                    return
                self.looked_up += 1
                found = answer.json() if answer.status_code == 200 else {}
                later = found.get("later_copies_differ")
                if later and datetime.fromisoformat(later["last_seen"]) >= self.began:
                    self.later_copies += 1
                    self.later_copy_example = self.later_copy_example or message_id

    def summary(self, *, interrupted: bool = False) -> str:
        """One line: what was sent, acknowledged and stored, and, interrupted, what was
        not sent and how the producer goes on."""
        done = self.result
        if interrupted:
            text = (
                f"{done.sent:,} messages sent to {self.topic} in {done.seconds:.1f} s, "
                f"{done.acknowledged:,} of them acknowledged by Pub/Sub"
            )
        else:
            text = (
                f"published {done.acknowledged:,} of {done.sent:,} messages to {self.topic} in "
                f"{done.seconds:.1f} s ({done.rate:,.0f}/s)"
            )
        ledger = self.ledger
        if ledger is not None and interrupted:
            ledger.read()  # once more: what it did up to the interruption
        if ledger is not None and ledger.answered:
            text += (
                f"; the service stored {ledger.stored:,}"
                + (" so far" if interrupted else "")
                + f", rejected {ledger.rejected:,}"
                + (f", dropped {ledger.duplicates:,} copies" if ledger.duplicates else "")
            )
            unseen = done.acknowledged - ledger.accounted
            if unseen > 0 and not interrupted:
                text += (
                    f"; {unseen:,} not seen by it (yet): "
                    f"curl {ledger.url}/v1/producers/{self.sequenced_producer}"
                )
        elif ledger is not None and ledger.error:
            text += f"; what the service stored is unknown: {ledger.error}"
        if self.later_copies:
            text += (
                f"; {self.later_copies} of {self.looked_up} message ids looked up were taken "
                "for later copies of messages the service stored before under the same ids "
                "(an emulator numbering from 1 again on an old store), and not stored: "
                f"curl {self.ledger.url if self.ledger else ''}/v1/messages/"
                f"{self.later_copy_example}"
            )
        if interrupted:
            if self.total is not None and self.total > done.sent:
                text += f"; {self.total - done.sent:,} not sent"
            if self.sequenced is not None and self.sequenced.published:
                text += (
                    f". To go on as the same producer, say how many this epoch published: "
                    f"--producer {self.sequenced.producer} --epoch-ended "
                    f"{self.sequenced.epoch}:{self.sequenced.published}"
                )
        return text

    @property
    def sequenced_producer(self) -> str:
        return "" if self.sequenced is None else urllib.parse.quote(self.sequenced.producer)


def wait_for_emulator(host: str, *, seconds: float, say: Callable[[str], None]) -> None:
    """Return once the Pub/Sub emulator at `host` answers; Unreachable after `seconds`.

    The client library would otherwise retry a refused connection for ten
    minutes, showing nothing but an empty progress bar.
    """
    import httpx

    deadline = time.monotonic() + seconds
    said = False
    while True:
        try:
            if httpx.get(f"http://{host}/", timeout=2).status_code == 200:
                return
            reason = "not an emulator's answer"
        except httpx.TransportError as exc:
            reason = transport_reason(exc)
        if time.monotonic() >= deadline:
            raise Unreachable(
                f"no Pub/Sub emulator answers at {host} (PUBSUB_EMULATOR_HOST) after "
                f"{seconds:g} s: {reason}. Start one with `recordline dev` "
                "(`python3 dev.py dev` from a checkout), or fix PUBSUB_EMULATOR_HOST"
            )
        if not said:
            say(
                f"waiting for the Pub/Sub emulator at {host} (PUBSUB_EMULATOR_HOST): {reason}; "
                f"giving up after {seconds:g} s (--wait)"
            )
            said = True
        time.sleep(0.5)


def bounded_publish_retry(seconds: float) -> Any:
    """The client library's retry for Publish, bounded at `seconds` in all (its own: 600 s)."""
    from google.api_core import exceptions
    from google.api_core.retry import Retry, if_exception_type

    # The errors the library's own Publish retry retries.
    transient = if_exception_type(
        exceptions.Aborted,
        exceptions.Cancelled,
        exceptions.DeadlineExceeded,
        exceptions.InternalServerError,
        exceptions.ResourceExhausted,
        exceptions.ServiceUnavailable,
        exceptions.Unknown,
    )
    return Retry(initial=0.1, maximum=5.0, multiplier=2, predicate=transient, timeout=seconds)


def _epoch_ended(text: str) -> tuple[int, int]:
    epoch, colon, count = text.partition(":")
    if not colon or not epoch.isdigit() or not count.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not EPOCH:COUNT")
    return int(epoch), int(count)


def _say_publish(text: str) -> None:
    print(f"recordline publish: {text}", file=sys.stderr, flush=True)


def add_publish_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--topic", required=True, help="topic name, or projects/P/topics/T")
    parser.add_argument(
        "--project",
        help="Google Cloud project (GOOGLE_CLOUD_PROJECT; with PUBSUB_EMULATOR_HOST set, "
        "default recordline-dev, the dev stack's)",
    )
    what = parser.add_mutually_exclusive_group()
    what.add_argument(
        "--count",
        type=at_least_one,
        default=100,
        help="generate this many records (default 100)",
    )
    parser.add_argument(
        "--id-prefix",
        help="prefix of the generated records' ids (default: the run's start, "
        "20261124T093000-1a2b-, so that each run's ids are its own)",
    )
    what.add_argument(
        "--file", help="publish each line of this JSON Lines file as is (- for stdin)"
    )
    parser.add_argument(
        "--rate",
        type=not_negative,
        default=0.0,
        help="messages per second (default 0: as fast as possible)",
    )
    parser.add_argument(
        "--schema",
        metavar="FILE",
        help="publish in this topic schema's encoding (.avsc Avro, .proto Protocol Buffers): "
        "generated records fit the examples in recordline_dev/schemas/, --file lines are in "
        "the schema's JSON encoding; with PUBSUB_EMULATOR_HOST the schema is also made the "
        "topic's",
    )
    parser.add_argument(
        "--encoding",
        choices=["BINARY", "JSON"],
        default="BINARY",
        help="the topic schema's message encoding (default BINARY)",
    )
    parser.add_argument(
        "--wait",
        type=positive_seconds,
        default=WAIT_SECONDS,
        metavar="SECONDS",
        help=f"how long to wait for the emulator to answer, and for each message to be "
        f"acknowledged, before giving up (default {WAIT_SECONDS:g})",
    )
    parser.add_argument(
        "--producer",
        help="producer id the messages carry with their sequence numbers (recordline-producer; "
        "default: one of this run's own, recordline-publish-<run>); '' sends none. Signed "
        "(recordline-signature) when RECORDLINE_PRODUCER_KEYS names it",
    )
    parser.add_argument(
        "--epoch",
        type=int,
        help="the producer's epoch (recordline-epoch; default: now in microseconds, so a "
        "later run is a later epoch)",
    )
    parser.add_argument(
        "--epoch-ended",
        type=_epoch_ended,
        metavar="EPOCH:COUNT",
        help="an earlier epoch of the producer published COUNT messages "
        "(recordline-epoch-ended), so a gap at its end is found",
    )
    parser.add_argument(
        "--url",
        type=service_url,
        help="the service the topic pushes to, to show what it stored and rejected of the "
        "messages, from its ledger of producer sequences (default: with PUBSUB_EMULATOR_HOST, "
        "the `recordline dev` stack running here whose emulator it is)",
    )
    parser.add_argument("--token", help="with --url: a bearer token for reads that require one")
