"""entropy_collapse: an action head's policy entropy collapsing (the head became deterministic)."""

from __future__ import annotations

import math

from pydantic import Field, model_validator

from simic.schemas.models import Alert, Event

from ._rule import Rule, RuleConfig, register, subject_key

_INF = math.inf


class EntropyCollapseConfig(RuleConfig):
    collapse_below: float = Field(0.1, ge=0)
    """A head's mean entropy below this has collapsed (a mature PPO codebase's 0.1 nats): the head
    picks one action almost always and stops exploring."""
    clear_above: float = Field(0.3, ge=0)
    """A collapsed head clears only once its entropy is above this (the same codebase's 0.3): the
    gap between the two levels is hysteresis on the value, so a head hovering near 0.1 raises one
    alert, not one per crossing."""
    ignore_heads: list[str] = []
    """Heads not checked, for example a Gaussian (continuous) head, whose differential entropy can
    be legitimately negative, or a head with very few actions that is meant to converge."""
    fire_after: int = Field(3, ge=1)
    """Updates in a row: entropy is averaged over a batch already, but one batch of easy states is
    not a collapse."""
    clear_after: int = Field(3, ge=1)
    """Updates in a row above ``clear_above`` before it clears."""

    @model_validator(mode="after")
    def _ordered(self) -> "EntropyCollapseConfig":
        if self.clear_above < self.collapse_below:
            raise ValueError("clear_above must not be below collapse_below")
        return self


@register
class EntropyCollapse(Rule):
    """A policy head's entropy collapsing: below ``collapse_below`` for ``fire_after`` updates of
    ``ppo_update`` (per run, rank and head), cleared only above ``clear_above`` for ``clear_after``
    updates.

    Premature entropy collapse is PPO's classic failure: the policy commits before it has found
    the good actions, the advantage signal for the others disappears, and the run plateaus. In a
    factored policy one head can collapse while the rest explore, so each head is its own subject.
    Flapping is prevented twice: by counts, and by hysteresis on the value (between the two levels
    nothing changes). Missing and non-finite entropies are not observed.
    """

    name = "entropy_collapse"
    Config = EntropyCollapseConfig
    kinds = frozenset({"ppo_update"})
    per_update = True

    def __init__(self, config: EntropyCollapseConfig, alerts) -> None:
        super().__init__(config, alerts)
        self._ignore = frozenset(config.ignore_heads)

    def check(self, event: Event, now_ns: int) -> list[Alert] | None:
        if event.kind != "ppo_update" or not event.entropy:
            return None
        config = self.config
        conditions = self._conditions
        fired: list[Alert] | None = None
        for head, entropy in event.entropy.items():
            if not entropy < config.collapse_below and not conditions:
                continue  # the healthy path
            if head in self._ignore or not -_INF < entropy < _INF:
                continue
            subject = subject_key(event, head)
            if self.is_active(subject):
                bad = entropy <= config.clear_above  # hysteresis: still collapsed until above clear_above
            else:
                bad = entropy < config.collapse_below
            if bad or subject in conditions:
                alert = self.observe(
                    event,
                    subject,
                    bad,
                    f"head {head!r} entropy collapsed to {entropy:.4g} at step {event.step} (below {config.collapse_below:g})",
                    {"head": head, "entropy": entropy, "collapse_below": config.collapse_below, "clear_above": config.clear_above},
                    clear_message=f"head {head!r} explores again at step {event.step}: entropy {entropy:.4g} > {config.clear_above:g}",
                )
                if alert:
                    fired = (fired or []) + [alert]
        return fired
