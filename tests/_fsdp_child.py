"""One rank of the FSDP2 test: a model sharded by the Trainer, then one sharded by hand with ``attach``.

Usage: torchrun --nproc-per-node 2 _fsdp_child.py OUTDIR

At every logging step a probe plugin, on every rank, gathers each whole
parameter and gradient (``DTensor.full_tensor``, a collective) and rank 0
writes their count, min, max, sum and sum of squares to ``OUTDIR/<run>.json``:
what the histograms must show, computed independently of them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import fully_shard

import tbhooks
from tbhooks.default_plugins.histograms import Histograms


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))  # Linear(32, 3): uneven on 2 ranks


class Truth:
    """The whole tensors' statistics at the histograms' steps, gathered on every rank, kept by rank 0."""

    name = "truth"

    def __init__(self) -> None:
        self.stats: dict[str, dict[int, list[float]]] = {}

    def batch_end_due(self, step: int) -> bool:
        return step % 2 == 0

    @tbhooks.hookimpl
    def on_batch_end(self, run, step):
        for name, parameter in run.model.named_parameters():
            for tag, tensor in ((f"weights/{name}", parameter), (f"grads/{name}", parameter.grad)):
                whole = tensor.full_tensor().double()
                values = [whole.numel(), whole.min().item(), whole.max().item(), whole.sum().item()]
                self.stats.setdefault(tag, {})[step] = [*values, whole.square().sum().item()]


def data(n: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(n, 8, generator=generator)
    return list(zip(inputs.split(4), inputs[:, :3].argmax(1).split(4), strict=True))


def main() -> None:
    out = Path(sys.argv[1])
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    options = {"class_names": ["a", "b", "c"], "autoload": False, "disable": ["embeddings"]}

    # 1. The Trainer shards the model (each child, then the root) and rebuilds the optimizer.
    truth = Truth()
    net = model()
    trainer = tbhooks.Trainer(
        net,
        torch.optim.SGD(net.parameters(), lr=0.1),
        nn.functional.cross_entropy,
        logdir=out / "trainer",
        device="cpu",
        strategy="fsdp",
        plugins=[truth, Histograms(every_n_steps=2)],
        progress=False,
        **options,
    )
    dataset = torch.utils.data.TensorDataset(*[torch.cat(part) for part in zip(*data(32, 1), strict=True)])
    evaluation = torch.utils.data.TensorDataset(*[torch.cat(part) for part in zip(*data(12, 2), strict=True)])
    loader = torch.utils.data.DataLoader(dataset, batch_size=4)
    trainer.fit(loader, epochs=1, eval_loader=torch.utils.data.DataLoader(evaluation, batch_size=4))
    if rank == 0:
        (out / "trainer.json").write_text(json.dumps(truth.stats))

    # 2. Sharded by hand, given to attach; this rank's share of the data.
    truth = Truth()
    net = model()
    for layer in (net[0], net[2]):
        fully_shard(layer)
    fully_shard(net)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    plugins = [truth, Histograms(every_n_steps=2)]
    with tbhooks.attach(net, logdir=out / "attach", optimizer=optimizer, plugins=plugins, **options) as hooks:
        hooks.epoch_start()
        for x, y in data(32, 1)[rank::2]:
            hooks.batch_start()
            optimizer.zero_grad()
            scores = net(x)
            loss = nn.functional.cross_entropy(scores, y)
            loss.backward()
            optimizer.step()
            hooks.batch_end(x, y, scores, loss)
        hooks.epoch_end()
        assert hooks.faults == {}, hooks.faults
    if rank == 0:
        (out / "attach.json").write_text(json.dumps(truth.stats))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
