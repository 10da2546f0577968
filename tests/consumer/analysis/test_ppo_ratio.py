"""The ppo_ratio rule, driven through the real pipeline with real encoded messages (see ``harness``)."""

from __future__ import annotations

import random

import pytest

from .harness import SEEDS, assert_documented_defaults, assert_resumes_identically, of, play, ppo_run


class TestPpoRatio:
    async def test_ratios_near_one_raise_nothing(self):
        """Typical ratio range [0.8, 1.25] for 100 updates: no alert."""
        alerts, _ = await play(ppo_run([{}] * 100).items)
        assert alerts == []

    async def test_an_exploding_ratio_fires_on_the_third_update_and_clears_after_three(self):
        """ratio_max 8 from step 10 fires at 12; back in range from 14, clears at 16."""
        alerts, _ = await play(ppo_run([{}] * 10 + [{"ratio_max": 8.0}] * 4 + [{}] * 5).items)
        fired = [a for a in alerts if a.rule == "ppo_ratio"]
        assert [(a.cleared, a.step, a.values["condition"]) for a in fired] == [(False, 12, "explosion"), (True, 16, "explosion")]

    async def test_a_collapsing_ratio_fires_on_the_third_update_not_the_second(self):
        """ratio_min 0.05 twice raises nothing (a fast-moving healthy policy does that); three times fires the collapse subject."""
        alerts, _ = await play(ppo_run([{}] * 10 + [{"ratio_min": 0.05}] * 2 + [{}] * 5).items)
        assert of(alerts, "ppo_ratio") == []
        alerts, _ = await play(ppo_run([{}] * 10 + [{"ratio_min": 0.05}] * 3).items)
        assert [(a.step, a.values["condition"]) for a in alerts if a.rule == "ppo_ratio"] == [(12, "collapse")]

    @pytest.mark.parametrize("seed", SEEDS)
    async def test_one_extreme_minibatch_now_and_then_does_not_flap(self, seed):
        """Spikes of ratio_max above 5 and of ratio_min below 0.1, never three in a row, raise nothing."""
        rng = random.Random(seed)
        values, run = [], 0
        for _ in range(300):
            spike = run < 2 and rng.random() < 0.3
            values.append({"ratio_max": 6.0 if spike else rng.uniform(1.1, 2.0), "ratio_min": 0.01 if spike else rng.uniform(0.3, 0.9)})
            run = run + 1 if spike else 0
        alerts, _ = await play(ppo_run(values).items)
        assert of(alerts, "ppo_ratio") == []

    async def test_a_checkpoint_mid_fault_continues_identically(self):
        """State saved after the first exploding update fires and clears as the uninterrupted run."""
        await assert_resumes_identically(ppo_run([{}] * 10 + [{"ratio_max": 8.0}] * 4 + [{}] * 5), split=11, rule="ppo_ratio")

    def test_defaults_are_the_documented_ones(self):
        """Ratio 5.0 and 0.1, fire after 3, clear after 3."""
        assert_documented_defaults("ppo_ratio", max_ratio=5.0, min_ratio=0.1, fire_after=3, clear_after=3)
