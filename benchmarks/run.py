#!/usr/bin/env python
"""tbhooks' benchmark: what logging costs, side by side with a bare loop and the peers.

``make bench`` runs this file; it prints every table as it goes and writes
``benchmarks/RESULTS.md`` (``--out`` to write elsewhere).  ``--quick`` is a
tiny configuration for the smoke test: its numbers mean nothing.

Main table: the PyTorch TensorBoard tutorial's network (conv(1,6,5), pool,
conv(6,16,5), pool, fc 256-120-84-10), batch size 4, 28x28 inputs,
``torch.set_num_threads(1)``, the same synthetic data for every row.  Each
row is timed from the creation of its logger to the logs being closed, and
the rows are interleaved: repetition 1 runs every row once, then repetition
2, and so on (the order rotates between repetitions), so load from other
processes falls on every row alike.  Reported: the median steps/s of each
row and its ratio to the median of the bare loop.

Microbenchmarks: event dispatch through tbhooks' guarded plugin manager vs
bare pluggy; device histograms vs ``SummaryWriter.add_histogram``; the time
the training thread spends per figure; the flush interval; the cost of
``measure_overhead``.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import inspect
import io
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
import timeit
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import tbhooks
from tbhooks.markers import hookimpl

HERE = Path(__file__).resolve().parent
CLASSES = ("T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Boot")


# ---------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------


@dataclass
class Config:
    """Sizes of one benchmark run; ``quick()`` is the smoke-test configuration."""

    images: int = 4000  # training images: 1000 steps of batch 4 per epoch
    epochs: int = 1
    reps: int = 5
    figure_every: int = 1000  # the tutorial's rate: a figure (and an evaluation) every 1000 steps
    eval_images: int = 64
    histogram_every: int = 100  # "all" row: weights, gradients and activations every 100 steps
    hist_elements: int = 20_000_000
    hist_repeat: int = 3
    dispatch_number: int = 5_000
    dispatch_repeat: int = 5
    figure_calls: int = 5
    thread_reps: int = 3  # a median that one slow run (a machine hiccup at close, say) cannot move
    lockstep_reps: int = 3
    figure_cycles: int = 3
    figure_steps: int = 600  # training steps after each evaluation in the figure-time measurement
    quick: bool = False

    @classmethod
    def quick_config(cls) -> Config:
        return cls(
            images=200,
            epochs=1,
            reps=2,
            figure_every=50,
            eval_images=20,
            histogram_every=10,
            hist_elements=200_000,
            hist_repeat=1,
            dispatch_number=500,
            dispatch_repeat=2,
            figure_calls=1,
            thread_reps=1,
            lockstep_reps=1,
            figure_cycles=1,
            figure_steps=40,
            quick=True,
        )


# ---------------------------------------------------------------------------
# the workload: the tutorial's network and synthetic data
# ---------------------------------------------------------------------------


class Net(nn.Module):
    """The network of the PyTorch TensorBoard tutorial (Fashion-MNIST, 28x28 grey images)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 4 * 4, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        x = x.flatten(1)
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


@dataclass
class Workload:
    """The data and initial weights every row starts from."""

    config: Config
    train: DataLoader[Any]
    eval: DataLoader[Any]
    initial: dict[str, torch.Tensor]
    root: Path

    @property
    def steps(self) -> int:
        return len(self.train) * self.config.epochs

    def model(self) -> Net:
        net = Net()
        net.load_state_dict(self.initial)
        return net

    @staticmethod
    def optimizer(net: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.SGD(net.parameters(), lr=0.001, momentum=0.9)

    def logdir(self, name: str) -> Path:
        path = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.root))
        return path


def make_workload(config: Config, root: Path, images: int | None = None) -> Workload:
    generator = torch.Generator().manual_seed(0)
    n = images or config.images
    x = torch.randn(n, 1, 28, 28, generator=generator)
    y = torch.randint(0, 10, (n,), generator=generator)
    ex = torch.randn(config.eval_images, 1, 28, 28, generator=generator)
    ey = torch.randint(0, 10, (config.eval_images,), generator=generator)
    torch.manual_seed(0)
    initial = {k: v.clone() for k, v in Net().state_dict().items()}
    train = DataLoader(TensorDataset(x, y), batch_size=4, shuffle=False, num_workers=0)
    evaluation = DataLoader(TensorDataset(ex, ey), batch_size=config.eval_images, shuffle=False, num_workers=0)
    return Workload(config, train, evaluation, initial, root)


# ---------------------------------------------------------------------------
# the rows
# ---------------------------------------------------------------------------


def bare_loop(w: Workload) -> None:
    """The hand-written loop every other row is compared with: no logging at all."""
    net = w.model()
    opt = w.optimizer(net)
    loss_fn = nn.CrossEntropyLoss()
    net.train()
    for _ in range(w.config.epochs):
        for inputs, labels in w.train:
            opt.zero_grad()
            loss = loss_fn(net(inputs), labels)
            loss.backward()
            opt.step()


def _tbhooks_fit(w: Workload, name: str, *, evaluate: bool = False, **options: Any) -> Path:
    net = w.model()
    logdir = w.logdir(name)
    trainer = tbhooks.Trainer(
        net,
        w.optimizer(net),
        nn.CrossEntropyLoss(),
        logdir=logdir,
        device="cpu",
        progress=False,
        class_names=list(CLASSES),
        **options,
    )
    trainer.fit(w.train, epochs=w.config.epochs, eval_loader=w.eval if evaluate else None)
    return logdir


def tbhooks_default(w: Workload) -> None:
    """Every built-in plugin at its default settings, training only; entry points not loaded (``autoload=False``)."""
    _tbhooks_fit(w, "default", autoload=False)


def tbhooks_flush120(w: Workload) -> None:
    """As ``tbhooks_default`` with SummaryWriter's own flush interval, 120 s."""
    _tbhooks_fit(w, "flush120", autoload=False, flush_secs=120)


OVERHEAD_SEEN: dict[str, list[float]] = {}
MEASURED_LOGDIRS: list[Path] = []


def tbhooks_measured(w: Workload) -> None:
    """As ``tbhooks_default`` with ``measure_overhead=True``; its log directory is read back after the timing."""
    MEASURED_LOGDIRS.append(_tbhooks_fit(w, "measured", autoload=False, measure_overhead=True))


def collect_overhead() -> None:
    """Read the ``tbhooks/overhead_ms/<plugin>`` scalars the measured runs wrote (outside any timing)."""
    from tbhooks.testing import read_events

    for logdir in MEASURED_LOGDIRS:
        for tag, points in read_events(logdir).scalars.items():
            if tag.startswith("tbhooks/overhead_ms/"):
                OVERHEAD_SEEN.setdefault(tag.rsplit("/", 1)[1], []).extend(p.value for p in points)
    MEASURED_LOGDIRS.clear()


@dataclass
class AllPlugins:
    """How the "all" row is configured, as found in this installation (reported in RESULTS.md)."""

    make: Callable[[], list[Any]] = list  # fresh plugin objects for each run
    notes: list[str] = field(default_factory=list)
    figures: bool = False


def all_plugins_setup(config: Config) -> AllPlugins:
    """Every plugin on: histograms of weights, gradients and every leaf module's activations every
    ``histogram_every`` steps, input images every epoch, the other built-ins at their defaults, and the
    ``figures`` plugin drawing at every evaluation, i.e. every ``figure_every`` steps.

    The plugins are passed as objects with entry points off, so whatever other
    tbhooks distributions are installed cannot change what the row measures."""
    from tbhooks.default_plugins.histograms import Histograms
    from tbhooks.default_plugins.images import Images

    setup = AllPlugins()
    makers: list[Callable[[], Any]] = [
        lambda: Histograms(every_n_steps=config.histogram_every, activations="all"),
        lambda: Images(every_n_epochs=1),
    ]
    setup.notes.append(f"Histograms(every_n_steps={config.histogram_every}, activations='all')")
    setup.notes.append("Images(every_n_epochs=1)")
    setup.notes.append("graph, scalars, embeddings, pr_curves, hparams at their defaults")
    try:
        from tbhooks_figures.plugin import Figures

        makers.append(Figures)
        setup.figures = True
        setup.notes.append(
            "Figures() from plugins/tbhooks-figures (a predictions figure and a confusion matrix per evaluation)"
        )
    except ImportError as exc:
        setup.notes.append(f"NO figures plugin ({exc}): install plugins/tbhooks-figures")
    setup.notes.append("entry points not loaded (autoload=False): the plugins are passed as objects")
    setup.make = lambda: [make() for make in makers]
    return setup


ALL = AllPlugins()


ALL_LOGDIRS: list[Path] = []


def tbhooks_all(w: Workload) -> None:
    """Every plugin on, figures included, with an evaluation (and so a figure) every ``figure_every`` steps."""
    ALL_LOGDIRS.append(_tbhooks_fit(w, "all", evaluate=True, autoload=False, plugins=ALL.make()))


def all_row_contents() -> str:
    """What the last timed "all" run wrote, read back with TensorBoard's reader: proof the row did the work."""
    from tbhooks.testing import read_events

    events = read_events(ALL_LOGDIRS[-1])
    kinds: dict[str, int] = {}
    for tag in events.histograms:
        kinds[tag.split("/")[0]] = kinds.get(tag.split("/")[0], 0) + len(events.histograms[tag])
    histograms = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) or "none"
    images = ", ".join(f"{t} x{len(v)}" for t, v in sorted(events.images.items())) or "none"
    projector = any(ALL_LOGDIRS[-1].glob("**/projector_config.pbtxt"))
    return (
        f"histograms: {histograms}; images: {images}; PR curves: {len(events.pr_curves)} tags; "
        f"scalars: {len(events.scalars)} tags; graph: {'yes' if events.graph else 'no'}; "
        f"projector config: {'yes' if projector else 'no'}"
    )


def _to_probabilities(net: nn.Module, images: torch.Tensor) -> tuple[np.ndarray, list[float]]:
    # As the tutorial does it: a forward pass with autograd on, then one .item() per sample.
    output = net(images)
    _, predicted = torch.max(output, 1)
    predictions = np.squeeze(predicted.numpy())
    return predictions, [torch.softmax(row, dim=0)[int(i)].item() for i, row in zip(predictions, output, strict=True)]


def plot_classes_preds(net: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> plt.Figure:
    """The tutorial's figure: four images with predicted class, probability and label, rendered with pyplot."""
    predictions, probabilities = _to_probabilities(net, images)
    figure = plt.figure(figsize=(12, 48))
    for index in range(4):
        axes = figure.add_subplot(1, 4, index + 1, xticks=[], yticks=[])
        image = images[index].mean(dim=0) / 2 + 0.5
        plt.imshow(image.numpy(), cmap="Greys")
        right = predictions[index] == labels[index].item()
        axes.set_title(
            f"{CLASSES[predictions[index]]}, {probabilities[index] * 100.0:.1f}%\n(label: {CLASSES[labels[index]]})",
            color="green" if right else "red",
        )
    return figure


def tutorial(w: Workload) -> None:
    """The tutorial's loop: ``loss.item()`` every step; a scalar and a pyplot figure every ``figure_every`` steps."""
    from torch.utils.tensorboard import SummaryWriter

    net = w.model()
    opt = w.optimizer(net)
    loss_fn = nn.CrossEntropyLoss()
    writer = SummaryWriter(str(w.logdir("tutorial")))
    every = w.config.figure_every
    running_loss = 0.0
    for epoch in range(w.config.epochs):
        for i, (inputs, labels) in enumerate(w.train):
            opt.zero_grad()
            loss = loss_fn(net(inputs), labels)
            loss.backward()
            opt.step()
            running_loss += loss.item()
            if i % every == every - 1:
                step = epoch * len(w.train) + i
                writer.add_scalar("training loss", running_loss / every, step)
                writer.add_figure("predictions vs. actuals", plot_classes_preds(net, inputs, labels), global_step=step)
                running_loss = 0.0
    writer.close()


def _quiet_peer_logs() -> None:
    for name in ("lightning", "lightning.pytorch", "pytorch_lightning", "lightning_fabric", "ignite"):
        logging.getLogger(name).setLevel(logging.ERROR)


def lightning(w: Workload) -> None:
    """A LightningModule logging its loss with ``self.log`` through TensorBoardLogger (default cadence)."""
    import pytorch_lightning as pl
    from pytorch_lightning.loggers import TensorBoardLogger

    class LitNet(pl.LightningModule):
        def __init__(self, net: nn.Module) -> None:
            super().__init__()
            self.net = net
            self.loss_fn = nn.CrossEntropyLoss()

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            inputs, labels = batch
            loss = self.loss_fn(self.net(inputs), labels)
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return Workload.optimizer(self)

    _quiet_peer_logs()
    with warnings.catch_warnings():
        # Lightning advises about num_workers and the like on every fit; the benchmark keeps them off on purpose.
        warnings.simplefilter("ignore")
        trainer = pl.Trainer(
            max_epochs=w.config.epochs,
            logger=TensorBoardLogger(save_dir=str(w.logdir("lightning")), name="lit"),
            enable_progress_bar=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            accelerator="cpu",
            devices=1,
            num_sanity_val_steps=0,
        )
        trainer.fit(LitNet(w.model()), train_dataloaders=w.train)
    torch.set_num_threads(1)  # in case the framework changed it


def ignite(w: Workload) -> None:
    """Ignite's supervised trainer with TensorboardLogger's OutputHandler every 50 iterations."""
    from ignite.engine import Events, create_supervised_trainer
    from ignite.handlers.tensorboard_logger import TensorboardLogger

    _quiet_peer_logs()
    net = w.model()
    trainer = create_supervised_trainer(net, w.optimizer(net), nn.CrossEntropyLoss())
    logger = TensorboardLogger(log_dir=str(w.logdir("ignite")))
    logger.attach_output_handler(
        trainer,
        event_name=Events.ITERATION_COMPLETED(every=50),
        tag="training",
        output_transform=lambda loss: {"loss": loss},
    )
    trainer.run(w.train, max_epochs=w.config.epochs)
    logger.close()
    torch.set_num_threads(1)


@dataclass
class Row:
    key: str
    title: str
    fn: Callable[[Workload], None]
    target: float | None = None
    needs: str | None = None  # a module that must import, else the row is skipped
    seconds: list[float] = field(default_factory=list)  # wall-clock time of each repetition
    cpu: list[float] = field(default_factory=list)  # CPU time of the process (every thread) in each repetition
    cold: float | None = None  # the untimed warm-up run: the first in this process
    skipped: str | None = None
    lockstep_only: bool = False  # timed in the lockstep run only (a variant of a row the main table has)


def make_rows() -> list[Row]:
    return [
        Row("bare", "bare loop", bare_loop),
        Row("default", "tbhooks default (autoload off)", tbhooks_default, target=0.98),
        Row("all", "tbhooks all (figures every 1000 steps)", tbhooks_all, target=0.95),
        # Variants of the default row, for the microbenchmarks' flush and measure_overhead ratios: those
        # are read from the lockstep run, so they are not timed in the main table (40 s less).
        Row("measured", "tbhooks default + measure_overhead", tbhooks_measured, lockstep_only=True),
        Row("flush120", "tbhooks default, flush_secs=120", tbhooks_flush120, lockstep_only=True),
        Row("tutorial", "tutorial-style SummaryWriter", tutorial),
        Row("lightning", "Lightning + TensorBoardLogger", lightning, needs="pytorch_lightning"),
        Row("ignite", "Ignite + TensorboardLogger", ignite, needs="ignite"),
    ]


# ---------------------------------------------------------------------------
# microbenchmarks
# ---------------------------------------------------------------------------


class Trivial:
    """A plugin whose ``on_batch_end`` does nothing: what dispatch alone costs."""

    def __init__(self, index: int) -> None:
        self.name = f"trivial{index}"

    @hookimpl
    def on_batch_end(self, step: int, loss: Any) -> None:
        return None


def dispatch(config: Config, root: Path) -> dict[str, float]:
    """One ``on_batch_end`` to 10 trivial plugins: tbhooks' guarded manager vs bare pluggy, and Hooks.batch_end."""
    import pluggy

    from tbhooks import hookspecs
    from tbhooks.manager import BUILTIN_PLUGINS, PluginHost, make_plugin_manager
    from tbhooks.markers import NAME

    x, y = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
    out, loss = torch.randn(4, 10), torch.tensor(1.0)
    kwargs = dict(run=None, step=1, epoch=0, batch_idx=0, inputs=x, targets=y, outputs=out, loss=loss, captured={})

    pm, sources = make_plugin_manager(plugins=[Trivial(i) for i in range(10)], autoload=False, builtins=False)
    host = PluginHost(pm, sources, strict=False, measure=False, trace=False)
    guarded = host.hook.on_batch_end

    bare = pluggy.PluginManager(NAME)
    bare.add_hookspecs(hookspecs)
    for i in range(10):
        bare.register(Trivial(i), name=f"trivial{i}")
    plain = bare.hook.on_batch_end

    measured_pm, measured_sources = make_plugin_manager(
        plugins=[Trivial(i) for i in range(10)], autoload=False, builtins=False
    )
    measuring = PluginHost(measured_pm, measured_sources, strict=False, measure=True, trace=False).hook.on_batch_end

    net = Net()
    hooks = tbhooks.attach(
        net,
        logdir=tempfile.mkdtemp(prefix="dispatch-", dir=root),
        plugins=[Trivial(i) for i in range(10)],
        disable=list(BUILTIN_PLUGINS),
        autoload=False,
    )
    hooks.fit_start()
    hooks.epoch_start()

    def per_call(fn: Callable[[], Any]) -> float:
        best = min(timeit.repeat(fn, number=config.dispatch_number, repeat=config.dispatch_repeat))
        return best / config.dispatch_number * 1e6

    # Interleaved, like the main table, so a burst of load hits both.
    results: dict[str, list[float]] = {"tbhooks": [], "pluggy": [], "measure": [], "batch_end": []}
    for _ in range(3):
        results["pluggy"].append(per_call(lambda: plain(**kwargs)))
        results["tbhooks"].append(per_call(lambda: guarded(**kwargs)))
        results["measure"].append(per_call(lambda: measuring(**kwargs)))
        results["batch_end"].append(per_call(lambda: hooks.batch_end(x, y, out, loss)))
    hooks.close()
    found = {k: min(v) for k, v in results.items()}
    found["ratio"] = found["tbhooks"] / found["pluggy"]
    return found


def histograms(config: Config, root: Path, device: str = "cpu") -> dict[str, Any]:
    """``device_histogram`` + ``add_histogram_raw`` vs ``SummaryWriter.add_histogram`` on one big tensor.

    Both write the histogram to a writer on a temporary log directory; each
    side is timed best of ``hist_repeat``, the two interleaved.  On CUDA
    (``benchmarks/cuda_check.py``) each timing ends with a synchronisation,
    and the device-side bins alone (``histogram_row``, nothing read back)
    are timed too, as ``row_ms``."""
    from torch.utils.tensorboard import SummaryWriter

    from tbhooks.default_plugins.histograms import Histograms, device_histogram, histogram_row, write_histogram

    bins = inspect.signature(Histograms).parameters["bins"].default  # the plugin's default bucket count
    tensor = torch.randn(config.hist_elements, generator=torch.Generator().manual_seed(1)).to(device)
    writer = SummaryWriter(tempfile.mkdtemp(prefix="hist-", dir=root), flush_secs=120)
    cuda = tensor.device.type == "cuda"

    def ours() -> None:
        write_histogram(writer, "ours", device_histogram(tensor, bins), 0)

    def theirs() -> None:
        writer.add_histogram("theirs", tensor, 0)

    def row() -> None:
        histogram_row(tensor, bins)

    sides = [("theirs", theirs), ("ours", ours)] + ([("row", row)] if cuda else [])
    times: dict[str, list[float]] = {name: [] for name, _ in sides}
    for _ in range(config.hist_repeat):
        for name, fn in sides:
            gc.collect()
            if cuda:
                torch.cuda.synchronize(tensor.device)
            started = time.perf_counter()
            fn()
            if cuda:
                torch.cuda.synchronize(tensor.device)
            times[name].append(time.perf_counter() - started)
    writer.close()
    best = {f"{name}_ms": min(values) * 1e3 for name, values in times.items()}
    return {**best, "speedup": best["theirs_ms"] / best["ours_ms"], "bins": bins}


def inline_figure_ms(w: Workload, calls: int) -> float:
    """What rendering the tutorial's figure on the training thread costs (pyplot + add_figure)."""
    from torch.utils.tensorboard import SummaryWriter

    net = w.model()
    inputs, labels = next(iter(w.train))
    writer = SummaryWriter(str(w.logdir("inline-figure")), flush_secs=120)
    times = []
    for index in range(calls + 1):
        started = time.perf_counter()
        writer.add_figure("predictions vs. actuals", plot_classes_preds(net, inputs, labels), global_step=index)
        times.append(time.perf_counter() - started)
    writer.close()
    return statistics.median(times[1:]) * 1e3


def figure_thread_ms(w: Workload, cycles: int, steps_between: int, *, figures: bool = True) -> dict[str, Any]:
    """What each figure of the figures plugin costs the training thread: the time it spends on them.

    One hand-written run with the figures plugin alone: ``steps_between``
    training steps, then ``cycles`` times an evaluation (the plugin hands
    two figures to the render worker process) and ``steps_between`` more
    steps; then ``close``, which waits for any drawing left.  The training
    thread spends on the figures the time in tbhooks' evaluation calls and
    the whole close; divided by the figures written (read back from the
    event file).

    Reported apart, not added: an estimate of how much the drawing (in
    another process, on another core) slows the training steps meanwhile,
    the sum of the first half of each cycle's step times minus the sum of
    the second half, when the drawing is over.  With ``figures=False`` the
    same run without the plugin gives that estimate's noise floor (ms per
    cycle)."""
    from tbhooks.hooks import Hooks
    from tbhooks.manager import BUILTIN_PLUGINS
    from tbhooks.testing import read_events

    if not ALL.figures:
        return {"skipped": "the figures plugin (plugins/tbhooks-figures) is not installed"}
    from tbhooks_figures.plugin import Figures

    clock = time.perf_counter
    loss_fn = nn.CrossEntropyLoss()
    net = w.model()
    opt = w.optimizer(net)
    logdir = w.logdir("figure")
    hooks = Hooks(
        net,
        logdir=logdir,
        optimizer=opt,
        plugins=[Figures()] if figures else [],
        disable=list(BUILTIN_PLUGINS),
        autoload=False,
        class_names=list(CLASSES),
        measure_overhead=True,
    )

    def evaluate() -> float:
        return timed_evaluation(hooks, net, w.eval, loss_fn)

    batches = iter(w.train)

    def train(steps: int) -> list[float]:
        nonlocal batches
        times = []
        for _ in range(steps):
            batch = next(batches, None)
            if batch is None:
                batches = iter(w.train)
                batch = next(batches)
            inputs, labels = batch
            started = clock()
            hooks.batch_start()
            outputs = net(inputs)
            loss = loss_fn(outputs, labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
            hooks.batch_end(inputs, labels, outputs, loss)
            times.append(clock() - started)
        return times

    hooks.fit_start()
    hooks.epoch_start()  # also resets tbhooks' per-plugin clock
    # As in a run, training comes first (the render worker starts and warms up meanwhile) and the
    # first evaluation's figures are counted with the others.  (Until run 6 a warm-up evaluation right
    # after fit_start came first, not counted: its figures reached the worker while it was still
    # starting, and the next evaluation's hooks took 3 to 6 ms where the others took under 1.)
    train(steps_between)
    in_calls = contention = 0.0
    for _ in range(cycles):
        in_calls += evaluate()
        times = train(steps_between)
        half = len(times) // 2
        contention += sum(times[:half]) - sum(times[half : 2 * half])
    own = hooks._host.overhead.get("figures", 0.0)  # tbhooks' per-plugin clock (private, read only)
    started = clock()
    hooks.close()
    closing = clock() - started
    if not figures:
        return {
            "contention_ms_per_cycle": contention / cycles * 1e3,
            "plain_in_calls_ms": in_calls * 1e3,
            "plain_close_ms": closing * 1e3,
        }
    events = read_events(logdir)
    written = sum(len(v) for t, v in events.images.items() if t.startswith("figures/"))
    if written <= 0:
        return {"skipped": "the figures plugin wrote no figure"}
    per = 1e3 / written
    return {
        "in_calls_ms": in_calls * 1e3,
        "close_ms": closing * 1e3,
        "contention_ms": contention * per,
        "own_ms_per_figure": own * per,
        "figures": written,
    }


def figure_costs(with_plugin: dict[str, Any], without: dict[str, Any]) -> dict[str, Any]:
    """Per figure, what the plugin adds to the training thread: the evaluation calls and the close of the
    run with the figures plugin, less those of the same run without it (tbhooks' own evaluation work:
    metrics, dispatch; closing the writer), divided by the figures written."""
    figures = with_plugin["figures"]
    calls = (with_plugin["in_calls_ms"] - without["plain_in_calls_ms"]) / figures
    close = (with_plugin["close_ms"] - without["plain_close_ms"]) / figures
    return {
        **with_plugin,
        **without,
        "calls_ms_per_figure": calls,
        "close_ms_per_figure": close,
        "ms_per_figure": calls + close,
    }


def training_thread(w: Workload, *, plugins: list[Any], evaluate: bool) -> dict[str, float]:
    """Where tbhooks' time goes on the training thread, by a hand-written loop that times every tbhooks call.

    The loop makes the calls the Trainer makes (``attach``, ``epoch_start``,
    ``batch_start``/``batch_end`` around each step, ``epoch_end``, the
    evaluation calls, ``close``); the model's own work is not counted.
    Returned in seconds: ``run`` (the whole loop, wall clock), ``tbhooks``
    (all of tbhooks' calls), ``setup`` (attach + on_fit_start), ``first``
    (the first step's calls: the graph trace and the input grid), ``steps``
    (every later step's calls, summed), ``median_step``, ``ends`` (epoch
    ends, evaluation calls without the forward passes, close).  Because the
    loop's own work and tbhooks' calls alternate step by step in one run,
    their ratio is far less exposed to load from other processes than the
    main table's comparison of separate runs."""
    from tbhooks.hooks import Hooks

    clock = time.perf_counter
    net = w.model()
    opt = w.optimizer(net)
    loss_fn = nn.CrossEntropyLoss()
    begun = started = clock()
    hooks = Hooks(
        net,
        logdir=w.logdir("thread"),
        optimizer=opt,
        plugins=plugins,
        autoload=False,
        class_names=list(CLASSES),
        epochs=w.config.epochs,
    )
    hooks.fit_start()
    setup = clock() - started
    per_step: list[float] = []
    ends = 0.0
    for _ in range(w.config.epochs):
        started = clock()
        hooks.epoch_start()
        ends += clock() - started
        for inputs, labels in w.train:
            t0 = clock()
            hooks.batch_start()
            t1 = clock()
            outputs = net(inputs)
            loss = loss_fn(outputs, labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
            t2 = clock()
            hooks.batch_end(inputs, labels, outputs, loss)
            per_step.append(t1 - t0 + clock() - t2)
        started = clock()
        hooks.epoch_end()
        ends += clock() - started
        if evaluate:
            ends += timed_evaluation(hooks, net, w.eval, loss_fn)
    started = clock()
    hooks.fit_end()
    finished = clock()
    ends += finished - started
    tbhooks_time = setup + sum(per_step) + ends
    return {
        "run": finished - begun,
        "tbhooks": tbhooks_time,
        "setup": setup,
        "first": per_step[0],
        "steps": sum(per_step[1:]),
        "median_step": statistics.median(per_step[1:]),
        "count": len(per_step) - 1,
        "ends": ends,
    }


# ---------------------------------------------------------------------------
# reporting
# ---------------------------------------------------------------------------


def machine() -> dict[str, str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        cpu = platform.processor() or "unknown"
    info = {
        "CPU": cpu,
        "cores": str(os.cpu_count()),
        "torch threads": str(torch.get_num_threads()),
        "Python": platform.python_version(),
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
    }
    for dist in ("torch", "tensorboard", "pluggy", "tbhooks", "tbhooks-figures", "pytorch-lightning", "pytorch-ignite"):
        try:
            info[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            info[dist] = "not installed"
    return info


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def verdict(value: float, target: float, higher_is_better: bool = True) -> str:
    ok = value >= target if higher_is_better else value <= target
    return "met" if ok else "**missed**"


NOT_RESOLVED = "not resolved (repetitions on both sides)"


def target_cells(ratio: float, target: float | None, low: float, high: float) -> tuple[str, str]:
    """The "target" and "result" cells of a ratio row.  When the repetitions' ratios (``low`` ..
    ``high``) fall on both sides of the target the table cannot tell, and says so rather than
    calling it met or missed on the median."""
    if target is None:
        return "—", "—"
    if low < target <= high:
        return f">= {target:.2f}", NOT_RESOLVED
    return f">= {target:.2f}", verdict(ratio, target)


def rotations(items: list[Any], reps: int, label: str) -> Iterator[Any]:
    """``items`` ``reps`` times over, each repetition starting one item later (interleaved and rotated,
    so that a burst of load from other processes falls on every row alike)."""
    for rep in range(reps):
        shift = rep % len(items)
        print(f"{label} {rep + 1}/{reps} (load average {loadavg()})", flush=True)
        yield from items[shift:] + items[:shift]


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def timed_evaluation(hooks: Any, net: nn.Module, batches: Any, loss_fn: Any) -> float:
    """One evaluation through ``hooks``; returns the seconds spent in tbhooks' calls only."""
    clock = time.perf_counter
    spent = 0.0
    net.eval()
    started = clock()
    hooks.eval_start()
    spent += clock() - started
    with torch.no_grad():
        for inputs, labels in batches:
            outputs = net(inputs)
            loss = loss_fn(outputs, labels)
            started = clock()
            hooks.eval_batch(inputs, labels, outputs, loss)
            spent += clock() - started
    started = clock()
    hooks.eval_end()
    spent += clock() - started
    net.train()
    return spent


def main_table(rows: list[Row], steps: int) -> tuple[list[list[str]], dict[str, float]]:
    bare = next(r for r in rows if r.key == "bare")
    bare_rate = statistics.median(steps / s for s in bare.seconds)
    bare_cpu = statistics.median(bare.cpu)
    out: list[list[str]] = []
    ratios: dict[str, float] = {}
    for row in rows:
        if row.lockstep_only:
            continue
        if row.skipped:
            out.append([row.title, "skipped", "—", "—", "—", "—", "—", "—", row.skipped])
            continue
        rates = [steps / s for s in row.seconds]
        rate = statistics.median(rates)
        ratio = rate / bare_rate
        ratios[row.key] = ratio
        per_rep = [b / s for b, s in zip(bare.seconds, row.seconds, strict=True)]
        by_cpu = bare_cpu / statistics.median(row.cpu)
        target, met = target_cells(ratio, row.target, min(per_rep), max(per_rep))
        cold = f"{row.cold:.2f}" if row.cold is not None else "—"
        out.append(
            [
                row.title,
                f"{rate:.1f}",
                f"{min(rates):.0f}–{max(rates):.0f}",
                f"{ratio:.3f}",
                f"{min(per_rep):.3f}–{max(per_rep):.3f}",
                f"{by_cpu:.3f}",
                cold,
                target,
                met,
            ]
        )
    return out, ratios


# ---------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------


def run_rows(w: Workload, rows: list[Row], warmup: Workload) -> None:
    for row in rows:
        if row.needs:
            try:
                __import__(row.needs)
            except ImportError as exc:
                row.skipped = f"{row.needs} not importable ({exc.name or exc}); pip install -e '.[bench]'"
                print(f"note: skipping {row.title}: {row.skipped}", flush=True)
    active = [r for r in rows if not r.skipped]
    print(f"warm-up: every row once on {warmup.steps} steps (imports, first-call costs; not timed)", flush=True)
    for row in active:
        started = time.perf_counter()
        row.fn(warmup)
        row.cold = time.perf_counter() - started
    MEASURED_LOGDIRS.clear()
    ALL_LOGDIRS.clear()
    timed = [r for r in active if not r.lockstep_only]
    width = max(len(r.title) for r in timed)
    for row in rotations(timed, w.config.reps, "repetition"):
        gc.collect()
        torch.set_num_threads(1)
        started, cpu = time.perf_counter(), time.process_time()
        row.fn(w)
        elapsed = time.perf_counter() - started
        row.cpu.append(time.process_time() - cpu)
        row.seconds.append(elapsed)
        print(f"  {row.title:<{width}}  {w.steps / elapsed:8.1f} steps/s", flush=True)


# ---------------------------------------------------------------------------
# lockstep: each row against a bare loop, step by step, within one run
# ---------------------------------------------------------------------------


class Lockstep:
    """A row's training loader that runs one step of the bare loop before handing over each batch.

    The bare loop trains its own copy of the network on its own iterator over
    the same data; each of its steps is timed with the training thread's CPU
    clock.  The row and the bare loop so alternate step by step in one run,
    and whatever slows the machine down for a while slows both alike: the
    comparison resolves differences of a percent where separate runs on a
    shared machine scatter by ten.  Thread CPU time, not wall time, for the
    bare steps: time a bare step spends waiting (for the GIL held by the
    row's background threads, say) is then charged to the row, whose cost
    is the run's wall time minus the bare steps' CPU time.
    """

    def __init__(self, w: Workload) -> None:
        self.inner = w.train
        self.batch_size = w.train.batch_size  # what a trainer reads off a DataLoader for its hparams
        self.net = w.model()
        self.opt = w.optimizer(self.net)
        self.loss_fn = nn.CrossEntropyLoss()
        self.data = DataLoader(w.train.dataset, batch_size=w.train.batch_size, shuffle=False, num_workers=0)
        self.cpu = 0.0  # the bare steps' training-thread CPU time
        self.wall = 0.0  # their wall time (cpu + waiting)
        self.steps = 0

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self) -> Iterator[Any]:
        clock, thread_clock = time.perf_counter, time.thread_time
        bare = iter(self.data)
        for batch in self.inner:
            started, cpu = clock(), thread_clock()
            inputs, labels = next(bare)
            self.opt.zero_grad()
            self.loss_fn(self.net(inputs), labels).backward()
            self.opt.step()
            self.cpu += thread_clock() - cpu
            self.wall += clock() - started
            self.steps += 1
            yield batch


@dataclass
class LockRow:
    key: str
    title: str
    fn: Callable[[Workload], None]
    target: float | None = None
    reps: int | None = None  # runs of this row (None: one per repetition)
    ratios: list[float] = field(default_factory=list)  # bare steps' CPU time / the row's own time, per run
    waits: list[float] = field(default_factory=list)  # the bare steps' wall - CPU time per step (s), per run
    bare_steps: list[float] = field(default_factory=list)  # the bare steps' mean CPU time (s), per run
    runs: list[tuple[float, float, int]] = field(default_factory=list)  # (bare CPU, row's own time, steps), per run
    corrected: list[float] = field(default_factory=list)  # ratios with the control's excess taken out, per run


PEERS = ("tutorial", "lightning", "ignite")
"""Rows run once in the lockstep table: no target applies to them, one lockstep run already tells them
apart (their runs' spread was under 4 points), and their repetitions took about a minute of the bench."""

DIAGNOSTIC_REPS = 2
"""Lockstep runs of the rows no target applies to that explain the others (the default row's variants with
``measure_overhead`` and ``flush_secs=120``, the rows with plugins taken out): in the first two repetitions
only.  Their third runs took about 45 s, and on a slow machine the bench came within 5 s of its 10 minutes."""


def make_lock_rows(rows: list[Row]) -> list[LockRow]:
    """The lockstep rows: every row of the main table that ran (the bare loop against itself is the control)."""
    return [
        LockRow(
            r.key,
            r.title + (" (control)" if r.key == "bare" else " (1 run)" if r.key in PEERS else ""),
            r.fn,
            r.target,
            reps=1 if r.key in PEERS else DIAGNOSTIC_REPS if r.key in ("measured", "flush120") else None,
        )
        for r in rows
        if not r.skipped
    ]


def run_lockstep(w: Workload, rows: list[LockRow]) -> None:
    """Each row once per repetition with a :class:`Lockstep` loader; repetitions interleaved and rotated."""
    for row in rotations(rows, w.config.lockstep_reps, "lockstep repetition"):
        if row.reps is not None and len(row.runs) >= row.reps:
            continue
        gc.collect()
        torch.set_num_threads(1)
        paired = Lockstep(w)
        started = time.perf_counter()
        row.fn(replace(w, train=paired))  # type: ignore[arg-type]
        elapsed = time.perf_counter() - started
        if paired.steps != w.steps:
            raise RuntimeError(f"lockstep: {row.title} took {paired.steps} batches, expected {w.steps}")
        own = elapsed - paired.cpu
        row.runs.append((paired.cpu, own, paired.steps))
        row.ratios.append(paired.cpu / own)
        row.waits.append((paired.wall - paired.cpu) / paired.steps)
        row.bare_steps.append(paired.cpu / paired.steps)
        print(f"  {row.title:<48} ratio {paired.cpu / own:.3f}", flush=True)


def correct_by_control(rows: list[LockRow]) -> float:
    """Take the method's own cost out of every row's ratios; returns that cost, seconds per step.

    The control (the bare loop against itself) should score 1 and scores
    a little less: the lockstep loader, and the row's own data fetching,
    take the same time per step in every row and are charged to the row.
    That time is the control's own time less its bare steps' CPU time, per
    step (median over the control's runs); it is subtracted from every
    row's own time, so that the control's corrected ratio is about 1 and
    each row's corrected ratio counts what the row adds over a bare loop.
    It is capped at the smallest excess of any row (median over its runs):
    the method's cost is part of every row's, so a control run slowed by
    something else (a garbage collection, another process) cannot take out
    more than a row was charged in all.
    """

    def excess_of(row: LockRow) -> float:
        return statistics.median((own - cpu) / steps for cpu, own, steps in row.runs)

    control = next(row for row in rows if row.key == "bare")
    excess = min(excess_of(control), *(excess_of(row) for row in rows))
    for row in rows:
        row.corrected = [cpu / (own - excess * steps) for cpu, own, steps in row.runs]
    return excess


def lockstep_table(rows: list[LockRow]) -> list[list[str]]:
    out = []
    for row in rows:
        ratio = statistics.median(row.corrected)
        low, high = min(row.corrected), max(row.corrected)
        target, met = target_cells(ratio, row.target, low, high)
        out.append(
            [
                row.title,
                f"{statistics.median(row.ratios):.3f}",
                f"{ratio:.3f}",
                f"{low:.3f}–{high:.3f}",
                f"{statistics.median(row.bare_steps) * 1e3:.2f}",
                f"{statistics.median(row.waits) * 1e6:.1f}",
                target,
                met,
            ]
        )
    return out


LOCK_HEADER = [
    "row (in lockstep with a bare loop)",
    "ratio to bare, as measured (median)",
    "ratio to bare, control taken out (median)",
    "per-run range (control taken out)",
    "bare step, CPU (ms)",
    "bare step waiting (us)",
    "target",
    "result",
]


def without(base: str, removed: tuple[str, ...]) -> Callable[[Workload], None]:
    """A run of the ``base`` row ("default" or "all") with the plugins named ``removed`` taken out.

    Built-in plugins are disabled by name; plugin objects the all row passes
    (histograms, images, figures) are left out of its list, and the built-in
    of the same name disabled too, so that it does not come back at its defaults."""
    from tbhooks.manager import BUILTIN_PLUGINS

    disable = [name for name in removed if name in BUILTIN_PLUGINS]

    def fn(w: Workload) -> None:
        if base == "default":
            _tbhooks_fit(w, "default-less", autoload=False, disable=disable)
        else:
            plugins = [p for p in ALL.make() if getattr(p, "name", None) not in removed]
            _tbhooks_fit(w, "all-less", evaluate=True, autoload=False, plugins=plugins, disable=disable)

    return fn


def attribution_rows() -> list[LockRow]:
    """The default and all rows with one plugin taken out, to run in the main lockstep beside them.

    The plugins are those that A/B runs found to cost the most: the graph in
    the default row, histograms and figures in the all row; and the default
    row with every built-in disabled (the Trainer alone), its floor.  (The
    scalars plugin, and the graph in the all row, were taken out too until
    the graph and the scalars' logging steps got cheaper: their gains were
    then within noise of nothing, and their rows cost 50 s.)
    Each row's key is its base row's key, a dash, and what was taken out."""
    from tbhooks.manager import BUILTIN_PLUGINS

    rows = []
    for base, removals in (
        ("default", [("graph",), tuple(BUILTIN_PLUGINS)]),
        ("all", [("figures",), ("histograms",)]),
    ):
        for removed in removals:
            if removed == ("figures",) and not ALL.figures:
                continue
            if removed == tuple(BUILTIN_PLUGINS):
                title = "tbhooks default without any plugin (the Trainer alone)"
            else:
                title = f"tbhooks {base} without {', '.join(removed)}"
            rows.append(LockRow(f"{base}-{'-'.join(removed)}", title, without(base, removed), reps=DIAGNOSTIC_REPS))
    return rows


def gains_over(row: LockRow, base: LockRow) -> list[float]:
    """How much higher ``row``'s corrected ratio is than ``base``'s, per repetition (runs paired in order)."""
    # A row of fewer repetitions (DIAGNOSTIC_REPS) ran in the first ones: paired with the base row's runs of those.
    return [mine - theirs for mine, theirs in zip(row.corrected, base.corrected[: len(row.corrected)], strict=True)]


def paired_ratio(row: LockRow, base: LockRow) -> float:
    """The median over repetitions of ``row``'s corrected ratio / ``base``'s in the same repetition."""
    count = min(len(row.corrected), len(base.corrected))
    pairs = zip(row.corrected[:count], base.corrected[:count], strict=True)
    return statistics.median(mine / theirs for mine, theirs in pairs)


def attribution_table(lock_rows: list[LockRow], extra: list[LockRow]) -> list[list[str]]:
    """The control, each base row (default, all) and its :func:`attribution_rows`: each row's corrected
    lockstep ratio and, for a row with plugins taken out, how much higher it is than its base row's,
    the share of the run's time those plugins took (each repetition paired with the base row's run of
    the same repetition)."""
    by_key = {row.key: row for row in lock_rows}
    ordered = [by_key["bare"]]
    for base in ("default", "all"):
        ordered += [by_key[base], *(row for row in extra if row.key.split("-", 1)[0] == base)]
    out = []
    for row in ordered:
        ratio = statistics.median(row.corrected)
        gain = "—"
        if "-" in row.key:
            pairs = gains_over(row, by_key[row.key.split("-", 1)[0]])
            gain = f"{statistics.median(pairs) * 100:+.1f} ({min(pairs) * 100:+.1f} to {max(pairs) * 100:+.1f})"
        out.append([row.title, f"{ratio:.3f}", f"{min(row.corrected):.3f}–{max(row.corrected):.3f}", gain])
    return out


def attribution_summary(lock_rows: list[LockRow], extra: list[LockRow]) -> list[str]:
    """One sentence per base row whose target is not met: how far short it is, and what taking each plugin
    out gained (median points, largest first), from the same lockstep runs as the tables."""
    by_key = {row.key: row for row in lock_rows}
    lines = []
    for base in ("default", "all"):
        row = by_key[base]
        ratio = statistics.median(row.corrected)
        if row.target is None or min(row.corrected) >= row.target:
            continue
        gains, floor = [], ""
        for other in extra:
            if other.key.split("-", 1)[0] != base:
                continue
            gain = statistics.median(gains_over(other, row))
            if other.key.count("-") > 1:  # every built-in at once
                floor = f"; every plugin at once (the Trainer alone) {gain * 100:+.1f}"
            else:
                gains.append((gain, other.title.split(" without ", 1)[1]))
        gains.sort(reverse=True)
        taken = "; ".join(f"{what} {gain * 100:+.1f}" for gain, what in gains) + floor
        if ratio < row.target:
            where = f"{(row.target - ratio) * 100:.1f} points short at the median"
        else:  # not resolved: the median is on the target's side, some repetitions are not
            lowest = (row.target - min(row.corrected)) * 100
            where = f"{(ratio - row.target) * 100:.1f} points over at the median, {lowest:.1f} short in its lowest run"
        lines.append(
            f"- {row.title}: {ratio:.3f} against {row.target:.2f} ({where}); taken out one at a time "
            f"(median gain in points): {taken}."
        )
    return lines


ATTRIBUTION_HEADER = [
    "row, plugins taken out (lockstep)",
    "ratio to bare, control taken out (median)",
    "per-run range",
    "gain over its base row, points of ratio (median; range)",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes for the smoke test (numbers meaningless)")
    parser.add_argument("--reps", type=int, help="repetitions of the main table (default 5; quick 2)")
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md", help="where to write the results")
    args = parser.parse_args(argv)

    config = Config.quick_config() if args.quick else Config()
    if args.reps:
        config.reps = args.reps
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=UserWarning, module="torch.utils.tensorboard")
    begun = time.perf_counter()
    info = machine()
    load_start = loadavg()
    print("tbhooks benchmark" + (" (--quick: sizes for the smoke test, numbers meaningless)" if config.quick else ""))
    for key, value in info.items():
        print(f"  {key}: {value}")

    with tempfile.TemporaryDirectory(prefix="tbhooks-bench-") as tmp:
        root = Path(tmp)
        w = make_workload(config, root)
        warmup = make_workload(config, root, images=min(config.images // 2, 160))
        warmup.config = Config(**{**config.__dict__, "figure_every": 40})
        global ALL
        ALL = all_plugins_setup(config)
        for note in ALL.notes:
            print(f"  all row: {note}")
        rows = make_rows()
        run_rows(w, rows, warmup)
        contents = all_row_contents()
        print(f"  the last all run wrote: {contents}")

        lock_rows = make_lock_rows(rows)
        extra = attribution_rows()  # in the same lockstep run: one control, repetitions interleaved with all
        run_lockstep(w, lock_rows + extra)
        collect_overhead()  # what the measure_overhead row's lockstep runs wrote
        lock_excess = correct_by_control(lock_rows + extra)
        lock_body = lockstep_table(lock_rows)
        attribution_body = attribution_table(lock_rows, extra)
        short = attribution_summary(lock_rows, extra)
        lock_ratios = {r.key: statistics.median(r.corrected) for r in lock_rows}
        by_key = {r.key: r for r in lock_rows}
        for mine, theirs in (("default", "flush120"), ("measured", "default")):
            if mine in by_key and theirs in by_key:
                lock_ratios[f"{mine}/{theirs}"] = paired_ratio(by_key[mine], by_key[theirs])
        body, ratios = main_table(rows, w.steps)
        header = [
            "row",
            "steps/s (median)",
            "steps/s range",
            "ratio to bare (medians)",
            "per-rep ratio range",
            "ratio by CPU time",
            "cold run (s)",
            "target",
            "result",
        ]
        print()
        print(table(header, body))
        print()
        print(table(LOCK_HEADER, lock_body))
        print()
        print(table(ATTRIBUTION_HEADER, attribution_body))

        print("\nmicrobenchmarks", flush=True)
        disp = dispatch(config, root)
        print(
            f"  dispatch: tbhooks {disp['tbhooks']:.2f} us, pluggy {disp['pluggy']:.2f} us, "
            f"ratio {disp['ratio']:.2f}; with measure_overhead {disp['measure']:.2f} us; "
            f"Hooks.batch_end {disp['batch_end']:.2f} us",
            flush=True,
        )
        hist = histograms(config, root)
        print(f"  histograms: {hist}", flush=True)
        inline_ms = inline_figure_ms(w, config.figure_calls)
        fig = figure_thread_ms(w, config.figure_cycles, config.figure_steps)
        if "skipped" not in fig:
            fig = figure_costs(fig, figure_thread_ms(w, config.figure_cycles, config.figure_steps, figures=False))
        print(f"  figure: inline {inline_ms:.1f} ms; figures plugin {fig}", flush=True)
        runs: dict[str, list[dict[str, float]]] = {"tbhooks default": [], "tbhooks all": []}
        for _ in range(config.thread_reps):
            runs["tbhooks default"].append(training_thread(w, plugins=[], evaluate=False))
            runs["tbhooks all"].append(training_thread(w, plugins=ALL.make(), evaluate=True))
        # Per quantity, the median over the repetitions.
        thread = {name: {k: statistics.median(r[k] for r in found) for k in found[0]} for name, found in runs.items()}
        for name, found in thread.items():
            print(f"  training thread, {name}: " + ", ".join(f"{k} {v:.4g}" for k, v in found.items()), flush=True)

    elapsed = time.perf_counter() - begun
    report = render(
        config=config,
        info=info,
        body=body,
        header=header,
        lock_body=lock_body,
        attribution_body=attribution_body,
        short=short,
        lock_ratios=lock_ratios,
        lock_excess=lock_excess,
        ratios=ratios,
        rows=rows,
        disp=disp,
        hist=hist,
        inline_ms=inline_ms,
        fig=fig,
        thread=thread,
        contents=contents,
        steps=w.steps,
        elapsed=elapsed,
        load=(load_start, loadavg()),
    )
    args.out.write_text(report)
    print(f"\nwrote {args.out} ({elapsed:.0f} s in all)")
    if not args.quick and args.out == HERE / "RESULTS.md":
        quote_in_readme(report, HERE.parent / "README.md")
    return 0


README_START = "<!-- make bench writes from here -->"
README_END = "<!-- make bench writes up to here -->"


def quote_in_readme(report: str, readme: Path) -> None:
    """Copy the run's two result tables into the README, between its markers, so the figures the
    README quotes are always the latest ones this command measured (never typed in)."""
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        print(f"{readme}: no benchmark markers; not quoted")
        return
    tables = []
    for heading in ("## Overhead", "### The same rows in lockstep", "## Microbenchmarks"):
        section = report.split(heading, 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
        tables.append("\n".join(line for line in section.splitlines() if line.startswith("|")))
    date = next((line.split(": ", 1)[1] for line in report.splitlines() if line.startswith("- date: ")), "?")
    quoted = (
        f"{README_START}\nFrom `make bench` of {date} (the machine and how it was measured: "
        f"[benchmarks/RESULTS.md](benchmarks/RESULTS.md)):\n\n{tables[0]}\n\n"
        "The same rows in lockstep with a bare loop (each row's steps alternate with a bare loop's in one run; "
        f"see RESULTS.md):\n\n{tables[1]}\n\n"
        f"{tables[2]}\n{README_END}"
    )
    start, end = text.index(README_START), text.index(README_END) + len(README_END)
    readme.write_text(text[:start] + quoted + text[end:])
    print(f"quoted the tables in {readme}")


def render(
    *,
    config: Config,
    info: dict[str, str],
    body: list[list[str]],
    header: list[str],
    lock_body: list[list[str]],
    attribution_body: list[list[str]],
    short: list[str],
    lock_ratios: dict[str, float],
    lock_excess: float,
    ratios: dict[str, float],
    rows: list[Row],
    disp: dict[str, float],
    hist: dict[str, Any],
    inline_ms: float,
    fig: dict[str, Any],
    thread: dict[str, dict[str, float]],
    contents: str,
    steps: int,
    elapsed: float,
    load: tuple[str, str],
) -> str:
    out = io.StringIO()

    def say(text: str = "") -> None:
        out.write(text + "\n")

    say("# tbhooks benchmark results")
    say()
    say("Written by `benchmarks/run.py` (`make bench`); do not edit by hand.")
    if config.quick:
        say()
        say("**--quick run: tiny sizes for the smoke test; these numbers mean nothing.**")
    say()
    say("## Machine")
    say()
    for key, value in info.items():
        say(f"- {key}: {value}")
    say(f"- load average (1/5/15 min) at start: {load[0]}; at end: {load[1]}")
    say(f"- total time of this benchmark run: {elapsed:.0f} s")
    say()
    say("## Overhead: steps/s relative to a bare loop")
    say()
    say(
        f"{steps} training steps per row per repetition (batch size 4, {config.images} images, "
        f"{config.epochs} epoch(s)), {config.reps} interleaved repetitions, median steps/s per row; "
        f"ratio = row median / bare-loop median (the targets apply to it); the per-rep range is the spread of the "
        f"per-repetition ratios (row / bare loop of the same repetition); a target is 'not resolved' when the "
        f"repetitions fall on both sides of it (this table then cannot tell; the lockstep table below can). "
        f"Two variants of the default row (with `measure_overhead=True`; with `flush_secs=120`) run in the "
        f"lockstep table only."
    )
    say()
    say(table(header, body))
    say()
    say("Configuration of the all row: " + "; ".join(ALL.notes) + ".")
    say()
    say(f"What the last timed all run wrote (read back with TensorBoard's EventAccumulator): {contents}.")
    say()
    say("### The same rows in lockstep with a bare loop")
    say()
    say(
        "Separate runs on this machine scatter by several percent from one run to the next (the bare loop's "
        "own range above), more than the differences the targets are about. Here each row runs once per "
        f"repetition ({config.lockstep_reps} interleaved repetitions; the peers, to which no target applies, "
        f"in the first only; the rows that explain the others, the default row's variants and the rows with "
        f"plugins taken out, in the first {DIAGNOSTIC_REPS}) with a training loader that, before "
        "handing the row each batch, runs one step of the bare loop on its own copy of the network and its "
        "own iterator over the same data, timed with the training thread's CPU clock. The bare loop and the "
        "row so alternate step by step in one run and share whatever the machine does meanwhile. Ratio = the "
        "bare steps' CPU time / the row's own time (the run's wall time, from creating the logger to closing "
        "it, minus the bare steps' CPU time): time a bare step spends waiting (for the GIL held by the row's "
        "background threads, or the machine) is charged to the row; the 'waiting' column shows how much that "
        "was per bare step. The bare loop against itself is the control: it should score 1 and scores less, "
        "because the lockstep loader and the row's own fetching of its batches take time that is charged to "
        f"the row ({lock_excess * 1e6:.0f} us per step in this run: the control's own time less its bare steps' "
        "CPU time, median over its runs, capped at the smallest such excess of any row). That time is the same "
        "in every row, so it is taken out of every "
        "row's own time; the targets apply to the ratio with the control taken out, and the ratio as measured "
        "is shown next to it."
    )
    say()
    say(table(LOCK_HEADER, lock_body))
    say()
    say("### Where the overhead goes: plugins taken out, in lockstep")
    say()
    say(
        "Why a row misses its target, measured: the default and all rows, each also with one plugin taken "
        "out, in the lockstep run above (the same control; these rows' repetitions interleaved with its "
        "rows'). The gain is how much higher the ratio is without the plugin than with it, per repetition "
        "(each run paired with its base row's run of the same repetition): roughly the share of the run's "
        "time the plugin took, one-time work (the graph trace, the input grid, waiting at close for the last "
        "figures) included. Gains within the rows' per-run ranges of each other cannot be told apart. The "
        "default row without any plugin is the Trainer's own cost; the plugins not taken out one by one "
        "(images, embeddings, PR curves, hparams) were within noise of nothing in earlier A/B runs."
    )
    say()
    say(table(ATTRIBUTION_HEADER, attribution_body))
    say()
    if short:
        say("Targets not met in this run, and what the table above says of them:")
        say()
        for line in short:
            say(line)
        say()
        say(
            "What the plugins do in that time (from profiles, not measured here): the graph plugin traces the "
            "model once per run (recording the operations and building the GraphDef's bytes, no ScriptModule); "
            "the figures plugin's last two figures are drawn side by side by the render worker and its fork "
            "while `close` waits for them, so that nothing logged is lost (most of it laying out the "
            "predictions' new title lines); the histogram plugin copies the tensors "
            "on the training thread (the small ones in one concatenation) and bins them on the background "
            "thread (the small ones together, in one pass of numpy calls) and writes one event per step, built "
            "with numpy; that thread shares the GIL with training for every Python-level call (on this "
            "dispatch-bound workload, background work that holds the GIL costs training most of its own "
            "duration); the scalars plugin's logging steps (every 50 steps) read the losses back (as floats, "
            "on the CPU) and keep the values, whose events are built and handed to the writer at most a second "
            "later, between cold caches; the Trainer alone keeps a reference to each step's loss and counts the step."
        )
        say()

    say("## Microbenchmarks")
    say()
    micro: list[list[str]] = []
    micro.append(
        [
            "dispatch: one `on_batch_end` to 10 trivial plugins, tbhooks guarded manager / bare pluggy",
            f"{disp['tbhooks']:.2f} us / {disp['pluggy']:.2f} us = {disp['ratio']:.2f}x",
            "<= 1.5x",
            verdict(disp["ratio"], 1.5, higher_is_better=False),
        ]
    )
    micro.append(
        [
            "dispatch with `measure_overhead=True` (per-plugin clock on)",
            f"{disp['measure']:.2f} us ({disp['measure'] / disp['pluggy']:.2f}x pluggy)",
            "—",
            "—",
        ]
    )
    micro.append(
        [
            "`Hooks.batch_end` with the same 10 plugins (whole call: output selection, loss sum, dispatch)",
            f"{disp['batch_end']:.2f} us",
            "—",
            "—",
        ]
    )
    micro.append(
        [
            f"histogram of a {config.hist_elements:,}-element float32 CPU tensor: "
            f"`SummaryWriter.add_histogram` / `device_histogram` ({hist['bins']} bins) + `add_histogram_raw`",
            f"{hist['theirs_ms']:.1f} ms / {hist['ours_ms']:.1f} ms = {hist['speedup']:.1f}x",
            ">= 2x",
            verdict(hist["speedup"], 2.0),
        ]
    )
    micro.append(["tutorial figure rendered inline (pyplot + `add_figure`)", f"{inline_ms:.1f} ms", "—", "—"])
    if "skipped" in fig:
        micro.append(["figures plugin, training-thread time per figure", f"skipped: {fig['skipped']}", "< 1 ms", "—"])
    else:
        micro.append(
            [
                f"figures plugin, training-thread time per figure ({fig['figures']} figures, one evaluation every "
                f"{config.figure_steps} steps): in tbhooks' evaluation calls {fig['calls_ms_per_figure']:.2f} ms "
                f"+ in close {fig['close_ms_per_figure']:.2f} ms, each over the same run without the plugin "
                f"(evaluation calls {fig['in_calls_ms']:.1f} ms with it, {fig['plain_in_calls_ms']:.1f} ms "
                f"without; close {fig['close_ms']:.1f} ms with, {fig['plain_close_ms']:.1f} ms without). "
                "Not time the thread spends, so not added: training steps slowed while "
                f"the worker process draws, {fig['contention_ms']:.1f} ms per figure by the half-cycle estimate, "
                f"whose noise floor (the same run without the plugin) is {fig['contention_ms_per_cycle']:.1f} ms "
                "per evaluation cycle",
                f"{fig['ms_per_figure']:.2f} ms",
                "< 1 ms",
                verdict(fig["ms_per_figure"], 1.0, higher_is_better=False),
            ]
        )
        micro.append(
            [
                "figures plugin, of which in its own hooks (`run.submit`, CPU copies; tbhooks' per-plugin clock)",
                f"{fig['own_ms_per_figure']:.2f} ms",
                "—",
                "—",
            ]
        )
    if "default/flush120" in lock_ratios:
        micro.append(
            [
                "flush interval: steps/s with `flush_secs=2` / with `flush_secs=120` (default plugins, lockstep; "
                "median over the repetitions both ran in)",
                f"{lock_ratios['default/flush120']:.3f}",
                "—",
                "—",
            ]
        )
    if "measured/default" in lock_ratios:
        micro.append(
            [
                "`measure_overhead=True`: steps/s with / without (default plugins, lockstep; median over the "
                "repetitions both ran in)",
                f"{lock_ratios['measured/default']:.3f}",
                "—",
                "—",
            ]
        )
    say(table(["measurement", "result", "target", "result vs target"], micro))
    say()
    bare_row = next(r for r in rows if r.key == "bare")
    step_ms = statistics.median(bare_row.seconds) / steps * 1e3
    say("### Where tbhooks' time goes on the training thread")
    say()
    say(
        f"Runs of {steps} steps through a hand-written loop that makes the Trainer's calls and times each "
        f"tbhooks call (`attach` ... `close`); median over {config.thread_reps} run(s) per configuration. "
        "The loop's own work (data, forward, backward, optimizer, evaluation forward passes) is everything "
        "else. Because the two alternate step by step within one run, the in-run ratio is far less exposed "
        "to other processes' load than the main table's comparison of separate runs; it leaves out what "
        "background threads take from the training thread (GIL, cores)."
    )
    say()
    thread_rows = []
    targets = {"tbhooks default": 0.98, "tbhooks all": 0.95}
    for name, t in thread.items():
        model_s = t["run"] - t["tbhooks"]
        model_step_ms = model_s / steps * 1e3
        mean_us = t["steps"] / t["count"] * 1e6
        thread_rows.append(
            [
                name,
                f"{t['setup'] * 1e3:.1f}",
                f"{t['first'] * 1e3:.1f}",
                f"{t['median_step'] * 1e6:.0f}",
                f"{mean_us:.0f} ({mean_us / 1e3 / model_step_ms:.2%})",
                f"{t['ends'] * 1e3:.1f}",
                f"{t['tbhooks'] * 1e3:.0f} of {t['run'] * 1e3:.0f}",
                f"{model_s / t['run']:.3f}",
                f">= {targets[name]:.2f}",
                verdict(model_s / t["run"], targets[name]),
                f"{model_step_ms / (model_step_ms + mean_us / 1e3):.3f}",
            ]
        )
    say(
        table(
            [
                "configuration",
                "set-up (ms)",
                "first step (ms)",
                "later steps, median (us)",
                "later steps, mean (us; % of the loop's own step)",
                "epoch ends, evaluations, close (ms)",
                "tbhooks / whole run (ms)",
                "in-run ratio (whole run)",
                "target",
                "result",
                "in-run ratio (later steps only)",
            ],
            thread_rows,
        )
    )
    say()
    say(
        "In-run ratio (whole run) = the loop's own time / the whole run's time: the steps/s ratio to a bare "
        "loop of this run length, one-time costs included. The last column counts only the recurring "
        "per-step cost (the loop's own mean step / that + tbhooks' mean later-step cost): what a run long "
        "enough to amortise the one-time costs (the first step's graph trace and input grid, set-up, close) "
        "approaches."
    )
    say()
    if OVERHEAD_SEEN:
        say("Per-plugin cost measured by tbhooks itself (`measure_overhead=True`, `tbhooks/overhead_ms/<plugin>`),")
        say(
            "median over that row's lockstep runs, in ms per training step (all of a plugin's hook calls in the "
            "epoch / steps):"
        )
        say()
        say(
            table(
                ["plugin", "ms/step", "share of a bare step"],
                [
                    [name, f"{statistics.median(v):.4f}", f"{statistics.median(v) / step_ms:.2%}"]
                    for name, v in sorted(OVERHEAD_SEEN.items(), key=lambda kv: -statistics.median(kv[1]))
                ],
            )
        )
        say()

    say("## How measured")
    say()
    notes = [
        "Workload: the PyTorch TensorBoard tutorial's network, SGD(lr=0.001, momentum=0.9), cross-entropy; "
        "synthetic data (random 28x28 images, 10 classes) pre-built in a TensorDataset, DataLoader with "
        "batch size 4, no workers, no shuffling; every row starts from the same initial weights; "
        "`torch.set_num_threads(1)` for everything, microbenchmarks included.",
        "Each row is timed from creating its logger (Trainer, SummaryWriter, Lightning Trainer, Ignite engine) "
        "to its logs being closed, so one-time costs (writer start, graph tracing, Lightning's set-up, waiting "
        "for background work at close) count. Before the timing every row runs once on a few steps, untimed "
        "(imports, first-call costs); that first run's wall time is the 'cold run' column.",
        "Rows are interleaved (repetition 1 runs every row, then repetition 2, ...; the order rotates). "
        "'ratio to bare' is the ratio of the median steps/s; the range is that of the per-repetition ratios "
        "(row vs the bare loop of the same repetition); 'ratio by CPU time' compares the median process CPU "
        "time (every thread) instead of wall time: less sensitive to other processes, but it counts "
        "background threads and not waiting.",
        "tbhooks default (and its measure_overhead and flush_secs=120 variants): `tbhooks.Trainer` with the "
        "built-in plugins at their defaults, training only (no evaluation loader), `autoload=False` (entry "
        "points, hence the figures plugin, not loaded).",
        f"tbhooks all: the plugin objects listed above, `autoload=False`, and an evaluation loader of "
        f"{config.eval_images} images (one batch) evaluated after every epoch ({len_train(config)} steps), which "
        "is when the figures plugin draws; the evaluation's forward pass counts against tbhooks (no other row "
        "evaluates).",
        "Tutorial row: `loss.item()` every step, `add_scalar` and the tutorial's `plot_classes_preds` pyplot "
        f"figure (figsize 12x48 inches) with `add_figure` every {config.figure_every} steps on the training "
        "thread; SummaryWriter defaults (flush_secs=120).",
        "Lightning row: LightningModule calling `self.log('train_loss', loss)`, TensorBoardLogger, default "
        "`log_every_n_steps` (50), progress bar, checkpointing and model summary off. Ignite row: "
        "`create_supervised_trainer` (its default output transform reads `loss.item()` every step) and "
        "TensorboardLogger's OutputHandler every 50 iterations.",
        "Dispatch: `timeit`, best of several repeats, interleaved; the tbhooks manager is the one "
        "`tbhooks.manager.PluginHost` builds (fault isolation on, tracing off); the bare manager is "
        "`pluggy.PluginManager` with the same hook spec and 10 equal plugins.",
        "Histograms: best of the repeats, interleaved; `add_histogram` (numpy on the CPU, default "
        "'tensorflow' bins) vs `device_histogram` (torch) + `add_histogram_raw`, both to one writer on a "
        "temporary log directory.",
        f"Figure time: one hand-written run with the figures plugin alone, {config.figure_steps} training steps "
        f"(the render worker starts and warms up meanwhile, as in a run), then {config.figure_cycles} cycles of an "
        f"evaluation followed by {config.figure_steps} training steps, then close; and the same run without "
        "the plugin. Every figure is counted, the first evaluation's included. The training thread's time per "
        "figure is what the plugin adds to tbhooks' evaluation calls "
        "and to the close (which waits for drawing left): the run with the plugin less the run without it, "
        "divided by the figures written. The figures are drawn in the render worker process, which holds no lock the "
        "training thread needs; the slowdown of the training steps while it draws (another process on the "
        "other core: caches, memory) is estimated apart as the extra time of the first half of each cycle's "
        "training steps over the second half, next to the same estimate without the plugin (its noise floor).",
        "The machine may be shared (see the load averages above): differences within the per-repetition "
        "range are noise.",
    ]
    for note in notes:
        say(f"- {note}")
    return out.getvalue()


def len_train(config: Config) -> int:
    return config.images // 4


if __name__ == "__main__":
    sys.exit(main())
