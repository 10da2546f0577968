"""Exporters: the events and alerts the sidecar receives, written to TensorBoard and wandb.

::

    pipeline ... -> alert sinks -> ExportSink (bounded queue) --thread--> TensorBoardExporter -> DIR/<run>/rank<N>/events.*
                                -> ExportSink (bounded queue) --thread--> WandbExporter       -> one wandb run per run and rank

What is written (scalars on the training-step axis, alerts as text, ``run_start`` as the config) is in
:mod:`.points`; how a slow or failing exporter is kept away from the receive path in :mod:`.sink`. The
libraries are optional extras, imported only when an exporter is made: ``simic-telemetry[tensorboard]``
(tensorboardX, and TensorBoard to view and read the files) and ``simic-telemetry[wandb]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from .points import RunPoints, points_of, run_config
from .sink import Exporter, ExportSink, ExportStats, MissingExtra, RunExporter

if TYPE_CHECKING:
    from ...config import ExportConfig

__all__ = ["Exporter", "RunExporter", "ExportSink", "ExportStats", "MissingExtra", "RunPoints", "points_of", "run_config",
           "export_sinks"]


def export_sinks(config: "ExportConfig", *, log_dir: Path | None, when_full: Literal["drop", "wait"] = "drop") -> list[ExportSink]:
    """The exporters the configuration turns on, each behind its own queue.

    Args:
        config: the ``[export]`` section.
        log_dir: the daemon's log directory: wandb's files go there unless ``export.wandb.dir`` says otherwise.
        when_full: ``"drop"`` for the daemon (closing waits ``export.close_timeout_s`` at most), ``"wait"``
            for replayed logs (nothing is dropped, closing waits until everything is written).

    Raises:
        MissingExtra: an exporter is on and its library is not installed.
    """
    exporters: list[Exporter] = []
    if config.tensorboard.dir is not None:
        from .tensorboard import TensorBoardExporter

        exporters.append(TensorBoardExporter(config.tensorboard.dir, flush_secs=config.tensorboard.flush_secs))
    if config.wandb.project is not None:
        from .wandb import WandbExporter

        directory = config.wandb.dir if config.wandb.dir is not None else (log_dir or Path("."))
        exporters.append(WandbExporter(config.wandb.project, directory, entity=config.wandb.entity, mode=config.wandb.mode))
    timeout = None if when_full == "wait" else config.close_timeout_s
    return [ExportSink(exporter, queue_batches=config.queue_batches, when_full=when_full, close_timeout_s=timeout)
            for exporter in exporters]
