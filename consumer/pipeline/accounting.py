"""Who is sending, what arrived, what was lost, what was refused.

Every producer session is tracked by ``(run_id, rank, session)``. Its events carry sequence
numbers 0, 1, 2, ...; a jump is a gap, and a gap is events lost (dropped inside the producer when
its queue was full, or lost on the way). ``run_end`` says how many events the producer handed to
the transport and how many it dropped itself, so the two can be told apart. A new ``run_start``
(a new session id) is a new producer session: a restarted trainer, or a forked child.
"""

from __future__ import annotations

import logging
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any

from simic.schemas.models import DeliveryReceipt, Event, Heartbeat, RunEnd, RunStart

from .contract import Batch, RateLimitedLog, SyncStage

__all__ = ["ProducerKey", "SequenceTracker", "ProducerState", "Accounting"]

log = logging.getLogger("simic.consumer")

_NOTED = frozenset({"run_start", "heartbeat", "run_end"})
"""Kinds that say something about their session beyond being counted."""
_SEQ, _KIND = attrgetter("seq"), attrgetter("kind")
MAX_GAP = 1 << 40
"""A forward jump of the sequence number larger than this (10^12 events: four months at 100k
events/s) is not a loss but a malformed or hostile sequence number: counted in ``seq_jumps``, not in
``lost``, so one bad event cannot make the loss count meaningless."""

ProducerKey = tuple[str, int, int]
"""``(run_id, rank, session)``"""


class SequenceTracker:
    """The one reading of a producer session's sequence numbers (accounting's and ``event_loss``'s).

    ``next_seq`` is the number expected next. A number above it is a gap: the numbers in between are
    events that never arrived. A number below it is a repeat (a duplicate, or an event arriving after
    a later one), which leaves the expectation where it is. A subclass holds ``next_seq``.
    """

    __slots__ = ()
    next_seq: int

    def continues(self, seqs: list[int]) -> bool:
        """True, having moved past them, when ``seqs`` are exactly the numbers expected next, in
        order (the usual message); False, changing nothing, for anything else."""
        first = self.next_seq
        if seqs != list(range(first, first + len(seqs))):
            return False
        self.next_seq = first + len(seqs)
        return True

    def advance(self, seq: int) -> int:
        """Move past ``seq``. Returns how many numbers it skipped (0: in order), or -1 when it was
        already passed (a repeat: nothing changes)."""
        expected = self.next_seq
        if seq < expected:
            return -1
        self.next_seq = seq + 1
        return seq - expected


@dataclass
class ProducerState(SequenceTracker):
    """What is known about one producer session."""

    run_id: str
    rank: int
    session: int
    received: int = 0
    """Distinct events received."""
    next_seq: int = 0
    """The sequence number expected next."""
    lost: int = 0
    """Sequence numbers skipped: events that never arrived."""
    duplicates: int = 0
    """Events whose sequence number was already passed (repeated or out of order)."""
    kinds: Counter = field(default_factory=Counter)
    first_step: int | None = None
    last_step: int | None = None
    first_recv_ns: int | None = None
    last_recv_ns: int | None = None
    last_clock_ns: int | None = None
    """Producer clock of the newest event (event time, for time-based rules)."""
    started: RunStart | None = None
    ended: RunEnd | None = None
    producer_dropped: int = 0
    """Events the producer says it dropped itself (from its latest heartbeat or run_end)."""
    readouts_dropped: int = 0
    """GPU measurements the producer's collectors dropped unread (from its latest heartbeat or run_end)."""
    seq_jumps: int = 0
    """Forward jumps of the sequence number beyond ``MAX_GAP``, not counted as lost (see there)."""
    removed: int = 0
    """Events before the first one read, in log segments retention removed: not lost, no longer in the log
    (a session first seen in the oldest kept segment of a log retention cut, see ``Accounting.after_cut``)."""

    @property
    def key(self) -> ProducerKey:
        return (self.run_id, self.rank, self.session)

    @property
    def lost_in_transit(self) -> int | None:
        """Of the lost events, those the producer handed over but never arrived (known at run_end)."""
        if self.ended is None or self.ended.sent is None:
            return None
        return max(0, self.ended.sent + 1 - self.received - self.removed)

    def summary(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "rank": self.rank,
            "session": self.session,
            "status": self.ended.status if self.ended else "open",
            "received": self.received,
            "lost": self.lost,
            "removed_by_retention": self.removed,
            "dropped_by_producer": self.producer_dropped,
            "readouts_dropped": self.readouts_dropped,
            "lost_in_transit": self.lost_in_transit,
            "duplicates": self.duplicates,
            "seq_jumps": self.seq_jumps,
            "events_by_kind": dict(sorted(self.kinds.items())),
            "first_step": self.first_step,
            "last_step": self.last_step,
            "first_recv_ns": self.first_recv_ns,
            "last_recv_ns": self.last_recv_ns,
            "host": self.started.host if self.started else None,
            "pid": self.started.pid if self.started else None,
        }


def _receipt(state: ProducerState, end: Event) -> DeliveryReceipt:
    """What the consumer tells a producer about its session once its ``run_end`` has been counted."""
    return DeliveryReceipt(run_id=state.run_id, rank=state.rank, session=state.session, seq=end.seq, clock_ns=end.clock_ns,
                           step=end.step, received=state.received, lost=state.lost)


class Accounting(SyncStage):
    """Counts messages, events per kind, rejections by reason and losses per producer session.

    Args:
        max_producers: sessions tracked at once; beyond it the least recently heard one is
            forgotten (its counts stay in the totals), so hostile input cannot grow memory.
    """

    name = "accounting"

    def __init__(self, *, max_producers: int = 4096, log_interval_s: float = 1.0) -> None:
        self.max_producers = max_producers
        self.producers: OrderedDict[ProducerKey, ProducerState] = OrderedDict()
        self.messages = 0
        self.events = 0
        self.events_by_kind: Counter[str] = Counter()
        self.rejected_messages: Counter[str] = Counter()
        self.rejected_events: Counter[str] = Counter()
        self.forgotten_producers = 0
        self._log = RateLimitedLog(log, log_interval_s)
        self._lost_total_forgotten = 0
        self.after_cut = False
        """Set by whoever reads a log while its frames come from the oldest segment retention kept: a session
        first seen then without its ``run_start`` had its earlier events in the removed segments, so they
        are counted as ``removed``, not ``lost``."""

    def consume_now(self, batch: Batch) -> None:
        if batch.tick:
            return
        self.messages += 1
        if batch.rejected is not None:
            self.rejected_messages[batch.rejected.reason.value] += 1
            self._log.warning(f"rejected:{batch.rejected.reason.value}", "rejected message: %s", batch.rejected)
        for error in batch.errors:
            self.rejected_events[error.reason.value] += 1
            self._log.warning(f"rejected:{error.reason.value}", "rejected event: %s", error)
        events = batch.events
        if not events:
            return
        head = events[0]
        state = self._state(head)
        if not self._account_in_order(state, events, batch.recv_ns, batch.one_session):
            for event in events:
                if (event.run_id, event.rank, event.session) != state.key:  # cannot happen from one message
                    state = self._state(event)
                self._account(state, event, batch.recv_ns)
                if event.kind == "run_end" and event.seq + 1 == state.next_seq:
                    batch.receipts.append(_receipt(state, event))

    def _account_in_order(self, state: ProducerState, events: list[Event], recv_ns: int, one_session: bool) -> bool:
        """The usual batch at once: every event of ``state``'s session, in sequence from the one
        expected, none a run_start, heartbeat or run_end. Returns False, having changed nothing, for
        any other batch (then each event is accounted on its own)."""
        if not one_session and any((event.run_id, event.rank, event.session) != state.key for event in events):
            return False
        kinds = list(map(_KIND, events))
        if not _NOTED.isdisjoint(kinds) or not state.continues(list(map(_SEQ, events))):
            return False
        count = len(events)
        state.received += count
        self.events += count
        state.kinds.update(kinds)
        self.events_by_kind.update(kinds)
        if state.first_step is None:
            state.first_step = events[0].step
            state.first_recv_ns = recv_ns
        last = events[-1]
        state.last_step = last.step
        state.last_recv_ns = recv_ns
        state.last_clock_ns = last.clock_ns
        return True

    def _state(self, event: Event) -> ProducerState:
        key = (event.run_id, event.rank, event.session)
        state = self.producers.get(key)
        if state is None:
            if len(self.producers) >= self.max_producers:
                _, old = self.producers.popitem(last=False)
                self._lost_total_forgotten += old.lost
                self.forgotten_producers += 1
            state = self.producers[key] = ProducerState(event.run_id, event.rank, event.session)
            if self.after_cut and 0 < event.seq <= MAX_GAP and event.kind != "run_start":
                state.removed = state.next_seq = event.seq
        else:
            self.producers.move_to_end(key)
        return state

    def _account(self, state: ProducerState, event: Event, recv_ns: int) -> None:
        seq = event.seq
        gap = state.advance(seq)
        if gap < 0:
            state.duplicates += 1
            return
        if gap > MAX_GAP:
            state.seq_jumps += 1
            self._log.warning(
                "seq_jump", "sequence number of run %s rank %d jumped from %d to %d: not counted as lost",
                state.run_id, state.rank, seq - gap, seq,
            )
        elif gap:
            state.lost += gap
            self._log.warning(
                "gap", "lost %d events of run %s rank %d (seq %d..%d never arrived)",
                gap, state.run_id, state.rank, seq - gap, seq - 1,
            )
        state.received += 1
        state.kinds[event.kind] += 1
        self.events += 1
        self.events_by_kind[event.kind] += 1
        if state.first_step is None:
            state.first_step = event.step
            state.first_recv_ns = recv_ns
        state.last_step = event.step
        state.last_recv_ns = recv_ns
        state.last_clock_ns = event.clock_ns
        if event.kind in _NOTED:
            self._note(state, event)

    def _note(self, state: ProducerState, event: Event) -> None:
        """What a run_start, heartbeat or run_end tells about its session (the counts include the event)."""
        if isinstance(event, RunStart):
            state.started = event
        elif isinstance(event, (Heartbeat, RunEnd)):
            if event.dropped is not None:
                state.producer_dropped = event.dropped
            if event.readouts_dropped is not None:
                state.readouts_dropped = event.readouts_dropped
            if isinstance(event, RunEnd):
                state.ended = event
                log.info(
                    "run %s rank %d session %d ended (%s): received %d, lost %d (dropped by producer %d)",
                    state.run_id, state.rank, state.session, event.status, state.received, state.lost, state.producer_dropped,
                )

    # -- state (checkpointed by the daemon) -----------------------------------------------------------

    _SCALARS = ("received", "next_seq", "lost", "duplicates", "first_step", "last_step", "first_recv_ns",
                "last_recv_ns", "last_clock_ns", "producer_dropped", "readouts_dropped")
    _COUNTS_ADDED = ("seq_jumps", "removed")
    """Counts added after the first checkpoint format: absent in an older checkpoint means 0."""

    def state_dict(self) -> dict[str, Any]:
        producers = []
        for state in self.producers.values():
            item: dict[str, Any] = {name: getattr(state, name) for name in (*self._SCALARS, *self._COUNTS_ADDED)}
            item.update(run_id=state.run_id, rank=state.rank, session=state.session, kinds=dict(state.kinds))
            item["started"] = state.started.model_dump() if state.started else None
            item["ended"] = state.ended.model_dump() if state.ended else None
            producers.append(item)
        return {
            "producers": producers,
            "messages": self.messages,
            "events": self.events,
            "events_by_kind": dict(self.events_by_kind),
            "rejected_messages": dict(self.rejected_messages),
            "rejected_events": dict(self.rejected_events),
            "forgotten_producers": self.forgotten_producers,
            "lost_forgotten": self._lost_total_forgotten,
        }

    def load_state_dict(self, data: dict[str, Any]) -> None:
        self.producers.clear()
        for item in data.get("producers", []):
            state = ProducerState(item["run_id"], int(item["rank"]), int(item["session"]))
            for name in self._SCALARS:
                setattr(state, name, item.get(name))
            for name in self._COUNTS_ADDED:
                setattr(state, name, int(item.get(name) or 0))
            state.kinds = Counter(item.get("kinds", {}))
            state.started = RunStart.model_validate(item["started"]) if item.get("started") else None
            state.ended = RunEnd.model_validate(item["ended"]) if item.get("ended") else None
            self.producers[state.key] = state
        self.messages = int(data.get("messages", 0))
        self.events = int(data.get("events", 0))
        self.events_by_kind = Counter(data.get("events_by_kind", {}))
        self.rejected_messages = Counter(data.get("rejected_messages", {}))
        self.rejected_events = Counter(data.get("rejected_events", {}))
        self.forgotten_producers = int(data.get("forgotten_producers", 0))
        self._lost_total_forgotten = int(data.get("lost_forgotten", 0))

    @property
    def lost(self) -> int:
        return self._lost_total_forgotten + sum(p.lost for p in self.producers.values())

    def summary(self) -> dict[str, Any]:
        """Totals and one entry per producer session, JSON-ready."""
        runs: dict[str, list[dict[str, Any]]] = {}
        for state in self.producers.values():
            runs.setdefault(state.run_id, []).append(state.summary())
        for sessions in runs.values():
            sessions.sort(key=lambda s: (s["rank"], s["first_recv_ns"] or 0))
        return {
            "messages": self.messages,
            "events": self.events,
            "events_by_kind": dict(sorted(self.events_by_kind.items())),
            "lost": self.lost,
            "removed_by_retention": sum(p.removed for p in self.producers.values()),
            "rejected_messages": dict(sorted(self.rejected_messages.items())),
            "rejected_events": dict(sorted(self.rejected_events.items())),
            "forgotten_producers": self.forgotten_producers,
            "runs": dict(sorted(runs.items())),
        }
