"""A log that does not fill the disk: a real daemon under a byte budget, fed a long run.

A real ``simic-consumer run`` (``[log] max_segment_bytes``, ``max_total_bytes``, compression on) and
a real ``Emitter`` in this process sending the 8-event PPO step of ``_workload.py`` with fresh values
every step (nothing repeats, so compression is not flattered), one ``flush()`` per step, paced to
``--rate`` events/s. While it runs, the size of the log's segment files is sampled every 50 ms.
Afterwards: the largest size seen against the budget, what retention removed (``retention.jsonl``
and the daemon's Prometheus counters), the compression ratio, and ``simic-consumer inspect --json``:
received + removed by retention + lost = produced.

    .venv/bin/python bench/log_retention.py                     # 400k events, 1 MiB segments, 6 MiB budget; ~1 minute
    .venv/bin/python bench/log_retention.py --quick             # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

if not __package__:  # run as a script (python bench/log_retention.py): the repository root makes the `bench` package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench._workload import emit_step, step_values  # noqa: E402
from bench.emit_cost import machine  # noqa: E402

from simic.consumer.sinks.retention import RETENTION_FILE  # noqa: E402
from simic.producer import Emitter  # noqa: E402
from simic.schemas.eventlog import segment_paths  # noqa: E402

EVENTS_PER_STEP = 8
COMPRESSED = re.compile(r"event log: compressed \S+ \((\d+) -> (\d+) bytes\)")
WAIT_S = 120.0
"""Hang guard for the daemon's startup and shutdown lines."""


def start_daemon(endpoint: str, log_dir: Path, config: Path) -> tuple[subprocess.Popen, list[str], str]:
    proc = subprocess.Popen([sys.executable, "-m", "simic.consumer", "run", "--bind", endpoint, "--log-dir", str(log_dir),
                             "--config", str(config), "--metrics-port", "0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    url = ""
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if "serving metrics on" in line:
            url = line.rsplit(" ", 1)[1].strip()
        if "logging to" in line:
            break
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
    return proc, lines, url


def log_bytes(log_dir: Path) -> int:
    total = 0
    for path in segment_paths(log_dir):
        try:
            total += path.stat().st_size
        except FileNotFoundError:  # removed or compressed between listing and stat
            pass
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=400_000, help="events to send (default 400000)")
    parser.add_argument("--rate", type=int, default=20_000, help="events per second (default 20000)")
    parser.add_argument("--segment-mib", type=float, default=1.0, help="log.max_segment_bytes in MiB (default 1)")
    parser.add_argument("--budget-mib", type=float, default=6.0, help="log.max_total_bytes in MiB (default 6)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 40,000 events, 256 KiB segments, 1 MiB budget")
    args = parser.parse_args(argv)
    if args.quick:
        args.events, args.segment_mib, args.budget_mib = 40_000, 0.25, 1.0
    segment, budget = int(args.segment_mib * 2**20), int(args.budget_mib * 2**20)
    info = machine()
    print(f"Machine: nproc {info['nproc']}, {info['cpu']}, Python {info['python']}; 1-min load average {os.getloadavg()[0]:.2f}")
    root = Path(tempfile.mkdtemp(prefix="simic-retention-", dir="/tmp"))
    config = root / "consumer.toml"
    config.write_text(f"[log]\nmax_segment_bytes = {segment}\nmax_total_bytes = {budget}\n")
    log_dir = root / "log"
    proc, lines, url = start_daemon(f"ipc://{root}/c.ipc", log_dir, config)
    samples: list[int] = []
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.wait(0.05):
            samples.append(log_bytes(log_dir))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        steps = args.events // EVENTS_PER_STEP
        period = EVENTS_PER_STEP / args.rate
        started = time.perf_counter()
        with Emitter(f"ipc://{root}/c.ipc", run_id="retention-bench") as emitter:
            for step in range(steps):
                emit_step(emitter.emit, step, step_values(random.Random(step)))
                emitter.flush()
                delay = started + (step + 1) * period - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
        sent_s = time.perf_counter() - started
        deadline = time.monotonic() + WAIT_S
        while not any("ended (ok)" in line for line in lines) and time.monotonic() < deadline:
            time.sleep(0.05)
        metrics = urllib.request.urlopen(url, timeout=10).read().decode()
        proc.terminate()
        proc.wait(timeout=WAIT_S)
        sampling.set()
        sampler.join()
        inspect = json.loads(subprocess.run([sys.executable, "-m", "simic.consumer", "inspect", str(log_dir), "--json"],
                                            capture_output=True, text=True, check=True, timeout=WAIT_S).stdout)
        removed = [json.loads(line) for line in (log_dir / RETENTION_FILE).read_text().splitlines()] if (log_dir / RETENTION_FILE).exists() else []
        counters = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if line.startswith("simic_log_")}
        compressed = [match.groups() for line in lines if (match := COMPRESSED.search(line))]
        before = sum(int(b) for b, _ in compressed)
        after = sum(int(a) for _, a in compressed)
        (session,) = inspect["runs"]["retention-bench"]
        produced = emitter.stats.produced
        accounted = session["received"] + session["removed_by_retention"] + session["lost"]
        kept = segment_paths(log_dir)

        print(f"\n{produced:,} events in {sent_s:.1f} s ({produced / sent_s:,.0f} events/s), segments of {segment / 2**20:g} MiB, "
              f"budget {budget / 2**20:g} MiB (log.max_total_bytes)\n")
        print("| measure | value |\n|---|---:|")
        print(f"| log size, largest of {len(samples):,} samples (every 50 ms) | {max(samples) / 2**20:.2f} MiB |")
        print(f"| bound: budget + two segments (the live one, and the one just closed until maintenance has compressed it) | "
              f"{(budget + 2 * segment) / 2**20:.2f} MiB |")
        print(f"| log size at the end | {log_bytes(log_dir) / 2**20:.2f} MiB in {len(kept)} segments |")
        print(f"| segments written | {len(kept) + len(removed)} |")
        print(f"| segments compressed (daemon's lines / simic_log_segments_compressed_total) | {len(compressed)} / "
              f"{counters.get('simic_log_segments_compressed_total', 0):.0f} |")
        print(f"| compression, closed segments | {before / max(after, 1):.2f}x ({before / 2**20:.1f} -> {after / 2**20:.1f} MiB) |")
        removed_counter = counters.get('simic_log_segments_removed_total{reason="max_total_bytes"}', 0)
        print(f"| segments removed (retention.jsonl / simic_log_segments_removed_total) | {len(removed)} / {removed_counter:.0f} |")
        print(f"| bytes removed | {sum(r['bytes'] for r in removed) / 2**20:.2f} MiB |")
        print(f"| produced / received / removed by retention / lost | {produced:,} / {session['received']:,} / "
              f"{session['removed_by_retention']:,} / {session['lost']:,} |")
        bounded = max(samples) <= budget + 2 * segment
        print(f"\nlog within the bound: {'yes' if bounded else 'NO'}; every event accounted for: {'yes' if accounted == produced else 'NO'}")
        return 0 if bounded and accounted == produced else 1
    finally:
        sampling.set()
        if proc.poll() is None:
            proc.kill()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
