"""The silent_producer rule, driven through the real pipeline with real encoded messages (see ``harness``)."""

from __future__ import annotations

import pytest

from simic.consumer.analysis import RULES
from simic.schemas.models import RunEnd, RunStart

from .harness import Producer, Timeline, assert_documented_defaults, assert_resumes_identically, chatty, of, play


class TestSilentProducer:
    async def test_a_talking_producer_raises_nothing(self):
        """Events every 0.1 s with clock ticks for 30 s, then run_end and 60 s of ticks: no alert."""
        p, tl = Producer(), Timeline()
        tl.send(p.make(RunStart, 0, host="h", pid=1))
        chatty(tl, p, range(300))
        tl.send(p.make(RunEnd, 300))
        tl.ticks(60)
        alerts, _ = await play(tl.items)
        assert alerts == []

    async def test_a_producer_gone_quiet_is_hung_or_dead_once_and_clears_when_it_speaks(self):
        """Silent after step 49: one critical alert at the first tick past 10 s; its next event clears it."""
        p, tl = Producer(), Timeline()
        chatty(tl, p, range(50))
        tl.ticks(30)
        tl.send(p.timing(50, {"update": 8.0}))
        alerts, _ = await play(tl.items)
        assert of(alerts, "silent_producer") == [("critical", False, 49), ("info", True, 50)]
        fired = alerts[0]
        assert "hung or died" in fired.message and "since step 49" in fired.message
        assert fired.values["silent_s"] == pytest.approx(11.0) and fired.values["threshold_s"] == 10.0
        assert "after 30.1 s of silence" in alerts[1].message

    async def test_a_slow_producer_is_judged_by_its_own_pace(self):
        """A producer reporting every 2 s gets 20 x 2 = 40 s before it is called silent, not 10."""
        p, tl = Producer(), Timeline()
        for step in range(30):
            tl.send(p.timing(step, {"update": 8.0}), after_s=0.5)
            tl.tick(1.0)
            tl.tick(0.5)  # messages 2 s apart, ticks in between
        tl.ticks(45)
        alerts, _ = await play(tl.items)
        assert [(a.step, a.values["silent_s"]) for a in alerts] == [(29, 40.5)]
        assert alerts[0].values["threshold_s"] == pytest.approx(40.0)

    async def test_run_end_closes_the_session(self):
        """After run_end no silence is reported, however long."""
        p, tl = Producer(), Timeline()
        chatty(tl, p, range(20))
        tl.send(p.make(RunEnd, 20, status="interrupted"))
        tl.ticks(120)
        alerts, pipeline = await play(tl.items)
        assert alerts == []
        assert pipeline.find(RULES["silent_producer"])[0].state_dict()["extra"]["sessions"] == {}

    async def test_a_restarted_trainer_replaces_its_silent_session(self):
        """A new session of the same run and rank clears the old session's alert: the trainer restarted."""
        old, new, tl = Producer(session=1), Producer(session=2), Timeline()
        chatty(tl, old, range(10))
        tl.ticks(15)
        tl.send(new.make(RunStart, 10, host="h", pid=2))
        alerts, _ = await play(tl.items)
        assert [(a.cleared, a.session, a.step) for a in alerts] == [(False, 1, 9), (True, 1, 10)]
        assert "replaced by session 2" in alerts[1].message

    async def test_a_checkpoint_during_the_silence_continues_identically(self):
        """State saved five seconds into the silence fires and clears as the uninterrupted run."""
        p, tl = Producer(), Timeline()
        chatty(tl, p, range(50))
        tl.ticks(30)
        tl.send(p.timing(50, {"update": 8.0}))
        await assert_resumes_identically(tl, split=len(tl.items) - 26, rule="silent_producer")

    def test_defaults_are_the_documented_ones(self):
        """Critical; at least 10 s, or 20x the usual gap (EMA 0.9); scans every 0.5 s; fires and clears at once."""
        assert_documented_defaults("silent_producer", min_silence_s=10.0, silence_factor=20.0, gap_momentum=0.9,
                                   scan_interval_s=0.5, fire_after=1, clear_after=1)
        assert RULES["silent_producer"].Config().severity == "critical"
