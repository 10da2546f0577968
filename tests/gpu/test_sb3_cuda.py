"""SimicCallback with RecurrentPPO on a CUDA device: the events arrive, and the callback adds no host sync.

The proof of "no sync": SB3 itself synchronizes (each action goes to the host with ``.cpu()``, each
minibatch logs ``.item()``s), a fixed number of times for a fixed configuration. The example's task
has fixed-length episodes that terminate (never truncated), so nothing data-dependent changes that
number. ``learn()`` runs twice under ``torch.cuda.set_sync_debug_mode("warn")`` from identical
models, without and with the callback, and each synchronizing CUDA call is counted as a warning
(every one, from every thread: the callback's gradient hooks run in autograd's device thread). The
counts must be equal: everything the callback and its hooks do (norms, LSTM statistics, timers,
readouts, closing the emitter) is then sync-free. A receiver stands in for the consumer here.
"""

from __future__ import annotations

import importlib.util
import sys
import warnings
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("stable_baselines3")
pytest.importorskip("sb3_contrib")

from simic.producer import EmitterSettings  # noqa: E402
from simic.producer.integrations.sb3 import SimicCallback  # noqa: E402
from tests.receiver import close_all, ipc_receiver  # noqa: E402

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sb3_recurrent_ppo.py"
UPDATES = 4
SYNC_WARNING = "called a synchronizing CUDA operation"


def example():
    module = sys.modules.get("sb3_recurrent_ppo")
    if module is None:
        spec = importlib.util.spec_from_file_location("sb3_recurrent_ppo", EXAMPLE)
        module = sys.modules["sb3_recurrent_ppo"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module


def model_and_steps():
    ex = example()
    args = ex.Args(device="cuda", updates=UPDATES)
    return ex.make_model(args), UPDATES * args.n_steps * args.n_envs


def count_syncs(model, steps: int, callback=None) -> int:
    """Synchronizing CUDA calls during ``model.learn(steps)``."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            model.learn(steps, callback=callback)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return sum(SYNC_WARNING in str(w.message) for w in caught)


@pytest.fixture
def receiver(tmp_path):
    receiver = ipc_receiver(tmp_path)
    yield receiver
    close_all(receiver)


def callback(receiver) -> SimicCallback:
    return SimicCallback(endpoint=receiver.endpoint, run_id="sb3-cuda", settings=EmitterSettings(exit_hooks=False),
                         action_names=example().SUB_ACTIONS)


class TestRecurrentPPOOnCuda:
    def test_events_of_every_update_arrive(self, receiver):
        """Per update: norms of 4 minibatches, actor and critic LSTM state, one step_timing on CUDA events with both phases, ppo_update."""
        model, steps = model_and_steps()
        simic = callback(receiver)
        model.learn(steps, callback=simic)
        events = receiver.until_run_end()
        by_kind = {}
        for event in events:
            by_kind.setdefault(event.kind, []).append(event)
        norms = by_kind["head_grad_norms"]
        assert [e.step for e in norms] == list(range(UPDATES)) and all(e.samples == 4 for e in norms)
        assert all(set(e.norms) == {"recall", "count", "value"} and e.post_clip_total <= 0.5 + 1e-6 for e in norms)
        assert sorted((e.step, e.name) for e in by_kind["lstm_health"]) == [(u, n) for u in range(UPDATES) for n in ("actor", "critic")]
        timings = by_kind["step_timing"]
        assert [e.step for e in timings] == list(range(UPDATES))
        assert all(e.clock == "cuda_event" and set(e.phases_ms) == {"rollout", "train"} for e in timings)
        assert [e.step for e in by_kind["ppo_update"]] == list(range(UPDATES))
        (start,) = by_kind["run_start"]
        assert start.device == torch.cuda.get_device_name() and start.heads == ["recall", "count", "value"]
        (end,) = by_kind["run_end"]
        assert end.status == "ok" and end.dropped == 0 and end.readouts_dropped == 0
        assert simic.emitter.collector_stats.errors == 0

    def test_the_callback_adds_no_host_sync(self, receiver):
        """learn() makes as many synchronizing CUDA calls with the callback as without it (and SB3 makes some)."""
        count_syncs(*model_and_steps())  # warm-up: CUDA, cuBLAS and cuDNN initialised outside the comparison
        without = count_syncs(*model_and_steps())
        simic = callback(receiver)
        with_callback = count_syncs(*model_and_steps(), callback=simic)
        assert without > 0  # the counting works: SB3's own .cpu() and .item() calls are seen
        assert with_callback == without
        assert simic.emitter.closed and simic.emitter.collector_stats.errors == 0
        assert [e.step for e in receiver.until_run_end() if e.kind == "head_grad_norms"] == list(range(UPDATES))
