"""The event log sink: every received message, byte for byte, into rotating log segments."""

from __future__ import annotations

import errno
import logging
import time
from pathlib import Path

from simic.schemas.eventlog import (
    FRAME_MESSAGE, FRAME_TICK, LogFormatError, LogReader, LogWriteError, LogWriter, segment_index, segment_name, segment_paths,
)

from ..pipeline.contract import Batch, RateLimitedLog, Stage
from .retention import LogMaintenance, RetentionPolicy

__all__ = ["EventLogSink"]

log = logging.getLogger("simic.consumer")


class EventLogSink(Stage):
    """Appends each message (rejected ones too, so a replay counts the same rejections) and each
    clock tick (so a replay sees time pass as the live run did) to the log.

    A failed write (disk full, file too large, I/O error) loses the frames of that write and leaves
    no partial frame behind (the writer truncates it back); they are counted in ``frames_lost``.
    The first failure is reported in one line naming the file and the errno, repeats at most every
    5 s, and the return of writing in one more line; the daemon keeps receiving, analysing and
    alerting, and every later flush tries again. At start, a torn tail or corrupt stretch left in
    the newest segment by a crash is reported (readers skip it; new frames go to a new segment).

    Closed segments are compressed and the oldest removed by a background thread
    (:class:`~simic.consumer.sinks.retention.LogMaintenance`, per ``retention``), woken at start, when a
    segment is closed and every ``maintenance_interval_s``. It never touches the segment being
    written, and never removes the one the last checkpoint points into (:meth:`checkpointed`) or a
    later one: when a segment is closed, :attr:`checkpoint_wanted` asks the daemon for a checkpoint,
    so that this protects no more than the segment just closed.
    """

    name = "event_log"
    quiet_while_catching_up = True  # what it catches up on is already in the log

    def __init__(self, directory: Path, *, max_segment_bytes: int, sync_interval_s: float, writer: str,
                 retention: RetentionPolicy | None = None, maintenance_interval_s: float = 60.0) -> None:
        self.directory = directory
        self.max_segment_bytes = max_segment_bytes
        self.sync_interval_ns = int(sync_interval_s * 1e9)
        self.writer_name = writer
        self.maintenance = LogMaintenance(directory, retention) if retention is not None else None
        self.maintenance_interval_ns = int(maintenance_interval_s * 1e9)
        self._last_maintenance = time.monotonic_ns()
        self._checkpoint_index: int | None = None
        self.checkpoint_wanted = False
        """A segment was closed since the last checkpoint (the daemon checkpoints at once, see the class)."""
        self.writer: LogWriter | None = None
        self.frames_lost = 0
        self.write_errors = 0
        self.failing = False
        """The last write failed: frames are being lost until one succeeds."""
        self._lost_before = 0
        self._last_sync = time.monotonic_ns()
        self._log = RateLimitedLog(log, 5.0)

    async def start(self) -> None:
        self._report_damage()
        self.writer = LogWriter(self.directory, max_segment_bytes=self.max_segment_bytes, writer=self.writer_name, on_rotate=self._rotated)
        if self.maintenance is not None:
            self.maintenance.start(*self._bounds())  # the segments earlier processes left: compressed, retention applied

    def _bounds(self) -> tuple[int, int]:
        """The live segment, and the oldest that must not be removed (the one the checkpoint points into)."""
        assert self.writer is not None
        live = self.writer.index
        return live, live if self._checkpoint_index is None else min(live, self._checkpoint_index)

    def _rotated(self, path: Path) -> None:
        self.checkpoint_wanted = True
        if self.maintenance is not None:
            self.maintenance.bounds(*self._bounds())
            self.maintenance.wake()

    def checkpointed(self, position: tuple[str, int] | None) -> None:
        """A checkpoint now covers the log up to ``position``: a restart re-reads from there, so that
        segment and the later ones stay."""
        self._checkpoint_index = segment_index(position[0]) if position else None
        self.checkpoint_wanted = False
        if self.maintenance is not None and self.writer is not None:
            self.maintenance.bounds(*self._bounds())

    def _report_damage(self) -> None:
        """Say what a crash left at the end of the newest segment (the only one it could have been writing)."""
        paths = segment_paths(self.directory) if self.directory.is_dir() else []
        if not paths:
            return
        newest = paths[-1]
        reader = LogReader(newest)
        try:
            for _ in reader:
                pass
        except (OSError, LogFormatError) as error:
            log.warning("event log: cannot check %s: %s", newest, error)
            return
        for problem in reader.problems:
            log.warning("event log: %s; not read as data, new frames go to a new segment", problem)

    async def consume(self, batch: Batch) -> None:
        if self.writer is None:
            return
        pending = self.writer.buffered_frames
        try:
            self.writer.write(batch.raw, batch.recv_ns, FRAME_TICK if batch.tick else FRAME_MESSAGE)
        except LogWriteError as error:
            self._failed(error, pending + 1)
        else:
            if self.failing and self.writer.buffered_frames == 0:  # this write reached the file
                self._recovered()

    @property
    def dropped(self) -> int:
        """The stage's lost output: :attr:`frames_lost` (one frame per batch)."""
        return self.frames_lost

    @property
    def position(self) -> tuple[str, int] | None:
        """Where the log ends on disk (after :meth:`flush`): what a checkpoint covers. Before this
        process has written a frame, the start of the segment it will write: every earlier segment
        was there at start, and a checkpoint then already covers them (read at start, or covered by
        the checkpoint restored), so the next start must not read them again."""
        if self.writer is None:
            return None
        return self.writer.position or (segment_name(self.writer.index), 0)

    async def flush(self) -> None:
        if self.writer is None:
            return
        if self.maintenance is not None and time.monotonic_ns() - self._last_maintenance >= self.maintenance_interval_ns:
            self._last_maintenance = time.monotonic_ns()
            self.maintenance.wake()  # max_age: segments age while nothing is written
        pending = self.writer.buffered_frames
        try:
            if time.monotonic_ns() - self._last_sync >= self.sync_interval_ns:
                self._last_sync = time.monotonic_ns()
                self.writer.sync()
            else:
                self.writer.flush()
        except LogWriteError as error:
            self._failed(error, pending)
        except OSError as error:  # fsync: the frames were written, whether they are durable is unknown
            self._failed(error, 0)
        else:
            if self.failing and pending:
                self._recovered()

    def _failed(self, error: OSError, frames: int) -> None:
        self.write_errors += 1
        self.frames_lost += frames
        code = errno.errorcode.get(error.errno or 0, "?")
        if not self.failing:
            self.failing = True
            self._lost_before = self.frames_lost - frames
            self._log.warning("failed", "event log: write failed (%s): %s; frames are lost, and counted, until a write "
                              "succeeds again (analysis and alerts go on)", code, error)
        else:
            self._log.warning("failing", "event log: still failing (%s), %d frames lost so far: %s", code, self.frames_lost, error)

    def _recovered(self) -> None:
        self.failing = False
        path = self.writer.path if self.writer is not None else self.directory
        self._log.warning("recovered", "event log: writing again to %s after %d lost frames", path, self.frames_lost - self._lost_before)

    async def close(self) -> None:
        if self.writer is not None:
            pending = self.writer.buffered_frames
            try:
                self.writer.close()
            except LogWriteError as error:
                self._failed(error, pending)
            except OSError as error:
                self._failed(error, 0)
            self.writer = None
        if self.maintenance is not None:
            self.maintenance.close()  # a compression under way stops; its segment stays plain until the next start
