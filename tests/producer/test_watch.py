"""``emitter.watch``: an unedited torch loop, measured through hooks, checked against direct computation.

Events are received on a real PULL socket over ipc and decoded as the consumer decodes them.
"""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from simic.producer import Emitter, NullEmitter  # noqa: E402
from simic.producer.collectors import NullWatch, Watch  # noqa: E402
from tests.collector_reference import assert_matches, lstm_reference  # noqa: E402
from tests.receiver import Receiver  # noqa: E402

CLIP = 0.5



def received(consumer: Receiver, emitter: Emitter, kind: str) -> list:
    emitter.close()
    return [e for e in consumer.until_run_end() if e.kind == kind]


class Policy(torch.nn.Module):
    """An LSTM core, a factored actor (one Linear whose rows are two heads), a critic and a log_std."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = torch.nn.LSTM(4, 8, batch_first=True)
        self.actor = torch.nn.Linear(8, 5)  # rows 0..2: "move", rows 3..4: "turn"
        self.critic = torch.nn.Linear(8, 1)
        self.log_std = torch.nn.Parameter(torch.zeros(5))
        self.unused = torch.nn.Linear(8, 2)

    def loss(self, batch: int = 16) -> torch.Tensor:
        out, _ = self.lstm(torch.randn(batch, 6, 4))
        z = out[:, -1]
        return ((self.actor(z) * self.log_std.exp()) ** 2).mean() * 50 + (self.critic(z) ** 2).mean()


def heads_of(net: Policy) -> dict:
    return {
        "move": [(net.actor.weight, slice(0, 3)), (net.actor.bias, slice(0, 3))],
        "turn": [(net.actor.weight, slice(3, 5)), (net.actor.bias, slice(3, 5))],
        "log_std": [net.log_std],
        "value": net.critic,
        "unused": net.unused,
    }


def head_norms(net: Policy) -> dict[str, float | None]:
    """The heads' gradient norms now, straight from ``.grad`` in float64."""
    def norm(*tensors):
        return math.sqrt(sum(float(t.double().pow(2).sum()) for t in tensors))

    w, b = net.actor.weight.grad, net.actor.bias.grad
    return {"move": norm(w[:3], b[:3]), "turn": norm(w[3:], b[3:]), "log_std": norm(net.log_std.grad),
            "value": norm(net.critic.weight.grad, net.critic.bias.grad), "unused": None}


def close(a: float | None, b: float | None, rel: float = 1e-5) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=rel, abs_tol=1e-9)


def train(net: Policy, optimizer, updates: int, minibatches: int, accumulate: int = 1):
    """A plain loop: zero_grad, backward (x ``accumulate``), record the reference, clip, step. Returns, per
    update, the list of (head norms, clip total) of its optimizer steps."""
    record = []
    for _ in range(updates):
        steps = []
        for _ in range(minibatches):
            optimizer.zero_grad()
            for _ in range(accumulate):
                net.loss().backward()
            reference = head_norms(net)
            total = float(torch.nn.utils.clip_grad_norm_(net.parameters(), CLIP))
            optimizer.step()
            steps.append((reference, total))
        record.append(steps)
    return record


class TestWatchSteps:
    def test_every_optimizer_step_is_a_step_with_the_pre_clip_norms(self, consumer, emitter) -> None:
        """Default step rule: optimizer steps 0..5 each send one event; head norms are the ones before the
        clip, the total is what clip_grad_norm_ returned, the post-clip total is its scaling, samples 1."""
        torch.manual_seed(0)
        net = Policy()
        optimizer = torch.optim.SGD(net.parameters(), lr=0.05)
        watch = emitter.watch(net, optimizer, heads=heads_of(net), clip=CLIP)
        record = train(net, optimizer, updates=6, minibatches=1)
        watch.close()
        events = received(consumer, emitter, "head_grad_norms")
        assert [e.step for e in events] == list(range(6))
        for event, [(reference, total)] in zip(events, record):
            assert event.samples == 1 and event.stage == "pre_clip" and event.max_norm == CLIP
            assert all(close(event.norms[name], value) for name, value in reference.items()), (event.norms, reference)
            assert close(event.total, total) and close(event.pre_clip_total, total)
            assert close(event.post_clip_total, total * min(1.0, CLIP / (total + 1e-6)))

    def test_a_trainer_counter_makes_one_event_of_an_updates_minibatches(self, consumer, emitter) -> None:
        """step=callable: the four optimizer steps of an update are one event, samples=4, each norm and both
        totals the root mean square over them."""
        torch.manual_seed(1)
        net = Policy()
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
        update = {"n": 0}
        watch = emitter.watch(net, optimizer, heads=heads_of(net), clip=CLIP, step=lambda: update["n"])
        record = []
        for n in range(3):
            update["n"] = 10 + n
            record += train(net, optimizer, updates=1, minibatches=4)
        watch.close()
        events = received(consumer, emitter, "head_grad_norms")
        assert [(e.step, e.samples) for e in events] == [(10, 4), (11, 4), (12, 4)]
        for event, steps in zip(events, record):
            for name in ("move", "turn", "log_std", "value"):
                assert close(event.norms[name], math.sqrt(sum(r[name] ** 2 for r, _ in steps) / 4), rel=1e-4)
            assert event.norms["unused"] is None
            assert close(event.total, math.sqrt(sum(t * t for _, t in steps) / 4), rel=1e-4)
            post = [t * min(1.0, CLIP / (t + 1e-6)) for _, t in steps]
            assert close(event.post_clip_total, math.sqrt(sum(p * p for p in post) / 4), rel=1e-4)

    def test_accumulated_gradients_are_measured_once_whole(self, consumer, emitter) -> None:
        """Two backward passes before each optimizer step: the event holds the norm of the accumulated
        gradient (what the clip sees), not of either pass."""
        torch.manual_seed(2)
        net = Policy()
        optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
        watch = emitter.watch(net, optimizer, heads=heads_of(net), clip=CLIP)
        record = train(net, optimizer, updates=3, minibatches=1, accumulate=2)
        watch.close()
        events = received(consumer, emitter, "head_grad_norms")
        assert [e.step for e in events] == [0, 1, 2]
        for event, [(_, total)] in zip(events, record):
            assert close(event.total, total)

    def test_end_step_sends_the_step_being_built(self, consumer, emitter) -> None:
        """An adapter that knows the update is over calls end_step: the event leaves without waiting for the next step."""
        torch.manual_seed(3)
        net = Policy()
        optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
        watch = emitter.watch(net, optimizer, step=lambda: 7)
        train(net, optimizer, updates=1, minibatches=2)
        watch.end_step()
        emitter.flush()
        events = []
        while not any(e.kind == "head_grad_norms" for e in events):
            events += consumer.next_events()
        [event] = [e for e in events if e.kind == "head_grad_norms"]
        assert (event.step, event.samples) == (7, 2)
        assert set(event.norms) == {"lstm", "actor", "critic", "log_std", "unused"}  # the default heads
        watch.close()


class TestWatchOtherEvents:
    def test_the_lstm_state_of_the_last_forward_of_each_step_is_sampled_by_name(self, consumer, emitter) -> None:
        """lstm={"core": ...}: one lstm_health per step named "core", equal to the statistics of the state
        its last forward returned."""
        torch.manual_seed(4)
        net = Policy()
        optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
        last = {}
        net.lstm.register_forward_hook(lambda m, a, out: last.__setitem__("state", tuple(t.detach().clone() for t in out[1])))
        watch = emitter.watch(net, optimizer, lstm={"core": net.lstm})
        states = []
        for _ in range(3):
            optimizer.zero_grad()
            net.loss().backward()
            optimizer.step()
            states.append(last["state"])
        watch.close()
        events = received(consumer, emitter, "lstm_health")
        assert [(e.step, e.name) for e in events] == [(0, "core"), (1, "core"), (2, "core")]
        for event, state in zip(events, states):
            assert_matches(event, lstm_reference(*state))

    def test_with_a_step_counter_the_state_is_the_last_forward_before_the_counter_moved(self, consumer, emitter) -> None:
        """step=counter, four minibatches per update, a flush after each: each lstm_health is the state of
        the update's last forward, not of the next update's first (which runs before the optimizer step
        that sees the new value), and each update sends one step_timing whose train phase spans its
        four optimizer steps."""
        torch.manual_seed(8)
        net = Policy()
        optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
        last = {}
        net.lstm.register_forward_hook(lambda m, a, out: last.__setitem__("state", tuple(t.detach().clone() for t in out[1])))
        update = [0]
        watch = emitter.watch(net, optimizer, lstm={"core": net.lstm}, step=lambda: update[0])
        states = []
        for update[0] in range(3):
            for _ in range(4):
                optimizer.zero_grad()
                net.loss().backward()
                optimizer.step()
                emitter.flush()
            states.append(last["state"])
        watch.close()
        emitter.close()
        events = consumer.until_run_end()
        health = [e for e in events if e.kind == "lstm_health"]
        assert [e.step for e in health] == [0, 1, 2]
        for event, state in zip(health, states):
            assert_matches(event, lstm_reference(*state))
        timings = [e for e in events if e.kind == "step_timing"]
        assert [(e.step, list(e.phases_ms)) for e in timings] == [(s, ["train"]) for s in range(3)]

    def test_the_train_phase_and_the_learning_rate_arrive_per_step(self, consumer, emitter) -> None:
        """One step_timing with a positive ``train`` phase and a metrics event with the optimizer's lr, per step."""
        torch.manual_seed(5)
        net = Policy()
        optimizer = torch.optim.SGD(net.parameters(), lr=0.03)
        watch = emitter.watch(net, optimizer)
        train(net, optimizer, updates=3, minibatches=1)
        watch.close()
        emitter.close()
        events = consumer.until_run_end()
        timings = [e for e in events if e.kind == "step_timing"]
        assert [e.step for e in timings] == [0, 1, 2] and all(e.phases_ms["train"] > 0 for e in timings)
        assert [(e.step, e.values) for e in events if e.kind == "metrics"] == [(s, {"optimizer/lr": 0.03}) for s in range(3)]

    def test_close_removes_every_hook(self, consumer, emitter) -> None:
        """After close, training goes on and nothing more is measured."""
        torch.manual_seed(6)
        net = Policy()
        optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
        watch = emitter.watch(net, optimizer, lstm=net.lstm)
        train(net, optimizer, updates=2, minibatches=1)
        watch.close()
        watch.close()
        train(net, optimizer, updates=3, minibatches=1)
        assert watch.optimizer_steps == 2
        assert [e.step for e in received(consumer, emitter, "head_grad_norms")] == [0, 1]

    def test_a_closed_emitter_leaves_training_alone(self, emitter) -> None:
        """Hooks of a closed emitter do nothing; training is unchanged."""
        torch.manual_seed(7)
        net = Policy()
        optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
        emitter.watch(net, optimizer, lstm=net.lstm, clip=CLIP)
        emitter.close()
        train(net, optimizer, updates=2, minibatches=2)
        assert emitter.collector_stats.errors == 0


class TestWatchUpdateRatio:
    def test_each_step_sends_the_rms_update_to_weight_ratio_per_head(self, consumer, emitter) -> None:
        """update_ratio (default): one param_updates per step with samples = its optimizer steps; each ratio
        is the root mean square over them of ||dtheta|| / ||theta_before|| (rows for the sliced heads),
        computed here in float64, over the steps where it is defined (log_std starts at zero: not in its
        first step); the head without gradients did not move (0.0); the lr is the optimizer's."""
        torch.manual_seed(8)
        net = Policy()
        optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
        update = {"n": 0}
        watch = emitter.watch(net, optimizer, heads=heads_of(net), clip=CLIP, step=lambda: update["n"])
        expected = []
        for n in range(3):
            update["n"] = n
            squares: dict[str, list[float]] = {"move": [], "turn": [], "log_std": [], "value": [], "total": []}
            for _ in range(3):
                optimizer.zero_grad()
                net.loss().backward()
                torch.nn.utils.clip_grad_norm_(net.parameters(), CLIP)
                before = {k: p.detach().double().clone() for k, p in net.named_parameters()}
                optimizer.step()
                after = {k: p.detach().double() for k, p in net.named_parameters()}
                for head, ratio in update_ratios(before, after).items():
                    if ratio is not None:
                        squares[head].append(ratio ** 2)
            expected.append({head: math.sqrt(sum(v) / len(v)) for head, v in squares.items()})
        watch.close()
        events = received(consumer, emitter, "param_updates")
        assert [(e.step, e.samples) for e in events] == [(0, 3), (1, 3), (2, 3)]
        for event, reference in zip(events, expected):
            for head in ("move", "turn", "log_std", "value"):
                assert close(event.ratios[head], reference[head]), (head, event.ratios[head], reference[head])
            assert close(event.total_ratio, reference["total"])
            assert event.ratios["unused"] == 0.0 and event.learning_rate == 3e-3

    def test_update_ratio_false_sends_no_param_updates(self, consumer, emitter) -> None:
        """update_ratio=False: the gradient norms come as before, no param_updates."""
        net = Policy()
        optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
        watch = emitter.watch(net, optimizer, update_ratio=False)
        train(net, optimizer, updates=2, minibatches=1)
        watch.close()
        emitter.close()
        kinds = [e.kind for e in consumer.until_run_end()]
        assert kinds.count("head_grad_norms") == 2 and "param_updates" not in kinds


def update_ratios(before: dict, after: dict) -> dict[str, float | None]:
    """||after - before|| / ||before|| per head of :func:`heads_of` and over every parameter, in float64
    (None where the parameters were all zero)."""
    def ratio(pairs):
        moved = sum(float((a - b).pow(2).sum()) for b, a in pairs)
        scale = sum(float(b.pow(2).sum()) for b, _ in pairs)
        return math.sqrt(moved / scale) if scale else None

    w, bias = (before["actor.weight"], after["actor.weight"]), (before["actor.bias"], after["actor.bias"])
    return {
        "move": ratio([(w[0][:3], w[1][:3]), (bias[0][:3], bias[1][:3])]),
        "turn": ratio([(w[0][3:], w[1][3:]), (bias[0][3:], bias[1][3:])]),
        "log_std": ratio([(before["log_std"], after["log_std"])]),
        "value": ratio([(before[k], after[k]) for k in ("critic.weight", "critic.bias")]),
        "total": ratio([(before[k], after[k]) for k in before]),
    }


class TestWatchSetup:
    @pytest.mark.parametrize("kwargs", [
        dict(clip=-1.0), dict(clip="0.5"), dict(step=3), dict(lstm=torch.nn.Linear(2, 2)), dict(heads={"x": []}),
    ])
    def test_bad_arguments_raise_value_error(self, emitter, kwargs) -> None:
        """What watch cannot use is refused at once, with a ValueError."""
        net = Policy()
        with pytest.raises(ValueError):
            emitter.watch(net, torch.optim.SGD(net.parameters(), lr=0.1), **kwargs)

    def test_not_a_module_or_not_an_optimizer_raise(self, emitter) -> None:
        net = Policy()
        with pytest.raises(ValueError):
            emitter.watch(object(), None)
        with pytest.raises(ValueError):
            emitter.watch(net, object())

    def test_telemetry_off_returns_a_null_watch(self) -> None:
        """NullEmitter.watch installs nothing and returns the same interface."""
        net = Policy()
        watch = NullEmitter().watch(net, torch.optim.SGD(net.parameters(), lr=0.1), clip=CLIP)
        assert isinstance(watch, NullWatch)
        with watch:
            watch.end_step()

    def test_a_watch_is_a_watch(self, emitter) -> None:
        net = Policy()
        with emitter.watch(net, torch.optim.SGD(net.parameters(), lr=0.1)) as watch:
            assert isinstance(watch, Watch)
