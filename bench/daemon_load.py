"""The consumer daemon under load: a burst of producer processes far above its throughput, then quiet.

A real ``simic-consumer run`` (started with ``simic.producer.spawn_consumer``) receives from N
producer processes: each is forked from this one, opens its own :class:`simic.producer.Emitter`
from the environment (``SIMIC_ENDPOINT``, ``SIMIC_RUN_ID``, ``RANK``) and emits the realistic
8-event step of ``_workload.py`` back to back, one message per step, for ``--burst-s`` seconds.
Then each *settles*: it sends a NaN marker until ZeroMQ takes it and closes (``run_end`` with its
counts) only once the daemon has alerted on the marker, i.e. has processed all it sent. A sampler
thread reads the daemon's ``VmRSS`` from ``/proc/PID/status`` and the size of its event log every
50 ms, before, during and after the burst. Afterwards the log is read back, so every figure comes
from what the daemon actually wrote:

- events logged/s during the burst (events in the frames on disk at each sample);
- daemon RSS before, during and after, against the bound its queues allow (:func:`rss_bound`);
- drops by place: at the producers' high-water mark (their own counts), in transit (counted by
  the daemon from sequence gaps), in the daemon (none: when its queue is full it stops reading);
  ``produced == logged + counted lost`` is checked for every producer;
- drain: seconds from the end of the burst until the daemon has processed all of it; then
  recovery: a fresh producer whose events must all be logged;
- the alerts the daemon raised meanwhile (the markers' ``non_finite`` left out).

Then the same burst with 1, 8 and 64 producer processes (scaling). The ``step_time`` rule is off
(:data:`NOISY_RULES`); every other rule runs with its defaults.

    .venv/bin/python bench/daemon_load.py            # about 2 minutes
    .venv/bin/python bench/daemon_load.py --quick    # smoke run, about 8 seconds

``tests/reliability/test_daemon_faults.py`` uses the same producers, sampler and bound.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import logging
import multiprocessing as mp
import os
import queue
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import msgpack
import zmq

if not __package__:  # run as a script (python bench/daemon_load.py): the repository root makes the `bench` package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench._workload import STEP_VALUES, VARIANTS, emit_step  # noqa: E402

from simic.consumer.config import DaemonConfig
from simic.consumer import ConsumerConfig  # noqa: E402
from simic.consumer.offline.replay import replay  # noqa: E402
from simic.producer import Emitter, EmitterSettings, spawn_consumer  # noqa: E402
from simic.schemas.transport import ENDPOINT_ENV, RUN_ID_ENV  # noqa: E402
from simic.schemas.eventlog import FRAME_MESSAGE, FRAME_OVERHEAD, LogReader, segment_paths  # noqa: E402

__all__ = [
    "ProducerResult",
    "ProducerGroup",
    "RssSampler",
    "Sample",
    "rss_bytes",
    "log_bytes",
    "logged_events",
    "events_on_disk",
    "write_config",
    "rss_bound",
    "zmq_message_bytes",
    "MARKER",
]

FRAME_HEADER_BYTES = FRAME_OVERHEAD
"""Bytes before a frame's payload in the event log (marker, type, length, counter, recv_ns, crc)."""
START_TIMEOUT_S = 60.0
"""Hang guard: longest wait for producer processes to start or report."""


# -- producer processes -----------------------------------------------------------------------------


@dataclass
class ProducerResult:
    """What one producer process did (its Emitter's stats and identity)."""

    run_id: str
    rank: int
    session: int
    pid: int
    produced: int
    sent: int
    dropped: int
    steps: int
    emit_s: float
    """Seconds spent emitting (the burst)."""
    close_s: float
    """Seconds ``close()`` took: delivering what ZeroMQ still held, then ``run_end``."""


MARKER = "non_finite run={run_id} rank={rank} step={step}:"
"""The daemon's alert line for a producer's settle marker (a NaN ``approx_kl`` at the step after its last)."""


def _producer(endpoint: str, run_id: str, rank: int, world_size: int, settings: dict[str, Any], steps: int | None,
              duration_s: float | None, pace_s: float, events: Any, results: Any, drop_counts: Any, index: int) -> None:
    os.environ.update({ENDPOINT_ENV: endpoint, RUN_ID_ENV: run_id, "RANK": str(rank), "WORLD_SIZE": str(world_size)})
    emitter = Emitter.from_env(settings=EmitterSettings(exit_hooks=False, **settings))
    results.put(("ready", run_id, rank))
    go, stop, close = events
    go.wait()
    emit, flush = emitter.emit, emitter.flush
    started = time.monotonic()
    end = started + duration_s if duration_s is not None else None
    step = 0
    while True:
        emit_step(emit, step, STEP_VALUES[step % VARIANTS])
        flush()
        step += 1
        if steps is not None and step >= steps:
            break
        if pace_s:
            time.sleep(pace_s)  # the trainer's own work between steps
        if step % 32 == 0:
            drop_counts[index] = emitter.stats.dropped  # ProducerGroup.dropped(), read while the producers run
            if stop.is_set() or (end is not None and time.monotonic() >= end):
                break
    emit_s = time.monotonic() - started
    # Closing while the daemon still works through this producer's backlog can lose the last
    # messages, run_end included (libzmq 4.3.5 drops what is still in the socket when the producer
    # hangs up while the daemon's receive queue for it is full). So: a marker the daemon alerts on,
    # retried until ZeroMQ takes it; once the daemon has printed that alert, everything this
    # producer sent before it was processed, and close() loses nothing.
    while True:
        dropped = emitter.stats.dropped
        emit("ppo_update", step=step, approx_kl=float("nan"))
        flush()
        if emitter.stats.dropped == dropped:
            break
        emitter._socket.poll(100, zmq.POLLOUT)  # room in the send queue again
    drop_counts[index] = emitter.stats.dropped
    results.put(("settled", run_id, rank, MARKER.format(run_id=run_id, rank=rank, step=step)))
    close.wait()
    closing = time.monotonic()
    emitter.close()
    stats = emitter.stats
    results.put(ProducerResult(run_id, rank, emitter.session, os.getpid(), stats.produced, stats.sent, stats.dropped,
                               step, emit_s, time.monotonic() - closing))


class ProducerGroup:
    """Producer processes, one :class:`Emitter` each, forked from this process.

    Args:
        endpoint: the consumer's endpoint (``SIMIC_ENDPOINT`` of each producer).
        identities: one ``(run_id, rank)`` per process (``SIMIC_RUN_ID`` and ``RANK``).
        steps: steps each producer emits (8 events each), or None: until ``duration_s`` or :meth:`stop`.
        duration_s: seconds each producer emits, or None.
        pace_s: sleep between steps (0: back to back, a burst).
        send_hwm, linger_ms: the emitters' settings.

    After its last step a producer sends a marker the daemon alerts on and closes only on
    :meth:`close`, once the caller has seen every :meth:`settled` line: nothing is lost at close.
    Use: :meth:`start` (returns once every process has its emitter open), :meth:`go` (all start
    at once), :meth:`settled`, :meth:`close`, :meth:`results`. While they run, :meth:`dropped` says
    how many events they have dropped so far: a fault can last until it has overflowed their queues.
    """

    def __init__(self, endpoint: str, identities: Sequence[tuple[str, int]], *, steps: int | None = None,
                 duration_s: float | None = None, pace_s: float = 0.0, send_hwm: int = 1000,
                 linger_ms: int = 60_000) -> None:
        self.endpoint = endpoint
        self.identities = list(identities)
        self.steps, self.duration_s, self.pace_s = steps, duration_s, pace_s
        self.settings = {"send_hwm": send_hwm, "linger_ms": linger_ms}
        context = mp.get_context("fork")  # the children share this process's imports: no interpreter start each
        self._events = (context.Event(), context.Event(), context.Event())  # go, stop, close
        self._results = context.Queue()
        self._dropped = context.Array("q", len(self.identities), lock=False)  # one writer per slot: its producer
        self._context = context
        self.processes: list[Any] = []
        self.go_time: float | None = None

    def start(self) -> "ProducerGroup":
        world = {run_id: sum(1 for r, _ in self.identities if r == run_id) for run_id, _ in self.identities}
        for index, (run_id, rank) in enumerate(self.identities):
            process = self._context.Process(
                target=_producer, daemon=True,
                args=(self.endpoint, run_id, rank, world[run_id], self.settings, self.steps, self.duration_s, self.pace_s,
                      self._events, self._results, self._dropped, index),
            )
            process.start()
            self.processes.append(process)
        for _ in self.processes:
            self._next()
        return self

    def go(self) -> float:
        """Let every producer start emitting; returns ``time.monotonic()`` of the start."""
        self.go_time = time.monotonic()
        self._events[0].set()
        return self.go_time

    def stop(self) -> None:
        """Ask producers that run until stopped to finish."""
        self._events[1].set()

    def dropped(self) -> int:
        """Events the producers have dropped so far, all together (each producer updates its count every
        32 steps, and once more when it has settled)."""
        return sum(self._dropped)

    def settled(self, timeout_s: float = START_TIMEOUT_S) -> list[str]:
        """Once every producer has sent its marker: the daemon alert line (a fragment) each one waits for."""
        return [self._next(timeout_s)[3] for _ in self.processes]

    def close(self) -> None:
        """Let settled producers close (``run_end`` with their counts)."""
        self._events[2].set()

    def results(self, timeout_s: float | None = None) -> list[ProducerResult]:
        """Each producer's result once it has closed (in order of arrival); joins the processes. The hang
        guard (default) is ``linger_ms`` more than :data:`START_TIMEOUT_S`: ``close()`` may wait that long
        for the consumer's delivery receipt, and says ``unknown`` if none comes."""
        if timeout_s is None:
            timeout_s = START_TIMEOUT_S + self.settings["linger_ms"] / 1000
        results = [self._next(timeout_s) for _ in self.processes]
        for process in self.processes:
            process.join(timeout_s)
        return results

    def _next(self, timeout_s: float = START_TIMEOUT_S) -> Any:
        try:
            return self._results.get(timeout=timeout_s)
        except queue.Empty:
            dead = [p.pid for p in self.processes if p.exitcode not in (None, 0)]
            raise RuntimeError(f"producers silent for {timeout_s} s (failed: {dead})") from None

    def kill(self) -> None:
        """End producers still running (clean-up after a failure)."""
        for event in self._events:
            event.set()
        for process in self.processes:
            if process.is_alive():
                process.kill()
            process.join(5)


# -- measuring the daemon ---------------------------------------------------------------------------


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (``VmRSS`` in ``/proc/PID/status``)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def log_bytes(log_dir: Path) -> int:
    """Bytes in the log's segment files now."""
    total = 0
    for path in segment_paths(log_dir) if log_dir.is_dir() else []:
        try:
            total += path.stat().st_size
        except FileNotFoundError:
            pass
    return total


@dataclass(frozen=True)
class Sample:
    t: float
    """``time.monotonic()``"""
    rss: int
    """Daemon resident bytes."""
    log: int
    """Bytes in the event log's segments."""


class RssSampler:
    """Samples a daemon's RSS and its log size every ``interval_s`` in a thread (a measurement, not a wait)."""

    def __init__(self, pid: int, log_dir: Path, interval_s: float = 0.05) -> None:
        self.pid, self.log_dir, self.interval_s = pid, log_dir, interval_s
        self.samples: list[Sample] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> "RssSampler":
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()
        self.sample()

    def sample(self) -> Sample | None:
        try:
            sample = Sample(time.monotonic(), rss_bytes(self.pid), log_bytes(self.log_dir))
        except (OSError, RuntimeError):  # the daemon has exited
            return None
        self.samples.append(sample)
        return sample

    def _run(self) -> None:
        while not self._done.wait(self.interval_s):
            self.sample()

    def between(self, start: float, end: float) -> list[Sample]:
        return [s for s in self.samples if start <= s.t <= end]


WORKING_BYTES = 8 * 2**20
"""Allowance for the daemon's own working memory on top of its queues (rule state, decoding, allocator slack)."""
ZMQ_BUFFER_BYTES = 8192 + 8 + 249 * 40
"""One libzmq receive buffer: ``in_batch_size`` (8 KiB) of data and a 40-byte content header for each
33 bytes of it (``shared_message_memory_allocator``); every message decoded from it keeps it alive."""


def zmq_message_bytes(message_bytes: int) -> int:
    """The most one message waiting in ZeroMQ's receive pipe can hold: the whole buffer it was read
    into (one message per read, when the I/O thread keeps up with the wire), or its own allocation
    when it does not fit one, plus its slot in the pipe."""
    return max(ZMQ_BUFFER_BYTES, message_bytes + 64) + 64


def rss_bound(idle: int, *, queue_messages: int, receive_hwm: int, producers: int, message_bytes: int) -> int:
    """The most the daemon's RSS may reach when all its queues are full of ``message_bytes`` messages:
    idle RSS + the asyncio queue (``queue_messages`` x (message + 200 B: bytes object, tuple, queue
    slot)) + ZeroMQ's receive pipes (``receive_hwm`` messages per producer connection, each
    :func:`zmq_message_bytes`) + :data:`WORKING_BYTES`."""
    return (idle + queue_messages * (message_bytes + 200) + producers * receive_hwm * zmq_message_bytes(message_bytes)
            + WORKING_BYTES)


def logged_events(log_dir: Path) -> tuple[list[tuple[int, int]], int, int]:
    """Read the log back: ``(cumulative (bytes, events) at the end of each message frame, events, largest message)``.

    Bytes count across segments in order, so a log size sampled while the daemon ran maps to the
    events on disk at that moment (:func:`events_on_disk`).
    """
    marks: list[tuple[int, int]] = []
    events = largest = 0
    base = 0
    for path in segment_paths(log_dir):
        for frame in LogReader(path):
            if frame.type == FRAME_MESSAGE:
                try:
                    events += len(msgpack.unpackb(frame.payload)[4])
                except Exception:  # a refused message: no events
                    pass
                largest = max(largest, len(frame.payload))
                marks.append((base + frame.offset + FRAME_HEADER_BYTES + len(frame.payload), events))
        base += path.stat().st_size
    return marks, events, largest


def events_on_disk(marks: list[tuple[int, int]], size: int) -> int:
    """Events in the frames that end at or before ``size`` bytes of log."""
    index = bisect.bisect_right(marks, (size, float("inf")))
    return marks[index - 1][1] if index else 0


NOISY_RULES = ("step_time",)
"""Rules the load configs turn off: the workload's 64 random timing variants look like step-time
regressions to ``step_time``, whose alert lines would flood the output."""


def write_config(path: Path, *, disabled_rules: Sequence[str] = NOISY_RULES, **daemon: float) -> Path:
    """A consumer TOML config with these ``[daemon]`` settings and ``disabled_rules`` turned off."""
    text = "[daemon]\n" + "".join(f"{key} = {value}\n" for key, value in daemon.items())
    text += "".join(f"\n[rules.{rule}]\nenabled = false\n" for rule in disabled_rules)
    path.write_text(text)
    return path


# -- the benchmark ----------------------------------------------------------------------------------


@dataclass
class BurstResult:
    producers: int
    burst_s: float
    produced: int = 0
    sent: int = 0
    dropped: int = 0
    logged: int = 0
    lost: int = 0
    """Counted by the daemon (sequence gaps)."""
    lost_in_transit: int = 0
    exact: bool = False
    """``produced == logged + lost`` for every producer, and lost == dropped + in transit."""
    logged_per_s: float = 0.0
    produced_per_s: float = 0.0
    rss_idle: int = 0
    rss_burst: tuple[int, int] = (0, 0)
    rss_drain: tuple[int, int] = (0, 0)
    rss_after: tuple[int, int] = (0, 0)
    bound: int = 0
    largest_message: int = 0
    drain_s: float = 0.0
    """From the end of the burst until every run_end was logged."""
    recovered: str = ""
    alerts: Counter = field(default_factory=Counter)
    """Alerts the daemon raised, by rule and fired/cleared (the settle markers' non_finite left out)."""
    notes: list[str] = field(default_factory=list)


def _span(samples: list[Sample]) -> tuple[int, int]:
    values = [s.rss for s in samples]
    return (min(values), max(values)) if values else (0, 0)


def burst(producers: int, burst_s: float, queue_messages: int, receive_hwm: int, tmp: Path, quiet_s: float) -> BurstResult:
    """One burst of ``producers`` processes against a fresh daemon; see the module docstring."""
    work = Path(tempfile.mkdtemp(prefix=f"load{producers}-", dir=tmp))
    log_dir = work / "logs"
    config = write_config(work / "simic.toml", queue_messages=queue_messages, receive_hwm=receive_hwm)
    result = BurstResult(producers, burst_s)
    sidecar = spawn_consumer(f"ipc://{work}/c.ipc", log_dir=log_dir, args=["--config", str(config)])
    group = ProducerGroup(sidecar.endpoint, [(f"load-{i // 8}", i % 8) for i in range(producers)], duration_s=burst_s)

    def wait_line(text: str) -> None:
        if sidecar.wait_for_line(text, timeout_s=START_TIMEOUT_S) is None:
            raise RuntimeError(f"no {text!r} from the consumer:\n" + "".join(sidecar.lines[-20:]))

    def finish(group: ProducerGroup) -> tuple[list[ProducerResult], float]:
        for text in group.settled():  # the daemon has processed everything these producers sent
            wait_line(text)
        drained = time.monotonic()
        group.close()
        results = group.results()
        for r in results:
            wait_line(f"run {r.run_id} rank {r.rank} session {r.session} ended")
        return results, drained

    fresh = ProducerGroup(sidecar.endpoint, [("after-burst", 0)], steps=200)
    try:
        group.start()
        with RssSampler(sidecar.pid, log_dir) as sampler:
            result.rss_idle = sampler.samples[0].rss
            start = group.go()
            burst_end = start + burst_s
            results, drained = finish(group)
            # Recovery: a fresh producer after the burst; every one of its events must be logged.
            fresh.start().go()
            (fresh_result,), _ = finish(fresh)
            time.sleep(quiet_s)  # quiet after the burst: the RSS is watched a little longer
        code = sidecar.close()
        if code != 0:
            result.notes.append(f"consumer exited {code}")
        alerts = [json.loads(line) for line in (log_dir / "alerts.jsonl").read_text().splitlines()]
    finally:
        group.kill()
        fresh.kill()
        sidecar.close()

    for alert in alerts:
        if alert["rule"] != "non_finite":  # non_finite: the settle markers (the workload has no NaN)
            result.alerts[f"{alert['rule']} {'cleared' if alert['cleared'] else 'fired'}"] += 1
    summary = asyncio.run(replay([log_dir], ConsumerConfig(), analysis=False)).summary
    sessions = {(s["run_id"], s["rank"], s["session"]): s for run in summary["runs"].values() for s in run}
    exact = True
    for r in results:
        s = sessions.get((r.run_id, r.rank, r.session))
        if s is None:
            exact = False
            continue
        result.produced += r.produced
        result.sent += r.sent
        result.dropped += r.dropped
        result.logged += s["received"]
        result.lost += s["lost"]
        result.lost_in_transit += s["lost_in_transit"] or 0
        exact &= r.produced == s["received"] + s["lost"] and s["lost"] == r.dropped + (s["lost_in_transit"] or 0)
    fresh_session = next(iter(summary["runs"].get("after-burst", [])), None)
    result.recovered = ("yes" if fresh_session and fresh_session["lost"] == 0 and fresh_session["received"] == fresh_result.produced
                        and fresh_result.dropped == 0 else "NO")
    result.exact = exact and not summary["log_problems"]
    marks, _, result.largest_message = logged_events(log_dir)
    window = sampler.between(start, burst_end)
    if len(window) >= 2:
        first, last = window[0], window[-1]
        result.logged_per_s = (events_on_disk(marks, last.log) - events_on_disk(marks, first.log)) / (last.t - first.t)
    result.produced_per_s = result.produced / burst_s
    result.rss_burst = _span(window)
    result.rss_drain = _span(sampler.between(burst_end, drained))
    result.rss_after = _span(sampler.between(drained, float("inf")))
    result.drain_s = drained - burst_end
    result.bound = rss_bound(result.rss_idle, queue_messages=queue_messages, receive_hwm=receive_hwm, producers=producers + 1,
                             message_bytes=result.largest_message)
    shutil.rmtree(work, ignore_errors=True)
    return result


def _mib(value: int) -> str:
    return f"{value / 2**20:.1f}"


def main(argv: list[str] | None = None) -> int:
    from emit_cost import machine

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--producers", type=int, default=8, help="producer processes in the main burst (default 8)")
    parser.add_argument("--burst-s", type=float, default=10.0, help="seconds each producer emits back to back (default 10)")
    parser.add_argument("--scaling", default="1,8,64", help="producer counts for the scaling table (default 1,8,64)")
    parser.add_argument("--scaling-burst-s", type=float, default=5.0, help="burst seconds in the scaling runs (default 5)")
    defaults = DaemonConfig()
    parser.add_argument("--queue-messages", type=int, default=defaults.queue_messages,
                        help="daemon.queue_messages (default: the daemon's, %(default)s)")
    parser.add_argument("--receive-hwm", type=int, default=defaults.receive_hwm, help="daemon.receive_hwm (default: the daemon's, %(default)s)")
    parser.add_argument("--quiet-s", type=float, default=2.0, help="seconds RSS is watched after recovery (default 2)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 producers for 0.5 s, scaling 1,2 for 0.5 s")
    args = parser.parse_args(argv)
    if args.quick:
        args.producers, args.burst_s, args.scaling, args.scaling_burst_s, args.quiet_s = 2, 0.5, "1,2", 0.5, 0.2

    logging.getLogger("simic.consumer").setLevel(logging.ERROR)  # reading the log back: its gaps are the figures, not warnings
    info = machine()
    print("# simic-consumer under a burst of producers")
    print(f"nproc={info['nproc']}  cpu={info['cpu']}  python={info['python']}  pyzmq={info['pyzmq']}  libzmq={info['libzmq']}")
    print(f"daemon.queue_messages={args.queue_messages}  daemon.receive_hwm={args.receive_hwm}  producer send_hwm=1000  "
          f"workload: 8-event PPO step per message (bench/_workload.py), back to back")
    print(f"1-min load average before the run: {os.getloadavg()[0]:.2f} (other work on the machine skews every figure)")
    tmp = Path(tempfile.mkdtemp(prefix="simic-load-"))
    try:
        main_run = burst(args.producers, args.burst_s, args.queue_messages, args.receive_hwm, tmp, args.quiet_s)
        print(f"\n### burst: {main_run.producers} producers x {main_run.burst_s:g} s, then quiet\n")
        print("| phase | seconds | daemon RSS MiB (min..max) | events logged/s |")
        print("|---|---:|---:|---:|")
        print(f"| idle, before | - | {_mib(main_run.rss_idle)} | - |")
        print(f"| burst | {main_run.burst_s:g} | {_mib(main_run.rss_burst[0])}..{_mib(main_run.rss_burst[1])} | {main_run.logged_per_s:,.0f} |")
        print(f"| drain (burst end until all of it is processed) | {main_run.drain_s:.1f} | "
              f"{_mib(main_run.rss_drain[0])}..{_mib(main_run.rss_drain[1])} | - |")
        print(f"| after (fresh producer, then quiet) | - | {_mib(main_run.rss_after[0])}..{_mib(main_run.rss_after[1])} | - |")
        peak = max(main_run.rss_burst[1], main_run.rss_drain[1], main_run.rss_after[1])
        print(f"\nRSS bound (rss_bound: idle + queue_messages x (message + 200 B) + (producers + 1) x receive_hwm x "
              f"{zmq_message_bytes(main_run.largest_message):,} B + 8 MiB; largest message {main_run.largest_message} B) = "
              f"{_mib(main_run.bound)} MiB; max seen {_mib(peak)} MiB: {'within' if peak <= main_run.bound else 'ABOVE'}")
        print("\n| where | events |\n|---|---:|")
        print(f"| produced | {main_run.produced:,} |")
        print(f"| dropped at the producers' high-water mark (their counts) | {main_run.dropped:,} |")
        print(f"| lost in transit (counted by the daemon) | {main_run.lost_in_transit:,} |")
        print("| dropped inside the daemon | 0 (a full queue stops the reading) |")
        print(f"| logged | {main_run.logged:,} |")
        print(f"| counted lost (sequence gaps) | {main_run.lost:,} |")
        print(f"\nproduced == logged + counted lost for every producer: {'yes' if main_run.exact else 'NO'}; "
              f"recovery (a fresh producer's 1,600 events all logged): {main_run.recovered}")
        print("alerts raised: " + (", ".join(f"{name} {count}" for name, count in sorted(main_run.alerts.items())) or "none"))
        for note in main_run.notes:
            print(f"note: {note}")

        print(f"\n### scaling: producers x {args.scaling_burst_s:g} s burst\n")
        print("| producers | produced events/s | events logged/s | dropped at producers | daemon RSS max MiB | RSS bound MiB | drain s | exact |")
        print("|---:|---:|---:|---:|---:|---:|---:|---|")
        for count in [int(c) for c in args.scaling.split(",") if c]:
            r = burst(count, args.scaling_burst_s, args.queue_messages, args.receive_hwm, tmp, 0.0)
            drop = r.dropped / r.produced if r.produced else 0.0
            print(f"| {count} | {r.produced_per_s:,.0f} | {r.logged_per_s:,.0f} | {drop:.1%} | "
                  f"{_mib(max(r.rss_burst[1], r.rss_drain[1]))} | {_mib(r.bound)} | {r.drain_s:.1f} | {'yes' if r.exact else 'NO'} |")
            for note in r.notes:
                print(f"note ({count} producers): {note}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
