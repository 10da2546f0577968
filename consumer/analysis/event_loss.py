"""event_loss: events lost between a producer and the consumer (sequence gaps) beyond a rate."""

from __future__ import annotations

from collections import deque
from operator import attrgetter
from typing import Any

from pydantic import Field, model_validator

from simic.schemas.models import Alert

from ..pipeline.accounting import SequenceTracker
from ..pipeline.contract import Batch
from ._rule import Capped, Rule, RuleConfig, register, subject_key


_SEQ = attrgetter("seq")


class EventLossConfig(RuleConfig):
    max_loss_fraction: float = Field(0.01, gt=0, lt=1)
    """Fire when more than this fraction of the last ``window`` sequence numbers never arrived:
    1% is where the analysis starts to miss things (a NaN event, a spike) often enough to matter,
    while ZeroMQ's high-water mark drops the odd event under bursts by design."""
    clear_below_fraction: float = Field(0.005, ge=0, lt=1)
    """A firing alert clears when the loss in the window is at or below this (0.005, half the firing
    level): hysteresis on the value, so a loss rate hovering around ``max_loss_fraction`` does not
    fire and clear with every message."""
    window: int = Field(1000, ge=10)
    """Sequence numbers the fraction is taken over: the last 1000 of the session. The
    fraction is lost / ``window``, also while fewer have been sent, so a few losses at the start
    of a session do not look like a high rate."""
    clear_quiet_s: float = Field(30.0, ge=0)
    """A firing alert clears only after 30 s of the producer's own time without a new gap (and with
    the window at or below ``clear_below_fraction``). Under a sustained overload the producers'
    high-water marks drop tens of thousands of events at once, then the queues drain and more than
    any window's worth arrive in order: judged on sequence numbers alone, an overloaded daemon's
    alert fired and cleared 56 times in 10 s. Time does not depend on the size of the chunks."""
    fire_after: int = Field(1, ge=1)
    """The window already smooths: the first message that puts it above the limit fires."""
    clear_after: int = Field(1, ge=1)
    """The first message that finds it at or below ``clear_below_fraction`` clears."""

    @model_validator(mode="after")
    def _ordered(self) -> "EventLossConfig":
        if self.clear_below_fraction > self.max_loss_fraction:
            raise ValueError("clear_below_fraction must not be above max_loss_fraction")
        return self


class _Session(SequenceTracker):
    __slots__ = ("subject", "next_seq", "gaps", "last_gap_ns")

    def __init__(self, subject: str, next_seq: int, gaps: deque[list[int]] | None = None, last_gap_ns: int | None = None) -> None:
        self.subject = subject
        self.next_seq = next_seq
        self.last_gap_ns = last_gap_ns  # producer clock of the message that showed the newest gap
        self.gaps: deque[list[int]] = gaps if gaps is not None else deque()  # [first, end) of missing seqs, oldest first


@register
class EventLoss(Rule):
    """Events lost on the way from a producer session: gaps in its sequence numbers (``seq``) above
    ``max_loss_fraction`` of the last ``window`` sequence numbers, until ``clear_quiet_s`` pass
    without a new gap.

    Lost events are invisible to every other rule: the NaN that was dropped raises nothing. A
    steady loss rate means the consumer cannot keep up (or the producer's high-water mark is too
    low for its bursts), and every analysis result is then partial. Counted here from the events'
    own sequence numbers, per producer session; the first event the consumer sees of a session
    starts the count (events before it were sent before the consumer listened, not lost on the
    way); repeats and reordering are not loss. Fires once while above the limit, clears at
    ``clear_below_fraction`` once ``clear_quiet_s`` of the producer's time passed without a new gap
    (hysteresis on the fraction and in time). A ``run_end`` closes the session.
    """

    name = "event_loss"
    Config = EventLossConfig

    def __init__(self, config: EventLossConfig, alerts) -> None:
        super().__init__(config, alerts)
        self._sessions: dict[tuple[str, int, int], _Session] = Capped()

    def tick(self, now_ns: int, batch: Batch) -> list[Alert] | None:
        events = batch.events
        if not events:
            return None
        first = events[0]  # one message: one producer session
        key = (first.run_id, first.rank, first.session)
        session = self._sessions.get(key)
        if session is None:
            session = self._sessions[key] = _Session(subject_key(first, first.session), first.seq)
        gaps = session.gaps
        seqs = list(map(_SEQ, events))
        if not session.continues(seqs):  # not the usual batch (no gap, no repeat): look at each
            for seq in seqs:
                gap = session.advance(seq)
                if gap > 0:
                    gaps.append([seq - gap, seq])
                    session.last_gap_ns = events[-1].clock_ns
        ended = bool(batch.of_kind("run_end"))
        fired = None
        if gaps or session.subject in self._conditions:
            fired = self._judge(session, events[-1])
        if ended:
            del self._sessions[key]
            if session.subject in self._conditions:
                alert = self.observe(events[-1], session.subject, False, "", {}, clear_after=1,
                                     clear_message=f"event loss of run {key[0]!r} rank {key[1]} (session {key[2]}): session ended")
                if alert:
                    fired = (fired or []) + [alert]
        return fired

    def _judge(self, session: _Session, last) -> list[Alert] | None:
        config = self.config
        window = config.window
        end = session.next_seq
        start = end - window
        gaps = session.gaps
        while gaps and gaps[0][1] <= start:
            gaps.popleft()
        lost = sum(min(gap_end, end) - max(gap_start, start) for gap_start, gap_end in gaps)
        fraction = lost / window
        if self.is_active(session.subject):
            quiet_ns = last.clock_ns - session.last_gap_ns if session.last_gap_ns is not None else None
            bad = fraction > config.clear_below_fraction or (quiet_ns is not None and quiet_ns < config.clear_quiet_s * 1e9)
        else:
            bad = fraction > config.max_loss_fraction
        if not (bad or session.subject in self._conditions):
            return None
        alert = self.observe(
            last,
            session.subject,
            bad,
            f"{lost} of the last {window} events of run {last.run_id!r} rank {last.rank} (session {last.session}) were lost "
            f"({fraction:.1%} > {config.max_loss_fraction:.1%}): the analysis misses what they held",
            {"lost": lost, "window": window, "loss_fraction": fraction, "max_loss_fraction": config.max_loss_fraction,
             "next_seq": end},
            clear_message=f"event loss of run {last.run_id!r} rank {last.rank} (session {last.session}) down to "
            f"{fraction:.1%} of the last {window} events",
        )
        return [alert] if alert else None

    def extra_state(self) -> dict[str, Any]:
        return {
            s.subject: {"run_id": run_id, "rank": rank, "session": session, "next_seq": s.next_seq,
                        "gaps": [list(g) for g in s.gaps], "last_gap_ns": s.last_gap_ns}
            for (run_id, rank, session), s in self._sessions.items()
        }

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self._sessions = Capped({
            (saved["run_id"], int(saved["rank"]), int(saved["session"])): _Session(
                subject, int(saved["next_seq"]), deque([int(a), int(b)] for a, b in saved["gaps"]), saved.get("last_gap_ns")
            )
            for subject, saved in state.items()
        })
