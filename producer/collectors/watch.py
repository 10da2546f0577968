"""``emitter.watch(model, optimizer, ...)``: telemetry for a torch trainer whose loop you do not edit.

::

    backward() ends          -> per-head gradient norms of the accumulated ``.grad`` (pre-clip), on the device
    optimizer.step() starts  -> a copy of the measured parameters (update_ratio=True)
    optimizer.step() ends    -> that measurement joins the step's aggregate, with the step's change of the
                                parameters per head; the LSTM state seen last is sampled
    the step changes         -> one head_grad_norms, param_updates, lstm_health (per LSTM), step_timing and metrics event

What ``step`` means, and how many samples a step sends:

- ``step=None`` (default): every ``optimizer.step()`` is a step, numbered 0, 1, 2, ... in the order the
  optimizer made them. Each sends one ``head_grad_norms`` event (``samples=1``).
- ``step=callable``: a counter the trainer already keeps (``lambda: trainer.global_step``, the update
  number of a PPO loop). Every optimizer step taken while it returns the same value belongs to that
  step, and the step sends one ``head_grad_norms`` event when the value changes (or at
  :meth:`Watch.end_step` / :meth:`Watch.close`): each norm is the root mean square over those
  optimizer steps, ``samples`` says how many (a NaN or Inf in any of them stays in the result).

Per step it also sends one ``lstm_health`` event per watched LSTM (the state of its last forward in
the step, ``name`` set to the LSTM's name), one ``step_timing`` event with the phase ``train``, and a
``metrics`` event with ``optimizer/lr`` (the first parameter group's learning rate, when it is a number).
The ``train`` phase spans the step's training: from its first forward with gradients enabled (of the
model or of one of its direct children) to the end of its last optimizer step. Forward, backward, clip
and step are in it, and with several optimizer steps what runs between them; rollouts and evaluations
under ``no_grad`` before the first such forward are not.

With a counter, the step is over at the first forward (of the model, a direct child or a watched LSTM)
or optimizer step that finds the counter moved on: it is sent then, so the next step's forwards
never enter its LSTM state or its timing.

With ``update_ratio=True`` (the default) it also sends one ``param_updates`` event per step: per head the
update-to-weight ratio ``||theta_after - theta_before|| / ||theta_before||`` of each optimizer step, as
:mod:`~simic.producer.collectors.param_updates` measures it (an optimizer step pre-hook copies the
parameters, the post-hook compares), root mean squares over the step's optimizer steps like the
gradient norms. Its cost is one copy of the measured parameters (every trainable parameter of the
model) in memory and four fused passes over them per optimizer step; ``update_ratio=False`` turns it off.

How the pre-clip norms are read without touching the loop: each measured parameter gets a
post-accumulate-grad hook; the first one to fire in a backward pass queues one callback at the end of
that pass (the autograd engine's final callback, as ``DistributedDataParallel`` uses), which reduces
every gradient with one ``_foreach_norm``. The clip comes later, before ``optimizer.step()``: the
measurement is the one before it, and with gradient accumulation the last backward before the step
measures the accumulated gradient. With ``clip=max_norm`` the post-clip total is derived per
optimizer step as ``clip_grad_norm_`` scales it (``min(1, max_norm / (total + 1e-6))``). Nothing here
reads a device value on the host: the aggregate stays on the device and goes through the readout
path (pinned memory and a CUDA event) at the end of the step.

Imports: ``grad_norms``, ``param_updates``, ``readout`` (torch when first used). A :class:`Watch` is made
by the emitter's ``Collectors``: it measures through them and sends through their emitter.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

from .grad_norms import HeadGroups, _with_missing
from .param_updates import UpdateAggregate, UpdateMeter, learning_rate_of, submit_param_updates
from .readout import torch_module

__all__ = ["Watch", "NullWatch", "default_heads"]

TRAIN_PHASE = "train"
"""The ``step_timing`` phase a watch measures: first forward with gradients after an optimizer step to the end of the next."""


def default_heads(model: Any) -> dict[str, Any]:
    """One head per direct child module that has trainable parameters, and one per trainable
    parameter the model holds itself (a Gaussian policy's ``log_std``), named as the model names them."""
    heads: dict[str, Any] = {}
    for name, param in model.named_parameters(recurse=False):
        if param.requires_grad:
            heads[name] = [param]
    for name, child in model.named_children():
        params = [p for p in child.parameters() if p.requires_grad]
        if params:
            heads[name] = params
    if not heads:
        raise ValueError("the model has no trainable parameters to watch")
    return heads


class Watch:
    """The hooks :meth:`~simic.producer.Emitter.watch` installed, and the step they are building.

    Use :meth:`end_step` where the trainer knows a step is over (an adapter at the end of an update),
    and :meth:`close` (or a ``with`` block) to send what is pending and remove every hook.
    """

    def __init__(self, collectors: Any, state: Any, model: Any, optimizer: Any, *, heads: Mapping[str, Any] | None,
                 lstm: Any, clip: float | None, step: Callable[[], int] | None, timing: bool,
                 update_ratio: bool = True) -> None:
        torch = torch_module()
        if not isinstance(model, torch.nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise ValueError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if step is not None and not callable(step):
            raise ValueError("step must be None (count optimizer steps) or a callable returning the current step")
        if clip is not None and not (isinstance(clip, (int, float)) and clip > 0):
            raise ValueError(f"clip must be a positive number (the max_norm the trainer clips with), got {clip!r}")
        trainable = [p for p in model.parameters() if p.requires_grad]
        self.groups = HeadGroups(heads if heads is not None else default_heads(model), params=trainable or None)
        self.lstms = _lstm_modules(torch, lstm)
        self.emitter = collectors.emitter
        """The emitter the events go to."""
        self._collectors = collectors
        self.clip = None if clip is None else float(clip)
        self.optimizer_steps = 0
        """Optimizer steps seen so far."""
        self._torch = torch
        self._state = state
        self._step_fn = step
        self._queued = False
        self._latest: tuple[Any, tuple[bool, ...]] | None = None  # entry norms of the last backward, which entries had a gradient
        self._acc: Any = None  # device vector: per entry the sum of squared norms, then the sum of squared post-clip totals
        self._present: list[bool] = [False] * len(self.groups.entries)
        self._samples = 0
        self._pending: int | None = None  # the step being built
        self._lstm_seen: dict[str, Any] = {}
        self._lr: float | None = None
        self._masks: dict[Any, Any] = {}
        self._meter = UpdateMeter(self.groups) if update_ratio and optimizer is not None else None
        self._updates = UpdateAggregate(self._meter) if self._meter is not None else None
        self._measuring = False
        first = next(iter(self.groups.params))
        self._timer = collectors.timer(TRAIN_PHASE, device=first.device) if timing else None
        self._timing_started = False
        self._engine = torch.autograd.Variable._execution_engine
        self._handles: list[Any] = []
        measured = {id(p): p for p in self.groups.params}.values()
        for p in measured:
            if p.requires_grad:
                self._handles.append(p.register_post_accumulate_grad_hook(self._on_grad))
        for name, module in self.lstms.items():
            self._handles.append(module.register_forward_hook(self._lstm_hook(name)))
        if timing:  # the model's own forward, or its children's (loops often call parts: agent.get_value)
            for module in (model, *model.children()):
                self._handles.append(module.register_forward_pre_hook(self._on_forward))
        if self._meter is not None:
            self._handles.append(optimizer.register_step_pre_hook(self._before_step))
        if optimizer is not None:
            self._handles.append(optimizer.register_step_post_hook(self._after_step))
        self._closed = False

    # -- hooks (never raise into the trainer) -----------------------------------------------------

    def _on_grad(self, param: Any) -> None:
        if not self._queued and not self.emitter.closed:
            self._queued = True
            try:
                self._engine.queue_callback(self._after_backward)
            except Exception as exc:
                self._queued = False
                self._collectors.failed("watch:backward", exc)

    def _after_backward(self) -> None:
        """End of a backward pass: reduce every measured gradient (``.grad``, accumulated, pre-clip)."""
        self._queued = False
        try:
            torch = self._torch
            groups = self.groups
            grads = [p.grad for p in groups.params]
            with torch.no_grad():
                if groups.whole and all(g is not None for g in grads):
                    norms = torch._foreach_norm(grads, 2, dtype=torch.float32)
                    self._latest = (torch.stack(norms), ())
                    return
                tensors, positions = _with_missing(groups, grads)
                if not tensors:
                    return
                norms = torch._foreach_norm(tensors, 2, dtype=torch.float32)
                zero = norms[0].new_zeros(())
                entries = torch.stack([norms[k] if k >= 0 else zero for k in positions])
                self._latest = (entries, tuple(k >= 0 for k in positions))
        except Exception as exc:
            self._collectors.failed("watch:backward", exc)

    def _on_forward(self, module: Any, args: Any) -> None:
        self._end_if_moved()
        # Only a forward that builds a graph starts the phase: rollouts and evaluation run under no_grad.
        if not self._timing_started and self._torch.is_grad_enabled() and not self.emitter.closed:
            self._timing_started = True
            self._timer.start()

    def _lstm_hook(self, name: str) -> Callable[..., None]:
        def hook(module: Any, args: Any, output: Any) -> None:
            if isinstance(output, tuple) and len(output) == 2:
                self._end_if_moved()
                self._lstm_seen[name] = output[1]  # (h, c) of an LSTM, h of a GRU: a reference, no copy

        return hook

    def _end_if_moved(self) -> None:
        """A forward after the trainer's counter moved on: the step being built is over, send it now (its
        LSTM state and its train phase are those before this forward)."""
        if self._step_fn is None or self._pending is None or self.emitter.closed:
            return
        try:
            moved = self._current_step() != self._pending
        except Exception as exc:
            self._collectors.failed("watch:step", exc)
            return
        if moved:
            self.end_step()

    def _before_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        """Start of ``optimizer.step()``: copy the parameters it is about to change."""
        self._measuring = False
        if self.emitter.closed:
            return
        try:
            self._meter.before()
            self._measuring = True
        except Exception as exc:
            self._collectors.failed("watch:update_ratio", exc)

    def _after_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        """End of ``optimizer.step()``: the measurement of the backward before it joins its step."""
        if self.emitter.closed:
            return
        try:
            step = self._current_step()
            if self._pending is not None and step != self._pending:
                self._submit()
            self._pending = step
            self.emitter._step = step
            self._add_latest()
            self._lr = learning_rate_of(optimizer)
            if self._measuring:
                self._measuring = False
                self._updates.add(self._meter.after(), self._lr)
            if self._timer is not None and self._timing_started:
                self._timer.mark()  # the phase ends at the step's last optimizer step
        except Exception as exc:
            self._collectors.failed("watch:step", exc)
        finally:
            self.optimizer_steps += 1
        if self._step_fn is None:
            self.end_step()

    def _current_step(self) -> int:
        if self._step_fn is None:
            return self.optimizer_steps
        step = self._step_fn()
        if isinstance(step, bool) or not isinstance(step, int):
            step = int(step)  # numpy / CPU torch integers; anything else raises and is counted
        return step

    def _add_latest(self) -> None:
        latest, self._latest = self._latest, None
        if latest is None:
            return
        torch = self._torch
        entries, present = latest
        if present:
            self._present = [a or b for a, b in zip(self._present, present)]
        else:
            self._present = [True] * len(self._present)
        with torch.no_grad():
            squares = entries.square()
            if self.clip is not None:
                total = (squares * self._total_mask(squares)).sum().sqrt()
                post = total * torch.clamp(self.clip / (total + 1e-6), max=1.0)
                row = torch.cat([squares, post.square().reshape(1)])
            else:
                row = torch.cat([squares, squares.new_zeros(1)])
            if self._acc is None:
                self._acc = row
            else:
                self._acc.add_(row)
        self._samples += 1

    def _total_mask(self, like: Any) -> Any:
        """1.0 for the entries the total covers (whole parameters named by ``params``), made once per device."""
        mask = self._masks.get(like.device)
        if mask is None:
            mask = like.new_zeros(like.shape)
            for i in self.groups.total:
                mask.narrow(0, i, 1).fill_(1.0)  # a kernel with the value as its argument (``mask[i] = 1.0`` copies from the host and syncs)
            self._masks[like.device] = mask
        return mask

    # -- the end of a step -----------------------------------------------------------------------

    def end_step(self) -> None:
        """Send the step being built now (an adapter calls this where it knows an update ended)."""
        if self._pending is None or self.emitter.closed:
            return
        try:
            self._submit()
        except Exception as exc:
            self._collectors.failed("watch:step", exc)

    def _submit(self) -> None:
        step, self._pending = self._pending, None
        acc, samples, present = self._acc, self._samples, self._present
        self._acc, self._samples, self._present = None, 0, [False] * len(self._present)
        emitter = self.emitter
        if acc is not None:
            context = (self.groups, present, samples, self.clip, step, self._state.emit_grad_norms)
            if acc.device.type == "cuda":
                self._state.readouts.add(acc.device, acc.numel(), _resolve, context, vectors=[acc])
            else:
                self._state.readouts.resolve_now(acc.tolist(), _resolve, context)
        updates, samples, lr = self._updates.take() if self._updates is not None else (None, 0, None)
        if updates is not None:
            submit_param_updates(self._state.readouts, self._state.emit_param_updates, self.groups, step, updates,
                                 samples, lr)
        if self._timer is not None and self._timing_started:
            self._timing_started = False
            self._timer.finish(step)
        seen, self._lstm_seen = self._lstm_seen, {}
        for name, hidden in seen.items():
            hidden = tuple(t.detach() for t in hidden) if isinstance(hidden, tuple) else hidden.detach()
            self._collectors.lstm_state(step, hidden, name=name)
        if self._lr is not None:
            emitter.emit("metrics", step=step, values={"optimizer/lr": self._lr})
        emitter._step = step

    def close(self) -> None:
        """Send what is pending and remove every hook. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self.end_step()
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> "Watch":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class NullWatch:
    """What ``watch`` returns with telemetry off: the :class:`Watch` interface, doing nothing."""

    optimizer_steps = 0

    def end_step(self) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> "NullWatch":
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def _lstm_modules(torch: Any, lstm: Any) -> dict[str, Any]:
    if lstm is None:
        return {}
    if isinstance(lstm, torch.nn.Module):
        lstm = {"lstm": lstm}
    if not isinstance(lstm, Mapping):
        raise ValueError("lstm must be an nn.LSTM/nn.GRU module or a mapping of name -> module")
    for name, module in lstm.items():
        if not isinstance(module, torch.nn.RNNBase):
            raise ValueError(f"lstm {name!r} must be an nn.LSTM or nn.GRU, got {type(module).__name__}")
    return dict(lstm)


def _resolve(values: list, context: tuple) -> None:
    groups, present, samples, clip, step, emit = context
    count = len(groups.entries)

    def rms(entries: Any) -> float | None:
        seen = [values[e] for e in entries if present[e]]
        return math.sqrt(sum(seen) / samples) if seen else None

    total = rms(groups.total)
    emit(
        step=step,
        norms={name: rms(entries) for name, entries in zip(groups.names, groups.head_entries)},
        total=total,
        pre_clip_total=total,
        post_clip_total=math.sqrt(values[count] / samples) if clip is not None and total is not None else None,
        stage="pre_clip",
        max_norm=clip,
        samples=samples,
    )
