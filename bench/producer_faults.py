"""The producer when the consumer is absent, running, stopped or killed: latency, drops, memory.

A real producer process (``simic.producer.Emitter``, the realistic step of ``_workload.py``: eight
``emit_<kind>`` calls, then ``flush()``) emits at full speed into a real ``simic-consumer run``
subprocess over ipc, in each consumer state:

- ``absent``: nobody ever binds the endpoint;
- ``running``: the consumer runs throughout (at full speed it cannot keep up: its bounded queues
  fill and the producer drops and counts, which is the back-pressure working);
- ``stopped``: SIGSTOP at 10 % of the events, SIGCONT at 90 %;
- ``killed``: SIGKILL at 10 %, a new consumer on the same endpoint and log at 90 %.

The fault is injected while the producer waits between two steps (it prints a mark and waits for
the go-ahead), so it lands at an exact event; nothing waited for is inside a timed call. Every
``emit_<kind>`` call and every ``flush()`` is timed alone with ``time.perf_counter_ns``. Reported:
per-event emit latency p50/p99/p99.9, flush latency per step and amortized per event, the
emitter's own counts (``emitter.stats``), exceptions that reached the trainer's loop (must be 0),
``close()`` time (bounded by ``linger_ms``), and the producer's RSS before the first event, at 20 %
(queues full by then) and at the end. The consumer's log is then read with ``simic-consumer
inspect --json``: what it received plus the sequence gaps it counted must equal what was produced.

With a running consumer, RSS grows by several MiB and then stays flat: the alerts it publishes
queue, unread, in the emitter's alert subscription (up to its high-water mark) unless the trainer
calls ``poll_alerts()``; ``--no-alerts`` leaves the subscription out.

    .venv/bin/python bench/producer_faults.py                # 1M events per state, about a minute
    .venv/bin/python bench/producer_faults.py --quick        # smoke run, a few seconds

The producer side is :class:`ProducerProcess` (this file run with ``--child``); the reliability
tests drive the same process.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from array import array
from pathlib import Path
from typing import Any

if not __package__:  # run as a script (python bench/producer_faults.py): the repository root makes the `bench` package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench._workload import RUN_ID, STEP_EVENTS, VARIANTS  # noqa: E402
from bench.emit_cost import machine, percentile  # noqa: E402

EVENTS_PER_STEP = len(STEP_EVENTS[0])
STATES = ("absent", "running", "stopped", "killed")
FAULT_AT, HEAL_AT = 0.1, 0.9
"""Fractions of the events at which the fault is injected and healed (stopped, killed)."""
FILL_AT = 0.2
"""Fraction of the events at which RSS is read once the queues are full (every state drops by then)."""
WAIT_S = 120.0
"""Hang guard for any line awaited from the producer or the consumer (not a timing)."""
PREFIX = "producer: "


def rss_kib() -> int:
    """This process's resident set size (VmRSS), KiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


# -- the producer process --------------------------------------------------------------------------


def _say(kind: str, payload: Any = None) -> None:
    sys.stdout.write(PREFIX + kind + ("" if payload is None else " " + json.dumps(payload)) + "\n")
    sys.stdout.flush()


def _await_go() -> None:
    line = sys.stdin.readline()
    if line.strip() != "go":
        raise SystemExit(f"producer: expected 'go' from the parent, got {line!r}")


def _summary(values: array) -> dict[str, float]:
    """p50/p99/p99.9/max/mean of nanosecond timings, in microseconds."""
    ordered = sorted(values)  # one sort; percentile() re-sorts a sorted list in linear time
    return {name: percentile(ordered, q) / 1000 for name, q in (("p50", 0.5), ("p99", 0.99), ("p99.9", 0.999))} | {
        "max": ordered[-1] / 1000, "mean": sum(ordered) / len(ordered) / 1000}


def child_main(args: argparse.Namespace) -> int:
    """Emit ``--events`` events as a trainer would, pausing at the marks for the parent's go-ahead.

    Lines out: ``ready`` (with the session), ``mark NAME`` (then waits for ``go``), ``emitted`` (stats
    before close; then waits for ``go``), ``result`` (everything measured).
    """
    from simic.producer import Emitter, EmitterSettings

    settings = EmitterSettings(send_hwm=args.send_hwm, linger_ms=args.linger_ms)
    steps = max(1, args.events // EVENTS_PER_STEP)
    marks = {max(0, min(steps, round(fraction * steps))): name for name, fraction in args.mark}
    sample_every = max(1, steps // 20)
    # Preallocated before the first RSS reading, so the measurement's own storage is not counted as growth.
    emit_ns = array("q", bytes(8 * steps * EVENTS_PER_STEP))
    flush_ns = array("q", bytes(8 * steps))
    rss_samples: list[tuple[int, int]] = [(0, 0)] * (steps // sample_every + 2)
    raised: list[str] = []  # what reached the trainer's loop (must stay empty); the first 10 are kept
    raised_count = 0

    def caught(exc: Exception) -> None:
        nonlocal raised_count
        raised_count += 1
        if len(raised) < 10:
            raised.append(repr(exc))

    emitter = Emitter(args.endpoint, run_id=RUN_ID, settings=settings, **({"alerts_endpoint": None} if args.no_alerts else {}))
    calls = [[(getattr(emitter, f"emit_{kind}"), fields) for kind, fields in step] for step in STEP_EVENTS]
    flush, clock = emitter.flush, time.perf_counter_ns
    _say("ready", {"session": emitter.session, "pid": os.getpid()})
    rss_before = rss_kib()
    at_fill, fill_step = 0, round(FILL_AT * steps)
    i = n_samples = 0
    for s in range(steps):
        if s in marks:
            _say("mark", marks[s])
            _await_go()
        if s % sample_every == 0:
            rss_samples[n_samples] = (s * EVENTS_PER_STEP, rss_kib())
            n_samples += 1
        if s == fill_step:
            at_fill = rss_kib()
        for method, fields in calls[s % VARIANTS]:
            t0 = clock()
            try:
                method(step=s, **fields)
            except Exception as exc:  # counted: the trainer must never see one
                caught(exc)
            emit_ns[i] = clock() - t0
            i += 1
        t0 = clock()
        try:
            flush()
        except Exception as exc:
            caught(exc)
        flush_ns[s] = clock() - t0
    rss_after = rss_kib()
    emitted = emitter.stats.as_dict()
    _say("emitted", emitted)
    _await_go()
    t0 = clock()
    try:
        emitter.close()
    except Exception as exc:
        caught(exc)
    close_ms = (clock() - t0) / 1e6
    _say("result", {
        "session": emitter.session,
        "steps": steps,
        "events": steps * EVENTS_PER_STEP,
        "emitted": emitted,
        "closed": emitter.stats.as_dict(),
        "raised": raised,
        "raised_count": raised_count,
        "emit_us": _summary(emit_ns),
        "flush_us": _summary(flush_ns),
        "flush_per_event_us": sum(flush_ns) / len(emit_ns) / 1000,
        "close_ms": close_ms,
        "rss_kib": {"before": rss_before, "at_fill": at_fill, "after": rss_after,
                    "max_rusage": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss},
        "rss_samples": rss_samples[:n_samples],
        "send_hwm": args.send_hwm,
    })
    return 0


class ProducerProcess:
    """The parent's handle on a producer process: await its lines, answer its marks, read its result.

    Every wait is bounded by ``timeout_s`` (a hang guard): a producer that blocks never reaches its
    next line, and the wait raises instead of hanging.
    """

    def __init__(self, endpoint: str, events: int, *, marks: dict[str, float] | None = None, send_hwm: int = 1000,
                 linger_ms: int = 1000, alerts: bool = True, timeout_s: float = WAIT_S) -> None:
        command = [sys.executable, os.path.abspath(__file__), "--child", endpoint, "--events", str(events),
                   "--send-hwm", str(send_hwm), "--linger-ms", str(linger_ms), *([] if alerts else ["--no-alerts"])]
        for name, fraction in (marks or {}).items():
            command += ["--mark", f"{name}={fraction}"]
        self.timeout_s = timeout_s
        self.output: list[str] = []
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, bufsize=1)
        self._lines: "queue.Queue[str | None]" = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self.session = self.expect("ready")["session"]

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)
            if line.startswith(PREFIX):
                self._lines.put(line[len(PREFIX):].rstrip("\n"))
        self._lines.put(None)

    def _line(self) -> str:
        try:
            line = self._lines.get(timeout=self.timeout_s)
        except queue.Empty:
            self.kill()
            raise TimeoutError(f"the producer printed nothing more within {self.timeout_s} s (blocked?):\n"
                               + "".join(self.output[-20:])) from None
        if line is None:
            raise RuntimeError(f"the producer exited ({self.proc.wait()}):\n" + "".join(self.output[-20:]))
        return line

    def expect(self, kind: str, value: Any = None) -> Any:
        """Wait for the producer's next protocol line; it must be ``kind`` (and ``value``, if given)."""
        line = self._line()
        got, _, payload = line.partition(" ")
        data = json.loads(payload) if payload else None
        if got != kind or (value is not None and data != value):
            self.kill()
            raise RuntimeError(f"expected {kind} {value or ''} from the producer, got {line!r}")
        return data

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def result(self) -> dict[str, Any]:
        """After ``emitted``: let it close, and return what it measured."""
        self.go()
        result = self.expect("result")
        self.proc.wait(self.timeout_s)
        self.proc.stdin.close()
        return result

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def consumer_summary(log_dir: Path, session: int) -> dict[str, Any]:
    """``simic-consumer inspect --json`` of a log: the entry of this producer session."""
    out = subprocess.run([sys.executable, "-m", "simic.consumer", "inspect", str(log_dir), "--json"],
                         capture_output=True, text=True, timeout=WAIT_S, check=True).stdout
    summary = json.loads(out)
    (entry,) = [s for s in summary["runs"][RUN_ID] if s["session"] == session]
    return entry | {"log_problems": [p["kind"] for p in summary.get("log_problems", [])]}


# -- the parent: one consumer state -----------------------------------------------------------------


def run_state(state: str, events: int, tmp: Path, send_hwm: int, alerts: bool = True) -> dict[str, Any]:
    """One producer run against a consumer in ``state``; returns the producer's result and the consumer's accounting."""
    from simic.producer import spawn_consumer

    directory = Path(tempfile.mkdtemp(prefix=f"pf-{state}-", dir=tmp))
    endpoint = f"ipc://{directory}/c.ipc"
    log_dir = directory / "logs"
    consumer = spawn_consumer(endpoint, log_dir=log_dir) if state != "absent" else None
    marks = {"fault": FAULT_AT, "heal": HEAL_AT} if state in ("stopped", "killed") else {}
    producer = ProducerProcess(endpoint, events, marks=marks, send_hwm=send_hwm, alerts=alerts)
    consumers = [consumer]
    try:
        if marks:
            producer.expect("mark", "fault")
            if state == "stopped":
                os.kill(consumer.pid, signal.SIGSTOP)
            else:
                consumer.process.kill()
                consumer.process.wait()
            producer.go()
            producer.expect("mark", "heal")
            if state == "stopped":
                os.kill(consumer.pid, signal.SIGCONT)
            else:
                consumer = spawn_consumer(endpoint, log_dir=log_dir)
                consumers.append(consumer)
            producer.go()
        producer.expect("emitted")
        result = producer.result()
        result["state"] = state
        if consumer is not None:
            ended = consumer.wait_for_line(f"session {producer.session} ended", WAIT_S)
            consumer.close()
            result["consumer"] = consumer_summary(log_dir, producer.session) if ended else None
        return result
    finally:
        producer.kill()
        for c in consumers:
            if c is not None:
                if c.returncode is None and c.pid is not None:
                    os.kill(c.pid, signal.SIGCONT)
                c.close()


def print_tables(results: list[dict[str, Any]]) -> None:
    mib = lambda kib: f"{kib / 1024:.1f}"  # noqa: E731
    print("\n| consumer | events | sent | dropped | raised | emit p50 / p99 / p99.9 (us) | flush/step p50 / p99 / p99.9 (us) "
          "| flush/event (us) | close (ms) | RSS MiB before / 20 % / end |")
    print("|---|---:|---:|---:|---:|---|---|---:|---:|---|")
    for r in results:
        e, f, rss, c = r["emit_us"], r["flush_us"], r["rss_kib"], r["closed"]
        print(f"| {r['state']} | {r['events']:,} | {c['sent']:,} | {c['dropped']:,} | {r['raised_count']} "
              f"| {e['p50']:.2f} / {e['p99']:.2f} / {e['p99.9']:.2f} | {f['p50']:.1f} / {f['p99']:.1f} / {f['p99.9']:.1f} "
              f"| {r['flush_per_event_us']:.2f} | {r['close_ms']:.0f} | {mib(rss['before'])} / {mib(rss['at_fill'])} / {mib(rss['after'])} |")
    print("\n| consumer | produced | sent + dropped | consumer received | counted lost | lost in transit | received + lost = produced | log problems |")
    print("|---|---:|---:|---:|---:|---:|---|---|")
    for r in results:
        c, s = r["closed"], r.get("consumer")
        if s is None:
            received = lost = transit = "-"
            check = "no consumer" if r["state"] == "absent" else "run_end never logged"
            problems = "-"
        else:
            received, lost, transit = f"{s['received']:,}", f"{s['lost']:,}", s["lost_in_transit"]
            check = "yes" if s["received"] + s["lost"] == c["produced"] else "NO"
            problems = ", ".join(s["log_problems"]) or "none"
        print(f"| {r['state']} | {c['produced']:,} | {c['sent'] + c['dropped']:,} | {received} | {lost} | {transit} | {check} | {problems} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Prints two markdown tables: the producer's costs and counts, and the consumer's accounting.")
    parser.add_argument("--events", type=int, default=1_000_000, help="events per consumer state (default 1000000)")
    parser.add_argument("--states", default=",".join(STATES), help=f"comma-separated subset of {','.join(STATES)}")
    parser.add_argument("--send-hwm", type=int, default=1000, help="the emitter's send_hwm (default 1000, the default setting)")
    parser.add_argument("--no-alerts", action="store_true",
                        help="the emitter subscribes to no alerts (by default it does, and never reads them, as a trainer "
                             "that does not call poll_alerts(): up to its alert queue's worth of memory is then held)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 40000 events per state (a few seconds)")
    parser.add_argument("--json", type=Path, help="also write the raw results to this file")
    parser.add_argument("--child", metavar="ENDPOINT", help=argparse.SUPPRESS)  # the producer process itself
    parser.add_argument("--linger-ms", type=int, default=1000, help=argparse.SUPPRESS)
    parser.add_argument("--mark", action="append", default=[], help=argparse.SUPPRESS,
                        type=lambda text: (text.split("=")[0], float(text.split("=")[1])))
    args = parser.parse_args(argv)
    if args.child:
        args.endpoint = args.child
        return child_main(args)
    if args.quick:
        args.events = 40_000
    states = [s for s in args.states.split(",") if s]
    unknown = set(states) - set(STATES)
    if unknown:
        parser.error(f"unknown states {sorted(unknown)}")

    info = machine()
    print(f"# simic producer under consumer faults: {args.events:,} events per state, {EVENTS_PER_STEP} per flush()")
    print(f"nproc={info['nproc']}  cpu={info['cpu']}  python={info['python']}  pyzmq={info['pyzmq']}  libzmq={info['libzmq']}")
    print(f"send_hwm={args.send_hwm}  alerts={'off' if args.no_alerts else 'subscribed, never read'}  fault at {FAULT_AT:.0%} and heal at {HEAL_AT:.0%} of the events (stopped, killed)")
    results = []
    with tempfile.TemporaryDirectory(prefix="simic-pf-", dir="/tmp") as tmp:
        for state in states:
            results.append(run_state(state, args.events, Path(tmp), args.send_hwm, alerts=not args.no_alerts))
    print_tables(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    bad = [r["state"] for r in results if r["raised_count"] or r["closed"]["sent"] + r["closed"]["dropped"] != r["closed"]["produced"]]
    print(f"\nexceptions reaching the trainer: {sum(r['raised_count'] for r in results)}; "
          f"sent + dropped == produced in every state: {'yes' if not bad else 'NO: ' + ', '.join(bad)}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
