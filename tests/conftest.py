"""Fixtures shared by several test files."""

from __future__ import annotations

import io
from importlib.metadata import entry_points

import pytest


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory):
    """One ``tbhooks demo`` run with every plugin: the full digits, 3 epochs, batch size 16, seed 0.

    Shared by ``test_demo.py`` (accuracy, tags) and ``test_e2e_tensorboard.py``
    (the same run served by a real TensorBoard), so the training happens once.
    Returns the :class:`tbhooks.demo.DemoResult`; ``demo_run.output`` is what
    it printed per epoch.
    """
    from tbhooks.demo import build_parser, run

    logdir = tmp_path_factory.mktemp("demo")
    args = build_parser().parse_args(["--logdir", str(logdir), "--epochs", "3", "--batch-size", "16", "--seed", "0"])
    printed = io.StringIO()
    result = run(args, stream=printed)
    result.output = printed.getvalue()  # type: ignore[attr-defined]
    return result


def figures_installed() -> bool:
    """Whether the ``tbhooks-figures`` distribution is installed (its entry point ``figures``)."""
    return any(ep.name == "figures" for ep in entry_points(group="tbhooks"))
