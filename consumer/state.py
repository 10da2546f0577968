"""Checkpoints of the consumer's state, so a restarted daemon continues where the last one was.

``<log dir>/consumer-state.json`` holds the state of every stateful stage (accounting, the rules'
EMAs, baselines and open conditions) and the log position it covers. It is written atomically
(temporary file, fsync, rename) every ``checkpoint_interval_s`` and at shutdown.

A daemon that starts on a log directory loads the checkpoint and then *catches up*: it runs the
frames logged after that position through the pipeline with its alert sinks quiet, so even after
a SIGKILL its EMAs and counters are exactly what they would have been without the restart.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Iterator

from simic.schemas.eventlog import Frame, LogReader, segment_index, segment_paths

from .pipeline import Pipeline, Stage

__all__ = ["STATE_FILE", "save_checkpoint", "load_checkpoint", "frames_after"]

log = logging.getLogger("simic.consumer")

STATE_FILE = "consumer-state.json"
STATE_FORMAT = 1


def _stateful(pipeline: Pipeline) -> dict[str, Stage]:
    return {stage.name: stage for stage in pipeline.stages if hasattr(stage, "state_dict")}


def _alert_maker(pipeline: Pipeline):
    for stage in pipeline.stages:
        maker = getattr(stage, "alerts", None)
        if maker is not None and hasattr(maker, "count"):
            return maker
    return None


def save_checkpoint(path: Path, pipeline: Pipeline, position: tuple[str, int] | None) -> None:
    """Write the pipeline's state and the log position it covers, atomically."""
    maker = _alert_maker(pipeline)
    data: dict[str, Any] = {
        "format": STATE_FORMAT,
        "saved_ns": time.time_ns(),
        "log_position": list(position) if position else None,
        "alerts_made": maker.count if maker else 0,
        "stages": {name: stage.state_dict() for name, stage in _stateful(pipeline).items()},
    }
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as file:
        json.dump(data, file, separators=(",", ":"))
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: Path, pipeline: Pipeline) -> tuple[str, int] | None | bool:
    """Restore state from ``path`` into a freshly built pipeline. Returns the log position it
    covers (None: no log yet), or False when there is no usable checkpoint; after False the
    pipeline may hold part of a damaged checkpoint and must be built anew."""
    if not path.exists():
        return False
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != STATE_FORMAT:
            raise ValueError(f"format {data.get('format')!r}")
        stages = _stateful(pipeline)
        for name, state in data["stages"].items():
            if name in stages:
                stages[name].load_state_dict(state)
        maker = _alert_maker(pipeline)
        if maker is not None:
            maker.count = int(data.get("alerts_made", 0))
    except Exception as error:  # a damaged checkpoint costs a full catch-up, never the daemon
        log.warning("ignoring unusable checkpoint %s: %r; rebuilding state from the whole log", path, error)
        return False
    position = data.get("log_position")
    return (str(position[0]), int(position[1])) if position else None


def frames_after(log_dir: Path, position: tuple[str, int] | None) -> Iterator[Frame]:
    """Frames of the log directory after ``position`` (all of them when it is None). The segment is
    found by its index: it may have been compressed since (``segment-N.simlog.zst``), and offsets are
    those of its plain bytes either way."""
    if not log_dir.is_dir():
        return
    after = segment_index(position[0]) if position is not None else None
    for path in segment_paths(log_dir):
        index = segment_index(path)
        if after is None or index is None or index > after:
            yield from LogReader(path)
        elif index == after:
            yield from LogReader(path, start_offset=position[1])
