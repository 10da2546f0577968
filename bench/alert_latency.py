"""Emit-to-alert latency: from the trainer's ``emit`` of a NaN to the alert at a subscriber, same host.

A real ``simic-consumer run`` (started with ``simic.producer.spawn_consumer``, default
configuration, so it also writes its event log and ``alerts.jsonl`` and prints every alert) receives
from a real producer process: an :class:`simic.producer.Emitter` sending the realistic 8-event PPO
step of ``_workload.py`` with one ``flush()`` per step, paced to ``--rate`` events/s. Every
``--alert-every``-th step the actor's ``lstm_health`` carries ``h_norm = NaN``: the ``non_finite``
rule raises a critical alert (and the critic's finite ``lstm_health`` in the same message clears it).

The latency of an alert is the time it arrives at a ZeroMQ SUB socket on the consumer's alerts
endpoint (in this process, which does nothing else) minus the ``clock_ns`` it carries: the
producer's ``time.monotonic_ns()`` when it emitted the event that fired it (the alert is stamped
with its event's clock). CLOCK_MONOTONIC is one clock for every process of a host. Reported:
p50, p90, p99 and max over the critical alerts, and over the clears.

Then the run ends (``run_end`` with the producer's counts), the consumer is stopped and its log
inspected (``simic-consumer inspect --json``): events received against events produced, lost and
rejected, and the consumer's CPU time per event while it kept up (from ``/proc/PID/stat``).

    .venv/bin/python bench/alert_latency.py            # 1,000 alerts at 1,000 events/s: about 20 s
    .venv/bin/python bench/alert_latency.py --quick    # 50 alerts, a few seconds
    .venv/bin/python bench/alert_latency.py --rate 20000 --alerts 2000
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

if not __package__:  # run as a script (python bench/alert_latency.py): the repository root makes the `bench` package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench._workload import STEP_VALUES, VARIANTS, emit_step  # noqa: E402
from bench.emit_cost import machine, percentile  # noqa: E402

from simic.producer import Emitter, EmitterSettings, spawn_consumer  # noqa: E402
from simic.schemas import decode_message  # noqa: E402

RUN_ID = "alert-latency"
EVENTS_PER_STEP = 8
MEASURED_FROM = 1_000_000
"""Steps from here on are measured; the warm-up steps before them are not."""
WAIT_S = 60.0
"""Hang guard for the handshakes with the producer process and the consumer."""


def nan_step(values: tuple[Any, ...]) -> tuple[Any, ...]:
    """The same step with the actor core's ``h_norm`` NaN (what a diverging LSTM sends)."""
    gpu_phases, norms, total, clipped, post_norms, actor, critic, epochs, host_phases = values
    return gpu_phases, norms, total, clipped, post_norms, (math.nan, *actor[1:]), critic, epochs, host_phases


def producer_main(endpoint: str, conn: Any, rate: float, steps: int, alert_every: int) -> None:
    """The trainer: warm-up steps (each with a NaN) until told to go, then ``steps`` paced steps."""
    emitter = Emitter(endpoint, run_id=RUN_ID, alerts_endpoint=None, settings=EmitterSettings(heartbeat_interval_s=5.0))
    conn.send(emitter.session)
    step = 0
    while not conn.poll(0.02):  # until the subscriber has seen an alert: it is connected
        emit_step(emitter.emit, step, nan_step(STEP_VALUES[step % VARIANTS]))
        emitter.flush()
        step += 1
    conn.recv()
    period_ns = int(EVENTS_PER_STEP / rate * 1e9)
    start = next_ns = time.monotonic_ns()
    for i in range(steps):
        values = STEP_VALUES[i % VARIANTS]
        emit_step(emitter.emit, MEASURED_FROM + i, nan_step(values) if i % alert_every == 0 else values)
        emitter.flush()
        next_ns += period_ns
        delay = next_ns - time.monotonic_ns()
        if delay > 0:
            time.sleep(delay / 1e9)
    elapsed = (time.monotonic_ns() - start) / 1e9
    emitter.close()
    conn.send({"stats": emitter.stats.as_dict(), "elapsed_s": elapsed, "session": emitter.session})


@dataclass
class Received:
    severity: str
    cleared: bool
    step: int
    latency_ns: int


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(rate: float, alerts: int, alert_every: int, tmp: Path, config: Path | None = None) -> dict[str, Any]:
    steps = alerts * alert_every
    sidecar = spawn_consumer(None, log_dir=tmp / "logs", args=["--config", str(config)] if config else ())
    context = zmq.Context()
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.RCVHWM, 100_000)
    sub.setsockopt(zmq.SUBSCRIBE, RUN_ID.encode())
    sub.connect(sidecar.alerts_endpoint)
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    producer = ctx.Process(target=producer_main, args=(sidecar.endpoint, child, rate, steps, alert_every), daemon=True)
    producer.start()
    received: list[Received] = []
    try:
        if not parent.poll(WAIT_S):
            raise RuntimeError("the producer process did not start")
        session = parent.recv()
        if not sub.poll(int(WAIT_S * 1000)):  # a warm-up alert: the subscription is in place
            raise RuntimeError("no alert from the consumer during the warm-up")
        while sub.poll(0):
            sub.recv_multipart()
        cpu_before = cpu_seconds(sidecar.pid)
        parent.send("go")
        expected_critical = len(range(0, steps, alert_every))
        critical = 0
        report = None
        deadline = time.monotonic() + WAIT_S + steps * EVENTS_PER_STEP / rate
        while time.monotonic() < deadline:
            if report is None and parent.poll(0):
                report = parent.recv()
                deadline = min(deadline, time.monotonic() + 2.0)  # what is still on its way
            if report is not None and critical >= expected_critical:
                break
            if not sub.poll(50):
                continue
            while True:
                try:
                    _, raw = sub.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                now = time.monotonic_ns()
                for alert in decode_message(raw).events:  # the channel also carries delivery receipts
                    if alert.kind != "alert" or alert.rule != "non_finite" or alert.step < MEASURED_FROM:
                        continue
                    received.append(Received(alert.severity, alert.cleared, alert.step, now - alert.clock_ns))
                    critical += alert.severity == "critical" and not alert.cleared
        if report is None:
            raise RuntimeError("the producer process did not finish")
        sidecar.wait_for_line(f"run {RUN_ID} rank 0 session {session} ended", WAIT_S)
        cpu_used = cpu_seconds(sidecar.pid) - cpu_before
    finally:
        producer.join(WAIT_S)
        sub.close()
        context.term()
        code = sidecar.close()
    inspect = subprocess.run([sys.executable, "-m", "simic.consumer", "inspect", str(tmp / "logs"), "--json"],
                             capture_output=True, text=True, check=True)
    summary = json.loads(inspect.stdout)
    return {"received": received, "report": report, "summary": summary, "cpu_s": cpu_used, "exit": code,
            "expected_critical": expected_critical, "steps": steps}


def latency_row(name: str, latencies_ns: list[int], expected: int | None = None) -> str:
    if not latencies_ns:
        return f"| {name} | 0 | | | | | |"
    us = [x / 1000 for x in latencies_ns]
    count = f"{len(us)}" + (f" of {expected}" if expected is not None else "")
    return (f"| {name} | {count} | {percentile(us, 0.5) / 1000:.2f} | {percentile(us, 0.9) / 1000:.2f} | "
            f"{percentile(us, 0.99) / 1000:.2f} | {max(us) / 1000:.2f} | {min(us) / 1000:.2f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=1000.0, help="events/s the producer sends (default 1000)")
    parser.add_argument("--alerts", type=int, default=1000, help="critical alerts to measure (default 1000)")
    parser.add_argument("--alert-every", type=int, default=2, help="a NaN step every N steps (default 2)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 50 alerts")
    parser.add_argument("--target-ms", type=float, default=5.0, help="p99 target in ms (default 5)")
    parser.add_argument("--config", type=Path, default=None, help="the consumer's TOML configuration (default: none, the defaults)")
    args = parser.parse_args(argv)
    if args.quick:
        args.alerts = 50
    info = machine()
    print(f"Machine: nproc {info['nproc']}, {info['cpu']}, Python {info['python']}, pyzmq {info['pyzmq']}, "
          f"libzmq {info['libzmq']}; 1-min load average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="simic-latency-") as tmp:
        result = measure(args.rate, args.alerts, args.alert_every, Path(tmp), args.config)
    report, summary = result["report"], result["summary"]
    stats = report["stats"]
    sent_rate = result["steps"] * EVENTS_PER_STEP / report["elapsed_s"]
    print(f"\nConsumer configuration: {args.config or 'defaults'}. Producer: {result['steps']} steps of {EVENTS_PER_STEP} events at {args.rate:,.0f} events/s "
          f"(achieved {sent_rate:,.0f}), a NaN every {args.alert_every} steps.\n")
    print("| alerts (non_finite) | received | p50 (ms) | p90 (ms) | p99 (ms) | max (ms) | min (ms) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    critical = [r.latency_ns for r in result["received"] if r.severity == "critical" and not r.cleared]
    cleared = [r.latency_ns for r in result["received"] if r.cleared]
    print(latency_row("critical (the NaN)", critical, result["expected_critical"]))
    print(latency_row("cleared (next finite event)", cleared))
    (run,) = summary["runs"][RUN_ID]
    lost = summary["lost"]
    rejected = sum(summary["rejected_messages"].values()) + sum(summary["rejected_events"].values())
    print("\n| consumer at that rate | value |\n|---|---:|")
    print(f"| events produced (whole run, warm-up and run_end included) | {stats['produced']:,} |")
    print(f"| events received and logged | {run['received']:,} |")
    print(f"| lost (sequence gaps) / dropped by the producer / rejected | {lost} / {run['dropped_by_producer']} / {rejected} |")
    print(f"| throughput while measured | {sent_rate:,.0f} events/s |")
    cpu_per_event = result["cpu_s"] / (result["steps"] * EVENTS_PER_STEP)
    print(f"| consumer CPU while measured | {result['cpu_s'] / report['elapsed_s']:.1%} of one core "
          f"({cpu_per_event * 1e6:.1f} us/event, log and alert sinks included) |")
    print(f"| consumer exit status | {result['exit']} |")
    p99 = percentile(critical, 0.99) / 1e6 if critical else math.inf
    complete = len(critical) == result["expected_critical"] and lost == 0 and run["received"] == stats["produced"]
    print(f"\ntarget: p99 <= {args.target_ms:g} ms: {'MET' if p99 <= args.target_ms else 'NOT MET'} ({p99:.2f} ms); "
          f"every alert and event delivered: {'yes' if complete else 'NO'}")
    return 0 if complete else 1


if __name__ == "__main__":
    sys.exit(main())
