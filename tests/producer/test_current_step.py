"""The step an emitter reports (``heartbeat``, ``run_end``, what ``inspect`` shows as the last step)
follows the steps the trainer passed to the collectors, when it called them, even when every event
comes from a collector and leaves later. Checked through a real ``simic-consumer`` and its log."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from simic.producer import Emitter, EmitterSettings  # noqa: E402
from tests.logs import events_of, inspect_run  # noqa: E402


def run(tmp_path, run_id: str, body) -> dict:
    """Run ``body(emitter)`` against a spawned consumer (heartbeats at every flush); the session as inspect shows it."""
    log_dir = tmp_path / "logs"
    emitter = Emitter(None, run_id=run_id, spawn_consumer={"log_dir": log_dir},
                      settings=EmitterSettings(exit_hooks=False, heartbeat_interval_s=1e-9))
    body(emitter)
    emitter.close()
    return inspect_run(log_dir, run_id)


class TestCurrentStep:
    def test_a_trainer_that_only_times_its_phases_reports_its_last_step(self, tmp_path) -> None:
        """20 steps timed with ``stop(step)`` (host timers: resolved in the flush hook): inspect shows
        steps 0..20 and 20 step_timing events, not "steps 0..0"."""
        def body(emitter):
            timer = emitter.timer("update", device="cpu")
            for step in range(1, 21):
                timer.start()
                timer.stop(step)
                emitter.flush()

        session = run(tmp_path, "timers-only", body)
        assert session["events_by_kind"]["step_timing"] == 20
        assert (session["first_step"], session["last_step"]) == (0, 20)
        assert [e.step for e in events_of(tmp_path / "logs", "timers-only") if e.kind == "run_end"] == [20]

    def test_a_timer_given_its_step_up_front_moves_the_step_too(self, tmp_path) -> None:
        """``with emitter.timer(name, step=s)``: the step is the timer's; a timer stopped without any step
        then takes the emitter's current one (here 5), not 0."""
        def body(emitter):
            for step in range(1, 6):
                with emitter.timer("rollout", step=step, device="cpu"):
                    pass
                emitter.flush()
            with emitter.timer("eval", device="cpu"):
                pass

        session = run(tmp_path, "timer-steps", body)
        assert session["last_step"] == 5

    def test_collector_calls_move_the_step_heartbeat_and_run_end_carry_it(self, tmp_path) -> None:
        """A trainer instrumented only through collectors (clip_grad_norm_, lstm_state, ppo_update):
        heartbeats and run_end carry the last step it named."""
        net = torch.nn.Linear(4, 2)

        def body(emitter):
            groups = emitter.head_groups({"out": net}, params=net.parameters())
            for step in range(1, 13):
                net.zero_grad()
                net(torch.randn(3, 4)).sum().backward()
                emitter.clip_grad_norm_(step, groups, 0.5)
                emitter.lstm_state(step, (torch.randn(1, 2, 3), torch.randn(1, 2, 3)))
                emitter.ppo_update(step, approx_kl=0.01)
                emitter.flush()

        session = run(tmp_path, "collectors-only", body)
        assert session["last_step"] == 12
        events = events_of(tmp_path / "logs", "collectors-only")
        heartbeats = [e.step for e in events if e.kind == "heartbeat"]
        assert len(heartbeats) >= 10 and heartbeats == sorted(heartbeats) and heartbeats[-1] == 12
        assert [e.step for e in events if e.kind == "run_end"] == [12]
