"""The report page: one self-contained HTML file (plotly.js inlined once, no network needed).

Layout, top to bottom: the run header (sessions and their metadata, configuration, event counts,
losses, rejections, log problems), the alert and non-finite tables, then one section per figure.
Every string that came from a log is HTML-escaped; plotly escapes what it embeds itself.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
from importlib import metadata
from typing import Any, Iterable, Sequence

from plotly.offline import get_plotlyjs

from ..pipeline.alerts import json_safe
from .collect import ReportData
from .figures import Figures

__all__ = ["render_page", "SECTIONS"]

SECTIONS = (
    ("step-time", "Step time", "step_time",
     "Elapsed time of each phase of a training step, in milliseconds, as the trainer measured it (CUDA events or host clock)."),
    ("grad-norms", "Gradient norm per head", "grad_norms",
     "Per action head: the gradient L2 norm of each update (minibatches combined as the rules combine them), and what the "
     "gradient_drift rule computed from it with the configuration of this report (--config): the baseline it compared the "
     "update with, the drift limit, and a mark on exactly the updates it judged drifting. Post-clip norms, when sent, are dotted."),
    ("clip", "Pre / post clip", "clip", "Total gradient norm before and after clipping, and the clipping threshold."),
    ("lstm", "LSTM state", "lstm", "Norms, largest absolute values and RMS of the recurrent core's hidden (h) and cell (c) state."),
    ("ppo", "PPO update", "ppo",
     "Losses, approximate KL, clip fraction, probability ratio range, entropy per head and explained variance of each update."),
    ("alerts", "Alerts", "alerts", "Every alert the analysis rules raised on this log, on the same step axis (hover for the message)."),
)
"""``(id, title, Figures attribute, caption)`` of each figure section, in page order."""

MAX_TABLE_ROWS = 500

_CSS = """
:root { --fg:#1d2330; --muted:#5d6677; --line:#e3e6ec; --bg:#f6f7f9; --crit:#d62728; --warn:#e67e00; --ok:#2c9f2c; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif; color:var(--fg); background:var(--bg); }
header { background:#1d2330; color:#fff; padding:18px 28px 14px; }
header h1 { margin:0 0 4px; font-size:21px; font-weight:600; }
header .sub { color:#b9c0cc; font-size:12.5px; }
nav { position:sticky; top:0; z-index:10; background:#fff; border-bottom:1px solid var(--line); padding:8px 28px; font-size:13px; }
nav a { color:#1f5fbf; margin-right:16px; text-decoration:none; }
main { padding:18px 28px 40px; }
.cards { display:flex; flex-wrap:wrap; gap:10px; margin:0 0 18px; }
.card { background:#fff; border:1px solid var(--line); border-radius:8px; padding:9px 14px; min-width:120px; }
.card .v { font-size:20px; font-weight:600; }
.card .k { color:var(--muted); font-size:12px; }
.card.bad .v { color:var(--crit); }
.card.warn .v { color:var(--warn); }
.panel { background:#fff; border:1px solid var(--line); border-radius:8px; padding:12px 16px; margin:0 0 16px; }
.panel h2 { font-size:16px; margin:2px 0 8px; }
.panel p.caption { color:var(--muted); margin:0 0 6px; font-size:12.5px; }
.grid { display:grid; grid-template-columns:repeat(auto-fit,minmax(300px,1fr)); gap:16px; }
table { border-collapse:collapse; width:100%; font-size:12.5px; }
th, td { text-align:left; padding:4px 8px; border-bottom:1px solid var(--line); vertical-align:top; }
th { color:var(--muted); font-weight:600; background:#fafbfc; }
td.num, th.num { text-align:right; font-variant-numeric:tabular-nums; }
pre { background:#fafbfc; border:1px solid var(--line); border-radius:6px; padding:8px; margin:4px 0; max-height:260px; overflow:auto; font-size:12px; }
.pill { display:inline-block; border-radius:10px; padding:0 8px; font-size:11.5px; font-weight:600; color:#fff; background:#7f7f7f; }
.pill.critical, .pill.error, .pill.crashed { background:var(--crit); }
.pill.warning, .pill.open, .pill.interrupted, .pill.exit { background:var(--warn); }
.pill.info, .pill.ok, .pill.cleared { background:var(--ok); }
.none { color:var(--muted); }
.note { color:var(--muted); font-size:12.5px; font-style:italic; }
"""

# Zooming or panning the step axis of one figure moves every figure: they share one step axis.
_SYNC_JS = """
window.addEventListener("load", function () {
  var plots = Array.prototype.slice.call(document.querySelectorAll(".js-plotly-plot"));
  var home = %(home)s, busy = false;
  plots.forEach(function (plot) {
    plot.on("plotly_relayout", function (ev) {
      if (busy) return;
      var range = null;
      for (var key in ev) {
        var m = key.match(/^xaxis\\d*\\.(range\\[0\\]|range\\[1\\]|range|autorange)$/);
        if (!m) continue;
        if (m[1] === "autorange") { range = home; break; }
        if (m[1] === "range") { range = ev[key]; break; }
        var axis = key.split(".")[0];
        range = [ev[axis + ".range[0]"], ev[axis + ".range[1]"]];
        break;
      }
      if (!range || range[0] === undefined || range[1] === undefined) return;
      busy = true;
      Promise.all(plots.map(function (other) {
        return (other === plot && range !== home) ? null : Plotly.relayout(other, {"xaxis.range": range.slice()});
      })).then(function () { busy = false; }, function () { busy = false; });
    });
  });
});
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]], numeric: Sequence[int] = ()) -> str:
    head = "".join(f'<th class="num">{_e(h)}</th>' if i in numeric else f"<th>{_e(h)}</th>" for i, h in enumerate(headers))
    body = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            content = cell.html if isinstance(cell, _Raw) else _e(cell)
            cells.append(f'<td class="num">{content}</td>' if i in numeric else f"<td>{content}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


class _Raw:
    """Markup built here (already escaped)."""

    def __init__(self, html_text: str) -> None:
        self.html = html_text


def _pill(text: str, css: str | None = None) -> _Raw:
    return _Raw(f'<span class="pill {_e(css or text)}">{_e(text)}</span>')


def _counts(counter: dict[str, int]) -> str:
    if not counter:
        return '<span class="none">none</span>'
    return _table(["reason", "count"], sorted(counter.items(), key=lambda kv: -kv[1]), numeric=(1,))


def _card(key: str, value: Any, css: str = "") -> str:
    return f'<div class="card {css}"><div class="v">{_e(value)}</div><div class="k">{_e(key)}</div></div>'


def _version() -> str:
    try:
        return metadata.version("simic-telemetry")
    except metadata.PackageNotFoundError:
        return "?"


def _header(data: ReportData, title: str) -> str:
    summary = data.summary
    sessions = [s for run in summary.get("runs", {}).values() for s in run]
    starts = {(s.run_id, s.rank, s.session): s for s in data.starts}
    ranks = {(s["run_id"], s["rank"]) for s in sessions}
    dropped = sum(s.get("dropped_by_producer") or 0 for s in sessions)
    fired = [a for a in data.alerts if not a.cleared]
    critical = sum(a.severity == "critical" for a in fired)
    rejected_m = sum(summary.get("rejected_messages", {}).values())
    rejected_e = sum(summary.get("rejected_events", {}).values())
    problems = summary.get("log_problems", [])
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        f"<header><h1>{_e(title)}</h1><div class=\"sub\">simic-telemetry {_e(_version())} · generated {now} · "
        f"from {_e(', '.join(data.sources))}</div></header>",
        "<nav>" + "".join(f'<a href="#{sid}">{_e(t)}</a>' for sid, t, _, _ in (("overview", "Overview", 0, 0), ("sessions", "Sessions", 0, 0),
                                                                                  ("alert-table", "Alert list", 0, 0), *SECTIONS)) + "</nav>",
        "<main>",
        '<div class="cards" id="overview">',
        _card("runs", len(summary.get("runs", {}))),
        _card("ranks", len(ranks)),
        _card("producer sessions", len(sessions)),
        _card("events", summary.get("events", 0)),
        _card("messages", summary.get("messages", 0)),
        _card("events lost (sequence gaps)", summary.get("lost", 0), "bad" if summary.get("lost") else ""),
        _card("dropped by producers", dropped, "warn" if dropped else ""),
        _card("rejected messages / events", f"{rejected_m} / {rejected_e}", "bad" if rejected_m or rejected_e else ""),
        _card("alerts fired", len(fired), "bad" if critical else ("warn" if fired else "")),
        _card("critical alerts", critical, "bad" if critical else ""),
        _card("log problems", len(problems), "bad" if problems else ""),
        "</div>",
    ]
    # Sessions and what their run_start said.
    rows = []
    for s in sessions:
        start = starts.get((s["run_id"], s["rank"], s["session"]))
        rows.append([
            s["run_id"], s["rank"], f"{s['session']:016x}", _pill(s["status"]), s.get("host") or "?", s.get("pid") or "?",
            start.torch_version if start else None, start.device if start else None, start.world_size if start else None,
            ", ".join(start.heads) if start and start.heads else None, f"{s['first_step']}..{s['last_step']}",
            s["received"], s["lost"], s.get("dropped_by_producer"), s.get("lost_in_transit"), s.get("duplicates"),
        ])
    parts.append('<div class="panel" id="sessions"><h2>Runs, ranks and producer sessions</h2>')
    parts.append(_table(
        ["run", "rank", "session", "status", "host", "pid", "torch", "device", "world size", "heads", "steps",
         "received", "lost", "dropped by producer", "lost in transit", "duplicates"],
        rows, numeric=(1, 11, 12, 13, 14, 15),
    ) if rows else '<span class="none">no events</span>')
    parts.append("</div>")
    # Configuration (one block per distinct configuration of a run).
    configs: dict[str, list[str]] = {}
    for start in data.starts:
        text = json.dumps(json_safe(start.config), indent=2, sort_keys=True)
        who = f"{start.run_id} rank {start.rank}"
        if who not in configs.setdefault(text, []):
            configs[text].append(who)
    config_html = "".join(f"<div><b>{_e(', '.join(who))}</b><pre>{_e(text)}</pre></div>" for text, who in configs.items())
    problems_html = (
        _table(["kind", "file", "offset", "bytes", "detail"], [[p["kind"], p["path"], p["offset"], p["length"], p["detail"]] for p in problems], numeric=(2, 3))
        if problems else '<span class="none">none (no torn tail, no corrupt frame)</span>'
    )
    stage_errors = summary.get("stage_errors") or {}
    parts.append('<div class="grid">')
    parts.append(f'<div class="panel"><h2>Configuration</h2>{config_html or "<span class=none>no run_start received</span>"}</div>')
    parts.append(f'<div class="panel"><h2>Events by kind</h2>{_table(["kind", "events"], summary.get("events_by_kind", {}).items(), numeric=(1,))}</div>')
    parts.append(
        f'<div class="panel"><h2>Rejections by reason</h2><p class="caption">whole messages</p>{_counts(summary.get("rejected_messages", {}))}'
        f'<p class="caption">single events</p>{_counts(summary.get("rejected_events", {}))}</div>'
    )
    parts.append(
        f'<div class="panel"><h2>Log problems</h2>{problems_html}'
        + (f'<p class="caption">analysis stage errors</p>{_counts(stage_errors)}' if stage_errors else "")
        + "</div>"
    )
    parts.append("</div>")
    return "".join(parts)


def _alert_table(data: ReportData) -> str:
    alerts = sorted(data.alerts, key=lambda a: (a.step, a.seq))
    rows = [
        [a.step, a.run_id, a.rank, _pill("cleared") if a.cleared else _pill(a.severity), a.rule, a.message]
        for a in alerts[:MAX_TABLE_ROWS]
    ]
    more = f'<p class="note">{len(alerts) - MAX_TABLE_ROWS} more alerts not listed.</p>' if len(alerts) > MAX_TABLE_ROWS else ""
    body = _table(["step", "run", "rank", "severity", "rule", "message"], rows, numeric=(0, 2)) if rows else '<span class="none">no alerts</span>'
    return f'<div class="panel" id="alert-table"><h2>Alert list</h2>{body}{more}</div>'


def _nonfinite_table(data: ReportData) -> str:
    rows = []
    for (run_id, rank), group in data.groups.items():
        sections = [("timing", group.timing_ms), ("grad norm", group.head_norms), ("post-clip grad norm", group.head_norms_post_clip),
                    ("clip", group.clip), ("lstm", group.lstm), ("ppo", group.ppo), ("entropy", group.entropy)]
        for section, series_by_name in sections:
            for name, series in series_by_name.items():
                bad = series.nonfinite()
                if bad:
                    kinds = sorted({"NaN" if v != v else ("+Inf" if v > 0 else "-Inf") for _, v in bad})
                    rows.append([run_id, rank, f"{section}: {name}", "/".join(kinds), len(bad), bad[0][0], bad[-1][0]])
        for step, head, count in group.nonfinite_grads:
            rows.append([run_id, rank, f"non-finite gradient elements: {head}", f"{count} elements", 1, step, step])
        for step, flag in group.lstm_flags:
            rows.append([run_id, rank, f"lstm {flag}", "flag", 1, step, step])
    if not rows:
        return ""
    return (
        '<div class="panel" id="nonfinite"><h2>Non-finite values</h2><p class="caption">Drawn as gaps in the figures and marked in red '
        "at the top of their panel.</p>"
        + _table(["run", "rank", "series", "values", "points", "first step", "last step"], rows[:MAX_TABLE_ROWS], numeric=(1, 4, 5, 6))
        + "</div>"
    )


def render_page(data: ReportData, figures: Figures, *, title: str) -> str:
    """The whole page as one string."""
    sections = []
    config = {"displaylogo": False, "responsive": True, "scrollZoom": False}
    for sid, heading, attribute, caption in SECTIONS:
        figure = getattr(figures, attribute)
        if figure is None:
            body = f'<p class="note">No {_e(heading.lower())} data in these logs.</p>'
        else:
            body = figure.to_html(full_html=False, include_plotlyjs=False, config=config, div_id=f"fig-{sid}")
        note = ""
        if sid == "alerts" and figures.alert_lines_capped:
            note = '<p class="note">Only the first alerts are drawn as lines on the other figures; all of them are here.</p>'
        if sid == "grad-norms" and figures.grad_norms_note:
            note = f'<p class="note">{_e(figures.grad_norms_note)}</p>'
        sections.append(f'<section class="panel" id="{sid}"><h2>{_e(heading)}</h2><p class="caption">{_e(caption)}</p>{note}{body}</section>')
    home = json.dumps(list(figures.step_range))
    return (
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{_e(title)}</title>"
        f"<style>{_CSS}</style><script>{get_plotlyjs()}</script></head><body>"
        + _header(data, title)
        + _alert_table(data)
        + _nonfinite_table(data)
        + "".join(sections)
        + f"</main><script>{_SYNC_JS % {'home': home}}</script></body></html>"
    )
