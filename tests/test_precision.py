"""Mixed precision: plugins see unscaled gradients and losses, and low-precision tensors are handled."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import tbhooks
from tbhooks.default_plugins.embeddings import Embeddings
from tbhooks.default_plugins.histograms import Histograms
from tbhooks.default_plugins.scalars import Scalars
from tbhooks.testing import read_events


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.flat = nn.Flatten()
        self.fc1 = nn.Linear(4 * 6 * 6, 16)
        self.fc2 = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(self.flat(torch.relu(self.conv(x))))))


def image_batches(steps: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [
        (torch.rand(8, 1, 8, 8, generator=generator), torch.randint(0, 3, (8,), generator=generator))
        for _ in range(steps)
    ]


class Seen:
    """Records the loss it is handed and the dtypes of what reaches the plugins."""

    name = "seen"

    def __init__(self) -> None:
        self.losses: dict[int, float] = {}
        self.dtypes: set[torch.dtype] = set()

    @tbhooks.hookimpl
    def on_batch_end(self, step, loss, outputs):
        self.losses[step] = float(loss)
        self.dtypes.add(outputs.dtype)

    @tbhooks.hookimpl
    def on_eval(self, outputs):
        self.dtypes.add(outputs.dtype)


def test_with_a_grad_scaler_plugins_see_unscaled_gradients_and_loss(tmp_path):
    # A fused optimizer unscales p.grad in its own step only when it takes the step: on a step whose gradients
    # overflowed (step 2 here, made to by a parameter outside the model) p.grad is left scaled, unless the
    # Trainer unscales it first for the plugins.
    torch.manual_seed(0)
    model = ConvNet()
    seen = Seen()
    overflow = nn.Parameter(torch.zeros(1))
    backward_calls = []

    def overflowing_on_step_2(grad: torch.Tensor) -> torch.Tensor:
        backward_calls.append(1)
        return torch.full_like(grad, float("inf")) if len(backward_calls) == 2 else grad

    overflow.register_hook(overflowing_on_step_2)
    trainer = tbhooks.Trainer(
        model,
        torch.optim.Adam([*model.parameters(), overflow], lr=0.05, fused=True),
        lambda prediction, targets: nn.functional.cross_entropy(prediction, targets) + 0 * overflow.sum(),
        logdir=tmp_path,
        device="cpu",
        precision="16",
        plugins=[seen, Histograms(every_n_steps=2, weights=False), Scalars(every_n_steps=2)],
        disable=["graph", "images", "embeddings", "pr_curves", "hparams"],
        autoload=False,
    )
    assert trainer.scaler is not None and trainer.scaler.get_scale() == 65536.0  # a large scale
    expected: dict[str, list[torch.Tensor]] = {}
    for name, parameter in model.named_parameters():
        # During backward the gradient is the scaled one: the test unscales it itself.
        parameter.register_hook(
            lambda g, name=name: expected.setdefault(name, []).append(g / trainer.scaler.get_scale())
        )
    states = []

    def recording(batches):
        for batch in batches:
            states.append(copy.deepcopy(model.state_dict()))
            yield batch

    data = image_batches(4)
    trainer.fit(recording(data), epochs=1)
    assert trainer.scaler.get_scale() == 32768.0  # step 2 overflowed and was skipped
    assert all(torch.equal(states[1][k], states[2][k]) for k in states[1]) and len(backward_calls) == 4

    events = read_events(tmp_path)
    for name in expected:
        logged = {event.step: event.histogram_value for event in events.histograms[f"grads/{name}"]}
        assert sorted(logged) == [2, 4]
        for step, value in logged.items():
            grad = expected[name][step - 1]
            assert value.num == grad.numel()
            assert value.min == pytest.approx(grad.min().item(), rel=1e-6)
            assert value.max == pytest.approx(grad.max().item(), rel=1e-6)
            assert value.sum == pytest.approx(grad.double().sum().item(), rel=1e-5, abs=1e-9)
    # train/loss: the unscaled loss of each logging step, recomputed from that step's parameters.
    again = ConvNet()
    for step, value in zip(events.steps("train/loss"), events.values("train/loss"), strict=True):
        again.load_state_dict(states[step - 1])
        inputs, targets = data[step - 1]
        with torch.autocast("cpu", dtype=torch.float16):
            loss = nn.functional.cross_entropy(again(inputs), targets)
        assert value == pytest.approx(loss.item(), rel=1e-6) == pytest.approx(seen.losses[step], rel=1e-6)
        assert value < 5  # not multiplied by the scale


def test_bfloat16_tensors_reach_every_plugin_and_are_handled(tmp_path):
    torch.manual_seed(0)
    model = ConvNet()
    seen = Seen()
    trainer = tbhooks.Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.05),
        nn.functional.cross_entropy,
        logdir=tmp_path,
        device="cpu",
        precision="bf16",
        class_names=["a", "b", "c"],
        plugins=[seen, Histograms(every_n_steps=2, activations="all"), Scalars(every_n_steps=2), Embeddings()],
        autoload=False,
    )
    metrics = trainer.fit(image_batches(4), epochs=1, eval_loader=image_batches(2, seed=1))
    assert seen.dtypes == {torch.bfloat16}
    assert trainer.hooks.faults == {}
    events = read_events(tmp_path)
    activation = events.histograms["activations/fc2"][-1].histogram_value  # bf16 outputs, binned as floats
    assert activation.num == 8 * 3 and sum(activation.bucket) == 24
    assert set(events.pr_curves) == {"pr_curves/a", "pr_curves/b", "pr_curves/c"}
    assert events.images["images/inputs"] and events.graph
    assert (tmp_path / "projector_config.pbtxt").is_file()
    assert events.values("eval/accuracy")[0] >= 0
    # The logged accuracy is the returned one, and that of the trained model on the evaluation batches.
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        right = sum(int((model(x).argmax(1) == y).sum()) for x, y in image_batches(2, seed=1))
    assert events.values("eval/accuracy") == [pytest.approx(metrics["accuracy"])] == [pytest.approx(right / 16)]


@pytest.mark.parametrize("precision", ["fp16", 16, "64", None])
def test_an_unknown_precision_is_a_clear_error(precision):
    model = ConvNet()
    with pytest.raises(ValueError, match=r"precision expects '32', 'bf16' or '16', got"):
        tbhooks.Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.functional.mse_loss, precision=precision)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_low_precision_model_is_logged_from_upcast_values(tmp_path, dtype):
    # Parameters, inputs and outputs all in dtype: each plugin upcasts on the device what it needs.
    torch.manual_seed(0)
    model = ConvNet().to(dtype)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    (x, y), (ex, ey) = image_batches(1)[0], image_batches(1, seed=2)[0]
    x, ex = x.to(dtype), ex.to(dtype)
    plugins = [Histograms(every_n_steps=1), Embeddings(), Scalars(every_n_steps=1)]
    with tbhooks.attach(
        model, logdir=tmp_path, optimizer=optimizer, plugins=plugins, class_names=["a", "b", "c"]
    ) as hooks:
        hooks.epoch_start()
        hooks.batch_start()
        out = model(x)
        loss = nn.functional.cross_entropy(out.float(), y)
        loss.backward()
        optimizer.step()
        hooks.batch_end(x, y, out, loss)
        weight = model.fc2.weight.detach().float().clone()
        hooks.epoch_end()
        hooks.eval_start()
        with torch.no_grad():
            scores = model(ex)
            hooks.eval_batch(ex, ey, scores)
        hooks.eval_end()
        assert hooks.faults == {}
    events = read_events(tmp_path)
    value = events.histograms["weights/fc2.weight"][0].histogram_value
    assert (value.num, value.min, value.max) == (weight.numel(), weight.min().item(), weight.max().item())
    assert value.bucket == torch.histc(weight, bins=64).tolist()
    # The PR curve of class "a": at threshold 0 every sample is a positive prediction.
    [(_, table)] = events.pr_curves["pr_curves/a"]
    assert table[0, 0] + table[1, 0] == 8 and table[0, 0] == int((ey == 0).sum())
    assert events.images["images/inputs"][0].width > 8
    assert (tmp_path / "projector_config.pbtxt").is_file()
