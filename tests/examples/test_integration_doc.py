"""docs/INTEGRATION.md: its snippets, taken from the markdown, run for real against a real simic-consumer."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

with warnings.catch_warnings():  # torch without numpy says so once, at import: not this test's business
    warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
    import torch
    import torch.nn as nn

from simic.producer import spawn_consumer
from tests.logs import events_of

DOC = Path(__file__).resolve().parents[2] / "docs" / "INTEGRATION.md"
HEADS = ["slot", "blueprint", "blend", "op"]
WAIT_S = 60.0
"""Hang guard for waiting on the consumer (not a timing assertion)."""


def snippet(name: str) -> str:
    """The python block that follows ``<!-- test: NAME -->`` in the document."""
    match = re.search(rf"<!-- test: {name} -->\s*```python\n(.*?)```", DOC.read_text(), re.S)
    assert match, f"no snippet {name!r} in {DOC}"
    return match.group(1)


def kinds(log_dir: Path, run_id: str) -> dict[str, int]:
    result = subprocess.run([sys.executable, "-m", "simic.consumer", "inspect", str(log_dir), "--json"],
                            capture_output=True, text=True, timeout=WAIT_S, check=True)
    (session,) = json.loads(result.stdout)["runs"][run_id]
    assert session["status"] == "ok" and session["lost"] == 0
    return session["events_by_kind"]


class TinyAgent(nn.Module):
    """A factored recurrent policy small enough to train in milliseconds."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Linear(6, 8)
        self.lstm = nn.LSTM(8, 8)
        self.heads = nn.ModuleDict({head: nn.Linear(8, 3) for head in HEADS})
        self.actor = self.heads["slot"]
        self.critic = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]):
        hidden, state = self.lstm(torch.tanh(self.encoder(x)), state)
        return hidden, state


@pytest.fixture
def consumer(tmp_path, monkeypatch):
    """A real consumer; SIMIC_ENDPOINT and SIMIC_RUN_ID point the snippets' Emitter.from_env() at it."""
    sidecar = spawn_consumer(log_dir=tmp_path / "logs")
    monkeypatch.setenv("SIMIC_ENDPOINT", sidecar.endpoint)
    monkeypatch.setenv("SIMIC_RUN_ID", "doc")
    yield sidecar
    sidecar.close()


def ended(sidecar) -> None:
    line = sidecar.wait_for_line("run doc rank 0 session", timeout_s=WAIT_S)
    assert line is not None and "ended (ok)" in line, "".join(sidecar.lines)


class TestIntegrationDoc:
    def test_own_loop_snippet_sends_every_kind_in_at_most_15_added_lines(self, consumer):
        """The CleanRL-style snippet runs as written and the consumer logs timings, grad norms, LSTM state and PPO metrics per update."""
        code = snippet("own-loop")
        added = [line for line in code.splitlines() if line.rstrip().endswith("# simic") or "# simic:" in line]
        assert len(added) <= 15
        torch.manual_seed(0)
        agent = TinyAgent()
        x = torch.randn(5, 4, 6)

        def rollout(agent, state):
            with torch.no_grad():
                return agent(x, state)[1]

        def ppo_loss(agent):
            hidden, _ = agent(x, (torch.zeros(1, 4, 8), torch.zeros(1, 4, 8)))
            dists = [torch.distributions.Categorical(logits=head(hidden)) for head in agent.heads.values()]
            entropy = {head: d.entropy().mean() for head, d in zip(HEADS, dists)}
            loss = -sum(entropy.values()) + agent.critic(hidden).pow(2).mean()
            return loss, torch.tensor(0.01), {head: e.detach() for head, e in entropy.items()}

        namespace = {"agent": agent, "rollout": rollout, "ppo_loss": ppo_loss, "torch": torch, "num_iterations": 6,
                     "optimizer": torch.optim.Adam(agent.parameters(), lr=1e-3),
                     "next_lstm_state": (torch.zeros(1, 4, 8), torch.zeros(1, 4, 8))}
        exec(compile(code, f"{DOC}:own-loop", "exec"), namespace)
        ended(consumer)
        events = kinds(consumer.log_dir, "doc")
        assert events["step_timing"] == events["head_grad_norms"] == events["lstm_health"] == events["ppo_update"] == 6

    def test_compiled_snippet_sends_the_norms_its_function_measured(self, consumer):
        """The compiled-update snippet as written (its function run eagerly here; the GPU tests compile and
        capture it): one head_grad_norms per minibatch with the pre-clip total, timings and metrics per update."""
        code = snippet("compiled")
        torch.manual_seed(0)
        agent = nn.Module()
        agent.actor_mean = nn.Linear(4, 2)
        agent.actor_logstd = nn.Parameter(torch.zeros(1, 2))
        agent.critic = nn.Linear(4, 1)
        x = torch.randn(8, 4)

        def ppo_loss(agent, batch):
            mean = agent.actor_mean(x * batch)
            loss = (mean - 1).square().mean() + agent.actor_logstd.square().sum() + agent.critic(x).square().mean()
            return loss, {"policy_loss": loss.detach(), "approx_kl": torch.tensor(0.01)}

        namespace = {"agent": agent, "ppo_loss": ppo_loss, "num_iterations": 3, "minibatches": lambda: [1.0, 2.0, 3.0, 4.0],
                     "optimizer": torch.optim.SGD(agent.parameters(), lr=1e-2)}
        exec(compile(code, f"{DOC}:compiled", "exec"), namespace)
        ended(consumer)
        events = kinds(consumer.log_dir, "doc")
        assert events["head_grad_norms"] == 12 and events["step_timing"] == events["ppo_update"] == 3
        grads = [e for e in events_of(consumer.log_dir, "doc") if e.kind == "head_grad_norms"]
        assert all(e.stage == "pre_clip" and e.pre_clip_total > 0 and set(e.norms) == {"mean", "log_std", "value"} for e in grads)

    def test_watch_snippet_instruments_a_loop_it_does_not_edit(self, consumer):
        """The watch snippet (at most 10 lines), around an untouched PPO-shaped loop of 4 updates of 3
        minibatches: one head_grad_norms per update (samples=3), LSTM state and timings per update."""
        code = snippet("watch")
        lines = [line for line in code.splitlines() if line.strip()]
        assert len(lines) <= 10
        setup, teardown = code.split("\n...")
        teardown = teardown.split("\n", 1)[1]  # the "..." line stands for the loop below
        torch.manual_seed(0)
        model = TinyAgent()
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
        namespace = {"model": model, "optimizer": optimizer, "update": 0}
        exec(compile(setup, f"{DOC}:watch", "exec"), namespace)

        for namespace["update"] in range(4):  # "the library's loop": it knows nothing of simic
            with torch.no_grad():
                model(torch.randn(5, 4, 6), (torch.zeros(1, 4, 8), torch.zeros(1, 4, 8)))  # the rollout
            for _ in range(3):
                hidden, _ = model(torch.randn(5, 4, 6), (torch.zeros(1, 4, 8), torch.zeros(1, 4, 8)))
                loss = model.actor(hidden).logsumexp(-1).mean() + model.critic(hidden).pow(2).mean()
                optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
                optimizer.step()
        exec(compile(teardown, f"{DOC}:watch", "exec"), namespace)
        ended(consumer)
        events = kinds(consumer.log_dir, "doc")
        assert events["head_grad_norms"] == events["lstm_health"] == events["step_timing"] == 4

    def test_numbers_snippet_sends_what_it_is_handed(self, consumer):
        """The emit_<kind> snippet with numpy and Python numbers: one event of each kind per update, values as given."""
        np = pytest.importorskip("numpy")  # the shape a CleanRL-style trainer hands over; numpy comes with the sb3 extra

        code = snippet("numbers")
        logs = [{"rollout_ms": 10.0 + i, "update_ms": np.float32(5.5), "grad_norms": {"mean": np.float32(0.5), "log_std": 0.1, "value": None},
                 "grad_norm": np.float64(0.7), "approx_kl": np.float32(0.01), "clip_fraction": 0.1, "entropy": np.float32(1.25),
                 "explained_variance": np.float32(0.5)} for i in range(3)]
        exec(compile(code, f"{DOC}:numbers", "exec"), {"trainer_logs": logs})
        ended(consumer)
        events = kinds(consumer.log_dir, "doc")
        assert events["step_timing"] == events["head_grad_norms"] == events["ppo_update"] == 3
        logged = events_of(consumer.log_dir, "doc")
        norms = [e for e in logged if e.kind == "head_grad_norms"]
        assert [(e.step, e.norms, e.total) for e in norms] == [(i, {"mean": 0.5, "log_std": 0.1, "value": None}, 0.7) for i in range(3)]
        updates = [e for e in logged if e.kind == "ppo_update"]
        assert all(e.entropy == {"policy": 1.25} and e.explained_variance == 0.5 for e in updates)
        assert [e.phases_ms for e in logged if e.kind == "step_timing"] == [{"rollout": 10.0 + i, "update": 5.5} for i in range(3)]
