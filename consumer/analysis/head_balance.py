"""head_balance: one action head dominating the gradient, or one going dead while the others learn."""

from __future__ import annotations

import math

from pydantic import Field

from simic.schemas.models import Alert, Event

from ._rule import Capped, Rule, RuleConfig, register, subject_key

_INF = math.inf


class HeadBalanceConfig(RuleConfig):
    dominance_share: float = Field(0.9, gt=0, le=1)
    """A head holding more than this share of the squared gradient norm (``norm_h^2 / sum norm^2``
    over the heads compared) dominates: at 0.9 its norm is three times that of all the others
    together, so they barely learn. Shares are compared, not norms, so the threshold does not
    depend on the gradient scale."""
    dominance_ignore_heads: list[str] = ["value"]
    """Heads left out of the dominance comparison. The value head's loss is usually much larger
    than the policy loss, so it normally carries most of the gradient: that is not a fault."""
    dead_norm: float = Field(1e-8, ge=0)
    """A head whose norm is at or below this is dead (1e-8 moves no float32 weight)."""
    missing_is_dead: bool = True
    """A head sent as None (it had no gradient at all) counts as dead. Turn off if some heads
    legitimately skip updates (for example a head only used by some action types)."""
    dead_after: int = Field(5, ge=1)
    """Updates in a row (5) a head must be dead, while another head learns, before it fires: a
    head may miss a minibatch where its action never occurred, not five updates."""
    fire_after: int = Field(3, ge=1)
    """Updates in a row a head must dominate before it fires (a single large minibatch is noise)."""
    clear_after: int = Field(5, ge=1)
    """Balanced (or alive) updates in a row before it clears."""


class _Run:
    __slots__ = ("dominance", "dead")

    def __init__(self, event: Event) -> None:
        self.dominance = subject_key(event, "dominance")
        self.dead: dict[str, str] = {}


@register
class HeadBalance(Rule):
    """One policy head dominating the gradient, or one going dead while the others learn.

    Per (run, rank), on every ``head_grad_norms`` update not measured after clipping: the largest
    head's share of the squared norm over the compared heads (all but ``dominance_ignore_heads``,
    at least two of them) above ``dominance_share`` for ``fire_after`` updates in a row; and any
    head at or below ``dead_norm`` (or None, see ``missing_is_dead``) for ``dead_after`` updates in
    a row while at least one other head is above it. A factored policy learns through every head:
    a dominating head drowns the others' signal in a shared optimiser step; a dead head has
    stopped learning (a masked-out action, a detached graph, a saturated softmax) and its action
    stays at its initial distribution. When every head is dead, that is ``gradient_scale``'s
    vanishing gradient, not an imbalance. Non-finite norms are ``non_finite``'s and ignored here.
    No flapping: a condition fires after its count of bad updates in a row and clears after
    ``clear_after`` good ones.
    """

    name = "head_balance"
    Config = HeadBalanceConfig
    kinds = frozenset({"head_grad_norms"})

    def __init__(self, config: HeadBalanceConfig, alerts) -> None:
        super().__init__(config, alerts)
        self._ignore = frozenset(config.dominance_ignore_heads)
        self._runs: dict[tuple[str, int], _Run] = Capped()

    def check(self, event: Event, now_ns: int) -> list[Alert] | None:
        if event.kind != "head_grad_norms" or event.stage == "post_clip":
            return None
        norms = event.norms
        config = self.config
        dead_norm = config.dead_norm
        ignore = self._ignore
        conditions = self._conditions
        squares = 0.0
        top_square = -1.0
        top = ""
        compared = 0
        alive = 0
        dead = 0
        for name, value in norms.items():
            if value is None:
                dead += config.missing_is_dead
                continue
            if not value < _INF:  # NaN or Inf: non_finite's
                continue
            if value > dead_norm:
                alive += 1
            else:
                dead += 1
            if name not in ignore:
                square = value * value
                squares += square
                compared += 1
                if square > top_square:
                    top_square, top = square, name
        dominating = compared >= 2 and squares > 0.0 and top_square > config.dominance_share * squares
        if not (dominating or dead or conditions):
            return None  # the healthy path

        run = self._runs.get((event.run_id, event.rank))
        if run is None:
            run = self._runs[(event.run_id, event.rank)] = _Run(event)
        fired: list[Alert] = []
        if compared >= 2 and squares > 0.0 and (dominating or run.dominance in conditions):
            share = top_square / squares
            alert = self.observe(
                event,
                run.dominance,
                dominating,
                f"head {top!r} dominates the gradient at step {event.step}: {share:.1%} of the squared norm "
                f"(norm {math.sqrt(top_square):.4g}, threshold {config.dominance_share:.0%})",
                {"head": top, "share": share, "norm": math.sqrt(top_square), "dominance_share": config.dominance_share},
                clear_message=f"no head dominates the gradient any more at step {event.step} (largest: {top!r}, {share:.1%})",
            )
            if alert:
                fired.append(alert)
        if alive and (dead or conditions):
            for name, value in norms.items():
                is_dead = (config.missing_is_dead if value is None else value <= dead_norm)
                if value is not None and not value < _INF:
                    continue
                subject = run.dead.get(name)
                if subject is None:
                    if not is_dead:
                        continue
                    subject = run.dead[name] = subject_key(event, "dead", name)
                if is_dead or subject in conditions:
                    shown = "missing (None)" if value is None else f"{value:.3g}"
                    alert = self.observe(
                        event,
                        subject,
                        is_dead,
                        f"head {name!r} is dead at step {event.step}: gradient norm {shown} for {config.dead_after} updates "
                        f"while {alive} other head(s) learn",
                        {"head": name, "norm": value, "dead_norm": config.dead_norm, "dead_after": config.dead_after},
                        fire_after=config.dead_after,
                        clear_message=f"head {name!r} learns again at step {event.step}: gradient norm {shown}",
                    )
                    if alert:
                        fired.append(alert)
        return fired or None
