"""The event log: received messages, byte for byte, in checksummed frames.

A log is a directory of segment files ``segment-000001.simlog``, ``segment-000002.simlog``, ...
read in index order. A closed segment may be compressed (``segment-000001.simlog.zst``, see
"Compressed segments" below); readers take either. This module writes format 2 and reads formats
1 and 2 (a directory may hold both).

Format 2 (little endian)::

    header:  b"SIMICLOG"  u16 version (2)  u32 key  u32 n  meta[n]  u32 crc
             meta is msgpack {created_ns, writer, segment}; crc is the crc32 of every byte before it
    frames:  b"\\xd3S2"  u8 type  u32 length  u32 counter  i64 recv_ns  u32 crc  payload[length]
             crc: crc32 of type, length, counter, recv_ns and payload, starting from the segment's key

``recv_ns`` is the consumer's wall clock when the message arrived. A frame is written whole or not
at all (the writer truncates a failed write back), so a crash leaves at most a torn last frame,
which the reader reports with its offset and never serves as data. A damaged stretch in the middle
is reported too, and reading resumes at the next frame that holds.

- **Keyed checksum.** ``key`` is drawn at random for each segment and never leaves the log. A
  payload holds bytes its sender chose, and they may be shaped like a frame; when damage to the
  frame carrying them sends the reader looking for the next frame inside them, they still do not
  pass, because the sender could not compute a checksum started from a key it never saw (one chance
  in 2^32 per place tried). This guards against bytes from the wire, not against someone who can
  read the log file and so learn the key: it is not a MAC.
- **Frame counter.** The frames of a segment are numbered 0, 1, 2, ... After a damaged stretch the
  number of the next good frame says how many frames the damage cost (reported with it), and a
  good frame whose number is not above the last one read (a block of the file written twice) is
  not served.
- **Recoverable header.** Frame 0 is a copy of the header (type ``FRAME_HEADER``, its payload the
  header's bytes, its checksum started from the key it holds), and one more copy is written each
  time ``HEADER_COPY_INTERVAL`` bytes of frames have followed the last. A damaged header costs its
  own bytes only: the reader takes the key from a copy (copies that disagree: the key whose frames
  cover most of the file wins, so a copy shaped inside a payload loses to the real ones) and reads
  every frame. Copies are never served as data.
- In a file that is no segment of a directory (segments joined with ``cat``), a damaged stretch
  that runs to the end of one segment resumes at the next segment's header or header copy. A
  header-shaped payload found there could be taken for one; segment files, which hold one segment
  each, never look for a header after their first.

Format 1 (read only): the header is ``b"SIMICLOG" u16 1 u32 n meta[n]`` without checksum or copies,
and a frame is ``b"\\xd3SF" u8 type u32 length i64 recv_ns u32 crc`` with a plain crc32 and no
counter. It keeps its two limits: a frame-shaped payload can be served once damage hits its carrier
frame's head, and a damaged header stops reading (``LogFormatError``).

Compressed segments (``.simlog.zst``, written by :func:`compress_segment` once a segment is closed)
are the segment's bytes cut in chunks of ``COMPRESSED_CHUNK`` bytes, each one zstd frame with its
content size and checksum, and each preceded by a zstd skippable frame (which zstd tools ignore:
``zstd -d`` gives back the plain segment) holding ``b"SIMZ" u64 offset u32 compressed_length u32
crc``. Offsets of frames and problems are offsets in the plain segment. A damaged chunk costs the
frames in it (reported, with "compressed data lost" in the detail); the next chunk is found by its
skippable frame and read on.
"""

from __future__ import annotations

import os
import re
import struct
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Literal

import msgpack

from .codec import MAX_MESSAGE_BYTES

__all__ = [
    "LOG_MAGIC",
    "LOG_FORMAT_VERSION",
    "READ_FORMATS",
    "SEGMENT_SUFFIX",
    "COMPRESSED_SUFFIX",
    "FRAME_MESSAGE",
    "FRAME_TICK",
    "FRAME_HEADER",
    "FRAME_OVERHEAD",
    "HEADER_COPY_INTERVAL",
    "COMPRESSED_CHUNK",
    "LogFormatError",
    "LogWriteError",
    "Frame",
    "LogProblem",
    "LogWriter",
    "LogReader",
    "segment_paths",
    "segment_index",
    "segment_name",
    "compress_segment",
]

LOG_MAGIC = b"SIMICLOG"
LOG_FORMAT_VERSION = 2
"""The format this code writes."""
READ_FORMATS = (1, 2)
"""The formats this code reads."""
SEGMENT_SUFFIX = ".simlog"
COMPRESSED_SUFFIX = ".zst"
FRAME_MARK = b"\xd3SF"
"""Format 1 frame marker."""
FRAME_MARK_2 = b"\xd3S2"
"""Format 2 frame marker."""
FRAME_MESSAGE = 1
"""Frame type of a received message."""
FRAME_TICK = 2
"""Frame type of a clock tick: ``recv_ns`` (time passed, so replay sees it pass too) and usually no
payload. A tick may carry a note, a msgpack map: ``{"exited": {"pid": N, "host": H}}`` records that
the consumer saw the trainer process it followed exit (``simic-consumer run --exit-with-pid``), so
replay raises the same ``producer_exited`` alert. A reader that does not know a note ignores it."""
FRAME_HEADER = 3
"""Frame type of a copy of the segment header (format 2); read for recovery, never served."""
HEADER_COPY_INTERVAL = 1024 * 1024
"""Bytes of frames after which the writer repeats the segment header (format 2)."""
COMPRESSED_CHUNK = 1024 * 1024
"""Bytes of a plain segment per zstd frame of its compressed file."""

_HEADER_1 = struct.Struct("<8sHI")
_HEADER_2 = struct.Struct("<8sHII")
_CRC = struct.Struct("<I")
_FRAME_1 = struct.Struct("<3sBIqI")
_FRAME_2 = struct.Struct("<3sBIIqI")
_FIELDS_1 = struct.Struct("<BIq")
_FIELDS_2 = struct.Struct("<BIIq")
FRAME_OVERHEAD = _FRAME_2.size
"""Bytes of a format 2 frame before its payload (24; format 1: 20)."""
_MAX_COUNTER = 0xFFFFFFFF
_MAX_HEADER_META = 64 * 1024
_SEGMENT_NAME = re.compile(r"^segment-(\d{6,})\.simlog(\.zst)?$")
_SKIPPABLE = struct.Struct("<II4sQII")  # zstd skippable magic, its size, b"SIMZ", offset, compressed length, crc
_SKIPPABLE_MAGIC = 0x184D2A53
_SKIPPABLE_TAG = b"SIMZ"


class LogFormatError(ValueError):
    """The file is not a simic event log (or one of a format this code cannot read)."""


class LogWriteError(OSError):
    """Writing the log failed (disk full, I/O error). No partial frame was left behind."""


@dataclass(frozen=True, slots=True)
class Frame:
    """One stored message."""

    path: Path
    offset: int
    """Byte offset of the frame in its segment (in the plain segment, for a compressed one)."""
    recv_ns: int
    """Consumer wall clock (``time.time_ns()``) when the message arrived."""
    payload: bytes
    """The message as received."""
    type: int = FRAME_MESSAGE
    counter: int | None = None
    """The frame's number in its segment (format 2; None in format 1)."""


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


def segment_name(index: int) -> str:
    """The file name of segment ``index`` as written (``12`` -> ``segment-000012.simlog``)."""
    return f"segment-{index:06d}{SEGMENT_SUFFIX}"


def segment_index(path: str | os.PathLike[str]) -> int | None:
    """The index of a segment file (``segment-000012.simlog[.zst]`` -> 12), None for any other name."""
    match = _SEGMENT_NAME.match(Path(path).name)
    return int(match.group(1)) if match else None


def segment_paths(target: str | os.PathLike[str]) -> list[Path]:
    """The segment files of a log directory in index order, or ``[target]`` for a single file (its
    compressed file when a segment named plain has been compressed since).

    A segment present both plain and compressed (its compression was interrupted) is listed once,
    plain: the compressed file is made from it and is complete only once the plain one is gone."""
    path = Path(target)
    if path.is_dir():
        # Files only: a directory or a dangling link with a segment's name holds no frames (and reading it would raise).
        found: dict[int, Path] = {}
        for entry in path.iterdir():
            match = _SEGMENT_NAME.match(entry.name)
            if match and entry.is_file():
                index = int(match.group(1))
                if index not in found or not match.group(2):
                    found[index] = entry
        return [found[index] for index in sorted(found)]
    if not path.exists():
        compressed = path.with_name(path.name + COMPRESSED_SUFFIX)
        if segment_index(path) is not None and compressed.is_file():
            return [compressed]  # a segment compressed since its name was taken
        raise FileNotFoundError(f"no such log file or directory: {path}")
    return [path]


# -- writing ---------------------------------------------------------------------------------------


def _header_bytes(key: int, meta: bytes) -> bytes:
    head = _HEADER_2.pack(LOG_MAGIC, LOG_FORMAT_VERSION, key, len(meta)) + meta
    return head + _CRC.pack(zlib.crc32(head))


def _frame_bytes(payload: bytes, recv_ns: int, frame_type: int, counter: int, key: int) -> bytes:
    fields = _FIELDS_2.pack(frame_type, len(payload), counter, recv_ns)
    crc = zlib.crc32(payload, zlib.crc32(fields, key))
    return _FRAME_2.pack(FRAME_MARK_2, frame_type, len(payload), counter, recv_ns, crc) + payload


class LogWriter:
    """Appends frames to rotating segments in a directory (format 2).

    Frames are buffered in memory and written by :meth:`flush` with plain ``os.write`` calls; a
    write that fails is truncated back, so the file never holds a partial frame, and the error is
    raised as :class:`LogWriteError` (the frames of that flush are lost and counted by the caller;
    their frame numbers are given to the next frames, so the file has no gap in its numbering).
    A writer never appends to an existing segment: after a restart it starts the next one.

    Args:
        on_rotate: called with the path of each segment closed because it was full (not at
            :meth:`close`), e.g. to compress it.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        max_segment_bytes: int = 64 * 1024 * 1024,
        writer: str = "simic-telemetry",
        buffer_bytes: int = 256 * 1024,
        on_rotate: Callable[[Path], None] | None = None,
    ) -> None:
        if max_segment_bytes < 4096:
            raise ValueError("max_segment_bytes must be at least 4096")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_segment_bytes = max_segment_bytes
        self.writer = writer
        self.buffer_bytes = buffer_bytes
        self.on_rotate = on_rotate
        self.frames_written = 0
        self.bytes_written = 0
        self.segments: list[Path] = []
        self._buffer = bytearray()
        self._buffered_frames = 0
        self._fd: int | None = None
        self._size = 0
        self._header_size = 0
        self._header = b""
        self._key = 0
        self._counter = 0
        """The number of the next frame."""
        self._since_copy = 0
        """Bytes of frames since the last header copy."""
        self._rollback = (0, 0)
        """``(_counter, _since_copy)`` before the first buffered frame: restored when a flush fails."""
        existing = [index for p in self.directory.iterdir() if (index := segment_index(p)) is not None]
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

    @property
    def index(self) -> int:
        """The index of the segment being written (before the first frame: of the one that will be)."""
        return self._next_index - 1 if self._fd is not None else self._next_index

    def _open_segment(self) -> None:
        path = self.directory / segment_name(self._next_index)
        self._next_index += 1
        created_ns = time.time_ns()
        meta = msgpack.packb({"created_ns": created_ns, "writer": self.writer, "segment": path.name})
        key = int.from_bytes(os.urandom(4), "little") or 1
        header = _header_bytes(key, meta)
        start = header + _frame_bytes(header, created_ns, FRAME_HEADER, 0, key)  # frame 0: the header's first copy
        # O_APPEND: after a failed write is truncated back, the next write lands at the new end
        # (without it the fd's position stays past the truncation and leaves a hole of zeros).
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        try:
            _write_all(fd, start)
        except OSError as error:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise LogWriteError(error.errno, f"cannot start log segment {path}: {error.strerror}") from error
        self._fd, self._size, self._header_size = fd, len(start), len(start)
        self._header, self._key, self._counter, self._since_copy = header, key, 1, 0
        self.segments.append(path)

    def write(self, payload: bytes, recv_ns: int, frame_type: int = FRAME_MESSAGE) -> None:
        """Buffer one frame; flushes on its own when the buffer or the segment is full."""
        size = FRAME_OVERHEAD + len(payload)
        if self._since_copy + size > HEADER_COPY_INTERVAL:
            size += FRAME_OVERHEAD + len(self._header)
        if self._fd is None or self._size + len(self._buffer) + size > self.max_segment_bytes or self._counter >= _MAX_COUNTER - 1:
            self.flush()
            if self._fd is not None and self._size > self._header_size:  # never rotate an empty segment
                self._close_segment()
                if self.on_rotate is not None:
                    self.on_rotate(self.segments[-1])
            if self._fd is None:
                self._open_segment()
        if not self._buffer:
            self._rollback = (self._counter, self._since_copy)
        if self._since_copy + FRAME_OVERHEAD + len(payload) > HEADER_COPY_INTERVAL:
            self._append(self._header, recv_ns, FRAME_HEADER)
            self._since_copy = 0
        self._append(payload, recv_ns, frame_type)
        self._buffered_frames += 1
        if len(self._buffer) >= self.buffer_bytes:
            self.flush()

    def _append(self, payload: bytes, recv_ns: int, frame_type: int) -> None:
        frame = _frame_bytes(payload, recv_ns, frame_type, self._counter, self._key)
        self._buffer += frame
        self._counter += 1
        self._since_copy += len(frame)

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
            self._counter, self._since_copy = self._rollback
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


# -- compression -----------------------------------------------------------------------------------


def compress_segment(path: str | os.PathLike[str], *, level: int = 3, stop: Callable[[], bool] | None = None) -> Path | None:
    """Compress a closed segment file into ``<path>.zst`` and remove ``path``; returns the new path.

    The compressed file is written beside it under a temporary name, fsynced and renamed, and keeps
    the segment's modification time (retention by age reads it). ``stop`` is asked between chunks:
    when it returns True the temporary file is removed, the segment is left as it was and None is
    returned. Needs the ``zstandard`` package (a dependency of the consumer).
    """
    import zstandard

    path = Path(path)
    target = path.with_name(path.name + COMPRESSED_SUFFIX)
    partial = path.with_name(path.name + COMPRESSED_SUFFIX + ".tmp")
    compressor = zstandard.ZstdCompressor(level=level, write_content_size=True, write_checksum=True)
    info = path.stat()
    try:
        with open(path, "rb") as source, open(partial, "wb") as sink:
            offset = 0
            while chunk := source.read(COMPRESSED_CHUNK):
                if stop is not None and stop():
                    raise InterruptedError
                packed = compressor.compress(chunk)
                index = _SKIPPABLE_TAG + struct.pack("<QI", offset, len(packed))
                sink.write(_SKIPPABLE.pack(_SKIPPABLE_MAGIC, _SKIPPABLE.size - 8, _SKIPPABLE_TAG, offset, len(packed), zlib.crc32(index)))
                sink.write(packed)
                offset += len(chunk)
            sink.flush()
            os.fsync(sink.fileno())
        os.utime(partial, ns=(info.st_atime_ns, info.st_mtime_ns))
        os.replace(partial, target)
    except BaseException as error:
        partial.unlink(missing_ok=True)
        if isinstance(error, InterruptedError):
            return None
        raise
    path.unlink()
    _sync_directory(path.parent)
    return target


def _sync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _decompress(data: bytes) -> tuple[bytes, list[tuple[int, int | None]]]:
    """The plain bytes of a compressed segment, and the ranges lost to damage (``(start, None)``: to the end).

    A lost chunk in the middle comes back as zero bytes (its place is known from the next chunk's
    offset), which no frame parses from; the frame reader reports them like any damage."""
    import zstandard

    decompressor = zstandard.ZstdDecompressor()
    view = memoryview(data)
    plain = bytearray()
    lost: list[tuple[int, int | None]] = []
    position, skipped = 0, 0
    while position < len(data):
        chunk = _chunk_at(data, position)
        if chunk is not None:
            offset, start, end = chunk
            gap = offset - len(plain)
            if 0 <= gap <= COMPRESSED_CHUNK * (skipped // _SKIPPABLE.size + 1):  # at most as many chunks lost as could fit there
                try:
                    piece = decompressor.decompress(view[start:end])
                except zstandard.ZstdError:
                    piece = None
                if piece is not None and len(piece) <= COMPRESSED_CHUNK:
                    if gap:
                        lost.append((len(plain), offset))
                        plain += bytes(gap)
                    plain += piece
                    position, skipped = end, 0
                    continue
        found = data.find(_SKIPPABLE_MAGIC.to_bytes(4, "little"), position + 1)
        if found < 0:
            lost.append((len(plain), None))
            break
        skipped += found - position
        position = found
    return bytes(plain), lost


def _chunk_at(data: bytes, position: int) -> tuple[int, int, int] | None:
    """``(plain offset, start, end)`` of the zstd frame whose skippable index frame is at ``position``."""
    if len(data) - position < _SKIPPABLE.size:
        return None
    magic, size, tag, offset, length, crc = _SKIPPABLE.unpack_from(data, position)
    if magic != _SKIPPABLE_MAGIC or size != _SKIPPABLE.size - 8 or tag != _SKIPPABLE_TAG:
        return None
    if zlib.crc32(data[position + 8 : position + 8 + 16]) != crc or offset % COMPRESSED_CHUNK:
        return None
    start = position + _SKIPPABLE.size
    if start + length > len(data):
        return None
    return offset, start, start + length


# -- reading ---------------------------------------------------------------------------------------


class LogReader:
    """Reads the frames of a log file or directory, reporting what is not data.

    Iterating yields :class:`Frame` objects; torn tails and corrupt stretches are collected in
    :attr:`problems` (never raised mid-way). ``start_offset`` resumes reading a single segment at
    an offset a previous reader reached (:attr:`next_offset`), e.g. to follow a growing file.
    Segment files concatenated into one file (``cat``) read as their frames in order. Compressed
    segments (``.zst``) read as their plain bytes.

    Raises:
        LogFormatError: a file is not a simic event log, is of a newer format, or is a format-1
            segment whose header is damaged (at open of that file).
    """

    def __init__(self, target: str | os.PathLike[str], *, start_offset: int | None = None) -> None:
        self.paths = segment_paths(target)
        self.directory = Path(target).is_dir()
        """Reading a log directory: a segment-named file that is no log is reported, not raised, and the other segments are read."""
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
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            compressed = path.with_name(path.name + COMPRESSED_SUFFIX)
            if path.name.endswith(COMPRESSED_SUFFIX) or not compressed.exists():
                raise
            path, data = compressed, compressed.read_bytes()  # compressed since it was listed
        lost: list[tuple[int, int | None]] = []
        if path.name.endswith(COMPRESSED_SUFFIX):
            data, lost = _decompress(data)
        scan = _SegmentScan(self, path, data, lost, joined=segment_index(path) is None)
        yield from scan.frames(self.start_offset)


class _SegmentScan:
    """One file's bytes: its headers, frames and problems, read front to back."""

    def __init__(self, reader: LogReader, path: Path, data: bytes, lost: list[tuple[int, int | None]], *, joined: bool) -> None:
        self.reader = reader
        self.path = path
        self.data = data
        self.lost = lost
        self.joined = joined
        """The file may hold several segments one after another (it is no segment of a directory)."""
        self.format = 0
        self.key = 0
        self.expect: int | None = None
        """The number the next frame should have (format 2; None when unknown)."""

    def problem(self, kind: Literal["torn_tail", "corrupt"], offset: int, length: int, detail: str) -> None:
        hits = [(a, b) for a, b in self.lost if a < offset + max(length, 1) and (b is None or b > offset)]
        if hits:
            detail += "; compressed data lost at " + ", ".join(f"{a}..{'end' if b is None else b}" for a, b in hits)
        self.reader.problems.append(LogProblem(self.path, offset, length, kind, detail))

    def frames(self, start_offset: int | None) -> Iterator[Frame]:
        data, end, reader = self.data, len(self.data), self.reader
        offset = self.begin(0)
        if offset is None:
            return
        if start_offset is not None and start_offset > offset:
            offset, self.expect = start_offset, None
        reader.next_offset = offset
        while offset < end:
            if data.startswith(LOG_MAGIC, offset):  # segment files concatenated (cat a b > c): a header, not a frame
                offset = self.begin(offset)
                if offset is None:
                    return
                reader.next_offset = offset
                continue
            frame, size, reason = self.parse(offset)
            if frame is not None:
                if frame.type != FRAME_HEADER:
                    yield frame
                offset += size
                reader.next_offset = offset
                continue
            resume = self.resync(offset + 1)
            if resume is None:
                detail = "frame cut short at end of file" if reason == "truncated" else f"{reason}; no valid frame after it"
                self.problem("torn_tail", offset, end - offset, detail)
                return
            position, note = resume
            self.problem("corrupt", offset, position - offset, reason + note)
            offset = position

    # -- headers -----------------------------------------------------------------------------------

    def begin(self, start: int) -> int | None:
        """Read the segment header at ``start``; returns where its frames start (None: nothing more to read)."""
        data, path = self.data, self.path
        if len(data) - start < len(LOG_MAGIC) + 2:
            if LOG_MAGIC.startswith(data[start : start + len(LOG_MAGIC)]):
                self.problem("torn_tail", start, len(data) - start, "segment header cut short")
                return None
            if self.reader.directory and start == 0:
                self.problem("corrupt", 0, len(data), "not a simic event log segment: no segment header and no copy of one")
                return None
            raise LogFormatError(f"{path} is not a simic event log")
        version = struct.unpack_from("<H", data, start + len(LOG_MAGIC))[0]
        magic = data[start : start + len(LOG_MAGIC)] == LOG_MAGIC
        if magic and version == 1:
            return self.begin_format_1(start)
        reason = "bad magic" if not magic else None
        if magic and version == 2:
            header = _parse_header_2(data, start)
            if not isinstance(header, str):
                key, meta, end = header
                self.format, self.key, self.expect = 2, key, 0
                self.reader.headers.setdefault(path, meta)
                return end
            reason = header
        elif magic:
            reason = f"unknown format {version}"
            rest = data[start + len(LOG_MAGIC) + 2 : start + _HEADER_2.size + _MAX_HEADER_META + _CRC.size]
            patched = _parse_header_2(LOG_MAGIC + struct.pack("<H", 2) + rest, 0)
            if not isinstance(patched, str):  # the checksum holds with version 2: the version field alone was hit
                key, meta, end = patched
                self.format, self.key, self.expect = 2, key, None
                self.reader.headers.setdefault(path, meta)
                self.problem("corrupt", start, end, f"segment header damaged ({reason}; the rest of it holds)")
                return start + end
        resumed = self.recover(start, "segment header cut short" if reason == "truncated" else f"segment header damaged ({reason})")
        if resumed is not None:
            return resumed
        if reason == "truncated":
            self.problem("torn_tail", start, len(data) - start, "segment header cut short")
            return None
        if not magic:
            following = self.next_header(start + 1) if self.joined else len(data)
            if following < len(data):  # joined segments: the first is unreadable, the next one starts there
                self.problem("corrupt", start, following - start, "segment header damaged (bad magic) and no copy of it found")
                return following
            if self.reader.directory and start == 0:
                self.problem("corrupt", 0, len(data), "not a simic event log segment: no segment header and no copy of one")
                return None
            raise LogFormatError(f"{path} is not a simic event log (bad magic)")
        if version not in READ_FORMATS:
            raise LogFormatError(f"{path} is log format {version}; this code reads formats {', '.join(map(str, READ_FORMATS))}")
        # Format 2, its header and every copy of it damaged: no frame of it can be checked.
        following = self.next_header(start + 1) if self.joined else len(data)
        self.problem("corrupt", start, following - start, f"segment header damaged ({reason}) and no copy of it found: nothing in it can be checked")
        return following if following < len(data) else None

    def begin_format_1(self, start: int) -> int | None:
        data, path = self.data, self.path
        if len(data) - start < _HEADER_1.size:
            self.problem("torn_tail", start, len(data) - start, "segment header cut short")
            return None
        _, _, meta_len = _HEADER_1.unpack_from(data, start)
        if meta_len > _MAX_HEADER_META:
            raise LogFormatError(f"{path} has an implausible header length {meta_len}")
        end = start + _HEADER_1.size + meta_len
        if len(data) < end:
            self.problem("torn_tail", start, len(data) - start, "segment header cut short")
            return None
        try:
            meta = msgpack.unpackb(data[start + _HEADER_1.size : end], raw=False)
        except Exception as error:
            raise LogFormatError(f"{path} has an unreadable header: {error}") from None
        self.format, self.key, self.expect = 1, 0, None
        self.reader.headers.setdefault(path, meta if isinstance(meta, dict) else {})
        return end

    def recover(self, start: int, reason: str) -> int | None:
        """After a damaged format-2 header at ``start``: take the key from a copy of it and return where
        reading resumes (the first frame of that key), having reported the damaged bytes; None without a copy."""
        limit = self.next_header(start + 1) if self.joined else len(self.data)
        copies: dict[int, tuple[int, dict]] = {}
        for position, key, meta in _header_copies(self.data, start, limit):
            copies.setdefault(key, (position, meta))
        if not copies:
            return None
        if len(copies) == 1 or self.joined:  # joined segments: the first copy after the header is the header's own
            key = min(copies, key=lambda k: copies[k][0])
        else:  # a copy shaped inside a payload: the real key is the one whose frames cover most of the file
            key = max(copies, key=lambda k: (_coverage(self.data, start, limit, k), -copies[k][0]))
        position, meta = copies[key]
        first = _next_frame_2(self.data, start, key, None, limit)
        assert first is not None  # the copy itself is one
        self.format, self.key, self.expect = 2, key, None
        self.reader.headers.setdefault(self.path, meta)
        if first > start:
            self.problem("corrupt", start, first - start, f"{reason}; read with the key of its copy at offset {position}")
        return first

    def next_header(self, start: int) -> int:
        """Where the next intact segment header at or after ``start`` begins (the end of the file if none)."""
        position = start
        while True:
            found = self.data.find(LOG_MAGIC, position)
            if found < 0:
                return len(self.data)
            copy = found - _FRAME_2.size  # a header copy's payload is a header too, but not where a segment starts
            in_copy = copy >= 0 and self.data.startswith(FRAME_MARK_2, copy) and self.data[copy + 3] == FRAME_HEADER
            if not in_copy and _header_at(self.data, found):
                return found
            position = found + 1

    # -- frames ------------------------------------------------------------------------------------

    def parse(self, offset: int) -> tuple[Frame | None, int, str]:
        """The frame at ``offset``, its size and, when there is none, why."""
        if self.format == 1:
            frame, reason = _parse_frame_1(self.path, self.data, offset)
            return frame, (_FRAME_1.size + len(frame.payload)) if frame is not None else 0, reason
        frame, reason = _parse_frame_2(self.path, self.data, offset, self.key)
        if frame is None:
            return None, 0, reason
        counter = frame.counter
        assert counter is not None
        if self.expect is not None and counter < self.expect:
            return None, 0, f"frame {counter} out of place (after frame {self.expect - 1})"
        if self.expect is not None and counter > self.expect:
            self.problem("corrupt", offset, 0, f"frames {self.expect}..{counter - 1} missing before this one")
        self.expect = counter + 1
        return frame, FRAME_OVERHEAD + len(frame.payload), ""

    def resync(self, start: int) -> tuple[int, str] | None:
        """Where reading resumes after damage at ``start - 1``, and what to add to the problem's detail."""
        if self.format == 1:
            found = _resync_1(self.path, self.data, start)
            if found is not None:
                return found, ""
        else:
            limit = len(self.data)
            found = _next_frame_2(self.data, start, self.key, self.expect, limit)
            if found is not None:
                counter = struct.unpack_from("<I", self.data, found + 8)[0]
                lost = counter - self.expect if self.expect is not None else None
                self.expect = None  # said here: the frame found is not "after missing frames" again
                return found, (f"; {lost} frame{'' if lost == 1 else 's'} lost" if lost else "")
        if not self.joined:
            return None
        # A file of joined segments: the rest of this segment is gone; the next segment's header, or a copy of it.
        header = self.next_header(start)
        copy = next(_header_copies(self.data, start, header), None)
        if copy is not None:
            position, key, meta = copy
            self.format, self.key, self.expect = 2, key, None
            return position, "; the next segment's header is damaged too: read with the key of its copy"
        if header < len(self.data):
            return header, ""
        return None


def _parse_header_2(data: bytes, start: int) -> tuple[int, dict, int] | str:
    """``(key, meta, end)`` of an intact format-2 header at ``start``; else why not (``"truncated"``: the file ends in it)."""
    if len(data) - start < _HEADER_2.size:
        return "truncated"
    _, _, key, meta_len = _HEADER_2.unpack_from(data, start)
    if meta_len > _MAX_HEADER_META:
        return f"implausible header length {meta_len}"
    meta_end = start + _HEADER_2.size + meta_len
    end = meta_end + _CRC.size
    if len(data) < end:
        return "truncated"
    if zlib.crc32(data[start:meta_end]) != _CRC.unpack_from(data, meta_end)[0]:
        return "checksum mismatch"
    try:
        meta = msgpack.unpackb(data[start + _HEADER_2.size : meta_end], raw=False)
    except Exception:
        meta = None
    return key, meta if isinstance(meta, dict) else {}, end


def _header_at(data: bytes, start: int) -> bool:
    """Whether an intact segment header (format 1 or 2) starts at ``start``."""
    if not data.startswith(LOG_MAGIC, start) or len(data) - start < _HEADER_1.size:
        return False
    version = struct.unpack_from("<H", data, start + len(LOG_MAGIC))[0]
    if version == 2:
        return not isinstance(_parse_header_2(data, start), str)
    if version == 1:
        meta_len = _HEADER_1.unpack_from(data, start)[2]
        end = start + _HEADER_1.size + meta_len
        if meta_len > _MAX_HEADER_META or end > len(data):
            return False
        try:
            msgpack.unpackb(data[start + _HEADER_1.size : end], raw=False)
        except Exception:
            return False
        return True
    return False


def _header_copies(data: bytes, start: int, limit: int) -> Iterator[tuple[int, int, dict]]:
    """``(offset, key, meta)`` of every intact header-copy frame in ``data[start:limit]``."""
    position = start
    while True:
        found = data.find(FRAME_MARK_2, position, limit)
        if found < 0:
            return
        position = found + 1
        if len(data) - found < _FRAME_2.size or data[found + 3] != FRAME_HEADER:
            continue
        length = struct.unpack_from("<I", data, found + 4)[0]
        if found + _FRAME_2.size + length > limit:
            continue
        header = _parse_header_2(data[found + _FRAME_2.size : found + _FRAME_2.size + length], 0)
        if isinstance(header, str) or header[2] != length:
            continue
        key, meta, _ = header
        if _parse_frame_2(Path(), data, found, key)[0] is not None:
            yield found, key, meta


def _coverage(data: bytes, start: int, limit: int, key: int) -> int:
    """Bytes of ``data[start:limit]`` in frames that hold with ``key``."""
    covered, position = 0, start
    while True:
        found = _next_frame_2(data, position, key, None, limit)
        if found is None:
            return covered
        size = _FRAME_2.size + struct.unpack_from("<I", data, found + 4)[0]
        covered += size
        position = found + size


def _next_frame_2(data: bytes, start: int, key: int, expect: int | None, limit: int) -> int | None:
    """Offset of the first frame at or after ``start`` that holds with ``key`` (numbered ``expect`` or above)."""
    position = start
    while True:
        found = data.find(FRAME_MARK_2, position, limit)
        if found < 0:
            return None
        frame, _ = _parse_frame_2(Path(), data, found, key)
        if frame is not None and (expect is None or frame.counter >= expect):
            return found
        position = found + 1


def _parse_frame_2(path: Path, data: bytes, offset: int, key: int) -> tuple[Frame | None, str]:
    if len(data) - offset < _FRAME_2.size:
        return None, "truncated" if FRAME_MARK_2.startswith(data[offset : offset + 3]) else "bad frame marker"
    mark, frame_type, length, counter, recv_ns, crc = _FRAME_2.unpack_from(data, offset)
    if mark != FRAME_MARK_2:
        return None, "bad frame marker"
    if length > MAX_MESSAGE_BYTES:
        return None, f"implausible frame length {length}"
    start = offset + _FRAME_2.size
    if start + length > len(data):
        return None, "truncated"
    payload = data[start : start + length]
    if zlib.crc32(payload, zlib.crc32(data[offset + 3 : offset + 3 + _FIELDS_2.size], key)) != crc:
        return None, "checksum mismatch"
    return Frame(path, offset, recv_ns, payload, frame_type, counter), ""


def _parse_frame_1(path: Path, data: bytes, offset: int) -> tuple[Frame | None, str]:
    if len(data) - offset < _FRAME_1.size:
        return None, "truncated" if FRAME_MARK.startswith(data[offset : offset + 3]) else "bad frame marker"
    mark, frame_type, length, recv_ns, crc = _FRAME_1.unpack_from(data, offset)
    if mark != FRAME_MARK:
        return None, "bad frame marker"
    if length > MAX_MESSAGE_BYTES:
        return None, f"implausible frame length {length}"
    start = offset + _FRAME_1.size
    if start + length > len(data):
        return None, "truncated"
    payload = data[start : start + length]
    head = _FIELDS_1.pack(frame_type, length, recv_ns)
    if zlib.crc32(payload, zlib.crc32(head)) != crc:
        return None, "checksum mismatch"
    return Frame(path, offset, recv_ns, payload, frame_type), ""


def _resync_1(path: Path, data: bytes, offset: int) -> int | None:
    while True:
        found = data.find(FRAME_MARK, offset)
        if found < 0:
            return None
        frame, _ = _parse_frame_1(path, data, found)
        if frame is not None:
            return found
        offset = found + 1
