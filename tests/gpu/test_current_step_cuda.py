"""What the consumer is told about the step on a GPU: a trainer instrumented only through the GPU
collectors (their events leave one or more flushes after the call) sends heartbeats whose step never
goes back and a ``run_end`` carrying its last step, and every event keeps the step of its call.
Checked through a real spawned ``simic-consumer`` and its log."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from simic.producer import lstm_stats  # noqa: E402
from tests.logs import events_of  # noqa: E402
from tests.producer.test_current_step import run  # noqa: E402

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

STEPS = 12
KINDS = ("head_grad_norms", "lstm_health", "ppo_update", "step_timing")


def check(tmp_path, run_id: str, session: dict) -> None:
    assert session["last_step"] == STEPS
    events = events_of(tmp_path / "logs", run_id)
    heartbeats = [e.step for e in events if e.kind == "heartbeat"]
    assert len(heartbeats) >= STEPS - 2 and heartbeats == sorted(heartbeats) and heartbeats[-1] == STEPS
    assert [e.step for e in events if e.kind == "run_end"] == [STEPS]
    for kind in KINDS:
        assert sorted(e.step for e in events if e.kind == kind) == list(range(1, STEPS + 1)), kind


def model():
    torch.manual_seed(0)
    return torch.nn.LSTM(4, 8).cuda(), torch.nn.Linear(8, 3).cuda()


@pytest.mark.parametrize("path", ["eager", "device vectors"])
def test_gpu_collectors_only_heartbeat_and_run_end_carry_the_last_step(tmp_path, path) -> None:
    """CUDA-timed phase, clipped norms, LSTM state and device PPO metrics each step, through the eager
    collectors or through ``clip_`` / ``lstm_stats`` vectors (a compiled or graphed update's way)."""
    lstm, head = model()

    def body(emitter):
        groups = emitter.head_groups({"core": lstm, "out": head}, params=[*lstm.parameters(), *head.parameters()])
        timer = emitter.timer("update")
        for step in range(1, STEPS + 1):
            timer.start()
            for p in groups.params:
                p.grad = None
            out, (h, c) = lstm(torch.randn(5, 2, 4, device="cuda"))
            loss = head(out).square().mean()
            loss.backward()
            if path == "eager":
                emitter.clip_grad_norm_(step, groups, 0.5)
                emitter.lstm_state(step, (h, c))
            else:
                emitter.head_grad_norms(step, groups, max_norm=0.5, norms=groups.clip_(0.5))
                emitter.lstm_state(step, (h, c), stats=lstm_stats((h, c)))
            emitter.ppo_update(step, loss=loss.detach())
            timer.stop(step)
            emitter.flush()

    run_id = f"gpu-step-{path.replace(' ', '-')}"
    check(tmp_path, run_id, run(tmp_path, run_id, body))
