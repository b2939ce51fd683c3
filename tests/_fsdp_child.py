"""One rank of the FSDP2 test: a model sharded by the Trainer, then one sharded by hand with ``attach``.

Usage: torchrun --nproc-per-node N _fsdp_child.py OUTDIR [DEVICE]

DEVICE is ``cpu`` (gloo; the default) or ``cuda`` (NCCL, one GPU per rank:
``benchmarks/cuda_check.py`` runs it there).  :func:`check` compares what was
written with what the ranks computed; ``tests/test_fsdp.py`` and the CUDA check
both call it.

At every logging step a probe plugin, on every rank, gathers each whole
parameter and gradient (``DTensor.full_tensor``, a collective) and rank 0
writes their count, min, max, sum and sum of squares to ``OUTDIR/<run>.json``:
what the histograms must show, computed independently of them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import fully_shard

import tbhooks
from tbhooks.default_plugins.histograms import Histograms
from tbhooks.testing import read_events

TRAIN, EVAL, BATCH = 32, 12, 4  # samples, split across the ranks


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
    """``n`` random samples in batches of BATCH, each labelled by the argmax of its first three features."""
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(n, 8, generator=generator)
    return list(zip(inputs.split(BATCH), inputs[:, :3].argmax(1).split(BATCH), strict=True))


def main() -> None:
    out, kind = Path(sys.argv[1]), (sys.argv[2] if len(sys.argv) > 2 else "cpu")
    dist.init_process_group("nccl" if kind == "cuda" else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device(f"cuda:{rank}" if kind == "cuda" else "cpu")
    if kind == "cuda":
        torch.cuda.set_device(device)
    options = {"class_names": ["a", "b", "c"], "autoload": False, "disable": ["embeddings"]}

    # 1. The Trainer shards the model (each child, then the root) and rebuilds the optimizer.
    truth = Truth()
    net = model()
    trainer = tbhooks.Trainer(
        net,
        torch.optim.SGD(net.parameters(), lr=0.1),
        nn.functional.cross_entropy,
        logdir=out / "trainer",
        device=device,
        strategy="fsdp",
        plugins=[truth, Histograms(every_n_steps=2)],
        progress=False,
        **options,
    )
    dataset = torch.utils.data.TensorDataset(*[torch.cat(part) for part in zip(*data(TRAIN, 1), strict=True)])
    evaluation = torch.utils.data.TensorDataset(*[torch.cat(part) for part in zip(*data(EVAL, 2), strict=True)])
    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH)
    trainer.fit(loader, epochs=1, eval_loader=torch.utils.data.DataLoader(evaluation, batch_size=BATCH))
    if rank == 0:
        (out / "trainer.json").write_text(json.dumps(truth.stats))

    # 2. Sharded by hand, given to attach; this rank's share of the data.
    truth = Truth()
    net = model().to(device)
    for layer in (net[0], net[2]):
        fully_shard(layer)
    fully_shard(net)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    plugins = [truth, Histograms(every_n_steps=2)]
    with tbhooks.attach(net, logdir=out / "attach", optimizer=optimizer, plugins=plugins, **options) as hooks:
        hooks.epoch_start()
        for x, y in data(TRAIN, 1)[rank::world]:
            x, y = x.to(device), y.to(device)
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


def check(out: Path, world: int) -> None:
    """What rank 0 wrote against what the ranks gathered: whole-parameter histograms, one event file a run,
    the sharded graph as text, and PR curves that count every evaluation sample once."""
    steps = TRAIN // BATCH // world
    for run in ("trainer", "attach"):
        logdir = out / run
        assert len(list(logdir.glob("events.out.tfevents.*"))) == 1, run
        truth = json.loads((out / f"{run}.json").read_text())
        events = read_events(logdir)
        assert set(events.histograms) == set(truth) and len(truth) == 8, (run, sorted(events.histograms))
        for tag, by_step in truth.items():
            logged = {event.step: event.histogram_value for event in events.histograms[tag]}
            assert sorted(logged) == sorted(int(step) for step in by_step) == list(range(2, steps + 1, 2)), run
            for step, (num, low, high, total, square) in by_step.items():
                value = logged[int(step)]
                assert (value.num, sum(value.bucket)) == (num, num), (run, tag)
                assert (value.min, value.max) == pytest.approx((low, high), rel=1e-6), (run, tag)
                assert value.sum == pytest.approx(total, rel=1e-5, abs=1e-6), (run, tag)
                assert value.sum_squares == pytest.approx(square, rel=1e-5), (run, tag)
        assert events.steps("train/epoch_loss") == [steps]
        # A sharded model is not traced on one rank (it would wait for the other): its text summary instead.
        assert not events.graph and "graph/summary/text_summary" in events.texts
    events = read_events(out / "trainer")
    for tag in ("pr_curves/a", "pr_curves/b", "pr_curves/c"):  # every evaluation sample counted once
        [(_, table)] = events.pr_curves[tag]
        assert table[:4, 0].sum() == EVAL
    assert events.values("eval/accuracy")


if __name__ == "__main__":
    main()
