"""Weights & Biases runs, written with the wandb SDK (``pip install 'simic-telemetry[wandb]'``).

One wandb run per (run, rank): id ``<run_id>-rank<N>`` (made a safe id when it is not one), name
``<run_id> rank <N>``, grouped by run id, with ``run_start`` as its config. The training step is the
``step`` key, declared as the x axis of every other key (``define_metric``), so points that arrive out
of step order (a GPU readout one step late) are kept, not dropped as ``log(step=...)`` would. Each
step's scalars are one ``log`` call; each alert is a text value under ``alerts/<rule>``.

The mode (online or offline) is wandb's own choice (``WANDB_MODE``, ``wandb login``) unless given.
Offline runs are kept under ``DIR/wandb/offline-run-*`` for ``wandb sync``. The sidecar's runs do not
capture the console, git state, code or system metrics: the trainer's own wandb run does that.
"""

from __future__ import annotations

import os
from collections import defaultdict
from typing import Any, Literal

from .points import RunPoints
from .sink import MissingExtra, RunExporter
from .tensorboard import safe_name

__all__ = ["WandbExporter", "STEP_KEY"]

INSTALL_HINT = "pip install 'simic-telemetry[wandb]'"
STEP_KEY = "step"
"""The key that holds the training step in every logged row: the x axis of every chart."""


class WandbExporter(RunExporter):
    """Logs points to one wandb run per run and rank.

    Args:
        project: the wandb project.
        directory: where wandb keeps its files (``DIR/wandb/...``).
        entity: the wandb entity (team or user); None: the default one.
        mode: ``"online"`` or ``"offline"``; None: what ``WANDB_MODE`` or wandb's settings say.

    Raises:
        MissingExtra: wandb is not installed.
    """

    name = "wandb"

    def __init__(self, project: str, directory: str | os.PathLike[str], *, entity: str | None = None,
                 mode: Literal["online", "offline"] | None = None) -> None:
        super().__init__()
        try:
            import wandb
        except ImportError:
            raise MissingExtra(f"exporting to wandb needs the wandb SDK, which is not installed: {INSTALL_HINT}") from None
        self._wandb = wandb
        self.project = project
        self.directory = str(directory)
        self.entity = entity
        self.mode = mode
        self.where = f"wandb project {project}" + (f" ({mode})" if mode else "") + f", files in {self.directory}"

    def open_run(self, run_id: str, rank: int) -> Any:
        wandb = self._wandb
        os.makedirs(self.directory, exist_ok=True)
        run = wandb.init(
            project=self.project, entity=self.entity, dir=self.directory, mode=self.mode,
            id=safe_name(f"{run_id}-rank{rank}", limit=64), name=f"{run_id} rank {rank}", group=run_id, job_type="simic",
            reinit="create_new", resume="allow",
            settings=wandb.Settings(silent=True, console="off", x_disable_stats=True, disable_git=True, disable_code=True,
                                    disable_job_creation=True),
        )
        run.define_metric(STEP_KEY)
        run.define_metric("*", step_metric=STEP_KEY)
        return run

    def write_run(self, run: Any, points: RunPoints) -> None:
        if points.config is not None:
            run.config.update(points.config, allow_val_change=True)
        rows: defaultdict[int, dict[str, Any]] = defaultdict(dict)
        for step, tag, value in points.scalars:
            rows[step][tag] = value
        for step, tag, text in points.texts:
            row = rows[step]
            row[tag] = f"{row[tag]}\n{text}" if tag in row else text  # two alerts of one rule at one step: both
        log = run.log
        for step, row in rows.items():
            row[STEP_KEY] = step
            log(row)

    def close_run(self, run: Any) -> None:
        run.finish()
