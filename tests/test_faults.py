"""A plugin that raises is reported once, unregistered, and the run goes on; strict mode re-raises."""

from __future__ import annotations

import logging

import pytest
import torch
from _support import QUIET, Faulty, classification_data, loader, mlp
from torch import nn

import tbhooks
from tbhooks import PluginFaultWarning
from tbhooks.testing import read_events


class Background:
    name = "background"

    @tbhooks.hookimpl
    def on_epoch_end(self, run):
        run.submit(self.render)

    def render(self):
        raise OSError("disk on fire")


def trainer(tmp_path, *plugins, **options):
    model = mlp()
    return tbhooks.Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        nn.functional.cross_entropy,
        logdir=tmp_path,
        plugins=list(plugins),
        disable=QUIET,
        autoload=False,
        **options,
    )


@pytest.mark.parametrize("hook", ["on_batch_end", "on_epoch_end", "on_eval"])
def test_faulty_plugin_is_reported_once_and_the_run_goes_on(tmp_path, hook, caplog):
    faulty = Faulty(hook, after=1)
    fit = trainer(tmp_path, faulty)
    data = loader(classification_data(n=32))
    with pytest.warns(PluginFaultWarning) as caught, caplog.at_level(logging.WARNING, logger="tbhooks"):
        metrics = fit.fit(data, epochs=3, eval_loader=data)
    assert len(caught) == 1
    text = str(caught[0].message)
    assert f"plugin 'faulty' raised in {hook}" in text
    assert "ZeroDivisionError: faulty plugin broke" in text and "Traceback" in text
    assert faulty.calls == 2, "called until it failed, never again"
    assert set(fit.hooks.faults) == {"faulty"}
    assert "faulty: " + hook in caplog.text, "the fit-end summary lists the disabled plugin"
    # Every other plugin went on: all epochs' scalars are there.
    events = read_events(tmp_path)
    assert events.steps("train/epoch_loss") == [4, 8, 12]
    assert len(events.steps("eval/accuracy")) == 3 and "accuracy" in metrics


def test_background_task_errors_are_attributed_to_their_plugin(tmp_path):
    fit = trainer(tmp_path, Background())
    with pytest.warns(PluginFaultWarning, match=r"(?s)plugin 'background' raised in background task.*disk on fire"):
        fit.fit(loader(classification_data(n=16)), epochs=2)
    assert set(fit.hooks.faults) == {"background"}
    assert read_events(tmp_path).steps("train/epoch_loss") == [2, 4]


def test_strict_reraises(tmp_path):
    with pytest.raises(ZeroDivisionError, match="faulty plugin broke in on_batch_end"):
        trainer(tmp_path, Faulty("on_batch_end"), strict=True).fit(loader(classification_data()), epochs=1)


def test_strict_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("TBHOOKS_STRICT", "1")
    with pytest.raises(ZeroDivisionError):
        trainer(tmp_path, Faulty("on_eval")).fit(
            loader(classification_data()), epochs=1, eval_loader=loader(classification_data())
        )


class Arities:
    """Implementations taking 1 to 4 of their hook's arguments, in any order, one with a default."""

    name = "arities"

    def __init__(self) -> None:
        self.seen: list[tuple[object, ...]] = []

    @tbhooks.hookimpl
    def on_epoch_start(self, epoch):
        self.seen.append(("epoch_start", epoch))

    @tbhooks.hookimpl
    def on_batch_end(self, batch_idx, step, epoch):
        self.seen.append(("batch_end", step, epoch, batch_idx))
        if step == 3:
            raise KeyError("arities broke in on_batch_end")

    @tbhooks.hookimpl
    def on_epoch_end(self, metrics, epoch, step, run, scale=1):
        # An argument with a default: pluggy passes it by keyword when the caller has it (never here).
        self.seen.append(("epoch_end", step * scale, epoch, sorted(metrics), isinstance(run, tbhooks.Run)))


def test_guards_pass_each_implementation_its_arguments_and_still_isolate_a_fault(tmp_path):
    # The guard around an implementation is generated with the implementation's own arity (the
    # arguments pluggy passes positionally); one with a keyword argument gets the general guard.
    plugin = Arities()
    fit = trainer(tmp_path, plugin)
    with pytest.warns(PluginFaultWarning, match="plugin 'arities' raised in on_batch_end"):
        fit.fit(loader(classification_data(n=16)), epochs=3)  # 2 steps an epoch
    # Called with the right values until its generated guard caught the error at step 3, never again.
    assert plugin.seen == [
        ("epoch_start", 0),
        ("batch_end", 1, 0, 0),
        ("batch_end", 2, 0, 1),
        ("epoch_end", 2, 0, ["loss"], True),
        ("epoch_start", 1),
        ("batch_end", 3, 1, 0),
    ]
    assert set(fit.hooks.faults) == {"arities"}
    assert read_events(tmp_path).steps("train/epoch_loss") == [2, 4, 6]
