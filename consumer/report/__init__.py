"""``simic-consumer report``: a recorded run as one self-contained HTML page.

::

    logs -> replay (the real rules) + SeriesRecorder -> ReportData -> plotly figures -> report.html

The page needs no network to be viewed: plotly.js is inlined once for all figures. plotly is an
optional dependency (``pip install 'simic-telemetry[report]'``); the daemon never needs it.
:func:`collect` (the data, without plotly) is usable on its own, e.g. in a notebook.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..config import ConsumerConfig
from .collect import RankSeries, ReportData, Series, SeriesRecorder, collect

__all__ = ["MissingDependency", "require_plotly", "write_report", "ReportWritten", "collect", "ReportData", "RankSeries", "Series", "SeriesRecorder"]

INSTALL_HINT = "pip install 'simic-telemetry[report]'"


class MissingDependency(RuntimeError):
    """An optional dependency of the report is not installed; the message says what to install."""


def require_plotly() -> None:
    """Raise :class:`MissingDependency` (one line, with the install command) when plotly is absent."""
    try:
        import plotly  # noqa: F401
        import plotly.graph_objects  # noqa: F401
    except ImportError:
        raise MissingDependency(f"the report needs plotly, which is not installed: {INSTALL_HINT}") from None


@dataclass
class ReportWritten:
    """What :func:`write_report` wrote."""

    path: Path
    bytes: int
    events: int
    alerts: int
    runs: int


def write_report(
    targets: Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    config: ConsumerConfig | None = None,
    *,
    title: str | None = None,
    max_points: int = 5000,
) -> ReportWritten:
    """Replay ``targets`` (log files or directories) and write the report to ``output``.

    Args:
        targets: logs to read; several are merged by arrival time, as ``replay`` does.
        output: the HTML file to write.
        config: the analysis configuration (thresholds) to replay with; defaults when None.
        title: page title; default names the runs.
        max_points: most points drawn per line (longer series are thinned, keeping each bucket's
            minimum, maximum and first gap, so spikes and gaps stay visible).

    Raises:
        MissingDependency: plotly is not installed.
    """
    require_plotly()
    from .figures import build_figures
    from .page import render_page

    data = asyncio.run(collect(targets, config or ConsumerConfig()))
    runs = list(data.summary.get("runs", {}))
    title = title or ("simic-telemetry report: " + (", ".join(runs[:4]) + (f" and {len(runs) - 4} more" if len(runs) > 4 else "") if runs else "no runs"))
    page = render_page(data, build_figures(data, max_points=max_points), title=title)
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return ReportWritten(path=path, bytes=len(page.encode("utf-8")), events=data.summary.get("events", 0), alerts=len(data.alerts), runs=len(runs))
