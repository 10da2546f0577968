"""producer_exited: the trainer process a sidecar watched exited without ending its run."""

from __future__ import annotations

from typing import Any

from simic.schemas.models import Alert

from ..pipeline.contract import Batch
from ._rule import Capped, Rule, RuleConfig, Severity, register
from ._support import about


class ProducerExitedConfig(RuleConfig):
    severity: Severity = "critical"
    """The trainer is gone mid-run (``os._exit``, SIGKILL, the OOM killer, a segfault): critical."""


class _Session:
    __slots__ = ("host", "pid", "step", "clock_ns")

    def __init__(self, host: str, pid: int, step: int, clock_ns: int) -> None:
        self.host, self.pid, self.step, self.clock_ns = host, pid, step, clock_ns


@register
class ProducerExited(Rule):
    """The process a daemon watches (``simic-consumer run --exit-with-pid``, which
    ``spawn_consumer`` passes for its trainer) exited while it was producing a session that had
    sent no ``run_end``: the trainer died without a word, and this says so at once instead of
    after the ``silent_producer`` silence.

    Sessions are tied to a process by the ``host`` and ``pid`` of their ``run_start``. The daemon
    records the exit in its event log (a clock tick carrying the pid and host), so a replay raises
    the same alert at the same point. One alert per open session of that process, about its last
    step, never cleared (the session is over); an exit that ends no open session raises nothing.
    """

    name = "producer_exited"
    Config = ProducerExitedConfig

    def __init__(self, config: ProducerExitedConfig, alerts) -> None:
        super().__init__(config, alerts)
        self._sessions: dict[tuple[str, int, int], _Session] = Capped()

    def tick(self, now_ns: int, batch: Batch) -> list[Alert] | None:
        if batch.events:
            self._heard(batch)
            return None
        if batch.exited is None:
            return None
        host, pid = batch.exited
        fired: list[Alert] = []
        for key in [key for key, s in self._sessions.items() if s.pid == pid and s.host == host]:
            s = self._sessions.pop(key)
            run_id, rank, session = key
            fired.append(self.alerts.make(
                about(run_id, rank, session, s.clock_ns, s.step),
                self.name,
                self.config.severity,
                f"the trainer process (pid {pid} on {host}) exited without ending run {run_id!r} rank {rank} "
                f"(session {session}), at step {s.step}",
                {"pid": pid, "host": host, "last_step": s.step},
            ))
        return fired or None

    def _heard(self, batch: Batch) -> None:
        events = batch.events
        sessions = self._sessions
        if batch.one_session:
            last = events[-1]
            key = (last.run_id, last.rank, last.session)
            for start in batch.of_kind("run_start"):
                sessions[key] = _Session(start.host, start.pid, last.step, last.clock_ns)
            s = sessions.get(key)
            if s is not None:
                s.step, s.clock_ns = last.step, last.clock_ns
                if batch.of_kind("run_end"):
                    del sessions[key]
            return
        for event in events:  # not from one message (a test's batch): one event at a time
            key = (event.run_id, event.rank, event.session)
            if event.kind == "run_start":
                sessions[key] = _Session(event.host, event.pid, event.step, event.clock_ns)
            s = sessions.get(key)
            if s is not None:
                s.step, s.clock_ns = event.step, event.clock_ns
                if event.kind == "run_end":
                    del sessions[key]

    def extra_state(self) -> dict[str, Any]:
        return {"sessions": [[*key, s.host, s.pid, s.step, s.clock_ns] for key, s in self._sessions.items()]}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self._sessions = Capped()
        for run_id, rank, session, host, pid, step, clock_ns in state.get("sessions", []):
            self._sessions[(str(run_id), int(rank), int(session))] = _Session(str(host), int(pid), int(step), int(clock_ns))
