"""The lstm_state rule, driven through the real pipeline with real encoded messages (see ``harness``)."""

from __future__ import annotations

import math
import random

import pytest

from .harness import SEEDS, Producer, Timeline, assert_documented_defaults, assert_resumes_identically, of, play


def lstm_run(healthy: int = 20, fault: int = 6, after: int = 10, **fault_fields) -> Timeline:
    p, tl = Producer(), Timeline()
    for step in range(healthy + fault + after):
        tl.send(p.lstm(step, **(fault_fields if healthy <= step < healthy + fault else {})))
    return tl


class TestLstmState:
    async def test_a_healthy_state_raises_nothing(self):
        """Typical h/c statistics for 100 steps: no alert."""
        alerts, _ = await play(lstm_run(100, 0, 0).items)
        assert alerts == []

    @pytest.mark.parametrize(
        ("fields", "condition"),
        [
            ({"c_rms": 20.0}, "c_explosion"),
            ({"h_rms": 15.0}, "h_explosion"),
            ({"h_rms": 1e-8}, "h_vanishing"),
            ({"c_rms": 1e-9}, "c_vanishing"),
            ({"c_env_max_rms": 50.0}, "c_env_explosion"),
            ({"h_env_max_rms": 12.0}, "h_env_explosion"),
            ({"h_rms": 0.95}, "h_saturation"),
        ],
    )
    async def test_each_fault_fires_on_the_third_event_and_clears_after_five(self, fields, condition):
        """A fault from step 20 fires at 22 and, healthy again from 26, clears at 30."""
        alerts, _ = await play(lstm_run(**fields).items)
        fired = [a for a in alerts if a.rule == "lstm_state"]
        assert [(a.cleared, a.step, a.values["condition"]) for a in fired] == [(False, 22, condition), (True, 30, condition)]

    async def test_an_all_zero_state_is_a_reset_not_a_vanishing(self):
        """rms exactly 0 (what a reset gives) is not counted as vanished."""
        alerts, _ = await play(lstm_run(5, 10, 5, h_rms=0.0, c_rms=0.0, h_max_abs=0.0).items)
        assert alerts == []

    async def test_nan_is_left_to_non_finite_and_does_not_clear_an_explosion(self):
        """A NaN c_rms during an explosion: non_finite fires; lstm_state neither repeats it nor clears."""
        p, tl = Producer(), Timeline()
        for step in range(20):
            tl.send(p.lstm(step, c_rms=20.0 if step >= 5 else 0.8))
            if step >= 8:
                tl.send(p.lstm(step, c_rms=math.nan, has_nan=True))
        alerts, _ = await play(tl.items)
        assert of(alerts, "lstm_state") == [("warning", False, 7)]
        assert of(alerts, "non_finite")[0] == ("critical", False, 8)

    @pytest.mark.parametrize("seed", SEEDS)
    async def test_noisy_healthy_states_do_not_flap(self, seed):
        """c_rms with 50% noise, h_rms up to 0.6 and h_max_abs up to 0.9999: no alert."""
        rng, p, tl = random.Random(seed), Producer(), Timeline()
        for step in range(300):
            tl.send(p.lstm(step, c_rms=0.8 * math.exp(rng.gauss(0, 0.5)), h_rms=rng.uniform(0.1, 0.6), h_max_abs=rng.uniform(0.7, 0.9999)))
        alerts, _ = await play(tl.items)
        assert alerts == []

    async def test_a_checkpoint_mid_fault_continues_identically(self):
        """State saved two events into a c explosion fires and clears as the uninterrupted run."""
        await assert_resumes_identically(lstm_run(c_rms=20.0), split=22, rule="lstm_state")

    def test_defaults_are_the_documented_ones(self):
        """rms 10 and 1e-6, per-environment rms 10, saturation at h rms 0.9, fire after 3, clear after 5."""
        assert_documented_defaults("lstm_state", max_rms=10.0, min_rms=1e-6, max_env_rms=10.0, saturation_rms=0.9,
                                   fire_after=3, clear_after=5)
