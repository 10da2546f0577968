"""The clipping rule, driven through the real pipeline with real encoded messages (see ``harness``)."""

from __future__ import annotations

import math
import random

import pytest

from .harness import SEEDS, Producer, Timeline, assert_documented_defaults, assert_resumes_identically, of, play


def clip_run(ratios: list[float], pre: float = 2.0) -> Timeline:
    p, tl = Producer(), Timeline()
    for step, ratio in enumerate(ratios):
        tl.send(p.grads(step, pre_clip_total=pre, post_clip_total=pre * ratio, max_norm=0.5))
    return tl


class TestClipping:
    async def test_moderate_clipping_raises_nothing(self):
        """A clip ratio of 0.25 every step is ordinary clipping."""
        alerts, _ = await play(clip_run([0.25] * 100).items)
        assert alerts == []

    async def test_hard_clipping_every_step_fires_on_the_third_and_clears_after_five(self):
        """Ratio 0.01 from step 20: fires at 22; ratio 0.5 from step 30 clears at 34."""
        alerts, _ = await play(clip_run([0.25] * 20 + [0.01] * 10 + [0.5] * 10).items)
        fired = [a for a in alerts if a.rule == "clipping"]
        assert [(a.cleared, a.step) for a in fired] == [(False, 22), (True, 34)]
        assert fired[0].values["clip_ratio"] == pytest.approx(0.01)

    async def test_without_a_post_clip_norm_the_clip_factor_comes_from_max_norm(self):
        """pre_clip_total 50 with max_norm 0.5 is a clip factor of 0.01 (after ten updates at 0.4, under the clip)."""
        p, tl = Producer(), Timeline()
        for step in range(20):
            tl.send(p.grads(step, pre_clip_total=0.4 if step < 10 else 50.0, max_norm=0.5))
        alerts, _ = await play(tl.items)
        assert [(a.step, a.values["clip_ratio"], a.values["usual_clip_ratio"]) for a in alerts if a.rule == "clipping"] == [(12, 0.01, 1.0)]

    async def test_a_clip_that_bites_hard_from_the_start_is_the_runs_routine(self):
        """A clip that keeps 5% of the gradient on every update from the first is this run's normal: nothing fires."""
        alerts, _ = await play(clip_run([0.05] * 100).items)
        assert of(alerts, "clipping") == []

    async def test_a_routine_clip_that_bites_ten_times_harder_fires(self):
        """Usually 5%, then 0.4% from step 30: ten times harder than this run's own clip, it fires on the third update."""
        alerts, _ = await play(clip_run([0.05] * 30 + [0.004] * 10).items)
        fired = [a for a in alerts if a.rule == "clipping"]
        assert [(a.cleared, a.step) for a in fired] == [(False, 32)]
        assert fired[0].values["usual_clip_ratio"] == pytest.approx(0.05)

    async def test_a_clip_biting_a_few_times_harder_than_usual_stays_quiet(self):
        """Usually 40%, then 6-8% for ten updates (below 0.1, but 5 to 7 times its usual, as a healthy run's
        clip went while its gradient grew with its task): nothing fires."""
        alerts, _ = await play(clip_run([0.4] * 30 + [0.06, 0.08] * 5 + [0.4] * 10).items)
        assert of(alerts, "clipping") == []

    async def test_nothing_is_judged_before_the_warm_up(self):
        """Eight updates make the usual: a hard clip from step 0 to 7 is not judged, the same clip after a mild start is."""
        alerts, _ = await play(clip_run([0.01] * 8 + [0.5] * 30).items)
        assert of(alerts, "clipping") == []
        alerts, _ = await play(clip_run([0.5] * 8 + [0.01] * 3).items)
        assert [(a.cleared, a.step) for a in alerts if a.rule == "clipping"] == [(False, 10)]

    async def test_hard_clips_that_fired_do_not_become_the_usual(self):
        """A hard clip that lasts 60 updates stays firing: the bad updates stay out of the usual."""
        alerts, _ = await play(clip_run([0.5] * 20 + [0.01] * 60).items)
        assert [(a.cleared, a.step) for a in alerts if a.rule == "clipping"] == [(False, 22)]

    async def test_occasional_hard_clips_do_not_fire(self):
        """Every other update clipped hard is what clipping is for: nothing fires."""
        alerts, _ = await play(clip_run([0.01, 0.5] * 50).items)
        assert of(alerts, "clipping") == []

    @pytest.mark.parametrize("seed", SEEDS)
    async def test_noisy_clip_ratios_do_not_flap(self, seed):
        """Ratios drawn from 0.05 to 1.0 (a few below the limit, never three in a row by much) raise at most one alert."""
        rng = random.Random(seed)
        ratios = [min(1.0, 0.3 * math.exp(rng.gauss(0, 0.6))) for _ in range(300)]
        alerts, _ = await play(clip_run(ratios).items)
        assert len([a for a in alerts if a.rule == "clipping" and not a.cleared]) <= 1

    async def test_a_checkpoint_mid_fault_continues_identically(self):
        """State saved two updates into hard clipping fires and clears as the uninterrupted run."""
        await assert_resumes_identically(clip_run([0.25] * 20 + [0.01] * 10 + [0.5] * 10), split=22, rule="clipping")

    def test_defaults_are_the_documented_ones(self):
        """Ratio 0.1 and 0.1 of the usual (the median of 24 updates, after 8), fire after 3, clear after 5."""
        assert_documented_defaults("clipping", min_clip_ratio=0.1, min_share_of_usual=0.1, baseline_updates=24, warmup=8,
                                   fire_after=3, clear_after=5)
