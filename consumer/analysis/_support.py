"""Small pieces several rules share: an "about" event for alerts that no single event raised (a
silent producer, a lagging rank), and the gathering of one step's value from every rank of a run.
The rules' moving averages are :class:`~simic.consumer.analysis._ema.Ema`."""

from __future__ import annotations

from simic.schemas.models import Event

__all__ = ["about", "gather_step"]


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
