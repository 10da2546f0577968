"""Checkpoints of the consumer's state, so a restarted daemon continues where the last one was.

``<log dir>/consumer-state.json`` holds the state of every stateful stage (accounting, the rules'
EMAs, baselines and open conditions, the alert numbering: :class:`~simic.consumer.pipeline.contract.Stateful`)
and the log position it covers. It is written atomically (temporary file, fsync, rename) every
``checkpoint_interval_s`` and at shutdown.

A daemon that starts on a log directory loads the checkpoint and then *catches up*: it runs the
frames logged after that position through the pipeline with its output stages quiet, so even after
a SIGKILL its EMAs and counters are exactly what they would have been without the restart.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from simic.schemas.eventlog import Frame, LogReader, segment_index, segment_paths

from ..pipeline.contract import Pipeline

__all__ = ["STATE_FILE", "Restored", "UnusableCheckpoint", "save_checkpoint", "load_checkpoint", "frames_after"]

STATE_FILE = "consumer-state.json"
STATE_FORMAT = 1


@dataclass(frozen=True)
class Restored:
    """What :func:`load_checkpoint` restored."""

    position: tuple[str, int] | None
    """The log position the state covers: catch up on the frames after it (None: no log was written yet)."""
    stages: tuple[str, ...]
    """The stages whose state was loaded, in pipeline order (a stage the checkpoint does not know, a rule
    enabled since, starts fresh)."""
    saved_ns: int | None
    """When the checkpoint was written (wall clock), if it says."""


class UnusableCheckpoint(Exception):
    """The checkpoint could not be read or loaded. The pipeline may hold part of it: build a fresh one
    and rebuild its state from the whole log."""


def save_checkpoint(path: Path, pipeline: Pipeline, position: tuple[str, int] | None) -> None:
    """Write the pipeline's state and the log position it covers, atomically."""
    data: dict[str, Any] = {
        "format": STATE_FORMAT,
        "saved_ns": time.time_ns(),
        "log_position": list(position) if position else None,
        "stages": {name: stage.state_dict() for name, stage in pipeline.stateful.items()},
    }
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as file:
        json.dump(data, file, separators=(",", ":"))
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: Path, pipeline: Pipeline) -> Restored:
    """Restore state from ``path`` into a freshly built pipeline.

    Raises:
        FileNotFoundError: there is no checkpoint at ``path`` (the pipeline is untouched).
        UnusableCheckpoint: the file is damaged, of another format, or a stage refused its state; the
            pipeline may hold part of it and must be built anew.
    """
    if not path.exists():
        raise FileNotFoundError(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != STATE_FORMAT:
            raise ValueError(f"format {data.get('format')!r}")
        saved = data["stages"]
        if "alert_clock" not in saved and "alerts_made" in data:  # written before the alert clock was a stateful stage
            saved = {**saved, "alert_clock": {"alerts_made": data["alerts_made"]}}
        loaded = []
        for name, stage in pipeline.stateful.items():
            if name in saved:
                stage.load_state_dict(saved[name])
                loaded.append(name)
        position = data.get("log_position")
        position = (str(position[0]), int(position[1])) if position else None
        saved_ns = data.get("saved_ns")
        return Restored(position, tuple(loaded), int(saved_ns) if saved_ns is not None else None)
    except Exception as error:  # a damaged checkpoint costs a full catch-up, never the daemon
        raise UnusableCheckpoint(f"{path}: {error!r}") from error


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
