"""GradientEMATracker: exponential moving averages of the gradient norm and gradient health.

The seed plan's tracker, with its names, signatures and semantics kept exactly:

- the first ``update`` seeds both EMAs and reports zero drift;
- drift = |x - ema| / (ema + epsilon), computed *before* the EMA moves;
- ``state_dict`` keys ``ema_norm``, ``ema_health``, ``initialized``, ``update_count``.

One change: a non-finite input raises ``ValueError`` naming the argument and leaves the state as it
was (an EMA that swallowed one NaN stays NaN for ever). The consumer raises a non-finite alert
instead of feeding it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["GradientEMATracker"]


@dataclass(slots=True)
class GradientEMATracker:
    """Tracks gradient statistics with an EMA for drift detection.

    Args:
        momentum: weight of the old EMA in each update (0.99: a memory of about 100 updates).
        epsilon: keeps the drift finite when the EMA is 0.
    """

    momentum: float = 0.99
    epsilon: float = 1e-8

    ema_norm: float = field(default=0.0, init=False)
    ema_health: float = field(default=1.0, init=False)
    _initialized: bool = field(default=False, init=False)
    _update_count: int = field(default=0, init=False)

    def update(self, grad_norm: float, grad_health: float) -> dict[str, float]:
        """Fold in one observation; returns ``ema_grad_norm``, ``ema_grad_health``, ``norm_drift``, ``health_drift``.

        Raises:
            ValueError: ``grad_norm`` or ``grad_health`` is NaN or infinite (state unchanged).
        """
        for name, value in (("grad_norm", grad_norm), ("grad_health", grad_health)):
            if not math.isfinite(value):
                raise ValueError(f"{name} is {value}: a non-finite value would poison the EMA")
        self._update_count += 1
        if not self._initialized:
            self.ema_norm = grad_norm
            self.ema_health = grad_health
            self._initialized = True
            return {"ema_grad_norm": self.ema_norm, "ema_grad_health": self.ema_health, "norm_drift": 0.0, "health_drift": 0.0}
        norm_drift = abs(grad_norm - self.ema_norm) / (self.ema_norm + self.epsilon)
        health_drift = abs(grad_health - self.ema_health) / (self.ema_health + self.epsilon)
        self.ema_norm = self.momentum * self.ema_norm + (1 - self.momentum) * grad_norm
        self.ema_health = self.momentum * self.ema_health + (1 - self.momentum) * grad_health
        return {"ema_grad_norm": self.ema_norm, "ema_grad_health": self.ema_health, "norm_drift": norm_drift, "health_drift": health_drift}

    def check_drift(self, grad_norm: float, grad_health: float, drift_threshold: float = 0.5) -> tuple[bool, dict[str, float]]:
        """``update`` and say whether either drift exceeds ``drift_threshold``."""
        metrics = self.update(grad_norm, grad_health)
        return metrics["norm_drift"] > drift_threshold or metrics["health_drift"] > drift_threshold, metrics

    def state_dict(self) -> dict[str, float | bool | int]:
        """The state for checkpointing."""
        return {"ema_norm": self.ema_norm, "ema_health": self.ema_health, "initialized": self._initialized, "update_count": self._update_count}

    def load_state_dict(self, state: dict[str, float | bool | int]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.ema_norm = float(state["ema_norm"])
        self.ema_health = float(state["ema_health"])
        self._initialized = bool(state["initialized"])
        self._update_count = int(state["update_count"])
