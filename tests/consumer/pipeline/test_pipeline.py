"""The pipeline, its stages and replay, driven in-process with real messages and real log files."""

from __future__ import annotations

import asyncio
import json
import math

import pytest

from simic.consumer import Accounting, ConsumerConfig, Pipeline, Stage, build_pipeline, load_config, replay
from simic.consumer.pipeline.alerts import alert_record
from simic.consumer.analysis import RULES
from simic.consumer.config import ConfigError
from simic.consumer.daemon.serve import DaemonOptions, serve
from simic.consumer.pipeline.contract import StageCounts, Stateful
from simic.consumer.daemon.checkpoint import STATE_FILE, UnusableCheckpoint, load_checkpoint, save_checkpoint
from simic.consumer.testing import RecordingSink
from simic.producer import Emitter
from simic.schemas import encode_message
from simic.schemas.eventlog import LogReader, LogWriter


def message(run: str, session: int, rows: list[list], rank: int = 0) -> bytes:
    return encode_message(run, rank, session, rows)


def timing(seq: int, step: int, ms: float = 1.0) -> list:
    return [2, seq, 1_000 + seq, step, {"rollout": ms}]


def lstm(seq: int, step: int, h_norm: float, has_nan: bool = False) -> list:
    return [4, seq, 1_000 + seq, step, h_norm, 1.0, None, None, None, None, None, None, has_nan, False]


async def run_messages(pipeline: Pipeline, messages: list[bytes]) -> None:
    await pipeline.start()
    for index, raw in enumerate(messages):
        await pipeline.consume(raw, 1_700_000_000_000_000_000 + index)
    await pipeline.close()


class TestAccounting:
    async def test_gaps_are_lost_events_and_repeats_are_duplicates(self):
        """Sequence jumps count as lost; a sequence number seen before counts as a duplicate."""
        accounting = Accounting()
        await run_messages(Pipeline([accounting]), [
            message("r", 1, [timing(0, 0), timing(1, 1)]),
            message("r", 1, [timing(5, 2)]),  # 2, 3, 4 never arrived
            message("r", 1, [timing(5, 2)]),  # repeated
            message("r", 1, [timing(6, 3)]),
        ])
        (state,) = accounting.producers.values()
        assert (state.received, state.lost, state.duplicates, state.next_seq) == (4, 3, 1, 7)
        assert accounting.summary()["lost"] == 3

    def test_a_sequence_tracker_tells_in_order_gaps_and_repeats_apart(self):
        """continues() takes the usual message at once; advance() returns the numbers skipped, or -1 for a repeat."""
        from simic.consumer.pipeline.accounting import SequenceTracker

        class Session(SequenceTracker):
            __slots__ = ("next_seq",)

            def __init__(self) -> None:
                self.next_seq = 0

        session = Session()
        assert session.continues([0, 1, 2]) and session.next_seq == 3
        assert not session.continues([3, 5]) and session.next_seq == 3  # a gap inside: nothing changes
        assert [session.advance(seq) for seq in (3, 5, 4, 9)] == [0, 1, -1, 3]
        assert session.next_seq == 10

    async def test_accounting_and_the_event_loss_rule_count_the_same_gaps(self):
        """One reading of sequence numbers: the events accounting counts as lost are the event_loss rule's gaps."""
        accounting, sink = Accounting(), RecordingSink()
        pipeline = build_pipeline(ConsumerConfig(), console=False, accounting=accounting, extra_sinks=[sink])
        seqs = [0, 1, 2, 7, 7, 5, 8, 20, 21, 40]  # gaps 3-6, 9-19, 22-39; 7 repeated; 5 late
        await run_messages(pipeline, [message("r", 1, [timing(0, 0)] + [timing(seq, seq) for seq in seqs[1:]])])
        (state,) = accounting.producers.values()
        (gaps,) = [saved["gaps"] for saved in pipeline.stateful["event_loss"].state_dict()["extra"].values()]
        assert state.lost == sum(end - start for start, end in gaps) == 4 + 11 + 18
        assert state.duplicates == 2  # the repeated 7 and the late 5

    async def test_each_producer_session_is_accounted_apart(self):
        """A new session id (a restarted trainer, another rank) has its own sequence from 0."""
        accounting = Accounting()
        await run_messages(Pipeline([accounting]), [
            message("r", 1, [timing(0, 0), timing(1, 1)]),
            message("r", 2, [timing(0, 0)]),
            message("r", 1, [timing(0, 0)], rank=1),
        ])
        assert len(accounting.producers) == 3
        assert accounting.lost == 0
        runs = accounting.summary()["runs"]["r"]
        assert sorted((s["rank"], s["received"]) for s in runs) == [(0, 1), (0, 2), (1, 1)]

    async def test_tracked_sessions_are_bounded(self):
        """Past max_producers the least recently heard session is forgotten, its losses kept in the total."""
        accounting = Accounting(max_producers=2)
        await run_messages(Pipeline([accounting]), [
            message("a", 1, [timing(3, 0)]),  # 3 lost
            message("b", 1, [timing(0, 0)]),
            message("c", 1, [timing(0, 0)]),
        ])
        assert [key[0] for key in accounting.producers] == ["b", "c"]
        assert accounting.forgotten_producers == 1
        assert accounting.lost == 3

    async def test_an_implausible_sequence_jump_is_counted_apart_not_as_loss(self):
        """A jump past MAX_GAP (a forged or corrupt seq) is a seq_jump; the gaps around it stay exact losses."""
        from simic.consumer.pipeline.accounting import MAX_GAP

        accounting = Accounting()
        huge = (1 << 62) + 5
        await run_messages(Pipeline([accounting]), [
            message("r", 1, [timing(0, 0), timing(2, 1)]),  # 1 lost
            message("r", 1, [timing(huge, 2)]),  # not 2**62 events lost
            message("r", 1, [timing(huge + 3, 3)]),  # 2 lost after it
        ])
        (state,) = accounting.producers.values()
        assert huge - 3 > MAX_GAP
        assert (state.lost, state.seq_jumps, state.received, state.next_seq) == (3, 1, 4, huge + 4)
        assert accounting.summary()["runs"]["r"][0]["seq_jumps"] == 1
        restored = Accounting()
        restored.load_state_dict(accounting.state_dict())
        assert next(iter(restored.producers.values())).seq_jumps == 1

    async def test_rule_state_and_log_keys_stay_bounded_under_many_sessions(self):
        """Five thousand one-message sessions (every rule on): no rule table holds more than MAX_SUBJECTS
        entries, and the gap warnings remember a bounded number of keys."""
        from simic.consumer.analysis._rule import MAX_SUBJECTS, Rule

        sink = RecordingSink()
        pipeline = build_pipeline(ConsumerConfig(), console=False, extra_sinks=[sink])
        count = MAX_SUBJECTS + 904
        await run_messages(pipeline, [message("r", session, [timing(7, 0, ms=1.0), lstm(8, 0, math.nan)])
                                      for session in range(1, count + 1)])
        for rule in pipeline.find(Rule):
            tables = [value for value in vars(rule).values() if isinstance(value, dict)]
            assert all(len(table) <= MAX_SUBJECTS for table in tables), rule.name
        assert len(pipeline.find(Rule)[0]._conditions) <= MAX_SUBJECTS
        accounting = pipeline.find(Accounting)[0]
        assert accounting.lost == 7 * count and len(accounting._log._last) <= accounting._log.max_keys

    async def test_rejections_are_counted_by_reason(self):
        """Whole-message and single-event refusals are counted apart, by reason."""
        accounting = Accounting()
        await run_messages(Pipeline([accounting]), [b"\xc1", message("r", 1, [timing(0, 0), [99, 1, 0, 0]])])
        assert accounting.rejected_messages == {"malformed_msgpack": 1}
        assert accounting.rejected_events == {"unknown_kind": 1}
        assert accounting.events == 1


class TestNonFiniteRule:
    async def test_fires_once_while_the_fault_lasts_and_says_when_it_clears(self):
        """A NaN that sticks for several steps raises one critical alert, then one 'cleared'."""
        sink = RecordingSink()
        pipeline = build_pipeline(ConsumerConfig(), console=False, extra_sinks=[sink])
        await run_messages(pipeline, [
            message("r", 1, [lstm(0, 0, 1.0)]),
            message("r", 1, [lstm(1, 1, float("nan"), has_nan=True)]),
            message("r", 1, [lstm(2, 2, float("inf"))]),
            message("r", 1, [lstm(3, 3, 1.0)]),
        ])
        alerts = sink.alerts
        assert [(a.rule, a.severity, a.cleared, a.step) for a in alerts] == [
            ("non_finite", "critical", False, 1),
            ("non_finite", "info", True, 3),
        ]
        assert alerts[0].values["has_nan"] is True
        assert alerts[0].run_id == "r" and alerts[0].clock_ns == 1_001

    async def test_an_undefined_explained_variance_is_not_a_fault_by_default(self):
        """NaN explained variance (constant returns) is ignored unless the config says otherwise."""
        rows = [[5, 0, 0, 0, None, None, None, None, None, None, None, float("nan")]]
        sink = RecordingSink()
        await run_messages(build_pipeline(ConsumerConfig(), console=False, extra_sinks=[sink]), [message("r", 1, rows)])
        assert sink.alerts == []
        strict = ConsumerConfig.model_validate({"rules": {"non_finite": {"ignore": []}}})
        sink = RecordingSink()
        await run_messages(build_pipeline(strict, console=False, extra_sinks=[sink]), [message("r", 1, rows)])
        (alert,) = sink.alerts
        assert list(alert.values) == ["explained_variance"] and math.isnan(alert.values["explained_variance"])

    async def test_a_disabled_rule_is_not_run(self):
        """enabled = false removes the rule from the pipeline."""
        config = ConsumerConfig.model_validate({"rules": {"non_finite": {"enabled": False}}})
        sink = RecordingSink()
        await run_messages(build_pipeline(config, console=False, extra_sinks=[sink]), [message("r", 1, [lstm(0, 0, float("nan"))])])
        assert sink.alerts == []


class _Broken(Stage):
    name = "broken"

    async def consume(self, batch):
        raise RuntimeError("bug in a stage")


class TestPipeline:
    async def test_a_failing_stage_is_counted_and_the_others_still_run(self):
        """One stage raising does not stop the stages after it."""
        sink = RecordingSink()
        pipeline = Pipeline([_Broken(), sink])
        await run_messages(pipeline, [message("r", 1, [timing(0, 0)])] * 3)
        assert pipeline.stage_errors == {"broken": 3}
        assert len(sink.events) == 3 and sink.closed

    async def test_close_is_safe_without_start_and_twice(self):
        """Every stage of a full pipeline can be closed without being started, and again."""
        pipeline = build_pipeline(ConsumerConfig(), console=False)
        await pipeline.close()
        await pipeline.close()
        assert pipeline.stage_errors == {}


class _Quiet(RecordingSink):
    name = "quiet"
    quiet_while_catching_up = True


class TestStageContract:
    async def test_a_catch_up_is_handed_only_to_stages_that_are_not_quiet(self):
        """Batches re-processed while catching up reach accounting and analysis, not the output stages."""
        analysis, output = RecordingSink(), _Quiet()
        pipeline = Pipeline([analysis, output])
        await pipeline.consume(message("r", 1, [timing(0, 0)]), 1, catching_up=True)
        await pipeline.tick(2, catching_up=True)
        await pipeline.consume(message("r", 1, [timing(1, 1)]), 3)
        assert [b.recv_ns for b in analysis.batches] == [1, 2, 3]
        assert [b.recv_ns for b in output.batches] == [3]

    def test_every_output_sink_is_quiet_while_catching_up_and_no_analysis_stage_is(self, tmp_path):
        """The event log, dead letters, alert sinks, exporters, metrics and the dashboard are quiet; accounting and
        the rules are not."""
        from simic.consumer.sinks.alert_pub import PubAlertSink
        from simic.consumer.sinks.dashboard import DashboardSink
        from simic.consumer.sinks.export import Exporter, ExportSink
        from simic.consumer.sinks.metrics import MetricsSink

        pipeline = build_pipeline(ConsumerConfig(), log_dir=tmp_path, dead_letter_dir=tmp_path / "dl", alerts_jsonl=tmp_path / "a.jsonl",
                                  extra_sinks=[PubAlertSink("ipc://unused"), ExportSink(Exporter()), MetricsSink(serve=False), DashboardSink()])
        quiet = [stage.name for stage in pipeline.stages if stage.quiet_while_catching_up]
        assert quiet == ["event_log", "dead_letter", "alert_console", "alert_jsonl", "alert_pub", "export:exporter", "metrics", "dashboard"]

    def test_the_stateful_stages_are_declared_by_the_protocol(self):
        """Accounting, the alert clock, the update combiner and every rule are Stateful, in pipeline order; sinks are not."""
        pipeline = build_pipeline(ConsumerConfig(), console=False, extra_sinks=[RecordingSink()])
        assert list(pipeline.stateful) == ["accounting", "alert_clock", "updates", *RULES]
        assert all(isinstance(stage, Stateful) for stage in pipeline.stateful.values())
        assert not isinstance(RecordingSink(), Stateful)

    def test_two_stateful_stages_of_one_name_are_refused_at_construction(self):
        """Their checkpoints would overwrite each other: ValueError when the pipeline is built."""
        with pytest.raises(ValueError, match="accounting"):
            Pipeline([Accounting(), Accounting()])

    async def test_each_stage_counts_what_it_accepted_refused_and_dropped(self, tmp_path):
        """Accepted: batches consumed; refused: batches it raised on; dropped: accepted but its output lost.
        A quiet stage is not counted for the catch-up it was not handed."""
        from simic.consumer.sinks.dead_letter import DeadLetterSink

        dead_letters = DeadLetterSink(tmp_path / "dl", max_bytes=0)  # full: every refused message is dropped
        pipeline = Pipeline([_Broken(), Accounting(), dead_letters])
        await pipeline.start()
        await pipeline.consume(message("r", 1, [timing(0, 0)]), 1, catching_up=True)
        await pipeline.consume(message("r", 1, [timing(1, 1)]), 2)
        await pipeline.consume(b"\xc1 not msgpack", 3)
        await pipeline.tick(4)
        await pipeline.close()
        assert pipeline.stage_counts() == {
            "broken": StageCounts(accepted=0, refused=4, dropped=0),
            "accounting": StageCounts(accepted=4, refused=0, dropped=0),
            "dead_letter": StageCounts(accepted=3, refused=0, dropped=1),
        }
        assert (pipeline.batches, pipeline.caught_up) == (3, 1)


class TestRecordingSink:
    async def test_keeps_every_batch_or_only_the_alerts(self):
        """By default every batch (events and alerts) is kept; alerts_only keeps the same alerts and no batch; reset forgets."""
        everything, alerts_only = RecordingSink(), RecordingSink(alerts_only=True)
        await run_messages(build_pipeline(ConsumerConfig(), console=False, extra_sinks=[everything, alerts_only]),
                           [message("r", 1, [lstm(i, i, float("nan") if i == 1 else 1.0)]) for i in range(3)])
        assert len(everything.batches) == 3 and len(everything.events) == 3
        assert [(a.rule, a.cleared) for a in alerts_only.alerts] == [("non_finite", False), ("non_finite", True)]
        assert alerts_only.batches == []
        assert alerts_only.alerts == everything.alerts
        assert everything.closed and alerts_only.closed
        alerts_only.reset()
        everything.reset()
        assert alerts_only.alerts == [] and everything.alerts == []


class TestCheckpoint:
    async def checkpointed(self, tmp_path) -> Pipeline:
        pipeline = build_pipeline(ConsumerConfig(), console=False)
        await run_messages(pipeline, [message("r", 1, [lstm(i, i, float("nan") if i == 3 else 1.0)]) for i in range(6)])
        save_checkpoint(tmp_path / STATE_FILE, pipeline, ("segment-000001.simlog", 1234))
        return pipeline

    async def test_a_loaded_checkpoint_says_what_it_restored(self, tmp_path):
        """The result names the log position covered and the stages loaded; the state is the saved one."""
        saved = await self.checkpointed(tmp_path)
        fresh = build_pipeline(ConsumerConfig(), console=False)
        restored = load_checkpoint(tmp_path / STATE_FILE, fresh)
        assert restored.position == ("segment-000001.simlog", 1234)
        assert restored.stages == tuple(saved.stateful)
        assert restored.saved_ns is not None
        assert {n: s.state_dict() for n, s in fresh.stateful.items()} == {n: s.state_dict() for n, s in saved.stateful.items()}

    async def test_the_alert_numbering_continues_after_a_restore(self, tmp_path):
        """The alert clock is stateful: the next alert after a restore is numbered after the saved ones."""
        saved = await self.checkpointed(tmp_path)
        made = saved.stateful["alert_clock"].maker.count
        assert made == 2  # the NaN fired and cleared
        sink = RecordingSink()
        fresh = build_pipeline(ConsumerConfig(), console=False, extra_sinks=[sink])
        load_checkpoint(tmp_path / STATE_FILE, fresh)
        await run_messages(fresh, [message("r", 1, [lstm(6, 6, float("nan"))])])
        assert [a.seq for a in sink.alerts] == [made]

    async def test_a_checkpoint_written_before_the_alert_clock_was_stateful_still_numbers_on(self, tmp_path):
        """An older checkpoint keeps the count at top level (``alerts_made``): it is loaded into the alert clock."""
        await self.checkpointed(tmp_path)
        path = tmp_path / STATE_FILE
        data = json.loads(path.read_text())
        data["alerts_made"] = data["stages"].pop("alert_clock")["alerts_made"]
        path.write_text(json.dumps(data))
        fresh = build_pipeline(ConsumerConfig(), console=False)
        assert "alert_clock" in load_checkpoint(path, fresh).stages
        assert fresh.stateful["alert_clock"].maker.count == 2

    def test_no_checkpoint_raises_file_not_found_and_touches_nothing(self, tmp_path):
        """A first start: FileNotFoundError, the pipeline as it was built."""
        pipeline = build_pipeline(ConsumerConfig(), console=False)
        before = {n: s.state_dict() for n, s in pipeline.stateful.items()}
        with pytest.raises(FileNotFoundError):
            load_checkpoint(tmp_path / STATE_FILE, pipeline)
        assert {n: s.state_dict() for n, s in pipeline.stateful.items()} == before

    @pytest.mark.parametrize("damage", ["torn", "format", "refused"])
    async def test_an_unusable_checkpoint_raises_unusable(self, tmp_path, damage):
        """Torn JSON, another format, or state a stage cannot load: UnusableCheckpoint naming the file."""
        await self.checkpointed(tmp_path)
        path = tmp_path / STATE_FILE
        text = path.read_text()
        if damage == "torn":
            path.write_text(text[: len(text) // 2])
        else:
            data = json.loads(text)
            if damage == "format":
                data["format"] = 99
            else:
                data["stages"]["accounting"]["producers"] = [{"run_id": "r"}]  # no rank, no session
            path.write_text(json.dumps(data))
        with pytest.raises(UnusableCheckpoint, match=STATE_FILE):
            load_checkpoint(path, build_pipeline(ConsumerConfig(), console=False))


class TestReplay:
    async def test_replay_of_a_written_log_gives_the_live_alerts(self, tmp_path):
        """The pipeline over a log file raises exactly the alerts it raised on the live messages, each
        with the arrival time the log kept for the message that raised it."""
        messages = [message("r", 1, [lstm(i, i, float("nan") if i in (3, 4) else 1.0)]) for i in range(8)]
        live = RecordingSink()
        await run_messages(build_pipeline(ConsumerConfig(), console=False, extra_sinks=[live]), messages)
        with LogWriter(tmp_path) as writer:
            for index, raw in enumerate(messages):
                writer.write(raw, 1_700_000_000_000_000_000 + index)  # the arrival times run_messages gave
        result = await replay([tmp_path], ConsumerConfig())
        assert [alert_record(a) for a in result.alerts] == [alert_record(a) for a in live.alerts]  # NaN-safe comparison
        assert len(result.alerts) == 2
        assert all(abs(a.received_at - 1_700_000_000.0) < 1e-6 for a in result.alerts)  # the logged time, not the replay's
        assert result.summary["events"] == 8 and result.problems == []

    async def test_logs_of_several_nodes_merge_by_arrival_time(self, tmp_path):
        """Two log directories replay as one stream ordered by receive time."""
        for node, times in (("a", [1, 3, 5]), ("b", [2, 4, 6])):
            with LogWriter(tmp_path / node) as writer:
                for seq, when in enumerate(times):
                    writer.write(message(node, 1, [timing(seq, when)]), when)
        order = []

        class Order(Stage):
            async def consume(self, batch):
                order.append(batch.recv_ns)

        pipeline = build_pipeline(ConsumerConfig(), console=False, extra_sinks=[Order()])
        from simic.consumer.offline.replay import run_source
        from simic.consumer.sources.log_files import LogFilesSource

        await run_source(LogFilesSource([tmp_path / "a", tmp_path / "b"]), pipeline)
        assert order == [1, 2, 3, 4, 5, 6]


class TestConfig:
    def test_every_rule_has_a_config_section_with_defaults(self):
        """The config model has one section per registered rule."""
        config = ConsumerConfig()
        assert set(RULES) <= set(config.rules.model_dump())

    def test_unknown_keys_and_bad_values_are_named(self, tmp_path):
        """A config error names the file, the key and what is wrong."""
        path = tmp_path / "c.toml"
        path.write_text("[daemon]\nqueue_messages = 0\nqueue_mesages = 5\n")
        with pytest.raises(ConfigError) as error:
            load_config(path)
        assert "daemon.queue_messages: Input should be greater than or equal to 1" in str(error.value)
        assert "daemon.queue_mesages: unknown key" in str(error.value)

    def test_not_toml_is_a_clear_error(self, tmp_path):
        path = tmp_path / "c.toml"
        path.write_text("[daemon\n")
        with pytest.raises(ConfigError, match="not valid TOML"):
            load_config(path)


class _RunEnded(Stage):
    name = "run_ended"

    def __init__(self) -> None:
        self.ended = asyncio.Event()

    async def consume(self, batch):
        if any(event.kind == "run_end" for event in batch.events):
            self.ended.set()


class TestServeInProcess:
    async def test_serve_stops_on_its_event_and_keeps_everything_received(self, tmp_path):
        """The daemon coroutine drains what arrived before it stops, and logs it all."""
        stop = asyncio.Event()
        watcher = _RunEnded()
        endpoint = "tcp://127.0.0.1:*"
        options = DaemonOptions(endpoint=endpoint, log_dir=tmp_path / "logs", config=ConsumerConfig(), extra_sinks=(watcher,))
        task = asyncio.create_task(serve(options, stop=stop))
        while options.bound is None:  # set by serve() right after bind, before it awaits anything else
            await asyncio.sleep(0)
        emitter = Emitter(options.bound, run_id="inproc")
        for step in range(50):
            emitter.emit("step_timing", step=step, phases_ms={"rollout": 1.0})
            emitter.flush()
        await asyncio.to_thread(emitter.close)
        await asyncio.wait_for(watcher.ended.wait(), 60)
        stop.set()
        assert await task == 0
        result = await replay([tmp_path / "logs"], ConsumerConfig(), analysis=False)
        assert result.summary["events"] == emitter.stats.produced == 52


    async def test_a_damaged_checkpoint_costs_a_catch_up_on_the_whole_log(self, tmp_path, caplog):
        """An unusable consumer-state.json is named in a warning; the daemon rebuilds its state from every
        logged frame (handed to the analysis, not re-logged) and writes a good checkpoint at shutdown."""
        log_dir = tmp_path / "logs"
        with LogWriter(log_dir) as writer:
            for seq in range(5):
                writer.write(message("old", 1, [timing(seq, seq)]), 1_700_000_000_000_000_000 + seq)
        (log_dir / STATE_FILE).write_text('{"format": 1, "stages": {"accounting": ')  # torn
        stop, sink = asyncio.Event(), RecordingSink()
        config = ConsumerConfig.model_validate({"daemon": {"tick_interval_s": 0.05}})
        options = DaemonOptions(endpoint="tcp://127.0.0.1:*", log_dir=log_dir, config=config, alerts_endpoint=None, extra_sinks=(sink,))
        task = asyncio.create_task(serve(options, stop=stop))
        while not any(b.tick and not b.catching_up for b in sink.batches):  # caught up, then a live tick (logged)
            await asyncio.sleep(0.01)
        stop.set()
        assert await task == 0
        assert any("ignoring unusable checkpoint" in r.getMessage() and STATE_FILE in r.getMessage() for r in caplog.records)
        assert [b.catching_up for b in sink.batches if b.events] == [True] * 5
        saved = json.loads((log_dir / STATE_FILE).read_text())
        (producer,) = saved["stages"]["accounting"]["producers"]
        assert producer["received"] == 5 and saved["log_position"] is not None
        assert len(list(LogReader(log_dir))) == 5 + sum(1 for b in sink.batches if b.tick and not b.catching_up)  # nothing re-logged


class TestNonFiniteScope:
    async def test_an_infinite_setting_in_the_run_config_is_not_a_fault(self):
        """run_start's free-form config may hold inf (a timeout, say): no alert, whether or not another condition is open."""
        start = [1, 0, 0, 0, "host", 1, 1, None, None, [], {"timeout_s": float("inf")}]
        sink = RecordingSink()
        await run_messages(build_pipeline(ConsumerConfig(), console=False, extra_sinks=[sink]), [
            message("r", 1, [lstm(0, 0, float("nan"))]),  # an open non_finite condition (slow path for every event)
            message("r", 2, [start]),
        ])
        assert [(a.rule, a.run_id, a.session) for a in sink.alerts] == [("non_finite", "r", 1)]
