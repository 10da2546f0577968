"""LSTM hidden (h) and cell (c) state statistics: one fused device computation, one readout.

For ``h`` and ``c`` shaped ``(layers, envs, hidden)`` (a 2-D ``(envs, hidden)`` tensor is one layer),
the device computes, for both at once (stacked into one ``(2, layers, envs, hidden)`` tensor):

- the L2 norm of each layer (over envs and hidden)       -> norm, rms, per-layer rms, NaN flag
- the L2 norm of each environment (over layers and hidden), max over envs -> per-env max rms
- the largest absolute value, NaN ignored                 -> max-abs, Inf flag

and hands those ``2 * layers + 4`` numbers (plus the masked env count) to the readout path as
four small device tensors (gathered with the other readouts at ``flush()``).
The host derives the rest: ``norm = sqrt(sum of squared layer norms)``, ``rms = norm / sqrt(n)``.
NaN is exact: an L2 norm is NaN iff its inputs hold a NaN. Max-abs follows ``torch.max``: NaN when
a NaN is present.

``env_mask`` (bool or 0/1, shape ``(envs,)``) keeps only the environments to include (for example
the ones still alive): masked environments are zeroed on the device (no boolean indexing, which
would sync) and the statistics divide by the count of the others.
"""

from __future__ import annotations

import math
from typing import Any

from .readout import torch_module

__all__ = ["lstm_stats", "submit_lstm_state"]

_INF = float("inf")


def lstm_stats(hidden: Any, env_mask: Any = None) -> Any:
    """The device half of ``emitter.lstm_state``: the statistics of ``hidden`` as one 1-D float32 tensor.

    Pure tensor code: ``torch.compile`` traces it without a graph break and a CUDA graph can capture
    it. Hand the vector to ``emitter.lstm_state(step, hidden, env_mask, stats=vector)`` outside the
    compiled function (after the graph's replay); ``hidden`` there only tells the shape.
    """
    torch = torch_module()
    with torch.no_grad():
        return torch.cat(_stats_parts(torch, *_checked(torch, hidden), env_mask))


def submit_lstm_state(readouts: Any, emit: Any, step: int, hidden: Any, env_mask: Any = None, stats: Any = None) -> None:
    """Queue the statistics of ``hidden`` (``(h, c)``, or ``h`` alone), or hand over ``stats`` that
    :func:`lstm_stats` computed for it; ``emit`` receives them when read."""
    torch = torch_module()
    h, c = _checked(torch, hidden)
    layers, envs, width = h.shape
    k = 1 if c is None else 2
    masked = env_mask is not None
    count = k * (layers + 2) + masked
    context = (emit, step, k, layers, envs, width, masked)
    with torch.no_grad():
        if stats is None:
            parts = _stats_parts(torch, h, c, env_mask)
        else:
            if not isinstance(stats, torch.Tensor) or stats.shape != (count,):
                raise ValueError(f"stats must be the 1-D tensor of {count} values lstm_stats() returned for this state")
            parts = [stats.detach().clone()]  # a copy: a CUDA graph's output changes at its next replay
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


def _stats_parts(torch: Any, h: Any, c: Any, env_mask: Any) -> list[Any]:
    """The device reductions (see the module docstring), as the vectors the readout gathers."""
    envs = h.shape[1]
    x = h.unsqueeze(0) if c is None else torch.stack((h, c))
    mask = None
    if env_mask is not None:
        mask = env_mask
        if not isinstance(mask, torch.Tensor):
            mask = torch.as_tensor(mask)
        if mask.device != x.device:
            mask = mask.to(x.device, non_blocking=True)
        if mask.dtype != torch.bool:
            mask = mask != 0
        x = torch.where(mask.view(1, 1, envs, 1), x, 0.0)
    f32 = torch.float32
    layer_norm = torch.linalg.vector_norm(x, 2, dim=(2, 3), dtype=f32)  # (k, layers)
    env_max = torch.linalg.vector_norm(x, 2, dim=(1, 3), dtype=f32).amax(1)  # (k,)
    finite_max = torch.linalg.vector_norm(torch.nan_to_num(x, nan=0.0, posinf=_INF, neginf=-_INF), _INF, dim=(1, 2, 3))
    parts = [layer_norm.flatten(), env_max, finite_max]
    if mask is not None:
        parts.append(mask.sum().reshape(1))
    return parts


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
