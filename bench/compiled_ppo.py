"""GPU overhead of simic in a LeanRL-style PPO trainer: compiled policy, CUDA-graphed update.

The trainer is written the way the fastest PPO trainers are (LeanRL's ``ppo_continuous_action``
with ``torch.compile`` and a CUDA-graphed update): a Gaussian policy (an action-mean MLP and a
state-independent ``log_std`` parameter) and a value MLP, a synthetic continuous-control
environment on the GPU, a rollout of ``envs x steps`` whose policy step is compiled
(``torch.compile``, inductor), GAE, then ``epochs x minibatches`` optimizer steps, each one replay
of a CUDA graph that holds the compiled loss, ``backward()``, the gradient clip and Adam
(``capturable=True``). The host only copies each minibatch into the graph's static inputs and
replays it.

Variants, interleaved in rotated order over the rounds, on twins that start from the same weights:

- ``off``: the trainer as it is: ``torch.nn.utils.clip_grad_norm_`` in the graph, no telemetry.
- ``simic``: every collector that fits the trainer: the clip in the graph is ``groups.clip_`` (the
  same clip, the per-head norms and the pre-clip total from its pass: heads ``mean``, ``log_std``,
  ``value``); each replay writes its vector into the next row of a static buffer (a device counter
  picks the row), and after the update the rows are handed over once with
  ``emitter.head_grad_norms(step, groups, max_norm=..., norms=rows)``: one event per optimizer step
  from one readout; ``emitter.timer`` around the
  rollout and the update (CUDA events outside the graph); the update's metrics (policy and value
  loss, entropy, approx_kl, clip fraction, ratio range; device tensors the graph writes) and the
  rollout's explained variance (one compiled function, as the trainer compiles its other math) with
  ``emitter.ppo_update`` once per update; ``flush()`` once per iteration. There is no
  LSTM to watch in this trainer; ``lstm_stats`` in a captured graph is covered by the GPU tests.
- ``simic, per update``: as ``simic``, but the graph also adds each minibatch's squared norms into a
  static accumulator, and one ``head_grad_norms`` event per update carries their root mean square
  (``samples`` = the optimizer steps), the cadence the rules reason in.

Events go to a real ``Emitter`` whose PUSH socket is connected over ``ipc://`` to a PULL socket bound
by a separate receiving process that decodes every message.

    python3 bench/compiled_ppo.py                    # on a CUDA machine
    python3 bench/compiled_ppo.py --calls            # and the host cost of each telemetry line alone
    python3 bench/compiled_ppo.py --quick --eager    # smoke run of the eager path (works on CPU)

``--eager`` runs the same trainer without ``torch.compile`` and without the CUDA graph (what CPU CI runs).
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

if not __package__:  # run as a script (python bench/compiled_ppo.py): the repository root makes the `bench` package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.gpu_overhead import DecodingReceiver, Spent, median_call_us, sync  # noqa: E402
from simic.producer import Emitter, EmitterSettings  # noqa: E402

TARGET = 1.02
"""Target: simic at most this times ``off``."""
MAX_GRAD_NORM = 0.5


@dataclass
class Args:
    envs: int = 16
    steps: int = 64
    epochs: int = 4
    minibatches: int = 8
    obs_dim: int = 17
    act_dim: int = 6
    hidden: int = 64
    rounds: int = 21
    iters: int = 8
    warmup: int = 3
    eager: bool = False
    seed: int = 1


class GpuEnv:
    """A synthetic continuous-control environment on the device: the reward is how close the action
    is to a fixed function of the observation; the observation drifts with the action taken."""

    def __init__(self, args: Args, device: torch.device) -> None:
        g = torch.Generator(device="cpu").manual_seed(args.seed)
        self.w = (torch.randn(args.obs_dim, args.obs_dim, generator=g) / math.sqrt(args.obs_dim)).to(device)
        self.b = (torch.randn(args.act_dim, args.obs_dim, generator=g) * 0.3).to(device)
        self.target = (torch.randn(args.obs_dim, args.act_dim, generator=g) / math.sqrt(args.obs_dim)).to(device)
        self.obs = torch.randn(args.envs, args.obs_dim, device=device)

    def step(self, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        reward = -(action - torch.tanh(self.obs @ self.target)).square().mean(-1)
        self.obs = torch.tanh(self.obs @ self.w + action.clamp(-3, 3) @ self.b + 0.1 * torch.randn_like(self.obs))
        return self.obs, reward


class Agent(nn.Module):
    def __init__(self, args: Args) -> None:
        super().__init__()
        h = args.hidden
        self.critic = nn.Sequential(nn.Linear(args.obs_dim, h), nn.Tanh(), nn.Linear(h, h), nn.Tanh(), nn.Linear(h, 1))
        self.actor_mean = nn.Sequential(nn.Linear(args.obs_dim, h), nn.Tanh(), nn.Linear(h, h), nn.Tanh(), nn.Linear(h, args.act_dim))
        self.actor_logstd = nn.Parameter(torch.zeros(1, args.act_dim))

    def act(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mean = self.actor_mean(obs)
        std = self.actor_logstd.exp()
        action = mean + std * torch.randn_like(mean)
        logprob = (-0.5 * ((action - mean) / std).square() - self.actor_logstd - 0.5 * math.log(2 * math.pi)).sum(-1)
        return action, logprob, self.critic(obs).squeeze(-1)

    def evaluate(self, obs: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mean = self.actor_mean(obs)
        logstd = self.actor_logstd.expand_as(mean)
        logprob = (-0.5 * ((action - mean) / logstd.exp()).square() - logstd - 0.5 * math.log(2 * math.pi)).sum(-1)
        entropy = (0.5 + 0.5 * math.log(2 * math.pi) + logstd).sum(-1)
        return logprob, entropy, self.critic(obs).squeeze(-1)


def ppo_loss(agent: Agent, obs, actions, old_logprob, advantages, returns, old_values):
    """CleanRL's PPO loss and metrics for one minibatch (clip 0.2, value clip, entropy 0.0, vf 0.5)."""
    logprob, entropy, value = agent.evaluate(obs, actions)
    logratio = logprob - old_logprob
    ratio = logratio.exp()
    adv = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    pg_loss = torch.max(-adv * ratio, -adv * ratio.clamp(0.8, 1.2)).mean()
    v_clipped = old_values + (value - old_values).clamp(-0.2, 0.2)
    v_loss = 0.5 * torch.max((value - returns).square(), (v_clipped - returns).square()).mean()
    loss = pg_loss + 0.5 * v_loss
    with torch.no_grad():
        metrics = torch.stack([pg_loss, v_loss, entropy.mean(), ((ratio - 1) - logratio).mean(),
                               ((ratio - 1).abs() > 0.2).float().mean(), ratio.min(), ratio.max()])
    return loss, metrics


METRICS = ("policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction", "ratio_min", "ratio_max")


def explained_variance(returns: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """How much of the returns' variance the value estimates explain (1: all; a device scalar)."""
    return 1 - (returns - values).var() / returns.var().clamp_min(1e-8)


class Trainer:
    """One trainer; ``telemetry`` picks what its update graph holds: None (``off``), ``"minibatch"`` or ``"update"``."""

    def __init__(self, args: Args, device: torch.device, emitter: Emitter | None, telemetry: str | None) -> None:
        self.args, self.device, self.emitter, self.telemetry = args, device, emitter, telemetry
        self.env = GpuEnv(args, device)
        self.agent = Agent(args).to(device)
        graphed = device.type == "cuda" and not args.eager
        self.optimizer = torch.optim.Adam(self.agent.parameters(), lr=3e-4, eps=1e-5, capturable=graphed)
        self.groups = None
        if emitter is not None:
            self.groups = emitter.head_groups({"mean": self.agent.actor_mean, "log_std": [self.agent.actor_logstd],
                                               "value": self.agent.critic}, params=self.agent.parameters())
        n, batch = args.envs * args.steps, args.envs * args.steps // args.minibatches
        self.buffers = {"obs": torch.zeros(args.steps, args.envs, args.obs_dim, device=device),
                        "actions": torch.zeros(args.steps, args.envs, args.act_dim, device=device),
                        "logprob": torch.zeros(args.steps, args.envs, device=device),
                        "rewards": torch.zeros(args.steps, args.envs, device=device),
                        "values": torch.zeros(args.steps, args.envs, device=device)}
        self.static = {"obs": torch.zeros(batch, args.obs_dim, device=device), "actions": torch.zeros(batch, args.act_dim, device=device),
                       **{k: torch.zeros(batch, device=device) for k in ("logprob", "advantages", "returns", "values")}}
        width = len(self.groups.entries) + 1 if self.groups else 1
        self.accumulated = torch.zeros(width, device=device)
        self.rows = torch.zeros(args.epochs * args.minibatches, width, device=device)  # one row per optimizer step
        self.slot = torch.zeros(1, dtype=torch.long, device=device)  # the row the next step writes
        self.n = n
        self.policy_step = self.agent.act if args.eager else torch.compile(self.agent.act)
        self.explained_variance = explained_variance if args.eager else torch.compile(explained_variance)
        loss_fn = ppo_loss if args.eager else torch.compile(ppo_loss)

        def minibatch_step():
            s = self.static
            loss, metrics = loss_fn(self.agent, s["obs"], s["actions"], s["logprob"], s["advantages"], s["returns"], s["values"])
            loss.backward()
            if self.groups is None:
                torch.nn.utils.clip_grad_norm_(self.agent.parameters(), MAX_GRAD_NORM)
                norms = None
            else:
                norms = self.groups.clip_(MAX_GRAD_NORM)
                if telemetry == "update":
                    self.accumulated.add_(norms.square())
                else:
                    self.rows.index_copy_(0, self.slot, norms.unsqueeze(0))
                    self.slot.add_(1)
            self.optimizer.step()
            return metrics, norms

        self.minibatch_step = minibatch_step
        self.graph = None
        if graphed:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm-up (and compilation) outside the capture
                for _ in range(3):
                    self.optimizer.zero_grad(set_to_none=True)
                    minibatch_step()
            torch.cuda.current_stream().wait_stream(side)
            self.optimizer.zero_grad(set_to_none=True)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.outputs = minibatch_step()

    def rollout(self) -> torch.Tensor:
        b = self.buffers
        obs = self.env.obs
        with torch.no_grad():
            for t in range(self.args.steps):
                action, logprob, value = self.policy_step(obs)
                b["obs"][t].copy_(obs)
                b["actions"][t].copy_(action)
                b["logprob"][t].copy_(logprob)
                b["values"][t].copy_(value)
                obs, reward = self.env.step(action)
                b["rewards"][t].copy_(reward)
            return self.agent.critic(obs).squeeze(-1)

    def gae(self, next_value: torch.Tensor, gamma: float = 0.99, lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
        b = self.buffers
        advantages = torch.zeros_like(b["rewards"])
        last = torch.zeros_like(next_value)
        for t in reversed(range(self.args.steps)):
            nv = next_value if t == self.args.steps - 1 else b["values"][t + 1]
            delta = b["rewards"][t] + gamma * nv - b["values"][t]
            last = delta + gamma * lam * last
            advantages[t] = last
        return advantages, advantages + b["values"]

    def update(self, advantages: torch.Tensor, returns: torch.Tensor) -> Any:
        a = self.args
        flat = {"obs": self.buffers["obs"].reshape(self.n, -1), "actions": self.buffers["actions"].reshape(self.n, -1),
                "logprob": self.buffers["logprob"].reshape(-1), "values": self.buffers["values"].reshape(-1),
                "advantages": advantages.reshape(-1), "returns": returns.reshape(-1)}
        batch = self.n // a.minibatches
        metrics = None
        for _ in range(a.epochs):
            order = torch.randperm(self.n, device=self.device)
            for m in range(a.minibatches):
                index = order[m * batch:(m + 1) * batch]
                for key, value in flat.items():
                    torch.index_select(value, 0, index, out=self.static[key])
                if self.graph is not None:
                    self.graph.replay()
                    metrics, _ = self.outputs
                else:
                    self.optimizer.zero_grad(set_to_none=True)
                    metrics, _ = self.minibatch_step()
        return metrics


def iteration(trainer: Trainer, it: int, spent: Spent) -> None:
    """One rollout and update; the host time of every telemetry line goes to ``spent`` by label."""
    emitter, groups = trainer.emitter, trainer.groups
    if emitter is None:
        next_value = trainer.rollout()
        trainer.update(*trainer.gae(next_value))
        return
    optimizer_steps = trainer.args.epochs * trainer.args.minibatches
    with spent.on("timers"):
        rollout_timer = emitter.timer("rollout", step=it).start()
    next_value = trainer.rollout()
    with spent.on("timers"):
        rollout_timer.stop()
        update_timer = emitter.timer("update", step=it).start()
    advantages, returns = trainer.gae(next_value)
    if trainer.telemetry == "update":
        with spent.on("head_grad_norms"):
            trainer.accumulated.zero_()
        metrics = trainer.update(advantages, returns)
        with spent.on("head_grad_norms"):
            emitter.head_grad_norms(it, groups, max_norm=MAX_GRAD_NORM, norms=(trainer.accumulated / optimizer_steps).sqrt(),
                                    samples=optimizer_steps)
    else:
        with spent.on("head_grad_norms"):
            trainer.slot.zero_()
        metrics = trainer.update(advantages, returns)
        with spent.on("head_grad_norms"):
            emitter.head_grad_norms(it, groups, max_norm=MAX_GRAD_NORM, norms=trainer.rows)
    with spent.on("timers"):
        update_timer.stop()
    with spent.on("ppo_update"):
        explained = trainer.explained_variance(returns, trainer.buffers["values"])
        emitter.ppo_update(it, **dict(zip(METRICS, metrics.unbind(0))), explained_variance=explained, learning_rate=3e-4)
    with spent.on("flush"):
        emitter.flush()


def replay_us(trainer: Trainer, replays: int = 256) -> float:
    """Device microseconds of one replay of the trainer's update graph, alone (CUDA events around
    ``replays`` back-to-back replays): what the graph's own kernels cost, apart from the host."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    steps = len(trainer.rows)
    trainer.slot.zero_()
    for _ in range(steps):
        trainer.graph.replay()
    start.record()
    for k in range(replays):
        if k % steps == 0:  # the rows hold one update's optimizer steps: start over, as each update does
            trainer.slot.zero_()
        trainer.graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) * 1000.0 / replays


def call_costs(trainer: Trainer, emitter: Emitter, n: int = 300) -> list[tuple[str, float]]:
    """Median host microseconds of each telemetry line alone, on ``trainer`` (any variant with telemetry),
    next to the floor of the device work it must do; the flush with one iteration's readouts pending
    (two timers, the norms, ``ppo_update``), when the GPU has finished them."""
    device, groups, steps = trainer.device, trainer.groups, len(trainer.rows)
    advantages, returns = trainer.gae(trainer.rollout())
    trainer.accumulated.zero_()
    trainer.slot.zero_()
    metrics = trainer.update(advantages, returns)
    sync(device)
    values = trainer.buffers["values"]
    explained = trainer.explained_variance(returns, values)
    scalars = dict(zip(METRICS, metrics.unbind(0)))
    rms = (trainer.accumulated / steps).sqrt()

    def median_us(fn: Any) -> float:
        return median_call_us(fn, emitter, device, n)

    def ppo_update() -> None:
        emitter.ppo_update(0, **scalars, explained_variance=explained, learning_rate=3e-4)

    def flush_us(norms: Any) -> float:
        samples = []
        for _ in range(n // 2):
            emitter.timer("rollout", step=0).start().stop()
            emitter.timer("update", step=0).start().stop()
            emitter.head_grad_norms(0, groups, max_norm=MAX_GRAD_NORM, norms=norms, samples=None if norms.dim() == 2 else steps)
            ppo_update()
            sync(device)
            t0 = time.perf_counter_ns()
            emitter.flush()
            samples.append(time.perf_counter_ns() - t0)
        return statistics.median(samples) / 1000.0

    values_list = [*scalars.values(), explained]
    return [
        ("timer: make, start(), stop()", median_us(lambda: emitter.timer("x", step=0).start().stop())),
        ("explained variance (the trainer's)", median_us(lambda: trainer.explained_variance(returns, values))),
        (f"ppo_update ({len(values_list)} device values, a learning rate)", median_us(ppo_update)),
        (f"floor: one torch.stack of the {len(values_list)}", median_us(lambda: torch.stack(values_list))),
        ("head_grad_norms(norms=rms, samples=...) (per update)", median_us(
            lambda: emitter.head_grad_norms(0, groups, max_norm=MAX_GRAD_NORM, norms=rms, samples=steps))),
        (f"head_grad_norms(norms=rows) ({steps} rows)", median_us(
            lambda: emitter.head_grad_norms(0, groups, max_norm=MAX_GRAD_NORM, norms=trainer.rows))),
        ("flush: one iteration's readouts, one event per update", flush_us(rms)),
        (f"flush: one iteration's readouts, {steps} row events", flush_us(trainer.rows)),
    ]


VARIANTS = {"off": None, "simic": "minibatch", "simic, per update": "update"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = Args()
    parser.add_argument("--envs", type=int, default=defaults.envs, help="environments (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=defaults.rounds, help="interleaved rounds (default: %(default)s)")
    parser.add_argument("--iters", type=int, default=defaults.iters, help="iterations per variant per round (default: %(default)s)")
    parser.add_argument("--eager", action="store_true", help="no torch.compile, no CUDA graph (the CPU path)")
    parser.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    parser.add_argument("--calls", action="store_true", help="also print the host cost of each telemetry line alone")
    parser.add_argument("--quick", action="store_true", help="smoke run: 4 envs, 8 steps, 2 rounds of 1 iteration")
    ns = parser.parse_args(argv)
    args = Args(envs=ns.envs, rounds=ns.rounds, iters=ns.iters, eager=ns.eager)
    if ns.quick:
        args = Args(envs=4, steps=8, epochs=2, minibatches=2, rounds=2, iters=1, warmup=1, eager=ns.eager)
    device = torch.device(ns.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cpu":
        args.eager = True
    torch.manual_seed(args.seed)

    tmp = tempfile.TemporaryDirectory(prefix="simic-bench-")
    endpoint = f"ipc://{tmp.name}/consumer.ipc"
    receiver = DecodingReceiver(endpoint)
    emitter = Emitter(endpoint, run_id="bench-compiled-ppo", heads=("mean", "log_std", "value"),
                      settings=EmitterSettings(exit_hooks=False))

    trainers = {name: Trainer(args, device, None if mode is None else emitter, mode) for name, mode in VARIANTS.items()}
    first = trainers["off"].agent.state_dict()
    for trainer in trainers.values():
        trainer.agent.load_state_dict(first)
    it = 0
    spent = Spent()
    for trainer in trainers.values():
        for _ in range(args.warmup):
            iteration(trainer, it, spent)
            it += 1
    ms: dict[str, list[float]] = {name: [] for name in VARIANTS}
    parts: dict[str, list[dict[str, float]]] = {name: [] for name in VARIANTS}
    names = list(VARIANTS)
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            gc.collect()
            spent.parts.clear()
            sync(device)
            t0 = time.perf_counter()
            for _ in range(args.iters):
                iteration(trainers[name], it, spent)
                it += 1
            sync(device)
            ms[name].append((time.perf_counter() - t0) * 1000.0 / args.iters)
            parts[name].append({k: v / 1e6 / args.iters for k, v in spent.parts.items()})
    graph_us = {name: replay_us(trainer) for name, trainer in trainers.items() if trainer.graph is not None}
    calls = call_costs(trainers["simic, per update"], emitter) if ns.calls else []
    errors = emitter.collector_stats.errors
    emitter.close()
    messages, events, refused = receiver.stop(emitter.stats.sent)

    mode = "eager" if args.eager else "torch.compile + CUDA-graphed update"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"device: {name} (torch {torch.__version__}, Python {platform.python_version()}); {mode}")
    print(f"command: python3 {' '.join(sys.argv)}")
    print(f"workload: {args.envs} envs x {args.steps} steps, update {args.epochs} epochs x {args.minibatches} minibatches "
          f"(one optimizer step each), hidden {args.hidden}; {args.rounds} rounds x {args.iters} iterations per variant, interleaved")
    print()
    print("| variant | median ms / iteration | ratio to off | min .. max ms |")
    print("|---|---:|---:|---:|")
    verdicts = []
    for variant, values in ms.items():
        ratio = statistics.median(v / o for v, o in zip(values, ms["off"]))
        print(f"| {variant} | {statistics.median(values):.2f} | {ratio:.3f}x | {min(values):.2f} .. {max(values):.2f} |")
        if variant != "off":
            verdicts.append(f"{variant} {ratio:.3f}x ({'meets' if ratio <= TARGET else 'misses'} <= {TARGET}x)")
    print()
    print("ratio to off: median over rounds of (variant / off of the same round). target: " + "; ".join(verdicts))
    labels = ("timers", "head_grad_norms", "ppo_update", "flush")
    print()
    print("telemetry host ms per iteration, by line (median over rounds; ppo_update includes computing explained variance):")
    print()
    print("| variant | " + " | ".join(labels) + " | all |")
    print("|---|" + "---:|" * (len(labels) + 1))
    for variant in VARIANTS:
        if variant == "off":
            continue
        by = [statistics.median(p.get(k, 0.0) for p in parts[variant]) for k in labels]
        whole = statistics.median(sum(p.values()) for p in parts[variant])
        print(f"| {variant} | " + " | ".join(f"{v:.3f}" for v in by) + f" | {whole:.3f} |")
    if graph_us:
        print()
        print("one replay of the update graph alone, device us (256 replays back to back): "
              + "; ".join(f"{name} {us:.1f}" for name, us in graph_us.items()))
    if calls:
        print()
        print("| host cost of one line alone (median of calls) | us |")
        print("|---|---:|")
        for label, us in calls:
            print(f"| {label} | {us:.1f} |")
    stats = emitter.stats
    print(f"emitter: produced {stats.produced}, sent {stats.sent}, dropped {stats.dropped}, invalid {stats.invalid}; "
          f"receiver: {messages} messages, {events} events, {refused} refused; collector errors {errors}")
    return 0 if errors == 0 and refused == 0 and stats.dropped == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
