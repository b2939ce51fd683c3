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

One job per module: :mod:`~tbhooks.demo.net` (the model),
:mod:`~tbhooks.demo.data` (the data sets and loaders),
:mod:`~tbhooks.demo.plugins` (the plugins it runs),
:mod:`~tbhooks.demo.loops` (the ways to train, a table ``--loop`` name ->
function), :mod:`~tbhooks.demo.report` (reading the run back) and
:mod:`~tbhooks.demo.cli` (the command).  The names below are importable from
``tbhooks.demo`` itself: the scripts in ``demo/`` of the repository use them.
"""

from __future__ import annotations

from tbhooks.demo.cli import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_EPOCHS,
    DEFAULT_LOGDIR,
    DemoResult,
    build_parser,
    cpu_threads,
    fresh_run_dir,
    main,
    resolve_demo_device,
    run,
)
from tbhooks.demo.data import (
    DIGIT_CLASSES,
    FASHION_CLASSES,
    FASHION_FILES,
    MEAN,
    STD,
    TEST_FRACTION,
    DemoData,
    load_digits,
    load_fashion_mnist,
    make_loaders,
    normalise,
)
from tbhooks.demo.errors import DemoError
from tbhooks.demo.loops import LEARNING_RATE, LOOPS, FitLoop, fit_custom_loop, fit_trainer, hparams_of
from tbhooks.demo.net import Net
from tbhooks.demo.plugins import FIGURES_PLUGIN, EpochPrinter, demo_plugins, installed_plugin_names
from tbhooks.demo.report import DASHBOARDS, Dashboard, dashboard_summary, format_report, tensorboard_command

__all__ = [
    "DASHBOARDS",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_EPOCHS",
    "DEFAULT_LOGDIR",
    "DIGIT_CLASSES",
    "FASHION_CLASSES",
    "FASHION_FILES",
    "FIGURES_PLUGIN",
    "LEARNING_RATE",
    "LOOPS",
    "MEAN",
    "STD",
    "TEST_FRACTION",
    "Dashboard",
    "DemoData",
    "DemoError",
    "DemoResult",
    "EpochPrinter",
    "FitLoop",
    "Net",
    "build_parser",
    "cpu_threads",
    "dashboard_summary",
    "demo_plugins",
    "fit_custom_loop",
    "fit_trainer",
    "format_report",
    "fresh_run_dir",
    "hparams_of",
    "installed_plugin_names",
    "load_digits",
    "load_fashion_mnist",
    "main",
    "make_loaders",
    "normalise",
    "resolve_demo_device",
    "run",
    "tensorboard_command",
]
