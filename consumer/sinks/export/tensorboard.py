"""TensorBoard event files, written with tensorboardX (``pip install 'simic-telemetry[tensorboard]'``).

One run directory per (run, rank): ``DIR/<run_id>/rank<N>`` (a run id that is not a safe file name is
made one, with a short hash of the original so two runs never share a directory). Scalars go to the
SCALARS tab, alerts and the session's end to TEXT, ``run_start`` to TEXT (``run/config``) and to the
HPARAMS tab. ``tensorboard --logdir DIR`` shows them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from .points import RunPoints
from .sink import MissingExtra, RunExporter

__all__ = ["TensorBoardExporter", "run_directory"]

INSTALL_HINT = "pip install 'simic-telemetry[tensorboard]'"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def safe_name(name: str, limit: int = 100) -> str:
    """``name`` as a file name (or wandb id): unchanged when it already is one, else with the unsafe
    characters replaced and a short hash of the original appended, so different names stay apart."""
    safe = _UNSAFE.sub("_", name)[:limit]
    if safe == name and name not in (".", ".."):
        return name
    return f"{safe.strip('.') or 'run'}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"


def run_directory(root: Path, run_id: str, rank: int) -> Path:
    """Where the events of one (run, rank) go."""
    return root / safe_name(run_id) / f"rank{rank}"


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, bool | int | float | str]:
    """Nested config as the flat name -> value mapping TensorBoard's HPARAMS tab takes."""
    flat: dict[str, bool | int | float | str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flat(value, name + "/"))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:
            flat[name] = json.dumps(value)
    return flat


class TensorBoardExporter(RunExporter):
    """Writes points as TensorBoard events under ``directory`` (one run directory per run and rank).

    Args:
        directory: the ``--logdir`` of TensorBoard.
        flush_secs: how often tensorboardX's writer flushes its event files (and at every session end).

    Raises:
        MissingExtra: tensorboardX is not installed.
    """

    name = "tensorboard"

    def __init__(self, directory: str | os.PathLike[str], *, flush_secs: float = 5.0) -> None:
        super().__init__()
        try:
            from tensorboardX import SummaryWriter
            from tensorboardX.summary import hparams
        except ImportError:
            raise MissingExtra(f"exporting to TensorBoard needs tensorboardX, which is not installed: {INSTALL_HINT}") from None
        # NaN and Inf are data here (what the rules look for): tensorboardX would log a warning for each.
        logging.getLogger("tensorboardX.x2num").setLevel(logging.ERROR)
        self._writer_class = SummaryWriter
        self._hparams = hparams
        self.directory = Path(directory)
        self.where = str(self.directory)
        self.flush_secs = flush_secs
        self._opened = 0

    def open_run(self, run_id: str, rank: int) -> Any:
        self._opened += 1
        # The suffix keeps a reopened run (a new session) from overwriting the file of the last one, whose
        # name tensorboardX makes from the second it was opened in.
        return self._writer_class(logdir=str(run_directory(self.directory, run_id, rank)), flush_secs=self.flush_secs,
                                  filename_suffix=f".{os.getpid()}.{self._opened}")

    def write_run(self, writer: Any, points: RunPoints) -> None:
        add_scalar = writer.add_scalar
        for step, tag, value in points.scalars:
            add_scalar(tag, value, step)
        for step, tag, text in points.texts:
            writer.add_text(tag, text, step)
        if points.config is not None:
            writer.add_text("run/config", "```\n" + json.dumps(points.config, indent=2, default=str) + "\n```", 0)
            for summary in self._hparams(_flat(points.config), {}):  # the HPARAMS tab: experiment, session start and end
                writer.file_writer.add_summary(summary)

    def close_run(self, writer: Any) -> None:
        writer.close()
