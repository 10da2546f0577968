"""Per-head gradient norms in one ``torch._foreach_norm`` pass, read back without a sync.

A *head* is a named group of gradients: a module, an iterable of parameters, or rows of a shared
tensor, written ``(param, rows)`` where ``rows`` is an ``int`` or a ``slice`` over the first dimension
(for example the rows of one Linear layer that score the sub-actions of one head)::

    groups = emitter.head_groups(
        {
            "slot": net.slot_head,                                   # a module
            "op": [net.op_head.weight, net.op_head.bias],            # parameters
            "blend": [(net.shared.weight, slice(0, 4)), (net.shared.bias, slice(0, 4))],  # rows
            "value": net.value_head,
        },
        params=net.parameters(),   # what the total covers (what you clip); default: the heads' union
    )
    loss.backward()
    emitter.head_grad_norms(step, groups, stage="pre_clip", max_norm=0.5)
    torch.nn.utils.clip_grad_norm_(net.parameters(), 0.5)

On the device: one ``_foreach_norm`` over every gradient (whole parameters and row views); its
results go to the readout path as they are. On the host, after a later ``flush()``: head norm =
sqrt(sum of its parts' squared norms); total = sqrt(sum of the squared norms of the distinct
parameters), which is how ``clip_grad_norm_`` computes it. A head none of whose parameters has a
gradient is reported as missing (``None``), never 0.0.

Pre- and post-clip: measured before clipping with ``max_norm``, the event carries the total and the
post-clip total ``clip_grad_norm_`` will produce (``total * min(1, max_norm / (total + 1e-6))``).
Measured after clipping (``stage="post_clip"``), pass the tensor ``clip_grad_norm_`` returned as
``clip_total``: it travels in the same readout and becomes ``pre_clip_total``.

Non-finite gradients always show: a head's norm (and the total) is NaN or Inf exactly when one of
its gradient elements is. ``count_nonfinite=True`` also counts those elements per head (``nonfinite``)
with four more fused passes over the gradients (x*0 -> +1 -> sign -> L1 norm: finite elements
count 1, NaN and Inf count 0). It is off by default because it costs several times the norms
themselves in host time (see docs/BENCHMARKS.md); without it ``nonfinite`` is not sent.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

from simic.schemas.models import MAX_ITEMS, MAX_NAME

from .readout import torch_module

__all__ = ["HeadGroups", "clip_and_submit_head_grad_norms", "submit_head_grad_norms", "submit_norm_vector"]

class HeadGroups:
    """Which gradients make up each head, resolved once (module parameters listed, rows checked).

    Args:
        heads: head name -> ``nn.Module`` | iterable of parameters and ``(param, rows)`` pairs.
        params: the parameters the total covers (pass what you clip). Default: every parameter
            named by the heads (a sliced parameter counts whole, once).

    Raises:
        ValueError: an empty or over-long name, an empty head, something that is not a tensor, or
            rows outside the parameter.
    """

    def __init__(self, heads: Mapping[str, Any], params: Iterable[Any] | None = None) -> None:
        torch = torch_module()
        if not isinstance(heads, Mapping) or not heads:
            raise ValueError("heads must be a non-empty mapping of head name -> module or parameters")
        if len(heads) > MAX_ITEMS:
            raise ValueError(f"at most {MAX_ITEMS} heads")
        self.names: list[str] = []
        self.params: list[Any] = []
        """Distinct parameters, in first-seen order (entry ``i < len(params)`` is param ``i`` whole)."""
        index: dict[int, int] = {}

        def param_index(p: Any, where: str) -> int:
            if not isinstance(p, torch.Tensor):
                raise ValueError(f"{where}: expected a tensor (parameter), got {type(p).__name__}")
            i = index.get(id(p))
            if i is None:
                i = index[id(p)] = len(self.params)
                self.params.append(p)
            return i

        parts: list[list[tuple[int, Any]]] = []
        for name, spec in heads.items():
            if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME:
                raise ValueError(f"head names must be strings of 1..{MAX_NAME} characters, got {name!r}")
            members: list[tuple[int, Any]] = []
            items = spec.parameters() if isinstance(spec, torch.nn.Module) else spec
            if isinstance(items, torch.Tensor) or (isinstance(items, tuple) and len(items) == 2 and isinstance(items[1], (int, slice))):
                items = [items]
            try:
                items = list(items)
            except TypeError:
                raise ValueError(f"head {name!r}: expected a module or an iterable of parameters, got {type(spec).__name__}") from None
            for item in items:
                if isinstance(item, tuple):
                    if len(item) != 2:
                        raise ValueError(f"head {name!r}: a slice of a shared tensor is written (param, rows)")
                    p, rows = item
                    i = param_index(p, f"head {name!r}")
                    members.append((i, _check_rows(p, rows, name)))
                else:
                    members.append((param_index(item, f"head {name!r}"), None))
            if not members:
                raise ValueError(f"head {name!r} has no parameters")
            self.names.append(name)
            parts.append(members)

        if params is None:
            total = list(range(len(self.params)))
        else:  # in the caller's order, once each: the total is then summed as torch's clip sums it
            total = list(dict.fromkeys(param_index(p, "params") for p in params))
            if not total:
                raise ValueError("params is empty")
        self.total: list[int] = total
        """Indices (into ``params``) of the parameters the total covers, in the order ``params`` gave
        them (``clip_grad_norm_`` sums the total in that order, as torch does, to the last bit)."""

        # Entries: every distinct parameter whole, then each row view. Heads refer to entries.
        self.entries: list[tuple[int, Any]] = [(i, None) for i in range(len(self.params))]
        self.head_entries: list[list[int]] = []
        for members in parts:
            refs = []
            for i, rows in members:
                if rows is None:
                    refs.append(i)
                else:
                    refs.append(len(self.entries))
                    self.entries.append((i, rows))
            self.head_entries.append(refs)
        self.entry_numel: list[int] = [_numel(self.params[i], rows) for i, rows in self.entries]
        self.whole = len(self.entries) == len(self.params)
        """No row slices: every entry is a whole parameter."""
        self.identity = list(range(len(self.entries)))
        kinds = {(p.device, p.dtype) for p in self.params}
        self.uniform = len(kinds) == 1
        """Every parameter on one device with one dtype (one ``_foreach_norm`` serves the clip too)."""
        self.total_is_prefix = self.total == list(range(len(self.params)))
        """The total covers every distinct parameter (its entries are the first ones)."""
        self.plan: tuple | None = None
        """How a readout of every entry adds up to heads and total (made at the first one; see ``_plan``)."""
        self.fused = True
        """``clip_grad_norm_`` may measure and clip in one pass (False after that failed once, e.g. for
        gradient types ``_foreach_norm`` does not take: torch's clip then runs, after a separate measurement)."""

    def total_params(self) -> list[Any]:
        """The parameters the total covers (what a clip scales)."""
        return [self.params[i] for i in self.total]

    # -- the device half alone, for compiled and CUDA-graphed updates ------------------------------

    def norms(self) -> Any:
        """The L2 norm of every gradient entry, as one 1-D device tensor (no readout, no host work).

        Pure tensor code: ``torch.compile`` traces it without a graph break and a CUDA graph can
        capture it. Hand the vector to ``emitter.head_grad_norms(step, groups, norms=vector)``
        outside the compiled function (after the graph's replay). Every parameter must have a
        gradient (as in a captured update, where they are static); ValueError otherwise.
        """
        torch = torch_module()
        return torch.stack(torch._foreach_norm(self._gradients(), 2))

    def clip_(self, max_norm: float) -> Any:
        """Clip as ``clip_grad_norm_(params, max_norm)`` and return the entry norms with the pre-clip
        total last (one 1-D device tensor): :meth:`norms` and the clip from one pass, for the same use."""
        torch = torch_module()
        tensors = self._gradients()
        with torch.no_grad():
            clipped = [tensors[e] for e in self.total]
            flat, total = _clip_in_place(torch, self, tensors, self.identity, float(max_norm), clipped)
            return torch.cat((flat, total.reshape(1)))

    def _gradients(self) -> list[Any]:
        if not self.uniform:
            raise ValueError("norms() and clip_() need every parameter on one device with one dtype")
        grads = [p.grad for p in self.params]
        for p, g in zip(self.params, grads):
            if g is None:
                raise ValueError(f"a parameter of shape {tuple(p.shape)} has no gradient (norms() and clip_() need all of them)")
        if self.whole:
            return [g.detach() for g in grads]
        return [grads[i].detach() if rows is None else grads[i].detach()[rows] for i, rows in self.entries]

    def __repr__(self) -> str:
        return f"HeadGroups({self.names}, params={len(self.params)}, entries={len(self.entries)})"


def _check_rows(p: Any, rows: Any, head: str) -> Any:
    if p.dim() == 0:
        raise ValueError(f"head {head!r}: rows of a 0-d tensor")
    n = p.shape[0]
    if isinstance(rows, bool) or not isinstance(rows, (int, slice)):
        raise ValueError(f"head {head!r}: rows must be an int or a slice over the first dimension, got {rows!r}")
    if isinstance(rows, int):
        if not -n <= rows < n:
            raise ValueError(f"head {head!r}: row {rows} outside 0..{n - 1}")
        return rows
    for bound in (rows.start, rows.stop):
        if bound is not None and (not isinstance(bound, int) or not -n <= bound <= n):
            raise ValueError(f"head {head!r}: rows {rows!r} outside the {n} rows of the tensor")
    start, stop, step = rows.indices(n)
    if step != 1 or stop <= start:
        raise ValueError(f"head {head!r}: rows must be a non-empty slice with step 1, got {rows!r}")
    return slice(start, stop)


def _numel(p: Any, rows: Any) -> int:
    if rows is None:
        return p.numel()
    inner = p[0].numel() if p.dim() > 1 else 1
    return inner if isinstance(rows, int) else (rows.stop - rows.start) * inner


def submit_head_grad_norms(
    readouts: Any,
    emit: Any,
    step: int,
    groups: HeadGroups,
    *,
    stage: str | None,
    max_norm: float | None,
    clip_total: Any,
    count_nonfinite: bool,
) -> None:
    """Queue the reduction of the current gradients; ``emit(step=..., **fields)`` gets the event when read."""
    torch = torch_module()
    if groups.whole:  # no row slices: the gradients are the tensors (the common case, no loop)
        tensors = [p.grad for p in groups.params]
        if any(g is None for g in tensors):
            tensors, positions = _with_missing(groups, tensors)
        else:
            positions = groups.identity
    else:
        tensors, positions = _with_missing(groups, [p.grad for p in groups.params])

    host_clip = device_clip = None
    if clip_total is not None:
        if isinstance(clip_total, torch.Tensor) and clip_total.is_cuda:
            device_clip = clip_total
        else:
            host_clip = float(clip_total)  # a float, or a CPU tensor: already on the host

    count = len(tensors)
    context = (groups, positions, count, step, stage, max_norm, host_clip, device_clip is not None, count_nonfinite, emit, None)
    if not tensors and device_clip is None:
        readouts.resolve_now([], _resolve, context)
        return
    if tensors and tensors[0].requires_grad:  # gradients made with create_graph=True
        tensors = [t.detach() for t in tensors]
    parts = list(torch._foreach_norm(tensors, 2)) if tensors else []
    if count_nonfinite and tensors:
        # finite -> 1, NaN/Inf -> 0 (x*0 is NaN exactly for non-finite x; sign(NaN) == 0); the
        # L1 norm of that counts the finite elements of each gradient: four more fused passes.
        probe = torch._foreach_mul(tensors, 0.0)
        torch._foreach_add_(probe, 1.0)
        torch._foreach_sign_(probe)
        parts.extend(torch._foreach_norm(probe, 1, dtype=torch.float32))  # exact counts up to 2**24
    if device_clip is not None:
        parts.append(device_clip.detach().reshape(()).clone())  # a snapshot: the caller may reuse it
    _hand_over(readouts, context, torch.stack(parts))  # one vector per call: the flush cats a few, not hundreds of scalars


def submit_norm_vector(readouts: Any, emit: Any, step: int, groups: HeadGroups, vector: Any, *,
                       stage: str | None, max_norm: float | None, clip_total: Any, samples: int | None = None) -> None:
    """Queue norms measured elsewhere: ``vector`` from :meth:`HeadGroups.norms` (one value per entry)
    or :meth:`HeadGroups.clip_` (the pre-clip total last), or the root mean square of ``samples`` such
    vectors; or a 2-D tensor of such vectors, one event per row. It is copied at once (one small
    launch): a CUDA graph's output is overwritten by its next replay."""
    torch = torch_module()
    n = len(groups.entries)
    if not isinstance(vector, torch.Tensor) or vector.dim() not in (1, 2) or vector.shape[-1] not in (n, n + 1):
        raise ValueError(f"norms must be the 1-D tensor groups.norms() ({n} values) or groups.clip_() ({n + 1}) "
                         f"returned, or a 2-D tensor of such rows")
    if vector.dim() == 2 and vector.shape[0] == 0:
        return  # no optimizer step this update (rows[:0]): nothing to send
    with_total = vector.shape[-1] == n + 1
    if vector.dim() == 2:
        if clip_total is not None:
            raise ValueError("norms with one row per optimizer step take no clip_total (use groups.clip_()'s rows)")
        rows = vector.shape[0]
        vector = vector.reshape(-1)
    else:
        rows = 0
    if with_total and clip_total is not None:
        raise ValueError("norms from groups.clip_() carry the pre-clip total already: pass no clip_total")
    parts = [vector.detach()]
    host_clip = None
    if clip_total is not None:
        if isinstance(clip_total, torch.Tensor) and clip_total.device == vector.device:
            parts.append(clip_total.detach().reshape(1))
        elif isinstance(clip_total, torch.Tensor) and clip_total.is_cuda:  # reading it here would wait for the GPU
            raise ValueError(f"clip_total is on {clip_total.device}, the norms on {vector.device}")
        else:
            host_clip = float(clip_total)
    with_device_total = with_total or len(parts) == 2
    if with_total:
        stage = "pre_clip" if stage is None else stage
    if samples is not None and (type(samples) is not int or samples < 1):
        raise ValueError(f"samples must be a positive int, got {samples!r}")
    context = (groups, groups.identity, n, step, stage, max_norm, host_clip, with_device_total, False, emit, samples)
    with torch.no_grad():
        copy = torch.cat(parts) if len(parts) == 2 else parts[0].clone()
        if rows:
            _hand_over(readouts, (rows, context), copy, resolver=_resolve_rows)
        else:
            _hand_over(readouts, context, copy)


def _resolve_rows(values: list, context: tuple) -> None:
    """One event per row of a 2-D hand-over, in row order."""
    rows, row_context = context
    plan = _plan(row_context[0], row_context[1])
    width = len(values) // rows
    for r in range(rows):
        _resolve_with(plan, values[r * width:(r + 1) * width], row_context)


def _hand_over(readouts: Any, context: tuple, *vectors: Any, resolver: Any = None) -> None:
    """Give one readout's device vectors to the readout path (CPU ones are read at once)."""
    resolver = _resolve if resolver is None else resolver
    if vectors[0].device.type == "cuda":
        readouts.add(vectors[0].device, sum(v.numel() for v in vectors), resolver, context, vectors=list(vectors))
    else:
        readouts.resolve_now([x for v in vectors for x in v.float().tolist()], resolver, context)


def clip_and_submit_head_grad_norms(readouts: Any, emit: Any, step: int, groups: HeadGroups, max_norm: float,
                                    on_error: Any) -> Any:
    """Clip the total's gradients as ``torch.nn.utils.clip_grad_norm_(params, max_norm)`` does and measure
    the heads from the same ``_foreach_norm`` pass; return the pre-clip total (a device tensor).

    The clip is the trainer's own arithmetic (norms, stack, vector norm, ``max_norm / (total + 1e-6)``
    clamped to 1, ``_foreach_mul_``), so measuring adds only the readout. Parameters spread over
    several devices or dtypes take torch's own clip after a separate ``head_grad_norms`` pass.
    """
    torch = torch_module()
    max_norm = float(max_norm)
    grads = [p.grad for p in groups.params]
    if groups.whole and all(g is not None for g in grads):
        tensors, positions = grads, groups.identity
    else:
        tensors, positions = _with_missing(groups, grads)
    clipped = [tensors[positions[e]] for e in groups.total if positions[e] >= 0]
    if not (groups.uniform and groups.fused and clipped):
        try:
            submit_head_grad_norms(readouts, emit, step, groups, stage="pre_clip", max_norm=max_norm, clip_total=None,
                                   count_nonfinite=False)
        except Exception as exc:  # the measurement is lost (counted), the clip is not
            on_error("clip_grad_norm_", exc)
        return torch.nn.utils.clip_grad_norm_(groups.total_params(), max_norm)
    if tensors[0].requires_grad:  # gradients made with create_graph=True: measure (and scale) detached
        tensors = [t.detach() for t in tensors]
        clipped = [t.detach() for t in clipped]
    with torch.no_grad():
        try:
            flat, total = _clip_in_place(torch, groups, tensors, positions, max_norm, clipped)
        except Exception as exc:  # nothing is clipped yet: torch's own clip does it, and from now on
            groups.fused = False
            on_error("clip_grad_norm_", exc)
            return torch.nn.utils.clip_grad_norm_(groups.total_params(), max_norm)
    try:
        context = (groups, positions, len(tensors), step, "pre_clip", max_norm, None, True, False, emit, None)
        _hand_over(readouts, context, flat, total.reshape(1))
    except Exception as exc:  # the gradients are clipped; only the measurement is lost, and counted
        on_error("clip_grad_norm_", exc)
    return total


def _clip_in_place(torch: Any, groups: HeadGroups, tensors: list, positions: list[int], max_norm: float,
                   clipped: list) -> tuple[Any, Any]:
    """The fused measure-and-clip: entry norms (one ``_foreach_norm``), the total as torch's clip sums
    it, then the clip of the total's gradients (``clipped``, those present, in the total's order).
    Returns ``(entry norms, pre-clip total)`` as device tensors."""
    norms = torch._foreach_norm(tensors, 2)
    flat = torch.stack(norms)
    if groups.total_is_prefix:  # whole gradients come first, so the total's are flat[:k]
        of_total = flat if len(clipped) == len(tensors) else flat[: len(clipped)]
    else:
        of_total = torch.stack([norms[positions[e]] for e in groups.total if positions[e] >= 0])
    total = torch.linalg.vector_norm(of_total, 2)
    torch._foreach_mul_(clipped, torch.clamp(max_norm / (total + 1e-6), max=1.0))
    return flat, total


def _with_missing(groups: HeadGroups, grads: list) -> tuple[list, list[int]]:
    """Tensors to measure (whole gradients and row views) and, per entry, its index (-1: no gradient)."""
    tensors = []
    positions: list[int] = []
    for i, rows in groups.entries:
        g = grads[i]
        if g is None:
            positions.append(-1)
        else:
            positions.append(len(tensors))
            tensors.append(g if rows is None else g[rows])
    return tensors, positions


def _plan(groups: HeadGroups, positions: list[int]) -> tuple:
    """What a readout's values add up to: ``(heads, total)``, each head ``(name, indices, numels)`` into
    the readout's entry norms (indices empty: no gradient), ``total`` the indices the total sums, in
    order. Kept on ``groups`` for the usual case (every entry present), made per readout otherwise."""
    if positions is groups.identity and groups.plan is not None:
        return groups.plan
    numel = groups.entry_numel
    heads = []
    for name, entries in zip(groups.names, groups.head_entries):
        present = [e for e in entries if positions[e] >= 0]
        heads.append((name, tuple(positions[e] for e in present), tuple(numel[e] for e in present)))
    total = tuple(positions[e] for e in groups.total if positions[e] >= 0)
    plan = (tuple(heads), total)
    if positions is groups.identity:
        groups.plan = plan
    return plan


def _resolve(values: list, context: tuple) -> None:
    _resolve_with(_plan(context[0], context[1]), values, context)


def _resolve_with(plan: tuple, values: list, context: tuple) -> None:
    """One ``head_grad_norms`` event from one readout's values: entry norms, then (``counted``) their
    finite-element counts, then (``has_device_clip``) the pre-clip total."""
    _, _, count, step, stage, max_norm, host_clip, has_device_clip, counted, emit, samples = context
    heads, of_total = plan
    squares = [v * v for v in values[:count]]
    norms: dict[str, float | None] = {}
    for name, indices, _ in heads:
        if indices:
            total = 0.0
            for k in indices:
                total += squares[k]
            norms[name] = math.sqrt(total)
        else:
            norms[name] = None
    if of_total:
        total = 0.0
        for k in of_total:
            total += squares[k]
        total = math.sqrt(total)
    else:
        total = None

    nonfinite: dict[str, int] | None = None
    if counted:
        finite_of = values[count : 2 * count]
        nonfinite = {}
        for name, indices, numels in heads:
            bad = 0
            for k, n in zip(indices, numels):
                bad += max(0, n - int(round(finite_of[k])))
            if bad:
                nonfinite[name] = bad

    clip_total = values[-1] if has_device_clip else host_clip
    pre = post = None
    if stage == "post_clip":
        post, pre = total, clip_total
    else:
        pre = (total if clip_total is None else clip_total) if stage == "pre_clip" else clip_total
        if stage == "pre_clip" and max_norm is not None and pre is not None:
            post = pre * min(1.0, max_norm / (pre + 1e-6)) if math.isfinite(pre) else math.nan
    emit(
        step=step,
        norms=norms,
        total=total,
        pre_clip_total=pre,
        post_clip_total=post,
        nonfinite=nonfinite or None,
        stage=stage,
        max_norm=None if max_norm is None else float(max_norm),
        samples=samples,
    )
