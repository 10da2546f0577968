"""``emitter.param_updates``: the update-to-weight ratio per head around ``optimizer.step()``, checked
against a direct float64 computation of ``||theta_after - theta_before|| / ||theta_before||``.

Events are received on a real PULL socket over ipc and decoded as the consumer decodes them.
"""

from __future__ import annotations

import copy
import math

import pytest

torch = pytest.importorskip("torch")

from simic.producer import Emitter, EmitterSettings, NullEmitter  # noqa: E402
from simic.producer.collectors import NullParamUpdates, ParamUpdates  # noqa: E402
from tests.receiver import Receiver  # noqa: E402

HEADS = ("move", "turn", "log_std", "value", "frozen")



def until(consumer: Receiver, kind: str) -> list:
    """The events that arrive up to and with the first one of ``kind``."""
    events: list = []
    while not any(e.kind == kind for e in events):
        events += consumer.next_events()
    return events


def received(consumer: Receiver, emitter: Emitter, kind: str = "param_updates") -> list:
    emitter.close()
    return [e for e in consumer.until_run_end() if e.kind == kind]


class Policy(torch.nn.Module):
    """A body, a factored actor (one Linear whose rows are two heads), a critic, a log_std and a frozen layer."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Linear(4, 8)
        self.actor = torch.nn.Linear(8, 5)  # rows 0..2: "move", rows 3..4: "turn"
        self.critic = torch.nn.Linear(8, 1)
        self.log_std = torch.nn.Parameter(torch.full((5,), -0.5))
        self.frozen = torch.nn.Linear(8, 2)

    def loss(self, batch: int = 16) -> torch.Tensor:
        z = torch.tanh(self.body(torch.randn(batch, 4)))
        return ((self.actor(z) * self.log_std.exp()) ** 2).mean() * 50 + (self.critic(z) ** 2).mean() + self.frozen(z).mean()


def heads_of(net: Policy) -> dict:
    return {
        "move": [(net.actor.weight, slice(0, 3)), (net.actor.bias, slice(0, 3))],
        "turn": [(net.actor.weight, slice(3, 5)), (net.actor.bias, slice(3, 5))],
        "log_std": [net.log_std],
        "value": net.critic,
        "frozen": net.frozen,
    }


def trained_params(net: Policy) -> list:
    """What the optimizer steps: everything but the frozen layer (its ratio is 0.0)."""
    return [p for name, p in net.named_parameters() if not name.startswith("frozen")]


def snapshot(net: Policy) -> dict[str, torch.Tensor]:
    return {name: p.detach().double().clone() for name, p in net.named_parameters()}


def parts(net: Policy, values: dict[str, torch.Tensor]) -> dict[str, list[torch.Tensor]]:
    """Each head's tensors (rows for the sliced heads) out of a snapshot, and the total's."""
    w, b = values["actor.weight"], values["actor.bias"]
    return {
        "move": [w[:3], b[:3]], "turn": [w[3:], b[3:]], "log_std": [values["log_std"]],
        "value": [values["critic.weight"], values["critic.bias"]], "frozen": [values["frozen.weight"], values["frozen.bias"]],
        "total": list(values.values()),
    }


def reference(net: Policy, before: dict, after: dict) -> dict[str, tuple[float, float, float | None]]:
    """Per head and for the total: (update norm, parameter norm before, ratio), in float64."""
    delta = {name: after[name] - before[name] for name in before}
    out = {}
    for (name, moved), scale in zip(parts(net, delta).items(), parts(net, before).values()):
        u = math.sqrt(sum(float(t.pow(2).sum()) for t in moved))
        p = math.sqrt(sum(float(t.pow(2).sum()) for t in scale))
        out[name] = (u, p, u / p if p else None)
    return out


def close(a: float | None, b: float | None, rel: float = 1e-5) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=rel, abs_tol=1e-12)


def assert_event_matches(event, expected: dict[str, tuple[float, float, float | None]], rel: float = 1e-5) -> None:
    for head in HEADS:
        u, p, r = expected[head]
        assert close(event.update_norms[head], u, rel), (head, event.update_norms[head], u)
        assert close(event.param_norms[head], p, rel), (head, event.param_norms[head], p)
        assert close(event.ratios[head], r, rel), (head, event.ratios[head], r)
    assert close(event.total_ratio, expected["total"][2], rel)


def train(emitter, net: Policy, optimizer, groups, updates: int, minibatches: int, first: int = 0) -> list[list[dict]]:
    """A plain loop with each optimizer step inside ``param_updates``; per update, the float64 reference
    of each of its optimizer steps."""
    record = []
    for update in range(first, first + updates):
        steps = []
        for _ in range(minibatches):
            optimizer.zero_grad()
            net.loss().backward()
            before = snapshot(net)
            with emitter.param_updates(update, groups, optimizer=optimizer):
                optimizer.step()
            steps.append(reference(net, before, snapshot(net)))
        record.append(steps)
        emitter.flush()
    return record


class TestParamUpdatesValues:
    @pytest.mark.parametrize("make", [
        lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9),
        lambda params: torch.optim.Adam(params, lr=1e-2),
    ], ids=["sgd", "adam"])
    def test_each_step_equals_a_float64_reference_per_head_and_rows(self, consumer, emitter, make) -> None:
        """One optimizer step per update: ratios, update and parameter norms per head (rows for the sliced
        heads) and the total ratio equal ||dtheta|| / ||theta_before|| computed in float64; samples 1;
        the learning rate is the optimizer's."""
        torch.manual_seed(0)
        net = Policy()
        optimizer = make(trained_params(net))
        groups = emitter.head_groups(heads_of(net), params=net.parameters())
        record = train(emitter, net, optimizer, groups, updates=4, minibatches=1)
        events = received(consumer, emitter)
        assert [(e.step, e.samples) for e in events] == [(u, 1) for u in range(4)]
        for event, [expected] in zip(events, record):
            assert_event_matches(event, expected)
            assert event.ratios["frozen"] == 0.0 and event.update_norms["frozen"] == 0.0
            assert event.learning_rate == optimizer.param_groups[0]["lr"]
        assert emitter.collector_stats.errors == 0

    def test_an_updates_optimizer_steps_make_one_event_of_root_mean_squares(self, consumer, emitter) -> None:
        """Four minibatches per update under one step value: one event per update, samples=4, each ratio and
        norm the root mean square over the four optimizer steps."""
        torch.manual_seed(1)
        net = Policy()
        optimizer = torch.optim.Adam(trained_params(net), lr=3e-3)
        groups = emitter.head_groups(heads_of(net), params=net.parameters())
        record = train(emitter, net, optimizer, groups, updates=3, minibatches=4, first=10)
        events = received(consumer, emitter)
        assert [(e.step, e.samples) for e in events] == [(10, 4), (11, 4), (12, 4)]

        def rms(values):
            return math.sqrt(sum(v * v for v in values) / len(values))

        for event, steps in zip(events, record):
            expected = {name: tuple(rms([s[name][k] for s in steps]) for k in range(3)) for name in (*HEADS, "total")}
            assert_event_matches(event, expected, rel=1e-5)

    def test_a_learning_rate_ten_times_larger_gives_a_ratio_ten_times_larger(self, consumer, emitter) -> None:
        """Twin networks, the same gradients, Adam at lr and at 10 x lr: every head's ratio (and the total)
        is ten times larger, which gradient norms cannot show; learning_rate says which is which."""
        torch.manual_seed(2)
        net = Policy()
        twin = copy.deepcopy(net)
        slow = torch.optim.Adam(trained_params(net), lr=1e-4)
        fast = torch.optim.Adam(trained_params(twin), lr=1e-3)
        slow_groups = emitter.head_groups({f"slow_{k}": v for k, v in heads_of(net).items()})
        fast_groups = emitter.head_groups({f"fast_{k}": v for k, v in heads_of(twin).items()})
        batch = torch.randn(16, 4)
        for model, optimizer, groups in ((net, slow, slow_groups), (twin, fast, fast_groups)):
            optimizer.zero_grad()
            z = torch.tanh(model.body(batch))
            (model.actor(z).pow(2).mean() + model.critic(z).pow(2).mean()).backward()
            with emitter.param_updates(0, groups, optimizer=optimizer):
                optimizer.step()
        by_lr = {e.learning_rate: e for e in received(consumer, emitter)}
        assert set(by_lr) == {1e-4, 1e-3}
        for head in ("move", "turn", "value"):
            assert math.isclose(by_lr[1e-3].ratios[f"fast_{head}"] / by_lr[1e-4].ratios[f"slow_{head}"], 10.0, rel_tol=1e-3)
        assert math.isclose(by_lr[1e-3].total_ratio / by_lr[1e-4].total_ratio, 10.0, rel_tol=1e-3)

    def test_a_head_whose_parameters_were_zero_has_no_ratio_until_they_are_not(self, consumer, emitter) -> None:
        """A zero-initialised log_std: no ratio (None) for a step that starts from zeros, its update norm
        is sent; in an update of several steps the ratio covers the steps where it was measurable."""
        torch.manual_seed(3)
        net = Policy()
        with torch.no_grad():
            net.log_std.zero_()
        optimizer = torch.optim.SGD(trained_params(net), lr=0.1)
        groups = emitter.head_groups(heads_of(net), params=net.parameters())
        record = train(emitter, net, optimizer, groups, updates=1, minibatches=1)
        record += train(emitter, net, optimizer, groups, updates=1, minibatches=3, first=1)
        first, second = received(consumer, emitter)
        [expected] = record[0]
        assert first.ratios["log_std"] is None and first.param_norms["log_std"] == 0.0
        assert close(first.update_norms["log_std"], expected["log_std"][0])
        assert close(second.ratios["log_std"], math.sqrt(sum(s["log_std"][2] ** 2 for s in record[1]) / 3))

    def test_a_nan_parameter_shows_as_nan_in_its_head_only(self, consumer, emitter) -> None:
        """A NaN in the critic's weights: its ratio, its norms and the total are NaN; the other heads keep their values."""
        torch.manual_seed(4)
        net = Policy()
        optimizer = torch.optim.SGD(trained_params(net), lr=0.1)
        groups = emitter.head_groups(heads_of(net), params=net.parameters())
        optimizer.zero_grad()
        net.loss().backward()
        with torch.no_grad():
            net.critic.weight[0, 0] = math.nan
        with emitter.param_updates(0, groups, optimizer=optimizer):
            optimizer.step()
        [event] = received(consumer, emitter)
        assert math.isnan(event.ratios["value"]) and math.isnan(event.param_norms["value"]) and math.isnan(event.total_ratio)
        assert all(math.isfinite(event.ratios[h]) for h in ("move", "turn", "log_std", "frozen"))


class TestParamUpdatesStepRule:
    def test_the_aggregate_leaves_at_the_flush_after_a_later_step_is_named(self, consumer, emitter) -> None:
        """Flushes during update 5 send nothing; once another call names step 6, the next flush sends update 5."""
        torch.manual_seed(5)
        net = Policy()
        optimizer = torch.optim.SGD(trained_params(net), lr=0.01)
        groups = emitter.head_groups(heads_of(net))
        for _ in range(2):
            optimizer.zero_grad()
            net.loss().backward()
            with emitter.param_updates(5, groups):
                optimizer.step()
            emitter.flush()
        emitter.metrics(5, {"train/loss": 1.0})
        emitter.flush()
        seen = until(consumer, "metrics")
        assert [e.kind for e in seen] == ["run_start", "metrics"]
        emitter.metrics(6, {"train/loss": 0.5})  # the next update's first event names step 6
        emitter.flush()
        seen = until(consumer, "param_updates")
        assert [(e.kind, e.step) for e in seen] == [("metrics", 6), ("param_updates", 5)]
        assert seen[1].samples == 2 and seen[1].learning_rate is None  # no optimizer given: no learning rate

    def test_a_call_with_another_step_sends_the_pending_one_and_close_sends_the_last(self, consumer, emitter) -> None:
        """Steps 0, 0, 1, 2, 2, 2 without any flush in between: events (0, 2), (1, 1), (2, 3), the last one at close."""
        torch.manual_seed(6)
        net = Policy()
        optimizer = torch.optim.SGD(trained_params(net), lr=0.01)
        groups = emitter.head_groups(heads_of(net))
        for step in (0, 0, 1, 2, 2, 2):
            optimizer.zero_grad()
            net.loss().backward()
            with emitter.param_updates(step, groups, optimizer=optimizer):
                optimizer.step()
        assert [(e.step, e.samples) for e in received(consumer, emitter)] == [(0, 2), (1, 1), (2, 3)]

    def test_a_mapping_of_heads_is_resolved_once(self, consumer, emitter) -> None:
        """The same mapping each call (as a trainer writes it inline) reuses one measurement and its buffers."""
        net = Policy()
        optimizer = torch.optim.SGD(trained_params(net), lr=0.01)
        heads = {"value": net.critic, "log_std": [net.log_std]}
        first = emitter.param_updates(0, heads)
        assert isinstance(first, ParamUpdates)
        with first:
            optimizer.step()
        assert emitter.param_updates(0, heads) is first


class TestParamUpdatesNeverHurtTraining:
    def run(self, emitter, net: Policy, optimizer, groups, raising: bool = False) -> None:
        torch.manual_seed(7)
        for update in range(3):
            for _ in range(2):
                optimizer.zero_grad()
                net.loss().backward()
                with emitter.param_updates(update, groups, optimizer=optimizer):
                    optimizer.step()

    def test_training_is_bit_identical_with_telemetry_on_off_and_closed(self, consumer, emitter) -> None:
        """The same seed and loop with a live emitter, a NullEmitter and a closed emitter: the parameters
        end bit-identical to a loop without the block (the measurement only reads them)."""
        torch.manual_seed(8)
        plain = Policy()
        nets = [copy.deepcopy(plain) for _ in range(3)]
        off = NullEmitter()
        closed = Emitter(consumer.endpoint, run_id="closed", settings=EmitterSettings(exit_hooks=False))
        closed.close()
        optimizer = torch.optim.Adam(plain.parameters(), lr=1e-2)
        torch.manual_seed(7)
        for update in range(3):
            for _ in range(2):
                optimizer.zero_grad()
                plain.loss().backward()
                optimizer.step()
        for net, e in zip(nets, (emitter, off, closed)):
            optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
            groups = e.head_groups(heads_of(net), params=net.parameters())
            self.run(e, net, optimizer, groups)
            assert all(torch.equal(p, q) for p, q in zip(net.parameters(), plain.parameters()))
        assert isinstance(off.param_updates(0, {}), NullParamUpdates)
        assert isinstance(closed.param_updates(0, heads_of(plain)), NullParamUpdates)
        assert emitter.collector_stats.errors == 0

    def test_errors_are_counted_never_raised(self, emitter) -> None:
        """Heads that cannot be resolved, and a parameter replaced by one of another shape after setup:
        each optimizer step still runs, each failure is counted in collector_stats.errors."""
        net = Policy()
        optimizer = torch.optim.SGD(trained_params(net), lr=0.1)
        before = net.critic.bias.detach().clone()
        net.loss().backward()
        with emitter.param_updates(0, {"nothing": []}, optimizer=optimizer):
            optimizer.step()
        assert emitter.collector_stats.errors == 1 and not torch.equal(net.critic.bias, before)
        groups = emitter.head_groups(heads_of(net))
        with emitter.param_updates(0, groups):
            optimizer.step()
        net.log_std.data, net.log_std.grad = torch.zeros(7), None  # the copy kept for it no longer fits
        before = net.critic.bias.detach().clone()
        with emitter.param_updates(1, groups):
            optimizer.step()
        assert emitter.collector_stats.errors == 2 and not torch.equal(net.critic.bias, before)

    def test_an_exception_in_the_step_propagates_unchanged_and_measures_nothing(self, consumer, emitter) -> None:
        """A step that raises: the trainer sees its exception; that step is not measured; the next one is."""
        net = Policy()
        optimizer = torch.optim.SGD(trained_params(net), lr=0.1)
        groups = emitter.head_groups(heads_of(net))
        net.loss().backward()
        with pytest.raises(FloatingPointError):
            with emitter.param_updates(0, groups):
                raise FloatingPointError("step failed")
        with emitter.param_updates(0, groups):
            optimizer.step()
        assert [e.samples for e in received(consumer, emitter)] == [1]
        assert emitter.collector_stats.errors == 0
