"""The approx_kl rule, driven through the real pipeline with real encoded messages (see ``harness``)."""

from __future__ import annotations

import math
import random

import pytest

from .harness import SEEDS, assert_documented_defaults, assert_resumes_identically, of, play, ppo_run


class TestApproxKl:
    async def test_a_calm_policy_raises_nothing(self):
        """approx_kl 0.01 for 100 updates: no alert."""
        alerts, _ = await play(ppo_run([{}] * 100).items)
        assert alerts == []

    async def test_a_spike_warns_on_its_third_update_escalates_at_once_and_each_level_clears(self):
        """0.2 at steps 10 and 11 and 1.6 at 12: the warning (three updates above 0.1) and the critical (at once)
        both come at step 12; three calm updates clear both at 15."""
        alerts, _ = await play(ppo_run([{}] * 10 + [{"approx_kl": 0.2}] * 2 + [{"approx_kl": 1.6}] + [{}] * 5).items)
        assert of(alerts, "approx_kl") == [("warning", False, 12), ("critical", False, 12), ("info", True, 15), ("info", True, 15)]
        assert alerts[1].values == {"approx_kl": 1.6, "threshold": 1.0}

    async def test_two_updates_above_the_warning_level_are_not_an_alert(self):
        """0.17 and 0.16 among calm updates (two healthy small-batch recurrent runs did that): nothing."""
        alerts, _ = await play(ppo_run([{}] * 10 + [{"approx_kl": 0.17}, {"approx_kl": 0.16}] + [{}] * 10).items)
        assert of(alerts, "approx_kl") == []

    async def test_one_odd_update_below_the_critical_level_is_not_an_alert(self):
        """A single 0.45 among calm updates, or 0.49 then 0.51 (seen in healthy small-batch recurrent runs): nothing; a single 4.0:
        critical at once."""
        alerts, _ = await play(ppo_run([{}] * 10 + [{"approx_kl": 0.45}] + [{}] * 10).items)
        assert of(alerts, "approx_kl") == []
        alerts, _ = await play(ppo_run([{}] * 10 + [{"approx_kl": 0.49}, {"approx_kl": 0.51}] + [{}] * 10).items)
        assert of(alerts, "approx_kl") == []
        alerts, _ = await play(ppo_run([{}] * 10 + [{"approx_kl": 4.0}] + [{}] * 10).items)
        assert [(sev, step) for sev, cleared, step in of(alerts, "approx_kl") if not cleared] == [("critical", 10)]

    @pytest.mark.parametrize("seed", SEEDS)
    async def test_noisy_healthy_kl_does_not_flap(self, seed):
        """KL around 0.015 with 50% noise for 300 updates: no alert."""
        rng = random.Random(seed)
        alerts, _ = await play(ppo_run([{"approx_kl": 0.015 * math.exp(rng.gauss(0, 0.5))} for _ in range(300)]).items)
        assert alerts == []

    async def test_kl_hovering_at_the_level_raises_an_alert_per_excursion_not_per_update(self):
        """KL 0.12 three times, then alternating 0.12 / 0.05, stays one alert: the calm updates never reach clear_after in a row."""
        alerts, _ = await play(ppo_run([{"approx_kl": 0.12}] * 2 + [{"approx_kl": 0.12 if step % 2 == 0 else 0.05} for step in range(2, 40)]
                                       + [{}] * 3).items)
        assert of(alerts, "approx_kl") == [("warning", False, 2), ("info", True, 41)]

    async def test_a_checkpoint_mid_fault_continues_identically(self):
        """State saved between the warning and the critical update continues as the uninterrupted run."""
        await assert_resumes_identically(ppo_run([{}] * 10 + [{"approx_kl": 0.2}] * 2 + [{"approx_kl": 1.6}] + [{}] * 5), split=12,
                                         rule="approx_kl")

    def test_defaults_are_the_documented_ones(self):
        """KL 0.1 warning after 3 updates, 1.0 critical at once, clear after 3."""
        assert_documented_defaults("approx_kl", warning_kl=0.1, critical_kl=1.0, fire_after=3, clear_after=3)
