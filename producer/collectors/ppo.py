"""PPO update metrics (and the free-form ``metrics``), given as floats or device tensors, through the deferred readout path.

``emitter.ppo_update(step, policy_loss=pg_loss, value_loss=v_loss, approx_kl=approx_kl,
clip_fraction=clipfrac, ratio_min=ratio.min(), ratio_max=ratio.max(), entropy={"slot": ent_slot,
...}, explained_variance=ev, learning_rate=lr)``: every value may be a Python or numpy number, a CPU tensor, a one-element array
or a one-element CUDA tensor (all on one device); ``entropy`` may be one number for the whole policy. The CUDA ones are stacked into one vector (one
launch, a snapshot) and read back after a later ``flush()``; the event is emitted when they
arrive, with the host values beside them.
"""

from __future__ import annotations

import numbers
import sys
from typing import Any, Mapping

from simic.schemas.codec import KINDS

from .readout import torch_module

__all__ = ["PPO_FIELDS", "submit_ppo_update"]

PPO_FIELDS = frozenset(KINDS["ppo_update"].fields)
"""The metrics ``ppo_update`` accepts (the payload fields of the ``ppo_update`` event)."""

SCALAR_ENTROPY_HEAD = "policy"
"""Where a single entropy value goes (``entropy=0.9`` is sent as ``{"policy": 0.9}``): the mean
entropy of the whole policy, as libraries that do not factor their action report it."""


def submit_ppo_update(readouts: Any, emit: Any, step: int, metrics: Mapping[str, Any], refuse: Any) -> None:
    """Split ``metrics`` into host values and device tensors, queue the device ones, emit when read."""
    fields: dict[str, Any] = {}
    device: list[Any] = []
    where: list[tuple[str, str | None]] = []  # (field, head) of each device value
    torch = None
    for name, value in metrics.items():
        if value is None:
            continue
        if name == "entropy" and not isinstance(value, Mapping):
            value = {SCALAR_ENTROPY_HEAD: value}
        if isinstance(value, Mapping):
            entries = {}
            for head, item in value.items():
                if not isinstance(head, str):  # the models take text keys only: the consumer would refuse the whole event
                    refuse(f"ppo_update:{name}", f"{name} keys must be text, got {type(head).__name__} {head!r:.40}")
                    continue
                if item is None:  # missing, and sent as missing where the field allows it
                    if name == "values":
                        entries[head] = None
                    continue
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
    """A float for any numeric scalar a trainer holds (Python, numpy, CPU tensor, a one-element array,
    anything with ``__float__``); ``_DEVICE`` for a CUDA tensor (read later); ``_SKIP`` (refused) otherwise."""
    cls = type(value)
    if cls is float or cls is int:
        return float(value)
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):  # before the numbers ABC: the usual device value
        if value.numel() != 1:
            refuse(f"ppo_update:{name}", f"{_where(name, head)} must hold one value, got {value.numel()}")
            return _SKIP
        if value.is_cuda:
            return _DEVICE
        return float(value.reshape(()).item())  # a CPU tensor: already on the host, no sync
    if isinstance(value, numbers.Real) and not isinstance(value, bool):  # numpy scalars, Fraction, ...
        return float(value)
    size = getattr(value, "size", 1)  # numpy arrays: size is an int
    if isinstance(value, bool) or not hasattr(value, "__float__") or (isinstance(size, int) and size != 1):
        refuse(f"ppo_update:{name}", f"{_where(name, head)} must be a number or hold one value, got {type(value).__name__}")
        return _SKIP
    try:
        item = getattr(value, "item", None)  # numpy / JAX arrays of one element
        return float(item() if item is not None else value)
    except (TypeError, ValueError) as exc:
        refuse(f"ppo_update:{name}", f"{_where(name, head)}: {exc}")
        return _SKIP


def _where(name: str, head: str | None) -> str:
    return name if head is None else f"{name}.{head}"


def _resolve(values: list, context: tuple) -> None:
    emit, step, fields, where = context
    for value, (name, head) in zip(values, where):
        if head is None:
            fields[name] = value
        else:
            fields[name][head] = value
    emit(step=step, **fields)
