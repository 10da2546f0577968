"""Background delivery: a batch leaves within ``max_batch_delay_ms`` even if the trainer never calls the
emitter again. Real ZeroMQ over ipc, real threads and processes.

The only timing in these tests is generous: a message that must come is awaited for up to
``RECV_TIMEOUT_S`` (10 s, against a delay of 50 ms), and the one negative check (background delivery
switched off) waits 1 s for a message that must not come.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

from simic.producer import Emitter, EmitterSettings
from tests.receiver import RECV_TIMEOUT_S

DELAY_MS = 50.0
PROCESS_TIMEOUT_S = 60
"""Hang guard for a trainer process."""


def settings(**kwargs) -> EmitterSettings:
    base = dict(max_batch_delay_ms=DELAY_MS, heartbeat_interval_s=0, exit_hooks=False, linger_ms=2000)
    base.update(kwargs)
    return EmitterSettings(**base)


def events_until(receiver, predicate, timeout_s: float = RECV_TIMEOUT_S) -> list:
    """Events received until ``predicate(events)`` holds; fails when a message does not come within ``timeout_s``."""
    events: list = []
    while not predicate(events):
        data = receiver.recv(timeout_s)
        assert data is not None, f"no message within {timeout_s} s; got so far: {[(e.kind, e.seq) for e in events]}"
        events += receiver.events_of(data)
    return events


class HungTrainer:
    """A trainer thread that emits ``steps`` events and then hangs (blocks on an event nobody sets until the test ends)."""

    def __init__(self, emitter: Emitter, steps: int) -> None:
        self.emitter = emitter
        self.steps = steps
        self.emitted = threading.Event()
        self.release = threading.Event()
        self.thread = threading.Thread(target=self._run, name="hung-trainer", daemon=True)
        self.thread.start()
        assert self.emitted.wait(RECV_TIMEOUT_S)

    def _run(self) -> None:
        for step in range(self.steps):
            self.emitter.emit("lstm_health", step=step, h_norm=float(step))
        self.emitted.set()
        self.release.wait()  # the hang: no emit, no flush, no close from here on

    def end(self) -> None:
        self.release.set()
        self.thread.join(RECV_TIMEOUT_S)


class TestHungTrainer:
    def test_events_arrive_without_another_call_when_the_trainer_hangs(self, ipc_receiver):
        """The trainer emits 3 events and hangs: they reach the receiver with no emit, flush or close after them."""
        emitter = Emitter(ipc_receiver.endpoint, run_id="hung", settings=settings())
        trainer = None
        try:
            assert [e.kind for e in ipc_receiver.next_events()] == ["run_start"]  # sent by the constructor's flush
            trainer = HungTrainer(emitter, steps=3)
            events = events_until(ipc_receiver, lambda got: len(got) >= 3)
            assert [(e.kind, e.seq, e.step) for e in events] == [("lstm_health", i + 1, i) for i in range(3)]
            assert trainer.thread.is_alive()  # still hung: nothing it did sent them
            assert ipc_receiver.recv(0.2) is None  # nothing more: the delivery thread emits nothing of its own
            assert (emitter.stats.sent, emitter.stats.dropped, emitter.stats.produced) == (4, 0, 4)
        finally:
            if trainer is not None:
                trainer.end()
            emitter.close()

    def test_each_burst_leaves_while_the_trainer_keeps_stalling(self, ipc_receiver):
        """Several emit-then-stall rounds: every round's events arrive before the next round starts."""
        emitter = Emitter(ipc_receiver.endpoint, run_id="stalls", settings=settings())
        try:
            ipc_receiver.next_events()
            for round_ in range(3):
                for i in range(4):
                    emitter.emit("heartbeat", step=round_ * 10 + i)
                events = events_until(ipc_receiver, lambda got: len(got) >= 4)
                assert [e.step for e in events] == [round_ * 10 + i for i in range(4)]
                assert [e.seq for e in events] == list(range(1 + 4 * round_, 5 + 4 * round_))
        finally:
            emitter.close()

    def test_with_background_delivery_off_events_wait_for_emit_or_flush(self, ipc_receiver):
        """background_delivery=False keeps the earlier behaviour: pending events leave only with the next
        emit/flush/close (the one negative wait: 1 s, twenty times the delay)."""
        emitter = Emitter(ipc_receiver.endpoint, run_id="off", settings=settings(background_delivery=False))
        trainer = None
        try:
            ipc_receiver.next_events()
            trainer = HungTrainer(emitter, steps=3)
            assert ipc_receiver.recv(1.0) is None
            assert emitter.stats.sent == 1
            trainer.end()
            emitter.flush()
            assert [e.seq for e in ipc_receiver.next_events()] == [1, 2, 3]
        finally:
            if trainer is not None:
                trainer.end()
            emitter.close()

    def test_the_delivery_thread_is_a_daemon_thread(self, ipc_receiver):
        """One process-wide thread, a daemon: it never keeps the interpreter alive."""
        emitters = [Emitter(ipc_receiver.endpoint, run_id=f"d{i}", settings=settings()) for i in range(2)]
        try:
            threads = [t for t in threading.enumerate() if t.name == "simic-batch-delivery"]
            assert threads and all(t.daemon for t in threads)
        finally:
            for emitter in emitters:
                emitter.close()


class TestConcurrency:
    EVENTS = 30_000

    def test_no_event_lost_or_sent_twice_while_both_threads_send(self, ipc_receiver):
        """A thread emitting as fast as it can (no flush) while the delivery thread sends with a 1 ms delay,
        threads switching every 10 us: at close, the receiver holds exactly ``stats.sent`` events, seq
        0..N+1 once each, and produced == sent + dropped. Both threads must have sent."""
        emitter = Emitter(ipc_receiver.endpoint, run_id="stress",
                          settings=settings(max_batch_delay_ms=1.0, max_batch_events=100_000, send_hwm=100_000))
        senders: list[str] = []
        send_rows = emitter._send_rows

        def counting_send_rows(rows):
            senders.append(threading.current_thread().name)
            send_rows(rows)

        emitter._send_rows = counting_send_rows
        received: list = []
        receiving = threading.Thread(target=lambda: received.extend(ipc_receiver.until_run_end()), daemon=True)
        receiving.start()
        interval = sys.getswitchinterval()
        sys.setswitchinterval(1e-5)
        try:
            emit = emitter.emit_heartbeat
            for step in range(self.EVENTS):
                emit(step=step)
        finally:
            sys.setswitchinterval(interval)
            emitter.close()
        receiving.join(PROCESS_TIMEOUT_S)
        assert not receiving.is_alive(), "run_end never arrived"

        stats = emitter.stats
        seqs = [e.seq for e in received]
        assert sorted(seqs) == list(range(self.EVENTS + 2))  # run_start, the events, run_end: no gap, no duplicate
        assert seqs == sorted(seqs)  # and in order: sends are serialized
        assert len(received) == stats.sent == stats.produced and stats.dropped == 0
        assert stats.produced == stats.sent + stats.dropped
        assert received[-1].sent == self.EVENTS + 1 and received[-1].dropped == 0
        assert "simic-batch-delivery" in senders and "MainThread" in senders, senders[:20]


FORK_SCRIPT = r"""
import os, sys, threading
from simic.producer import Emitter, EmitterSettings
emitter = Emitter(sys.argv[1], run_id="fork-hang", settings=EmitterSettings(max_batch_delay_ms=50, heartbeat_interval_s=0))
emitter.emit("lstm_health", step=0, h_norm=0.0)
emitter.flush()
emitter.emit("lstm_health", step=1, h_norm=1.0)  # pending at the fork: the parent's, not the child's
pid = os.fork()
if pid == 0:
    for step in range(100, 103):
        emitter.emit("heartbeat", step=step)
    threading.Event().wait()  # the child hangs
print(pid, flush=True)
for step in range(10, 12):
    emitter.emit("lstm_health", step=step, h_norm=float(step))
threading.Event().wait()  # the parent hangs too
"""


class TestFork:
    def test_forked_child_delivers_on_its_own_session_and_the_parent_still_delivers(self, ipc_receiver):
        """Fork with an emitter: the child emits 3 events and hangs, the parent emits 2 more and hangs. Both
        sessions' events arrive without another call: the child's with its own run_start (its pid, seq from
        0, none of the parent's pending events), the parent's contiguous."""
        proc = subprocess.Popen([sys.executable, "-c", FORK_SCRIPT, ipc_receiver.endpoint],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        child_pid = None
        try:
            child_pid = int(proc.stdout.readline())

            def done(events) -> bool:
                kinds = [(e.pid if e.kind == "run_start" else None) for e in events]
                return sum(e.kind == "heartbeat" for e in events) == 3 and sum(e.kind == "lstm_health" for e in events) == 4 \
                    and child_pid in kinds

            events = events_until(ipc_receiver, done)
        finally:
            for pid in (child_pid, proc.pid):
                if pid:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            proc.communicate(timeout=PROCESS_TIMEOUT_S)
            if child_pid:
                try:
                    os.waitpid(child_pid, 0)
                except ChildProcessError:  # not ours: the parent process reaped it or init will
                    pass
        sessions: dict[int, list] = {}
        for event in events:
            sessions.setdefault(event.session, []).append(event)
        assert len(sessions) == 2
        child = next(s for s in sessions.values() if s[0].kind == "run_start" and s[0].pid == child_pid)
        parent = next(s for s in sessions.values() if s is not child)
        assert [(e.kind, e.seq) for e in child] == [("run_start", 0), ("heartbeat", 1), ("heartbeat", 2), ("heartbeat", 3)]
        assert [e.step for e in child[1:]] == [100, 101, 102]
        assert [e.seq for e in parent] == list(range(5))
        assert parent[0].pid == proc.pid
        assert [e.step for e in parent if e.kind == "lstm_health"] == [0, 1, 10, 11]
