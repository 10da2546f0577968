"""Detection benchmark: injected faults on an example trainer, found (or not) by the default rules.

Runs a trainer on the CPU, as subprocesses: healthy runs over several seeds and one run per fault.
``--trainer ppo_lstm`` (the default) is the reference recurrent PPO, ``examples/ppo_lstm.py``, with
the faults ``nan_lstm``, ``head_grad_scale``, ``lr_spike``, ``slow_drift``, ``dead_head``,
``slow_phase``, ``hang`` and ``lr_ramp``. ``--trainer ppo_continuous`` is the feed-forward Gaussian
PPO, ``examples/ppo_continuous.py``, which measures its gradients on every minibatch (many
``head_grad_norms`` events per update, one step) and has the same faults but ``nan_obs`` (a NaN
observation) in place of ``nan_lstm``. ``--trainer sb3_recurrent_ppo`` is sb3-contrib's RecurrentPPO
of ``examples/sb3_recurrent_ppo.py`` watched by ``SimicCallback`` alone, its faults injected by
``examples/sb3_detection.py`` (the same eight as ppo_lstm's). ``--trainer all`` runs each in turn.
Each run records its own log with a real ``simic-consumer`` (the trainer's ``--spawn-consumer``
sidecar, one per run, logs under ``RESULTS/<run>/log``). Then every log is
replayed with ``simic-consumer replay --json`` and the default configuration, and read once more
for the seed rule alone: the seed plan's ``GradientEMATracker(momentum=0.99)`` and
``AnomalyDetector.check_gradient_drift(drift_threshold=0.5)`` on every pre-clip ``head_grad_norms``
event (total norm, and grad health as the ``gradient_drift`` rule defines it), seeded by the first
update and judged from the second, each drifting update one report, as the seed plan ran it (no
warmup, no consecutive count, no hysteresis). A non-finite norm, on which the seed tracker raises
``ValueError``, counts as a report.

Steps and updates: a fault's onset ``K`` is an update, counted from 1 (``--fault-at K``), and it is
active from update K's own events on. The trainers number steps differently: ppo_lstm's and
ppo_continuous's ``step`` is the update number (update u is step u), SimicCallback's counts from 0
(update u is step u - 1). The tables give the onset as the step of update K's events (40 for
ppo_lstm, 39 for sb3_recurrent_ppo), so the detection delay is ``alert step - onset step`` updates
for every trainer (0: flagged on the onset update's events). For ``hang`` the trainer stops after
sending update K: the silent-producer alert is about the last step heard (the onset step) and comes
``min_silence_s`` later in wall time (the seconds are in the table).

Healthy seeds: ``--seeds N`` runs seeds 1..N (``--seeds-from S``: S..S+N-1), ``--seed-list 1-5,101-105``
any set. Seeds in ``--tuning-seeds`` (default 1-5, those the defaults were chosen on) are "seen",
the others "unseen": the healthy table says which, and the summary counts alerts for each apart.

    .venv/bin/python bench/detection.py                 # 5 healthy seeds + 8 faults, about 5 minutes on 2 cores
    .venv/bin/python bench/detection.py --quick         # smoke run: 1 healthy seed, small runs, about a minute
    .venv/bin/python bench/detection.py --trainer ppo_continuous --jobs 2   # the feed-forward Gaussian PPO
    .venv/bin/python bench/detection.py --trainer all --seed-list 1-5,101-105 --jobs 2   # every trainer, seen and unseen seeds
    .venv/bin/python bench/detection.py --what-if bench/seed-drift.toml   # also: what other thresholds would say
    .venv/bin/python bench/detection.py --replay-only detection-results   # the recorded logs, today's rules

``--what-if FILE`` replays the same logs once more with that configuration (the consumer's
what-if replay) and adds its table. ``--replay-only DIR`` runs no trainer: it replays the logs a
previous run recorded under DIR (one trainer's ``detection.json`` and run folders, or ``--trainer
all``'s folder of them) with the rules as they are now, prints the tables and writes them to
``DIR/replay.md`` and ``DIR/replay.json``, leaving the recorded results as they were. That is what
makes trying a rule change fast: a minute of replays instead of the runs.
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
    "lr_spike": ("approx_kl", "ppo_ratio", "clip_fraction", "update_ratio"),
    "slow_drift": ("gradient_drift", "head_balance", "gradient_scale"),
    "dead_head": ("head_balance",),
    "slow_phase": ("step_time",),
    "hang": ("silent_producer",),
    "lr_ramp": ("update_ratio", "approx_kl", "ppo_ratio", "clip_fraction"),
}
"""The rules expected to report each fault on ppo_lstm (the first of their alerts at or after onset
counts). ``lr_ramp`` (the optimizer's rate grows x1.15 per update, the logged rate does not) is
``update_ratio``'s: the step size the logged rate does not explain; the policy moving further per
update (``approx_kl``, ``ppo_ratio``, ``clip_fraction``) shows it later."""

SB3_FAULT_RULES = {fault: tuple(rule for rule in expected if rule != "ppo_ratio") for fault, expected in FAULT_RULES.items()}
"""The same for sb3_recurrent_ppo: ppo_lstm's faults, and no ``ppo_ratio`` (SimicCallback sends what
SB3 logs, which has no ratio extremes). Its ``lr_ramp`` leaves ``train/learning_rate`` as scheduled;
the watch's ``param_updates`` show the larger steps."""

CONTINUOUS_FAULT_RULES = {("nan_obs" if fault == "nan_lstm" else fault): expected for fault, expected in SB3_FAULT_RULES.items()}
"""The same for ppo_continuous: ``nan_obs`` in place of ``nan_lstm``, and no ``ppo_ratio`` (the
trainer logs what CleanRL's continuous PPO logs, without the ratio's extremes)."""


@dataclass(frozen=True)
class Size:
    num_envs: int
    num_steps: int
    updates: int
    """updates per run"""
    onset: int
    """the update a fault starts at (counted from 1)"""

    @property
    def trainer_args(self) -> list[str]:
        """The command line of a CleanRL-shaped trainer (ppo_lstm.py, ppo_continuous.py)."""
        return ["--num-envs", str(self.num_envs), "--num-steps", str(self.num_steps),
                "--total-timesteps", str(self.num_envs * self.num_steps * self.updates)]


@dataclass(frozen=True)
class SB3Size(Size):
    batch_size: int = 64
    n_epochs: int = 4

    @property
    def trainer_args(self) -> list[str]:
        """The command line of sb3_detection.py (SB3's names: n_envs, n_steps, batch_size, n_epochs)."""
        return ["--n-envs", str(self.num_envs), "--n-steps", str(self.num_steps), "--batch-size", str(self.batch_size),
                "--n-epochs", str(self.n_epochs), "--updates", str(self.updates)]


@dataclass(frozen=True)
class Trainer:
    script: Path
    fault_rules: dict[str, tuple[str, ...]]
    """The faults it can inject, each with its expected rules."""
    sizes: dict[str, Size]
    """``full`` and ``quick``."""
    first_step: int = 1
    """The step of update 1's events: 1 where the step is the update number, 0 for SimicCallback."""

    def onset_step(self, update: int) -> int:
        """The step update ``update``'s events carry (counted from 1, as ``--fault-at``)."""
        return update - 1 + self.first_step


TRAINERS = {
    "ppo_lstm": Trainer(ROOT / "examples" / "ppo_lstm.py", FAULT_RULES,
                        {"full": Size(32, 32, 100, 40), "quick": Size(8, 16, 26, 18)}),
    "ppo_continuous": Trainer(ROOT / "examples" / "ppo_continuous.py", CONTINUOUS_FAULT_RULES,
                              {"full": Size(16, 64, 100, 40), "quick": Size(8, 32, 26, 18)}),
    "sb3_recurrent_ppo": Trainer(ROOT / "examples" / "sb3_detection.py", SB3_FAULT_RULES,
                                 {"full": SB3Size(8, 32, 100, 40), "quick": SB3Size(8, 16, 26, 18)}, first_step=0),
}
"""The trainers ``--trainer`` picks from, with their faults and sizes (the batch is environments x steps)."""


@dataclass
class Run:
    name: str
    seed: int
    fault: str | None
    onset: int | None
    """the step of the onset update's events (see "Steps and updates" above)"""
    directory: Path
    fault_at: int | None = None
    """the onset update, counted from 1: the trainer's ``--fault-at``"""
    seen: bool = False
    """a healthy seed among ``--tuning-seeds``"""
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
        command += ["--fault", run.fault, "--fault-at", str(run.fault_at), "--hang-seconds", str(args.hang_seconds)]
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
    """Alerts counted by rule; a notice (severity info, such as ``step_time``'s lasting slowdown of the whole
    machine) is counted as an alert too, marked "(info)"."""
    counts: dict[str, int] = {}
    for alert in alerts:
        key = alert["rule"] + (" (info)" if alert.get("severity") == "info" else "")
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{rule.replace(' (info)', '')} {n}{' (info)' if rule.endswith(' (info)') else ''}"
                     for rule, n in counts.items()) or "none"


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


@dataclass
class Score:
    """What one table sums up, to add over trainers."""

    found: int = 0
    """faults found by their expected rules within the window"""
    faults: int = 0
    alerts: dict[bool, int] = field(default_factory=lambda: {True: 0, False: 0})
    """alerts on healthy runs, by seen (True) and unseen (False) seed"""
    runs: dict[bool, int] = field(default_factory=lambda: {True: 0, False: 0})
    """healthy runs, by seen and unseen seed"""

    def __add__(self, other: "Score") -> "Score":
        return Score(self.found + other.found, self.faults + other.faults,
                     {k: self.alerts[k] + other.alerts[k] for k in (True, False)},
                     {k: self.runs[k] + other.runs[k] for k in (True, False)})

    def line(self, window: int) -> str:
        return (f"{self.found} of {self.faults} faults found by their expected rules within {window} updates of onset; "
                f"{sum(self.alerts.values())} alert(s) over {sum(self.runs.values())} healthy runs "
                f"({self.alerts[True]} over {self.runs[True]} seen seed(s), {self.alerts[False]} over {self.runs[False]} unseen).")


def report(healthy: list[Run], faulty: list[Run], window: int, trainer: Trainer, what_if: bool = False) -> tuple[str, Score]:
    """The fault table and the healthy-run table, for the default alerts (or the what-if ones), and their score."""
    fault_rules = trainer.fault_rules
    alerts_of = (lambda run: run.what_if) if what_if else (lambda run: run.alerts)
    out = [
        "| fault | onset | expected rule(s) | first expected alert | delay (updates) | other rules from onset | alerts before onset | seed rule: delay |",
        "|---|---|---|---|---|---|---|---|",
    ]
    twins = {run.seed: run for run in healthy}  # the healthy run each fault run is, bit for bit, until onset
    shared = False
    for run in faulty:
        expected = fault_rules[run.fault]
        hit = first(alerts_of(run), expected, run.onset)
        shown = "none"
        if hit is not None:
            shown = f"{hit['rule']} @ {hit['step']} ({hit['severity']})"
            if run.fault == "hang" and "silent_s" in hit["values"]:
                shown += f", {hit['values']['silent_s']:.1f} s silent"
            twin = twins.get(run.seed)
            if twin is not None and any(a["rule"] == hit["rule"] and a["step"] == hit["step"] for a in alerts_of(twin)):
                shown += f", also in healthy seed {run.seed}"
                shared = True
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
    if shared:
        out += ["", "\"also in healthy seed N\": the healthy run of the fault run's seed raised the same rule at the same step, "
                "so that alert may owe nothing to the fault (it still counts as found below)."]
    out += ["", "| healthy run | updates | exit | alerts | seed rule: updates flagged | seed set |", "|---|---|---|---|---|---|"]
    score = Score(faults=len(faulty))
    updates_total = 0
    for run in healthy:
        last = max((s["last_step"] for s in run.summary.get("runs", {}).get(run.name, []) if s.get("last_step") is not None), default=None)
        updates = 0 if last is None else last - trainer.first_step + 1
        updates_total += updates
        score.alerts[run.seen] += len(alerts_of(run))
        score.runs[run.seen] += 1
        out.append(f"| seed {run.seed} | {updates} | {run.exit_code} | {by_rule(alerts_of(run))} | {len(run.seed_reports)} | "
                   f"{'seen' if run.seen else 'unseen'} |")
    seed_total = sum(len(run.seed_reports) for run in healthy)
    score.found = sum(1 for run in faulty if (hit := first(alerts_of(run), fault_rules[run.fault], run.onset)) and hit["step"] - run.onset <= window)
    seed_detected = sum(1 for run in faulty if any(0 <= step - run.onset <= window for step in run.seed_reports))
    out += [
        "",
        f"Rules: {score.found} of {len(faulty)} faults found by their expected rules within {window} updates of onset; "
        f"{sum(score.alerts.values())} alert(s) over {len(healthy)} healthy runs ({updates_total} updates): "
        f"{score.alerts[True]} over {score.runs[True]} seen seed(s), {score.alerts[False]} over {score.runs[False]} unseen.",
        f"Seed rule alone: {seed_detected} of {len(faulty)} faults flagged within {window} updates of onset; "
        f"{seed_total} healthy update(s) flagged.",
    ]
    return "\n".join(out), score


def seed_list(text: str) -> list[int]:
    """``1-5,101-105`` -> 1, 2, 3, 4, 5, 101, ..., 105 (ranges inclusive, in the order given)."""
    seeds: list[int] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        low, _, high = part.partition("-")
        seeds += range(int(low), int(high or low) + 1)
    if not seeds:
        raise argparse.ArgumentTypeError(f"no seeds in {text!r}")
    return list(dict.fromkeys(seeds))


def evaluate(runs: list[Run], what_if: Path | None) -> None:
    """Replay every run's log with the default configuration (and ``what_if``), and apply the seed rule."""
    for run in runs:
        run.alerts = replay(run)
        run.seed_reports = seed_rule(run)
        if what_if:
            run.what_if = replay(run, what_if)


def tables(name: str, healthy: list[Run], faulty: list[Run], args: argparse.Namespace, heading: list[str]) -> tuple[str, Score]:
    """One trainer's tables under ``heading``: the default configuration's, and the what-if one's when asked."""
    trainer = TRAINERS[name]
    text, score = report(healthy, faulty, args.window, trainer)
    lines = [*heading, ""]
    if trainer.first_step == 0:
        lines += ["Steps count from 0 (SimicCallback): update u is step u - 1, so onset update K is step K - 1 (the onset column).", ""]
    lines += ["Default configuration:", "", text]
    if args.what_if:
        lines += ["", f"With {args.what_if} (what-if replay of the same logs):", "",
                  report(healthy, faulty, args.window, trainer, what_if=True)[0]]
    return "\n".join(lines), score


def records(name: str, size_name: str, runs: list[Run]) -> list[dict]:
    return [{"run": r.name, "trainer": name, "size": size_name, "seed": r.seed, "seen": r.seen, "fault": r.fault,
             "onset": r.onset, "fault_at": r.fault_at, "exit_code": r.exit_code, "wall_s": round(r.wall_s, 1),
             "alerts": r.alerts, "what_if_alerts": r.what_if, "seed_rule_steps": r.seed_reports} for r in runs]


def bench(name: str, args: argparse.Namespace, directory: Path, faults: list[str], seeds: list[int], size_name: str) -> tuple[str, Score]:
    """Run one trainer's healthy and faulty runs into ``directory``, replay them, write and return its tables."""
    trainer = TRAINERS[name]
    size = trainer.sizes[size_name]
    started = time.monotonic()
    directory.mkdir(parents=True, exist_ok=True)
    healthy = [Run(f"healthy-{seed}", seed, None, None, directory / f"healthy-{seed}", seen=seed in args.tuning_seeds) for seed in seeds]
    faulty = [Run(fault, 1, fault, trainer.onset_step(size.onset), directory / fault, fault_at=size.onset) for fault in faults]
    runs = healthy + faulty
    print(f"{len(runs)} runs of {trainer.script.name}, {size.updates} updates of {size.num_envs} x {size.num_steps} ({size_name}), "
          f"{args.jobs} at a time; logs under {directory}/", flush=True)
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for run in pool.map(lambda r: train(r, args, trainer, size), runs):
            print(f"  {run.name}: exit {run.exit_code} in {run.wall_s:.1f} s", flush=True)
    evaluate(runs, args.what_if)
    command = ("python bench/detection.py" + (f" --trainer {name}" if name != "ppo_lstm" else "")
               + (" --quick" if args.quick else "") + (f" --what-if {args.what_if}" if args.what_if else ""))
    table, score = tables(name, healthy, faulty, args, [f"Machine: {machine()}", f"Command: `{command}` ({time.monotonic() - started:.0f} s)"])
    (directory / "detection.md").write_text(table + "\n")
    (directory / "detection.json").write_text(json.dumps(records(name, size_name, runs), indent=1))
    return table, score


def replay_recorded(directory: Path, args: argparse.Namespace) -> tuple[str, Score]:
    """Re-evaluate the runs a previous benchmark recorded in ``directory`` (its detection.json) with today's rules."""
    started = time.monotonic()
    recorded = json.loads((directory / "detection.json").read_text())
    name = recorded[0]["trainer"]
    runs = [Run(r["run"], r["seed"], r["fault"], r["onset"], directory / r["run"], fault_at=r.get("fault_at", r["onset"]),
                seen=r["fault"] is None and r["seed"] in args.tuning_seeds, exit_code=r["exit_code"], wall_s=r.get("wall_s", 0.0))
            for r in recorded]
    print(f"replaying {len(runs)} recorded runs of {name} under {directory}/", flush=True)
    evaluate(runs, args.what_if)
    healthy, faulty = [r for r in runs if r.fault is None], [r for r in runs if r.fault is not None]
    command = f"python bench/detection.py --replay-only {directory}" + (f" --what-if {args.what_if}" if args.what_if else "")
    table, score = tables(name, healthy, faulty, args, [
        f"Machine: {machine()}", f"Command: `{command}` ({time.monotonic() - started:.0f} s): the logs of {len(runs)} recorded "
        f"runs of {name} ({recorded[0].get('size', 'full')} size), today's rules"])
    (directory / "replay.md").write_text(table + "\n")
    (directory / "replay.json").write_text(json.dumps(records(name, recorded[0].get("size", "full"), runs), indent=1))
    return table, score


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--results", type=Path, default=Path("detection-results"),
                        help="directory for logs and outputs (emptied first; --trainer all: one folder per trainer in it)")
    parser.add_argument("--seeds", type=int, default=5, help="healthy runs, seeds 1..N (default 5)")
    parser.add_argument("--seeds-from", type=int, default=1, metavar="S", help="the first healthy seed of --seeds: S..S+N-1 (default 1)")
    parser.add_argument("--seed-list", type=seed_list, metavar="SEEDS", help="the healthy seeds, as 1-5,101-105 (replaces --seeds and --seeds-from)")
    parser.add_argument("--tuning-seeds", type=seed_list, default=seed_list("1-5"), metavar="SEEDS",
                        help="the healthy seeds rules were tuned on, reported as seen; the others as unseen (default 1-5)")
    parser.add_argument("--trainer", choices=[*sorted(TRAINERS), "all"], default="ppo_lstm",
                        help="the trainer to run (default ppo_lstm): examples/ppo_lstm.py, examples/ppo_continuous.py, "
                             "examples/sb3_detection.py (sb3_recurrent_ppo), or all of them in turn")
    parser.add_argument("--faults", nargs="*", choices=sorted(set().union(*(t.fault_rules for t in TRAINERS.values()))),
                        help="faults to inject (default: all of the trainer's; --trainer all: each trainer's of these)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs at once (default 1: a concurrent run's start-up slows the other one's steps, which step_time would rightly see)")
    parser.add_argument("--window", type=int, default=5, help="updates after onset a detection must come within (default 5)")
    parser.add_argument("--hang-seconds", type=float, default=14.0, help="how long the hang fault stops the trainer (default 14: silent_producer waits 10 s)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 healthy seed, small environments, short runs (about a minute)")
    parser.add_argument("--what-if", type=Path, metavar="CONFIG", help="also replay every log with this consumer configuration (TOML) and report it")
    parser.add_argument("--replay-only", type=Path, metavar="DIR",
                        help="run nothing: replay the logs a previous run recorded under DIR with today's rules (writes DIR/replay.md, replay.json)")
    args = parser.parse_args(argv)
    names = list(TRAINERS) if args.trainer == "all" else [args.trainer]
    combined: list[tuple[str, Score]] = []

    if args.replay_only is not None:
        single = (args.replay_only / "detection.json").is_file()
        directories = [args.replay_only] if single else sorted(d for d in args.replay_only.iterdir() if (d / "detection.json").is_file())
        if not directories:
            parser.error(f"--replay-only {args.replay_only}: no detection.json in it or in its folders (a benchmark's --results)")
        for directory in directories:
            table, score = replay_recorded(directory, args)
            combined.append((directory.name, score))
            print(f"\n{table}\n", flush=True)
    else:
        faults = args.faults
        if faults is not None and (unknown := [f for f in faults if not any(f in TRAINERS[n].fault_rules for n in names)]):
            parser.error(f"--trainer {args.trainer} has no fault {', '.join(unknown)} (its faults: "
                         f"{', '.join(dict.fromkeys(f for n in names for f in TRAINERS[n].fault_rules))})")
        given = argv if argv is not None else sys.argv[1:]
        if args.seed_list is not None:
            seeds = args.seed_list
        else:
            count = 1 if args.quick and "--seeds" not in given else args.seeds
            seeds = list(range(args.seeds_from, args.seeds_from + count))
        size_name = "quick" if args.quick else "full"
        shutil.rmtree(args.results, ignore_errors=True)
        args.results.mkdir(parents=True)
        for name in names:
            own = [f for f in TRAINERS[name].fault_rules if faults is None or f in faults]
            directory = args.results / name if args.trainer == "all" else args.results
            table, score = bench(name, args, directory, own, seeds, size_name)
            combined.append((name, score))
            print(f"\n{table}\n", flush=True)

    if len(combined) > 1:
        total = Score()
        for _, score in combined:
            total = total + score
        summary = "\n".join(["Combined, default configuration:", ""] + [f"- {name}: {score.line(args.window)}" for name, score in combined]
                            + [f"- all trainers: {total.line(args.window)}"])
        print(summary)
        if args.replay_only is None:
            (args.results / "detection.md").write_text("\n\n".join(
                (args.results / name / "detection.md").read_text().strip() for name, _ in combined) + "\n\n" + summary + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
