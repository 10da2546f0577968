"""One update, one piece of evidence: the events of one kind with one ``step`` combined, before the rules.

Trainers send at their own cadence: the reference trainer one ``head_grad_norms`` per update, a
CleanRL-style trainer one per minibatch (16 per update), SB3's adapter one per update already
combined, a recurrent trainer several LSTM samples per update, a timer one ``step_timing`` per phase.
The rules count *updates* ("3 updates in a row", "a baseline of 20 updates"), so the
:class:`UpdateCombiner` stage turns the events of one producer session, one kind (for
``lstm_health``, one named LSTM; for ``head_grad_norms``, one stage: pre- and post-clip are kept
apart; for ``step_timing``, one clock) and one step into one event, and hands those to the rules that
read updates (``Rule.per_update``). Rules that look for single bad values (``non_finite``) and the
lifecycle rules read the raw events.

How each kind combines (documented again on the rules that read it):

- ``head_grad_norms``: each head's norm and each total as the root mean square over the events
  (a NaN or Inf in any of them stays; a head None in every event stays None); ``samples`` adds up
  (an event without it counts 1); ``nonfinite`` counts add up; ``stage`` and ``max_norm`` of the last.
- ``lstm_health``: the worst of the samples (largest norm, RMS and max-abs; NaN/Inf if any had them).
- ``step_timing``: the phases of the step added up (one event per phase, or a phase timed twice), and
  their waits for a CPU likewise (a phase's wait is kept only when every part of it carried one, a
  part of its time: not negative, not NaN, not more than the part).
- ``ppo_update``: the mean of each metric over the events (``ratio_min`` the smallest, ``ratio_max``
  the largest; entropy per head the mean).
- ``param_updates``: each ratio and norm as the root mean square; ``samples`` adds up.

When does an update end? For a session that has so far sent at most one event of a kind per step,
each event *is* its update and goes to the rules at once (no delay: the common case). Once a second
event of the same step shows up, that key is combined from then on: an update's events go to the
rules when the first event of another step of that key arrives, when the session ends
(``run_end``), or at the first clock tick ``QUIET_NS`` (2 s of arrival time) after its last event
(a trainer that hung or died). The rest of the step in which the switch happened is left out (its
first event was already judged): one update, once per session. Everything here depends on the order
of events and the arrival times the log keeps, so replay combines exactly as the live run did; the
pending events are checkpointed.
"""

from __future__ import annotations

import base64
import math
from operator import attrgetter
from typing import Any, Callable, Sequence

from simic.schemas.codec import KINDS, decode_message, encode_events
from simic.schemas.models import Event

from ..analysis._rule import Capped
from .contract import Batch, SyncStage

__all__ = ["UpdateCombiner", "COMBINED_KINDS", "combine"]


def _present(values: Sequence[float | None]) -> Sequence[float]:
    """The values that are not None (``values`` itself when none is None: the usual case)."""
    return values if None not in values else [v for v in values if v is not None]


def _rms(values: Sequence[float | None]) -> float | None:
    present = _present(values)
    if not present:
        return None
    return math.sqrt(sum([v * v for v in present]) / len(present))


def _mean(values: Sequence[float | None]) -> float | None:
    present = _present(values)
    return sum(present) / len(present) if present else None


def _worst(values: Sequence[float | None]) -> float | None:
    """The largest value; NaN when any is NaN (``max`` alone would depend on the order)."""
    present = _present(values)
    if not present:
        return None
    total = sum(present)
    if total - total != 0.0 and any(v != v for v in present):  # a finite sum has no NaN in it: the usual case
        return math.nan
    return max(present)


def _worst_each(columns: Sequence[Sequence[float | None]]) -> list[float | None]:
    """``_worst`` of each column; one finiteness check for them all (a finite sum of every value: no NaN anywhere)."""
    present = [c if None not in c else [v for v in c if v is not None] for c in columns]
    total = sum(map(sum, present))
    if total - total == 0.0:
        return list(map(max, present)) if all(present) else [max(values) if values else None for values in present]
    return [_worst(column) for column in columns]


def _per_key(dicts: Sequence[dict[str, Any]], how: Callable[[Sequence[Any]], Any]) -> dict[str, Any]:
    """``how`` of each key's values (None where a dict lacks the key), the keys in order of first appearance."""
    first = dicts[0]
    keys = first.keys()
    if all(d.keys() == keys for d in dicts):  # the same keys in every dict (the usual case): the first's order is the order
        return {k: how([d[k] for d in dicts]) for k in first}
    union: dict[str, None] = {}
    for d in dicts:
        union.update(dict.fromkeys(d))
    return {k: how([d.get(k) for d in dicts]) for k in union}


def _column(name: str, events: Sequence[Event]) -> list[Any]:
    """One field's value of every event, in order."""
    return list(map(attrgetter(name), events))


_HGN_TOTALS = attrgetter("total", "pre_clip_total", "post_clip_total")
_LSTM_WORST = ("h_norm", "c_norm", "h_rms", "c_rms", "h_max_abs", "c_max_abs", "h_env_max_rms", "c_env_max_rms")
_LSTM_VALUES = attrgetter(*_LSTM_WORST, "has_nan", "has_inf", "envs", "layer_h_rms", "layer_c_rms")


def _head_grad_norms(events: Sequence[Event]) -> dict[str, Any]:
    nonfinite: dict[str, int] = {}
    for e in events:
        if e.nonfinite:
            for head, count in e.nonfinite.items():
                nonfinite[head] = nonfinite.get(head, 0) + count
    last = events[-1]
    totals = list(zip(*map(_HGN_TOTALS, events)))
    return dict(
        norms=_per_key(_column("norms", events), _rms),
        total=_rms(totals[0]),
        pre_clip_total=_rms(totals[1]),
        post_clip_total=_rms(totals[2]),
        nonfinite=nonfinite,
        stage=last.stage,
        max_norm=last.max_norm,
        samples=sum([e.samples or 1 for e in events]),
    )


def _lstm_health(events: Sequence[Event]) -> dict[str, Any]:
    *worst, has_nan, has_inf, envs, layer_h, layer_c = zip(*map(_LSTM_VALUES, events))
    fields: dict[str, Any] = dict(zip(_LSTM_WORST, _worst_each(worst)))
    flags = _present(has_nan)
    fields["has_nan"] = any(flags) if flags else None
    flags = _present(has_inf)
    fields["has_inf"] = any(flags) if flags else None
    envs = _present(envs)
    fields["envs"] = max(envs) if envs else None
    for layers, column in (("layer_h_rms", layer_h), ("layer_c_rms", layer_c)):
        lists = [x for x in column if x]
        if not lists:
            fields[layers] = []
        elif len(lists) == 1:  # one event had layers: its values (NaN as ``_worst`` gives it)
            fields[layers] = [math.nan if v != v else v for v in lists[0]]
        elif all(len(x) == len(lists[0]) for x in lists):  # as many layers in each (the usual case)
            fields[layers] = _worst_each(list(zip(*lists)))
        else:
            width = max(len(x) for x in lists)
            fields[layers] = [_worst([x[i] if i < len(x) else None for x in lists]) for i in range(width)]
    fields["name"] = events[-1].name
    return fields


def _step_timing(events: Sequence[Event]) -> dict[str, Any]:
    phases: dict[str, float] = {}
    waits: dict[str, float] = {}
    unknown: set[str] = set()  # a phase whose wait one of its parts did not carry: not known
    for e in events:
        for phase, ms in e.phases_ms.items():
            phases[phase] = phases.get(phase, 0.0) + ms
            wait = e.wait_ms.get(phase)
            if wait is None or not 0.0 <= wait <= ms or phase in unknown:  # not known, or not a part of the phase
                unknown.add(phase)
                waits.pop(phase, None)
            else:
                waits[phase] = waits.get(phase, 0.0) + wait
    return dict(phases_ms=phases, clock=events[0].clock, wait_ms=waits)


_PPO_MEANS = tuple(name for name in ("policy_loss", "value_loss", "approx_kl", "clip_fraction", "explained_variance",
                                     "learning_rate", "clip_range", "loss") if name in KINDS["ppo_update"].field_set)
_PPO_VALUES = attrgetter(*_PPO_MEANS, "ratio_min", "ratio_max")


def _ppo_update(events: Sequence[Event]) -> dict[str, Any]:
    *means, lows, highs = zip(*map(_PPO_VALUES, events))
    fields: dict[str, Any] = dict(zip(_PPO_MEANS, [sum(c) / len(c) if None not in c else _mean(c) for c in means]))
    lows = [v for v in lows if v is not None]
    highs = [v for v in highs if v is not None]
    fields["ratio_min"] = min(lows) if lows else None
    fields["ratio_max"] = max(highs) if highs else None
    entropies = _column("entropy", events)
    first = entropies[0].keys()
    if all(d.keys() == first for d in entropies):  # the same heads in every event (the usual case): none missing
        count = len(entropies)
        fields["entropy"] = {k: sum([d[k] for d in entropies]) / count for k in first}
    else:
        fields["entropy"] = {k: v for k, v in _per_key(entropies, _mean).items() if v is not None}
    return fields


def _param_updates(events: Sequence[Event]) -> dict[str, Any]:
    return dict(
        ratios=_per_key([e.ratios for e in events], _rms),
        update_norms=_per_key([e.update_norms for e in events], _rms),
        param_norms=_per_key([e.param_norms for e in events], _rms),
        total_ratio=_rms([e.total_ratio for e in events]),
        learning_rate=_mean([e.learning_rate for e in events]),
        samples=sum(e.samples or 1 for e in events),
    )


_COMBINE: dict[str, Callable[[Sequence[Event]], dict[str, Any]]] = {
    "head_grad_norms": _head_grad_norms,
    "lstm_health": _lstm_health,
    "step_timing": _step_timing,
    "ppo_update": _ppo_update,
    "param_updates": _param_updates,
}
COMBINED_KINDS = frozenset(kind for kind in _COMBINE if kind in KINDS)
"""The kinds the per-update rules read combined."""

def combine(events: Sequence[Event]) -> Event:
    """One event of the events of one update (same session, kind and step): the first one's envelope,
    the last one's ``seq`` and clock, the payload combined as the module docstring says. A copy of the
    first (``model_copy``: the values are the models' own, combined from valid events, so not validated
    again)."""
    if len(events) == 1:
        return events[0]
    first, last = events[0], events[-1]
    update = _COMBINE[first.kind](events)
    update["seq"], update["clock_ns"] = last.seq, last.clock_ns
    return first.model_copy(update=update)


_PART: dict[str, Callable[[Event], Any] | None] = {
    kind: {"lstm_health": attrgetter("name"), "head_grad_norms": attrgetter("stage"), "step_timing": attrgetter("clock")}.get(kind)
    for kind in COMBINED_KINDS
}
"""What else tells an event's measurements apart, per combined kind: the LSTM's name, the gradient's stage (a
pre- and a post-clip measurement of one step are two things, never averaged together), the timing's clock (GPU
time and host time of one step are not added together); None: nothing (the key's last part is None)."""


QUIET_NS = 2_000_000_000
"""An update still being gathered goes to the rules at the first clock tick 2 s (arrival time) after its
last event: a trainer that hung or died mid-run still has its last update judged."""


class _Key:
    __slots__ = ("multi", "step", "pending", "skip_step", "last_ns")

    def __init__(self) -> None:
        self.last_ns = 0  # arrival time of the last pending event
        self.multi = False  # a step of this key has had more than one event: combine from now on
        self.step: int | None = None  # the step of the last event seen
        self.pending: list[Event] = []  # (multi) the events of the update being gathered
        self.skip_step: int | None = None  # (multi) the rest of the step in which combining began


class UpdateCombiner(SyncStage):
    """Pipeline stage before the rules: fills ``batch.updates`` with one event per update (see the module)."""

    name = "updates"

    def __init__(self) -> None:
        self._keys: dict[tuple, _Key] = Capped()

    def consume_now(self, batch: Batch) -> None:
        updates: list[Event] = []
        keys = self._keys
        if batch.tick:
            for state in keys.values():
                if state.pending and batch.recv_ns - state.last_ns >= QUIET_NS:
                    updates.append(combine(state.pending))
                    state.pending = []
            batch.updates = updates
            return
        parts = _PART
        recv_ns = batch.recv_ns
        for event in batch.events:
            kind = event.kind
            if kind not in parts:
                if kind == "run_end":
                    self._end_session(event, updates)
                continue
            part = parts[kind]
            key = (event.run_id, event.rank, event.session, kind, None if part is None else part(event))
            state = keys.get(key)
            if state is None:
                state = keys[key] = _Key()
            step = event.step
            if not state.multi:
                if step == state.step:  # a second event of a step: combine from now on
                    state.multi = True
                    state.skip_step = step
                    continue
                state.step = step
                updates.append(event)
                continue
            if step == state.skip_step:
                continue
            if state.pending and step != state.step:
                updates.append(combine(state.pending))
                state.pending = []
            state.step = step
            state.pending.append(event)
            state.last_ns = recv_ns
        batch.updates = updates

    def _end_session(self, end: Event, updates: list[Event]) -> None:
        """``run_end``: the session's last updates are complete; release and forget them."""
        ended = [key for key in self._keys if key[:3] == (end.run_id, end.rank, end.session)]
        for key in ended:
            state = self._keys.pop(key)
            if state.pending:
                updates.append(combine(state.pending))

    # -- state ---------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The keys and the events of updates still being gathered (as wire messages, base64: exact,
        NaN included, in strict JSON)."""
        return {
            "keys": [
                [list(key), state.multi, state.step, state.skip_step,
                 base64.b64encode(encode_events(state.pending)).decode() if state.pending else None, state.last_ns]
                for key, state in self._keys.items()
            ]
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._keys.clear()
        for key, multi, step, skip_step, pending, last_ns in state.get("keys", []):
            entry = _Key()
            entry.multi, entry.step, entry.skip_step, entry.last_ns = multi, step, skip_step, int(last_ns)
            entry.pending = list(decode_message(base64.b64decode(pending)).events) if pending else []
            self._keys[tuple(key)] = entry
