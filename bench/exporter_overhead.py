"""Training speed of two trainers with TensorBoard and wandb logging: in the trainer, or in the sidecar.

Two workloads (``--workload``), the same run config in every variant, each run in a process of its own
that records the wall clock and its CPU clock (``time.process_time``: every thread of the trainer's
process) at the end of every update (a progress line, printed every update):

- ``ppo_lstm``: the reference trainer ``examples/ppo_lstm.py`` (recurrent PPO, 32 envs x 32 steps per
  update, 4 epochs x 4 minibatches), its own progress line.
- ``sb3``: the SB3 adapter's trainer: sb3-contrib's ``RecurrentPPO`` with ``SimicCallback``, the model
  and task of ``examples/sb3_recurrent_ppo.py`` in the size of ``examples/sb3_detection.py`` (8 envs x 32
  steps per update, minibatches of 64, 4 epochs), run by this script: ``model.learn(...,
  callback=[UpdateEnds, SimicCallback(...)])``, where ``UpdateEnds`` prints the progress line at the end
  of every ``train()`` (at the next ``on_rollout_start``, and at ``on_training_end`` for the last),
  before SimicCallback's work of that hook. Nothing in SB3 or the callback is changed; SB3's own logger
  is its default (``verbose=0``: values recorded in memory and dropped at each dump, no output), in
  every variant.

Reported per run: steps per second from the end of the first update to the end of the last
(``--updates`` of them: setup, the first update's warm-up and the closing are not in it), the trainer's
CPU milliseconds per update over the same span, and the CPU time the trainer thread spent handing its
telemetry on per update (in (b) and (c) writing it with the library; in (d) and (d0) the emitter's
non-blocking socket send; the measuring itself, the same in (b)-(d), is not in it; the wall time of
those calls is printed below the table, with each variant's events and whole-run CPU). Variants:

- ``(a) no logging``: telemetry off (no endpoint: a ``NullEmitter``; for ``sb3`` SimicCallback is in the
  list, doing nothing).
- ``(b) SummaryWriter in the trainer``: the trainer writes the scalars itself with tensorboardX's
  ``SummaryWriter``, on its own thread, as a trainer that logs to TensorBoard does.
- ``(c) wandb.log in the trainer``: the same scalars with ``wandb.log`` (offline), one call per step.
- ``(d) simic, sidecar exports to both``: the trainer emits to a ``simic-consumer run --tensorboard DIR
  --wandb`` (offline) started beside it; the sidecar writes TensorBoard and wandb.
- ``(d0) simic, sidecar without exporters``: the same, without ``--tensorboard``/``--wandb`` (what simic
  costs the trainer whatever the sidecar does with the events).

"The same scalars": in (b) and (c) the trainer measures with simic's own collectors exactly as in (d)
(the same calls in ``ppo_lstm.py``, the same callback for ``sb3``), and each message the emitter would
send is instead written by the trainer thread itself, through the same update combining and the same
scalar names as the sidecar's exporters (``simic.consumer.sinks.export``): per-head gradient norms
pre/post clip, LSTM statistics, PPO metrics, phase times, update ratios. So (b)-(d) write the same
points; what differs is who pays for writing them. (b) and (c) replace the transport method (``_send``)
of the ``Emitter`` class itself in the trainer process, and (d)/(d0) wrap it to time it: every emitter
of the process gets it, however the trainer or the integration imported the class. A benchmark device,
not an API; each run reports how many events went through it, and a run of (b)-(d0) where none did
fails. wandb's own service (``wandb-core``) is a process apart in (c) and in (d): its CPU is not in the
trainer's clock.

Variants run interleaved, in a shuffled order per round; reported: the median steps/s over the rounds
and the median over rounds of each variant's ratio to (a) in the same round. ``--device cuda`` runs
the trainer's model on a GPU (default: the CPU). On the CPU of a 2-core machine the sidecar, wandb's
service and tensorboardX's writer thread compete with the trainer for the cores, which a GPU trainer
with idle host cores would not see. On a machine shared with other work the wall clock moves with
their load; the CPU clocks much less: the trainer's CPU per update, and in (d)/(d0) the sidecar's CPU
for the whole run (``getrusage`` of the process and of the children it waited for, wandb's service
among them).

    .venv/bin/python bench/exporter_overhead.py                            # ppo_lstm: 5 rounds x 5 variants x 40 updates, about 15 minutes
    .venv/bin/python bench/exporter_overhead.py --workload sb3             # 5 rounds x 5 variants x 50 updates, 12 to 16 minutes
    .venv/bin/python bench/exporter_overhead.py --workload sb3 --quick     # 1 round of 4 updates, smoke run
"""

from __future__ import annotations

import argparse
import functools
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
EXAMPLES = ROOT / "examples"
VARIANTS = {
    "a": "(a) no logging",
    "b": "(b) SummaryWriter in the trainer",
    "c": "(c) wandb.log in the trainer (offline)",
    "d": "(d) simic, sidecar exports to TensorBoard and wandb",
    "d0": "(d0) simic, sidecar without exporters",
}
WORKLOADS = {
    "ppo_lstm": "ppo_lstm.py (32 envs x 32 steps per update, 4 epochs x 4 minibatches)",
    "sb3": "sb3-contrib RecurrentPPO + SimicCallback (8 envs x 32 steps per update, minibatches of 64, 4 epochs)",
}
DEFAULT_UPDATES = {"ppo_lstm": 40, "sb3": 50}
"""Updates timed per run when --updates is not given: one run takes 10 to 20 s on a loaded 2-core machine."""
SPS_LINE = re.compile(r"update (\d+)/(\d+) \| global_step (\d+) \| SPS (\d+)")


def trainer_args(workload: str, updates: int, device: str) -> list[str]:
    """The trainer's command line: ``updates`` timed updates after a first one, one progress line per update."""
    common = ["--threads", "1", "--seed", "1", "--run-id", "bench", "--device", device]
    if workload == "ppo_lstm":
        return ["--total-timesteps", str((updates + 1) * 32 * 32), "--num-envs", "32", "--num-steps", "32", "--print-every", "1", *common]
    return ["--updates", str(updates + 1), "--n-envs", "8", "--n-steps", "32", "--batch-size", "64", "--n-epochs", "4", *common]


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
_EVENTS = [0]
"""Events that went through the replaced or timed transport, from any thread, in the whole run (run_end
included): the proof that the injection reached the trainer's emitter, and how many events (b)-(d0) wrote."""


class _Marks:
    """stdout of the trainer: keeps its lines, and the wall and CPU clocks and the sending time so far at each
    progress line (one per update)."""

    def __init__(self, out) -> None:
        self.out, self.marks = out, []

    def write(self, text: str) -> int:
        match = SPS_LINE.search(text)
        if match:
            self.marks.append((int(match.group(1)), int(match.group(3)), time.perf_counter(), time.process_time(), *_SENDING))
        return self.out.write(text)

    def flush(self) -> None:
        self.out.flush()


def inject(variant: str, out: str):
    """Replace ((b), (c)) or time ((d), (d0)) the transport of the ``Emitter`` class itself, in this process.

    The methods of the one class object are replaced, so every emitter made afterwards gets them, whatever
    name the trainer or an integration imported the class under (``simic.producer``,
    ``simic.producer.emitter``, before or after this). Returns what closes the writer of (b)/(c), else None.
    """
    from simic.producer.emitter import Emitter, EmitterSettings

    clock, cpu_clock = time.perf_counter, time.thread_time
    main = threading.main_thread()
    if variant in ("d", "d0"):
        send = Emitter._send

        def timed_send(self, data: bytes, events: int) -> None:
            """The real send, timed on the trainer thread."""
            _EVENTS[0] += events  # a retried send while closing on a full queue would count twice: not seen here
            if threading.current_thread() is not main:
                send(self, data, events)
                return
            start, start_cpu = clock(), cpu_clock()
            send(self, data, events)
            _SENDING[0] += clock() - start
            _SENDING[1] += cpu_clock() - start_cpu

        Emitter._send = timed_send
        return None
    if variant not in ("b", "c"):
        return None
    from simic.consumer.pipeline.updates import UpdateCombiner
    from simic.consumer.pipeline.contract import Batch
    from simic.consumer.sinks.export.points import points_of
    from simic.schemas import decode_message

    if variant == "b":
        from simic.consumer.sinks.export.tensorboard import TensorBoardExporter

        exporter = TensorBoardExporter(out)
    else:
        from simic.consumer.sinks.export.wandb import WandbExporter

        exporter = WandbExporter("simic-bench", out, mode="offline")
    combiner = UpdateCombiner()
    init = Emitter.__init__

    @functools.wraps(init)  # the signature stays the Emitter's (SimicCallback checks its keyword arguments against it)
    def init_without_background_delivery(self, *args, **kwargs) -> None:
        """No background delivery: a trainer writing its own scalars writes them from its loop."""
        kwargs["settings"] = EmitterSettings(background_delivery=False)
        init(self, *args, **kwargs)

    def writing_send(self, data: bytes, events: int) -> None:
        """Each message goes to the writer, on the trainer's thread, instead of the socket."""
        start, start_cpu = clock(), cpu_clock()
        batch = Batch(raw=data, recv_ns=time.time_ns(), events=decode_message(data).events)
        combiner.consume_now(batch)
        exporter.write(points_of(batch.events, batch.updates, ()))
        self.stats.sent += events  # a send's bookkeeping, as the socket send does it (the last send's time
        self.stats.batches += 1  # included: without it the emitter would add a heartbeat every 5 s)
        self.stats.bytes += len(data)
        self._last_send_ns = time.monotonic_ns()
        _EVENTS[0] += events
        _SENDING[0] += clock() - start
        _SENDING[1] += cpu_clock() - start_cpu

    Emitter.__init__ = init_without_background_delivery
    Emitter._send = writing_send
    return exporter.close


def run_sb3(argv: list[str]) -> None:
    """The sb3 workload: sb3-contrib's RecurrentPPO on sb3_recurrent_ppo.py's task, with SimicCallback
    (telemetry off without --endpoint) and a progress line at the end of every update."""
    parser = argparse.ArgumentParser(prog="exporter_overhead.py --workload sb3 (trainer)")
    for flag, kind, default in (("--updates", int, 6), ("--n-envs", int, 8), ("--n-steps", int, 32), ("--batch-size", int, 64),
                                ("--n-epochs", int, 4), ("--threads", int, 1), ("--seed", int, 1), ("--device", str, "cpu"),
                                ("--run-id", str, "bench"), ("--endpoint", str, None)):
        parser.add_argument(flag, type=kind, default=default)
    args = parser.parse_args(argv)

    import torch
    from stable_baselines3.common.callbacks import BaseCallback

    sys.path.insert(0, str(EXAMPLES))
    from sb3_recurrent_ppo import SUB_ACTIONS, Args, make_model

    from simic.producer.integrations.sb3 import SimicCallback

    class UpdateEnds(BaseCallback):
        """``update N/M | global_step T | SPS S`` when update N's ``train()`` has returned: at the next
        ``on_rollout_start``, or at ``on_training_end`` for the last. First in the callback list, so the
        line comes before SimicCallback's work of the same hook (which belongs to the next update's span)."""

        def __init__(self, updates: int) -> None:
            super().__init__()
            self.updates, self.rollouts, self.started = updates, 0, 0.0

        def _line(self) -> None:
            sps = int(self.model.num_timesteps / (time.time() - self.started))
            print(f"update {self.rollouts}/{self.updates} | global_step {self.model.num_timesteps} | SPS {sps}", flush=True)

        def _on_training_start(self) -> None:
            self.started = time.time()

        def _on_rollout_start(self) -> None:
            if self.rollouts:
                self._line()
            self.rollouts += 1

        def _on_step(self) -> bool:
            return True

        def _on_training_end(self) -> None:
            if self.rollouts:
                self._line()

    if args.threads:
        torch.set_num_threads(args.threads)
    model = make_model(Args(seed=args.seed, device=args.device, n_envs=args.n_envs, n_steps=args.n_steps,
                            batch_size=args.batch_size, n_epochs=args.n_epochs))
    telemetry = {"run_id": args.run_id, **({"endpoint": args.endpoint} if args.endpoint else {})}
    simic = SimicCallback(action_names=SUB_ACTIONS, **telemetry)
    model.learn(args.updates * args.n_steps * args.n_envs, callback=[UpdateEnds(args.updates), simic])
    stats = simic.emitter.stats
    print(f"telemetry: {stats.produced} events produced, {stats.sent} sent, {stats.dropped} dropped")


def trainer(workload: str, variant: str, out: str, trainer_args: list[str]) -> None:
    """Run the workload's trainer in this process (for (b) and (c) with an emitter whose messages the trainer
    thread writes itself), then print one ``BENCH {json}`` line: the clocks at the end of every update."""
    import runpy

    os.makedirs(out, exist_ok=True)
    close_writer = inject(variant, out)
    if variant in ("b", "c"):  # an endpoint nobody listens at: the emitter is made, its messages are written here
        trainer_args = [*trainer_args, "--endpoint", f"ipc://{out}/nobody.ipc"]
    marks = _Marks(sys.stdout)
    sys.stdout = marks
    try:
        if workload == "ppo_lstm":
            sys.argv = [str(TRAINER), *trainer_args]
            runpy.run_path(str(TRAINER), run_name="__main__")
        else:
            run_sb3(trainer_args)
    finally:
        sys.stdout = marks.out
        if close_writer is not None:
            close_writer()
    print("BENCH " + json.dumps({"marks": marks.marks, "events": _EVENTS[0]}), flush=True)


# -- one run of one variant -------------------------------------------------------------------------


def run_variant(workload: str, variant: str, trainer_args: list[str], tmp: Path, round_index: int) -> dict:
    work = tmp / f"{variant}-{round_index}"
    work.mkdir()
    # SB3's default logger (verbose=0) writes nothing but makes its folder: here, not in the system's temp
    env = {**os.environ, **wandb_env(tmp / "wandb-home"), "PYTHONUNBUFFERED": "1", "SB3_LOGDIR": str(work / "sb3-logger")}
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
    command = [sys.executable, __file__, "--workload", workload, "--trainer", variant, str(work / "out"), "--", *trainer_args, *extra]
    before = _children_cpu_s()
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
    trainer_cpu = _children_cpu_s() - before
    if result.returncode != 0:
        raise SystemExit(f"{VARIANTS[variant]} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    (bench,) = [json.loads(line[len("BENCH "):]) for line in result.stdout.splitlines() if line.startswith("BENCH ")]
    marks = bench["marks"]
    if len(marks) < 2:
        raise SystemExit(f"{VARIANTS[variant]}: {len(marks)} progress line(s), at least 2 are needed:\n{result.stdout[-3000:]}")
    if variant != "a" and not bench["events"]:
        raise SystemExit(f"{VARIANTS[variant]}: no event went through the benchmark's transport: the trainer's emitter was not reached")
    (first, step_0, wall_0, cpu_0, send_0, send_cpu_0), (last, step_1, wall_1, cpu_1, send_1, send_cpu_1) = marks[0], marks[-1]
    steps, updates = step_1 - step_0, last - first
    record = {"workload": workload, "variant": variant, "round": round_index, "sps": steps / (wall_1 - wall_0), "loop_cpu_s": cpu_1 - cpu_0,
              "cpu_ms_per_update": 1000 * (cpu_1 - cpu_0) / updates, "send_ms_per_update": 1000 * (send_1 - send_0) / updates,
              "send_cpu_ms_per_update": 1000 * (send_cpu_1 - send_cpu_0) / updates, "updates": updates, "steps": steps,
              "trainer_cpu_s": trainer_cpu, "events": bench["events"]}
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
    parser.add_argument("--workload", choices=tuple(WORKLOADS), default="ppo_lstm",
                        help="the trainer: ppo_lstm (examples/ppo_lstm.py) or sb3 (sb3-contrib RecurrentPPO with SimicCallback)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; each runs every variant once, in a shuffled order")
    parser.add_argument("--updates", type=int, default=None,
                        help="PPO updates timed per run, after a first one (default: 40 for ppo_lstm, 1024 environment steps "
                             "each; 50 for sb3, 256 steps each)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="which variants, comma-separated (a,b,c,d,d0)")
    parser.add_argument("--device", default="cpu", help="torch device of the trainer's model: cpu, cuda or cuda:N")
    parser.add_argument("--seed", type=int, default=0, help="seed of the shuffling")
    parser.add_argument("--json", type=Path, default=None, help="also write every run's record to this file")
    parser.add_argument("--quick", action="store_true", help="1 round of (at most) 4 updates: a smoke run")
    parser.add_argument("--trainer", nargs=2, metavar=("VARIANT", "DIR"), help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.trainer:
        trainer(args.workload, args.trainer[0], args.trainer[1], rest[1:] if rest[:1] == ["--"] else rest)
        return
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.updates is None:
        args.updates = DEFAULT_UPDATES[args.workload]
    if args.quick:
        args.rounds, args.updates = 1, min(args.updates, 4)
    if args.updates < 1:
        parser.error("--updates must be at least 1")
    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown or "a" not in variants:
        raise SystemExit(f"--variants: choose among {', '.join(VARIANTS)}, (a) included (the ratios are to it)")
    device = "CPU (no GPU)"
    if args.device != "cpu":
        import torch

        if not args.device.startswith("cuda") or not torch.cuda.is_available():
            raise SystemExit(f"--device {args.device}: choose cpu, or cuda[:N] on a machine with CUDA")
        device = f"{torch.cuda.get_device_name(torch.device(args.device))} ({args.device})"
    command_line = trainer_args(args.workload, args.updates, args.device)
    rng = random.Random(args.seed)
    records: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="simic-exporter-bench-") as tmp:
        for round_index in range(args.rounds):
            order = variants[:]
            rng.shuffle(order)
            for variant in order:
                record = run_variant(args.workload, variant, command_line, Path(tmp), round_index)
                records.append(record)
                print(f"round {round_index + 1}/{args.rounds} {VARIANTS[variant]}: {record['sps']:.0f} steps/s, "
                      f"{record['cpu_ms_per_update']:.0f} CPU ms per update", file=sys.stderr, flush=True)
    if args.json:
        args.json.write_text(json.dumps(records, indent=1))

    by_round = {(r["variant"], r["round"]): r for r in records}
    rounds = range(args.rounds)

    def median(variant: str, key: str) -> float:
        return statistics.median(by_round[(variant, i)][key] for i in rounds)

    load = os.getloadavg()[0]
    steps_per_update = records[0]["steps"] // records[0]["updates"]
    print(f"{WORKLOADS[args.workload]}: {args.updates} updates x {steps_per_update} steps timed per run, --threads 1, {device}, "
          f"{os.cpu_count()} cores, {args.rounds} rounds interleaved; Python {platform.python_version()}; 1-min load after: {load:.1f}\n")
    print("| variant | steps/s (median) | min-max | x (a), median of rounds | trainer CPU ms/update (median) | x (a) "
          "| trainer thread CPU ms/update handing on (median) | sidecar CPU s per run |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for variant in variants:
        sps = [by_round[(variant, i)]["sps"] for i in rounds]
        ratios = [by_round[(variant, i)]["sps"] / by_round[("a", i)]["sps"] for i in rounds]
        cpu_ratios = [by_round[(variant, i)]["cpu_ms_per_update"] / by_round[("a", i)]["cpu_ms_per_update"] for i in rounds]
        side = [by_round[(variant, i)]["sidecar_cpu_s"] for i in rounds if "sidecar_cpu_s" in by_round[(variant, i)]]
        print(f"| {VARIANTS[variant]} | {statistics.median(sps):.0f} | {min(sps):.0f}-{max(sps):.0f} | {statistics.median(ratios):.3f} "
              f"| {median(variant, 'cpu_ms_per_update'):.1f} | {statistics.median(cpu_ratios):.3f} "
              f"| {median(variant, 'send_cpu_ms_per_update'):.3f} | {f'{statistics.median(side):.1f}' if side else '-'} |")
    print("\nmedians per variant: wall ms/update in the handing-on calls (preemption included) / trainer process CPU s per run "
          "(setup included) / events handed on per run:")
    print("; ".join(f"{variant} {median(variant, 'send_ms_per_update'):.2f} / {median(variant, 'trainer_cpu_s'):.1f} / "
                    f"{median(variant, 'events'):.0f}" for variant in variants))
    exports = [r for r in records if r["variant"] == "d"]
    if exports:
        print(f"\nsidecar exporters, every run of (d): {sum(r['export_dropped'] for r in exports)} events dropped (queue full)")
        print("last run's summary: " + " / ".join(exports[-1]["sidecar"]))


if __name__ == "__main__":
    main()
