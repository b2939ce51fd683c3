"""The demo behind ``tbhooks demo`` (and ``make demo``).

It trains the network of the PyTorch TensorBoard tutorial (two convolutions,
three linear layers, 28x28 grayscale inputs, 10 classes) with every built-in
plugin and the ``figures`` plugin (loaded through its entry point, like any
third-party plugin), then reads the run back and prints what each TensorBoard
dashboard will show and the command that opens it.

The data is scikit-learn's bundled handwritten digits (no download; 1797
images of 8x8 resized to 28x28) or, with ``--dataset fashion-mnist``,
torchvision's FashionMNIST from ``--data-dir``.  Every run goes to a fresh
sub-directory of ``--logdir`` (``<dataset>-<loop>-<YYYYmmdd-HHMMSS>``), so a
second demo never mixes its events with the first and TensorBoard shows the
runs side by side.

The pieces (:class:`Net`, :func:`load_digits`, :func:`load_fashion_mnist`,
:func:`make_loaders`, :func:`demo_plugins`, :func:`fit_trainer`,
:func:`fit_custom_loop`, :func:`dashboard_summary`) are importable: the
scripts in ``demo/`` of the repository use them.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F  # noqa: N812 (the conventional name)
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tbhooks.markers import hookimpl

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from tbhooks.run import Run

DEFAULT_LOGDIR = "runs/demo"
DEFAULT_EPOCHS = {"digits": 8, "fashion-mnist": 2}
"""Epochs when ``--epochs`` is not given: digits reaches over 90% test accuracy
in 3 epochs and about 97% in 8; FashionMNIST has 60000 training images."""
DEFAULT_BATCH_SIZE = 32
LEARNING_RATE = 1e-3
TEST_FRACTION = 0.2
"""The share of the digits held out for testing (fixed by ``--seed``)."""
MEAN, STD = 0.5, 0.5
"""Inputs are scaled to [0, 1], then normalised as ``(x - MEAN) / STD``, as in the tutorial."""
DIGIT_CLASSES = [str(digit) for digit in range(10)]
FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
FASHION_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
"""The uncompressed IDX files torchvision's FashionMNIST reads from ``<root>/FashionMNIST/raw``."""
FIGURES_PLUGIN = "figures"
"""The entry-point name of the ``tbhooks-figures`` distribution."""


class DemoError(Exception):
    """A problem the user can fix (missing data, a missing package, a bad option).

    ``tbhooks demo`` prints its message as one line on stderr and exits with
    status 2; it never shows a traceback for these.
    """


# ---------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------


class Net(nn.Module):
    """The PyTorch TensorBoard tutorial's network, for 1x28x28 inputs and 10 classes.

    ``conv(1, 6, 5) -> pool -> conv(6, 16, 5) -> pool -> fc 256 -> 120 -> 84 -> 10``,
    ReLU after every layer but the last; it returns the class scores (logits).
    """

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 4 * 4, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


# ---------------------------------------------------------------------------
# the data
# ---------------------------------------------------------------------------


@dataclass
class DemoData:
    """A train and a test split of normalised ``[N, 1, 28, 28]`` images with labels."""

    name: str
    train: TensorDataset
    test: TensorDataset
    class_names: list[str]

    def limited(self, limit: int | None) -> DemoData:
        """The first ``limit`` samples of each split (all of them for ``None``), for quick checks."""
        if limit is None:
            return self

        def head(dataset: TensorDataset) -> TensorDataset:
            return TensorDataset(*(tensor[:limit] for tensor in dataset.tensors))

        return DemoData(self.name, head(self.train), head(self.test), self.class_names)


def normalise(images: torch.Tensor) -> torch.Tensor:
    """Images in ``[0, 1]`` to the network's input scale, ``(x - MEAN) / STD``."""
    return (images - MEAN) / STD


def load_digits(seed: int = 0, test_fraction: float = TEST_FRACTION) -> DemoData:
    """scikit-learn's 1797 handwritten digits, resized from 8x8 to 28x28 (bilinear).

    The pixel values 0..16 are scaled to ``[0, 1]`` and normalised; a random
    ``test_fraction`` of the images, drawn with ``seed``, is held out.
    Raises :class:`DemoError` when scikit-learn is missing.
    """
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError:
        raise DemoError(
            "the digits data set needs scikit-learn: pip install 'tbhooks[demo]' (or use --dataset fashion-mnist)"
        ) from None
    bunch = sklearn_digits()
    small = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = normalise(F.interpolate(small, size=(28, 28), mode="bilinear", align_corners=False))
    labels = torch.tensor(bunch.target, dtype=torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    held_out = round(len(labels) * test_fraction)
    test, train = order[:held_out], order[held_out:]
    return DemoData(
        "digits",
        TensorDataset(images[train], labels[train]),
        TensorDataset(images[test], labels[test]),
        list(DIGIT_CLASSES),
    )


def load_fashion_mnist(data_dir: str | Path, download: bool = False) -> DemoData:
    """torchvision's FashionMNIST (60000 training and 10000 test images) from ``data_dir``.

    torchvision reads ``<data_dir>/FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte``;
    ``download=True`` fetches them first.  Missing or unreadable files raise
    :class:`DemoError` naming the path and the ``--data-dir``/``--download`` options.
    """
    from torchvision.datasets import FashionMNIST

    raw = Path(data_dir) / "FashionMNIST" / "raw"
    missing = [name for name in FASHION_FILES if not (raw / name).is_file()]
    if missing and not download:
        raise DemoError(
            f"FashionMNIST not found in {raw} (missing {', '.join(missing)}); pass --download to fetch it, "
            f"or --data-dir DIR where DIR/FashionMNIST/raw holds the files"
        )
    splits = []
    for train in (True, False):
        try:
            dataset = FashionMNIST(root=str(data_dir), train=train, download=download and train)
        except Exception as exc:  # a failed download or an unreadable file: torchvision raises many kinds
            what = "downloaded to" if download and missing else "read from"
            raise DemoError(
                f"FashionMNIST could not be {what} {raw}: {_one_line(exc)} (check --data-dir and --download)"
            ) from None
        images = normalise(dataset.data.unsqueeze(1).float() / 255.0)
        splits.append(TensorDataset(images, dataset.targets.long()))
    return DemoData("fashion-mnist", splits[0], splits[1], list(FASHION_CLASSES))


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def make_loaders(data: DemoData, batch_size: int, seed: int = 0) -> tuple[DataLoader, DataLoader]:
    """A shuffled training loader (its own generator, seeded) and an ordered test loader."""
    train = DataLoader(data.train, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))
    test = DataLoader(data.test, batch_size=max(batch_size, 256), shuffle=False)
    return train, test


# ---------------------------------------------------------------------------
# the plugins
# ---------------------------------------------------------------------------


def demo_plugins(steps_per_epoch: int, epochs: int) -> list[object]:
    """The built-ins configured for the demo's small data (each replaces its default by name).

    The intervals follow the epoch length, so a short run still fills every
    dashboard: scalars about 5 times and histograms about twice per epoch,
    one embedding at the last evaluation.  ``graph``, ``pr_curves`` and
    ``hparams`` keep their defaults; ``figures`` and other installed
    distributions come through their entry points.
    """
    from tbhooks.default_plugins.embeddings import Embeddings
    from tbhooks.default_plugins.histograms import Histograms
    from tbhooks.default_plugins.images import Images
    from tbhooks.default_plugins.scalars import Scalars

    return [
        Scalars(every_n_steps=max(1, steps_per_epoch // 5)),
        # (MEAN,)/(STD,) undo the normalisation, so the images look like the digits.
        Images(mean=(MEAN,), std=(STD,)),
        # Activations of every layer, captured by module hooks on the logging steps only.
        Histograms(every_n_steps=max(1, steps_per_epoch // 2), activations=["conv1", "conv2", "fc1", "fc2", "fc3"]),
        # The 84 features fc3 reads, of up to 1000 test images, with the images as sprites.
        Embeddings(every_n_evals=epochs, mean=(MEAN,), std=(STD,)),
    ]


class EpochPrinter:
    """Prints one line per epoch: training loss and test metrics.  Writes nothing to TensorBoard."""

    name = "demo_progress"

    def __init__(self, epochs: int, stream: Any = None) -> None:
        self.epochs = epochs
        self.stream = stream
        self._train_loss: float | None = None

    @hookimpl
    def on_epoch_end(self, metrics: Mapping[str, float]) -> None:
        self._train_loss = metrics.get("loss")

    @hookimpl
    def on_eval(self, run: Run, epoch: int, metrics: Mapping[str, float]) -> None:
        if not run.is_writer:
            return
        parts = [f"epoch {epoch + 1}/{self.epochs}"]
        if self._train_loss is not None:
            parts.append(f"train loss {self._train_loss:.4f}")
        parts += [f"test {name} {value:.4f}" for name, value in metrics.items()]
        print("  ".join(parts), file=self.stream or sys.stdout, flush=True)


def hparams_of(model: nn.Module, optimizer: torch.optim.Optimizer, epochs: int, batch_size: int) -> dict[str, Any]:
    """The hyperparameters the demo records; both loops pass the same, so their HPARAMS rows match."""
    return {
        "model": type(model).__name__,
        "optimizer": type(optimizer).__name__,
        "lr": optimizer.param_groups[0]["lr"],
        "epochs": epochs,
        "batch_size": batch_size,
        "parameters": sum(p.numel() for p in model.parameters()),
    }


# ---------------------------------------------------------------------------
# the two ways to train
# ---------------------------------------------------------------------------


def fit_trainer(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    train_loader: DataLoader,
    test_loader: DataLoader,
    *,
    epochs: int,
    logdir: str | Path,
    device: torch.device,
    **options: Any,
) -> dict[str, float]:
    """Train with :class:`tbhooks.Trainer`; ``options`` go to ``tbhooks.attach`` (plugins, disable, ...)."""
    from tbhooks.trainer import Trainer

    trainer = Trainer(model, optimizer, nn.CrossEntropyLoss(), logdir=logdir, device=device, **options)
    return trainer.fit(train_loader, epochs=epochs, eval_loader=test_loader)


def fit_custom_loop(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    train_loader: DataLoader,
    test_loader: DataLoader,
    *,
    epochs: int,
    logdir: str | Path,
    device: torch.device,
    **options: Any,
) -> dict[str, float]:
    """The same training as :func:`fit_trainer`, as a hand-written loop around ``tbhooks.attach``.

    ``demo/custom_loop.py`` in the repository is this loop as a script.
    """
    from tbhooks.hooks import attach

    loss_fn = nn.CrossEntropyLoss()
    model.to(device)
    with attach(model, logdir=logdir, optimizer=optimizer, epochs=epochs, **options) as hooks:
        for _ in range(epochs):
            model.train()
            hooks.epoch_start()
            for inputs, targets in train_loader:
                inputs, targets = inputs.to(device), targets.to(device)
                hooks.batch_start()
                outputs = model(inputs)
                loss = loss_fn(outputs, targets)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                hooks.batch_end(inputs, targets, outputs, loss)
            hooks.epoch_end()

            model.eval()
            hooks.eval_start()
            with torch.no_grad():
                for inputs, targets in test_loader:
                    inputs, targets = inputs.to(device), targets.to(device)
                    outputs = model(inputs)
                    hooks.eval_batch(inputs, targets, outputs, loss_fn(outputs, targets))
            hooks.eval_end()
        return hooks.last_metrics


# ---------------------------------------------------------------------------
# reading the run back
# ---------------------------------------------------------------------------

DASHBOARDS = ("SCALARS", "IMAGES", "GRAPHS", "DISTRIBUTIONS/HISTOGRAMS", "PROJECTOR", "TEXT", "PR CURVES", "HPARAMS")


@dataclass
class Dashboard:
    """What one dashboard will show for the run: its tags (or items) and a note."""

    tags: list[str] = field(default_factory=list)
    note: str = ""


def dashboard_summary(run_dir: str | Path) -> dict[str, Dashboard]:
    """Read ``run_dir`` (and its sub-directories' event files) back and sort the tags by dashboard.

    Everything here is measured from the files TensorBoard will read, with
    TensorBoard's own readers: the event files through
    :func:`tbhooks.testing.read_events`, the projector through
    ``projector_config.pbtxt``.
    """
    from tensorboard.plugins.hparams import metadata as hparams_metadata

    from tbhooks.testing import read_events

    root = Path(run_dir)
    found = {name: Dashboard() for name in DASHBOARDS}
    plugin_dashboards = {"scalars": "SCALARS", "text": "TEXT", "pr_curves": "PR CURVES", "hparams": "HPARAMS"}
    hparams_count = 0
    event_dirs = sorted({path.parent for path in root.rglob("events.out.tfevents.*")})
    for directory in event_dirs:
        acc = read_events(directory).accumulator
        tags = acc.Tags()
        prefix = "" if directory == root else f"{directory.relative_to(root).as_posix()}: "
        found["SCALARS"].tags += [prefix + tag for tag in tags.get("scalars", [])]
        found["IMAGES"].tags += [prefix + tag for tag in tags.get("images", [])]
        found["DISTRIBUTIONS/HISTOGRAMS"].tags += [prefix + tag for tag in tags.get("histograms", [])]
        if tags.get("graph"):
            found["GRAPHS"].tags.append(prefix + "model graph")
        for tag in tags.get("tensors", []):
            content = acc.SummaryMetadata(tag).plugin_data
            dashboard = plugin_dashboards.get(content.plugin_name)
            if dashboard is None:
                continue
            if content.plugin_name == "hparams":
                if tag == hparams_metadata.SESSION_START_INFO_TAG:
                    info = hparams_metadata.parse_session_start_info_plugin_data(content.content)
                    hparams_count += len(info.hparams)
                continue
            found[dashboard].tags.append(prefix + tag)
    if hparams_count:
        found["HPARAMS"].tags.append("session")
        found["HPARAMS"].note = f"{hparams_count} hyperparameters"
    found["PROJECTOR"] = _projector_summary(root)
    return found


def _projector_summary(root: Path) -> Dashboard:
    from google.protobuf import text_format
    from tensorboard.plugins.projector.projector_config_pb2 import ProjectorConfig

    path = root / "projector_config.pbtxt"
    if not path.is_file():
        return Dashboard(note="no projector_config.pbtxt")
    config = text_format.Parse(path.read_text(), ProjectorConfig())
    tags = [embedding.tensor_name or embedding.tensor_path for embedding in config.embeddings]
    sprites = sum(1 for embedding in config.embeddings if embedding.sprite.image_path)
    return Dashboard(tags=tags, note=f"projector_config.pbtxt, {sprites} with a sprite")


# ---------------------------------------------------------------------------
# the command
# ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``tbhooks demo``."""
    parser = argparse.ArgumentParser(
        prog="tbhooks demo",
        description=(
            "Train the PyTorch TensorBoard tutorial's network with every tbhooks plugin, "
            "then print what each TensorBoard dashboard shows."
        ),
    )
    parser.add_argument(
        "--logdir",
        default=DEFAULT_LOGDIR,
        help=f"parent directory of the run; each demo writes a fresh sub-run in it (default {DEFAULT_LOGDIR})",
    )
    parser.add_argument(
        "--epochs", type=_positive_int, default=None, help="epochs to train (default 8 for digits, 2 for fashion-mnist)"
    )
    parser.add_argument("--batch-size", type=_positive_int, default=DEFAULT_BATCH_SIZE, help="default 32")
    parser.add_argument(
        "--dataset",
        choices=("digits", "fashion-mnist"),
        default="digits",
        help="digits: scikit-learn's bundled digits (no download; default); fashion-mnist: torchvision's FashionMNIST",
    )
    parser.add_argument(
        "--data-dir", default="data", help="where FashionMNIST is (DIR/FashionMNIST/raw) or goes (default ./data)"
    )
    parser.add_argument("--download", action="store_true", help="download FashionMNIST into --data-dir if missing")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default auto: CUDA if any")
    parser.add_argument(
        "--disable",
        nargs="+",
        action="extend",
        default=[],
        metavar="NAME",
        help="plugin names not to run (see `tbhooks plugins`), e.g. --disable figures graph",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the split, the shuffling and the weights")
    parser.add_argument(
        "--loop",
        choices=("trainer", "custom"),
        default="trainer",
        help="train with tbhooks.Trainer (default) or the hand-written loop around tbhooks.attach",
    )
    parser.add_argument(
        "--limit", type=_positive_int, default=None, metavar="N", help="use the first N images of each split"
    )
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


@dataclass
class DemoResult:
    """What a demo run produced."""

    run_dir: Path
    metrics: dict[str, float]
    model: nn.Module
    dashboards: dict[str, Dashboard]
    data: DemoData
    device: torch.device
    seconds: float
    notes: list[str] = field(default_factory=list)


def resolve_demo_device(choice: str) -> torch.device:
    """The Trainer's choice (under torchrun, each rank its own GPU); a device that cannot be had is a
    :class:`DemoError` naming ``--device``."""
    from tbhooks.trainer import local_gpu_problem, resolve_device

    if choice == "cuda" and not torch.cuda.is_available():
        raise DemoError("--device cuda: no CUDA device is available here; use --device cpu or auto")
    problem = local_gpu_problem() if choice != "cpu" and torch.cuda.is_available() else None
    if problem:
        raise DemoError(f"--device {choice}: {problem} (--device cpu)")
    return resolve_device(choice)


def fresh_run_dir(parent: str | Path, name: str) -> Path:
    """``parent/<name>-<YYYYmmdd-HHMMSS>``, with ``-2``, ``-3``, ... when that exists already."""
    stem = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    candidate, n = Path(parent) / stem, 1
    while candidate.exists():
        n += 1
        candidate = Path(parent) / f"{stem}-{n}"
    return candidate


def installed_plugin_names() -> list[str]:
    """The entry-point names of the installed plugin distributions (group ``tbhooks``)."""
    from importlib.metadata import entry_points

    from tbhooks.markers import NAME

    return sorted(ep.name for ep in entry_points(group=NAME))


def cpu_threads() -> int:
    """Torch threads for the demo on the CPU: half the usable cores, from 1 to 4.

    The network is tiny, so a batch gains little from more threads, while
    threads that outnumber the free cores wait on each other: on 2 cores
    shared with other work, 2 threads made the 8 epochs about 15 times
    slower than 1 thread.  The other core is left to the background thread
    that draws the figures.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(4, cores // 2))


def run(args: argparse.Namespace, stream: Any = None) -> DemoResult:
    """Run the demo for parsed ``args``; raises :class:`DemoError` for problems the user can fix.

    On the CPU it trains with :func:`cpu_threads` threads and restores the
    process's thread count afterwards.
    """
    device = resolve_demo_device(args.device)
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(cpu_threads())
    try:
        return _run(args, device, stream)
    finally:
        torch.set_num_threads(threads)


def _run(args: argparse.Namespace, device: torch.device, stream: Any) -> DemoResult:
    from tbhooks.manager import make_plugin_manager
    from tbhooks.run import check_logdir

    started = time.perf_counter()
    epochs = args.epochs if args.epochs is not None else DEFAULT_EPOCHS[args.dataset]
    disable = list(dict.fromkeys(args.disable))
    try:
        # A manager built and dropped: an unknown name in --disable fails before any data is loaded.
        make_plugin_manager(plugins=[*demo_plugins(1, 1), EpochPrinter(epochs)], disable=disable)
    except (ValueError, TypeError) as exc:
        raise DemoError(f"--disable: {_one_line(exc)}") from None
    notes = []
    if FIGURES_PLUGIN not in installed_plugin_names():
        notes.append(
            "the figures plugin is not installed (pip install -e plugins/tbhooks-figures), "
            "so the IMAGES dashboard has no prediction or confusion-matrix figures"
        )

    if args.dataset == "digits":
        data = load_digits(seed=args.seed)
    else:
        data = load_fashion_mnist(args.data_dir, download=args.download)
    data = data.limited(args.limit)
    if len(data.train) == 0 or len(data.test) == 0:
        raise DemoError(f"the {data.name} data has an empty split ({len(data.train)} train, {len(data.test)} test)")
    steps_per_epoch = -(-len(data.train) // args.batch_size)
    writer_rank = int(os.environ.get("RANK", "0")) == 0  # under torchrun, rank 0 reports
    if writer_rank:
        print(
            f"tbhooks demo: training on {data.name} ({len(data.train)} training / {len(data.test)} test images), "
            f"{epochs} epochs, {device.type}, loop: {args.loop}",
            file=stream or sys.stdout,
            flush=True,
        )
    plugins = [*demo_plugins(steps_per_epoch, epochs), EpochPrinter(epochs, stream)]

    torch.manual_seed(args.seed)
    model = Net(classes=len(data.class_names))
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    train_loader, test_loader = make_loaders(data, args.batch_size, seed=args.seed)
    run_dir = fresh_run_dir(args.logdir, f"{data.name}-{args.loop}")
    if writer_rank:  # under torchrun only rank 0 writes; the others never touch the file system
        try:
            check_logdir(run_dir)
        except ValueError as exc:
            raise DemoError(f"--logdir: {_one_line(exc)}") from None
    fit = fit_trainer if args.loop == "trainer" else fit_custom_loop
    metrics = fit(
        model,
        optimizer,
        train_loader,
        test_loader,
        epochs=epochs,
        logdir=run_dir,
        device=device,
        plugins=plugins,
        disable=disable,
        class_names=data.class_names,
        hparams=hparams_of(model, optimizer, epochs, args.batch_size),
    )
    return DemoResult(
        run_dir=run_dir,
        metrics=dict(metrics),
        model=model,
        dashboards=dashboard_summary(run_dir) if writer_rank else {},
        data=data,
        device=device,
        seconds=time.perf_counter() - started,
        notes=notes,
    )


def tensorboard_command(logdir: str | Path) -> str:
    """The command that opens ``logdir`` in TensorBoard (the venv's ``tensorboard`` when it is not on PATH)."""
    executable = "tensorboard"
    if shutil.which(executable) is None:
        beside = Path(sys.executable).parent / "tensorboard"
        if beside.exists():
            executable = str(beside)
    return f"{shlex.quote(executable)} --logdir {shlex.quote(str(logdir))}"


def format_report(result: DemoResult, logdir: str | Path) -> str:
    """The summary ``tbhooks demo`` prints at the end."""
    accuracy = result.metrics.get("accuracy")
    lines = [
        f"final test accuracy: {accuracy:.4f}" if accuracy is not None else "final test accuracy: n/a",
        f"  ({result.data.name}, {len(result.data.train)} training / {len(result.data.test)} test images, "
        f"{result.device.type}, {result.seconds:.1f} s)",
        f"log directory: {result.run_dir}",
        "written per dashboard (read back from the run):",
    ]
    for name, dashboard in result.dashboards.items():
        count = len(dashboard.tags)
        shown = ", ".join(dashboard.tags[:4]) + (f", ... (+{count - 4} more)" if count > 4 else "")
        note = f" [{dashboard.note}]" if dashboard.note else ""
        lines.append(f"  {name:<26}{count:>3} {'tag' if count == 1 else 'tags'}{note}{': ' + shown if count else ''}")
    lines += [f"note: {note}" for note in result.notes]
    lines.append(f"open it: {tensorboard_command(logdir)}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``tbhooks demo ARGS``: run the demo and print the report; returns the exit status.

    Exit status 0 on success, 2 for a bad option (argparse) or a problem the
    user can fix (missing data or package), printed as one line on stderr.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:  # --help, or argparse's own error message and status 2
        return int(exc.code or 0)
    try:
        result = run(args)
    except DemoError as exc:
        print(f"tbhooks demo: error: {exc}", file=sys.stderr)
        return 2
    if result.dashboards:  # ranks other than 0 (torchrun) wrote nothing to report
        print(format_report(result, args.logdir))
    return 0
