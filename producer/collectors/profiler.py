"""``training_profiler``: the seed plan's on-demand ``torch.profiler`` wrapper, plus a trace event.

::

    with training_profiler("./profiler_traces", enabled=args.profile, emitter=emitter) as prof:
        for step in training_loop:
            train_step()
            if prof:
                prof.step()

Disabled, it yields ``None`` and touches nothing (no directory, no torch import). Enabled, it
creates ``output_dir``, profiles the CPU, and the GPU when CUDA is available, on the schedule
``wait, warmup, active, repeat``, and writes one Chrome trace per cycle, named as
``torch.profiler.tensorboard_trace_handler`` names them (``<host>_<pid>.<ms>.pt.trace.json``), so
TensorBoard and Perfetto open them. With an ``emitter``, each written trace is announced with a
``profiler_trace`` event (its path and format) at the profiler's step number.

Shapes, memory and stacks are off by default (each makes the profiled steps slower and the traces
larger); the seed plan turned all three on.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from contextlib import contextmanager
from typing import Any, Iterator

__all__ = ["training_profiler"]

log = logging.getLogger("simic.producer")


@contextmanager
def training_profiler(
    output_dir: str = "./profiler_traces",
    enabled: bool = True,
    wait: int = 1,
    warmup: int = 1,
    active: int = 3,
    repeat: int = 1,
    record_shapes: bool = False,
    profile_memory: bool = False,
    with_stack: bool = False,
    emitter: Any = None,
) -> Iterator[Any]:
    """Context manager for profiling training steps.

    Args:
        output_dir: directory for the traces (created only when enabled).
        enabled: whether profiling is on; off, the context yields ``None``.
        wait: steps to skip before each cycle's warmup.
        warmup: warmup steps (profiled, discarded) before the active ones.
        active: steps recorded per cycle (one trace file per cycle).
        repeat: number of cycles (0: repeat until the context ends).
        record_shapes: record operator input shapes.
        profile_memory: record tensor memory allocation and release.
        with_stack: record Python source locations (file and line) of operators.
        emitter: when given, a ``profiler_trace`` event tells where each trace was written.

    Yields:
        The ``torch.profiler.profile`` instance, or ``None`` when disabled. Call ``prof.step()``
        once per training step.
    """
    if not enabled:
        yield None
        return

    import torch

    os.makedirs(output_dir, exist_ok=True)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    worker = f"{socket.gethostname()}_{os.getpid()}"

    def on_trace_ready(prof: Any) -> None:
        path = os.path.join(output_dir, f"{worker}.{time.time_ns() // 1_000_000}.pt.trace.json")
        prof.export_chrome_trace(path)
        if emitter is not None:
            try:
                emitter.emit("profiler_trace", step=int(prof.step_num), path=os.path.abspath(path)[:4096], format="chrome_trace")
            except Exception as exc:  # the trace is on disk; a failed announcement must not stop training
                log.warning("simic training_profiler: could not emit profiler_trace: %r", exc)

    with torch.profiler.profile(
        activities=activities,
        schedule=torch.profiler.schedule(wait=wait, warmup=warmup, active=active, repeat=repeat),
        on_trace_ready=on_trace_ready,
        record_shapes=record_shapes,
        profile_memory=profile_memory,
        with_stack=with_stack,
    ) as prof:
        yield prof
