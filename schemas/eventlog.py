"""The event log: received messages, byte for byte, in checksummed frames.

A log is a directory of segment files ``segment-000001.simlog``, ``segment-000002.simlog``, ...
read in name order. Each segment is::

    header:  b"SIMICLOG"  u16 format version  u32 n  n bytes of msgpack {created_ns, writer, segment}
    frames:  b"\\xd3SF" u8 type  u32 length  i64 recv_ns  u32 crc32  payload[length]   (little endian)

``recv_ns`` is the consumer's wall clock when the message arrived; the crc covers type, length,
recv_ns and payload. A frame is written whole or not at all (the writer truncates a failed write
back), so a crash leaves at most a torn last frame, which the reader reports with its offset and
never serves as data. A corrupt frame in the middle is reported too, and reading resumes at the
next frame whose marker, length and checksum hold.
"""

from __future__ import annotations

import os
import re
import struct
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

import msgpack

from .codec import MAX_MESSAGE_BYTES

__all__ = [
    "LOG_MAGIC",
    "LOG_FORMAT_VERSION",
    "SEGMENT_SUFFIX",
    "FRAME_MESSAGE",
    "FRAME_TICK",
    "LogFormatError",
    "LogWriteError",
    "Frame",
    "LogProblem",
    "LogWriter",
    "LogReader",
    "segment_paths",
]

LOG_MAGIC = b"SIMICLOG"
LOG_FORMAT_VERSION = 1
SEGMENT_SUFFIX = ".simlog"
FRAME_MARK = b"\xd3SF"
FRAME_MESSAGE = 1
"""Frame type of a received message."""
FRAME_TICK = 2
"""Frame type of a clock tick: ``recv_ns`` (time passed, so replay sees it pass too) and usually no
payload. A tick may carry a note, a msgpack map: ``{"exited": {"pid": N, "host": H}}`` records that
the consumer saw the trainer process it followed exit (``simic-consumer run --exit-with-pid``), so
replay raises the same ``producer_exited`` alert. A reader that does not know a note ignores it."""

_HEADER = struct.Struct("<8sHI")
_FRAME = struct.Struct("<3sBIqI")
_MAX_HEADER_META = 64 * 1024
_SEGMENT_NAME = re.compile(r"^segment-(\d{6,})\.simlog$")


class LogFormatError(ValueError):
    """The file is not a simic event log (or one of a format this code cannot read)."""


class LogWriteError(OSError):
    """Writing the log failed (disk full, I/O error). No partial frame was left behind."""


@dataclass(frozen=True, slots=True)
class Frame:
    """One stored message."""

    path: Path
    offset: int
    """Byte offset of the frame in its segment."""
    recv_ns: int
    """Consumer wall clock (``time.time_ns()``) when the message arrived."""
    payload: bytes
    """The message as received."""
    type: int = FRAME_MESSAGE


@dataclass(frozen=True, slots=True)
class LogProblem:
    """Something in a log that is not data: a torn tail or a corrupt stretch."""

    path: Path
    offset: int
    """Where the bad bytes start."""
    length: int
    """How many bytes were skipped."""
    kind: Literal["torn_tail", "corrupt"]
    detail: str

    def __str__(self) -> str:
        return f"{self.path}: {self.kind} at offset {self.offset} ({self.length} bytes): {self.detail}"


def segment_paths(target: str | os.PathLike[str]) -> list[Path]:
    """The segment files of a log directory in order, or ``[target]`` for a single file."""
    path = Path(target)
    if path.is_dir():
        # Files only: a directory or a dangling link with a segment's name holds no frames (and reading it would raise).
        return sorted(p for p in path.iterdir() if _SEGMENT_NAME.match(p.name) and p.is_file())
    if not path.exists():
        raise FileNotFoundError(f"no such log file or directory: {path}")
    return [path]


def _frame_bytes(payload: bytes, recv_ns: int, frame_type: int = FRAME_MESSAGE) -> bytes:
    head = struct.pack("<BIq", frame_type, len(payload), recv_ns)
    crc = zlib.crc32(payload, zlib.crc32(head))
    return _FRAME.pack(FRAME_MARK, frame_type, len(payload), recv_ns, crc) + payload


class LogWriter:
    """Appends frames to rotating segments in a directory.

    Frames are buffered in memory and written by :meth:`flush` with plain ``os.write`` calls; a
    write that fails is truncated back, so the file never holds a partial frame, and the error is
    raised as :class:`LogWriteError` (the frames of that flush are lost and counted by the caller).
    A writer never appends to an existing segment: after a restart it starts the next one.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        max_segment_bytes: int = 64 * 1024 * 1024,
        writer: str = "simic-telemetry",
        buffer_bytes: int = 256 * 1024,
    ) -> None:
        if max_segment_bytes < 4096:
            raise ValueError("max_segment_bytes must be at least 4096")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_segment_bytes = max_segment_bytes
        self.writer = writer
        self.buffer_bytes = buffer_bytes
        self.frames_written = 0
        self.bytes_written = 0
        self.segments: list[Path] = []
        self._buffer = bytearray()
        self._buffered_frames = 0
        self._fd: int | None = None
        self._size = 0
        self._header_size = 0
        existing = [int(m.group(1)) for p in self.directory.iterdir() if (m := _SEGMENT_NAME.match(p.name))]
        self._next_index = max(existing, default=0) + 1

    @property
    def buffered_frames(self) -> int:
        """Frames written to the buffer but not yet to the file."""
        return self._buffered_frames

    @property
    def position(self) -> tuple[str, int] | None:
        """``(segment file name, offset)`` just past the last frame written to the file (after a flush)."""
        return (self.segments[-1].name, self._size) if self.segments and self._fd is not None else None

    @property
    def path(self) -> Path | None:
        """The segment being written."""
        return self.segments[-1] if self.segments else None

    def _open_segment(self) -> None:
        path = self.directory / f"segment-{self._next_index:06d}{SEGMENT_SUFFIX}"
        self._next_index += 1
        meta = msgpack.packb({"created_ns": time.time_ns(), "writer": self.writer, "segment": path.name})
        header = _HEADER.pack(LOG_MAGIC, LOG_FORMAT_VERSION, len(meta)) + meta
        # O_APPEND: after a failed write is truncated back, the next write lands at the new end
        # (without it the fd's position stays past the truncation and leaves a hole of zeros).
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        try:
            _write_all(fd, header)
        except OSError as error:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise LogWriteError(error.errno, f"cannot start log segment {path}: {error.strerror}") from error
        self._fd, self._size, self._header_size = fd, len(header), len(header)
        self.segments.append(path)

    def write(self, payload: bytes, recv_ns: int, frame_type: int = FRAME_MESSAGE) -> None:
        """Buffer one frame; flushes on its own when the buffer or the segment is full."""
        frame = _frame_bytes(payload, recv_ns, frame_type)
        if self._fd is None or self._size + len(self._buffer) + len(frame) > self.max_segment_bytes:
            self.flush()
            if self._fd is not None and self._size > self._header_size:  # never rotate an empty segment
                self._close_segment()
            if self._fd is None:
                self._open_segment()
        self._buffer += frame
        self._buffered_frames += 1
        if len(self._buffer) >= self.buffer_bytes:
            self.flush()

    def flush(self) -> None:
        """Write buffered frames to the segment file (not fsync: see :meth:`sync`)."""
        if not self._buffer or self._fd is None:
            return
        data, frames = bytes(self._buffer), self._buffered_frames
        self._buffer.clear()
        self._buffered_frames = 0
        try:
            _write_all(self._fd, data)
        except OSError as error:
            try:
                os.ftruncate(self._fd, self._size)
            except OSError:
                pass
            raise LogWriteError(error.errno, f"{frames} frames not written to {self.path}: {error.strerror}") from error
        self._size += len(data)
        self.frames_written += frames
        self.bytes_written += len(data)

    def sync(self) -> None:
        """Flush and fsync: what was written survives a power cut."""
        self.flush()
        if self._fd is not None:
            os.fsync(self._fd)

    def _close_segment(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def close(self) -> None:
        """Flush, fsync and close. Safe to call twice."""
        try:
            self.sync()
        finally:
            self._close_segment()

    def __enter__(self) -> "LogWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class LogReader:
    """Reads the frames of a log file or directory, reporting what is not data.

    Iterating yields :class:`Frame` objects; torn tails and corrupt stretches are collected in
    :attr:`problems` (never raised mid-way). ``start_offset`` resumes reading a single segment at
    an offset a previous reader reached (:attr:`next_offset`), e.g. to follow a growing file.
    Segment files concatenated into one file (``cat``) read as their frames in order.

    Raises:
        LogFormatError: a file is not a simic log, or of a newer format (at open of that file).
    """

    def __init__(self, target: str | os.PathLike[str], *, start_offset: int | None = None) -> None:
        self.paths = segment_paths(target)
        if start_offset is not None and len(self.paths) != 1:
            raise ValueError("start_offset needs a single segment file")
        self.start_offset = start_offset
        self.problems: list[LogProblem] = []
        self.headers: dict[Path, dict] = {}
        self.next_offset = 0
        """Offset just past the last whole frame read from the current segment."""

    def __iter__(self) -> Iterator[Frame]:
        for path in self.paths:
            yield from self._read_segment(path)

    def _read_segment(self, path: Path) -> Iterator[Frame]:
        data = path.read_bytes()
        offset = self._read_header(path, data)
        if offset is None:
            return
        if self.start_offset is not None:
            offset = max(offset, self.start_offset)
        self.next_offset = offset
        end = len(data)
        while offset < end:
            if data.startswith(LOG_MAGIC, offset):  # segment files concatenated (cat a b > c): a header, not a frame
                offset = self._read_header(path, data, offset)
                if offset is None:
                    return
                self.next_offset = offset
                continue
            frame, reason = _parse_frame(path, data, offset)
            if frame is not None:
                yield frame
                offset += _FRAME.size + len(frame.payload)
                self.next_offset = offset
                continue
            resume = _resync(path, data, offset + 1)
            if resume is None:
                detail = "frame cut short at end of file" if reason == "truncated" else f"{reason}; no valid frame after it"
                self.problems.append(LogProblem(path, offset, end - offset, "torn_tail", detail))
                return
            self.problems.append(LogProblem(path, offset, resume - offset, "corrupt", reason))
            offset = resume

    def _read_header(self, path: Path, data: bytes, start: int = 0) -> int | None:
        if len(data) - start < _HEADER.size:
            if LOG_MAGIC.startswith(data[start : start + len(LOG_MAGIC)]):
                self.problems.append(LogProblem(path, start, len(data) - start, "torn_tail", "segment header cut short"))
                return None
            raise LogFormatError(f"{path} is not a simic event log")
        magic, version, meta_len = _HEADER.unpack_from(data, start)
        if magic != LOG_MAGIC:
            raise LogFormatError(f"{path} is not a simic event log (bad magic)")
        if version != LOG_FORMAT_VERSION:
            raise LogFormatError(f"{path} is log format {version}; this code reads format {LOG_FORMAT_VERSION}")
        if meta_len > _MAX_HEADER_META:
            raise LogFormatError(f"{path} has an implausible header length {meta_len}")
        end = start + _HEADER.size + meta_len
        if len(data) < end:
            self.problems.append(LogProblem(path, start, len(data) - start, "torn_tail", "segment header cut short"))
            return None
        try:
            meta = msgpack.unpackb(data[start + _HEADER.size : end], raw=False)
        except Exception as error:
            raise LogFormatError(f"{path} has an unreadable header: {error}") from None
        self.headers.setdefault(path, meta if isinstance(meta, dict) else {})
        return end


def _parse_frame(path: Path, data: bytes, offset: int) -> tuple[Frame | None, str]:
    if len(data) - offset < _FRAME.size:
        return None, "truncated" if FRAME_MARK.startswith(data[offset : offset + 3]) else "bad frame marker"
    mark, frame_type, length, recv_ns, crc = _FRAME.unpack_from(data, offset)
    if mark != FRAME_MARK:
        return None, "bad frame marker"
    if length > MAX_MESSAGE_BYTES:
        return None, f"implausible frame length {length}"
    start = offset + _FRAME.size
    if start + length > len(data):
        return None, "truncated"
    payload = data[start : start + length]
    head = struct.pack("<BIq", frame_type, length, recv_ns)
    if zlib.crc32(payload, zlib.crc32(head)) != crc:
        return None, "checksum mismatch"
    return Frame(path, offset, recv_ns, payload, frame_type), ""


def _resync(path: Path, data: bytes, offset: int) -> int | None:
    while True:
        found = data.find(FRAME_MARK, offset)
        if found < 0:
            return None
        frame, _ = _parse_frame(path, data, found)
        if frame is not None:
            return found
        offset = found + 1
