"""Prometheus metrics: the real daemon with --metrics-port, a real Emitter, scraped over HTTP."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest
import zmq
from prometheus_client.parser import text_string_to_metric_families

from simic.consumer import ConsumerConfig, Stage, build_pipeline
from simic.consumer.sinks.metrics import MetricsSink
from simic.producer import Emitter
from simic.schemas.codec import KINDS, encode_message

from ..conftest import WAIT_S

HEADS = ["slot", "blueprint", "blend", "op", "value"]
STEPS = 20
NAN_AT = 5

Samples = dict[tuple[str, frozenset], float]


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=WAIT_S) as response:
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def scrape_after(url: str, ready) -> Samples:
    """Scrape once the daemon's own signal has been seen; ``ready`` covers the few microseconds
    between the accounting stage printing "ended" and the metrics stage (later in the same batch)
    counting it. Bounded by WAIT_S; never sleeps."""
    deadline = time.monotonic() + WAIT_S
    while True:
        samples = scrape(url)
        if ready(samples) or time.monotonic() > deadline:
            return samples


def row(kind: str, seq: int, step: int, *payload) -> list:
    return [KINDS[kind].code, seq, time.monotonic_ns(), step, *payload]


class TestMetricsEndpoint:
    def test_counts_match_what_was_sent(self, tmp_path, ipc_endpoint, daemons):
        """Events per kind, losses, rejections, alerts and last values per head and rank are exported as sent."""
        daemon = daemons(ipc_endpoint, tmp_path / "logs", "--metrics-port", "0")
        url = daemon.wait_for("serving metrics on").rsplit(" ", 1)[1].strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics")

        with Emitter(daemon.endpoint, run_id="metrics", heads=HEADS) as emitter:
            for step in range(STEPS):
                norms = {head: 0.25 + step / 100 for head in HEADS}
                emitter.emit("head_grad_norms", step=step, norms=norms, total=float("nan") if step == NAN_AT else 1.0)
                emitter.emit("lstm_health", step=step, h_rms=0.3, c_rms=None)
                emitter.emit("ppo_update", step=step, approx_kl=0.02, entropy={"slot": 1.5})
                emitter.flush()
        daemon.wait_for("run metrics rank 0 session")  # the emitter's messages are in before the foreign sender's
        # A foreign sender on its own socket: garbage, then a session with a gap (seq 2..4 never sent), then its end.
        context = zmq.Context()
        push = context.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 5000)
        push.connect(daemon.endpoint)
        push.send(b"\xc1 not msgpack")
        push.send(encode_message("gappy", 1, 7, [row("run_start", 0, 0, "host", 1), row("step_timing", 1, 1, {"update": 2.0})]))
        push.send(encode_message("gappy", 1, 7, [row("step_timing", 5, 2, {"update": 2.0}), row("run_end", 6, 2)]))
        push.close()
        context.term()
        daemon.wait_for("run gappy rank 1 session")  # the daemon's own "... ended (ok)" lines: everything was processed

        samples = scrape_after(url, lambda s: value(s, "simic_events_received_total", kind="run_end") == 2)
        assert value(samples, "simic_events_received_total", kind="head_grad_norms") == STEPS
        assert value(samples, "simic_events_received_total", kind="run_start") == 2
        assert value(samples, "simic_events_received_total", kind="run_end") == 2
        assert value(samples, "simic_events_received_total", kind="step_timing") == 2
        assert value(samples, "simic_messages_rejected_total", reason="malformed_msgpack") == 1
        assert value(samples, "simic_events_lost_total", run_id="gappy", rank="1") == 3
        assert value(samples, "simic_events_lost_total", run_id="metrics", rank="0") == 0
        assert value(samples, "simic_alerts_total", rule="non_finite", severity="critical") == 1
        assert value(samples, "simic_alerts_cleared_total", rule="non_finite") == 1
        assert value(samples, "simic_alerts_active", rule="non_finite", run_id="metrics", rank="0") == 0
        assert value(samples, "simic_grad_norm", run_id="metrics", rank="0", head="slot") == 0.25 + (STEPS - 1) / 100
        assert value(samples, "simic_grad_norm_global", run_id="metrics", rank="0", stage="total") == 1.0
        assert value(samples, "simic_lstm_state_rms", run_id="metrics", rank="0", state="h") == 0.3
        assert value(samples, "simic_lstm_state_rms", run_id="metrics", rank="0", state="c") is None  # missing, not 0
        assert value(samples, "simic_ppo_entropy", run_id="metrics", rank="0", head="slot") == 1.5
        assert value(samples, "simic_last_step", run_id="metrics", rank="0") == STEPS - 1
        assert value(samples, "simic_last_step", run_id="gappy", rank="1") == 2
        assert value(samples, "simic_last_event_age_seconds", run_id="metrics", rank="0") is None  # it ended its run: not silent
        assert value(samples, "simic_run_alerts_total", run_id="metrics", rank="0", rule="non_finite", severity="critical") == 1
        assert value(samples, "simic_queue_capacity_messages") == ConsumerConfig().daemon.queue_messages
        assert value(samples, "simic_queue_depth_messages") is not None
        assert value(samples, "simic_log_frames_lost_total") == 0
        assert value(samples, "simic_producer_dropped_events", run_id="metrics", rank="0") == 0
        # Per stage: every stage of the live pipeline took every batch (messages and clock ticks) and lost nothing.
        stages = {dict(labels)["stage"]: v for (name, labels), v in samples.items() if name == "simic_stage_accepted_batches_total"}
        assert {"event_log", "accounting", "alert_clock", "updates", "non_finite", "alert_jsonl", "alert_pub", "metrics"} <= set(stages)
        assert min(stages.values()) >= value(samples, "simic_messages_received_total") >= 3
        assert all(v == 0 for (name, _), v in samples.items() if name in ("simic_stage_refused_batches_total", "simic_stage_dropped_batches_total"))
        assert daemon.stop() == 0

    def test_an_alert_raised_on_a_clock_tick_is_counted(self, tmp_path, ipc_endpoint, daemons):
        """A lone producer that goes quiet is only ever found by a scan on the daemon's clock tick
        (no message arrives to trigger one): its silent_producer alert is counted like any other,
        so Prometheus's SimicCriticalTrainingAlert sees it."""
        config = tmp_path / "sidecar.toml"
        config.write_text("[rules.silent_producer]\nmin_silence_s = 1\n")
        daemon = daemons(ipc_endpoint, tmp_path / "logs", "--metrics-port", "0", "--config", str(config))
        url = daemon.wait_for("serving metrics on").rsplit(" ", 1)[1].strip()
        context = zmq.Context()
        push = context.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 5000)
        push.connect(daemon.endpoint)
        push.send(encode_message("quiet", 0, 3, [row("run_start", 0, 0, "host", 1), row("step_timing", 1, 1, {"update": 2.0})]))
        push.close()
        context.term()
        daemon.wait_for("silent_producer")
        labels = {"run_id": "quiet", "rank": "0", "rule": "silent_producer"}
        samples = scrape_after(url, lambda s: value(s, "simic_alerts_active", **labels) == 1)
        assert value(samples, "simic_run_alerts_total", severity="critical", **labels) == 1
        assert value(samples, "simic_alerts_total", rule="silent_producer", severity="critical") == 1
        assert value(samples, "simic_alerts_active", **labels) == 1
        assert daemon.stop() == 0

    def test_healthcheck_says_healthy_then_unhealthy(self, tmp_path, ipc_endpoint, daemons):
        """The image's health check exits 0 against a running daemon and 1, with a reason, once it stopped.

        The stopped daemon's port is held by the test (bound, not listening) while it checks: a port freed
        on a busy machine can be handed at once to another process's server, whose answer is not the
        daemon's. If one took it first, the test starts again with a new daemon."""
        for attempt in range(3):
            daemon = daemons(ipc_endpoint, tmp_path / f"logs-{attempt}", "--metrics-port", "0")
            url = daemon.wait_for("serving metrics on").rsplit(" ", 1)[1].strip()
            check = [sys.executable, "-m", "simic.consumer", "healthcheck", "--url", url]
            healthy = subprocess.run(check, capture_output=True, text=True, timeout=WAIT_S)
            assert healthy.returncode == 0, healthy.stderr
            assert daemon.stop() == 0
            address = urllib.parse.urlsplit(url)
            with socket.socket() as holder:
                holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past TIME_WAIT, never past a listener
                try:
                    holder.bind((address.hostname, address.port))
                except OSError:
                    continue  # another process listens there now
                unhealthy = subprocess.run(check, capture_output=True, text=True, timeout=WAIT_S)
            assert unhealthy.returncode == 1
            assert "does not answer" in unhealthy.stderr
            return
        pytest.fail("every port the daemon freed was taken by another process at once")

    def test_a_taken_port_is_one_clear_error(self, tmp_path, ipc_endpoint, daemons):
        """A metrics port already in use stops the daemon at start with one line naming the problem."""
        first = daemons(ipc_endpoint, tmp_path / "a", "--metrics-port", "0")
        port = first.wait_for("serving metrics on").rsplit(":", 1)[1].split("/")[0]
        result = subprocess.run([sys.executable, "-m", "simic.consumer", "run", "--bind", "tcp://127.0.0.1:*", "--log-dir", str(tmp_path / "b"),
                                 "--metrics-port", port], capture_output=True, text=True, timeout=WAIT_S)
        assert result.returncode == 1
        assert "Address already in use" in result.stderr
        assert first.stop() == 0


class TestMetricsSink:
    def test_each_sink_has_its_own_registry(self):
        """Two metrics stages in one process do not collide (no global registry)."""
        first, second = MetricsSink(serve=False), MetricsSink(serve=False)
        assert first.registry is not second.registry

    async def test_a_missing_value_removes_its_sample(self):
        """A head sent as None has no sample afterwards (missing, not 0); NaN is exported as NaN."""
        sink = MetricsSink(serve=False)
        pipeline = build_pipeline(ConsumerConfig(), console=False, extra_sinks=[sink])
        await pipeline.start()
        grads = KINDS["head_grad_norms"].code
        await pipeline.consume(encode_message("r", 0, 1, [[grads, 0, 1, 0, {"slot": 1.0, "op": 2.0}]]), 1)
        await pipeline.consume(encode_message("r", 0, 1, [[grads, 1, 2, 1, {"slot": None, "op": float("nan")}]]), 2)
        await pipeline.close()
        assert sink.registry.get_sample_value("simic_grad_norm", {"run_id": "r", "rank": "0", "head": "slot"}) is None
        op = sink.registry.get_sample_value("simic_grad_norm", {"run_id": "r", "rank": "0", "head": "op"})
        assert op != op  # NaN
        assert sink.registry.get_sample_value("simic_events_received_total", {"kind": "head_grad_norms"}) == 2

    async def test_stage_counts_are_scraped_from_the_endpoint(self, tmp_path):
        """simic_stage_{accepted,refused,dropped}_batches_total per stage, read from the pipeline when scraped:
        a stage that raises refuses, a full dead-letter store drops, a quiet stage skips the catch-up."""
        from simic.consumer.sinks.dead_letter import DeadLetterSink

        class Broken(Stage):
            name = "broken"

            async def consume(self, batch):
                if batch.events:
                    raise RuntimeError("a bug in a stage")

        sink = MetricsSink()  # serves on a free loopback port
        pipeline = build_pipeline(ConsumerConfig(), console=False, log_dir=tmp_path / "log",
                                  dead_letter_dir=tmp_path / "dl", extra_sinks=[Broken(), sink])
        pipeline.find(DeadLetterSink)[0].max_bytes = 0  # the dead letters are full: what they would keep is dropped
        sink.export_stages(pipeline.stage_counts)
        await pipeline.start()
        try:
            grads = KINDS["head_grad_norms"].code
            await pipeline.consume(encode_message("r", 0, 1, [[grads, 0, 1, 0, {"slot": 1.0}]]), 1, catching_up=True)
            await pipeline.consume(encode_message("r", 0, 1, [[grads, 1, 2, 1, {"slot": 1.0}]]), 2)
            await pipeline.consume(b"\xc1 not msgpack", 3)
            await pipeline.tick(4)
            samples = await asyncio.to_thread(scrape, sink.url)
        finally:
            await pipeline.close()

        def counts(stage: str) -> tuple:
            return tuple(value(samples, f"simic_stage_{what}_batches_total", stage=stage) for what in ("accepted", "refused", "dropped"))

        assert counts("accounting") == (4, 0, 0)  # the catch-up too
        assert counts("gradient_drift") == (4, 0, 0)
        assert counts("event_log") == (3, 0, 0)  # quiet while catching up
        assert counts("dead_letter") == (3, 0, 1)  # the malformed message it could not keep
        assert counts("broken") == (2, 2, 0)  # raised on the two messages with events (one the catch-up), took the rest
        assert counts("metrics") == (3, 0, 0)
        assert value(samples, "simic_log_frames_lost_total") == 0
