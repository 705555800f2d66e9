"""The journal's writing end, in a process of its own.

A journal write ends in an fdatasync, and a thread of ours that made it must take
the GIL back from the busy event loop before the push can be acknowledged; a child
process has a GIL of its own, so the event loop hands it each frame through a pipe
and reads the answer like any other I/O (`bench ingest`: ~20% more pushes a second).
The child writes the segments (journal.py); the parent reads what earlier runs left.

Design: docs/stores.md#duckdb-the-default-duckdbfile-or-memory
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import struct
import subprocess
import sys
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from app.errors import StoreUnavailable
from app.store.duckdb.journal import SEGMENT_BYTES, Frame, Journal

log = logging.getLogger(__name__)

# Over the child's stdin and stdout:
#   request  <u8 op><u32 length><body>: op A, body an encoded frame; op R, body <u64 applied>
#   answer   to each A, in order: <u64 frame number> once it is on stable storage,
#            or <u64 0><u32 length><utf-8 reason> when the write failed
# A failed write is the child's last: the frame may lie torn in the segment, and replay
# stops at a torn frame, so a frame written after it could be acknowledged and lost.
# The child ignores SIGINT, SIGTERM and SIGHUP and stops when its stdin closes, after
# every frame it was sent: a draining shutdown still journals accepted rows.
_REQUEST = struct.Struct("<cI")
_NUMBER = struct.Struct("<Q")
_LENGTH = struct.Struct("<I")
_APPEND, _RELEASE = b"A", b"R"
# The child's first words, once its segment is open.
_READY = b"journal\n"
# A child that has not stopped this long after its stdin closed is killed;
# every frame it answered is on disk by then.
_STOP_SECONDS = 5.0


@dataclass(frozen=True)
class _Child:
    """The running writer: the process and the event loop's ends of its pipes."""

    process: subprocess.Popen[bytes]
    stdin: asyncio.StreamWriter
    stdout: asyncio.StreamReader
    stdout_transport: asyncio.ReadTransport

    @property
    def pid(self) -> int:
        return self.process.pid

    async def wait(self) -> int:
        return await asyncio.to_thread(self.process.wait)

    def kill(self) -> None:
        self.process.kill()

    def close_pipes(self) -> None:
        self.stdin.close()
        self.stdout_transport.close()


async def _spawn(args: list[str]) -> _Child:
    """Start `args` with pipes on stdin and stdout that the event loop reads and writes.

    `subprocess.Popen`, not `asyncio.create_subprocess_exec`: under uvloop the
    latter forks and runs this process's `os.register_at_fork` hooks in the
    child before it execs, and OpenTelemetry's MeterProvider hook runs a thread
    pool there, which can wait forever on a lock held at the fork (the service
    then hangs at start-up). Popen runs no Python in the child.
    """
    loop = asyncio.get_running_loop()
    # Fork and exec in a thread: the event loop goes on meanwhile.
    process = await asyncio.to_thread(
        subprocess.Popen,  # our own argv, no shell
        args,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        if process.stdin is None or process.stdout is None:
            raise OSError("the journal writer's pipes did not open")
        stdout = asyncio.StreamReader()
        reading, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(stdout), process.stdout
        )
        transport, protocol = await loop.connect_write_pipe(
            lambda: asyncio.StreamReaderProtocol(asyncio.StreamReader()), process.stdin
        )
    except BaseException:
        process.kill()
        process.wait()
        raise
    writer = asyncio.StreamWriter(transport, protocol, None, loop)
    return _Child(process, writer, stdout, reading)


def _ended(code: int) -> str:
    """How a process ended, from its return code: an exit code, or the signal."""
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"stopped by {signal.Signals(-code).name}"
    return f"exit code {code}"


class JournalProcess:
    """The parent's end: `append` an encoded frame, get its number once durable."""

    def __init__(self, base: Path, *, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.base = base
        self._segment_bytes = segment_bytes
        self._replay = Journal(base, segment_bytes=segment_bytes)  # reads; never writes
        self._process: _Child | None = None
        self._answers: asyncio.Task[None] | None = None
        self._waiting: deque[asyncio.Future[int]] = deque()
        self._failure: str | None = None

    @property
    def failure(self) -> str | None:
        """Why the writer takes no more appends, if it does not: a failed write, or its
        end. Its end is read from the process itself too, so that a writer found dead
        by a broken pipe is said to be so before its answers' reader has seen it go."""
        if self._failure is None and self._process is not None:
            code = self._process.process.poll()
            if code is not None:
                self._failure = f"the journal writer exited with code {code}"
                log.error("%s", self._failure)
        return self._failure

    async def open(self) -> list[Frame]:
        """Start the writer after the segments earlier runs left; return their frames.

        Those segments stay until `discard_replayed`, once their rows are
        stored elsewhere.
        """
        frames = await asyncio.to_thread(self._replay.replay)
        await self._start(self._replay.next_segment)
        return frames

    async def discard_replayed(self) -> None:
        await asyncio.to_thread(self._replay.discard_replayed)

    async def discard(self) -> None:
        """Delete every segment: once closed, with all their rows stored elsewhere."""
        if self._process is not None:
            raise RuntimeError("the journal writer still runs")
        await asyncio.to_thread(self._replay.discard_all)

    async def _start(self, segment: int) -> None:
        self._process = await _spawn(
            [sys.executable, "-m", __name__, str(self.base), str(segment), str(self._segment_bytes)]
        )
        stdout = self._process.stdout
        try:
            ready = await stdout.readexactly(len(_READY))
        except asyncio.IncompleteReadError:
            ready = b""
        if ready != _READY:
            self._process.close_pipes()
            code = await self._process.wait()
            self._process = None
            # Its own fault or a signal its group heard before it could ignore them (a
            # Ctrl-C while the service starts): said in a line, not a traceback.
            raise StoreUnavailable(f"the journal writer did not start ({_ended(code)})")
        # Not a supervised loop: it reads one writer's answers and ends with it, its
        # failure reported by readiness (`failure`); a second could not tell which
        # append an answer is for.
        self._answers = asyncio.create_task(
            self._read_answers(self._process, stdout), name="journal-answers"
        )

    async def append(self, data: bytes) -> int:
        """Journal one encoded frame; its number once on stable storage. OSError if not."""
        stdin = self._stdin()
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiting.append(future)
        try:
            stdin.write(_REQUEST.pack(_APPEND, len(data)) + data)
            await stdin.drain()
        except OSError:  # the pipe broke: the writer is gone, and will be reported so
            future.cancel()
            raise
        return await future

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def release(self, applied: int) -> None:
        """Frames up to `applied` are stored elsewhere: their sealed segments may go.

        OSError if the writer is gone (its failure is reported by `append`).
        """
        self._stdin().write(_REQUEST.pack(_RELEASE, _NUMBER.size) + _NUMBER.pack(applied))

    async def close(self) -> None:
        if self._process is None:
            return
        process, self._process = self._process, None
        process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), _STOP_SECONDS)
        except TimeoutError:
            log.error("journal writer did not stop; killing it")
            process.kill()
            await process.wait()
        if self._answers is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._answers
        process.close_pipes()

    def _stdin(self) -> asyncio.StreamWriter:
        # What is known, not the process asked (a system call per append): a dead
        # writer's pipe refuses the write anyway.
        if self._failure is not None:
            raise OSError(self._failure)
        if self._process is None:
            raise OSError("the journal writer is not running")
        return self._process.stdin

    async def _read_answers(self, process: _Child, stdout: asyncio.StreamReader) -> None:
        try:
            while True:
                (number,) = _NUMBER.unpack(await stdout.readexactly(_NUMBER.size))
                if number:
                    _resolve(self._waiting.popleft(), number)
                    continue
                (length,) = _LENGTH.unpack(await stdout.readexactly(_LENGTH.size))
                reason = (await stdout.readexactly(length)).decode()
                # The writer stops after a failed write (see above).
                self._failure = f"the journal writer stopped after a failed write: {reason}"
                log.error("%s", self._failure)
                _resolve(self._waiting.popleft(), OSError(reason))
        except (asyncio.IncompleteReadError, ConnectionError):
            code = await process.wait()
            if self._failure is None and (self._waiting or self._process is not None):
                # Not a requested stop.
                self._failure = f"the journal writer exited with code {code}"
                log.error("%s", self._failure)
            while self._waiting:
                _resolve(self._waiting.popleft(), OSError(self._failure or "journal closed"))
        except Exception as exc:
            # A bug: the answers can no longer be matched to their appends, so this
            # writer is done with (readiness names it) rather than read further.
            self._failure = f"reading the journal writer's answers failed: {exc!r}"
            log.exception("%s", self._failure)
            process.close_pipes()
            while self._waiting:
                _resolve(self._waiting.popleft(), OSError(self._failure))


def _resolve(future: asyncio.Future[int], outcome: int | OSError) -> None:
    if future.done():  # its append was cancelled
        return
    if isinstance(outcome, OSError):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


def serve(base: Path, segment: int, segment_bytes: int) -> None:
    """The child: journal what arrives on stdin until it closes."""
    # Its process group's signals (Ctrl-C, a terminal closing) are for the
    # service, which drains and then closes our stdin.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    journal = Journal(base, segment_bytes=segment_bytes)
    journal.start(segment)
    requests, answers = sys.stdin.buffer, sys.stdout.buffer
    answers.write(_READY)
    answers.flush()
    try:
        while len(header := requests.read(_REQUEST.size)) == _REQUEST.size:
            op, length = _REQUEST.unpack(header)
            body = requests.read(length)
            if len(body) < length:
                break
            if op == _RELEASE:
                journal.release(_NUMBER.unpack(body)[0])
                continue
            try:
                answer = _NUMBER.pack(journal.write(body))
            except OSError as exc:
                reason = str(exc).encode()
                answers.write(_NUMBER.pack(0) + _LENGTH.pack(len(reason)) + reason)
                answers.flush()
                sys.exit(1)  # nothing more goes after a frame that may be torn
            answers.write(answer)
            answers.flush()
    finally:
        journal.close()


if __name__ == "__main__":
    serve(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
