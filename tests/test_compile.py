"""torch.compile: the graph of the original module, captures holding real values, at most one more compilation."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import tbhooks
from tbhooks import TbhooksWarning
from tbhooks.default_plugins.histograms import Histograms
from tbhooks.manager import BUILTIN_PLUGINS
from tbhooks.testing import read_events

OTHERS = [name for name in BUILTIN_PLUGINS if name not in ("histograms", "graph")]


@pytest.fixture(autouse=True)
def fresh_compiler():
    """Each test starts with no compiled code: torch gives up compiling a function recompiled too often,
    and this file compiles the same forward in many tests."""
    torch.compiler.reset()
    yield
    torch.compiler.reset()


class Counting:
    """A torch.compile backend that counts the graphs it is given and runs them as they are."""

    def __init__(self) -> None:
        self.graphs = 0

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list[torch.Tensor]):
        self.graphs += 1
        return gm.forward


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 16)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def batches(steps: int = 10) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [
        (torch.randn(8, 6, generator=generator), torch.randint(0, 3, (8,), generator=generator)) for _ in range(steps)
    ]


def compiled(way: str, backend: Counting) -> tuple[nn.Module, nn.Module]:
    """``(the module to call, the original module)``, compiled one of the two ways."""
    torch.manual_seed(0)
    model = Net()
    if way == "wrapper":
        return torch.compile(model, backend=backend), model
    model.compile(backend=backend)
    return model, model


def train(call: nn.Module, model: nn.Module, data, hooks: tbhooks.Hooks | None, record: dict | None = None) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    if hooks is not None:
        hooks.epoch_start()
    for x, y in data:
        if record is not None:
            record[len(record) + 1] = (copy.deepcopy(model.state_dict()), x)  # before this step's forward
        if hooks is not None:
            hooks.batch_start()
        optimizer.zero_grad()
        out = call(x)
        loss = nn.functional.cross_entropy(out, y)
        loss.backward()
        optimizer.step()
        if hooks is not None:
            hooks.batch_end(x, y, out, loss)


@pytest.mark.parametrize("way", ["wrapper", "in_place"])
@pytest.mark.parametrize("every", [1, 3, 5])
def test_captures_hold_real_values_with_at_most_one_more_compilation(tmp_path, way, every):
    bare = Counting()
    train(*compiled(way, bare), batches(), None)

    backend = Counting()
    call, model = compiled(way, backend)
    record: dict[int, tuple[dict, torch.Tensor]] = {}
    plugin = Histograms(every_n_steps=every, activations="all", weights=False, grads=False)
    with tbhooks.attach(call, logdir=tmp_path, plugins=[plugin], disable=OTHERS, autoload=False) as hooks:
        train(call, model, batches(), hooks, record)
        assert hooks.run.model is model and hooks.run.compiled is True
    assert backend.graphs <= bare.graphs + 1, (backend.graphs, bare.graphs)

    events = read_events(tmp_path)
    assert set(events.histograms) == {"activations/fc1", "activations/act", "activations/fc2"}
    eager = Net()
    for tag, histograms in events.histograms.items():
        assert [h.step for h in histograms] == list(range(every, 11, every)), tag
        for event in histograms:
            # The activation recomputed eagerly from the parameters and inputs of that step.
            state, x = record[event.step]
            eager.load_state_dict(state)
            with torch.no_grad():
                outputs = {"fc1": eager.fc1(x)}
                outputs["act"] = eager.act(outputs["fc1"])
                outputs["fc2"] = eager.fc2(outputs["act"])
            expected, value = outputs[tag.split("/")[1]], event.histogram_value
            assert value.num == expected.numel()
            assert value.min == pytest.approx(expected.min().item(), abs=1e-6)
            assert value.max == pytest.approx(expected.max().item(), abs=1e-6)
            assert value.sum == pytest.approx(expected.double().sum().item(), abs=1e-4)


@pytest.mark.parametrize("way", ["wrapper", "in_place"])
def test_the_graph_is_the_original_modules(tmp_path, way):
    backend = Counting()
    call, model = compiled(way, backend)
    with tbhooks.attach(call, logdir=tmp_path, plugins=[], disable=[*OTHERS, "histograms"], autoload=False) as hooks:
        train(call, model, batches(2), hooks)
    names = [node.name for node in read_events(tmp_path).accumulator.Graph().node]
    for layer in ("Linear[fc1]", "ReLU[act]", "Linear[fc2]"):
        assert any(layer in name for name in names), (layer, names)
    assert backend.graphs == 1  # the trace ran the module eagerly: no compilation of its own


def test_output_gradients_are_captured_under_compile(tmp_path):
    class Wants:
        name = "wants"

        def __init__(self) -> None:
            self.grads: dict[int, torch.Tensor] = {}

        @tbhooks.hookimpl
        def on_capture_request(self):
            return [tbhooks.Capture("fc1", "grad_output", every_n_steps=2)]

        def batch_end_due(self, step: int) -> bool:
            return step % 2 == 0

        @tbhooks.hookimpl
        def on_batch_end(self, step, captured):
            self.grads[step] = captured["grad_output:fc1"]

    backend = Counting()
    call, model = compiled("wrapper", backend)
    plugin = Wants()
    record: dict[int, tuple[dict, torch.Tensor]] = {}
    data = batches(4)
    with tbhooks.attach(call, logdir=tmp_path, plugins=[plugin], disable=[*OTHERS, "histograms", "graph"]) as hooks:
        train(call, model, data, hooks, record)
    assert sorted(plugin.grads) == [2, 4]
    eager = Net()
    for step, grad in plugin.grads.items():
        state, x = record[step]
        eager.load_state_dict(state)
        hidden = eager.fc1(x)
        hidden.retain_grad()
        nn.functional.cross_entropy(eager.fc2(eager.act(hidden)), data[step - 1][1]).backward()
        assert torch.allclose(grad, hidden.grad, atol=1e-6)


def test_a_model_compiled_and_called_before_attach_still_captures(tmp_path):
    # torch recompiles when hooks appear on a module it compiled without them.
    backend = Counting()
    call, model = compiled("in_place", backend)
    call(torch.randn(2, 6))
    plugin = Histograms(every_n_steps=2, activations=["fc1"], weights=False, grads=False)
    with tbhooks.attach(call, logdir=tmp_path, plugins=[plugin], disable=OTHERS, autoload=False) as hooks:
        train(call, model, batches(4), hooks)
    assert [h.step for h in read_events(tmp_path).histograms["activations/fc1"]] == [2, 4]


def test_hooks_that_never_run_are_reported_not_silently_empty(tmp_path):
    # A loop that calls forward directly never runs the model's own hooks: a capture of the model's
    # output cannot work, and the plugin and module are named once.
    class WantsTheOutput:
        name = "wants"

        @tbhooks.hookimpl
        def on_capture_request(self):
            return [tbhooks.Capture("", "output", every_n_steps=1)]

    torch.manual_seed(0)
    model = Net()
    plugins = [WantsTheOutput()]
    with pytest.warns(TbhooksWarning, match=r"wants asked for the output of module ''.*Attach before") as seen:
        with tbhooks.attach(model, logdir=tmp_path, plugins=plugins, disable=[*OTHERS, "histograms"]) as hooks:
            train(model.forward, model, batches(3), hooks)
    assert len(seen) == 1


def test_a_loop_that_calls_a_submodule_still_captures_the_submodules(tmp_path):
    torch.manual_seed(0)
    model = Net()
    plugin = Histograms(every_n_steps=1, activations=["fc1"], weights=False, grads=False)
    with tbhooks.attach(model, logdir=tmp_path, plugins=[plugin], disable=OTHERS, autoload=False) as hooks:
        train(model.forward, model, batches(3), hooks)  # the model's own hooks never run; fc1's do
    assert [h.step for h in read_events(tmp_path).histograms["activations/fc1"]] == [1, 2, 3]


def test_the_trainer_compiles_in_place(tmp_path):
    backend = Counting()
    torch.manual_seed(0)
    model = Net()
    trainer = tbhooks.Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        nn.functional.cross_entropy,
        logdir=tmp_path,
        compile={"backend": backend},
        plugins=[Histograms(every_n_steps=2, activations=["fc1"])],
        disable=OTHERS,
        autoload=False,
    )
    trainer.fit(batches(4), epochs=1, eval_loader=batches(2))
    events = read_events(tmp_path)
    assert [h.step for h in events.histograms["activations/fc1"]] == [2, 4]
    assert events.graph and trainer.hooks.run.compiled is True
    assert 1 <= backend.graphs <= 3  # training, eval mode, and the capturing variant


def test_a_second_fit_on_the_compiled_model_compiles_nothing_more(tmp_path):
    # The hooks' guarded state is the same in each run: a later fit reuses the graphs of the first.
    backend = Counting()
    torch.manual_seed(0)
    model = Net()
    trainer = tbhooks.Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        nn.functional.cross_entropy,
        logdir=tmp_path,
        compile={"backend": backend},
        plugins=[Histograms(every_n_steps=2, activations=["fc1"])],
        disable=OTHERS,
        autoload=False,
    )
    trainer.fit(batches(4), epochs=1, eval_loader=batches(2))
    first = backend.graphs
    trainer.fit(batches(4), epochs=1, eval_loader=batches(2))
    assert backend.graphs == first
    assert [h.step for h in read_events(tmp_path).histograms["activations/fc1"]] == [2, 4, 6, 8]


def test_compile_without_torch_compile_is_a_clear_error(monkeypatch):
    monkeypatch.delattr(torch, "compile")
    model = Net()
    with pytest.raises(ValueError, match=r"compile=True expects torch.compile \(torch 2.0 or newer\)"):
        tbhooks.Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.functional.mse_loss, compile=True)
