"""sb3_recurrent_ppo.py's RecurrentPPO with injected faults: the SB3 trainer of the detection benchmark.

The model, the task and the telemetry are sb3_recurrent_ppo.py's (``make_model``, ``RecallEnv``,
one ``SimicCallback`` as a user adds it). What this file adds is a ``FaultCallback`` beside it,
``model.learn(..., callback=[SimicCallback(...), FaultCallback(...)])``, which injects one fault
through SB3's public callback hooks and torch's hooks (nothing in SB3 or torch is patched; look for
"# FAULT INJECTION:"), a progress line every few updates, and the command line bench/detection.py
speaks. With no ``--fault`` there is no FaultCallback: a healthy run trains as the example does.
About 10 s for 100 updates (8 environments x 32 steps, minibatches of 64, 4 epochs) on one CPU
core; the return goes from about 2.3 (a random policy) towards 8.

    python examples/sb3_detection.py --spawn-consumer --telemetry-dir runs/sb3/telemetry
    python examples/sb3_detection.py --spawn-consumer --fault head_grad_scale --fault-at 40

**Updates and steps.** ``--fault-at K`` counts updates from 1: update u is the u-th ``train()``
call and the rollout that feeds it. SimicCallback numbers steps from 0, so every event of update u
carries step u - 1, and a fault with onset K shows from step K - 1 on.

**The faults** (from update K on, each the same size and meaning as in ppo_lstm.py):

- ``nan_lstm``: at rollout K's last step, environment 0's actor LSTM state (h and c) becomes NaN:
  a forward hook on ``policy.lstm_actor`` (put before any other, so SimicCallback's ``lstm_health``
  of step K - 1 reports the NaN) returns the modified state, once. Update K trains on the rollout as
  collected; rollout K + 1 starts from the NaN state, the actor's logits are NaN and the action
  distribution refuses them: the trainer dies, as a real one would.
- ``head_grad_scale`` (x10), ``slow_drift`` (x1.25^(u - K + 1) at update u), ``dead_head`` (x0):
  the gradient of ``--fault-head``'s rows of the shared ``action_net`` (weight and bias) is scaled
  by tensor hooks (``register_hook``), so before it is accumulated, measured and clipped.
- ``lr_spike`` (x100): the model's learning-rate schedule (``model.lr_schedule``, the function SB3
  made from ``learning_rate``; ``load(custom_objects=...)`` replaces it the same way) is multiplied.
  SB3 sets the optimizer's rate from it at the start of every ``train()`` and logs it, so the
  logged ``train/learning_rate`` shows the spike, as ppo_lstm.py's logged rate does.
- ``lr_ramp`` (x1.15^(u - K + 1) at update u): an optimizer step pre-hook multiplies the rate SB3
  has just set, at the first optimizer step of each ``train()``; SB3 sets it afresh at the next.
  The schedule, so ``train/learning_rate`` and ``ppo_update``'s ``learning_rate``, is untouched;
  the rate the optimizer holds (SimicCallback's ``optimizer/lr`` metric) is the ramped one.
- ``slow_phase`` (250 ms): a sleep in ``on_rollout_end``, after SimicCallback's (the list's order),
  which has started the ``train`` phase there: update u's train phase is 250 ms longer.
- ``hang``: SimicCallback sends update K's events at the first environment step of rollout K + 1;
  right after it (the list's order) the trainer sleeps, alive and silent, for ``--hang-seconds``
  (default: for ever), then goes on. The sleep lies inside rollout K + 1's timed phase.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import math
import os
import sys
import time
import typing
from dataclasses import dataclass
from typing import Literal, Optional

import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sb3_recurrent_ppo import SUB_ACTIONS, make_model  # noqa: E402  the example's model and task
from sb3_recurrent_ppo import Args as ExampleArgs  # noqa: E402

from simic.producer.integrations.sb3 import SimicCallback  # noqa: E402

FAULT_VALUE = {"head_grad_scale": 10.0, "lr_spike": 100.0, "slow_drift": 1.25, "slow_phase": 250.0, "lr_ramp": 1.15}
"""The size of each fault when --fault-value is not given (see Args.fault_value)."""
GRADIENT_FAULTS = ("head_grad_scale", "slow_drift", "dead_head")


@dataclass
class Args:
    seed: int = 1
    """seed of the model and the environments"""
    device: str = "cpu"
    """torch device of the policy: cpu, cuda or cuda:N"""
    threads: int = 1
    """torch intra-op threads on the CPU (a policy this small runs fastest on one; 0: torch's default)"""
    updates: int = 100
    """number of PPO updates (train() calls)"""
    n_envs: int = 8
    """number of environments"""
    n_steps: int = 32
    """environment steps per environment per rollout"""
    batch_size: int = 64
    """minibatch size (of n_envs * n_steps samples per epoch)"""
    n_epochs: int = 4
    """epochs over the rollout per update"""
    print_every: int = 10
    """print one progress line every this many updates"""

    # Telemetry arguments (simic)
    endpoint: Optional[str] = None
    """where simic-consumer listens (ipc:///path or tcp://127.0.0.1:PORT); default: $SIMIC_ENDPOINT, telemetry off when neither is set"""
    spawn_consumer: bool = False
    """start a simic-consumer sidecar for this run when none listens at --endpoint (stopped when training ends)"""
    telemetry_dir: str = "simic-logs"
    """log directory of the sidecar started by --spawn-consumer"""
    run_id: Optional[str] = None
    """the run's name in the telemetry (default: $SIMIC_RUN_ID, else one made from host, pid and time)"""

    # Fault injection (for demos and the detection benchmark)
    fault: Optional[Literal["nan_lstm", "head_grad_scale", "lr_spike", "slow_drift", "dead_head", "slow_phase", "hang", "lr_ramp"]] = None
    """the fault to inject (default: none, a healthy run)"""
    fault_at: int = 30
    """the update (counted from 1) at which the fault starts: its onset; its events carry step fault_at - 1"""
    fault_head: str = SUB_ACTIONS[1]
    """the sub-action whose rows of action_net head_grad_scale, slow_drift and dead_head act on"""
    fault_value: Optional[float] = None
    """the fault's size: head_grad_scale factor (10), lr_spike factor (100), slow_drift growth per update (1.25), slow_phase ms (250), lr_ramp growth per update (1.15)"""
    hang_seconds: Optional[float] = None
    """how long `hang` stops the trainer, alive but silent, before it goes on (default: for ever)"""


def parse_args(cls=Args, argv=None):
    """One --flag per Args field (underscores become dashes), the field's docstring as its help (as in ppo_lstm.py)."""
    body = ast.parse(inspect.getsource(cls)).body[0].body
    docs = {a.target.id: b.value.value for a, b in zip(body, body[1:]) if isinstance(a, ast.AnnAssign) and isinstance(b, ast.Expr)}
    hints = typing.get_type_hints(cls)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for field in dataclasses.fields(cls):
        kind = hints[field.name]
        if typing.get_origin(kind) is typing.Union:  # Optional[X]
            kind = next(k for k in typing.get_args(kind) if k is not type(None))
        flag, help_ = "--" + field.name.replace("_", "-"), docs.get(field.name)
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=field.default, help=help_)
        elif typing.get_origin(kind) is Literal:
            parser.add_argument(flag, choices=typing.get_args(kind), default=field.default, help=help_)
        else:
            parser.add_argument(flag, type=kind, default=field.default, help=help_)
    return cls(**vars(parser.parse_args(argv)))


class FaultCallback(BaseCallback):
    """Injects one fault from update ``at`` on (updates counted from 1), through SB3's callback hooks and torch's hooks.

    Put it after SimicCallback in the callback list: SB3 calls the list in order, so at each hook
    SimicCallback has already started or stopped its phase timers and sent what it sends there.
    """

    def __init__(self, fault: str, at: int, value: float | None, head: str, hang_seconds: float | None) -> None:
        super().__init__()
        self.fault, self.at, self.value, self.head, self.hang_seconds = fault, at, value, head, hang_seconds
        self.update = 0  # the update whose rollout runs now, or whose train() comes next
        self.rollout_step = 0  # environment steps of this rollout so far
        self.rows: slice | None = None  # the faulted sub-action's rows of action_net
        self.grad_scale: float | None = None  # what the head's gradient rows are multiplied by in this update's train()
        self.lr_factor: float | None = None  # what the first optimizer step of this update's train() multiplies the rate by
        self.handles: list = []

    def _on_training_start(self) -> None:
        policy = self.model.policy
        if self.fault == "nan_lstm":  # first of the forward hooks: every reader of the state sees the NaN
            self.handles.append(policy.lstm_actor.register_forward_hook(self._nan_state, prepend=True))
        elif self.fault in GRADIENT_FAULTS:
            k = SUB_ACTIONS.index(self.head)
            sizes = [int(n) for n in policy.action_space.nvec]  # SB3 splits action_net's outputs by nvec, in order
            self.rows = slice(sum(sizes[:k]), sum(sizes[: k + 1]))
            for param in (policy.action_net.weight, policy.action_net.bias):
                self.handles.append(param.register_hook(self._scale_rows))
        elif self.fault == "lr_ramp":
            self.handles.append(policy.optimizer.register_step_pre_hook(self._ramp_lr))

    def _on_rollout_start(self) -> None:
        self.update += 1
        self.rollout_step = 0

    def _on_step(self) -> bool:
        self.rollout_step += 1
        if self.fault == "hang" and self.update == self.at + 1 and self.rollout_step == 1:
            # FAULT INJECTION: SimicCallback has just sent update K's events; alive, silent
            print(f"hanging after update {self.at} for {self.hang_seconds or 'ever'} s (--fault hang)", flush=True)
            hang_until = time.monotonic() + (math.inf if self.hang_seconds is None else self.hang_seconds)
            while time.monotonic() < hang_until:
                time.sleep(min(1.0, max(0.0, hang_until - time.monotonic())))
        return True

    def _on_rollout_end(self) -> None:
        """Rollout u has ended; train() of update u comes next (SimicCallback's train phase has started)."""
        u = self.update
        if u < self.at:
            return
        if self.fault == "head_grad_scale":  # FAULT INJECTION: the head's gradient x10 ...
            self.grad_scale = self.value
        elif self.fault == "slow_drift":  # ... x1.25 compounding per update ...
            self.grad_scale = self.value ** (u - self.at + 1)
        elif self.fault == "dead_head":  # ... or x0
            self.grad_scale = 0.0
        elif self.fault == "lr_spike" and u == self.at:  # FAULT INJECTION: the schedule, so the rate SB3 sets and logs, x100 from here on
            schedule = self.model.lr_schedule
            self.model.lr_schedule = lambda progress_remaining: self.value * schedule(progress_remaining)
        elif self.fault == "lr_ramp":  # FAULT INJECTION: the optimizer's rate x1.15 per update; the schedule (logged) is untouched
            self.lr_factor = self.value ** (u - self.at + 1)
        elif self.fault == "slow_phase":  # FAULT INJECTION: the train phase gets slower by S ms
            time.sleep(self.value / 1000.0)

    def _on_training_end(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    # -- torch hooks ------------------------------------------------------------------------------

    def _nan_state(self, module, args, output):
        """The last forward of rollout K (the state rollout K + 1 starts from): environment 0's h and c become NaN.

        The policy's forward for environment step i of a rollout runs after i calls of ``on_step``:
        the last one, after ``n_steps - 1``; train()'s forwards come after ``n_steps``.
        """
        if self.update != self.at or self.rollout_step != self.model.n_steps - 1:
            return None
        out, (h, c) = output
        h, c = h.clone(), c.clone()
        h[:, 0] = math.nan  # FAULT INJECTION: one environment's state turns NaN
        c[:, 0] = math.nan
        return out, (h, c)

    def _scale_rows(self, grad: torch.Tensor) -> torch.Tensor | None:
        if self.grad_scale is None:
            return None
        grad = grad.clone()
        grad[self.rows] *= self.grad_scale
        return grad

    def _ramp_lr(self, optimizer, args, kwargs) -> None:
        if self.lr_factor is not None:
            for group in optimizer.param_groups:
                group["lr"] *= self.lr_factor
            self.lr_factor = None


class Progress(BaseCallback):
    """``update N/M | timesteps T | SPS S | return R`` every ``every`` updates: the mean return of the episodes that ended since the last line."""

    def __init__(self, updates: int, every: int) -> None:
        super().__init__()
        self.updates, self.every = updates, every
        self.update = 0
        self.returns: list[float] = []
        self.started = time.monotonic()

    def _on_step(self) -> bool:
        self.returns += [info["episode"]["r"] for info in self.locals["infos"] if "episode" in info]  # from SB3's Monitor
        return True

    def _on_rollout_end(self) -> None:
        self.update += 1
        if self.update % self.every == 0 or self.update == self.updates:
            sps = int(self.model.num_timesteps / (time.monotonic() - self.started))
            mean_return = float(np.mean(self.returns)) if self.returns else math.nan
            print(f"update {self.update}/{self.updates} | timesteps {self.model.num_timesteps} | SPS {sps} | return {mean_return:.3f}",
                  flush=True)
            self.returns = []


if __name__ == "__main__":
    args = parse_args()
    if args.fault in GRADIENT_FAULTS and args.fault_head not in SUB_ACTIONS:
        raise SystemExit(f"--fault-head must be one of {', '.join(SUB_ACTIONS)}, got {args.fault_head!r}")
    if args.fault is not None and not 1 <= args.fault_at <= args.updates - (args.fault == "hang"):
        raise SystemExit(f"--fault-at {args.fault_at} is outside the run's updates 1..{args.updates} (hang: before the last)")
    if args.threads:
        torch.set_num_threads(args.threads)
    model = make_model(ExampleArgs(seed=args.seed, device=args.device, n_envs=args.n_envs, n_steps=args.n_steps,
                                   batch_size=args.batch_size, n_epochs=args.n_epochs))

    # TELEMETRY: the one callback, as in sb3_recurrent_ppo.py (with no endpoint and no sidecar, off)
    telemetry = {"spawn_consumer": {"log_dir": args.telemetry_dir}} if args.spawn_consumer else {}
    if args.endpoint:
        telemetry["endpoint"] = args.endpoint
    if args.run_id:
        telemetry["run_id"] = args.run_id
    simic = SimicCallback(action_names=SUB_ACTIONS, **telemetry)
    callbacks = [simic, Progress(args.updates, args.print_every)]
    if args.fault is not None:  # FAULT INJECTION: after SimicCallback in the list
        fault_value = args.fault_value if args.fault_value is not None else FAULT_VALUE.get(args.fault)
        callbacks.append(FaultCallback(args.fault, args.fault_at, fault_value, args.fault_head, args.hang_seconds))
    model.learn(args.updates * args.n_steps * args.n_envs, callback=callbacks)

    stats = simic.emitter.stats  # TELEMETRY: what the emitter did with its events
    print(f"telemetry: {stats.produced} events produced, {stats.sent} sent, {stats.dropped} dropped")
