"""Replay speed: ``simic-consumer replay`` of recorded logs of increasing size, every rule on.

Each log is written through the real encoder and event-log writer (``LogWriter``), as the daemon
records: the messages of a trainer at 1,000 events/s (one PPO step of 8 events per message, see
``consumer_throughput.mixed_messages``: step timings, gradient norms before and after clipping,
LSTM health, PPO updates, a ``run_start`` first and a heartbeat now and then), a ``run_end`` last,
and a clock tick per second of arrival time, as the daemon logs them. Then:

- in process: :func:`simic.consumer.offline.replay.replay` with the default configuration (every rule),
  best of ``--repeat`` runs, and the same with analysis off (what ``inspect`` runs: decode and
  accounting only);
- the same log with every segment compressed as the daemon compresses closed ones
  (``compress_segment``, zstd level 3): bytes on disk per event, the time to compress, and the same
  two replays from the compressed segments. The workload draws its values from 64 prepared steps, so
  it repeats exactly every 64 messages, which flatters compression: the bytes per event are also
  measured on a log whose every step has fresh values (a floor: a real run's values are smoother), and
  on a real trainer's log given with ``--log`` (``examples/ppo_lstm.py --spawn-consumer --telemetry-dir``);
- the live pipeline (built as the daemon builds it, every rule, no sinks) taking the same log's messages
  and clock ticks from memory: what replay costs beyond the analysis (reading the log, collecting alerts);
- end to end, for one size: ``python -m simic.consumer replay LOG --json`` as a subprocess
  (interpreter start and imports included), and the same command on a 1-message log, whose time
  is the fixed start-up cost.

Prints events/s and microseconds per event against log size, to show whether time is linear in it.
``--cpu-time`` times the in-process replays with this process's CPU time (``time.process_time``)
instead of the wall clock, so that what other work on a shared machine takes is not counted (the
CLI rows stay wall clock: they time a child process).

    .venv/bin/python bench/replay_speed.py [--sizes 10000,100000,1000000] [--repeat 3] [--cli-size 100000] [--cpu-time]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgpack

if not __package__:  # run as a script (python bench/replay_speed.py): the repository root makes the `bench` package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench._workload import emit_step, positional, step_values  # noqa: E402
from bench.consumer_throughput import PER_MESSAGE, mixed_messages  # noqa: E402
from bench.emit_cost import machine  # noqa: E402

from simic.consumer import ConsumerConfig, build_pipeline  # noqa: E402
from simic.consumer.offline.replay import replay  # noqa: E402
from simic.schemas import encode_message  # noqa: E402
from simic.schemas.codec import KINDS  # noqa: E402
from simic.schemas.eventlog import FRAME_MESSAGE, FRAME_TICK, LogReader, LogWriter, compress_segment, segment_paths  # noqa: E402

RUN_ID, SESSION = "replay-bench", 7
EVENTS_PER_S = 1_000
"""Pace of the recorded trainer (arrival times and producer clock): one message per 8 ms."""
T0_NS = 1_700_000_000_000_000_000
clock = time.perf_counter
"""The timer of the in-process replays (``time.process_time`` with ``--cpu-time``)."""


def fresh_messages(count: int, step_ns: int) -> list[bytes]:
    """Like ``mixed_messages``, but every step has values of its own (nothing repeats)."""
    out, seq = [], 0
    for i in range(count):
        clock, rows = T0_NS + i * step_ns, []
        calls: list = []
        emit_step(lambda kind, *, step, **fields: calls.append((kind, fields)), i, step_values(random.Random(7_000_000 + i)))
        for kind, fields in calls:
            code, payload = positional(kind, fields)
            rows.append([code, seq, clock, i, *payload])
            seq += 1
        out.append(encode_message(RUN_ID, 0, SESSION, rows))
    return out


def write_log(directory: Path, events: int, fresh: bool = False) -> tuple[int, int]:
    """A log of about ``events`` events (whole messages, then ``run_end``). Returns (events, bytes on disk)."""
    messages = max(1, events // PER_MESSAGE)
    step_ns = PER_MESSAGE * 1_000_000_000 // EVENTS_PER_S
    if fresh:
        raws = fresh_messages(messages, step_ns)
    else:
        raws = mixed_messages(messages, run_id=RUN_ID, session=SESSION, start_ns=T0_NS, step_ns=step_ns)
    next_tick = T0_NS + 1_000_000_000
    with LogWriter(directory, writer="bench/replay_speed.py") as writer:
        for i, raw in enumerate(raws):
            recv_ns = T0_NS + i * step_ns + 250_000  # arrives 0.25 ms after the producer stamped it
            while recv_ns >= next_tick:
                writer.write(b"", next_tick, FRAME_TICK)
                next_tick += 1_000_000_000
            writer.write(raw, recv_ns)
        sent = msgpack.unpackb(raws[-1])[4][-1][1] + 1  # the next sequence number: events so far
        end = T0_NS + messages * step_ns
        writer.write(encode_message(RUN_ID, 0, SESSION, [[KINDS["run_end"].code, sent, end, messages, "ok", sent, 0]]), end + 250_000)
    return sent + 1, sum(path.stat().st_size for path in directory.iterdir())


def replay_seconds(log: Path, analysis: bool) -> tuple[float, int, int]:
    """Seconds to replay ``log`` in process, the events it counted and the alerts raised."""
    start = clock()
    result = asyncio.run(replay([log], ConsumerConfig(), analysis=analysis))
    elapsed = clock() - start
    return elapsed, result.summary["events"], len(result.alerts)


def read_cpu_seconds(log: Path, repeat: int) -> float:
    """Process CPU time to read every frame of ``log`` (``LogReader``; decompression included), best of ``repeat``:
    CPU time, not wall time, so other work on a shared machine does not count."""
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        for _frame in LogReader(log):
            pass
        best = min(best, time.process_time() - start)
    return best


def pipeline_seconds(log: Path, record_to: Path | None = None) -> float:
    """Seconds for the live pipeline (every rule, as the daemon builds it, no sinks) to take the log's messages and
    clock ticks from memory: what replay does, less reading the log and collecting the alerts. With ``record_to``
    (an empty directory), the pipeline records what it takes to an event log there first, as the daemon's does."""
    frames = [(frame.type, frame.payload, frame.recv_ns) for frame in LogReader(log)]

    async def run() -> float:
        pipeline = build_pipeline(ConsumerConfig(), console=False, log_dir=record_to)
        await pipeline.start()
        start = clock()
        for frame_type, payload, recv_ns in frames:
            if frame_type == FRAME_TICK:
                await pipeline.tick(recv_ns, note=payload)
            else:
                await pipeline.consume(payload, recv_ns)
        elapsed = clock() - start
        await pipeline.close()
        return elapsed

    return asyncio.run(run())


def messages_in(log: Path) -> int:
    return sum(frame.type == FRAME_MESSAGE for frame in LogReader(log))


def cli_seconds(log: Path) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "simic.consumer", "replay", str(log), "--json"], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000", help="events per log, comma separated (default 10000,100000,1000000)")
    parser.add_argument("--repeat", type=int, default=3, help="in-process runs per size and mode; the best is reported (default 3)")
    parser.add_argument("--cli-size", type=int, default=100_000, help="events of the log replayed through the CLI (default 100000)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2,000 and 10,000 events, one run each, CLI on 2,000")
    parser.add_argument("--keep", type=Path, default=None, help="write the logs here and keep them (default: a temporary directory)")
    parser.add_argument("--log", type=Path, default=None, help="also measure compression and replay on this recorded log directory")
    parser.add_argument("--cpu-time", action="store_true", help="time in-process replays with this process's CPU time, not the wall clock")
    args = parser.parse_args(argv)
    if args.cpu_time:
        global clock
        clock = time.process_time
    if args.quick:
        args.sizes, args.repeat, args.cli_size = "2000,10000", 1, 2000
    sizes = [int(size) for size in args.sizes.split(",")]
    info = machine()
    print(f"Machine: nproc {info['nproc']}, {info['cpu']}, Python {info['python']}, msgpack {info['msgpack']}; "
          f"1-min load average {os.getloadavg()[0]:.2f}")
    root = args.keep or Path(tempfile.mkdtemp(prefix="simic-replay-"))
    try:
        timer = "CPU time" if clock is time.process_time else "wall clock"
        print(f"\nEvery rule on (default configuration), best of {args.repeat} ({timer}); "
              "'no analysis' is decode + accounting only (what inspect runs).\n")
        print("| events | messages | log MB | write s | replay s | events/s | us/event | no analysis: events/s | alerts |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        compressed_rows, reading, against_live = [], [], []
        logs: dict[int, Path] = {}
        complete = True
        for size in sorted(set(sizes) | {args.cli_size}):
            log = logs[size] = root / f"log-{size}"
            start = time.perf_counter()
            written, size_bytes = write_log(log, size)
            written_s = time.perf_counter() - start
            if size not in sizes:
                continue
            full = min((replay_seconds(log, True) for _ in range(args.repeat)), key=lambda r: r[0])
            bare = min((replay_seconds(log, False) for _ in range(args.repeat)), key=lambda r: r[0])
            complete &= full[1] == bare[1] == written
            print(f"| {full[1]:,} | {size // PER_MESSAGE:,} | {size_bytes / 1e6:.1f} | {written_s:.2f} | {full[0]:.2f} | "
                  f"{full[1] / full[0]:,.0f} | {full[0] / full[1] * 1e6:.2f} | {bare[1] / bare[0]:,.0f} | {full[2]} |")
            packed = root / f"log-{size}-zstd"
            shutil.copytree(log, packed)
            start = time.perf_counter()
            for path in segment_paths(packed):
                compress_segment(path)
            compress_s = time.perf_counter() - start
            packed_bytes = sum(path.stat().st_size for path in packed.iterdir())
            full_z = min((replay_seconds(packed, True) for _ in range(args.repeat)), key=lambda r: r[0])
            bare_z = min((replay_seconds(packed, False) for _ in range(args.repeat)), key=lambda r: r[0])
            complete &= full_z[1] == bare_z[1] == written and full_z[2] == full[2]
            live = min(pipeline_seconds(log) for _ in range(args.repeat))
            recorded = [Path(tempfile.mkdtemp(dir=root, prefix="live-log-")) for _ in range(args.repeat)]
            recording = min(pipeline_seconds(log, target) for target in recorded)
            complete &= all(messages_in(target) == messages_in(log) for target in recorded)
            against_live.append(f"| {full[1]:,} | {full[1] / full[0]:,.0f} | {full[1] / live:,.0f} | {live / full[0]:.0%} | "
                                f"{full[1] / recording:,.0f} | {recording / full[0]:.0%} |")
            reading.append(f"| {full[1]:,} | {read_cpu_seconds(log, args.repeat) / full[1] * 1e6:.2f} | "
                           f"{read_cpu_seconds(packed, args.repeat) / full[1] * 1e6:.2f} |")
            compressed_rows.append(
                f"| {full[1]:,} | {size_bytes / full[1]:.1f} | {packed_bytes / full[1]:.1f} | {size_bytes / packed_bytes:.1f}x | "
                f"{compress_s:.2f} | {size_bytes / 1e6 / compress_s:.0f} | {full[1] / full[0]:,.0f} | {full_z[1] / full_z[0]:,.0f} | "
                f"{bare[1] / bare[0]:,.0f} | {bare_z[1] / bare_z[0]:,.0f} |")
        print("\nThe same logs with every segment compressed (zstd level 3, as the daemon compresses closed segments); "
              "replay reads them back (same events, same alerts).\n")
        print("| events | bytes/event plain | bytes/event zstd | ratio | compress s | compress MB/s | replay events/s plain | zstd | "
              "no analysis: plain | zstd |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        print("\n".join(compressed_rows))
        print("\nReading the log alone (every frame through LogReader), process CPU time per event, best of "
              f"{args.repeat}:\n\n| events | plain: us/event | zstd: us/event |\n|---:|---:|---:|")
        print("\n".join(reading))
        print("\nReplay against the live pipeline: the same log's messages and clock ticks, read into memory first, through "
              f"Pipeline.consume and tick (every rule, no sinks), best of {args.repeat} ({timer}); 'recording' is the "
              "daemon's pipeline as it runs live, its event log first (a fresh directory each run):\n\n"
              "| events | replay: events/s | live, rules only: events/s | replay / live | live, recording: events/s | "
              "replay / live recording |\n|---:|---:|---:|---:|---:|---:|")
        print("\n".join(against_live))
        samples = [("fresh values every step", root / "log-fresh", True)]
        if args.log is not None:
            samples.append((f"recorded: {args.log}", args.log, False))
        print("\n| log | events | bytes/event plain | bytes/event zstd | ratio | replay events/s plain | zstd |\n|---|---:|---:|---:|---:|---:|---:|")
        for label, source, generate in samples:
            plain = root / "sample-plain"
            shutil.rmtree(plain, ignore_errors=True)
            if generate:
                write_log(plain, args.cli_size, fresh=True)
            else:
                shutil.copytree(source, plain, ignore=shutil.ignore_patterns("dead-letter", "*.json*", "*.lock"))
            plain_bytes = sum(p.stat().st_size for p in segment_paths(plain))
            packed = root / "sample-zstd"
            shutil.rmtree(packed, ignore_errors=True)
            shutil.copytree(plain, packed)
            for path in segment_paths(packed):
                if not path.name.endswith(".zst"):
                    compress_segment(path)
            packed_bytes = sum(p.stat().st_size for p in segment_paths(packed))
            full = min((replay_seconds(plain, True) for _ in range(args.repeat)), key=lambda r: r[0])
            full_z = min((replay_seconds(packed, True) for _ in range(args.repeat)), key=lambda r: r[0])
            complete &= full[1] == full_z[1] and full[2] == full_z[2]
            print(f"| {label} | {full[1]:,} | {plain_bytes / full[1]:.1f} | {packed_bytes / full[1]:.1f} | {plain_bytes / packed_bytes:.1f}x | "
                  f"{full[1] / full[0]:,.0f} | {full_z[1] / full_z[0]:,.0f} |")
        tiny = root / "log-tiny"
        write_log(tiny, PER_MESSAGE)
        fixed = min(replay_seconds(tiny, True)[0] for _ in range(max(1, args.repeat)))
        print(f"\nFixed cost of an in-process replay (a 1-message log: pipeline set-up, event loop): {fixed * 1000:.1f} ms")
        start_up = min(cli_seconds(tiny) for _ in range(max(1, args.repeat)))
        total = min(cli_seconds(logs[args.cli_size]) for _ in range(max(1, args.repeat)))
        events = replay_seconds(logs[args.cli_size], False)[1]
        print("\n| CLI end to end (`python -m simic.consumer replay LOG --json`) | seconds | events/s |\n|---|---:|---:|")
        print(f"| {events:,} events | {total:.2f} | {events / total:,.0f} |")
        print(f"| 1 message (start-up: interpreter, imports) | {start_up:.2f} | |")
        if total > start_up:
            print(f"| {events:,} events, start-up subtracted | {total - start_up:.2f} | {events / (total - start_up):,.0f} |")
        print(f"\nevery event written was replayed and counted: {'yes' if complete else 'NO'}")
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0 if complete else 1


if __name__ == "__main__":
    sys.exit(main())
