"""One rank of the torchrun test: a short fit with DDP on gloo, every built-in plugin on.

Usage: torchrun --nproc-per-node 2 _ddp_child.py LOGDIR
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from torch import nn

import tbhooks


class EvalProbe:
    """Writes how many evaluation samples on_eval received, and on which rank it ran."""

    name = "eval_probe"

    @tbhooks.hookimpl
    def on_eval(self, run, step, outputs, targets):
        run.writer.add_scalar("probe/eval_samples", outputs.shape[0], step)
        run.writer.add_scalar("probe/eval_label_sum", int(targets.sum()), step)
        run.writer.add_scalar("probe/rank", run.rank, step)


def main() -> None:
    logdir = sys.argv[1]
    torch.manual_seed(0)
    inputs = torch.randn(64, 6)
    labels = inputs[:, :3].argmax(1)
    train = torch.utils.data.TensorDataset(inputs, labels)
    evaluation = torch.utils.data.TensorDataset(inputs[:37], labels[:37])  # odd: no rank may pad
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    trainer = tbhooks.Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        nn.functional.cross_entropy,
        logdir=logdir,
        plugins=[EvalProbe()],
        class_names=["a", "b", "c"],
        autoload=False,
        disable=["graph"],
        progress=False,
        device="cpu",  # gloo on the CPU, also where there is a GPU: two ranks, maybe one GPU
    )
    metrics = trainer.fit(
        torch.utils.data.DataLoader(train, batch_size=8, shuffle=True),
        epochs=2,
        eval_loader=torch.utils.data.DataLoader(evaluation, batch_size=5),
    )
    # One file per rank: lines printed by two processes to one pipe can interleave.
    report = Path(logdir).parent / f"report-{os.environ['RANK']}.txt"
    report.write_text(f"accuracy {metrics['accuracy']:.6f} loss {metrics['loss']:.6f}")


if __name__ == "__main__":
    main()
