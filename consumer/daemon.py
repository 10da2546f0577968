"""``simic-consumer run``: receive, record, analyse, alert, until SIGINT or SIGTERM.

::

    ZmqPullSource --(bounded queue)--> Pipeline: event log -> accounting -> rules -> alert sinks

Shutdown: stop receiving (what ZeroMQ already holds is moved to the queue first), process the
queue, flush and close every stage, print a summary, exit 0, all within ``shutdown_timeout_s``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .accounting import Accounting
from .build import build_pipeline
from .config import ConsumerConfig
from .pipeline import Pipeline, Stage
from .sinks.event_log import EventLogSink
from .sources.zmq_pull import ZmqPullSource

__all__ = ["DaemonOptions", "serve"]

log = logging.getLogger("simic.consumer")


@dataclass
class DaemonOptions:
    endpoint: str
    """Where to bind (ipc://... or tcp://host:port)."""
    log_dir: Path
    """Where the event log, ``alerts.jsonl`` and dead letters go."""
    config: ConsumerConfig
    dead_letter: bool = False
    """Also keep refused messages under ``<log_dir>/dead-letter``."""
    extra_sinks: tuple[Stage, ...] = ()
    """More stages after the alert sinks (tests use recording sinks here)."""
    bound: str | None = field(default=None, compare=False)
    """Set by :func:`serve` to the endpoint actually bound (a tcp port chosen by the system)."""


def _say(message: str) -> None:
    print(f"simic-consumer: {message}", flush=True)


async def _process(queue: asyncio.Queue, pipeline: Pipeline) -> None:
    flush_every_ns = 100_000_000
    last_flush = time.monotonic_ns()
    while True:
        raw, recv_ns = await queue.get()
        try:
            await pipeline.consume(raw, recv_ns)
        finally:
            queue.task_done()
        now = time.monotonic_ns()
        if queue.empty() or now - last_flush >= flush_every_ns:
            await pipeline.flush()
            last_flush = now


async def serve(options: DaemonOptions, *, stop: asyncio.Event | None = None) -> int:
    """Run the daemon until ``stop`` is set or a SIGINT/SIGTERM arrives. Returns the exit status."""
    config = options.config
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread: the caller owns `stop`
            pass

    options.log_dir.mkdir(parents=True, exist_ok=True)
    pipeline = build_pipeline(
        config,
        log_dir=options.log_dir,
        dead_letter_dir=options.log_dir / "dead-letter" if options.dead_letter else None,
        alerts_jsonl=options.log_dir / "alerts.jsonl",
        extra_sinks=list(options.extra_sinks),
    )
    await pipeline.start()
    source = ZmqPullSource(options.endpoint, receive_hwm=config.daemon.receive_hwm)
    try:
        endpoint = source.bind()
    except Exception:
        await pipeline.close()
        raise
    options.bound = endpoint
    _say(f"listening on {endpoint}")
    _say(f"logging to {options.log_dir.resolve()}")

    queue: asyncio.Queue = asyncio.Queue(maxsize=config.daemon.queue_messages)
    receiving = asyncio.create_task(source.run(queue), name="receive")
    processing = asyncio.create_task(_process(queue, pipeline), name="process")
    stopping = asyncio.create_task(stop.wait(), name="stop")
    done, _ = await asyncio.wait({receiving, processing, stopping}, return_when=asyncio.FIRST_COMPLETED)
    for task in done:
        if task is not stopping and task.exception() is not None:
            log.error("%s task failed: %r", task.get_name(), task.exception())

    # Shutdown: stop receiving, finish what arrived, close every stage.
    deadline = loop.time() + config.daemon.shutdown_timeout_s
    receiving.cancel()
    await asyncio.gather(receiving, return_exceptions=True)
    while source.drain_into(queue) and not processing.done() and loop.time() < deadline:
        await _join(queue, processing, deadline - loop.time())
    source.close()
    await _join(queue, processing, deadline - loop.time())
    unprocessed = queue.qsize()
    processing.cancel()
    stopping.cancel()
    await asyncio.gather(processing, stopping, return_exceptions=True)
    await pipeline.close()
    _report(pipeline, unprocessed)
    return 0


async def _join(queue: asyncio.Queue, processing: asyncio.Task, timeout: float) -> None:
    if processing.done() or timeout <= 0:
        return
    waiter = asyncio.create_task(queue.join())
    await asyncio.wait({waiter, processing}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()


def _report(pipeline: Pipeline, unprocessed: int) -> None:
    accounting = pipeline.find(Accounting)[0]
    summary = accounting.summary()
    logs = pipeline.find(EventLogSink)
    frames_lost = sum(sink.frames_lost for sink in logs)
    _say(
        f"stopped: {summary['messages']} messages, {summary['events']} events, lost {summary['lost']}, "
        f"rejected {sum(summary['rejected_messages'].values())} messages and "
        f"{sum(summary['rejected_events'].values())} events"
        + (f", {frames_lost} log frames not written" if frames_lost else "")
        + (f", {unprocessed} messages left unprocessed at the shutdown deadline" if unprocessed else "")
    )
    if pipeline.stage_errors:
        _say(f"stage errors: {json.dumps(dict(pipeline.stage_errors))}")
    sys.stdout.flush()
