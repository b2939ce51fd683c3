"""The graph plugin: dict/tuple outputs and keyword inputs trace; untraceable models fall back to text."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from torch import nn

import tbhooks
from tbhooks import TbhooksWarning
from tbhooks.default_plugins.graph import Graph
from tbhooks.demo import Net  # the tutorial's network
from tbhooks.manager import BUILTIN_PLUGINS
from tbhooks.testing import read_events

OTHERS = [name for name in BUILTIN_PLUGINS if name != "graph"]
TEXT = "graph/summary/text_summary"  # add_text stores under <tag>/text_summary


def node_names(logdir: Path) -> list[str]:
    """The node names of the GraphDef TensorBoard reads from ``logdir``."""
    return [node.name for node in read_events(logdir).accumulator.Graph().node]


def graph_events(logdir: Path) -> int:
    """How many graph events the event files in ``logdir`` hold (EventAccumulator keeps only the last)."""
    count = 0
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        count += sum(1 for event in EventFileLoader(str(path)).Load() if event.HasField("graph_def"))
    return count


def call(model: nn.Module, inputs: object) -> object:
    return model(**inputs) if isinstance(inputs, dict) else model(inputs)


def train(
    model: nn.Module,
    logdir: Path,
    batches: list[object],
    plugin: Graph | None = None,
    modes: list[tuple[bool, ...]] | None = None,
    **options: object,
) -> None:
    """A hand-written loop over ``batches`` with only the graph plugin registered.

    ``modes`` collects every module's training flag after each ``batch_end``
    (the core resets them all when the run closes, so they are read in the loop).
    """
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with tbhooks.attach(
        model,
        logdir=logdir,
        optimizer=optimizer,
        plugins=[plugin or Graph()],
        disable=OTHERS,
        autoload=False,
        **options,
    ) as hooks:
        hooks.epoch_start()
        for inputs in batches:
            hooks.batch_start()
            outputs = call(model, inputs)
            prediction = tbhooks.hooks.select_output(outputs, options.get("output"))
            loss = prediction.square().mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            hooks.batch_end(inputs, None, outputs, loss)
            if modes is not None:
                modes.append(tuple(module.training for module in model.modules()))
        hooks.epoch_end()


class DictNet(nn.Module):
    """Dict outputs (with a non-tensor entry) and a BatchNorm the user froze in eval mode."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Linear(4, 8)
        self.norm = nn.BatchNorm1d(8)
        self.classifier = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> dict[str, object]:
        features = torch.relu(self.norm(self.encoder(x)))
        return {"logits": self.classifier(features), "features": features, "name": "dict-net"}


class TupleNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Linear(4, 6)
        self.head_a = nn.Linear(6, 2)
        self.head_b = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        h = torch.tanh(self.trunk(x))
        return self.head_a(h), [self.head_b(h), h]


class KwargsNet(nn.Module):
    """Takes keyword arguments only: the Trainer passes a dict batch as ``model(**inputs)``."""

    def __init__(self) -> None:
        super().__init__()
        self.image_proj = nn.Linear(4, 3)
        self.meta_proj = nn.Linear(2, 3)

    def forward(self, *, image: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        return self.image_proj(image) + self.meta_proj(meta)


class Box:
    """A result type the tracer cannot handle (not a tensor, tuple, dict or dataclass)."""

    def __init__(self, logits: torch.Tensor) -> None:
        self.logits = logits


class Untraceable(nn.Module):
    """Branches on a value read from the data, and returns a plain object."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.norm = nn.BatchNorm1d(3)

    def forward(self, x: torch.Tensor) -> Box:
        h = self.fc(x)
        if x.sum().item() > 0:
            h = h * 2
        return Box(self.norm(h))


class RaisesWhenTraced(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_tracing():
            raise RuntimeError("this model refuses to be traced")
        return self.fc(x)


class DataDependent(nn.Module):
    """Control flow on a tensor's value: traces (one branch), with a TracerWarning torch would emit."""

    def __init__(self) -> None:
        super().__init__()
        self.small = nn.Linear(4, 3)
        self.large = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.small(x) if float(x.abs().max()) < 100 else self.large(x)


def batches(n: int = 3, size: int = 5) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(size, 4, generator=generator) for _ in range(n)]


def test_dict_outputs_are_traced_and_modes_restored(tmp_path: Path) -> None:
    model = DictNet()
    model.norm.eval()  # frozen by the user: must stay in eval mode after the trace
    seen: list[tuple[bool, bool]] = []

    class Watch:
        name = "watch"

        @tbhooks.hookimpl(trylast=True)
        def on_batch_end(self) -> None:  # runs after graph's: sees the modes the trace left
            seen.append((model.training, model.norm.training))

    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    plugins = [Graph(), Watch()]
    with tbhooks.attach(
        model, logdir=tmp_path, optimizer=optimizer, plugins=plugins, disable=OTHERS, autoload=False, output="logits"
    ) as hooks:
        hooks.epoch_start()
        for x in batches():
            hooks.batch_start()
            outputs = model(x)
            loss = outputs["logits"].square().mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            hooks.batch_end(x, None, outputs, loss)
            assert model.training and not model.norm.training
        hooks.epoch_end()

    assert seen == [(True, False)] * 3
    events = read_events(tmp_path)
    assert events.graph
    names = node_names(tmp_path)
    for layer in ("Linear[encoder]", "BatchNorm1d[norm]", "Linear[classifier]"):
        assert any(f"DictNet[model]/{layer}/" in name for name in names), (layer, names)
    assert graph_events(tmp_path) == 1
    assert TEXT not in events.texts


def test_tuple_outputs_with_nested_list_are_traced(tmp_path: Path) -> None:
    train(TupleNet(), tmp_path, batches())
    names = node_names(tmp_path)
    for layer in ("Linear[trunk]", "Linear[head_a]", "Linear[head_b]"):
        assert any(f"TupleNet[model]/{layer}/" in name for name in names), (layer, names)
    # aten::tanh of the trunk: the graph holds operations, not just the layer list.
    ops = {node.op for node in read_events(tmp_path).accumulator.Graph().node}
    assert "aten::tanh" in ops and "aten::linear" in ops


def test_dict_inputs_through_the_trainer_are_passed_as_keywords(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(1)
    data = [
        ({"image": torch.randn(4, generator=generator), "meta": torch.randn(2, generator=generator)}, i % 3)
        for i in range(12)
    ]
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    model = KwargsNet()
    trainer = tbhooks.Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        nn.functional.cross_entropy,
        logdir=tmp_path,
        device="cpu",
        progress=False,
        disable=OTHERS,
        autoload=False,
    )
    trainer.fit(loader, epochs=1)
    names = node_names(tmp_path)
    # Both keyword arguments reached the model: each projection is in the graph.
    assert any("KwargsNet[model]/Linear[image_proj]/" in name for name in names), names
    assert any("KwargsNet[model]/Linear[meta_proj]/" in name for name in names), names
    assert sum(1 for name in names if name.startswith("input/")) == 2


class Pair(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.left = nn.Linear(4, 3)
        self.right = nn.Linear(2, 3)

    def forward(self, x: torch.Tensor, extra: torch.Tensor, scale: float) -> torch.Tensor:
        return (self.left(x) + self.right(extra)) * scale


def test_tuple_inputs_are_positional_and_constants_pass_through(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(2)
    model = Pair()
    inputs = (torch.randn(5, 4, generator=generator), torch.randn(5, 2, generator=generator), 3.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with tbhooks.attach(model, logdir=tmp_path, optimizer=optimizer, disable=OTHERS, autoload=False) as hooks:
        hooks.epoch_start()
        hooks.batch_start()
        outputs = model(*inputs)
        hooks.batch_end(inputs, None, outputs)
    graph = read_events(tmp_path).accumulator.Graph()
    names = [node.name for node in graph.node]
    assert any("Pair[model]/Linear[left]/" in name for name in names)
    assert any("Pair[model]/Linear[right]/" in name for name in names)
    assert sum(1 for name in names if name.startswith("input/")) == 2  # the float is a constant, not an input
    # The multiplication by the constant scale is part of the graph.
    assert {"aten::mul", "aten::add"} <= {node.op for node in graph.node}


def test_data_dependent_control_flow_traces_without_warnings(tmp_path: Path) -> None:
    # filterwarnings=error: the TracerWarning and the jit deprecation warning would fail this test.
    train(DataDependent(), tmp_path, batches(n=2))
    names = node_names(tmp_path)
    assert any("Linear[small]" in name for name in names)
    assert not any("Linear[large]" in name for name in names)


def test_untraceable_model_gets_text_summary_and_one_warning(tmp_path: Path) -> None:
    model = Untraceable()
    model.norm.eval()
    modes: list[tuple[bool, ...]] = []
    with pytest.warns(TbhooksWarning, match="graph could not trace Untraceable") as record:
        train(model, tmp_path, batches(n=4), modes=modes, output=lambda out: out.logits)
    assert len(record) == 1
    # model, fc, norm: the trace failed in eval mode, and each flag came back as it was.
    assert modes == [(True, True, False)] * 4

    events = read_events(tmp_path)
    assert not events.graph
    (text,) = events.texts[TEXT]
    total = sum(p.numel() for p in model.parameters())  # 4*3 + 3 + 3 + 3
    assert total == 21
    assert f"**Untraceable**: {total:,} parameters ({total:,} trainable, 0 frozen)" in text
    assert "```\nUntraceable(\n  (fc): Linear(in_features=4, out_features=3, bias=True)" in text
    assert "holding no tensor" in text


def test_untraceable_without_text_fallback_only_warns(tmp_path: Path) -> None:
    model = RaisesWhenTraced()
    modes: list[tuple[bool, ...]] = []
    with pytest.warns(TbhooksWarning, match="refuses to be traced") as record:
        train(model, tmp_path, batches(n=3), plugin=Graph(text_fallback=False), modes=modes)
    assert len(record) == 1
    assert "instead" not in str(record[0].message)
    events = read_events(tmp_path)
    assert not events.graph and not events.texts
    assert modes == [(True, True)] * 3


def test_graph_once_per_fit(tmp_path: Path) -> None:
    plugin = Graph()
    model = TupleNet()
    train(model, tmp_path, batches(n=3), plugin=plugin)
    train(model, tmp_path, batches(n=2), plugin=plugin)
    assert graph_events(tmp_path) == 2


def test_only_rank_zero_traces(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    class Counting(TupleNet):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
            calls.append(torch.jit.is_tracing())
            return super().forward(x)

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    train(Counting(), tmp_path, batches(n=3))
    assert calls == [False, False, False]  # the three training batches, no trace
    assert graph_events(tmp_path) == 0


def test_the_trace_runs_after_the_first_batch_and_leaves_training_alone(tmp_path: Path) -> None:
    calls = []

    class Counting(TupleNet):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
            calls.append((torch.jit.is_tracing(), self.training, torch.is_grad_enabled()))
            return super().forward(x)

    train(Counting(), tmp_path, batches(n=3))
    training = [call for call in calls if call[1:] == (True, True)]
    graphing = [call for call in calls if call[1:] != (True, True)]
    assert training == [(False, True, True)] * 3  # the three training batches, untouched
    # add_graph's calls (the trace and its check) run in eval mode without autograd, after the first batch.
    assert any(call[0] for call in graphing) and all(call[1:] == (False, False) for call in graphing)
    assert calls[0] == (False, True, True) and calls[1][0]
    assert graph_events(tmp_path) == 1


def test_options_are_validated() -> None:
    with pytest.raises(TypeError, match=r"Graph\(text_fallback=...\) expects True or False, got str"):
        Graph(text_fallback="yes")  # type: ignore[arg-type]


def test_the_tutorial_network_shows_its_layers_and_operations(tmp_path: Path) -> None:
    torch.manual_seed(0)
    train(Net(), tmp_path, [torch.randn(4, 1, 28, 28)])
    graph = read_events(tmp_path).accumulator.Graph()
    scopes = {node.name.rsplit("/", 1)[0] for node in graph.node}
    for layer in ("Conv2d[conv1]", "Conv2d[conv2]", "MaxPool2d[pool]", "Linear[fc1]", "Linear[fc2]", "Linear[fc3]"):
        assert f"TracedModel/Net[model]/{layer}" in scopes, (layer, sorted(scopes))
    ops = {node.op for node in graph.node}
    assert {"aten::_convolution", "aten::relu", "aten::max_pool2d", "aten::linear"} <= ops, ops
