"""step_time: a phase of the training step getting slower than its own baseline."""

from __future__ import annotations

import math
from bisect import bisect_left, insort
from statistics import median
from typing import Any

from pydantic import Field

from simic.schemas.models import Alert, Event

from ._rule import Capped, Rule, RuleConfig, Severity, register, subject_key
from ._ema import Ema
from ._support import ordered_median

_INF = math.inf


class StepTimeConfig(RuleConfig):
    regression_factor: float = Field(1.5, gt=1)
    """A phase taking more than this many times its baseline is slow: 1.5 is well outside the
    few-percent jitter of GPU-timed phases, and a 50% slower step is worth knowing about (a
    thermal throttle, a data-loader stall, a host-device sync someone added)."""
    momentum: float = Field(0.99, gt=0, lt=1)
    """Baseline EMA momentum, 0.99: a slow baseline (memory of about 100 steps) that follows gradual
    change (an episode length that grows with skill) but not a sudden one."""
    warmup: int = Field(10, ge=1)
    """Observations of a phase (10) before it is judged; the baseline starts at their median, because
    the first steps carry compilation, autotuning and allocator warm-up."""
    min_baseline_ms: float = Field(1.0, ge=0)
    """Phases whose baseline is below this are not judged: sub-millisecond host timings jitter by
    more than 1.5x from scheduling alone, and cost little either way."""
    noise_z: float = Field(4.0, gt=0)
    """...and only when the slowdown is more than 4 times the phase's own jitter (the robust spread of
    its log time over its last ``spread_window`` steps, at least ``min_spread``): host-timed phases on
    a busy machine swing by 30-70% from step to step, GPU-timed ones by a few percent, and a
    regression must stand out of the phase's own noise."""
    spread_window: int = Field(24, ge=4)
    """Recent steps (24) of a phase whose spread sets its jitter and whose median is its recent pace (half of them
    at a new time move it there: a phase that settles slower is followed in about 12 steps)."""
    min_spread: float = Field(0.05, ge=0)
    """The jitter counts as at least 0.05 (5%) in log time, so a very steady phase is not held to less."""
    machine_share: float = Field(1.2, gt=1)
    """A slow phase while every other phase of the step is at least 1.2x its baseline too is the
    machine's doing (measured under contention on a two-core machine: a host-bound rollout 2x, the
    update 1.3-1.5x at the same steps), not the trainer's: a phase that slows on its own leaves the
    others at their pace (an injected 250 ms in the update left the rollout at 0.98-1.1x)."""
    machine_factor: float = Field(2.0, gt=1)
    """When every phase of a step (two or more) is slower together (see ``machine_share``), it is the
    machine (another job on it, a throttled clock), not one part of the trainer: that is reported only
    beyond this factor (2.0, for the smallest of the phases' slowdowns), once, as the machine's, and
    only when it lasts (``machine_fire_after``). Below it, the slower times are the machine's new
    normal and join the baselines; beyond it, the baselines wait while it lasts. A contended two-core
    machine slowed every phase of healthy runs by about 1.5x."""
    machine_fire_after: int = Field(20, ge=1)
    """Steps in a row (20) every phase is beyond ``machine_factor`` together before the machine is
    reported. A short machine-wide slowdown is not a training fault, and an alert for it is a false
    alarm: on the shared two-core benchmark machine other jobs slowed every phase of healthy runs
    2.2-3.5x for 3 to 5 steps (a few seconds) at a time. A machine that stays that slow for 20 steps is
    worth knowing: the whole run takes that much longer."""
    machine_severity: Severity = "info"
    """Severity of the machine's report: a notice (the run is slower, nothing in it is wrong), where one
    phase slowing alone is the trainer's and a warning (``severity``)."""
    fire_after: int = Field(5, ge=1)
    """Steps in a row (5): a slow step or a few (a checkpoint save, a garbage collection, another job
    starting on the machine: host-timed rollouts of healthy runs on a shared two-core machine slowed
    1.6x for three steps) are not a regression; a lasting one is."""
    clear_after: int = Field(3, ge=1)
    """Steps in a row back under the factor before it clears."""


class _Phase:
    __slots__ = ("baseline", "subject", "recent", "ordered", "own")

    def __init__(self, baseline: Ema, subject: str, recent: list[float] | None = None, own: bool = False) -> None:
        self.baseline = baseline
        self.subject = subject
        self.recent: list[float] = recent if recent is not None else []  # log times of the last good steps
        self.ordered = sorted(self.recent)  # the same times in order: the median without a sort per step
        self.own = own  # its times have been own times (a wait for a CPU was known): one without cannot be judged

    def pace(self) -> float:
        """The median of the recent times (ms): where the phase has settled; 0.0 with fewer than 4 of them."""
        if len(self.recent) < 4:
            return 0.0
        return math.exp(ordered_median(self.ordered))

    def jitter(self, floor: float) -> float:
        """Robust spread (1.4826 x MAD) of the recent log times, at least ``floor``."""
        if len(self.recent) < 4:
            return max(floor, 0.1)
        mid = ordered_median(self.ordered)
        return max(floor, 1.4826 * median(abs(x - mid) for x in self.recent))

    def remember(self, ms: float, keep: int) -> None:
        if ms > 0.0:
            recent, ordered = self.recent, self.ordered
            value = math.log(ms)
            recent.append(value)
            insort(ordered, value)
            while len(recent) > keep:  # the oldest goes, from both
                del ordered[bisect_left(ordered, recent.pop(0))]


def _own(ms: float, wait: float | None) -> float | None:
    """A phase's time without its thread's wait for a CPU; None when the wait is not known (or not a
    part of the phase: negative, non-finite, or all of it)."""
    if wait is None or not 0.0 <= wait < ms:
        return None
    return ms - wait


def _waited(ms: float, own: float) -> str:
    return f"; {ms:.4g} ms in all, {ms - own:.4g} ms of it waiting for a CPU" if own != ms else ""


@register
class StepTime(Rule):
    """A phase of the training step (``step_timing.phases_ms``) getting slower than its own baseline.

    Per (run, rank, phase) the baseline is the higher of a slow EMA, seeded by the median of the first
    ``warmup`` observations, and the phase's recent pace, the median of its last ``spread_window`` kept
    times. A phase that settles slower without being slow (below the factor; in a recorded run a
    rollout went from 16 to 25 ms of its own time, waiting for no CPU) is judged against where it
    settled, not against its first steps, and so is the question whether every phase slowed together:
    one phase jumping while the others keep their recent pace is the trainer's, whatever their level
    against their first steps (held to its first steps, the settled rollout at 1.5x made the update's
    5x read as the machine). The EMA keeps a phase that ran faster for a stretch from being held to
    that stretch. A phase is slow above ``regression_factor`` x baseline *and* ``noise_z`` times its own
    jitter (the robust spread of its recent log times). One observation per step: the ``step_timing`` events of a step are combined first,
    their phases added up (one event per phase, or a phase timed twice, is one step). Where the
    producer sends how long a phase's thread waited, runnable, for a CPU (``wait_ms``: host-timed
    phases where the kernel says), the phase's time is its own time without that wait, for its
    baseline and its judgement alike: time other processes took from it is neither the phase's nor
    reported (once a phase's times are own times, a step that lacks its wait is not judged). When
    every phase of a step (two or more) is slow together, no phase is blamed: it is the machine, reported
    only beyond ``machine_factor`` for ``machine_fire_after`` steps in a row (as the machine's, phase
    ``"*"``, a ``machine_severity`` notice: the run is slower, nothing in it is wrong), and the
    baselines follow it (below ``machine_factor``) or wait (beyond it). Another job slowing the
    whole machine for a few steps is not reported: it is no fault of the run, and an alert for it
    would be a false alarm. A phase above ``regression_factor`` x baseline for ``fire_after`` steps in a row fires
    (the message says which clock measured it: ``cuda_event`` GPU time or ``cpu`` host time);
    ``clear_after`` steps back under it clear. Slow samples are not folded into the baseline, and
    the baseline is frozen while the alert is active (also while every phase is slow together), so a
    lasting regression does not become the new normal: it stays reported until the phase is fast
    again. A slower step is lost throughput for every remaining step of the run, and often the first
    sign of a host-device sync, a data-loader or I/O stall, or a throttling GPU.
    """

    name = "step_time"
    Config = StepTimeConfig
    kinds = frozenset({"step_timing"})
    per_update = True

    def __init__(self, config: StepTimeConfig, alerts) -> None:
        super().__init__(config, alerts)
        self._phases: dict[tuple[str, int, str], _Phase] = Capped()
        self._by_run: dict[tuple[str, int], dict[str, _Phase]] = Capped()  # the same phases, by (run, rank) then name

    def check(self, event: Event, now_ns: int) -> list[Alert] | None:
        if event.kind != "step_timing":
            return None
        config = self.config
        conditions = self._conditions
        min_baseline_ms, factor = config.min_baseline_ms, config.regression_factor
        fired: list[Alert] | None = None
        run_id, rank = event.run_id, event.rank
        phases = self._by_run.get((run_id, rank))
        if phases is None:
            phases = self._by_run[(run_id, rank)] = {}
        judged: list[tuple[str, _Phase, float, float, float]] = []  # (name, phase, ms, time judged, baseline) of the warm phases
        waits = event.wait_ms
        for name, ms in event.phases_ms.items():
            if not 0.0 <= ms < _INF:
                continue
            phase = phases.get(name)
            if phase is None:
                phase = phases[name] = self._phases[(run_id, rank, name)] = _Phase(self._baseline(), subject_key(event, name))
            own = _own(ms, waits.get(name)) if waits else None
            if own is not None:
                phase.own = True
            elif phase.own:  # its history is of own times: a whole time cannot be judged against it
                continue
            t = ms if own is None else own
            baseline = phase.baseline.value
            if baseline is None or baseline < min_baseline_ms:
                phase.baseline.add(t)
                phase.remember(t, config.spread_window)
                continue
            judged.append((name, phase, ms, t, max(baseline, phase.pace())))
        if not judged:
            return None
        floor, z = config.min_spread, config.noise_z

        # A phase's time is its own time where the producer measured its thread's wait for a CPU: the time other
        # processes took from it is not the phase's, and a phase slow only by waiting is not slow.
        slow = [t > factor * baseline and math.log(t / baseline) > z * phase.jitter(floor) for _, phase, _, t, baseline in judged]
        # The machine: a phase is slow and every other one is slower too (contention slows host-bound phases
        # most, so they need not all be slow); one phase slow while the others keep their pace is the trainer.
        every_phase_slow = len(judged) >= 2 and any(slow) and all(
            t > config.machine_share * baseline for _, _, _, t, baseline in judged)
        machine = subject_key(event, "machine") if (every_phase_slow or conditions) else None
        if machine is not None and (every_phase_slow or machine in conditions):
            slowdown = min(t / baseline for _, _, _, t, baseline in judged)
            shown = ", ".join(f"{name} {t / baseline:.2f}x" for name, _, _, t, baseline in judged)
            alert = self.observe(
                event,
                machine,
                every_phase_slow and slowdown > config.machine_factor,
                lambda: f"every phase of the step slowed together at step {event.step} ({shown}, {event.clock} clock) "
                f"for {config.machine_fire_after} steps: the machine (contention, a throttled clock), not one part of "
                f"the trainer; the run is that much slower, nothing in it is wrong",
                lambda: {"phase": "*", "factor": slowdown, "machine_factor": config.machine_factor, "clock": event.clock},
                severity=config.machine_severity,
                fire_after=config.machine_fire_after,
                clear_message=lambda: f"the step's phases are back near their baselines at step {event.step} ({shown})",
            )
            if alert:
                fired = [alert]
            if every_phase_slow and machine in conditions:  # the machine beyond its factor: the baselines wait
                return fired
        keep = config.spread_window
        if not (any(slow) or conditions):  # the healthy path: every phase joins its baseline
            for _, phase, _, own, _ in judged:
                phase.baseline.add(own)
                phase.remember(own, keep)
            return fired
        if every_phase_slow:  # the machine's pace: the baselines follow it (not a phase already reported), no phase is blamed
            for _, phase, _, t, _ in judged:
                if not self.is_active(phase.subject):
                    phase.baseline.add(t)
                    phase.remember(t, keep)
            return fired
        others = len(judged) - 1
        for bad, (name, phase, ms, own, baseline) in zip(slow, judged):
            if not (bad or phase.subject in conditions):
                phase.baseline.add(own)
                phase.remember(own, keep)
                continue
            alert = self.observe(
                event,
                phase.subject,
                bad,
                lambda: f"phase {name!r} slowed to {own:.4g} ms at step {event.step}: {own / baseline:.2f}x its baseline "
                f"{baseline:.4g} ms ({event.clock} clock{_waited(ms, own)}) for {config.fire_after} steps"
                + (" while the other phases kept their pace: this part of the trainer, not the machine" if others else ""),
                lambda: {"phase": name, "ms": own, "baseline_ms": baseline, "factor": own / baseline, "clock": event.clock,
                         **({"wait_ms": ms - own} if own != ms else {})},
                clear_message=lambda: f"phase {name!r} is back to {own:.4g} ms at step {event.step} "
                f"(baseline {baseline:.4g} ms, {event.clock} clock)",
            )
            if alert:
                fired = (fired or []) + [alert]
            if not bad and phase.subject not in conditions:
                phase.baseline.add(own)  # a good sample with nothing pending
                phase.remember(own, keep)
        return fired

    def _baseline(self) -> Ema:
        """A phase's baseline: the median of its first ``warmup`` observations, then a slow EMA."""
        return Ema(self.config.momentum, self.config.warmup, seed="median")

    def extra_state(self) -> dict[str, Any]:
        return {
            phase.subject: {"run_id": run_id, "rank": rank, "phase": name, "baseline": phase.baseline.state(),
                            "recent": phase.recent, "own": phase.own}
            for (run_id, rank, name), phase in self._phases.items()
        }

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self._phases = Capped()
        for subject, saved in state.items():
            baseline = self._baseline()
            baseline.load_state(saved["baseline"])
            self._phases[(saved["run_id"], int(saved["rank"]), saved["phase"])] = _Phase(
                baseline, subject, [float(x) for x in saved.get("recent", [])], bool(saved.get("own", False)))
        self._by_run = Capped()
        for (run_id, rank, name), phase in self._phases.items():
            self._by_run.setdefault((run_id, rank), {})[name] = phase
