"""Dead letters: refused messages kept aside, in the event-log format, for a look later."""

from __future__ import annotations

from pathlib import Path

from simic.schemas.eventlog import LogWriteError, LogWriter

from ..pipeline.contract import Batch, Stage

__all__ = ["DeadLetterSink"]


class DeadLetterSink(Stage):
    """Writes every message that was refused, or held refused events, to its own log directory
    (``simic-consumer inspect DIR`` reads it). Bounded: stops writing past ``max_bytes``; what it could
    not write is counted in :attr:`dropped`."""

    name = "dead_letter"
    quiet_while_catching_up = True

    def __init__(self, directory: Path, *, max_bytes: int = 256 * 1024 * 1024) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.written = 0
        self.dropped = 0
        self._writer: LogWriter | None = None

    async def start(self) -> None:
        self._writer = LogWriter(self.directory, writer="simic-consumer dead-letter")

    async def consume(self, batch: Batch) -> None:
        if self._writer is None or (batch.rejected is None and not batch.errors):
            return
        if self._writer.bytes_written >= self.max_bytes:
            self.dropped += 1
            return
        try:
            self._writer.write(batch.raw, batch.recv_ns)
            self.written += 1
        except LogWriteError:
            self.dropped += 1

    async def flush(self) -> None:
        if self._writer is not None:
            try:
                self._writer.flush()
            except LogWriteError:
                pass

    async def close(self) -> None:
        if self._writer is not None:
            try:
                self._writer.close()
            except LogWriteError:
                pass
            self._writer = None
