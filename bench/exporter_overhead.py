"""Training speed of the reference trainer with TensorBoard and wandb logging: in the trainer, or in the sidecar.

The trainer is ``examples/ppo_lstm.py`` (recurrent PPO, 32 envs x 32 steps per update, 4 epochs x 4
minibatches), the same run config in every variant, run in a process of its own that records the wall
clock and its CPU clock (``time.process_time``: every thread of the trainer's process) at the end of every
update (its progress line, printed every update). Reported per run: steps per second from the end of the
first update to the end of the last (``--updates`` of them: setup, the first update's warm-up and the
closing are not in it), the trainer's CPU milliseconds per update over the same span, and the CPU time
the trainer thread spent handing its telemetry on per update (in (b) and (c) writing it with the library;
in (d) and (d0) the emitter's non-blocking socket send; the measuring itself, the same in (b)-(d), is not
in it; the wall time of those calls goes to ``--json``). Variants:

- ``(a) no logging``: telemetry off (no endpoint: a ``NullEmitter``).
- ``(b) SummaryWriter in the trainer``: the trainer writes the scalars itself with tensorboardX's
  ``SummaryWriter``, on its own thread, as a trainer that logs to TensorBoard does.
- ``(c) wandb.log in the trainer``: the same scalars with ``wandb.log`` (offline), one call per step.
- ``(d) simic, sidecar exports to both``: the trainer emits to a ``simic-consumer run --tensorboard DIR
  --wandb`` (offline) started beside it; the sidecar writes TensorBoard and wandb.
- ``(d0) simic, sidecar without exporters``: the same, without ``--tensorboard``/``--wandb`` (what simic
  costs the trainer whatever the sidecar does with the events).

"The same scalars": in (b) and (c) the trainer measures with simic's own collectors exactly as in (d)
(same calls in ``ppo_lstm.py``), and each message the emitter would send is instead written by the
trainer thread itself, through the same update combining and the same scalar names as the sidecar's
exporters (``simic.consumer.sinks.export``): per-head gradient norms pre/post clip, LSTM statistics,
PPO metrics, phase times, update ratios. So (b)-(d) write the same points; what differs is who pays for
writing them. (b) and (c) replace the emitter's transport (its ``_send``) in the trainer process: a
benchmark device, not an API. wandb's own service (``wandb-core``) is a process apart in (c) and in (d):
its CPU is not in the trainer's clock.

Variants run interleaved, in a shuffled order per round; reported: the median steps/s over the rounds
and the median over rounds of each variant's ratio to (a) in the same round. Runs on the CPU (there is no
GPU here): on a 2-core machine the sidecar, wandb's service and tensorboardX's writer thread compete
with the trainer for the cores, which a GPU trainer with idle host cores would not see. On a machine
shared with other work the wall clock moves with their load; the CPU clocks much less: the trainer's CPU
per update, and in (d)/(d0) the sidecar's CPU for the whole run (``getrusage`` of the process and of the
children it waited for, wandb's service among them).

    .venv/bin/python bench/exporter_overhead.py              # 5 rounds x 5 variants x 40 updates, about 15 minutes
    .venv/bin/python bench/exporter_overhead.py --quick      # 1 round of 4 updates, smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRAINER = ROOT / "examples" / "ppo_lstm.py"
VARIANTS = {
    "a": "(a) no logging",
    "b": "(b) SummaryWriter in the trainer",
    "c": "(c) wandb.log in the trainer (offline)",
    "d": "(d) simic, sidecar exports to TensorBoard and wandb",
    "d0": "(d0) simic, sidecar without exporters",
}
SPS_LINE = re.compile(r"update (\d+)/(\d+) \| global_step (\d+) \| SPS (\d+)")
STEPS_PER_UPDATE = 32 * 32
"""Environment steps per update: --num-envs 32 x --num-steps 32."""


def wandb_env(home: Path) -> dict[str, str]:
    """wandb offline, every file of it in this run's temporary directory: no network."""
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_ERROR_REPORTING": "false"}
    env.update({var: str(home) for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR")})
    return env


# -- in the trainer's process: (b) and (c) write the points themselves; every variant is timed -----------


_SENDING = [0.0, 0.0]
"""Wall and CPU seconds (``time.thread_time``) the trainer thread spent handing messages on (the socket send,
or in (b)/(c) the writing), so far. Sends from the emitter's background delivery thread are not counted:
their time is mostly waiting for the GIL while the trainer runs, not time taken from it. On a loaded machine
the wall time of a call includes the times the thread was preempted; its CPU time does not."""


class _Marks:
    """stdout of the trainer: keeps its lines, and the wall and CPU clocks and the sending time so far at each
    progress line (one per update)."""

    def __init__(self, out) -> None:
        self.out, self.marks = out, []

    def write(self, text: str) -> int:
        match = SPS_LINE.search(text)
        if match:
            self.marks.append((int(match.group(1)), time.perf_counter(), time.process_time(), *_SENDING))
        return self.out.write(text)

    def flush(self) -> None:
        self.out.flush()


def trainer(variant: str, out: str, trainer_args: list[str]) -> None:
    """Run ppo_lstm.py in this process (for (b) and (c) with an emitter whose messages the trainer thread
    writes itself), then print one ``BENCH {json}`` line: the clocks at the end of every update."""
    import runpy

    import simic.producer
    from simic.producer import Emitter, EmitterSettings

    exporter = None
    clock, cpu_clock = time.perf_counter, time.thread_time
    main = threading.main_thread()
    if variant in ("d", "d0"):

        class TimedEmitter(Emitter):
            """The real emitter, its send timed."""

            def _send(self, data: bytes, events: int) -> None:
                if threading.current_thread() is not main:
                    super()._send(data, events)
                    return
                start, start_cpu = clock(), cpu_clock()
                super()._send(data, events)
                _SENDING[0] += clock() - start
                _SENDING[1] += cpu_clock() - start_cpu

        simic.producer.Emitter = TimedEmitter
    if variant in ("b", "c"):
        from simic.consumer.analysis.updates import UpdateCombiner
        from simic.consumer.pipeline import Batch
        from simic.consumer.sinks.export.points import points_of
        from simic.schemas import decode_message

        if variant == "b":
            from simic.consumer.sinks.export.tensorboard import TensorBoardExporter

            exporter = TensorBoardExporter(out)
        else:
            from simic.consumer.sinks.export.wandb import WandbExporter

            exporter = WandbExporter("simic-bench", out, mode="offline")
        combiner = UpdateCombiner()

        class WritingEmitter(Emitter):
            """Each message goes to the writer, on the trainer's thread, instead of the socket (no background
            delivery: a trainer writing its own scalars writes them from its loop)."""

            def __init__(self, *args, **kwargs) -> None:
                kwargs["settings"] = EmitterSettings(background_delivery=False)
                super().__init__(*args, **kwargs)

            def _send(self, data: bytes, events: int) -> None:
                start, start_cpu = clock(), cpu_clock()
                batch = Batch(raw=data, recv_ns=time.time_ns(), events=decode_message(data).events)
                combiner.consume_now(batch)
                exporter.write(points_of(batch.events, batch.updates, ()))
                self.stats.sent += events
                self.stats.batches += 1
                _SENDING[0] += clock() - start
                _SENDING[1] += cpu_clock() - start_cpu

        simic.producer.Emitter = WritingEmitter
        trainer_args = [*trainer_args, "--endpoint", f"ipc://{tempfile.mkdtemp(prefix='simic-bench-')}/nobody.ipc"]
    marks = _Marks(sys.stdout)
    sys.stdout = marks
    sys.argv = [str(TRAINER), *trainer_args]
    try:
        runpy.run_path(str(TRAINER), run_name="__main__")
    finally:
        sys.stdout = marks.out
        if exporter is not None:
            exporter.close()
    print("BENCH " + json.dumps(marks.marks), flush=True)


# -- one run of one variant -------------------------------------------------------------------------


def run_variant(variant: str, trainer_args: list[str], tmp: Path, round_index: int) -> dict:
    work = tmp / f"{variant}-{round_index}"
    work.mkdir()
    env = {**os.environ, **wandb_env(tmp / "wandb-home"), "PYTHONUNBUFFERED": "1"}
    env.pop("SIMIC_ENDPOINT", None)
    sidecar = None
    extra: list[str] = []
    if variant in ("d", "d0"):
        socket_dir = tempfile.mkdtemp(prefix="simic-bench-")
        endpoint = f"ipc://{socket_dir}/c.ipc"
        exports = ["--tensorboard", str(work / "tensorboard"), "--wandb", "simic-bench"] if variant == "d" else []
        sidecar = subprocess.Popen([sys.executable, "-m", "simic.consumer", "run", "--bind", endpoint, "--log-dir", str(work / "logs"),
                                    "--alerts-bind", "none", *exports], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in sidecar.stdout:  # its last startup line
            if "logging to" in line:
                break
        else:
            raise SystemExit(f"the sidecar did not start: {sidecar.wait()}")
        extra = ["--endpoint", endpoint]
    command = [sys.executable, __file__, "--trainer", variant, str(work / "out"), "--", *trainer_args, *extra]
    before = _children_cpu_s()
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
    trainer_cpu = _children_cpu_s() - before
    if result.returncode != 0:
        raise SystemExit(f"{VARIANTS[variant]} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    (marks,) = [json.loads(line[len("BENCH "):]) for line in result.stdout.splitlines() if line.startswith("BENCH ")]
    (first, wall_0, cpu_0, send_0, send_cpu_0), (last, wall_1, cpu_1, send_1, send_cpu_1) = marks[0], marks[-1]
    steps, updates = (last - first) * STEPS_PER_UPDATE, last - first
    record = {"variant": variant, "round": round_index, "sps": steps / (wall_1 - wall_0), "loop_cpu_s": cpu_1 - cpu_0,
              "cpu_ms_per_update": 1000 * (cpu_1 - cpu_0) / updates, "send_ms_per_update": 1000 * (send_1 - send_0) / updates,
              "send_cpu_ms_per_update": 1000 * (send_cpu_1 - send_cpu_0) / updates, "updates": updates, "trainer_cpu_s": trainer_cpu}
    if sidecar is not None:
        sidecar.send_signal(signal.SIGTERM)
        before = _children_cpu_s()
        output = sidecar.communicate(timeout=120)[0]
        record["sidecar_cpu_s"] = _children_cpu_s() - before
        record["sidecar"] = [line for line in output.splitlines() if "export " in line or "stopped:" in line]
        shutil.rmtree(socket_dir, ignore_errors=True)
        dropped = [int(m.group(1)) for m in re.finditer(r"(\d+) dropped \(queue full\)", output)]
        record["export_dropped"] = sum(dropped)
    shutil.rmtree(work, ignore_errors=True)
    return record


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds; each runs every variant once, in a shuffled order")
    parser.add_argument("--updates", type=int, default=40, help="PPO updates timed per run (1024 environment steps each), after a first one")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="which variants, comma-separated (a,b,c,d,d0)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the shuffling")
    parser.add_argument("--json", type=Path, default=None, help="also write every run's record to this file")
    parser.add_argument("--quick", action="store_true", help="1 round of (at most) 4 updates: a smoke run")
    parser.add_argument("--trainer", nargs=2, metavar=("VARIANT", "DIR"), help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.trainer:
        trainer(args.trainer[0], args.trainer[1], rest[1:] if rest[:1] == ["--"] else rest)
        return
    if args.quick:
        args.rounds, args.updates = 1, min(args.updates, 4)
    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown or "a" not in variants:
        raise SystemExit(f"--variants: choose among {', '.join(VARIANTS)}, (a) included (the ratios are to it)")
    trainer_args = ["--total-timesteps", str((args.updates + 1) * STEPS_PER_UPDATE), "--num-envs", "32", "--num-steps", "32",
                    "--threads", "1", "--print-every", "1", "--seed", "1", "--run-id", "bench"]
    rng = random.Random(args.seed)
    records: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="simic-exporter-bench-") as tmp:
        for round_index in range(args.rounds):
            order = variants[:]
            rng.shuffle(order)
            for variant in order:
                record = run_variant(variant, trainer_args, Path(tmp), round_index)
                records.append(record)
                print(f"round {round_index + 1}/{args.rounds} {VARIANTS[variant]}: {record['sps']:.0f} steps/s, "
                      f"{record['cpu_ms_per_update']:.0f} CPU ms per update", file=sys.stderr, flush=True)
    if args.json:
        args.json.write_text(json.dumps(records, indent=1))

    by_round = {(r["variant"], r["round"]): r["sps"] for r in records}
    load = os.getloadavg()[0]
    print(f"ppo_lstm.py, {args.updates} updates x 1024 steps, --threads 1, CPU (no GPU), {os.cpu_count()} cores, "
          f"{args.rounds} rounds interleaved; Python {platform.python_version()}; 1-min load after: {load:.1f}\n")
    cpu = {(r["variant"], r["round"]): r["cpu_ms_per_update"] for r in records}
    sending = {(r["variant"], r["round"]): r["send_cpu_ms_per_update"] for r in records}
    sidecar_cpu = {(r["variant"], r["round"]): r.get("sidecar_cpu_s") for r in records}
    print("| variant | steps/s (median) | min-max | x (a), median of rounds | trainer CPU ms/update (median) | x (a) "
          "| trainer thread CPU ms/update handing on (median) | sidecar CPU s per run |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for variant in variants:
        rounds = range(args.rounds)
        sps = [by_round[(variant, i)] for i in rounds]
        ratios = [by_round[(variant, i)] / by_round[("a", i)] for i in rounds]
        cpu_ms = [cpu[(variant, i)] for i in rounds]
        cpu_ratios = [cpu[(variant, i)] / cpu[("a", i)] for i in rounds]
        side = [sidecar_cpu[(variant, i)] for i in rounds if sidecar_cpu[(variant, i)] is not None]
        handing = statistics.median(sending[(variant, i)] for i in rounds)
        print(f"| {VARIANTS[variant]} | {statistics.median(sps):.0f} | {min(sps):.0f}-{max(sps):.0f} | {statistics.median(ratios):.3f} "
              f"| {statistics.median(cpu_ms):.1f} | {statistics.median(cpu_ratios):.3f} | {handing:.3f} "
              f"| {f'{statistics.median(side):.1f}' if side else '-'} |")
    exports = [r for r in records if r["variant"] == "d"]
    if exports:
        print(f"\nsidecar exporters, every run of (d): {sum(r['export_dropped'] for r in exports)} events dropped (queue full)")
        print("last run's summary: " + " / ".join(exports[-1]["sidecar"]))


if __name__ == "__main__":
    main()
