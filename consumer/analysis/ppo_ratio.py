"""ppo_ratio: the PPO probability ratio exploding or collapsing."""

from __future__ import annotations

import math

from pydantic import Field

from simic.schemas.models import Alert, Event

from ._rule import Rule, RuleConfig, register

_INF = math.inf


class PpoRatioConfig(RuleConfig):
    max_ratio: float = Field(5.0, gt=1)
    """``ratio_max`` above this is an explosion (a mature PPO codebase's 5.0): with a clip range of
    0.2 the objective stops caring at 1.2, so 5 means the new policy has left the trust region by
    far and the surrogate's clipping no longer bounds the update."""
    min_ratio: float = Field(0.1, gt=0, lt=1)
    """``ratio_min`` below this is a collapse (the same codebase's 0.1): an action the old policy
    took has become ten times less likely in one update."""
    fire_after: int = Field(3, ge=1)
    """Updates in a row (3): the max and min over a whole batch of samples are extremes of thousands
    of ratios and have long tails. A healthy run of the reference trainer (seed 301) went through
    ten updates of a fast-moving policy with ``ratio_min`` below 0.1 on two in a row (0.09, then
    0.0015) and never three; a learning rate x100 holds it near 0 on every update from onset."""
    clear_after: int = Field(3, ge=1)
    """Updates in a row within bounds before it clears."""


@register
class PpoRatio(Rule):
    """The PPO importance ratio ``pi_new / pi_old`` exploding (``ratio_max > max_ratio``) or
    collapsing (``ratio_min < min_ratio``) in ``ppo_update`` events that send them.

    Either means the policy moved much further in one update than PPO's clipped objective
    assumes: the learning rate is too high, the advantages are unnormalised, or the old
    log-probabilities are stale (a rollout/update mismatch bug). Two subjects per (run, rank),
    each firing after ``fire_after`` bad updates in a row and clearing after ``clear_after`` good
    ones. Missing and non-finite values are not observed.
    """

    name = "ppo_ratio"
    Config = PpoRatioConfig
    kinds = frozenset({"ppo_update"})
    per_update = True

    def check(self, event: Event, now_ns: int) -> list[Alert] | None:
        if event.kind != "ppo_update":
            return None
        config = self.config
        if not self._conditions:  # the healthy path: neither value bad (missing and non-finite ones are not observed)
            high, low = event.ratio_max, event.ratio_min
            if not (high is not None and -_INF < high < _INF and high > config.max_ratio) and not (
                    low is not None and -_INF < low < _INF and low < config.min_ratio):
                return None
        fired: list[Alert] | None = None
        for condition, value, bad_if, bound in (
            ("explosion", event.ratio_max, lambda x: x > config.max_ratio, f"ratio_max > {config.max_ratio:g}"),
            ("collapse", event.ratio_min, lambda x: x < config.min_ratio, f"ratio_min < {config.min_ratio:g}"),
        ):
            if value is None or not -_INF < value < _INF:
                continue
            bad = bad_if(value)
            subject = self.watched(event, bad, condition)
            if subject is not None:
                alert = self.observe(
                    event,
                    subject,
                    bad,
                    f"PPO ratio {condition} at step {event.step}: {bound} ({value:.4g})",
                    {"ratio_min": event.ratio_min, "ratio_max": event.ratio_max, "condition": condition},
                    clear_message=f"PPO ratio {condition} over at step {event.step}: ratio in [{event.ratio_min}, {event.ratio_max}]",
                )
                if alert:
                    fired = (fired or []) + [alert]
        return fired
