"""head_balance: one action head dominating the gradient, or one going dead while the others learn."""

from __future__ import annotations

import math
from statistics import median
from typing import Any

from pydantic import Field

from simic.schemas.models import Alert, Event

from ._rule import Capped, Rule, RuleConfig, register, subject_key

_INF = math.inf


def _exp(x: float) -> float:
    """``math.exp`` that saturates at infinity instead of raising (hostile or extreme norms)."""
    return math.exp(x) if x < 700.0 else _INF


class HeadBalanceConfig(RuleConfig):
    dominance_share: float = Field(0.9, gt=0, le=1)
    """A head holding more than this share of the squared gradient norm (``norm_h^2 / sum norm^2``
    over the heads compared) dominates: at 0.9 its norm is three times that of all the others
    together, so they barely learn. Shares are compared, not norms, so the threshold does not
    depend on the gradient scale."""
    dominance_jump: float = Field(10.0, gt=1)
    """...and only when its odds (``share / (1 - share)``) are more than 10 times its own usual odds
    (the median over the last ``baseline_updates`` updates): its norm grew about three times against
    the other heads. Heads are not alike (a Gaussian policy's ``log_std`` is one number, an action
    layer thousands; a value head's loss dwarfs the policy's), so a head that always carries 95% of
    the squared norm is that model's normal, not a fault: only a change against the run's own
    history is."""
    growth: float = Field(2.0, gt=1)
    """...and only when the dominating head's own norm is more than twice its usual (the median of its
    last ``baseline_updates`` norms): a head takes over by growing. When the other heads' gradients
    shrink instead (an action the policy has learned, whose gradient fades), the shares shift without
    any head gaining: that is learning, not imbalance (a dying head is the dead-head check's)."""
    baseline_updates: int = Field(24, ge=2)
    """Updates the usual odds of each head are taken over (the median of the last 24)."""
    warmup: int = Field(8, ge=1)
    """Updates (8) a head must have been seen before its dominance is judged (there is no usual yet)."""
    min_norm: float = Field(1e-6, ge=0)
    """Compared heads whose norms add up (L2) to less than this (1e-6) are not judged for dominance, nor
    when they fell below 1/1000 of their usual size: shares of a vanishing gradient are noise (that is
    ``gradient_scale``'s to report)."""
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
    __slots__ = ("dominance", "dead", "odds", "scale", "norms")

    def __init__(self, event: Event) -> None:
        self.dominance = subject_key(event, "dominance")
        self.dead: dict[str, str] = {}
        self.odds: dict[str, list[float]] = {}  # head -> its last log-odds of the squared-norm share
        self.scale: list[float] = []  # the last log L2 norms of the compared heads together
        self.norms: dict[str, list[float]] = {}  # head -> its last log norms


@register
class HeadBalance(Rule):
    """One policy head dominating the gradient, or one going dead while the others learn.

    Per (run, rank), on every ``head_grad_norms`` update not measured after clipping (one per update:
    the events of a step combined, each norm the RMS over them): the largest head's share of the
    squared norm over the compared heads (all but ``dominance_ignore_heads``, at least two of them)
    above ``dominance_share`` *and* its odds more than ``dominance_jump`` times its usual odds *and* its
    norm more than ``growth`` times its usual norm (its own
    median over the last ``baseline_updates``; judged after ``warmup`` updates, and not on a gradient
    below ``min_norm`` or 1/1000 of its usual size) for ``fire_after`` updates in a row; and any
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
    per_update = True

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
        run = self._runs.get((event.run_id, event.rank))
        if run is None:
            run = self._runs[(event.run_id, event.rank)] = _Run(event)
        fired: list[Alert] = []
        if compared >= 2 and squares > 0.0:
            share = top_square / squares
            jump = grew = None
            if share > config.dominance_share:  # only then are the medians worth taking
                jump = self._odds_jump(run, top, share, squares)
                grew = self._growth(run, top, top_square)
            dominating = (jump is not None and jump > config.dominance_jump and grew is not None and grew > config.growth)
            self._remember(run, norms, squares)
            if dominating or run.dominance in conditions:
                alert = self.observe(
                    event,
                    run.dominance,
                    dominating,
                    lambda: f"head {top!r} dominates the gradient at step {event.step}: {share:.1%} of the squared norm, "
                    f"{jump:.3g}x its usual odds (norm {math.sqrt(top_square):.4g}; thresholds {config.dominance_share:.0%} "
                    f"and {config.dominance_jump:g}x)",
                    {"head": top, "share": share, "norm": math.sqrt(top_square), "odds_vs_usual": jump,
                     "dominance_share": config.dominance_share},
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

    def _odds_jump(self, run: _Run, top: str, share: float, squares: float) -> float | None:
        """How many times the top head's odds exceed its usual odds; None while that cannot be judged
        (its warm-up, or a gradient too small to compare)."""
        config = self.config
        history = run.odds.get(top)
        if history is None or len(history) < config.warmup:
            return None
        norm = math.sqrt(squares)
        if norm < config.min_norm or (run.scale and math.log(norm) < median(run.scale) - math.log(1000.0)):
            return None
        if share >= 1.0:
            return math.inf
        return _exp(math.log(share / (1.0 - share)) - median(history))

    def _growth(self, run: _Run, top: str, top_square: float) -> float | None:
        """The top head's norm over its usual norm (None before it has one)."""
        history = run.norms.get(top)
        if not history or top_square <= 0.0:
            return None
        return _exp(0.5 * math.log(top_square) - median(history)) if top_square < _INF else _INF

    def _remember(self, run: _Run, norms: dict[str, float | None], squares: float) -> None:
        """Add this update's log-odds of every compared head, and the compared norm, to the baselines
        (each the last ``baseline_updates``: a slice from ``-keep`` of a shorter list deletes nothing)."""
        keep = self.config.baseline_updates
        ignore = self._ignore
        own_norms, own_odds, log = run.norms, run.odds, math.log
        for name, value in norms.items():
            if value is None or not 0.0 < value < _INF or name in ignore:
                continue
            own = own_norms.get(name)
            if own is None:
                own = own_norms[name] = []
            own.append(log(value))
            del own[:-keep]
            share = value * value / squares
            if not 0.0 < share < 1.0:  # 1: the only head; 0 or NaN: a square that under- or overflowed
                continue
            history = own_odds.get(name)
            if history is None:
                history = own_odds[name] = []
            history.append(log(share / (1.0 - share)))
            del history[:-keep]
        scale = run.scale
        scale.append(log(math.sqrt(squares)))
        del scale[:-keep]

    def extra_state(self) -> dict[str, Any]:
        return {"runs": [[run_id, rank, run.odds, run.scale, run.norms] for (run_id, rank), run in self._runs.items()]}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self._runs = Capped()
        for run_id, rank, odds, scale, norms in state.get("runs", []):
            run = _Run.__new__(_Run)
            run.dominance = "\x1f".join([run_id, str(rank), "dominance"])
            run.dead = {}
            run.odds = {name: list(values) for name, values in odds.items()}
            run.scale = list(scale)
            run.norms = {name: list(values) for name, values in norms.items()}
            self._runs[(run_id, int(rank))] = run
