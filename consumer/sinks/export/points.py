"""What an exporter writes: the events of a batch as scalars, texts and a config per (run, rank).

Both exporters (TensorBoard, wandb) write the same points, with the training step as x:

==================  ======================================================================================
event               scalars (``None`` is left out: a missing value is no point, never a 0; NaN stays NaN)
==================  ======================================================================================
step_timing         ``time_ms/<phase>``
head_grad_norms     ``grad_norm/<head>`` (pre-clip or stage not given), ``grad_norm_post_clip/<head>``,
                    ``grad_norm_total/pre_clip``, ``.../post_clip``, ``.../total`` (stage not given),
                    ``.../max_norm`` (the clipping threshold), ``grad_nonfinite/<head>``
lstm_health         ``lstm/<field>`` (``lstm/<name>/<field>`` for a named core): h/c norm, rms, max-abs,
                    largest per-environment rms, ``has_nan``/``has_inf`` as 1 or 0
ppo_update          ``losses/policy_loss``, ``losses/value_loss``, ``losses/loss``, ``ppo/approx_kl``,
                    ``ppo/clip_fraction``, ``ppo/ratio_min``, ``ppo/ratio_max``, ``ppo/explained_variance``,
                    ``ppo/learning_rate``, ``ppo/clip_range``, ``ppo/entropy/<head>``
metrics             each value under the name the trainer gave it (``train/loss``)
episodes            ``episodes/return_mean``, ``episodes/length_mean``, ``episodes/count``
param_updates       ``update_ratio/<head>``, ``update_ratio/total``
heartbeat           ``producer/events_dropped``, ``producer/readouts_dropped``
==================  ======================================================================================

Texts: every alert (``alerts/<rule>``: ``[WARNING] message`` or ``[cleared] message``), the end of a
session (``run/end``) and a profiler trace (``run/profiler_trace``). ``run_start`` becomes the run's
config (host, pid, world size, torch version, device, heads, the trainer's config).

The measurements are taken one per update, as the rules judged them (``batch.updates``: a trainer
that sends a gradient event per minibatch gives one point per update, their RMS); the other kinds as
they arrived.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

from simic.schemas.models import (
    Alert, Episodes, Event, HeadGradNorms, Heartbeat, LstmHealth, Metrics, ParamUpdates, PpoUpdate, ProfilerTrace, RunEnd,
    RunStart, StepTiming,
)

from ...pipeline.updates import COMBINED_KINDS

__all__ = ["RunPoints", "RunKey", "points_of", "run_config", "alert_text", "LSTM_FIELDS", "PPO_FIELDS"]

LSTM_FIELDS = ("h_norm", "c_norm", "h_rms", "c_rms", "h_max_abs", "c_max_abs", "h_env_max_rms", "c_env_max_rms")
PPO_FIELDS = (
    ("policy_loss", "losses/policy_loss"), ("value_loss", "losses/value_loss"), ("loss", "losses/loss"),
    ("approx_kl", "ppo/approx_kl"), ("clip_fraction", "ppo/clip_fraction"), ("ratio_min", "ppo/ratio_min"),
    ("ratio_max", "ppo/ratio_max"), ("explained_variance", "ppo/explained_variance"), ("learning_rate", "ppo/learning_rate"),
    ("clip_range", "ppo/clip_range"),
)

RunKey = tuple[str, int]
"""``(run_id, rank)``: one TensorBoard run directory, one wandb run."""


@dataclass(slots=True)
class RunPoints:
    """What one batch holds for one (run, rank)."""

    run_id: str
    rank: int
    scalars: list[tuple[int, str, float]] = field(default_factory=list)
    """``(step, tag, value)`` in arrival order."""
    texts: list[tuple[int, str, str]] = field(default_factory=list)
    """``(step, tag, text)``: alerts, the session's end."""
    config: dict[str, Any] | None = None
    """From ``run_start``: the run's configuration and where it runs."""
    ended: bool = False
    """A session of this (run, rank) sent ``run_end`` in this batch."""


def run_config(start: RunStart) -> dict[str, Any]:
    """The run's config as the exporters record it: the trainer's own, then where it ran."""
    return {
        **start.config,
        "simic": {
            "run_id": start.run_id, "rank": start.rank, "host": start.host, "pid": start.pid, "world_size": start.world_size,
            "torch_version": start.torch_version, "device": start.device, "heads": list(start.heads),
            "producer_version": start.producer_version,
        },
    }


def _grads(event: HeadGradNorms, add) -> None:
    step = event.step
    prefix = "grad_norm_post_clip/" if event.stage == "post_clip" else "grad_norm/"
    for head, norm in event.norms.items():
        if norm is not None:
            add((step, prefix + head, norm))
    pre = event.pre_clip_total if event.pre_clip_total is not None else (event.total if event.stage == "pre_clip" else None)
    post = event.post_clip_total if event.post_clip_total is not None else (event.total if event.stage == "post_clip" else None)
    if pre is not None:
        add((step, "grad_norm_total/pre_clip", pre))
    if post is not None:
        add((step, "grad_norm_total/post_clip", post))
    if event.stage is None and event.total is not None and event.total not in (pre, post):
        add((step, "grad_norm_total/total", event.total))
    if event.max_norm is not None:
        add((step, "grad_norm_total/max_norm", event.max_norm))
    for head, count in event.nonfinite.items():
        add((step, "grad_nonfinite/" + head, float(count)))


def _lstm(event: LstmHealth, add) -> None:
    step = event.step
    prefix = "lstm/" if event.name is None else f"lstm/{event.name}/"
    for name in LSTM_FIELDS:
        value = getattr(event, name)
        if value is not None:
            add((step, prefix + name, value))
    for flag in ("has_nan", "has_inf"):
        value = getattr(event, flag)
        if value is not None:
            add((step, prefix + flag, 1.0 if value else 0.0))


def _ppo(event: PpoUpdate, add) -> None:
    step = event.step
    for name, tag in PPO_FIELDS:
        value = getattr(event, name)
        if value is not None:
            add((step, tag, value))
    for head, value in event.entropy.items():
        add((step, "ppo/entropy/" + head, value))


def _timing(event: StepTiming, add) -> None:
    for phase, ms in event.phases_ms.items():
        add((event.step, "time_ms/" + phase, ms))


def _metrics(event: Metrics, add) -> None:
    for name, value in event.values.items():
        if value is not None:
            add((event.step, name, value))


def _episodes(event: Episodes, add) -> None:
    step = event.step
    if event.returns:
        add((step, "episodes/return_mean", sum(event.returns) / len(event.returns)))
    if event.lengths:
        add((step, "episodes/length_mean", sum(event.lengths) / len(event.lengths)))
    count = event.count if event.count is not None else len(event.returns)
    if count or event.returns:
        add((step, "episodes/count", float(count)))


def _param_updates(event: ParamUpdates, add) -> None:
    step = event.step
    for head, ratio in event.ratios.items():
        if ratio is not None:
            add((step, "update_ratio/" + head, ratio))
    if event.total_ratio is not None:
        add((step, "update_ratio/total", event.total_ratio))


def _heartbeat(event: Heartbeat, add) -> None:
    if event.dropped is not None:
        add((event.step, "producer/events_dropped", float(event.dropped)))
    if event.readouts_dropped is not None:
        add((event.step, "producer/readouts_dropped", float(event.readouts_dropped)))


_SCALARS = {
    StepTiming: _timing, HeadGradNorms: _grads, LstmHealth: _lstm, PpoUpdate: _ppo, Metrics: _metrics, Episodes: _episodes,
    ParamUpdates: _param_updates, Heartbeat: _heartbeat,
}


def alert_text(alert: Alert) -> str:
    state = "cleared" if alert.cleared else alert.severity.upper()
    return f"[{state}] {alert.message}"


def points_of(events: Iterable[Event], updates: Iterable[Event], alerts: Iterable[Alert]) -> dict[RunKey, RunPoints]:
    """The points of one batch, per (run, rank): ``updates`` for the kinds combined per update, ``events``
    for the others, then the alerts."""
    runs: dict[RunKey, RunPoints] = {}

    def of(event: Event) -> RunPoints:
        key = (event.run_id, event.rank)
        points = runs.get(key)
        if points is None:
            points = runs[key] = RunPoints(event.run_id, event.rank)
        return points

    for event in updates:
        write = _SCALARS.get(type(event))
        if write is not None:
            write(event, of(event).scalars.append)
    for event in events:
        kind = type(event)
        if event.kind in COMBINED_KINDS:
            continue
        write = _SCALARS.get(kind)
        if write is not None:
            write(event, of(event).scalars.append)
        elif kind is RunStart:
            of(event).config = run_config(event)
        elif kind is RunEnd:
            points = of(event)
            points.ended = True
            text = f"session {event.session} ended: {event.status}"
            if event.sent is not None:
                text += f", {event.sent} events sent"
            if event.dropped is not None:
                text += f", {event.dropped} dropped in the trainer"
            points.texts.append((event.step, "run/end", text + (f"; {event.error}" if event.error else "")))
        elif kind is ProfilerTrace:
            of(event).texts.append((event.step, "run/profiler_trace", f"{event.format}: {event.path}"))
    for alert in alerts:
        of(alert).texts.append((alert.step, "alerts/" + alert.rule, alert_text(alert)))
    return runs
