"""A local replica of the cloud path: the Pub/Sub emulator pushing to the service.

`recordline dev` starts Google's Pub/Sub emulator (it ships with the Google
Cloud CLI and needs Java), starts `recordline serve` with a random push
secret, and wires them together the way Terraform wires the cloud: a topic, a
push subscription with a dead-letter topic (and, on request, a retry policy:
see `wire`), and a pull subscription that keeps the dead letters. The end-to-end tests and the e2e
benchmark use the same pieces. With `--serving` the service runs on the
serving tier instead of DuckDB: Spanner's emulator with the service's
database, and the BigQuery stand-in (serving.py), in the same process group.

The emulator is started directly, not through `gcloud beta emulators`, whose
Java child outlives the wrapper. It and the service run in one process group,
not the terminal's, which `recordline dev` stops whatever signal stops it
(processes.py). Each session gets a store of its own: the emulator numbers
message ids from 1 every time it starts, and a store that outlived a session
would take the next session's messages for copies of its own.

What the emulator does not do: it sends no OIDC token (the service checks a
shared secret in the push URL instead) and no `deliveryAttempt`. It also
pushes at most two messages at a time per subscription (two push loops, each
pulling one message and waiting for its answer), where Pub/Sub pushes
hundreds: throughput through it is about 2 / (push round trip).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import itertools
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import msgspec

from app.records import CANARY_ATTRIBUTE, rfc3339
from app.settings import Settings, SettingsError
from recordline_dev.client import DEV_PROJECT, EXAMPLE_SCHEMAS, publisher_client
from recordline_dev.processes import (
    EmulatorNotFound,
    Interrupted,
    PortTaken,
    ProcessGroup,
    StopSignals,
    become_subreaper,
    emulator_in_sdk,
    ensure_all_free,
    free_port,
    listener,
    stop_group,
)
from recordline_dev.sessions import DEV_SESSIONS, STORE_FILE, Stack, holding, sessions

if TYPE_CHECKING:
    from recordline_dev.progress import PushCounts

# Where the Google Cloud CLI keeps the emulator, below its SDK root.
EMULATOR_IN_SDK = Path("platform/pubsub-emulator/bin/cloud-pubsub-emulator")
# The JVM starts in ~3 s on two cores; 60 s covers a cold disk and a busy machine.
EMULATOR_START_SECONDS = 60.0
# The emulator's Java process answers SIGTERM at once; a wedged JVM gets SIGKILL.
EMULATOR_STOP_SECONDS = 5.0

DEV_TOPIC = "records"
# `recordline dev --serving`: the stand-in's dataset, Spanner's instance and database.
DEV_DATASET = "recordline"
DEV_INSTANCE = "recordline"
DEV_DATABASE = "recordline"
# Pub/Sub's smallest allowed value, so a poison message reaches the dead-letter
# topic after the fewest pushes.
MIN_DELIVERY_ATTEMPTS = 5


def find_emulator(environ: Mapping[str, str] | None = None) -> Path:
    """The emulator's launcher: RECORDLINE_PUBSUB_EMULATOR, else the Google Cloud CLI's.

    Raises EmulatorNotFound with a message that starts "Pub/Sub emulator", so a
    test that skips on it says why in words a reader can act on.
    """
    environ = os.environ if environ is None else environ
    explicit = environ.get("RECORDLINE_PUBSUB_EMULATOR", "")
    if explicit:
        path = Path(explicit)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise EmulatorNotFound(
                f"Pub/Sub emulator: RECORDLINE_PUBSUB_EMULATOR={explicit} is not an executable"
            )
    else:
        path = _emulator_in_sdk()
    if shutil.which("java", path=environ.get("PATH")) is None and not environ.get("JAVA_HOME"):
        raise EmulatorNotFound(
            "Pub/Sub emulator: Java is not installed (the emulator needs a Java 11+ runtime)"
        )
    return path


def _emulator_in_sdk() -> Path:
    return emulator_in_sdk(
        "Pub/Sub emulator",
        EMULATOR_IN_SDK,
        install="`gcloud components install pubsub-emulator` (or apt-get install "
        "google-cloud-cli-pubsub-emulator)",
        override="RECORDLINE_PUBSUB_EMULATOR",
    )


def wait_until_ready(url: str, *, timeout: float, process: subprocess.Popen[bytes]) -> None:
    """Poll `url` until it answers 200; fail early if `process` exits."""
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"exited with status {process.returncode} before {url} answered")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer within {timeout:g} s")
        time.sleep(0.1)


class Emulator:
    """One running emulator; a context manager that stops it.

    In a process group of its own, or, given `group`, in that one (which then
    stops it: `recordline dev`).
    """

    def __init__(
        self,
        launcher: Path,
        *,
        port: int = 0,
        log_path: Path | None = None,
        group: ProcessGroup | None = None,
    ) -> None:
        self.port = port or free_port()
        self.host = f"127.0.0.1:{self.port}"
        self._own_log = log_path is None
        if log_path is None:
            fd, name = tempfile.mkstemp(prefix="pubsub-emulator-", suffix=".log")
            os.close(fd)
            log_path = Path(name)
        self.log_path = log_path
        self._grouped = group is not None
        argv = [str(launcher), "--host=127.0.0.1", f"--port={self.port}"]
        # The emulator logs a line per connection: into a pipe nobody drains,
        # it would block after 64 KiB, so its output goes to a file.
        with log_path.open("ab") as log:
            if group is not None:
                self._process = group.start(
                    "Pub/Sub emulator",
                    argv,
                    stop_seconds=EMULATOR_STOP_SECONDS,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            else:
                self._process = subprocess.Popen(  # noqa: S603 - our own argv, no shell
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        try:
            wait_until_ready(
                f"http://{self.host}/", timeout=EMULATOR_START_SECONDS, process=self._process
            )
        except RuntimeError as exc:
            tail = self.log_tail()
            self.stop()
            raise RuntimeError(f"Pub/Sub emulator: {exc}\n{tail}") from None

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def process(self) -> subprocess.Popen[bytes]:
        return self._process

    def log_tail(self, lines: int = 20) -> str:
        text = self.log_path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if not self._grouped:
            stop_group(self._process, timeout=EMULATOR_STOP_SECONDS)
        if self._own_log:
            self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


class Backoff(msgspec.Struct, frozen=True):
    """A push subscription's retry policy: exponential, between these bounds (seconds)."""

    minimum: float
    maximum: float


# Short bounds (Pub/Sub's defaults are 10 s and 600 s): in development a fixed
# bug should show results soon.
DEV_BACKOFF = Backoff(1.0, 10.0)


class PubSubAdmin:
    """Topics and subscriptions on the emulator, through google-cloud-pubsub's admin clients.

    The clients are synchronous gRPC; each call runs in a worker thread so
    the tests' and the dev stack's event loops keep running. The channel is
    plaintext to `host`: the emulator speaks no TLS and wants no credentials.
    """

    def __init__(self, host: str, project: str = DEV_PROJECT) -> None:
        # Imported here: `recordline dev --help` need not load the Pub/Sub client.
        import grpc
        from google.cloud import pubsub_v1
        from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport
        from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

        self.project = project
        self._channel = grpc.insecure_channel(host)
        self._publisher = pubsub_v1.PublisherClient(
            transport=PublisherGrpcTransport(channel=self._channel)
        )
        self._subscriber = pubsub_v1.SubscriberClient(
            transport=SubscriberGrpcTransport(channel=self._channel)
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_: object) -> None:
        self._channel.close()

    def topic_path(self, topic: str) -> str:
        return self._publisher.topic_path(self.project, topic)  # type: ignore[no-any-return]

    def subscription_path(self, subscription: str) -> str:
        path = self._subscriber.subscription_path(self.project, subscription)
        return path  # type: ignore[no-any-return]

    async def create_topic(self, topic: str) -> str:
        name = self.topic_path(topic)
        await _exists_already(self._publisher.create_topic, request={"name": name})
        return name

    async def create_push_subscription(
        self,
        subscription: str,
        *,
        topic: str,
        endpoint: str,
        ack_deadline_seconds: int = 10,
        backoff: Backoff | None = None,
        dead_letter_topic: str | None = None,
        max_delivery_attempts: int = MIN_DELIVERY_ATTEMPTS,
        unwrapped: bool = False,
    ) -> str:
        """`unwrapped`: the data as the body, metadata and attributes as headers
        (`no_wrapper` with `write_metadata`)."""
        push_config: dict[str, Any] = {"push_endpoint": endpoint}
        if unwrapped:
            push_config["no_wrapper"] = {"write_metadata": True}
        request: dict[str, Any] = {
            "name": self.subscription_path(subscription),
            "topic": self.topic_path(topic),
            "push_config": push_config,
            "ack_deadline_seconds": ack_deadline_seconds,
        }
        if backoff is not None:
            request["retry_policy"] = {
                "minimum_backoff": timedelta(seconds=backoff.minimum),
                "maximum_backoff": timedelta(seconds=backoff.maximum),
            }
        if dead_letter_topic is not None:
            request["dead_letter_policy"] = {
                "dead_letter_topic": self.topic_path(dead_letter_topic),
                "max_delivery_attempts": max_delivery_attempts,
            }
        await _exists_already(self._subscriber.create_subscription, request=request)
        return str(request["name"])

    async def create_pull_subscription(self, subscription: str, *, topic: str) -> str:
        name = self.subscription_path(subscription)
        request = {"name": name, "topic": self.topic_path(topic)}
        await _exists_already(self._subscriber.create_subscription, request=request)
        return name

    async def pull(self, subscription: str, *, max_messages: int = 100) -> list[dict[str, Any]]:
        """Messages waiting on a pull subscription, acknowledged once returned.

        Each as the REST API shows one: `messageId`, `publishTime`,
        `attributes` and `data` (base64).
        """
        name = self.subscription_path(subscription)
        response = await asyncio.to_thread(
            self._subscriber.pull,
            # Without return_immediately the emulator holds the call open until
            # a message arrives, which is never for an empty dead-letter queue.
            request={
                "subscription": name,
                "max_messages": max_messages,
                "return_immediately": True,
            },
            timeout=30,
        )
        received = list(response.received_messages)
        if received:
            await asyncio.to_thread(
                self._subscriber.acknowledge,
                request={"subscription": name, "ack_ids": [r.ack_id for r in received]},
            )
        return [
            {
                "messageId": r.message.message_id,
                "publishTime": r.message.publish_time.isoformat(),
                "attributes": dict(r.message.attributes),
                "data": base64.b64encode(r.message.data).decode(),
            }
            for r in received
        ]

    async def delete_subscription(self, subscription: str) -> None:
        request = {"subscription": self.subscription_path(subscription)}
        await _gone_already(self._subscriber.delete_subscription, request=request)

    async def delete_topic(self, topic: str) -> None:
        await _gone_already(self._publisher.delete_topic, request={"topic": self.topic_path(topic)})


async def _exists_already(call: Any, **kwargs: Any) -> None:
    from google.api_core.exceptions import AlreadyExists

    # It exists already, as wanted: a rerun against a running emulator.
    with contextlib.suppress(AlreadyExists):
        await asyncio.to_thread(call, **kwargs, timeout=30)


async def _gone_already(call: Any, **kwargs: Any) -> None:
    from google.api_core.exceptions import NotFound

    with contextlib.suppress(NotFound):
        await asyncio.to_thread(call, **kwargs, timeout=30)


# -- the canary -----------------------------------------------------------------

# As infra/terraform/modules/system/canary.tf's Cloud Scheduler job publishes it.
CANARY_PAYLOAD = msgspec.json.encode({"id": CANARY_ATTRIBUTE, "data": {"canary": True}})


class Canary:
    """Publishes the canary record to `topic` every `every` seconds, on a thread of its own.

    The same message the cloud's Scheduler job publishes once a minute, so the
    service's `recordline.canary.age` (at /metrics) shows locally what the
    canary alert watches in the cloud.
    """

    def __init__(self, publisher: Any, topic: str, *, every: float = 60.0) -> None:
        self._publisher = publisher
        self._topic = topic
        self._every = every
        self._stopped = threading.Event()
        self.published = 0
        self._thread = threading.Thread(target=self._run, name="canary", daemon=True)

    def _run(self) -> None:
        while not self._stopped.is_set():
            try:
                future = self._publisher.publish(
                    self._topic, CANARY_PAYLOAD, **{CANARY_ATTRIBUTE: "1"}
                )
                future.result(timeout=30)
                self.published += 1
            except Exception as exc:  # the canary's job is to keep going
                _stderr(f"recordline dev: canary not published: {exc}")
            self._stopped.wait(self._every)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=35)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


# -- recordline dev -------------------------------------------------------------


# Where `recordline dev` keeps each session's directory (its store and emulator log),
# where `recordline sql --dev` looks for the newest.
DEV_DATA_DIR = DEV_SESSIONS
# The service's own grace (8 s by default) plus time to close the store.
SERVICE_STOP_SECONDS = 15.0
SERVICE_START_SECONDS = 60.0
# How often `recordline dev` looks at its children once the stack runs.
_WATCH_SECONDS = 0.5


class DevStack(msgspec.Struct, kw_only=True, frozen=True):
    """What `recordline dev` set up, for the instructions it prints."""

    service_url: str
    store: str
    # The session's directory; the store is in it unless `--store` named another.
    session: str = ""
    shared_store: bool = False
    emulator_host: str | None = None
    project: str = DEV_PROJECT
    topic: str = DEV_TOPIC
    push_subscription: str = ""
    dead_letter_subscription: str = ""
    emulator_log: str = ""
    # The service's RECORDLINE_PUSH_TOKEN, which replay sends as its bearer token.
    push_token: str = ""
    # How the reader runs the tools: `recordline`, or `python3 dev.py` from a checkout.
    command: str = "recordline"
    # --serving: the Spanner database (RECORDLINE_SERVING) and where each part runs.
    serving: str = ""
    spanner_host: str = ""
    spanner_log: str = ""
    bigquery_write: str = ""
    bigquery_jobs: str = ""
    bigquery_log: str = ""


async def wire(
    admin: PubSubAdmin,
    *,
    topic: str,
    service_url: str,
    push_token: str | None,
    backoff: Backoff | None = None,
    max_delivery_attempts: int | None = MIN_DELIVERY_ATTEMPTS,
    # Above the service's 8 s write deadline, so a slow store answers 503
    # before Pub/Sub gives up on the push.
    ack_deadline_seconds: int = 10,
    unwrapped: bool = False,
) -> tuple[str, str | None]:
    """Topic → push subscription → service, with a kept dead-letter queue.

    Returns the push subscription's name and the dead-letter queue's (None
    when `max_delivery_attempts` is None: no dead-letter policy). With no
    `push_token`, pushes carry no credentials (a service that checks none);
    `unwrapped`, as `PubSubAdmin.create_push_subscription` says.

    The emulator (0.8.20) is no faithful model of redelivery, and both ways it
    differs bear on these choices:
    - With a retry policy (`backoff`) it strands messages: after a 3 s outage
      that refused 600 messages twice each, ~150 were never pushed again in
      the next 100 s. So the retry policy Terraform sets in the cloud is
      opt-in here.
    - Without one it redelivers at once: ~1 s after a 503, immediately after
      a refused connection. A service that is down for a restart therefore
      burns through 5 attempts in well under a second, and with a dead-letter
      policy messages land on the dead-letter topic that Pub/Sub, backing off
      for 10 s and more, would have delivered after the restart.
    """
    await admin.create_topic(topic)
    kept = None
    dead_letters = f"{topic}-dead-letter"
    if max_delivery_attempts is not None:
        await admin.create_topic(dead_letters)
        # Created before the push subscription, so no dead letter ever lands on
        # a topic without a subscription (Pub/Sub would drop it).
        kept = await admin.create_pull_subscription(f"{dead_letters}-kept", topic=dead_letters)
    push = await admin.create_push_subscription(
        f"{topic}-push",
        topic=topic,
        endpoint=f"{service_url}/pubsub/push"
        + (f"?token={push_token}" if push_token is not None else ""),
        ack_deadline_seconds=ack_deadline_seconds,
        backoff=backoff,
        dead_letter_topic=dead_letters if max_delivery_attempts is not None else None,
        max_delivery_attempts=max_delivery_attempts or MIN_DELIVERY_ATTEMPTS,
        unwrapped=unwrapped,
    )
    return push, kept


# The publish rate the banner suggests: well within what each stack keeps up with.
DUCKDB_RATE = 100
SERVING_RATE = 50


def instructions(stack: DevStack) -> str:
    tool = stack.command
    lines = [
        "",
        "Recordline dev stack",
        f"  service    {stack.service_url}  (API docs at /docs)",
        f"  store      {stack.store}",
    ]
    if stack.serving:
        indent = " " * 13
        lines += [
            f"{indent}the BigQuery stand-in: Storage Write at {stack.bigquery_write},",
            f"{indent}jobs.query at {stack.bigquery_jobs}  (log {stack.bigquery_log})",
            f"  serving    {stack.serving}",
            f"{indent}Spanner's emulator at {stack.spanner_host}  (log {stack.spanner_log}),",
            f"{indent}made with the statements `{tool} schema spanner` prints",
            f"{indent}both keep this session's rows in memory: they go when the stack stops",
        ]
    elif stack.shared_store:
        lines += [
            "             named by --store: it holds no message an earlier session's emulator",
            "             numbered (one that does is refused: the emulator numbers ids from 1",
            "             again, and its messages would be taken for copies of those)",
        ]
    else:
        indent = " " * 13
        lines += [
            f"{indent}this session's own: the emulator numbers message ids from 1 in every",
            f"{indent}session, so sessions sharing a store would take new messages for old ones.",
            f"{indent}Earlier sessions' stores stay in {Path(stack.session).parent}:",
            f"{indent}`{tool} serve --store URL` reads one, `{tool} sql --dev` the newest.",
        ]
    if stack.emulator_host is None:
        lines += [
            "  Pub/Sub    not running: the emulator is not installed (see above); the service",
            "             runs alone and takes pushes on POST /pubsub/push",
        ]
    else:
        emulator_env = f"PUBSUB_EMULATOR_HOST={stack.emulator_host}"
        # Measured (`bench devrate`, 2 cores): the serving stack, three servers on one
        # machine, kept up with 100 msg/s and fell behind from 150, its lag growing
        # through the run; the DuckDB stack kept up with 300.
        rate = SERVING_RATE if stack.serving else DUCKDB_RATE
        pace = (
            [
                f"  the serving stack runs three servers here: past ~{2 * SERVING_RATE} msg/s on "
                "2 cores records arrive later and later",
                "  (in a checkout, `python3 dev.py bench devrate` measures this machine)",
            ]
            if stack.serving
            else []
        )
        lines += [
            f"  emulator   {stack.emulator_host}  (log {stack.emulator_log})",
            f"  topic      projects/{stack.project}/topics/{stack.topic}",
            f"  push       {stack.push_subscription} → {stack.service_url}/pubsub/push",
            f"  dead       {stack.dead_letter_subscription} keeps messages refused "
            f"{MIN_DELIVERY_ATTEMPTS} times",
            "",
            "Publish, from another terminal:",
            f"  {emulator_env} {tool} publish "
            f"--project {stack.project} --topic {stack.topic} --count 1000 --rate {rate}",
            *pace,
            "  … in a topic schema's encoding (it becomes the topic's schema):",
            f"  {emulator_env} {tool} publish "
            f"--project {stack.project} --topic {stack.topic} "
            f"--schema {_shown(EXAMPLE_SCHEMAS / 'record.avsc')} --encoding BINARY --count 100",
            "Dead letters, once the cause is fixed (--dry-run first):",
            f"  {emulator_env} {tool} replay dead-letters "
            f"--subscription {stack.dead_letter_subscription} --url {stack.service_url} "
            # `=`: a token may start with `-`, which an option's own word would not take.
            f"--token={stack.push_token}",
            "",
        ]
    lines += [
        "Read:",
        f"  {tool} tail --url {stack.service_url} --since 1h",
        f"  curl '{stack.service_url}/v1/records?limit=10'",
    ]
    if stack.serving:
        lines += [
            "SQL on the BigQuery stand-in, typed columns in records.fields (BigQuery's SQL):",
            f'  {tool} sql --serving "SELECT id, fields.data.n FROM records LIMIT 10"',
        ]
    elif stack.store.startswith("duckdb:"):
        lines += [
            "SQL on the store, typed columns included (read-only; while the stack runs, a copy):",
            f"  {tool} sql --store {stack.store} "
            '"SELECT id, fields.data.n FROM records_typed LIMIT 10"',
        ]
    lines += [
        "",
        "Ctrl-C stops everything.",
        "",
    ]
    return "\n".join(lines)


def _shown(path: Path) -> str:
    """`path` as the reader may type it here: relative when below the current directory."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def new_session(data_dir: Path, *, now: datetime | None = None) -> Path:
    """A new directory for one `recordline dev` session, named by when it started."""
    stem = (now or datetime.now()).strftime("session-%Y%m%d-%H%M%S")
    for n in itertools.count(1):
        directory = data_dir / (stem if n == 1 else f"{stem}-{n}")
        try:
            directory.mkdir(parents=True)
        except FileExistsError:
            continue  # two sessions started within a second
        return directory.resolve()
    raise AssertionError("unreachable")


def session_store(session: Path) -> str:
    return f"duckdb://{session / STORE_FILE}"


def dev_command(args: argparse.Namespace) -> int:
    """`recordline dev`: emulator (when installed), service, topology; Ctrl-C stops all."""
    say = _stderr
    serving: ServingParts | None = None
    if args.serving:
        if args.store:
            say(
                "recordline dev: --serving runs on the BigQuery stand-in and Spanner's "
                "emulator, so it takes no --store"
            )
            return 2
        try:
            serving = serving_parts()
        except EmulatorNotFound as exc:
            say(f"recordline dev --serving: {exc}")
            return 1
        except SettingsError as exc:
            say(f"recordline dev --serving: {exc}")
            return 2
    try:
        launcher: Path | None = find_emulator()
    except EmulatorNotFound as exc:
        say(f"recordline dev: {exc}")
        say("recordline dev: running the service alone")
        launcher = None
    if args.store and launcher is not None:
        taken = earlier_sessions_messages(args.store)
        if taken is not None:
            say(f"recordline dev: {taken}")
            return 2
    running = running_here(Path(args.data_dir), args.port)
    if running is not None:
        say(f"recordline dev: {running}")
        return 1
    session = new_session(Path(args.data_dir))
    watch = Watch()
    # The service's journal writer is our grandchild: if the service dies
    # first, we adopt and reap it (see become_subreaper).
    become_subreaper()
    with StopSignals() as signals:
        group = ProcessGroup(signals, say=watch.say)
        try:
            return _run_dev(args, launcher, session, group, serving, watch)
        except Interrupted as stop:
            signals.stopping = True  # another signal only hurries the stop
            watch.say(f"\nrecordline dev: {stop.name}: stopping{watch.summary()}")
            return 0
        except RuntimeError as exc:  # PortTaken among them
            say(f"recordline dev: {exc}")
            return 1
        finally:
            left = group.stop()
            watch.drain()
            if left:
                say(f"recordline dev: still running after SIGKILL: {left}")
            # A session that stopped before anything wrote to it leaves no directory.
            with contextlib.suppress(OSError):
                session.rmdir()


def running_here(data_dir: Path, port: int) -> str | None:
    """What to say where a `recordline dev` of `data_dir` runs already on `port`: a live
    stack to use, not leftovers to kill (None where none does)."""
    for found in reversed(sessions(data_dir)):
        stack = found.stack
        if found.running and stack is not None and stack.service_url.endswith(f":{port}"):
            return (
                f"a dev stack runs here already (session {found.name}, since {stack.started}): "
                f"its service answers at {stack.service_url}, its store is {stack.store}. Use "
                "it, or stop it with Ctrl-C in its terminal first; another beside it needs "
                "other ports (--port, --emulator-port)"
            )
    return None


def earlier_sessions_messages(store: str) -> str | None:
    """Why this session may not run on `store`, or None: a DuckDB file that holds
    messages an earlier session's emulator pushed. This one numbers message ids from 1
    again, so every message it pushes whose id the file holds would be taken for a
    later copy of the earlier one, acknowledged, and not stored."""
    import duckdb

    from app.store.duckdb.snapshot import SnapshotError, reading

    scheme, _, rest = store.partition(":")
    path = Path(rest.removeprefix("//"))
    if scheme != "duckdb" or not path.is_file():
        return None
    subscription = f"projects/{DEV_PROJECT}/subscriptions/{DEV_TOPIC}-push"
    try:
        with reading(path) as (con, _copied):
            found = con.execute(
                "SELECT count(*), max(TRY_CAST(message_id AS BIGINT)) FROM ("
                "SELECT message_id FROM records WHERE subscription = $s UNION ALL "
                "SELECT message_id FROM rejected WHERE subscription = $s)",
                {"s": subscription},
            ).fetchone()
    except (SnapshotError, duckdb.Error):
        return None  # not a store of ours, or unreadable: the service says what it finds
    count, highest = found if found is not None else (0, None)
    if not count:
        return None
    ids = f" (ids up to {highest})" if highest is not None else ""
    return (
        f"--store {store} holds {count:,} messages an earlier session's Pub/Sub emulator "
        f"numbered{ids}; this session's emulator numbers from 1 again, so its messages would "
        "be taken for later copies of those and not stored. Drop --store (each session "
        "stores into a file of its own, and `serve --store` reads an earlier one), or give "
        "a new file or memory:"
    )


class ServingParts(msgspec.Struct, frozen=True):
    """What `recordline dev --serving` needs, found before anything starts."""

    spanner: Path
    # The dedupe window the service will run with: the database's deletion policy.
    window: float


def serving_parts() -> ServingParts:
    """EmulatorNotFound naming what is missing, SettingsError for the environment's settings."""
    # serving.py is built on this module's pieces, so it is imported where it is used.
    from recordline_dev.serving import find_spanner_emulator, find_stand_in

    spanner = find_spanner_emulator()
    find_stand_in()
    return ServingParts(spanner, Settings.load().query.dedupe_window_seconds)


def _start_serving(
    parts: ServingParts,
    port: int,
    session: Path,
    group: ProcessGroup,
    env: dict[str, str],
    bigquery_port: int = 0,
) -> DevStack:
    """Spanner's emulator with the service's database, then the BigQuery stand-in; `env`
    gets the service's settings for them. Returns the banner's part of them."""
    from recordline_dev.serving import BigQueryStandIn, SpannerEmulator, service_database

    say = _stderr
    say(f"recordline dev: starting Spanner's emulator on 127.0.0.1:{port}")
    spanner = SpannerEmulator(
        parts.spanner, port=port, log_path=session / "spanner.log", group=group
    )
    _ensure_ours(port, group, "Spanner emulator")
    say("recordline dev: creating its instance and database with `recordline schema spanner`")
    database = service_database(
        spanner,
        project=DEV_PROJECT,
        instance=DEV_INSTANCE,
        database=DEV_DATABASE,
        window=parts.window,
    )
    say("recordline dev: starting the BigQuery stand-in")
    bigquery = BigQueryStandIn(
        DEV_PROJECT,
        DEV_DATASET,
        log_path=session / "bigquery.log",
        group=group,
        write_port=bigquery_port,
        jobs_port=bigquery_port + 1 if bigquery_port else 0,
    )
    env.update(bigquery.settings)
    env["RECORDLINE_SERVING"] = database
    env["SPANNER_EMULATOR_HOST"] = spanner.host
    # One process: the service exports to BigQuery itself (a fleet runs the exporter
    # service, `recordline exporter`, apart).
    env["RECORDLINE_EXPORT_IN_SERVICE"] = "true"
    return DevStack(
        service_url="",
        store=bigquery.url,
        serving=database,
        spanner_host=spanner.host,
        spanner_log=str(spanner.log_path),
        bigquery_write=bigquery.write,
        bigquery_jobs=bigquery.jobs,
        bigquery_log=str(bigquery.log_path),
    )


def _run_dev(
    args: argparse.Namespace,
    launcher: Path | None,
    session: Path,
    group: ProcessGroup,
    serving: ServingParts | None,
    watch: Watch,
) -> int:
    say = watch.say
    service_url = f"http://127.0.0.1:{args.port}"
    store = args.store or session_store(session)
    # Before anything starts: a stale emulator would be taken for ours (with
    # another push token: every push a 401), a stale service for the new one.
    wanted = [(args.port, "service", "--port")]
    if launcher is not None:
        wanted.append((args.emulator_port, "Pub/Sub emulator", "--emulator-port"))
    if serving is not None:
        wanted.append((args.spanner_port, "Spanner emulator", "--spanner-port"))
        if args.bigquery_port:
            for port in (args.bigquery_port, args.bigquery_port + 1):
                wanted.append((port, "BigQuery stand-in", "--bigquery-port"))
    ensure_all_free(wanted)
    emulator: Emulator | None = None
    if launcher is not None:
        say(
            f"recordline dev: starting the Pub/Sub emulator on 127.0.0.1:{args.emulator_port} "
            "(a JVM: a few seconds)"
        )
        emulator = Emulator(
            launcher, port=args.emulator_port, log_path=session / "emulator.log", group=group
        )
        _ensure_ours(args.emulator_port, group, "Pub/Sub emulator")
    token = secrets.token_urlsafe(24)
    env = dict(os.environ)
    if emulator is not None:
        env["RECORDLINE_PUSH_TOKEN"] = token
        # Topic schemas are fetched from the emulator's Schema API.
        env["PUBSUB_EMULATOR_HOST"] = emulator.host
    tier: DevStack | None = None
    if serving is not None:
        tier = _start_serving(serving, args.spanner_port, session, group, env, args.bigquery_port)
        store = tier.store
    say(f"recordline dev: starting the service on {service_url}, store {store}")
    output = watch.service_output(env)
    service = group.start(
        "service",
        [sys.executable, "-m", "app.cli", "serve", "--port", str(args.port), "--store", store],
        stop_seconds=SERVICE_STOP_SECONDS,
        env=env,
        **output,
    )
    watch.relay(service)
    wait_until_ready(f"{service_url}/readyz", timeout=SERVICE_START_SECONDS, process=service)
    _ensure_ours(args.port, group, "service")
    stack = DevStack(
        service_url=service_url,
        store=store,
        session=str(session),
        shared_store=bool(args.store),
        command=os.environ.get("RECORDLINE_DEV_COMMAND", "recordline"),
    )
    if tier is not None:
        stack = msgspec.structs.replace(
            tier,
            service_url=stack.service_url,
            session=stack.session,
            command=stack.command,
        )
    canary: Canary | None = None
    if emulator is not None:
        backoff = DEV_BACKOFF if args.retry_policy else None
        push, kept = asyncio.run(_wire_dev(emulator.host, service_url, token, backoff))
        if args.canary:
            publisher = publisher_client(emulator_host=emulator.host)
            topic = f"projects/{DEV_PROJECT}/topics/{DEV_TOPIC}"
            canary = Canary(publisher, topic, every=args.canary_every)
            canary.start()
            say(
                f"recordline dev: a canary every {args.canary_every:g} s; its age is "
                f"recordline_canary_age_seconds at {service_url}/metrics"
            )
        stack = msgspec.structs.replace(
            stack,
            emulator_host=emulator.host,
            push_subscription=push,
            dead_letter_subscription=kept or "",
            emulator_log=str(emulator.log_path),
            push_token=token,
        )
    running = Stack(
        store=stack.store,
        service_url=stack.service_url,
        started=rfc3339(datetime.now(UTC)),
        serving=stack.serving,
        bigquery_jobs=stack.bigquery_jobs,
        project=stack.project,
        dataset=DEV_DATASET if stack.serving else "",
        emulator_host=stack.emulator_host or "",
    )
    try:
        with holding(session, running):
            _print(instructions(stack))
            with watch.watching(stack):
                while True:
                    for child in group.children:
                        if (code := child.process.poll()) is not None:
                            raise RuntimeError(
                                f"the {child.name} exited with status {code}; stopping"
                            )
                    time.sleep(_WATCH_SECONDS)
    finally:
        if canary is not None:
            canary.stop()


# How long the service's last lines may take to be printed once it stopped.
RELAY_SECONDS = 2.0


class Watch:
    """What `recordline dev` shows once its stack runs: on a terminal, below the banner,
    a status line of what the service did with the pushes (from its /metrics), with
    the service's own output printed above it (passed through this process); and, when
    the stack stops, a summary of the session. Elsewhere the service writes where this
    process does, and only the summary is added."""

    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console(stderr=True)
        self.counts: PushCounts | None = None
        self.stack: DevStack | None = None
        self._relays: list[threading.Thread] = []

    def say(self, text: str) -> None:
        # The terminal may be gone (SIGHUP): the stop must still run.
        with contextlib.suppress(OSError):
            self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def service_output(self, env: dict[str, str]) -> dict[str, Any]:
        """How the service is started: its output through here, on a terminal, written as
        it would write it to the terminal (`auto` would make it JSON, for a pipe)."""
        if not self.console.is_terminal:
            return {}
        if env.get("RECORDLINE_LOG_FORMAT", "auto") == "auto":
            env["RECORDLINE_LOG_FORMAT"] = "text"
        return {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT}

    def relay(self, process: subprocess.Popen[bytes]) -> None:
        """The service's output, each line printed above the status line, until it ends."""
        if process.stdout is None:
            return
        out = process.stdout

        def relaying() -> None:
            for line in iter(out.readline, b""):
                self.say(line.decode(errors="replace").rstrip("\n"))

        thread = threading.Thread(target=relaying, name="service-output", daemon=True)
        thread.start()
        self._relays.append(thread)

    def drain(self) -> None:
        """Once the service stopped: the last of its output printed."""
        for thread in self._relays:
            thread.join(RELAY_SECONDS)

    @contextlib.contextmanager
    def watching(self, stack: DevStack) -> Iterator[None]:
        from recordline_dev.progress import PushCounts, Rate, StatusLine

        self.stack = stack
        self.counts = PushCounts(stack.service_url)
        rate = Rate()

        def render() -> Any:
            from rich.text import Text

            assert self.counts is not None
            done = self.counts.outcomes
            text = (
                f"{rate(done['stored'] + done['rejected']):,.0f}/s · {self._counted()}"
                if self.counts.answered
                else (self.counts.error or "asking the service what it stored…")
            )
            return Text(text, no_wrap=True, overflow="ellipsis", style="dim")

        with self.counts, StatusLine(render, console=self.console):
            yield

    def _counted(self) -> str:
        assert self.counts is not None
        done = self.counts.outcomes
        said = [f"{done['stored']:,} stored", f"{done['rejected']:,} rejected"]
        for outcome, shown in (
            ("duplicate", "copies of a producer's"),
            ("retried", "answered 503 (redelivered)"),
            ("refused", "refused (redelivered, then dead-lettered)"),
        ):
            if done[outcome]:
                said.append(f"{done[outcome]:,} {shown}")
        if self.counts.conflicts:
            said.append(
                f"{self.counts.conflicts:,} later copies that differ (not stored: "
                "/v1/messages/{id} shows them)"
            )
        return " · ".join(said)

    def summary(self) -> str:
        """What this session's service did, asked once more (briefly: it is stopping)."""
        if self.counts is None or self.stack is None:
            return ""
        self.counts.read()
        if not self.counts.answered:
            return ""
        stack = self.stack
        if stack.serving:
            kept = "its rows were in the emulators' memory: they go with it"
        else:
            command = f"{stack.command} sql --dev" if not stack.shared_store else "sql --store"
            kept = f"kept in {stack.store} (`{command}` reads it)"
        return f"; the session's pushes: {self._counted()}; {kept}"


def _ensure_ours(port: int, group: ProcessGroup, what: str) -> None:
    """What answers on `port` is the process this run started, as far as /proc tells."""
    found = listener(port)
    if found is not None and found.pgid != group.pgid:
        raise PortTaken(
            f"the {what} answering on 127.0.0.1:{port} is {found}, not the one this run "
            f"started; stop it (kill {found.pid})"
        )


async def _wire_dev(
    host: str, service_url: str, token: str, backoff: Backoff | None
) -> tuple[str, str | None]:
    async with PubSubAdmin(host) as admin:
        return await wire(
            admin, topic=DEV_TOPIC, service_url=service_url, push_token=token, backoff=backoff
        )


def add_dev_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=8080, help="service port (default 8080)")
    parser.add_argument(
        "--emulator-port", type=int, default=8085, help="emulator port (default 8085, gcloud's)"
    )
    parser.add_argument(
        "--data-dir",
        default=DEV_DATA_DIR,
        help=f"where each session gets a directory of its own, with its DuckDB store and the "
        f"emulator's log (default {DEV_DATA_DIR}, in the current directory)",
    )
    parser.add_argument(
        "--store",
        help="run on this store URL instead of the session's own (a new file, or memory:); "
        "a DuckDB file holding messages an earlier session's emulator numbered is refused: "
        "the emulator numbers message ids from 1 in every session, and its messages would "
        "be taken for later copies of those, and not stored",
    )
    parser.add_argument(
        "--serving",
        action="store_true",
        help=f"run on the serving tier, as in the cloud: the service on the BigQuery stand-in "
        f"(bigquery://{DEV_PROJECT}/{DEV_DATASET}, the tests' fakes) with Spanner's emulator as "
        "RECORDLINE_SERVING, its database made from `recordline schema spanner`; both keep "
        "the session's rows in memory",
    )
    parser.add_argument(
        "--spanner-port",
        type=int,
        default=9010,
        help="Spanner emulator port with --serving (default 9010, gcloud's)",
    )
    parser.add_argument(
        "--bigquery-port",
        type=int,
        default=0,
        help="the BigQuery stand-in's Storage Write port with --serving; its jobs.query "
        "endpoint takes the next one (default: free ports, named in the banner)",
    )
    parser.add_argument(
        "--retry-policy",
        action="store_true",
        help=f"give the push subscription a retry policy ({DEV_BACKOFF.minimum:g} s to "
        f"{DEV_BACKOFF.maximum:g} s backoff), as in the cloud; the emulator then strands "
        "some refused messages",
    )
    parser.add_argument(
        "--canary",
        action="store_true",
        help="publish the canary record as the cloud's Scheduler job does, so /metrics shows "
        "recordline_canary_age_seconds",
    )
    parser.add_argument(
        "--canary-every",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="seconds between canaries (default 60, the Scheduler job's minute)",
    )


def _print(text: str) -> None:
    # The terminal may be gone (SIGHUP): the stop must still run.
    with contextlib.suppress(OSError):
        print(text, flush=True)


def _stderr(text: str) -> None:
    # The terminal may be gone (SIGHUP): the stop must still run.
    with contextlib.suppress(OSError):
        print(text, file=sys.stderr, flush=True)
