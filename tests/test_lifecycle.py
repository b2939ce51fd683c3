"""The order of events, recorded with pluggy's hook-call monitoring, equals the documented lifecycle."""

from __future__ import annotations

import re

import pytest
import torch
from _support import QUIET, EveryStep, classification_data, loader, mlp
from torch import nn

import tbhooks
from tbhooks import hookspecs
from tbhooks.testing import HookRecorder


def documented() -> list[str]:
    """The lifecycle block of the hookspecs module docstring, as a list of event names in order."""
    block = hookspecs.__doc__.split("::", 1)[1].split("The names are stable", 1)[0]
    return re.findall(r"\bon_\w+", block)


def test_the_documented_lifecycle_names_every_event():
    spec_names = [name for name in vars(hookspecs) if name.startswith("on_")]
    assert sorted(documented()) == sorted(spec_names)


def expected(epochs: int, with_eval: bool, end: str = "on_fit_end") -> list[str]:
    doc = documented()
    start = doc[: doc.index("on_epoch_start")]
    body = doc[doc.index("on_epoch_start") : doc.index("on_fit_end")]
    if not with_eval:
        body = body[: body.index("on_eval_start")]
    return start + body * epochs + [end]


def make_trainer(tmp_path, loss_fn=nn.functional.cross_entropy):
    model = mlp()
    trainer = tbhooks.Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        loss_fn,
        logdir=tmp_path,
        plugins=[EveryStep()],
        disable=QUIET,
        autoload=False,
    )
    return trainer, HookRecorder().install(trainer)


@pytest.mark.parametrize("with_eval", [True, False])
def test_fit_follows_the_lifecycle(tmp_path, with_eval):
    trainer, recorder = make_trainer(tmp_path)
    data = loader(classification_data(n=24))  # 3 batches
    trainer.fit(data, epochs=2, eval_loader=data if with_eval else None)
    assert recorder.collapsed() == expected(2, with_eval)
    assert recorder.names().count("on_batch_end") == 6
    assert recorder.names().count("on_eval_batch_end") == (6 if with_eval else 0)
    assert [c["step"] for c in recorder.of("on_batch_end")] == [1, 2, 3, 4, 5, 6]
    assert [c["epoch"] for c in recorder.of("on_epoch_end")] == [0, 1]


def test_an_exception_mid_epoch_ends_with_on_exception(tmp_path):
    calls = {"n": 0}

    def failing_loss(prediction, targets):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("boom in the training step")
        return nn.functional.cross_entropy(prediction, targets)

    trainer, recorder = make_trainer(tmp_path, failing_loss)
    with pytest.raises(RuntimeError, match="boom in the training step"):
        trainer.fit(loader(classification_data(n=40)), epochs=2)
    assert recorder.collapsed() == [
        "on_fit_start",
        "on_capture_request",
        "on_epoch_start",
        "on_batch_end",
        "on_exception",
    ]
    assert recorder.names().count("on_batch_end") == 2
    (call,) = recorder.of("on_exception")
    assert isinstance(call["exception"], RuntimeError) and call["step"] == 2


def test_custom_loop_context_manager_raises_the_same_events(tmp_path):
    model = mlp()
    data = loader(classification_data(n=16))
    hooks = tbhooks.attach(model, logdir=tmp_path, plugins=[EveryStep()], disable=QUIET, autoload=False)
    recorder = HookRecorder(hooks)
    with hooks:
        hooks.epoch_start()
        for inputs, targets in data:
            hooks.batch_start()
            outputs = model(inputs)
            hooks.batch_end(inputs, targets, outputs, nn.functional.cross_entropy(outputs, targets))
        hooks.epoch_end()
        hooks.eval_start()
        with torch.no_grad():
            for inputs, targets in data:
                hooks.eval_batch(inputs, targets, model(inputs))
        hooks.eval_end()
    assert recorder.collapsed() == expected(1, with_eval=True)
