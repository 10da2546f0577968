"""LSTM hidden (h) and cell (c) state statistics: one fused device computation, one readout.

For ``h`` and ``c`` shaped ``(layers, envs, hidden)`` (a 2-D ``(envs, hidden)`` tensor is one layer),
the device computes, for both at once (stacked into one ``(2, layers, envs, hidden)`` tensor):

- the L2 norm of each layer (over envs and hidden)       -> norm, rms, per-layer rms, NaN flag
- the L2 norm of each environment (over layers and hidden), max over envs -> per-env max rms
- the largest absolute value, NaN ignored                 -> max-abs, Inf flag

and hands those ``2 * layers + 4`` numbers (plus the masked env count) to the readout path
(gathered with the other readouts at ``flush()``). Unmasked CUDA states are only snapshotted at the
call (one launch) and reduced at the flush, all calls of one shape together (:class:`LstmBatches`):
measuring the state at every rollout step costs one launch per step. ``lstm_stats`` is the
reduction alone, for a compiled or CUDA-graphed function.
The host derives the rest: ``norm = sqrt(sum of squared layer norms)``, ``rms = norm / sqrt(n)``.
NaN is exact: an L2 norm is NaN iff its inputs hold a NaN. Max-abs follows ``torch.max``: NaN when
a NaN is present.

``env_mask`` (bool or 0/1, shape ``(envs,)``) keeps only the environments to include (for example
the ones still alive): masked environments are zeroed on the device (no boolean indexing, which
would sync) and the statistics divide by the count of the others.
"""

from __future__ import annotations

import math
from itertools import groupby
from operator import itemgetter
from typing import Any

from .readout import current_stream, torch_module

__all__ = ["LstmBatches", "lstm_stats", "submit_lstm_state"]

_INF = float("inf")


def lstm_stats(hidden: Any, env_mask: Any = None) -> Any:
    """The device half of ``emitter.lstm_state``: the statistics of ``hidden`` as one 1-D float32 tensor.

    Pure tensor code: ``torch.compile`` traces it without a graph break and a CUDA graph can capture
    it. Hand the vector to ``emitter.lstm_state(step, hidden, env_mask, stats=vector)`` outside the
    compiled function (after the graph's replay); ``hidden`` there only tells the shape.
    """
    torch = torch_module()
    h, c = _checked(torch, hidden)
    with torch.no_grad():
        return torch.cat(_flat_parts(torch, h, c, env_mask))


class LstmBatches:
    """Unmasked CUDA LSTM states since the last flush, reduced together at the flush.

    A call costs one launch: a snapshot of ``(h, c)`` (``torch.stack`` into a fresh tensor, so the
    trainer may change its state in place afterwards). At ``flush()`` the snapshots of one shape,
    dtype, device and stream are stacked once and reduced once (the same reductions, with a leading
    dimension): a trainer that measures its state at every rollout step pays five reductions per
    flush, not per step. Each call still becomes its own readout, and the readouts are queued in the
    order of the calls (the consumer combines one update's events in the order they come). At most
    ``limit`` snapshots wait, whatever their shapes; the call that finds them all waiting reduces
    them first, as does a call measured the usual way (masked, or ``stats=``) while some wait.

    A reduction that fails (out of memory, a CUDA error) loses its snapshots: counted in
    ``stats.dropped`` and as a collector error (``failed``), never raised into the trainer.
    """

    def __init__(self, stats: Any, failed: Any, limit: int = 64) -> None:
        self.stats = stats
        self.failed = failed
        self.limit = limit
        self.pending: dict[tuple, list[tuple[int, Any, tuple]]] = {}  # key -> [(call number, snapshot, context)]
        self.waiting = 0  # snapshots in ``pending``
        self.calls = 0  # call numbers: the order the readouts are queued in

    def add(self, torch: Any, readouts: Any, h: Any, c: Any, context: tuple) -> None:
        if self.waiting >= self.limit:
            self.reduce(readouts)
        key = (tuple(h.shape), c is None, h.dtype, h.device, current_stream(torch, h.device))
        with torch.no_grad():
            snapshot = _stacked(torch, h, c)
        group = self.pending.get(key)
        if group is None:
            group = self.pending[key] = []
        group.append((self.calls, snapshot, context))
        self.calls += 1
        self.waiting += 1

    def reduce(self, readouts: Any) -> None:
        """Reduce every waiting snapshot, one reduction per kind of snapshot, and queue one readout per
        call, in call order (at ``flush()``, before the readouts are sealed; and before a call that
        would otherwise overtake them)."""
        if not self.pending:
            return
        torch = torch_module()
        pending, self.pending, self.waiting = self.pending, {}, 0
        ready: list[tuple[int, Any, tuple, Any]] = []
        for key, group in pending.items():
            try:
                ready.extend(_reduced(torch, key[-1], group))
            except Exception as exc:  # its snapshots are lost: counted, never raised
                self.stats.dropped += len(group)
                self.failed("lstm_state", exc)
        ready.sort(key=itemgetter(0))  # by call number
        for stream, run in groupby(ready, key=itemgetter(3)):  # each readout queued on its state's stream (the usual: one run)
            with torch.cuda.stream(stream):
                for _, row, context, _ in run:
                    try:
                        readouts.add(row.device, row.shape[0], _resolve, context, vectors=[row])
                    except Exception as exc:
                        self.stats.dropped += 1
                        self.failed("lstm_state", exc)

    def abandon(self) -> list[Any]:
        """Forget the snapshots without touching CUDA (after a fork); the caller keeps them alive."""
        kept, self.pending, self.waiting = self.pending, {}, 0
        return [kept]


def _reduced(torch: Any, stream: Any, group: list[tuple[int, Any, tuple]]) -> list[tuple[int, Any, tuple, Any]]:
    """The statistics of a group of snapshots of one kind, reduced together on their stream: one row
    (a 1-D device tensor) per call, with its call number, context and stream."""
    with torch.cuda.stream(stream), torch.no_grad():
        x = torch.stack([snapshot for _, snapshot, _ in group]) if len(group) > 1 else group[0][1].unsqueeze(0)
        layer_norm, env_max, finite_max = _stats_parts(torch, x)
        rows = torch.cat((layer_norm.flatten(1), env_max, finite_max), 1)
    return [(number, row, context, stream) for row, (number, _, context) in zip(rows.unbind(0), group)]


def submit_lstm_state(readouts: Any, emit: Any, step: int, hidden: Any, env_mask: Any = None, stats: Any = None,
                      batches: LstmBatches | None = None) -> None:
    """Queue the statistics of ``hidden`` (``(h, c)``, or ``h`` alone), or hand over ``stats`` that
    :func:`lstm_stats` computed for it; ``emit`` receives them when read. Unmasked CUDA states go to
    ``batches`` (reduced at the flush) when given."""
    torch = torch_module()
    h, c = _checked(torch, hidden)
    layers, envs, width = h.shape
    k = 1 if c is None else 2
    masked = env_mask is not None
    count = k * (layers + 2) + masked
    context = (emit, step, k, layers, envs, width, masked)
    if stats is not None:
        if not isinstance(stats, torch.Tensor) or stats.shape != (count,):
            raise ValueError(f"stats must be the 1-D tensor of {count} values lstm_stats() returned for this state")
        with torch.no_grad():
            parts = [stats.detach().clone()]  # a copy: a CUDA graph's output changes at its next replay
    elif batches is not None and not masked and h.is_cuda:
        batches.add(torch, readouts, h, c, context)
        return
    if batches is not None and batches.pending:  # states waiting to be reduced were measured first: they go first
        batches.reduce(readouts)
    if stats is None:
        with torch.no_grad():
            parts = _flat_parts(torch, h, c, env_mask)
    if parts[0].is_cuda:
        readouts.add(parts[0].device, count, _resolve, context, vectors=parts)
    else:
        readouts.resolve_now(torch.cat([p.float() for p in parts]).tolist(), _resolve, context)


def _checked(torch: Any, hidden: Any) -> tuple[Any, Any]:
    """``(h, c)`` as 3-D ``(layers, envs, hidden)`` tensors (``c`` None for ``h`` alone); ValueError otherwise."""
    if isinstance(hidden, torch.Tensor):
        h, c = hidden, None
    else:
        h, c = hidden
    if h.dim() == 2:
        h = h.unsqueeze(0)
        c = None if c is None else c.unsqueeze(0)
    if h.dim() != 3 or (c is not None and c.shape != h.shape):
        raise ValueError(f"LSTM state must be (layers, envs, hidden) tensors of one shape, got {tuple(h.shape)}"
                         + ("" if c is None else f" and {tuple(c.shape)}"))
    return h, c


def _stacked(torch: Any, h: Any, c: Any) -> Any:
    """``(k, layers, envs, hidden)``: h alone, or h and c stacked (a fresh tensor either way: a snapshot)."""
    return h.unsqueeze(0).clone() if c is None else torch.stack((h, c))


def _mask_of(torch: Any, env_mask: Any, device: Any) -> Any:
    mask = env_mask if isinstance(env_mask, torch.Tensor) else torch.as_tensor(env_mask)
    if mask.device != device:
        mask = mask.to(device, non_blocking=True)
    return mask if mask.dtype == torch.bool else mask != 0


def _flat_parts(torch: Any, h: Any, c: Any, env_mask: Any) -> list[Any]:
    """One call's statistics as the 1-D tensors of its readout (masked: zeroed environments, no
    boolean indexing, which would sync; the count of the others last)."""
    x = _stacked(torch, h, c)
    mask = None
    if env_mask is not None:
        mask = _mask_of(torch, env_mask, x.device)
        x = torch.where(mask.view(1, 1, x.shape[2], 1), x, 0.0)
    layer_norm, env_max, finite_max = _stats_parts(torch, x)
    parts = [layer_norm.flatten(), env_max, finite_max]
    if mask is not None:
        parts.append(mask.sum().reshape(1))
    return parts


def _stats_parts(torch: Any, x: Any) -> tuple[Any, Any, Any]:
    """The device reductions of ``x`` (``(..., k, layers, envs, hidden)``, see the module docstring):
    per-layer L2 norms ``(..., k, layers)``, the largest per-environment L2 norm ``(..., k)`` and the
    largest absolute value, NaN ignored ``(..., k)``."""
    f32 = torch.float32
    layer_norm = torch.linalg.vector_norm(x, 2, dim=(-2, -1), dtype=f32)
    env_max = torch.linalg.vector_norm(x, 2, dim=(-3, -1), dtype=f32).amax(-1)
    finite_max = torch.linalg.vector_norm(torch.nan_to_num(x, nan=0.0, posinf=_INF, neginf=-_INF), _INF, dim=(-3, -2, -1))
    return layer_norm, env_max, finite_max


def _resolve(values: list, context: tuple) -> None:
    emit, step, k, layers, envs, width, masked = context
    if masked:
        envs = int(round(values[-1]))
    fields: dict[str, Any] = {"envs": envs}
    if envs == 0:  # every environment masked out: nothing measured
        emit(step=step, **fields)
        return
    has_nan = False
    has_inf = False
    for which in range(k):
        prefix = "hc"[which]
        layer = values[which * layers : (which + 1) * layers]
        env_max = values[k * layers + which]
        finite_max = values[k * layers + k + which]
        nan = any(v != v for v in layer)
        has_nan = has_nan or nan
        has_inf = has_inf or finite_max == _INF
        sumsq = math.fsum(v * v for v in layer)
        fields[f"{prefix}_norm"] = math.sqrt(sumsq)
        fields[f"{prefix}_rms"] = math.sqrt(sumsq / (envs * layers * width))
        fields[f"{prefix}_max_abs"] = math.nan if nan else finite_max
        fields[f"{prefix}_env_max_rms"] = env_max / math.sqrt(layers * width)
        scale = 1.0 / math.sqrt(envs * width)
        fields[f"layer_{prefix}_rms"] = [v * scale for v in layer]
    fields["has_nan"] = has_nan
    fields["has_inf"] = has_inf
    emit(step=step, **fields)
