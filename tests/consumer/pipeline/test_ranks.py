"""The newest of every measurement per run and rank: one reading of the events for the metrics, the dashboard and the report."""

from __future__ import annotations

import io
import math

import pytest
from rich.console import Console

from simic.consumer import Accounting, ConsumerConfig, build_pipeline
from simic.consumer.pipeline.ranks import LatestByRank, PerRank, RankLatest, grad_totals
from simic.consumer.sinks.dashboard import DashboardSink
from simic.consumer.sinks.metrics import MetricsSink
from simic.schemas.codec import KINDS, encode_message
from simic.schemas.models import HeadGradNorms, LstmHealth, PpoUpdate, RunEnd

NAN = float("nan")


def grads(step: int, norms: dict, total=None, stage=None, pre=None, post=None) -> HeadGradNorms:
    return HeadGradNorms(run_id="r", rank=0, session=1, seq=step, clock_ns=step, step=step, norms=norms, total=total, stage=stage,
                         pre_clip_total=pre, post_clip_total=post)


class TestGradTotals:
    @pytest.mark.parametrize(("event", "expected"), [
        (grads(0, {}, total=2.0), {"total": 2.0}),
        (grads(0, {}, total=None), {"total": None}),  # sent, and missing
        (grads(0, {}, total=2.0, stage="pre_clip"), {"pre_clip": 2.0}),
        (grads(0, {}, total=None, stage="pre_clip"), {"pre_clip": None}),
        (grads(0, {}, total=0.5, stage="post_clip"), {"post_clip": 0.5}),
        (grads(0, {}, total=0.5, stage="post_clip", pre=3.0), {"pre_clip": 3.0, "post_clip": 0.5}),
        (grads(0, {}, total=3.0, pre=3.0, post=0.5), {"pre_clip": 3.0, "post_clip": 0.5, "total": 3.0}),
        (grads(0, {}, total=9.0, stage="pre_clip", pre=3.0), {"pre_clip": 3.0}),  # the explicit total wins
    ])
    def test_each_total_goes_where_its_stage_says(self, event, expected):
        """Explicit pre/post totals win; otherwise total goes to its stage; a total of no stage is 'total'."""
        assert grad_totals(event) == expected


class TestRankLatest:
    def test_keeps_the_newest_of_each_measurement_and_a_missing_one_as_missing(self):
        """A value sent as None replaces the one before (missing, not stale); one not sent leaves it."""
        latest = RankLatest("r", 0)
        latest.record(grads(3, {"slot": 1.0, "op": 2.0}, total=2.5, stage="pre_clip"))
        latest.record(grads(3, {"slot": 0.4}, total=0.5, stage="post_clip"))  # post-clip head norms are not the heads'
        latest.record(grads(2, {"op": None}, total=None, stage="pre_clip"))  # a late readout: the step stays 3
        assert latest.grad_norms == {"slot": 1.0, "op": None}
        assert latest.grad_totals == {"pre_clip": None, "post_clip": 0.5}
        assert latest.grad_total is None and latest.last_step == 3

    def test_lstm_ppo_and_the_end_of_the_run(self):
        """h/c RMS and KL are the newest (None stays None), entropy per head the newest of each, run_end its status."""
        common = {"run_id": "r", "rank": 0, "session": 1, "seq": 0, "clock_ns": 0, "step": 5}
        latest = RankLatest("r", 0)
        latest.record(LstmHealth(**common, h_rms=0.3, c_rms=None))
        latest.record(PpoUpdate(**common, approx_kl=NAN, entropy={"slot": 1.2}))
        latest.record(PpoUpdate(**common, approx_kl=0.01, entropy={"op": 0.8}))
        latest.record(RunEnd(**common, status="error"))
        assert (latest.h_rms, latest.c_rms, latest.approx_kl) == (0.3, None, 0.01)
        assert latest.entropy == {"slot": 1.2, "op": 0.8} and latest.status == "error"

    def test_a_table_per_run_and_rank_counts_messages_and_arrivals(self):
        """update() takes a message's events: counts them, notes first and newest arrival, a sender running again."""
        ranks = LatestByRank()
        first = ranks.update([grads(0, {"slot": 1.0}, total=1.0)], 10)
        first.status = "ok"
        assert ranks.update([grads(1, {"slot": 2.0}, total=2.0), grads(2, {"slot": 3.0}, total=3.0)], 20) is first
        assert (first.events, first.first_recv_ns, first.last_recv_ns, first.status, first.last_step) == (3, 10, 20, "running", 2)
        assert list(ranks) == [("r", 0)]
        made = PerRank(lambda run_id, rank: [run_id, rank])
        assert made.of(grads(0, {})) is made.of(grads(1, {})) and made[("r", 0)] == ["r", 0]


class TestOneReading:
    async def test_the_metrics_and_the_dashboard_show_the_same_numbers(self):
        """The same messages through both sinks: each gauge of a rank equals the dashboard's number for it."""
        accounting = Accounting()
        metrics = MetricsSink(serve=False, accounting=accounting)
        dashboard = DashboardSink(console=Console(file=io.StringIO(), width=200), accounting=accounting)
        pipeline = build_pipeline(ConsumerConfig(), console=False, accounting=accounting, extra_sinks=[metrics, dashboard])
        k = KINDS
        rows = [
            [k["head_grad_norms"].code, 0, 0, 7, {"slot": 1.5, "op": None}, 2.0, 2.0, 1.0, None, "pre_clip", 1.0],
            [k["lstm_health"].code, 1, 0, 7, 3.0, 5.0, 0.31, 0.62],
            [k["ppo_update"].code, 2, 0, 7, -0.01, 0.5, {"slot": 1.2}, 0.015],
        ]
        await pipeline.start()
        await pipeline.consume(encode_message("same", 1, 4, rows), 1_000)
        await pipeline.close()
        view = dashboard.views[("same", 1)]
        sample = metrics.registry.get_sample_value
        labels = {"run_id": "same", "rank": "1"}
        assert sample("simic_grad_norm", labels | {"head": "slot"}) == view.grad_norms["slot"] == 1.5
        assert sample("simic_grad_norm", labels | {"head": "op"}) is None and view.grad_norms["op"] is None
        assert sample("simic_grad_norm_global", labels | {"stage": "pre_clip"}) == view.grad_total == 2.0
        assert sample("simic_lstm_state_rms", labels | {"state": "h"}) == view.h_rms == 0.31
        assert sample("simic_ppo_approx_kl", labels) == view.approx_kl == 0.015
        assert sample("simic_last_step", labels) == view.last_step == 7
        assert not math.isnan(sample("simic_last_event_age_seconds", labels))
