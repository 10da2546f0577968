"""Feed-forward PPO for continuous control (a Gaussian policy), instrumented with simic.

A second trainer for the detection benchmark, in one file, in the shape of CleanRL's
ppo_continuous_action.py: a tanh MLP actor ending in an action-mean Linear, a state-independent
``log_std`` parameter, a separate tanh MLP critic, on a point-mass reaching task written in torch.
It is instrumented through the public simic.producer API only (look for "# TELEMETRY:"), and shaped
differently from ppo_lstm.py on purpose: gradients are measured on every minibatch (clipped by
``emitter.clip_grad_norm_``), so each update sends epochs x minibatches ``head_grad_norms`` events,
all with the update's step. The injected faults are marked "# FAULT INJECTION:". About 7 s for
the default 100 updates (16 environments x 64 steps) on one CPU core; the return goes from about
-3.3 to -0.7.

    python examples/ppo_continuous.py --spawn-consumer        # starts a simic-consumer sidecar for the run
    SIMIC_ENDPOINT=ipc:///tmp/simic/c.ipc python examples/ppo_continuous.py --fault lr_ramp --fault-at 40

Heads, and what each one's gradient norm covers:

- ``mean``: the action-mean Linear (the actor's last layer, 64 x D weights and D biases);
- ``log_std``: the state-independent ``log_std`` parameter (D numbers);
- ``value``: the critic's value Linear (its last layer, 64 weights and a bias).

The MLP bodies under ``mean`` and ``value`` belong to no head (the total norm, which is what gets
clipped, covers them). So each head is the layer that produces one output of the network: the two
policy heads are the gradients at the two parameters of the Gaussian, the mean's through one linear
layer (the bias gradient is dL/dmean summed over the batch, the weights' that times the tanh
features in [-1, 1]), the standard deviation's directly (dL/dlog_std summed over the batch). Their
norms are of the same kind and comparable; a head that took in the 4,000-odd body weights as well
would be compared by its parameter count rather than by what reaches each output. Measured so, the
``mean`` head's norm is about 4 times ``log_std``'s in a healthy run (about 94% of their squared sum).

Faults (``--fault``, from update ``--fault-at`` on): ``head_grad_scale``, ``slow_drift`` and
``dead_head`` scale the ``--fault-head``'s gradients after ``backward()``, before they are measured
and clipped (x10; x1.25 compounding per update; x0); ``lr_spike`` multiplies the learning rate by
100; ``lr_ramp`` multiplies the optimizer's rate by 1.15 more every update while the rate logged in
``ppo_update`` stays the schedule's; ``slow_phase`` makes the update phase 250 ms slower; ``hang``
stops the trainer, alive and silent, after it sent update K. ``nan_obs`` (this trainer's stand-in
for ppo_lstm.py's ``nan_lstm``) turns environment 0's last observation of rollout K into NaN: the
bootstrap value, so every advantage of that environment, is NaN, the first minibatch's loss and
gradients are NaN (measured as such), clipping by a NaN norm turns every parameter into NaN, and
the next minibatch's Normal refuses its NaN mean: the trainer dies in update K, as a real one would.
"""
import argparse
import ast
import dataclasses
import inspect
import math
import os
import time
import typing
from dataclasses import dataclass
from typing import Literal, Optional

import torch
import torch.nn as nn
import torch.optim as optim
from torch.distributions.normal import Normal

from simic.producer import Emitter

HEADS = ("mean", "log_std", "value")
"""The heads whose gradient norms are reported (see the module docstring for what each covers)."""
FAULT_VALUE = {"head_grad_scale": 10.0, "lr_spike": 100.0, "slow_drift": 1.25, "slow_phase": 250.0, "lr_ramp": 1.15}
"""The size of each fault when --fault-value is not given (see Args.fault_value)."""
MAX_EPISODES = 256
"""Most episode returns one ``episodes`` event carries (the schema's list bound); ``count`` has them all."""


@dataclass
class Args:
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """the name of this experiment"""
    seed: int = 1
    """seed of the experiment (the environments' start and goal positions are drawn from it too)"""
    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=True`"""
    device: str = "cpu"
    """where the policy and the environments live: cpu, cuda or cuda:N"""
    threads: int = 1
    """torch intra-op threads on the CPU (a policy this small runs fastest on one; 0: torch's default)"""
    print_every: int = 10
    """print one progress line every this many updates"""

    # Algorithm specific arguments
    total_timesteps: int = 102_400
    """total timesteps of the experiment (all environments together): 100 updates of 16 x 64"""
    learning_rate: float = 3e-4
    """the learning rate of the optimizer"""
    num_envs: int = 16
    """the number of parallel environments"""
    num_steps: int = 64
    """the number of steps to run in each environment per policy rollout"""
    anneal_lr: bool = True
    """toggle learning rate annealing for policy and value networks"""
    gamma: float = 0.95
    """the discount factor gamma"""
    gae_lambda: float = 0.95
    """the lambda for the general advantage estimation"""
    num_minibatches: int = 4
    """the number of mini-batches"""
    update_epochs: int = 4
    """the K epochs to update the policy"""
    norm_adv: bool = True
    """toggles advantages normalization"""
    clip_coef: float = 0.2
    """the surrogate clipping coefficient"""
    clip_vloss: bool = True
    """toggles whether or not to use a clipped loss for the value function, as per the paper"""
    ent_coef: float = 0.001
    """coefficient of the entropy"""
    vf_coef: float = 0.5
    """coefficient of the value function"""
    max_grad_norm: float = 0.5
    """the maximum norm for the gradient clipping"""
    hidden_size: int = 64
    """width of the actor's and the critic's two hidden layers"""

    # Environment arguments
    action_dim: int = 2
    """dimensions of the point mass's space, and of the action (2 to 4)"""
    episode_length: int = 32
    """steps per episode (then a new start and goal)"""

    # Telemetry arguments (simic)
    endpoint: Optional[str] = None
    """where simic-consumer listens (ipc:///path or tcp://127.0.0.1:PORT); default: $SIMIC_ENDPOINT, telemetry off when neither is set"""
    spawn_consumer: bool = False
    """start a simic-consumer sidecar for this run when none listens at --endpoint (stopped when training ends)"""
    telemetry_dir: str = "simic-logs"
    """log directory of the sidecar started by --spawn-consumer"""
    run_id: Optional[str] = None
    """the run's name in the telemetry (default: $SIMIC_RUN_ID, else the run name)"""
    stop_on_critical: bool = False
    """stop training (cleanly, at the end of an update) when the consumer reports a critical alert"""

    # Fault injection (for demos and the detection benchmark)
    fault: Optional[Literal["nan_obs", "head_grad_scale", "lr_spike", "slow_drift", "dead_head", "slow_phase", "hang", "lr_ramp", "nan_lstm"]] = None
    """the fault to inject (default: none, a healthy run); nan_lstm is ppo_lstm.py's and refused here (no LSTM)"""
    fault_at: int = 30
    """the update (counted from 1) at which the fault starts: its onset"""
    fault_head: str = "mean"
    """the head that head_grad_scale, slow_drift and dead_head act on: mean, log_std or value"""
    fault_value: Optional[float] = None
    """the fault's size: head_grad_scale factor (10), lr_spike factor (100), slow_drift growth per update (1.25), slow_phase ms (250), lr_ramp growth per update (1.15)"""
    hang_seconds: Optional[float] = None
    """how long `hang` stops the trainer, alive but silent, before it goes on (default: for ever)"""

    # to be filled in runtime
    batch_size: int = 0
    """the batch size (computed in runtime)"""
    minibatch_size: int = 0
    """the mini-batch size (computed in runtime)"""
    num_iterations: int = 0
    """the number of iterations (computed in runtime)"""


def parse_args(cls=Args, argv=None):
    """CleanRL parses its Args with tyro; this is the same command line from the standard library
    (as in ppo_lstm.py): one --flag per field (underscores become dashes), the field's docstring as its help."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body
    docs = {
        node.target.id: nxt.value.value
        for node, nxt in zip(body, body[1:])
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
    }
    hints = typing.get_type_hints(cls)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for field in dataclasses.fields(cls):
        if docs.get(field.name, "").endswith("(computed in runtime)"):
            continue
        kind = hints[field.name]
        if typing.get_origin(kind) is typing.Union:  # Optional[X]
            kind = next(k for k in typing.get_args(kind) if k is not type(None))
        flag = "--" + field.name.replace("_", "-")
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=field.default, help=docs.get(field.name))
        elif typing.get_origin(kind) is Literal:
            parser.add_argument(flag, choices=typing.get_args(kind), default=field.default, help=docs.get(field.name))
        else:
            parser.add_argument(flag, type=kind, default=field.default, help=docs.get(field.name))
    return cls(**vars(parser.parse_args(argv)))


class ReachEnv:
    """A vectorized point-mass reaching task with a continuous action, written in torch (no gym needed).

    A point mass moves in ``[-1.5, 1.5]^D``. Every episode lasts ``episode_length`` steps and starts
    from a random position at rest with a random goal in ``[-1, 1]^D`` (drawn from the seed). The
    action is a force in ``[-1, 1]^D`` (clipped, as CleanRL's ``ClipAction`` wrapper does; the policy's
    unclipped sample is what PPO stores): the velocity follows it with damping and moves the mass.
    The reward is minus a tenth of the distance to the goal after the step, so a return goes from
    about -3 (a random policy drifting around) towards -0.6 (heading straight there and stopping).
    Because the mass keeps its velocity, overshooting costs, and the policy must brake in time.

    Observation: position | velocity | goal - position | time left (a fraction), 3D + 1 numbers.
    """

    def __init__(self, num_envs, dim, episode_length, device, seed):
        self.num_envs, self.dim, self.episode_length, self.device = num_envs, dim, episode_length, device
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.single_observation_shape = (3 * dim + 1,)
        self.single_action_shape = (dim,)
        self.t = torch.zeros(num_envs, dtype=torch.long, device=device)
        self.pos = torch.zeros((num_envs, dim), device=device)
        self.vel = torch.zeros((num_envs, dim), device=device)
        self.goal = torch.zeros((num_envs, dim), device=device)
        self.episode_return = torch.zeros(num_envs, device=device)

    def _uniform(self, low, high):
        return low + (high - low) * torch.rand((self.num_envs, self.dim), generator=self.generator, device=self.device)

    def _draw(self, new):
        """A new start (at rest) and goal where ``new`` (a new episode)."""
        new_ = new.unsqueeze(1)
        self.pos = torch.where(new_, self._uniform(-1.0, 1.0), self.pos)
        self.goal = torch.where(new_, self._uniform(-1.0, 1.0), self.goal)
        self.vel = torch.where(new_, 0.0, self.vel)

    def _observe(self):
        time_left = 1.0 - self.t.float().unsqueeze(1) / self.episode_length
        return torch.cat([self.pos, self.vel, self.goal - self.pos, time_left], dim=1)

    def reset(self):
        self.t.zero_()
        self.episode_return.zero_()
        self._draw(torch.ones(self.num_envs, dtype=torch.bool, device=self.device))
        return self._observe()

    def step(self, action):
        force = action.clamp(-1.0, 1.0)
        self.vel = 0.8 * self.vel + 0.2 * force
        self.pos = (self.pos + 0.2 * self.vel).clamp(-1.5, 1.5)
        reward = -0.1 * (self.goal - self.pos).norm(dim=1)
        self.episode_return += reward
        self.t += 1
        done = self.t == self.episode_length
        finished_return = torch.where(done, self.episode_return, 0.0)
        self.t = torch.where(done, 0, self.t)
        self.episode_return = torch.where(done, 0.0, self.episode_return)
        self._draw(done)
        return self._observe(), reward, done, finished_return


def layer_init(layer, std=math.sqrt(2), bias_const=0.0):
    torch.nn.init.orthogonal_(layer.weight, std)
    torch.nn.init.constant_(layer.bias, bias_const)
    return layer


class Agent(nn.Module):
    def __init__(self, obs_dim, action_dim, hidden_size):
        super().__init__()
        self.critic = nn.Sequential(
            layer_init(nn.Linear(obs_dim, hidden_size)),
            nn.Tanh(),
            layer_init(nn.Linear(hidden_size, hidden_size)),
            nn.Tanh(),
            layer_init(nn.Linear(hidden_size, 1), std=1.0),
        )
        self.actor_mean = nn.Sequential(
            layer_init(nn.Linear(obs_dim, hidden_size)),
            nn.Tanh(),
            layer_init(nn.Linear(hidden_size, hidden_size)),
            nn.Tanh(),
            layer_init(nn.Linear(hidden_size, action_dim), std=0.01),
        )
        self.actor_logstd = nn.Parameter(torch.zeros(1, action_dim))

    def get_value(self, x):
        return self.critic(x)

    def get_action_and_value(self, x, action=None):
        action_mean = self.actor_mean(x)
        action_logstd = self.actor_logstd.expand_as(action_mean)
        action_std = torch.exp(action_logstd)
        probs = Normal(action_mean, action_std)
        if action is None:
            action = probs.sample()
        return action, probs.log_prob(action).sum(1), probs.entropy().sum(1), self.critic(x)


if __name__ == "__main__":
    args = parse_args()
    args.batch_size = int(args.num_envs * args.num_steps)
    args.minibatch_size = int(args.batch_size // args.num_minibatches)
    args.num_iterations = args.total_timesteps // args.batch_size
    run_name = f"reach__{args.exp_name}__{args.seed}__{int(time.time())}"
    if args.fault == "nan_lstm":
        raise SystemExit("--fault nan_lstm: this policy has no LSTM; inject a NaN into an observation with --fault nan_obs instead")
    if args.batch_size % args.num_minibatches:
        raise SystemExit(f"the batch ({args.num_envs} x {args.num_steps}) must be a multiple of --num-minibatches ({args.num_minibatches})")
    if args.num_iterations < 1:
        raise SystemExit(f"--total-timesteps ({args.total_timesteps}) is less than one rollout ({args.batch_size} steps)")
    if not 2 <= args.action_dim <= 4:
        raise SystemExit(f"--action-dim must be 2, 3 or 4, got {args.action_dim}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: CUDA is not available on this machine")
    if args.fault in ("head_grad_scale", "slow_drift", "dead_head") and args.fault_head not in HEADS:
        raise SystemExit(f"--fault-head must be one of {', '.join(HEADS)}, got {args.fault_head!r}")
    fault_value = args.fault_value if args.fault_value is not None else FAULT_VALUE.get(args.fault)

    # TRY NOT TO MODIFY: seeding
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    # env setup
    envs = ReachEnv(args.num_envs, args.action_dim, args.episode_length, device, args.seed)
    agent = Agent(envs.single_observation_shape[0], args.action_dim, args.hidden_size).to(device)
    optimizer = optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5)

    # TELEMETRY: one emitter for the run; with no endpoint (no --endpoint, $SIMIC_ENDPOINT unset) a no-op one
    run_id = args.run_id or os.environ.get("SIMIC_RUN_ID") or run_name
    telemetry = dict(run_id=run_id, heads=list(HEADS), config=vars(args), device=str(device))
    if args.endpoint or args.spawn_consumer:
        spawn = {"log_dir": args.telemetry_dir} if args.spawn_consumer else False
        emitter = Emitter(args.endpoint, spawn_consumer=spawn, **telemetry)
    else:
        emitter = Emitter.from_env(**telemetry)
    # TELEMETRY: each head is the layer making one output; the MLP bodies count in the total only (what we clip)
    head_params = {"mean": list(agent.actor_mean[-1].parameters()), "log_std": [agent.actor_logstd], "value": list(agent.critic[-1].parameters())}
    head_groups = emitter.head_groups(head_params, params=agent.parameters())
    if emitter.sidecar is not None:
        print(f"telemetry: sidecar simic-consumer (pid {emitter.sidecar.pid}) on {emitter.endpoint}, logs in {emitter.sidecar.log_dir}")
    print(f"telemetry: run {emitter.run_id!r} -> {emitter.endpoint}" if emitter.endpoint else
          "telemetry: off (no --endpoint or --spawn-consumer, SIMIC_ENDPOINT unset)", flush=True)

    # FAULT INJECTION: the parameters whose gradients head_grad_scale, slow_drift and dead_head touch
    fault_grads = head_params.get(args.fault_head, [])

    # ALGO Logic: Storage setup
    obs = torch.zeros((args.num_steps, args.num_envs) + envs.single_observation_shape).to(device)
    actions = torch.zeros((args.num_steps, args.num_envs) + envs.single_action_shape).to(device)
    logprobs = torch.zeros((args.num_steps, args.num_envs)).to(device)
    rewards = torch.zeros((args.num_steps, args.num_envs)).to(device)
    dones = torch.zeros((args.num_steps, args.num_envs)).to(device)
    values = torch.zeros((args.num_steps, args.num_envs)).to(device)
    finished_returns = torch.zeros((args.num_steps, args.num_envs)).to(device)

    # TRY NOT TO MODIFY: start the game
    global_step = 0
    start_time = time.time()
    next_obs = envs.reset()
    next_done = torch.zeros(args.num_envs).to(device)
    progress_returns = []  # finished episodes' returns since the last progress line
    stop_reason = None

    with emitter:
        for iteration in range(1, args.num_iterations + 1):
            fault_on = args.fault is not None and iteration >= args.fault_at
            # Annealing the rate if instructed to do so.
            lrnow = args.learning_rate
            if args.anneal_lr:
                frac = 1.0 - (iteration - 1.0) / args.num_iterations
                lrnow = frac * args.learning_rate
            if fault_on and args.fault == "lr_spike":  # FAULT INJECTION: the learning rate jumps by X and stays there
                lrnow *= fault_value
            optimizer.param_groups[0]["lr"] = lrnow
            if fault_on and args.fault == "lr_ramp":  # FAULT INJECTION: the optimizer's rate grows by X per update; lrnow (logged) does not
                optimizer.param_groups[0]["lr"] = lrnow * fault_value ** (iteration - args.fault_at + 1)

            # TELEMETRY: host time on the CPU, CUDA-event time on a GPU (the timer never waits for it)
            with emitter.timer("rollout", step=iteration, device=device):
                for step in range(0, args.num_steps):
                    global_step += args.num_envs
                    obs[step] = next_obs
                    dones[step] = next_done

                    # ALGO LOGIC: action logic
                    with torch.no_grad():
                        action, logprob, _, value = agent.get_action_and_value(next_obs)
                        values[step] = value.flatten()
                    actions[step] = action
                    logprobs[step] = logprob

                    # TRY NOT TO MODIFY: execute the game and log data.
                    next_obs, reward, next_done, finished_returns[step] = envs.step(action)
                    rewards[step] = reward
                    next_done = next_done.float()

            # TELEMETRY: the episodes that ended in this rollout (one host read per update, as CleanRL reads its infos)
            episode_returns = finished_returns[torch.cat([dones[1:], next_done.unsqueeze(0)]).bool()].tolist()
            if episode_returns:
                kept = episode_returns[-MAX_EPISODES:]
                emitter.emit_episodes(step=iteration, returns=kept, lengths=[args.episode_length] * len(kept), count=len(episode_returns))
            progress_returns += episode_returns
            if fault_on and iteration == args.fault_at and args.fault == "nan_obs":  # FAULT INJECTION: one env's observation turns NaN
                next_obs[0] = math.nan  # what the bootstrap value (so every advantage of env 0) and the next rollout start from
            emitter.flush()

            with emitter.timer("update", step=iteration, device=device):
                # bootstrap value if not done
                with torch.no_grad():
                    next_value = agent.get_value(next_obs).reshape(1, -1)
                    advantages = torch.zeros_like(rewards).to(device)
                    lastgaelam = 0
                    for t in reversed(range(args.num_steps)):
                        if t == args.num_steps - 1:
                            nextnonterminal = 1.0 - next_done
                            nextvalues = next_value
                        else:
                            nextnonterminal = 1.0 - dones[t + 1]
                            nextvalues = values[t + 1]
                        delta = rewards[t] + args.gamma * nextvalues * nextnonterminal - values[t]
                        advantages[t] = lastgaelam = delta + args.gamma * args.gae_lambda * nextnonterminal * lastgaelam
                    returns = advantages + values

                # flatten the batch
                b_obs = obs.reshape((-1,) + envs.single_observation_shape)
                b_logprobs = logprobs.reshape(-1)
                b_actions = actions.reshape((-1,) + envs.single_action_shape)
                b_advantages = advantages.reshape(-1)
                b_returns = returns.reshape(-1)
                b_values = values.reshape(-1)

                # Optimizing the policy and value network
                clipfracs = []
                for epoch in range(args.update_epochs):
                    b_inds = torch.randperm(args.batch_size, device=device)
                    for start in range(0, args.batch_size, args.minibatch_size):
                        end = start + args.minibatch_size
                        mb_inds = b_inds[start:end]

                        _, newlogprob, entropy, newvalue = agent.get_action_and_value(b_obs[mb_inds], b_actions[mb_inds])
                        logratio = newlogprob - b_logprobs[mb_inds]
                        ratio = logratio.exp()

                        with torch.no_grad():
                            # calculate approx_kl http://joschu.net/blog/kl-approx.html
                            approx_kl = ((ratio - 1) - logratio).mean()
                            clipfracs += [((ratio - 1.0).abs() > args.clip_coef).float().mean()]  # kept on the device: no .item()

                        mb_advantages = b_advantages[mb_inds]
                        if args.norm_adv:
                            mb_advantages = (mb_advantages - mb_advantages.mean()) / (mb_advantages.std() + 1e-8)

                        # Policy loss
                        pg_loss1 = -mb_advantages * ratio
                        pg_loss2 = -mb_advantages * torch.clamp(ratio, 1 - args.clip_coef, 1 + args.clip_coef)
                        pg_loss = torch.max(pg_loss1, pg_loss2).mean()

                        # Value loss
                        newvalue = newvalue.view(-1)
                        if args.clip_vloss:
                            v_loss_unclipped = (newvalue - b_returns[mb_inds]) ** 2
                            v_clipped = b_values[mb_inds] + torch.clamp(newvalue - b_values[mb_inds], -args.clip_coef, args.clip_coef)
                            v_loss_clipped = (v_clipped - b_returns[mb_inds]) ** 2
                            v_loss = 0.5 * torch.max(v_loss_unclipped, v_loss_clipped).mean()
                        else:
                            v_loss = 0.5 * ((newvalue - b_returns[mb_inds]) ** 2).mean()

                        entropy_loss = entropy.mean()
                        loss = pg_loss - args.ent_coef * entropy_loss + v_loss * args.vf_coef

                        optimizer.zero_grad()
                        loss.backward()
                        if fault_on and args.fault in ("head_grad_scale", "slow_drift", "dead_head"):  # FAULT INJECTION
                            scale = {"head_grad_scale": fault_value, "dead_head": 0.0}.get(args.fault)
                            if scale is None:  # slow_drift: the scale grows by fault_value per update from the onset
                                scale = fault_value ** (iteration - args.fault_at + 1)
                            for param in fault_grads:
                                param.grad.mul_(scale)
                        # TELEMETRY: clips as nn.utils.clip_grad_norm_(agent.parameters(), max_grad_norm) does, and sends
                        # this minibatch's pre-clip per-head norms (every minibatch, all with the update's step)
                        emitter.clip_grad_norm_(iteration, head_groups, args.max_grad_norm)
                        with emitter.param_updates(iteration, head_groups, optimizer=optimizer):  # TELEMETRY: update-to-weight ratio per head
                            optimizer.step()

                y_pred, y_true = b_values, b_returns
                var_y = y_true.var().item()
                explained_var = math.nan if var_y == 0 else 1 - (y_true - y_pred).var().item() / var_y  # on the host, as CleanRL
                if fault_on and args.fault == "slow_phase":  # FAULT INJECTION: the update phase gets slower by S ms
                    time.sleep(fault_value / 1000.0)

            # TELEMETRY: PPO metrics of the last minibatch, as CleanRL logs them (device tensors are read back later)
            emitter.ppo_update(
                iteration,
                policy_loss=pg_loss.detach(),
                value_loss=v_loss.detach(),
                entropy=entropy_loss.detach(),  # one number for the whole Gaussian policy: sent as {"policy": x}
                approx_kl=approx_kl,
                clip_fraction=torch.stack(clipfracs).mean(),
                explained_variance=explained_var,
                learning_rate=lrnow,
                clip_range=args.clip_coef,
            )
            emitter.flush()

            # TELEMETRY: the consumer's verdicts about this run (never blocks)
            for alert in emitter.poll_alerts():
                state = "cleared" if alert.cleared else alert.severity
                print(f"alert: [{state}] {alert.rule} at step {alert.step}: {alert.message}", flush=True)
                if args.stop_on_critical and alert.severity == "critical" and not alert.cleared:
                    stop_reason = f"critical alert {alert.rule} at step {alert.step}"

            # TRY NOT TO MODIFY: progress, one line every print_every updates
            if iteration % args.print_every == 0 or iteration == args.num_iterations or stop_reason:
                sps = int(global_step / (time.time() - start_time))
                mean_return = sum(progress_returns) / len(progress_returns) if progress_returns else math.nan
                print(f"update {iteration}/{args.num_iterations} | global_step {global_step} | SPS {sps} | return {mean_return:.3f}", flush=True)
                progress_returns = []

            if stop_reason:
                print(f"stopping at update {iteration}: {stop_reason} (--stop-on-critical)", flush=True)
                break
            if fault_on and iteration == args.fault_at and args.fault == "hang":  # FAULT INJECTION: alive, silent
                print(f"hanging at update {iteration} for {args.hang_seconds or 'ever'} s (--fault hang)", flush=True)
                hang_until = time.monotonic() + (math.inf if args.hang_seconds is None else args.hang_seconds)
                while time.monotonic() < hang_until:
                    time.sleep(min(1.0, max(0.0, hang_until - time.monotonic())))

    print(f"telemetry: {emitter.stats.produced} events produced, {emitter.stats.sent} sent, {emitter.stats.dropped} dropped")
