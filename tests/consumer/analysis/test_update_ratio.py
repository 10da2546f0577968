"""The update_ratio rule, driven through the real pipeline with real encoded messages (see ``harness``)."""

from __future__ import annotations

import math
import random

import pytest

from simic.consumer.analysis import RULES

from .harness import Producer, Timeline, assert_documented_defaults, assert_resumes_identically, config, of, play


class TestUpdateRatio:
    @staticmethod
    def run(ratios: list[float], logged_lr: list[float] | None = None, optimizer_lr: list[float] | None = None,
            rate_first: bool = False) -> Timeline:
        """One param_updates (and one ppo_update with the logged learning rate) per update; the param_updates
        carry the optimizer's own rate when ``optimizer_lr`` is given, and come first with ``rate_first`` (SB3's order)."""
        from simic.schemas.models import ParamUpdates

        p, tl = Producer(), Timeline()
        for step, ratio in enumerate(ratios):
            lr = logged_lr[step] if logged_lr else 3e-4
            used = optimizer_lr[step] if optimizer_lr else None
            logged = p.ppo(step, learning_rate=lr)
            step_size = p.make(ParamUpdates, step, ratios={"policy": ratio}, total_ratio=ratio, samples=16, learning_rate=used)
            tl.send(*((step_size, logged) if rate_first else (logged, step_size)))
        return tl

    @staticmethod
    def ramp(step: int) -> float:
        """A rate x1.15 per update from update 40 on (1.15x at step 40)."""
        return 1.15 ** max(0, step - 39)

    async def test_a_steady_or_scheduled_step_size_raises_nothing(self):
        """The ratio jitters by 10% around 1e-3 for 100 updates; then a logged warm-up that doubles the learning
        rate doubles the ratio: nothing (the schedule explains it)."""
        rng = random.Random(1)
        ratios = [1e-3 * math.exp(rng.gauss(0, 0.1)) for _ in range(100)]
        alerts, _ = await play(self.run(ratios).items)
        assert of(alerts, "update_ratio") == []
        lrs = [3e-4 * min(2.0, 1.0 + step / 20) for step in range(100)]
        alerts, _ = await play(self.run([1e-3 * lr / 3e-4 for lr in lrs], lrs).items)
        assert of(alerts, "update_ratio") == []

    async def test_a_learning_rate_ramp_the_log_does_not_show_fires_within_five_updates(self):
        """The step size grows 1.15x per update from update 40 while the logged rate stays: fires at step 43
        (1.75x; the second update beyond 1.2x its recent level, 3.5 jitters and 1.05x its recent highest), in the message as 'not the one the trainer reports'."""
        rng = random.Random(2)
        ratios = [1e-3 * math.exp(rng.gauss(0, 0.05)) * (1.15 ** max(0, step - 39)) for step in range(60)]
        alerts, _ = await play(self.run(ratios).items)
        fired = [a for a in alerts if a.rule == "update_ratio" and not a.cleared]
        assert [a.step for a in fired] == [43] and "not the one the trainer reports" in fired[0].message

    async def test_a_step_size_ramp_with_an_optimizer_rate_that_cannot_be_judged_is_judged_at_rise(self):
        """The same step-size ramp with the optimizer's rate sent as 0 (a frozen first parameter group) or NaN: the rate
        is not judged, so the step size is held to ``rise`` (1.2x), not ``step_rise``, and fires at 43 as without a rate."""
        rng = random.Random(2)
        ratios = [1e-3 * math.exp(rng.gauss(0, 0.05)) * (1.15 ** max(0, step - 39)) for step in range(60)]
        for used in (0.0, math.nan):
            alerts, _ = await play(self.run(ratios, optimizer_lr=[used] * 60).items)
            assert [a.step for a in alerts if a.rule == "update_ratio" and not a.cleared] == [43], used

    def test_step_rise_below_rise_is_refused(self):
        with pytest.raises(ValueError, match="step_rise"):
            RULES["update_ratio"].Config(rise=1.5, step_rise=1.2)

    async def test_an_optimizer_rate_above_the_logged_one_fires_on_the_second_update(self):
        """The optimizer's own rate (param_updates.learning_rate) grows 1.15x per update from update 40 while the
        logged rate stays: the rate fires at step 42 (1.52x, the second update beyond 1.2x its usual share of the
        logged rate), before the step size it makes, judged against ``step_rise`` (2x) while the rate is judged (45:
        1.15^6); both say the rate is not the one the trainer reports. Without the rate judge the step size fires at 43."""
        rng = random.Random(2)
        ratios = [1e-3 * math.exp(rng.gauss(0, 0.05)) * self.ramp(step) for step in range(60)]
        for rate_first in (False, True):
            alerts, _ = await play(self.run(ratios, optimizer_lr=[3e-4 * self.ramp(step) for step in range(60)],
                                            rate_first=rate_first).items)
            fired = [a for a in alerts if a.rule == "update_ratio" and not a.cleared]
            assert [(a.step, "optimizer_learning_rate" in a.values) for a in fired] == [(42, True), (45, False)]
            assert fired[0].values["factor"] == pytest.approx(1.15 ** 3)
            assert all("not the one the trainer reports" in a.message for a in fired)
        alerts, _ = await play(self.run(ratios, optimizer_lr=[3e-4 * self.ramp(step) for step in range(60)]).items,
                               config(update_ratio={"optimizer_rate": False}))
        assert [a.step for a in alerts if a.rule == "update_ratio" and not a.cleared] == [43]

    async def test_an_optimizer_rate_that_keeps_its_share_of_the_logged_one_raises_nothing(self):
        """The optimizer's rate twice the logged one throughout (a parameter group of its own), a logged warm-up it
        follows, and a logged 100x spike whose param_updates arrive one update before its ppo_update (SB3's order:
        one update at 100x the last logged rate): nothing from the rate."""
        lrs = [3e-4 * min(2.0, 1.0 + step / 20) for step in range(100)]
        alerts, _ = await play(self.run([1e-3 * lr / 3e-4 for lr in lrs], lrs, [2 * lr for lr in lrs]).items)
        assert of(alerts, "update_ratio") == []
        spike = [3e-4 * (100 if step >= 40 else 1) for step in range(60)]
        alerts, _ = await play(self.run([1e-3 * lr / 3e-4 for lr in spike], spike, spike, rate_first=True).items)
        assert of(alerts, "update_ratio") == []

    async def test_a_checkpoint_mid_fault_continues_identically(self):
        ratios = [1e-3] * 40 + [5e-3] * 5 + [1e-3] * 10
        await assert_resumes_identically(self.run(ratios), split=41, rule="update_ratio")
        used = [3e-4] * 40 + [9e-4] * 5 + [3e-4] * 10
        await assert_resumes_identically(self.run([1e-3] * 55, optimizer_lr=used), split=42, rule="update_ratio")

    def test_defaults_are_the_documented_ones(self):
        assert_documented_defaults("update_ratio", rise=1.2, step_rise=2.0, noise_z=3.5, new_high=1.05, min_spread=0.03, baseline_updates=10, spread_updates=24,
                                   warmup=10, fire_after=2, clear_after=3, optimizer_rate=True)
