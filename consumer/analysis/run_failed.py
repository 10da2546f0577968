"""run_failed: a producer session that ended with an error."""

from __future__ import annotations

from typing import Literal

from simic.schemas.models import Alert, Event

from ._rule import Rule, RuleConfig, Severity, register


class RunFailedConfig(RuleConfig):
    severity: Severity = "critical"
    """The trainer raised an exception and stopped: critical."""
    statuses: list[Literal["ok", "error", "interrupted", "exit"]] = ["error"]
    """``run_end`` statuses that alert. ``error`` is an uncaught exception; add ``exit`` to also
    hear of interpreters that exited without closing the emitter (``sys.exit`` from deep inside a
    library, a test harness), which is not always a failure."""


@register
class RunFailed(Rule):
    """A ``run_end`` whose status is in ``statuses`` (by default ``error``: an uncaught exception
    ended the trainer), with the exception text the producer sent.

    The exception is the most direct explanation of a run that stopped, and the producer flushes
    it before the process dies; it is one event, so the alert fires once and has no "cleared"
    counterpart (the session is over).
    """

    name = "run_failed"
    Config = RunFailedConfig
    kinds = frozenset({"run_end"})

    def __init__(self, config: RunFailedConfig, alerts) -> None:
        super().__init__(config, alerts)
        self._statuses = frozenset(config.statuses)

    def check(self, event: Event, now_ns: int) -> list[Alert] | None:
        if event.kind != "run_end" or event.status not in self._statuses:
            return None
        if event.status == "error":
            how = f"with an error at step {event.step}: {event.error or 'no description sent'}"
        else:
            how = f"with status {event.status!r} at step {event.step}"
        return [
            self.alerts.make(
                event,
                self.name,
                self.config.severity,
                f"run {event.run_id!r} rank {event.rank} (session {event.session}) ended {how}",
                {"status": event.status, "error": event.error},
            )
        ]
