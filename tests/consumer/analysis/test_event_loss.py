"""The event_loss rule, driven through the real pipeline with real encoded messages (see ``harness``)."""

from __future__ import annotations

import random

import pytest

from .harness import SEEDS, Producer, Timeline, assert_documented_defaults, assert_resumes_identically, of, play


def lossy_run(events: int, lose_every: int | None = None, stop_losing_at: int | None = None, first_seq: int = 0) -> Timeline:
    p, tl = Producer(), Timeline()
    p.skip(first_seq)
    for step in range(events):
        if lose_every and step % lose_every == lose_every - 1 and (stop_losing_at is None or step < stop_losing_at):
            p.skip(1)
        tl.send(p.timing(step, {"update": 8.0}), after_s=0.01)
    return tl


class TestEventLoss:
    async def test_an_unbroken_sequence_raises_nothing(self):
        """2000 consecutive sequence numbers: no alert."""
        alerts, _ = await play(lossy_run(2000).items)
        assert alerts == []

    async def test_a_steady_loss_fires_once_and_clears_after_30_quiet_seconds(self):
        """One event in 20 lost fires when the last 1000 hold 11 losses (step 219); the last loss is at step 999
        (the producer's clock then at 1.049 s) and it clears 30 s of producer time later, the window long clean."""
        alerts, _ = await play(lossy_run(32000, lose_every=20, stop_losing_at=1000).items)
        fired = [a for a in alerts if a.rule == "event_loss"]
        assert [(a.cleared, a.step) for a in fired] == [(False, 219), (True, 30999)]
        assert fired[0].values["lost"] == 11 and fired[0].values["loss_fraction"] == 0.011
        assert fired[1].values["lost"] == 0

    async def test_losses_in_chunks_wider_than_the_window_fire_once(self):
        """A sustained overload: 3000 events dropped after every 1500 received, for 30,000 steps. Each
        clean stretch is wider than the 1000-event window, but a gap comes every 4.5 s of producer
        time: the alert fires once and stays until the end."""
        p, tl = Producer(), Timeline()
        for step in range(30_000):
            if step % 1500 == 1499:
                p.skip(3000)
            tl.send(p.timing(step, {"update": 8.0}), after_s=0.001)
        alerts, _ = await play(tl.items)
        assert [(a.cleared, a.step) for a in alerts if a.rule == "event_loss"] == [(False, 1499)]

    async def test_losses_before_the_consumer_listened_and_a_few_at_the_start_are_not_a_rate(self):
        """A session first seen at seq 500, then 5 events lost early on: no alert."""
        p, tl = Producer(), Timeline()
        p.skip(500)
        for step in range(100):
            if step in (3, 5, 8, 13, 21):
                p.skip(1)
            tl.send(p.timing(step, {"update": 8.0}), after_s=0.01)
        alerts, _ = await play(tl.items)
        assert alerts == []

    @pytest.mark.parametrize("seed", SEEDS)
    async def test_a_loss_rate_hovering_at_the_limit_does_not_flap(self, seed):
        """Random losses at about 1% for 5000 events: each fire or clear is hundreds of events after the last."""
        rng, p, tl = random.Random(seed), Producer(), Timeline()
        for step in range(5000):
            if rng.random() < 0.009:
                p.skip(1)
            tl.send(p.timing(step, {"update": 8.0}), after_s=0.01)
        alerts, _ = await play(tl.items)
        steps = [step for _, _, step in of(alerts, "event_loss")]
        assert len(steps) <= 6 and all(b - a >= 300 for a, b in zip(steps, steps[1:]))

    async def test_a_checkpoint_mid_fault_continues_identically(self):
        """State saved with losses in the window (not yet firing) fires and clears as the uninterrupted run."""
        await assert_resumes_identically(lossy_run(32000, lose_every=20, stop_losing_at=1000), split=150, rule="event_loss")

    def test_defaults_are_the_documented_ones(self):
        """1% of the last 1000, clear at 0.5% after 30 s without a gap, fire and clear at once."""
        assert_documented_defaults("event_loss", max_loss_fraction=0.01, clear_below_fraction=0.005, window=1000, clear_quiet_s=30.0,
                                   fire_after=1, clear_after=1)
