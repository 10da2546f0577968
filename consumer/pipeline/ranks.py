"""What is known about each ``(run_id, rank)``: the newest of every measurement, read one way.

The metrics sink exports it as gauges, the dashboard draws it as a table, the report keeps every
point of it as series: all three read the events through this module, so a number means the same
thing in each of them::

    events of one message -> LatestByRank.update -> RankLatest (one per run and rank) -> gauges / table row
                              PerRank(make).of(event) -> anything kept per run and rank (the report's series)

A value the producer sent as missing is kept as None (never a made-up 0); a value it did not send
leaves the one before. Of a ``head_grad_norms`` event, the per-head norms count when measured before
clipping (or at no stage said), and its totals are read by :func:`grad_totals`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Generic, Protocol, Sequence, TypeVar

from simic.schemas.models import Event, HeadGradNorms, LstmHealth, PpoUpdate, RunEnd

__all__ = ["RankKey", "PerRank", "RankLatest", "LatestByRank", "grad_totals"]

RankKey = tuple[str, int]
"""``(run_id, rank)``"""

V = TypeVar("V")


class _OfRank(Protocol):
    run_id: str
    rank: int


def grad_totals(event: HeadGradNorms) -> dict[str, float | None]:
    """The total norms a ``head_grad_norms`` event carries, by stage: ``pre_clip``, ``post_clip``, and
    ``total`` for a total measured at no stage said. Explicit ``pre_clip_total``/``post_clip_total``
    win; otherwise ``total`` goes where ``stage`` says. A stage the event names with no value is
    there as None (sent as missing); a stage it says nothing about is absent."""
    totals: dict[str, float | None] = {}
    stage = event.stage
    pre = event.pre_clip_total if event.pre_clip_total is not None else (event.total if stage == "pre_clip" else None)
    if pre is not None or stage == "pre_clip":
        totals["pre_clip"] = pre
    post = event.post_clip_total if event.post_clip_total is not None else (event.total if stage == "post_clip" else None)
    if post is not None or stage == "post_clip":
        totals["post_clip"] = post
    if stage is None:
        totals["total"] = event.total
    return totals


class PerRank(dict[RankKey, V], Generic[V]):
    """A table with one entry per ``(run_id, rank)``, made by ``make(run_id, rank)`` on first use."""

    def __init__(self, make: Callable[[str, int], V]) -> None:
        super().__init__()
        self._make = make

    def of(self, event: Event | _OfRank) -> V:
        """The entry of the event's run and rank (made now if it is the first); anything with a ``run_id``
        and a ``rank`` (a rule's judgement) will do."""
        key = (event.run_id, event.rank)
        entry = self.get(key)
        if entry is None:
            entry = self[key] = self._make(event.run_id, event.rank)
        return entry


@dataclass
class RankLatest:
    """The newest of every measurement of one ``(run_id, rank)``."""

    run_id: str
    rank: int
    last_step: int | None = None
    """The largest step received."""
    events: int = 0
    """Events received."""
    first_recv_ns: int | None = None
    """Arrival time of the first message."""
    last_recv_ns: int = 0
    """Arrival time of the newest message."""
    status: str = "running"
    """``running`` until a ``run_end`` says how it ended (``ok``, ``error``, ...)."""
    grad_norms: dict[str, float | None] = field(default_factory=dict)
    """Head to its newest gradient norm measured before clipping (or at no stage said)."""
    grad_totals: dict[str, float | None] = field(default_factory=dict)
    """``pre_clip``, ``post_clip``, ``total`` (no stage said) to the newest total norm (:func:`grad_totals`)."""
    h_rms: float | None = None
    c_rms: float | None = None
    approx_kl: float | None = None
    entropy: dict[str, float] = field(default_factory=dict)
    """Head to its newest mean entropy."""

    @property
    def grad_total(self) -> float | None:
        """The newest total norm before clipping: the pre-clip total, else the total of no stage."""
        totals = self.grad_totals
        return totals["pre_clip"] if "pre_clip" in totals else totals.get("total")

    def record(self, event: Event) -> None:
        """Take in what one event says."""
        if self.last_step is None or event.step > self.last_step:
            self.last_step = event.step
        if isinstance(event, HeadGradNorms):
            if event.stage != "post_clip":
                self.grad_norms.update(event.norms)
            self.grad_totals.update(grad_totals(event))
        elif isinstance(event, LstmHealth):
            self.h_rms, self.c_rms = event.h_rms, event.c_rms
        elif isinstance(event, PpoUpdate):
            self.approx_kl = event.approx_kl
            self.entropy.update(event.entropy)
        elif isinstance(event, RunEnd):
            self.status = event.status


class LatestByRank(PerRank[V]):
    """:class:`RankLatest` (or a subclass, made by ``make``) per run and rank, updated a message at a time."""

    def __init__(self, make: Callable[[str, int], V] = RankLatest) -> None:  # type: ignore[assignment]
        super().__init__(make)

    def update(self, events: Sequence[Event], recv_ns: int) -> V:
        """Take in the events of one message, arrived at ``recv_ns``. Returns the entry of its first
        event's run and rank (the message's sender: one message is one producer session)."""
        head = self.of(events[0])
        head.events += len(events)
        if head.first_recv_ns is None:
            head.first_recv_ns = recv_ns
        head.last_recv_ns = recv_ns
        head.status = "running"
        key = (head.run_id, head.rank)
        for event in events:
            (head if (event.run_id, event.rank) == key else self.of(event)).record(event)
        return head
