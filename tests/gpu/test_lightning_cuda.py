"""SimicCallback on a CUDA GPU: the events arrive with the right values, and its hooks never sync.

Every hook of the callback (and the optimizer post-hook it installs) runs under
``torch.cuda.set_sync_debug_mode("error")``, which raises on any synchronizing CUDA call: a
``.item()``, a device-to-host copy into pageable memory, a ``synchronize``. A raise in a hook ends
``trainer.fit`` with it, and the collectors count what they swallow, so the test also asserts that
nothing was counted. Lightning's own code between the hooks runs as usual.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("lightning", reason="needs the [lightning] extra")

from simic.producer import Emitter, EmitterSettings  # noqa: E402
from simic.producer.integrations.lightning import SimicCallback  # noqa: E402
from tests.gpu.test_collectors_cuda import sync_forbidden  # noqa: E402
from tests.integrations.test_lightning import Reference, example  # noqa: E402
from tests.receiver import close_all, ipc_receiver  # noqa: E402

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

STEPS = 20
HOOKS = ("on_train_batch_start", "on_before_optimizer_step", "_after_optimizer_step", "on_train_batch_end", "on_validation_end")


class NoSyncCallback(SimicCallback):
    """SimicCallback with each per-step hook run under sync_forbidden()."""


def _forbid_syncs(name: str):
    hook = getattr(SimicCallback, name)

    def wrapped(self, *args, **kwargs):
        self.hook_calls[name] = self.hook_calls.get(name, 0) + 1
        with sync_forbidden():
            return hook(self, *args, **kwargs)

    return wrapped


for _name in HOOKS:
    setattr(NoSyncCallback, _name, _forbid_syncs(_name))
NoSyncCallback.hook_calls = {}


@pytest.fixture
def consumer(tmp_path: Path):
    receiver = ipc_receiver(tmp_path)
    yield receiver
    close_all(receiver)


class TestSimicCallbackOnCuda:
    def test_the_checker_catches_a_sync(self):
        """The guard works: .item() on a CUDA tensor raises inside sync_forbidden()."""
        value = torch.ones(1, device="cuda")
        with pytest.raises(RuntimeError), sync_forbidden():
            value.item()

    def test_events_arrive_with_the_right_values_and_the_hooks_never_sync(self, consumer):
        """20 GPU steps: head norms, CUDA-event timings and logged metrics for steps 0..19 match a float64 reference; no hook synced."""
        emitter = Emitter(consumer.endpoint, run_id="lightning-cuda", settings=EmitterSettings(exit_hooks=False))
        callback = NoSyncCallback(emitter=emitter, heads={"encoder": "encoder", "classifier": "classifier"})
        callback.hook_calls = {}
        reference = Reference()
        args = replace(example.Args(), max_steps=STEPS, accelerator="gpu", val_every=10)
        torch.manual_seed(1)
        trainer = example.make_trainer(args, [callback, reference])
        data = torch.utils.data.DataLoader(example.make_data(1, 1024), batch_size=32, shuffle=True)
        trainer.fit(example.Classifier(), data, torch.utils.data.DataLoader(example.make_data(1, 128), batch_size=64))
        assert callback.hook_calls["on_before_optimizer_step"] == STEPS and callback.hook_calls["_after_optimizer_step"] == STEPS
        emitter.close()
        events = consumer.until_run_end()
        assert emitter.collector_stats.errors == 0 and emitter.stats.dropped == 0

        norms = [e for e in events if e.kind == "head_grad_norms"]
        assert [e.step for e in norms] == list(range(STEPS))
        for e in norms:
            expected = reference.norms[e.step]
            assert math.isclose(e.norms["encoder"], expected["encoder"], rel_tol=1e-4)
            assert math.isclose(e.norms["classifier"], expected["classifier"], rel_tol=1e-4)
            assert math.isclose(e.total, expected["total"], rel_tol=1e-4) and e.stage == "pre_clip" and e.max_norm == 0.5
        timings = [e for e in events if e.kind == "step_timing"]
        assert sorted(e.step for e in timings) == list(range(STEPS))
        assert all(e.clock == "cuda_event" and set(e.phases_ms) == {"train_batch", "optimizer"} for e in timings)
        train = sorted((e for e in events if e.kind == "metrics" and "train/loss" in e.values), key=lambda e: e.step)
        assert [e.step for e in train] == list(range(STEPS))
        assert all(math.isclose(e.values["train/loss"], reference.losses[e.step], rel_tol=1e-5) for e in train)
        val = [e for e in events if e.kind == "metrics" and "val/loss" in e.values]
        assert [e.step for e in val] == [10, 20]
