"""GPU overhead of training telemetry on a factored-head LSTM PPO workload.

The workload is a recurrent PPO trainer in the CleanRL ``ppo_atari_lstm`` shape: an MLP encoder,
an LSTM core and five heads (slot, blueprint, blend, op: categorical actions; value), a synthetic
environment that lives on the GPU, a rollout of ``envs x 32`` steps, GAE, then an update of
4 epochs x 4 minibatches (of environments, sequences kept whole, the LSTM re-run over each
sequence batch in one cuDNN call from the state the rollout started with; episode ends inside a
sequence are not reset there, a common simplification), Adam and ``clip_grad_norm_(0.5)``. Its own metrics (losses, KL, clip fraction, ratio
range, per-head entropy, explained variance) are computed on the device in every variant. It does
not sync on its own (``torch.distributions`` argument validation is off, as fast trainers set it).

Variants, measured in one process, interleaved (each round runs every variant, in a rotated order):

- ``off``: the workload only.
- ``seed plan``: the seed plan as written: ``CUDATimer`` around every rollout step (``stop()``
  synchronizes), ``compute_lstm_health`` per environment per step (six ``.item()`` each) with its
  ``is_healthy`` warning check, per-head gradient norms after every ``backward`` (one ``.item()``
  per head), the update's metrics read with ``.item()``; the numbers are sent with ``Emitter.emit``.
  Its warnings go to a log file in a temporary directory, as a trainer's log would.
- ``simic``: every collector on: ``emitter.timer`` for the rollout and update phases;
  ``emitter.lstm_state`` on the state the rollout ends with (all layers, all envs, h and c);
  per-head gradient norms (5 heads + the core, 28 tensors, pre- and post-clip totals) at every
  minibatch through ``emitter.clip_grad_norm_``, which replaces the trainer's own
  ``clip_grad_norm_`` (same clip, the norms measured from the same pass);
  ``emitter.ppo_update`` with the device tensors once per update; ``flush()`` once per iteration.
  Its telemetry host time includes the clip itself, which ``off`` pays too.
- ``simic, norms apart``: as ``simic``, but the norms taken by a separate
  ``emitter.head_grad_norms(..., stage="pre_clip", max_norm=0.5)`` call before torch's own clip
  (a second ``_foreach_norm`` pass over the gradients).
- ``simic dense``: as ``simic``, plus ``lstm_state`` and a ``step`` timer on every rollout step
  (the seed plan's cadence for those two).

Emitting goes to a real ``Emitter`` whose PUSH socket is connected to a PULL socket bound on ``ipc://``
in a temporary directory by a separate receiving process (multiprocessing, spawn) that decodes every
message with ``simic.schemas.decode_message``, as the consumer does.

Reported: median milliseconds per iteration (rollout + GAE + update) over the rounds, each round's
value being the mean of ``--iters`` back-to-back iterations between two ``torch.cuda.synchronize()``
calls; the ratio to ``off`` (median over rounds of variant / off of the same round); the host time
spent inside the telemetry calls (``perf_counter_ns`` around each, ``flush()`` included); then a
table of the host cost of one call of each collector and of its seed-plan twin (median of 200).

    python3 bench/gpu_overhead.py                    # on a CUDA machine, about three minutes
    python3 bench/gpu_overhead.py --quick            # smoke run (works on CPU too)
"""

from __future__ import annotations

import argparse
import gc
import logging
import math
import multiprocessing as mp
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn as nn
from torch.distributions import Categorical

from simic.producer import CUDATimer, Emitter, EmitterSettings, compute_lstm_health

logger = logging.getLogger("bench.seed_plan")

HEADS = ("slot", "blueprint", "blend", "op")
"""Action heads (the value head comes on top)."""
ACTIONS = {"slot": 8, "blueprint": 12, "blend": 4, "op": 5}
"""Choices per action head."""
TARGET = 1.02
"""Target: simic at most this times ``off``."""


@dataclass
class Args:
    envs: tuple[int, ...] = (16, 64)
    """Environment counts to measure."""
    steps: int = 32
    """Rollout length."""
    epochs: int = 4
    """PPO epochs per update."""
    minibatches: int = 4
    """Minibatches (of environments) per epoch."""
    obs_dim: int = 64
    """Observation size."""
    hidden: int = 256
    """Encoder and LSTM width."""
    rounds: int = 21
    """Interleaved rounds (the reported number is the median over them)."""
    iters: int = 3
    """Iterations per variant per round (timed together)."""
    warmup: int = 2
    """Untimed iterations per variant before the first round."""
    device: str = "cuda"
    """Where the trainer runs (``cpu`` only for smoke runs)."""
    seed: int = 1


# -- the environment and the policy ---------------------------------------------------------------


class GpuEnv:
    """A synthetic vectorised environment on the device: obs_{t+1} = tanh(obs_t W + effect(actions) + noise)."""

    def __init__(self, envs: int, obs_dim: int, device: torch.device) -> None:
        self.w = torch.randn(obs_dim, obs_dim, device=device) / math.sqrt(obs_dim)
        self.effects = [torch.randn(n, obs_dim, device=device) * 0.3 for n in ACTIONS.values()]
        self.obs = torch.randn(envs, obs_dim, device=device)
        self.envs = envs

    def step(self, actions: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        effect = sum(table[a] for table, a in zip(self.effects, actions))
        self.obs = torch.tanh(self.obs @ self.w + effect + 0.1 * torch.randn_like(self.obs))
        reward = self.obs[:, 0] - 0.1 * self.obs[:, 1].abs()
        done = (torch.rand(self.envs, device=self.obs.device) < 0.02).float()
        return self.obs, reward, done


def head(hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(hidden, hidden // 2), nn.Tanh(), nn.Linear(hidden // 2, out))


class FactoredPolicy(nn.Module):
    """Encoder -> LSTM -> heads slot, blueprint, blend, op (categorical) and value."""

    def __init__(self, obs_dim: int, hidden: int) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(obs_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.lstm = nn.LSTM(hidden, hidden)
        self.slot_head = head(hidden, ACTIONS["slot"])
        self.blueprint_head = head(hidden, ACTIONS["blueprint"])
        self.blend_head = head(hidden, ACTIONS["blend"])
        self.op_head = head(hidden, ACTIONS["op"])
        self.value_head = head(hidden, 1)
        self.action_heads = [self.slot_head, self.blueprint_head, self.blend_head, self.op_head]

    def core(self, obs: torch.Tensor, state, reset: torch.Tensor):
        """One step for all envs: obs (E, obs_dim), reset (E,) 1.0 where the env just restarted."""
        keep = (1.0 - reset).view(1, -1, 1)
        out, state = self.lstm(self.encoder(obs).unsqueeze(0), (state[0] * keep, state[1] * keep))
        return out[0], state


# -- one training iteration -------------------------------------------------------------------------


class Trainer:
    """Rollout + GAE + update, with telemetry hooks for each variant."""

    def __init__(self, args: Args, envs: int, device: torch.device) -> None:
        self.args = args
        self.device = device
        self.envs = envs
        self.env = GpuEnv(envs, args.obs_dim, device)
        self.policy = FactoredPolicy(args.obs_dim, args.hidden).to(device)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=2.5e-4, eps=1e-5)
        h = torch.zeros(1, envs, args.hidden, device=device)
        self.state = (h, h.clone())
        self.reset = torch.zeros(envs, device=device)
        T = args.steps
        self.obs = torch.zeros(T, envs, args.obs_dim, device=device)
        self.actions = torch.zeros(T, envs, len(HEADS), dtype=torch.long, device=device)
        self.logprobs = torch.zeros(T, envs, device=device)
        self.values = torch.zeros(T, envs, device=device)
        self.rewards = torch.zeros(T, envs, device=device)
        self.resets = torch.zeros(T, envs, device=device)
        self.next_resets = torch.zeros(T, envs, device=device)

    def rollout(self, step_hook: Callable[[int, Any], None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        policy = self.policy
        self.initial_state = (self.state[0].clone(), self.state[1].clone())
        obs = self.env.obs
        with torch.no_grad():
            for t in range(self.args.steps):
                if step_hook is not None:
                    step_hook(t, "start")
                self.obs[t] = obs
                self.resets[t] = self.reset
                z, self.state = policy.core(obs, self.state, self.reset)
                dists = [Categorical(logits=h(z)) for h in policy.action_heads]
                actions = [d.sample() for d in dists]
                self.logprobs[t] = sum(d.log_prob(a) for d, a in zip(dists, actions))
                self.values[t] = policy.value_head(z).squeeze(-1)
                self.actions[t] = torch.stack(actions, dim=-1)
                obs, reward, self.reset = self.env.step(actions)
                self.rewards[t] = reward
                self.next_resets[t] = self.reset
                if step_hook is not None:
                    step_hook(t, "end")
            z, _ = policy.core(obs, self.state, self.reset)
            next_value = policy.value_head(z).squeeze(-1)
        return next_value, self.state

    def gae(self, next_value: torch.Tensor, gamma: float = 0.99, lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
        advantages = torch.zeros_like(self.rewards)
        last = torch.zeros_like(next_value)
        for t in reversed(range(self.args.steps)):
            value_next = next_value if t == self.args.steps - 1 else self.values[t + 1]
            nonterminal = 1.0 - self.next_resets[t]
            delta = self.rewards[t] + gamma * value_next * nonterminal - self.values[t]
            last = delta + gamma * lam * nonterminal * last
            advantages[t] = last
        return advantages, advantages + self.values

    def update(self, advantages: torch.Tensor, returns: torch.Tensor, grad_hook: Callable[[], None] | None = None,
               clip_grads: Callable[[], Any] | None = None) -> dict[str, torch.Tensor]:
        """4 epochs x 4 minibatches; ``grad_hook`` runs after each backward, ``clip_grads`` replaces the clip."""
        args, policy = self.args, self.policy
        per_mb = self.envs // args.minibatches
        clip = 0.2
        metrics: dict[str, torch.Tensor] = {}
        for _ in range(args.epochs):
            order = torch.randperm(self.envs, device=self.device)
            for k in range(args.minibatches):
                mb = order[k * per_mb : (k + 1) * per_mb]
                keep = (1.0 - self.resets[0, mb]).view(1, -1, 1)
                state = (self.initial_state[0][:, mb] * keep, self.initial_state[1][:, mb] * keep)
                out, _ = policy.lstm(policy.encoder(self.obs[:, mb]), state)  # one cuDNN call per sequence batch
                z = out.reshape(-1, out.shape[-1])
                dists = [Categorical(logits=h(z)) for h in policy.action_heads]
                acts = self.actions[:, mb].reshape(-1, len(HEADS))
                newlogp = sum(d.log_prob(acts[:, i]) for i, d in enumerate(dists))
                entropies = [d.entropy().mean() for d in dists]
                newvalue = policy.value_head(z).squeeze(-1)
                logratio = newlogp - self.logprobs[:, mb].reshape(-1)
                ratio = logratio.exp()
                adv = advantages[:, mb].reshape(-1)
                adv = (adv - adv.mean()) / (adv.std() + 1e-8)
                pg_loss = torch.max(-adv * ratio, -adv * ratio.clamp(1 - clip, 1 + clip)).mean()
                v_loss = 0.5 * ((newvalue - returns[:, mb].reshape(-1)) ** 2).mean()
                entropy = sum(entropies)
                loss = pg_loss - 0.01 * entropy + 0.5 * v_loss
                self.optimizer.zero_grad()
                loss.backward()
                if grad_hook is not None:
                    grad_hook()
                if clip_grads is None:
                    nn.utils.clip_grad_norm_(policy.parameters(), 0.5)
                else:
                    clip_grads()
                self.optimizer.step()
                with torch.no_grad():
                    metrics = {
                        "policy_loss": pg_loss.detach(),
                        "value_loss": v_loss.detach(),
                        "approx_kl": ((ratio - 1) - logratio).mean(),
                        "clip_fraction": ((ratio - 1.0).abs() > clip).float().mean(),
                        "ratio_min": ratio.min(),
                        "ratio_max": ratio.max(),
                        "entropy": {name: e.detach() for name, e in zip(HEADS, entropies)},
                    }
        with torch.no_grad():
            y, v = returns.flatten(), self.values.flatten()
            metrics["explained_variance"] = 1 - (y - v).var() / y.var()
        return metrics


# -- the variants ----------------------------------------------------------------------------------


class Spent:
    """Host time spent in telemetry calls (``with spent:`` around each, or ``with spent.on("label"):`` to
    also count it under a label), in nanoseconds."""

    def __init__(self) -> None:
        self.ns = 0
        self.parts: dict[str, int] = {}
        self._t0 = 0
        self._label: str | None = None

    def on(self, label: str) -> "Spent":
        self._label = label
        return self

    def __enter__(self) -> None:
        self._t0 = time.perf_counter_ns()

    def __exit__(self, *exc: object) -> None:
        spent = time.perf_counter_ns() - self._t0
        self.ns += spent
        if self._label is not None:
            self.parts[self._label] = self.parts.get(self._label, 0) + spent
            self._label = None


def iteration_off(trainer: Trainer, it: int, emitter: Emitter, spent: Spent) -> None:
    next_value, _ = trainer.rollout()
    advantages, returns = trainer.gae(next_value)
    trainer.update(advantages, returns)


def iteration_seed(trainer: Trainer, it: int, emitter: Emitter, spent: Spent) -> None:
    """The seed plan as written: synchronous timer, per-env LSTM health, per-head .item() norms."""
    policy = trainer.policy
    with spent:
        step_timer = CUDATimer(str(trainer.device))
    throughput_step_time_ms_sum = 0.0

    def step_hook(t: int, where: str) -> None:
        nonlocal throughput_step_time_ms_sum
        with spent:
            if where == "start":
                step_timer.start()
                return
            throughput_step_time_ms_sum += step_timer.stop()
            h, c = trainer.state
            for env_idx in range(trainer.envs):
                lstm_health = compute_lstm_health((h[:, env_idx], c[:, env_idx]))
                if lstm_health and not lstm_health.is_healthy():
                    logger.warning(f"Env {env_idx}: LSTM unhealthy - h_norm={lstm_health.h_norm:.2f}, "
                                   f"c_norm={lstm_health.c_norm:.2f}, nan={lstm_health.has_nan}")

    head_grad_norms: dict[str, list[float]] = {head: [] for head in HEADS + ("value",)}

    def grad_hook() -> None:
        with spent, torch.inference_mode():
            for head_name, head_module in [
                ("slot", policy.slot_head),
                ("blueprint", policy.blueprint_head),
                ("blend", policy.blend_head),
                ("op", policy.op_head),
                ("value", policy.value_head),
            ]:
                params_with_grad = [p for p in head_module.parameters() if p.grad is not None]
                if params_with_grad:
                    grad_norm = torch.linalg.vector_norm(
                        torch.stack([torch.linalg.vector_norm(p.grad) for p in params_with_grad])
                    ).item()
                else:
                    grad_norm = 0.0
                head_grad_norms[head_name].append(grad_norm)

    next_value, _ = trainer.rollout(step_hook)
    advantages, returns = trainer.gae(next_value)
    metrics = trainer.update(advantages, returns, grad_hook)
    with spent:
        emitter.emit("step_timing", step=it, phases_ms={"rollout_steps": throughput_step_time_ms_sum},
                     clock="cuda_event" if step_timer.use_cuda else "cpu")
        emitter.emit("head_grad_norms", step=it, norms={h: sum(v) / len(v) for h, v in head_grad_norms.items() if v})
        emitter.emit("ppo_update", step=it, **{
            k: ({h: e.item() for h, e in v.items()} if isinstance(v, dict) else v.item()) for k, v in metrics.items()
        })
        emitter.flush()


def make_iteration_simic(dense: bool, fused: bool = True) -> Callable[[Trainer, int, Emitter, Spent], None]:
    groups_of: dict[int, Any] = {}

    def iteration_simic(trainer: Trainer, it: int, emitter: Emitter, spent: Spent) -> None:
        policy = trainer.policy
        with spent.on("timers"):
            groups = groups_of.get(id(trainer))
            if groups is None:
                groups = groups_of[id(trainer)] = emitter.head_groups(
                    {"slot": policy.slot_head, "blueprint": policy.blueprint_head, "blend": policy.blend_head,
                     "op": policy.op_head, "value": policy.value_head,
                     "core": [*policy.encoder.parameters(), *policy.lstm.parameters()]},
                    params=policy.parameters(),
                )
            step_timer = emitter.timer("step", step=it) if dense else None
            rollout_timer = emitter.timer("rollout", step=it).start()

        def step_hook(t: int, where: str) -> None:
            if where == "start":
                with spent.on("timers"):
                    step_timer.start()
            else:
                with spent.on("timers"):
                    step_timer.stop()
                with spent.on("lstm_state"):
                    emitter.lstm_state(it, trainer.state)

        def grad_hook() -> None:
            with spent.on("head_grad_norms"):
                emitter.head_grad_norms(it, groups, stage="pre_clip", max_norm=0.5)

        def clip() -> None:
            with spent.on("clip_grad_norm_"):
                emitter.clip_grad_norm_(it, groups, 0.5)

        next_value, state = trainer.rollout(step_hook if dense else None)
        with spent.on("timers"):
            rollout_timer.stop()
        if not dense:
            with spent.on("lstm_state"):
                emitter.lstm_state(it, state)
        with spent.on("timers"):
            update_timer = emitter.timer("update", step=it).start()
        advantages, returns = trainer.gae(next_value)
        metrics = trainer.update(advantages, returns, None if fused else grad_hook, clip if fused else None)
        with spent.on("timers"):
            update_timer.stop()
        with spent.on("ppo_update"):
            emitter.ppo_update(it, learning_rate=trainer.optimizer.param_groups[0]["lr"], **metrics)
        with spent.on("flush"):
            emitter.flush()

    return iteration_simic


VARIANTS: dict[str, Callable[[Trainer, int, Emitter, Spent], None]] = {
    "off": iteration_off,
    "seed plan": iteration_seed,
    "simic": make_iteration_simic(dense=False),
    "simic, norms apart": make_iteration_simic(dense=False, fused=False),
    "simic dense": make_iteration_simic(dense=True),
}


# -- the receiving process ------------------------------------------------------------------------


def receiver_main(endpoint: str, conn: Any) -> None:
    """Bind PULL on ``endpoint``, say ready, decode every message; when sent the number of events to
    expect, stop once they have all arrived (or 5 s later) and reply the counts."""
    import zmq

    from simic.schemas import decode_message

    context = zmq.Context()
    sock = context.socket(zmq.PULL)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(endpoint)
    conn.send("ready")
    messages = events = errors = 0
    expected, deadline = None, 0.0
    while expected is None or (events < expected and time.monotonic() < deadline):
        if sock.poll(50):
            while True:
                try:
                    data = sock.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                decoded = decode_message(data)
                messages += 1
                events += len(decoded.events)
                errors += len(decoded.errors)
        if expected is None and conn.poll():
            expected, deadline = conn.recv(), time.monotonic() + 5.0
    conn.send((messages, events, errors))
    sock.close()
    context.term()


class DecodingReceiver:
    """A separate process that receives and decodes every message sent to ``endpoint`` (what reading
    them costs a consumer stays off the measured process), ready when made."""

    def __init__(self, endpoint: str) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=receiver_main, args=(endpoint, child), daemon=True)
        self.process.start()
        assert self.conn.recv() == "ready"

    def stop(self, sent: int) -> tuple[int, int, int]:
        """Wait for the ``sent`` events (at most 5 s), stop; return (messages, events, refused) received."""
        self.conn.send(sent)
        counts = self.conn.recv()
        self.process.join(5)
        return counts


# -- measurement ------------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Result:
    ms: list[float]
    """Per round: mean milliseconds per iteration."""
    telemetry_ms: list[float]
    """Per round: host milliseconds spent inside telemetry calls, per iteration."""
    parts_ms: list[dict[str, float]]
    """Per round: those milliseconds by call (label), per iteration."""


def measure(args: Args, envs: int, device: torch.device, emitter: Emitter) -> tuple[dict[str, Result], dict[str, Trainer]]:
    torch.manual_seed(args.seed)
    trainers = {name: Trainer(args, envs, device) for name in VARIANTS}
    for name, trainer in trainers.items():  # same weights everywhere
        trainer.policy.load_state_dict(trainers["off"].policy.state_dict())
    it = 0
    for name, run in VARIANTS.items():
        for _ in range(args.warmup):
            run(trainers[name], it, emitter, Spent())
            it += 1
    results = {name: Result([], [], []) for name in VARIANTS}
    names = list(VARIANTS)
    for r in range(args.rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            run, trainer, spent = VARIANTS[name], trainers[name], Spent()
            gc.collect()
            sync(device)
            t0 = time.perf_counter()
            for _ in range(args.iters):
                run(trainer, it, emitter, spent)
                it += 1
            sync(device)
            results[name].ms.append((time.perf_counter() - t0) * 1000.0 / args.iters)
            results[name].telemetry_ms.append(spent.ns / 1e6 / args.iters)
            results[name].parts_ms.append({k: v / 1e6 / args.iters for k, v in spent.parts.items()})
    return results, trainers


def median_call_us(fn: Callable[[], Any], emitter: Emitter, device: torch.device, n: int, flush_every: int = 16) -> float:
    """Median host microseconds of ``n`` calls of ``fn``; every ``flush_every`` calls the GPU is waited
    for and ``emitter`` flushed (outside the timing), so readouts never pile up."""
    samples = []
    for i in range(n):
        t0 = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - t0)
        if i % flush_every == flush_every - 1:
            sync(device)
            emitter.flush()
    sync(device)
    emitter.flush()
    return statistics.median(samples) / 1000.0


def per_call_costs(trainer: Trainer, emitter: Emitter, device: torch.device, n: int = 200) -> list[tuple[str, float]]:
    """Median host microseconds of one call of each collector (and its seed-plan twin), on ``trainer``."""
    policy = trainer.policy
    next_value, state = trainer.rollout()
    advantages, returns = trainer.gae(next_value)
    captured: dict[str, Any] = {}

    def keep_grads() -> None:
        captured["grads"] = True

    metrics = trainer.update(advantages, returns, keep_grads)  # grads of the last minibatch stay in .grad
    groups = emitter.head_groups(
        {"slot": policy.slot_head, "blueprint": policy.blueprint_head, "blend": policy.blend_head, "op": policy.op_head,
         "value": policy.value_head, "core": [*policy.encoder.parameters(), *policy.lstm.parameters()]},
        params=policy.parameters(),
    )
    timer = emitter.timer("t", step=0)

    def median_us(fn: Callable[[], Any]) -> float:
        return median_call_us(fn, emitter, device, n)

    def timer_pair() -> None:
        timer.start()
        timer.stop()

    seed_timer = CUDATimer(str(device))

    def seed_timer_pair() -> None:
        seed_timer.start()
        seed_timer.stop()

    def seed_heads() -> None:
        with torch.inference_mode():
            for head_module in (policy.slot_head, policy.blueprint_head, policy.blend_head, policy.op_head, policy.value_head):
                params_with_grad = [p for p in head_module.parameters() if p.grad is not None]
                torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params_with_grad])).item()

    def flush_cost(submit: Callable[[], None], k: int = 16) -> float:
        """Per readout: the flush that seals k readouts plus the flush that turns them into events."""
        samples = []
        for _ in range(max(4, n // k)):
            for _ in range(k):
                submit()
            t0 = time.perf_counter_ns()
            emitter.flush()  # seals the batch
            sealing = time.perf_counter_ns() - t0
            sync(device)
            t0 = time.perf_counter_ns()
            emitter.flush()  # resolves it
            samples.append((sealing + time.perf_counter_ns() - t0) / k)
        return statistics.median(samples) / 1000.0

    h, c = state
    floors = floor_calls(policy, state, metrics, device) if device.type == "cuda" else {}
    rows = [
        ("timer start()+stop()", median_us(timer_pair), "timer"),
        ("lstm_state (all envs)", median_us(lambda: emitter.lstm_state(0, state)), "lstm_state"),
        ("head_grad_norms (6 heads, 28 tensors)", median_us(lambda: emitter.head_grad_norms(0, groups, stage="pre_clip", max_norm=0.5)), "head_grad_norms"),
        ("head_grad_norms with count_nonfinite=True",
         median_us(lambda: emitter.head_grad_norms(0, groups, stage="pre_clip", max_norm=0.5, count_nonfinite=True)), None),
        ("clip_grad_norm_ (clip + 6 heads' norms, 28 tensors)", median_us(lambda: emitter.clip_grad_norm_(0, groups, 1e9)), "clip_grad_norm_"),
        ("torch's clip_grad_norm_ (what the line above replaces)", median_us(lambda: nn.utils.clip_grad_norm_(policy.parameters(), 1e9)), None),
        ("ppo_update (8 device values)", median_us(lambda: emitter.ppo_update(0, **metrics)), "ppo_update"),
        ("flush (seal + resolve + emit), per head_grad_norms readout", flush_cost(lambda: emitter.head_grad_norms(0, groups, stage="pre_clip", max_norm=0.5)), "flush"),
        ("flush (seal + resolve + emit), per clip_grad_norm_ readout", flush_cost(lambda: emitter.clip_grad_norm_(0, groups, 1e9)), "flush"),
        ("flush (seal + resolve + emit), per lstm_state readout", flush_cost(lambda: emitter.lstm_state(0, state)), "flush"),
        ("seed plan: CUDATimer start()+stop()", median_us(seed_timer_pair), None),
        ("seed plan: compute_lstm_health (one env)", median_us(lambda: compute_lstm_health((h[:, 0], c[:, 0]))), None),
        ("seed plan: per-head norms (5 heads, .item() each)", median_us(seed_heads), None),
    ]
    return [(name, us, None if floor is None else floors.get(floor)) for name, us, floor in rows]


def floor_calls(policy: nn.Module, state: Any, metrics: dict[str, Any], device: torch.device, n: int = 200) -> dict[str, float]:
    """The floor under each collector: the same device work written by hand (its kernels, no bookkeeping),
    median host microseconds of one call. For the flush: per readout of 16, one cat into a staging
    buffer, one non-blocking copy into pinned memory, one event, then the query and the read of the row."""
    grads = [p.grad for p in policy.parameters()]
    h, c = state
    inf = float("inf")
    pair = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
    values = [v for v in metrics.values() if isinstance(v, torch.Tensor)]
    stage = torch.empty(4096, device=device)
    row = torch.empty(4096, pin_memory=True)
    landed = torch.cuda.Event()

    def median_us(fn: Callable[[], Any]) -> float:
        samples = []
        for i in range(n):
            t0 = time.perf_counter_ns()
            fn()
            samples.append(time.perf_counter_ns() - t0)
            if i % 16 == 15:
                sync(device)
        sync(device)
        return statistics.median(samples) / 1000.0

    def timer() -> None:
        pair[0].record()
        pair[1].record()

    def lstm_state() -> None:
        with torch.no_grad():
            x = torch.stack((h, c))
            torch.linalg.vector_norm(x, 2, dim=(2, 3), dtype=torch.float32)
            torch.linalg.vector_norm(x, 2, dim=(1, 3), dtype=torch.float32).amax(1)
            torch.linalg.vector_norm(torch.nan_to_num(x, nan=0.0, posinf=inf, neginf=-inf), inf, dim=(1, 2, 3))

    def norms() -> None:
        torch.stack(torch._foreach_norm(grads, 2))

    def clip() -> None:
        with torch.no_grad():
            flat = torch.stack(torch._foreach_norm(grads, 2))
            total = torch.linalg.vector_norm(flat, 2)
            torch._foreach_mul_(grads, torch.clamp(1e9 / (total + 1e-6), max=1.0))

    def ppo() -> None:
        torch.stack(values)

    vectors = [torch.stack(torch._foreach_norm(grads, 2)) for _ in range(16)]
    used = sum(v.numel() for v in vectors)

    def flush_per_readout() -> float:
        samples = []
        for _ in range(max(4, n // 16)):
            t0 = time.perf_counter_ns()
            torch.cat(vectors, out=stage[:used])
            row[:used].copy_(stage[:used], non_blocking=True)
            landed.record()
            sealing = time.perf_counter_ns() - t0
            sync(device)
            t0 = time.perf_counter_ns()
            if landed.query():
                row[:used].tolist()
            samples.append((sealing + time.perf_counter_ns() - t0) / 16)
        return statistics.median(samples) / 1000.0

    return {"timer": median_us(timer), "lstm_state": median_us(lstm_state), "head_grad_norms": median_us(norms),
            "clip_grad_norm_": median_us(clip), "ppo_update": median_us(ppo), "flush": flush_per_readout()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = Args()
    parser.add_argument("--envs", type=int, nargs="+", default=list(defaults.envs), help="environment counts (default: 16 64)")
    parser.add_argument("--rounds", type=int, default=defaults.rounds, help="interleaved rounds (default: %(default)s)")
    parser.add_argument("--iters", type=int, default=defaults.iters, help="iterations per variant per round (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=defaults.warmup, help="untimed iterations per variant (default: %(default)s)")
    parser.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    parser.add_argument("--no-calls", action="store_true", help="skip the per-call host cost table")
    parser.add_argument("--quick", action="store_true", help="smoke run: 8 envs, 8 steps, 2 rounds of 1 iteration")
    ns = parser.parse_args(argv)
    device = torch.device(ns.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    args = Args(envs=tuple(ns.envs), rounds=ns.rounds, iters=ns.iters, warmup=ns.warmup, device=str(device))
    if ns.quick:
        args = Args(envs=(8,), steps=8, epochs=2, minibatches=2, hidden=64, rounds=2, iters=1, warmup=1, device=str(device))
    torch.distributions.Distribution.set_default_validate_args(False)  # validation syncs (bool(tensor))
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"

    tmp = tempfile.mkdtemp(prefix="simic-bench-")
    # The seed plan's warnings go where a trainer's log goes: a file, not this table.
    logger.addHandler(logging.FileHandler(os.path.join(tmp, "trainer.log")))
    logger.propagate = False
    endpoint = f"ipc://{tmp}/consumer.ipc"
    receiver = DecodingReceiver(endpoint)
    emitter = Emitter(endpoint, run_id="bench-gpu-overhead", device=device_name, heads=HEADS + ("value",),
                      settings=EmitterSettings(exit_hooks=False))

    results: dict[int, dict[str, Result]] = {}
    calls: list[tuple[str, float, float | None]] = []
    for envs in args.envs:
        results[envs], trainers = measure(args, envs, device, emitter)
        if not ns.no_calls and envs == max(args.envs):
            calls = per_call_costs(trainers["simic"], emitter, device, n=20 if ns.quick else 200)
    emitter.close()
    messages, events, errors = receiver.stop(emitter.stats.sent)

    print(f"device: {device_name} (torch {torch.__version__}, Python {platform.python_version()})")
    print(f"command: python3 {' '.join(sys.argv)}")
    print(f"workload: rollout envs x {args.steps} steps, update {args.epochs} epochs x {args.minibatches} minibatches, "
          f"hidden {args.hidden}; {args.rounds} rounds x {args.iters} iterations per variant, interleaved")
    print()
    print("| envs | variant | median ms / iteration | ratio to off | telemetry host ms / iteration | min .. max ms |")
    print("|---:|---|---:|---:|---:|---:|")
    verdicts = []
    for envs, per_variant in results.items():
        off = per_variant["off"].ms
        for name, result in per_variant.items():
            ratio = statistics.median(v / o for v, o in zip(result.ms, off))
            tele = statistics.median(result.telemetry_ms)
            print(f"| {envs} | {name} | {statistics.median(result.ms):.2f} | {ratio:.3f}x | "
                  f"{'-' if name == 'off' else f'{tele:.3f}'} | {min(result.ms):.2f} .. {max(result.ms):.2f} |")
        for name in ("simic", "simic dense"):
            ratio = statistics.median(v / o for v, o in zip(per_variant[name].ms, off))
            verdicts.append(f"{envs} envs: {name} {ratio:.3f}x ({'meets' if ratio <= TARGET else 'misses'} <= {TARGET}x)")
    print()
    print("telemetry host ms per iteration, by call (median over rounds):")
    print()
    labels = ("timers", "lstm_state", "head_grad_norms", "clip_grad_norm_", "ppo_update", "flush")
    print("| envs | variant | " + " | ".join(labels) + " |")
    print("|---:|---|" + "---:|" * len(labels))
    for envs, per_variant in results.items():
        for name, result in per_variant.items():
            if result.parts_ms and any(result.parts_ms):
                cells = [statistics.median(p.get(label, 0.0) for p in result.parts_ms) for label in labels]
                print(f"| {envs} | {name} | " + " | ".join(f"{v:.2f}" for v in cells) + " |")
    print()
    print("ratio to off: median over rounds of (variant / off of the same round).")
    print("target: " + "; ".join(verdicts))
    if calls:
        print()
        print(f"host cost per call ({max(args.envs)} envs, median of the calls, microseconds; the floor is the same "
              "device work written by hand, see floor_calls):")
        print()
        print("| call | us | floor us | over the floor |")
        print("|---|---:|---:|---:|")
        for name, us, floor in calls:
            print(f"| {name} | {us:.1f} | " + ("- | - |" if floor is None else f"{floor:.1f} | {us - floor:+.1f} |"))
    stats = emitter.stats
    print()
    print(f"emitter: produced {stats.produced}, sent {stats.sent}, dropped {stats.dropped}, invalid {stats.invalid}; "
          f"receiver: {messages} messages, {events} events, {errors} refused")
    print(f"collectors: {emitter.collector_stats.as_dict()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
