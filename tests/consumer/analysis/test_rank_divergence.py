"""The rank_divergence rule, driven through the real pipeline with real encoded messages (see ``harness``)."""

from __future__ import annotations

import math
import random

import pytest

from simic.consumer.analysis import RULES
from simic.schemas.models import RunEnd, RunStart

from .harness import SEEDS, Producer, Timeline, assert_documented_defaults, assert_resumes_identically, documented, of, play


def ranks_run(steps: int, world: int = 4, *, stop: dict[int, int] | None = None, scale: dict[int, float] | None = None,
              end: dict[int, int] | None = None) -> Timeline:
    """Ranks stepping in lockstep; ``stop`` {rank: last step} hangs one, ``scale`` multiplies one's norms from step 10."""
    producers = [Producer(rank=rank, session=100 + rank) for rank in range(world)]
    tl = Timeline()
    for p in producers:
        tl.send(p.make(RunStart, 0, host=f"node{p.rank}", pid=1, world_size=world), after_s=0.001)
    for step in range(steps):
        for p in producers:
            if stop and p.rank in stop and step > stop[p.rank]:
                continue
            factor = (scale or {}).get(p.rank, 1.0) if step >= 10 else 1.0
            tl.send(p.grads(step, scale=factor), after_s=0.001)
            if end and end.get(p.rank) == step:
                tl.send(p.make(RunEnd, step), after_s=0.001)
    return tl


class TestRankDivergence:
    async def test_ranks_in_lockstep_raise_nothing(self):
        """Four ranks with identical norms for 200 steps: no alert."""
        alerts, _ = await play(ranks_run(200).items)
        assert alerts == []

    async def test_a_straggler_fires_about_itself_on_the_third_message_past_the_lag(self):
        """Rank 3 stuck at step 20: at step 121 the others are 101 ahead; the third such message fires, about rank 3."""
        alerts, pipeline = await play(ranks_run(200, stop={3: 20}).items)
        fired = [a for a in alerts if a.rule == "rank_divergence"]
        assert [(a.rank, a.step, a.cleared) for a in fired] == [(3, 20, False)]
        assert fired[0].values["lag"] == 101 and "a straggler or a hung rank" in fired[0].message
        state = pipeline.find(RULES["rank_divergence"])[0].state_dict()["extra"]["run"]
        assert len(state["pending"]) <= 32  # steps rank 3 never reported are dropped: bounded memory

    async def test_the_straggler_ending_its_session_clears_the_lag(self):
        """A lagging rank whose session ends is no longer waited for."""
        alerts, _ = await play(ranks_run(200, stop={3: 20}, end={3: 20, 0: 199, 1: 199, 2: 199}).items)
        assert of(alerts, "rank_divergence") == []  # it ended before it lagged
        tl = ranks_run(150, stop={3: 20})
        p3 = Producer(rank=3, session=103)
        p3.seq = 22
        tl.send(p3.make(RunEnd, 20))
        alerts, _ = await play(tl.items)
        assert [(a.cleared, a.rank) for a in alerts if a.rule == "rank_divergence"] == [(False, 3), (True, 3)]

    async def test_a_rank_whose_gradient_differs_fires_about_that_rank(self):
        """Rank 2's norms x50 from step 10: after three steps it fires about rank 2, and only rank 2."""
        alerts, _ = await play(ranks_run(30, scale={2: 50.0}).items)
        fired = [a for a in alerts if a.rule == "rank_divergence"]
        assert [(a.rank, a.step, a.cleared) for a in fired] == [(2, 12, False)]
        assert fired[0].values["ratio"] == pytest.approx(50.0)

    async def test_a_single_rank_run_is_not_compared(self):
        """One rank: nothing to diverge from."""
        alerts, _ = await play(ranks_run(150, world=1).items)
        assert alerts == []

    @pytest.mark.parametrize("seed", SEEDS)
    async def test_noisy_ranks_arriving_out_of_order_do_not_flap(self, seed):
        """Per-rank norms with 30% noise and ranks a few steps apart: no rank_divergence alert."""
        rng = random.Random(seed)
        producers = [Producer(rank=rank, session=100 + rank) for rank in range(4)]
        tl, steps = Timeline(), [0, 0, 0, 0]
        while min(steps) < 200:
            rank = rng.randrange(4)
            if steps[rank] - min(steps) > 5:
                continue
            tl.send(producers[rank].grads(steps[rank], scale=math.exp(rng.gauss(0, 0.3))), after_s=0.001)
            steps[rank] += 1
        alerts, _ = await play(tl.items)
        assert of(alerts, "rank_divergence") == []

    async def test_a_checkpoint_mid_fault_continues_identically(self):
        """State saved while the straggler's lag grows fires and clears as the uninterrupted run."""
        tl = ranks_run(150, stop={3: 20})
        p3 = Producer(rank=3, session=103)
        p3.seq = 22
        tl.send(p3.make(RunEnd, 20))
        await assert_resumes_identically(tl, split=len(tl.items) - 60, rule="rank_divergence")

    def test_defaults_are_the_documented_ones(self):
        """Lag 100 steps, norm ratio 10, 32 steps kept, fire after 3, clear after 3."""
        assert_documented_defaults("rank_divergence", max_step_lag=100, max_norm_ratio=10.0, window_steps=32,
                                   fire_after=3, clear_after=3)
        assert "100 update steps" in documented(RULES["rank_divergence"].Config, "max_step_lag")
