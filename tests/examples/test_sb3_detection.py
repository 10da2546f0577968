"""examples/sb3_detection.py, run as a real script: each injected fault starts at its onset, seen against a healthy run.

Every run has the same seed and tiny sizes (2 environments x 8 steps, one minibatch of 16, one
epoch), so a fault run is the healthy run, bit for bit, until the fault starts, and on the onset
update itself the one minibatch's gradients are the healthy ones with the fault applied. Onset is
update 3 (``--fault-at 3``), whose events carry step 2 (SimicCallback counts steps from 0).
"""

from __future__ import annotations

import concurrent.futures
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("stable_baselines3")
pytest.importorskip("sb3_contrib")

from tests.logs import events_of  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TRAINER = ROOT / "examples" / "sb3_detection.py"
WAIT_S = 120.0
"""Hang guard for a subprocess (not a timing assertion)."""
TINY = ["--n-envs", "2", "--n-steps", "8", "--batch-size", "16", "--n-epochs", "1", "--updates", "5", "--print-every", "1"]
ONSET = 2
"""The step of update 3's events: the onset step of --fault-at 3."""
FAULTS = ("head_grad_scale", "slow_drift", "dead_head", "nan_lstm", "lr_spike", "lr_ramp", "slow_phase", "hang")
HANG_S = 1.0
REL = 1e-5
"""float32 norms of a gradient scaled before or after the reduction agree to about this."""


class Run:
    def __init__(self, result: subprocess.CompletedProcess, log_dir: Path, run_id: str) -> None:
        self.result = result
        self.events = events_of(log_dir, run_id)

    def of(self, kind: str, step: int, name: str | None = None):
        (event,) = [e for e in self.events if e.kind == kind and e.step == step and (name is None or e.name == name)
                    and (kind != "metrics" or "optimizer/lr" in e.values)]
        return event


def train(tmp: Path, fault: str | None) -> Run:
    run_id = fault or "healthy"
    command = [sys.executable, str(TRAINER), *TINY, "--seed", "3", "--run-id", run_id, "--spawn-consumer",
               "--telemetry-dir", str(tmp / run_id)]
    if fault:
        command += ["--fault", fault, "--fault-at", "3", "--hang-seconds", str(HANG_S)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=WAIT_S, cwd=ROOT)
    return Run(result, tmp / run_id, run_id)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str | None, Run]:
    """The healthy run (None) and one run per fault, three at a time: about 25 s in all."""
    tmp = tmp_path_factory.mktemp("sb3-faults")
    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
        return dict(zip((None, *FAULTS), pool.map(lambda fault: train(tmp, fault), (None, *FAULTS))))


@pytest.fixture(scope="module")
def healthy(runs) -> Run:
    run = runs[None]
    assert run.result.returncode == 0, run.result.stdout + run.result.stderr
    return run


class TestFaultOnset:
    def test_the_healthy_run_trains_every_update_and_prints_its_progress(self, healthy):
        """Five updates, steps 0 to 4, one progress line per update with the mean episode return."""
        assert sorted({e.step for e in healthy.events if e.kind == "head_grad_norms"}) == [0, 1, 2, 3, 4]
        assert "update 5/5 | timesteps 80 |" in healthy.result.stdout and "| return " in healthy.result.stdout

    def test_every_fault_run_is_the_healthy_run_before_onset(self, runs, healthy):
        """Before step 2 every fault run sends the healthy run's gradient norms and learning rate."""
        for fault in FAULTS:
            for step in range(ONSET):
                assert runs[fault].of("head_grad_norms", step).norms == healthy.of("head_grad_norms", step).norms, fault
                assert runs[fault].of("ppo_update", step).learning_rate == healthy.of("ppo_update", step).learning_rate, fault

    @pytest.mark.parametrize("fault, scale", [("head_grad_scale", 10.0), ("slow_drift", 1.25), ("dead_head", 0.0)])
    def test_the_faulted_head_gradient_is_scaled_from_onset(self, runs, healthy, fault, scale):
        """At the onset step the second sub-action's (count's) norm is the healthy one times the fault's factor; the other heads' are untouched."""
        run = runs[fault]
        assert run.result.returncode == 0, run.result.stdout + run.result.stderr
        norms, expected = run.of("head_grad_norms", ONSET).norms, healthy.of("head_grad_norms", ONSET).norms
        assert norms["count"] == pytest.approx(scale * expected["count"], rel=REL, abs=1e-12)
        assert norms["recall"] == expected["recall"] and norms["value"] == expected["value"]

    def test_dead_head_stays_dead(self, runs):
        """From the onset step on, the dead head's norm is 0 at every update."""
        assert [runs["dead_head"].of("head_grad_norms", step).norms["count"] for step in range(ONSET, 5)] == [0.0, 0.0, 0.0]

    def test_nan_lstm_turns_the_actor_state_nan_at_onset_and_the_trainer_dies(self, runs, healthy):
        """The actor's lstm_health is NaN at the onset step (not before; the critic's never); the next rollout's logits are NaN and SB3 raises."""
        run = runs["nan_lstm"]
        assert [run.of("lstm_health", step, "actor").has_nan for step in range(ONSET + 1)] == [False, False, True]
        assert not run.of("lstm_health", ONSET, "critic").has_nan
        assert run.of("lstm_health", ONSET, "critic").h_norm == healthy.of("lstm_health", ONSET, "critic").h_norm
        assert run.result.returncode != 0 and "Categorical" in run.result.stderr
        assert max(e.step for e in run.events if e.kind == "head_grad_norms") == ONSET  # update 3 trained; rollout 4 died

    def test_lr_spike_shows_in_the_logged_rate(self, runs, healthy):
        """From the onset step, SB3's logged train/learning_rate (ppo_update) and the optimizer's rate are 100 times the healthy run's."""
        run = runs["lr_spike"]
        for step in (ONSET, ONSET + 1):
            assert run.of("ppo_update", step).learning_rate == pytest.approx(100 * healthy.of("ppo_update", step).learning_rate)
            assert run.of("metrics", step).values["optimizer/lr"] == pytest.approx(100 * healthy.of("metrics", step).values["optimizer/lr"])

    def test_lr_ramp_leaves_the_logged_rate_and_ramps_the_optimizer(self, runs, healthy):
        """The logged rate stays the schedule's at every step; the optimizer's is 1.15 ** (u - K + 1) times it from onset."""
        run = runs["lr_ramp"]
        for step in range(5):
            logged = healthy.of("ppo_update", step).learning_rate
            assert run.of("ppo_update", step).learning_rate == logged
            factor = 1.15 ** (step - ONSET + 1) if step >= ONSET else 1.0
            assert run.of("metrics", step).values["optimizer/lr"] == pytest.approx(factor * logged)

    def test_slow_phase_lengthens_the_train_phase_from_onset(self, runs):
        """The train phase of the onset step and after holds the 250 ms sleep."""
        run = runs["slow_phase"]
        assert all(run.of("step_timing", step).phases_ms["train"] >= 250.0 for step in range(ONSET, 5))

    def test_hang_stops_after_the_onset_update_and_goes_on(self, runs):
        """The trainer says it hangs after update 3, then finishes; the hang lies in the rollout of the next step."""
        run = runs["hang"]
        assert run.result.returncode == 0, run.result.stdout + run.result.stderr
        assert "hanging after update 3 for 1.0 s" in run.result.stdout and "update 5/5" in run.result.stdout
        assert run.of("step_timing", ONSET + 1).phases_ms["rollout"] >= 1000 * HANG_S
        assert all(run.of("step_timing", step).phases_ms["rollout"] < 1000 * HANG_S for step in (0, 1, 2, 4))
