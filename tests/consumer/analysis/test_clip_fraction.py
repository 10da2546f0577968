"""The clip_fraction rule, driven through the real pipeline with real encoded messages (see ``harness``)."""

from __future__ import annotations

import random

from .harness import Producer, Timeline, assert_documented_defaults, assert_resumes_identically, of, play


class TestClipFraction:
    @staticmethod
    def run(values: list[float]) -> Timeline:
        p, tl = Producer(), Timeline()
        for step, cf in enumerate(values):
            tl.send(p.ppo(step, clip_fraction=cf, approx_kl=0.01))
        return tl

    async def test_a_usual_clip_fraction_raises_nothing_even_when_high(self):
        """A trainer that always clips about a quarter of its samples (0.2-0.28) raises nothing."""
        rng = random.Random(1)
        alerts, _ = await play(self.run([rng.uniform(0.2, 0.28) for _ in range(200)]).items)
        assert of(alerts, "clip_fraction") == []

    async def test_a_jump_fires_on_the_second_update_and_clears(self):
        """0.05 usual, 0.6 from step 30 to 34: fires at step 31, clears three updates after."""
        alerts, _ = await play(self.run([0.05] * 30 + [0.6] * 5 + [0.05] * 5).items)
        assert [(a.cleared, a.step) for a in alerts if a.rule == "clip_fraction"] == [(False, 31), (True, 37)]

    async def test_nothing_before_the_warm_up(self):
        alerts, _ = await play(self.run([0.6] * 8).items)
        assert of(alerts, "clip_fraction") == []

    async def test_a_checkpoint_mid_fault_continues_identically(self):
        await assert_resumes_identically(self.run([0.05] * 30 + [0.6] * 5 + [0.05] * 5), split=31, rule="clip_fraction")

    def test_defaults_are_the_documented_ones(self):
        assert_documented_defaults("clip_fraction", max_clip_fraction=0.3, jump=3.0, min_usual=0.01, baseline_updates=24,
                                   warmup=8, fire_after=2, clear_after=3)
