"""The pipeline contract: every stage consumes one :class:`Batch` at a time.

A source (the ZeroMQ receiver, or a recorded log) turns each message into a ``Batch`` and hands
it to :meth:`Pipeline.consume`, which decodes it and passes it through the stages in order::

    Batch(raw bytes) -> decode -> [event log] -> accounting -> analysis rules -> alert sinks

Stages share one small interface (OpenTelemetry-collector style): ``start()``, ``consume(batch)``,
``close()``. ``close`` flushes what the stage holds, is safe without ``start`` and safe to repeat.
A stage that raises does not stop the pipeline: the error is counted per stage and logged at a
bounded rate, and the batch goes on to the next stage. A stage that never awaits (accounting, every
rule) is a :class:`SyncStage`: the pipeline calls it directly, saving a coroutine per stage and batch.

The rest of the contract, declared here and honoured by the pipeline (choices made at construction):

- :class:`Stateful`: a stage with ``state_dict()``/``load_state_dict()`` is checkpointed by the daemon
  and restored into a fresh pipeline (``simic.consumer.daemon.checkpoint``); :attr:`Pipeline.stateful` lists them.
- :attr:`Stage.quiet_while_catching_up`: a stage whose work is output (the event log, alert sinks,
  exporters, metrics, the dashboard) is not handed the batches a restarted daemon re-processes to
  rebuild its state; the analysis is.
- Counts: per stage, the batches it accepted, refused (it raised) and dropped (:attr:`Stage.dropped`:
  accepted, but its output of them was lost), :meth:`Pipeline.stage_counts`, exported to Prometheus
  by ``simic.consumer.sinks.metrics``. A dependency of a stage (the accounting whose counts a sink
  shows, the queue whose depth it exports) is passed to it explicitly, never found in the pipeline.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, Sequence, runtime_checkable

from simic.schemas.codec import DecodeError, decode_message
from simic.schemas.models import Alert, DeliveryReceipt, Event

from ..daemon.lifecycle import parse_note

__all__ = ["Batch", "Stage", "SyncStage", "Stateful", "StageCounts", "Pipeline", "RateLimitedLog"]

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
    """Re-processing logged messages after a restart to rebuild state: the pipeline hands the batch only
    to the stages that are not :attr:`~Stage.quiet_while_catching_up` (accounting and analysis)."""
    one_session: bool = False
    """Every event is of one producer session (true of the events decoded from one message)."""
    exited: tuple[str, int] | None = None
    """On a tick: ``(host, pid)`` of the process the daemon watched (``--exit-with-pid``), which had
    just exited. The tick's payload records it in the log, so replay sees the exit at the same point."""
    updates: list[Event] = field(default_factory=list)
    """The batch's events as the rules that count updates see them: one per update and kind, combined
    by the ``updates`` stage (``simic.consumer.pipeline.updates``); empty before that stage."""
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

    quiet_while_catching_up: ClassVar[bool] = False
    """True for a stage whose work is output, not state (the event log, the dead letters, the alert
    sinks, the exporters, metrics, the dashboard): the pipeline does not hand it the batches of a catch-up
    (:attr:`Batch.catching_up`), which were written, printed and published by the process that
    first received them. Decided once per class; the pipeline reads it at construction."""

    dropped: int = 0
    """Batches this stage accepted but whose output it lost (a write that failed, a limit reached),
    counted by the stage itself. Always 0 for a stage that cannot lose anything."""

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


@runtime_checkable
class Stateful(Protocol):
    """A stage whose state is checkpointed (accounting, the update combiner, every rule, the alert clock).

    ``state_dict()`` returns the state as JSON data (strict JSON: no NaN or Inf, as ``json_safe``
    leaves it) and ``load_state_dict(state)`` restores it into a freshly built stage of the same
    configuration, which then continues exactly as the saved one would have. ``load_state_dict`` may
    raise on state it cannot use; the stage may then hold part of it (build a fresh pipeline)."""

    name: str

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass(frozen=True, slots=True)
class StageCounts:
    """What one stage did with the batches (messages and clock ticks) it was handed, since the pipeline was built."""

    accepted: int
    """Consumed without raising."""
    refused: int
    """The stage raised on them (a bug, a resource failing): counted and logged; the batch went on."""
    dropped: int
    """Of the accepted, those whose output the stage lost (:attr:`Stage.dropped`)."""


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
    """Decodes batches and runs them through stages, counting what each stage accepted, refused and dropped.

    Raises:
        ValueError: two stateful stages share a name (their checkpoints would overwrite each other).
    """

    def __init__(self, stages: Sequence[Stage]) -> None:
        self.stages = list(stages)
        self._calls = [(stage, _direct(stage)) for stage in self.stages]
        self._catch_up_calls = [(stage, direct) for stage, direct in self._calls if not stage.quiet_while_catching_up]
        self._flushing = [stage for stage in self.stages if type(stage).flush is not Stage.flush]  # the others do nothing
        self.stateful: dict[str, Stateful] = {}
        """The stages whose state is checkpointed, by name, in pipeline order."""
        for stage in self.stages:
            if isinstance(stage, Stateful):
                if stage.name in self.stateful:
                    raise ValueError(f"two stateful stages are named {stage.name!r}: their checkpoints would collide")
                self.stateful[stage.name] = stage
        self.stage_errors: Counter[str] = Counter()
        """Failures by stage name: of ``consume`` (the refused batches), ``flush`` and ``close``."""
        self.batches = 0
        """Batches run live (messages and clock ticks)."""
        self.caught_up = 0
        """Batches run while catching up (:attr:`Batch.catching_up`)."""
        self._refused: Counter[Stage] = Counter()
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
        the daemon noticed besides time (``simic.consumer.daemon.lifecycle.exit_note``), logged with it."""
        batch = Batch(raw=note, recv_ns=now_ns, tick=True, catching_up=catching_up)
        if note:
            batch.exited = parse_note(note)
        return await self._run(batch)

    async def _run(self, batch: Batch) -> Batch:
        if batch.catching_up:
            self.caught_up += 1
            calls = self._catch_up_calls
        else:
            self.batches += 1
            calls = self._calls
        for stage, direct in calls:
            try:
                if direct is not None:
                    direct(batch)
                else:
                    await stage.consume(batch)
            except Exception as error:  # one broken stage must not stop the others
                self._refused[stage] += 1
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

    def stage_counts(self) -> dict[str, StageCounts]:
        """Per stage name (stages sharing a name added up), in pipeline order: what it accepted,
        refused and dropped. Safe to call from another thread (a metrics scrape): it only reads."""
        counts: dict[str, StageCounts] = {}
        for stage in self.stages:
            handed = self.batches + (0 if stage.quiet_while_catching_up else self.caught_up)
            refused = self._refused.get(stage, 0)
            mine = StageCounts(handed - refused, refused, stage.dropped)
            before = counts.get(stage.name)
            if before is not None:
                mine = StageCounts(before.accepted + mine.accepted, before.refused + mine.refused, before.dropped + mine.dropped)
            counts[stage.name] = mine
        return counts

    def find(self, kind: type) -> list:
        """The stages of a given type."""
        return [stage for stage in self.stages if isinstance(stage, kind)]
