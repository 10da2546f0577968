"""silent_producer: a producer that stopped sending without ending its run (hung or died)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from simic.schemas.models import Alert, Event

from ..pipeline.contract import Batch
from ._rule import Capped, Rule, RuleConfig, Severity, register, subject_key
from ._support import about
from ._ema import Ema


class SilentProducerConfig(RuleConfig):
    severity: Severity = "critical"
    """A trainer that stopped talking mid-run has hung or died: critical."""
    min_silence_s: float = Field(10.0, gt=0)
    """Never fire for less than 10 s of silence: two heartbeat intervals of the Emitter (5 s), so
    a producer is only called silent once it has missed a heartbeat."""
    silence_factor: float = Field(20.0, gt=1)
    """Fire when the silence exceeds 20 times the session's usual gap between messages (an EMA):
    a trainer that reports every 2 s is late at 40 s, one that reports every 10 ms is still held
    to ``min_silence_s``."""
    gap_momentum: float = Field(0.9, gt=0, lt=1)
    """EMA momentum of the gap between messages, 0.9 (a memory of about ten messages, so the usual gap
    follows a trainer that changes pace, for example between training and evaluation)."""
    scan_interval_s: float = Field(0.5, gt=0)
    """Sessions are scanned at most every 0.5 s of arrival time: the scan is over every open
    session, so it does not run after every message."""
    fire_after: int = Field(1, ge=1)
    """The silence threshold is already a duration: the first scan past it fires."""
    clear_after: int = Field(1, ge=1)
    """The first event from the session clears it."""


class _Session:
    __slots__ = ("run_id", "rank", "session", "subject", "last_ns", "step", "clock_ns", "gap")

    def __init__(self, run_id: str, rank: int, session: int, subject: str, last_ns: int, step: int, clock_ns: int, gap: Ema) -> None:
        self.run_id, self.rank, self.session, self.subject = run_id, rank, session, subject
        self.last_ns, self.step, self.clock_ns = last_ns, step, clock_ns
        self.gap = gap  # the usual gap between its messages (ns): an EMA seeded by the first one


@register
class SilentProducer(Rule):
    """A producer session that has sent events but no ``run_end`` and then went quiet: the trainer
    hung (a deadlock, a stuck collective, a data loader waiting for ever) or died without a word
    (killed by the OOM killer, a segfault, a lost node).

    Per producer session (run, rank, session), the silence threshold is ``max(min_silence_s,
    silence_factor x`` the EMA of its gaps between messages``)``. Sessions are scanned after
    batches and at the daemon's clock ticks (once a second, logged, so replay scans at the same
    arrival times), at most every ``scan_interval_s``. It fires once per silence, with the last
    step and the seconds of silence, and clears when the session's next event arrives. A
    ``run_end`` closes the session (``run_failed`` reports one that ended with an error); a new
    session of the same (run, rank) replaces the old one (the trainer was restarted). A silence
    that fired is not folded into the usual gap, so a recovered hang does not make the next one
    harder to see.
    """

    name = "silent_producer"
    Config = SilentProducerConfig

    def __init__(self, config: SilentProducerConfig, alerts) -> None:
        super().__init__(config, alerts)
        self._sessions: dict[tuple[str, int, int], _Session] = Capped()
        self._current: dict[tuple[str, int], int] = Capped()  # (run, rank) -> its live session
        self._last_scan_ns: int | None = None
        self._min_ns = config.min_silence_s * 1e9
        self._scan_ns = config.scan_interval_s * 1e9

    def tick(self, now_ns: int, batch: Batch) -> list[Alert] | None:
        fired: list[Alert] = []
        if batch.events:  # one message: one producer session
            self._heard(batch, now_ns, fired)
        if self._last_scan_ns is None or now_ns - self._last_scan_ns >= self._scan_ns:
            self._last_scan_ns = now_ns
            self._scan(now_ns, fired)
        return fired or None

    def _threshold_ns(self, session: _Session) -> float:
        gap_ns = session.gap.value
        if gap_ns is None:
            return self._min_ns
        return max(self._min_ns, self.config.silence_factor * gap_ns)

    def _gap(self, gap_ns: float | None = None) -> Ema:
        gap = Ema(self.config.gap_momentum)
        if gap_ns is not None:
            gap.load_state([gap_ns, 1])
        return gap

    def _heard(self, batch: Batch, now_ns: int, fired: list[Alert]) -> None:
        last = batch.events[-1]
        key = (last.run_id, last.rank, last.session)
        session = self._sessions.get(key)
        if session is None:
            previous = self._current.get(key[:2])
            if previous is not None and previous != last.session:
                self._close((last.run_id, last.rank, previous), last, f"replaced by session {last.session} (the trainer restarted)", fired)
            session = self._sessions[key] = _Session(*key, subject_key(last, last.session), now_ns, last.step, last.clock_ns, self._gap())
            self._current[key[:2]] = last.session
        else:
            gap = now_ns - session.last_ns
            if session.subject in self._conditions:
                alert = self.observe(
                    last, session.subject, False, "",
                    {"silent_s": gap / 1e9, "last_step": session.step},
                    clear_message=f"producer of run {last.run_id!r} rank {last.rank} (session {last.session}) is sending again "
                    f"after {gap / 1e9:.1f} s of silence (step {last.step})",
                )
                if alert:
                    fired.append(alert)
            elif 0 < gap <= self._threshold_ns(session):
                session.gap.add(gap)
            session.last_ns, session.step, session.clock_ns = now_ns, last.step, last.clock_ns
        ends = batch.of_kind("run_end")
        if ends:
            self._close(key, ends[0], f"run ended ({ends[0].status})", fired)

    def _close(self, key: tuple[str, int, int], event: Event, why: str, fired: list[Alert]) -> None:
        session = self._sessions.pop(key, None)
        if self._current.get(key[:2]) == key[2]:
            del self._current[key[:2]]
        if session is not None and session.subject in self._conditions:
            alert = self.observe(  # about the closed session, at the time of the event that closed it
                about(*key, event.clock_ns, event.step), session.subject, False, "", {"last_step": session.step}, clear_after=1,
                clear_message=f"silent producer of run {key[0]!r} rank {key[1]} (session {key[2]}) closed: {why}",
            )
            if alert:
                fired.append(alert)

    def _scan(self, now_ns: int, fired: list[Alert]) -> None:
        for session in self._sessions.values():
            silent_ns = now_ns - session.last_ns
            threshold_ns = self._threshold_ns(session)
            if silent_ns <= threshold_ns or self.is_active(session.subject):
                continue
            silent_s = silent_ns / 1e9
            alert = self.observe(
                about(session.run_id, session.rank, session.session, session.clock_ns, session.step),
                session.subject,
                True,
                f"no event from run {session.run_id!r} rank {session.rank} (session {session.session}) for {silent_s:.1f} s "
                f"since step {session.step}, and no run_end: the trainer hung or died",
                {"silent_s": silent_s, "threshold_s": threshold_ns / 1e9, "last_step": session.step},
            )
            if alert:
                fired.append(alert)

    def extra_state(self) -> dict[str, Any]:
        return {
            "last_scan_ns": self._last_scan_ns,
            "sessions": {
                s.subject: {"run_id": s.run_id, "rank": s.rank, "session": s.session, "last_ns": s.last_ns, "step": s.step,
                            "clock_ns": s.clock_ns, "gap_ns": s.gap.value}
                for s in self._sessions.values()
            },
        }

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self._last_scan_ns = state.get("last_scan_ns")
        self._sessions, self._current = Capped(), Capped()
        for subject, s in state.get("sessions", {}).items():
            key = (s["run_id"], int(s["rank"]), int(s["session"]))
            self._sessions[key] = _Session(*key, subject, int(s["last_ns"]), int(s["step"]), int(s["clock_ns"]), self._gap(s["gap_ns"]))
            self._current[key[:2]] = key[2]
