"""The events of one realistic PPO step, shared by the benchmarks.

A factored, recurrent policy (heads slot, blueprint, blend, op and the value head) emits about
eight events per update step: GPU and host step timings, gradient norms per head before and
after clipping, LSTM state health for the actor and critic cores, and PPO metrics for two epochs.

Values come from a seeded generator, a different set for each of ``VARIANTS`` steps, so that no
benchmark sends the very same numbers every time. ``emit_step`` makes the calls the way trainer
code does (literal keyword arguments); ``STEP_EVENTS`` records exactly those calls as
``(kind, fields)`` pairs for the other senders. Nothing here touches torch.
"""

from __future__ import annotations

import random
from typing import Any, Callable

from simic.schemas.codec import KINDS

__all__ = ["HEADS", "RUN_ID", "VARIANTS", "emit_step", "emit_step_methods", "positional", "STEP_VALUES", "STEP_EVENTS"]

HEADS = ("slot", "blueprint", "blend", "op", "value")
"""Policy heads (the value head included)."""
RUN_ID = "ppo-factored-lstm-2024-08-12-a"
"""A realistic run id (30 characters)."""
VARIANTS = 64
"""Distinct value sets; step ``i`` uses set ``i % VARIANTS``."""


def step_values(rng: random.Random) -> tuple[Any, ...]:
    """Fresh realistic values for one training step, as a trainer holds them in local variables."""
    u = rng.uniform
    norms = {head: u(0.05, 3.0) for head in HEADS}
    total = sum(v * v for v in norms.values()) ** 0.5
    clipped = min(total, 0.5)
    post_norms = {h: v * clipped / total for h, v in norms.items()}
    gpu_phases = {"rollout": u(30, 60), "update": u(10, 30), "env": u(5, 20)}
    actor = (u(5, 40), u(10, 90), u(0.1, 0.6), u(0.2, 1.5), u(0.8, 1.0), u(2, 8), u(0.3, 0.9), u(0.5, 3.0),
             [u(0.1, 0.6)], [u(0.2, 1.5)])
    critic = (u(5, 40), u(10, 90), u(0.1, 0.6), u(0.2, 1.5), u(0.8, 1.0), u(2, 8))
    epochs = tuple(
        (u(-0.05, 0.05), u(0.1, 2.0), {head: u(0.2, 2.0) for head in HEADS[:4]}, u(0.001, 0.03), u(0.0, 0.3),
         u(0.6, 0.95), u(1.05, 1.6), u(-0.2, 0.95), 2.5e-4)
        for _ in range(2)
    )
    host_phases = {"collate": u(0.5, 3), "optimizer": u(1, 4), "telemetry": u(0.01, 0.1)}
    return gpu_phases, norms, total, clipped, post_norms, actor, critic, epochs, host_phases


def emit_step(emit: Callable[..., None], step: int, values: tuple[Any, ...], each: Callable[[], None] | None = None) -> None:
    """The eight ``emit`` calls of one step, written as trainer code writes them (literal keywords).

    ``each``, when given, is called after every ``emit`` (the "flush per event" variant passes ``flush``).
    """
    gpu_phases, norms, total, clipped, post_norms, actor, critic, epochs, host_phases = values
    emit("step_timing", step=step, phases_ms=gpu_phases, clock="cuda_event")
    if each is not None:
        each()
    emit("head_grad_norms", step=step, norms=norms, total=total, pre_clip_total=total, post_clip_total=clipped,
         stage="pre_clip", max_norm=0.5)
    if each is not None:
        each()
    emit("head_grad_norms", step=step, norms=post_norms, total=clipped, stage="post_clip", max_norm=0.5)
    if each is not None:
        each()
    h_norm, c_norm, h_rms, c_rms, h_max_abs, c_max_abs, h_env_max_rms, c_env_max_rms, layer_h_rms, layer_c_rms = actor
    emit("lstm_health", step=step, h_norm=h_norm, c_norm=c_norm, h_rms=h_rms, c_rms=c_rms, h_max_abs=h_max_abs,
         c_max_abs=c_max_abs, h_env_max_rms=h_env_max_rms, c_env_max_rms=c_env_max_rms, has_nan=False,
         has_inf=False, layer_h_rms=layer_h_rms, layer_c_rms=layer_c_rms, envs=64)
    if each is not None:
        each()
    h_norm, c_norm, h_rms, c_rms, h_max_abs, c_max_abs = critic
    emit("lstm_health", step=step, h_norm=h_norm, c_norm=c_norm, h_rms=h_rms, c_rms=c_rms, h_max_abs=h_max_abs,
         c_max_abs=c_max_abs, has_nan=False, has_inf=False, envs=64)
    if each is not None:
        each()
    for policy_loss, value_loss, entropy, approx_kl, clip_fraction, ratio_min, ratio_max, explained_variance, lr in epochs:
        emit("ppo_update", step=step, policy_loss=policy_loss, value_loss=value_loss, entropy=entropy,
             approx_kl=approx_kl, clip_fraction=clip_fraction, ratio_min=ratio_min, ratio_max=ratio_max,
             explained_variance=explained_variance, learning_rate=lr)
        if each is not None:
            each()
    emit("step_timing", step=step, phases_ms=host_phases)
    if each is not None:
        each()


def emit_step_methods(emitter: Any, step: int, values: tuple[Any, ...]) -> None:
    """The same eight events through the generated ``emit_<kind>`` methods (the fast spelling)."""
    gpu_phases, norms, total, clipped, post_norms, actor, critic, epochs, host_phases = values
    emitter.emit_step_timing(step=step, phases_ms=gpu_phases, clock="cuda_event")
    emitter.emit_head_grad_norms(step=step, norms=norms, total=total, pre_clip_total=total, post_clip_total=clipped,
                                 stage="pre_clip", max_norm=0.5)
    emitter.emit_head_grad_norms(step=step, norms=post_norms, total=clipped, stage="post_clip", max_norm=0.5)
    h_norm, c_norm, h_rms, c_rms, h_max_abs, c_max_abs, h_env_max_rms, c_env_max_rms, layer_h_rms, layer_c_rms = actor
    emitter.emit_lstm_health(step=step, h_norm=h_norm, c_norm=c_norm, h_rms=h_rms, c_rms=c_rms, h_max_abs=h_max_abs,
                             c_max_abs=c_max_abs, h_env_max_rms=h_env_max_rms, c_env_max_rms=c_env_max_rms, has_nan=False,
                             has_inf=False, layer_h_rms=layer_h_rms, layer_c_rms=layer_c_rms, envs=64)
    h_norm, c_norm, h_rms, c_rms, h_max_abs, c_max_abs = critic
    emitter.emit_lstm_health(step=step, h_norm=h_norm, c_norm=c_norm, h_rms=h_rms, c_rms=c_rms, h_max_abs=h_max_abs,
                             c_max_abs=c_max_abs, has_nan=False, has_inf=False, envs=64)
    for policy_loss, value_loss, entropy, approx_kl, clip_fraction, ratio_min, ratio_max, explained_variance, lr in epochs:
        emitter.emit_ppo_update(step=step, policy_loss=policy_loss, value_loss=value_loss, entropy=entropy,
                                approx_kl=approx_kl, clip_fraction=clip_fraction, ratio_min=ratio_min, ratio_max=ratio_max,
                                explained_variance=explained_variance, learning_rate=lr)
    emitter.emit_step_timing(step=step, phases_ms=host_phases)


def _recorded(values: tuple[Any, ...]) -> list[tuple[str, dict[str, Any]]]:
    calls: list[tuple[str, dict[str, Any]]] = []
    emit_step(lambda kind, *, step, **fields: calls.append((kind, fields)), 0, values)
    return calls


def positional(kind: str, fields: dict[str, Any]) -> tuple[int, tuple[Any, ...]]:
    """The kind code and the payload in wire order (trailing unsent fields left off), as a hand-written sender would build it."""
    spec = KINDS[kind]
    values = [fields.get(name) for name in spec.fields]
    while values and values[-1] is None:
        values.pop()
    return spec.code, tuple(values)


STEP_VALUES: list[tuple[Any, ...]] = [step_values(random.Random(1000 + i)) for i in range(VARIANTS)]
"""``VARIANTS`` prepared steps (values drawn once, outside any timed region); pass one to :func:`emit_step`."""
STEP_EVENTS: list[list[tuple[str, dict[str, Any]]]] = [_recorded(values) for values in STEP_VALUES]
"""The same steps as ``(kind, fields)`` pairs: exactly what :func:`emit_step` passes to ``emit``."""
