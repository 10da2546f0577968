"""The collectors in the fastest trainers' shape, on a GPU: a whole update captured in a CUDA graph
(forward, backward, ``groups.clip_``, ``lstm_stats``, Adam) and replayed, its readouts queued after
each replay; the same device halves under ``torch.compile`` (inductor). Each event must carry what its
own replay measured (a graph's outputs are overwritten by the next replay), and nothing may sync."""

from __future__ import annotations

import functools
import math

import pytest

torch = pytest.importorskip("torch")

from simic.producer import lstm_stats  # noqa: E402
from tests.collector_reference import assert_matches, lstm_reference  # noqa: E402
from tests.gpu.test_collectors_cuda import consumer, emitter, received, sync_forbidden  # noqa: E402,F401

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

assert_matches = functools.partial(assert_matches, rel=1e-4, abs_tol=1e-6)
T, ENVS, OBS, HIDDEN = 8, 16, 10, 32


class Policy(torch.nn.Module):
    """An LSTM core, one Linear whose rows score two sub-actions ("a": rows 0-2, "b": rows 3-5), a value head."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = torch.nn.LSTM(OBS, HIDDEN)
        self.actions = torch.nn.Linear(HIDDEN, 6)
        self.value = torch.nn.Linear(HIDDEN, 1)

    def heads(self) -> dict:
        return {"a": [(self.actions.weight, slice(0, 3)), (self.actions.bias, slice(0, 3))],
                "b": [(self.actions.weight, slice(3, 6)), (self.actions.bias, slice(3, 6))],
                "value": self.value, "core": self.lstm}


def expected_norms(groups, vector: torch.Tensor) -> dict:
    values = vector.double().tolist()
    return {name: math.sqrt(sum(values[e] ** 2 for e in entries)) for name, entries in zip(groups.names, groups.head_entries)}


def capture(fn, optimizer=None, warmups: int = 3):
    """Capture ``fn`` in a CUDA graph after ``warmups`` calls on a side stream (as torch's documentation
    asks; the optimizer's gradients set to None before each call and before the capture); return the
    graph and what the captured call returned (the static outputs every replay rewrites)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmups):
            if optimizer is not None:
                optimizer.zero_grad(set_to_none=True)
            fn()
    torch.cuda.current_stream().wait_stream(side)
    if optimizer is not None:
        optimizer.zero_grad(set_to_none=True)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = fn()
    return graph, outputs


def test_a_captured_update_sends_what_each_replay_measured(consumer, emitter) -> None:  # noqa: F811
    torch.manual_seed(0)
    net = Policy().cuda()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3, capturable=True)
    groups = emitter.head_groups(net.heads(), params=net.parameters())
    obs = torch.randn(T, ENVS, OBS, device="cuda")
    state0 = (torch.zeros(1, ENVS, HIDDEN, device="cuda"), torch.zeros(1, ENVS, HIDDEN, device="cuda"))

    def update():
        out, (h, c) = net.lstm(obs, state0)
        loss = net.actions(out).logsumexp(-1).mean() + (net.value(out) - 1.0).square().mean()
        loss.backward()
        norms = groups.clip_(0.5)
        stats = lstm_stats((h, c))
        optimizer.step()
        return loss.detach(), norms, stats, h, c

    graph, (loss, norms, stats, h, c) = capture(update, optimizer)

    kept = []
    with sync_forbidden():
        for step in range(10):
            obs.copy_(torch.randn(T, ENVS, OBS, device="cuda") * (1 + step))
            graph.replay()
            emitter.head_grad_norms(step, groups, max_norm=0.5, norms=norms)
            emitter.lstm_state(step, (h, c), stats=stats)
            emitter.ppo_update(step, loss=loss)
            emitter.flush()
            kept.append((norms.clone(), h.clone(), c.clone(), loss.clone()))
        assert emitter.collector_stats.errors == 0
    grads = received(consumer, emitter, "head_grad_norms")
    assert [e.step for e in grads] == list(range(10))
    for event, (vector, _, _, _) in zip(grads, kept):
        expected = expected_norms(groups, vector)
        assert all(math.isclose(event.norms[name], expected[name], rel_tol=1e-5) for name in expected)
        assert math.isclose(event.pre_clip_total, float(vector[-1]), rel_tol=1e-6) and event.stage == "pre_clip"
        assert math.isclose(event.post_clip_total, min(event.pre_clip_total, 0.5), rel_tol=1e-4)
    totals = [e.pre_clip_total for e in grads]
    assert len(set(totals)) == 10  # every replay measured its own gradients


def test_lstm_and_update_metrics_of_each_replay(consumer, emitter) -> None:  # noqa: F811
    """The LSTM statistics (masked) and a metric of each replay equal a float64 reference on that replay's state."""
    torch.manual_seed(1)
    lstm = torch.nn.LSTM(OBS, HIDDEN, num_layers=2).cuda()
    obs = torch.randn(T, ENVS, OBS, device="cuda")
    mask = torch.ones(ENVS, dtype=torch.bool, device="cuda")

    def forward():
        with torch.no_grad():
            out, (h, c) = lstm(obs)
            return out.mean(), lstm_stats((h, c), mask), h, c

    graph, (mean, stats, h, c) = capture(forward, warmups=1)
    kept = []
    with sync_forbidden():
        for step in range(6):
            obs.copy_(torch.randn(T, ENVS, OBS, device="cuda") * (step + 1))
            mask.copy_(torch.arange(ENVS, device="cuda") % (step + 2) != 0)
            graph.replay()
            emitter.lstm_state(step, (h, c), mask, stats=stats)
            emitter.metrics(step, {"out_mean": mean})
            emitter.flush()
            kept.append((h.clone(), c.clone(), mask.clone(), mean.clone()))
        assert emitter.collector_stats.errors == 0
    emitter.close()
    events = consumer.until_run_end()
    health = [e for e in events if e.kind == "lstm_health"]
    metrics = [e for e in events if e.kind == "metrics"]
    assert [e.step for e in health] == [e.step for e in metrics] == list(range(6))
    for event, (hh, cc, mm, _) in zip(health, kept):
        assert_matches(event, lstm_reference(hh, cc, mm))
    for event, (_, _, _, m) in zip(metrics, kept):
        assert math.isclose(event.values["out_mean"], float(m), rel_tol=1e-6)


def test_inductor_compiled_update_tail_matches_eager(consumer, emitter) -> None:  # noqa: F811
    """``torch.compile`` (inductor, whole graph) of clip + LSTM statistics: same gradients and same events
    as the eager collectors on a twin, no sync in the compiled calls after warm-up."""
    torch.manual_seed(2)
    ours, theirs = Policy().cuda(), Policy().cuda()
    theirs.load_state_dict(ours.state_dict())
    obs = torch.randn(T, ENVS, OBS, device="cuda")
    ours_groups = emitter.head_groups(ours.heads(), params=ours.parameters())
    theirs_groups = emitter.head_groups(theirs.heads(), params=theirs.parameters())

    @torch.compile(fullgraph=True)
    def tail(h, c):
        return ours_groups.clip_(0.5), lstm_stats((h, c))

    for step in range(3):
        for net in (ours, theirs):
            net.zero_grad(set_to_none=False)
            out, _ = net.lstm(obs * (step + 1))
            (net.actions(out).logsumexp(-1).mean() + net.value(out).square().mean()).backward()
        with torch.no_grad():
            _, (h, c) = ours.lstm(obs)
        if step:
            torch.cuda.synchronize()  # compilation (step 0) may sync; the compiled calls after it may not
            with sync_forbidden():
                norms, stats = tail(h, c)
                emitter.head_grad_norms(step, ours_groups, max_norm=0.5, norms=norms)
                emitter.lstm_state(step, (h, c), stats=stats)
        else:
            norms, stats = tail(h, c)
            emitter.head_grad_norms(step, ours_groups, max_norm=0.5, norms=norms)
            emitter.lstm_state(step, (h, c), stats=stats)
        emitter.clip_grad_norm_(step, theirs_groups, 0.5)
        emitter.lstm_state(step, (h, c))
        emitter.flush()
        for p, q in zip(ours.parameters(), theirs.parameters()):
            assert torch.allclose(p.grad, q.grad, rtol=1e-5, atol=1e-7)
    assert emitter.collector_stats.errors == 0
    emitter.close()
    events = consumer.until_run_end()
    grads = [e for e in events if e.kind == "head_grad_norms"]
    health = [e for e in events if e.kind == "lstm_health"]
    assert len(grads) == len(health) == 6
    for compiled, eager in zip(grads[0::2], grads[1::2]):
        assert compiled.step == eager.step
        assert all(math.isclose(compiled.norms[k], eager.norms[k], rel_tol=1e-5) for k in eager.norms)
        assert math.isclose(compiled.pre_clip_total, eager.pre_clip_total, rel_tol=1e-5)
    for compiled, eager in zip(health[0::2], health[1::2]):
        assert math.isclose(compiled.h_norm, eager.h_norm, rel_tol=1e-5) and compiled.layer_c_rms == pytest.approx(eager.layer_c_rms, rel=1e-5)


def test_a_vector_overwritten_after_it_was_handed_over_is_sent_as_it_was(consumer, emitter) -> None:  # noqa: F811
    """A graph's next replay rewrites its outputs before the flush reads them: the emitter kept a copy."""
    net = Policy().cuda()
    out, _ = net.lstm(torch.randn(T, ENVS, OBS, device="cuda"))
    (net.actions(out).sum() + net.value(out).sum()).backward()
    groups = emitter.head_groups(net.heads(), params=net.parameters())
    vector = groups.norms()
    first = vector.clone()
    with sync_forbidden():
        emitter.head_grad_norms(1, groups, norms=vector)
        vector.mul_(10.0)
        emitter.head_grad_norms(2, groups, norms=vector)
    one, two = received(consumer, emitter, "head_grad_norms")
    expected = expected_norms(groups, first)
    assert all(math.isclose(one.norms[k], expected[k], rel_tol=1e-5) for k in expected)
    assert all(math.isclose(two.norms[k], 10 * expected[k], rel_tol=1e-5) for k in expected)


def test_rows_written_by_the_graph_arrive_as_one_event_per_optimizer_step(consumer, emitter) -> None:  # noqa: F811
    """The per-minibatch cadence of a graphed trainer for one readout per update: each replay writes its
    ``clip_`` vector into the next row of a static buffer (a device counter picks the row), and the
    host hands the rows over once after the update. Every row is sent as its own event with what its
    own replay measured, under sync-debug "error"."""
    torch.manual_seed(1)
    net = Policy().cuda()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3, capturable=True)
    groups = emitter.head_groups(net.heads(), params=net.parameters())
    obs = torch.randn(T, ENVS, OBS, device="cuda")
    steps = 6
    rows = torch.zeros(steps, len(groups.entries) + 1, device="cuda")
    slot = torch.zeros(1, dtype=torch.long, device="cuda")

    def minibatch():
        out, _ = net.lstm(obs)
        (net.actions(out).logsumexp(-1).mean() + (net.value(out) - 1.0).square().mean()).backward()
        norms = groups.clip_(0.5)
        rows.index_copy_(0, slot, norms.unsqueeze(0))
        slot.add_(1)
        optimizer.step()
        return norms

    graph, norms = capture(minibatch, optimizer)

    kept = []
    with sync_forbidden():
        for update in range(2):
            slot.zero_()
            for k in range(steps):
                obs.copy_(torch.randn(T, ENVS, OBS, device="cuda") * (1 + k + steps * update))
                graph.replay()
                kept.append(norms.clone())
            emitter.head_grad_norms(update, groups, max_norm=0.5, norms=rows)
            emitter.flush()
        assert emitter.collector_stats.errors == 0
    events = received(consumer, emitter, "head_grad_norms")
    assert [e.step for e in events] == [0] * steps + [1] * steps
    for event, vector in zip(events, kept):
        expected = expected_norms(groups, vector)
        assert all(math.isclose(event.norms[name], expected[name], rel_tol=1e-5) for name in expected)
        assert math.isclose(event.pre_clip_total, float(vector[-1]), rel_tol=1e-6)
    assert len({e.pre_clip_total for e in events}) == 2 * steps
