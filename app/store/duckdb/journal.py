"""An append-only commit journal: durable in one fsync, replayed on start.

A frame costs one `write` and one `fdatasync` (~0.3 ms on this disk), where DuckDB
pays ~3 ms a statement at rest and ~10 ms loaded: so a push is acknowledged once
its frame is on disk, and the store applies journaled rows behind it in large
batches. Segments `BASE.00000000`, … are sealed past `segment_bytes` and deleted
once every frame in them is applied (under steady load one file never empties).

Design: docs/stores.md#duckdb-the-default-duckdbfile-or-memory
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from collections import deque
from pathlib import Path

import msgspec

from app.records import Record, Rejection
from app.store.producers import EpochEntry, HourCount, LedgerRange
from app.store.tally import Held

log = logging.getLogger(__name__)

# A frame: `<u32 length><u32 crc32>` then `length` bytes of msgpack. A frame cut
# short or failing its checksum can only be the last, left by a crash in the middle
# of a write: its rows were never acknowledged, so replay stops there.
_HEADER = struct.Struct("<II")
# Large enough that sealing is rare (one new file every ~15k pushes), small
# enough that an applied segment's space comes back soon.
SEGMENT_BYTES = 8 * 1024 * 1024


class Frame(msgspec.Struct, array_like=True, frozen=True):
    """One acknowledged append: the rows of one batch, and what it changed of the
    completeness ledger: the entries it changed or dropped, the ranges the audit
    reads of those it changed, the hour's counts after it, and the messages it
    stored under a producer sequence (fields at the end, so older frames still
    decode)."""

    records: list[Record]
    rejections: list[Rejection]
    producers: list[EpochEntry] = []
    forgotten: list[tuple[str, int]] = []
    ranges: list[LedgerRange] = []
    hours: list[HourCount] = []
    copies: list[Held] = []


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(Frame).decode


class Journal:
    """The journal's segments: written by one process (journal_process.py), read on start."""

    def __init__(self, base: Path, *, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.base = base
        self._segment_bytes = segment_bytes
        self._fd = -1
        self._number = 0  # the current segment's
        self._size = 0
        # Sealed segments and the number of the last frame each holds.
        self._sealed: deque[tuple[Path, int]] = deque()
        self._replayed: list[Path] = []
        # Frames written since `start`: each write returns its frame's number.
        self.written = 0

    def segments(self) -> list[Path]:
        found = self.base.parent.glob(f"{self.base.name}.*")
        return sorted(p for p in found if p.suffix[1:].isdigit())

    def replay(self) -> list[Frame]:
        """The frames earlier runs left; the next segment is numbered after them.

        The old segments stay until `discard_replayed`, once their rows are
        stored elsewhere.
        """
        self._replayed = self.segments()
        frames: list[Frame] = []
        for path in self._replayed:
            found, complete = _read(path)
            frames.extend(found)
            if not complete:
                log.warning("journal %s: a torn last frame is dropped", path)
                break
        self._number = int(self._replayed[-1].suffix[1:]) + 1 if self._replayed else 0
        return frames

    @property
    def next_segment(self) -> int:
        return self._number

    def start(self, segment: int) -> None:
        """Start writing at segment number `segment` (after another's `replay`)."""
        self._number = segment
        self._start_segment()

    def discard_replayed(self) -> None:
        for path in self._replayed:
            path.unlink(missing_ok=True)
        self._replayed = []

    def discard_all(self) -> None:
        """Delete every segment, the one being written included: for a closed journal."""
        for path in self.segments():
            path.unlink(missing_ok=True)
        self._replayed = []

    def write(self, data: bytes) -> int:
        """Write one encoded frame (`encode`); its number, once on stable storage."""
        # os.write may write only part (a disk filling up, a signal): the rest
        # goes after it, or the failure is raised; a frame is never half acknowledged.
        rest = memoryview(data)
        while rest:
            rest = rest[os.write(self._fd, rest) :]
        os.fdatasync(self._fd)
        self.written += 1
        self._size += len(data)
        if self._size >= self._segment_bytes:
            self._sealed.append((self._path(self._number), self.written))
            os.close(self._fd)
            self._number += 1
            self._start_segment()
        return self.written

    def release(self, applied: int) -> None:
        """Delete the sealed segments whose frames are all applied (up to `applied`)."""
        while self._sealed and self._sealed[0][1] <= applied:
            path, _ = self._sealed.popleft()
            path.unlink(missing_ok=True)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _path(self, number: int) -> Path:
        return self.base.with_name(f"{self.base.name}.{number:08d}")

    def _start_segment(self) -> None:
        self._fd = os.open(self._path(self._number), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._size = 0
        # The new file's name must be as durable as the frames about to land in it.
        directory = os.open(self.base.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def encode(frame: Frame) -> bytes:
    """A frame as it lies in a segment: header, then msgpack."""
    payload = _encode(frame)
    return _HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def _read(path: Path) -> tuple[list[Frame], bool]:
    """The frames of one segment, and whether it ended cleanly."""
    data = path.read_bytes()
    frames: list[Frame] = []
    offset = 0
    while offset + _HEADER.size <= len(data):
        length, crc = _HEADER.unpack_from(data, offset)
        start, end = offset + _HEADER.size, offset + _HEADER.size + length
        payload = data[start:end]
        if end > len(data) or zlib.crc32(payload) != crc:
            return frames, False
        try:
            frames.append(_decode(payload))
        except msgspec.DecodeError:
            return frames, False
        offset = end
    return frames, offset == len(data)
