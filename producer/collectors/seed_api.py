"""The seed plan's monitoring API, kept exactly, for users who call it directly. SYNCHRONOUS.

Every call here that reads a GPU value waits for the GPU: ``CUDATimer.stop()`` synchronizes on
its end event, ``compute_lstm_health`` calls ``.item()`` six times. That is what the seed plan
wrote and what these names promise (a float now, not later). In a training loop use the
non-blocking equivalents on the emitter instead: ``emitter.timer(name)``,
``emitter.lstm_state(step, (h, c))``, ``emitter.head_grad_norms(step, heads)``; they measure the
same things and never stall the GPU (see ``docs/BENCHMARKS.md`` for what the difference costs).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["CUDATimer", "LSTMHealthMetrics", "compute_lstm_health"]


class CUDATimer:
    """GPU-accurate timing using CUDA events. Synchronous: ``stop()`` waits for the GPU.

    Falls back to CPU timing (``time.perf_counter``) when CUDA is unavailable or ``device`` is not
    a CUDA device.
    """

    def __init__(self, device: str = "cuda"):
        import torch

        self._torch = torch
        self.use_cuda = str(device).startswith("cuda") and torch.cuda.is_available()
        if self.use_cuda:
            self.start_event = torch.cuda.Event(enable_timing=True)
            self.end_event = torch.cuda.Event(enable_timing=True)
        else:
            self.start_time = 0.0

    def start(self) -> None:
        """Record start time."""
        if self.use_cuda:
            self.start_event.record()
        else:
            self.start_time = time.perf_counter()

    def stop(self) -> float:
        """Record end time and return elapsed milliseconds (waits for the GPU to get there)."""
        if self.use_cuda:
            self.end_event.record()
            self.end_event.synchronize()
            return self.start_event.elapsed_time(self.end_event)
        else:
            return (time.perf_counter() - self.start_time) * 1000.0


@dataclass(slots=True)
class LSTMHealthMetrics:
    """Health metrics for LSTM hidden state."""

    h_norm: float  # L2 norm of hidden state
    c_norm: float  # L2 norm of cell state
    h_max: float  # Max absolute value in h
    c_max: float  # Max absolute value in c
    has_nan: bool
    has_inf: bool

    def is_healthy(
        self,
        max_norm: float = 100.0,
        min_norm: float = 1e-6,
    ) -> bool:
        """Check if LSTM state is healthy."""
        return (
            not self.has_nan
            and not self.has_inf
            and self.h_norm < max_norm
            and self.c_norm < max_norm
            and self.h_norm > min_norm
            and self.c_norm > min_norm
        )

    def to_dict(self) -> dict[str, float | bool]:
        """Convert to dict for telemetry."""
        return {
            "lstm_h_norm": self.h_norm,
            "lstm_c_norm": self.c_norm,
            "lstm_h_max": self.h_max,
            "lstm_c_max": self.c_max,
            "lstm_has_nan": self.has_nan,
            "lstm_has_inf": self.has_inf,
        }


def compute_lstm_health(
    hidden: "tuple[torch.Tensor, torch.Tensor] | None",
) -> LSTMHealthMetrics | None:
    """Compute health metrics for LSTM hidden state. Synchronous: six ``.item()`` reads.

    Args:
        hidden: Tuple of (h, c) tensors, or None if no hidden state

    Returns:
        LSTMHealthMetrics or None if no hidden state
    """
    if hidden is None:
        return None

    import torch

    h, c = hidden

    with torch.inference_mode():
        h_norm = torch.linalg.vector_norm(h).item()
        c_norm = torch.linalg.vector_norm(c).item()
        h_max = h.abs().max().item()
        c_max = c.abs().max().item()
        has_nan = bool(torch.isnan(h).any().item() or torch.isnan(c).any().item())
        has_inf = bool(torch.isinf(h).any().item() or torch.isinf(c).any().item())

    return LSTMHealthMetrics(
        h_norm=h_norm,
        c_norm=c_norm,
        h_max=h_max,
        c_max=c_max,
        has_nan=has_nan,
        has_inf=has_inf,
    )
