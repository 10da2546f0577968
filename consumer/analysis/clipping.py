"""clipping: gradient clipping that shrinks every step by a tiny factor."""

from __future__ import annotations

import math

from pydantic import Field

from simic.schemas.models import Alert, Event

from ._rule import Rule, RuleConfig, register, subject_key

_INF = math.inf


class ClippingConfig(RuleConfig):
    min_clip_ratio: float = Field(0.1, gt=0, le=1)
    """Fire when clipping keeps less than this fraction of the gradient (``post_clip_total /
    pre_clip_total``): a step scaled by under 0.1 means the pre-clip norm is more than ten times
    ``max_norm``, so the real step size is set by the clip, not the learning rate."""
    fire_after: int = Field(3, ge=1)
    """Updates in a row: clipping one outlier minibatch hard is what clipping is for; doing it
    every update is the fault."""
    clear_after: int = Field(5, ge=1)
    """Updates in a row with a milder clip before it clears."""


@register
class Clipping(Rule):
    """Gradient clipping that scales every step by a tiny factor.

    The ratio is ``post_clip_total / pre_clip_total`` of a ``head_grad_norms`` update; without a
    post-clip norm it is ``min(1, max_norm / pre-clip norm)``, the factor ``clip_grad_norm_``
    applies. Fires when it stays below ``min_clip_ratio`` for ``fire_after`` updates in a row,
    clears after ``clear_after`` milder ones. Clipping every step hard hides an exploding loss,
    turns the optimiser into sign-SGD with a fixed step and silently decouples the step size from
    the learning rate: the run goes on, slowly or wrongly. Non-finite norms are ``non_finite``'s.
    """

    name = "clipping"
    Config = ClippingConfig
    kinds = frozenset({"head_grad_norms"})
    per_update = True

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
        bad = ratio < config.min_clip_ratio
        if not (bad or self._conditions):
            return None
        subject = subject_key(event, "clip")
        if not (bad or subject in self._conditions):
            return None
        alert = self.observe(
            event,
            subject,
            bad,
            f"clipping scales every step by {ratio:.3g} at step {event.step}: pre-clip norm {pre:.4g}, "
            f"post-clip {pre * ratio:.4g} (ratio below {config.min_clip_ratio} for {config.fire_after} updates)",
            {"clip_ratio": ratio, "pre_clip_total": pre, "post_clip_total": pre * ratio, "max_norm": event.max_norm,
             "min_clip_ratio": config.min_clip_ratio},
            clear_message=f"clipping is mild again at step {event.step}: ratio {ratio:.3g}",
        )
        return [alert] if alert else None
