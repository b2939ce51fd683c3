"""A Lightning fit with strategy="ddp" on two CPU processes (gloo), through TbhooksCallback.

Usage: python _lightning_ddp.py ROOT.  Lightning's "ddp" launcher starts the
second rank by running this script again.  The run goes to a TensorBoardLogger
under ROOT/lit; each rank writes its metrics to ROOT/report-<rank>.txt.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import tbhooks
from tbhooks.default_plugins.scalars import Scalars
from tbhooks.integrations.lightning import TbhooksCallback, pl

EVAL_SAMPLES = 40
"""Divides by the world size (2): Lightning's DistributedSampler pads no sample twice."""


class EvalProbe:
    """Writes how many evaluation samples on_eval received, their label sum, and the rank it ran on."""

    name = "eval_probe"

    @tbhooks.hookimpl
    def on_eval(self, run, step, outputs, targets):
        run.writer.add_scalar("probe/eval_samples", outputs.shape[0], step)
        run.writer.add_scalar("probe/eval_label_sum", int(targets.sum()), step)
        run.writer.add_scalar("probe/rank", run.rank, step)


class Classifier(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))

    def forward(self, inputs):
        return self.net(inputs)

    def training_step(self, batch, batch_idx):
        loss = nn.functional.cross_entropy(self(batch[0]), batch[1])
        self.log("lightning/loss", loss)  # Lightning's own scalar, in the logger's directory
        return loss

    def validation_step(self, batch, batch_idx):
        return nn.functional.cross_entropy(self(batch[0]), batch[1])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def data() -> tuple[TensorDataset, TensorDataset]:
    """64 training samples, the first EVAL_SAMPLES of them for evaluation."""
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(64, 6, generator=generator)
    labels = inputs[:, :3].argmax(1)
    return TensorDataset(inputs, labels), TensorDataset(inputs[:EVAL_SAMPLES], labels[:EVAL_SAMPLES])


def main() -> None:
    root = Path(sys.argv[1])
    train, evaluation = data()
    callback = TbhooksCallback(
        plugins=[EvalProbe(), Scalars(every_n_steps=2)], class_names=["a", "b", "c"], autoload=False, disable=["graph"]
    )
    trainer = pl.Trainer(
        strategy="ddp",
        accelerator="cpu",
        devices=2,
        max_epochs=2,
        logger=pl.loggers.TensorBoardLogger(root, name="lit", default_hp_metric=False),
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[callback],
    )
    trainer.fit(Classifier(), DataLoader(train, batch_size=8), DataLoader(evaluation, batch_size=5))
    metrics = callback.hooks.last_metrics
    # One file per rank: lines printed by two processes to one pipe can interleave.
    report = root / f"report-{trainer.global_rank}.txt"
    report.write_text(f"accuracy {metrics['accuracy']:.6f} loss {metrics['loss']:.6f} step {callback.hooks.step}")


if __name__ == "__main__":
    main()
