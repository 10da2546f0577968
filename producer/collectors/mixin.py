"""The collector methods of :class:`simic.producer.Emitter`, and their no-op twins on ``NullEmitter``.

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

"Later" is a ``flush()`` after the one that sealed the readout, once the GPU has reached it
(usually the next step's); nothing here waits for the GPU, and nothing raises into the trainer once set up (failures are counted in
``emitter.collector_stats`` and logged once). The state lives on the emitter, created at the first
collector call, which also registers the flush hook.

The step a collector call names becomes the emitter's current step at once (what ``heartbeat``,
``run_end`` and a timer stopped without a step report), even though its event leaves later.
"""

from __future__ import annotations

import functools
import logging
import os
import time
import weakref
from dataclasses import dataclass
from typing import Any, Mapping

from .grad_norms import HeadGroups, clip_and_submit_head_grad_norms, submit_head_grad_norms
from .readout import torch_module
from .lstm_state import submit_lstm_state
from .param_updates import NULL_PARAM_UPDATES, NullParamUpdates, ParamUpdates
from .ppo import PPO_FIELDS, submit_ppo_update
from .readout import CollectorStats, Readouts
from .timing import NullTimer, Timer, Timings, group_by_step, resolve_stream
from .watch import NullWatch, Watch

__all__ = ["CollectorSettings", "CollectorsMixin", "NullCollectorsMixin"]

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


class _State:
    """Per-emitter collector state (created at the first collector call)."""

    def __init__(self, emitter: Any, settings: CollectorSettings) -> None:
        self.emitter = emitter
        self.settings = settings
        self.stats = CollectorStats()
        self.readouts = Readouts(settings.readout_slots, self.stats, emitter._collector_failed)
        self.timings = Timings(settings.max_pending_timers, self.stats)
        self.group_cache: dict[tuple, Any] = {}
        self.param_updates: dict[int, ParamUpdates] = {}  # id(HeadGroups) -> its measurement (keeps the groups alive)
        self.emit_grad_norms = functools.partial(emitter.emit, "head_grad_norms")
        self.emit_lstm = functools.partial(emitter.emit, "lstm_health")
        self.emit_ppo = functools.partial(emitter.emit, "ppo_update")
        self.emit_metrics = functools.partial(emitter.emit, "metrics")
        self.emit_param_updates = functools.partial(emitter.emit, "param_updates")

    def poll(self) -> None:
        """Flush hook: ready timings and readouts become events (restoring the emitter's last step)."""
        emitter = self.emitter
        step = getattr(emitter, "_step", None)
        try:
            if self.param_updates and step is not None:
                self.end_param_updates(step)
            done = self.timings.poll()
            for s, clock, phases in group_by_step(done) if done else ():
                emitter.emit("step_timing", step=s, phases_ms=phases, clock=clock)
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
                self.emitter._collector_failed("param_updates", exc)


_with_state: "weakref.WeakSet[Any]" = weakref.WeakSet()
_abandoned: list[Any] = []  # CUDA objects inherited over fork: never touched, never freed, in the child


def _forget_after_fork() -> None:
    for emitter in list(_with_state):
        state = emitter.__dict__.pop("_collectors", None)
        if state is not None:
            _abandoned.append((state.readouts.abandon(), state.timings.abandon()))


os.register_at_fork(after_in_child=_forget_after_fork)


class CollectorsMixin:
    """GPU collectors for an emitter that has ``emit(kind, *, step, **fields)`` and ``add_flush_hook``."""

    # -- setup ----------------------------------------------------------------------------------

    def configure_collectors(self, settings: CollectorSettings) -> None:
        """Set ring and timer bounds. Call before the first collector call (later calls raise ValueError)."""
        if "_collectors" in self.__dict__:
            raise ValueError("configure_collectors() must come before the first collector call")
        if not isinstance(settings, CollectorSettings):
            raise ValueError("settings must be a CollectorSettings")
        self.__dict__["_collector_settings"] = settings

    @property
    def collector_stats(self) -> CollectorStats:
        """Counts of readouts submitted, resolved, dropped, pending and of failures."""
        state = self.__dict__.get("_collectors")
        return state.stats if state is not None else CollectorStats()

    def head_groups(self, heads: Mapping[str, Any], *, params: Any = None) -> Any:
        """Resolve heads once (see :class:`~simic.producer.collectors.grad_norms.HeadGroups`). Raises ValueError."""
        return HeadGroups(heads, params)

    def _collector_state(self) -> _State:
        state = self.__dict__.get("_collectors")
        if state is None:
            settings = self.__dict__.get("_collector_settings") or CollectorSettings()
            state = self.__dict__["_collectors"] = _State(self, settings)
            _with_state.add(self)
            self.add_flush_hook(state.poll)
        return state

    def _collector_failed(self, key: str, exc: BaseException | str) -> None:
        """Count a failure and log it once per kind; never raise."""
        state = self.__dict__.get("_collectors")
        if state is not None:
            state.stats.errors += 1
        warned = self.__dict__.setdefault("_collector_warned", set())
        if key not in warned and len(warned) < 100:
            warned.add(key)
            log.warning("simic collector %s failed: %s (counted in collector_stats.errors; logged once)", key, exc)

    # -- the hot path ---------------------------------------------------------------------------

    def timer(self, name: str, *, step: int | None = None, stream: Any = None, device: Any = None) -> Timer:
        """A timer for the phase ``name``, recording on ``stream`` (default: the current CUDA stream).

        Host timing (``clock="cpu"``) when ``device="cpu"``, when CUDA is unavailable, or when the
        trainer never imported torch. Use ``start()``/``stop(step)`` or ``with emitter.timer(name, step=s):``.
        """
        state = self._collector_state()
        try:
            torch, stream = resolve_stream(device, stream)
        except Exception as exc:
            self._collector_failed(f"timer:{name}", exc)
            torch, stream = None, None
        return Timer(name, state.timings, self, step=step, torch=torch, stream=stream)

    def head_grad_norms(
        self,
        step: int,
        heads: Any,
        *,
        stage: str | None = None,
        max_norm: float | None = None,
        clip_total: Any = None,
        count_nonfinite: bool = False,
    ) -> None:
        """Per-head and total gradient L2 norms of the current ``.grad``\\ s, read back later.

        Args:
            step: training step the event is about.
            heads: a :class:`HeadGroups` from :meth:`head_groups` (cheapest), or the mapping itself.
            stage: ``"pre_clip"`` or ``"post_clip"`` (where in the step you call this), or None.
            max_norm: the clipping threshold; with ``stage="pre_clip"`` the post-clip total is derived.
            clip_total: what ``clip_grad_norm_`` returned (device tensor or float): the pre-clip total.
            count_nonfinite: also count NaN/Inf gradient elements per head (four more fused passes;
                off by default: a NaN/Inf norm already tells which heads are non-finite).
        """
        if self.closed:
            return
        state = self._collector_state()
        self._note_step(step)
        try:
            if stage not in _STAGES:
                raise ValueError(f"stage must be None, 'pre_clip' or 'post_clip', got {stage!r}")
            groups = heads if type(heads) is HeadGroups else self._groups_for(state, heads)
            submit_head_grad_norms(
                state.readouts, state.emit_grad_norms, step, groups,
                stage=stage, max_norm=max_norm, clip_total=clip_total, count_nonfinite=count_nonfinite,
            )
        except Exception as exc:
            self._collector_failed("head_grad_norms", exc)

    def clip_grad_norm_(self, step: int, heads: Any, max_norm: float) -> Any:
        """``torch.nn.utils.clip_grad_norm_`` for the parameters ``heads`` covers, measured on the way.

        Clips exactly as torch does (L2, ``max_norm / (total + 1e-6)`` clamped to 1) and returns the
        pre-clip total norm as a tensor, like torch; the per-head norms come from the same
        ``_foreach_norm`` pass, so measuring costs no extra reduction. The ``head_grad_norms`` event
        (``stage="pre_clip"``, pre- and post-clip totals) follows after a later ``flush()``.

        Args:
            step: training step the event is about.
            heads: a :class:`HeadGroups` made with ``params=`` the parameters to clip (all of them:
                the total and the clip cover ``params``), or a mapping as for :meth:`head_grad_norms`.
            max_norm: the clipping threshold.

        Raises ValueError for heads that cannot be resolved (as :meth:`head_groups` does). Once the
        heads are known it always clips, also when closed or when the measurement fails (counted).
        """
        state = self._collector_state() if not self.closed else None
        self._note_step(step)
        groups = heads if type(heads) is HeadGroups else (self._groups_for(state, heads) if state else HeadGroups(heads))
        if state is None:
            return torch_module().nn.utils.clip_grad_norm_(groups.total_params(), max_norm)
        return clip_and_submit_head_grad_norms(state.readouts, state.emit_grad_norms, step, groups, max_norm,
                                               self._collector_failed)

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

    def lstm_state(self, step: int, hidden: Any, env_mask: Any = None, *, name: str | None = None) -> None:
        """Statistics of an LSTM state ``(h, c)`` (each ``(layers, envs, hidden)``), read back later.

        ``env_mask`` (``(envs,)``, bool or 0/1) keeps only the environments to include. ``name`` tells
        the states of a model with several recurrent cores apart (``"actor"``, ``"critic"``).
        """
        if self.closed:
            return
        state = self._collector_state()
        self._note_step(step)
        try:
            emit = state.emit_lstm if name is None else functools.partial(state.emit_lstm, name=name)
            submit_lstm_state(state.readouts, emit, step, hidden, env_mask)
        except Exception as exc:
            self._collector_failed("lstm_state", exc)

    def ppo_update(self, step: int, **metrics: Any) -> None:
        """PPO update metrics: any numeric scalar (Python, numpy, a CPU tensor, a one-element array or
        CUDA tensor); ``entropy`` maps head -> value, or is one number for the whole policy.

        Accepted names are the ``ppo_update`` event's fields: policy_loss, value_loss, entropy,
        approx_kl, clip_fraction, ratio_min, ratio_max, explained_variance, learning_rate,
        clip_range, loss.
        """
        if self.closed:
            return
        state = self._collector_state()
        self._note_step(step)
        try:
            if not PPO_FIELDS.issuperset(metrics):
                unknown = sorted(set(metrics) - PPO_FIELDS)
                raise ValueError(f"ppo_update has no metric(s) {unknown} (known: {sorted(PPO_FIELDS)})")
            submit_ppo_update(state.readouts, state.emit_ppo, step, metrics, self._collector_failed)
        except Exception as exc:
            self._collector_failed("ppo_update", exc)

    def metrics(self, step: int, values: Mapping[str, Any]) -> None:
        """Named scalars the trainer logged for ``step`` (a loss, an accuracy), as a ``metrics`` event.

        Values as for :meth:`ppo_update`: numbers, numpy scalars, CPU tensors or one-element CUDA tensors
        (read back later, never waited for); None is sent as missing.
        """
        if self.closed:
            return
        state = self._collector_state()
        self._note_step(step)
        try:
            if not isinstance(values, Mapping):
                raise ValueError(f"metrics takes a mapping of name -> value, got {type(values).__name__}")
            submit_ppo_update(state.readouts, state.emit_metrics, step, {"values": values}, self._collector_failed)
        except Exception as exc:
            self._collector_failed("metrics", exc)

    def param_updates(self, step: int, heads: Any, *, optimizer: Any = None) -> Any:
        """Measure the update-to-weight ratio per head of the ``optimizer.step()`` inside the block::

            with emitter.param_updates(update, groups, optimizer=optimizer):
                optimizer.step()

        The optimizer steps of one ``step`` make one ``param_updates`` event (ratios and norms as root
        mean squares over them, ``samples``), sent when a call names another step, at the first
        ``flush()`` after a later step was named, or at close (see :mod:`simic.producer.collectors.param_updates`).

        Args:
            step: training step the optimizer step belongs to (a PPO loop's update number).
            heads: a :class:`HeadGroups` from :meth:`head_groups` (pass the same one every time: its
                parameter copies are allocated once), or the mapping itself.
            optimizer: the optimizer, to send its first parameter group's learning rate (when a number).

        Memory: one copy of the heads' parameters (those ``params=`` names too). The block always
        runs; a measurement that fails is counted, never raised, and the exception of a failing
        step propagates unchanged.
        """
        if self.closed:
            return NULL_PARAM_UPDATES
        state = self._collector_state()
        self._note_step(step)
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
            self._collector_failed("param_updates", exc)
            return NULL_PARAM_UPDATES

    def watch(self, model: Any, optimizer: Any = None, *, heads: Mapping[str, Any] | None = None, lstm: Any = None,
              clip: float | None = None, step: Any = None, timing: bool = True, update_ratio: bool = True) -> Watch:
        """Instrument a torch trainer without editing its loop (see :mod:`simic.producer.collectors.watch`).

        Args:
            model: the ``nn.Module`` being trained; its trainable parameters make up the total norm.
            optimizer: its optimizer; each ``step()`` ends a measurement (None: no per-step events).
            heads: head name -> module | parameters | ``(param, rows)``, as for :meth:`head_groups`;
                default: one head per child module with parameters (and per parameter of the model itself).
            lstm: an ``nn.LSTM`` (or GRU), or a mapping name -> module: its last state in each step is sampled.
            clip: the ``max_norm`` the trainer clips with, so the post-clip total can be derived.
            step: None: every optimizer step is a step (0, 1, 2, ...). A callable returning the trainer's own
                counter: the optimizer steps taken under one value make one step (norms: their RMS).
            timing: measure the ``train`` phase (first forward with gradients enabled after an optimizer step
                to the end of the next: forward, backward, clip, step; ``no_grad`` rollouts are left out).
            update_ratio: measure each optimizer step's update-to-weight ratio per head and send a
                ``param_updates`` event per step (as :meth:`param_updates` does). Costs one copy of the
                measured (trainable) parameters in memory and four fused passes over them per optimizer
                step: small for RL-sized models; False turns it off.

        Returns a :class:`Watch`: ``end_step()`` sends the step being built, ``close()`` also removes the hooks.
        Raises ValueError for arguments it cannot use; once installed, nothing raises into the trainer.
        """
        return Watch(self, self._collector_state(), model, optimizer, heads=heads, lstm=lstm, clip=clip, step=step,
                     timing=timing, update_ratio=update_ratio)

    def _note_step(self, step: Any) -> None:
        """A collector call names its step: it becomes the current step now (the event comes later)."""
        if type(step) is int:
            self.__dict__["_step"] = step

    # -- resolution -----------------------------------------------------------------------------

    def poll_readouts(self) -> None:
        """Turn ready readouts and timings into events now (``flush()`` does this too). Never waits."""
        state = self.__dict__.get("_collectors")
        if state is not None:
            state.poll()

    def _drain_readouts(self) -> None:
        """At close: wait (at most ``drain_timeout_s``) for readouts in flight, then poll them."""
        state = self.__dict__.get("_collectors")
        if state is None:
            return
        try:
            if state.param_updates:  # the last step's aggregates leave now, so the drain reads them
                state.end_param_updates()
            deadline = time.monotonic() + state.settings.drain_timeout_s
            left = state.readouts.drain(state.settings.drain_timeout_s) if state.readouts.pending else 0
            while state.timings.pending and time.monotonic() < deadline and not state.timings.all_done():
                time.sleep(0.0005)
            if left:
                log.warning("simic collectors: %d readout(s) still in flight at close were abandoned", left)
        except Exception as exc:
            self._collector_failed("drain", exc)


@dataclass(frozen=True)
class _NullGroups:
    """What ``head_groups`` keeps with telemetry off: enough for ``clip_grad_norm_`` to clip the same parameters."""

    heads: Any
    params: list | None


class NullCollectorsMixin:
    """The collector methods doing nothing (telemetry off): same names, same arguments, no torch."""

    def configure_collectors(self, settings: CollectorSettings) -> None:
        pass

    @property
    def collector_stats(self) -> CollectorStats:
        return CollectorStats()

    def head_groups(self, heads: Mapping[str, Any], *, params: Any = None) -> Any:
        return _NullGroups(heads, None if params is None else list(params))

    def timer(self, name: str, *, step: int | None = None, stream: Any = None, device: Any = None) -> NullTimer:
        return NullTimer(name, step)

    def head_grad_norms(self, step: int, heads: Any, *, stage: str | None = None, max_norm: float | None = None,
                        clip_total: Any = None, count_nonfinite: bool = False) -> None:
        pass

    def clip_grad_norm_(self, step: int, heads: Any, max_norm: float) -> Any:
        """Telemetry off: clips as ``torch.nn.utils.clip_grad_norm_`` over the heads' parameters."""
        if isinstance(heads, _NullGroups):
            heads, params = heads.heads, heads.params
        else:
            params = None
        if params is None:
            params = (heads if isinstance(heads, HeadGroups) else HeadGroups(heads)).total_params()
        return torch_module().nn.utils.clip_grad_norm_(params, max_norm)

    def lstm_state(self, step: int, hidden: Any, env_mask: Any = None, *, name: str | None = None) -> None:
        pass

    def metrics(self, step: int, values: Mapping[str, Any]) -> None:
        pass

    def param_updates(self, step: int, heads: Any, *, optimizer: Any = None) -> NullParamUpdates:
        """Telemetry off: a block that only runs its body."""
        return NULL_PARAM_UPDATES

    def watch(self, model: Any, optimizer: Any = None, *, heads: Mapping[str, Any] | None = None, lstm: Any = None,
              clip: float | None = None, step: Any = None, timing: bool = True, update_ratio: bool = True) -> NullWatch:
        return NullWatch()

    def ppo_update(self, step: int, **metrics: Any) -> None:
        pass

    def poll_readouts(self) -> None:
        pass

    def _drain_readouts(self) -> None:
        pass
