"""The feed-forward Gaussian PPO, run as a real script (CleanRL style) against a real simic-consumer process."""

from __future__ import annotations

import math
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.examples.test_ppo_lstm import Consumer, returns
from tests.logs import events_of, inspect_run

ROOT = Path(__file__).resolve().parents[2]
TRAINER = ROOT / "examples" / "ppo_continuous.py"
WAIT_S = 120.0
"""Hang guard for a subprocess (not a timing assertion)."""
HEADS = {"mean", "log_std", "value"}
EPOCHS, MINIBATCHES = 4, 4
"""The trainer's defaults: each update sends EPOCHS x MINIBATCHES head_grad_norms events."""
TINY = ["--num-envs", "8", "--num-steps", "32", "--total-timesteps", str(8 * 8 * 32), "--print-every", "1"]
"""8 updates of 256 environment steps: a run takes about a second after start-up."""
ONSET = 4


def train(endpoint: str, run_id: str, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-W", "ignore:Failed to initialize NumPy", str(TRAINER), "--endpoint", endpoint, "--run-id", run_id, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=WAIT_S, cwd=ROOT)


def of_kind(consumer: Consumer, run_id: str, kind: str) -> list:
    return [event for event in events_of(consumer.log_dir, run_id) if event.kind == kind]


def norms_by_step(consumer: Consumer, run_id: str) -> dict[int, list[dict]]:
    """Each update's per-minibatch head norms, in the order the minibatches ran."""
    steps: dict[int, list[dict]] = {}
    for event in of_kind(consumer, run_id, "head_grad_norms"):
        steps.setdefault(event.step, []).append(event.norms)
    return steps


@pytest.fixture(scope="module")
def consumer(tmp_path_factory):
    consumer = Consumer(tmp_path_factory.mktemp("ppo-continuous") / "logs")
    yield consumer
    assert consumer.sidecar.close() == 0


@pytest.fixture(scope="module")
def healthy(consumer):
    """20 updates of the default size (16 environments x 64 steps): about two seconds."""
    result = train(consumer.endpoint, "healthy", "--total-timesteps", str(20 * 16 * 64), "--print-every", "5")
    assert result.returncode == 0, result.stdout + result.stderr
    consumer.ended("healthy")
    return result


@pytest.fixture(scope="module")
def reference(consumer):
    """The tiny run without a fault: what every fault run must match before its onset."""
    result = train(consumer.endpoint, "reference", *TINY)
    assert result.returncode == 0, result.stdout + result.stderr
    consumer.ended("reference")
    return norms_by_step(consumer, "reference")


class TestContinuousTrainer:
    def test_runs_to_the_end_and_sends_every_kind(self, consumer, healthy):
        """A healthy run exits 0; the log holds per-minibatch grad norms, PPO metrics, phase timings and episodes, nothing lost."""
        assert "update 20/20" in healthy.stdout
        session = inspect_run(consumer.log_dir, "healthy")
        assert session["status"] == "ok" and session["lost"] == 0 and session["last_step"] == 20
        kinds = session["events_by_kind"]
        assert kinds["head_grad_norms"] == 20 * EPOCHS * MINIBATCHES
        assert kinds["ppo_update"] == 20 and kinds["episodes"] == 20 and kinds["step_timing"] >= 20

    def test_return_goes_up(self, healthy):
        """With seed 1 the mean return of updates 16-20 beats that of updates 1-5 by more than 1 (from about -3.3)."""
        values = returns(healthy.stdout)
        assert len(values) == 4
        assert values[-1] > values[0] + 1.0, values

    def test_every_minibatch_sends_its_head_norms_with_the_update_step(self, consumer, healthy):
        """Each update u sends epochs x minibatches pre-clip head_grad_norms events, all with step u, for mean, log_std and value."""
        events = of_kind(consumer, "healthy", "head_grad_norms")
        assert Counter(event.step for event in events) == {u: EPOCHS * MINIBATCHES for u in range(1, 21)}
        assert [event.step for event in events] == sorted(event.step for event in events)
        for event in events:
            assert set(event.norms) == HEADS and all(v > 0 for v in event.norms.values())
            assert event.stage == "pre_clip" and event.max_norm == 0.5
            assert event.post_clip_total == pytest.approx(min(event.pre_clip_total, 0.5), rel=1e-4)

    def test_ppo_update_once_per_update_with_one_entropy(self, consumer, healthy):
        """One ppo_update per update; the Gaussian's entropy is one number, sent as {"policy": x}; the logged rate anneals."""
        events = of_kind(consumer, "healthy", "ppo_update")
        assert [event.step for event in events] == list(range(1, 21))
        for event in events:
            assert set(event.entropy) == {"policy"} and math.isfinite(event.entropy["policy"])
            assert event.learning_rate == pytest.approx(3e-4 * (1 - (event.step - 1) / 20))
            assert event.clip_range == 0.2 and event.approx_kl >= 0 and 0 <= event.clip_fraction <= 1
            assert None not in (event.policy_loss, event.value_loss, event.explained_variance)

    def test_episodes_report_what_ended_in_the_rollout(self, consumer, healthy):
        """16 environments x 64 steps with 32-step episodes: 32 episodes end in every rollout, each 32 steps long."""
        events = of_kind(consumer, "healthy", "episodes")
        assert [event.step for event in events] == list(range(1, 21))
        for event in events:
            assert event.count == len(event.returns) == 32 and event.lengths == [32] * 32
            assert all(-10 < r < 0 for r in event.returns)

    @pytest.mark.parametrize("fault", ["head_grad_scale", "slow_drift", "dead_head", "lr_spike", "lr_ramp", "slow_phase", "hang"])
    def test_fault_starts_at_its_onset(self, consumer, reference, fault):
        """Before update K a fault run sends the healthy run's norms to the bit; from update K on the fault shows."""
        extra = ["--hang-seconds", "1"] if fault == "hang" else []
        result = train(consumer.endpoint, fault, *TINY, "--fault", fault, "--fault-at", str(ONSET), *extra)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "update 8/8" in result.stdout
        consumer.ended(fault)
        norms = norms_by_step(consumer, fault)
        assert sorted(norms) == list(range(1, 9)) and all(len(n) == EPOCHS * MINIBATCHES for n in norms.values())
        assert all(norms[u] == reference[u] for u in range(1, ONSET)), "the run differs before its onset"
        first, ref_first = norms[ONSET][0], reference[ONSET][0]
        updates = {e.step: e for e in of_kind(consumer, fault, "ppo_update")}
        ref_lr = 3e-4 * (1 - (ONSET - 1) / 8)
        if fault in ("head_grad_scale", "slow_drift", "dead_head"):  # the mean head's gradient, scaled before it is measured
            factor = {"head_grad_scale": 10.0, "slow_drift": 1.25, "dead_head": 0.0}[fault]
            assert first["mean"] == pytest.approx(factor * ref_first["mean"], rel=1e-5)
            assert first["log_std"] == ref_first["log_std"] and first["value"] == ref_first["value"]
        elif fault in ("lr_spike", "lr_ramp"):  # the first minibatch is measured before the first step at the new rate
            assert first == ref_first and norms[ONSET][1] != reference[ONSET][1]
            logged = 100 * ref_lr if fault == "lr_spike" else ref_lr  # lr_ramp: the logged rate stays the schedule's
            assert updates[ONSET].learning_rate == pytest.approx(logged)
        else:  # slow_phase and hang change the time, not the numbers
            assert norms == reference
        if fault == "slow_phase":
            update_ms = {e.step: e.phases_ms["update"] for e in of_kind(consumer, fault, "step_timing") if "update" in e.phases_ms}
            assert min(update_ms[u] for u in range(ONSET, 9)) >= 250 > max(update_ms[u] for u in range(1, ONSET))
        if fault == "hang":  # alive but silent after sending update K, then it goes on
            assert f"hanging at update {ONSET} for 1.0 s" in result.stdout
            sent = sorted((e.clock_ns, e.step) for e in events_of(consumer.log_dir, fault) if e.kind not in ("heartbeat", "run_end"))
            gap, at = max((b[0] - a[0], i) for i, (a, b) in enumerate(zip(sent, sent[1:])))
            assert gap >= 1e9 and max(step for _, step in sent[: at + 1]) == ONSET
            assert all(step <= ONSET for _, step in sent[: at + 1]) and min(step for _, step in sent[at + 1:]) >= ONSET

    def test_nan_observation_raises_a_critical_alert_at_its_update(self, consumer):
        """--fault nan_obs at update 4: NaN gradient norms at step 4, non_finite (critical) about step 4, then the trainer dies of it."""
        result = train(consumer.endpoint, "nan", *TINY, "--fault", "nan_obs", "--fault-at", str(ONSET))
        assert result.returncode == 1 and "ValueError" in result.stderr
        assert "ended (error)" in consumer.ended("nan")
        norms = norms_by_step(consumer, "nan")
        assert max(norms) == ONSET and all(math.isnan(v) for v in norms[ONSET][0].values())
        alerts = consumer.alerts("nan")
        first = next(a for a in alerts if a["rule"] == "non_finite")
        assert (first["severity"], first["step"]) == ("critical", ONSET)
        assert any(a["rule"] == "run_failed" for a in alerts)

    def test_nan_lstm_is_refused_with_a_message(self):
        """There is no LSTM here: --fault nan_lstm stops the script before training and points to nan_obs."""
        result = subprocess.run([sys.executable, str(TRAINER), "--fault", "nan_lstm"], capture_output=True, text=True, timeout=WAIT_S)
        assert result.returncode != 0 and "no LSTM" in result.stderr and "nan_obs" in result.stderr

    def test_help_lists_every_option_and_fault(self):
        """--help shows each Args field as a flag with its docstring, and every fault of this trainer."""
        result = subprocess.run([sys.executable, str(TRAINER), "--help"], capture_output=True, text=True, timeout=WAIT_S)
        assert result.returncode == 0
        assert "--fault-head FAULT_HEAD" in result.stdout and "--action-dim ACTION_DIM" in result.stdout
        assert "--batch-size" not in result.stdout
        faults = ("nan_obs", "head_grad_scale", "lr_spike", "slow_drift", "dead_head", "slow_phase", "hang", "lr_ramp")
        assert all(fault in result.stdout for fault in faults)

    def test_setup_fails_early_with_a_message(self):
        """Arguments it cannot honour end the script before training, with a message naming them."""
        for args, flag in ((["--action-dim", "5"], "--action-dim"), (["--fault", "dead_head", "--fault-head", "op"], "--fault-head")):
            result = subprocess.run([sys.executable, str(TRAINER), *args], capture_output=True, text=True, timeout=WAIT_S)
            assert result.returncode != 0 and flag in result.stderr, result.stderr
