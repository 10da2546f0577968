"""The report's figures, drawn with plotly, all on one step axis.

Every figure spans the same steps, marks every alert with a vertical line (critical red, warning
orange, cleared green and dotted) and draws missing values as gaps. NaN and Inf points are gaps
too, marked with a red band and a label at the top of their panel: a non-finite value never turns
into a zero or a broken page.

This module imports plotly; :func:`simic.consumer.report.require_plotly` checks it is there first.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..analysis.gradient_drift import GradientDriftConfig
from .collect import DriftTrace, GroupKey, ReportData, Series

__all__ = ["Figures", "build_figures", "thin", "drift_note"]

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f", "#d62728")
SEVERITY_COLOURS = {"critical": "#d62728", "warning": "#ff7f0e", "info": "#2ca02c"}
NONFINITE_COLOUR = "#d62728"
ROW_HEIGHT = 210
LEFT_MARGIN = 130
RIGHT_MARGIN = 230
MAX_ALERT_LINES = 200
"""Alerts drawn as lines per figure (the timeline and the table show all of them)."""
MAX_NONFINITE_MARKS = 40
"""Runs of consecutive non-finite points marked per panel (the table lists all)."""
DASHES = ("solid", "dash", "dot", "dashdot", "longdash")


@dataclass
class Figures:
    """The figures of a report, by section id (None: nothing of that kind was recorded)."""

    step_time: go.Figure | None
    grad_norms: go.Figure | None
    clip: go.Figure | None
    lstm: go.Figure | None
    ppo: go.Figure | None
    alerts: go.Figure | None
    alert_lines_capped: bool
    step_range: tuple[float, float]
    grad_norms_note: str = ""
    """What the gradient panel's baseline, limit and marks are: the configured ``gradient_drift`` rule's."""


# -- data helpers ------------------------------------------------------------------------------------


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def thin(values: Sequence[float | None], max_points: int) -> list[int]:
    """Indices of the points to draw when a series is longer than ``max_points``.

    Min-max decimation: per bucket, the smallest and largest finite values (so a spike stays
    visible) and the first missing or non-finite point (so a gap stays a gap).
    """
    n = len(values)
    if n <= max_points:
        return list(range(n))
    bucket = max(1, math.ceil(2 * n / max_points))
    keep: list[int] = []
    for start in range(0, n, bucket):
        low = high = gap = None
        for i in range(start, min(start + bucket, n)):
            v = values[i]
            if not _finite(v):
                if gap is None:
                    gap = i
                continue
            if low is None or v < values[low]:
                low = i
            if high is None or v > values[high]:
                high = i
        keep.extend(sorted({i for i in (low, high, gap) if i is not None}))
    return keep


def _y(values: Iterable[float | None]) -> list[float | None]:
    """Plotted values: missing and non-finite points become gaps."""
    return [v if _finite(v) else None for v in values]


def _pick(items: Sequence, indices: Sequence[int]) -> list:
    return [items[i] for i in indices]


def _has_data(series: Series | None) -> bool:
    return series is not None and any(v is not None for v in series.values)


def _nonfinite_runs(series: Series) -> list[tuple[int, int, int, str]]:
    """``(first_step, last_step, count, label)`` for each run of consecutive non-finite points."""
    runs: list[tuple[int, int, int, str]] = []
    current: list | None = None
    for step, value in zip(series.steps, series.values):
        if value is not None and not math.isfinite(value):
            label = "NaN" if math.isnan(value) else ("+Inf" if value > 0 else "-Inf")
            if current is None:
                current = [step, step, 1, {label}]
            else:
                current[1] = step
                current[2] += 1
                current[3].add(label)
        elif current is not None:
            runs.append((current[0], current[1], current[2], "/".join(sorted(current[3]))))
            current = None
    if current is not None:
        runs.append((current[0], current[1], current[2], "/".join(sorted(current[3]))))
    return runs


# -- figure helpers ----------------------------------------------------------------------------------


class _Builder:
    """Shared look, shared x range, alert lines and non-finite marks for every figure."""

    def __init__(self, data: ReportData, max_points: int) -> None:
        self.data = data
        self.max_points = max_points
        low, high = data.step_range or (0, 1)
        pad = max(1.0, (high - low) * 0.01)
        self.x_range = (low - pad, high + pad)
        self.multi = len(data.groups) > 1
        self.group_index = {key: i for i, key in enumerate(data.groups)}
        self.alerts = sorted(data.alerts, key=lambda a: a.step)
        self.alert_lines_capped = len(self.alerts) > MAX_ALERT_LINES
        self._marks: dict[int, dict[tuple[int, int, int], tuple[list[str], list[str]]]] = {}

    def label(self, name: str, key: GroupKey) -> str:
        """A trace name (plotly reads names as markup: names from the log are escaped)."""
        return html.escape(f"{name} · {key[0]} r{key[1]}" if self.multi else name)

    def colour(self, key: GroupKey, index: int) -> str:
        """Colour of a trace: by its series within a panel, or by run/rank when there are several."""
        return PALETTE[(self.group_index[key] if self.multi else index) % len(PALETTE)]

    def subplots(self, titles: Sequence[str], y_titles: Sequence[str]) -> go.Figure:
        rows = len(titles)
        fig = make_subplots(
            rows=rows, cols=1, shared_xaxes=True, subplot_titles=list(titles) if rows > 1 else None,
            vertical_spacing=min(0.08, 0.35 / max(rows - 1, 1)) if rows > 1 else 0.0,
        )
        for row, y_title in enumerate(y_titles, start=1):
            fig.update_yaxes(title_text=y_title, row=row, col=1)
        fig.update_layout(height=ROW_HEIGHT * rows + 90)
        return fig

    def line(self, fig: go.Figure, row: int, key: GroupKey, name: str, series: Series, index: int, *,
             dash: str | None = None, width: float = 1.6, legend: bool = True) -> None:
        series = series.sorted()
        keep = thin(series.values, self.max_points)
        steps, values = _pick(series.steps, keep), _pick(series.values, keep)
        fig.add_trace(
            go.Scatter(
                x=steps, y=_y(values), name=self.label(name, key), mode="lines+markers" if len(steps) <= 80 else "lines",
                line=dict(color=self.colour(key, index), width=width, dash=dash or (DASHES[index % len(DASHES)] if self.multi else "solid")),
                marker=dict(size=4), connectgaps=False, legendgroup=self.label(name, key), showlegend=legend,
            ),
            row=row, col=1,
        )
        self.mark_nonfinite(fig, row, self.label(name, key), series)

    def mark_nonfinite(self, fig: go.Figure, row: int, name: str, series: Series) -> None:
        runs = _nonfinite_runs(series)
        for first, last, count, label in runs[:MAX_NONFINITE_MARKS]:
            self.mark(fig, row, first, last, f"{label}" + (f" ×{count}" if count > 1 else ""), f"{name}: {label} at step {first}" + (f"..{last} ({count} points)" if count > 1 else ""))
        if len(runs) > MAX_NONFINITE_MARKS:
            fig.add_annotation(row=row, col=1, xref="x domain", yref="y domain", x=1, y=1, xanchor="right", yanchor="bottom",
                               text=f"{len(runs) - MAX_NONFINITE_MARKS} more non-finite stretches (see the table)",
                               showarrow=False, font=dict(color=NONFINITE_COLOUR, size=10))

    def mark(self, fig: go.Figure, row: int, first: int, last: int, text: str, hover: str) -> None:
        """Mark a non-finite stretch of a panel (marks of one place are merged when the figure is
        finished). ``text`` and ``hover`` are markup: escape what came from the log."""
        texts, hovers = self._marks.setdefault(id(fig), {}).setdefault((row, first, last), ([], []))
        if text not in texts:
            texts.append(text)
        hovers.append(hover)

    def _draw_marks(self, fig: go.Figure) -> None:
        for (row, first, last), (texts, hovers) in self._marks.pop(id(fig), {}).items():
            self._draw_mark(fig, row, first, last, ", ".join(texts), "<br>".join(hovers[:10]))

    def _draw_mark(self, fig: go.Figure, row: int, first: int, last: int, text: str, hover: str) -> None:
        if first == last:
            fig.add_shape(type="line", x0=first, x1=first, y0=0, y1=1, xref="x", yref="y domain", row=row, col=1,
                          line=dict(color=NONFINITE_COLOUR, width=2, dash="dot"))
        else:
            fig.add_shape(type="rect", x0=first, x1=last, y0=0, y1=1, xref="x", yref="y domain", row=row, col=1,
                          fillcolor=NONFINITE_COLOUR, opacity=0.15, line=dict(width=0))
        fig.add_annotation(row=row, col=1, x=first, y=1, xref="x", yref="y domain", yanchor="bottom", text=text,
                           hovertext=hover, showarrow=False, font=dict(color=NONFINITE_COLOUR, size=11),
                           bgcolor="rgba(255,255,255,0.8)")

    def finish(self, fig: go.Figure, *, log_toggle: bool = True, rows: int = 1) -> go.Figure:
        """Shared x range, alert lines, non-finite marks, the common look. Fixed margins keep the
        plot areas of all figures the same width, so one step sits at one horizontal position."""
        self._draw_marks(fig)
        for alert in self.alerts[:MAX_ALERT_LINES]:
            colour = SEVERITY_COLOURS["info"] if alert.cleared else SEVERITY_COLOURS.get(alert.severity, "#7f7f7f")
            fig.add_shape(type="line", x0=alert.step, x1=alert.step, y0=0, y1=1, xref="x", yref="paper", layer="below",
                          line=dict(color=colour, width=1.2, dash="dot" if alert.cleared else "solid"), opacity=0.55)
        fig.update_xaxes(range=list(self.x_range), showgrid=True)
        fig.update_xaxes(title_text="step", row=rows, col=1)
        fig.update_layout(
            template="plotly_white", hovermode="x unified", margin=dict(l=LEFT_MARGIN, r=RIGHT_MARGIN, t=56, b=50, autoexpand=False),
            legend=dict(orientation="v", x=1.01, xanchor="left", y=1, font=dict(size=11)),
        )
        if log_toggle:
            axes = [name for name in fig.layout.to_plotly_json() if name.startswith("yaxis")] or ["yaxis"]
            fig.update_layout(updatemenus=[dict(
                type="buttons", direction="right", x=1.0, xanchor="right", y=1.0, yanchor="bottom", showactive=True,
                pad=dict(t=2, b=2), font=dict(size=10),
                buttons=[
                    dict(label="linear", method="relayout", args=[{f"{a}.type": "linear" for a in axes}]),
                    dict(label="log", method="relayout", args=[{f"{a}.type": "log" for a in axes}]),
                ],
            )])
        return fig


# -- the figures -------------------------------------------------------------------------------------


def _step_time(b: _Builder) -> go.Figure | None:
    groups = {key: g.timing_ms for key, g in b.data.groups.items() if any(_has_data(s) for s in g.timing_ms.values())}
    if not groups:
        return None
    fig = b.subplots(["step time per phase"], ["ms"])
    for key, phases in groups.items():
        for index, (phase, series) in enumerate(phases.items()):
            if _has_data(series):
                b.line(fig, 1, key, phase, series, index)
    return b.finish(fig)


def _heads_in_order(data: ReportData) -> list[str]:
    heads: list[str] = []
    for start in data.starts:
        heads.extend(h for h in start.heads if h not in heads)
    for group in data.groups.values():
        for section in (group.head_norms, group.head_norms_post_clip):
            heads.extend(h for h, s in section.items() if h not in heads and _has_data(s))
    measured = {h for g in data.groups.values() for sec in (g.head_norms, g.head_norms_post_clip) for h, s in sec.items() if _has_data(s)}
    return [h for h in heads if h in measured]


def drift_note(config: GradientDriftConfig | None) -> str:
    """What the gradient panel draws besides the norms, in the configuration's own numbers."""
    if config is None:
        return "The gradient_drift rule is off in this configuration: no baseline or drift marks are drawn."
    if not config.per_head:
        return "gradient_drift.per_head is off in this configuration: the rule judges the total norm only, so no head is marked."
    return (f"As gradient_drift judged each head's update (head_rise {config.head_rise:g}, head_noise_z {config.head_noise_z:g}, "
            f"head_new_high {config.head_new_high:g}, warmup {config.warmup}): the baseline is the head's usual level before the "
            f"update (the median of its last 10 usual updates); the limit is the lowest norm that drifts: above "
            f"{config.head_rise:g} × the baseline, {config.head_noise_z:g} times the head's jitter above it and "
            f"{config.head_new_high:g} × its highest of the last 24 usual updates (none during the warmup); a diamond marks an "
            f"update the rule judged drifting, filled once its alert is active ({config.head_jump_after} drifting updates in a row at "
            f"{config.head_jump:g} × the baseline or more, or {config.head_fire_after} in a row still growing, the last the highest "
            f"and {config.head_growth:g} × the first, fire it; {config.clear_after} usual ones clear it).")


def _drift(b: _Builder, fig: go.Figure, row: int, key: GroupKey, trace: DriftTrace, colour: str, legend) -> None:
    """The rule's baseline and limit for one head, and a mark on every update it judged drifting."""
    judged = trace.sorted()
    keep = thin([j.norm for j in judged], b.max_points)
    chosen = [judged[i] for i in keep]
    steps = [j.step for j in chosen]
    baseline, limit = b.label("gradient_drift baseline", key), b.label("drift limit", key)
    fig.add_trace(go.Scatter(x=steps, y=[j.baseline for j in chosen], mode="lines", name=baseline,
                             line=dict(color=_darker(colour), width=1.4, dash="dash"), legendgroup=baseline,
                             showlegend=legend(baseline), connectgaps=False), row=row, col=1)
    fig.add_trace(go.Scatter(x=steps, y=[j.limit for j in chosen], mode="lines", name=limit,
                             line=dict(color=colour, width=1.0, dash="dot"), fill=None, legendgroup=limit,
                             showlegend=legend(limit), connectgaps=False), row=row, col=1)
    drifted = [j for j in judged if j.drifted]
    drifted = drifted[:: len(drifted) // b.max_points + 1]  # a noisy head with a loose configuration drifts often: thin these too
    for firing, name in ((False, "drifting update"), (True, "drifting, alert active")):
        points = [j for j in drifted if j.firing == firing]
        if not points:
            continue
        label = b.label(name, key)
        fig.add_trace(go.Scatter(
            x=[j.step for j in points], y=[j.norm for j in points], mode="markers", name=label, legendgroup=label,
            showlegend=legend(label),
            marker=dict(color="#d62728", size=8, symbol="diamond" if firing else "diamond-open", line=dict(width=1.5)),
            hovertext=[html.escape(f"{j.head} at step {j.step}: norm {j.norm:.4g} above the limit {j.limit:.4g} "
                                   f"(baseline {j.baseline:.4g})") for j in points],
            hoverinfo="text"), row=row, col=1)


def _grad_norms(b: _Builder) -> go.Figure | None:
    heads = _heads_in_order(b.data)
    if not heads:
        return None
    fig = b.subplots([html.escape(f"head {h}") for h in heads], ["grad norm"] * len(heads))
    shown: set[str] = set()

    def legend(name: str) -> bool:
        first = name not in shown
        shown.add(name)
        return first

    for row, head in enumerate(heads, start=1):
        for key, group in b.data.groups.items():
            colour = b.colour(key, 0)
            primary = group.head_norms.get(head)
            post = group.head_norms_post_clip.get(head)
            if _has_data(primary):
                b.line(fig, row, key, "norm", primary, 0, legend=legend(b.label("norm", key)))
                trace = group.drift.get(head)
                if trace is not None and trace.judgements:
                    _drift(b, fig, row, key, trace, colour, legend)
            if _has_data(post):
                b.line(fig, row, key, "post-clip norm", post, 1, dash="dot", width=1.2, legend=legend(b.label("post-clip norm", key)))
        for step, count in sorted({(s, c) for g in b.data.groups.values() for s, h, c in g.nonfinite_grads if h == head})[:MAX_NONFINITE_MARKS]:
            b.mark(fig, row, step, step, f"{count} non-finite", html.escape(f"{head}: {count} non-finite gradient elements at step {step}"))
    return b.finish(fig, rows=len(heads))


def _clip(b: _Builder) -> go.Figure | None:
    labels = {"pre_clip": "pre-clip total", "post_clip": "post-clip total", "total": "total (stage not given)", "max_norm": "clip threshold"}
    groups = {key: g.clip for key, g in b.data.groups.items() if any(_has_data(s) for s in g.clip.values())}
    if not groups:
        return None
    fig = b.subplots(["total gradient norm before and after clipping"], ["grad norm"])
    for key, clip in groups.items():
        for index, name in enumerate(labels):
            if _has_data(clip.get(name)):
                b.line(fig, 1, key, labels[name], clip[name], index, dash="dash" if name == "max_norm" else None)
    return b.finish(fig)


def _rows_figure(b: _Builder, rows: list[tuple[str, str, list[tuple[str, dict[GroupKey, Series]]]]],
                 flags: dict[int, list[tuple[int, str]]] | None = None) -> go.Figure | None:
    """One panel per row; each row holds named series of every run/rank. Rows with no data are left out."""
    rows = [(t, y, [(n, {k: s for k, s in by.items() if _has_data(s)}) for n, by in lines]) for t, y, lines in rows]
    rows = [(t, y, [(n, by) for n, by in lines if by]) for t, y, lines in rows]
    rows = [row for row in rows if row[2]]
    if not rows:
        return None
    fig = b.subplots([r[0] for r in rows], [r[1] for r in rows])
    for row, (_, _, lines) in enumerate(rows, start=1):
        for index, (name, by_group) in enumerate(lines):
            for key, series in by_group.items():
                b.line(fig, row, key, name, series, index)
    for step, label in sorted(set((flags or {}).get(0, [])))[:MAX_NONFINITE_MARKS]:
        b.mark(fig, 1, step, step, label, f"LSTM state {label.replace('_', ' ')} at step {step}")
    return b.finish(fig, rows=len(rows))


def _lstm(b: _Builder) -> go.Figure | None:
    # A model with several recurrent cores (an actor's and a critic's LSTM) has a series per core: "h_norm@actor".
    cores = sorted({key.partition("@")[2] for g in b.data.groups.values() for key in g.lstm})

    def by(name: str, core: str) -> dict[GroupKey, Series]:
        key = f"{name}@{core}" if core else name
        return {group: g.lstm[key] for group, g in b.data.groups.items() if key in g.lstm}

    def lines(*pairs: tuple[str, str]) -> list[tuple[str, dict[GroupKey, Series]]]:
        return [(f"{label} ({core})" if core else label, by(name, core)) for core in cores for label, name in pairs]

    flags = {0: [flag for g in b.data.groups.values() for flag in g.lstm_flags]}
    return _rows_figure(b, [
        ("L2 norm", "norm", lines(("h norm", "h_norm"), ("c norm", "c_norm"))),
        ("largest absolute value", "max |x|", lines(("h max |x|", "h_max_abs"), ("c max |x|", "c_max_abs"))),
        ("RMS (and the largest per-environment RMS)", "rms", lines(("h rms", "h_rms"), ("c rms", "c_rms"),
                                                                   ("h env max rms", "h_env_max_rms"), ("c env max rms", "c_env_max_rms"))),
    ], flags)


def _ppo(b: _Builder) -> go.Figure | None:
    def by(name: str) -> dict[GroupKey, Series]:
        return {key: g.ppo[name] for key, g in b.data.groups.items() if name in g.ppo}

    heads = sorted({h for g in b.data.groups.values() for h in g.entropy})
    entropy = [(f"entropy {h}", {key: g.entropy[h] for key, g in b.data.groups.items() if h in g.entropy}) for h in heads]
    fig = _rows_figure(b, [
        ("losses", "loss", [("policy loss", by("policy_loss")), ("value loss", by("value_loss"))]),
        ("approximate KL", "KL", [("approx KL", by("approx_kl"))]),
        ("clip fraction", "fraction", [("clip fraction", by("clip_fraction"))]),
        ("probability ratio min / max", "ratio", [("ratio min", by("ratio_min")), ("ratio max", by("ratio_max"))]),
        ("entropy per head", "entropy", entropy),
        ("explained variance", "EV", [("explained variance", by("explained_variance"))]),
        ("learning rate", "lr", [("learning rate", by("learning_rate"))]),
    ])
    return fig


def _alert_timeline(b: _Builder) -> go.Figure | None:
    if not b.alerts:
        return None
    rules = sorted({html.escape(a.rule) for a in b.alerts})
    fig = b.subplots(["alerts by rule"], ["rule"])
    for severity in ("critical", "warning", "info"):
        for cleared in (False, True):
            chosen = [a for a in b.alerts if a.severity == severity and a.cleared == cleared]
            if not chosen:
                continue
            fig.add_trace(go.Scatter(
                x=[a.step for a in chosen], y=[html.escape(a.rule) for a in chosen], mode="markers",
                name="cleared" if cleared else severity,
                marker=dict(color=SEVERITY_COLOURS["info" if cleared else severity], size=11,
                            symbol="circle-open" if cleared else "diamond", line=dict(width=2)),
                hovertext=[html.escape(f"{'cleared' if a.cleared else a.severity} {a.rule} run={a.run_id} rank={a.rank} step={a.step}: {a.message}"[:400])
                           for a in chosen],
                hoverinfo="text",
            ), row=1, col=1)
    fig.update_yaxes(categoryorder="array", categoryarray=rules, type="category")
    fig.update_layout(height=max(220, 40 * len(rules) + 170))
    return b.finish(fig, log_toggle=False).update_layout(hovermode="closest")


def build_figures(data: ReportData, *, max_points: int = 5000) -> Figures:
    """Every figure of the report (None for a section with nothing recorded)."""
    b = _Builder(data, max_points)
    return Figures(
        step_time=_step_time(b),
        grad_norms=_grad_norms(b),
        clip=_clip(b),
        lstm=_lstm(b),
        ppo=_ppo(b),
        alerts=_alert_timeline(b),
        alert_lines_capped=b.alert_lines_capped,
        step_range=b.x_range,
        grad_norms_note=drift_note(data.drift_config),
    )


def _alpha(colour: str, alpha: float) -> str:
    r, g, bl = (int(colour[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{bl},{alpha})"


def _darker(colour: str, factor: float = 0.7) -> str:
    r, g, bl = (int(int(colour[i:i + 2], 16) * factor) for i in (1, 3, 5))
    return f"#{r:02x}{g:02x}{bl:02x}"
