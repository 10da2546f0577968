"""The entropy_collapse rule, driven through the real pipeline with real encoded messages (see ``harness``)."""

from __future__ import annotations

import math
import random

import pytest

from .harness import SEEDS, Timeline, assert_documented_defaults, assert_resumes_identically, config, of, play, ppo_run


def entropy_run(op: list[float]) -> Timeline:
    return ppo_run([{"entropy": {"slot": 1.0, "blueprint": 0.9, "blend": 0.8, "op": value}} for value in op])


class TestEntropyCollapse:
    async def test_exploring_heads_raise_nothing(self):
        """Entropies around 1 nat: no alert."""
        alerts, _ = await play(entropy_run([1.0] * 100).items)
        assert alerts == []

    async def test_a_collapsed_head_fires_on_the_third_update_and_clears_only_above_the_clear_level(self):
        """'op' at 0.05 from step 10 fires at 12; at 0.2 it stays collapsed; above 0.3 it clears on the third update."""
        alerts, _ = await play(entropy_run([1.0] * 10 + [0.05] * 5 + [0.2] * 20 + [0.5] * 5).items)
        fired = [a for a in alerts if a.rule == "entropy_collapse"]
        assert [(a.cleared, a.step, a.values["head"]) for a in fired] == [(False, 12, "op"), (True, 37, "op")]

    async def test_a_head_hovering_at_the_threshold_raises_one_alert(self):
        """After a sudden fall from 1.0, 'op' hovers between 0.05 and 0.25 for 100 updates: one alert (it never clears)."""
        rng = random.Random(0)
        alerts, _ = await play(entropy_run([1.0] * 10 + [0.05] * 3 + [rng.uniform(0.05, 0.25) for _ in range(100)]).items)
        assert of(alerts, "entropy_collapse") == [("warning", False, 12)]

    async def test_a_policy_converging_slowly_on_a_learned_task_is_not_a_collapse(self):
        """Entropy falling steadily from 2.5 to 0.05 over 90 updates (a task learned): nothing; from 1.3 to 0.05 in
        five updates: fires."""
        alerts, _ = await play(entropy_run([2.5 * (0.05 / 2.5) ** (i / 90) for i in range(100)]).items)
        assert of(alerts, "entropy_collapse") == []
        alerts, _ = await play(entropy_run([1.3] * 20 + [0.6, 0.3, 0.15, 0.08, 0.05] + [0.05] * 10).items)
        assert [step for sev, cleared, step in of(alerts, "entropy_collapse") if not cleared] == [25]

    async def test_ignored_heads_are_not_checked(self):
        """ignore_heads = ["op"] silences that head."""
        alerts, _ = await play(entropy_run([0.01] * 10).items, config(entropy_collapse={"ignore_heads": ["op"]}))
        assert alerts == []

    @pytest.mark.parametrize("seed", SEEDS)
    async def test_noisy_healthy_entropy_does_not_flap(self, seed):
        """Entropy drawn around 0.6 with 40% noise: no alert."""
        rng = random.Random(seed)
        alerts, _ = await play(entropy_run([0.6 * math.exp(rng.gauss(0, 0.4)) for _ in range(300)]).items)
        assert alerts == []

    async def test_a_checkpoint_mid_fault_continues_identically(self):
        """State saved while collapsed and between the levels continues as the uninterrupted run."""
        await assert_resumes_identically(entropy_run([1.0] * 10 + [0.05] * 5 + [0.2] * 20 + [0.5] * 5), split=20,
                                         rule="entropy_collapse")

    def test_defaults_are_the_documented_ones(self):
        """Collapse below 0.1, clear above 0.3, fire after 3, clear after 3."""
        assert_documented_defaults("entropy_collapse", collapse_below=0.1, clear_above=0.3, sudden_within=10, sudden_ratio=0.25,
                                   fire_after=3, clear_after=3)

    def test_the_clear_level_may_not_be_below_the_collapse_level(self):
        """clear_above < collapse_below is a configuration error."""
        with pytest.raises(ValueError, match="clear_above"):
            config(entropy_collapse={"collapse_below": 0.5, "clear_above": 0.2})
