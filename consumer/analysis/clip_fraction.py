"""clip_fraction: the share of samples PPO's ratio clip cut off jumping far above its usual."""

from __future__ import annotations

import math
from typing import Any

from pydantic import Field

from simic.schemas.models import Alert, Event

from ._rule import Rule, RuleConfig, register
from ._support import RunUsual

_INF = math.inf


class ClipFractionConfig(RuleConfig):
    max_clip_fraction: float = Field(0.3, gt=0, le=1)
    """An update that clipped the ratio of more than this share of its samples (0.3) is suspect: PPO
    with a sane step clips a few percent to about a quarter of them (measured: under 0.03 on a
    continuous-control trainer, up to 0.27 on a recurrent one)."""
    jump: float = Field(3.0, gt=1)
    """...and only when that is more than 3 times the run's usual clip fraction (the median of the
    last ``baseline_updates``, at least ``min_usual``): a trainer that always clips a lot is its own
    normal."""
    min_usual: float = Field(0.01, gt=0)
    """The usual clip fraction counts as at least 0.01 (many healthy updates clip nothing at all)."""
    baseline_updates: int = Field(24, ge=2)
    """Updates the usual clip fraction is the median of (the last 24)."""
    warmup: int = Field(8, ge=0)
    """Updates (8) before it is judged: the first updates of a run have no usual yet."""
    fire_after: int = Field(2, ge=1)
    """Updates in a row (2): one update that clipped a lot can be one odd batch; two are a step size
    out of proportion (a learning rate that jumped, an advantage scale gone wrong)."""
    clear_after: int = Field(3, ge=1)
    """Updates in a row back under the limits before it clears."""


@register
class ClipFraction(Rule):
    """PPO's clip fraction (``ppo_update.clip_fraction``) far above its usual.

    Per (run, rank), one value per update (the events of a step combined, their mean): above
    ``max_clip_fraction`` and above ``jump`` times the median of the last ``baseline_updates`` (at
    least ``min_usual``), after ``warmup`` updates, for ``fire_after`` updates in a row. A policy
    update that clips most of its samples moved much further than the trust region allows: the
    clearest sign, next to the KL, of a learning rate or an advantage scale that jumped. Missing and
    non-finite values are not observed; a fired condition's values do not join the usual.
    """

    name = "clip_fraction"
    Config = ClipFractionConfig
    kinds = frozenset({"ppo_update"})
    per_update = True

    def __init__(self, config: ClipFractionConfig, alerts) -> None:
        super().__init__(config, alerts)
        self._usual = RunUsual(config.warmup, config.baseline_updates)

    def check(self, event: Event, now_ns: int) -> list[Alert] | None:
        value = event.clip_fraction
        if value is None or not -_INF < value < _INF:
            return None
        config = self.config
        history = self._usual.history(event)
        usual = config.min_usual
        bad = False
        if value > config.max_clip_fraction:
            known = self._usual.median(history, config.min_usual)
            if known is not None:  # only after the warm-up is the median worth taking
                usual = max(known, config.min_usual)
                bad = value > config.jump * usual
        subject = self.watched(event, bad, "jump")
        alert = None
        if subject is not None:
            alert = self.observe(
                event,
                subject,
                bad,
                lambda: f"clip fraction {value:.3g} at step {event.step}, {value / usual:.3g}x its usual {usual:.3g}, for "
                f"{config.fire_after} updates: the policy update moves much further than its trust region (a learning rate "
                f"or an advantage scale that jumped)",
                lambda: {"clip_fraction": value, "usual": usual, "max_clip_fraction": config.max_clip_fraction},
                clear_message=lambda: f"clip fraction back to {value:.3g} at step {event.step} (usual {usual:.3g})",
            )
        if not (bad or (subject is not None and self.is_active(subject))):
            self._usual.keep(history, value)
        return [alert] if alert else None

    def extra_state(self) -> dict[str, Any]:
        return {"usual": self._usual.state()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self._usual.load(state.get("usual", []))
