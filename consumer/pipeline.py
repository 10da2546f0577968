"""The pipeline contract: every stage consumes one :class:`Batch` at a time.

A source (the ZeroMQ receiver, or a recorded log) turns each message into a ``Batch`` and hands
it to :meth:`Pipeline.consume`, which decodes it and passes it through the stages in order::

    Batch(raw bytes) -> decode -> [event log] -> accounting -> analysis rules -> alert sinks

Stages share one small interface (OpenTelemetry-collector style): ``start()``, ``consume(batch)``,
``close()``. ``close`` flushes what the stage holds, is safe without ``start`` and safe to repeat.
A stage that raises does not stop the pipeline: the error is counted per stage and logged at a
bounded rate, and the batch goes on to the next stage. A stage that never awaits (accounting, every
rule) is a :class:`SyncStage`: the pipeline calls it directly, saving a coroutine per stage and batch.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Sequence

from simic.schemas.codec import DecodeError, decode_message
from simic.schemas.models import Alert, DeliveryReceipt, Event

from .lifecycle import parse_note

__all__ = ["Batch", "Stage", "SyncStage", "Pipeline", "RateLimitedLog"]

log = logging.getLogger("simic.consumer")


@dataclass(slots=True)
class Batch:
    """One received message on its way through the pipeline."""

    raw: bytes
    """The message exactly as received."""
    recv_ns: int
    """Consumer wall clock (``time.time_ns()``) when it arrived; from the log when replaying."""
    events: list[Event] = field(default_factory=list)
    """The valid events it holds."""
    errors: list[DecodeError] = field(default_factory=list)
    """Events of it that were refused (the message itself was valid)."""
    rejected: DecodeError | None = None
    """Why the whole message was refused, or None."""
    alerts: list[Alert] = field(default_factory=list)
    """Alerts raised by analysis stages while this batch went through."""
    tick: bool = False
    """A clock tick, not a message: time passed (``recv_ns``) with or without traffic. Time-based
    rules (a silent producer) act on it; the event log records it so replay sees the same time."""
    catching_up: bool = False
    """Re-processing logged messages after a restart to rebuild state: alert sinks stay quiet."""
    one_session: bool = False
    """Every event is of one producer session (true of the events decoded from one message)."""
    exited: tuple[str, int] | None = None
    """On a tick: ``(host, pid)`` of the process the daemon watched (``--exit-with-pid``), which had
    just exited. The tick's payload records it in the log, so replay sees the exit at the same point."""
    updates: list[Event] = field(default_factory=list)
    """The batch's events as the rules that count updates see them: one per update and kind, combined
    by the ``updates`` stage (``simic.consumer.analysis.updates``); empty before that stage."""
    receipts: list[DeliveryReceipt] = field(default_factory=list)
    """Delivery receipts for the sessions whose ``run_end`` is in this batch, made by the accounting
    (what it received of each) and published to their producers by the alerts publisher."""
    _by_kind: dict[str, list[Event]] | None = field(default=None, init=False, repr=False, compare=False)
    _updates_by_kind: dict[str, list[Event]] | None = field(default=None, init=False, repr=False, compare=False)

    def of_kind(self, kind: str) -> Sequence[Event]:
        """The events of one kind, in order."""
        index = self._by_kind
        return (self.kind_index() if index is None else index).get(kind, ())

    def kind_index(self) -> dict[str, list[Event]]:
        """Kind to its events, in order. Made on first use and kept: most rules look at one kind only."""
        index = self._by_kind
        if index is None:
            index = self._by_kind = _index_by_kind(self.events)
        return index

    def update_index(self) -> dict[str, list[Event]]:
        """Kind to its combined per-update events (``updates``), in order. Made on first use and kept."""
        index = self._updates_by_kind
        if index is None:
            index = self._updates_by_kind = _index_by_kind(self.updates)
        return index


def _index_by_kind(events: list[Event]) -> dict[str, list[Event]]:
    index: dict[str, list[Event]] = {}
    for event in events:
        bucket = index.get(event.kind)
        if bucket is None:
            index[event.kind] = [event]
        else:
            bucket.append(event)
    return index


class Stage:
    """Base of every pipeline stage. Subclasses override what they need."""

    name = "stage"

    async def start(self) -> None:
        """Acquire resources (open files, sockets)."""

    async def consume(self, batch: Batch) -> None:
        """Look at (and possibly add alerts to) one batch."""

    async def flush(self) -> None:
        """Push buffered output out (called when the input goes quiet)."""

    async def close(self) -> None:
        """Flush and release. Safe without ``start`` and when called twice."""


class SyncStage(Stage):
    """A stage whose work never awaits: :meth:`consume_now` does it, and the pipeline calls that directly."""

    def consume_now(self, batch: Batch) -> None:
        """Look at (and possibly add alerts to) one batch, synchronously."""

    async def consume(self, batch: Batch) -> None:
        self.consume_now(batch)


def _direct(stage: Stage):
    """The synchronous consume of a stage, when calling it is all its ``consume`` does."""
    return stage.consume_now if isinstance(stage, SyncStage) and type(stage).consume is SyncStage.consume else None


class RateLimitedLog:
    """Logs at most one line per key per ``interval_s``, then says how many were suppressed.

    Remembers at most ``max_keys`` keys (the least recently logged is forgotten first), so keys
    made from what senders choose cannot grow it without bound."""

    def __init__(self, logger: logging.Logger = log, interval_s: float = 1.0, max_keys: int = 1024) -> None:
        self.logger = logger
        self.interval_ns = int(interval_s * 1e9)
        self.max_keys = max_keys
        self._last: OrderedDict[str, int] = OrderedDict()
        self._suppressed: Counter[str] = Counter()

    def warning(self, key: str, message: str, *args: object) -> None:
        now = time.monotonic_ns()
        last = self._last.get(key)
        if last is not None and now - last < self.interval_ns:
            self._suppressed[key] += 1
            return
        self._last[key] = now
        self._last.move_to_end(key)
        if len(self._last) > self.max_keys:
            forgotten, _ = self._last.popitem(last=False)
            self._suppressed.pop(forgotten, None)
        suppressed = self._suppressed.pop(key, 0)
        if suppressed:
            message += f" ({suppressed} similar suppressed)"
        self.logger.warning(message, *args)


class Pipeline:
    """Decodes batches and runs them through stages, counting stage failures."""

    def __init__(self, stages: Sequence[Stage]) -> None:
        self.stages = list(stages)
        self._calls = [(stage, _direct(stage)) for stage in self.stages]
        self._flushing = [stage for stage in self.stages if type(stage).flush is not Stage.flush]  # the others do nothing
        self.stage_errors: Counter[str] = Counter()
        self._log = RateLimitedLog()
        self._started = False

    async def start(self) -> None:
        for stage in self.stages:
            await stage.start()
        self._started = True

    async def consume(self, raw: bytes, recv_ns: int, *, catching_up: bool = False) -> Batch:
        """Decode one message and pass it through every stage. Never raises for bad input."""
        batch = Batch(raw=raw, recv_ns=recv_ns, catching_up=catching_up)
        try:
            decoded = decode_message(raw)
        except DecodeError as error:
            batch.rejected = error
        else:
            batch.events = decoded.events
            batch.errors = decoded.errors
            batch.one_session = True
        return await self._run(batch)

    async def tick(self, now_ns: int, *, catching_up: bool = False, note: bytes = b"") -> Batch:
        """Let time-based stages see that time passed (no message). ``note``: the tick's payload, what
        the daemon noticed besides time (``simic.consumer.lifecycle.exit_note``), logged with it."""
        batch = Batch(raw=note, recv_ns=now_ns, tick=True, catching_up=catching_up)
        if note:
            batch.exited = parse_note(note)
        return await self._run(batch)

    async def _run(self, batch: Batch) -> Batch:
        for stage, direct in self._calls:
            try:
                if direct is not None:
                    direct(batch)
                else:
                    await stage.consume(batch)
            except Exception as error:  # one broken stage must not stop the others
                self.stage_errors[stage.name] += 1
                self._log.warning(f"stage:{stage.name}", "stage %s failed: %r", stage.name, error)
        return batch

    async def flush(self) -> None:
        for stage in self._flushing:
            try:
                await stage.flush()
            except Exception as error:
                self.stage_errors[stage.name] += 1
                self._log.warning(f"flush:{stage.name}", "flushing stage %s failed: %r", stage.name, error)

    async def close(self) -> None:
        """Close every stage (in order), even when some fail."""
        for stage in self.stages:
            try:
                await stage.close()
            except Exception as error:
                self.stage_errors[stage.name] += 1
                log.warning("closing stage %s failed: %r", stage.name, error)

    def find(self, kind: type) -> list:
        """The stages of a given type (e.g. the accounting stage, for its summary)."""
        return [stage for stage in self.stages if isinstance(stage, kind)]

