"""bench/detection.py --quick: real trainer runs with injected faults, real consumers, replayed logs.

Every fault a test runs must be found: the first alert of one of its expected rules (the benchmark's
own table of them) at or after the onset, within the updates a quick run has after it. No timing is
asserted; the runs' time limit is a hang guard.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from bench.detection import TRAINERS

BENCH = Path(__file__).resolve().parents[2] / "bench" / "detection.py"
RUN_GUARD_S = 1800
"""Hang guard for one quick benchmark (its runs take 1-2 minutes on 2 quiet cores, 6 beside a CPU and disk hog)."""
WINDOW = 8
"""Updates after onset a quick run has (26 updates, onset at update 18): a fault must be found within them."""
HANG_SECONDS = 30
"""How long the hang fault keeps the trainer silent: silent_producer needs 10 s of silence, and a consumer
starved of CPU on a loaded machine must still see the silence before the trainer speaks again."""
PPO_LSTM_FAULTS = ["nan_lstm", "head_grad_scale", "lr_spike", "dead_head", "hang", "lr_ramp"]
"""The ppo_lstm faults a quick run finds. Left to the full benchmark (docs/DETECTION.md): ``slow_drift``
(x1.25 per update) needs more updates after onset than a quick run has, and ``slow_phase`` (250 ms more
in the update phase) is a wall-clock fault that a loaded machine's own jitter hides, as step_time should
let it."""


def quick(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCH), "--quick", "--jobs", "2", "--window", str(WINDOW), *args],
                          capture_output=True, text=True, timeout=RUN_GUARD_S)


def assert_every_fault_found(results: Path) -> dict[str, dict]:
    """Each fault run's first alert from its expected rules came at or after onset, within WINDOW updates.
    Returns the runs by name."""
    runs = {run["run"]: run for run in json.loads((results / "detection.json").read_text())}
    for run in runs.values():
        if run["fault"] is None:
            continue
        expected = TRAINERS[run["trainer"]].fault_rules[run["fault"]]
        hit = next((a for a in run["alerts"] if a["rule"] in expected and a["step"] >= run["onset"]), None)
        assert hit is not None, f"{run['fault']} not found by {expected} from step {run['onset']}: {run['alerts']}"
        assert hit["step"] - run["onset"] <= WINDOW, f"{run['fault']} found by {hit['rule']} at step {hit['step']}, onset {run['onset']}"
    return runs


class TestDetectionBenchmark:
    def test_quick_run_finds_every_fault_and_reports_the_healthy_run(self, tmp_path):
        """--quick exits 0, prints both tables, finds each fault by an expected rule within the run (the NaN
        and the hang at their onset), and writes its logs and results."""
        results = tmp_path / "results"
        result = quick("--faults", *PPO_LSTM_FAULTS, "--hang-seconds", str(HANG_SECONDS), "--results", str(results))
        assert result.returncode == 0, result.stdout + result.stderr
        out = result.stdout
        assert "| fault | onset | expected rule(s) |" in out and "| healthy run | updates |" in out
        assert "| nan_lstm | 18 | non_finite | non_finite @ 18 (critical) | 0 |" in out
        assert "| hang | 18 | silent_producer | silent_producer @ 18 (critical)" in out
        assert f"Rules: 6 of 6 faults found by their expected rules within {WINDOW} updates of onset" in out
        runs = assert_every_fault_found(results)
        assert set(runs) == {"healthy-1", *PPO_LSTM_FAULTS}
        assert all((results / name / "log").is_dir() for name in runs)
        assert (results / "detection.md").read_text().startswith("Machine: ")

    def test_quick_run_of_the_continuous_trainer(self, tmp_path):
        """--trainer ppo_continuous --quick --faults nan_obs lr_ramp: its own sizes and faults, the NaN observation found at onset."""
        results = tmp_path / "results"
        result = quick("--trainer", "ppo_continuous", "--faults", "nan_obs", "lr_ramp", "--results", str(results))
        assert result.returncode == 0, result.stdout + result.stderr
        assert "runs of ppo_continuous.py, 26 updates of 8 x 32 (quick)" in result.stdout
        assert "| nan_obs | 18 | non_finite | non_finite @ 18 (critical) | 0 |" in result.stdout
        assert "| lr_ramp | 18 | update_ratio, approx_kl, clip_fraction |" in result.stdout
        runs = assert_every_fault_found(results)
        assert set(runs) == {"healthy-1", "nan_obs", "lr_ramp"} and {run["trainer"] for run in runs.values()} == {"ppo_continuous"}

    def test_quick_run_of_the_sb3_trainer_then_replay_only(self, tmp_path):
        """--trainer sb3_recurrent_ppo --quick with a seen and an unseen seed: onset update 18 is step 17, the NaN found there;
        --replay-only replays the recorded logs to the same tables without running or touching the results."""
        results = tmp_path / "results"
        result = quick("--trainer", "sb3_recurrent_ppo", "--seed-list", "1,101", "--faults", "nan_lstm", "head_grad_scale",
                       "--results", str(results))
        assert result.returncode == 0, result.stdout + result.stderr
        out = result.stdout
        assert "4 runs of sb3_detection.py, 26 updates of 8 x 16 (quick)" in out
        assert "| nan_lstm | 17 | non_finite | non_finite @ 17 (critical) | 0 |" in out
        assert "| head_grad_scale | 17 | gradient_drift, head_balance, gradient_scale |" in out
        assert "| seed 1 | 26 | 0 |" in out and out.count("| seen |") == 1 and "| seed 101 | 26 | 0 |" in out and out.count("| unseen |") == 1
        assert "over 1 seen seed(s)" in out and "over 1 unseen" in out
        runs = assert_every_fault_found(results)
        assert runs["nan_lstm"]["onset"] == 17 and runs["nan_lstm"]["fault_at"] == 18 and runs["nan_lstm"]["exit_code"] != 0
        recorded = (results / "detection.md").read_text()

        replayed = subprocess.run([sys.executable, str(BENCH), "--replay-only", str(results), "--window", str(WINDOW)],
                                  capture_output=True, text=True, timeout=RUN_GUARD_S)
        assert replayed.returncode == 0, replayed.stdout + replayed.stderr
        assert "replaying 4 recorded runs of sb3_recurrent_ppo" in replayed.stdout and "sb3_detection.py" not in replayed.stdout
        table = lambda text: text[text.index("| fault | onset |"):]  # noqa: E731  (the heading says how it was made)
        assert table(replayed.stdout).strip() == table(recorded).strip()
        assert (results / "detection.md").read_text() == recorded and (results / "replay.md").is_file()

        every = tmp_path / "all"  # what --trainer all writes: one folder per trainer; here the same one twice
        for name in ("first", "second"):
            shutil.copytree(results, every / name)
        replayed = subprocess.run([sys.executable, str(BENCH), "--replay-only", str(every), "--window", str(WINDOW)],
                                  capture_output=True, text=True, timeout=RUN_GUARD_S)
        assert replayed.returncode == 0, replayed.stdout + replayed.stderr
        assert "- first: 2 of 2 faults" in replayed.stdout and "- all trainers: 4 of 4 faults" in replayed.stdout

    def test_a_fault_the_trainer_lacks_is_refused(self):
        """nan_lstm is ppo_lstm's: asked of ppo_continuous, the benchmark stops before running anything, naming the trainer's faults."""
        result = subprocess.run([sys.executable, str(BENCH), "--trainer", "ppo_continuous", "--faults", "nan_lstm"],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 2 and "has no fault nan_lstm" in result.stderr and "nan_obs" in result.stderr

    def test_help_describes_the_options(self):
        """--help exits 0 and names --trainer, --quick, --what-if, --seed-list and --replay-only."""
        result = subprocess.run([sys.executable, str(BENCH), "--help"], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        for option in ("--trainer", "--quick", "--what-if", "--seed-list", "--seeds-from", "--replay-only"):
            assert option in result.stdout
