"""The Emitter against a real ZeroMQ PULL socket: order, batching, refusals, no consumer, lifecycle."""

from __future__ import annotations

import inspect
import logging
import math
import os
import threading

import pytest
import torch

from simic.producer import Emitter, EmitterSettings, EmitterStats, NullEmitter
from simic.schemas import RejectReason, decode_message
from simic.schemas.codec import KINDS
from tests.receiver import RECV_TIMEOUT_S

QUIET = dict(exit_hooks=False, heartbeat_interval_s=0, max_batch_delay_ms=1e9, linger_ms=1000)
"""Settings that make batching depend on flush() and max_batch_events only (no clock, no process hooks)."""


def settings(**overrides) -> EmitterSettings:
    return EmitterSettings(**{**QUIET, **overrides})


@pytest.fixture
def emitters():
    """Make emitters that are closed at the end of the test whatever happens."""
    made: list[Emitter] = []

    def make(endpoint: str, **kwargs) -> Emitter:
        kwargs.setdefault("run_id", "run-1")
        kwargs["settings"] = kwargs.get("settings") or settings()
        emitter = Emitter(endpoint, **kwargs)
        made.append(emitter)
        return emitter

    yield make
    for emitter in made:
        emitter.close()


def close_with_guard(emitter: Emitter) -> None:
    """Close in a thread and fail (rather than hang) if it does not return within a generous bound."""
    bound_s = max(10 * emitter.settings.linger_ms / 1000, 5.0)
    closer = threading.Thread(target=emitter.close, daemon=True)
    closer.start()
    closer.join(timeout=bound_s)
    assert not closer.is_alive(), f"close() did not return within {bound_s} s"


class TestDelivery:
    def test_events_arrive_in_order_between_run_start_and_run_end(self, receiver, emitters):
        """Events arrive in emit order, seq 0, 1, 2, ..., opened by run_start and closed by run_end."""
        emitter = emitters(receiver.endpoint)
        for step in range(10):
            emitter.emit("step_timing", step=step, phases_ms={"update": float(step)})
            if step % 3 == 0:
                emitter.flush()
        emitter.close()
        events = receiver.until_run_end()
        assert [e.seq for e in events] == list(range(12))
        assert events[0].kind == "run_start" and events[-1].kind == "run_end"
        assert [e.step for e in events[1:-1]] == list(range(10))
        assert {(e.run_id, e.rank, e.session) for e in events} == {("run-1", 0, emitter.session)}

    def test_run_end_counts_equal_the_emitter_stats(self, receiver, emitters):
        """run_end's sent and dropped equal the emitter's own counts of what went before it."""
        emitter = emitters(receiver.endpoint)
        for step in range(5):
            emitter.emit("heartbeat", step=step)
        emitter.close()
        run_end = receiver.until_run_end()[-1]
        assert emitter.stats == EmitterStats(produced=7, sent=7, dropped=0, invalid=0, batches=3, bytes=emitter.stats.bytes, unknown=7)
        assert (run_end.status, run_end.sent, run_end.dropped) == ("ok", emitter.stats.sent - 1, emitter.stats.dropped)
        assert emitter.stats.bytes == sum(len(m) for m in receiver.messages)

    def test_run_start_describes_the_trainer(self, receiver, emitters):
        """run_start carries host, pid, world size, heads, config, torch and producer versions."""
        emitter = emitters(receiver.endpoint, rank=1, world_size=4, heads=["slot", "op"], config={"lr": 3e-4}, device="cpu")
        (start,) = receiver.next_events()
        assert (start.kind, start.seq, start.rank, start.pid, start.world_size) == ("run_start", 0, 1, os.getpid(), 4)
        assert (start.heads, start.config, start.device) == (["slot", "op"], {"lr": 3e-4}, "cpu")
        assert start.torch_version == torch.__version__ and start.host
        emitter.close()

    def test_nan_and_none_reach_the_consumer_as_sent(self, receiver, emitters):
        """NaN, Inf and None (a missing head norm) arrive as themselves."""
        emitter = emitters(receiver.endpoint)
        emitter.emit("head_grad_norms", step=1, norms={"slot": math.nan, "op": None, "blend": -math.inf}, total=math.inf)
        emitter.close()
        norms = [e for e in receiver.until_run_end() if e.kind == "head_grad_norms"][0]
        assert math.isnan(norms.norms["slot"]) and norms.norms["op"] is None and norms.norms["blend"] == -math.inf
        assert norms.total == math.inf


class TestBatching:
    def test_emits_then_flush_arrive_as_one_message(self, receiver, emitters):
        """Several emits followed by flush() travel as one message holding all of them."""
        emitter = emitters(receiver.endpoint)
        assert [e.kind for e in receiver.next_events()] == ["run_start"]
        for step in range(5):
            emitter.emit("heartbeat", step=step)
        emitter.flush()
        assert [e.seq for e in receiver.next_events()] == [1, 2, 3, 4, 5]
        assert emitter.stats.batches == 2

    def test_full_batch_is_sent_without_flush(self, receiver, emitters):
        """A batch reaching max_batch_events is sent by emit itself; the rest waits for flush()."""
        emitter = emitters(receiver.endpoint, settings=settings(max_batch_events=4))
        receiver.next_events()
        for step in range(7):
            emitter.emit("heartbeat", step=step)
        assert [e.seq for e in receiver.next_events()] == [1, 2, 3, 4]
        emitter.flush()
        assert [e.seq for e in receiver.next_events()] == [5, 6, 7]

    def test_batches_of_one_send_every_event(self, receiver, emitters):
        """With max_batch_events=1 every emit is its own message."""
        emitter = emitters(receiver.endpoint, settings=settings(max_batch_events=1))
        receiver.next_events()
        for step in range(3):
            emitter.emit("heartbeat", step=step)
        assert [[e.seq for e in receiver.next_events()] for _ in range(3)] == [[1], [2], [3]]

    def test_zero_delay_sends_at_once(self, receiver, emitters):
        """With max_batch_delay_ms=0 a batch never waits for flush()."""
        emitter = emitters(receiver.endpoint, settings=settings(max_batch_delay_ms=0))
        receiver.next_events()
        emitter.emit("heartbeat", step=1)
        assert [e.seq for e in receiver.next_events()] == [1]

    def test_heartbeat_counts_what_went_before_it(self, receiver, emitters):
        """A due heartbeat joins the flushed batch, counting every event handed to ZeroMQ before that batch."""
        emitter = emitters(receiver.endpoint, settings=settings(heartbeat_interval_s=1e-9))
        assert [e.kind for e in receiver.next_events()] == ["run_start", "heartbeat"]
        emitter.emit("step_timing", step=4, phases_ms={})
        emitter.flush()
        timing, beat = receiver.next_events()
        assert (beat.kind, beat.step, beat.sent, beat.dropped) == ("heartbeat", 4, 2, 0)  # run_start and the first heartbeat

    def test_flush_hooks_run_first_and_their_events_join_the_batch(self, receiver, emitters):
        """A flush hook runs at flush() and close(); what it emits travels in that batch; a failing hook is contained."""
        emitter = emitters(receiver.endpoint)
        receiver.next_events()
        calls = []

        def readout():
            calls.append(len(calls))
            emitter.emit("lstm_health", step=9, h_norm=1.0)

        def broken():
            raise RuntimeError("collector bug")

        emitter.add_flush_hook(broken)
        emitter.add_flush_hook(readout)
        emitter.emit("heartbeat", step=9)
        emitter.flush()
        assert [e.kind for e in receiver.next_events()] == ["heartbeat", "lstm_health"]
        emitter.close()
        assert [e.kind for e in receiver.until_run_end()] == ["lstm_health", "run_end"]
        assert calls == [0, 1]


class TestRefusals:
    def test_unknown_kind_or_field_is_counted_and_takes_no_seq(self, receiver, emitters, caplog):
        """An unknown kind or field is counted as invalid, warned about once, never raised, and uses no seq number."""
        emitter = emitters(receiver.endpoint)
        with caplog.at_level(logging.WARNING, logger="simic.producer"):
            emitter.emit("no_such_kind", step=1)
            emitter.emit("no_such_kind", step=2)
            emitter.emit("heartbeat", step=3, bogus=1)
            emitter.emit("heartbeat", step=4)
        emitter.close()
        events = receiver.until_run_end()
        assert [(e.kind, e.seq) for e in events] == [("run_start", 0), ("heartbeat", 1), ("run_end", 2)]
        assert emitter.stats.invalid == 3 and emitter.stats.dropped == 0
        assert len(caplog.records) == 2
        assert "no_such_kind" in caplog.records[0].getMessage() and "bogus" in caplog.records[1].getMessage()

    def test_cpu_tensors_are_sent_as_numbers(self, receiver, emitters):
        """CPU torch scalars (and small tensors) are converted to plain numbers on the way out."""
        emitter = emitters(receiver.endpoint)
        emitter.emit("lstm_health", step=torch.tensor(12), h_norm=torch.tensor(1.5), c_norm=torch.tensor(math.nan),
                     has_nan=torch.tensor(True), layer_h_rms=torch.tensor([0.25, 0.5]))
        emitter.close()
        health = [e for e in receiver.until_run_end() if e.kind == "lstm_health"][0]
        assert (health.step, health.h_norm, health.has_nan, health.layer_h_rms) == (12, 1.5, True, [0.25, 0.5])
        assert math.isnan(health.c_norm)
        assert emitter.stats.invalid == 0

    @pytest.mark.parametrize("bad", [object(), 2**70, {"key": {1, 2}}], ids=["object", "int-overflow", "set"])
    def test_unpackable_value_drops_only_its_event(self, receiver, emitters, bad):
        """A value msgpack cannot pack costs only its own event (counted invalid and dropped); the batch around it arrives."""
        emitter = emitters(receiver.endpoint)
        emitter.emit("heartbeat", step=1)
        emitter.emit("lstm_health", step=2, h_norm=bad)
        emitter.emit("heartbeat", step=3)
        emitter.close()
        events = receiver.until_run_end()
        assert [(e.kind, e.seq) for e in events] == [("run_start", 0), ("heartbeat", 1), ("heartbeat", 3), ("run_end", 4)]
        assert (emitter.stats.invalid, emitter.stats.dropped) == (1, 1)
        assert (events[-1].sent, events[-1].dropped) == (3, 1)

    def test_a_map_key_that_is_not_text_costs_the_consumer_only_its_event(self, receiver, emitters):
        """The emitter sends a map with a number as key as it is; the consumer's decoder refuses that event
        alone (invalid), and the events batched with it arrive."""
        emitter = emitters(receiver.endpoint)
        emitter.emit("heartbeat", step=1)
        emitter.emit("metrics", step=2, values={0: 1.5})
        emitter.emit("heartbeat", step=3)
        emitter.close()
        decoded = [decode_message(data) for data in receiver.drain()]
        events = [e for d in decoded for e in d.events]
        assert [(e.kind, e.seq) for e in events] == [("run_start", 0), ("heartbeat", 1), ("heartbeat", 3), ("run_end", 4)]
        [error] = [error for d in decoded for error in d.errors]
        assert error.reason is RejectReason.INVALID_EVENT and "metrics.values" in str(error)

    def test_a_tensor_on_a_gpu_is_never_read(self, receiver, emitters):
        """A value that says it lives on a CUDA device is refused without being read (it would stall the GPU)."""

        class OnGpu:
            is_cuda = True

            def tolist(self):
                raise AssertionError("read a GPU value")

        emitter = emitters(receiver.endpoint)
        emitter.emit("lstm_health", step=1, h_norm=OnGpu())
        emitter.emit("heartbeat", step=2)
        emitter.close()
        assert [e.kind for e in receiver.until_run_end()] == ["run_start", "heartbeat", "run_end"]
        assert emitter.stats.invalid == 1

    def test_bad_construction_fails_early(self):
        """A malformed endpoint or an empty run id is a ValueError at construction, not later."""
        with pytest.raises(ValueError, match="endpoint"):
            Emitter("localhost:5557", run_id="r", settings=settings())
        with pytest.raises(ValueError, match="run_id"):
            Emitter("tcp://127.0.0.1:5557", run_id="", settings=settings())


class TestNoConsumer:
    def test_emit_and_flush_never_raise_and_drops_are_counted(self, unbound_receiver, emitters):
        """With nobody bound, emit and flush return normally; what does not fit the queue is counted as dropped."""
        emitter = emitters(unbound_receiver.endpoint, settings=settings(send_hwm=5, linger_ms=100))
        for step in range(100):
            emitter.emit("heartbeat", step=step)
            emitter.flush()
        stats = emitter.stats
        assert stats.produced == 101 and stats.sent + stats.dropped == 101
        assert stats.batches <= 5 and stats.dropped >= 96

    def test_pending_batch_stays_bounded(self, unbound_receiver, emitters):
        """However many events are emitted without flush, fewer than max_batch_events wait in the batch."""
        emitter = emitters(unbound_receiver.endpoint, settings=settings(send_hwm=2, max_batch_events=16, linger_ms=100))
        for step in range(5000):
            emitter.emit("heartbeat", step=step)
            stats = emitter.stats
            assert stats.produced - stats.sent - stats.dropped < 16

    def test_late_consumer_gets_at_most_send_hwm_stale_messages(self, unbound_receiver, emitters):
        """A consumer binding later receives at most send_hwm queued messages, then run_end counting the drops."""
        emitter = emitters(unbound_receiver.endpoint, settings=settings(send_hwm=5, linger_ms=int(RECV_TIMEOUT_S * 1000)))
        for step in range(50):
            emitter.emit("heartbeat", step=step)
            emitter.flush()
        unbound_receiver.bind()
        first = unbound_receiver.next_events()  # ZeroMQ has reconnected: the queue now empties into the consumer
        emitter.close()  # run_end is queued after the stale messages, so every message before it is one of them
        rest = unbound_receiver.until_run_end()
        stale = unbound_receiver.messages[:-1]
        assert [e.seq for e in first + rest[:-1]] == list(range(len(stale)))
        assert 1 <= len(stale) <= 5
        run_end = rest[-1]
        assert (run_end.sent, run_end.dropped) == (emitter.stats.sent - 1, emitter.stats.dropped)
        assert run_end.dropped == 51 - len(stale)

    @pytest.mark.parametrize("endpoint", ["ipc", "tcp://127.0.0.1:1"], ids=["ipc", "tcp"])
    def test_close_returns_with_messages_queued_for_nobody(self, endpoint, ipc_endpoint, emitters):
        """close() returns (bounded by linger_ms) even when queued messages can never be delivered."""
        emitter = emitters(ipc_endpoint if endpoint == "ipc" else endpoint, settings=settings(linger_ms=200, send_hwm=10))
        for step in range(20):
            emitter.emit("heartbeat", step=step)
            emitter.flush()
        close_with_guard(emitter)
        assert emitter.closed


class TestLifecycle:
    def test_emit_after_close_is_counted_as_dropped(self, receiver, emitters):
        """Emitting after close() never raises; the event is counted as dropped and nothing is sent."""
        emitter = emitters(receiver.endpoint)
        emitter.close()
        sent = emitter.stats.sent
        emitter.emit("heartbeat", step=1)
        emitter.flush()
        emitter.close()
        assert (emitter.stats.dropped, emitter.stats.sent) == (1, sent)
        assert [e.kind for e in receiver.until_run_end()] == ["run_start", "run_end"]

    def test_context_manager_ends_ok(self, receiver):
        """Leaving the with-block normally sends run_end with status ok."""
        with Emitter(receiver.endpoint, run_id="r", settings=settings()) as emitter:
            emitter.emit("heartbeat", step=1)
        assert emitter.closed
        run_end = receiver.until_run_end()[-1]
        assert (run_end.status, run_end.error, run_end.step) == ("ok", None, 1)

    def test_context_manager_reports_the_exception(self, receiver):
        """An exception leaving the with-block sends run_end status error naming it, and still propagates."""
        with pytest.raises(FloatingPointError):
            with Emitter(receiver.endpoint, run_id="r", settings=settings()) as emitter:
                emitter.emit("lstm_health", step=3, h_norm=math.nan)
                raise FloatingPointError("NaN in LSTM state")
        events = receiver.until_run_end()
        assert math.isnan(events[-2].h_norm)
        assert (events[-1].status, events[-1].error) == ("error", "FloatingPointError: NaN in LSTM state")

    def test_context_manager_reports_an_interrupt(self, receiver):
        """Ctrl-C leaving the with-block sends run_end status interrupted."""
        with pytest.raises(KeyboardInterrupt):
            with Emitter(receiver.endpoint, run_id="r", settings=settings()):
                raise KeyboardInterrupt
        assert receiver.until_run_end()[-1].status == "interrupted"

    def test_close_twice_sends_one_run_end(self, receiver, emitters):
        """A second close() does nothing."""
        emitter = emitters(receiver.endpoint)
        emitter.close()
        emitter.close("error", "late")
        assert [e.kind for e in receiver.until_run_end()] == ["run_start", "run_end"]
        assert emitter.stats.batches == len(receiver.messages) == 2  # nothing else was handed to ZeroMQ
        assert receiver.drain() == []  # nor reached the consumer before the emitter hung up


def public(obj) -> set[str]:
    return {name for name in dir(obj) if not name.startswith("_")}


class TestNullEmitter:
    def test_has_exactly_the_emitter_interface(self, receiver, emitters):
        """A NullEmitter has every public method and attribute an Emitter has, and no other, so trainers
        never branch (``from_env``, the constructor that picks between them, is Emitter's alone)."""
        emitter = emitters(receiver.endpoint)
        assert public(NullEmitter()) == public(emitter) - {"from_env"}

    def test_methods_take_the_same_parameters(self):
        """Each public method of NullEmitter takes exactly the parameters of Emitter's (names, kinds,
        defaults, annotations); properties are properties on both or attributes on NullEmitter."""
        checked = set()
        for name in sorted(public(Emitter) - {"from_env"}):
            ours, null = inspect.getattr_static(Emitter, name), inspect.getattr_static(NullEmitter, name)
            if not inspect.isfunction(ours):
                assert not inspect.isfunction(null), name
                continue
            assert inspect.isfunction(null), name
            assert list(inspect.signature(null).parameters.values())[1:] == \
                list(inspect.signature(ours).parameters.values())[1:], name
            checked.add(name)
        assert {"emit", "flush", "close", "timer", "watch", "clip_grad_norm_", *(f"emit_{kind}" for kind in KINDS)} <= checked

    def test_does_nothing_and_never_raises(self):
        """NullEmitter accepts every call, including unknown kinds, and counts nothing."""
        with NullEmitter("ignored", run_id="r") as emitter:
            emitter.emit("no_such_kind", step=1, anything=object())
            emitter.add_flush_hook(lambda: 1 / 0)
            emitter.flush()
        emitter.close()
        assert emitter.stats == EmitterStats()


class TestFromEnv:
    def test_without_endpoint_telemetry_is_off(self, monkeypatch):
        """SIMIC_ENDPOINT unset (or blank) gives a NullEmitter."""
        monkeypatch.delenv("SIMIC_ENDPOINT", raising=False)
        assert isinstance(Emitter.from_env(), NullEmitter)
        monkeypatch.setenv("SIMIC_ENDPOINT", "  ")
        assert isinstance(Emitter.from_env(), NullEmitter)

    def test_endpoint_run_id_rank_and_world_size_come_from_the_environment(self, monkeypatch, receiver):
        """SIMIC_ENDPOINT, SIMIC_RUN_ID, RANK and WORLD_SIZE (as torchrun sets them) configure the emitter."""
        monkeypatch.setenv("SIMIC_ENDPOINT", receiver.endpoint)
        monkeypatch.setenv("SIMIC_RUN_ID", "env-run")
        monkeypatch.setenv("RANK", "2")
        monkeypatch.setenv("WORLD_SIZE", "4")
        emitter = Emitter.from_env(settings=settings())
        assert isinstance(emitter, Emitter)
        emitter.close()
        start = receiver.until_run_end()[0]
        assert (start.run_id, start.rank, start.world_size) == ("env-run", 2, 4)

    def test_arguments_override_the_environment(self, monkeypatch, receiver):
        """Keyword arguments win over RANK and SIMIC_RUN_ID; without SIMIC_RUN_ID a run id is made up."""
        monkeypatch.setenv("SIMIC_ENDPOINT", receiver.endpoint)
        monkeypatch.delenv("SIMIC_RUN_ID", raising=False)
        monkeypatch.setenv("RANK", "2")
        emitter = Emitter.from_env(rank=0, settings=settings())
        assert emitter.rank == 0 and emitter.run_id
        emitter.close()
        assert receiver.until_run_end()[0].rank == 0
