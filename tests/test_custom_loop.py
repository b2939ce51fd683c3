"""A hand-written loop and the Trainer write the same tags at the same steps, with the same values."""

from __future__ import annotations

import pytest
import torch
from _support import QUIET, classification_data, loader, mlp
from torch import nn

import tbhooks
from tbhooks.default_plugins.scalars import Scalars
from tbhooks.testing import read_events

EVERY = 3
"""The scalars interval: several train/loss points in these short epochs (the default, 50, would give none)."""


def hand_written(logdir, data, eval_data, epochs):
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = nn.functional.cross_entropy
    plugins = [Scalars(every_n_steps=EVERY)]
    with tbhooks.attach(
        model, logdir=logdir, optimizer=optimizer, plugins=plugins, disable=QUIET, autoload=False
    ) as hooks:
        for _ in range(epochs):
            model.train()
            hooks.epoch_start()
            for inputs, targets in data:
                hooks.batch_start()
                outputs = model(inputs)
                loss = loss_fn(outputs, targets)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                hooks.batch_end(inputs, targets, outputs, loss)
            hooks.epoch_end()
            model.eval()
            hooks.eval_start()
            with torch.no_grad():
                for inputs, targets in eval_data:
                    outputs = model(inputs)
                    hooks.eval_batch(inputs, targets, outputs, loss_fn(outputs, targets))
            metrics = hooks.eval_end()
    return metrics


def test_same_tags_steps_and_values(tmp_path):
    data = loader(classification_data(n=56))
    eval_data = loader(classification_data(n=20, seed=1), batch_size=6)
    loop_metrics = hand_written(tmp_path / "loop", data, eval_data, epochs=2)

    model = mlp()
    trainer = tbhooks.Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        nn.functional.cross_entropy,
        logdir=tmp_path / "trainer",
        plugins=[Scalars(every_n_steps=EVERY)],
        disable=QUIET,
        autoload=False,
    )
    trainer_metrics = trainer.fit(data, epochs=2, eval_loader=eval_data)

    loop, fit = read_events(tmp_path / "loop"), read_events(tmp_path / "trainer")
    assert sorted(loop.scalars) == sorted(fit.scalars)
    assert {"train/loss", "train/lr", "train/epoch_loss", "eval/loss", "eval/accuracy"} <= set(fit.scalars)
    per_epoch = len(data)  # 56 samples in batches of 8
    assert fit.steps("train/loss") == list(range(EVERY, 2 * per_epoch + 1, EVERY))
    assert fit.steps("train/epoch_loss") == fit.steps("eval/loss") == [per_epoch, 2 * per_epoch]
    for tag in fit.scalars:
        assert loop.steps(tag) == fit.steps(tag), tag
        assert loop.values(tag) == pytest.approx(fit.values(tag), rel=1e-6), tag
    assert loop_metrics == pytest.approx(trainer_metrics)
