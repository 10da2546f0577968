"""The collectors' device halves (``groups.norms()``, ``groups.clip_()``, ``lstm_stats``) inside a
function that ``torch.compile`` traces: no graph break, and the events equal the eager collectors'."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from simic.producer import Emitter, HeadGroups, lstm_stats  # noqa: E402
from tests.producer.test_collectors_cpu import Net, heads_of  # noqa: E402
from tests.receiver import Receiver  # noqa: E402


def events_of(consumer: Receiver, emitter: Emitter, kind: str) -> list:
    emitter.close()
    return [e for e in consumer.until_run_end() if e.kind == kind]


def fields(event) -> dict:
    return event.model_dump(exclude={"seq", "ts", "wall_ts", "session", "clock_ns"})


def all_grads_net() -> Net:
    """The test net with a gradient on every parameter (the unused head gets one too)."""
    torch.manual_seed(3)
    net = Net()
    z = torch.tanh(net.core(torch.randn(5, 3)))
    ((net.shared(z) ** 2).sum() + net.value(z).sum() + net.unused(z).pow(2).sum()).backward()
    return net


def update_tail(groups, h, c, max_norm: float):
    """What a compiled update does after ``backward()``: clip with the heads measured, the LSTM statistics."""
    norms = groups.clip_(max_norm)
    return norms, lstm_stats((h, c))


def test_the_update_tail_compiles_without_a_graph_break() -> None:
    """``torch._dynamo.explain`` of a function calling ``clip_`` and ``lstm_stats``: one graph, no break."""
    net = all_grads_net()
    groups = HeadGroups(heads_of(net), params=net.parameters())
    h, c = torch.randn(2, 4, 8), torch.randn(2, 4, 8)
    explanation = torch._dynamo.explain(update_tail)(groups, h, c, 0.5)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def test_compiled_norms_and_clip_equal_the_eager_collectors(consumer, emitter) -> None:
    """The compiled ``clip_`` clips as ``emitter.clip_grad_norm_`` does, and its vector, handed to
    ``head_grad_norms(norms=...)``, makes the same event; ``norms()`` likewise."""
    eager, traced = all_grads_net(), all_grads_net()
    eager_groups = emitter.head_groups(heads_of(eager), params=eager.parameters())
    traced_groups = emitter.head_groups(heads_of(traced), params=traced.parameters())
    measured = torch.compile(lambda g: g.norms(), backend="eager", fullgraph=True)(traced_groups)
    emitter.head_grad_norms(1, traced_groups, stage="pre_clip", max_norm=0.1, norms=measured)
    emitter.head_grad_norms(1, eager_groups, stage="pre_clip", max_norm=0.1)

    clip = torch.compile(lambda g: g.clip_(0.1), backend="eager", fullgraph=True)
    emitter.head_grad_norms(2, traced_groups, max_norm=0.1, norms=clip(traced_groups))
    emitter.clip_grad_norm_(2, eager_groups, 0.1)
    for p, q in zip(eager.parameters(), traced.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-6, atol=0)
    assert not torch.equal(eager.core.weight.grad, all_grads_net().core.weight.grad)  # it did clip

    norms_traced, norms_eager, clip_traced, clip_eager = events_of(consumer, emitter, "head_grad_norms")
    for ours, theirs in ((norms_traced, norms_eager), (clip_traced, clip_eager)):
        a, b = fields(ours), fields(theirs)
        assert a.keys() == b.keys()
        for key in a:
            if isinstance(a[key], dict):
                assert a[key].keys() == b[key].keys() and all(math.isclose(a[key][k], b[key][k], rel_tol=1e-6) for k in a[key])
            elif isinstance(a[key], float):
                assert math.isclose(a[key], b[key], rel_tol=1e-6), key
            else:
                assert a[key] == b[key], key
    assert clip_traced.stage == "pre_clip" and clip_traced.pre_clip_total > 0.1 and math.isclose(clip_traced.post_clip_total, 0.1, rel_tol=1e-4)


@pytest.mark.parametrize("masked", [False, True])
def test_compiled_lstm_stats_equal_the_eager_collector(consumer, emitter, masked) -> None:
    torch.manual_seed(5)
    h, c = torch.randn(2, 6, 16), 3 * torch.randn(2, 6, 16)
    h[1, 2, 3] = math.inf
    mask = torch.tensor([1, 0, 1, 1, 0, 1], dtype=torch.bool) if masked else None
    stats = torch.compile(lstm_stats, backend="eager", fullgraph=True)((h, c), mask)
    emitter.lstm_state(4, (h, c), mask, stats=stats)
    emitter.lstm_state(4, (h, c), mask)
    traced, eager = events_of(consumer, emitter, "lstm_health")
    assert fields(traced) == fields(eager)
    assert traced.has_inf and traced.envs == (4 if masked else 6)


def test_a_vector_of_the_wrong_size_is_counted_not_raised(consumer, emitter) -> None:
    """The trainer never crashes for telemetry: a mismatched vector is a counted collector error."""
    net = all_grads_net()
    groups = emitter.head_groups(heads_of(net), params=net.parameters())
    emitter.head_grad_norms(1, groups, norms=torch.ones(3))
    emitter.lstm_state(1, (torch.zeros(1, 2, 4), torch.zeros(1, 2, 4)), stats=torch.ones(2))
    assert emitter.collector_stats.errors == 2
    assert events_of(consumer, emitter, "head_grad_norms") == []


def test_norms_need_every_gradient() -> None:
    net = Net()
    net.loss().backward()  # the unused head has no gradient
    with pytest.raises(ValueError, match="no gradient"):
        HeadGroups(heads_of(net), params=net.parameters()).norms()


def test_norms_summed_over_an_update_make_one_event_with_samples(consumer, emitter) -> None:
    """Squares summed over three optimizer steps, handed over as ``(sum / 3).sqrt()`` with ``samples=3``:
    one event whose head norms are the root mean square of the three steps' head norms."""
    net = all_grads_net()
    groups = emitter.head_groups(heads_of(net), params=net.parameters())
    accumulated = torch.zeros(len(groups.entries) + 1)
    per_step = []
    for scale in (1.0, 2.0, 3.0):
        for p in net.parameters():
            p.grad.mul_(scale)
        vector = groups.clip_(1e9)
        accumulated.add_(vector.square())
        per_step.append(vector)
    emitter.head_grad_norms(9, groups, max_norm=1e9, norms=(accumulated / 3).sqrt(), samples=3)
    emitter.head_grad_norms(9, groups, norms=torch.ones(len(groups.entries)), samples=0)  # refused, counted
    assert emitter.collector_stats.errors == 1
    [event] = events_of(consumer, emitter, "head_grad_norms")
    assert event.samples == 3 and event.stage == "pre_clip"
    for name, entries in zip(groups.names, groups.head_entries):
        heads = [math.sqrt(sum(float(v[e]) ** 2 for e in entries)) for v in per_step]
        assert math.isclose(event.norms[name], math.sqrt(sum(x * x for x in heads) / 3), rel_tol=1e-5)
    assert math.isclose(event.pre_clip_total, math.sqrt(sum(float(v[-1]) ** 2 for v in per_step) / 3), rel_tol=1e-5)


def test_one_row_per_optimizer_step_makes_one_event_per_row(consumer, emitter) -> None:
    """A 2-D hand-over (the rows a graph wrote into a static buffer, one per optimizer step) sends one
    event per row, in row order, each with its row's values; no rows send nothing; rows of the wrong
    width, a 3-D tensor and a clip_total beside rows are refused and counted."""
    net = all_grads_net()
    groups = emitter.head_groups(heads_of(net), params=net.parameters())
    rows = []
    for scale in (1.0, 2.0, 3.0):
        for p in net.parameters():
            p.grad.mul_(scale)
        rows.append(groups.clip_(1e9))
    emitter.head_grad_norms(4, groups, max_norm=1e9, norms=torch.stack(rows))
    emitter.head_grad_norms(5, groups, norms=torch.stack(rows)[:, :-1])  # groups.norms() rows: no total
    emitter.head_grad_norms(6, groups, norms=torch.ones(2, len(groups.entries) + 2))
    emitter.head_grad_norms(6, groups, norms=torch.ones(1, 2, len(groups.entries)))
    emitter.head_grad_norms(6, groups, norms=torch.stack(rows)[:, :-1], clip_total=1.0)
    emitter.head_grad_norms(7, groups, norms=torch.stack(rows)[:0])  # no optimizer step this update: nothing sent
    assert emitter.collector_stats.errors == 3
    events = events_of(consumer, emitter, "head_grad_norms")
    assert [e.step for e in events] == [4, 4, 4, 5, 5, 5]
    for event, row in zip(events, rows + rows):
        for name, entries in zip(groups.names, groups.head_entries):
            assert math.isclose(event.norms[name], math.sqrt(sum(float(row[e]) ** 2 for e in entries)), rel_tol=1e-6)
    for event, row in zip(events[:3], rows):
        assert event.stage == "pre_clip" and math.isclose(event.pre_clip_total, float(row[-1]), rel_tol=1e-6)
    assert all(e.stage is None and e.pre_clip_total is None for e in events[3:])
