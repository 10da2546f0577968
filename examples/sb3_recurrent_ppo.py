"""sb3-contrib's RecurrentPPO on a small memory task with a MultiDiscrete action, watched by simic.

The whole integration is the callback (look for "# TELEMETRY:"): SimicCallback starts a
simic-consumer sidecar writing to --log-dir, sends one set of events per update (per-head gradient
norms before SB3's clip, LSTM actor and critic state, rollout and train timings, the PPO metrics SB3
logs, episode returns), and stops the sidecar when training ends. A few updates take seconds on a CPU.

    python examples/sb3_recurrent_ppo.py --log-dir runs/sb3/telemetry --updates 8
    simic-consumer inspect runs/sb3/telemetry
"""

from __future__ import annotations

import argparse
import ast
import inspect
from dataclasses import dataclass, fields

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from sb3_contrib import RecurrentPPO
from stable_baselines3.common.env_util import make_vec_env

from simic.producer.integrations.sb3 import SimicCallback

SUB_ACTIONS = ("recall", "count")
"""Names of the two sub-actions (the policy's action heads; the value head comes on top)."""


@dataclass
class Args:
    log_dir: str = "runs/sb3-recurrent-ppo/telemetry"
    """where the spawned simic-consumer writes its event log"""
    updates: int = 6
    """number of PPO updates (train() calls)"""
    run_id: str = "sb3-recurrent-ppo"
    """the run id the events carry"""
    seed: int = 1
    """seed of the model and the environments"""
    device: str = "cpu"
    """torch device of the policy: cpu, cuda or cuda:N"""
    n_envs: int = 4
    """number of environments"""
    n_steps: int = 16
    """environment steps per environment per rollout"""
    batch_size: int = 32
    """minibatch size (of n_envs * n_steps samples per epoch)"""
    n_epochs: int = 2
    """epochs over the rollout per update"""


def parse_args(argv: list[str] | None = None) -> Args:
    """One --flag per Args field (underscores become dashes), the field's docstring as its help."""
    body = ast.parse(inspect.getsource(Args)).body[0].body
    docs = {a.target.id: b.value.value for a, b in zip(body, body[1:]) if isinstance(a, ast.AnnAssign) and isinstance(b, ast.Expr)}
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for field in fields(Args):
        parser.add_argument("--" + field.name.replace("_", "-"), type=type(field.default), default=field.default,
                            help=docs[field.name])
    return Args(**vars(parser.parse_args(argv)))


class RecallEnv(gym.Env):
    """Remember a cue, and count.

    The first observation of an episode shows one of three cues; later ones show only the time. On
    every step the ``recall`` sub-action (3 choices) earns 0.5 when it names the cue, and the
    ``count`` sub-action (4 choices) earns 0.5 when it equals the step number modulo 4. Episodes
    last ``length`` steps and then terminate (no time limit truncates them), so a return lies
    between 0 and ``length``; a uniform random policy earns about 0.29 of that.
    """

    def __init__(self, length: int = 8) -> None:
        self.length = length
        self.observation_space = spaces.Box(0.0, 1.0, shape=(4,), dtype=np.float32)
        self.action_space = spaces.MultiDiscrete([3, 4])
        self.cue = 0
        self.t = 0

    def _obs(self) -> np.ndarray:
        obs = np.zeros(4, dtype=np.float32)
        if self.t == 0:
            obs[self.cue] = 1.0
        obs[3] = self.t / self.length
        return obs

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.cue = int(self.np_random.integers(3))
        self.t = 0
        return self._obs(), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        reward = 0.5 * (int(action[0]) == self.cue) + 0.5 * (int(action[1]) == self.t % 4)
        self.t += 1
        return self._obs(), float(reward), self.t >= self.length, False, {}


def make_model(args: Args) -> RecurrentPPO:
    env = make_vec_env(RecallEnv, n_envs=args.n_envs, seed=args.seed)  # Monitor-wrapped: episode returns reach the callback
    return RecurrentPPO(
        "MlpLstmPolicy", env, n_steps=args.n_steps, batch_size=args.batch_size, n_epochs=args.n_epochs,
        learning_rate=1e-3, ent_coef=0.01, seed=args.seed, device=args.device,
        policy_kwargs={"lstm_hidden_size": 32, "net_arch": [32]},
    )


def train(args: Args, callbacks: list | None = None) -> tuple[RecurrentPPO, SimicCallback]:
    """Train for ``args.updates`` updates; ``callbacks`` run after SimicCallback (a test's recorder)."""
    torch.set_num_threads(1)
    model = make_model(args)
    # TELEMETRY: one callback; it starts the consumer, sends per update, and stops the consumer at the end
    simic = SimicCallback(run_id=args.run_id, spawn_consumer={"log_dir": args.log_dir}, action_names=SUB_ACTIONS)
    model.learn(args.updates * args.n_steps * args.n_envs, callback=[simic, *(callbacks or [])])
    return model, simic


if __name__ == "__main__":
    args = parse_args()
    model, simic = train(args)
    stats = simic.emitter.stats  # TELEMETRY: what the emitter did with its events
    print(f"{args.updates} updates, {model.num_timesteps} steps; events produced {stats.produced}, sent {stats.sent}, "
          f"dropped {stats.dropped}; log: {args.log_dir}")
