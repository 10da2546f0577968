"""CPU cost of reading the event log, and its bytes per event, for one version of the code.

Writes ``bench/replay_speed.py``'s log of ``--events`` events with that version's ``write_log``, reads
every frame through ``LogReader`` five times (process CPU time, best of five: other work on a shared
machine does not count), and, where the version compresses segments, compresses every segment and
reads again. Runs against another checkout's bench and package to compare versions::

    .venv/bin/python bench/log_read_cost.py                                   # this checkout
    PYTHONPATH=/tmp/simic-main/pkg .venv/bin/python bench/log_read_cost.py --bench /tmp/simic-main/src/bench
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000, help="events in the log (default 1000000)")
    parser.add_argument("--bench", type=Path, default=Path(os.path.dirname(os.path.abspath(__file__))),
                        help="the bench/ folder whose replay_speed.write_log makes the log (default: this one)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 20,000 events")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(args.bench))
    from replay_speed import write_log

    from simic.schemas import eventlog

    events_wanted = 20_000 if args.quick else args.events
    root = Path(tempfile.mkdtemp(prefix="simic-readcost-", dir="/tmp"))

    def cpu(target: Path) -> float:
        best = float("inf")
        for _ in range(5):
            start = time.process_time()
            for _frame in eventlog.LogReader(target):
                pass
            best = min(best, time.process_time() - start)
        return best

    try:
        events, size = write_log(root / "log", events_wanted)
        print(f"| format | events | bytes | bytes/event | reading: us/event (CPU) |\n|---|---:|---:|---:|---:|")
        print(f"| {eventlog.LOG_FORMAT_VERSION}, plain | {events:,} | {size:,} | {size / events:.2f} | {cpu(root / 'log') / events * 1e6:.3f} |")
        if hasattr(eventlog, "compress_segment"):
            start = time.process_time()
            for path in eventlog.segment_paths(root / "log"):
                eventlog.compress_segment(path)
            spent = time.process_time() - start
            packed = sum(path.stat().st_size for path in eventlog.segment_paths(root / "log"))
            print(f"| {eventlog.LOG_FORMAT_VERSION}, zstd | {events:,} | {packed:,} | {packed / events:.2f} | {cpu(root / 'log') / events * 1e6:.3f} |")
            print(f"\ncompression: {size / packed:.1f}x, {spent / size * 1e9:.2f} s of CPU per GB of plain log")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
