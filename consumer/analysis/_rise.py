"""A value rising above its own history, judged on a log scale: the check ``update_ratio`` and
``gradient_drift``'s per-head judge share (not a rule itself).

A training signal that should not grow (a head's gradient norm, the optimizer's step for its
learning rate) is noisy from update to update, trends slowly while a run learns, and on some
trainers is bimodal (a head whose gradient fades to almost nothing on some updates and not on
others). What "normal" is comes from the series itself, robustly:

- its **level**: the median of its last ``baseline`` kept values (short, so it follows a slow trend);
- its **jitter**: the robust spread of its update-to-update changes over the last ``spread`` kept
  values (1.4826 x their MAD, over the square root of 2: the spread of one value around a level),
  at least ``min_spread``. Changes, not levels, so a trend is not counted as noise.

A value has risen when it is above the level by more than ``rise`` (a factor) *and* by more than
``noise_z`` jitters *and* above the highest of the last ``spread`` kept values by ``new_high``
(a factor): a series that swings between two levels does not rise by returning to its upper one,
even after a stretch spent at the lower one (which is what the level follows). The caller
keeps a value (:meth:`Rise.keep`) only when it did not rise, so a fault does not become the usual.
"""

from __future__ import annotations

import math
from bisect import bisect_left, insort
from statistics import median
from typing import NamedTuple

from ._support import ordered_median

__all__ = ["Rise", "RiseLimits"]


class RiseLimits(NamedTuple):
    """What counts as a rise; see the module. Factors, not logs."""

    rise: float
    noise_z: float
    new_high: float
    min_spread: float
    baseline: int
    spread: int
    warmup: int


class Rise:
    """One series' recent log values, and the judge of a new one against them. The values of the level's
    window are also kept sorted, and their median with them, so a judgement finds the level without sorting
    them again (nor calling for it: a judgement runs for every head of every update)."""

    __slots__ = ("values", "seen", "_sorted", "_sorted_of", "_median", "_limits", "_warmup", "_baseline", "_spread",
                 "_log_rise", "_log_new_high", "_cap")

    def __init__(self, values: list[float] | None = None, seen: int = 0) -> None:
        self.values: list[float] = values if values is not None else []
        """Log values kept, oldest first (at most ``max(baseline, spread + 1)``). Changed only by :meth:`keep`."""
        self.seen = seen
        """Values offered so far (kept or not): the warm-up counts them."""
        self._sorted: list[float] = []
        """The last ``_sorted_of`` kept values, sorted (the level's window, kept up to date by :meth:`keep`)."""
        self._sorted_of = 0
        """The window ``_sorted`` holds (a ``baseline``; 0: not made yet)."""
        self._median = 0.0
        """The median of ``_sorted`` (when it is made): the level."""
        self._limits: RiseLimits | None = None
        """The limits last judged or kept with, and what follows from them (the logs of the factors, how many values to keep)."""
        self._warmup = self._baseline = self._spread = self._cap = 0
        self._log_rise = self._log_new_high = 0.0

    def _derive(self, limits: RiseLimits) -> None:
        self._limits = limits
        self._warmup, self._baseline, self._spread = limits.warmup, limits.baseline, limits.spread
        self._log_rise, self._log_new_high = math.log(limits.rise), math.log(limits.new_high)
        self._cap = max(limits.baseline, limits.spread + 1)

    def _level(self, baseline: int) -> float:
        """The median of the last ``baseline`` kept values (there is one at least), from the sorted window."""
        if self._sorted_of != baseline:
            if baseline < 1:  # (no such setting: the whole history, as a slice from -0 gives it)
                return median(self.values[-baseline:])
            self._sorted = sorted(self.values[-baseline:])
            self._sorted_of = baseline
            self._median = ordered_median(self._sorted)
        return self._median

    def judge(self, x: float, limits: RiseLimits) -> tuple[bool, float]:
        """Whether log value ``x`` rose (see the module) and by how much over the level (in log; 0.0
        during the warm-up). Counts ``x`` as seen; does not keep it."""
        if limits is not self._limits:
            self._derive(limits)
        values = self.values
        seen = self.seen
        self.seen = seen + 1
        if seen < self._warmup or len(values) < 3:
            return False, 0.0
        baseline = self._baseline
        rise = x - (self._median if self._sorted_of == baseline else self._level(baseline))
        if rise <= self._log_rise or x <= max(values[-self._spread:]) + self._log_new_high:
            return False, rise
        return rise > limits.noise_z * self._jitter(limits), rise

    def _jitter(self, limits: RiseLimits) -> float:
        window = self.values[-(limits.spread + 1):]
        changes = [b - a for a, b in zip(window, window[1:])]
        middle = median(changes)
        return max(limits.min_spread, 1.4826 * median(abs(c - middle) for c in changes) / math.sqrt(2.0))

    def level_and_limit(self, limits: RiseLimits) -> tuple[float | None, float | None]:
        """The level a new value is compared with and the lowest value that would rise (both in log), before
        the new value is kept; the limit is None during the warm-up, the level None before any value."""
        values = self.values
        if not values:
            return None, None
        level = self._level(limits.baseline)
        if self.seen - 1 < limits.warmup or len(values) < 3:  # (``judge`` has counted the value being judged)
            return level, None
        return level, max(level + math.log(limits.rise), level + limits.noise_z * self._jitter(limits),
                          max(values[-limits.spread:]) + math.log(limits.new_high))

    def keep(self, x: float, limits: RiseLimits) -> None:
        """Add log value ``x`` to the history (a value that did not rise)."""
        if limits is not self._limits:
            self._derive(limits)
        values = self.values
        values.append(x)
        kept = len(values)
        baseline = self._baseline
        if self._sorted_of == baseline:  # the level's window moves on: x comes in, the value ``baseline`` before it leaves
            ordered = self._sorted
            insort(ordered, x)
            if kept > baseline:
                del ordered[bisect_left(ordered, values[-baseline - 1])]
            self._median = ordered_median(ordered)  # the level
        else:
            self._sorted_of = 0  # a window of another length is stale now: made again when next asked for
        cap = self._cap
        if kept > cap:
            del values[:-cap]

    def state(self) -> list:
        return [list(self.values), self.seen]

    @classmethod
    def from_state(cls, state: list) -> "Rise":
        values, seen = state
        return cls([float(v) for v in values], int(seen))
