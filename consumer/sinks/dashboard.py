"""A live view of the runs while they train: ``simic-consumer run --dashboard``.

On a terminal it is a rich ``Live`` table, one row per run and rank (status, last step, events/s,
lost, the newest gradient norm of every head, total norm, LSTM h/c RMS, KL, entropy, active
alerts), with the totals above it and the latest alerts below. Alert lines printed by the console
sink scroll above the live view. When stdout is not a terminal (a log file, ``docker logs``) it
prints one plain status line per run and rank every ``plain_interval_s`` instead.

The stage only updates a few numbers per event (``simic.consumer.pipeline.ranks``: the newest of every
measurement per run and rank, read as the metrics read it); the table is rebuilt at most
``refresh_per_second`` times a second, in the pipeline's own task (no render thread reads the
state while it changes). Clock ticks keep it fresh when no traffic arrives. Time is arrival time
(``recv_ns``), so what it shows is reproducible from a log.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from simic.schemas.models import Alert, Event

from ..pipeline.accounting import Accounting
from ..pipeline.contract import Batch, Stage
from ..pipeline.ranks import LatestByRank, RankLatest

__all__ = ["DashboardSink", "RankView"]

RATE_WINDOW_NS = 10_000_000_000
"""Events per second are averaged over the last 10 s of arrivals."""
MAX_HEAD_COLUMNS = 6
"""Heads shown as their own columns; more are folded into one column."""
SEVERITY_STYLES = {"critical": "bold red", "warning": "yellow", "info": "green"}


@dataclass
class RankView(RankLatest):
    """What the dashboard knows about one ``(run_id, rank)``: the newest measurements (:class:`RankLatest`),
    its active alerts, its recent arrivals and its losses."""

    active_alerts: dict[str, int] = field(default_factory=dict)
    """Rule to the number of its conditions fired and not cleared."""
    arrivals: deque = field(default_factory=deque)
    """``(recv_ns, events)`` of the last :data:`RATE_WINDOW_NS`."""
    lost_by_session: dict[int, int] = field(default_factory=dict)

    @property
    def lost(self) -> int:
        return sum(self.lost_by_session.values())

    def rate(self, now_ns: int) -> float:
        """Events per second over the window (0 when nothing arrived in it)."""
        while self.arrivals and self.arrivals[0][0] < now_ns - RATE_WINDOW_NS:
            self.arrivals.popleft()
        if not self.arrivals:
            return 0.0
        span_ns = max(now_ns - self.arrivals[0][0], 1_000_000_000)
        return sum(n for _, n in self.arrivals) / (span_ns / 1e9)


def _num(value: float | None, digits: int = 3) -> Text:
    """A number for the table: missing is a dim dash, non-finite is red."""
    if value is None:
        return Text("—", style="dim")
    if not math.isfinite(value):
        return Text("nan" if math.isnan(value) else ("+inf" if value > 0 else "-inf"), style="bold red")
    return Text(f"{value:.{digits}g}")


def _plain_num(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}g}" if math.isfinite(value) else ("nan" if math.isnan(value) else ("inf" if value > 0 else "-inf"))


class DashboardSink(Stage):
    """Shows the runs live on a terminal (or plain status lines elsewhere).

    Args:
        console: where to draw; default stdout. A console that is not a terminal gets plain lines.
        accounting: the pipeline's accounting stage, whose totals (messages, lost, rejected) and
            per-session losses it shows; None: not shown.
        refresh_per_second: most redraws per second of the live view.
        plain_interval_s: seconds between two rounds of plain status lines.
        silent_after_s: a rank with no message for this long shows as ``silent``.
        recent_alerts: alert lines kept under the table.
    """

    name = "dashboard"
    quiet_while_catching_up = True

    def __init__(
        self,
        console: Console | None = None,
        *,
        accounting: Accounting | None = None,
        refresh_per_second: float = 4.0,
        plain_interval_s: float = 10.0,
        silent_after_s: float = 30.0,
        recent_alerts: int = 8,
    ) -> None:
        if refresh_per_second <= 0 or plain_interval_s <= 0:
            raise ValueError("refresh_per_second and plain_interval_s must be positive")
        self.console = console
        self.refresh_ns = int(1e9 / refresh_per_second)
        self.plain_interval_ns = int(plain_interval_s * 1e9)
        self.silent_after_ns = int(silent_after_s * 1e9)
        self.views: LatestByRank[RankView] = LatestByRank(RankView)
        self.recent: deque[tuple[int, Alert]] = deque(maxlen=recent_alerts)
        self.renders = 0
        self.live_mode = False
        self._live: Live | None = None
        self._accounting = accounting
        self._queue_depth: Callable[[], int] | None = None
        self._queue_capacity = 0
        self._last_render_ns: int | None = None
        self._started_ns: int | None = None
        self._now_ns = 0

    # -- wiring and lifecycle --------------------------------------------------------------------------

    def watch_queue(self, depth: Callable[[], int], capacity: int) -> None:
        self._queue_depth, self._queue_capacity = depth, capacity

    async def start(self) -> None:
        if self.console is None:
            self.console = Console()
        self.live_mode = self.console.is_terminal
        if self.live_mode and self._live is None:
            self._live = Live(console=self.console, auto_refresh=False, transient=False, redirect_stdout=True,
                              redirect_stderr=True, vertical_overflow="visible")
            self._live.start()

    async def consume(self, batch: Batch) -> None:
        now = batch.recv_ns
        self._now_ns = now
        if self._started_ns is None:
            self._started_ns = now
        if batch.events:
            self._account(batch.events, now)
        for alert in batch.alerts:
            self._alert(alert, now)
        if self._last_render_ns is None or now - self._last_render_ns >= (self.refresh_ns if self.live_mode else self.plain_interval_ns):
            self._show(now)

    async def close(self) -> None:
        if self.console is not None and (self.views or self.live_mode):
            self._show(self._now_ns)
        if self._live is not None:
            self._live.stop()
            self._live = None

    # -- state -----------------------------------------------------------------------------------------

    def _account(self, events: list[Event], now: int) -> None:
        view = self.views.update(events, now)
        view.arrivals.append((now, len(events)))
        if self._accounting is not None:
            head = events[0]
            state = self._accounting.producers.get((head.run_id, head.rank, head.session))
            if state is not None:
                view.lost_by_session[head.session] = state.lost

    def _alert(self, alert: Alert, now: int) -> None:
        self.recent.append((now, alert))
        view = self.views.get((alert.run_id, alert.rank))
        if view is None:
            return
        count = view.active_alerts.get(alert.rule, 0) + (-1 if alert.cleared else 1)
        if count > 0:
            view.active_alerts[alert.rule] = count
        else:
            view.active_alerts.pop(alert.rule, None)

    def _status(self, view: RankView, now: int) -> str:
        if view.status == "running" and now - view.last_recv_ns > self.silent_after_ns:
            return "silent"
        return view.status

    # -- output ----------------------------------------------------------------------------------------

    def _show(self, now: int) -> None:
        self._last_render_ns = now
        self.renders += 1
        if self._live is not None:
            self._live.update(self.render(now), refresh=True)
        elif self.console is not None:
            for line in self.plain_lines(now):
                self.console.file.write(line + "\n")
            self.console.file.flush()

    def _heads(self) -> list[str]:
        heads: list[str] = []
        for view in self.views.values():
            heads.extend(h for h in view.grad_norms if h not in heads)
        return heads

    def render(self, now: int | None = None) -> RenderableType:
        """The whole view as one rich renderable (what the terminal shows)."""
        now = self._now_ns if now is None else now
        heads = self._heads()
        own_columns = heads[:MAX_HEAD_COLUMNS]
        table = Table(expand=False, header_style="bold", pad_edge=False, show_edge=False, box=None, padding=(0, 1))
        for title, justify in (("run", "left"), ("rank", "right"), ("status", "left"), ("step", "right"), ("ev/s", "right"),
                               ("lost", "right")):
            table.add_column(title, justify=justify)
        for head in own_columns:
            table.add_column(f"∇ {head}", justify="right")
        if len(heads) > MAX_HEAD_COLUMNS:
            table.add_column("∇ other heads", justify="left")
        for title in ("∇ total", "h rms", "c rms", "KL", "entropy", "alerts"):
            table.add_column(title, justify="right" if title != "alerts" else "left")
        for view in self.views.values():
            status = self._status(view, now)
            style = {"running": "green", "ok": "cyan", "silent": "bold yellow"}.get(status, "bold red")
            cells: list[RenderableType] = [
                Text(view.run_id), str(view.rank), Text(status, style=style),
                "—" if view.last_step is None else str(view.last_step), f"{view.rate(now):.1f}",
                Text(str(view.lost), style="bold red" if view.lost else ""),
            ]
            cells.extend(_num(view.grad_norms.get(h)) for h in own_columns)
            if len(heads) > MAX_HEAD_COLUMNS:
                cells.append(Text(" ".join(f"{h}={_plain_num(view.grad_norms.get(h))}" for h in heads[MAX_HEAD_COLUMNS:])))
            entropy = [v for v in view.entropy.values()]
            mean_entropy = sum(entropy) / len(entropy) if entropy else None
            alerts = Text(", ".join(f"{rule}×{n}" if n > 1 else rule for rule, n in view.active_alerts.items()) or "—",
                          style="bold red" if view.active_alerts else "dim")
            cells.extend([_num(view.grad_total), _num(view.h_rms), _num(view.c_rms), _num(view.approx_kl), _num(mean_entropy), alerts])
            table.add_row(*cells)
        recent = Text()
        for _, alert in self.recent:
            state = "CLEARED" if alert.cleared else alert.severity.upper()
            recent.append(f"[{state}] ", style=SEVERITY_STYLES["info" if alert.cleared else alert.severity])
            recent.append(f"{alert.rule} run={alert.run_id} rank={alert.rank} step={alert.step}: {alert.message}\n")
        if not self.recent:
            recent.append("no alerts yet", style="dim")
        return Group(self._header(now), table if self.views else Text("waiting for a producer…", style="dim"),
                     Text("recent alerts", style="bold"), recent)

    def _header(self, now: int) -> Text:
        acc = self._accounting
        up = (now - self._started_ns) / 1e9 if self._started_ns else 0.0
        text = Text("simic-consumer ", style="bold")
        text.append(f"up {int(up // 3600):02d}:{int(up % 3600 // 60):02d}:{int(up % 60):02d}")
        if acc is not None:
            rejected = sum(acc.rejected_messages.values()) + sum(acc.rejected_events.values())
            text.append(f" · {acc.messages} messages · {acc.events} events · lost ")
            text.append(str(acc.lost), style="bold red" if acc.lost else "")
            text.append(" · rejected ")
            text.append(str(rejected), style="bold red" if rejected else "")
        if self._queue_depth is not None:
            text.append(f" · queue {self._queue_depth()}/{self._queue_capacity}")
        return text

    def plain_lines(self, now: int | None = None) -> list[str]:
        """One status line per run and rank (what a non-terminal gets)."""
        now = self._now_ns if now is None else now
        lines = []
        for view in self.views.values():
            grads = " ".join(f"{h}={_plain_num(v)}" for h, v in view.grad_norms.items())
            entropy = list(view.entropy.values())
            lines.append(
                f"simic-consumer: [status] run={view.run_id} rank={view.rank} {self._status(view, now)} step={view.last_step} "
                f"events/s={view.rate(now):.1f} lost={view.lost} grad[{grads}] total={_plain_num(view.grad_total)} "
                f"h_rms={_plain_num(view.h_rms)} c_rms={_plain_num(view.c_rms)} kl={_plain_num(view.approx_kl)} "
                f"entropy={_plain_num(sum(entropy) / len(entropy) if entropy else None)} "
                f"alerts={','.join(view.active_alerts) or '-'}"
            )
        return lines
