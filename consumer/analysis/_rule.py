"""What an analysis rule is, and the registry that finds them.

A rule is a pipeline stage with a name, a pydantic config model (its thresholds, each with a
documented default) and a ``check(event)`` method that returns the alerts an event raises. To add
a rule, add one module to ``simic/consumer/analysis/`` that defines a :class:`Rule` subclass with
the ``@register`` decorator: the config file, ``simic-consumer rules`` and the daemon find it.
"""

from __future__ import annotations

from typing import ClassVar, Iterable

from pydantic import BaseModel, ConfigDict

from simic.schemas.models import Alert, Event

from ..alerts import AlertMaker
from ..pipeline import Batch, Stage

__all__ = ["RuleConfig", "Rule", "register", "RULES"]


class RuleConfig(BaseModel):
    """Settings every rule has. Subclasses add the rule's thresholds."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    enabled: bool = True
    """Run this rule."""


class Rule(Stage):
    """Base of analysis rules: feeds each event of a batch to :meth:`check`."""

    name: ClassVar[str] = "rule"
    Config: ClassVar[type[RuleConfig]] = RuleConfig

    def __init__(self, config: RuleConfig, alerts: AlertMaker) -> None:
        self.config = config
        self.alerts = alerts

    async def consume(self, batch: Batch) -> None:
        for event in batch.events:
            fired = self.check(event)
            if fired:
                batch.alerts.extend(fired)

    def check(self, event: Event) -> Iterable[Alert] | None:
        """Alerts this event raises (or None)."""
        raise NotImplementedError


RULES: dict[str, type[Rule]] = {}
"""Rule name to rule class, in registration order."""


def register(rule: type[Rule]) -> type[Rule]:
    """Class decorator: make a rule known to the daemon, the config file and ``simic-consumer rules``."""
    if rule.name in RULES and RULES[rule.name] is not rule:
        raise ValueError(f"two rules are named {rule.name!r}")
    RULES[rule.name] = rule
    return rule
