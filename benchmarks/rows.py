"""What each row of ``make bench`` trains: the two workloads, a bare loop, tbhooks, plain SummaryWriter calls,
the tutorial's own code and the peers (``benchmarks/run.py`` measures them in lockstep)."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import tbhooks
from tbhooks.default_plugins.histograms import Histograms
from tbhooks.default_plugins.scalars import Scalars

CLASSES = ("T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Boot")
CONTROL = "bare loop"
DEFAULT_SCHEDULE = (Scalars().every_n_steps, Histograms().every_n_steps)
"""tbhooks' default schedule, read from the plugins' defaults: (scalars every, histograms every) steps."""


def tutorial_net() -> nn.Sequential:
    """The network of the PyTorch TensorBoard tutorial (Fashion-MNIST, 28x28 grey images)."""
    return nn.Sequential(
        nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2, 2), nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2, 2),
        nn.Flatten(), nn.Linear(16 * 4 * 4, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10),
    )  # fmt: skip


def conv_net(c: int) -> nn.Sequential:
    """W2's compute-bound CNN: five 3x3 convolutions with batch norm (``c`` to ``4c`` channels), 10 classes."""

    def block(inputs: int, outputs: int) -> list[nn.Module]:
        return [nn.Conv2d(inputs, outputs, 3, padding=1, bias=False), nn.BatchNorm2d(outputs), nn.ReLU()]

    return nn.Sequential(
        *block(3, c), *block(c, c), nn.MaxPool2d(2), *block(c, 2 * c), *block(2 * c, 2 * c), nn.MaxPool2d(2),
        *block(2 * c, 4 * c), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * c, 10),
    )  # fmt: skip


@dataclass(frozen=True)
class Sizes:
    """One workload's sizes and logging schedule (the same for every row)."""

    steps: int  # training steps per run
    interval: int  # histograms, evaluations, the tutorial's figure every this many steps
    scalars: int  # scalars every this many steps
    reps: int
    channels: int = 0  # W2's CNN width
    skip: int = 0  # steps before the steady state (the first step traces the graph, say)

    def warm(self) -> Sizes:
        """A few steps through every code path of every row (imports, first calls), before the timing."""
        return replace(self, steps=4, interval=2, scalars=1, skip=1)


@dataclass
class Workload:
    """A network, its data, its sizes and the initial weights every row starts from."""

    name: str
    title: str
    sizes: Sizes
    make: Callable[[], nn.Module]
    train: Any  # a DataLoader; a Lockstep while a row runs
    eval: DataLoader[Any]
    initial: dict[str, torch.Tensor]
    root: Path
    epochs: int  # an epoch is one interval: the Trainer evaluates after each
    scaled: bool  # the schedule is not tbhooks' default

    def model(self) -> nn.Module:
        net = self.make()
        net.load_state_dict(self.initial)
        return net

    @staticmethod
    def optimizer(net: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.SGD(net.parameters(), lr=0.001, momentum=0.9)

    def logdir(self, row: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=f"{self.name}-{row}-", dir=self.root))


def make_workload(name: str, sizes: Sizes, root: Path) -> Workload:
    """W1: the tutorial's network, batch 4 of 28x28x1; W2: ``conv_net``, batch 32 of 32x32x3; random data."""
    w1 = name == "W1"
    batch, shape = (4, (1, 28, 28)) if w1 else (32, (3, 32, 32))
    make: Callable[[], nn.Module] = tutorial_net if w1 else lambda: conv_net(sizes.channels)
    title = "the tutorial's network, batch 4, 28x28x1" if w1 else "a CNN of five 3x3 conv layers with batch norm "
    title += "" if w1 else f"({sizes.channels} to {4 * sizes.channels} channels), batch 32, 32x32x3"
    g, n = torch.Generator().manual_seed(0), sizes.interval * batch
    train = TensorDataset(torch.randn(n, *shape, generator=g), torch.randint(0, 10, (n,), generator=g))
    held_out = TensorDataset(torch.randn(64, *shape, generator=g), torch.randint(0, 10, (64,), generator=g))
    torch.manual_seed(0)
    initial = {k: v.clone() for k, v in make().state_dict().items()}
    loaders = DataLoader(train, batch_size=batch), DataLoader(held_out, batch_size=batch)
    scaled = (sizes.scalars, sizes.interval) != DEFAULT_SCHEDULE
    return Workload(name, title, sizes, make, *loaders, initial, root, sizes.steps // sizes.interval, scaled)


def bare_loop(w: Workload) -> None:
    """No logging at all, the tutorial's order of calls (the control: the bare loop in lockstep with itself)."""
    net, loss_fn = w.model(), nn.CrossEntropyLoss()
    opt = w.optimizer(net)
    for _ in range(w.epochs):
        for inputs, labels in w.train:
            opt.zero_grad()
            loss_fn(net(inputs), labels).backward()
            opt.step()


PLUGINS: dict[str, str] = {}  # per tbhooks row, the plugins its last run registered (reported: autoload was on)


def scaled_plugins(w: Workload, activations: str | tuple[str, ...] = ()) -> list[Any]:
    """The built-ins to pass on the workload's schedule (none on tbhooks' default one, without activations)."""
    if not w.scaled and not activations:
        return []
    return [Scalars(every_n_steps=w.sizes.scalars), Histograms(every_n_steps=w.sizes.interval, activations=activations)]


def fit_tbhooks(w: Workload, row: str, plugins: list[Any], evaluate: bool) -> None:
    net = w.model()
    trainer = tbhooks.Trainer(
        net, w.optimizer(net), nn.CrossEntropyLoss(), logdir=w.logdir(row), device="cpu", progress=False,
        class_names=list(CLASSES), plugins=plugins, autoload=True,
    )  # fmt: skip
    trainer.fit(w.train, epochs=w.epochs, eval_loader=w.eval if evaluate else None)
    if trainer.hooks is not None:
        PLUGINS[row] = ", ".join(sorted(name for name, _ in trainer.hooks.plugin_manager.list_name_plugin()))


def tbhooks_default(w: Workload) -> None:
    """``tbhooks.Trainer`` with every default, the installed plugins' entry points loaded (as ``make`` installs
    them), no evaluation loader."""
    fit_tbhooks(w, "default", scaled_plugins(w), evaluate=False)


def tbhooks_every(w: Workload) -> None:
    """The Trainer with every plugin on: histograms of weights, grads and every leaf module's activations every
    interval; an evaluation on 64 images every interval (embeddings, PR curves, the figures plugin's two
    figures; its forward passes count against the row); the rest at their defaults; entry points loaded."""
    fit_tbhooks(w, "every", scaled_plugins(w, "all"), evaluate=True)


def plain_writer(w: Workload) -> None:
    """SummaryWriter calls on tbhooks' default schedule: the loss read once per scalars step (``add_scalar`` of it
    and the learning rate), ``add_histogram`` of weights and grads every interval, ``add_graph`` and an image
    grid once."""
    from torch.utils.tensorboard import SummaryWriter
    from torchvision.utils import make_grid

    net, loss_fn = w.model(), nn.CrossEntropyLoss()
    opt, step = w.optimizer(net), 0
    writer = SummaryWriter(str(w.logdir("plain")))
    for _ in range(w.epochs):
        for inputs, labels in w.train:
            opt.zero_grad()
            loss = loss_fn(net(inputs), labels)
            loss.backward()
            opt.step()
            step += 1
            if step == 1:
                writer.add_graph(net, inputs)
                writer.add_image("inputs", make_grid(inputs[:16], normalize=True), step)
            if step % w.sizes.scalars == 0:
                writer.add_scalar("train/loss", loss.item(), step)
                writer.add_scalar("train/lr", opt.param_groups[0]["lr"], step)
            if step % w.sizes.interval == 0:
                for name, p in net.named_parameters():
                    writer.add_histogram(f"weights/{name}", p, step)
                    writer.add_histogram(f"grads/{name}", p.grad, step)
    writer.close()


def plot_classes_preds(net: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> plt.Figure:
    """The tutorial's figure: four images titled with predicted class, probability and label (pyplot)."""
    output = net(images)
    predictions = torch.max(output, 1)[1].numpy()
    probabilities = [torch.softmax(row, dim=0)[int(i)].item() for i, row in zip(predictions, output, strict=True)]
    figure = plt.figure(figsize=(12, 48))
    for index in range(4):
        axes = figure.add_subplot(1, 4, index + 1, xticks=[], yticks=[])
        plt.imshow((images[index].mean(dim=0) / 2 + 0.5).numpy(), cmap="Greys")
        axes.set_title(
            f"{CLASSES[predictions[index]]}, {probabilities[index] * 100.0:.1f}%\n(label: {CLASSES[labels[index]]})",
            color="green" if predictions[index] == labels[index].item() else "red",
        )
    return figure


def tutorial(w: Workload) -> None:
    """The tutorial's own code: ``loss.item()`` every step; ``add_scalar`` of the running loss and ``add_figure``
    of its pyplot predictions figure every interval; ``add_graph`` and an image grid once."""
    from torch.utils.tensorboard import SummaryWriter
    from torchvision.utils import make_grid

    net, loss_fn = w.model(), nn.CrossEntropyLoss()
    opt, every, running_loss = w.optimizer(net), w.sizes.interval, 0.0
    writer = SummaryWriter(str(w.logdir("tutorial")))
    for epoch in range(w.epochs):
        for i, (inputs, labels) in enumerate(w.train):
            if epoch == i == 0:
                writer.add_image("four_fashion_mnist_images", make_grid(inputs))
                writer.add_graph(net, inputs)
            opt.zero_grad()
            loss = loss_fn(net(inputs), labels)
            loss.backward()
            opt.step()
            running_loss += loss.item()
            if i % every == every - 1:
                step = epoch * every + i
                writer.add_scalar("training loss", running_loss / every, step)
                writer.add_figure("predictions vs. actuals", plot_classes_preds(net, inputs, labels), global_step=step)
                running_loss = 0.0
    writer.close()


def fit_lightning(w: Workload, *, log: bool, tbhooks_callback: bool = False) -> None:
    """A LightningModule (``self.log`` of its loss with a TensorBoardLogger when ``log``), no checkpointing,
    progress bar or model summary; with ``tbhooks_callback``, tbhooks' callback with every default."""
    import pytorch_lightning as pl
    from pytorch_lightning.loggers import TensorBoardLogger

    for name in ("pytorch_lightning", "lightning_fabric"):  # their info lines (levels set at import)
        logging.getLogger(name).setLevel(logging.ERROR)

    class LitNet(pl.LightningModule):
        def __init__(self, net: nn.Module) -> None:
            super().__init__()
            self.net, self.loss_fn = net, nn.CrossEntropyLoss()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            loss = self.loss_fn(self(batch[0]), batch[1])
            if log:
                self.log("train_loss", loss)
            return loss

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return Workload.optimizer(self)

    callbacks = []
    if tbhooks_callback:
        from tbhooks.integrations.lightning import TbhooksCallback

        callbacks.append(TbhooksCallback(logdir=w.logdir("lightning-tbhooks"), plugins=scaled_plugins(w)))
    trainer = pl.Trainer(
        max_epochs=w.epochs, logger=TensorBoardLogger(save_dir=str(w.logdir("lightning"))) if log else False,
        log_every_n_steps=w.sizes.scalars, enable_progress_bar=False, enable_checkpointing=False,
        enable_model_summary=False, accelerator="cpu", devices=1, num_sanity_val_steps=0, callbacks=callbacks,
    )  # fmt: skip
    trainer.fit(LitNet(w.model()), train_dataloaders=w.train)


def lightning(w: Workload) -> None:
    """Lightning with its TensorBoardLogger: a LightningModule calling ``self.log`` on its loss, logged every
    scalars interval; no checkpointing, progress bar or model summary."""
    fit_lightning(w, log=True)


def lightning_bare(w: Workload) -> None:
    """Lightning with no logger (no ``self.log``): the framework's own loop."""
    fit_lightning(w, log=False)


def lightning_tbhooks(w: Workload) -> None:
    """Lightning with no logger and tbhooks' ``TbhooksCallback`` with every default (entry points loaded)."""
    fit_lightning(w, log=False, tbhooks_callback=True)


def fit_ignite(w: Workload, *, logger: bool, tbhooks_attach: bool = False) -> None:
    """``create_supervised_trainer`` handing over tensors (no per-step ``loss.item()``); with ``logger``
    Ignite's TensorboardLogger (the loss every scalars interval, weights and grads histograms every
    interval), with ``tbhooks_attach`` tbhooks' adapter with every default."""
    from ignite.engine import Events, create_supervised_trainer
    from ignite.handlers.tensorboard_logger import GradsHistHandler, TensorboardLogger, WeightsHistHandler

    logging.getLogger("ignite").setLevel(logging.ERROR)
    net = w.model()
    optimizer = w.optimizer(net)
    trainer = create_supervised_trainer(
        net, optimizer, nn.CrossEntropyLoss(), output_transform=lambda x, y, y_pred, loss: (x, y, y_pred, loss)
    )
    if logger:
        board = TensorboardLogger(log_dir=str(w.logdir("ignite")))
        every = Events.ITERATION_COMPLETED(every=w.sizes.scalars)
        board.attach_output_handler(
            trainer, event_name=every, tag="training", output_transform=lambda o: {"loss": o[3]}
        )
        for handler in (WeightsHistHandler(net), GradsHistHandler(net)):
            board.attach(trainer, handler, Events.ITERATION_COMPLETED(every=w.sizes.interval))
    if tbhooks_attach:
        from tbhooks.integrations.ignite import attach

        attach(trainer, net, logdir=w.logdir("ignite-tbhooks"), optimizer=optimizer, plugins=scaled_plugins(w))
    trainer.run(w.train, max_epochs=w.epochs)
    if logger:
        board.close()


def ignite(w: Workload) -> None:
    """Ignite with its TensorboardLogger: OutputHandler (the loss) every scalars interval, weights and grads
    histograms every interval."""
    fit_ignite(w, logger=True)


def ignite_bare(w: Workload) -> None:
    """Ignite with no logger: the framework's own loop."""
    fit_ignite(w, logger=False)


def ignite_tbhooks(w: Workload) -> None:
    """Ignite with tbhooks' adapter (``tbhooks.integrations.ignite.attach``) with every default."""
    fit_ignite(w, logger=False, tbhooks_attach=True)
