"""A small stand-in trainer for docker/compose.yaml: a recurrent policy with factored heads.

It trains for real (torch, backward, gradient clipping) on a toy objective and reports through
the public producer API only: ``Emitter.from_env()`` (SIMIC_ENDPOINT, SIMIC_RUN_ID) and ``emit``.
Without SIMIC_ENDPOINT it runs with telemetry off. Replace it with the reference trainer by
setting TRAINER in compose (``TRAINER="python /src/examples/<trainer>.py"``).

    SIMIC_ENDPOINT=ipc:///run/simic/consumer.ipc python docker/trainer.py --steps 300
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from simic.producer import Emitter

HEADS = {"slot": 8, "blueprint": 6, "blend": 4, "op": 5}


class Policy(nn.Module):
    def __init__(self, obs: int = 16, hidden: int = 64) -> None:
        super().__init__()
        self.core = nn.LSTM(obs, hidden, batch_first=True)
        self.heads = nn.ModuleDict({name: nn.Linear(hidden, n) for name, n in HEADS.items()})
        self.value = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor):
        out, (h, c) = self.core(x)
        last = out[:, -1]
        return {name: head(last) for name, head in self.heads.items()}, self.value(last).squeeze(-1), (h, c)


def grad_norm(module: nn.Module) -> float | None:
    grads = [p.grad.detach().norm() for p in module.parameters() if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack(grads))) if grads else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="optimiser steps")
    parser.add_argument("--envs", type=int, default=32, help="sequences per batch")
    parser.add_argument("--max-norm", type=float, default=0.5, help="gradient clipping threshold")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    torch.manual_seed(0)
    device = torch.device(args.device)
    policy = Policy().to(device)
    optimiser = torch.optim.Adam(policy.parameters(), lr=3e-3)
    names = [*HEADS, "value"]
    with Emitter.from_env(heads=names, config=vars(args), device=str(device)) as emitter:
        for step in range(args.steps):
            started = time.perf_counter()
            obs = torch.randn(args.envs, 8, 16, device=device)
            targets = {name: (obs[:, -1, :n].argmax(-1)) for name, n in HEADS.items()}  # learnable: the largest feature
            returns = obs[:, :, 0].sum(-1)
            rollout_ms = (time.perf_counter() - started) * 1e3

            started = time.perf_counter()
            logits, value, (h, c) = policy(obs)
            dists = {name: torch.distributions.Categorical(logits=lg) for name, lg in logits.items()}
            policy_loss = sum(-d.log_prob(targets[name]).mean() for name, d in dists.items())
            value_loss = (value - returns).pow(2).mean()
            optimiser.zero_grad(set_to_none=True)
            (policy_loss + 0.5 * value_loss).backward()
            norms = {name: grad_norm(policy.heads[name]) for name in HEADS} | {"value": grad_norm(policy.value)}
            pre_clip = float(nn.utils.clip_grad_norm_(policy.parameters(), args.max_norm))
            post_clip = grad_norm(policy)
            optimiser.step()
            update_ms = (time.perf_counter() - started) * 1e3

            emitter.emit("step_timing", step=step, phases_ms={"rollout": rollout_ms, "update": update_ms})
            emitter.emit("head_grad_norms", step=step, norms=norms, stage="pre_clip", pre_clip_total=pre_clip,
                         post_clip_total=post_clip, max_norm=args.max_norm)
            state = torch.cat([h, c]).detach()
            emitter.emit("lstm_health", step=step, h_norm=float(h.norm()), c_norm=float(c.norm()), h_rms=float(h.pow(2).mean().sqrt()),
                         c_rms=float(c.pow(2).mean().sqrt()), h_max_abs=float(h.abs().max()), c_max_abs=float(c.abs().max()),
                         has_nan=bool(state.isnan().any()), has_inf=bool(state.isinf().any()), envs=args.envs)
            explained = 1 - float((returns - value.detach()).var() / returns.var())
            emitter.emit("ppo_update", step=step, policy_loss=float(policy_loss), value_loss=float(value_loss),
                         entropy={name: float(d.entropy().mean()) for name, d in dists.items()}, explained_variance=explained,
                         learning_rate=optimiser.param_groups[0]["lr"])
            emitter.flush()
            if step % 50 == 0 or step == args.steps - 1:
                print(f"step {step}: policy loss {float(policy_loss):.3f}, value loss {float(value_loss):.3f}", flush=True)
    print(f"telemetry: {emitter.stats.as_dict()}", flush=True)


if __name__ == "__main__":
    main()
