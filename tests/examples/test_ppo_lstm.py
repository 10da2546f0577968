"""The reference trainer, run as a real script (CleanRL style) against a real simic-consumer process."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from simic.producer import spawn_consumer
from tests.logs import events_of

ROOT = Path(__file__).resolve().parents[2]
TRAINER = ROOT / "examples" / "ppo_lstm.py"
WAIT_S = 120.0
"""Hang guard for a subprocess (not a timing assertion)."""
TINY = ["--num-envs", "8", "--num-steps", "16", "--print-every", "5"]
"""128 environment steps per update: a fault run takes a second or two."""
COLLECTOR_KINDS = {"step_timing", "head_grad_norms", "lstm_health", "ppo_update", "profiler_trace"}


def train(endpoint: str, run_id: str, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-W", "ignore:Failed to initialize NumPy", str(TRAINER), "--endpoint", endpoint, "--run-id", run_id, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=WAIT_S, cwd=ROOT)


def consumer_cli(*args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "simic.consumer", *args], capture_output=True, text=True, timeout=WAIT_S)
    assert result.returncode == 0, result.stderr
    return result.stdout


def returns(stdout: str) -> list[float]:
    return [float(r) for r in re.findall(r"^update \d+/\d+ .*\| return ([-\d.na]+)$", stdout, re.M)]


class Consumer:
    """One real `simic-consumer run` for the module; each test's trainer is a run of its own."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.sidecar = spawn_consumer(log_dir=log_dir)
        self.endpoint = self.sidecar.endpoint

    def ended(self, run_id: str) -> str:
        """Wait for the consumer's note that the run ended (its last event is in the log then)."""
        line = self.sidecar.wait_for_line(f"run {run_id} rank 0 session", timeout_s=WAIT_S)
        assert line is not None and "ended" in line, "".join(self.sidecar.lines)
        return line

    def alerts(self, run_id: str) -> list[dict]:
        lines = [json.loads(line) for line in consumer_cli("replay", str(self.log_dir), "--json").splitlines()]
        return [line for line in lines if line["type"] == "alert" and line["run_id"] == run_id and not line["cleared"]]


@pytest.fixture(scope="module")
def consumer(tmp_path_factory):
    consumer = Consumer(tmp_path_factory.mktemp("ppo-lstm") / "logs")
    yield consumer
    assert consumer.sidecar.close() == 0


@pytest.fixture(scope="module")
def healthy(consumer, tmp_path_factory):
    """30 updates of the default size with the profiler window on: about five seconds."""
    traces = tmp_path_factory.mktemp("traces")
    result = train(consumer.endpoint, "healthy", "--total-timesteps", str(30 * 1024), "--print-every", "5",
                   "--profile", "--profile-dir", str(traces))
    assert result.returncode == 0, result.stdout + result.stderr
    consumer.ended("healthy")
    return result


class TestReferenceTrainer:
    def test_runs_to_the_end_and_sends_every_collector_kind(self, consumer, healthy):
        """A healthy run exits 0 and the log holds step timings, grad norms, LSTM state, PPO metrics and a profiler trace."""
        assert "update 30/30" in healthy.stdout
        (session,) = json.loads(consumer_cli("inspect", str(consumer.log_dir), "--json"))["runs"]["healthy"]
        assert COLLECTOR_KINDS <= set(session["events_by_kind"])
        assert session["status"] == "ok" and session["lost"] == 0 and session["last_step"] == 30
        assert session["events_by_kind"]["head_grad_norms"] == 30 * 4 * 4  # every minibatch: 4 epochs x 4 minibatches
        assert session["events_by_kind"]["lstm_health"] == 30

    def test_return_goes_up(self, healthy):
        """With seed 1 the mean return of the last five updates beats that of the first five by more than 1 (of 8)."""
        values = returns(healthy.stdout)
        assert len(values) == 6
        assert values[-1] > values[0] + 1.0, values

    def test_nan_in_the_lstm_state_raises_a_critical_alert_at_its_update(self, consumer):
        """--fault nan_lstm at update 6: non_finite (critical) about step 6 in replay; the NaN then crashes the trainer, which reports it."""
        result = train(consumer.endpoint, "nan", *TINY, "--total-timesteps", str(12 * 128), "--fault", "nan_lstm", "--fault-at", "6")
        assert result.returncode == 1 and "ValueError" in result.stderr
        assert "ended (error)" in consumer.ended("nan")
        alerts = consumer.alerts("nan")
        first = alerts[0]
        assert (first["rule"], first["severity"], first["step"]) == ("non_finite", "critical", 6)
        assert any(a["rule"] == "run_failed" for a in alerts)

    def test_stop_on_critical_ends_the_run_cleanly(self, consumer):
        """--fault lr_spike with --stop-on-critical: the trainer receives approx_kl's critical alert, prints it and stops with exit 0."""
        result = train(consumer.endpoint, "spike", *TINY, "--total-timesteps", str(40 * 128), "--fault", "lr_spike", "--fault-at", "4",
                       "--stop-on-critical")
        assert result.returncode == 0, result.stdout + result.stderr
        assert re.search(r"^alert: \[critical\] approx_kl at step 4:", result.stdout, re.M), result.stdout
        assert re.search(r"^stopping at update \d+: critical alert approx_kl at step 4", result.stdout, re.M), result.stdout
        assert "ended (ok)" in consumer.ended("spike")
        assert "update 40/40" not in result.stdout

    def test_lr_ramp_changes_nothing_before_its_onset(self, consumer):
        """--fault lr_ramp at update 6: returns printed up to update 6 are the healthy run's to the digit, later ones differ; the logged rate stays the schedule's."""
        runs = {}
        for run_id, fault in (("ramp-healthy", []), ("ramp", ["--fault", "lr_ramp", "--fault-at", "6"])):
            result = train(consumer.endpoint, run_id, *TINY, "--total-timesteps", str(12 * 128), "--print-every", "1", *fault)
            assert result.returncode == 0, result.stdout + result.stderr
            consumer.ended(run_id)
            runs[run_id] = result
        healthy, ramp = returns(runs["ramp-healthy"].stdout), returns(runs["ramp"].stdout)
        assert len(healthy) == len(ramp) == 12
        assert healthy[:6] == ramp[:6] and healthy[6:] != ramp[6:]
        rates = {run_id: [e.learning_rate for e in events_of(consumer.log_dir, run_id) if e.kind == "ppo_update"] for run_id in runs}
        assert rates["ramp"] == rates["ramp-healthy"] and len(rates["ramp"]) == 12

    def test_help_lists_every_option_with_its_docstring(self):
        """--help shows each Args field as a flag with its one-line docstring, and every fault."""
        result = subprocess.run([sys.executable, str(TRAINER), "--help"], capture_output=True, text=True, timeout=WAIT_S)
        assert result.returncode == 0
        assert "--fault-at FAULT_AT" in result.stdout and "the update (counted from 1) at which the fault starts" in result.stdout
        assert "--stop-on-critical" in result.stdout and "--batch-size" not in result.stdout
        assert all(fault in result.stdout for fault in ("nan_lstm", "head_grad_scale", "lr_spike", "slow_drift", "dead_head", "slow_phase", "hang", "lr_ramp"))

    def test_setup_fails_early_with_a_message(self):
        """Arguments it cannot honour end the script before training, with a message naming them."""
        result = subprocess.run([sys.executable, str(TRAINER), "--num-envs", "6", "--num-minibatches", "4"],
                                capture_output=True, text=True, timeout=WAIT_S)
        assert result.returncode != 0 and "--num-minibatches" in result.stderr
