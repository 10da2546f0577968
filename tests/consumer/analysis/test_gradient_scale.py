"""The gradient_scale rule, driven through the real pipeline with real encoded messages (see ``harness``)."""

from __future__ import annotations

import math
import random

import pytest

from simic.consumer.analysis import RULES

from .harness import SEEDS, Producer, Timeline, assert_documented_defaults, assert_resumes_identically, grad_run, of, play


class TestGradientScale:
    async def test_a_steady_run_raises_nothing(self):
        """Constant norms: no gradient_scale alert."""
        alerts, _ = await play(grad_run(100, 0, 0).items)
        assert of(alerts, "gradient_scale") == []

    async def test_an_absolute_explosion_is_critical_after_three_updates_and_clears(self):
        """Total above 1e3 three times: critical explosion (and relative explosion) at the third; five normal updates clear both."""
        alerts, _ = await play(grad_run(20, 3, 10, scale=1000.0).items)
        scale = [a for a in alerts if a.rule == "gradient_scale"]
        assert [(a.severity, a.cleared, a.step) for a in scale] == [
            ("critical", False, 22), ("warning", False, 22), ("info", True, 27), ("info", True, 27)]
        assert "gradient explosion" in scale[0].message and "x its baseline" in scale[1].message

    async def test_an_absolute_vanishing_fires(self):
        """Total below 1e-7 three times fires the vanishing alert."""
        alerts, _ = await play(grad_run(20, 3, 0, scale=1e-9).items)
        fired = [a for a in alerts if a.rule == "gradient_scale"]
        assert [a.step for a in fired] == [22, 22]
        assert "vanishing gradient" in fired[0].message and "fell to 1/" in fired[1].message

    async def test_a_relative_explosion_fires_below_the_absolute_limit(self):
        """x20 the run's own baseline (far below 1e3) fires a warning at the third update."""
        alerts, _ = await play(grad_run(20, 3, 0, scale=20.0).items)
        assert of(alerts, "gradient_scale") == [("warning", False, 22)]

    async def test_a_spike_of_one_or_two_updates_is_forgiven(self):
        """One update x20 among normal ones raises nothing at all; nor do two (a recurrent net's gradient
        through time did that on a healthy run) from gradient_scale."""
        alerts, _ = await play(grad_run(30, 1, 30, scale=20.0).items)
        assert alerts == []
        alerts, _ = await play(grad_run(30, 2, 30, scale=20.0).items)
        assert of(alerts, "gradient_scale") == []

    async def test_a_lasting_explosion_does_not_become_the_baseline(self):
        """300 updates at x20: one alert, never cleared, because exploded samples stay out of the baseline."""
        alerts, _ = await play(grad_run(20, 300, 0, scale=20.0).items)
        assert of(alerts, "gradient_scale") == [("warning", False, 22)]

    async def test_a_gradual_decline_is_followed(self):
        """Norms shrinking 100x over 1500 updates (a converging policy) raise nothing."""
        p, tl = Producer(), Timeline()
        for step in range(1500):
            tl.send(p.grads(step, scale=0.01 ** (step / 1500)))
        alerts, _ = await play(tl.items)
        assert alerts == []

    @pytest.mark.parametrize("seed", SEEDS)
    async def test_noisy_healthy_norms_do_not_flap(self, seed):
        """300 updates with 30% noise on every head: no gradient_scale alert."""
        rng, p, tl = random.Random(seed), Producer(), Timeline()
        for step in range(300):
            tl.send(p.grads(step, scale=math.exp(rng.gauss(0, 0.3))))
        alerts, _ = await play(tl.items)
        assert of(alerts, "gradient_scale") == []

    async def test_a_checkpoint_mid_fault_continues_identically(self):
        """State saved between the exploding updates fires and clears as the uninterrupted run."""
        await assert_resumes_identically(grad_run(20, 3, 10, scale=1000.0), split=21, rule="gradient_scale")

    def test_defaults_are_the_documented_ones(self):
        """1e3 (critical) and 1e-7 absolute; 10x and 1/100 relative to a 0.99 EMA after 10 updates; 3 to fire, 5 to clear."""
        assert_documented_defaults("gradient_scale", max_total_norm=1e3, min_total_norm=1e-7, relative_explosion_factor=10.0,
                                   relative_vanishing_factor=100.0, momentum=0.99, warmup=10, fire_after=3, clear_after=5)
        assert RULES["gradient_scale"].Config().explosion_severity == "critical"
