"""entropy_collapse: an action head's policy entropy collapsing (the head became deterministic)."""

from __future__ import annotations

import math
from typing import Any

from pydantic import Field, model_validator

from simic.schemas.models import Alert, Event

from ._rule import Capped, Rule, RuleConfig, register, subject_key

_INF = math.inf


class EntropyCollapseConfig(RuleConfig):
    collapse_below: float = Field(0.1, ge=0)
    """A head's mean entropy below this has collapsed (a mature PPO codebase's 0.1 nats): the head
    picks one action almost always and stops exploring."""
    clear_above: float = Field(0.3, ge=0)
    """A collapsed head clears only once its entropy is above this (the same codebase's 0.3): the
    gap between the two levels is hysteresis on the value, so a head hovering near 0.1 raises one
    alert, not one per crossing."""
    sudden_within: int = Field(10, ge=1)
    """...and only a collapse that came suddenly: the entropy fell to less than ``sudden_ratio`` of
    what it was 10 updates earlier. A policy that converges on a task it has learned loses its
    entropy slowly, over tens of updates (measured on a healthy recurrent run: 2.5 to 0.09 nats over
    87 updates, a third of it in the last ten); a learning rate gone wrong takes it from 1.3 to 0.1
    in eight."""
    sudden_ratio: float = Field(0.25, gt=0, lt=1)
    """The fall that counts as sudden: below a quarter (0.25) of the entropy ``sudden_within`` updates earlier."""
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
    """A policy head's entropy collapsing: below ``collapse_below``, suddenly (under ``sudden_ratio`` of
    its value ``sudden_within`` updates before), for ``fire_after`` updates of ``ppo_update`` (per run,
    rank and head), cleared only above ``clear_above`` for ``clear_after`` updates.

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
        self._recent: dict[str, list[float]] = Capped()  # subject -> the head's last entropies

    def _fell_suddenly(self, subject: str, entropy: float) -> bool:
        recent = self._recent.get(subject)
        window = self.config.sudden_within
        return recent is not None and len(recent) >= window and entropy < self.config.sudden_ratio * recent[-window]

    def _remember(self, subject: str, entropy: float) -> None:
        recent = self._recent.get(subject)
        if recent is None:
            recent = self._recent[subject] = []
        recent.append(entropy)
        del recent[:-self.config.sudden_within]

    def extra_state(self) -> dict[str, Any]:
        return {"recent": dict(self._recent)}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self._recent = Capped({subject: [float(x) for x in values] for subject, values in state.get("recent", {}).items()})

    def check(self, event: Event, now_ns: int) -> list[Alert] | None:
        if event.kind != "ppo_update" or not event.entropy:
            return None
        config = self.config
        conditions = self._conditions
        ignore = self._ignore
        prefix = subject_key(event, "")  # every head's subject without the head: subject_key(event, head) is prefix + head
        fired: list[Alert] | None = None
        for head, entropy in event.entropy.items():
            if head in ignore or not -_INF < entropy < _INF:
                continue
            subject = prefix + head
            condition = conditions.get(subject)
            if condition is not None and condition.active:
                bad = entropy <= config.clear_above  # hysteresis: still collapsed until above clear_above
            elif condition is not None:  # counting towards fire_after: the collapse was sudden when it began
                bad = entropy < config.collapse_below
            else:
                bad = entropy < config.collapse_below and self._fell_suddenly(subject, entropy)
            self._remember(subject, entropy)
            if bad or condition is not None:
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
