"""The ``updates`` stage: the events of one update combined before the rules that count updates.

Driven through the real pipeline with real encoded messages (the helpers of ``analysis/harness.py``), and the
stage alone on decoded batches.
"""

from __future__ import annotations

import json
import math
import random

from simic.consumer.pipeline.updates import UpdateCombiner, combine
from simic.consumer.pipeline.contract import Batch
from simic.schemas.models import HeadGradNorms, RunEnd, StepTiming
from tests.consumer.analysis.harness import TYPICAL, Producer, Timeline, checkpoint, noisy, of, play


def minibatches(p: Producer, step: int, rng: random.Random, count: int = 16, **norms) -> list:
    """One update's per-minibatch events: each minibatch's norms vary by 50% (log-normal) around the update's."""
    return [p.grads(step, norms={**noisy(rng, TYPICAL, 0.5), **norms}) for _ in range(count)]


class TestRulesCountUpdates:
    async def test_a_dead_head_fires_after_five_updates_not_five_minibatches(self):
        """16 events per update, 'blend' dead from update 40: head_balance fires at update 44, as with one event per update."""
        rng, p, tl = random.Random(1), Producer(), Timeline()
        for step in range(60):
            tl.send(*minibatches(p, step, rng, **({"blend": 0.0} if step >= 40 else {})))
        alerts, _ = await play(tl.items)
        assert [(a.step, a.values["head"]) for a in alerts if a.rule == "head_balance" and not a.cleared] == [(44, "blend")]

    async def test_noisy_minibatches_of_steady_updates_raise_nothing(self):
        """200 updates of 16 minibatches whose norms vary by 50% each: no alert (the per-update RMS is steady)."""
        rng, p, tl = random.Random(2), Producer(), Timeline()
        for step in range(200):
            tl.send(*minibatches(p, step, rng))
        alerts, _ = await play(tl.items)
        assert alerts == []

    async def test_one_event_per_phase_is_one_step_of_step_time(self):
        """Phases sent one event each: step_time's baseline and counts are per step (a slow phase fires
        on its fifth slow step, as with one event per step)."""
        p, tl = Producer(), Timeline()
        for step in range(60):
            update = 30.0 + (250.0 if step >= 40 else 0.0)
            tl.send(p.timing(step, {"rollout": 50.0}), p.timing(step, {"update": update}))
        alerts, _ = await play(tl.items)
        fired = [(a.step, a.values["phase"]) for a in alerts if a.rule == "step_time" and not a.cleared]
        assert fired == [(44, "update")]

    async def test_a_checkpoint_between_the_minibatches_of_an_update_continues_identically(self):
        """State saved halfway through an update's events (pending ones included, NaN and all, as strict
        JSON) gives the alerts of the uninterrupted run."""
        rng, p, tl = random.Random(3), Producer(), Timeline()
        for step in range(50):
            tl.send(*minibatches(p, step, rng, count=4)[:2], after_s=0.05)
            tl.send(*minibatches(p, step, rng, count=4)[2:], after_s=0.05)
        for step in range(50, 60):
            tl.send(*minibatches(p, step, rng, count=4, blend=0.0, slot=math.nan))
        whole, _ = await play(tl.items)
        first, pipeline = await play(tl.items[:91])
        [stage] = [s for s in pipeline.stages if isinstance(s, UpdateCombiner)]
        state = json.loads(json.dumps(stage.state_dict(), allow_nan=False))
        assert any(pending for *_, pending in state["keys"]), "the split must fall inside an update"
        rest, _ = await play(tl.items[91:], state=checkpoint(pipeline), combiner_state=state)
        assert [(a.rule, a.step, a.cleared) for a in first + rest] == [(a.rule, a.step, a.cleared) for a in whole]
        assert of(whole, "head_balance")


class TestCombine:
    def test_head_norms_are_the_rms_and_samples_add_up(self):
        """Each head and each total is the root mean square over the events; a head None everywhere stays None,
        a NaN anywhere stays NaN; samples add up (1 for an event without it)."""
        p = Producer()
        events = [p.make(HeadGradNorms, 3, norms={"a": 3.0, "b": None, "c": 1.0}, total=2.0, samples=2),
                  p.make(HeadGradNorms, 3, norms={"a": 4.0, "b": None, "c": math.nan}, total=4.0)]
        event = combine(events)
        assert event.norms["a"] == math.sqrt((9 + 16) / 2) and event.norms["b"] is None and math.isnan(event.norms["c"])
        assert event.total == math.sqrt((4 + 16) / 2) and event.samples == 3
        assert (event.step, event.seq) == (3, events[-1].seq)

    def test_phases_of_a_step_add_up(self):
        p = Producer()
        event = combine([p.make(StepTiming, 1, phases_ms={"rollout": 10.0}), p.make(StepTiming, 1, phases_ms={"update": 5.0, "rollout": 1.0})])
        assert event.phases_ms == {"rollout": 11.0, "update": 5.0}

    def test_waits_for_a_cpu_add_up_and_a_part_without_one_leaves_the_phase_unknown(self):
        p = Producer()
        event = combine([p.make(StepTiming, 1, phases_ms={"rollout": 10.0, "update": 4.0}, wait_ms={"rollout": 3.0, "update": 1.0}),
                         p.make(StepTiming, 1, phases_ms={"rollout": 5.0, "update": 1.0}, wait_ms={"rollout": 2.0})])
        assert event.phases_ms == {"rollout": 15.0, "update": 5.0} and event.wait_ms == {"rollout": 5.0}
        for bad in (math.nan, -1.0, 11.0):  # not a part of the phase's 10 ms: the phase's wait is not known
            event = combine([p.make(StepTiming, 1, phases_ms={"rollout": 10.0}, wait_ms={"rollout": bad}),
                             p.make(StepTiming, 1, phases_ms={"rollout": 5.0}, wait_ms={"rollout": 2.0})])
            assert event.phases_ms == {"rollout": 15.0} and event.wait_ms == {}, bad


class TestTheStage:
    @staticmethod
    def run(stage: UpdateCombiner, *events) -> list:
        batch = Batch(raw=b"", recv_ns=0, events=list(events))
        stage.consume_now(batch)
        return batch.updates

    def test_one_event_per_update_goes_to_the_rules_at_once(self):
        """A session that sends one event of a kind per step: each is its update, with no delay."""
        stage, p = UpdateCombiner(), Producer()
        for step in range(5):
            event = p.grads(step)
            assert self.run(stage, event) == [event]

    def test_an_update_of_several_events_leaves_when_the_next_begins_or_the_session_ends(self):
        """Once a step has two events, updates are gathered: step 1 leaves with step 2's first event, step 2 at run_end.
        The rest of the step in which gathering began (step 0) is left out: its first event was judged already."""
        stage, p = UpdateCombiner(), Producer()
        first = p.grads(0)
        assert self.run(stage, first) == [first]
        assert self.run(stage, p.grads(0), p.grads(1), p.grads(1)) == []
        [one] = self.run(stage, p.grads(2))
        assert (one.step, one.samples) == (1, 2)
        [two] = self.run(stage, p.grads(2), p.make(RunEnd, 2))
        assert (two.step, two.samples) == (2, 2)
