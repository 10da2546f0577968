"""What a report shows, gathered from a replay of the logs.

:class:`SeriesRecorder` is a pipeline stage: it rides along in the same replay that runs the real
analysis rules, so the alerts in a report are the alerts the daemon raised (or would raise with
the configuration given). It keeps, per ``(run_id, rank)``, one :class:`Series` per measured
quantity, with the training step as x: every point of what the metrics and the dashboard show the
newest of, read the same way (``simic.consumer.pipeline.ranks``).

A value the producer sent as missing (``None``) is kept as ``None`` and drawn as a gap; NaN and
Inf are kept as they are (the figures draw them as gaps too, and mark them). A step with no event
of a kind is simply absent: lines connect the steps that were measured.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Sequence

from simic.schemas.models import Alert, HeadGradNorms, LstmHealth, PpoUpdate, RunEnd, RunStart, StepTiming

from ..analysis.gradient_drift import GradientDrift, GradientDriftConfig, HeadJudgement
from ..config import ConsumerConfig
from ..offline.replay import replay
from ..pipeline.build import analysis_stages
from ..pipeline.contract import Batch, Stage
from ..pipeline.ranks import PerRank, RankKey, grad_totals
from ..pipeline.updates import COMBINED_KINDS

__all__ = ["Series", "DriftTrace", "RankSeries", "ReportData", "SeriesRecorder", "collect", "LSTM_FIELDS", "PPO_FIELDS"]

GroupKey = RankKey
"""``(run_id, rank)``"""

LSTM_FIELDS = ("h_norm", "c_norm", "h_max_abs", "c_max_abs", "h_rms", "c_rms", "h_env_max_rms", "c_env_max_rms")
"""The LstmHealth numbers the report draws."""
PPO_FIELDS = ("policy_loss", "value_loss", "approx_kl", "clip_fraction", "ratio_min", "ratio_max", "explained_variance", "learning_rate")
"""The PpoUpdate scalars the report draws (entropy, per head, is separate)."""


@dataclass(slots=True)
class Series:
    """One quantity over steps. ``None`` is a missing value; NaN/Inf are kept as sent."""

    steps: list[int] = field(default_factory=list)
    values: list[float | None] = field(default_factory=list)

    def add(self, step: int, value: float | None) -> None:
        self.steps.append(step)
        self.values.append(value)

    def sorted(self) -> "Series":
        """The same points in step order (stable: repeated steps keep their arrival order)."""
        if all(a <= b for a, b in zip(self.steps, self.steps[1:])):
            return self
        order = sorted(range(len(self.steps)), key=self.steps.__getitem__)
        return Series([self.steps[i] for i in order], [self.values[i] for i in order])

    def nonfinite(self) -> list[tuple[int, float]]:
        """``(step, value)`` of every NaN or infinite point."""
        return [(s, v) for s, v in zip(self.steps, self.values) if v is not None and not math.isfinite(v)]

    def __len__(self) -> int:
        return len(self.steps)


def _series_dict() -> defaultdict[str, Series]:
    return defaultdict(Series)


@dataclass(slots=True)
class DriftTrace:
    """One head's updates as the ``gradient_drift`` rule judged them (:class:`HeadJudgement`), in order."""

    judgements: list[HeadJudgement] = field(default_factory=list)

    def sorted(self) -> list[HeadJudgement]:
        """In step order (stable)."""
        return sorted(self.judgements, key=lambda j: j.step)

    @property
    def drifted_steps(self) -> list[int]:
        """The steps at which the rule judged this head drifting."""
        return [j.step for j in self.sorted() if j.drifted]


@dataclass
class RankSeries:
    """Everything measured for one ``(run_id, rank)``, each group keyed by a name."""

    timing_ms: defaultdict[str, Series] = field(default_factory=_series_dict)
    """Phase name to its step time (milliseconds)."""
    head_norms: defaultdict[str, Series] = field(default_factory=_series_dict)
    """Head name to its gradient norm, before clipping (or of unknown stage)."""
    head_norms_post_clip: defaultdict[str, Series] = field(default_factory=_series_dict)
    """Head name to its gradient norm measured after clipping."""
    clip: defaultdict[str, Series] = field(default_factory=_series_dict)
    """``pre_clip``, ``post_clip``, ``total`` (stage not said) and ``max_norm`` (the threshold)."""
    lstm: defaultdict[str, Series] = field(default_factory=_series_dict)
    """LstmHealth field to its series (see :data:`LSTM_FIELDS`)."""
    ppo: defaultdict[str, Series] = field(default_factory=_series_dict)
    """PpoUpdate field to its series (see :data:`PPO_FIELDS`)."""
    entropy: defaultdict[str, Series] = field(default_factory=_series_dict)
    """Head name to its mean entropy."""
    nonfinite_grads: list[tuple[int, str, int]] = field(default_factory=list)
    """``(step, head, count)`` where the producer counted non-finite gradient elements."""
    lstm_flags: list[tuple[int, str]] = field(default_factory=list)
    """``(step, "has_nan" | "has_inf")`` where the LSTM state was flagged."""
    drift: defaultdict[str, DriftTrace] = field(default_factory=lambda: defaultdict(DriftTrace))
    """Head name to its updates as ``gradient_drift`` judged them (empty when the rule or ``per_head`` is off)."""


@dataclass
class ReportData:
    """What :func:`collect` found: series per ``(run_id, rank)``, sessions, alerts and the log's summary."""

    groups: dict[GroupKey, RankSeries]
    starts: list[RunStart]
    ends: list[RunEnd]
    alerts: list[Alert]
    summary: dict[str, Any]
    sources: list[str]
    drift_config: GradientDriftConfig | None = None
    """The ``gradient_drift`` settings the logs were replayed with; None: the rule is off in that configuration."""

    @property
    def step_range(self) -> tuple[int, int] | None:
        """Smallest and largest step of anything drawn (alerts included)."""
        steps = [a.step for a in self.alerts]
        for group in self.groups.values():
            for section in (group.timing_ms, group.head_norms, group.head_norms_post_clip, group.clip, group.lstm, group.ppo, group.entropy):
                for series in section.values():
                    if series.steps:
                        steps.extend((min(series.steps), max(series.steps)))
        return (min(steps), max(steps)) if steps else None


class SeriesRecorder(Stage):
    """A pipeline stage that turns events into :class:`RankSeries` (one per run and rank): one point per
    update, the update's events combined as the rules saw them (``simic.consumer.pipeline.updates``)."""

    name = "report_recorder"

    def __init__(self, drift: GradientDrift | None = None) -> None:
        """``drift``: the pipeline's ``gradient_drift`` rule, if on: the drift panel draws its judgements,
        not a second computation of them."""
        self.groups: PerRank[RankSeries] = PerRank(lambda run_id, rank: RankSeries())
        self.starts: list[RunStart] = []
        self.ends: list[RunEnd] = []
        self.drift_config: GradientDriftConfig | None = None
        self._record = {
            StepTiming: self._timing,
            HeadGradNorms: self._grads,
            LstmHealth: self._lstm,
            PpoUpdate: self._ppo,
            RunStart: self.starts.append,
            RunEnd: self.ends.append,
        }
        if drift is not None:
            drift.trace(self._judged)
            self.drift_config = drift.config

    def _judged(self, judgement: HeadJudgement) -> None:
        self.groups.of(judgement).drift[judgement.head].judgements.append(judgement)

    async def consume(self, batch: Batch) -> None:
        # The measurements as the rules judged them (one per update: an update's events combined), the rest as sent.
        for event in batch.updates:
            record = self._record.get(type(event))
            if record is not None:
                record(event)
        for event in batch.events:
            if event.kind not in COMBINED_KINDS:
                record = self._record.get(type(event))
                if record is not None:
                    record(event)

    def _timing(self, event: StepTiming) -> None:
        group = self.groups.of(event)
        for phase, ms in event.phases_ms.items():
            group.timing_ms[phase].add(event.step, ms)

    def _grads(self, event: HeadGradNorms) -> None:
        group, step = self.groups.of(event), event.step
        heads = group.head_norms_post_clip if event.stage == "post_clip" else group.head_norms
        for head, norm in event.norms.items():
            heads[head].add(step, norm)
        totals = grad_totals(event)
        pre, post, total = totals.get("pre_clip"), totals.get("post_clip"), totals.get("total")
        if total is not None and total not in (pre, post):  # unless it repeats an explicit pre/post total
            group.clip["total"].add(step, total)
        for stage in ("pre_clip", "post_clip"):
            if stage in totals:
                group.clip[stage].add(step, totals[stage])
        if event.max_norm is not None:
            group.clip["max_norm"].add(step, event.max_norm)
        group.nonfinite_grads.extend((step, head, count) for head, count in event.nonfinite.items() if count)

    def _lstm(self, event: LstmHealth) -> None:
        group = self.groups.of(event)
        suffix = "" if event.name is None else f"@{event.name}"  # several recurrent cores: a series each
        for name in LSTM_FIELDS:
            group.lstm[name + suffix].add(event.step, getattr(event, name))
        if event.has_nan:
            group.lstm_flags.append((event.step, "has_nan"))
        if event.has_inf:
            group.lstm_flags.append((event.step, "has_inf"))

    def _ppo(self, event: PpoUpdate) -> None:
        group = self.groups.of(event)
        for name in PPO_FIELDS:
            group.ppo[name].add(event.step, getattr(event, name))
        for head, value in event.entropy.items():
            group.entropy[head].add(event.step, value)


async def collect(targets: Sequence[str | os.PathLike[str]], config: ConsumerConfig) -> ReportData:
    """Replay logs through the real analysis (alerts from the real rules) while recording series."""
    rules = analysis_stages(config)
    drift = next((rule for rule in rules if isinstance(rule, GradientDrift)), None)
    recorder = SeriesRecorder(drift)
    result = await replay(targets, config, rules=rules, extra_sinks=[recorder])
    # A series whose values were all missing still says the field was sent: keep it, it draws as a gap.
    return ReportData(
        groups=dict(sorted(recorder.groups.items())),
        starts=recorder.starts,
        ends=recorder.ends,
        alerts=result.alerts,
        summary=result.summary,
        sources=[str(target) for target in targets],
        drift_config=recorder.drift_config,
    )
