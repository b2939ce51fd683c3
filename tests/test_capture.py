"""Module hooks: registered only on due steps, always removed, training mode restored."""

from __future__ import annotations

import pytest
import torch
from _support import QUIET, classification_data, hook_counts, loader, mlp
from torch import nn

import tbhooks
from tbhooks import Capture


class Wants:
    """Asks for the first layer's output every 3 steps and at eval, and the last layer's output gradient."""

    name = "wants"

    def __init__(self) -> None:
        self.train: list[tuple[int, dict[str, tuple[int, ...]]]] = []
        self.eval: list[dict[str, tuple[int, ...]]] = []
        self.seen_hooks: list[int] = []

    @tbhooks.hookimpl
    def on_capture_request(self):
        return [
            Capture("0", "output", every_n_steps=3, at_eval=True),
            Capture("2", "grad_output", every_n_steps=3),
            Capture("2", "input", at_eval=True),
        ]

    @tbhooks.hookimpl
    def on_batch_end(self, run, step, captured):
        self.train.append((step, {k: tuple(v.shape) for k, v in captured.items()}))
        self.seen_hooks.append(sum(map(sum, hook_counts(run.model))))

    @tbhooks.hookimpl
    def on_eval_batch_end(self, captured):
        self.eval.append({k: tuple(v.shape) for k, v in captured.items()})


def make(tmp_path, plugin, loss_fn=nn.functional.cross_entropy):
    model = mlp()
    trainer = tbhooks.Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        loss_fn,
        logdir=tmp_path,
        plugins=[plugin],
        disable=QUIET,
        autoload=False,
    )
    return model, trainer


def test_captures_only_on_due_steps_and_at_eval(tmp_path):
    plugin = Wants()
    model, trainer = make(tmp_path, plugin)
    before = hook_counts(model)
    data = loader(classification_data(n=48))  # 6 batches of 8
    trainer.fit(data, epochs=1, eval_loader=loader(classification_data(n=16)))
    due = {"output:0": (8, 16), "grad_output:2": (8, 3)}
    assert plugin.train == [(1, {}), (2, {}), (3, due), (4, {}), (5, {}), (6, due)]
    assert plugin.eval == [{"output:0": (8, 16), "input:2": (8, 16)}] * 2
    assert plugin.seen_hooks == [0] * 6, "hooks are gone by the time on_batch_end runs"
    assert hook_counts(model) == before
    assert model.training


def test_hooks_removed_and_mode_restored_after_an_exception(tmp_path):
    calls = {"n": 0}

    def failing(prediction, targets):
        calls["n"] += 1
        if calls["n"] == 3:  # step 3 is a capture step: its hooks are registered when this raises
            raise ValueError("bad batch")
        return nn.functional.cross_entropy(prediction, targets)

    model, trainer = make(tmp_path, Wants(), failing)
    before = hook_counts(model)
    with pytest.raises(ValueError, match="bad batch"):
        trainer.fit(loader(classification_data(n=48)), epochs=1)
    assert hook_counts(model) == before
    assert model.training


def one_step(hooks, model):
    x = torch.zeros(2, 6)
    hooks.batch_start()
    hooks.batch_end(x, torch.zeros(2, dtype=torch.long), model(x))


def test_the_first_forward_pass_probes_with_every_hook_then_only_due_steps_have_them(tmp_path):
    model = mlp()
    hooks = tbhooks.attach(model, logdir=tmp_path, plugins=[Wants()], disable=QUIET, autoload=False)
    before = hook_counts(model)
    with hooks:
        hooks.batch_start()
        # The run's first forward: every requested hook (two on module 2, one on 0), and the probe on
        # the model and on each requested module.
        assert hook_counts(model) == [(0, 1, 0, 0), (1, 1, 0, 0), (0, 0, 0, 0), (2, 1, 0, 0)]
        model(torch.zeros(2, 6))
        hooks.batch_end(None, None, torch.zeros(2, 3))
        assert hook_counts(model) == before and hooks.run.compiled is False  # eager: all removed
        one_step(hooks, model)  # step 2: nothing due
        hooks.batch_start()  # step 3: the two training requests
        assert hook_counts(model) == [(0, 0, 0, 0), (1, 0, 0, 0), (0, 0, 0, 0), (1, 0, 0, 0)]
    assert hook_counts(model) == before


def test_hooks_removed_when_a_custom_loop_closes_mid_step(tmp_path):
    model = mlp()
    model.eval()  # the user's mode is restored, whatever it was
    hooks = tbhooks.attach(model, logdir=tmp_path, plugins=[Wants()], disable=QUIET, autoload=False)
    before = hook_counts(model)
    hooks.fit_start()
    one_step(hooks, model)  # the first forward pass: the probe
    one_step(hooks, model)
    hooks.batch_start()  # step 3 is a capture step
    assert sum(map(sum, hook_counts(model))) == 2
    model.train()
    hooks.close()
    hooks.close()  # idempotent
    assert hook_counts(model) == before
    assert not model.training


def test_hooks_removed_during_eval_exception(tmp_path):
    model = mlp()
    hooks = tbhooks.attach(model, logdir=tmp_path, plugins=[Wants()], disable=QUIET, autoload=False)
    before = hook_counts(model)
    with pytest.raises(KeyboardInterrupt), hooks:
        one_step(hooks, model)  # the first forward pass: the probe
        hooks.eval_start()
        assert sum(map(sum, hook_counts(model))) == 2
        raise KeyboardInterrupt
    assert hook_counts(model) == before


def test_capture_requests_are_validated(tmp_path):
    with pytest.raises(ValueError, match=r"Capture\(kind=...\) expects one of output, input, grad_output"):
        Capture("0", kind="weights")
    with pytest.raises(ValueError, match=r"every_n_steps=...\) expects an int >= 0"):
        Capture("0", every_n_steps=-1)

    class Unknown:
        @tbhooks.hookimpl
        def on_capture_request(self):
            return [Capture("decoder.fc")]

    hooks = tbhooks.attach(mlp(), logdir=tmp_path, plugins=[Unknown()], disable=QUIET, autoload=False, strict=True)
    with pytest.raises(ValueError, match=r"Capture\(module='decoder.fc'\): no such submodule; known: '', '0'"):
        hooks.fit_start()
    hooks.close()


def test_two_runs_in_one_process_share_no_module_hook(tmp_path):
    shared_model = mlp()
    first = tbhooks.attach(shared_model, logdir=tmp_path / "a", plugins=[Wants()], disable=QUIET, autoload=False)
    second = tbhooks.attach(shared_model, logdir=tmp_path / "b", disable=QUIET, autoload=False)
    with first, second:
        one_step(first, shared_model)  # the first forward pass of each: the probes
        one_step(second, shared_model)
        first.step = second.step = 2
        second.batch_start()  # second asked for nothing: registers nothing
        assert sum(map(sum, hook_counts(shared_model))) == 0
        first.batch_start()
        assert sum(map(sum, hook_counts(shared_model))) == 2
        second.close()  # closing the other run leaves first's hooks alone
        assert sum(map(sum, hook_counts(shared_model))) == 2
    assert sum(map(sum, hook_counts(shared_model))) == 0


def test_two_plugins_asking_for_one_tensor_keep_their_own_schedules(tmp_path):
    class Asks:
        def __init__(self, name, capture):
            self.name, self.capture, self.steps, self.evals = name, capture, [], 0

        @tbhooks.hookimpl
        def on_capture_request(self):
            return [self.capture]

        @tbhooks.hookimpl
        def on_batch_end(self, step, captured):
            if self.capture.key in captured:
                self.steps.append(step)

        @tbhooks.hookimpl
        def on_eval_batch_end(self, captured):
            self.evals += self.capture.key in captured

    every_two = Asks("every_two", Capture("0", every_n_steps=2))
    at_eval = Asks("at_eval", Capture("0", at_eval=True))
    every_three = Asks("every_three", Capture("0", every_n_steps=3))
    model = mlp()
    trainer = tbhooks.Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        nn.functional.cross_entropy,
        logdir=tmp_path,
        plugins=[every_two, at_eval, every_three],
        disable=QUIET,
        autoload=False,
    )
    seen_hooks = []
    model[0].register_forward_pre_hook(lambda m, a: seen_hooks.append(len(m._forward_hooks)))
    trainer.fit(loader(classification_data(n=48)), epochs=1, eval_loader=loader(classification_data(n=8)))
    # The captured dict is shared by every plugin of the step: both see the tensor on steps 2, 3, 4 and 6.
    assert every_two.steps == every_three.steps == [2, 3, 4, 6]
    assert at_eval.evals == 1
    # Step 1 is the probe (every requested hook, shared); then one hook per due step, never two for one tensor.
    assert seen_hooks == [1, 1, 1, 1, 0, 1, 1]


def test_frozen_submodules_stay_frozen_after_fit(tmp_path):
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    model[1].eval()  # the user froze the BatchNorm statistics
    trainer = tbhooks.Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        nn.functional.cross_entropy,
        logdir=tmp_path,
        disable=QUIET,
        autoload=False,
    )
    trainer.fit(loader(classification_data(n=16)), epochs=1, eval_loader=loader(classification_data(n=8)))
    assert [m.training for m in model] == [True, False, True, True]
