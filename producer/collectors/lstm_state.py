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

__all__ = ["submit_lstm_state"]

_INF = float("inf")


def submit_lstm_state(readouts: Any, emit: Any, step: int, hidden: Any, env_mask: Any = None) -> None:
    """Queue the statistics of ``hidden`` (``(h, c)``, or ``h`` alone); ``emit`` receives them when read."""
    torch = torch_module()
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
    layers, envs, width = h.shape
    with torch.no_grad():
        x = h.unsqueeze(0) if c is None else torch.stack((h, c))
        parts = []
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
        if env_mask is not None:
            parts.append(mask.sum().reshape(1))
        context = (emit, step, x.shape[0], layers, envs, width, env_mask is not None)
        if x.is_cuda:
            count = x.shape[0] * (layers + 2) + (env_mask is not None)
            readouts.add(x.device, count, _resolve, context, vectors=parts)
        else:
            readouts.resolve_now(torch.cat([p.float() for p in parts]).tolist(), _resolve, context)


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
