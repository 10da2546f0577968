"""Exponential moving averages: :class:`Ema`, the one implementation the rules share, and the seed
plan's :class:`GradientEMATracker` built on it.

An :class:`Ema` is seeded by its first ``warmup`` samples (their mean, or their median), then
follows ``value = momentum * value + (1 - momentum) * x``. ``add`` returns the value *before* the
sample, which is what a rule judges the sample against. Who uses which seed:

- ``gradient_drift``: the mean of the first 30 updates, for the total norm and grad health (its heads are
  judged by ``_rise``, not by an average);
- ``gradient_scale``, ``step_time``: the median of the first 10 (robust to warm-up outliers);
- ``silent_producer``: the first gap between messages;
- :class:`GradientEMATracker`: the first update (the seed plan's).

The seed plan's tracker keeps its names, signatures and semantics exactly:

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
from statistics import median
from typing import Any, Literal

__all__ = ["Ema", "GradientEMATracker", "relative_drift"]


class Ema:
    """An exponential moving average, seeded by its first ``warmup`` samples.

    ``value`` is None while warming up. The first sample is taken as it is (the mean or median of
    one sample); a mean grows as ``mean + (x - mean) / n``.

    Args:
        momentum: weight of the old value in each update (0.99: a memory of about 100 samples).
        warmup: samples that seed it (0 counts as 1: the first sample seeds it).
        seed: ``"mean"`` or ``"median"`` of the warm-up samples. The median ignores a few outliers
            among a run's first samples (CUDA and allocator warm-up, compilation, large initial
            gradients), where a mean, or an EMA seeded by the first sample, would carry them for a
            hundred updates.

    Raises:
        ValueError: a momentum outside [0, 1], a negative warmup or an unknown seed.
    """

    __slots__ = ("momentum", "rest", "warmup", "median", "value", "count", "mean", "samples")

    def __init__(self, momentum: float, warmup: int = 1, *, seed: Literal["mean", "median"] = "mean") -> None:
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], not {momentum}")
        if warmup < 0:
            raise ValueError(f"warmup must not be negative, not {warmup}")
        if seed not in ("mean", "median"):
            raise ValueError(f"seed is 'mean' or 'median', not {seed!r}")
        self.momentum = momentum
        self.rest = 1.0 - momentum
        self.warmup = max(warmup, 1)
        self.median = seed == "median"
        self.value: float | None = None
        """The average; None until the warmup is over."""
        self.count = 0
        """Samples of the warm-up folded in (it stops counting once the warmup is over)."""
        self.mean = 0.0
        """The mean of the warm-up samples (``seed="mean"``), kept as it was once the warmup is over."""
        self.samples: list[float] = []
        """The warm-up samples so far (``seed="median"``); emptied once the warmup is over."""

    def add(self, x: float) -> float | None:
        """Fold in one sample. Returns the value before it (what ``x`` is judged against), or None
        while warming up (``x`` then only seeds the average)."""
        value = self.value
        if value is not None:
            self.value = self.momentum * value + self.rest * x
            return value
        self.count += 1
        if self.median:
            self.samples.append(x)
            if len(self.samples) >= self.warmup:
                self.value = float(median(self.samples))
                self.samples = []
        else:
            count = self.count
            self.mean = x if count == 1 else self.mean + (x - self.mean) / count
            if count >= self.warmup:
                self.value = self.mean
        return None

    @property
    def level(self) -> float | None:
        """The value, or while warming up the mean (median) of the samples so far; None before any."""
        if self.value is not None:
            return self.value
        if self.median:
            return float(median(self.samples)) if self.samples else None
        return self.mean if self.count else None

    def state(self) -> list[Any]:
        """JSON data: ``[value, warm-up samples]`` (median seed) or ``[value or the warm-up mean,
        samples counted up to the warmup]`` (mean seed)."""
        if self.median:
            return [self.value, list(self.samples)]
        return [self.mean if self.value is None else self.value, self.count]

    def load_state(self, state: list[Any]) -> None:
        """Restore what :meth:`state` returned (into an Ema of the same settings)."""
        if self.median:
            value, samples = state
            self.value = None if value is None else float(value)
            self.samples = [float(x) for x in samples]
            self.count = len(self.samples) if self.value is None else self.warmup
            return
        value, count = float(state[0]), min(int(state[1]), self.warmup)
        self.count = count
        if count >= self.warmup:
            self.value = value
        else:
            self.value, self.mean = None, value

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Ema):
            return NotImplemented
        return all(getattr(self, name) == getattr(other, name) for name in self.__slots__)

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return (f"Ema(momentum={self.momentum}, warmup={self.warmup}, seed={'median' if self.median else 'mean'!r}, "
                f"value={self.value}, count={self.count})")


def relative_drift(x: float, before: float, epsilon: float = 1e-8) -> float:
    """``|x - before| / (before + epsilon)``: how far a sample lies from the average it is judged against."""
    return abs(x - before) / (before + epsilon)


@dataclass(slots=True)
class GradientEMATracker:
    """Tracks gradient statistics with an EMA for drift detection.

    Args:
        momentum: weight of the old EMA in each update (0.99: a memory of about 100 updates).
        epsilon: keeps the drift finite when the EMA is 0.
    """

    momentum: float = 0.99
    epsilon: float = 1e-8

    _norm: Ema = field(init=False, repr=False)
    _health: Ema = field(init=False, repr=False)
    _update_count: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        self._norm = Ema(self.momentum)  # seeded by the first update
        self._health = Ema(self.momentum)

    @property
    def ema_norm(self) -> float:
        """The gradient norm's EMA (0.0 before the first update)."""
        value = self._norm.value
        return 0.0 if value is None else value

    @property
    def ema_health(self) -> float:
        """Grad health's EMA (1.0 before the first update)."""
        value = self._health.value
        return 1.0 if value is None else value

    def update(self, grad_norm: float, grad_health: float) -> dict[str, float]:
        """Fold in one observation; returns ``ema_grad_norm``, ``ema_grad_health``, ``norm_drift``, ``health_drift``.

        Raises:
            ValueError: ``grad_norm`` or ``grad_health`` is NaN or infinite (state unchanged).
        """
        for name, value in (("grad_norm", grad_norm), ("grad_health", grad_health)):
            if not math.isfinite(value):
                raise ValueError(f"{name} is {value}: a non-finite value would poison the EMA")
        self._update_count += 1
        norm_before = self._norm.add(grad_norm)
        health_before = self._health.add(grad_health)
        if norm_before is None or health_before is None:  # the first update seeds both
            return {"ema_grad_norm": self.ema_norm, "ema_grad_health": self.ema_health, "norm_drift": 0.0, "health_drift": 0.0}
        norm_drift = relative_drift(grad_norm, norm_before, self.epsilon)
        health_drift = relative_drift(grad_health, health_before, self.epsilon)
        return {"ema_grad_norm": self.ema_norm, "ema_grad_health": self.ema_health, "norm_drift": norm_drift, "health_drift": health_drift}

    def check_drift(self, grad_norm: float, grad_health: float, drift_threshold: float = 0.5) -> tuple[bool, dict[str, float]]:
        """``update`` and say whether either drift exceeds ``drift_threshold``."""
        metrics = self.update(grad_norm, grad_health)
        return metrics["norm_drift"] > drift_threshold or metrics["health_drift"] > drift_threshold, metrics

    def state_dict(self) -> dict[str, float | bool | int]:
        """The state for checkpointing."""
        return {"ema_norm": self.ema_norm, "ema_health": self.ema_health, "initialized": self._norm.value is not None,
                "update_count": self._update_count}

    def load_state_dict(self, state: dict[str, float | bool | int]) -> None:
        """Restore what :meth:`state_dict` returned."""
        initialized = bool(state["initialized"])
        self._update_count = int(state["update_count"])
        for ema, value in ((self._norm, float(state["ema_norm"])), (self._health, float(state["ema_health"]))):
            ema.value = value if initialized else None
            ema.count = ema.warmup if initialized else 0
