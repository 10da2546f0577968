"""The event log sink: every received message, byte for byte, into rotating log segments."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from simic.schemas.eventlog import FRAME_MESSAGE, FRAME_TICK, LogWriteError, LogWriter

from ..pipeline import Batch, RateLimitedLog, Stage

__all__ = ["EventLogSink"]

log = logging.getLogger("simic.consumer")


class EventLogSink(Stage):
    """Appends each message (rejected ones too, so a replay counts the same rejections) and each
    clock tick (so a replay sees time pass as the live run did) to the log.

    A failed write (disk full) loses the frames of that write, counts them in ``frames_lost`` and is
    logged; the daemon keeps receiving, analysing and alerting.
    """

    name = "event_log"

    def __init__(self, directory: Path, *, max_segment_bytes: int, sync_interval_s: float, writer: str) -> None:
        self.directory = directory
        self.max_segment_bytes = max_segment_bytes
        self.sync_interval_ns = int(sync_interval_s * 1e9)
        self.writer_name = writer
        self.writer: LogWriter | None = None
        self.frames_lost = 0
        self.write_errors = 0
        self._last_sync = time.monotonic_ns()
        self._log = RateLimitedLog(log, 5.0)

    async def start(self) -> None:
        self.writer = LogWriter(self.directory, max_segment_bytes=self.max_segment_bytes, writer=self.writer_name)

    async def consume(self, batch: Batch) -> None:
        if self.writer is None or batch.catching_up:
            return
        pending = self.writer.buffered_frames
        try:
            self.writer.write(batch.raw, batch.recv_ns, FRAME_TICK if batch.tick else FRAME_MESSAGE)
        except LogWriteError as error:
            self._failed(error, pending + 1)

    @property
    def position(self) -> tuple[str, int] | None:
        """Where the log ends on disk (after :meth:`flush`): what a checkpoint covers."""
        return self.writer.position if self.writer is not None else None

    async def flush(self) -> None:
        if self.writer is None:
            return
        pending = self.writer.buffered_frames
        try:
            if time.monotonic_ns() - self._last_sync >= self.sync_interval_ns:
                self.writer.sync()
                self._last_sync = time.monotonic_ns()
            else:
                self.writer.flush()
        except LogWriteError as error:
            self._failed(error, pending)

    def _failed(self, error: LogWriteError, frames: int) -> None:
        self.write_errors += 1
        self.frames_lost += frames
        self._log.warning("write", "event log write failed, %d frames lost so far: %s", self.frames_lost, error)

    async def close(self) -> None:
        if self.writer is not None:
            try:
                self.writer.close()
            except LogWriteError as error:
                self._failed(error, 0)
            self.writer = None
