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
        """pre_clip_total 50 with max_norm 0.5 is a clip factor of 0.01."""
        p, tl = Producer(), Timeline()
        for step in range(10):
            tl.send(p.grads(step, pre_clip_total=50.0, max_norm=0.5))
        alerts, _ = await play(tl.items)
        assert [(a.step, a.values["clip_ratio"]) for a in alerts if a.rule == "clipping"] == [(2, 0.01)]

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
        """Ratio 0.1, fire after 3, clear after 5."""
        assert_documented_defaults("clipping", min_clip_ratio=0.1, fire_after=3, clear_after=5)
