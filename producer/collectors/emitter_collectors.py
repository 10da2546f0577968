"""The collectors one :class:`simic.producer.Emitter` owns: the state behind its collector methods.

::

    emitter.timer("rollout")                      -> Timer: start() / stop(step), or a with-block
    emitter.head_groups(heads, params=...)        -> HeadGroups (setup: raises ValueError)
    emitter.head_grad_norms(step, groups, ...)    -> head_grad_norms event, later
    emitter.clip_grad_norm_(step, groups, max_norm) -> clips like torch, same event from the same norms
    emitter.lstm_state(step, (h, c), env_mask)    -> lstm_health event, later
    emitter.ppo_update(step, **metrics)           -> ppo_update event, later (or now, if all on host)
    emitter.metrics(step, {"train/loss": t})      -> metrics event, later (or now, if all on host)
    with emitter.param_updates(step, groups):     -> param_updates event (update-to-weight ratio per head),
        optimizer.step()                             once the step is over (see param_updates)
    emitter.watch(model, optimizer, ...)          -> Watch: hooks that do all of the above per step, no loop edits
    emitter.flush()                               -> ready readouts and timings become events
    emitter.close()                               -> waits (bounded) for what is in flight, then sends

Each of those emitter methods hands its call to the emitter's :class:`Collectors`, made with the
emitter. What the collectors keep in flight (the readout ring, the timer pool, caches) is made at the
first collector call, which also adds :meth:`Collectors.poll` to the emitter's flush hooks: an emitter
whose trainer never measures anything on the GPU pays nothing for them in ``flush()``.

"Later" is a ``flush()`` after the one that sealed the readout, once the GPU has reached it
(usually the next step's); nothing here waits for the GPU, and nothing raises into the trainer once set
up (failures are counted in ``emitter.collector_stats`` and logged once).

The step a collector call names becomes the emitter's current step at once (what ``heartbeat``,
``run_end`` and a timer stopped without a step report), even though its event leaves later.

In a forked child the emitter calls :meth:`Collectors.after_fork`: the parent's CUDA objects are kept,
never touched nor freed, and the next collector call starts afresh (the settings stay).

Imports: the other collector modules and :mod:`simic.producer.process_hooks`; never the emitter module
(what the collectors need of their emitter is :class:`Owner`). torch only when first used.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol

from .. import process_hooks
from .grad_norms import HeadGroups, clip_and_submit_head_grad_norms, submit_head_grad_norms, submit_norm_vector
from .lstm_state import LstmBatches, submit_lstm_state
from .param_updates import NULL_PARAM_UPDATES, ParamUpdates
from .ppo import PPO_FIELDS, submit_ppo_update
from .readout import CollectorStats, Readouts, torch_module
from .timing import Timer, Timings, group_by_step, resolve_stream
from .watch import Watch

__all__ = ["CollectorSettings", "Collectors", "Owner", "NullGroups", "clip_without_telemetry"]

log = logging.getLogger("simic.producer")

_STAGES = (None, "pre_clip", "post_clip")


@dataclass(frozen=True)
class CollectorSettings:
    """How much the GPU collectors keep in flight. Defaults suit a trainer that flushes once per step."""

    readout_slots: int = 64
    """Pinned host rows per device, each holding one sealed batch (the readouts of one ``flush()``):
    batches in flight before the oldest is dropped and its readouts counted."""
    max_pending_timers: int = 256
    """Timer measurements in flight before the oldest is dropped and counted (also the event-pair pool size)."""
    drain_timeout_s: float = 2.0
    """Longest ``close()`` waits for readouts still in flight, so a crash's last events are kept."""

    def __post_init__(self) -> None:
        if self.readout_slots < 1 or self.max_pending_timers < 1 or self.drain_timeout_s < 0:
            raise ValueError(f"invalid collector settings: {self}")


class Owner(Protocol):
    """What the collectors need of the emitter that owns them."""

    _step: int
    """The emitter's current step: a collector call that names its step sets it."""

    @property
    def closed(self) -> bool: ...

    def emit(self, kind: str, *, step: int, **fields: Any) -> None: ...

    def emit_head_grad_norms(self, *, step: int, **fields: Any) -> None: ...

    def add_flush_hook(self, hook: Callable[[], None]) -> None: ...


class _State:
    """What the collectors keep in flight (made at the first collector call)."""

    def __init__(self, emitter: Owner, settings: CollectorSettings, failed: Callable[[str, BaseException | str], None]) -> None:
        self.emitter = emitter
        self.settings = settings
        self.failed = failed
        self.stats = CollectorStats()
        self.readouts = Readouts(settings.readout_slots, self.stats, failed)
        self.timings = Timings(settings.max_pending_timers, self.stats)
        self.lstm_batches = LstmBatches(self.stats, failed)
        self.group_cache: dict[tuple, Any] = {}
        self.param_updates: dict[int, ParamUpdates] = {}  # id(HeadGroups) -> its measurement (keeps the groups alive)
        self.emit_grad_norms = emitter.emit_head_grad_norms  # one per optimizer step with norms=rows: the typed, faster path
        self.emit_lstm = functools.partial(emitter.emit, "lstm_health")
        self.emit_ppo = functools.partial(emitter.emit, "ppo_update")
        self.emit_metrics = functools.partial(emitter.emit, "metrics")
        self.emit_param_updates = functools.partial(emitter.emit, "param_updates")

    def poll(self) -> None:
        """Ready timings and readouts become events (restoring the emitter's last step)."""
        emitter = self.emitter
        step = getattr(emitter, "_step", None)
        try:
            if self.param_updates and step is not None:
                self.end_param_updates(step)
            done = self.timings.poll()
            for s, clock, phases, waits in group_by_step(done) if done else ():
                if waits:
                    emitter.emit("step_timing", step=s, phases_ms=phases, clock=clock, wait_ms=waits)
                else:
                    emitter.emit("step_timing", step=s, phases_ms=phases, clock=clock)
            self.lstm_batches.reduce(self.readouts)
            self.readouts.poll()
        finally:
            if step is not None:
                emitter._step = step

    def end_param_updates(self, current: Any = None) -> None:
        """Send the pending ``param_updates`` aggregates: those older than ``current``, or all (None)."""
        for measurement in list(self.param_updates.values()):
            try:
                if current is None:
                    measurement.send()
                else:
                    measurement.on_flush(current)
            except Exception as exc:
                self.failed("param_updates", exc)


class Collectors:
    """The GPU collectors of one emitter: the emitter's collector methods call the same-named ones here.

    Args:
        emitter: the emitter that owns them (it sends their events and runs :meth:`poll` at ``flush()``).
    """

    def __init__(self, emitter: Owner) -> None:
        self.emitter = emitter
        self.settings = CollectorSettings()
        self._state: _State | None = None
        self._hooked = False
        self._warned: set[str] = set()

    # -- setup ----------------------------------------------------------------------------------

    def configure(self, settings: CollectorSettings) -> None:
        """Set ring and timer bounds; before the first collector call (later: ValueError)."""
        if self._state is not None:
            raise ValueError("configure_collectors() must come before the first collector call")
        if not isinstance(settings, CollectorSettings):
            raise ValueError("settings must be a CollectorSettings")
        self.settings = settings

    @property
    def stats(self) -> CollectorStats:
        """Counts of readouts submitted, resolved, dropped, pending and of failures (zeros before the first call)."""
        state = self._state
        return state.stats if state is not None else CollectorStats()

    def _started(self) -> _State:
        state = self._state
        if state is None:
            state = self._state = _State(self.emitter, self.settings, self.failed)
            if not self._hooked:
                self._hooked = True
                self.emitter.add_flush_hook(self.poll)
        return state

    def failed(self, key: str, exc: BaseException | str) -> None:
        """Count a failure and log it once per kind; never raise."""
        state = self._state
        if state is not None:
            state.stats.errors += 1
        warned = self._warned
        if key not in warned and len(warned) < 100:
            warned.add(key)
            log.warning("simic collector %s failed: %s (counted in collector_stats.errors; logged once)", key, exc)

    def note_step(self, step: Any) -> None:
        """A collector call names its step: it becomes the emitter's current step now (the event comes later)."""
        if type(step) is int:
            self.emitter._step = step

    # -- the collector calls (documented on the Emitter's methods of the same names) -------------

    def head_groups(self, heads: Mapping[str, Any], *, params: Any = None) -> HeadGroups:
        return HeadGroups(heads, params)

    def timer(self, name: str, *, step: int | None = None, stream: Any = None, device: Any = None) -> Timer:
        state = self._started()
        try:
            torch, stream = resolve_stream(device, stream)
        except Exception as exc:
            self.failed(f"timer:{name}", exc)
            torch, stream = None, None
        return Timer(name, state.timings, self.emitter, self.failed, step=step, torch=torch, stream=stream)

    def head_grad_norms(self, step: int, heads: Any, *, stage: str | None = None, max_norm: float | None = None,
                        clip_total: Any = None, count_nonfinite: bool = False, norms: Any = None,
                        samples: int | None = None) -> None:
        if self.emitter.closed:
            return
        state = self._started()
        self.note_step(step)
        try:
            if stage not in _STAGES:
                raise ValueError(f"stage must be None, 'pre_clip' or 'post_clip', got {stage!r}")
            groups = heads if type(heads) is HeadGroups else self._groups_for(state, heads)
            if norms is not None:
                submit_norm_vector(state.readouts, state.emit_grad_norms, step, groups, norms,
                                   stage=stage, max_norm=max_norm, clip_total=clip_total, samples=samples)
                return
            submit_head_grad_norms(
                state.readouts, state.emit_grad_norms, step, groups,
                stage=stage, max_norm=max_norm, clip_total=clip_total, count_nonfinite=count_nonfinite,
            )
        except Exception as exc:
            self.failed("head_grad_norms", exc)

    def clip_grad_norm_(self, step: int, heads: Any, max_norm: float) -> Any:
        state = self._started() if not self.emitter.closed else None
        self.note_step(step)
        groups = heads if type(heads) is HeadGroups else (self._groups_for(state, heads) if state else HeadGroups(heads))
        if state is None:
            return torch_module().nn.utils.clip_grad_norm_(groups.total_params(), max_norm)
        return clip_and_submit_head_grad_norms(state.readouts, state.emit_grad_norms, step, groups, max_norm, self.failed)

    def _groups_for(self, state: _State, heads: Any) -> Any:
        if isinstance(heads, HeadGroups):
            return heads
        values = tuple(heads.values())
        if all(isinstance(v, (list, tuple)) or hasattr(v, "parameters") for v in values):
            key = tuple((name, id(v)) for name, v in heads.items())
            cached = state.group_cache.get(key)
            if cached is not None:
                return cached[0]
            groups = HeadGroups(heads)
            if len(state.group_cache) >= 16:
                state.group_cache.clear()
            state.group_cache[key] = (groups, values)  # values kept alive so their ids stay theirs
            return groups
        return HeadGroups(heads)  # generators: resolved every call (pass a HeadGroups instead)

    def lstm_state(self, step: int, hidden: Any, env_mask: Any = None, *, name: str | None = None, stats: Any = None) -> None:
        if self.emitter.closed:
            return
        state = self._started()
        self.note_step(step)
        try:
            emit = state.emit_lstm if name is None else functools.partial(state.emit_lstm, name=name)
            submit_lstm_state(state.readouts, emit, step, hidden, env_mask, stats, state.lstm_batches)
        except Exception as exc:
            self.failed("lstm_state", exc)

    def ppo_update(self, step: int, metrics: dict[str, Any]) -> None:
        if self.emitter.closed:
            return
        state = self._started()
        self.note_step(step)
        try:
            if not PPO_FIELDS.issuperset(metrics):
                unknown = sorted(set(metrics) - PPO_FIELDS)
                raise ValueError(f"ppo_update has no metric(s) {unknown} (known: {sorted(PPO_FIELDS)})")
            submit_ppo_update(state.readouts, state.emit_ppo, step, metrics, self.failed)
        except Exception as exc:
            self.failed("ppo_update", exc)

    def metrics(self, step: int, values: Mapping[str, Any]) -> None:
        if self.emitter.closed:
            return
        state = self._started()
        self.note_step(step)
        try:
            if not isinstance(values, Mapping):
                raise ValueError(f"metrics takes a mapping of name -> value, got {type(values).__name__}")
            submit_ppo_update(state.readouts, state.emit_metrics, step, {"values": values}, self.failed)
        except Exception as exc:
            self.failed("metrics", exc)

    def param_updates(self, step: int, heads: Any, *, optimizer: Any = None) -> Any:
        if self.emitter.closed:
            return NULL_PARAM_UPDATES
        state = self._started()
        self.note_step(step)
        try:
            groups = heads if type(heads) is HeadGroups else self._groups_for(state, heads)
            measurement = state.param_updates.get(id(groups))
            if measurement is None:
                if len(state.param_updates) >= 16:
                    state.end_param_updates()
                    state.param_updates.clear()
                measurement = state.param_updates[id(groups)] = ParamUpdates(self, state, groups)
            return measurement.prepare(step, optimizer)
        except Exception as exc:
            self.failed("param_updates", exc)
            return NULL_PARAM_UPDATES

    def watch(self, model: Any, optimizer: Any = None, *, heads: Mapping[str, Any] | None = None, lstm: Any = None,
              clip: float | None = None, step: Any = None, timing: bool = True, update_ratio: bool = True) -> Watch:
        return Watch(self, self._started(), model, optimizer, heads=heads, lstm=lstm, clip=clip, step=step,
                     timing=timing, update_ratio=update_ratio)

    # -- resolution -----------------------------------------------------------------------------

    def poll(self) -> None:
        """Flush hook: ready timings and readouts become events now. Never waits."""
        state = self._state
        if state is not None:
            state.poll()

    def drain(self) -> None:
        """At close: wait (at most ``drain_timeout_s``) for readouts in flight, then poll them."""
        state = self._state
        if state is None:
            return
        try:
            if state.param_updates:  # the last step's aggregates leave now, so the drain reads them
                state.end_param_updates()
            state.lstm_batches.reduce(state.readouts)
            deadline = time.monotonic() + state.settings.drain_timeout_s
            left = state.readouts.drain(state.settings.drain_timeout_s) if state.readouts.pending else 0
            while state.timings.pending and time.monotonic() < deadline and not state.timings.all_done():
                time.sleep(0.0005)
            if left:
                log.warning("simic collectors: %d readout(s) still in flight at close were abandoned", left)
        except Exception as exc:
            self.failed("drain", exc)

    def readouts_dropped(self) -> int | None:
        """GPU measurements dropped unread (None when no collector ran)."""
        state = self._state
        if state is None:
            return None
        return state.stats.dropped + state.stats.timers_dropped

    def after_fork(self) -> None:
        """In a forked child: keep the parent's CUDA objects untouched for good; the next call starts afresh."""
        state, self._state = self._state, None
        if state is not None:
            process_hooks.keep_inherited(state.readouts.abandon(), state.timings.abandon(), state.lstm_batches.abandon())


@dataclass(frozen=True)
class NullGroups:
    """What ``head_groups`` keeps with telemetry off: enough for ``clip_grad_norm_`` to clip the same parameters."""

    heads: Any
    params: list | None


def clip_without_telemetry(heads: Any, max_norm: float) -> Any:
    """Telemetry off: clip as ``torch.nn.utils.clip_grad_norm_`` over the heads' parameters."""
    if isinstance(heads, NullGroups):
        heads, params = heads.heads, heads.params
    else:
        params = None
    if params is None:
        params = (heads if isinstance(heads, HeadGroups) else HeadGroups(heads)).total_params()
    return torch_module().nn.utils.clip_grad_norm_(params, max_norm)
