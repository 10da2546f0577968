"""What an analysis rule is, and the registry that finds them.

A rule is a pipeline stage with a name, a pydantic config model (its thresholds, each with a
documented default) and a ``check(event, now_ns)`` method that returns the alerts an event
raises. To add a rule, add one module to ``consumer/analysis/`` that defines a :class:`Rule`
subclass with the ``@register`` decorator: the config file, ``simic-consumer rules``, the daemon
and replay find it.

Flapping is handled here, once, for every rule: a rule reports *observations* of a condition
(``observe(event, subject, bad, ...)``) and the condition fires after ``fire_after`` consecutive
bad observations and clears after ``clear_after`` consecutive good ones, each transition one alert.

Rules work on event time (the step and producer clock of the events, and the arrival time that
the event log keeps), never on the wall clock, so a replay raises the same alerts as the live run.
Their state (``state_dict``/``load_state_dict``) is plain JSON data, checkpointed by the daemon.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Iterable, Literal

from pydantic import BaseModel, ConfigDict, Field

from simic.schemas.models import Alert, Event

from ..pipeline.alerts import AlertMaker
from ..pipeline.contract import Batch, SyncStage

__all__ = ["RuleConfig", "Rule", "register", "RULES", "subject_key", "Severity", "Capped", "MAX_SUBJECTS"]

Severity = Literal["info", "warning", "critical"]


class RuleConfig(BaseModel):
    """Settings every rule has. Subclasses add the rule's thresholds (and may change these defaults)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    enabled: bool = True
    """Run this rule."""
    severity: Severity = "warning"
    """Severity of the alert when the condition fires."""
    fire_after: int = Field(1, ge=1)
    """Consecutive bad observations before the alert fires (suppresses one-off spikes)."""
    clear_after: int = Field(3, ge=1)
    """Consecutive good observations before a fired alert clears (suppresses flapping)."""


def subject_key(event: Event, *parts: object) -> str:
    """A JSON-friendly key for what a condition is about: run, rank, then the parts given."""
    return "\x1f".join([event.run_id, str(event.rank), *map(str, parts)])


class _Condition:
    __slots__ = ("bad", "good", "active")

    def __init__(self, bad: int = 0, good: int = 0, active: bool = False) -> None:
        self.bad, self.good, self.active = bad, good, active


MAX_SUBJECTS = 4096
"""Entries one rule keeps per table (producer sessions, runs, open conditions): beyond it the oldest
entry is forgotten, as accounting forgets producers beyond ``max_producers``, so what senders
choose (run ids, sessions) cannot grow the daemon's memory without bound."""


class Capped(dict):
    """A dict of at most ``MAX_SUBJECTS`` entries: adding one more forgets the oldest added."""

    __slots__ = ()

    def __setitem__(self, key: Any, value: Any) -> None:
        if len(self) >= MAX_SUBJECTS and key not in self:
            del self[next(iter(self))]
        dict.__setitem__(self, key, value)


class Rule(SyncStage):
    """Base of analysis rules: feeds each event of a batch to :meth:`check`."""

    name: ClassVar[str] = "rule"
    Config: ClassVar[type[RuleConfig]] = RuleConfig
    kinds: ClassVar[frozenset[str] | None] = None
    """Event kinds :meth:`check` is given (None: every kind). Saves a call per event of other kinds."""
    per_update: ClassVar[bool] = False
    """True: :meth:`check` is given one event per update and kind, the events of one step combined
    (``simic.consumer.pipeline.updates``), so counts and baselines are in updates whatever the
    trainer's cadence. False: every event as it arrived."""

    def __init__(self, config: RuleConfig, alerts: AlertMaker) -> None:
        self.config = config
        self.alerts = alerts
        self._conditions: dict[str, _Condition] = Capped()
        self._checks = type(self).check is not Rule.check  # decided once: a tick-only rule skips the event loop
        self._ticks = type(self).tick is not Rule.tick
        self._kind = next(iter(self.kinds)) if self.kinds is not None and len(self.kinds) == 1 else None
        if type(self).consume_now is Rule.consume_now:
            specialised = self._specialised_consume()
            if specialised is not None:
                self.consume_now = specialised  # what consume_now does for this rule, without the choices

    def _specialised_consume(self) -> Callable[[Batch], None] | None:
        """:meth:`consume_now` specialised for the common shapes of rule (it runs for every batch)."""
        if self._checks and not self._ticks and self._kind is not None:
            check, kind = self.check, self._kind

            per_update = self.per_update

            def checks_one_kind(batch: Batch) -> None:
                events = (batch.update_index() if per_update else batch.kind_index()).get(kind)
                if events:
                    now = batch.recv_ns
                    for event in events:
                        fired = check(event, now)
                        if fired:
                            batch.alerts.extend(fired)

            return checks_one_kind
        if self._checks and not self._ticks and self.kinds:
            check, kinds, kind_set, per_update = self.check, tuple(sorted(self.kinds)), self.kinds, self.per_update

            def checks_kinds(batch: Batch) -> None:
                index = batch.update_index() if per_update else batch.kind_index()
                present = [index[kind] for kind in kinds if kind in index]
                if not present:
                    return
                if len(present) == 1:  # one of the kinds only: its events are the batch's events of the kinds, in order
                    events = present[0]
                else:  # several: in the order they came
                    events = [event for event in (batch.updates if per_update else batch.events) if event.kind in kind_set]
                now = batch.recv_ns
                for event in events:
                    fired = check(event, now)
                    if fired:
                        batch.alerts.extend(fired)

            return checks_kinds
        if self._ticks and not self._checks:
            tick = self.tick

            def ticks_only(batch: Batch) -> None:
                if batch.tick or batch.events:
                    fired = tick(batch.recv_ns, batch)
                    if fired:
                        batch.alerts.extend(fired)

            return ticks_only
        return None

    def consume_now(self, batch: Batch) -> None:
        now = batch.recv_ns
        source = batch.updates if self.per_update else batch.events
        if self._checks and source:
            kinds = self.kinds
            if self._kind is not None:
                events = (batch.update_index() if self.per_update else batch.kind_index()).get(self._kind, ())
            elif kinds is None:
                events = source
            else:
                events = [event for event in source if event.kind in kinds]
            for event in events:
                fired = self.check(event, now)
                if fired:
                    batch.alerts.extend(fired)
        if self._ticks and (batch.tick or batch.events):
            fired = self.tick(now, batch)
            if fired:
                batch.alerts.extend(fired)

    def check(self, event: Event, now_ns: int) -> Iterable[Alert] | None:
        """Alerts this event raises (or None). ``now_ns`` is the arrival time of its message."""
        return None

    def tick(self, now_ns: int, batch: Batch) -> Iterable[Alert] | None:
        """Time-based checks, run after every batch and at every clock tick (``now_ns`` is arrival time)."""
        return None

    # -- conditions with hysteresis ----------------------------------------------------------------

    def observe(
        self,
        event: Event,
        subject: str,
        bad: bool,
        message: str | Callable[[], str],
        values: dict[str, Any] | Callable[[], dict[str, Any]],
        *,
        severity: Severity | None = None,
        clear_message: str | Callable[[], str] | None = None,
        fire_after: int | None = None,
        clear_after: int | None = None,
    ) -> Alert | None:
        """Record one observation of a condition; returns the alert when it fires or clears.

        ``fire_after``/``clear_after`` override the config's counts for a condition of the rule that
        needs its own (a dead head waits longer than a dominating one). ``message``, ``values`` and
        ``clear_message`` may be functions that make them: most observations raise no alert, and
        then nothing is formatted."""
        condition = self._conditions.get(subject)
        if condition is None:
            if not bad:
                return None
            condition = self._conditions[subject] = _Condition()
        if bad:
            condition.good = 0
            condition.bad += 1
            if not condition.active and condition.bad >= (fire_after or self.config.fire_after):
                condition.active = True
                return self.alerts.make(event, self.name, severity or self.config.severity, _made(message), _made(values))
            return None
        condition.bad = 0
        if condition.active:
            condition.good += 1
            if condition.good >= (clear_after or self.config.clear_after):
                del self._conditions[subject]
                return self.alerts.make(
                    event, self.name, "info", _made(clear_message) or f"cleared: {_made(message)}", _made(values), cleared=True
                )
        else:
            del self._conditions[subject]
        return None

    def watched(self, event: Event, bad: bool, *parts: object) -> str | None:
        """The subject of a condition worth observing now (it is bad, or it is open), else None.

        Cheap when all is well: no key and no message is built for a good value of a condition
        that is not open, which is almost every value."""
        if not (bad or self._conditions):
            return None
        subject = subject_key(event, *parts)
        return subject if bad or subject in self._conditions else None

    def is_active(self, subject: str) -> bool:
        condition = self._conditions.get(subject)
        return condition is not None and condition.active

    # -- state ---------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The rule's state as JSON data (conditions plus whatever :meth:`extra_state` adds)."""
        return {
            "conditions": {key: [c.bad, c.good, c.active] for key, c in self._conditions.items()},
            "extra": self.extra_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._conditions = Capped({key: _Condition(int(b), int(g), bool(a)) for key, (b, g, a) in state.get("conditions", {}).items()})
        self.load_extra_state(state.get("extra") or {})

    def extra_state(self) -> dict[str, Any]:
        """Rule-specific state (trackers, baselines) as JSON data."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass


def _made(value: Any) -> Any:
    """A message or values given as the function that makes them, made; anything else as it is."""
    return value() if callable(value) else value


RULES: dict[str, type[Rule]] = {}
"""Rule name to rule class, in registration order."""


def register(rule: type[Rule]) -> type[Rule]:
    """Class decorator: make a rule known to the daemon, the config file and ``simic-consumer rules``."""
    if rule.name in RULES and RULES[rule.name] is not rule:
        raise ValueError(f"two rules are named {rule.name!r}")
    RULES[rule.name] = rule
    return rule
