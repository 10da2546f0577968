"""gradient_scale: the total gradient norm exploding or vanishing, absolutely and against its own history."""

from __future__ import annotations

import math
from typing import Any

from pydantic import Field

from simic.schemas.models import Alert, Event

from ._rule import Capped, Rule, RuleConfig, Severity, register, subject_key
from ._ema import Ema

_INF = math.inf


class GradientScaleConfig(RuleConfig):
    max_total_norm: float = Field(1e3, gt=0)
    """A pre-clip total norm above this is an explosion whatever the run's history: PPO policies with
    the usual ``max_grad_norm`` of 0.5 see pre-clip norms of 0.1 to 10; 1e3 means the loss or a
    reward scale blew up, and the next step is often NaN."""
    explosion_severity: Severity = "critical"
    """Severity of the absolute explosion (the relative ones use ``severity``)."""
    min_total_norm: float = Field(1e-7, ge=0)
    """A total norm below 1e-7 (0 included) is a vanished gradient: nothing learns (Adam's epsilon,
    typically 1e-8, is of the same order and dominates such steps)."""
    relative_explosion_factor: float = Field(10.0, gt=1)
    """Fire when the norm exceeds 10 times its slow baseline: an order of magnitude is far
    outside the step-to-step noise of a healthy run (a factor of 2 to 3)."""
    relative_vanishing_factor: float = Field(100.0, gt=1)
    """Fire when the norm falls below its baseline divided by 100: two orders of magnitude, since
    norms legitimately shrink as a policy converges (gradually, which the baseline follows)."""
    momentum: float = Field(0.99, gt=0, lt=1)
    """Baseline EMA momentum, 0.99 (a memory of about 100 updates), as the seed plan's tracker."""
    warmup: int = Field(10, ge=1)
    """Updates (10) before the relative checks start; the baseline starts at their median, so one huge
    first gradient does not set it."""
    fire_after: int = Field(3, ge=1)
    """Three updates in a row: a spike of one or two updates is forgiven (clipping absorbs it), three
    are a trend. A healthy run of SB3's RecurrentPPO had its total norm at 14x and 20x its baseline on
    two updates in a row (its LSTM's gradient through time: the action and value heads did not move;
    SB3 clips at 0.5) and back the update after."""
    clear_after: int = Field(5, ge=1)
    """Five normal updates in a row clear."""


class _Run:
    __slots__ = ("baseline", "prefix", "subjects")

    def __init__(self, baseline: Ema, prefix: str) -> None:
        self.baseline = baseline
        self.prefix = prefix
        self.subjects = {kind: f"{prefix}\x1f{kind}" for kind in ("explosion", "vanishing", "relative_explosion", "relative_vanishing")}


@register
class GradientScale(Rule):
    """Gradient explosion and vanishing of the total norm, absolute and relative to the run's history.

    The norm looked at is the pre-clip total (``pre_clip_total``, else ``total`` unless it was
    measured after clipping). Absolute: above ``max_total_norm`` (critical) or below
    ``min_total_norm``. Relative, per (run, rank) after ``warmup`` updates: above
    ``relative_explosion_factor`` x its slow baseline, or below the baseline divided by
    ``relative_vanishing_factor``. An exploding gradient is the step before NaN; a vanished one
    means the policy has stopped learning while the run looks alive.

    No flapping: ``fire_after`` bad updates in a row fire, ``clear_after`` good ones clear. A sample
    outside the relative band is not folded into the baseline, so a burst of explosions does not
    lift the baseline until they look normal; a gradual change is followed. Non-finite norms are
    the ``non_finite`` rule's.
    """

    name = "gradient_scale"
    Config = GradientScaleConfig
    kinds = frozenset({"head_grad_norms"})
    per_update = True

    def __init__(self, config: GradientScaleConfig, alerts) -> None:
        super().__init__(config, alerts)
        self._runs: dict[tuple[str, int], _Run] = Capped()

    def check(self, event: Event, now_ns: int) -> list[Alert] | None:
        if event.kind != "head_grad_norms":
            return None
        norm = event.pre_clip_total
        if norm is None:
            if event.stage == "post_clip":
                return None
            norm = event.total
            if norm is None:
                return None
        if not 0.0 <= norm < _INF:
            return None
        config = self.config
        run = self._runs.get((event.run_id, event.rank))
        if run is None:
            run = self._runs[(event.run_id, event.rank)] = _Run(self._baseline(), subject_key(event))
        baseline = run.baseline.value
        too_large = norm > config.max_total_norm
        too_small = norm < config.min_total_norm
        if not baseline:  # still warming up (or a baseline of exactly 0: nothing to be relative to)
            high = low = False
        else:
            high = norm > config.relative_explosion_factor * baseline
            low = norm * config.relative_vanishing_factor < baseline
        if not (high or low):
            run.baseline.add(norm)
        if not (too_large or too_small or high or low or self._conditions):
            return None  # the healthy path

        fired: list[Alert] = []
        observe = self._observer(event, run, norm, baseline, fired)
        observe("explosion", too_large, f"gradient explosion at step {event.step}: total norm {norm:.4g} > {config.max_total_norm:g}",
                config.explosion_severity)
        observe("vanishing", too_small, f"vanishing gradient at step {event.step}: total norm {norm:.4g} < {config.min_total_norm:g}")
        if baseline:
            observe("relative_explosion", high,
                    f"gradient norm {norm / baseline:.1f}x its baseline at step {event.step}: {norm:.4g} vs {baseline:.4g}")
            observe("relative_vanishing", low,
                    f"gradient norm fell to 1/{baseline / norm if norm else _INF:.0f} of its baseline at step {event.step}: "
                    f"{norm:.4g} vs {baseline:.4g}")
        return fired or None

    def _baseline(self) -> Ema:
        """The slow baseline: the median of the first ``warmup`` updates, then an EMA."""
        return Ema(self.config.momentum, self.config.warmup, seed="median")

    def _observer(self, event: Event, run: _Run, norm: float, baseline: float | None, fired: list[Alert]):
        conditions = self._conditions

        def observe(kind: str, bad: bool, message: str, severity: Severity | None = None) -> None:
            subject = run.subjects[kind]
            if bad or subject in conditions:
                alert = self.observe(
                    event, subject, bad, message, {"total_norm": norm, "baseline": baseline}, severity=severity,
                    clear_message=f"gradient norm back to normal at step {event.step}: {norm:.4g} ({kind.replace('_', ' ')} over)",
                )
                if alert:
                    fired.append(alert)

        return observe

    def extra_state(self) -> dict[str, Any]:
        return {
            run.prefix: {"run_id": run_id, "rank": rank, "baseline": run.baseline.state()}
            for (run_id, rank), run in self._runs.items()
        }

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self._runs = Capped()
        for prefix, saved in state.items():
            baseline = self._baseline()
            baseline.load_state(saved["baseline"])
            self._runs[(saved["run_id"], int(saved["rank"]))] = _Run(baseline, prefix)
