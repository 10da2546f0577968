"""simic.producer: what a trainer imports.

``Emitter`` batches events and hands them to ZeroMQ without ever waiting; ``NullEmitter`` is the
same interface doing nothing (telemetry off). ``Emitter.from_env()`` picks between them.

The GPU collectors are methods of the emitter (``timer``, ``head_grad_norms``, ``lstm_state``,
``ppo_update``, and ``watch`` that installs them as hooks; see ``simic.producer.collectors``): they never wait for the GPU. The seed plan's
synchronous API (``CUDATimer``, ``LSTMHealthMetrics``, ``compute_lstm_health``) and
``training_profiler`` are exported as well. ``spawn_consumer`` starts a ``simic-consumer`` sidecar
for a trainer (``Emitter(..., spawn_consumer=True)`` does it for you). Importing this package does
not import torch.
"""

from .collectors import (
    CollectorSettings,
    CollectorStats,
    CUDATimer,
    HeadGroups,
    LSTMHealthMetrics,
    Watch,
    compute_lstm_health,
    lstm_stats,
    training_profiler,
)
from .emitter import Emitter, EmitterSettings, EmitterStats, NullEmitter
from .sidecar import Sidecar, spawn_consumer

__all__ = [
    "Emitter",
    "NullEmitter",
    "EmitterSettings",
    "EmitterStats",
    "CollectorSettings",
    "CollectorStats",
    "HeadGroups",
    "lstm_stats",
    "Watch",
    "CUDATimer",
    "LSTMHealthMetrics",
    "compute_lstm_health",
    "training_profiler",
    "Sidecar",
    "spawn_consumer",
]
