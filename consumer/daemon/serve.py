"""``simic-consumer run``: receive, record, analyse, alert, until SIGINT or SIGTERM.

::

    ZmqPullSource --+
                    +--(bounded queue)--> Pipeline: event log -> accounting -> rules -> alert sinks
    clock ticks ----+

Start: load the checkpoint in the log directory and catch up on what was logged after it (alert
sinks quiet), so a restarted daemon continues its EMAs and counts. Shutdown: stop receiving
(what ZeroMQ already holds is moved to the queue first), process the queue, checkpoint, close
every stage, print a summary, exit 0, all within ``shutdown_timeout_s``.

With ``exit_with_pid`` (``--exit-with-pid``, what ``spawn_consumer`` passes for its trainer) the
daemon also watches that process: when it exits, the daemon lets what it had sent arrive, records
the exit in the event log (a tick carrying its pid and host: ``producer_exited`` alerts about every
session it left without ``run_end``), and shuts down as on SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from simic.schemas.transport import alerts_endpoint_for
from simic.schemas.eventlog import FRAME_TICK

from ..config import ConsumerConfig
from ..pipeline.accounting import Accounting
from ..pipeline.build import build_pipeline
from ..pipeline.contract import Pipeline, Stage
from ..sinks.alert_pub import PubAlertSink
from ..sinks.event_log import EventLogSink
from ..sinks.export import ExportSink, export_sinks
from ..sinks.metrics import MetricsSink
from ..sinks.retention import first_kept_segments
from ..sources.zmq_pull import ZmqPullSource
from .backpressure import ByteBoundedQueue
from .checkpoint import STATE_FILE, UnusableCheckpoint, frames_after, load_checkpoint, save_checkpoint
from .claim import EndpointClaim, claim_endpoint
from .lifecycle import ProcessWatch, detach_closed_output, exit_note, host_name
from .security import CurveServer

__all__ = ["DaemonOptions", "serve"]

log = logging.getLogger("simic.consumer")


@dataclass
class DaemonOptions:
    endpoint: str
    """Where to bind (ipc://... or tcp://host:port)."""
    log_dir: Path
    """Where the event log, ``alerts.jsonl``, the checkpoint and dead letters go."""
    config: ConsumerConfig
    dead_letter: bool = False
    """Also keep refused messages under ``<log_dir>/dead-letter``."""
    alerts_endpoint: str | None = "auto"
    """Where alerts are published (ZeroMQ PUB). ``"auto"``: next to ``endpoint`` by convention
    (``simic.schemas.transport.alerts_endpoint_for``); None: not published."""
    extra_sinks: tuple[Stage, ...] = ()
    """More stages after the alert sinks (tests use recording sinks here)."""
    metrics_port: int | None = None
    """Serve Prometheus metrics on this port (0: any free port); None: no metrics."""
    metrics_host: str = "127.0.0.1"
    """Address the metrics server binds (``0.0.0.0`` for a Prometheus on another host)."""
    dashboard: bool = False
    """Show the live dashboard on stdout (plain status lines when stdout is not a terminal)."""
    curve: CurveServer | None = None
    """CurveZMQ keys and allow-list for the events socket and the alerts PUB; None: no encryption."""
    exit_with_pid: int | None = None
    """Watch this process (on this host) and stop, after recording its exit, when it exits. A process
    that is not running when :func:`serve` starts raises :class:`~simic.consumer.daemon.lifecycle.ProcessGone`."""
    settle_s: float = 0.2
    """After the watched process exited: how long the input must stay quiet (at most ``10 x`` this)
    before its exit is recorded, so what it sent before dying is logged and analysed first."""
    bound: str | None = field(default=None, compare=False)
    """Set by :func:`serve` to the endpoint actually bound (a tcp port chosen by the system)."""


def _alerts_endpoint(options: DaemonOptions) -> str | None:
    return alerts_endpoint_for(options.endpoint) if options.alerts_endpoint == "auto" else options.alerts_endpoint


def _say(message: str) -> None:
    try:
        print(f"simic-consumer: {message}", flush=True)
    except BrokenPipeError:  # whoever read the output (the trainer) is gone
        detach_closed_output()


class _Note(bytes):
    """A queue item that is a tick carrying a note (its payload), not a received message."""


class _Daemon:
    def __init__(self, options: DaemonOptions) -> None:
        self.options = options
        self.config = options.config
        self.state_path = options.log_dir / STATE_FILE
        # Each exporter behind its own bounded queue and thread (a missing library raises MissingExtra here, at
        # start). Built once: they hold no state, and a second _build (a checkpoint that does not fit) reuses them.
        self.exports = export_sinks(self.config.export, log_dir=options.log_dir)
        self.pipeline = self._build()

    def _build(self) -> Pipeline:
        """Every stage, new (a checkpoint that does not fit builds them all again, before any is started);
        the sinks that show the accounting's counts are given it."""
        options = self.options
        self.accounting = Accounting(log_interval_s=self.config.daemon.rejection_log_interval_s)
        self.metrics = None
        if options.metrics_port is not None:
            self.metrics = MetricsSink(options.metrics_port, options.metrics_host, accounting=self.accounting, exports=self.exports)
            if options.curve is not None:
                self.metrics.registry.register(options.curve.failures)  # simic_handshakes_failed_total
        self.dashboard = None
        if options.dashboard:
            from ..sinks.dashboard import DashboardSink

            self.dashboard = DashboardSink(accounting=self.accounting)
        extra: list[Stage] = []
        alerts_endpoint = _alerts_endpoint(options)
        self.alert_pub = PubAlertSink(alerts_endpoint, curve=options.curve) if alerts_endpoint else None
        if self.alert_pub is not None:
            extra.append(self.alert_pub)
        extra.extend(self.exports)
        extra.extend(options.extra_sinks)
        extra.extend(stage for stage in (self.metrics, self.dashboard) if stage is not None)
        pipeline = build_pipeline(
            self.config,
            log_dir=options.log_dir,
            dead_letter_dir=options.log_dir / "dead-letter" if options.dead_letter else None,
            alerts_jsonl=options.log_dir / "alerts.jsonl",
            extra_sinks=extra,
            accounting=self.accounting,
        )
        self.log_sink: EventLogSink = pipeline.find(EventLogSink)[0]
        if self.metrics is not None:
            self.metrics.export_stages(pipeline.stage_counts)
            self.metrics.export_log(self.log_sink)
        return pipeline

    async def restore(self) -> None:
        """Load the checkpoint and catch up on the frames logged after it."""
        try:
            position = load_checkpoint(self.state_path, self.pipeline).position
        except FileNotFoundError:
            position = None  # the first start on this directory (or a log without a checkpoint: all of it)
        except UnusableCheckpoint as error:
            log.warning("ignoring unusable checkpoint %s; rebuilding state from the whole log", error)
            self.pipeline = self._build()  # fresh state, the whole log
            position = None
        self.log_sink.checkpointed(position)  # until the next checkpoint, a restart reads from there
        frames = 0
        cut_heads = first_kept_segments([self.options.log_dir]) if position is None else set()
        accounting = self.accounting
        for frame in frames_after(self.options.log_dir, position):
            if cut_heads:
                accounting.after_cut = frame.path in cut_heads
            if frame.type == FRAME_TICK:
                await self.pipeline.tick(frame.recv_ns, catching_up=True, note=frame.payload)
            else:
                await self.pipeline.consume(frame.payload, frame.recv_ns, catching_up=True)
            frames += 1
        accounting.after_cut = False
        if frames or self.state_path.exists():
            _say(f"restored state from {self.state_path.name if self.state_path.exists() else 'the log'}, caught up on {frames} logged frames")

    async def checkpoint(self) -> None:
        await self.pipeline.flush()
        position = self.log_sink.position
        save_checkpoint(self.state_path, self.pipeline, position)
        self.log_sink.checkpointed(position)

    async def process(self, queue: asyncio.Queue) -> None:
        flush_every_ns = 100_000_000
        checkpoint_every_ns = int(self.config.daemon.checkpoint_interval_s * 1e9)
        last_flush = last_checkpoint = time.monotonic_ns()
        pipeline, log_sink = self.pipeline, self.log_sink
        while True:
            raw, recv_ns = await queue.get()
            try:
                if raw is None:
                    await pipeline.tick(recv_ns)
                elif raw.__class__ is _Note:
                    await pipeline.tick(recv_ns, note=bytes(raw))
                else:
                    await pipeline.consume(raw, recv_ns)
            finally:
                queue.task_done()
            now = time.monotonic_ns()
            if now - last_checkpoint >= checkpoint_every_ns or log_sink.checkpoint_wanted:  # wanted: a segment was closed
                try:
                    await self.checkpoint()
                except OSError as error:
                    log.warning("checkpoint failed: %s", error)
                    log_sink.checkpoint_wanted = False  # tried: the next one comes at the interval
                last_checkpoint = last_flush = now
            elif queue.empty() or now - last_flush >= flush_every_ns:
                await pipeline.flush()
                last_flush = now

    async def follow(self, watch: ProcessWatch, source: ZmqPullSource, queue: asyncio.Queue, stop: asyncio.Event) -> None:
        """Wait for the watched process to exit; then record its exit and ask for the shutdown."""
        await watch.wait()
        detach_closed_output()  # its pipe to our output may have died with it
        _say(f"process {watch.pid} exited: recording it, then stopping")
        # What it sent before it died is in the socket buffers or in ZeroMQ's queue: let it arrive first.
        loop = asyncio.get_running_loop()
        settle = self.options.settle_s
        give_up = loop.time() + 10 * settle
        seen, quiet_since = source.received, loop.time()
        while loop.time() < give_up:
            await asyncio.sleep(settle / 4)
            if source.received != seen:
                seen, quiet_since = source.received, loop.time()
            elif loop.time() - quiet_since >= settle:
                break
        await queue.put((_Note(exit_note(watch.pid, host_name())), time.time_ns()))
        stop.set()

    async def ticks(self, queue: asyncio.Queue) -> None:
        interval = self.config.daemon.tick_interval_s
        while True:
            await asyncio.sleep(interval)
            await queue.put((None, time.time_ns()))


async def serve(options: DaemonOptions, *, stop: asyncio.Event | None = None) -> int:
    """Run the daemon until ``stop`` is set, a SIGINT/SIGTERM arrives or the process it watches
    (``options.exit_with_pid``) exits. Returns the exit status."""
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread: the caller owns `stop`
            pass

    watch = ProcessWatch(options.exit_with_pid) if options.exit_with_pid is not None else None  # ProcessGone: not running
    claims: list[EndpointClaim] = []
    try:
        # One daemon per endpoint: refused here (EndpointInUse) before anything is read, written or bound.
        claims.append(claim_endpoint(options.endpoint))
        alerts_endpoint = _alerts_endpoint(options)
        if alerts_endpoint:
            claims.append(claim_endpoint(alerts_endpoint, role="alerts endpoint"))
        return await _serve(options, loop, stop, watch, claims)
    finally:
        for claim in claims:
            claim.release()
        if watch is not None:
            watch.close()


async def _serve(options: DaemonOptions, loop: asyncio.AbstractEventLoop, stop: asyncio.Event, watch: ProcessWatch | None,
                 claims: list[EndpointClaim]) -> int:
    config = options.config
    options.log_dir.mkdir(parents=True, exist_ok=True)
    daemon = _Daemon(options)
    await daemon.restore()
    pipeline = daemon.pipeline
    try:
        await pipeline.start()
    except Exception:  # the alerts endpoint taken in the meantime, a metrics port in use, ...
        await pipeline.close()
        raise
    source = ZmqPullSource(options.endpoint, receive_hwm=config.daemon.receive_hwm, curve=options.curve)
    try:
        endpoint = source.bind()
    except Exception:
        await pipeline.close()
        raise
    options.bound = endpoint
    for claim in claims:
        claim.bound()
    _say(f"pid {os.getpid()}" + (f", stopping when process {watch.pid} exits (watched by {watch.how})" if watch is not None else ""))
    for claim in claims:
        if claim.reclaimed:
            _say(claim.reclaimed)
    _say(f"listening on {endpoint}")
    if daemon.alert_pub is not None:
        _say(f"publishing alerts on {daemon.alert_pub.endpoint}")
    if daemon.metrics is not None:
        _say(f"serving metrics on {daemon.metrics.url}")
    for sink in daemon.exports:
        _say(f"exporting to {sink.exporter.name}: {sink.exporter.where}")
    _say(f"logging to {options.log_dir.resolve()}")

    queue: asyncio.Queue = ByteBoundedQueue(config.daemon.queue_messages, config.daemon.queue_bytes)
    for stage in (daemon.metrics, daemon.dashboard):
        if stage is not None:
            stage.watch_queue(queue.qsize, config.daemon.queue_messages)
    receiving = asyncio.create_task(source.run(queue), name="receive")
    ticking = asyncio.create_task(daemon.ticks(queue), name="ticks")
    processing = asyncio.create_task(daemon.process(queue), name="process")
    stopping = asyncio.create_task(stop.wait(), name="stop")
    tasks = {receiving, processing, ticking, stopping}
    following = None
    if watch is not None:
        following = asyncio.create_task(daemon.follow(watch, source, queue, stop), name="watch")
        tasks.add(following)
    done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task in done:
        if task is not stopping and task.exception() is not None:
            log.error("%s task failed: %r", task.get_name(), task.exception())

    # Shutdown: stop receiving, finish what arrived, checkpoint, close every stage.
    deadline = loop.time() + config.daemon.shutdown_timeout_s
    for task in filter(None, (receiving, ticking, following)):
        task.cancel()
    await asyncio.gather(*filter(None, (receiving, ticking, following)), return_exceptions=True)
    while source.drain_into(queue) and not processing.done() and loop.time() < deadline:
        await _join(queue, processing, deadline - loop.time())
    source.close()
    await _join(queue, processing, deadline - loop.time())
    unprocessed = queue.qsize()
    processing.cancel()
    stopping.cancel()
    await asyncio.gather(processing, stopping, return_exceptions=True)
    if not unprocessed:  # a checkpoint must not claim messages it never processed
        try:
            await daemon.checkpoint()
        except OSError as error:
            log.warning("final checkpoint failed: %s", error)
    await pipeline.close()
    _report(pipeline, daemon.accounting, daemon.log_sink, daemon.exports, unprocessed)
    return 0


async def _join(queue: asyncio.Queue, processing: asyncio.Task, timeout: float) -> None:
    if processing.done() or timeout <= 0:
        return
    waiter = asyncio.create_task(queue.join())
    await asyncio.wait({waiter, processing}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()


def _report(pipeline: Pipeline, accounting: Accounting, log_sink: EventLogSink, exports: list[ExportSink], unprocessed: int) -> None:
    summary = accounting.summary()
    frames_lost = log_sink.frames_lost
    _say(
        f"stopped: {summary['messages']} messages, {summary['events']} events, lost {summary['lost']}, "
        f"rejected {sum(summary['rejected_messages'].values())} messages and "
        f"{sum(summary['rejected_events'].values())} events"
        + (f", {frames_lost} log frames not written" if frames_lost else "")
        + (f", {unprocessed} messages left unprocessed at the shutdown deadline" if unprocessed else "")
    )
    for sink in exports:
        _say(sink.summary_line())
    if pipeline.stage_errors:
        _say(f"stage errors: {json.dumps(dict(pipeline.stage_errors))}")
    sys.stdout.flush()
