"""The explained_variance rule, driven through the real pipeline with real encoded messages (see ``harness``)."""

from __future__ import annotations

import math
import random

import pytest

from .harness import SEEDS, Timeline, assert_documented_defaults, assert_resumes_identically, of, play, ppo_run


def ev_run(values: list[float | None]) -> Timeline:
    return ppo_run([{"explained_variance": value} for value in values])


class TestExplainedVariance:
    async def test_a_value_head_still_learning_is_not_a_collapse(self):
        """EV rising from -0.5 to 0.45 and dipping back is early training: no alert."""
        alerts, _ = await play(ev_run([-0.5 + 0.01 * i for i in range(95)] + [-0.3] * 10).items)
        assert alerts == []

    async def test_a_collapse_after_learning_fires_on_the_third_update_and_clears(self):
        """EV 0.8, then -0.2 from step 20: fires at 22; 0.6 from 25 clears at 27."""
        alerts, _ = await play(ev_run([0.8] * 20 + [-0.2] * 5 + [0.6] * 5).items)
        fired = [a for a in alerts if a.rule == "explained_variance"]
        assert [(a.cleared, a.step) for a in fired] == [(False, 22), (True, 27)]
        assert "no longer predicts returns" in fired[0].message

    async def test_undefined_values_are_skipped_not_read_as_zero(self):
        """NaN and None between low values neither count nor reset the count (and NaN is not non_finite's either)."""
        alerts, _ = await play(ev_run([0.8] * 20 + [-0.2, math.nan, None, -0.2, math.nan, -0.2]).items)
        assert of(alerts, "explained_variance") == [("warning", False, 25)]
        assert of(alerts, "non_finite") == []

    @pytest.mark.parametrize("seed", SEEDS)
    async def test_noisy_healthy_values_do_not_flap(self, seed):
        """EV between 0.3 and 0.95 (a dip now and then) raises nothing."""
        rng = random.Random(seed)
        alerts, _ = await play(ev_run([rng.uniform(0.3, 0.95) for _ in range(300)]).items)
        assert alerts == []

    async def test_a_checkpoint_mid_fault_continues_identically(self):
        """State saved one update into the collapse (established, count pending) continues identically."""
        await assert_resumes_identically(ev_run([0.8] * 20 + [-0.2] * 5 + [0.6] * 5), split=21, rule="explained_variance")

    def test_defaults_are_the_documented_ones(self):
        """Established above 0.5, collapse below 0.0, fire after 3, clear after 3."""
        assert_documented_defaults("explained_variance", established=0.5, collapse_below=0.0, fire_after=3, clear_after=3)
