"""straggler: one rank of a distributed run computing slower than the others, step after step."""

from __future__ import annotations

import math
from statistics import median
from typing import Any

from pydantic import Field

from simic.schemas.models import Alert, Event

from ._rule import Capped, Rule, RuleConfig, register
from ._support import about, gather_step

_INF = math.inf


class StragglerConfig(RuleConfig):
    phase: str = "compute"
    """The ``step_timing`` phase that is each rank's own work: forward and backward (CUDA-event timed
    on a GPU), stopped *before* the collective. In synchronous data-parallel training every rank's
    whole step lasts as long as the slowest rank's, because the others wait for it in the
    all-reduce: the step time hides a straggler, its own compute time shows it. A run that does not
    send this phase is not judged."""
    slow_factor: float = Field(1.3, gt=1)
    """A rank whose compute time at a step is more than 1.3 times the median of the other ranks' at that
    step is slow there. Replicas run the same model on same-sized batches, so healthy ranks stay
    within a few percent of each other on GPUs; 30% is a slower device (thermal or power throttling,
    a degraded link, a noisy neighbour), the cost the whole job pays at every step."""
    min_excess_ms: float = Field(2.0, ge=0)
    """...and more than 2 ms above that median: a tiny model's millisecond of scheduling jitter is not a straggler."""
    window_steps: int = Field(32, ge=1)
    """Steps per run (32) kept while waiting for every rank's time of that step (bounded memory: a step some
    rank never reports is dropped after this many newer ones)."""
    fire_after: int = Field(5, ge=1)
    """Steps in a row (5) on which the same rank is slow: one slow step is a garbage collection or a
    checkpoint write, five in a row is the device."""
    clear_after: int = Field(5, ge=1)
    """Steps in a row back in line before it clears."""


class _Run:
    __slots__ = ("ranks", "pending")

    def __init__(self) -> None:
        self.ranks: dict[int, int] = {}  # rank that sent the phase -> its producer session
        self.pending: dict[int, dict[int, float]] = {}  # step -> rank -> compute ms, oldest first


def _subject(run_id: str, rank: int) -> str:
    return f"{run_id}\x1f{rank}\x1fstraggler"  # subject_key's layout


@register
class Straggler(Rule):
    """One rank of a run whose own compute time stays above the other ranks'.

    Per run, the ``phase`` time of every rank at a step (the ``step_timing`` events of a rank's step
    combined, the phase's parts added up) is gathered until every rank that ever sent it has sent it
    for that step. Then each rank is compared with the median of the
    others at that step: above ``slow_factor`` times it and ``min_excess_ms`` more is slow. The same
    rank slow ``fire_after`` steps in a row fires, about that rank, naming it; every rank slower
    together is the machine or the model (``step_time``'s to judge), never a straggler. Runs of one
    rank are skipped. Memory per run: ``window_steps`` steps of one number per rank.
    """

    name = "straggler"
    Config = StragglerConfig
    kinds = frozenset({"step_timing"})
    per_update = True

    def __init__(self, config: StragglerConfig, alerts) -> None:
        super().__init__(config, alerts)
        self._runs: dict[str, _Run] = Capped()

    def check(self, event: Event, now_ns: int) -> list[Alert] | None:
        run = self._runs.get(event.run_id)
        if run is None:
            run = self._runs[event.run_id] = _Run()
        ms = event.phases_ms.get(self.config.phase)
        if ms is None or not 0.0 <= ms < _INF:
            return None
        run.ranks[event.rank] = event.session
        times = gather_step(run.pending, event.step, event.rank, ms, max(2, len(run.ranks)), self.config.window_steps)
        return None if times is None else self._judge(event, run, times)

    def _judge(self, event: Event, run: _Run, times: dict[int, float]) -> list[Alert] | None:
        config = self.config
        conditions = self._conditions
        values = sorted(times.values())
        if not conditions and not self._slow(values[-1], median(values[:-1])):
            return None  # the slowest is in line, hence every rank is: the healthy path
        fired: list[Alert] = []
        for rank, ms in times.items():
            others = list(values)
            others.remove(ms)
            typical = median(others)
            bad = self._slow(ms, typical)
            subject = _subject(event.run_id, rank)
            if not (bad or subject in conditions):
                continue
            alert = self.observe(
                about(event.run_id, rank, run.ranks[rank], event.clock_ns, event.step),
                subject,
                bad,
                lambda: f"rank {rank} of run {event.run_id!r} is a straggler: its {config.phase!r} took {ms:.1f} ms at step "
                f"{event.step}, {ms / typical if typical else _INF:.2f}x the {typical:.1f} ms median of the other ranks, "
                f"for {config.fire_after} steps; in synchronous training every rank waits for it at the collective",
                lambda: {"rank": rank, "phase": config.phase, "ms": ms, "median_others_ms": typical,
                         "factor": ms / typical if typical else _INF, "slow_factor": config.slow_factor},
                clear_message=lambda: f"rank {rank} of run {event.run_id!r} computes in line with the other ranks again "
                f"at step {event.step} ({ms:.1f} ms vs {typical:.1f} ms)",
            )
            if alert:
                fired.append(alert)
        return fired or None

    def _slow(self, ms: float, typical: float) -> bool:
        return ms > self.config.slow_factor * typical and ms - typical > self.config.min_excess_ms

    def extra_state(self) -> dict[str, Any]:
        return {
            run_id: {"ranks": [[rank, session] for rank, session in run.ranks.items()],
                     "pending": [[step, [[rank, ms] for rank, ms in times.items()]] for step, times in run.pending.items()]}
            for run_id, run in self._runs.items()
        }

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self._runs = Capped()
        for run_id, saved in state.items():
            run = self._runs[run_id] = _Run()
            run.ranks = {int(rank): int(session) for rank, session in saved["ranks"]}
            run.pending = {int(step): {int(rank): float(ms) for rank, ms in times} for step, times in saved["pending"]}
