"""The demo behind ``tbhooks demo``: the PyTorch TensorBoard tutorial's network trained with every plugin.

One job per submodule (``net``, ``data``, ``plugins``, ``loops``, ``report``, ``cli``); the names
below are the ones the scripts in the repository's ``demo/`` and the ``tbhooks`` command import.
"""

from __future__ import annotations

from tbhooks.demo.cli import build_parser, main, run
from tbhooks.demo.data import load_digits, make_loaders
from tbhooks.demo.loops import LEARNING_RATE, hparams_of
from tbhooks.demo.net import Net
from tbhooks.demo.plugins import demo_plugins

__all__ = [
    "LEARNING_RATE",
    "Net",
    "build_parser",
    "demo_plugins",
    "hparams_of",
    "load_digits",
    "main",
    "make_loaders",
    "run",
]
