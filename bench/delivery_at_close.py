"""A producer that closes while its daemon is far behind: what arrives, and what the emitter says.

A real ``simic-consumer run`` with small queues (``queue_messages`` 10, ``receive_hwm`` 100) receives
from emitters that emit back to back (batches of 16 events) and close at once, so the daemon is
still many messages behind on that producer when ``close()`` begins. Each round runs two sessions
against the same daemon: one with a ``linger_ms`` long enough for the consumer's delivery receipt to
come (the default, 1 s: close keeps the connection while it waits), one with ``linger_ms`` 0 (close gives up at once;
libzmq discards what is in flight, ``run_end`` with it). Afterwards the daemon's own summary lines
say what it received of each session.

    .venv/bin/python bench/delivery_at_close.py               # 5 rounds, about 20 seconds
    .venv/bin/python bench/delivery_at_close.py --rounds 1

Per session: the emitter's ``sent``, ``dropped`` (its own high-water mark), ``delivered`` /
``undelivered`` / ``unknown`` (its account at close), and whether the daemon saw ``run_end`` with
how many events it received.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from simic.producer import Emitter, EmitterSettings

EVENTS = 40_000
LINGERS_MS = (EmitterSettings().linger_ms, 0)
"""The default (1 s) and none."""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="simic-close-", dir="/tmp"))
    config = directory / "small.toml"
    config.write_text("[daemon]\nqueue_messages = 10\nreceive_hwm = 100\n")
    endpoint = f"ipc://{directory}/c.ipc"
    daemon = subprocess.Popen([sys.executable, "-m", "simic.consumer", "run", "--bind", endpoint, "--log-dir", str(directory / "logs"),
                               "--config", str(config)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in daemon.stdout:
        if "listening on" in line:
            break
    sessions = []
    for round_ in range(args.rounds):
        for linger in LINGERS_MS:
            run_id = f"r{round_}-linger{linger}"
            emitter = Emitter(endpoint, run_id=run_id, settings=EmitterSettings(exit_hooks=False, max_batch_events=16, linger_ms=linger))
            for step in range(EVENTS):
                emitter.emit_metrics(step=step, values={"loss": 0.5})
            start = time.monotonic()
            emitter.close()
            sessions.append((run_id, linger, emitter.stats, time.monotonic() - start))
    time.sleep(2)  # let the daemon finish what it still holds before asking it to stop (its summary lines follow)
    daemon.terminate()
    output = daemon.communicate(timeout=60)[0]
    ended = {m.group(1): int(m.group(2)) for m in re.finditer(r"run (\S+) rank 0 session \d+ ended \(\w+\): received (\d+)", output)}
    print(f"{'session':<22} {'sent':>6} {'dropped':>7} {'delivered':>9} {'undeliv.':>8} {'unknown':>7} {'close s':>7}  daemon saw run_end")
    for run_id, linger, stats, took in sessions:
        seen = f"yes, received {ended[run_id]}" if run_id in ended else "no (tail lost with the connection)"
        print(f"{run_id:<22} {stats.sent:>6} {stats.dropped:>7} {stats.delivered:>9} {stats.undelivered:>8} {stats.unknown:>7} {took:>7.3f}  {seen}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
