"""rank_divergence: the ranks of one distributed run drifting apart (a straggler, a desynchronised rank)."""

from __future__ import annotations

import math
from statistics import median
from typing import Any

from pydantic import Field

from simic.schemas.models import Alert, Event

from ..pipeline.contract import Batch
from ._rule import Capped, Rule, RuleConfig, register
from ._support import about, gather_step

_INF = math.inf


class RankDivergenceConfig(RuleConfig):
    max_step_lag: int = Field(100, ge=1)
    """Fire when the open ranks of a run are more than this many steps apart (last step heard from
    each). Synchronous data-parallel ranks move in lockstep, so 100 update steps is a rank that is
    stuck or crawling, while message batching and arrival order only account for a few. If the
    trainer's ``step`` counts environment steps rather than updates, raise it accordingly."""
    max_norm_ratio: float = Field(10.0, gt=1)
    """Fire when, at the same step, one rank's total gradient norm is more than this many times the
    median of the other ranks'. After the all-reduce every rank holds the same gradient, so any
    real difference means a rank that skipped the reduction or diverged in parameters; 10x leaves
    room for norms measured before the reduction (per-rank minibatches)."""
    window_steps: int = Field(32, ge=1)
    """Steps per run (32) kept while waiting for every rank's norm of that step (bounded memory: a step
    some rank never reports is dropped after this many newer steps)."""
    fire_after: int = Field(3, ge=1)
    """Observations in a row (messages for the lag, steps for the norm): arrival order alone can
    make ranks look apart for a moment."""
    clear_after: int = Field(3, ge=1)
    """Observations in a row back in line before it clears."""


class _Run:
    __slots__ = ("run_id", "world_size", "ranks", "pending", "lag_subject", "lagging")

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.world_size = 1
        self.ranks: dict[int, list[int]] = {}  # open rank -> [session, last step]
        self.pending: dict[int, dict[int, float]] = {}  # step -> rank -> total norm, oldest first
        self.lag_subject = f"{run_id}\x1f*\x1fstep_lag"
        self.lagging: list[int] | None = None  # [rank, session, step] the step-lag alert fired about


def _norm_subject(run_id: str, rank: int) -> str:
    return f"{run_id}\x1f{rank}\x1fnorm_ratio"  # subject_key's layout


@register
class RankDivergence(Rule):
    """Ranks of one run diverging: one rank falling behind, or one rank's gradient unlike the others'.

    Step lag: among the open producer sessions of a run (no ``run_end`` yet), the last step of the
    furthest rank minus that of the slowest above ``max_step_lag``; the alert is about the slowest
    rank, a straggler (slow node, thermal throttling, a data loader starving) or a hung one, which
    in a synchronous job soon stalls every rank at the next collective. Gradient norm: once every
    rank (``world_size`` from ``run_start``, else the ranks seen) has reported the pre-clip total
    norm of a step, a rank above ``max_norm_ratio`` x the median of the others fires, about that
    rank: replicas that should hold identical gradients do not, so their parameters are parting.
    Runs of one rank are skipped. Memory per run is one entry per rank and ``window_steps`` steps.
    No flapping: ``fire_after`` observations in a row fire, ``clear_after`` clear; a rank that ends
    its session stops counting, and its alerts clear.
    """

    name = "rank_divergence"
    Config = RankDivergenceConfig

    def __init__(self, config: RankDivergenceConfig, alerts) -> None:
        super().__init__(config, alerts)
        self._runs: dict[str, _Run] = Capped()

    def tick(self, now_ns: int, batch: Batch) -> list[Alert] | None:
        events = batch.events
        if not events:
            return None
        first = events[0]  # one message: one producer session
        run = self._runs.get(first.run_id)
        if run is None:
            run = self._runs[first.run_id] = _Run(first.run_id)
        rank = first.rank
        ranks = run.ranks
        entry = ranks.get(rank)
        if entry is None or entry[0] != first.session:
            entry = ranks[rank] = [first.session, first.step]
        fired: list[Alert] = []
        if batch.of_kind("run_start"):  # it may change world_size mid-batch: every event in order
            ended = False
            for event in events:
                kind = event.kind
                if kind == "head_grad_norms":
                    if (run.world_size > 1 or len(ranks) > 1) and event.stage != "post_clip":
                        self._norm(run, event, fired)
                elif kind == "run_start":
                    run.world_size = event.world_size
                elif kind == "run_end":
                    ended = True
        else:  # the same, by kind (nothing here changes world_size or ranks)
            if run.world_size > 1 or len(ranks) > 1:
                for event in batch.of_kind("head_grad_norms"):
                    if event.stage != "post_clip":
                        self._norm(run, event, fired)
            ended = bool(batch.of_kind("run_end"))
        last = events[-1]
        entry[1] = last.step
        if ended:
            del ranks[rank]
            subject = _norm_subject(run.run_id, rank)
            if subject in self._conditions:
                self._observe_norm(last, subject, False, fired, None, None, clear_after=1)
        if len(ranks) > 1 or run.lag_subject in self._conditions:
            self._lag(run, last, fired, closing=ended)
        if not ranks:
            del self._runs[run.run_id]
        return fired or None

    def _lag(self, run: _Run, event: Event, fired: list[Alert], closing: bool) -> None:
        if len(run.ranks) > 1:
            slow_rank, (slow_session, slow_step) = min(run.ranks.items(), key=lambda item: item[1][1])
            fast_rank, (_, fast_step) = max(run.ranks.items(), key=lambda item: item[1][1])
            lag = fast_step - slow_step
        else:
            slow_rank, slow_session, slow_step, fast_rank, fast_step, lag = event.rank, event.session, event.step, event.rank, event.step, 0
        bad = lag > self.config.max_step_lag
        if not (bad or run.lag_subject in self._conditions):
            return
        if not bad and run.lagging is not None:  # a clear is about the rank the alert was about
            slow_rank, slow_session, slow_step = run.lagging
        alert = self.observe(
            about(run.run_id, slow_rank, slow_session, event.clock_ns, slow_step),
            run.lag_subject,
            bad,
            f"rank {slow_rank} of run {run.run_id!r} is {lag} steps behind rank {fast_rank} (step {slow_step} vs {fast_step}): "
            f"a straggler or a hung rank",
            {"lag": lag, "slow_rank": slow_rank, "slow_step": slow_step, "fast_rank": fast_rank, "fast_step": fast_step,
             "max_step_lag": self.config.max_step_lag},
            clear_after=1 if closing and not bad else None,
            clear_message=f"ranks of run {run.run_id!r} are back in step: lag {lag}"
            + (f" after rank {event.rank} ended its session" if closing else ""),
        )
        if alert:
            fired.append(alert)
            run.lagging = None if alert.cleared else [slow_rank, slow_session, slow_step]

    def _norm(self, run: _Run, event: Event, fired: list[Alert]) -> None:
        total = event.total
        if total is None or not 0.0 <= total < _INF:
            return
        expected = run.world_size if run.world_size > 1 else len(run.ranks)
        norms = gather_step(run.pending, event.step, event.rank, total, expected, self.config.window_steps)
        if norms is None:
            return
        values = sorted(norms.values())
        ratio = self.config.max_norm_ratio
        conditions = self._conditions
        if values[-1] <= ratio * median(values[:-1]) and not conditions:
            return  # the largest is in line, hence every rank is: the healthy path
        for rank, norm in norms.items():
            others = list(values)
            others.remove(norm)
            typical = median(others)
            bad = norm > ratio * typical
            subject = _norm_subject(run.run_id, rank)
            if bad or subject in conditions:
                session = run.ranks.get(rank, [event.session])[0]
                self._observe_norm(about(run.run_id, rank, session, event.clock_ns, event.step), subject, bad, fired, norm, typical)

    def _observe_norm(self, event: Event, subject: str, bad: bool, fired: list[Alert], norm: float | None,
                      typical: float | None, clear_after: int | None = None) -> None:
        ratio = norm / typical if norm is not None and typical else None
        alert = self.observe(
            event,
            subject,
            bad,
            f"rank {event.rank} of run {event.run_id!r} has gradient norm {norm:.4g} at step {event.step}, "
            f"{ratio if ratio is not None else _INF:.1f}x the median {typical:.4g} of the other ranks"
            if bad else "",
            {"norm": norm, "median_others": typical, "ratio": ratio, "max_norm_ratio": self.config.max_norm_ratio},
            clear_after=clear_after,
            clear_message=f"rank {event.rank} of run {event.run_id!r} has a gradient norm like the others' again (step {event.step})",
        )
        if alert:
            fired.append(alert)

    def extra_state(self) -> dict[str, Any]:
        return {
            run.run_id: {
                "world_size": run.world_size,
                "lagging": run.lagging,
                "ranks": [[rank, session, step] for rank, (session, step) in run.ranks.items()],
                "pending": [[step, [[rank, norm] for rank, norm in norms.items()]] for step, norms in run.pending.items()],
            }
            for run in self._runs.values()
        }

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self._runs = Capped()
        for run_id, saved in state.items():
            run = self._runs[run_id] = _Run(run_id)
            run.world_size = int(saved["world_size"])
            run.lagging = saved.get("lagging")
            run.ranks = {int(rank): [int(session), int(step)] for rank, session, step in saved["ranks"]}
            run.pending = {int(step): {int(rank): float(norm) for rank, norm in norms} for step, norms in saved["pending"]}
