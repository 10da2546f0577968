"""update_ratio: the optimizer's effective step size (or its own learning rate) rising above what the logged learning rate explains."""

from __future__ import annotations

import math
from typing import Any, Callable

from pydantic import Field, model_validator

from simic.schemas.models import Alert, Event

from ._rise import Rise, RiseLimits
from ._rule import Capped, Rule, RuleConfig, register

_INF = math.inf


class UpdateRatioConfig(RuleConfig):
    rise: float = Field(1.2, gt=1)
    """The update-to-weight ratio (``param_updates.total_ratio``: the norm of what an optimizer step
    changed over the norm of the parameters), divided by the learning rate the trainer logs
    (``ppo_update.learning_rate``, when it sends one), more than 1.2 times its recent level (the
    median of the last ``baseline_updates`` updates) is a step size the schedule does not explain: a
    learning rate that is not what the trainer says, optimizer state gone wrong. Under Adam the ratio
    follows the learning rate (it drifts down slowly as a run trains: about 3% per update on the
    recurrent reference trainer), whatever the gradient's scale."""
    step_rise: float = Field(2.0, gt=1)
    """The same for the step size of an update whose optimizer's own learning rate is judged too
    (``optimizer_rate``, and the event carries it), which is what finds a rate the log does not show: the step size is then
    the evidence for what moves the step with the rate unchanged (optimizer state gone wrong), and
    is judged against a rise of 2x. A healthy run's step swings further than the rate does: on the
    recorded detection runs it rose 1.74x its recent level for two updates on SB3's RecurrentPPO,
    and 1.31x on the reference trainer at its last update, where the annealed rate is 1% of its
    start. Where the step size is the only evidence (``optimizer_rate = false``, or no rate to compare)
    ``rise`` applies."""
    noise_z: float = Field(3.5, gt=0)
    """...and more than 3.5 times the ratio's own jitter: the robust spread of its update-to-update
    changes (1.4826 x their MAD, over the last ``spread_updates``, divided by the square root of 2),
    at least ``min_spread``. Changes, not levels: the level trends while a run trains, its changes
    stay small (5-9% per update on the feed-forward and reference trainers, about 15% on SB3's
    RecurrentPPO)."""
    new_high: float = Field(1.05, ge=1)
    """...and more than 1.05 times the highest of the last ``spread_updates`` usual values: a ratio
    that swings does not rise by swinging back (:mod:`simic.consumer.analysis._rise`). Without it,
    SB3's RecurrentPPO (whose ratio jitters 15% per update) raised 2 alerts in 15 healthy runs; with
    it, none, and so do the neighbouring settings (rise 1.2-1.3, 3-4 jitters)."""
    min_spread: float = Field(0.03, ge=0)
    """The jitter counts as at least 0.03 in log (3%)."""
    baseline_updates: int = Field(10, ge=2)
    """Updates (10) whose median is the recent level: short, so the level follows the run's own slow trend."""
    spread_updates: int = Field(24, ge=4)
    """Updates (24) whose changes set the jitter."""
    warmup: int = Field(10, ge=1)
    """Updates (10) before it is judged."""
    fire_after: int = Field(2, ge=1)
    """Updates in a row (2): one update whose step was large can be one odd batch."""
    clear_after: int = Field(3, ge=1)
    """Updates in a row back within the limits before it clears."""
    optimizer_rate: bool = True
    """Also judge the learning rate the optimizer itself used (``param_updates.learning_rate``, read at
    its step) over the one the trainer logs (``ppo_update.learning_rate``), on a log scale, with the
    same judge and limits: the two differ by a constant in a healthy run (0 when the log is the
    optimizer's rate; a per-group rate or a scheduler that steps per minibatch is its own constant),
    so a rise of their ratio is a rate the log does not show, and it is seen at its first updates,
    before the step it makes stands out of the step size's jitter (a rate x1.15 per update: 2
    updates, where the step size took 5 to 7). False: the step size alone (a fault in the
    optimizer's state, not its rate, shows only there)."""


    @model_validator(mode="after")
    def _step_rise_is_the_looser(self) -> "UpdateRatioConfig":
        if self.step_rise < self.rise:
            raise ValueError(f"step_rise ({self.step_rise}) must be at least rise ({self.rise})")
        return self


class _Run:
    __slots__ = ("rise", "learning_rate", "rate")

    def __init__(self) -> None:
        self.rise = Rise()  # log(total_ratio / logged learning rate) of the last good updates
        self.learning_rate: float | None = None  # the learning rate the trainer logged last
        self.rate = Rise()  # log(optimizer's learning rate / logged learning rate) of the last good updates


@register
class UpdateRatio(Rule):
    """The effective step size of the optimizer rising above what the logged learning rate explains.

    Per (run, rank), one value per update (the ``param_updates`` events of a step combined, their
    RMS): ``total_ratio`` divided by the last ``learning_rate`` the run's ``ppo_update`` logged (so a
    schedule that warms up or anneals is not a fault; without one, the ratio itself), on a log scale.
    Above ``rise`` times its recent level *and* ``noise_z`` times its jitter *and* ``new_high`` times
    its recent highest (the judge of :mod:`._rise`), after ``warmup`` updates, for
    ``fire_after`` updates in a row, fires; values of a firing condition stay out of the usual. This
    is what shows a learning rate that grows while the trainer reports the scheduled one (a broken
    schedule, a scaler or optimizer state gone wrong): gradient norms do not show it under Adam,
    and KL and clip fraction only once the policy is already moving too fast. Missing, zero and
    non-finite ratios are not observed (``non_finite`` reports NaN).

    With ``optimizer_rate`` (the default), when ``param_updates`` carries the learning rate the
    optimizer used and the run logs one, their ratio is judged the same way (its own subject,
    ``rate``): the direct evidence of a rate the log does not show. The step size stays judged on
    its own, for what moves the step with the rate unchanged. Why both: the step size of a healthy
    run swings as the policy learns (on SB3's RecurrentPPO its ratio rose 1.6-1.8x over 3 to 6
    updates in healthy runs, a return to its earlier highs), so a rate growing 1.15x per update is
    told from learning only once the step leaves the run's recent range (5 to 7 updates on the
    benchmark's trainers); the optimizer's rate over the logged one is constant in a healthy run.
    """

    name = "update_ratio"
    Config = UpdateRatioConfig
    kinds = frozenset({"param_updates", "ppo_update"})
    per_update = True

    def __init__(self, config: UpdateRatioConfig, alerts) -> None:
        super().__init__(config, alerts)
        self._runs: dict[tuple[str, int], _Run] = Capped()
        self._limits = RiseLimits(config.rise, config.noise_z, config.new_high, config.min_spread,
                                  config.baseline_updates, config.spread_updates, config.warmup)
        self._step_limits = self._limits._replace(rise=config.step_rise)

    def check(self, event: Event, now_ns: int) -> list[Alert] | None:
        run = self._runs.get((event.run_id, event.rank))
        if run is None:
            run = self._runs[(event.run_id, event.rank)] = _Run()
        if event.kind == "ppo_update":
            lr = event.learning_rate
            if lr is not None and 0.0 < lr < _INF:
                run.learning_rate = lr
            return None
        share = self._rate_share(event, run) if self.config.optimizer_rate else None
        fired = [self._rate(event, run, share), self._step_size(event, run, share)]
        return [alert for alert in fired if alert is not None] or None

    @staticmethod
    def _rate_share(event: Event, run: _Run) -> float | None:
        """The optimizer's learning rate over the logged one, when both are there and it can be judged."""
        used, logged = event.learning_rate, run.learning_rate
        if used is None or logged is None or not 0.0 < used < _INF:
            return None
        share = used / logged
        return share if 0.0 < share < _INF else None

    def _rate(self, event: Event, run: _Run, share: float | None) -> Alert | None:
        """The optimizer's learning rate over the logged one (``share``) rising (subject ``rate``)."""
        if share is None:
            return None
        used, logged = event.learning_rate, run.learning_rate
        return self._judged(
            event, run.rate, share, "rate", self._limits,
            lambda factor: f"the optimizer's learning rate {used:.3g} is {factor:.3g}x its usual share of the logged rate "
            f"{logged:.3g} at step {event.step}",
            lambda factor: {"optimizer_learning_rate": used, "learning_rate": logged, "factor": factor, "rise": self.config.rise},
            lambda factor: f"the optimizer's learning rate is back near its usual share of the logged rate at step {event.step} ({factor:.3g}x)",
        )

    def _step_size(self, event: Event, run: _Run, share: float | None) -> Alert | None:
        """The step size over the logged learning rate rising (subject ``step_size``)."""
        ratio = event.total_ratio
        # The rate is judged on this update (the event carries a usable rate) and past its warm-up: the step
        # size then stands for what the rate does not show; otherwise it is the only evidence.
        rate_judged = share is not None and run.rate.seen > self.config.warmup
        limits = self._step_limits if rate_judged else self._limits
        if ratio is None or not 0.0 < ratio < _INF:
            return None
        return self._judged(
            event, run.rise, ratio / run.learning_rate if run.learning_rate else ratio, "step_size", limits,
            lambda factor: f"the optimizer's step is {factor:.3g}x its usual size for the logged learning rate at step "
            f"{event.step} (update-to-weight ratio {ratio:.3g})",
            lambda factor: {"total_ratio": ratio, "factor": factor, "learning_rate": run.learning_rate, "rise": limits.rise},
            lambda factor: f"the optimizer's step is back near its usual size at step {event.step} ({factor:.3g}x)",
        )

    def _judged(self, event: Event, series: Rise, relative: float, what: str, limits: RiseLimits,
                message: Callable[[float], str], values: Callable[[float], dict[str, Any]], cleared: Callable[[float], str]) -> Alert | None:
        """``relative`` (a positive ratio) judged on a log scale against ``series`` (:mod:`._rise`), as subject ``what``;
        kept in the series unless it rose or its condition is active."""
        if not 0.0 < relative < _INF:  # under- or overflowed: nothing to compare
            return None
        x = math.log(relative)
        bad, rise = series.judge(x, limits)
        subject = self.watched(event, bad, what)
        alert = None
        if subject is not None:
            factor = math.exp(rise) if rise < 700.0 else _INF
            alert = self.observe(
                event, subject, bad,
                lambda: f"{message(factor)} for {self.config.fire_after} updates: the effective learning rate is not the one the trainer reports",
                lambda: values(factor),
                clear_message=lambda: cleared(factor),
            )
        if not (bad or (subject is not None and self.is_active(subject))):
            series.keep(x, limits)
        return alert

    def extra_state(self) -> dict[str, Any]:
        return {"runs": [[run_id, rank, run.rise.state(), run.learning_rate, run.rate.state()]
                         for (run_id, rank), run in self._runs.items()]}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self._runs = Capped()
        for run_id, rank, rise, learning_rate, *rate in state.get("runs", []):
            run = self._runs[(run_id, int(rank))] = _Run()
            if isinstance(rise, list) and len(rise) == 2 and isinstance(rise[0], list):
                run.rise = Rise.from_state(rise)  # (a checkpoint of the earlier form, a bare list, starts anew)
            run.learning_rate = None if learning_rate is None else float(learning_rate)
            if rate and isinstance(rate[0], list) and len(rate[0]) == 2:
                run.rate = Rise.from_state(rate[0])  # (a checkpoint from before the rate was judged starts it anew)
