"""non_finite: a NaN or an infinity anywhere in an event's numbers."""

from __future__ import annotations

import math
from typing import Literal

from simic.schemas.models import Alert, Event, HeadGradNorms, LstmHealth, iter_numbers

from ._rule import Rule, RuleConfig, register


class NonFiniteConfig(RuleConfig):
    severity: Literal["info", "warning", "critical"] = "critical"
    """NaN or Inf in training signals almost always means the run is already lost: critical."""
    ignore: list[str] = ["ppo_update.explained_variance"]
    """``kind.field`` paths that may be non-finite by design. CleanRL-style trainers report an
    undefined explained variance (constant returns) as NaN, which is not a fault."""


@register
class NonFinite(Rule):
    """Fires at once on the first event of a kind with a non-finite value (any float field, a
    head with non-finite gradient elements, an LSTM state flagged NaN/Inf). It fires once per
    producer session and event kind, and says so when a later event of that kind is finite again
    (``cleared``): a NaN that sticks raises one alert, not one per step."""

    name = "non_finite"
    Config = NonFiniteConfig

    def __init__(self, config: NonFiniteConfig, alerts) -> None:
        super().__init__(config, alerts)
        self._active: set[tuple[str, int, int, str]] = set()
        self._ignore = frozenset(config.ignore)

    def check(self, event: Event) -> list[Alert] | None:
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
        key = (event.run_id, event.rank, event.session, event.kind)
        if bad:
            if key in self._active:
                return None
            self._active.add(key)
            shown = ", ".join(f"{path}={value}" for path, value in list(bad.items())[:8])
            more = f" and {len(bad) - 8} more" if len(bad) > 8 else ""
            message = f"non-finite values in {event.kind} at step {event.step}: {shown}{more}"
            return [self.alerts.make(event, self.name, self.config.severity, message, dict(list(bad.items())[:64]))]
        if key in self._active:
            self._active.discard(key)
            return [self.alerts.make(event, self.name, "info", f"{event.kind} values are finite again at step {event.step}", cleared=True)]
        return None
