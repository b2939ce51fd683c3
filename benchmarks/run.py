#!/usr/bin/env python
"""tbhooks' benchmark (``make bench``): what logging costs next to a bare loop, the tutorial's code and the peers.

Prints every table as it goes, writes ``benchmarks/RESULTS.md`` (``--out``: elsewhere) and quotes its tables in
README.md; ``--quick`` is a tiny configuration for the smoke test (numbers meaningless).  Measured in lockstep:
each row trains through a :class:`Lockstep` loader that runs one step of a bare loop on its own copy of the
network before handing over each batch, so both share whatever the machine does meanwhile; a row's ratio is
the bare steps' time over the row's own time (its wall time, model creation to closed logs, less the bare
steps'), and the control (the bare loop against itself) measures the method's own cost, taken out of every row.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import logging
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import tbhooks

HERE = Path(__file__).resolve().parent
CLASSES = ("T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Boot")
CONTROL = "bare loop"
DEFAULT_SCHEDULE = (50, 1000)  # tbhooks' defaults: scalars every 50 steps, histograms every 1000


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
    interval: int  # the schedule's "every 1000 steps": histograms, evaluations, the tutorial's figure
    scalars: int  # the schedule's "every 50 steps": scalars
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


def fit_tbhooks(w: Workload, row: str, plugins: list[Any], evaluate: bool) -> None:
    from tbhooks.default_plugins.scalars import Scalars

    if w.scaled:
        plugins = [Scalars(every_n_steps=w.sizes.scalars), *plugins]
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
    from tbhooks.default_plugins.histograms import Histograms

    fit_tbhooks(w, "default", [Histograms(every_n_steps=w.sizes.interval)] if w.scaled else [], evaluate=False)


def tbhooks_every(w: Workload) -> None:
    """The Trainer with every plugin on: histograms of weights, grads and every leaf module's activations every
    interval; an evaluation on 64 images every interval (embeddings, PR curves, the figures plugin's two
    figures; its forward passes count against the row); the rest at their defaults; entry points loaded."""
    from tbhooks.default_plugins.histograms import Histograms

    fit_tbhooks(w, "every", [Histograms(every_n_steps=w.sizes.interval, activations="all")], evaluate=True)


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


def lightning(w: Workload) -> None:
    """A LightningModule calling ``self.log`` on its loss, TensorBoardLogger, ``log_every_n_steps`` = the scalars
    interval; no checkpointing, progress bar or model summary."""
    import pytorch_lightning as pl
    from pytorch_lightning.loggers import TensorBoardLogger

    for name in ("pytorch_lightning", "lightning_fabric"):  # their info lines (levels set at import)
        logging.getLogger(name).setLevel(logging.ERROR)

    class LitNet(pl.LightningModule):
        def __init__(self, net: nn.Module) -> None:
            super().__init__()
            self.net, self.loss_fn = net, nn.CrossEntropyLoss()

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            loss = self.loss_fn(self.net(batch[0]), batch[1])
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return Workload.optimizer(self)

    trainer = pl.Trainer(
        max_epochs=w.epochs, logger=TensorBoardLogger(save_dir=str(w.logdir("lightning"))),
        log_every_n_steps=w.sizes.scalars, enable_progress_bar=False, enable_checkpointing=False,
        enable_model_summary=False, accelerator="cpu", devices=1, num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(LitNet(w.model()), train_dataloaders=w.train)


def ignite(w: Workload) -> None:
    """``create_supervised_trainer`` with TensorboardLogger: OutputHandler (the loss) every scalars interval,
    weights and grads histograms every interval."""
    from ignite.engine import Events, create_supervised_trainer
    from ignite.handlers.tensorboard_logger import GradsHistHandler, TensorboardLogger, WeightsHistHandler

    logging.getLogger("ignite").setLevel(logging.ERROR)
    net = w.model()
    trainer = create_supervised_trainer(net, w.optimizer(net), nn.CrossEntropyLoss())
    logger = TensorboardLogger(log_dir=str(w.logdir("ignite")))
    every = Events.ITERATION_COMPLETED(every=w.sizes.scalars)
    logger.attach_output_handler(trainer, event_name=every, tag="training", output_transform=lambda x: {"loss": x})
    for handler in (WeightsHistHandler(net), GradsHistHandler(net)):
        logger.attach(trainer, handler, Events.ITERATION_COMPLETED(every=w.sizes.interval))
    trainer.run(w.train, max_epochs=w.epochs)
    logger.close()


@dataclass(frozen=True)
class Row:
    """A line of each workload's table.  ``fn`` trains the workload (rows with the same function share its
    runs); the ratio is to the row named ``base``; ``targets`` maps a workload to the lowest ratio that meets
    the row's target there; ``needs``: a module that must be installed, else the row is skipped."""

    name: str
    fn: Callable[[Workload], None]
    targets: Mapping[str, float] = field(default_factory=dict)
    base: str = CONTROL
    needs: str | None = None


ROWS = [
    Row(CONTROL, bare_loop),
    Row("tbhooks default", tbhooks_default, {"W1": 0.96, "W2": 0.99}),
    Row("tbhooks default, relative to plain SummaryWriter", tbhooks_default, {"W1": 0.99}, "plain SummaryWriter"),
    Row("tbhooks, every plugin", tbhooks_every, {"W1": 0.94, "W2": 0.98}),
    Row("plain SummaryWriter", plain_writer),
    Row("the tutorial's code", tutorial),
    Row("Lightning + TensorBoardLogger", lightning, needs="pytorch_lightning"),
    Row("Ignite + TensorboardLogger", ignite, needs="ignite"),
]


class Lockstep:
    """A row's training loader that runs one step of a bare loop before handing over each batch.

    A bare step's time is the thread's CPU time plus its run delay (runnable, waiting for a core: Linux's
    schedstat; without it CPU time alone): a core taken by another process stretches bare and row steps alike,
    while time the thread sleeps (for the GIL held by a row's background thread, say) is charged to the row.
    The steady state is the stretch from the bare step before batch ``skip`` to the row's last step: what set-up,
    the first steps (the graph's trace, say) and the close cost is reported apart, as the run's one-time cost."""

    def __init__(self, w: Workload) -> None:
        self.inner, self.batch_size = w.train, w.train.batch_size  # a trainer may read batch_size
        self.data = DataLoader(w.train.dataset, batch_size=w.train.batch_size)
        self.net, self.loss_fn = w.model(), nn.CrossEntropyLoss()
        self.opt = w.optimizer(self.net)
        self.skip, self.steps = w.sizes.skip, 0
        self.bare = self.bare_window = 0.0  # the bare steps' time: in all, and in the steady state
        self.start = self.end = 0.0  # the steady state's bounds (perf_counter)

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self) -> Iterator[Any]:
        bare, cpu, fd, clock = iter(self.data), time.thread_time, open_schedstat(), time.perf_counter
        try:
            for batch in self.inner:
                inputs, labels = next(bare)
                if self.steps == self.skip:
                    self.start = clock()
                started, waited = cpu(), run_delay(fd)
                self.opt.zero_grad()
                self.loss_fn(self.net(inputs), labels).backward()
                self.opt.step()
                seconds = cpu() - started + run_delay(fd) - waited
                self.bare += seconds
                self.bare_window += seconds if self.steps >= self.skip else 0.0
                self.steps += 1
                yield batch
                self.end = clock()
        finally:
            if fd >= 0:
                os.close(fd)


def open_schedstat() -> int:
    """A descriptor of this thread's ``/proc`` schedstat, or -1 where there is none."""
    try:
        return os.open(f"/proc/self/task/{threading.get_native_id()}/schedstat", os.O_RDONLY)
    except OSError:
        return -1


def run_delay(fd: int) -> float:
    """Seconds the thread has waited, runnable, for a core (its schedstat's second field; 0 without one)."""
    return int(os.pread(fd, 64, 0).split()[1]) / 1e9 if fd >= 0 else 0.0


Runs = dict[str, list[tuple[float, float, float]]]  # per run (named by its first row): bare, own, one-time seconds


def measure(w: Workload, rows: list[Row], reps: int, quiet: bool = False) -> Runs:
    """Each distinct row function once per repetition through a Lockstep loader, interleaved and rotated."""
    names: dict[Callable[[Workload], None], str] = {}
    for row in rows:
        names.setdefault(row.fn, row.name)
    order, runs = list(names.items()), {name: [] for name in names.values()}
    for rep in range(reps):
        if not quiet:
            print(f"{w.name} repetition {rep + 1}/{reps} (load average {loadavg()})", flush=True)
        for fn, name in order[rep % len(order) :] + order[: rep % len(order)]:
            gc.collect()
            torch.set_num_threads(1)
            pace = Lockstep(w)
            started = time.perf_counter()
            fn(replace(w, train=pace))
            wall = time.perf_counter() - started
            if pace.steps != w.sizes.steps:
                raise RuntimeError(f"{name} took {pace.steps} batches on {w.name}, expected {w.sizes.steps}")
            window = pace.end - pace.start
            own, once = window - pace.bare_window, wall - window - (pace.bare - pace.bare_window)
            runs[name].append((pace.bare_window, own, once))
            if not quiet:
                ratio, ms = pace.bare_window / own, pace.bare_window / (pace.steps - pace.skip) * 1e3
                print(f"  {name:<32} ratio {ratio:.3f}, bare step {ms:.2f} ms, one-time {once:.2f} s", flush=True)
    return runs


def method_cost(runs: Runs, steps: int) -> float:
    """The method's own cost in seconds per step: the control's own time less its bare steps', per step (median
    over its runs), capped at the smallest such excess of any run (the cost is part of every row's, so a
    control slowed by something else cannot take out more than a row was charged)."""
    return min(statistics.median((own - bare) / steps for bare, own, _ in found) for found in runs.values())


def ratios(w: Workload, rows: list[Row], runs: Runs) -> dict[str, tuple[list[float], list[float]]]:
    """Per row, its ratio to its base in each repetition: (as measured, control taken out)."""
    steps = w.sizes.steps - w.sizes.skip
    excess = method_cost(runs, steps)
    run_of = {row.name: next(r.name for r in rows if r.fn is row.fn) for row in rows}

    def to_bare(name: str, cost: float) -> list[float]:
        return [bare / (own - cost * steps) for bare, own, _ in runs[run_of[name]]]

    found = {}
    for row in rows:
        raw, corrected = to_bare(row.name, 0.0), to_bare(row.name, excess)
        if row.base != CONTROL:  # over the base row's ratio in the same repetition
            raw = [a / b for a, b in zip(raw, to_bare(row.base, 0.0), strict=True)]
            corrected = [a / b for a, b in zip(corrected, to_bare(row.base, excess), strict=True)]
        found[row.name] = (raw, corrected)
    return found


def verdict(values: list[float], target: float | None) -> str:
    """met when every repetition is at or above the target, missed when none is, else not resolved."""
    if target is None:
        return "—"
    if min(values) >= target:
        return "met"
    return "**missed**" if max(values) < target else "not resolved (repetitions on both sides)"


HEADER = (
    "row|relative to|ratio as measured (median)|control taken out (median)|per-repetition range|one-time (s)|"
    "target|verdict"
)
RUNS_HEADER = "run|repetition|steady steps|bare (s)|own (s)|one-time (s)"


def table(header: str, rows: list[list[str]]) -> str:
    cells = header.split("|")
    lines = ["| " + " | ".join(cells) + " |", "|" + "|".join("---" for _ in cells) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def workload_section(w: Workload, rows: list[Row], runs: Runs, skipped: Mapping[str, str]) -> str:
    """A workload's heading, sizes, main table, the method's cost and every run's seconds."""
    found, body = ratios(w, [r for r in rows if r.name not in skipped], runs), []
    for row in rows:
        target = row.targets.get(w.name)
        if row.name in skipped:
            body.append([row.name, row.base, "skipped", "—", "—", "—", "—", skipped[row.name]])
            continue
        raw, cor = found[row.name]
        median, spread = f"{statistics.median(cor):.3f}", f"{min(cor):.3f}–{max(cor):.3f}"
        goal = "—" if target is None else f">= {target:.2f}"
        run = next(r.name for r in rows if r.fn is row.fn)
        once = f"{statistics.median(o for _, _, o in runs[run]):.2f}" if row.base == CONTROL else "—"
        body.append(
            [row.name, row.base, f"{statistics.median(raw):.3f}", median, spread, once, goal, verdict(cor, target)]
        )
    s = w.sizes
    steady = s.steps - s.skip
    bare_ms = statistics.median(b for b, _, _ in runs[CONTROL]) / steady * 1e3
    cost = method_cost(runs, steady) * 1e6
    each = [
        [n, str(i + 1), str(steady), f"{b:.6f}", f"{o:.6f}", f"{t:.6f}"]
        for n, v in runs.items()
        for i, (b, o, t) in enumerate(v)
    ]
    return (
        f"## {w.name}: {w.title}\n\n{s.steps} steps per run (the steady state: steps {s.skip + 1} to {s.steps}), "
        f"{s.reps} repetitions, bare step {bare_ms:.2f} ms (median over the control's runs).\n\n"
        f"{table(HEADER, body)}\n\nThe method's own cost, taken out: "
        f"{cost:.1f} us per step. One-time: set-up, the steps before the steady state and the close, less their "
        f"bare steps.\n\nEvery run ({w.name}; seconds; bare: the paired bare steps' time in the steady state; own: "
        f"the steady state's wall time less that):\n\n{table(RUNS_HEADER, each)}\n"
    )


def machine() -> dict[str, str]:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    names = [line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")]
    cpu = names[0] if names else platform.processor() or "unknown"
    info = {"CPU": cpu, "cores": str(os.cpu_count()), "Python": platform.python_version()}
    info["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    for dist in ("torch", "torchvision", "tensorboard", "pluggy", "matplotlib", "tbhooks", "tbhooks-figures",
                 "tbhooks-example", "pytorch-lightning", "pytorch-ignite"):  # fmt: skip
        try:
            info[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            info[dist] = "not installed"
    return info


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


METHOD = """\
Lockstep: each row trains through a loader that, before handing over each batch, runs one step of a bare
loop on its own copy of the network and data, so the row and a bare loop alternate step by step in one
process and load from other processes falls on both. A bare step's time is the thread's CPU time plus its
run delay (runnable, waiting for a core: `/proc/<pid>/task/<tid>/schedstat`, {delay}); time the thread
sleeps (for the interpreter lock held by a row's background thread, say) is charged to the row. The ratio is
the steady state's: from the bare step before batch `skip + 1` to the row's last step (evaluations, logging
steps and background work in between included), bare steps' time / the row's own time (that stretch's wall
time less its bare steps'). What set-up, the first steps (the graph's trace) and the close cost, less their
bare steps, is the row's one-time cost, in seconds, beside it. The control (the bare loop against itself)
measures the method's own cost per step (median over its runs, capped at the smallest excess of any run),
which is taken out of every row's own time. A row relative to another row: its ratio over that row's,
repetition by repetition. Rows run once per repetition, interleaved, the order rotating, after a warm-up run
each. Verdict: met when every repetition is at or above the target, missed when none is, else not resolved.
'Within 1 point of plain SummaryWriter' is checked as at most 1% slower than it. One thread; random data, an
epoch being one interval (the Trainer evaluates after each); SGD (lr 0.001, momentum 0.9), cross-entropy;
every row on its workload's schedule."""


def render(info: dict[str, str], sections: list[str], workloads: list[Workload], extra: dict[str, Any]) -> str:
    """RESULTS.md: machine, method, sizes, rows, then each workload's section."""
    out = ["# tbhooks benchmark results\n", "Written by `benchmarks/run.py` (`make bench`); do not edit by hand.\n"]
    if extra["quick"]:
        out.append("**--quick run: tiny sizes for the smoke test; these numbers mean nothing.**\n")
    out.append("## Machine\n\n" + "".join(f"- {k}: {v}\n" for k, v in info.items()))
    out[-1] += f"- load average (1/5/15 min) at start: {extra['load'][0]}; at end: {extra['load'][1]}\n"
    out[-1] += f"- total time of this run: {extra['elapsed']:.0f} s\n"
    out.append("## Method\n\n" + METHOD.format(delay="read here" if extra["schedstat"] else "NOT here") + "\n")
    sizes = []
    for w in workloads:
        s, scale = w.sizes, DEFAULT_SCHEDULE[1] // w.sizes.interval
        schedule = "tbhooks' default" if not w.scaled else f"tbhooks' default, intervals divided by {scale}"
        sizes.append([w.name, w.title, str(s.steps), str(s.reps), str(s.scalars), str(s.interval), schedule])
    head = "workload|network and data|steps per run|repetitions|scalars every|histograms, evaluations every|schedule"
    out.append("## Sizes\n\n" + table(head, sizes) + "\n")
    described = {row.fn: row.name for row in reversed(ROWS)}  # each function once, under its first row's name
    lines = [f"- {name}: {' '.join((fn.__doc__ or '').split())}".replace("``", "`") for fn, name in described.items()]
    lines += [f"- plugins the tbhooks {row} row registered: {names}" for row, names in sorted(PLUGINS.items())]
    out.append("## Rows\n\n" + "\n".join(lines) + "\n")
    return "\n".join(out + sections) + "\n"


README_START = "<!-- make bench writes from here -->"
README_END = "<!-- make bench writes up to here -->"


def quote_in_readme(report: str, readme: Path) -> None:
    """Copy each workload's table into the README between its markers, so the figures the README quotes are
    always the latest this command measured (never typed in)."""
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        print(f"{readme}: no benchmark markers; not quoted")
        return
    date = next((line.split(": ", 1)[1] for line in report.splitlines() if line.startswith("- date: ")), "?")
    parts = [f"{README_START}\nFrom `make bench` of {date} (sizes, method, machine: [benchmarks/RESULTS.md]"]
    parts[0] += "(benchmarks/RESULTS.md)):"
    for section in report.split("\n## ")[1:]:
        if section.startswith("W"):
            heading, sizes, main = section.split("\n\n")[:3]
            parts.append(f"**{heading}** ({sizes.split(',')[0]}; {sizes.split(', ')[1]})\n\n{main}")
    start, end = text.index(README_START), text.index(README_END) + len(README_END)
    readme.write_text(text[:start] + "\n\n".join(parts) + f"\n{README_END}" + text[end:])
    print(f"quoted the tables in {readme}")


FULL = {
    "W1": Sizes(steps=2000, interval=1000, scalars=50, reps=5, skip=20),
    "W2": Sizes(200, 100, 5, 3, channels=12, skip=5),
}
QUICK = {"W1": Sizes(steps=20, interval=10, scalars=5, reps=2, skip=2), "W2": Sizes(4, 2, 1, 2, channels=4, skip=1)}


def skipped_rows(rows: list[Row]) -> dict[str, str]:
    """The rows that cannot run here (a peer not installed, or a base row skipped), with why."""
    skipped = {r.name: f"{r.needs} not installed (pip install -e '.[bench]')" for r in rows if r.needs and not
               importlib.util.find_spec(r.needs)}  # fmt: skip
    skipped.update({r.name: f"{r.base} is skipped" for r in rows if r.base in skipped})
    return skipped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes for the smoke test (numbers meaningless)")
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md", help="where to write the results")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")  # the peers' advice and deprecations are not what is measured, but
    warnings.simplefilter("default", tbhooks.TbhooksWarning)  # a faulty plugin would change what a row measures
    begun, info, load = time.perf_counter(), machine(), loadavg()
    print("tbhooks benchmark" + (" (--quick: numbers meaningless)" if args.quick else ""), flush=True)
    print("\n".join(f"  {key}: {value}" for key, value in info.items()))
    skipped = skipped_rows(ROWS)
    for name, why in skipped.items():
        print(f"note: skipping {name}: {why}")
    if not importlib.util.find_spec("tbhooks_figures"):
        print("note: tbhooks-figures is not installed: the every-plugin row draws no figure")
    rows, sections, workloads = [row for row in ROWS if row.name not in skipped], [], []
    with tempfile.TemporaryDirectory(prefix="tbhooks-bench-") as tmp:
        for name, sizes in (QUICK if args.quick else FULL).items():
            w = make_workload(name, sizes, Path(tmp))
            print(f"\n{name}: {w.title}" + ("" if args.quick else "; warm-up: every row once"), flush=True)
            if not args.quick:  # the quick run's sizes are a warm-up's
                measure(make_workload(name, sizes.warm(), Path(tmp)), rows, 1, quiet=True)
            sections.append(workload_section(w, ROWS, measure(w, rows, sizes.reps), skipped))
            workloads.append(w)
            print("\n" + sections[-1].split("\n\nEvery run")[0], flush=True)
    schedstat = Path(f"/proc/self/task/{threading.get_native_id()}/schedstat").exists()
    extra = {"quick": args.quick, "load": (load, loadavg()), "elapsed": time.perf_counter() - begun}
    report = render(info, sections, workloads, {**extra, "schedstat": schedstat})
    args.out.write_text(report)
    print(f"\nwrote {args.out} ({extra['elapsed']:.0f} s in all)")
    if not args.quick and args.out.resolve() == (HERE / "RESULTS.md").resolve():
        quote_in_readme(report, HERE.parent / "README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
