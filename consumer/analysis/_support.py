"""Small pieces several rules share: an "about" event for alerts that no single event raised (a
silent producer, a lagging rank), the gathering of one step's value from every rank of a run,
what a value usually is in a run (:class:`RunUsual`), and the median of a window kept in order
(:func:`ordered_median`).
The rules' moving averages are :class:`~simic.consumer.analysis._ema.Ema`."""

from __future__ import annotations

from statistics import median
from typing import Any

from simic.schemas.models import Event

from ._rule import Capped

__all__ = ["RunUsual", "about", "gather_step", "ordered_median"]


def ordered_median(ordered: list[float]) -> float:
    """The median of a non-empty list already in order, the value ``statistics.median`` gives (a
    window kept sorted as values come and go: no sort per judgement)."""
    n = len(ordered)
    middle = n // 2
    return ordered[middle] if n % 2 else (ordered[middle - 1] + ordered[middle]) / 2


class RunUsual:
    """What a value usually is in each run and rank: the median of the last ``keep`` values the rule
    kept (a rule keeps only values it did not find bad, so a fault never becomes the usual), worth
    taking once ``warmup`` are kept. Its state is ``[[run_id, rank, values], ...]``."""

    def __init__(self, warmup: int, keep: int) -> None:
        self.warmup = warmup
        self.keep_last = keep
        self.values: dict[tuple[str, int], list[float]] = Capped()

    def history(self, event: Event) -> list[float]:
        """The kept values of the event's run and rank (made empty at first sight)."""
        key = (event.run_id, event.rank)
        history = self.values.get(key)
        if history is None:
            history = self.values[key] = []
        return history

    def median(self, history: list[float], empty: float) -> float | None:
        """The usual value (``empty`` when nothing is kept), or None before ``warmup`` values were kept."""
        if len(history) < self.warmup:
            return None
        return median(history) if history else empty

    def keep(self, history: list[float], value: float) -> None:
        history.append(value)
        del history[:-self.keep_last]

    def state(self) -> list[list[Any]]:
        return [[run_id, rank, values] for (run_id, rank), values in self.values.items()]

    def load(self, state: list[list[Any]]) -> None:
        self.values = Capped({(run_id, int(rank)): list(values) for run_id, rank, values in state})


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
