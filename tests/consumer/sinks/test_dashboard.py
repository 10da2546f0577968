"""The live dashboard stage, driven through a real pipeline with real encoded messages (no TTY needed)."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from simic.consumer import Accounting, ConsumerConfig, build_pipeline
from simic.consumer.sinks.dashboard import DashboardSink
from simic.schemas.codec import KINDS, encode_message

HEADS = ["slot", "blueprint", "blend", "op", "value"]
S = 1_000_000_000  # one second in ns


def message(run_id: str, rank: int, seq: int, step: int, *, nan: bool = False) -> bytes:
    """One step of a trainer: grad norms, LSTM state and a PPO update (a NaN total when asked)."""
    k = KINDS
    rows = [
        [k["head_grad_norms"].code, seq, step, step, {h: 0.5 for h in HEADS} | {"op": None}, float("nan") if nan else 1.25],
        [k["lstm_health"].code, seq + 1, step, step, 3.0, 5.0, 0.31, 0.62],
        [k["ppo_update"].code, seq + 2, step, step, -0.01, 0.5, {"slot": 1.2, "op": 0.8}, 0.015],
    ]
    return encode_message(run_id, rank, 11 + rank, rows)


def dashboard(**options) -> tuple[DashboardSink, Accounting]:
    """A dashboard given the accounting stage of the pipeline it will be in (as the daemon builds it)."""
    accounting = Accounting()
    return DashboardSink(accounting=accounting, **options), accounting


async def feed(sink: DashboardSink, accounting: Accounting, steps: int, *, every_ns: int = S // 10, gap_at: int | None = None,
               nan_at: int | None = None) -> None:
    pipeline = build_pipeline(ConsumerConfig(), console=False, extra_sinks=[sink], accounting=accounting)
    await pipeline.start()
    seq = 0
    for step in range(steps):
        if step == gap_at:
            seq += 3  # one step's events never arrive: 3 lost
        await pipeline.consume(message("dash", 0, seq, step, nan=step == nan_at), recv_ns=10 * S + step * every_ns)
        seq += 3
    await pipeline.close()


def text_of(sink: DashboardSink) -> str:
    console = Console(file=io.StringIO(), width=240, record=True, color_system=None)
    console.print(sink.render())
    return console.export_text()


class TestDashboardSink:
    async def test_shows_each_rank_with_its_latest_numbers_and_alerts(self):
        """The table shows step, events/s, lost, per-head norms (missing as a dash), totals, LSTM RMS, KL, entropy and the alert."""
        sink, accounting = dashboard(console=Console(file=io.StringIO(), force_terminal=True, width=240), recent_alerts=100)  # other rules fire too
        await feed(sink, accounting, 30, gap_at=12, nan_at=20)
        text = text_of(sink)
        row = next(line for line in text.splitlines() if line.lstrip().startswith("dash"))
        assert "running" in row and " 29 " in row
        assert " 3 " in row  # lost: the gap
        assert "0.5" in row and "—" in row  # slot's norm; op sent as None
        assert "1.25" in row and "0.31" in row and "0.62" in row and "0.015" in row and "1" in row
        assert "∇ slot" in text and "∇ op" in text
        assert "[CRITICAL] non_finite run=dash rank=0 step=20" in text
        assert "[CLEARED] non_finite run=dash rank=0 step=21" in text
        assert " 31.0 " in row  # 90 events in 2.9 s of arrivals

    async def test_a_terminal_gets_a_live_view_redrawn_a_few_times_a_second(self):
        """On a terminal the view is redrawn at most refresh_per_second times per second of arrivals."""
        out = io.StringIO()
        sink, accounting = dashboard(console=Console(file=out, force_terminal=True, width=240), refresh_per_second=4)
        await feed(sink, accounting, 50, every_ns=S // 20)  # 50 messages over 2.45 s
        assert sink.live_mode
        assert sink.renders <= 2.45 * 4 + 2  # throttled (+ the first and the final redraw), not one per message
        assert "∇ slot" in out.getvalue() and "dash" in out.getvalue()

    async def test_no_terminal_gets_plain_status_lines(self):
        """When stdout is not a terminal, one plain status line per rank every plain_interval_s (and at close)."""
        out = io.StringIO()
        sink, accounting = dashboard(console=Console(file=out, width=240), plain_interval_s=1.0)
        await feed(sink, accounting, 30, every_ns=S // 10)  # 2.9 s of arrivals: lines at 0 s, 1 s, 2 s and at close
        lines = out.getvalue().splitlines()
        assert not sink.live_mode
        assert len(lines) == 4
        assert all(line.startswith("simic-consumer: [status] run=dash rank=0 ") for line in lines)
        assert "step=29" in lines[-1] and "grad[slot=0.5 blueprint=0.5 blend=0.5 op=- value=0.5]" in lines[-1]
        assert "\x1b[" not in out.getvalue()  # no terminal control codes

    def test_bad_settings_fail_at_construction(self):
        """A non-positive refresh rate is refused when the stage is built, not per batch."""
        with pytest.raises(ValueError):
            DashboardSink(refresh_per_second=0)
