"""non_finite: a NaN or an infinity anywhere in an event's numbers."""

from __future__ import annotations

import math

from pydantic import Field

from simic.schemas.models import EVENT_TYPES, Alert, Event, HeadGradNorms, LstmHealth, iter_numbers

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


_NOT_MEASUREMENTS = frozenset({"alert", "run_start"})
"""Kinds whose numbers are not training signals: alerts, and a run's free-form configuration (an
``inf`` timeout there is a setting, not a fault)."""

_FLOAT_FIELDS = {model.model_fields["kind"].default: _float_fields(model) for model in EVENT_TYPES}


def _clearly_finite(event: Event) -> bool:
    """Fast path: the sum of all the event's floats is finite only if every one of them is (an
    overflow or a NaN sends the event to the exact per-field scan). ~5x cheaper than the scan."""
    scalars, mappings, lists = _FLOAT_FIELDS[event.kind]
    total = 0.0
    for name in scalars:
        value = getattr(event, name)
        if value is not None:
            total += value
    for name in mappings:
        for value in getattr(event, name).values():
            if value is not None:
                total += value
    for name in lists:
        total += sum(getattr(event, name))
    if total - total != 0.0:
        return False
    if isinstance(event, HeadGradNorms):
        return not any(event.nonfinite.values())
    if isinstance(event, LstmHealth):
        return not (event.has_nan or event.has_inf)
    return True


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

    def check(self, event: Event, now_ns: int) -> list[Alert] | None:
        if event.kind in _NOT_MEASUREMENTS:
            return None
        if not self._conditions and _clearly_finite(event):
            return None
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
