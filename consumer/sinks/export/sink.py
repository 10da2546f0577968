"""An exporter behind its own bounded queue and thread: slow or failing, it never holds up the pipeline.

::

    pipeline (event loop)                          export thread ("simic-export-<name>")
    ... rules -> alert sinks -> ExportSink.consume
                                  | put_nowait((events, updates, alerts))
                                  v
                          queue.Queue(queue_batches) ---get---> points_of() -> Exporter.write()
                                  | full: drop the batch, count its events       | raises: count as failed, go on
                                                                                  close(): Exporter.close()

The pipeline's side is one ``put_nowait`` per batch that holds something to export: a slow exporter
(a full disk, wandb's service busy) fills its queue, and what does not fit is dropped and counted
(``simic_export_dropped_events_total``, the exit summary), while the receiver, the event log and the
alerts go on at their pace. An exporter that raises loses the batch it was writing (counted as
failed, logged at a bounded rate) and is handed the next one. Replaying logs into an exporter
(``simic-consumer export``) waits for room instead of dropping: nothing is in a hurry there.

Batches the daemon re-reads after a restart (``catching_up``) are not exported again: the stage is
``quiet_while_catching_up``. A batch dropped at a full queue or lost to a failing write counts in the
stage's :attr:`~ExportSink.dropped` (``simic_stage_dropped_batches_total{stage="export:<name>"}``).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Literal

from ...pipeline.contract import Batch, RateLimitedLog, SyncStage
from .points import RunKey, RunPoints, points_of

__all__ = ["Exporter", "RunExporter", "ExportSink", "ExportStats", "MissingExtra"]

log = logging.getLogger("simic.consumer")

_STOP = object()


class MissingExtra(RuntimeError):
    """The library an exporter writes with is not installed; the message says what to install."""


class Exporter:
    """Where points go: TensorBoard event files, a wandb run. Called from the export thread only.

    Lifecycle: constructed in the daemon's thread (a missing library raises :class:`MissingExtra` there,
    at start); :meth:`write` for every batch; :meth:`close` once at the end, which flushes and is safe to
    repeat. :meth:`write` may raise: the batch is counted as failed and the next one comes."""

    name: ClassVar[str] = "exporter"
    where: str = ""
    """Where it writes, for messages (a directory, a wandb project)."""

    def write(self, runs: dict[RunKey, RunPoints]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class RunExporter(Exporter):
    """An exporter with one open handle per (run, rank) (a TensorBoard writer, a wandb run), opened at
    the first points of that (run, rank) and closed when its session ends (``run_end``) or at :meth:`close`."""

    def __init__(self) -> None:
        self._open: dict[RunKey, Any] = {}

    def open_run(self, run_id: str, rank: int) -> Any:
        raise NotImplementedError

    def write_run(self, handle: Any, points: RunPoints) -> None:
        raise NotImplementedError

    def close_run(self, handle: Any) -> None:
        raise NotImplementedError

    def write(self, runs: dict[RunKey, RunPoints]) -> None:
        for key, points in runs.items():
            handle = self._open.get(key)
            if handle is None:
                handle = self._open[key] = self.open_run(*key)
            self.write_run(handle, points)
            if points.ended:
                self.close_run(self._open.pop(key))

    def close(self) -> None:
        while self._open:
            _, handle = self._open.popitem()
            self.close_run(handle)


@dataclass
class ExportStats:
    """What an exporter did with the events it was given (since the daemon started)."""

    written: int = 0
    """Events (alerts included) whose points were written."""
    dropped: int = 0
    """Events not exported because the queue was full (the exporter was too slow)."""
    failed: int = 0
    """Events of batches the exporter raised on."""
    unfinished: int = 0
    """Batches still queued when the exporter did not finish within ``close_timeout_s``."""

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class ExportSink(SyncStage):
    """Runs an :class:`Exporter` in its own thread behind a bounded queue (see the module).

    Args:
        exporter: where the points go.
        queue_batches: batches held for the exporter; beyond that they are dropped and counted.
        when_full: ``"drop"`` (the daemon: never wait) or ``"wait"`` (replaying logs: wait for room).
        close_timeout_s: longest :meth:`close` waits for the exporter to write what is queued and close;
            None waits as long as it takes.
    """

    quiet_while_catching_up = True  # what a restart re-reads was exported by the process that received it

    def __init__(self, exporter: Exporter, *, queue_batches: int = 1000, when_full: Literal["drop", "wait"] = "drop",
                 close_timeout_s: float | None = 10.0) -> None:
        if queue_batches < 1:
            raise ValueError(f"queue_batches must be >= 1, got {queue_batches}")
        if when_full not in ("drop", "wait"):
            raise ValueError(f"when_full must be 'drop' or 'wait', got {when_full!r}")
        self.exporter = exporter
        self.name = f"export:{exporter.name}"
        self.capacity = queue_batches
        self.close_timeout_s = close_timeout_s
        self.stats = ExportStats()
        self._batches_dropped = 0  # counted on the pipeline's side
        self._batches_failed = 0  # counted in the export thread
        self._queue: queue.Queue = queue.Queue(queue_batches)
        self._thread: threading.Thread | None = None
        self._closed = False
        self._log = RateLimitedLog(log, interval_s=10.0)
        self._put = self._put_or_drop if when_full == "drop" else self._queue.put

    @property
    def dropped(self) -> int:
        """Batches accepted but not written: dropped at a full queue, or lost to a write that raised."""
        return self._batches_dropped + self._batches_failed

    @property
    def queued(self) -> int:
        """Batches waiting for the exporter now."""
        return self._queue.qsize()

    async def start(self) -> None:
        if self._thread is None and not self._closed:
            self._thread = threading.Thread(target=self._run, name=f"simic-{self.name.replace(':', '-')}", daemon=True)
            self._thread.start()

    def consume_now(self, batch: Batch) -> None:
        if self._closed or not (batch.events or batch.updates or batch.alerts):
            return
        self._put((batch.events, batch.updates, batch.alerts, len(batch.events) + len(batch.alerts)))

    def _put_or_drop(self, item: tuple) -> None:
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self._batches_dropped += 1
            self.stats.dropped += item[3]
            self._log.warning(f"{self.name}:full", "%s: queue full (%d batches), dropping events (%d so far)",
                              self.name, self.capacity, self.stats.dropped)

    def _run(self) -> None:
        """The export thread: write every queued batch until told to stop, then close the exporter."""
        get, write, stats = self._queue.get, self.exporter.write, self.stats
        while True:
            item = get()
            if item is _STOP:
                break
            events, updates, alerts, count = item
            try:
                runs = points_of(events, updates, alerts)
                if runs:
                    write(runs)
            except Exception as error:  # a failing exporter loses this batch, never the daemon
                self._batches_failed += 1
                stats.failed += count
                self._log.warning(f"{self.name}:write", "%s: writing failed (%d events lost so far): %r", self.name, stats.failed, error)
            else:
                stats.written += count
        try:
            self.exporter.close()
        except Exception as error:
            log.warning("%s: closing failed: %r", self.name, error)

    async def close(self) -> None:
        """Let the exporter write what is queued and close it, within ``close_timeout_s``."""
        if self._closed:
            return
        self._closed = True
        if self._thread is None:
            return
        await asyncio.to_thread(self._stop_and_join)

    def _stop_and_join(self) -> None:
        timeout = self.close_timeout_s
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            self._queue.put(_STOP, timeout=timeout)
            stop_queued = 1
        except queue.Full:
            stop_queued = 0
        assert self._thread is not None
        self._thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            self.stats.unfinished = max(0, self._queue.qsize() - stop_queued)
            log.warning("%s: not finished within %s s, %d batches not written", self.name, timeout, self.stats.unfinished)

    def summary_line(self) -> str:
        """One line for the exit summary."""
        stats = self.stats
        line = (f"export {self.exporter.name} to {self.exporter.where}: {stats.written} events written, "
                f"{stats.dropped} dropped (queue full), {stats.failed} failed")
        return line + (f", {stats.unfinished} batches not written at the close deadline" if stats.unfinished else "")
