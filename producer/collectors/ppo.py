"""PPO update metrics, given as floats or as device tensors, through the deferred readout path.

``emitter.ppo_update(step, policy_loss=pg_loss, value_loss=v_loss, approx_kl=approx_kl,
clip_fraction=clipfrac, ratio_min=ratio.min(), ratio_max=ratio.max(), entropy={"slot": ent_slot,
...}, explained_variance=ev, learning_rate=lr)``: every value may be a Python number, a CPU tensor
or a one-element CUDA tensor (all on one device). The CUDA ones are stacked into one vector (one
launch, a snapshot) and read back after a later ``flush()``; the event is emitted when they
arrive, with the host values beside them.
"""

from __future__ import annotations

from typing import Any, Mapping

from simic.schemas.codec import KINDS

from .readout import torch_module

__all__ = ["PPO_FIELDS", "submit_ppo_update"]

PPO_FIELDS = frozenset(KINDS["ppo_update"].fields)
"""The metrics ``ppo_update`` accepts (the payload fields of the ``ppo_update`` event)."""


def submit_ppo_update(readouts: Any, emit: Any, step: int, metrics: Mapping[str, Any], refuse: Any) -> None:
    """Split ``metrics`` into host values and device tensors, queue the device ones, emit when read."""
    fields: dict[str, Any] = {}
    device: list[Any] = []
    where: list[tuple[str, str | None]] = []  # (field, head) of each device value
    torch = None
    for name, value in metrics.items():
        if value is None:
            continue
        if isinstance(value, Mapping):
            entries = {}
            for head, item in value.items():
                host = _host_value(item, name, head, refuse)
                if host is _DEVICE:
                    device.append(item)
                    where.append((name, head))
                elif host is not _SKIP:
                    entries[head] = host
            fields[name] = entries
            continue
        host = _host_value(value, name, None, refuse)
        if host is _DEVICE:
            device.append(value)
            where.append((name, None))
        elif host is not _SKIP:
            fields[name] = host
    context = (emit, step, fields, where)
    if not device:
        readouts.resolve_now([], _resolve, context)
        return
    torch = torch_module()
    with torch.no_grad():  # one stack: a snapshot (the caller may reuse its tensors) without autograd history
        values = torch.stack([t if t.dim() == 0 else t.reshape(()) for t in device])
    readouts.add(values.device, len(device), _resolve, context, vectors=[values])


class _Marker:
    pass


_DEVICE = _Marker()
_SKIP = _Marker()


def _host_value(value: Any, name: str, head: str | None, refuse: Any) -> Any:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    numel = getattr(value, "numel", None)
    if numel is None:
        refuse(f"ppo_update:{name}", f"{name}{'' if head is None else '.' + head} must be a number or a tensor, got {type(value).__name__}")
        return _SKIP
    if numel() != 1:
        refuse(f"ppo_update:{name}", f"{name}{'' if head is None else '.' + head} must hold one value, got {numel()}")
        return _SKIP
    if getattr(value, "is_cuda", False):
        return _DEVICE
    return float(value.reshape(()).item())  # a CPU tensor: already on the host, no sync


def _resolve(values: list, context: tuple) -> None:
    emit, step, fields, where = context
    for value, (name, head) in zip(values, where):
        if head is None:
            fields[name] = value
        else:
            fields[name][head] = value
    emit(step=step, **fields)
