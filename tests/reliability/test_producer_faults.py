"""The producer under consumer faults, with real processes: a producer process emitting at full speed
(``bench/producer_faults.py``'s child, the realistic step of ``bench/_workload.py``) into a real
`simic-consumer run` that is absent, SIGSTOPped or SIGKILLed.

"Never blocks" is shown without timing: the emitting loop must reach its end, and print so, while the
consumer is still stopped or dead; a producer blocked in a send never prints, and the hang guard fails
the test. Drops are proven by the emitter's own counts, and delivery by the consumer's log.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bench.producer_faults import RUN_ID, STATES, ProducerProcess

from .conftest import WAIT_S

BENCH = Path(__file__).resolve().parents[2] / "bench"

SEND_HWM = 20
"""The producer's send queue (messages): small, so that it is full within a few steps."""
EVENTS = 40_000
"""Events per fast run: 5,000 steps, far beyond what all the queues together hold."""
RSS_EVENTS = 200_000
"""Events for the memory check: enough that keeping the dropped messages would dwarf the bound."""
ALLOCATOR_SLACK_KIB = 2048
"""RSS the allocator and ZeroMQ may add for reasons other than queued data (pages, arenas)."""


@pytest.fixture
def consumer(tmp_path, ipc_endpoint, daemons):
    """A real `simic-consumer run` (default settings) logging to ``tmp_path / "logs"``. Stopped or killed,
    its own queues take nothing more: the producer's send queue and the socket buffer fill within a few steps."""
    return daemons(ipc_endpoint, tmp_path / "logs")


@pytest.fixture
def producers():
    """Start producer processes; any still running at the end is killed."""
    started: list[ProducerProcess] = []

    def start(endpoint: str, events: int, **kwargs) -> ProducerProcess:
        producer = ProducerProcess(endpoint, events, send_hwm=SEND_HWM, timeout_s=WAIT_S, **kwargs)
        started.append(producer)
        return producer

    yield start
    for producer in started:
        producer.kill()


def inject(fault: str, consumer) -> None:
    if fault == "stopped":
        consumer.proc.send_signal(signal.SIGSTOP)
    elif fault == "killed":
        consumer.kill()


def assert_every_event_counted(stats: dict[str, int]) -> None:
    assert stats["dropped"] > 0, f"the queues never filled: {stats}"
    assert stats["sent"] + stats["dropped"] == stats["produced"], stats
    assert stats["invalid"] == 0, stats


class TestNeverBlocksNeverRaises:
    @pytest.mark.parametrize("fault", ["absent", "stopped", "killed"])
    def test_emitting_runs_to_completion_while_the_consumer_is_down(self, fault, request, ipc_endpoint, producers):
        """Absent, SIGSTOPped or SIGKILLed consumer: every emit and flush returns, none raises, and
        sent + dropped == produced, with drops counted; close() returns too (bounded by linger)."""
        if fault == "absent":
            endpoint, consumer = ipc_endpoint, None
        else:
            consumer = request.getfixturevalue("consumer")
            endpoint = consumer.endpoint
        producer = producers(endpoint, EVENTS, marks={"fault": 0.1}, linger_ms=100)
        producer.expect("mark", "fault")
        inject(fault, consumer)
        producer.go()
        emitted = producer.expect("emitted")  # the hang guard fails here if a call blocked
        assert_every_event_counted(emitted)
        result = producer.result()  # close() with the consumer still down
        assert result["raised_count"] == 0, result["raised"]
        assert_every_event_counted(result["closed"])
        assert result["closed"]["produced"] == EVENTS + 2  # run_start, the steps' events, run_end
        if consumer is not None:
            assert consumer.proc.poll() == (None if fault == "stopped" else -signal.SIGKILL)


class TestAfterSigcont:
    def test_consumer_receives_again_and_accounts_for_every_event(self, tmp_path, consumer, producers, cli):
        """SIGSTOP with the queues full, SIGCONT halfway: the consumer logs the rest of the run, and its
        log says received + counted lost == produced, the loss being exactly the producer's own drops."""
        producer = producers(consumer.endpoint, EVENTS, marks={"fault": 0.1, "heal": 0.5}, linger_ms=int(WAIT_S * 1000))
        producer.expect("mark", "fault")
        consumer.proc.send_signal(signal.SIGSTOP)
        producer.go()
        producer.expect("mark", "heal")
        consumer.proc.send_signal(signal.SIGCONT)
        producer.go()
        producer.expect("emitted")
        # However far behind the consumer still is, close() keeps the connection until the consumer's
        # receipt of run_end (linger_ms is the hang guard here): libzmq would discard what is in flight.
        result = producer.result()
        stats = result["closed"]
        assert_every_event_counted(stats)
        assert (stats["delivered"], stats["undelivered"], stats["unknown"]) == (stats["sent"], 0, 0)  # the receipt
        consumer.wait_for(f"session {producer.session} ended (ok)")
        assert consumer.stop() == 0

        (session,) = cli.inspect_json(tmp_path / "logs")["runs"][RUN_ID]
        assert session["session"] == producer.session and session["status"] == "ok"
        assert session["last_step"] == result["steps"] - 1  # events emitted after SIGCONT arrived
        assert session["received"] + session["lost"] == stats["produced"]
        assert session["dropped_by_producer"] == stats["dropped"]
        assert session["received"] == stats["sent"]  # a stopped consumer loses nothing it was handed


def check_memory_bounded(result: dict) -> None:
    """RSS from the point where the queues are full (20 % of the events) to the end grows by less than
    the send queue can hold (send_hwm messages, counted twice) plus allocator slack, while keeping the
    dropped messages would have needed several times that."""
    stats = result["emitted"]
    assert_every_event_counted(stats)
    message_bytes = stats["bytes"] / stats["batches"]
    bound_kib = 2 * result["send_hwm"] * message_bytes / 1024 + ALLOCATOR_SLACK_KIB
    dropped_kib = stats["dropped"] * (stats["bytes"] / stats["sent"]) / 1024
    assert dropped_kib > 4 * bound_kib, "too few events for the bound to mean anything"
    rss = result["rss_kib"]
    samples = [kib for events, kib in result["rss_samples"] if events >= 0.2 * result["events"]] + [rss["after"]]
    assert max(samples) - rss["at_fill"] <= bound_kib, (rss, result["rss_samples"], bound_kib)


def emit_into_stopped_consumer(consumer, producers, events: int) -> dict:
    producer = producers(consumer.endpoint, events, marks={"fault": 0.0}, linger_ms=100)
    producer.expect("mark", "fault")
    consumer.proc.send_signal(signal.SIGSTOP)
    producer.go()
    producer.expect("emitted")
    result = producer.result()
    assert result["raised_count"] == 0, result["raised"]
    return result


class TestMemoryBounded:
    def test_rss_stays_bounded_while_the_consumer_is_stopped(self, consumer, producers):
        """200k events into a SIGSTOPped consumer: memory stays within a bound set by send_hwm."""
        check_memory_bounded(emit_into_stopped_consumer(consumer, producers, RSS_EVENTS))

    @pytest.mark.slow
    def test_one_million_events_into_a_stopped_consumer(self, consumer, producers):
        """The same with 1M events (the benchmark's size)."""
        check_memory_bounded(emit_into_stopped_consumer(consumer, producers, 1_000_000))


class TestBenchmarkAtFullSize:
    @pytest.mark.slow
    def test_one_million_events_in_every_consumer_state(self, tmp_path):
        """bench/producer_faults.py at its full size: in every state nothing raises, every event is
        counted, and the consumer's log accounts for every event produced."""
        out = tmp_path / "results.json"
        run = subprocess.run([sys.executable, str(BENCH / "producer_faults.py"), "--json", str(out)],
                             capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stdout + run.stderr
        results = {r["state"]: r for r in json.loads(out.read_text())}
        assert list(results) == list(STATES)
        for state, result in results.items():
            assert result["raised_count"] == 0, (state, result["raised"])
            assert result["events"] == 1_000_000
            assert_every_event_counted(result["closed"])
            if state != "absent":
                session = result["consumer"]
                assert session is not None, f"{state}: the consumer never logged run_end"
                assert session["received"] + session["lost"] == result["closed"]["produced"], state
                assert session["dropped_by_producer"] == result["closed"]["dropped"], state
