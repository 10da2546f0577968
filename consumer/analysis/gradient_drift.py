"""gradient_drift: the seed plan's EMA drift check, per (run, rank), on the total norm and per head."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from pydantic import Field, model_validator

from simic.schemas.models import Alert, Event

from ._rise import Rise, RiseLimits
from ._rule import Capped, Rule, RuleConfig, register, subject_key
from ._ema import Ema, GradientEMATracker, relative_drift

_INF = math.inf


class GradientDriftConfig(RuleConfig):
    momentum: float = Field(0.9, gt=0, lt=1)
    """EMA momentum, for the total and every head: 0.9, a memory of about 10 updates. The seed plan
    uses 0.99 (about 100 updates), but a PPO policy's gradient norms legitimately grow 2-4x over the
    tens of updates in which it learns, which a 100-update average reads as drift: on the reference
    trainer's healthy runs 0.99 raised 6 to 10 alerts per 100 updates (``docs/DETECTION.md``).
    Set 0.99 (and ``drift_threshold`` 0.5, ``warmup`` 0, ``fire_after`` 1) for the seed plan's rule."""
    drift_threshold: float = Field(1.0, gt=0)
    """Relative growth of a norm ``(x - ema) / ema`` above which an update drifts: 1.0, a norm more
    than twice its recent average. The seed plan's 0.5 sits inside the noise of one minibatch's
    per-head norm, which varies by about +-50% from update to update in healthy runs. (A norm
    collapsing towards 0 is ``gradient_scale``'s and ``head_balance``'s to report.)"""
    health_drift_threshold: float = Field(0.5, gt=0)
    """Relative drift of grad health above which an update drifts: the seed plan's 0.5. Health is
    the share of learning heads, which does not fluctuate in a healthy run, so the seed value holds:
    losing half of the heads' gradients is a drift."""
    warmup: int = Field(30, ge=0)
    """Updates (30) averaged with equal weights before drift is judged; the EMAs then start from that
    average. A PPO run's gradient norms move most in its first tens of updates, while the value
    function fits the returns and the policy leaves uniform: on the reference trainer's healthy
    seeds single heads grow 2-4x between updates 10 and 25, which a judge starting at update 11
    reported as drift, and on SB3's RecurrentPPO (a memory task) the total norm of a healthy run rose
    6x between updates 10 and 22, as the policy found the task. Faults in the first 30 updates are
    left to ``gradient_scale`` and ``head_balance``. And seeded by its first sample, a 0.99 EMA is still mostly that one sample
    ten updates later. 0 gives the seed plan's behaviour: seeded by the first update, judged from
    the second."""
    vanishing_floor: float = Field(1e-8, ge=0)
    """A head whose norm is at or below this is not healthy (1e-8 moves no float32 weight)."""
    per_head: bool = True
    """Also judge each head's norm, with an alert per head (the judge below, not the EMA)."""
    head_rise: float = Field(1.6, gt=1)
    """A head's norm has drifted when it is more than 1.6 times its recent level (the median of its
    last 10 usual updates, in log), *and* ``head_noise_z`` times its own jitter above it, *and*
    above the highest of its last 24 usual updates (:mod:`._rise`). Per head, not the total's EMA: a small
    head's norm (an RMS over an update's minibatches) swings 2x between healthy updates on some
    trainers and 20% on others, and on SB3's RecurrentPPO a learned head's gradient jumps between
    about 0.003 and 0.12 from one update to the next. Its own history says what is usual. After
    ``warmup`` updates; values that drifted stay out of the usual."""
    head_noise_z: float = Field(3.5, gt=0)
    """Jitters (3.5) above the level: the robust spread of the head's update-to-update changes over its
    last 24 usual updates (1.4826 x their MAD over the square root of 2, in log), at least ``head_min_spread``."""
    head_new_high: float = Field(1.0, ge=1)
    """...and above 1.0 times the highest of its last 24 usual updates (a head swinging between two
    levels does not drift by swinging back up)."""
    head_min_spread: float = Field(0.05, ge=0)
    """The jitter counts as at least 0.05 in log (5%)."""
    head_jump: float = Field(5.0, gt=1)
    """A head drifting for ``head_jump_after`` updates in a row, at least 5 times its usual level on
    each, fires: a step change (a loss term or a layer scaled). Below that, a head that rose and holds
    its new level is what a healthy run's learning looks like on some trainers: on SB3's
    RecurrentPPO (a memory task) the value head and a small action head went 2-4.5x their usual
    together and stayed 2-3x for five updates when the policy found the task."""
    head_jump_after: int = Field(2, ge=1)
    """Updates in a row (2) at ``head_jump`` times the usual that fire."""
    head_fire_after: int = Field(3, ge=1)
    """Or: drifting updates in a row (3) whose last is the highest of them and ``head_growth``
    times the first: a norm that keeps growing. A healthy surge jumps and then holds or falls back;
    a slow drift (1.25x per update, 1.56x over two) is still growing when it has drifted three
    times. On the recorded runs of the three detection trainers this fires on a head growing 1.25x
    per update 3 to 4 updates after onset, on one scaled 10x on the second update (``head_jump``),
    and on no healthy run (``docs/DETECTION.md``). The limit of the judge: a head that jumps 2-5x and
    holds its new level with noise fires when the noise happens to look like growth (simulated, a
    level held for six updates with 20% noise: in 14-57% of cases), and a slow drift under that much
    noise is found within 5 updates in 3 of 4."""
    head_growth: float = Field(1.25, ge=1)
    """The growth (1.25x) from the first to the last of the ``head_fire_after`` drifting updates."""
    total_jump: float = Field(5.0, gt=1)
    """The total's drifting updates (``fire_after`` of the last ``fire_window``) fire when they are a
    jump: each at least 5 times the EMA before the first of them (a loss term or a layer scaled), as
    ``head_jump`` for a head. Or when they keep growing (``total_growth``). Below that, a total that
    surged and holds or falls back is what a healthy run shows on some trainers: on SB3's
    RecurrentPPO a healthy run's total went from about 0.6 to 2.4-2.6 (3.7-4x its EMA) for three
    updates at update 70 and was back at 0.9 two updates later, its heads hardly moved. A shift that
    holds at 10x is ``gradient_scale``'s. With ``fire_after`` 1 (the seed plan's rule) one drifting
    update has no shape to judge and fires on its own.

    A total back at its usual (at or below the EMA before the first of its drifting updates) ends them:
    they count no more, for the jump, the growth or ``fire_after``. What a fault does holds (a scaled
    term stays scaled, a drift keeps growing); spikes come back between them. On SB3's RecurrentPPO the
    LSTM's gradient through time spikes the total 5-10x on single updates, its heads unmoved: a healthy
    run went 5.7, 4.9, 0.57 and 6.8 on four updates against an EMA of 0.66 before them, three drifting
    updates of four each over 5x, with one back at its usual between them. An update between drifting
    ones that stays above the usual (a noisy step of a slow drift) still bridges them, as ``fire_window``
    says."""
    total_growth: float = Field(1.25, ge=1)
    """Or: the last of the total's drifting updates in the window is the highest of them and 1.25
    times the first (a norm still growing, as ``head_growth`` for a head: 1.25x per update gives
    1.56x over three)."""
    fire_after: int = Field(3, ge=1)
    """For the total and grad health: three drifting updates within the last ``fire_window`` fire: single noisy minibatches are common
    in PPO, a lasting shift is not (the seed plan fired on one; on real runs that is a false alarm
    every few hundred updates). The total's drifting updates must also be a jump or growth
    (``total_jump``, ``total_growth``); a fall in grad health needs no shape."""
    fire_window: int = Field(4, ge=1)
    """The updates ``fire_after`` counts over: 4. A norm that grows steadily drifts on most updates
    but not all (one quiet minibatch in between would restart a count of updates *in a row*, which
    cost the reference trainer's slow-drift fault a sixth update); three of four still ignores the
    isolated spikes of healthy runs. ``fire_window = fire_after`` means in a row."""
    clear_after: int = Field(5, ge=1)
    """Five updates in a row without ``fire_after`` drifting ones in the window clear it."""

    @model_validator(mode="after")
    def _window_holds_the_count(self) -> "GradientDriftConfig":
        if self.fire_window < self.fire_after:
            raise ValueError(f"fire_window ({self.fire_window}) must be at least fire_after ({self.fire_after})")
        return self


@dataclass(frozen=True, slots=True)
class HeadJudgement:
    """One head's norm at one update, as the rule judged it (what the report draws, see :meth:`GradientDrift.trace`)."""

    run_id: str
    rank: int
    step: int
    head: str
    norm: float
    baseline: float | None
    """What the norm was compared with: the head's usual level before this update (the median of its last
    usual updates); None for the head's first update."""
    limit: float | None
    """The norm above which this update drifted (the highest of the rise over the level, the jitter's limit and
    the recent highest); None during the warmup."""
    drifted: bool
    """The rule judged this update drifting (the norm above ``limit``)."""
    firing: bool
    """The head's drift condition is active after this update: its alert fired and has not cleared."""


class _Run:
    __slots__ = ("norm", "health", "updates", "heads", "streaks", "subject", "head_subjects", "recent", "surge")

    def __init__(self, norm: Ema, health: Ema, subject: str) -> None:
        self.norm = norm  # the total norm's EMA
        self.health = health  # grad health's EMA
        self.updates = 0  # updates with a total folded into them (the seed tracker's update_count)
        self.heads: dict[str, Rise] = {}  # head -> its norm's recent history
        self.streaks: dict[str, list[float]] = {}  # head -> its rises (log) over its usual, of the drifting updates in a row up to now
        self.subject = subject
        self.head_subjects: dict[str, str] = {}
        self.recent = 0  # the total's last fire_window judgements, one bit each (1: drifted), newest lowest
        self.surge: list[tuple[int, float, float]] = []  # the total's drifting updates in the window: (update, norm, EMA before)


def _sustained(recent: int, bad: bool, window: int, count: int) -> tuple[int, bool]:
    """Shift one judgement into ``recent``; True when ``count`` of the last ``window`` drifted."""
    recent = ((recent << 1) | bad) & ((1 << window) - 1)
    return recent, recent.bit_count() >= count


@register
class GradientDrift(Rule):
    """The gradient norm (or its health) moving away from its own recent average.

    Per (run, rank), an EMA (:class:`~simic.consumer.analysis._ema.Ema`) follows the total norm and
    another the *grad health* of every ``head_grad_norms`` update, with the seed plan's formula (drift
    ``|x - ema| / ema`` against the EMA before the update), and each head's norm is judged against its
    own recent history (level, jitter and recent highest, ``head_*`` settings; a slow drift of one head
    shows there long before it moves the total). Grad health is
    the share of the heads named in the event whose norm is finite and above ``vanishing_floor``
    (a head sent as None, without a gradient, counts as unhealthy): 1.0 when every head learns,
    0.8 when one of five died or went non-finite. An event without per-head norms leaves the health
    EMA where it is. A drifting norm is the earliest sign of a learning-rate or reward-scale problem
    and of a head starting to take over; falling health is a head dying.

    Only pre-clip measurements are used (an event with ``stage = "post_clip"`` is skipped: clipping
    hides exactly the drift looked for). Non-finite values are left out of the EMAs (the
    ``non_finite`` rule alerts on them); an unhealthy head is left out of its own EMA (``head_balance``
    reports dead heads) but lowers grad health. No flapping: the first ``warmup`` updates only
    set the EMAs (their mean seeds them) and the heads' histories, then ``fire_after`` drifting updates
    of the last ``fire_window`` fire (a head: a jump held ``head_jump_after`` updates, or
    ``head_fire_after`` drifting updates in a row still growing) and ``clear_after`` quiet ones clear.
    The total's drifting updates have the same two shapes: each at ``total_jump`` times the EMA before
    the first, or the last the highest and ``total_growth`` times the first. A surge that holds or
    falls back, below ``total_jump``, does not fire (nor does a head's), and a total back at or below
    the EMA before its drifting updates ends them (spikes come back between them, a fault holds); a
    fall in grad health fires on its count alone.
    """

    name = "gradient_drift"
    Config = GradientDriftConfig
    kinds = frozenset({"head_grad_norms"})
    per_update = True

    def __init__(self, config: GradientDriftConfig, alerts) -> None:
        super().__init__(config, alerts)
        self._runs: dict[tuple[str, int], _Run] = Capped()
        self._head_limits = RiseLimits(config.head_rise, config.head_noise_z, config.head_new_high, config.head_min_spread,
                                       baseline=10, spread=24, warmup=config.warmup)
        self._trace: Callable[[HeadJudgement], None] | None = None

    def trace(self, listener: Callable[[HeadJudgement], None] | None) -> None:
        """Call ``listener`` with every head's judgement (a valid norm, ``per_head`` on), as it is made;
        None stops it. The report draws these, so what it marks is what the rule saw."""
        self._trace = listener

    def _ema(self) -> Ema:
        return Ema(self.config.momentum, self.config.warmup)

    def check(self, event: Event, now_ns: int) -> list[Alert] | None:
        """The heads first (counting the healthy ones), then the total norm and grad health."""
        if event.kind != "head_grad_norms" or event.stage == "post_clip":
            return None
        run = self._runs.get((event.run_id, event.rank))
        if run is None:
            run = self._runs[(event.run_id, event.rank)] = _Run(self._ema(), self._ema(), subject_key(event, "total"))
        healthy, head_alerts = self._check_heads(run, event)
        total = event.total
        if total is None or not 0.0 <= total < _INF:
            return head_alerts
        norms = event.norms
        health = healthy / len(norms) if norms else self._health_level(run)
        alert = self._check_total(run, event, total, health)
        if alert:
            return [alert] + (head_alerts or [])
        return head_alerts

    # -- per head -----------------------------------------------------------------------------------

    def _check_heads(self, run: _Run, event: Event) -> tuple[int, list[Alert] | None]:
        """Each healthy head's norm against its own history (:mod:`._rise`). Returns how many heads are
        healthy (finite, above ``vanishing_floor``) and the heads' alerts; an unhealthy head is left out of
        its own history.

        The usual head (it did not drift, no condition of the rule is open, nobody traces) is judged and kept
        here, inline: this runs for every head of every update. The others go to :meth:`_judge_head`."""
        config = self.config
        floor, per_head, limits = config.vanishing_floor, config.per_head, self._head_limits
        conditions, tracing = self._conditions, self._trace is not None
        healthy = 0
        alerts: list[Alert] | None = None
        norms = event.norms
        heads, streaks, log = run.heads, run.streaks, math.log
        for name, value in norms.items():
            if value is None or not floor < value < _INF:
                if streaks:
                    streaks.pop(name, None)  # drifting updates "in a row" are consecutive updates of the head
                continue  # unhealthy: lowers grad health, left out of the head's own history
            healthy += 1
            if not per_head:
                continue
            rise = heads.get(name)
            if rise is None:
                rise = heads[name] = Rise()
            x = log(value)
            drifted, by = rise.judge(x, limits)
            if not (drifted or conditions or tracing):  # the healthy path
                rise.keep(x, limits)
                if streaks:
                    streaks.pop(name, None)
                continue
            alert = self._judge_head(event, run, name, value, rise, x, drifted, by)
            if alert:
                alerts = (alerts or []) + [alert]
        if streaks:
            for name in [name for name in streaks if name not in norms]:  # a head this update did not measure
                del streaks[name]
        return healthy, alerts

    def _judge_head(self, event: Event, run: _Run, name: str, value: float, rise: Rise, x: float, drifted: bool,
                    by: float) -> Alert | None:
        """What one head's judgement (``rise.judge`` of ``x``, the log of its norm ``value``: ``drifted``, and ``by``
        how much over its usual) means: keeping ``x`` in its history, its condition, its trace. A drift fires
        when it is a jump (``head_jump_after`` updates at ``head_jump`` times the usual) or keeps growing
        (``head_fire_after`` drifting updates, the last the highest); once firing, any drifting update keeps it active."""
        limits = self._head_limits
        level_limit = rise.level_and_limit(limits) if self._trace is not None else None
        if not drifted:
            rise.keep(x, limits)
            run.streaks.pop(name, None)
        subject = run.head_subjects.get(name)
        if subject is None and (drifted or self._conditions):  # (not cached after a checkpoint is loaded)
            subject = run.head_subjects[name] = subject_key(event, "head", name)
        if not (drifted or subject in self._conditions):
            if level_limit is not None:
                self._traced(event, name, value, level_limit, False, False)
            return None
        sustained = self._sustained_drift(run, name, by) if drifted else False
        bad = drifted and (sustained or self.is_active(subject))
        config = self.config
        usual = value / math.exp(by)
        alert = self.observe(
            event,
            subject,
            bad,
            lambda: f"head {name!r} gradient drift at step {event.step}: norm {value:.4g} is {math.exp(by):.3g}x its usual "
            f"{usual:.4g} ({self._shape(run, name)}; threshold {config.head_rise}x, {config.head_noise_z} jitters and its recent highest)",
            lambda: {"head": name, "norm": value, "usual_norm": usual, "factor": math.exp(by), "head_rise": config.head_rise},
            clear_message=lambda: f"head {name!r} gradient drift over at step {event.step}: norm {value:.4g}",
            fire_after=1,
        )
        if level_limit is not None:
            self._traced(event, name, value, level_limit, drifted, self.is_active(subject))
        return alert

    def _sustained_drift(self, run: _Run, name: str, by: float) -> bool:
        """Add this drifting update's rise to the head's streak; True when the streak is a jump or still growing."""
        config = self.config
        streak = run.streaks.setdefault(name, [])
        streak.append(by)
        del streak[:-max(config.head_jump_after, config.head_fire_after)]
        if self._is_jump(streak):
            return True
        growth = streak[-config.head_fire_after:]
        return len(growth) == config.head_fire_after and growth[-1] == max(growth) and growth[-1] - growth[0] >= math.log(config.head_growth)

    def _is_jump(self, streak: list[float]) -> bool:
        """The last ``head_jump_after`` drifting updates all at ``head_jump`` times the usual or more."""
        after = self.config.head_jump_after
        return len(streak) >= after and min(streak[-after:]) >= math.log(self.config.head_jump)

    def _shape(self, run: _Run, name: str) -> str:
        config = self.config
        streak = run.streaks.get(name, [])
        if self._is_jump(streak):
            return f"{config.head_jump_after} updates at {config.head_jump:g}x or more"
        return f"growing for {config.head_fire_after} updates: " + ", ".join(f"{math.exp(b):.3g}x" for b in streak[-config.head_fire_after:])

    def _traced(self, event: Event, name: str, value: float, level_limit: tuple[float | None, float | None],
                drifted: bool, firing: bool) -> None:
        level, limit = level_limit
        self._trace(HeadJudgement(event.run_id, event.rank, event.step, name, value,
                                  None if level is None else math.exp(level), None if limit is None else math.exp(limit),
                                  drifted, firing))

    # -- the total and grad health ------------------------------------------------------------------

    @staticmethod
    def _health_level(run: _Run) -> float:
        """Grad health of an update without per-head norms (no news about health; with them it is the share of
        healthy heads): the health EMA's level (the warmup's mean while it lasts), 1.0 before any."""
        level = run.health.level
        return 1.0 if level is None else level

    def _check_total(self, run: _Run, event: Event, total: float, health: float) -> Alert | None:
        """The total norm and grad health against their EMAs: ``fire_after`` drifting updates of the last
        ``fire_window`` fire."""
        run.updates += 1
        norm_before = run.norm.add(total)
        health_before = run.health.add(health)
        if norm_before is None or health_before is None:
            return None  # warming up: the EMAs start from the warmup's means, not from its first sample
        config = self.config
        threshold, health_threshold = config.drift_threshold, config.health_drift_threshold
        # The norm's drift counts when it grows (a fading one is gradient_scale's).
        norm_drifted = total > norm_before and relative_drift(total, norm_before) > threshold
        health_drift = relative_drift(health, health_before)
        health_drifted = health_drift > health_threshold
        drifted = norm_drifted or health_drifted
        if not (drifted or run.recent or run.subject in self._conditions):
            return None  # the healthy path
        norm_drift = relative_drift(total, norm_before)
        surge = run.surge
        while surge and surge[0][0] <= run.updates - config.fire_window:
            del surge[0]
        if surge and not drifted and total <= surge[0][2]:
            run.recent = 0  # back at its usual, the EMA before the surge: what drifted were spikes, and they count no more
            surge.clear()
        run.recent, sustained = _sustained(run.recent, drifted, config.fire_window, config.fire_after)
        if norm_drifted:
            surge.append((run.updates, total, norm_before))
        bad = sustained and (config.fire_after == 1 or health_drifted or self._surge_shape(surge) is not None
                             or self.is_active(run.subject))
        if not (bad or run.subject in self._conditions):
            return None
        ema_norm, ema_health = run.norm.value, run.health.value
        return self.observe(
            event,
            run.subject,
            bad,
            lambda: f"gradient drift at step {event.step}: total norm {total:.4g} vs EMA {ema_norm:.4g} "
            f"(drift {norm_drift:.2f}{self._surge_shape(surge) or ''}), grad health {health:.2f} vs EMA {ema_health:.2f} "
            f"(drift {health_drift:.2f}); thresholds {threshold} and {health_threshold}",
            {
                "total": total,
                "ema_grad_norm": ema_norm,
                "norm_drift": norm_drift,
                "grad_health": health,
                "ema_grad_health": ema_health,
                "health_drift": health_drift,
                "drift_threshold": threshold,
                "health_drift_threshold": health_threshold,
            },
            clear_message=f"gradient drift over at step {event.step}: total norm {total:.4g}, grad health {health:.2f}",
            fire_after=1,
        )

    def _surge_shape(self, surge: list[tuple[int, float, float]]) -> str | None:
        """How the total's drifting updates of the window fire, as the message adds it ("; ..."): a jump (each at
        ``total_jump`` times the EMA before the first) or growth (the last the highest, ``total_growth``
        times the first); None for a surge that holds or falls back."""
        if not surge:
            return None
        config = self.config
        norms = [norm for _, norm, _ in surge]
        before = surge[0][2]
        if min(norms) >= config.total_jump * before:
            return f"; {len(norms)} drifting updates at {config.total_jump:g}x or more the EMA before them"
        if len(norms) > 1 and norms[-1] == max(norms) and norms[-1] >= config.total_growth * norms[0]:
            return "; growing: " + ", ".join(f"{norm:.3g}" for norm in norms)
        return None

    # -- state (the format of the first checkpoints) -------------------------------------------------

    def extra_state(self) -> dict[str, Any]:
        return {
            run.subject: {
                "run_id": run_id,
                "rank": rank,
                "warmup": self._warmup_state(run),
                "total": self._total_state(run),
                "recent": run.recent,
                "surge": [list(drift) for drift in run.surge],
                "heads": {name: rise.state() for name, rise in run.heads.items()},
                "streaks": {name: list(streak) for name, streak in run.streaks.items()},
            }
            for (run_id, rank), run in self._runs.items()
        }

    def _warmup_state(self, run: _Run) -> list[Any]:
        """``[mean total, mean health, updates]`` of the warmup (kept as they were once it is over)."""
        counted = min(run.norm.count, self.config.warmup)
        return [run.norm.mean, run.health.mean, counted] if counted else [0.0, 0.0, 0]

    @staticmethod
    def _total_state(run: _Run) -> dict[str, Any]:
        """The total's EMAs in the seed tracker's ``state_dict`` form."""
        tracker = GradientEMATracker()
        if run.norm.value is not None:
            tracker.load_state_dict({"ema_norm": run.norm.value, "ema_health": run.health.value, "initialized": True,
                                     "update_count": run.updates})
        return tracker.state_dict()

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self._runs = Capped()
        for subject, saved in state.items():
            run = self._runs[(saved["run_id"], int(saved["rank"]))] = _Run(self._ema(), self._ema(), subject)
            mean_norm, mean_health, counted = saved["warmup"]
            total = saved["total"]
            run.updates = int(total["update_count"]) if total["initialized"] else int(counted)
            for ema, mean, value in ((run.norm, mean_norm, total["ema_norm"]), (run.health, mean_health, total["ema_health"])):
                ema.mean = float(mean)
                if total["initialized"]:
                    ema.value, ema.count = float(value), ema.warmup
                else:
                    ema.count = int(counted)
            run.recent = int(saved.get("recent", 0))
            run.surge = [(int(update), float(norm), float(before)) for update, norm, before in saved.get("surge", [])]
            # A head saved in the earlier form (an EMA: three numbers) starts anew.
            run.heads = {name: Rise.from_state(kept) for name, kept in saved["heads"].items()
                         if len(kept) == 2 and isinstance(kept[0], list)}
            run.streaks = {name: [float(b) for b in streak] for name, streak in saved.get("streaks", {}).items() if name in run.heads}
