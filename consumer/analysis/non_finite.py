"""non_finite: a NaN or an infinity anywhere in an event's numbers."""

from __future__ import annotations

import math
from operator import itemgetter

from pydantic import Field

from simic.schemas.models import EVENT_TYPES, Alert, Event, HeadGradNorms, LstmHealth, iter_numbers

from ..pipeline.contract import Batch
from ._rule import Rule, RuleConfig, Severity, register, subject_key


class NonFiniteConfig(RuleConfig):
    severity: Severity = "critical"
    """NaN or Inf in training signals almost always means the run is already lost: critical."""
    fire_after: int = Field(1, ge=1)
    """Immediate: the first non-finite value fires."""
    clear_after: int = Field(1, ge=1)
    """The first finite event of the same kind clears it."""
    ignore: list[str] = ["ppo_update.explained_variance"]
    """``kind.field`` paths that may be non-finite by design. CleanRL-style trainers report an
    undefined explained variance (constant returns) as NaN, which is not a fault."""


def _float_fields(model) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """The payload fields of a kind that hold floats: scalars, mappings of floats, lists of floats."""
    scalars, mappings, lists = [], [], []
    for name in model.payload_fields():
        text = str(model.model_fields[name].annotation)
        if "float" not in text:
            continue
        (mappings if "dict" in text else lists if "list" in text else scalars).append(name)
    return tuple(scalars), tuple(mappings), tuple(lists)


_NOT_MEASUREMENTS = frozenset({"alert", "run_start", "metrics"})
"""Kinds whose numbers are not training signals: alerts, a run's free-form configuration (an
``inf`` timeout there is a setting, not a fault), and the free-form metrics a trainer logged (an
undefined metric is NaN by convention there, e.g. an explained variance of constant returns)."""

_FLOAT_FIELDS = {model.model_fields["kind"].default: _float_fields(model) for model in EVENT_TYPES}


def _values_of(names: tuple[str, ...]):
    """A tuple of the named fields' values from an event's ``__dict__`` (None when there are none)."""
    if not names:
        return None
    if len(names) == 1:
        (name,) = names
        return lambda fields: (fields[name],)
    return itemgetter(*names)


_MEASURED = {
    kind: (_values_of(scalars), mappings, lists, kind)
    for kind, (scalars, mappings, lists) in _FLOAT_FIELDS.items()
    if kind not in _NOT_MEASUREMENTS
}
"""The kinds this rule looks at, each with how to reach its floats (and the kind, for its flags)."""


@register
class NonFinite(Rule):
    """A non-finite value in any event: any float field, a head with non-finite gradient elements,
    an LSTM state flagged NaN/Inf. Fires on the first such event of a kind (per producer session)
    and clears on the next finite one: a NaN that sticks raises one alert, not one per step."""

    name = "non_finite"
    Config = NonFiniteConfig

    def __init__(self, config: NonFiniteConfig, alerts) -> None:
        super().__init__(config, alerts)
        self._ignore = frozenset(config.ignore)

    def consume_now(self, batch: Batch) -> None:
        fired = self._check_all(batch.events)
        if fired:
            batch.alerts.extend(fired)

    def check(self, event: Event, now_ns: int) -> list[Alert] | None:
        return self._check_all((event,))

    def _check_all(self, events) -> list[Alert] | None:
        """The alerts of these events. Fast path: the sum of all of an event's floats is finite only if
        every one of them is (an overflow or a NaN sends the event to the exact per-field scan);
        ``filter(None, ...)`` drops the missing values (and zeros, which change no sum's finiteness).
        A clearly finite event has nothing to report unless its subject has a condition open."""
        conditions = self._conditions
        fired: list[Alert] | None = None
        for event in events:
            parts = _MEASURED.get(event.kind)
            if parts is None:
                continue
            scalars, mappings, lists, kind = parts
            fields = event.__dict__
            total = sum(filter(None, scalars(fields))) if scalars is not None else 0.0
            for name in mappings:
                total += sum(filter(None, fields[name].values()))
            for name in lists:
                total += sum(fields[name])
            if total - total == 0.0 and not (
                (kind == "head_grad_norms" and any(fields["nonfinite"].values()))
                or (kind == "lstm_health" and (fields["has_nan"] or fields["has_inf"]))
            ):
                if not conditions or subject_key(event, event.session, kind) not in conditions:
                    continue
            alerts = self._scan(event)
            if alerts:
                fired = (fired or []) + alerts
        return fired

    def _scan(self, event: Event) -> list[Alert] | None:
        """The exact per-field scan, and the observation of this event's subject."""
        bad = {
            path: value
            for path, value in iter_numbers(event)
            if not math.isfinite(value) and f"{event.kind}.{path}" not in self._ignore
        }
        if isinstance(event, HeadGradNorms):
            bad.update({f"nonfinite.{head}": count for head, count in event.nonfinite.items() if count})
        elif isinstance(event, LstmHealth):
            if event.has_nan:
                bad["has_nan"] = True
            if event.has_inf:
                bad["has_inf"] = True
        shown = ", ".join(f"{path}={value}" for path, value in list(bad.items())[:8])
        more = f" and {len(bad) - 8} more" if len(bad) > 8 else ""
        alert = self.observe(
            event,
            subject_key(event, event.session, event.kind),
            bool(bad),
            f"non-finite values in {event.kind} at step {event.step}: {shown}{more}",
            dict(list(bad.items())[:64]),
            clear_message=f"{event.kind} values are finite again at step {event.step}",
        )
        return [alert] if alert else None
