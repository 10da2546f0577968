"""Small pieces several rules share: a warmed-up baseline, an "about" event for alerts that no
single event raised (a silent producer, a lagging rank), and the gathering of one step's value from
every rank of a run."""

from __future__ import annotations

from statistics import median
from typing import Any

from simic.schemas.models import Event

__all__ = ["Baseline", "about", "gather_step"]


class Baseline:
    """A slow EMA seeded by the median of its first ``warmup`` samples.

    The first samples of a run are the least typical (CUDA and allocator warm-up, compilation,
    large initial gradients); a median ignores a few outliers among them where an EMA seeded by the
    first sample would carry it for a hundred updates. ``value`` is None until the warmup is over.
    """

    __slots__ = ("value", "warm")

    def __init__(self, value: float | None = None, warm: list[float] | None = None) -> None:
        self.value = value
        self.warm = warm if warm is not None else []

    def add(self, x: float, momentum: float, warmup: int) -> None:
        if self.value is None:
            self.warm.append(x)
            if len(self.warm) >= warmup:
                self.value = float(median(self.warm))
                self.warm = []
        else:
            self.value = momentum * self.value + (1.0 - momentum) * x

    def state(self) -> list[Any]:
        return [self.value, list(self.warm)]

    @classmethod
    def from_state(cls, state: list[Any]) -> "Baseline":
        value, warm = state
        return cls(None if value is None else float(value), [float(x) for x in warm])


def about(run_id: str, rank: int, session: int, clock_ns: int, step: int) -> Event:
    """An event to stamp an alert with when no received event is what it is about."""
    return Event.model_construct(kind="analysis", run_id=run_id, rank=rank, session=session, seq=0, clock_ns=clock_ns, step=step)



def gather_step(pending: dict[int, dict[int, float]], step: int, rank: int, value: float, expected: int,
                window: int) -> dict[int, float] | None:
    """Add ``rank``'s value at ``step`` to ``pending`` (step -> rank -> value, oldest step first, at most
    ``window`` steps: a step some rank never reports is dropped once ``window`` newer ones wait). Once
    ``expected`` ranks have sent theirs, the step's values are taken out of ``pending`` and returned."""
    values = pending.get(step)
    if values is None:
        values = pending[step] = {}
        if len(pending) > window:
            del pending[next(iter(pending))]
    values[rank] = value
    if len(values) < expected:
        return None
    del pending[step]
    return values
