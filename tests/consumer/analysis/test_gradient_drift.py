"""The gradient_drift rule, driven through the real pipeline with real encoded messages (see ``harness``)."""

from __future__ import annotations

import math
import random

import pytest

from simic.consumer.analysis import RULES
from simic.schemas.models import HeadGradNorms

from .harness import (
    HEADS,
    SEEDS,
    TYPICAL,
    Producer,
    Timeline,
    assert_documented_defaults,
    assert_resumes_identically,
    config,
    grad_run,
    noisy,
    play,
)


class TestGradientDrift:
    async def test_a_steady_run_raises_nothing(self):
        """Constant norms for 200 updates: no alert from any rule."""
        alerts, _ = await play(grad_run(200, 0, 0).items)
        assert alerts == []

    async def test_a_jump_of_every_norm_fires_each_head_on_the_second_update_and_the_total_on_the_third(self):
        """Norms x6 from step 40 to 44. Each head, judged against its own history, drifts at 40 and 41, at
        least ``head_jump`` (5x) its usual on both, and fires at 41; it clears at 49, the fifth usual update.
        The total's EMA drifts at 40-42 and fires at 42 (three of four); it still drifts at 43 and 44 (the
        10-update EMA is 2.5x behind 6x). At 45 it is back at the EMA before its surge, which ends the count of
        its drifting updates: its quiet run starts there and it clears at 49, with the heads."""
        alerts, _ = await play(grad_run(scale=6.0).items)
        drift = [(a.severity, a.cleared, a.step, a.values.get("head")) for a in alerts if a.rule == "gradient_drift"]
        assert drift == [("warning", False, 41, h) for h in HEADS] + [("warning", False, 42, None)] + \
            [("info", True, 49, None)] + [("info", True, 49, h) for h in HEADS]
        assert {a.rule for a in alerts} == {"gradient_drift"}
        total = alerts[len(HEADS)]
        # EMA after two fault updates: 0.9 * (0.9 * 1 + 0.1 * 6) + 0.1 * 6 = 1.95 (x the base norm): drift (6 - 1.95) / 1.95
        assert total.values["norm_drift"] == pytest.approx((6 - 1.95) / 1.95, rel=0.01) and total.values["drift_threshold"] == 1.0
        assert "gradient drift at step 42" in total.message
        head = alerts[0]
        assert head.values["factor"] == pytest.approx(6.0) and head.values["usual_norm"] == pytest.approx(TYPICAL["slot"])
        assert "2 updates at 5x or more" in head.message

    async def test_a_jump_of_less_than_five_times_that_holds_is_not_drift_for_a_head_nor_the_total(self):
        """Norms x3 from step 40 to 44: every head and the total's EMA drift on each of them, but a rise that
        holds its level (or falls back) is what a healthy run's learning looks like on some trainers: nothing fires."""
        alerts, _ = await play(grad_run(scale=3.0).items)
        assert [a for a in alerts if a.rule == "gradient_drift"] == []

    @staticmethod
    def total_surge(factors: list[float]) -> Timeline:
        """Steady norms, every norm times ``factors`` from step 40 on, then steady again until step 59."""
        p, tl = Producer(), Timeline()
        for step in range(60):
            tl.send(p.grads(step, scale=factors[step - 40] if 40 <= step < 40 + len(factors) else 1.0))
        return tl

    async def test_a_surge_of_the_total_that_holds_and_falls_back_is_quiet_one_still_growing_fires(self):
        """The total at 3.8x, 4x and 3.7x its EMA on three updates, then back (as a healthy recurrent run's did
        while it learned): three drifting updates of four, neither a jump of 5x nor still growing, so nothing
        fires. At 2.5x, 3.2x and 4x (the last the highest, 1.6x the first) the total fires on the third, 42."""
        held, _ = await play(self.total_surge([3.8, 4.0, 3.7]).items)
        assert [a for a in held if a.rule == "gradient_drift"] == []
        growing, _ = await play(self.total_surge([2.5, 3.2, 4.0]).items)
        total = [a for a in growing if a.rule == "gradient_drift" and "head" not in a.values and not a.cleared]
        assert [a.step for a in total] == [42]
        assert "growing: " in total[0].message

    async def test_spikes_of_the_total_with_an_update_back_at_its_usual_between_them_are_quiet(self):
        """The total alone (the heads unmoved, as the LSTM's gradient through time on a recurrent trainer) at 8x and
        7x its usual, then 0.9x (back at its usual), then 10x: three drifting updates of four, each over 5x, but the
        update back at the EMA before them ended them, so nothing fires. With 1.5x in its place (above its usual, not
        drifting against the risen EMA) the window still bridges it: a jump held, fired at 43."""
        def spikes(between: float) -> Timeline:
            p, tl = Producer(), Timeline()
            factors = {40: 8.0, 41: 7.0, 42: between, 43: 10.0}
            usual = math.sqrt(sum(v * v for v in TYPICAL.values()))
            for step in range(60):
                tl.send(p.grads(step, total=usual * factors.get(step, 1.0)))
            return tl

        def total_fired(alerts):
            return [a.step for a in alerts if a.rule == "gradient_drift" and "head" not in a.values and not a.cleared]

        back, _ = await play(spikes(0.9).items)
        assert total_fired(back) == []
        held, _ = await play(spikes(1.5).items)
        assert total_fired(held) == [43]

    async def test_the_total_alone_still_finds_a_slow_drift_and_a_jump(self):
        """Without per-head norms (a trainer that sends only the total), a total growing 1.25x per update from step 40
        fires within five updates, and one held at 6x fires on its third drifting update."""
        for factors, expected in (([1.25 ** (k + 1) for k in range(20)], range(40, 46)), ([6.0] * 5, [42])):
            p, tl = Producer(), Timeline()
            for step in range(60):
                tl.send(p.make(HeadGradNorms, step, norms={}, total=2.0 * (factors[step - 40] if 40 <= step < 40 + len(factors) else 1.0)))
            alerts, _ = await play(tl.items)
            fired = [a.step for a in alerts if a.rule == "gradient_drift" and not a.cleared]
            assert fired and fired[0] in expected, (factors[:3], fired)

    async def test_a_head_still_growing_on_its_third_drifting_update_fires(self):
        """'op' at 2x, 2.2x, 2.5x its usual (each higher than the last): it fires on the third; the same
        three values in falling order (a surge that fades) do not fire."""
        for order, expected in ((1, [42]), (-1, [])):
            p, tl = Producer(), Timeline()
            factors = [2.0, 2.2, 2.5][::order]
            for step in range(60):
                factor = factors[step - 40] if 40 <= step < 43 else 1.0
                tl.send(p.grads(step, norms={**TYPICAL, "op": 1.2 * factor}))
            alerts, _ = await play(tl.items)
            fired = [a for a in alerts if a.rule == "gradient_drift" and a.values.get("head") == "op" and not a.cleared]
            assert [a.step for a in fired] == expected, order
            if fired:
                assert "growing for 3 updates: 2x, 2.2x, 2.5x" in fired[0].message

    async def test_drifting_updates_of_a_head_count_in_a_row_only_when_consecutive(self):
        """'op' at 2x, 2.2x and 2.5x its usual, with updates between them where it had no gradient: not three in a row."""
        p, tl = Producer(), Timeline()
        factors = {40: 2.0, 50: 2.2, 60: 2.5}
        for step in range(70):
            op = 1.2 * factors[step] if step in factors else (None if 40 < step < 60 else 1.2)
            tl.send(p.grads(step, norms={**TYPICAL, "op": op}))
        alerts, _ = await play(tl.items)
        assert [a for a in alerts if a.rule == "gradient_drift" and a.values.get("head") == "op"] == []

    async def test_one_head_drifting_alone_is_its_own_subject(self):
        """Only 'op' x6: its head alert fires, with its usual norm in the message; the total moved too little to drift."""
        alerts, _ = await play(grad_run(norms={**TYPICAL, "op": 1.2 * 6.0}).items)
        fired = [a for a in alerts if a.rule == "gradient_drift" and not a.cleared]
        assert [(a.values.get("head"), a.step) for a in fired] == [("op", 41)]
        assert "norm 7.2 is 6x its usual 1.2" in fired[0].message

    @pytest.mark.parametrize("seed", SEEDS)
    async def test_a_head_swinging_between_two_levels_is_not_drift(self, seed):
        """A learned head's gradient on a recurrent trainer: about 0.12, then for 20 updates 0.003 on about
        half of them (the median falls to the lower level). Back at 0.12 is 40x that level, but not
        above the head's recent highest: nothing."""
        rng, p, tl = random.Random(seed), Producer(), Timeline()
        for step in range(150):
            low = 80 <= step < 100 and rng.random() < 0.5
            tl.send(p.grads(step, norms={**TYPICAL, "blend": (0.003 if low else 0.12) * math.exp(rng.gauss(0, 0.2))}))
        alerts, _ = await play(tl.items)
        assert [a for a in alerts if a.rule == "gradient_drift"] == []

    @pytest.mark.parametrize("seed", SEEDS)
    async def test_one_noisy_head_drifting_1_25x_per_update_fires_within_five(self, seed):
        """'op' with 10% log-normal noise per update (an RMS over an update's minibatches: the reference
        trainer's heads jitter 10-13% per update), growing 1.25x per update from step 40 (x2 at 43): its
        alert fires within five updates of onset."""
        rng, p, tl = random.Random(seed), Producer(), Timeline()
        for step in range(60):
            growth = 1.25 ** max(0, step - 39)
            tl.send(p.grads(step, norms={**TYPICAL, "op": 1.2 * growth * math.exp(rng.gauss(0, 0.10))}))
        alerts, _ = await play(tl.items)
        fired = [a.step for a in alerts if a.rule == "gradient_drift" and a.values.get("head") == "op" and not a.cleared]
        assert fired and 40 <= fired[0] <= 45

    async def test_grad_health_is_the_share_of_learning_heads(self):
        """Three of five heads without gradient: health 0.4 against an EMA near 1.0 drifts, on its own 0.5 threshold."""
        alerts, _ = await play(grad_run(norms={**TYPICAL, "slot": None, "blend": None, "op": 0.0}).items)
        (fired,) = [a for a in alerts if a.rule == "gradient_drift" and not a.cleared]
        assert fired.step == 42 and "head" not in fired.values
        # The health EMA (momentum 0.9) after two such updates: 0.9 * (0.9 + 0.04) + 0.04 = 0.886; drift (0.886 - 0.4) / 0.886
        assert fired.values["grad_health"] == pytest.approx(0.4) and fired.values["health_drift"] == pytest.approx(0.486 / 0.886, rel=0.01)
        assert fired.values["norm_drift"] < 0.5

    async def test_post_clip_measurements_are_not_tracked(self):
        """Events measured after clipping (stage = post_clip) never move the EMAs: no alert."""
        p, tl = Producer(), Timeline()
        for step in range(40):
            tl.send(p.grads(step, stage="pre_clip"))
        for step in range(40, 50):
            tl.send(p.grads(step, scale=5.0, stage="post_clip"))
        alerts, pipeline = await play(tl.items)
        assert alerts == []
        state = pipeline.find(RULES["gradient_drift"])[0].state_dict()["extra"]
        assert [s["total"]["update_count"] for s in state.values()] == [40]

    async def test_non_finite_values_are_left_to_non_finite_and_do_not_poison_the_ema(self):
        """A NaN total fires non_finite only; the EMA skips it and later steady updates stay quiet."""
        p, tl = Producer(), Timeline()
        for step in range(60):
            if step == 30:
                tl.send(p.grads(step, norms={**TYPICAL, "op": math.nan}, total=math.nan))
            else:
                tl.send(p.grads(step))
        alerts, pipeline = await play(tl.items)
        assert [(a.rule, a.cleared, a.step) for a in alerts] == [("non_finite", False, 30), ("non_finite", True, 31)]
        (state,) = pipeline.find(RULES["gradient_drift"])[0].state_dict()["extra"].values()
        assert math.isfinite(state["total"]["ema_norm"]) and state["total"]["update_count"] == 59

    async def test_warmup_0_and_fire_after_1_is_the_seed_rule(self):
        """Configured as the seed plan (0.99, 0.5, no warmup, fire at once) the rule fires exactly where its tracker says drift > 0.5."""
        from simic.consumer import GradientEMATracker

        norms = [1.0, 1.2, 0.9, 1.1, 2.0, 1.0]
        p, tl = Producer(), Timeline()
        for step, norm in enumerate(norms):
            tl.send(p.grads(step, norms={"pi": norm}))
        seed_rule = {"momentum": 0.99, "drift_threshold": 0.5, "health_drift_threshold": 0.5, "warmup": 0, "fire_after": 1, "fire_window": 1,
                     "per_head": False}
        alerts, _ = await play(tl.items, config(gradient_drift=seed_rule))
        tracker = GradientEMATracker()
        seed = [step for step, norm in enumerate(norms) if tracker.check_drift(norm, 1.0)[0]]
        assert seed == [4]
        assert [a.step for a in alerts if a.rule == "gradient_drift" and not a.cleared] == seed

    @pytest.mark.parametrize("seed", SEEDS)
    async def test_noisy_healthy_norms_do_not_flap(self, seed):
        """300 updates with 15% log-normal noise per head raise no alert from any rule."""
        rng, p, tl = random.Random(seed), Producer(), Timeline()
        for step in range(300):
            tl.send(p.grads(step, norms=noisy(rng, TYPICAL, 0.15)))
        alerts, _ = await play(tl.items)
        assert alerts == []

    async def test_a_checkpoint_mid_fault_continues_identically(self):
        """State saved two updates into the fault (counts and the total's drifting norms pending) fires and clears as
        the uninterrupted run."""
        await assert_resumes_identically(self.total_surge([2.5, 3.2, 4.0]), split=42, rule="gradient_drift",
                                         cfg=config(gradient_drift={"per_head": False}))

    async def test_three_drifting_updates_of_four_fire_where_three_in_a_row_would_wait(self):
        """Every norm growing from step 40 with one quiet update (41) in between: the total drifts at 40, 42
        and 43 and fires at 43 (three of the last four); with fire_window = fire_after (in a row) it waits until 44."""
        growing = {40: 3.0, 41: 1.3, 42: 4.0, 43: 5.0, 44: 6.5, 45: 8.0, 46: 10.0}
        p, tl = Producer(), Timeline()
        for step in range(50):
            tl.send(p.grads(step, scale=growing.get(step, 1.0)))
        windowed, _ = await play(tl.items, config(gradient_drift={"per_head": False}))
        in_a_row, _ = await play(tl.items, config(gradient_drift={"per_head": False, "fire_window": 3}))

        def first(alerts):
            return min(a.step for a in alerts if a.rule == "gradient_drift" and not a.cleared)

        assert first(windowed) == 43 and first(in_a_row) == 44

    def test_a_window_shorter_than_the_count_is_refused(self):
        """fire_window < fire_after cannot ever fire: a configuration error naming both."""
        with pytest.raises(ValueError, match="fire_window"):
            config(gradient_drift={"fire_window": 2})

    def test_defaults_are_the_documented_ones(self):
        """Momentum 0.9, norm drift 1.0, health drift 0.5, warmup 30, floor 1e-8, 3 of 4 fire (a jump of 5x or growing 1.25x), clear after 5; heads 1.6x, 3.5 jitters, above the recent highest, 2 in a row."""
        assert_documented_defaults("gradient_drift", momentum=0.9, drift_threshold=1.0, health_drift_threshold=0.5, warmup=30, vanishing_floor=1e-8,
                                   per_head=True, head_rise=1.6, head_noise_z=3.5, head_new_high=1.0, head_min_spread=0.05, head_jump=5.0, head_jump_after=2, head_fire_after=3, head_growth=1.25,
                                   total_jump=5.0, total_growth=1.25, fire_after=3, fire_window=4, clear_after=5)
