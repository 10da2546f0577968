"""SimicCallback on a real Lightning Trainer (examples/lightning_classifier.py), against a real simic-consumer."""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import pytest

pytest.importorskip("lightning", reason="needs the [lightning] extra")
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
    import torch

from simic.producer import Emitter, EmitterSettings, spawn_consumer  # noqa: E402
from simic.producer.integrations.lightning import SimicCallback, pl  # noqa: E402
from simic.schemas import LogReader, decode_message  # noqa: E402
from simic.schemas.eventlog import FRAME_MESSAGE  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "lightning_classifier.py"
WAIT_S = 120.0
"""Hang guard for a subprocess (not a timing assertion)."""
CLIP = 0.5


def load_example():
    spec = importlib.util.spec_from_file_location("lightning_classifier", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


example = load_example()


def events(log_dir: Path, kind: str | None = None) -> list:
    found = [e for frame in LogReader(log_dir) if frame.type == FRAME_MESSAGE for e in decode_message(frame.payload).events]
    return [e for e in found if kind is None or e.kind == kind]


class Reference(pl.Callback):
    """Computes, with plain torch in float64, what SimicCallback should have sent: the pre-clip norm of
    each head at each optimizer step, and the loss the module returned (and logged) for the step."""

    def __init__(self) -> None:
        self.norms: dict[int, dict[str, float]] = {}
        self.losses: dict[int, float] = {}
        self.batches = 0
        self._step = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._step = trainer.global_step
        self.batches += 1

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        def norm(module) -> float:
            return math.sqrt(sum(p.grad.double().pow(2).sum().item() for p in module.parameters()))

        encoder, classifier = norm(pl_module.encoder), norm(pl_module.classifier)
        self.norms[trainer.global_step] = {"encoder": encoder, "classifier": classifier,
                                           "total": math.hypot(encoder, classifier)}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step != self._step:  # the batch that ended the step: its loss is the one logged
            # Lightning hands on the loss divided by accumulate_grad_batches (what it backpropagated)
            self.losses[self._step] = outputs["loss"].item() * trainer.accumulate_grad_batches


def run_example(tmp_path: Path, **overrides):
    args = replace(example.Args(), log_dir=str(tmp_path / "logs"), **overrides)
    reference = Reference()
    callback = example.main(args, extra_callbacks=(reference,))
    return Path(args.log_dir), callback, reference


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """The example as written: 20 steps of 16 batches an epoch, so validation runs once, at step 16."""
    return run_example(tmp_path_factory.mktemp("plain"), max_steps=20)


def close(a: float | None, b: float, rel: float = 1e-5) -> bool:
    return a is not None and math.isclose(a, b, rel_tol=rel, abs_tol=1e-7)


class TestSimicCallback:
    def test_each_global_step_sends_grad_norms_timing_and_metrics(self, plain):
        """Steps 0..19 each have one head_grad_norms, step_timing (train_batch, optimizer) and training metrics event; run_start names the heads."""
        log_dir, callback, _ = plain
        (start,) = events(log_dir, "run_start")
        assert start.heads == ["encoder", "classifier"] and start.world_size == 1 and start.rank == 0
        assert start.config["trainer"]["gradient_clip_val"] == CLIP and start.config["hparams"]["hidden"] == 64
        steps = list(range(20))
        assert [e.step for e in events(log_dir, "head_grad_norms")] == steps
        timings = events(log_dir, "step_timing")
        assert [e.step for e in timings] == steps
        assert all(set(e.phases_ms) == {"train_batch", "optimizer"} and e.phases_ms["train_batch"] > e.phases_ms["optimizer"] > 0
                   for e in timings)
        train = [e for e in events(log_dir, "metrics") if "train/loss" in e.values]
        assert [e.step for e in train] == steps
        (end,) = events(log_dir, "run_end")
        assert end.status == "ok" and end.dropped == 0 and end.step == 19
        assert callback.emitter.closed and callback.emitter.sidecar.returncode == 0

    def test_head_norms_are_the_pre_clip_norms_torch_computes(self, plain):
        """Each head's norm and the total equal a float64 computation in on_before_optimizer_step; the post-clip total is what clipping to 0.5 makes of it."""
        log_dir, _, reference = plain
        for event in events(log_dir, "head_grad_norms"):
            expected = reference.norms[event.step]
            assert event.stage == "pre_clip" and event.max_norm == CLIP
            assert close(event.norms["encoder"], expected["encoder"]) and close(event.norms["classifier"], expected["classifier"])
            assert close(event.total, expected["total"])
            assert close(event.post_clip_total, expected["total"] * min(1.0, CLIP / (expected["total"] + 1e-6)))
        assert any(e.total > CLIP for e in events(log_dir, "head_grad_norms"))  # the clip really acted

    def test_logged_metrics_are_what_the_module_logged(self, plain):
        """train/loss equals the loss the step returned, train/acc is a fraction, the learning rate is sent, and
        validation's val/loss and val/acc arrive once, at the global step it ran at, not mixed into training metrics."""
        log_dir, _, reference = plain
        metrics = events(log_dir, "metrics")
        train = [e for e in metrics if "train/loss" in e.values]
        for event in train:
            assert set(event.values) == {"train/loss", "train/acc", "optimizer/lr"}
            assert event.values["train/loss"] == pytest.approx(reference.losses[event.step], rel=1e-6)
            assert 0.0 <= event.values["train/acc"] <= 1.0 and event.values["optimizer/lr"] == 0.05
        (val,) = [e for e in metrics if "train/loss" not in e.values]
        assert val.step == 16 and set(val.values) == {"val/loss", "val/acc"}
        assert train[-1].values["train/loss"] < train[0].values["train/loss"]

    def test_gradient_accumulation_counts_optimizer_steps(self, tmp_path):
        """With accumulate_grad_batches=2, 6 steps take 12 batches and send steps 0..5 once each, measured on the accumulated gradients."""
        log_dir, _, reference = run_example(tmp_path, max_steps=6, accumulate_grad_batches=2)
        assert reference.batches == 12 and sorted(reference.norms) == list(range(6))
        norms = events(log_dir, "head_grad_norms")
        assert [e.step for e in norms] == list(range(6))
        assert all(close(e.total, reference.norms[e.step]["total"]) for e in norms)
        assert [e.step for e in events(log_dir, "step_timing")] == list(range(6))
        train = [e for e in events(log_dir, "metrics") if "train/loss" in e.values]
        assert [e.step for e in train] == list(range(6))
        assert all(e.values["train/loss"] == pytest.approx(reference.losses[e.step], rel=1e-6) for e in train)

    def test_default_heads_are_the_direct_children_and_an_emitter_passed_in_stays_open(self, tmp_path):
        """Without heads= every direct child with trainable parameters is a head; emitter= is used and left open for its owner."""
        with spawn_consumer(log_dir=tmp_path / "logs") as sidecar:
            emitter = Emitter(sidecar.endpoint, run_id="given", heads=["mine"], settings=EmitterSettings(exit_hooks=False))
            callback = SimicCallback(emitter=emitter)
            example.make_trainer(replace(example.Args(), max_steps=3), [callback]).fit(
                example.Classifier(), torch.utils.data.DataLoader(example.make_data(0, 96), batch_size=32))
            assert callback.emitter is emitter and not emitter.closed
            assert callback._groups.names == ["encoder", "classifier"]
            emitter.close()
            assert "ended (ok)" in sidecar.wait_for_line("run given rank 0 session", timeout_s=WAIT_S)
        assert [e.step for e in events(tmp_path / "logs", "head_grad_norms")] == [0, 1, 2]

    def test_heads_it_cannot_resolve_fail_at_fit_start_before_a_consumer_starts(self, tmp_path):
        """An attribute path the module lacks raises ValueError naming it, and no consumer is started."""
        callback = SimicCallback("bad", spawn_consumer={"log_dir": tmp_path / "logs"}, heads={"x": "decoder"})
        trainer = example.make_trainer(replace(example.Args(), max_steps=2), [callback])
        with pytest.raises(ValueError, match="decoder"):
            trainer.fit(example.Classifier(), torch.utils.data.DataLoader(example.make_data(0, 64), batch_size=32))
        assert callback.emitter is None and not (tmp_path / "logs").exists()

    def test_stop_on_critical_stops_the_trainer(self, tmp_path):
        """A NaN loss from step 3 on makes the consumer raise non_finite (critical); stop_on_critical sets trainer.should_stop long before
        max_steps (5000: room for a busy machine's consumer to answer; the alert normally stops it within tens of steps)."""

        class Diverging(example.Classifier):
            def training_step(self, batch, batch_idx):
                loss = super().training_step(batch, batch_idx)
                return loss * float("nan") if self.trainer.global_step >= 3 else loss

        callback = SimicCallback("nan", spawn_consumer={"log_dir": tmp_path / "logs"}, stop_on_critical=True)
        trainer = example.make_trainer(replace(example.Args(), max_steps=5000, gradient_clip_val=0), [callback])
        trainer.fit(Diverging(), torch.utils.data.DataLoader(example.make_data(0, 512), batch_size=32))
        assert callback.critical_alerts and callback.critical_alerts[0].rule == "non_finite"
        assert callback.critical_alerts[0].step >= 3 and trainer.global_step < 5000
        assert events(tmp_path / "logs", "run_end")[0].status == "ok"

    def test_the_example_runs_as_a_script(self, tmp_path):
        """python examples/lightning_classifier.py --log-dir D --max-steps 5 exits 0 and its log holds steps 0..4."""
        result = subprocess.run([sys.executable, "-W", "ignore:Failed to initialize NumPy", str(EXAMPLE), "--log-dir", str(tmp_path / "logs"),
                                 "--max-steps", "5"], capture_output=True, text=True, timeout=WAIT_S, cwd=ROOT,
                                env={**os.environ, "PYTHONWARNINGS": "ignore"})
        assert result.returncode == 0, result.stdout + result.stderr
        assert "trained 5 steps" in result.stdout
        assert [e.step for e in events(tmp_path / "logs", "head_grad_norms")] == list(range(5))
