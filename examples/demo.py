"""The demo behind `make demo`: the reference trainer with a NaN injected into its LSTM state, watched live.

1. starts `simic-consumer` as a sidecar (``simic.producer.spawn_consumer``: a real process, a
   private ipc socket, its log under ./demo-out/logs);
2. runs ``examples/ppo_lstm.py`` (recurrent PPO on a small memory task, CPU) with ``--fault nan_lstm``
   and ``--stop-on-critical``, showing its progress and the consumer's alerts as they are raised;
3. stops the consumer (SIGTERM: it drains, checkpoints and exits), replays the log through the same
   analysis, and writes the HTML report;
4. prints where everything is.

    .venv/bin/python examples/demo.py [--fault head_grad_scale] [--updates 80] [--fault-at 40]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from simic.producer import spawn_consumer

ROOT = Path(__file__).resolve().parents[1]
OUT = Path("demo-out")
RUN_ID = "demo"
STYLES = {"[CRITICAL]": "bold red", "[WARNING]": "yellow", "[INFO]": "cyan", "[CLEARED]": "green"}
PROGRESS = re.compile(r"^update (\d+)/(\d+) \| global_step \d+ \| SPS (\d+) \| return ([-\d.na]+)")

console = Console(highlight=False, soft_wrap=True)


def consumer(*args: str) -> list[str]:
    return [sys.executable, "-m", "simic.consumer", *args]


def show_consumer_line(progress: Progress):
    """The sidecar's output: alerts in colour as they are raised, the rest dimmed."""

    def show(line: str) -> None:
        line = line.rstrip()
        if not line.startswith(("[", "simic-consumer")):  # the rest of a multi-line message (an exception's text)
            return
        style = next((style for tag, style in STYLES.items() if line.startswith(tag)), None)
        progress.console.print(f"  [consumer] {line}", style=style or "dim", markup=False)

    return show


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fault", choices=("nan_lstm", "head_grad_scale"), default="nan_lstm", help="the fault to inject (default nan_lstm)")
    parser.add_argument("--updates", type=int, default=80, help="PPO updates to run (default 80, about 15 s on 2 cores)")
    parser.add_argument("--fault-at", type=int, default=40, help="the update at which the fault starts (default 40)")
    args = parser.parse_args()
    started = time.monotonic()
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)

    console.rule("1. the sidecar: simic-consumer")
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
                        TimeElapsedColumn(), console=console, transient=False)
    sidecar = spawn_consumer(log_dir=OUT / "logs", echo=show_consumer_line(progress))
    console.print(f"simic-consumer pid {sidecar.pid} listening on {sidecar.endpoint}, alerts on {sidecar.alerts_endpoint}")
    try:
        return demo(args, sidecar, progress, started)
    finally:
        sidecar.close()  # idempotent: a no-op after step 3, and the consumer never outlives an interrupted demo


def demo(args: argparse.Namespace, sidecar, progress: Progress, started: float) -> int:
    """Steps 2 to 4, with the sidecar running."""
    log_dir, traces, report = OUT / "logs", OUT / "profiler_traces", OUT / "report.html"
    console.rule(f"2. train: recurrent PPO, {args.fault} injected at update {args.fault_at}")
    command = [
        sys.executable, "-W", "ignore:Failed to initialize NumPy", str(ROOT / "examples" / "ppo_lstm.py"),
        "--endpoint", sidecar.endpoint, "--run-id", RUN_ID, "--total-timesteps", str(args.updates * 1024), "--print-every", "1",
        "--fault", args.fault, "--fault-at", str(args.fault_at), "--stop-on-critical", "--profile", "--profile-dir", str(traces),
    ]
    console.print(" ".join(["python", *command[3:]]), style="dim", markup=False)
    trainer_log = OUT / "trainer.log"
    first_return = last_return = last_update = None
    with progress, open(trainer_log, "w") as log:
        task = progress.add_task("training", total=args.updates, status="")
        trainer = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, cwd=Path.cwd())
        assert trainer.stdout is not None
        for line in trainer.stdout:
            log.write(line)
            match = PROGRESS.match(line)
            if match:
                update, _, sps, mean_return = match.groups()
                first_return = first_return or mean_return
                last_return, last_update = mean_return, update
                progress.update(task, completed=int(update), status=f"return {mean_return} (random 2.1, best 6.5)  {sps} steps/s")
            elif line.startswith(("stopping at", "alert: [critical]")):  # what the trainer received and did (poll_alerts)
                progress.console.print(f"  [trainer] {line.rstrip()}", style="bold", markup=False)
            elif re.match(r"^\w+(Error|Exception): ", line):  # the exception that ended it (the traceback is in trainer.log)
                progress.console.print(f"  [trainer] {line.rstrip()[:160]}", style="bold red", markup=False)
        code = trainer.wait()
    outcome = "stopped on a critical alert" if code == 0 and args.updates > int(last_update or 0) else "crashed" if code else "finished"
    console.print(f"trainer {outcome} (exit {code}) after update {last_update}; mean return {first_return} at the start, {last_return} at the end")
    if code and args.fault == "nan_lstm":
        console.print("the NaN reached the policy and torch raised, as in a real run; the NaN's event and the exception were sent first")

    console.rule("3. stop the sidecar, replay the log, write the report")
    sidecar.wait_for_line(f"run {RUN_ID} rank 0 session", timeout_s=10)  # the consumer has the run's last event
    console.print(f"simic-consumer exited with {sidecar.close()}")
    replay = subprocess.run(consumer("replay", str(log_dir)), capture_output=True, text=True)
    summary = False
    for line in replay.stdout.splitlines():
        summary = summary or bool(re.match(r"^\d+ alerts$", line))
        style = next((style for tag, style in STYLES.items() if line.startswith(tag)), None)
        if style or summary:  # one line per alert (an exception's text can run over several), then the summary
            console.print(f"  [replay] {line}", style=style, markup=False)
    written = subprocess.run(consumer("report", str(log_dir), "-o", str(report)), capture_output=True, text=True)
    console.print((written.stdout or written.stderr).strip(), markup=False)

    console.rule(f"done in {time.monotonic() - started:.0f} s")
    for what, where in (("event log", log_dir), ("alerts", log_dir / "alerts.jsonl"), ("HTML report", report),
                        ("profiler trace", traces), ("trainer output", trainer_log)):
        if where.exists():
            console.print(f"{what:>15}: {where.resolve()}")
    console.print(f"{'replay again':>15}: .venv/bin/simic-consumer replay {log_dir}  (--config FILE: what other thresholds would have said)")
    return 0 if replay.returncode == 0 and written.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
