"""The update-to-weight ratio per head: how far one ``optimizer.step()`` really moved the parameters.

::

    with emitter.param_updates(update, groups, optimizer=optimizer):
        optimizer.step()

    enter:  copies  <- parameters           one _foreach_copy_ into buffers kept across calls
            |theta| per entry               one _foreach_norm (before the step)
    step:   the optimizer changes the parameters in place
    exit:   copies  <- copies - parameters  one _foreach_sub_: the step's change (its sign does not matter)
            |change| per entry              one _foreach_norm; both norms stacked into one small vector, kept
    the step is over -> per optimizer step and head: squared sums, ratio^2 = |change|^2 / |theta|^2;
                        summed over the optimizer steps, sqrt(mean): one vector through the readout path
                        -> one param_updates event

The ratio ``||theta_after - theta_before|| / ||theta_before||`` is the effective step size of that
optimizer step. Under Adam the gradient norm says little about it; a learning rate that is not what
the schedule claims (a broken schedule, a corrupted or reset optimizer state) shows here at once,
proportionally. A head made of rows of a shared tensor (``(param, rows)``, see
:class:`~simic.producer.collectors.grad_norms.HeadGroups`) is measured over its rows; the total covers
the parameters ``params=`` named (what a trainer clips), by default every parameter of the heads.
A head whose parameters did not change has ratio 0.0; one whose parameters were all zero before the
step has no ratio for that step (``None`` when no step of the event had one), its norms are sent.

**The step rule.** Every optimizer step measured under the same ``step`` value joins one aggregate:
each ratio is the root mean square over those optimizer steps (over the ones where it was
measurable), each norm the root mean square too, and ``samples`` says how many there were (a NaN or
Inf in any of them stays in the result). The aggregate is sent:

- when a call for the same heads names another step,
- at ``flush()``, once a later step has been named (by any collector call or event: a PPO loop's next
  rollout, for example),
- at ``close()`` of the emitter.

On the CPU the event is made then; on CUDA it arrives at a later ``flush()``, like every readout.

**Costs.** Memory: one copy of the measured parameters (allocated at the first call, per
:class:`HeadGroups`; pass the same one each time). Time: four fused passes over the parameters (copy,
two norms, one subtraction) and one stack per optimizer step; about a dozen small kernels on a few
values per head and optimizer step once per step (every 64 optimizer steps in a longer one). Nothing reads a device value on the host: the aggregate stays on the device until it
goes through the readout path.

Imports: ``readout`` (torch when first used). :class:`ParamUpdates` is made by the emitter's
``Collectors`` and uses their ``failed`` and their emitter's ``closed``.
"""

from __future__ import annotations

from typing import Any

from .readout import torch_module

__all__ = ["ParamUpdates", "NullParamUpdates", "UpdateMeter", "UpdateAggregate", "submit_param_updates",
           "learning_rate_of"]


def learning_rate_of(optimizer: Any) -> float | None:
    """The first parameter group's learning rate, when it is a number (a tensor is never read)."""
    groups = getattr(optimizer, "param_groups", None)
    lr = groups[0].get("lr") if groups else None
    return float(lr) if isinstance(lr, (int, float)) and not isinstance(lr, bool) else None


class UpdateMeter:
    """Measures the change one optimizer step makes to the parameters of a :class:`HeadGroups`.

    :meth:`before` copies the parameters into buffers allocated once (per device the parameters are
    on) and takes their norms; :meth:`after` returns the optimizer step's norms as one device vector
    (change, then parameter norm, per entry); :meth:`reduce` turns a list of those into per head and
    for the total: the sum over the steps of the squared ratio, of the squared change norm, of the
    squared parameter norm, and how many steps had a ratio (a ``(4, heads + 1)`` device tensor).
    """

    def __init__(self, groups: Any) -> None:
        self.torch = torch_module()
        self.groups = groups
        self.heads = len(groups.names) + 1
        self._device: Any = None
        self._norms_before: Any = None
        self._allocate()

    def _allocate(self) -> None:
        torch = self.torch
        groups = self.groups
        params = groups.params
        devices = list(dict.fromkeys(p.device for p in params))
        device = next((d for d in devices if d.type == "cuda"), devices[0])
        self._device = params[0].device
        self._one_device = len(devices) == 1
        self._target = device
        self.copies = [torch.empty_like(p, requires_grad=False) for p in params]
        self.dtype = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
        # a step's row = [change norm per entry..., norm before per entry..., 0 (padding)]: per head (and
        # the total) the entries it sums, padded with the index of the 0, so that a NaN stays in its head.
        entries = len(groups.entries)
        members = [*groups.head_entries, groups.total]
        width = max(len(m) for m in members)
        index = [[[offset + e for e in m] + [2 * entries] * (width - len(m)) for m in members] for offset in (0, entries)]
        host = torch.tensor(index, dtype=torch.long)
        if device.type == "cuda":  # pinned, non-blocking: no host sync, once
            self.index = host.pin_memory().to(device, non_blocking=True)
        else:
            self.index = host.to(device)

    def _entries(self, tensors: list) -> list:
        if self.groups.whole:
            return tensors
        return [tensors[i] if rows is None else tensors[i][rows] for i, rows in self.groups.entries]

    def _gather(self, norms: list) -> list:
        if self._one_device:
            return norms
        return [n.to(self._target, non_blocking=True) for n in norms]

    def before(self) -> None:
        """Before ``optimizer.step()``: keep a copy of the parameters and their norms (on the device)."""
        torch = self.torch
        params = self.groups.params
        if params[0].device != self._device:  # the model moved since the buffers were made
            self._allocate()
        with torch.no_grad():
            torch._foreach_copy_(self.copies, params)
            self._norms_before = torch._foreach_norm(self._entries(params), 2, dtype=torch.float32)

    def after(self) -> Any:
        """After ``optimizer.step()``: the step's norms (see the class), on the device. Needs :meth:`before`."""
        torch = self.torch
        before, self._norms_before = self._norms_before, None
        if before is None:
            raise RuntimeError("param_updates: after() without before()")
        with torch.no_grad():
            torch._foreach_sub_(self.copies, self.groups.params)  # before - after: the change, negated
            change = torch._foreach_norm(self._entries(self.copies), 2, dtype=torch.float32)
            return torch.stack([*self._gather(change), *self._gather(before)])

    def reduce(self, rows: list) -> Any:
        """The sums over the optimizer steps ``rows`` (from :meth:`after`): a ``(4, heads + 1)`` tensor."""
        torch = self.torch
        with torch.no_grad():
            squares = torch.nn.functional.pad(torch.stack(rows).to(self.dtype).square(), (0, 1))
            sums = squares[:, self.index].sum(-1)  # (steps, 2, heads + 1): squared change and parameter norms
            moved, scale = sums[:, 0], sums[:, 1]
            measurable = scale != 0  # NaN != 0: a NaN parameter stays in the ratio
            ratio = torch.where(measurable, moved / scale, 0.0)
            return torch.stack([ratio.sum(0), moved.sum(0), scale.sum(0), measurable.sum(0).to(self.dtype)])

    def discard(self) -> None:
        """The step did not complete (it raised): forget what :meth:`before` kept."""
        self._norms_before = None


class UpdateAggregate:
    """The optimizer steps of one training step: their rows kept, summed on the device when the step
    ends (or every ``FOLD`` optimizer steps), see :class:`UpdateMeter`."""

    FOLD = 64
    """Rows kept before they are summed into the step's total (bounds the memory of a long step)."""

    def __init__(self, meter: UpdateMeter) -> None:
        self.meter = meter
        self.rows: list[Any] = []
        self.acc: Any = None
        self.samples = 0
        self.lr: float | None = None

    def add(self, row: Any, lr: float | None) -> None:
        self.rows.append(row)
        self.samples += 1
        self.lr = lr
        if len(self.rows) >= self.FOLD:
            self._fold()

    def _fold(self) -> None:
        rows, self.rows = self.rows, []
        sums = self.meter.reduce(rows)
        self.acc = sums if self.acc is None else self.acc.add_(sums)  # a fresh tensor per step: the readout keeps it

    def take(self) -> tuple[Any, int, float | None]:
        """The step's sums (None when nothing was added), how many optimizer steps, the last learning
        rate; then start anew."""
        if self.rows:
            self._fold()
        taken = (self.acc, self.samples, self.lr)
        self.acc, self.samples, self.lr = None, 0, None
        return taken


def submit_param_updates(readouts: Any, emit: Any, groups: Any, step: int, acc: Any, samples: int,
                         lr: float | None) -> None:
    """Turn a step's sums into root mean squares on the device and hand them to the readout path;
    ``emit(step=..., **fields)`` gets the ``param_updates`` event when they are read."""
    torch = torch_module()
    with torch.no_grad():
        ratio, moved, scale, measured = acc
        values = torch.cat([(ratio / measured).sqrt(), (moved / samples).sqrt(), (scale / samples).sqrt(), measured])
        values = values.float()
    context = (groups.names, samples, lr, step, emit)
    if values.device.type == "cuda":
        readouts.add(values.device, values.numel(), _resolve, context, vectors=[values])
    else:
        readouts.resolve_now(values.tolist(), _resolve, context)


def _resolve(values: list, context: tuple) -> None:
    names, samples, lr, step, emit = context
    n = len(names) + 1
    ratio, moved, scale, measured = (values[k * n : (k + 1) * n] for k in range(4))

    def ratio_of(h: int) -> float | None:
        return ratio[h] if measured[h] > 0 else None

    emit(
        step=step,
        ratios={name: ratio_of(h) for h, name in enumerate(names)},
        update_norms=dict(zip(names, moved)),
        param_norms=dict(zip(names, scale)),
        total_ratio=ratio_of(n - 1),
        samples=samples,
        learning_rate=lr,
    )


class ParamUpdates:
    """What ``emitter.param_updates(step, heads)`` returns: a context manager around ``optimizer.step()``.

    One per :class:`HeadGroups` and emitter, reused by every call; it holds the step being built.
    Nothing raises into the trainer: a failed measurement is counted in ``collector_stats.errors``
    and the step runs as it would.
    """

    def __init__(self, collectors: Any, state: Any, groups: Any) -> None:
        self.groups = groups
        self.meter = UpdateMeter(groups)
        self.pending: Any = None
        """The step being built (None: nothing pending)."""
        self._emitter = collectors.emitter
        self._failed = collectors.failed
        self._state = state
        self._aggregate = UpdateAggregate(self.meter)
        self._step: Any = None
        self._optimizer: Any = None
        self._armed = False

    def prepare(self, step: Any, optimizer: Any) -> "ParamUpdates":
        self._step = step
        self._optimizer = optimizer
        return self

    def __enter__(self) -> "ParamUpdates":
        if self._armed or self._emitter.closed:
            return self
        try:
            self.meter.before()
            self._armed = True
        except Exception as exc:
            self._failed("param_updates", exc)
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if not self._armed:
            return
        self._armed = False
        if exc_type is not None or self._emitter.closed:  # the step raised (it propagates), or we are done
            self.meter.discard()
            return
        step = self._step
        if self.pending is not None and step != self.pending:
            try:
                self.send()
            except Exception as exc:
                self._failed("param_updates", exc)
        try:
            row = self.meter.after()
            self._aggregate.add(row, learning_rate_of(self._optimizer))
            self.pending = step
        except Exception as exc:
            self._failed("param_updates", exc)

    def send(self) -> None:
        """Hand the pending step's aggregate to the readout path (nothing pending: nothing)."""
        step, self.pending = self.pending, None
        acc, samples, lr = self._aggregate.take()
        if acc is not None:
            submit_param_updates(self._state.readouts, self._state.emit_param_updates, self.groups, step, acc,
                                 samples, lr)

    def on_flush(self, current: Any) -> None:
        """Flush hook: the pending step is over once a later step has been named."""
        if self.pending is not None and type(current) is int and current > self.pending:
            self.send()


class NullParamUpdates:
    """What ``param_updates`` returns with telemetry off or a closed emitter: a context doing nothing."""

    def __enter__(self) -> "NullParamUpdates":
        return self

    def __exit__(self, *exc: object) -> None:
        return None


NULL_PARAM_UPDATES = NullParamUpdates()
