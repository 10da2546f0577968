"""Stable-Baselines3 and sb3-contrib: ``SimicCallback``, telemetry for ``model.learn()`` as it is.

::

    from simic.producer.integrations.sb3 import SimicCallback

    model = RecurrentPPO("MlpLstmPolicy", env)        # or PPO, A2C, MaskablePPO: any on-policy algorithm
    model.learn(100_000, callback=SimicCallback(run_id="cartpole-7", spawn_consumer={"log_dir": "runs/7/telemetry"}))

**The step rule.** One step is one update: one ``train()`` call, numbered 0, 1, 2, ... in the order
``learn()`` makes them. The rollout that feeds an update carries its number too. A second
``learn()`` with the same callback goes on counting where the first stopped.

**What each update sends**

- ``head_grad_norms``: per head the L2 norm of the gradient *before* SB3's
  ``clip_grad_norm_(policy.parameters(), max_grad_norm)``, and the total over every trainable policy
  parameter before and after that clip (``stage="pre_clip"``, ``max_norm=max_grad_norm``). PPO takes
  several optimizer steps (minibatches times epochs) per update: each norm is their root mean
  square and ``samples`` says how many (A2C: one).
- ``param_updates``: per head the update-to-weight ratio ``||theta_after - theta_before|| / ||theta_before||``
  of each optimizer step (the step size Adam really took), their root mean square over the update
  and ``samples``, with the optimizer's learning rate. It keeps one copy of the policy's trainable
  parameters (SB3 policies are small).
- ``ppo_update``: what SB3 itself logged for the update (``model.logger``): ``train/approx_kl``,
  ``train/clip_fraction``, ``train/policy_gradient_loss`` (A2C: ``train/policy_loss``),
  ``train/value_loss``, ``train/explained_variance``, ``train/learning_rate``, ``train/clip_range``,
  ``train/loss``, and the entropy as ``-train/entropy_loss`` (under the head ``policy``). A2C logs
  a subset; a metric SB3 did not log stays missing.
- ``metrics``: every other number SB3 logged under ``train/`` (``train/std``, ``train/n_updates``,
  ...), and ``optimizer/lr``.
- ``step_timing``: the phases ``rollout`` (``on_rollout_start`` to ``on_rollout_end``) and ``train``
  (``on_rollout_end`` to the next ``on_rollout_start`` or the end of training: SB3's log dump and
  ``train()``), in one event. CUDA events on the model's device, host time on the CPU.
- ``lstm_health`` (RecurrentPPO): the state ``(h, c)`` of ``lstm_actor`` (``name="actor"``) and of
  ``lstm_critic`` (``name="critic"``, when the policy has its own critic LSTM; a shared LSTM is the
  actor's) after the last step of the rollout, as the policy's forward during collection left it
  (not the training-time sequence forward).
- ``episodes``: returns and lengths of the episodes that ended during the rollout, when SB3's
  ``Monitor`` wrapper reports them (``infos[i]["episode"]``); none ended, no event.

**The heads** (recorded in ``run_start``; the value head is ``value_net``, named ``value``):

=====================  =======================================================================
action space           action heads
=====================  =======================================================================
``Discrete``           ``action``: ``action_net``
``MultiDiscrete``      ``action_0``, ``action_1``, ...: each sub-action's rows of the shared
                       ``action_net`` (weight and bias), ``action_names=[...]`` names them
``MultiBinary``        ``action_0``, ...: one row of ``action_net`` per binary sub-action
``Box``                ``mean`` (``action_net``) and ``log_std`` (the policy's ``log_std``)
=====================  =======================================================================

More than 32 sub-actions without ``action_names`` make one head, ``action``. Any other space (or a
policy without ``action_net`` and ``value_net``) is refused when training starts, with a
ValueError; pass ``heads={name: module | params | (param, rows)}`` (or a function of the policy
returning that) to choose the heads yourself.

**Where in SB3's loop**::

    learn()
      on_training_start     emitter made (or the one given used); hooks installed
      collect_rollouts()
        on_rollout_start    update N-1 ends: its norms, ppo_update, metrics; "train" N-1 stops, "rollout" N starts
        policy(obs)         forward hooks keep a reference to lstm_actor/lstm_critic's (h, c)
        on_step             episodes gathered from infos; the first one flushes (update N-1 leaves),
                            the last one polls alerts (stop_on_critical)
        on_rollout_end      lstm_health and episodes of N; flush; "rollout" N stops, "train" N starts
      dump_logs(); train()  end of each backward: per-head norms (pre-clip, on the device);
                            each optimizer step: they join update N; SB3 logs train/...
      on_training_end       update N ends as above; an emitter the callback made is closed

Nothing in SB3 is patched: the callback uses ``BaseCallback``'s hooks, torch's module, gradient and
optimizer hooks (through :meth:`~simic.producer.Emitter.watch`) and the public attributes of the
model and its policy. It reads no device value on the host: the norms and LSTM statistics travel
through the emitter's readout path (pinned memory behind a CUDA event, read at a later flush), and
SB3's logged values are host numbers already. On CUDA the events of update N leave at the first
environment step of update N+1, whose action copy has waited for the GPU anyway.

**The emitter and its lifetime.** ``SimicCallback(emitter=e)`` uses ``e`` and never closes it (it
flushes at the end of training); its ``run_start`` has the heads it was made with
(``policy_heads(model.policy)`` gives them). Otherwise the keyword arguments are the
:class:`~simic.producer.Emitter`'s: without ``endpoint`` the emitter comes from
``Emitter.from_env`` (``SIMIC_ENDPOINT``, ``SIMIC_RUN_ID`` or a run id from host, pid and time; with
neither ``SIMIC_ENDPOINT`` nor ``spawn_consumer`` telemetry is off and the callback does nothing).
It is made when training starts (``run_start`` then names the heads and the algorithm's settings)
and closed when training ends, which sends ``run_end`` and stops a spawned consumer. A further
``learn()`` with the same callback makes a new emitter: a new producer session of the same run (a
spawned consumer is started again on the same log directory), with update numbers going on.
``callback.emitter`` is the emitter in use (its ``stats``, ``poll_alerts()``, ``sidecar``), and stays
readable after training. A ``learn()`` ended by an exception skips ``on_training_end``: the emitter's
exit hooks then send ``run_end`` with the error at interpreter exit, or the next ``learn()`` with this
callback goes on with the same emitter.

**stop_on_critical=True**: at the last environment step of each rollout the callback polls the
consumer's alerts and, on a critical alert not yet cleared, returns False from ``_on_step``: SB3 ends
``learn()`` before that rollout's update, and ``callback.stop_alert`` is the alert. The events of
update N leave early in the next rollout, so an alert about them stops training before update N+1
trains when the consumer answers within that rollout (else at the next rollout's end).
"""

from __future__ import annotations

import inspect
import logging
import numbers
import os
import socket
import time
from typing import Any, Callable, Mapping, Sequence

import torch
from gymnasium import spaces
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm

from simic.producer import Emitter, NullEmitter
from simic.schemas.transport import RUN_ID_ENV
from simic.schemas.models import MAX_ITEMS

__all__ = ["SimicCallback", "policy_heads", "PPO_METRICS", "MAX_SUB_ACTION_HEADS"]

log = logging.getLogger("simic.producer")

PPO_METRICS: Mapping[str, str] = {
    "train/approx_kl": "approx_kl",
    "train/clip_fraction": "clip_fraction",
    "train/policy_gradient_loss": "policy_loss",
    "train/policy_loss": "policy_loss",
    "train/value_loss": "value_loss",
    "train/explained_variance": "explained_variance",
    "train/learning_rate": "learning_rate",
    "train/clip_range": "clip_range",
    "train/loss": "loss",
}
"""SB3's logger key -> ``ppo_update`` field (``train/entropy_loss`` becomes ``entropy``, negated)."""
ENTROPY_LOSS = "train/entropy_loss"
N_UPDATES = "train/n_updates"
"""SB3 counts gradient steps here at every ``train()``: a value already seen means nothing new was logged."""
MAX_SUB_ACTION_HEADS = 32
"""A MultiDiscrete or MultiBinary space with more sub-actions than this (and no ``action_names``) gets one head."""
VALUE_HEAD = "value"
_CONFIG_ATTRS = ("n_envs", "n_steps", "batch_size", "n_epochs", "gamma", "gae_lambda", "ent_coef", "vf_coef",
                 "max_grad_norm", "target_kl", "normalize_advantage", "use_sde", "seed")
_EMITTER_ARGS = frozenset(inspect.signature(Emitter.__init__).parameters) - {"self"}


def policy_heads(policy: Any, action_names: Sequence[str] | None = None) -> dict[str, Any]:
    """The default heads of an SB3 actor-critic policy: name -> module | parameters | ``(param, rows)``.

    Args:
        policy: ``model.policy`` (an ``ActorCriticPolicy`` or a subclass, recurrent ones included).
        action_names: names of the sub-actions of a MultiDiscrete or MultiBinary space (one per
            sub-action), or the one name of a Discrete action head. Default ``action_0``, ... / ``action``.

    Raises:
        ValueError: a policy without ``action_net``/``value_net``, an action space without default
            heads, or ``action_names`` that do not fit it.
    """
    action_net = getattr(policy, "action_net", None)
    value_net = getattr(policy, "value_net", None)
    space = getattr(policy, "action_space", None)
    if not isinstance(action_net, torch.nn.Linear) or not isinstance(value_net, torch.nn.Module):
        raise ValueError(f"{type(policy).__name__} has no action_net Linear and value_net: pass heads= to SimicCallback")
    names = None if action_names is None else list(action_names)
    if isinstance(space, spaces.Box):
        if names is not None:
            raise ValueError("action_names names the sub-actions of a Discrete, MultiDiscrete or MultiBinary space, not a Box")
        heads: dict[str, Any] = {"mean": action_net}
        log_std = getattr(policy, "log_std", None)
        if isinstance(log_std, torch.nn.Parameter) and log_std.requires_grad:
            heads["log_std"] = [log_std]
    elif isinstance(space, spaces.Discrete):
        if names is not None and len(names) != 1:
            raise ValueError(f"a Discrete space has one action head; got action_names={names}")
        heads = {(names or ["action"])[0]: action_net}
    elif isinstance(space, (spaces.MultiDiscrete, spaces.MultiBinary)):
        if isinstance(space, spaces.MultiDiscrete):
            sizes = [int(n) for n in space.nvec.ravel()]
        else:
            sizes = [1] * int(torch.Size(space.shape).numel())
        if sum(sizes) != action_net.out_features:
            raise ValueError(f"action_net has {action_net.out_features} outputs, the action space {space} needs "
                             f"{sum(sizes)}: pass heads= to SimicCallback")
        if names is not None and len(names) != len(sizes):
            raise ValueError(f"the action space {space} has {len(sizes)} sub-actions; got {len(names)} action_names")
        if names is None and len(sizes) > MAX_SUB_ACTION_HEADS:
            heads = {"action": action_net}
        else:
            heads = {}
            start = 0
            for k, size in enumerate(sizes):
                rows = slice(start, start + size)
                heads[names[k] if names else f"action_{k}"] = [(action_net.weight, rows), (action_net.bias, rows)]
                start += size
    else:
        raise ValueError(f"no default heads for the action space {space}: pass heads= to SimicCallback")
    if VALUE_HEAD in heads:
        raise ValueError(f"the head name {VALUE_HEAD!r} is taken by the value head; choose other action_names")
    heads[VALUE_HEAD] = value_net
    return heads


class SimicCallback(BaseCallback):
    """Sends per-update telemetry of an SB3 on-policy algorithm to a ``simic-consumer`` (see the module doc).

    Args:
        emitter: an :class:`~simic.producer.Emitter` to use (not closed by the callback). None: one
            is made from ``emitter_kwargs`` when training starts, and closed when it ends.
        action_names: names of the sub-actions (see :func:`policy_heads`).
        heads: head name -> module | parameters | ``(param, rows)``, or a function of the policy
            returning that; replaces the default heads.
        stop_on_critical: poll alerts once per rollout and stop training on a critical, uncleared one.
        verbose: SB3's verbosity (1: say when stopping on an alert).
        **emitter_kwargs: keyword arguments of :class:`~simic.producer.Emitter` (``run_id``,
            ``endpoint``, ``spawn_consumer``, ``config``, ...), when ``emitter`` is None.

    Raises:
        ValueError: ``emitter`` together with emitter keyword arguments, or an unknown keyword. The
            model is checked when training starts (an on-policy algorithm with heads it can resolve).
    """

    def __init__(self, emitter: Emitter | NullEmitter | None = None, *, action_names: Sequence[str] | None = None,
                 heads: Mapping[str, Any] | Callable[[Any], Mapping[str, Any]] | None = None,
                 stop_on_critical: bool = False, verbose: int = 0, **emitter_kwargs: Any) -> None:
        super().__init__(verbose)
        if emitter is not None and emitter_kwargs:
            raise ValueError(f"pass either emitter= or the Emitter's keyword arguments, not both ({sorted(emitter_kwargs)})")
        unknown = set(emitter_kwargs) - _EMITTER_ARGS
        if unknown:
            raise ValueError(f"unknown keyword argument(s) {sorted(unknown)}; the Emitter takes {sorted(_EMITTER_ARGS)}")
        self.emitter: Emitter | NullEmitter | None = emitter
        """The emitter in use (None until training first starts)."""
        self.stop_alert: Any = None
        """The critical alert that stopped training (``stop_on_critical``), else None."""
        self.action_names = None if action_names is None else list(action_names)
        self.heads = heads
        self.stop_on_critical = bool(stop_on_critical)
        self._given = emitter
        self._emitter_kwargs = dict(emitter_kwargs)
        self._next_update = 0
        self._update = -1  # the update the current (or last) rollout feeds
        self._training: int | None = None  # the update whose train() runs now (between rollouts)
        self._in_rollout = False
        self._rollout_steps = 0
        self._in_policy_forward = False
        self._lstm_seen: dict[str, Any] = {}
        self._returns: list[float] = []
        self._lengths: list[int] = []
        self._last_n_updates: Any = None
        self._logger_failed = False
        self._watch: Any = None
        self._handles: list[Any] = []
        self._rollout_timer: Any = None
        self._train_timer: Any = None

    # -- setup (raises ValueError) --------------------------------------------------------------

    def _init_callback(self) -> None:
        if not isinstance(self.model, OnPolicyAlgorithm):
            raise ValueError(f"SimicCallback supports on-policy algorithms (PPO, A2C, RecurrentPPO, ...), "
                             f"not {type(self.model).__name__}")
        self._heads_for(self.model.policy)  # a policy it cannot read fails before training

    def _heads_for(self, policy: Any) -> dict[str, Any]:
        heads = self.heads(policy) if callable(self.heads) else self.heads
        return dict(heads) if heads is not None else policy_heads(policy, self.action_names)

    def _on_training_start(self) -> None:
        model = self.model
        policy = model.policy
        heads = self._heads_for(policy)
        if self.emitter is None or (self._given is None and self.emitter.closed):
            self.emitter = self._make_emitter(model, list(heads))
        emitter = self.emitter
        self._remove_hooks()
        clip = getattr(model, "max_grad_norm", None)
        clip = float(clip) if isinstance(clip, numbers.Real) and clip > 0 else None
        self._watch = emitter.watch(policy, policy.optimizer, heads=heads, clip=clip, step=self._current_update,
                                    timing=False)
        self._rollout_timer = emitter.timer("rollout", device=model.device)
        self._train_timer = emitter.timer("train", device=model.device)
        self._training = None
        self._in_rollout = False
        if not isinstance(emitter, NullEmitter):
            self._hook_lstms(policy)

    def _make_emitter(self, model: Any, heads: list[str]) -> Emitter | NullEmitter:
        kwargs = dict(self._emitter_kwargs)
        kwargs.setdefault("heads", heads)
        kwargs["config"] = {**_run_config(model), **(kwargs.get("config") or {})}
        if "device" not in kwargs:
            kwargs["device"] = _device_name(model.device)
        endpoint = kwargs.pop("endpoint", None)
        if endpoint is None:
            return Emitter.from_env(**kwargs)
        kwargs.setdefault("run_id", os.environ.get(RUN_ID_ENV) or f"{socket.gethostname()}-{os.getpid()}-{int(time.time())}")
        return Emitter(endpoint, **kwargs)

    def _hook_lstms(self, policy: Any) -> None:
        """Forward hooks that keep the (h, c) the policy's rollout forward leaves (a reference, no copy)."""
        lstms = {}
        for name, attr in (("actor", "lstm_actor"), ("critic", "lstm_critic")):
            module = getattr(policy, attr, None)
            if isinstance(module, torch.nn.RNNBase):
                lstms[name] = module
        if not lstms:
            return
        self._handles.append(policy.register_forward_pre_hook(self._enter_policy_forward))
        self._handles.append(policy.register_forward_hook(self._leave_policy_forward))
        for name, module in lstms.items():
            self._handles.append(module.register_forward_hook(self._lstm_hook(name)))

    def _enter_policy_forward(self, module: Any, args: Any) -> None:
        self._in_policy_forward = self._in_rollout

    def _leave_policy_forward(self, module: Any, args: Any, output: Any) -> None:
        self._in_policy_forward = False

    def _lstm_hook(self, name: str) -> Callable[..., None]:
        def hook(module: Any, args: Any, output: Any) -> None:
            if self._in_policy_forward and isinstance(output, tuple) and len(output) == 2:
                self._lstm_seen[name] = output[1]

        return hook

    def _current_update(self) -> int:
        return self._update

    # -- SB3's callback hooks (nothing raises into SB3 from here on) ----------------------------

    def _on_rollout_start(self) -> None:
        self._end_update()
        self._update = self._next_update
        self._next_update += 1
        self._in_rollout = True
        self._rollout_steps = 0
        self._rollout_timer.start()

    def _on_step(self) -> bool:
        self._rollout_steps += 1
        emitter = self.emitter
        if self._rollout_steps == 1:
            emitter.flush()  # the last update's events; on CUDA this step's action copy waited for them
        for info in self.locals.get("infos") or ():
            episode = info.get("episode") if isinstance(info, dict) else None
            if episode is not None:
                self._returns.append(episode["r"])
                self._lengths.append(episode["l"])
        if self.stop_on_critical and self._rollout_steps == self.model.n_steps:
            return self._keep_training()
        return True

    def _keep_training(self) -> bool:
        for alert in self.emitter.poll_alerts():
            if alert.severity == "critical" and not alert.cleared:
                self.stop_alert = alert
                log.warning("simic: stopping training at update %d: critical alert %s at step %s: %s",
                            self._update, alert.rule, alert.step, alert.message)
                if self.verbose >= 1:
                    print(f"SimicCallback: stopping at update {self._update}: critical alert {alert.rule} "
                          f"at step {alert.step}")
                return False
        return True

    def _on_rollout_end(self) -> None:
        update = self._update
        self._end_rollout()
        self.emitter.flush()
        self._rollout_timer.stop(update)
        self._training = update
        self._train_timer.start()

    def _on_training_end(self) -> None:
        if self._in_rollout:  # stopped during a rollout (stop_on_critical, another callback): no update followed
            self._end_rollout()
            self._rollout_timer.stop(self._update)
        self._end_update()
        self._remove_hooks()
        if self._given is None:
            self.emitter.close()
        else:
            self.emitter.flush()

    # -- the end of a rollout and of an update ----------------------------------------------------

    def _end_rollout(self) -> None:
        self._in_rollout = False
        update, emitter = self._update, self.emitter
        seen, self._lstm_seen = self._lstm_seen, {}
        for name, hidden in seen.items():
            emitter.lstm_state(update, hidden, name=name)
        if self._returns:
            count = len(self._returns)
            emitter.emit("episodes", step=update, returns=self._returns[-MAX_ITEMS:],
                         lengths=self._lengths[-MAX_ITEMS:], count=count)
            self._returns, self._lengths = [], []

    def _end_update(self) -> None:
        """The update whose train() ran since the last rollout ended: its timing, norms and logged metrics."""
        update = self._training
        if update is None:
            return
        self._training = None
        self._train_timer.stop(update)
        self._watch.end_step()
        try:
            values = self.model.logger.name_to_value
            n_updates = values.get(N_UPDATES)
            if n_updates is not None and n_updates == self._last_n_updates:
                return  # nothing logged since the last update's values
            self._last_n_updates = n_updates
            ppo: dict[str, Any] = {}
            other: dict[str, Any] = {}
            for key, value in list(values.items()):
                if not key.startswith("train/") or not _is_number(value):
                    continue
                field = PPO_METRICS.get(key)
                if field is not None:
                    ppo[field] = value
                elif key == ENTROPY_LOSS:
                    ppo["entropy"] = -value
                else:
                    other[key] = value
        except Exception as exc:  # a logger without name_to_value: no metrics (said once)
            if not self._logger_failed:
                self._logger_failed = True
                log.warning("simic: cannot read SB3's logged train/ values (%r); ppo_update is not sent", exc)
            return
        if ppo:
            self.emitter.ppo_update(update, **ppo)
        if other:
            self.emitter.metrics(update, other)

    def _remove_hooks(self) -> None:
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._lstm_seen = {}
        self._in_policy_forward = False


def _is_number(value: Any) -> bool:
    """A number SB3 logged: Python or numpy, or a one-element array or tensor (read later, never here)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, numbers.Real):
        return True
    if isinstance(value, torch.Tensor):
        return value.numel() == 1
    return hasattr(value, "dtype") and getattr(value, "size", None) == 1


def _run_config(model: Any) -> dict[str, Any]:
    """The algorithm and its settings, for ``run_start`` (plain values only)."""
    config: dict[str, Any] = {
        "algorithm": type(model).__name__,
        "policy": type(model.policy).__name__,
        "action_space": str(model.action_space)[:512],
        "observation_space": str(model.observation_space)[:512],
    }
    for name in _CONFIG_ATTRS:
        value = getattr(model, name, None)
        if isinstance(value, (bool, int, float, str)):
            config[name] = value
    return config


def _device_name(device: Any) -> str:
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(device)
    return str(device)
