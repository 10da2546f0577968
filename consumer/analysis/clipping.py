"""clipping: gradient clipping that shrinks every step by a tiny factor, far below what it usually keeps."""

from __future__ import annotations

import math
from typing import Any

from pydantic import Field

from simic.schemas.models import Alert, Event

from ._rule import Rule, RuleConfig, register
from ._support import RunUsual

_INF = math.inf


class ClippingConfig(RuleConfig):
    min_clip_ratio: float = Field(0.1, gt=0, le=1)
    """Fire when clipping keeps less than this fraction of the gradient (``post_clip_total /
    pre_clip_total``): a step scaled by under 0.1 means the pre-clip norm is more than ten times
    ``max_norm``, so the real step size is set by the clip, not the learning rate."""
    min_share_of_usual: float = Field(0.1, gt=0, le=1)
    """...and less than 0.1 of what the clip usually keeps in this run (the median ratio of the last
    ``baseline_updates``): the clip bites ten times harder than it does in this run. For a run whose
    clip does not bite (a usual ratio of 1) this is ``min_clip_ratio`` itself; a run whose clip
    bites from its start is its own normal (SB3's RecurrentPPO clips the total at 0.5 and keeps
    30-85% of it on every update of a healthy run, and a healthy run's went to 4.5-8% for three updates,
    5 to 9 times below its usual of about 40%, while its LSTM's gradient rose as it learned its task),
    while a clip that starts biting or bites ten times harder than it did is a change. 1 (with
    ``warmup`` 0) judges the ratio alone, as before this setting."""
    baseline_updates: int = Field(24, ge=1)
    """Updates the usual ratio is the median of (the last 24 not judged bad: a hard clip that fired
    does not become the usual)."""
    warmup: int = Field(8, ge=0)
    """Updates (8) before the ratio is judged: the first updates of a run make its usual. 0 judges
    from the first update against a usual of 1 (no clipping)."""
    fire_after: int = Field(3, ge=1)
    """Updates in a row: clipping one outlier minibatch hard is what clipping is for; doing it
    every update is the fault."""
    clear_after: int = Field(5, ge=1)
    """Updates in a row with a milder clip before it clears."""


@register
class Clipping(Rule):
    """Gradient clipping that scales every step by a tiny factor, far below its usual.

    The ratio is ``post_clip_total / pre_clip_total`` of a ``head_grad_norms`` update; without a
    post-clip norm it is ``min(1, max_norm / pre-clip norm)``, the factor ``clip_grad_norm_``
    applies. An update is bad when the ratio is below ``min_clip_ratio`` *and* below
    ``min_share_of_usual`` times the run's usual ratio (per run and rank, the median of the last
    ``baseline_updates`` updates that were not bad, after ``warmup`` updates); it fires after
    ``fire_after`` bad updates in a row and clears after ``clear_after`` milder ones. Clipping every
    step hard hides an exploding loss, turns the optimiser into sign-SGD with a fixed step and
    silently decouples the step size from the learning rate: the run goes on, slowly or wrongly.
    How hard a clip bites is a setting of the trainer (its ``max_norm`` against its gradient's
    size), so a run is judged against its own clip: a clip that starts biting, or bites ten times
    harder than it usually does, fires; one that has bitten that hard since the run began does not
    (a limit: a ``max_norm`` far below the gradient from the first update is not reported).
    Non-finite norms are ``non_finite``'s.
    """

    name = "clipping"
    Config = ClippingConfig
    kinds = frozenset({"head_grad_norms"})
    per_update = True

    def __init__(self, config: ClippingConfig, alerts) -> None:
        super().__init__(config, alerts)
        self._usual = RunUsual(config.warmup, config.baseline_updates)

    def check(self, event: Event, now_ns: int) -> list[Alert] | None:
        if event.kind != "head_grad_norms":
            return None
        pre = event.pre_clip_total
        if pre is None and event.stage != "post_clip":
            pre = event.total
        if pre is None or not 0.0 < pre < _INF:
            return None
        post = event.post_clip_total
        if post is not None:
            if not 0.0 <= post < _INF:
                return None
            ratio = post / pre
        elif event.max_norm is not None and 0.0 < event.max_norm < _INF:
            ratio = min(1.0, event.max_norm / pre)
        else:
            return None
        config = self.config
        history = self._usual.history(event)
        usual = 1.0
        bad = False
        if ratio < config.min_clip_ratio:
            known = self._usual.median(history, 1.0)
            if known is not None:  # only after the warm-up is the median worth taking
                usual = known
                bad = ratio < config.min_share_of_usual * usual
        alert = None
        subject = self.watched(event, bad, "clip") if bad or self._conditions else None  # (the usual update: no call)
        if subject is not None:
            alert = self.observe(
                event,
                subject,
                bad,
                lambda: f"clipping scales every step by {ratio:.3g} at step {event.step}, {ratio / usual:.3g} of its usual "
                f"{usual:.3g}: pre-clip norm {pre:.4g}, post-clip {pre * ratio:.4g} (ratio below {config.min_clip_ratio} and "
                f"{config.min_share_of_usual} of its usual for {config.fire_after} updates)",
                lambda: {"clip_ratio": ratio, "usual_clip_ratio": usual, "pre_clip_total": pre, "post_clip_total": pre * ratio,
                         "max_norm": event.max_norm, "min_clip_ratio": config.min_clip_ratio,
                         "min_share_of_usual": config.min_share_of_usual},
                clear_message=lambda: f"clipping is mild again at step {event.step}: ratio {ratio:.3g}",
            )
        if not bad:
            self._usual.keep(history, ratio)
        return [alert] if alert else None

    def extra_state(self) -> dict[str, Any]:
        return {"usual": self._usual.state()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self._usual.load(state.get("usual", []))
