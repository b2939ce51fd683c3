"""The command ``tbhooks demo``: its options, one run of the demo, and the exit status.

Problems the user can fix end as one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from tbhooks.demo.data import DemoData, load_digits, load_fashion_mnist, make_loaders
from tbhooks.demo.errors import DemoError, one_line
from tbhooks.demo.loops import LEARNING_RATE, LOOPS, NEEDS, hparams_of
from tbhooks.demo.net import Net
from tbhooks.demo.plugins import (
    FIGURES_PLUGIN,
    NET_ACTIVATIONS,
    TEXT_ACTIVATIONS,
    EpochPrinter,
    demo_plugins,
    installed_plugin_names,
)
from tbhooks.demo.report import Dashboard, dashboard_summary, format_report

if TYPE_CHECKING:
    from collections.abc import Sequence

    from torch import nn

DEFAULT_LOGDIR = "runs/demo"
DEFAULT_EPOCHS = {"digits": 8, "fashion-mnist": 2, "text": 2}
"""Epochs without ``--epochs``: digits reaches about 97% test accuracy in 8; FashionMNIST has 60000 images."""
DEFAULT_BATCH_SIZE = 32


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
        choices=tuple(LOOPS),
        default=next(iter(LOOPS)),
        help="how to train: trainer = tbhooks.Trainer (default), custom = the hand-written loop around tbhooks.attach, "
        "lightning, ignite = the tutorial's network in that framework, transformers = a tiny BERT on generated text "
        "in Hugging Face's Trainer (each framework through tbhooks' adapter)",
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
    from tbhooks.distributed import local_gpu_problem, resolve_device

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


def cpu_threads() -> int:
    """Torch threads for the demo on the CPU: half the usable cores, from 1 to 4.

    The tiny network gains little from more; the other half is left to the render worker and the writer.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(4, cores // 2))


def run(args: argparse.Namespace, stream: Any = None) -> DemoResult:
    """Run the demo for parsed ``args``; raises :class:`DemoError` for problems the user can fix.

    On the CPU it trains with :func:`cpu_threads` threads, then restores the process's thread count.
    """
    device = resolve_demo_device(args.device)
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(cpu_threads())
    try:
        return _run(args, device, stream)
    finally:
        torch.set_num_threads(threads)


def check_disable(names: list[str], epochs: int) -> None:
    """Fail on an unknown plugin name in ``--disable`` before any data is loaded (a manager built and dropped)."""
    from tbhooks.manager import make_plugin_manager

    try:
        make_plugin_manager(plugins=[*demo_plugins(1, 1), EpochPrinter(epochs)], disable=names)
    except (ValueError, TypeError) as exc:
        raise DemoError(f"--disable: {one_line(exc)}") from None


def check_loop(loop: str) -> None:
    """A framework loop whose framework is not installed is a :class:`DemoError` naming the extra."""
    import importlib.util

    needs, extra = NEEDS.get(loop, ([], ""))
    missing = [" or ".join(names) for names in needs if all(importlib.util.find_spec(n) is None for n in names)]
    if missing:
        raise DemoError(f"--loop {loop} needs {', '.join(missing)}: pip install '{extra}'")


def load_data(args: argparse.Namespace) -> DemoData:
    """The data set ``--dataset`` names (generated text for ``--loop transformers``), cut to ``--limit``;
    an empty split is a :class:`DemoError`."""
    if args.loop == "transformers":
        from tbhooks.demo.text import text_data

        data = text_data(seed=args.seed)
    elif args.dataset == "digits":
        data = load_digits(seed=args.seed)
    else:
        data = load_fashion_mnist(args.data_dir, download=args.download)
    data = data.limited(args.limit)
    if len(data.train) == 0 or len(data.test) == 0:
        raise DemoError(f"the {data.name} data has an empty split ({len(data.train)} train, {len(data.test)} test)")
    return data


def _run(args: argparse.Namespace, device: torch.device, stream: Any) -> DemoResult:
    from tbhooks.writer import check_logdir

    started = time.perf_counter()
    check_loop(args.loop)
    text = args.loop == "transformers"
    epochs = args.epochs if args.epochs is not None else DEFAULT_EPOCHS["text" if text else args.dataset]
    disable = list(dict.fromkeys(args.disable))
    check_disable(disable, epochs)
    notes = []
    if FIGURES_PLUGIN not in installed_plugin_names():
        notes.append(
            "the figures plugin is not installed (pip install -e plugins/tbhooks-figures), "
            "so the IMAGES dashboard has no prediction or confusion-matrix figures"
        )
    data = load_data(args)
    steps_per_epoch = -(-len(data.train) // args.batch_size)
    writer_rank = int(os.environ.get("RANK", "0")) == 0  # under torchrun, rank 0 reports
    if writer_rank:
        print(
            f"tbhooks demo: training on {data.name} ({len(data.train)} training / {len(data.test)} test samples), "
            f"{epochs} epochs, {device.type}, loop: {args.loop}",
            file=stream or sys.stdout,
            flush=True,
        )
    torch.manual_seed(args.seed)
    if text:
        from tbhooks.demo.text import tiny_bert

        model: nn.Module = tiny_bert(len(data.class_names))
    else:
        model = Net(classes=len(data.class_names))
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    train_loader, test_loader = make_loaders(data, args.batch_size, seed=args.seed)
    run_dir = fresh_run_dir(args.logdir, f"{data.name}-{args.loop}")
    if writer_rank:  # under torchrun only rank 0 writes; the others never touch the file system
        try:
            check_logdir(run_dir)
        except ValueError as exc:
            raise DemoError(f"--logdir: {one_line(exc)}") from None
    printer = EpochPrinter(epochs, stream)
    metrics = LOOPS[args.loop](
        model,
        optimizer,
        train_loader,
        test_loader,
        epochs=epochs,
        logdir=run_dir,
        device=device,
        plugins=[*demo_plugins(steps_per_epoch, epochs, TEXT_ACTIVATIONS if text else NET_ACTIVATIONS), printer],
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


def main(argv: Sequence[str] | None = None) -> int:
    """``tbhooks demo ARGS``: run the demo and print the report; returns the exit status.

    0 on success, 2 for a bad option or a problem the user can fix (printed as one line on stderr).
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
