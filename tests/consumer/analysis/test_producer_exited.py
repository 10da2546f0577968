"""The producer_exited rule, driven through the real pipeline with real encoded messages (see ``harness``)."""

from __future__ import annotations

from simic.consumer import ConsumerConfig, build_pipeline, replay
from simic.consumer.pipeline.alerts import alert_record
from simic.consumer.analysis import RULES
from simic.consumer.testing import RecordingSink
from simic.schemas.models import RunEnd, RunStart

from .harness import ExitNote, Producer, Timeline, chatty, checkpoint, of, play


class TestProducerExited:
    async def test_the_exit_of_a_producing_process_is_critical_about_each_open_session(self):
        """The watched pid exits: one critical alert per open session it produced (two ranks here), at its
        last step, stamped with the arrival time of the exit tick; another host's same pid raises nothing."""
        r0, r1, other, tl = Producer(rank=0, session=1), Producer(rank=1, session=2), Producer("other", session=3), Timeline()
        tl.send(r0.make(RunStart, 0, host="h", pid=42))
        tl.send(r1.make(RunStart, 0, host="h", pid=42))
        tl.send(other.make(RunStart, 0, host="elsewhere", pid=42))
        for step in range(1, 8):
            tl.send(r0.timing(step, {"update": 8.0}))
            tl.send(r1.timing(step, {"update": 8.0}))
        tl.send(r1.timing(8, {"update": 8.0}))
        tl.exited(42)
        exit_ns = tl.now
        tl.ticks(3)
        alerts, pipeline = await play(tl.items)
        fired = [a for a in alerts if a.rule == "producer_exited"]
        assert [(a.severity, a.cleared, a.run_id, a.rank, a.session, a.step) for a in fired] == [
            ("critical", False, "run", 0, 1, 7), ("critical", False, "run", 1, 2, 8)]
        assert fired[0].message == ("the trainer process (pid 42 on h) exited without ending run 'run' rank 0 (session 1), at step 7")
        assert fired[0].values == {"pid": 42, "host": "h", "last_step": 7}
        assert all(a.received_at == exit_ns / 1e9 for a in fired)
        (rule,) = pipeline.find(RULES["producer_exited"])
        assert [key[0] for key in rule.state_dict()["extra"]["sessions"]] == ["other"]

    async def test_ended_sessions_and_other_processes_raise_nothing(self):
        """A session that sent run_end, or one of another pid, is not about the process that exited."""
        ended, alive, tl = Producer(session=1), Producer("alive", session=2), Timeline()
        tl.send(ended.make(RunStart, 0, host="h", pid=42))
        tl.send(alive.make(RunStart, 0, host="h", pid=43))
        tl.send(ended.make(RunEnd, 5, status="ok"))
        tl.exited(42)
        alerts, _ = await play(tl.items)
        assert [a for a in alerts if a.rule == "producer_exited"] == []

    async def test_a_checkpoint_before_the_exit_continues_identically(self):
        """State saved mid-run (the sessions and their pids) raises the same alert after a restart."""
        p, tl = Producer(), Timeline()
        tl.send(p.make(RunStart, 0, host="h", pid=42))
        chatty(tl, p, range(1, 20))
        tl.exited(42)
        whole, _ = await play(tl.items)
        first, pipeline = await play(tl.items[:10])
        rest, _ = await play(tl.items[10:], state=checkpoint(pipeline))
        assert [alert_record(a) for a in first + rest] == [alert_record(a) for a in whole]
        assert of(whole, "producer_exited") == [("critical", False, 19)]

    async def test_the_exit_is_replayed_from_the_log(self, tmp_path):
        """The exit tick is logged with its note: replay raises the same alert with the same received_at."""
        p, tl = Producer(), Timeline()
        tl.send(p.make(RunStart, 0, host="h", pid=42))
        chatty(tl, p, range(1, 5))
        tl.exited(42)
        sink = RecordingSink()
        pipeline = build_pipeline(ConsumerConfig(), log_dir=tmp_path, console=False, extra_sinks=[sink])
        await pipeline.start()
        for recv_ns, raw in tl.items:
            if raw is None or isinstance(raw, ExitNote):
                await pipeline.tick(recv_ns, note=bytes(raw or b""))
            else:
                await pipeline.consume(raw, recv_ns)
        await pipeline.close()
        assert of(sink.alerts, "producer_exited") == [("critical", False, 4)]
        result = await replay([tmp_path], ConsumerConfig())
        assert [alert_record(a) for a in result.alerts] == [alert_record(a) for a in sink.alerts]

    def test_defaults_are_the_documented_ones(self):
        """Critical."""
        assert RULES["producer_exited"].Config().severity == "critical"
