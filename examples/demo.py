"""The demo behind `make demo`: a sidecar consumer, a small training loop that emits telemetry
with one injected fault (a NaN in the LSTM state), live alerts, then replay and inspect of the log.

Everything runs for real: the consumer is a separate `simic-consumer run` process, events travel
over a ZeroMQ ipc socket, the log is written to ./demo-out/logs.
"""

from __future__ import annotations

import math
import queue
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from simic.producer import Emitter

OUT = Path("demo-out")
STEPS = 600
HEADS = ["slot", "blueprint", "blend", "op", "value"]
NAN_AT = 400


def consumer_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "simic.consumer", *args]


def start_consumer(endpoint: str, log_dir: Path) -> tuple[subprocess.Popen, "queue.Queue[str]"]:
    proc = subprocess.Popen(
        consumer_command("run", "--bind", endpoint, "--log-dir", str(log_dir)),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
    )
    lines: "queue.Queue[str]" = queue.Queue()

    def pump() -> None:
        for line in proc.stdout:
            print(f"  [consumer] {line}", end="", flush=True)
            lines.put(line)
        lines.put("")

    threading.Thread(target=pump, daemon=True).start()
    return proc, lines


def wait_for(lines: "queue.Queue[str]", text: str, timeout: float = 30.0) -> str:
    while True:
        line = lines.get(timeout=timeout)
        if not line:
            raise SystemExit(f"consumer exited before printing {text!r}")
        if text in line:
            return line


def train(endpoint: str) -> None:
    """A stand-in training loop: plausible numbers, one NaN in the LSTM state at step NAN_AT."""
    rng = random.Random(0)
    with Emitter(endpoint, run_id="demo", heads=HEADS, config={"lr": 3e-4, "envs": 16}) as emitter:
        for step in range(STEPS):
            norms = {head: abs(rng.gauss(1.0, 0.1)) for head in HEADS}
            total = math.sqrt(sum(v * v for v in norms.values()))
            emitter.emit("step_timing", step=step, phases_ms={"rollout": 12 + rng.random(), "update": 8 + rng.random()})
            emitter.emit("head_grad_norms", step=step, norms=norms, total=total, pre_clip_total=total, post_clip_total=min(total, 0.5))
            h_norm = float("nan") if step == NAN_AT else 3.0 + rng.random()
            emitter.emit("lstm_health", step=step, h_norm=h_norm, c_norm=5.0, h_rms=0.3, c_rms=0.6, h_max_abs=0.9, c_max_abs=2.0,
                         has_nan=step == NAN_AT, has_inf=False)
            emitter.emit("ppo_update", step=step, policy_loss=-0.01, value_loss=0.5, approx_kl=0.01, clip_fraction=0.1,
                         entropy={head: 1.0 for head in HEADS[:4]}, learning_rate=3e-4)
            emitter.flush()
        print(f"trainer: {emitter.stats.produced} events produced, {emitter.stats.sent} sent, {emitter.stats.dropped} dropped")


def main() -> None:
    shutil.rmtree(OUT, ignore_errors=True)
    log_dir = OUT / "logs"
    sockets = Path(tempfile.mkdtemp(prefix="simic-demo-"))
    endpoint = f"ipc://{sockets}/consumer.ipc"

    print("== 1. start the sidecar consumer")
    proc, lines = start_consumer(endpoint, log_dir)
    wait_for(lines, "listening on")

    print(f"== 2. train for {STEPS} steps, NaN injected into the LSTM state at step {NAN_AT}")
    train(endpoint)
    wait_for(lines, "ended")

    print("== 3. stop the consumer (SIGTERM: drain, flush, close)")
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=30)
    print(f"consumer exited with {code}")

    print("== 4. replay the log through the same analysis")
    subprocess.run(consumer_command("replay", str(log_dir)), check=True)
    print("== 5. inspect the log")
    subprocess.run(consumer_command("inspect", str(log_dir)), check=True)
    print(f"\nlog, alerts.jsonl: {log_dir}/")
    shutil.rmtree(sockets, ignore_errors=True)


if __name__ == "__main__":
    main()
