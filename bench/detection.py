"""Detection benchmark: injected faults on an example trainer, found (or not) by the default rules.

Runs a trainer on the CPU, as subprocesses: healthy runs over several seeds and one run per fault.
``--trainer ppo_lstm`` (the default) is the reference recurrent PPO, ``examples/ppo_lstm.py``, with
the faults ``nan_lstm``, ``head_grad_scale``, ``lr_spike``, ``slow_drift``, ``dead_head``,
``slow_phase``, ``hang`` and ``lr_ramp``. ``--trainer ppo_continuous`` is the feed-forward Gaussian
PPO, ``examples/ppo_continuous.py``, which measures its gradients on every minibatch (many
``head_grad_norms`` events per update, one step) and has the same faults but ``nan_obs`` (a NaN
observation) in place of ``nan_lstm``. Each run records its own log with a real ``simic-consumer`` (the trainer's
``--spawn-consumer`` sidecar, one per run, logs under ``RESULTS/<run>/log``). Then every log is
replayed with ``simic-consumer replay --json`` and the default configuration, and read once more
for the seed rule alone: the seed plan's ``GradientEMATracker(momentum=0.99)`` and
``AnomalyDetector.check_gradient_drift(drift_threshold=0.5)`` on every pre-clip ``head_grad_norms``
event (total norm, and grad health as the ``gradient_drift`` rule defines it), seeded by the first
update and judged from the second, each drifting update one report, as the seed plan ran it (no
warmup, no consecutive count, no hysteresis). A non-finite norm, on which the seed tracker raises
``ValueError``, counts as a report.

Steps and updates: the trainer's ``step`` is its update number (from 1), and every event of update
``u`` carries step ``u``. A fault with onset ``K`` is active from update K's own events on, so the
detection delay is ``alert step - K`` updates (0: flagged on the onset update's events). For
``hang`` the trainer stops after sending update K: the silent-producer alert is about the last step
heard (K) and comes ``min_silence_s`` later in wall time (the seconds are in the table).

    .venv/bin/python bench/detection.py                 # 5 healthy seeds + 8 faults, about 5 minutes on 2 cores
    .venv/bin/python bench/detection.py --quick         # smoke run: 1 healthy seed, small runs, about a minute
    .venv/bin/python bench/detection.py --trainer ppo_continuous --jobs 2   # the feed-forward Gaussian PPO
    .venv/bin/python bench/detection.py --what-if bench/seed-drift.toml   # also: what other thresholds would say

``--what-if FILE`` replays the same logs once more with that configuration (the consumer's
what-if replay) and adds its table.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

FAULT_RULES = {
    "nan_lstm": ("non_finite",),
    "head_grad_scale": ("gradient_drift", "head_balance", "gradient_scale"),
    "lr_spike": ("approx_kl", "ppo_ratio"),
    "slow_drift": ("gradient_drift", "head_balance", "gradient_scale"),
    "dead_head": ("head_balance",),
    "slow_phase": ("step_time",),
    "hang": ("silent_producer",),
    "lr_ramp": ("approx_kl", "ppo_ratio", "gradient_drift", "gradient_scale"),
}
"""The rules expected to report each fault on ppo_lstm (the first of their alerts at or after onset
counts). For ``lr_ramp`` (the optimizer's rate grows x1.15 per update, the logged rate does not) these
are the rules that could see it, not yet measured ones: the policy moving further per update
(``approx_kl``, ``ppo_ratio``) and the gradients of a policy pushed off course (``gradient_drift``,
``gradient_scale``)."""

CONTINUOUS_FAULT_RULES = {
    "nan_obs": ("non_finite",),
    "head_grad_scale": ("gradient_drift", "head_balance", "gradient_scale"),
    "lr_spike": ("approx_kl",),
    "slow_drift": ("gradient_drift", "head_balance", "gradient_scale"),
    "dead_head": ("head_balance",),
    "slow_phase": ("step_time",),
    "hang": ("silent_producer",),
    "lr_ramp": ("approx_kl", "gradient_drift", "gradient_scale"),
}
"""The same for ppo_continuous: ``nan_obs`` in place of ``nan_lstm``, and no ``ppo_ratio`` (the
trainer logs what CleanRL's continuous PPO logs, without the ratio's extremes)."""


@dataclass(frozen=True)
class Size:
    num_envs: int
    num_steps: int
    updates: int
    """updates per run"""
    onset: int
    """the update a fault starts at"""

    @property
    def trainer_args(self) -> list[str]:
        return ["--num-envs", str(self.num_envs), "--num-steps", str(self.num_steps),
                "--total-timesteps", str(self.num_envs * self.num_steps * self.updates)]


@dataclass(frozen=True)
class Trainer:
    script: Path
    fault_rules: dict[str, tuple[str, ...]]
    """The faults it can inject, each with its expected rules."""
    sizes: dict[str, Size]
    """``full`` and ``quick``."""


TRAINERS = {
    "ppo_lstm": Trainer(ROOT / "examples" / "ppo_lstm.py", FAULT_RULES,
                        {"full": Size(32, 32, 100, 40), "quick": Size(8, 16, 26, 18)}),
    "ppo_continuous": Trainer(ROOT / "examples" / "ppo_continuous.py", CONTINUOUS_FAULT_RULES,
                              {"full": Size(16, 64, 100, 40), "quick": Size(8, 32, 26, 18)}),
}
"""The trainers ``--trainer`` picks from, with their faults and sizes (the batch is environments x steps)."""


@dataclass
class Run:
    name: str
    seed: int
    fault: str | None
    onset: int | None
    directory: Path
    exit_code: int | None = None
    wall_s: float = 0.0
    alerts: list[dict] = field(default_factory=list)
    what_if: list[dict] = field(default_factory=list)
    seed_reports: list[int] = field(default_factory=list)
    """Steps the seed rule flagged, each once."""
    summary: dict = field(default_factory=dict)

    @property
    def log(self) -> Path:
        return self.directory / "log"


def train(run: Run, args: argparse.Namespace, trainer: Trainer, size: Size) -> Run:
    """One trainer process with its own sidecar consumer; its output goes to RESULTS/<run>/trainer.out."""
    run.directory.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-W", "ignore:Failed to initialize NumPy", str(trainer.script), *size.trainer_args,
        "--seed", str(run.seed), "--run-id", run.name,
        "--spawn-consumer", "--telemetry-dir", str(run.log), "--print-every", "10",
    ]
    if run.fault:
        command += ["--fault", run.fault, "--fault-at", str(run.onset), "--hang-seconds", str(args.hang_seconds)]
    started = time.monotonic()
    with open(run.directory / "trainer.out", "w") as out:
        run.exit_code = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT).returncode
    run.wall_s = time.monotonic() - started
    return run


def replay(run: Run, config: Path | None = None) -> list[dict]:
    """The alerts (not their "cleared" counterparts) of ``simic-consumer replay --json`` on the run's log."""
    command = [sys.executable, "-m", "simic.consumer", "replay", str(run.log), "--json"]
    if config is not None:
        command += ["--config", str(config)]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    run.summary = lines[-1]
    return [line for line in lines if line["type"] == "alert" and not line["cleared"]]


def seed_rule(run: Run, floor: float = 1e-8) -> list[int]:
    """The steps the seed plan's drift check flags, from the head_grad_norms events of the run's log.

    Every event is judged (ppo_continuous sends one per minibatch, several per step); a step counts
    once however many of its events were flagged, so the counts are of updates.
    """
    from simic.consumer import AnomalyDetector, GradientEMATracker
    from simic.schemas import decode_message
    from simic.schemas.eventlog import FRAME_MESSAGE, LogReader, segment_paths

    tracker, detector, flagged = GradientEMATracker(momentum=0.99), AnomalyDetector(), []
    for path in segment_paths(run.log):
        for frame in LogReader(path):
            if frame.type != FRAME_MESSAGE:
                continue
            for event in decode_message(frame.payload).events:
                if event.kind != "head_grad_norms" or event.stage == "post_clip" or event.total is None:
                    continue
                norms = list(event.norms.values())
                health = sum(1 for v in norms if v is not None and floor < v < float("inf")) / len(norms) if norms else 1.0
                try:
                    metrics = tracker.update(event.total, health)
                except ValueError:  # the seed tracker refuses a NaN/Inf norm: the run is visibly broken
                    flagged.append(event.step)
                    continue
                if detector.check_gradient_drift(metrics["norm_drift"], metrics["health_drift"], 0.5).has_anomaly:
                    flagged.append(event.step)
    return list(dict.fromkeys(flagged))


def first(alerts: list[dict], rules: tuple[str, ...] | None, from_step: int) -> dict | None:
    return next((a for a in alerts if (rules is None or a["rule"] in rules) and a["step"] >= from_step), None)


def by_rule(alerts: list[dict]) -> str:
    counts: dict[str, int] = {}
    for alert in alerts:
        counts[alert["rule"]] = counts.get(alert["rule"], 0) + 1
    return ", ".join(f"{rule} {n}" for rule, n in counts.items()) or "none"


def delay_cell(alert: dict | None, onset: int, window: int) -> str:
    if alert is None:
        return "missed"
    delay = alert["step"] - onset
    return f"{delay}" + ("" if delay <= window else f" (> {window})")


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, Python {platform.python_version()}, "
            f"torch {version('torch')}, simic-telemetry {version('simic-telemetry')}")


def report(healthy: list[Run], faulty: list[Run], window: int, fault_rules: dict[str, tuple[str, ...]], what_if: bool = False) -> str:
    """The fault table and the healthy-run table, for the default alerts (or the what-if ones)."""
    alerts_of = (lambda run: run.what_if) if what_if else (lambda run: run.alerts)
    out = [
        "| fault | onset | expected rule(s) | first expected alert | delay (updates) | other rules from onset | alerts before onset | seed rule: delay |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in faulty:
        expected = fault_rules[run.fault]
        hit = first(alerts_of(run), expected, run.onset)
        shown = "none"
        if hit is not None:
            shown = f"{hit['rule']} @ {hit['step']} ({hit['severity']})"
            if run.fault == "hang" and "silent_s" in hit["values"]:
                shown += f", {hit['values']['silent_s']:.1f} s silent"
        others = []
        for alert in alerts_of(run):
            if alert["step"] >= run.onset and alert["rule"] not in expected and alert["rule"] not in [o[0] for o in others]:
                others.append((alert["rule"], alert["step"]))
        before = [a for a in alerts_of(run) if a["step"] < run.onset]
        seed_hit = next((step for step in run.seed_reports if step >= run.onset), None)
        out.append(
            f"| {run.fault} | {run.onset} | {', '.join(expected)} | {shown} | {delay_cell(hit, run.onset, window)} | "
            f"{', '.join(f'{r} @ {s}' for r, s in others) or 'none'} | {by_rule(before) if before else 0} | "
            f"{'missed' if seed_hit is None else seed_hit - run.onset} ({sum(1 for step in run.seed_reports if step < run.onset)} flagged before onset) |"
        )
    out += ["", "| healthy run | updates | exit | alerts | seed rule: updates flagged |", "|---|---|---|---|---|"]
    updates_total = 0
    for run in healthy:
        updates = max((s.get("last_step") or 0 for s in run.summary.get("runs", {}).get(run.name, [])), default=0)
        updates_total += updates
        out.append(f"| seed {run.seed} | {updates} | {run.exit_code} | {by_rule(alerts_of(run))} | {len(run.seed_reports)} |")
    total = sum(len(alerts_of(run)) for run in healthy)
    seed_total = sum(len(run.seed_reports) for run in healthy)
    detected = sum(1 for run in faulty if (hit := first(alerts_of(run), fault_rules[run.fault], run.onset)) and hit["step"] - run.onset <= window)
    seed_detected = sum(1 for run in faulty if any(0 <= step - run.onset <= window for step in run.seed_reports))
    out += [
        "",
        f"Rules: {detected} of {len(faulty)} faults found by their expected rules within {window} updates of onset; "
        f"{total} alert(s) over {len(healthy)} healthy runs ({updates_total} updates).",
        f"Seed rule alone: {seed_detected} of {len(faulty)} faults flagged within {window} updates of onset; "
        f"{seed_total} of {updates_total} healthy updates flagged.",
    ]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--results", type=Path, default=Path("detection-results"), help="directory for logs and outputs (emptied first)")
    parser.add_argument("--seeds", type=int, default=5, help="healthy runs, seeds 1..N (default 5)")
    parser.add_argument("--trainer", choices=sorted(TRAINERS), default="ppo_lstm",
                        help="the trainer to run (default ppo_lstm): examples/ppo_lstm.py or examples/ppo_continuous.py")
    parser.add_argument("--faults", nargs="*", choices=sorted(FAULT_RULES.keys() | CONTINUOUS_FAULT_RULES.keys()),
                        help="faults to inject (default: all of the trainer's)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs at once (default 1: a concurrent run's start-up slows the other one's steps, which step_time would rightly see)")
    parser.add_argument("--window", type=int, default=5, help="updates after onset a detection must come within (default 5)")
    parser.add_argument("--hang-seconds", type=float, default=14.0, help="how long the hang fault stops the trainer (default 14: silent_producer waits 10 s)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 healthy seed, small environments, short runs (about a minute)")
    parser.add_argument("--what-if", type=Path, metavar="CONFIG", help="also replay every log with this consumer configuration (TOML) and report it")
    args = parser.parse_args(argv)
    trainer = TRAINERS[args.trainer]
    if args.faults is None:
        args.faults = list(trainer.fault_rules)
    elif unknown := [fault for fault in args.faults if fault not in trainer.fault_rules]:
        parser.error(f"--trainer {args.trainer} has no fault {', '.join(unknown)} (its faults: {', '.join(trainer.fault_rules)})")
    size_name = "quick" if args.quick else "full"
    if args.quick and "--seeds" not in (argv if argv is not None else sys.argv[1:]):
        args.seeds = 1
    size = trainer.sizes[size_name]
    updates, onset = size.updates, size.onset
    command = ("python bench/detection.py" + (f" --trainer {args.trainer}" if args.trainer != "ppo_lstm" else "")
               + (" --quick" if args.quick else "") + (f" --what-if {args.what_if}" if args.what_if else ""))

    started = time.monotonic()
    shutil.rmtree(args.results, ignore_errors=True)
    args.results.mkdir(parents=True)

    healthy = [Run(f"healthy-{seed}", seed, None, None, args.results / f"healthy-{seed}") for seed in range(1, args.seeds + 1)]
    faulty = [Run(fault, 1, fault, onset, args.results / fault) for fault in args.faults]
    runs = healthy + faulty
    print(f"{len(runs)} runs of {trainer.script.name}, {updates} updates of {size.num_envs} x {size.num_steps} ({size_name}), "
          f"{args.jobs} at a time; logs under {args.results}/", flush=True)
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for run in pool.map(lambda r: train(r, args, trainer, size), runs):
            print(f"  {run.name}: exit {run.exit_code} in {run.wall_s:.1f} s", flush=True)
    for run in runs:
        run.alerts = replay(run)
        run.seed_reports = seed_rule(run)
        if args.what_if:
            run.what_if = replay(run, args.what_if)

    table = "\n".join([f"Machine: {machine()}", f"Command: `{command}` ({time.monotonic() - started:.0f} s)", "",
                        "Default configuration:", "", report(healthy, faulty, args.window, trainer.fault_rules)])
    if args.what_if:
        table += f"\n\nWith {args.what_if} (what-if replay of the same logs):\n\n" + report(healthy, faulty, args.window, trainer.fault_rules, what_if=True)
    (args.results / "detection.md").write_text(table + "\n")
    (args.results / "detection.json").write_text(json.dumps(
        [{"run": r.name, "trainer": args.trainer, "seed": r.seed, "fault": r.fault, "onset": r.onset, "exit_code": r.exit_code,
          "alerts": r.alerts, "what_if_alerts": r.what_if, "seed_rule_steps": r.seed_reports} for r in runs], indent=1))
    print()
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
