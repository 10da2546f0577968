"""A small Lightning classifier, instrumented with simic's SimicCallback.

An MLP with an ``encoder`` and a ``classifier`` head learns to tell four Gaussian blobs apart on
synthetic data; it trains in a few seconds on the CPU. Telemetry is one callback (look for
"# TELEMETRY:"): per step the pre-clip gradient norm of each head, the step time, and what the
module logs with ``self.log``, sent to a ``simic-consumer`` the callback starts for the run.

    python examples/lightning_classifier.py --log-dir runs/lightning/telemetry --max-steps 40
    simic-consumer inspect runs/lightning/telemetry
"""
import argparse
import os
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

try:
    import lightning.pytorch as pl
except ImportError:
    import pytorch_lightning as pl

from simic.producer.integrations.lightning import SimicCallback


@dataclass
class Args:
    log_dir: str = "simic-logs/lightning"
    """where the consumer started for the run writes its event log"""
    run_id: str = "lightning-classifier"
    """the run's name in the telemetry"""
    max_steps: int = 40
    """optimizer steps to train for"""
    accumulate_grad_batches: int = 1
    """batches per optimizer step"""
    gradient_clip_val: float = 0.5
    """clip the gradient norm to this (0: no clipping)"""
    batch_size: int = 32
    """samples per batch"""
    learning_rate: float = 0.05
    """the learning rate of the optimizer"""
    seed: int = 1
    """seed of the data and the model"""
    accelerator: str = "cpu"
    """cpu, gpu or auto"""
    val_every: int = 0
    """validate every this many training batches (0: only at the end of each epoch)"""
    threads: int = 1
    """torch intra-op threads on the CPU (a model this small runs fastest on one; 0: torch's default)"""


def parse_args() -> Args:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, field in Args.__dataclass_fields__.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=field.type if isinstance(field.type, type) else type(field.default),
                            default=field.default)
    return Args(**vars(parser.parse_args()))


def make_data(seed: int, n: int, classes: int = 4, features: int = 16) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, features, generator=generator) * 2
    labels = torch.randint(0, classes, (n,), generator=generator)
    return TensorDataset(centres[labels] + torch.randn(n, features, generator=generator), labels)


class Classifier(pl.LightningModule):
    def __init__(self, features: int = 16, hidden: int = 64, classes: int = 4, learning_rate: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.encoder = nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.classifier = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.encoder(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        self.log("train/loss", loss)
        self.log("train/acc", (logits.argmax(-1) == y).float().mean())
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("val/loss", F.cross_entropy(logits, y))
        self.log("val/acc", (logits.argmax(-1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.learning_rate, momentum=0.9)


def make_trainer(args: Args, callbacks: list) -> pl.Trainer:
    return pl.Trainer(
        max_steps=args.max_steps,
        accumulate_grad_batches=args.accumulate_grad_batches,
        gradient_clip_val=args.gradient_clip_val or None,
        accelerator=args.accelerator,
        devices=1,
        val_check_interval=args.val_every or None,
        num_sanity_val_steps=0,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )


def main(args: Args, extra_callbacks: tuple = ()) -> SimicCallback:
    pl.seed_everything(args.seed, verbose=False)
    if args.threads:
        torch.set_num_threads(args.threads)
    train = DataLoader(make_data(args.seed, 512), batch_size=args.batch_size, shuffle=True)
    val = DataLoader(make_data(args.seed, 128), batch_size=64)
    model = Classifier(learning_rate=args.learning_rate)
    # TELEMETRY: one callback; it starts a simic-consumer for the run and stops it at the end
    simic = SimicCallback(args.run_id, spawn_consumer={"log_dir": args.log_dir}, heads={"encoder": "encoder", "classifier": "classifier"})
    trainer = make_trainer(args, [simic, *extra_callbacks])
    trainer.fit(model, train, val)
    print(f"trained {trainer.global_step} steps; telemetry: {simic.emitter.stats.sent} events sent, "
          f"{simic.emitter.stats.dropped} dropped, log in {os.path.abspath(args.log_dir)}")
    return simic


if __name__ == "__main__":
    main(parse_args())
