"""One ``emit_<kind>`` method per event kind, for :class:`~simic.producer.Emitter` and ``NullEmitter``.

GENERATED from ``simic.schemas.models`` by ``python -m simic.producer._codegen``: do not edit by hand
(``tests/producer/test_emit_kinds.py`` fails when this file is stale).

``emitter.emit_ppo_update(step=s, approx_kl=kl)`` sends what ``emitter.emit("ppo_update", step=s,
approx_kl=kl)`` sends, about twice as fast: the row is built straight from named parameters in the
model's field order, with no keyword dictionary to walk. Each parameter defaults to None, "not sent"
(the field's default); the annotations are the models' field types. Anything unusual (an unknown
field, a step that is not an ``int``, a closed emitter) goes to :meth:`Emitter.emit`, which counts
and explains it without raising: ``**unknown`` is typed ``Never`` so that a type checker flags an
unknown field, while at run time it is counted, not raised.

Imports: ``time`` and, for type checkers only, the emitter module.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Literal, Never

if TYPE_CHECKING:
    from .emitter import Emitter, NullEmitter

__all__ = [
    "emit_run_start",
    "emit_step_timing",
    "emit_head_grad_norms",
    "emit_lstm_health",
    "emit_ppo_update",
    "emit_profiler_trace",
    "emit_heartbeat",
    "emit_run_end",
    "emit_alert",
    "emit_metrics",
    "emit_episodes",
    "emit_param_updates",
    "emit_delivery_receipt",
    "null_emit_run_start",
    "null_emit_step_timing",
    "null_emit_head_grad_norms",
    "null_emit_lstm_health",
    "null_emit_ppo_update",
    "null_emit_profiler_trace",
    "null_emit_heartbeat",
    "null_emit_run_end",
    "null_emit_alert",
    "null_emit_metrics",
    "null_emit_episodes",
    "null_emit_param_updates",
    "null_emit_delivery_receipt",
]

_monotonic_ns = time.monotonic_ns


def emit_run_start(
    self: Emitter,
    *,
    step: int,
    host: str | None = None,
    pid: int | None = None,
    world_size: int | None = None,
    torch_version: str | None = None,
    device: str | None = None,
    heads: list[str] | None = None,
    config: dict[str, Any] | None = None,
    producer_version: str | None = None,
    **unknown: Never,
) -> None:
    """Emit a ``run_start`` event (see :class:`simic.schemas.RunStart`). Fields:

    - ``host``: Host name of the trainer.
    - ``pid``: Process id of the trainer.
    - ``world_size``: Number of ranks in the run.
    - ``torch_version``: ``torch.__version__`` when torch is loaded in the trainer.
    - ``device``: Device name, e.g. ``"NVIDIA H100 80GB HBM3"`` or ``"cpu"``.
    - ``heads``: Names of the policy's action heads (and the value head), e.g. slot, blueprint, blend, op,
      value.
    - ``config``: Free-form run configuration (hyperparameters).
    - ``producer_version``: Version of simic-telemetry that produced the events.
    """
    if unknown or type(step) is not int or self._closed:
        return self.emit(
            "run_start", step=step, host=host, pid=pid, world_size=world_size, torch_version=torch_version,
            device=device, heads=heads, config=config, producer_version=producer_version, **unknown,
        )
    now = _monotonic_ns()
    row = [
        1, self._seq, now, step, host, pid, world_size, torch_version, device, heads, config,
        producer_version,
    ]
    while row[-1] is None:
        row.pop()
    self._append(row, step, now)


def emit_step_timing(
    self: Emitter,
    *,
    step: int,
    phases_ms: dict[str, float] | None = None,
    clock: Literal["cuda_event", "cpu"] | None = None,
    wait_ms: dict[str, float] | None = None,
    **unknown: Never,
) -> None:
    """Emit a ``step_timing`` event (see :class:`simic.schemas.StepTiming`). Fields:

    - ``phases_ms``: Phase name (rollout, update, ...) to elapsed milliseconds.
    - ``clock``: What measured it: CUDA events (GPU time) or ``time.perf_counter`` (host time).
    - ``wait_ms``: Phase name to the milliseconds of it that the measuring thread spent ready to run but
      waiting for a CPU (host-timed phases, where the kernel says: Linux's per-thread scheduler statistics):
      time other processes took from the phase. Phases left out: not known. (version 4)
    """
    if unknown or type(step) is not int or self._closed:
        return self.emit(
            "step_timing", step=step, phases_ms=phases_ms, clock=clock, wait_ms=wait_ms, **unknown,
        )
    now = _monotonic_ns()
    row = [2, self._seq, now, step, phases_ms, clock, wait_ms]
    while row[-1] is None:
        row.pop()
    self._append(row, step, now)


def emit_head_grad_norms(
    self: Emitter,
    *,
    step: int,
    norms: dict[str, float | None] | None = None,
    total: float | None = None,
    pre_clip_total: float | None = None,
    post_clip_total: float | None = None,
    nonfinite: dict[str, int] | None = None,
    stage: Literal["pre_clip", "post_clip"] | None = None,
    max_norm: float | None = None,
    samples: int | None = None,
    **unknown: Never,
) -> None:
    """Emit a ``head_grad_norms`` event (see :class:`simic.schemas.HeadGradNorms`). Fields:

    - ``norms``: Head name to the L2 norm of its gradients. ``None``: the head had no gradient (missing).
    - ``total``: L2 norm over all parameters measured (as ``clip_grad_norm_`` computes it).
    - ``pre_clip_total``: Total norm before gradient clipping, when known.
    - ``post_clip_total``: Total norm after gradient clipping, when known.
    - ``nonfinite``: Head name to the number of non-finite gradient elements (heads with none may be left
      out).
    - ``stage``: Whether ``norms`` and ``total`` were measured before or after clipping.
    - ``max_norm``: The clipping threshold in use, when known.
    - ``samples``: How many gradient measurements (optimiser steps) this event combines. None or 1: one. More:
      an update of several optimiser steps (minibatches) sent as one event; each norm is then the root mean
      square over those steps (a NaN or Inf in any of them stays in it). (version 2)
    """
    if unknown or type(step) is not int or self._closed:
        return self.emit(
            "head_grad_norms", step=step, norms=norms, total=total, pre_clip_total=pre_clip_total,
            post_clip_total=post_clip_total, nonfinite=nonfinite, stage=stage, max_norm=max_norm,
            samples=samples, **unknown,
        )
    now = _monotonic_ns()
    row = [
        3, self._seq, now, step, norms, total, pre_clip_total, post_clip_total, nonfinite, stage, max_norm,
        samples,
    ]
    while row[-1] is None:
        row.pop()
    self._append(row, step, now)


def emit_lstm_health(
    self: Emitter,
    *,
    step: int,
    h_norm: float | None = None,
    c_norm: float | None = None,
    h_rms: float | None = None,
    c_rms: float | None = None,
    h_max_abs: float | None = None,
    c_max_abs: float | None = None,
    h_env_max_rms: float | None = None,
    c_env_max_rms: float | None = None,
    has_nan: bool | None = None,
    has_inf: bool | None = None,
    layer_h_rms: list[float] | None = None,
    layer_c_rms: list[float] | None = None,
    envs: int | None = None,
    name: str | None = None,
    **unknown: Never,
) -> None:
    """Emit a ``lstm_health`` event (see :class:`simic.schemas.LstmHealth`). Fields:

    - ``h_norm``: L2 norm of h over all layers and environments.
    - ``c_norm``: L2 norm of c over all layers and environments.
    - ``h_rms``: Root mean square of h.
    - ``c_rms``: Root mean square of c.
    - ``h_max_abs``: Largest absolute value in h.
    - ``c_max_abs``: Largest absolute value in c.
    - ``h_env_max_rms``: Largest per-environment RMS of h (one runaway environment hides in the mean).
    - ``c_env_max_rms``: Largest per-environment RMS of c.
    - ``has_nan``: Whether h or c holds a NaN.
    - ``has_inf``: Whether h or c holds an infinity.
    - ``layer_h_rms``: RMS of h per layer, when given.
    - ``layer_c_rms``: RMS of c per layer, when given.
    - ``envs``: Number of environments the statistics cover (after masking).
    - ``name``: Which recurrent state, when a model has several (``actor``, ``critic``); None: the only one.
      (version 2)
    """
    if unknown or type(step) is not int or self._closed:
        return self.emit(
            "lstm_health", step=step, h_norm=h_norm, c_norm=c_norm, h_rms=h_rms, c_rms=c_rms,
            h_max_abs=h_max_abs, c_max_abs=c_max_abs, h_env_max_rms=h_env_max_rms,
            c_env_max_rms=c_env_max_rms, has_nan=has_nan, has_inf=has_inf, layer_h_rms=layer_h_rms,
            layer_c_rms=layer_c_rms, envs=envs, name=name, **unknown,
        )
    now = _monotonic_ns()
    row = [
        4, self._seq, now, step, h_norm, c_norm, h_rms, c_rms, h_max_abs, c_max_abs, h_env_max_rms,
        c_env_max_rms, has_nan, has_inf, layer_h_rms, layer_c_rms, envs, name,
    ]
    while row[-1] is None:
        row.pop()
    self._append(row, step, now)


def emit_ppo_update(
    self: Emitter,
    *,
    step: int,
    policy_loss: float | None = None,
    value_loss: float | None = None,
    entropy: dict[str, float] | None = None,
    approx_kl: float | None = None,
    clip_fraction: float | None = None,
    ratio_min: float | None = None,
    ratio_max: float | None = None,
    explained_variance: float | None = None,
    learning_rate: float | None = None,
    clip_range: float | None = None,
    loss: float | None = None,
    **unknown: Never,
) -> None:
    """Emit a ``ppo_update`` event (see :class:`simic.schemas.PpoUpdate`). Fields:

    - ``policy_loss``
    - ``value_loss``
    - ``entropy``: Head name to the mean entropy of its action distribution.
    - ``approx_kl``
    - ``clip_fraction``
    - ``ratio_min``
    - ``ratio_max``
    - ``explained_variance``: Explained variance of the value head; None or NaN when undefined (constant
      returns), never 0.
    - ``learning_rate``
    - ``clip_range``: The PPO ratio clipping range (epsilon) in use. (version 2)
    - ``loss``: The total loss the optimiser minimised (policy, value and entropy terms together). (version 2)
    """
    if unknown or type(step) is not int or self._closed:
        return self.emit(
            "ppo_update", step=step, policy_loss=policy_loss, value_loss=value_loss, entropy=entropy,
            approx_kl=approx_kl, clip_fraction=clip_fraction, ratio_min=ratio_min, ratio_max=ratio_max,
            explained_variance=explained_variance, learning_rate=learning_rate, clip_range=clip_range,
            loss=loss, **unknown,
        )
    now = _monotonic_ns()
    row = [
        5, self._seq, now, step, policy_loss, value_loss, entropy, approx_kl, clip_fraction, ratio_min,
        ratio_max, explained_variance, learning_rate, clip_range, loss,
    ]
    while row[-1] is None:
        row.pop()
    self._append(row, step, now)


def emit_profiler_trace(
    self: Emitter,
    *,
    step: int,
    path: str | None = None,
    format: str | None = None,
    **unknown: Never,
) -> None:
    """Emit a ``profiler_trace`` event (see :class:`simic.schemas.ProfilerTrace`). Fields:

    - ``path``: Where the trace file was written (on the trainer's host).
    - ``format``: File format of the trace.
    """
    if unknown or type(step) is not int or self._closed:
        return self.emit("profiler_trace", step=step, path=path, format=format, **unknown)
    now = _monotonic_ns()
    row = [6, self._seq, now, step, path, format]
    while row[-1] is None:
        row.pop()
    self._append(row, step, now)


def emit_heartbeat(
    self: Emitter,
    *,
    step: int,
    sent: int | None = None,
    dropped: int | None = None,
    readouts_dropped: int | None = None,
    **unknown: Never,
) -> None:
    """Emit a ``heartbeat`` event (see :class:`simic.schemas.Heartbeat`). Fields:

    - ``sent``: Events of this session handed to the transport before the message carrying this heartbeat.
    - ``dropped``: Events this session dropped before they left the process (queue full, no consumer).
    - ``readouts_dropped``: GPU measurements the collectors dropped unread (readout ring full, timers
      backlogged): lost before they became events, so no sequence gap shows them.
    """
    if unknown or type(step) is not int or self._closed:
        return self.emit(
            "heartbeat", step=step, sent=sent, dropped=dropped, readouts_dropped=readouts_dropped, **unknown,
        )
    now = _monotonic_ns()
    row = [7, self._seq, now, step, sent, dropped, readouts_dropped]
    while row[-1] is None:
        row.pop()
    self._append(row, step, now)


def emit_run_end(
    self: Emitter,
    *,
    step: int,
    status: Literal["ok", "error", "interrupted", "exit"] | None = None,
    sent: int | None = None,
    dropped: int | None = None,
    error: str | None = None,
    readouts_dropped: int | None = None,
    **unknown: Never,
) -> None:
    """Emit a ``run_end`` event (see :class:`simic.schemas.RunEnd`). Fields:

    - ``status``: ``ok``: closed by the trainer; ``error``: an uncaught exception; ``interrupted``: Ctrl-C;
      ``exit``: the interpreter exited without closing the emitter.
    - ``sent``: Events of this session handed to the transport before this one. The consumer compares it with
      what it received to count what was lost on the way (``seq`` says how many were made).
    - ``dropped``: Events dropped inside the producer (queue full, no consumer) before this one.
    - ``error``: The exception that ended the run, when ``status`` is ``error``.
    - ``readouts_dropped``: GPU measurements the collectors dropped unread over the session (see
      ``Heartbeat``).
    """
    if unknown or type(step) is not int or self._closed:
        return self.emit(
            "run_end", step=step, status=status, sent=sent, dropped=dropped, error=error,
            readouts_dropped=readouts_dropped, **unknown,
        )
    now = _monotonic_ns()
    row = [8, self._seq, now, step, status, sent, dropped, error, readouts_dropped]
    while row[-1] is None:
        row.pop()
    self._append(row, step, now)


def emit_alert(
    self: Emitter,
    *,
    step: int,
    rule: str | None = None,
    severity: Literal["info", "warning", "critical"] | None = None,
    message: str | None = None,
    values: dict[str, float | int | str | bool | None] | None = None,
    cleared: bool | None = None,
    received_at: float | None = None,
    **unknown: Never,
) -> None:
    """Emit a ``alert`` event (see :class:`simic.schemas.Alert`). Fields:

    - ``rule``: Rule that fired, e.g. ``non_finite``.
    - ``severity``
    - ``message``: One human sentence.
    - ``values``: The values that made the rule fire.
    - ``cleared``: True when this alert says the condition is over.
    - ``received_at``: Wall-clock time (Unix seconds) at which the consumer received the evidence that made
      the rule fire or clear; for a silence, when the silence was noticed. Kept in the log, so a replayed
      alert tells how long after a hang it came. (version 2)
    """
    if unknown or type(step) is not int or self._closed:
        return self.emit(
            "alert", step=step, rule=rule, severity=severity, message=message, values=values, cleared=cleared,
            received_at=received_at, **unknown,
        )
    now = _monotonic_ns()
    row = [9, self._seq, now, step, rule, severity, message, values, cleared, received_at]
    while row[-1] is None:
        row.pop()
    self._append(row, step, now)


def emit_metrics(
    self: Emitter,
    *,
    step: int,
    values: dict[str, float | None] | None = None,
    **unknown: Never,
) -> None:
    """Emit a ``metrics`` event (see :class:`simic.schemas.Metrics`). Fields:

    - ``values``: Metric name (namespaced as the trainer logs it, e.g. ``train/loss``) to its value; None: not
      computed.
    """
    if unknown or type(step) is not int or self._closed:
        return self.emit("metrics", step=step, values=values, **unknown)
    now = _monotonic_ns()
    row = [10, self._seq, now, step, values]
    while row[-1] is None:
        row.pop()
    self._append(row, step, now)


def emit_episodes(
    self: Emitter,
    *,
    step: int,
    returns: list[float] | None = None,
    lengths: list[int] | None = None,
    count: int | None = None,
    **unknown: Never,
) -> None:
    """Emit a ``episodes`` event (see :class:`simic.schemas.Episodes`). Fields:

    - ``returns``: Undiscounted return of each finished episode (the last ``MAX_ITEMS`` when more ended).
    - ``lengths``: Length in environment steps of each finished episode, in the order of ``returns``.
    - ``count``: How many episodes ended in all (``returns`` may keep only the last ones).
    """
    if unknown or type(step) is not int or self._closed:
        return self.emit("episodes", step=step, returns=returns, lengths=lengths, count=count, **unknown)
    now = _monotonic_ns()
    row = [11, self._seq, now, step, returns, lengths, count]
    while row[-1] is None:
        row.pop()
    self._append(row, step, now)


def emit_param_updates(
    self: Emitter,
    *,
    step: int,
    ratios: dict[str, float | None] | None = None,
    update_norms: dict[str, float | None] | None = None,
    param_norms: dict[str, float | None] | None = None,
    total_ratio: float | None = None,
    samples: int | None = None,
    learning_rate: float | None = None,
    **unknown: Never,
) -> None:
    """Emit a ``param_updates`` event (see :class:`simic.schemas.ParamUpdates`). Fields:

    - ``ratios``: Head name to the update-to-weight ratio. 0.0: no parameter of the head changed. ``None``:
      not measurable (the head's parameters were all zero before the step).
    - ``update_norms``: Head name to the L2 norm of the step's change of its parameters.
    - ``param_norms``: Head name to the L2 norm of its parameters before the step (their scale).
    - ``total_ratio``: The ratio over every measured parameter (the ones a clip covers), None when not
      measurable.
    - ``samples``: How many optimiser steps this event combines. None or 1: one. More: an update of several
      optimiser steps (minibatches) sent as one event; each ratio and norm is then the root mean square over
      those steps (a ratio over the steps where it was measurable); a NaN or Inf in any stays in it.
    - ``learning_rate``: The learning rate of the optimiser's first parameter group at the (last) step, when a
      number.
    """
    if unknown or type(step) is not int or self._closed:
        return self.emit(
            "param_updates", step=step, ratios=ratios, update_norms=update_norms, param_norms=param_norms,
            total_ratio=total_ratio, samples=samples, learning_rate=learning_rate, **unknown,
        )
    now = _monotonic_ns()
    row = [12, self._seq, now, step, ratios, update_norms, param_norms, total_ratio, samples, learning_rate]
    while row[-1] is None:
        row.pop()
    self._append(row, step, now)


def emit_delivery_receipt(
    self: Emitter,
    *,
    step: int,
    received: int | None = None,
    lost: int | None = None,
    **unknown: Never,
) -> None:
    """Emit a ``delivery_receipt`` event (see :class:`simic.schemas.DeliveryReceipt`). Fields:

    - ``received``: Distinct events of the session the consumer received, the ``run_end`` included.
    - ``lost``: Sequence numbers of the session that never arrived (gaps).
    """
    if unknown or type(step) is not int or self._closed:
        return self.emit("delivery_receipt", step=step, received=received, lost=lost, **unknown)
    now = _monotonic_ns()
    row = [13, self._seq, now, step, received, lost]
    while row[-1] is None:
        row.pop()
    self._append(row, step, now)


def null_emit_run_start(
    self: NullEmitter,
    *,
    step: int,
    host: str | None = None,
    pid: int | None = None,
    world_size: int | None = None,
    torch_version: str | None = None,
    device: str | None = None,
    heads: list[str] | None = None,
    config: dict[str, Any] | None = None,
    producer_version: str | None = None,
    **unknown: Never,
) -> None:
    """Telemetry off: does nothing (see :meth:`Emitter.emit_run_start`)."""


def null_emit_step_timing(
    self: NullEmitter,
    *,
    step: int,
    phases_ms: dict[str, float] | None = None,
    clock: Literal["cuda_event", "cpu"] | None = None,
    wait_ms: dict[str, float] | None = None,
    **unknown: Never,
) -> None:
    """Telemetry off: does nothing (see :meth:`Emitter.emit_step_timing`)."""


def null_emit_head_grad_norms(
    self: NullEmitter,
    *,
    step: int,
    norms: dict[str, float | None] | None = None,
    total: float | None = None,
    pre_clip_total: float | None = None,
    post_clip_total: float | None = None,
    nonfinite: dict[str, int] | None = None,
    stage: Literal["pre_clip", "post_clip"] | None = None,
    max_norm: float | None = None,
    samples: int | None = None,
    **unknown: Never,
) -> None:
    """Telemetry off: does nothing (see :meth:`Emitter.emit_head_grad_norms`)."""


def null_emit_lstm_health(
    self: NullEmitter,
    *,
    step: int,
    h_norm: float | None = None,
    c_norm: float | None = None,
    h_rms: float | None = None,
    c_rms: float | None = None,
    h_max_abs: float | None = None,
    c_max_abs: float | None = None,
    h_env_max_rms: float | None = None,
    c_env_max_rms: float | None = None,
    has_nan: bool | None = None,
    has_inf: bool | None = None,
    layer_h_rms: list[float] | None = None,
    layer_c_rms: list[float] | None = None,
    envs: int | None = None,
    name: str | None = None,
    **unknown: Never,
) -> None:
    """Telemetry off: does nothing (see :meth:`Emitter.emit_lstm_health`)."""


def null_emit_ppo_update(
    self: NullEmitter,
    *,
    step: int,
    policy_loss: float | None = None,
    value_loss: float | None = None,
    entropy: dict[str, float] | None = None,
    approx_kl: float | None = None,
    clip_fraction: float | None = None,
    ratio_min: float | None = None,
    ratio_max: float | None = None,
    explained_variance: float | None = None,
    learning_rate: float | None = None,
    clip_range: float | None = None,
    loss: float | None = None,
    **unknown: Never,
) -> None:
    """Telemetry off: does nothing (see :meth:`Emitter.emit_ppo_update`)."""


def null_emit_profiler_trace(
    self: NullEmitter,
    *,
    step: int,
    path: str | None = None,
    format: str | None = None,
    **unknown: Never,
) -> None:
    """Telemetry off: does nothing (see :meth:`Emitter.emit_profiler_trace`)."""


def null_emit_heartbeat(
    self: NullEmitter,
    *,
    step: int,
    sent: int | None = None,
    dropped: int | None = None,
    readouts_dropped: int | None = None,
    **unknown: Never,
) -> None:
    """Telemetry off: does nothing (see :meth:`Emitter.emit_heartbeat`)."""


def null_emit_run_end(
    self: NullEmitter,
    *,
    step: int,
    status: Literal["ok", "error", "interrupted", "exit"] | None = None,
    sent: int | None = None,
    dropped: int | None = None,
    error: str | None = None,
    readouts_dropped: int | None = None,
    **unknown: Never,
) -> None:
    """Telemetry off: does nothing (see :meth:`Emitter.emit_run_end`)."""


def null_emit_alert(
    self: NullEmitter,
    *,
    step: int,
    rule: str | None = None,
    severity: Literal["info", "warning", "critical"] | None = None,
    message: str | None = None,
    values: dict[str, float | int | str | bool | None] | None = None,
    cleared: bool | None = None,
    received_at: float | None = None,
    **unknown: Never,
) -> None:
    """Telemetry off: does nothing (see :meth:`Emitter.emit_alert`)."""


def null_emit_metrics(
    self: NullEmitter,
    *,
    step: int,
    values: dict[str, float | None] | None = None,
    **unknown: Never,
) -> None:
    """Telemetry off: does nothing (see :meth:`Emitter.emit_metrics`)."""


def null_emit_episodes(
    self: NullEmitter,
    *,
    step: int,
    returns: list[float] | None = None,
    lengths: list[int] | None = None,
    count: int | None = None,
    **unknown: Never,
) -> None:
    """Telemetry off: does nothing (see :meth:`Emitter.emit_episodes`)."""


def null_emit_param_updates(
    self: NullEmitter,
    *,
    step: int,
    ratios: dict[str, float | None] | None = None,
    update_norms: dict[str, float | None] | None = None,
    param_norms: dict[str, float | None] | None = None,
    total_ratio: float | None = None,
    samples: int | None = None,
    learning_rate: float | None = None,
    **unknown: Never,
) -> None:
    """Telemetry off: does nothing (see :meth:`Emitter.emit_param_updates`)."""


def null_emit_delivery_receipt(
    self: NullEmitter,
    *,
    step: int,
    received: int | None = None,
    lost: int | None = None,
    **unknown: Never,
) -> None:
    """Telemetry off: does nothing (see :meth:`Emitter.emit_delivery_receipt`)."""
