"""Trainer-side cost of telemetry: microseconds per event on the training thread.

Peer rows (tensorboardX, wandb) need those libraries: the ``[tensorboard]`` and ``[wandb]`` extras
(``make test`` installs them in ``.venv``), or, as the published numbers were measured, a separate
virtualenv with the versions pinned in ``bench/requirements-peers.txt``::

    python3 -m venv /tmp/peers-venv
    /tmp/peers-venv/bin/pip install torch==2.13.0 -e . -r bench/requirements-peers.txt
    /tmp/peers-venv/bin/python bench/emit_cost.py

wandb runs with ``mode="offline"``, its run directory, cache and config in this run's temporary
directory, and no network: no system-metrics sampler (it probes cloud metadata addresses), no
error reporting, no git or code capture, console capture off.

Every variant sends the same realistic step (eight events, see ``_workload.py``) and is timed per
step with ``time.perf_counter_ns``; the variants run interleaved, in a shuffled order, over several
rounds. Reported per variant, from every step's latency pooled over the rounds: the typical cost
of one event (median step time / 8) and its ratio to the raw floor; the mean cost (median over
rounds of the mean step time / 8, so tails such as GC and preemption count); p50/p99 of the step.

Variants:

- ``simic batched``: ``Emitter.emit`` x 8, then ``flush()`` (one message per step): the intended use.
  The calls are written as a trainer writes them, with literal keyword arguments (``_workload.emit_step``).
- ``simic batched, background delivery off``: the same two, with ``EmitterSettings(background_delivery=False)``:
  batches leave only from ``emit``/``flush``, no delivery thread sends for them (the thread, process-wide,
  still runs for the other emitters). ``--background-delivery off`` turns it off for every emitter
  (the thread never starts), ``on`` for every emitter; the default, ``both``, times the two side by side.
- ``simic single``: ``flush()`` after every ``emit`` (one message per event).
- ``floor batched`` / ``floor single``: what a hand-written sender must do at least: build the same
  positional rows (code, seq, clock, step, payload), ``msgpack.packb`` them in the same envelope and
  ``send(NOBLOCK)`` them on a PUSH socket, once per step or once per event.
- ``logging``: ``logging.FileHandler``, one ``logger.info("%s step=%d %s", kind, step, fields)`` per event
  (same ``emit_step`` calls, so the same keyword-argument dicts are built).
- ``... no consumer``: the PUSH socket is connected to an ipc path nobody binds; after warm-up its
  queue is at SNDHWM and every send is dropped with ``zmq.Again`` (counted).
- ``tensorboardX``: one ``SummaryWriter.add_scalar`` per numeric value of the step (a dict field is one
  scalar per key), as a trainer logs scalars; ``wandb``: one ``run.log`` per step with every value
  as a key. Only when installed (see above); their ratio is to the batched floor. They are timed
  after the other variants, in rounds of their own: their background threads would slow whatever
  is timed while they exist.

The receiving side is real: a separate process (multiprocessing, spawn) binds a PULL socket on
``ipc://`` in a temporary directory, says it is ready through a pipe, and drains and decodes every
message as the consumer would (``--receiver``). Each variant is measured twice: back to back
(``burst``) and ``paced``, with ``--pace-us`` of busy host work (holding the GIL, like a training
loop) between steps, which is how a trainer really calls it: then each send must wake ZeroMQ's
idle I/O thread.

    .venv/bin/python bench/emit_cost.py            # about 30 seconds
    .venv/bin/python bench/emit_cost.py --quick    # a few seconds, smoke run
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import importlib.util
import logging
import multiprocessing as mp
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import msgpack
import zmq

if not __package__:  # run as a script (python bench/emit_cost.py): the repository root makes the `bench` package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench._workload import RUN_ID, STEP_EVENTS, STEP_VALUES, VARIANTS, emit_step, emit_step_methods, positional  # noqa: E402

from simic.producer import Emitter, EmitterSettings  # noqa: E402
from simic.schemas import SCHEMA_VERSION, decode_message  # noqa: E402

EVENTS_PER_STEP = len(STEP_EVENTS[0])
TARGET_US = 1.5
"""Target: simic batched per step costs at most this many microseconds per event..."""
TARGET_RATIO = 1.5
"""...and at most this many times the raw floor."""

StepBlock = Callable[[int, int, int], list[int]]
"""``block(steps, first_step, pace_ns) -> per-step nanoseconds``."""


# -- the receiving process ------------------------------------------------------------------------


def receiver_main(endpoint: str, conn: Any, mode: str) -> None:
    """Bind PULL on ``endpoint``, signal ready, drain and process messages until told to stop.

    Commands on ``conn``: ``("await", {session: messages}, idle_s)`` replies with per-session
    ``(messages, events)`` once those counts arrived or nothing arrived for ``idle_s``; ``("stop",)`` exits.
    """
    context = zmq.Context(io_threads=1)
    sock = context.socket(zmq.PULL)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(endpoint)
    conn.send("ready")
    counts: dict[int, list[int]] = {}
    bad = 0

    def drain() -> int:
        nonlocal bad
        got = 0
        while True:
            try:
                data = sock.recv(zmq.NOBLOCK, copy=True)
            except zmq.Again:
                return got
            got += 1
            if mode == "unpack":
                body = msgpack.unpackb(data)
                session, events = body[3], len(body[4])
            else:
                decoded = decode_message(data)
                bad += len(decoded.errors)
                session = decoded.events[0].session if decoded.events else -1
                events = len(decoded.events)
            entry = counts.setdefault(session, [0, 0])
            entry[0] += 1
            entry[1] += events

    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    poller.register(conn.fileno(), zmq.POLLIN)
    while True:
        ready = dict(poller.poll())
        if sock in ready:
            drain()
        if conn.fileno() in ready:
            command = conn.recv()
            if command[0] == "stop":
                break
            _, expected, idle_s = command
            while not all(counts.get(s, [0])[0] >= n for s, n in expected.items()):
                if not sock.poll(int(idle_s * 1000), zmq.POLLIN):
                    break  # nothing more arrived: what is missing was lost
                drain()
            conn.send({"counts": {s: tuple(counts.get(s, (0, 0))) for s in expected}, "bad": bad})
    sock.close()
    context.term()


# -- the variants ---------------------------------------------------------------------------------

_clock = time.perf_counter_ns


def _busy(ns: int) -> None:
    """Host work holding the GIL (a training loop launching kernels), not a sleep."""
    end = _clock() + ns
    while _clock() < end:
        pass


def timed_steps(data: list[Any], one_step: Callable[[int, Any], None]) -> StepBlock:
    """A block of steps: ``one_step(step, data[step % VARIANTS])`` timed alone, after ``pace_ns`` of host work."""

    def block(steps: int, first: int, pace_ns: int) -> list[int]:
        times = [0] * steps
        for j in range(steps):
            step = first + j
            item = data[step % VARIANTS]
            if pace_ns:
                _busy(pace_ns)
            t0 = _clock()
            one_step(step, item)
            times[j] = _clock() - t0
        return times

    return block


def simic_methods_block(emitter: Emitter) -> StepBlock:
    """Batched per step through the generated ``emit_<kind>`` methods."""
    flush = emitter.flush

    def one_step(step: int, values: tuple[Any, ...]) -> None:
        emit_step_methods(emitter, step, values)
        flush()

    return timed_steps(STEP_VALUES, one_step)


def simic_block(emitter: Emitter, per_event_flush: bool) -> StepBlock:
    emit, flush = emitter.emit, emitter.flush
    each = flush if per_event_flush else None

    def one_step(step: int, values: tuple[Any, ...]) -> None:
        emit_step(emit, step, values, each)
        if each is None:
            flush()

    return timed_steps(STEP_VALUES, one_step)


@dataclass
class FloorSender:
    """The least a sender must do: positional rows, ``msgpack.packb``, one ``send(NOBLOCK)``."""

    sock: zmq.Socket
    session: int
    seq: int = 0
    """Events made (each took a sequence number)."""
    messages: int = 0
    """Messages handed to ZeroMQ."""
    dropped: int = 0
    """Events not handed to ZeroMQ (``zmq.Again``: queue at its high-water mark)."""
    rows: list[list[tuple[int, tuple[Any, ...]]]] = field(
        default_factory=lambda: [[positional(kind, fields) for kind, fields in step] for step in STEP_EVENTS]
    )

    def block(self, per_event: bool) -> StepBlock:
        packb, send, noblock, monotonic_ns = msgpack.packb, self.sock.send, zmq.NOBLOCK, time.monotonic_ns
        run_id, session, version, rows_of = RUN_ID, self.session, SCHEMA_VERSION, self.rows

        def batched(step: int, rows: list[tuple[int, tuple[Any, ...]]]) -> None:
            seq = self.seq
            batch = []
            for code, values in rows:
                batch.append([code, seq, monotonic_ns(), step, *values])
                seq += 1
            self.seq = seq
            try:
                send(packb([version, run_id, 0, session, batch]), noblock)
                self.messages += 1
            except zmq.Again:
                self.dropped += len(batch)

        def single(step: int, rows: list[tuple[int, tuple[Any, ...]]]) -> None:
            seq = self.seq
            for code, values in rows:
                try:
                    send(packb([version, run_id, 0, session, [[code, seq, monotonic_ns(), step, *values]]]), noblock)
                    self.messages += 1
                except zmq.Again:
                    self.dropped += 1
                seq += 1
            self.seq = seq

        return timed_steps(rows_of, single if per_event else batched)


def logging_block(path: str) -> tuple[StepBlock, logging.Handler]:
    logger = logging.getLogger("simic.bench.logging")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logger.addHandler(handler)
    info = logger.info

    def log_emit(kind: str, *, step: int, **fields: Any) -> None:
        info("%s step=%d %s", kind, step, fields)

    return timed_steps(STEP_VALUES, lambda step, values: emit_step(log_emit, step, values)), handler


def _scalars(events: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, float]]:
    """The step's numeric values as ``(tag, value)``, a dict field giving one per key (what a trainer logs as scalars)."""
    scalars: list[tuple[str, float]] = []
    for i, (kind, fields) in enumerate(events):
        for name, value in fields.items():
            if isinstance(value, dict):
                scalars.extend((f"{i}.{kind}/{name}/{key}", item) for key, item in value.items() if isinstance(item, float))
            elif isinstance(value, float):
                scalars.append((f"{i}.{kind}/{name}", value))
    return scalars


def optional_peers(tmp: str) -> tuple[dict[str, StepBlock], list[str], list[Callable[[], None]]]:
    """tensorboardX and wandb variants, only where installed (the [tensorboard] and [wandb] extras)."""
    blocks: dict[str, StepBlock] = {}
    notes: list[str] = []
    closers: list[Callable[[], None]] = []
    per_step = len(_scalars(STEP_EVENTS[0]))
    if importlib.util.find_spec("tensorboardX") is None:
        notes.append("tensorboardX: not installed, skipped (pip install -e '.[tensorboard]', or see bench/requirements-peers.txt)")
    else:
        from tensorboardX import SummaryWriter

        writer = SummaryWriter(logdir=os.path.join(tmp, "tbx"))
        closers.append(writer.close)
        add_scalar = writer.add_scalar

        def tbx(step: int, events: list[tuple[str, float]]) -> None:
            for tag, value in events:
                add_scalar(tag, value, step)

        blocks[f"tensorboardX add_scalar x{per_step} per step"] = timed_steps([_scalars(step) for step in STEP_EVENTS], tbx)
    if importlib.util.find_spec("wandb") is None:
        notes.append("wandb: not installed, skipped (pip install -e '.[wandb]', or see bench/requirements-peers.txt)")
    else:
        home = os.path.join(tmp, "wandb-home")
        for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
            os.environ[var] = home  # nothing written outside this run's temporary directory
        os.environ.update(WANDB_MODE="offline", WANDB_SILENT="true", WANDB_ERROR_REPORTING="false")
        import wandb

        run = wandb.init(mode="offline", dir=tmp, project="simic-bench", settings=wandb.Settings(
            silent=True, console="off", x_disable_stats=True, disable_git=True, disable_code=True, disable_job_creation=True))
        closers.append(run.finish)
        log = run.log

        def wb(step: int, metrics: dict[str, float]) -> None:
            log(dict(metrics), step=step)  # a fresh dict per call, as a trainer builds one

        blocks[f"wandb log (offline, {per_step} keys, one call per step)"] = timed_steps(
            [dict(_scalars(step)) for step in STEP_EVENTS], wb)
    return blocks, notes, closers


# -- measurement ----------------------------------------------------------------------------------


@dataclass
class Variant:
    """One way of sending the step's events, and how to read its counters."""

    name: str
    block: StepBlock
    floor: str | None = None
    """Name of the floor variant it is compared with."""
    counters: Callable[[], tuple[int, int]] | None = None
    """``() -> (events dropped, events made)`` so far."""
    delivered: Callable[[], tuple[int, int]] | None = None
    """``() -> (session, messages handed to ZeroMQ)`` so far, for senders the receiver hears."""
    no_consumer: bool = False
    """Connected to an endpoint nobody binds: warm-up fills its queue to the high-water mark."""


@dataclass
class Result:
    step_ns: list[int] = field(default_factory=list)
    """Every step's latency, all rounds."""
    round_mean_ns: list[float] = field(default_factory=list)
    """Per round: mean step time."""
    dropped: int = 0
    made: int = 0

    def median_event(self) -> float:
        """Median step time / events per step: the typical cost of one event."""
        return statistics.median(self.step_ns) / EVENTS_PER_STEP

    def mean_event(self) -> float:
        """Median over rounds of the mean step time / events per step: tails included."""
        return statistics.median(self.round_mean_ns) / EVENTS_PER_STEP


def percentile(values: list[int], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def machine() -> dict[str, str]:
    """nproc, CPU model (from /proc/cpuinfo; "virtual machine" when the hypervisor flag is set) and versions."""
    try:
        with open("/proc/cpuinfo") as f:
            cpuinfo = f.read()
    except OSError:
        cpuinfo = ""
    models = [line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")]
    model = (models[0] if models else platform.processor() or "unknown") + (" (virtual machine)" if " hypervisor" in cpuinfo else "")
    return {
        "nproc": str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()),
        "cpu": model,
        "python": platform.python_version(),
        "pyzmq": zmq.pyzmq_version(),
        "libzmq": zmq.zmq_version(),
        "msgpack": importlib.metadata.version("msgpack"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Prints markdown tables (one per pacing) and whether the targets are met.")
    parser.add_argument("--rounds", type=int, default=9, help="interleaved rounds per variant (default 9)")
    parser.add_argument("--steps", type=int, default=1000, help="steps per round, back to back (default 1000)")
    parser.add_argument("--paced-steps", type=int, default=400, help="steps per round when paced (default 400)")
    parser.add_argument("--pace-us", type=int, default=1000, help="busy host work between paced steps, us (default 1000; 0 skips the paced run)")
    parser.add_argument("--receiver", choices=("decode", "unpack"), default="decode",
                        help="what the receiving process does per message: decode (simic.schemas, as the consumer) or unpack (msgpack only)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the variant order")
    parser.add_argument("--background-delivery", choices=("both", "on", "off"), default="both",
                        help="the emitters' background delivery: on for every emitter, off for every emitter (the "
                             "delivery thread never starts), or both: on, plus the batched variants again with it off (default)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 rounds, few steps (a few seconds)")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.steps, args.paced_steps, args.pace_us = 2, 200, 40, min(args.pace_us, 500)

    info = machine()
    print(f"# simic emit cost: {EVENTS_PER_STEP} events per step")
    print(f"nproc={info['nproc']}  cpu={info['cpu']}  python={info['python']}  pyzmq={info['pyzmq']}  "
          f"libzmq={info['libzmq']}  msgpack={info['msgpack']}")
    print(f"rounds={args.rounds} steps={args.steps} paced_steps={args.paced_steps} pace_us={args.pace_us} receiver={args.receiver} "
          f"background_delivery={args.background_delivery}")
    load_before = os.getloadavg()[0]

    tmp = tempfile.mkdtemp(prefix="simic-bench-")
    endpoint = f"ipc://{tmp}/consumer.ipc"
    nobody = f"ipc://{tmp}/nobody.ipc"
    spawn = mp.get_context("spawn")
    parent_conn, child_conn = spawn.Pipe()
    receiver = spawn.Process(target=receiver_main, args=(endpoint, child_conn, args.receiver), daemon=True)
    receiver.start()
    child_conn.close()  # the receiver holds the only other end: if it dies, recv() raises instead of hanging
    if not parent_conn.poll(60) or parent_conn.recv() != "ready":
        print("receiver did not start", file=sys.stderr)
        return 1

    context = zmq.Context(io_threads=1)
    closers: list[Callable[[], None]] = []
    floors: dict[str, FloorSender] = {}
    try:
        background = args.background_delivery != "off"
        settings = EmitterSettings(exit_hooks=False, background_delivery=background)
        settings_off = EmitterSettings(exit_hooks=False, background_delivery=False)
        em_batched = Emitter(endpoint, run_id=RUN_ID, settings=settings)
        em_methods = Emitter(endpoint, run_id=RUN_ID, settings=settings)
        em_single = Emitter(endpoint, run_id=RUN_ID, settings=settings)
        em_nobody = Emitter(nobody, run_id=RUN_ID, settings=EmitterSettings(exit_hooks=False, linger_ms=0, background_delivery=background))
        emitters = [em_batched, em_methods, em_single, em_nobody]
        for name, target in (("batched", endpoint), ("single", endpoint), ("nobody", nobody)):
            sock = context.socket(zmq.PUSH)
            sock.setsockopt(zmq.SNDHWM, settings.send_hwm)
            sock.setsockopt(zmq.LINGER, 1000 if target == endpoint else 0)
            sock.connect(target)
            floors[name] = FloorSender(sock, session=random.getrandbits(63))
        log_block, handler = logging_block(os.path.join(tmp, "trainer.log"))
        closers.append(handler.close)

        def emitter_counters(em: Emitter) -> Callable[[], tuple[int, int]]:
            return lambda: (em.stats.dropped, em.stats.produced)

        def floor_counters(floor: FloorSender) -> Callable[[], tuple[int, int]]:
            return lambda: (floor.dropped, floor.seq)

        variant_list = [
            Variant("simic batched (emit x8 + flush)", simic_block(em_batched, per_event_flush=False), "floor batched (packb + send per step)",
                    emitter_counters(em_batched), lambda: (em_batched.session, em_batched.stats.batches)),
            Variant("simic batched (emit_<kind> x8 + flush)", simic_methods_block(em_methods), "floor batched (packb + send per step)",
                    emitter_counters(em_methods), lambda: (em_methods.session, em_methods.stats.batches)),
            Variant("floor batched (packb + send per step)", floors["batched"].block(per_event=False), None,
                    floor_counters(floors["batched"]), lambda: (floors["batched"].session, floors["batched"].messages)),
        ]
        if args.background_delivery == "both":
            em_batched_off = Emitter(endpoint, run_id=RUN_ID, settings=settings_off)
            em_methods_off = Emitter(endpoint, run_id=RUN_ID, settings=settings_off)
            emitters += [em_batched_off, em_methods_off]
            variant_list += [
                Variant("simic batched (emit x8 + flush), background delivery off", simic_block(em_batched_off, per_event_flush=False),
                        "floor batched (packb + send per step)", emitter_counters(em_batched_off),
                        lambda: (em_batched_off.session, em_batched_off.stats.batches)),
                Variant("simic batched (emit_<kind> x8 + flush), background delivery off", simic_methods_block(em_methods_off),
                        "floor batched (packb + send per step)", emitter_counters(em_methods_off),
                        lambda: (em_methods_off.session, em_methods_off.stats.batches)),
            ]
        variant_list += [
            Variant("simic single (flush per event)", simic_block(em_single, per_event_flush=True), "floor single (packb + send per event)",
                    emitter_counters(em_single), lambda: (em_single.session, em_single.stats.batches)),
            Variant("floor single (packb + send per event)", floors["single"].block(per_event=True), None,
                    floor_counters(floors["single"]), lambda: (floors["single"].session, floors["single"].messages)),
            Variant("logging.FileHandler (per event)", log_block, "floor batched (packb + send per step)"),
            Variant("simic batched, no consumer", simic_block(em_nobody, per_event_flush=False), "floor batched, no consumer",
                    emitter_counters(em_nobody), no_consumer=True),
            Variant("floor batched, no consumer", floors["nobody"].block(per_event=False), None, floor_counters(floors["nobody"]),
                    no_consumer=True),
        ]

        def catch_up() -> dict[str, Any]:
            """Wait (on the receiver's signal) until it has every message sent so far, so each block starts with empty queues."""
            parent_conn.send(("await", dict(v.delivered() for v in variant_list if v.delivered), 2.0))
            return parent_conn.recv()

        first = 0

        def warm_up(group: list[Variant]) -> None:
            """Connect, fill caches, and push the no-consumer queues to their high-water mark."""
            nonlocal first
            for v in group:
                v.block(settings.send_hwm + 200 if v.no_consumer else 200, first, 0)
            first += settings.send_hwm + 200
            catch_up()

        paces = [("burst", 0, args.steps)] + ([("paced", args.pace_us * 1000, args.paced_steps)] if args.pace_us > 0 else [])
        results: dict[tuple[str, str], Result] = {}
        order_rng = random.Random(args.seed)

        def run_rounds(group: list[Variant]) -> None:
            nonlocal first
            for _ in range(args.rounds):
                for pace_name, pace_ns, steps in paces:
                    order = list(group)
                    order_rng.shuffle(order)
                    for v in order:
                        before = v.counters() if v.counters else (0, 0)
                        gc.collect()
                        times = v.block(steps, first, pace_ns)
                        first += steps
                        result = results.setdefault((pace_name, v.name), Result())
                        result.round_mean_ns.append(sum(times) / steps)
                        result.step_ns.extend(times)
                        if v.counters:
                            after = v.counters()
                            result.dropped += after[0] - before[0]
                            result.made += after[1] - before[1]
                        if v.delivered:
                            catch_up()

        warm_up(variant_list)
        started = time.perf_counter()
        run_rounds(variant_list)
        # Peers come after, in rounds of their own: their background threads (tensorboardX's event
        # writer, wandb's senders) share this process and slowed every variant timed while they lived
        # (simic batched 15 to 30 % slower when interleaved with them).
        peers, notes, peer_closers = optional_peers(tmp)
        closers.extend(peer_closers)
        peer_list = [Variant(name, block, "floor batched (packb + send per step)") for name, block in peers.items()]
        if peer_list:
            warm_up(peer_list)
            run_rounds(peer_list)
        variant_list += peer_list
        elapsed = time.perf_counter() - started

        # Delivery check: every message handed to ZeroMQ by a connected sender reached the receiver.
        delivered = catch_up()

        for pace_name, pace_ns, steps in paces:
            title = "back to back" if not pace_ns else f"{pace_ns // 1000} us of busy host work between steps"
            print(f"\n### {pace_name}: {title} ({args.rounds} rounds x {steps} steps x {EVENTS_PER_STEP} events)\n")
            print("| variant | us/event (median) | x floor | us/event (mean) | step p50 (us) | step p99 (us) | dropped / made |")
            print("|---|---:|---:|---:|---:|---:|---:|")
            for v in variant_list:
                r = results[(pace_name, v.name)]
                ratio = f"{r.median_event() / results[(pace_name, v.floor)].median_event():.2f}" if v.floor else ""
                drops = f"{r.dropped} / {r.made}" if v.counters else "-"
                print(f"| {v.name} | {r.median_event() / 1000:.2f} | {ratio} | {r.mean_event() / 1000:.2f} | "
                      f"{percentile(r.step_ns, 0.5) / 1000:.1f} | {percentile(r.step_ns, 0.99) / 1000:.1f} | {drops} |")

        print()
        for pace_name, _, _ in paces:
            floor = results[(pace_name, "floor batched (packb + send per step)")].median_event() / 1000
            for label, name in (("emit", "simic batched (emit x8 + flush)"), ("emit_<kind>", "simic batched (emit_<kind> x8 + flush)")):
                simic = results[(pace_name, name)].median_event() / 1000
                print(f"target [{pace_name}] simic batched ({label}) <= {TARGET_US} us/event: "
                      f"{'MET' if simic <= TARGET_US else 'NOT MET'} ({simic:.2f} us)")
                print(f"target [{pace_name}] simic batched ({label}) <= {TARGET_RATIO}x floor: "
                      f"{'MET' if simic <= TARGET_RATIO * floor else 'NOT MET'} ({simic / floor:.2f}x of {floor:.2f} us)")
        if args.background_delivery == "both":
            for pace_name, _, _ in paces:
                for name in ("simic batched (emit x8 + flush)", "simic batched (emit_<kind> x8 + flush)"):
                    on = results[(pace_name, name)]
                    off = results[(pace_name, f"{name}, background delivery off")]
                    print(f"background delivery [{pace_name}] {name}: on {on.median_event() / 1000:.2f} / off "
                          f"{off.median_event() / 1000:.2f} us/event (median), on {on.mean_event() / 1000:.2f} / off "
                          f"{off.mean_event() / 1000:.2f} (mean): {on.median_event() / off.median_event():.3f}x")
        for v in variant_list:
            if v.delivered:
                session, sent_messages = v.delivered()
                messages, events = delivered["counts"][session]
                print(f"delivery [{v.name}]: {sent_messages} messages handed to ZeroMQ, receiver got {messages} "
                      f"({events} events, {args.receiver})")
        print(f"decode errors at the receiver: {delivered['bad']}")
        extra = sum(results[(p, "simic batched, no consumer")].made for p, _, _ in paces) - EVENTS_PER_STEP * sum(
            steps * args.rounds for _, _, steps in paces)
        if extra > 0:
            print(f"note [simic batched, no consumer]: flush() added {extra} heartbeat events (one per heartbeat_interval_s "
                  f"without a successful send); those steps emit {EVENTS_PER_STEP + 1} events")
        for note in notes:
            print(note)
        busy = " (other work was running: the numbers are suspect, rerun on a quiet machine)" if load_before > 0.5 else ""
        print(f"timed section: {elapsed:.1f} s; 1-min load average before the run: {load_before:.2f}{busy}")
        for em in emitters:
            em.close()
    finally:
        for close in closers:
            close()
        for floor in floors.values():
            floor.sock.close(linger=0)
        context.term()
        parent_conn.send(("stop",))
        receiver.join(10)
        if receiver.is_alive():
            receiver.terminate()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
