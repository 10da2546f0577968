"""Recurrent PPO with a factored policy (heads slot, blueprint, blend, op), instrumented with simic.

The reference trainer of simic-telemetry, in one file, in the shape of CleanRL's ppo_atari_lstm.py.
Telemetry goes through the public simic.producer API only (look for "# TELEMETRY:"); the faults
injected for the demo and the detection benchmark are marked "# FAULT INJECTION:". Runs on the CPU
by default (about 40 s on 2 cores), and on a GPU with --device cuda.

    python examples/ppo_lstm.py --spawn-consumer        # starts a simic-consumer sidecar for the run
    SIMIC_ENDPOINT=ipc:///tmp/simic/c.ipc python examples/ppo_lstm.py --fault nan_lstm --fault-at 40
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
from torch.distributions.categorical import Categorical

from simic.producer import Emitter, training_profiler

HEADS = ("slot", "blueprint", "blend", "op")
"""The action heads of the factored policy (the value head comes on top)."""
FAULT_VALUE = {"head_grad_scale": 10.0, "lr_spike": 100.0, "slow_drift": 1.25, "slow_phase": 250.0, "lr_ramp": 1.15}
"""The size of each fault when --fault-value is not given (see Args.fault_value)."""


@dataclass
class Args:
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """the name of this experiment"""
    seed: int = 1
    """seed of the experiment (the task's hidden targets are drawn from it too)"""
    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=True`"""
    device: str = "cpu"
    """where the policy and the environments live: cpu, cuda or cuda:N"""
    threads: int = 1
    """torch intra-op threads on the CPU (a policy this small runs fastest on one; 0: torch's default)"""
    print_every: int = 10
    """print one progress line every this many updates"""

    # Algorithm specific arguments
    total_timesteps: int = 240_000
    """total timesteps of the experiment (all environments together)"""
    learning_rate: float = 1e-3
    """the learning rate of the optimizer"""
    num_envs: int = 32
    """the number of parallel environments"""
    num_steps: int = 32
    """the number of steps to run in each environment per policy rollout"""
    anneal_lr: bool = True
    """toggle learning rate annealing for policy and value networks"""
    gamma: float = 0.9
    """the discount factor gamma"""
    gae_lambda: float = 0.95
    """the lambda for the general advantage estimation"""
    num_minibatches: int = 4
    """the number of mini-batches (of whole environment sequences)"""
    update_epochs: int = 4
    """the K epochs to update the policy"""
    norm_adv: bool = True
    """toggles advantages normalization"""
    clip_coef: float = 0.2
    """the surrogate clipping coefficient"""
    clip_vloss: bool = True
    """toggles whether or not to use a clipped loss for the value function, as per the paper"""
    ent_coef: float = 0.02
    """coefficient of the entropy (of each head)"""
    vf_coef: float = 0.5
    """coefficient of the value function"""
    max_grad_norm: float = 0.5
    """the maximum norm for the gradient clipping"""
    hidden_size: int = 64
    """width of the encoder and of the LSTM core"""

    # Environment arguments
    episode_length: int = 8
    """steps per episode; the cue is shown on the first one only"""
    num_cues: int = 4
    """the number of distinct cues (hidden target configurations)"""

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
    profile: bool = False
    """profile a short window of updates with torch.profiler (a Chrome trace, announced to the consumer)"""
    profile_dir: str = "profiler_traces"
    """where --profile writes its traces"""

    # Fault injection (for demos and the detection benchmark)
    fault: Optional[Literal["nan_lstm", "head_grad_scale", "lr_spike", "slow_drift", "dead_head", "slow_phase", "hang", "lr_ramp"]] = None
    """the fault to inject (default: none, a healthy run)"""
    fault_at: int = 30
    """the update (counted from 1) at which the fault starts: its onset"""
    fault_head: str = "blueprint"
    """the action head that head_grad_scale, slow_drift and dead_head act on"""
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
    """CleanRL parses its Args with tyro; this is the same command line from the standard library:
    one --flag per field (underscores become dashes), the field's docstring as its help."""
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


class AssemblyEnv:
    """A vectorized memory task with a factored action, written in torch (no gym needed).

    Every episode lasts ``episode_length`` steps. Its first observation shows a cue (one of
    ``num_cues``), and the cue fixes a hidden target configuration: the ``slot``, ``blueprint`` and
    ``op`` to choose on every step of the episode (a table drawn from the seed). Later observations
    no longer show the cue, so the policy must remember it: that is the LSTM's job. The ``blend``
    target is the signal shown in the current observation (a reactive part, learnt first). The
    reward is the share of the four heads whose action matches its target, so an episode returns
    between 0 and ``episode_length``, and a uniform random policy about a quarter of that.

    Some of it cannot be learnt, as in most real tasks: ``blank`` of the episodes show no cue
    (their slot, blueprint and op targets are random; a flag says so on every step) and ``blank``
    of the steps show no signal (the blend target is random). In those states every action is as
    good as any other, so a healthy policy stays as random there as its entropy bonus makes it,
    and the entropy of its heads does not fall to zero once the rest is solved.

    Observation: cue one-hot (first step of a cued episode) | no-cue flag | time one-hot | signal one-hot.
    """

    def __init__(self, num_envs, nvec, num_cues, episode_length, device, seed, blank=0.25):
        self.num_envs, self.nvec, self.num_cues, self.episode_length, self.device = num_envs, nvec, num_cues, episode_length, device
        self.blank = blank
        self.generator = torch.Generator(device=device).manual_seed(seed)
        table_generator = torch.Generator().manual_seed(seed + 10_000)
        self.table = torch.stack([torch.randint(n, (num_cues,), generator=table_generator) for n in nvec], dim=1).to(device)
        self.single_observation_shape = (num_cues + 1 + episode_length + nvec[2],)
        self.single_action_shape = (len(nvec),)
        self.nvec_t = torch.tensor(nvec, device=device)
        self.t = torch.zeros(num_envs, dtype=torch.long, device=device)
        self.cue = torch.zeros(num_envs, dtype=torch.long, device=device)
        self.cued = torch.zeros(num_envs, dtype=torch.bool, device=device)
        self.target = torch.zeros((num_envs, len(nvec)), dtype=torch.long, device=device)
        self.episode_return = torch.zeros(num_envs, device=device)

    def _random(self, shape):
        return torch.rand(shape, generator=self.generator, device=self.device)

    def _draw(self, new):
        """A new cue and targets where ``new`` (a new episode); a new signal everywhere."""
        cue = (self._random(self.num_envs) * self.num_cues).long()
        cued = self._random(self.num_envs) >= self.blank
        guess = (self._random((self.num_envs, len(self.nvec))) * self.nvec_t).long()
        target = torch.where(cued.unsqueeze(1), self.table[cue], guess)
        new_ = new.unsqueeze(1)
        self.cue = torch.where(new, cue, self.cue)
        self.cued = torch.where(new, cued, self.cued)
        self.target = torch.where(new_, target, self.target)
        self.signal_shown = self._random(self.num_envs) >= self.blank
        self.target[:, 2] = guess[:, 2]  # the blend target: the signal shown, else a random one
        self.signal = self.target[:, 2]

    def _observe(self):
        cue = nn.functional.one_hot(self.cue, self.num_cues) * ((self.t == 0) & self.cued).unsqueeze(1)
        time_ = nn.functional.one_hot(self.t, self.episode_length)
        signal = nn.functional.one_hot(self.signal, self.nvec[2]) * self.signal_shown.unsqueeze(1)
        return torch.cat([cue, ~self.cued.unsqueeze(1), time_, signal], dim=1).float()

    def reset(self):
        self.t.zero_()
        self.episode_return.zero_()
        self._draw(torch.ones(self.num_envs, dtype=torch.bool, device=self.device))
        return self._observe()

    def step(self, action):
        reward = (action == self.target).float().mean(1)
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
    def __init__(self, obs_dim, nvec, hidden_size):
        super().__init__()
        self.encoder = nn.Sequential(layer_init(nn.Linear(obs_dim, hidden_size)), nn.Tanh())
        self.lstm = nn.LSTM(hidden_size, hidden_size)
        for name, param in self.lstm.named_parameters():
            if "bias" in name:
                nn.init.constant_(param, 0)
            elif "weight" in name:
                nn.init.orthogonal_(param, 1.0)
        self.heads = nn.ModuleDict({head: layer_init(nn.Linear(hidden_size, n), std=0.01) for head, n in zip(HEADS, nvec)})
        self.critic = layer_init(nn.Linear(hidden_size, 1), std=1)

    def get_states(self, x, lstm_state, done):
        hidden = self.encoder(x)

        # LSTM logic
        batch_size = lstm_state[0].shape[1]
        hidden = hidden.reshape((-1, batch_size, self.lstm.input_size))
        done = done.reshape((-1, batch_size))
        new_hidden = []
        for h, d in zip(hidden, done):
            h, lstm_state = self.lstm(
                h.unsqueeze(0),
                (
                    (1.0 - d).view(1, -1, 1) * lstm_state[0],
                    (1.0 - d).view(1, -1, 1) * lstm_state[1],
                ),
            )
            new_hidden += [h]
        new_hidden = torch.flatten(torch.cat(new_hidden), 0, 1)
        return new_hidden, lstm_state

    def get_value(self, x, lstm_state, done):
        hidden, _ = self.get_states(x, lstm_state, done)
        return self.critic(hidden)

    def get_action_and_value(self, x, lstm_state, done, action=None):
        """Actions (batch, heads), their summed log-prob, the entropy per head (heads, batch), the value."""
        hidden, lstm_state = self.get_states(x, lstm_state, done)
        dists = [Categorical(logits=head(hidden)) for head in self.heads.values()]
        if action is None:
            action = torch.stack([dist.sample() for dist in dists], dim=1)
        logprob = torch.stack([dist.log_prob(a) for dist, a in zip(dists, action.unbind(1))]).sum(0)
        entropy = torch.stack([dist.entropy() for dist in dists])
        return action, logprob, entropy, self.critic(hidden), lstm_state


if __name__ == "__main__":
    args = parse_args()
    args.batch_size = int(args.num_envs * args.num_steps)
    args.minibatch_size = int(args.batch_size // args.num_minibatches)
    args.num_iterations = args.total_timesteps // args.batch_size
    run_name = f"assembly__{args.exp_name}__{args.seed}__{int(time.time())}"
    if args.num_envs % args.num_minibatches:
        raise SystemExit(f"--num-envs ({args.num_envs}) must be a multiple of --num-minibatches ({args.num_minibatches})")
    if args.num_iterations < 1:
        raise SystemExit(f"--total-timesteps ({args.total_timesteps}) is less than one rollout ({args.batch_size} steps)")
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
    nvec = (4, 5, 3, 4)  # slot, blueprint, blend, op
    envs = AssemblyEnv(args.num_envs, nvec, args.num_cues, args.episode_length, device, args.seed)
    agent = Agent(envs.single_observation_shape[0], nvec, args.hidden_size).to(device)
    optimizer = optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5)

    # TELEMETRY: one emitter for the run; with no endpoint (no --endpoint, $SIMIC_ENDPOINT unset) a no-op one
    run_id = args.run_id or os.environ.get("SIMIC_RUN_ID") or run_name
    telemetry = dict(run_id=run_id, heads=[*HEADS, "value"], config=vars(args), device=str(device))
    if args.endpoint or args.spawn_consumer:
        spawn = {"log_dir": args.telemetry_dir} if args.spawn_consumer else False
        emitter = Emitter(args.endpoint, spawn_consumer=spawn, **telemetry)
    else:
        emitter = Emitter.from_env(**telemetry)
    head_groups = emitter.head_groups({**agent.heads, "value": agent.critic}, params=agent.parameters())  # what we clip
    if emitter.sidecar is not None:
        print(f"telemetry: sidecar simic-consumer (pid {emitter.sidecar.pid}) on {emitter.endpoint}, logs in {emitter.sidecar.log_dir}")
    print(f"telemetry: run {emitter.run_id!r} -> {emitter.endpoint}" if emitter.endpoint else
          "telemetry: off (no --endpoint or --spawn-consumer, SIMIC_ENDPOINT unset)", flush=True)

    # FAULT INJECTION: the parameters whose gradients head_grad_scale, slow_drift and dead_head touch
    fault_grads = list(agent.heads[args.fault_head].parameters()) if args.fault_head in HEADS else []

    # ALGO Logic: Storage setup
    obs = torch.zeros((args.num_steps, args.num_envs) + envs.single_observation_shape).to(device)
    actions = torch.zeros((args.num_steps, args.num_envs) + envs.single_action_shape, dtype=torch.long).to(device)
    logprobs = torch.zeros((args.num_steps, args.num_envs)).to(device)
    rewards = torch.zeros((args.num_steps, args.num_envs)).to(device)
    dones = torch.zeros((args.num_steps, args.num_envs)).to(device)
    values = torch.zeros((args.num_steps, args.num_envs)).to(device)

    # TRY NOT TO MODIFY: start the game
    global_step = 0
    start_time = time.time()
    next_obs = envs.reset()
    next_done = torch.zeros(args.num_envs).to(device)
    next_lstm_state = (
        torch.zeros(agent.lstm.num_layers, args.num_envs, agent.lstm.hidden_size).to(device),
        torch.zeros(agent.lstm.num_layers, args.num_envs, agent.lstm.hidden_size).to(device),
    )  # hidden and cell states (see https://youtu.be/8HyCNIVRbSU)
    return_sum = torch.zeros((), device=device)  # finished episodes since the last progress line, summed on the device
    return_count = torch.zeros((), device=device)
    stop_reason = None

    with emitter, training_profiler(args.profile_dir, enabled=args.profile, emitter=emitter) as prof:
        for iteration in range(1, args.num_iterations + 1):
            fault_on = args.fault is not None and iteration >= args.fault_at
            initial_lstm_state = (next_lstm_state[0].clone(), next_lstm_state[1].clone())
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
                        action, logprob, _, value, next_lstm_state = agent.get_action_and_value(next_obs, next_lstm_state, next_done)
                        values[step] = value.flatten()
                    actions[step] = action
                    logprobs[step] = logprob

                    # TRY NOT TO MODIFY: execute the game and log data.
                    next_obs, reward, next_done, finished_return = envs.step(action)
                    rewards[step] = reward
                    next_done = next_done.float()
                    return_sum += finished_return.sum()
                    return_count += next_done.sum()

            if fault_on and iteration == args.fault_at and args.fault == "nan_lstm":  # FAULT INJECTION: one env's state turns NaN
                next_lstm_state[0][:, 0] = math.nan
                next_lstm_state[1][:, 0] = math.nan
            # TELEMETRY: h/c statistics of the state the next rollout starts from; sent now, so the
            # consumer checks them while we update
            emitter.lstm_state(iteration, next_lstm_state)
            emitter.flush()

            with emitter.timer("update", step=iteration, device=device):
                # bootstrap value if not done
                with torch.no_grad():
                    next_value = agent.get_value(next_obs, next_lstm_state, next_done).reshape(1, -1)
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
                b_dones = dones.reshape(-1)
                b_advantages = advantages.reshape(-1)
                b_returns = returns.reshape(-1)
                b_values = values.reshape(-1)

                # Optimizing the policy and value network
                envsperbatch = args.num_envs // args.num_minibatches
                flatinds = torch.arange(args.batch_size, device=device).reshape(args.num_steps, args.num_envs)
                clipfracs = []
                ratio_min = ratio_max = None
                for epoch in range(args.update_epochs):
                    envinds = torch.randperm(args.num_envs, device=device)
                    for start in range(0, args.num_envs, envsperbatch):
                        end = start + envsperbatch
                        mbenvinds = envinds[start:end]
                        mb_inds = flatinds[:, mbenvinds].ravel()  # be really careful about the index

                        _, newlogprob, entropy, newvalue, _ = agent.get_action_and_value(
                            b_obs[mb_inds],
                            (initial_lstm_state[0][:, mbenvinds], initial_lstm_state[1][:, mbenvinds]),
                            b_dones[mb_inds],
                            b_actions[mb_inds],
                        )
                        logratio = newlogprob - b_logprobs[mb_inds]
                        ratio = logratio.exp()

                        with torch.no_grad():
                            # calculate approx_kl http://joschu.net/blog/kl-approx.html
                            approx_kl = ((ratio - 1) - logratio).mean()
                            clipfracs += [((ratio - 1.0).abs() > args.clip_coef).float().mean()]  # kept on the device: no .item()
                            ratio_min = ratio.min() if ratio_min is None else torch.minimum(ratio_min, ratio.min())
                            ratio_max = ratio.max() if ratio_max is None else torch.maximum(ratio_max, ratio.max())

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

                        entropy_per_head = entropy.mean(1)
                        loss = pg_loss - args.ent_coef * entropy_per_head.sum() + v_loss * args.vf_coef

                        optimizer.zero_grad()
                        loss.backward()
                        if fault_on and args.fault in ("head_grad_scale", "slow_drift", "dead_head"):  # FAULT INJECTION
                            scale = {"head_grad_scale": fault_value, "dead_head": 0.0}.get(args.fault)
                            if scale is None:  # slow_drift: the scale grows by fault_value per update from the onset
                                scale = fault_value ** (iteration - args.fault_at + 1)
                            for param in fault_grads:
                                param.grad.mul_(scale)
                        # TELEMETRY: torch's clip, bit for bit, measuring every head's pre-clip norm on the way (every
                        # minibatch: the consumer combines an update's events into one, the RMS over them)
                        emitter.clip_grad_norm_(iteration, head_groups, args.max_grad_norm)
                        with emitter.param_updates(iteration, head_groups, optimizer=optimizer):  # TELEMETRY: update-to-weight ratio per head
                            optimizer.step()

                y_pred, y_true = b_values, b_returns
                var_y = y_true.var()
                explained_var = torch.where(var_y == 0, math.nan, 1 - (y_true - y_pred).var() / var_y)  # undefined is NaN, not 0
                if fault_on and args.fault == "slow_phase":  # FAULT INJECTION: the update phase gets slower by S ms
                    time.sleep(fault_value / 1000.0)

            # TELEMETRY: PPO metrics as device tensors (read back later, never here)
            emitter.ppo_update(
                iteration,
                policy_loss=pg_loss.detach(),
                value_loss=v_loss.detach(),
                entropy=dict(zip(HEADS, entropy_per_head.detach().unbind())),
                approx_kl=approx_kl,
                clip_fraction=torch.stack(clipfracs).mean(),
                ratio_min=ratio_min,
                ratio_max=ratio_max,
                explained_variance=explained_var,
                learning_rate=lrnow,
            )
            emitter.flush()
            if prof:
                prof.step()

            # TELEMETRY: the consumer's verdicts about this run (never blocks)
            for alert in emitter.poll_alerts():
                state = "cleared" if alert.cleared else alert.severity
                print(f"alert: [{state}] {alert.rule} at step {alert.step}: {alert.message}", flush=True)
                if args.stop_on_critical and alert.severity == "critical" and not alert.cleared:
                    stop_reason = f"critical alert {alert.rule} at step {alert.step}"

            # TRY NOT TO MODIFY: progress, one line every print_every updates (the only host syncs we add)
            if iteration % args.print_every == 0 or iteration == args.num_iterations or stop_reason:
                sps = int(global_step / (time.time() - start_time))
                mean_return = (return_sum / return_count).item() if return_count.item() else math.nan
                print(f"update {iteration}/{args.num_iterations} | global_step {global_step} | SPS {sps} | return {mean_return:.3f}", flush=True)
                return_sum.zero_()
                return_count.zero_()

            if stop_reason:
                print(f"stopping at update {iteration}: {stop_reason} (--stop-on-critical)", flush=True)
                break
            if fault_on and iteration == args.fault_at and args.fault == "hang":  # FAULT INJECTION: alive, silent
                print(f"hanging at update {iteration} for {args.hang_seconds or 'ever'} s (--fault hang)", flush=True)
                hang_until = time.monotonic() + (math.inf if args.hang_seconds is None else args.hang_seconds)
                while time.monotonic() < hang_until:
                    time.sleep(min(1.0, max(0.0, hang_until - time.monotonic())))

    print(f"telemetry: {emitter.stats.produced} events produced, {emitter.stats.sent} sent, {emitter.stats.dropped} dropped")
