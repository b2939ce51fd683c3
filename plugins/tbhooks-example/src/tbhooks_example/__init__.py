"""The smallest useful tbhooks plugin: count what a fit did, write one line of text at its end."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tbhooks import hookimpl

if TYPE_CHECKING:
    from tbhooks import Run


class Example:
    """Samples every ``every_n_steps``-th training step and counts epochs and evaluations; at the end
    of the fit writes ``example/summary`` ("N steps, S sampled, E epochs, V evaluations") to the TEXT
    dashboard."""

    name = "example"

    def __init__(self, every_n_steps: int = 100) -> None:
        if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or every_n_steps < 1:
            raise ValueError(f"Example(every_n_steps=...) expects an int >= 1, got {every_n_steps!r}")
        self.every_n_steps = every_n_steps
        self.sampled = self.epochs = self.evals = 0

    def batch_end_due(self, step: int) -> bool:
        """The schedule (a plain method, not a hook): on_batch_end is raised for this plugin on these steps only."""
        return step % self.every_n_steps == 0

    # A hookimpl takes any subset of the event's arguments: these take none.
    @hookimpl
    def on_batch_end(self) -> None:
        self.sampled += 1

    @hookimpl
    def on_epoch_end(self) -> None:
        self.epochs += 1

    @hookimpl
    def on_eval(self) -> None:
        self.evals += 1

    @hookimpl
    def on_fit_end(self, run: Run) -> None:
        summary = f"{run.step} steps, {self.sampled} sampled, {self.epochs} epochs, {self.evals} evaluations"
        run.writer.add_text("example/summary", summary, run.step)


def plugin() -> Example:
    """The entry point: a fresh plugin (fresh counts) for every run."""
    return Example()
