"""``simic-consumer replay``: recorded logs through the same analysis as the live daemon.

Analysis runs on event time (the producer's clock and step), so with the same configuration a
replay raises the same alerts the live run raised; with another configuration it answers "what
would have fired with these thresholds".
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence, TextIO

from simic.schemas.eventlog import FRAME_MESSAGE, FRAME_TICK, LogProblem
from simic.schemas.models import Alert

from ..config import ConsumerConfig
from ..pipeline.accounting import Accounting
from ..pipeline.build import build_pipeline
from ..pipeline.contract import Pipeline, Stage
from ..sinks.retention import first_kept_segments, retention_summary
from ..sources.log_files import LogFilesSource
from ..testing import RecordingSink

__all__ = ["ReplayResult", "replay"]


@dataclass
class ReplayResult:
    alerts: list[Alert] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    problems: list[LogProblem] = field(default_factory=list)
    state: dict[str, Any] = field(default_factory=dict)
    """Final state of every stateful stage (what a daemon's checkpoint would hold)."""


async def run_source(source: LogFilesSource, pipeline: Pipeline, accounting: Accounting | None = None,
                     cut_heads: frozenset[Path] = frozenset()) -> None:
    """Every frame of ``source`` through ``pipeline``. ``cut_heads``: the oldest kept segment of each
    log retention cut (``retention.first_kept_segments``), where sessions may have begun before the log;
    the pipeline's ``accounting`` is told when a frame comes from one."""
    await pipeline.start()
    try:
        for frame in source:
            if cut_heads and accounting is not None:
                accounting.after_cut = frame.path in cut_heads
            if frame.type == FRAME_TICK:
                await pipeline.tick(frame.recv_ns, note=frame.payload)
            elif frame.type == FRAME_MESSAGE:
                await pipeline.consume(frame.payload, frame.recv_ns)
    finally:
        await pipeline.close()


async def replay(
    targets: Sequence[str | os.PathLike[str]],
    config: ConsumerConfig,
    *,
    console: TextIO | bool = False,
    analysis: bool = True,
    rules: list[Stage] | None = None,
    extra_sinks: Sequence[Stage] = (),
) -> ReplayResult:
    """Replay logs (files or directories; several are merged by arrival time).

    With ``analysis=False`` only the accounting runs (what ``inspect`` needs). ``rules``: the analysis
    stages to run (``build.analysis_stages(config)`` when None); pass them to give one to a sink that
    follows it (the report's recorder follows the drift rule's judgements). ``extra_sinks`` run last,
    after the alert collector (the report's series recorder rides along this way).
    """
    source = LogFilesSource(targets)
    collector = RecordingSink(alerts_only=True)
    accounting = Accounting(log_interval_s=config.daemon.rejection_log_interval_s)
    if analysis:
        pipeline = build_pipeline(config, console=console, accounting=accounting, rules=rules, extra_sinks=[collector, *extra_sinks])
    else:
        pipeline = Pipeline([accounting, collector, *extra_sinks])
    await run_source(source, pipeline, accounting, frozenset(first_kept_segments(targets)))
    summary = accounting.summary()
    summary["retention"] = retention_summary(targets)
    summary["log_problems"] = [
        {"path": str(p.path), "offset": p.offset, "length": p.length, "kind": p.kind, "detail": p.detail} for p in source.problems
    ]
    summary["stage_errors"] = dict(pipeline.stage_errors)
    state = {name: stage.state_dict() for name, stage in pipeline.stateful.items()}
    return ReplayResult(alerts=collector.alerts, summary=summary, problems=source.problems, state=state)
