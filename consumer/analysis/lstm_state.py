"""lstm_state: the recurrent core's hidden and cell state exploding, vanishing or saturating."""

from __future__ import annotations

import math

from pydantic import Field

from simic.schemas.models import Alert, Event

from ._rule import Rule, RuleConfig, register

_INF = math.inf


class LstmStateConfig(RuleConfig):
    max_rms: float = Field(10.0, gt=0)
    """RMS of h or c above this is an explosion (a mature PPO codebase's 10). A standard LSTM's h is
    bounded by 1 (``o * tanh(c)``), so an h above it means a non-standard core or a bug; c is
    unbounded and grows when the forget gate stays open."""
    min_rms: float = Field(1e-6, ge=0)
    """RMS of h or c below this (but not exactly 0) has vanished (the same codebase's 1e-6): the
    memory carries nothing. An all-zero state is what a reset gives, so exactly 0 is not counted."""
    max_env_rms: float = Field(10.0, gt=0)
    """Largest per-environment RMS of h or c above this (10, as ``max_rms``): one runaway
    environment hides in the mean over all of them."""
    saturation_rms: float = Field(0.9, gt=0)
    """``h_rms`` at or above this is saturated: h = o * tanh(c) is bounded by 1, so an rms of 0.9
    means most units of most environments sit near the bound, where tanh's gradient is small and
    the gates have stopped learning. (The largest |h| is no measure: in the detection benchmark
    some unit of every healthy, well-trained LSTM reaches 0.999.) Above ``max_rms`` it is an
    explosion instead, reported as such."""
    fire_after: int = Field(3, ge=1)
    """Events in a row: one odd rollout batch is not a trend."""
    clear_after: int = Field(5, ge=1)
    """Healthy events in a row before it clears."""


@register
class LstmState(Rule):
    """LSTM h/c state exploding (rms above ``max_rms``, or one environment's above ``max_env_rms``),
    vanishing (rms below ``min_rms``) or saturating (``h_rms`` at ``saturation_rms``).

    An exploding cell state is how a recurrent PPO policy usually diverges (the NaN comes a few
    updates later); a vanished one means the policy has become memoryless; a saturated h means the
    gates are pinned and their gradients vanish. Each condition is a subject of its own per
    (run, rank): it fires after ``fire_after`` bad ``lstm_health`` events in a row and clears after
    ``clear_after`` good ones. Missing (None) fields are not observed. NaN and Inf are the
    ``non_finite`` rule's, not repeated here.
    """

    name = "lstm_state"
    Config = LstmStateConfig
    kinds = frozenset({"lstm_health"})
    per_update = True

    def __init__(self, config: LstmStateConfig, alerts) -> None:
        super().__init__(config, alerts)
        c = config
        # (condition, field, is it bad?, the bound in words, what it is): one subject per condition.
        self._tests = (
            ("h_explosion", "h_rms", lambda x: c.max_rms < x, f"above {c.max_rms:g}", "h explosion"),
            ("c_explosion", "c_rms", lambda x: c.max_rms < x, f"above {c.max_rms:g}", "c explosion"),
            ("h_vanishing", "h_rms", lambda x: 0.0 < x < c.min_rms, f"below {c.min_rms:g}", "h vanishing"),
            ("c_vanishing", "c_rms", lambda x: 0.0 < x < c.min_rms, f"below {c.min_rms:g}", "c vanishing"),
            ("h_env_explosion", "h_env_max_rms", lambda x: c.max_env_rms < x, f"above {c.max_env_rms:g}",
             "h explosion in one environment"),
            ("c_env_explosion", "c_env_max_rms", lambda x: c.max_env_rms < x, f"above {c.max_env_rms:g}",
             "c explosion in one environment"),
            ("h_saturation", "h_rms", lambda x: c.saturation_rms <= x <= c.max_rms, f"at or above {c.saturation_rms:g}",
             "h saturation"),
        )

    def check(self, event: Event, now_ns: int) -> list[Alert] | None:
        if event.kind != "lstm_health":
            return None
        if not self._conditions and not self._any_bad(event):
            return None  # the healthy path: nothing to observe, nothing open
        fired: list[Alert] | None = None
        name = event.name  # a model with several recurrent cores: each is watched on its own
        lstm = "LSTM" if name is None else f"LSTM {name}"
        for condition, field, test, bound, what in self._tests:
            value = getattr(event, field)
            if value is None or not -_INF < value < _INF:  # missing, or non_finite's
                continue
            bad = test(value)
            subject = self.watched(event, bad, condition) if name is None else self.watched(event, bad, condition, name)
            if subject is not None:
                values = {field: value, "condition": condition}
                if name is not None:
                    values["lstm"] = name
                alert = self.observe(
                    event,
                    subject,
                    bad,
                    f"{lstm} {what} at step {event.step}: {field} = {value:.4g}, {bound}",
                    values,
                    clear_message=f"{lstm} {what} over at step {event.step}: {field} = {value:.4g}",
                )
                if alert:
                    fired = (fired or []) + [alert]
        return fired

    def _any_bad(self, event: Event) -> bool:
        """Whether any check finds its (finite) value bad: the loop of check without observing anything."""
        fields = event.__dict__
        for _, field, test, _, _ in self._tests:
            value = fields[field]
            if value is not None and -_INF < value < _INF and test(value):
                return True
        return False
