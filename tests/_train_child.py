"""A slow training run for the signal tests: prints each step once its loss has been handed to the writer.

Usage: python _train_child.py LOGDIR FLUSH_SECS [--bare]

``--bare`` runs the same loop by hand, without tbhooks: the reference for the exit status a
signal leaves on this interpreter and platform.
"""

from __future__ import annotations

import sys
import time

import torch
from torch import nn

import tbhooks
from tbhooks.default_plugins.scalars import Scalars


class Announce:
    name = "announce"

    @tbhooks.hookimpl(trylast=True)  # after the scalars plugin has written this step
    def on_batch_end(self, step):
        print(f"step {step}", flush=True)


def slow_loss(prediction, targets):
    time.sleep(0.02)
    return nn.functional.cross_entropy(prediction, targets)


def bare(model: nn.Module, loader: torch.utils.data.DataLoader) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    step = 0
    for _ in range(100):
        for inputs, targets in loader:
            optimizer.zero_grad()
            slow_loss(model(inputs), targets).backward()
            optimizer.step()
            step += 1
            print(f"step {step}", flush=True)


def main() -> None:
    logdir, flush_secs = sys.argv[1], float(sys.argv[2])
    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(4000, 6), torch.randint(0, 3, (4000,)))
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    if "--bare" in sys.argv:
        bare(model, torch.utils.data.DataLoader(data, batch_size=4))
        return
    trainer = tbhooks.Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.01),
        slow_loss,
        logdir=logdir,
        plugins=[Scalars(every_n_steps=1), Announce()],
        disable=["graph", "images", "embeddings", "pr_curves", "histograms", "hparams"],
        autoload=False,
        flush_secs=flush_secs,
        progress=False,
        device="cpu",  # the signal path is the subject here; "auto" would train on a GPU machine's GPU
    )
    trainer.fit(torch.utils.data.DataLoader(data, batch_size=4), epochs=100)


if __name__ == "__main__":
    # Ctrl-C as in a terminal, whatever the parent left: a shell's background job starts its children
    # with SIGINT ignored, and Python then installs no KeyboardInterrupt handler (the test would hang).
    import signal

    signal.signal(signal.SIGINT, signal.default_int_handler)
    main()
