"""``emitter.watch``, ``emitter.param_updates``, the fused clip and the current step on a CUDA GPU: right
values, no host sync.

The training loop runs under ``torch.cuda.set_sync_debug_mode("error")`` except for the reference
reads the test itself makes, so any synchronizing call the hooks make would raise (or be counted in
``collector_stats.errors``, which each test checks is 0).
"""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from simic.producer import Emitter, EmitterSettings  # noqa: E402
from tests.collector_reference import assert_matches, lstm_reference  # noqa: E402
from tests.gpu.test_collectors_cuda import consumer, sync_forbidden  # noqa: E402,F401
from tests.logs import events_of, inspect_run  # noqa: E402

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

CLIP = 0.5


class Policy(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = torch.nn.LSTM(16, 64, batch_first=True)
        self.actor = torch.nn.Linear(64, 9)  # rows 0..3: "slot", 4..8: "op"
        self.critic = torch.nn.Linear(64, 1)

    def loss(self) -> torch.Tensor:
        out, _ = self.lstm(torch.randn(32, 8, 16, device="cuda"))
        z = out[:, -1]
        return (self.actor(z) ** 2).mean() * 100 + (self.critic(z) ** 2).mean()


def heads_of(net: Policy) -> dict:
    return {"slot": [(net.actor.weight, slice(0, 4)), (net.actor.bias, slice(0, 4))],
            "op": [(net.actor.weight, slice(4, 9)), (net.actor.bias, slice(4, 9))], "value": net.critic}


class TestWatchOnCuda:
    def test_an_update_of_minibatches_matches_a_synchronous_reference_without_syncing(self, consumer) -> None:
        """Three updates of four minibatches under sync-debug "error": one head_grad_norms (RMS of the
        pre-clip norms, samples=4) and one lstm_health per update, equal to float64 references read
        outside the guarded loop."""
        torch.manual_seed(0)
        emitter = Emitter(consumer.endpoint, run_id="watch-cuda", settings=EmitterSettings(exit_hooks=False))
        net = Policy().cuda()
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
        update = [0]
        last_state = {}
        net.lstm.register_forward_hook(lambda m, a, out: last_state.__setitem__("hc", tuple(t.detach().clone() for t in out[1])))
        watch = emitter.watch(net, optimizer, heads=heads_of(net), lstm={"core": net.lstm}, clip=CLIP, step=lambda: update[0])
        expected = []
        for update[0] in range(3):
            squares = {"slot": 0.0, "op": 0.0, "value": 0.0, "total": 0.0}
            for _ in range(4):
                with sync_forbidden():
                    optimizer.zero_grad()
                    net.loss().backward()
                w, b = net.actor.weight.grad.double(), net.actor.bias.grad.double()  # the reference reads (syncs)
                squares["slot"] += float(w[:4].pow(2).sum() + b[:4].pow(2).sum())
                squares["op"] += float(w[4:].pow(2).sum() + b[4:].pow(2).sum())
                squares["value"] += sum(float(p.grad.double().pow(2).sum()) for p in net.critic.parameters())
                with sync_forbidden():
                    total = torch.nn.utils.clip_grad_norm_(net.parameters(), CLIP)
                squares["total"] += float(total) ** 2
                with sync_forbidden():
                    optimizer.step()
                    emitter.flush()
            expected.append(({k: math.sqrt(v / 4) for k, v in squares.items()}, last_state["hc"]))
        with sync_forbidden():
            watch.close()
            emitter.flush()
        assert emitter.collector_stats.errors == 0
        emitter.close()
        events = consumer.until_run_end()
        norms = [e for e in events if e.kind == "head_grad_norms"]
        assert [(e.step, e.samples) for e in norms] == [(0, 4), (1, 4), (2, 4)]
        for event, (reference, _) in zip(norms, expected):
            for head in ("slot", "op", "value"):
                assert math.isclose(event.norms[head], reference[head], rel_tol=1e-4)
            assert math.isclose(event.pre_clip_total, reference["total"], rel_tol=1e-4)
        states = [e for e in events if e.kind == "lstm_health"]
        assert [(e.step, e.name) for e in states] == [(0, "core"), (1, "core"), (2, "core")]
        for event, (_, hc) in zip(states, expected):
            assert_matches(event, lstm_reference(*hc), rel=1e-4)
        assert [e.step for e in events if e.kind == "step_timing"] == [0, 1, 2]


def update_ratio_reference(net: Policy, before: dict, after: dict) -> dict[str, float]:
    """||after - before|| / ||before|| per head of :func:`heads_of` (rows) and over every parameter, in float64."""
    def ratio(names_rows):
        moved = sum(float((after[n][r] - before[n][r]).pow(2).sum()) for n, r in names_rows)
        return math.sqrt(moved / sum(float(before[n][r].pow(2).sum()) for n, r in names_rows))

    every = slice(None)
    return {"slot": ratio([("actor.weight", slice(0, 4)), ("actor.bias", slice(0, 4))]),
            "op": ratio([("actor.weight", slice(4, 9)), ("actor.bias", slice(4, 9))]),
            "value": ratio([("critic.weight", every), ("critic.bias", every)]),
            "total": ratio([(n, every) for n in before])}


class TestParamUpdatesOnCuda:
    def test_param_updates_and_watch_update_ratio_match_a_synchronous_reference_without_syncing(self, consumer) -> None:
        """Three updates of four minibatches under sync-debug "error", each optimizer step inside
        ``emitter.param_updates`` and watched with ``update_ratio=True``: both send one param_updates per
        update (samples=4) whose ratios are the RMS of float64 references read outside the guarded loop."""
        torch.manual_seed(3)
        emitter = Emitter(consumer.endpoint, run_id="param-updates-cuda", settings=EmitterSettings(exit_hooks=False))
        net = Policy().cuda()
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
        update = [0]
        groups = emitter.head_groups({f"cm_{k}": v for k, v in heads_of(net).items()}, params=net.parameters())
        watch = emitter.watch(net, optimizer, heads=heads_of(net), clip=CLIP, step=lambda: update[0], update_ratio=True)
        expected = []
        for update[0] in range(3):
            squares = {"slot": 0.0, "op": 0.0, "value": 0.0, "total": 0.0}
            for _ in range(4):
                with sync_forbidden():
                    optimizer.zero_grad()
                    net.loss().backward()
                    torch.nn.utils.clip_grad_norm_(net.parameters(), CLIP)
                before = {k: p.detach().double().clone() for k, p in net.named_parameters()}  # the reference reads (syncs)
                with sync_forbidden():
                    with emitter.param_updates(update[0], groups, optimizer=optimizer):
                        optimizer.step()
                    emitter.flush()
                after = {k: p.detach().double() for k, p in net.named_parameters()}
                for head, ratio in update_ratio_reference(net, before, after).items():
                    squares[head] += ratio ** 2
            expected.append({k: math.sqrt(v / 4) for k, v in squares.items()})
        with sync_forbidden():
            watch.close()
            emitter.flush()
        assert emitter.collector_stats.errors == 0
        emitter.close()
        events = [e for e in consumer.until_run_end() if e.kind == "param_updates"]
        watched = [e for e in events if "slot" in e.ratios]
        measured = [e for e in events if "cm_slot" in e.ratios]
        for sent, prefix in ((watched, ""), (measured, "cm_")):
            assert [(e.step, e.samples) for e in sent] == [(0, 4), (1, 4), (2, 4)]
            for event, reference in zip(sent, expected):
                for head in ("slot", "op", "value"):
                    assert math.isclose(event.ratios[prefix + head], reference[head], rel_tol=1e-4), (prefix, head)
                assert math.isclose(event.total_ratio, reference["total"], rel_tol=1e-4)
                assert event.learning_rate == 1e-3


class TestFusedClipOnCuda:
    def test_bit_identical_to_torch_with_heads_in_another_order(self, consumer) -> None:
        """200 minibatches: the returned total and every clipped gradient equal torch's clip on a twin, bit for bit."""
        torch.manual_seed(1)
        emitter = Emitter(consumer.endpoint, run_id="clip-cuda", settings=EmitterSettings(exit_hooks=False))
        net = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.Tanh(), torch.nn.Linear(256, 256), torch.nn.Tanh(),
                                  torch.nn.Linear(256, 12)).cuda()
        groups = emitter.head_groups({"out": net[4], "mid": net[2], "inp": net[0]}, params=net.parameters())
        differ = 0
        for i in range(200):
            net.zero_grad()
            (net(torch.randn(512, 64, device="cuda")) ** 2).mean().mul(100).backward()
            twin = [torch.nn.Parameter(p.detach().clone()) for p in net.parameters()]
            for q, p in zip(twin, net.parameters()):
                q.grad = p.grad.clone()
            expected = torch.nn.utils.clip_grad_norm_(twin, 0.5)
            with sync_forbidden():
                total = emitter.clip_grad_norm_(i, groups, 0.5)
                emitter.flush()
            differ += not (torch.equal(total, expected) and all(torch.equal(p.grad, q.grad) for p, q in zip(net.parameters(), twin)))
        assert differ == 0 and emitter.collector_stats.errors == 0
        emitter.close()


class TestCurrentStepOnCuda:
    def test_a_collectors_only_trainer_reports_its_last_step(self, tmp_path) -> None:
        """Timer, lstm_state, clip_grad_norm_, ppo_update and metrics with device values, no direct emit:
        heartbeat and run_end carry the last step (12) and inspect's last step is 12, not 0."""
        torch.manual_seed(2)
        net = torch.nn.Linear(8, 4).cuda()
        log_dir = tmp_path / "logs"
        emitter = Emitter(None, run_id="collectors-cuda", spawn_consumer={"log_dir": log_dir},
                          settings=EmitterSettings(exit_hooks=False, heartbeat_interval_s=1e-9))
        groups = emitter.head_groups({"out": net}, params=net.parameters())
        timer = emitter.timer("update")
        for step in range(1, 13):
            with sync_forbidden():
                timer.start()
                net.zero_grad()
                loss = net(torch.randn(16, 8, device="cuda")).pow(2).mean()
                loss.backward()
                emitter.clip_grad_norm_(step, groups, 0.5)
                emitter.lstm_state(step, (torch.randn(1, 4, 8, device="cuda"), torch.randn(1, 4, 8, device="cuda")))
                emitter.ppo_update(step, approx_kl=loss.detach() * 0.01, entropy=loss.detach())
                emitter.metrics(step, {"train/loss": loss.detach()})
                timer.stop(step)
                emitter.flush()
        assert emitter.collector_stats.errors == 0
        emitter.close()
        assert inspect_run(log_dir, "collectors-cuda")["last_step"] == 12
        events = events_of(log_dir, "collectors-cuda")
        assert [e.step for e in events if e.kind == "heartbeat"][-1] == 12
        assert [e.step for e in events if e.kind == "run_end"] == [12]
        assert sorted(e.step for e in events if e.kind == "metrics") == list(range(1, 13))
        assert {tuple(e.entropy) for e in events if e.kind == "ppo_update"} == {("policy",)}
