"""Assembling a pipeline from configuration: the same analysis live and in replay."""

from __future__ import annotations

from pathlib import Path
from typing import TextIO

from ..analysis import RULES
from ..config import ConsumerConfig
from ..sinks.alert_console import ConsoleAlertSink
from ..sinks.alert_jsonl import JsonlAlertSink
from ..sinks.dead_letter import DeadLetterSink
from ..sinks.event_log import EventLogSink
from ..sinks.retention import RetentionPolicy
from .accounting import Accounting
from .alerts import AlertClock, AlertMaker
from .contract import Pipeline, Stage
from .updates import UpdateCombiner

__all__ = ["build_pipeline", "analysis_stages"]


def analysis_stages(config: ConsumerConfig) -> list[Stage]:
    """The enabled rules, in registration order, sharing one alert numbering, after the stage that
    stamps their alerts with the batch's arrival time and the one that combines each update's events."""
    alerts = AlertMaker()
    stages: list[Stage] = [AlertClock(alerts), UpdateCombiner()]
    for name, rule in RULES.items():
        rule_config = getattr(config.rules, name)
        if rule_config.enabled:
            stages.append(rule(rule_config, alerts))
    return stages


def build_pipeline(
    config: ConsumerConfig,
    *,
    log_dir: Path | None = None,
    writer: str = "simic-consumer",
    dead_letter_dir: Path | None = None,
    console: TextIO | None | bool = True,
    alerts_jsonl: Path | None = None,
    extra_sinks: list[Stage] | None = None,
    accounting: Accounting | None = None,
    rules: list[Stage] | None = None,
) -> Pipeline:
    """``[event log] -> [dead letters] -> accounting -> rules -> alert sinks``.

    The event log comes first so that what arrived is on disk before anything else can fail;
    replay builds the same pipeline without it. ``accounting``: the accounting stage to use (made here
    when None); pass one to give it to the sinks that show its counts (metrics, the dashboard). ``rules``:
    the analysis stages (``analysis_stages(config)`` when None); pass them to give one to a sink that follows it.
    """
    stages: list[Stage] = []
    if log_dir is not None:
        retention = RetentionPolicy(max_total_bytes=config.log.max_total_bytes, max_age_s=config.log.max_age,
                                    compression=config.log.compression, compression_level=config.log.compression_level)
        stages.append(EventLogSink(log_dir, max_segment_bytes=config.log.max_segment_bytes, sync_interval_s=config.log.sync_interval_s,
                                   writer=writer, retention=retention))
    if dead_letter_dir is not None:
        stages.append(DeadLetterSink(dead_letter_dir))
    stages.append(accounting if accounting is not None else Accounting(log_interval_s=config.daemon.rejection_log_interval_s))
    stages.extend(rules if rules is not None else analysis_stages(config))
    if console is not False:
        stages.append(ConsoleAlertSink(None if console is True else console))
    if alerts_jsonl is not None:
        stages.append(JsonlAlertSink(alerts_jsonl))
    stages.extend(extra_sinks or [])
    return Pipeline(stages)
