"""The step_time rule, driven through the real pipeline with real encoded messages (see ``harness``)."""

from __future__ import annotations

import math
import random

import pytest

from simic.consumer.analysis import RULES

from .harness import SEEDS, Producer, Timeline, assert_documented_defaults, assert_resumes_identically, noisy, of, play


def timing_run(update_ms: list[float], clock: str = "cuda_event", rollout_ms: float = 20.0) -> Timeline:
    p, tl = Producer(), Timeline()
    for step, ms in enumerate(update_ms):
        tl.send(p.timing(step, {"rollout": rollout_ms, "update": ms}, clock=clock))
    return tl


class TestStepTime:
    @staticmethod
    def both(factors: list[float]) -> Timeline:
        """Rollout 20 ms and update 8 ms, both times the step's factor (a machine slowing every phase)."""
        p, tl = Producer(), Timeline()
        for step, f in enumerate(factors):
            tl.send(p.timing(step, {"rollout": 20.0 * f, "update": 8.0 * f}))
        return tl

    async def test_every_phase_a_little_slower_is_the_machine_and_not_an_alert(self):
        """Both phases 1.5x from step 30 on (a contended machine): no alert, no phase blamed."""
        alerts, _ = await play(self.both([1.0] * 30 + [1.5] * 60).items)
        assert of(alerts, "step_time") == []

    async def test_one_phase_slower_only_by_waiting_for_a_cpu_is_the_machine_and_not_an_alert(self):
        """The rollout 2.5x from step 30 on, the update at its pace, as other processes on the machine do to a
        host-bound rollout: where the producer says the extra time was its thread waiting for a CPU, no phase is
        blamed; the same slowdown spent in the rollout's own work is the trainer's, at its fifth step, with the
        wait in the message."""
        for waiting, expected in ((30.0, []), (1.0, [34])):
            p, tl = Producer(), Timeline()
            for step in range(60):
                rollout = 50.0 if step >= 30 else 20.0
                tl.send(p.timing(step, {"rollout": rollout, "update": 8.0}, clock="cpu",
                                 wait={"rollout": waiting if step >= 30 else 0.5, "update": 0.1}))
            alerts, _ = await play(tl.items)
            fired = [a for a in alerts if a.rule == "step_time" and not a.cleared]
            assert [a.step for a in fired] == expected, waiting
            if fired:
                assert fired[0].values["wait_ms"] == 1.0 and "1 ms of it waiting for a CPU" in fired[0].message

    async def test_a_machine_loaded_from_the_start_or_a_wait_that_stops_being_sent_is_nothing(self):
        """Every step the rollout waits 55 of its 100 ms and the update 11 of 20, steadily: no notice about the machine
        (nothing changed). Then, with the same times, the producer stops sending the waits: the phases whose times were
        own times are not judged against whole times, so nothing either."""
        p, tl = Producer(), Timeline()
        for step in range(80):
            wait = {"rollout": 55.0, "update": 11.0} if step < 50 else None
            tl.send(p.timing(step, {"rollout": 100.0, "update": 20.0}, clock="cpu", wait=wait))
        alerts, _ = await play(tl.items)
        assert of(alerts, "step_time") == []

    async def test_a_phase_alert_clears_while_another_phase_waits_for_a_cpu(self):
        """The update 2x by its own time from step 30 fires at 34; from step 40 it is back, while the rollout is slow only by
        waiting for a CPU: the update's alert clears at 42, and no phase or machine is blamed for the rollout."""
        p, tl = Producer(), Timeline()
        for step in range(80):
            update = 16.0 if 30 <= step < 40 else 8.0
            rollout, waiting = (50.0, 30.5) if step >= 40 else (20.0, 0.5)
            tl.send(p.timing(step, {"rollout": rollout, "update": update}, clock="cpu", wait={"rollout": waiting, "update": 0.1}))
        alerts, _ = await play(tl.items)
        assert [(a.cleared, a.step, a.values["phase"]) for a in alerts if a.rule == "step_time"] == [
            (False, 34, "update"), (True, 42, "update")]

    async def test_a_phase_whose_wait_is_not_known_is_judged_by_its_whole_time(self):
        """The same 2.5x rollout with the wait sent for the update only: the rollout is the trainer's, at its fifth step."""
        p, tl = Producer(), Timeline()
        for step in range(60):
            tl.send(p.timing(step, {"rollout": 50.0 if step >= 30 else 20.0, "update": 8.0}, clock="cpu", wait={"update": 0.1}))
        alerts, _ = await play(tl.items)
        assert [a.step for a in alerts if a.rule == "step_time" and not a.cleared] == [34]

    async def test_a_lasting_machine_slowdown_is_one_notice_about_the_machine(self):
        """Both phases 3x from step 30 to 69: one info notice about the machine (phase "*") at step 49, its
        20th step, none per phase; it clears three steps after the phases are back."""
        alerts, _ = await play(self.both([1.0] * 30 + [3.0] * 40 + [1.0] * 10).items)
        fired = [a for a in alerts if a.rule == "step_time"]
        assert [(a.severity, a.cleared, a.step, a.values["phase"]) for a in fired] == [
            ("info", False, 49, "*"), ("info", True, 72, "*")]
        assert "the machine" in fired[0].message and "not one part of the trainer" in fired[0].message

    async def test_a_short_machine_slowdown_is_not_reported(self):
        """Another job on the machine for a few steps (as on healthy SB3 seed 203: rollout 3.5x and update 2.9x
        for 5 steps, then 2.2-3.9x on and off) is no fault of the run: nothing, not even a notice; and the
        baselines are left as they were, so one phase slowing alone afterwards is still the trainer's, at its
        fifth step."""
        rng, p, tl = random.Random(3), Producer(), Timeline()
        for step in range(90):
            f = (1.0, 1.0)
            if 30 <= step < 35 or 40 <= step < 52 and step % 3:
                f = (3.5, 2.9)
            if step >= 70:
                f = (1.0, 2.0)
            phases = noisy(rng, {"rollout": 20.0 * f[0], "update": 8.0 * f[1]}, 0.05)
            tl.send(p.timing(step, phases, clock="cpu"))
        alerts, _ = await play(tl.items)
        fired = [a for a in alerts if a.rule == "step_time" and not a.cleared]
        assert [(a.severity, a.step, a.values["phase"]) for a in fired] == [("warning", 74, "update")]
        assert "not the machine" in fired[0].message

    async def test_a_lasting_machine_slowdown_just_beyond_its_factor_is_noticed(self):
        """Both phases 2.2x for 40 steps: the baselines wait while the machine is beyond its factor (following
        it, they would have taken the slowdown below 2x before its 20th step), so the notice comes at step 49."""
        alerts, _ = await play(self.both([1.0] * 30 + [2.2] * 40).items)
        assert of(alerts, "step_time") == [("info", False, 49)]

    async def test_a_phase_that_jitters_a_lot_is_held_to_its_own_noise(self):
        """A host-timed rollout whose time swings by 40% (log-normal) from step to step: 1.7x for three steps is
        within its noise (no alert); the same 1.7x for five steps on a steady phase fires."""
        rng, p, tl = random.Random(4), Producer(), Timeline()
        for step in range(60):
            slow = 1.7 if 40 <= step < 45 else 1.0
            tl.send(p.timing(step, {"rollout": 50.0 * math.exp(rng.gauss(0.0, 0.4)) * slow, "update": 30.0}, clock="cpu"))
        alerts, _ = await play(tl.items)
        assert of(alerts, "step_time") == []
        alerts, _ = await play(timing_run([8.0] * 40 + [8.0 * 1.7] * 5 + [8.0] * 5).items)
        assert [a.step for a in alerts if a.rule == "step_time" and not a.cleared] == [44]

    async def test_contention_slowing_every_phase_unevenly_is_the_machine(self):
        """Measured under contention: the host-bound rollout 2x while the update is 1.4x, for 20 steps: no
        phase is blamed, and the machine (below 2x for its least slowed phase) is not reported."""
        p, tl = Producer(), Timeline()
        for step in range(80):
            f = (2.0, 1.4) if 40 <= step < 60 else (1.0, 1.0)
            tl.send(p.timing(step, {"rollout": 20.0 * f[0], "update": 8.0 * f[1]}))
        alerts, _ = await play(tl.items)
        assert of(alerts, "step_time") == []

    async def test_a_phase_slowing_alone_after_another_settled_slower_is_the_trainer(self):
        """The rollout settles at 1.45x the baseline of its first steps from step 15 on (not a regression: below
        the factor), then the update goes 5x from step 50: the rollout holds its recent pace, so the update is the
        trainer's and fires at its fifth step, 54, named, not taken for the machine."""
        p, tl = Producer(), Timeline()
        for step in range(70):
            phases = {"rollout": 29.0 if step >= 15 else 20.0, "update": 40.0 if step >= 50 else 8.0}
            tl.send(p.timing(step, phases, clock="cpu"))
        alerts, _ = await play(tl.items)
        fired = [a for a in alerts if a.rule == "step_time" and not a.cleared]
        assert [(a.step, a.values["phase"]) for a in fired] == [(54, "update")]
        assert fired[0].values["baseline_ms"] == 8.0 and "not the machine" in fired[0].message

    async def test_every_phase_slower_after_one_settled_slower_is_still_the_machine(self):
        """The same settled rollout, then both phases 3x together from step 50 for 30 steps: the machine (one notice
        at its 20th step, 69), no phase blamed."""
        p, tl = Producer(), Timeline()
        for step in range(80):
            f = 3.0 if step >= 50 else 1.0
            tl.send(p.timing(step, {"rollout": (29.0 if step >= 15 else 20.0) * f, "update": 8.0 * f}, clock="cpu"))
        alerts, _ = await play(tl.items)
        assert [(a.severity, a.step, a.values["phase"]) for a in alerts if a.rule == "step_time" and not a.cleared] == [
            ("info", 69, "*")]

    async def test_a_reported_phase_stays_reported_while_every_phase_is_slow(self):
        """The update 5x from step 30 fires at 34; from step 40 the rollout runs 1.3x for 30 steps, so every phase is
        slow together: the update's times do not join its baseline while it is reported, and its alert does not
        clear while it is still 5x."""
        p, tl = Producer(), Timeline()
        for step in range(80):
            rollout = 26.0 if 40 <= step < 70 else 20.0
            tl.send(p.timing(step, {"rollout": rollout, "update": 40.0 if step >= 30 else 8.0}, clock="cpu"))
        alerts, _ = await play(tl.items)
        assert [(a.cleared, a.step, a.values["phase"]) for a in alerts if a.rule == "step_time"] == [(False, 34, "update")]

    async def test_one_phase_slowing_alone_is_the_trainer(self):
        """Only the update phase 2x: the alert names it and says the other phases kept their pace."""
        alerts, _ = await play(timing_run([8.0] * 30 + [16.0] * 10).items)
        [fired] = [a for a in alerts if a.rule == "step_time" and not a.cleared]
        assert fired.values["phase"] == "update" and "not the machine" in fired.message

    async def test_steady_phases_raise_nothing(self):
        """Constant phase times for 100 steps: no alert."""
        alerts, _ = await play(timing_run([8.0] * 100).items)
        assert alerts == []

    async def test_a_regression_fires_on_the_fifth_step_names_the_clock_and_clears(self):
        """'update' 8 -> 16 ms from step 30 fires at 34 (its fifth slow step) (cuda_event clock); back to 8 ms from 40, clears at 42."""
        alerts, _ = await play(timing_run([8.0] * 30 + [16.0] * 10 + [8.0] * 5).items)
        fired = [a for a in alerts if a.rule == "step_time"]
        assert [(a.cleared, a.step, a.values["phase"]) for a in fired] == [(False, 34, "update"), (True, 42, "update")]
        assert fired[0].values["factor"] == 2.0 and fired[0].values["clock"] == "cuda_event"
        assert "cuda_event clock" in fired[0].message

    async def test_a_lasting_regression_does_not_become_the_new_normal(self):
        """300 steps at twice the baseline: one alert that stays active (the baseline is frozen)."""
        alerts, pipeline = await play(timing_run([8.0] * 30 + [16.0] * 300).items)
        assert of(alerts, "step_time") == [("warning", False, 34)]
        state = pipeline.find(RULES["step_time"])[0].state_dict()["extra"]
        assert [s["baseline"][0] for s in state.values() if s["phase"] == "update"] == [8.0]

    async def test_slow_first_steps_do_not_set_the_baseline(self):
        """Three 500 ms warm-up steps (compilation) are outvoted by the warm-up median; a later 2x still fires."""
        alerts, _ = await play(timing_run([500.0] * 3 + [8.0] * 40 + [16.0] * 5).items)
        assert of(alerts, "step_time") == [("warning", False, 47)]

    async def test_sub_millisecond_phases_are_not_judged(self):
        """A 0.05 ms phase jumping tenfold is noise, not a regression."""
        p, tl = Producer(), Timeline()
        for step in range(50):
            tl.send(p.timing(step, {"log": 0.05 if step < 30 else 0.5}, clock="cpu"))
        alerts, _ = await play(tl.items)
        assert alerts == []

    @pytest.mark.parametrize("seed", SEEDS)
    async def test_noisy_healthy_timings_do_not_flap(self, seed):
        """10% jitter on every phase with an occasional single slow step (a checkpoint save): no alert."""
        rng, p, tl = random.Random(seed), Producer(), Timeline()
        for step in range(300):
            phases = noisy(rng, {"rollout": 20.0, "update": 8.0}, 0.1)
            if step % 50 == 49:
                phases["update"] *= 5
            tl.send(p.timing(step, phases))
        alerts, _ = await play(tl.items)
        assert alerts == []

    async def test_a_checkpoint_mid_fault_continues_identically(self):
        """State saved two steps into the regression fires and clears as the uninterrupted run."""
        await assert_resumes_identically(timing_run([8.0] * 30 + [16.0] * 10 + [8.0] * 5), split=32, rule="step_time")

    def test_defaults_are_the_documented_ones(self):
        """Factor 1.5 over a 0.99 EMA seeded by the median of 10, phases under 1 ms skipped, fire after 3, clear after 3."""
        assert_documented_defaults("step_time", noise_z=4.0, spread_window=24, min_spread=0.05, machine_share=1.2, machine_factor=2.0, regression_factor=1.5, momentum=0.99, warmup=10, min_baseline_ms=1.0,
                                   machine_fire_after=20, machine_severity="info", fire_after=5, clear_after=3)


def test_a_phase_keeps_its_recent_times_in_order_for_the_median() -> None:
    """The phase's ordered copy of its recent log times stays the sorted window (values kept and
    dropped at ``keep``, repeats, inf), so its pace and jitter are ``statistics.median``'s."""
    from statistics import median

    from simic.consumer.analysis._ema import Ema
    from simic.consumer.analysis.step_time import _Phase

    rng = random.Random(7)
    phase = _Phase(Ema(0.1), "phase")
    for i in range(500):
        ms = rng.choice([rng.uniform(1.0, 50.0), 10.0, 10.0, math.inf, 0.0, math.nan])
        phase.remember(ms, keep=24)
        assert phase.ordered == sorted(phase.recent) and len(phase.recent) <= 24
        if len(phase.recent) >= 4:
            assert phase.pace() == math.exp(median(phase.recent))
            mid = median(phase.recent)
            assert phase.jitter(0.0) == max(0.0, 1.4826 * median(abs(x - mid) for x in phase.recent)) or math.isnan(mid - mid)
    again = _Phase(Ema(0.1), "phase", list(phase.recent))
    assert again.ordered == phase.ordered
