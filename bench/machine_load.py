"""Load the machine as a large package installation does, and run a command beside the load.

One busy process per core (pure-Python arithmetic, never sleeping) and one disk writer (``dd`` of
``--disk-mib`` MiB with ``conv=fsync``, rewritten in a loop in a temporary directory) start first;
the command then runs, and the load stops when it ends. The exit status is the command's.

    .venv/bin/python bench/machine_load.py -- .venv/bin/python -m pytest -q tests/reliability
    .venv/bin/python bench/machine_load.py --repeat 5 -- .venv/bin/python -m pytest -q tests/producer

With ``--repeat N`` the command runs N times under the same load, and one line per run says how it
ended (``run 3/5: exit 1 in 412 s``); the exit status is the first non-zero one. This is how
docs/RELIABILITY.md ("The suite on a loaded machine") checked that no test depends on timing.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time


def _spin() -> None:
    """Burn one core until killed."""
    x = 0
    while True:
        x = (x * 1103515245 + 12345) & 0x7FFFFFFF


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--cpu", type=int, default=os.cpu_count() or 1, help="busy processes (default: one per core)")
    parser.add_argument("--disk-mib", type=int, default=512, help="MiB the disk writer writes and syncs per pass (0: no writer; default 512)")
    parser.add_argument("--repeat", type=int, default=1, help="run the command this many times under the load (default 1)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command to run, after --")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command to run (give it after --)")

    scratch = tempfile.mkdtemp(prefix="machine-load-")
    spinners = [mp.Process(target=_spin, daemon=True) for _ in range(args.cpu)]
    for spinner in spinners:
        spinner.start()
    writer = None
    if args.disk_mib:
        target = os.path.join(scratch, "fill")
        writer = subprocess.Popen(["sh", "-c", f"while :; do dd if=/dev/zero of={target} bs=1M count={args.disk_mib} conv=fsync "
                                               f"status=none; rm -f {target}; done"], start_new_session=True)
    print(f"load: {args.cpu} busy process(es), disk writer {args.disk_mib} MiB per pass with fsync; "
          f"running {' '.join(command)} x{args.repeat}", flush=True)
    first_failure = 0
    try:
        for run in range(1, args.repeat + 1):
            started = time.monotonic()
            code = subprocess.run(command).returncode
            print(f"load: run {run}/{args.repeat}: exit {code} in {time.monotonic() - started:.0f} s "
                  f"(load average {os.getloadavg()[0]:.1f})", flush=True)
            first_failure = first_failure or code
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.join()
        if writer is not None:
            os.killpg(writer.pid, signal.SIGKILL)
            writer.wait()
        shutil.rmtree(scratch, ignore_errors=True)
    return first_failure


if __name__ == "__main__":
    sys.exit(main())
