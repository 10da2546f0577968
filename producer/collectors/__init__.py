"""simic.producer.collectors: GPU measurements that never stall the GPU.

Device values are reduced on the device, copied ``non_blocking`` into a pinned ring behind a CUDA
event and become events at a later ``flush()`` (``readout``). On top of it: phase timers
(``timing``), per-head gradient norms (``grad_norms``), LSTM state statistics (``lstm_state``),
PPO update metrics (``ppo``), the update-to-weight ratio per head around ``optimizer.step()``
(``param_updates``), hooks that run them for an unedited loop (``watch``), the profiler wrapper (``profiler``) and the seed plan's synchronous
API (``seed_api``). Each ``Emitter`` owns one :class:`Collectors` (``emitter_collectors``), to which its
collector methods hand their calls; ``NullEmitter`` has the same methods doing nothing.

Importing this package does not import torch; the collectors import it when first used.
"""

from .grad_norms import HeadGroups
from .lstm_state import lstm_stats
from .emitter_collectors import CollectorSettings, Collectors
from .param_updates import NullParamUpdates, ParamUpdates
from .profiler import training_profiler
from .readout import CollectorStats
from .seed_api import CUDATimer, LSTMHealthMetrics, compute_lstm_health
from .timing import NullTimer, Timer
from .watch import NullWatch, Watch

__all__ = [
    "Collectors",
    "CollectorSettings",
    "CollectorStats",
    "HeadGroups",
    "lstm_stats",
    "Timer",
    "NullTimer",
    "Watch",
    "NullWatch",
    "ParamUpdates",
    "NullParamUpdates",
    "training_profiler",
    "CUDATimer",
    "LSTMHealthMetrics",
    "compute_lstm_health",
]
