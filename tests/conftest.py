"""Fixtures shared by several test files."""

from __future__ import annotations

import io
from importlib.metadata import entry_points

import pytest

DEMO_RUN_EPOCHS = 3
DEMO_RUN_BATCH_SIZE = 16
"""The options of :func:`demo_run`, for tests that compute steps from them."""


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory):
    """One ``tbhooks demo`` run with every plugin: the full digits, 3 epochs, batch size 16, seed 0.

    Shared by ``test_demo.py`` (accuracy, tags) and ``test_e2e_tensorboard.py``
    (the same run served by a real TensorBoard), so the training happens once.
    Returns the :class:`tbhooks.demo.cli.DemoResult`; ``demo_run.output`` is what
    it printed per epoch.
    """
    from tbhooks.demo import build_parser, run

    logdir = tmp_path_factory.mktemp("demo")
    argv = ["--logdir", str(logdir), "--epochs", str(DEMO_RUN_EPOCHS), "--batch-size", str(DEMO_RUN_BATCH_SIZE)]
    args = build_parser().parse_args([*argv, "--seed", "0"])
    printed = io.StringIO()
    result = run(args, stream=printed)
    result.output = printed.getvalue()  # type: ignore[attr-defined]
    return result


def plugin_installed(name: str) -> bool:
    """Whether a distribution with the ``tbhooks`` entry point ``name`` is installed."""
    return any(ep.name == name for ep in entry_points(group="tbhooks"))


def figures_installed() -> bool:
    """Whether the ``tbhooks-figures`` distribution is installed (its entry point ``figures``)."""
    return plugin_installed("figures")
