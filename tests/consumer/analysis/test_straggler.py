"""The ``straggler`` rule: through the real pipeline, and on a real four-rank ``torch.distributed`` run
(gloo, CPU processes) whose ranks send their compute time to a real ``simic-consumer`` daemon."""

from __future__ import annotations

import os
import random
import socket
import time
from pathlib import Path

import pytest

from simic.schemas.models import StepTiming
from .harness import Producer, Timeline, assert_resumes_identically, config, of, play

RANKS = 4


def ranks_timed(steps: int, slow: dict[int, float] | None = None, from_step: int = 20, machine: float = 1.0,
                seed: int = 0) -> Timeline:
    """``RANKS`` ranks sending ``compute`` (~40 ms, 3% jitter) and ``step`` phases per step; ``slow`` multiplies
    one rank's compute from ``from_step``, ``machine`` every rank's."""
    rng = random.Random(seed)
    producers = [Producer(rank=r, session=100 + r) for r in range(RANKS)]
    tl = Timeline()
    for step in range(steps):
        for p in producers:
            factor = (slow or {}).get(p.rank, 1.0) * machine if step >= from_step else 1.0
            compute = 40.0 * factor * rng.gauss(1.0, 0.03)
            tl.send(p.make(StepTiming, step, phases_ms={"compute": compute, "step": 60.0 * machine}, clock="cuda_event"),
                    after_s=0.001)
    return tl


def recovering() -> Timeline:
    """Rank 1 computes 1.6x for steps 20-39, in line before and after."""
    rng = random.Random(3)
    producers = [Producer(rank=r, session=100 + r) for r in range(RANKS)]
    tl = Timeline()
    for step in range(60):
        for p in producers:
            factor = 1.6 if p.rank == 1 and 20 <= step < 40 else 1.0
            tl.send(p.make(StepTiming, step, phases_ms={"compute": 40.0 * factor * rng.gauss(1.0, 0.03)}), after_s=0.001)
    return tl


class TestStragglerRule:
    @pytest.mark.parametrize("seed", [0, 1, 2])
    async def test_ranks_in_line_raise_nothing(self, seed):
        """Four ranks within a few percent of each other for 200 steps: no alert."""
        alerts, _ = await play(ranks_timed(200, seed=seed).items)
        assert of(alerts, "straggler") == []

    async def test_one_slow_rank_fires_about_itself_on_the_fifth_step(self):
        """Rank 2 computes 1.5x from step 20: the straggler alert fires at step 24, about rank 2 (its session),
        named in the message."""
        alerts, _ = await play(ranks_timed(60, slow={2: 1.5}).items)
        fired = [a for a in alerts if a.rule == "straggler"]
        assert [(a.rank, a.step, a.cleared) for a in fired] == [(2, 24, False)]
        assert fired[0].session == 102 and "rank 2 of run 'run' is a straggler" in fired[0].message
        assert fired[0].values["factor"] == pytest.approx(1.5, rel=0.1)

    async def test_a_rank_that_recovers_clears(self):
        """Rank 1 slow (1.6x) for steps 20-39 only: fires at 24, clears at 44."""
        alerts, _ = await play(recovering().items)
        assert [(a.rank, a.step, a.cleared) for a in alerts if a.rule == "straggler"] == [(1, 24, False), (1, 44, True)]

    async def test_every_rank_slower_together_is_not_a_straggler(self):
        """The machine (or the model) slows every rank 2x: no straggler (step_time's to judge)."""
        alerts, _ = await play(ranks_timed(60, machine=2.0).items)
        assert of(alerts, "straggler") == []

    async def test_the_whole_step_time_does_not_count(self):
        """A run that sends only its whole step time (equal on every rank in synchronous training): nothing judged."""
        producers = [Producer(rank=r, session=100 + r) for r in range(RANKS)]
        tl = Timeline()
        for step in range(40):
            for p in producers:
                tl.send(p.make(StepTiming, step, phases_ms={"step": 80.0 if p.rank == 3 else 40.0}), after_s=0.001)
        alerts, _ = await play(tl.items)
        assert of(alerts, "straggler") == []

    async def test_a_rank_that_stops_reporting_bounds_memory(self):
        """Rank 3 reports steps 0-4, then nothing: no later step completes, nothing is judged (rank 2, slower
        from step 10, is never compared), and at most window_steps steps are kept."""
        producers = [Producer(rank=r, session=100 + r) for r in range(RANKS)]
        tl = Timeline()
        for step in range(100):
            for p in producers:
                if p.rank == 3 and step >= 5:
                    continue
                tl.send(p.make(StepTiming, step, phases_ms={"compute": 80.0 if p.rank == 2 and step >= 10 else 40.0}),
                        after_s=0.001)
        alerts, pipeline = await play(tl.items)
        assert of(alerts, "straggler") == []
        from simic.consumer.analysis import RULES
        state = pipeline.find(RULES["straggler"])[0].state_dict()["extra"]["run"]
        assert len(state["pending"]) <= 32

    async def test_the_phase_and_factor_are_configurable(self):
        """slow_factor 2.0 ignores a 1.5x rank; phase = "step" judges that phase (equal on every rank here) instead."""
        alerts, _ = await play(ranks_timed(60, slow={2: 1.5}).items, config(straggler={"slow_factor": 2.0}))
        assert of(alerts, "straggler") == []
        alerts, _ = await play(ranks_timed(60, slow={2: 1.5}).items, config(straggler={"phase": "step"}))
        assert of(alerts, "straggler") == []

    async def test_a_checkpoint_mid_fault_continues_identically(self):
        await assert_resumes_identically(recovering(), split=22 * RANKS, rule="straggler")


# -- a real distributed run -----------------------------------------------------------------------

SLOW_RANK = 2
HEALTHY_STEPS = 12
SLOW_STEPS = 12


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, port: int, endpoint: str, run_id: str, device: str = "cpu") -> None:
    """One data-parallel rank: forward and backward timed as ``compute`` (CUDA events on a GPU), then the
    gradients all-reduced (gloo); from step ``HEALTHY_STEPS`` rank ``SLOW_RANK`` does 60 ms more work in its
    compute (a busy host on the CPU, a busy kernel on the GPU)."""
    import torch
    import torch.distributed as dist

    from simic.producer import Emitter, EmitterSettings

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=RANKS)
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.Tanh(), torch.nn.Linear(64, 4)).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    emitter = Emitter(endpoint, run_id=run_id, rank=rank, world_size=RANKS, settings=EmitterSettings(exit_hooks=False))
    compute = emitter.timer("compute", device=device)
    for step in range(HEALTHY_STEPS + SLOW_STEPS):
        compute.start()
        loss = model(torch.randn(256, 32, device=device)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        if rank == SLOW_RANK and step >= HEALTHY_STEPS:
            if device == "cuda":
                torch.cuda._sleep(100_000_000)  # about 60 ms of GPU cycles: a slower device
            else:
                deadline = time.perf_counter() + 0.06  # a slower device: busy, not asleep
                while time.perf_counter() < deadline:
                    pass
        compute.stop(step)
        for p in model.parameters():  # the collective: every rank waits here for the slowest
            dist.all_reduce(p.grad)
            p.grad /= RANKS
        optimizer.step()
        emitter.flush()
    emitter.close()
    dist.destroy_process_group()


def run_ranks(tmp_path: Path, daemons, endpoint: str, cli, device: str) -> list[dict]:
    """``RANKS`` spawned ranks against a real daemon; the straggler alerts its log replays to."""
    mp = pytest.importorskip("torch.multiprocessing")
    daemon = daemons(endpoint, tmp_path / "log")
    mp.start_processes(_rank_main, args=(_free_port(), daemon.endpoint, "ddp-1", device), nprocs=RANKS, join=True,
                       start_method="spawn")
    for _ in range(RANKS):
        daemon.wait_for("ended (ok)")  # the daemon's line for each rank's run_end
    assert daemon.stop() == 0
    alerts, _ = cli.replay_json(tmp_path / "log")
    return [a for a in alerts if a["rule"] == "straggler" and not a["cleared"]]


def assert_names_the_slow_rank(fired: list[dict]) -> None:
    assert [a["rank"] for a in fired] == [SLOW_RANK], fired
    assert HEALTHY_STEPS + 4 <= fired[0]["step"] < HEALTHY_STEPS + SLOW_STEPS
    assert fired[0]["values"]["phase"] == "compute" and fired[0]["values"]["factor"] > 1.3


def test_a_four_rank_gloo_run_names_the_slow_rank(tmp_path: Path, daemons, ipc_endpoint, cli) -> None:
    """Four CPU ranks (torch.distributed, gloo) train in lockstep; rank 2 becomes 60 ms slower in its compute
    from step 12. The daemon's log, replayed, holds one straggler alert, about rank 2, from step 16 on (the
    fifth slow step at the earliest), and none before the slowdown."""
    assert_names_the_slow_rank(run_ranks(tmp_path, daemons, ipc_endpoint, cli, "cpu"))
