"""explained_variance: the value function's explained variance collapsing after it had learned."""

from __future__ import annotations

import math
from typing import Any

from pydantic import Field, model_validator

from simic.schemas.models import Alert, Event

from ._rule import Capped, Rule, RuleConfig, register, subject_key

_INF = math.inf


class ExplainedVarianceConfig(RuleConfig):
    established: float = Field(0.5, le=1)
    """The value head counts as having learned once its explained variance has been above this
    (0.5: it explains half the variance of the returns). Before that a low value is just early
    training, not a collapse."""
    collapse_below: float = Field(0.0, le=1)
    """After that, explained variance below this is a collapse: at 0 the value head predicts no
    better than the mean return, below 0 worse than a constant, so the advantages are noise."""
    fire_after: int = Field(3, ge=1)
    """Updates in a row: explained variance of one batch is noisy (an episode of unusual returns)."""
    clear_after: int = Field(3, ge=1)
    """Updates in a row at or above ``collapse_below`` before it clears."""

    @model_validator(mode="after")
    def _ordered(self) -> "ExplainedVarianceConfig":
        if self.collapse_below > self.established:
            raise ValueError("collapse_below must not be above established")
        return self


@register
class ExplainedVariance(Rule):
    """The value head's explained variance collapsing after it had been established.

    Per (run, rank), once ``explained_variance`` of a ``ppo_update`` has been above
    ``established``, values below ``collapse_below`` for ``fire_after`` updates in a row fire;
    ``clear_after`` updates at or above it clear. A collapsed value function turns GAE advantages
    into noise, so the policy update follows noise too: a reward-scale change, a value loss that
    diverged, or a value head whose gradients were clipped away. An undefined explained variance
    (None, or NaN: constant returns) is not observed, never read as 0.
    """

    name = "explained_variance"
    Config = ExplainedVarianceConfig
    kinds = frozenset({"ppo_update"})
    per_update = True

    def __init__(self, config: ExplainedVarianceConfig, alerts) -> None:
        super().__init__(config, alerts)
        self._established: set[str] = set()
        self._subjects: dict[tuple[str, int], str] = Capped()  # subject_key(event, "collapse") per (run, rank), made once

    def check(self, event: Event, now_ns: int) -> list[Alert] | None:
        if event.kind != "ppo_update":
            return None
        ev = event.explained_variance
        if ev is None or not -_INF < ev < _INF:
            return None
        config = self.config
        subject = self._subjects.get((event.run_id, event.rank))
        if subject is None:
            subject = self._subjects[(event.run_id, event.rank)] = subject_key(event, "collapse")
        if subject not in self._established:
            if ev > config.established:
                self._established.add(subject)
            return None
        bad = ev < config.collapse_below
        if not (bad or subject in self._conditions):
            return None
        alert = self.observe(
            event,
            subject,
            bad,
            lambda: f"explained variance collapsed to {ev:.3g} at step {event.step} (below {config.collapse_below:g} after "
            f"having been above {config.established:g}): the value head no longer predicts returns",
            lambda: {"explained_variance": ev, "collapse_below": config.collapse_below, "established": config.established},
            clear_message=lambda: f"explained variance recovered to {ev:.3g} at step {event.step}",
        )
        return [alert] if alert else None

    def extra_state(self) -> dict[str, Any]:
        return {"established": sorted(self._established)}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self._established = set(state.get("established", []))
