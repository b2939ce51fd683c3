"""The histograms plugin and its one binning path: bucket counts checked against torch.histc."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from torch import nn

import tbhooks
from tbhooks import TbhooksWarning
from tbhooks.default_plugins import histograms as histograms_module
from tbhooks.default_plugins.histograms import DeviceHistogram, Histograms, device_histogram
from tbhooks.errors import PluginFaultWarning
from tbhooks.hooks import Hooks
from tbhooks.manager import BUILTIN_PLUGINS
from tbhooks.testing import read_events

OTHERS = [name for name in BUILTIN_PLUGINS if name != "histograms"]
NAN, INF = float("nan"), float("inf")


# -- the binning, on known data ---------------------------------------------------


@pytest.fixture(params=["whole", "chunked"])
def chunks(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test once with whole tensors and once in chunks of 97 elements (the last one short)."""
    if request.param == "chunked":
        monkeypatch.setattr(histograms_module, "CHUNK", 97)
    return request.param


def test_arange_by_hand(chunks: str) -> None:
    # 0..9 in 3 buckets of width 3: [0,3) [3,6) [6,9]; the maximum goes in the last bucket.
    h = device_histogram(torch.arange(10.0), bins=3)
    assert h == DeviceHistogram(
        min=0.0,
        max=9.0,
        num=10,
        sum=45.0,
        sum_squares=285.0,
        bucket_limits=[3.0, 6.0, 9.0],
        bucket_counts=[3.0, 3.0, 4.0],
        nonfinite=0,
    )


def test_integer_tensor_by_hand(chunks: str) -> None:
    h = device_histogram(torch.tensor([0, 1, 1, 2, 2, 2, 3, 3, 3, 3]), bins=4)
    assert h.bucket_counts == [1.0, 2.0, 3.0, 4.0]
    assert h.bucket_limits == pytest.approx([0.75, 1.5, 2.25, 3.0])
    assert (h.min, h.max, h.num, h.sum, h.sum_squares) == (0.0, 3.0, 10, 20.0, 50.0)


@pytest.mark.parametrize("bins", [1, 7, 64])
def test_matches_torch_histc_on_random_data(bins: int, chunks: str) -> None:
    x = torch.randn(50, 40, generator=torch.Generator().manual_seed(bins)) * 3 + 1
    h = device_histogram(x, bins=bins)
    assert h.bucket_counts == torch.histc(x, bins=bins).tolist()
    assert sum(h.bucket_counts) == h.num == x.numel()
    # Right edges of torch.histc's buckets: the first bucket starts at min.
    edges = torch.linspace(x.min().item(), x.max().item(), bins + 1, dtype=torch.float64)
    assert h.bucket_limits == pytest.approx(edges[1:].tolist(), rel=0, abs=1e-5)
    assert h.bucket_limits[-1] == h.max
    assert (h.min, h.max) == (x.min().item(), x.max().item())
    assert h.sum == pytest.approx(x.double().sum().item(), rel=1e-6)
    assert h.sum_squares == pytest.approx(x.double().square().sum().item(), rel=1e-6)


def test_values_on_bucket_edges_land_where_histc_puts_them() -> None:
    # Evenly spaced values put many of them exactly on bucket edges, where the
    # order of the float operations decides the bucket.
    for n in range(3, 40):
        for scale in (0.1, 1.1):
            x = torch.arange(n, dtype=torch.float32) * scale
            for bins in (3, 6, 12):
                assert device_histogram(x, bins=bins).bucket_counts == torch.histc(x, bins=bins).tolist(), (n, scale)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_linspace_and_integer_data_match_histc(dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(6)
    for bins in (64, 100):
        for x in (
            torch.linspace(-3.3, 12.9, 6401, dtype=dtype),
            torch.linspace(0.0, 1.0, bins + 1, dtype=dtype),
            torch.randint(-50, 51, (3000,), generator=generator).to(dtype),
            torch.randint(0, 7, (500,), generator=generator).to(dtype),
        ):
            assert device_histogram(x, bins=bins).bucket_counts == torch.histc(x, bins=bins).tolist(), (bins, x[:3])


def test_constant_tensor_is_widened_like_histc(chunks: str) -> None:
    x = torch.full((7,), 2.5)
    h = device_histogram(x, bins=4)
    assert h.bucket_counts == torch.histc(x, bins=4).tolist() == [0.0, 0.0, 7.0, 0.0]
    assert (h.min, h.max, h.num) == (2.5, 2.5, 7)
    assert h.bucket_limits == pytest.approx([2.0, 2.5, 3.0, 3.5])


def test_nonfinite_values_are_counted_out(chunks: str) -> None:
    x = torch.tensor([1.0, NAN, 2.0, INF, -INF, 3.0, 4.0])
    h = device_histogram(x, bins=3)
    finite = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert h.bucket_counts == torch.histc(finite, bins=3).tolist()
    assert (h.min, h.max, h.num, h.sum, h.sum_squares, h.nonfinite) == (1.0, 4.0, 4, 10.0, 30.0, 3)
    nothing = device_histogram(torch.tensor([NAN, INF]), bins=3)
    assert (nothing.num, nothing.nonfinite, sum(nothing.bucket_counts)) == (0, 2, 0.0)


def test_sums_are_taken_in_float64() -> None:
    # 2**24 + 1 is not a float32: a float32 sum of these would lose the ones.
    x = torch.tensor([16777216.0] + [1.0] * 100)
    h = device_histogram(x, bins=2)
    assert h.sum == 16777216.0 + 100
    assert h.sum_squares == 16777216.0**2 + 100


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64, torch.int32])
def test_low_precision_double_and_integer_inputs(dtype: torch.dtype) -> None:
    x = (torch.randn(300, generator=torch.Generator().manual_seed(3)) * 20).to(dtype)
    h = device_histogram(x, bins=16)
    reference = x.double() if dtype in (torch.float64, torch.int32) else x.float()
    assert h.bucket_counts == torch.histc(reference, bins=16).tolist()
    assert h.sum == pytest.approx(x.double().sum().item(), rel=1e-9)


def test_device_histogram_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="empty tensor"):
        device_histogram(torch.empty(0, 3))
    with pytest.raises(ValueError, match=r"device_histogram\(bins=...\) expects an int >= 1, got 0"):
        device_histogram(torch.ones(3), bins=0)
    with pytest.raises(TypeError, match=r"device_histogram\(bins=...\) expects an int, got float"):
        device_histogram(torch.ones(3), bins=2.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="expects a tensor, got list"):
        device_histogram([1.0, 2.0])  # type: ignore[arg-type]


# -- the plugin ----------------------------------------------------------------


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 16)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def train_step(hooks: Hooks, model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor):
    hooks.batch_start()
    out = model(x)
    loss = nn.functional.cross_entropy(out, y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    hooks.batch_end(x, y, out, loss)


def histogram(logdir: Path, tag: str) -> dict[int, object]:
    """step -> HistogramValue of ``tag`` as TensorBoard reads it."""
    return {event.step: event.histogram_value for event in read_events(logdir).histograms[tag]}


def assert_matches(value: object, tensor: torch.Tensor, bins: int) -> None:
    """``value`` (a HistogramValue read back) is the histogram of ``tensor``, computed here with torch.histc."""
    assert value.bucket == torch.histc(tensor, bins=bins).tolist()
    assert sum(value.bucket) == value.num == tensor.numel()
    assert value.min == tensor.min().item() and value.max == tensor.max().item()
    assert value.bucket_limit[-1] == value.max
    assert value.sum == pytest.approx(tensor.double().sum().item(), rel=1e-5, abs=1e-6)
    assert value.sum_squares == pytest.approx(tensor.double().square().sum().item(), rel=1e-5)


def test_weights_grads_and_activations_match_histc(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = MLP()
    model.fc2.bias.requires_grad_(False)  # no gradient: no grads/ histogram for it
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    generator = torch.Generator().manual_seed(1)
    data = [(torch.randn(8, 6, generator=generator), torch.randint(0, 3, (8,), generator=generator)) for _ in range(5)]

    # The test's own record of fc1's output, through a hook it registers itself.
    fc1_outputs: list[torch.Tensor] = []
    model.fc1.register_forward_hook(lambda module, args, out: fc1_outputs.append(out.detach().clone()))
    expected: dict[int, dict[str, torch.Tensor]] = {}
    plugin = Histograms(every_n_steps=2, activations=["fc1"], bins=16)
    with tbhooks.attach(
        model, logdir=tmp_path, optimizer=optimizer, plugins=[plugin], disable=OTHERS, autoload=False
    ) as hooks:
        hooks.epoch_start()
        for x, y in data:
            train_step(hooks, model, optimizer, x, y)
            snapshot = {f"weights/{n}": p.detach().clone() for n, p in model.named_parameters()}
            snapshot |= {f"grads/{n}": p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
            snapshot["activations/fc1"] = fc1_outputs[-1]
            expected[hooks.step] = snapshot
        hooks.epoch_end()

    tags = set(read_events(tmp_path).histograms)
    assert tags == {
        "weights/fc1.weight",
        "weights/fc1.bias",
        "weights/fc2.weight",
        "weights/fc2.bias",
        "grads/fc1.weight",
        "grads/fc1.bias",
        "grads/fc2.weight",
        "activations/fc1",
    }
    for tag in tags:
        values = histogram(tmp_path, tag)
        assert sorted(values) == [2, 4], tag  # every 2 steps, never on steps 1, 3, 5
        for step, value in values.items():
            assert_matches(value, expected[step][tag], bins=16)
    # The weights changed between the logged steps: step 4's histogram is not step 2's.
    w = histogram(tmp_path, "weights/fc1.weight")
    assert w[2].sum != w[4].sum


def test_all_activations_and_unknown_module_names(tmp_path: Path) -> None:
    model = MLP()
    x = torch.randn(4, 6)

    def run(plugin: Histograms, logdir: Path) -> set[str]:
        with tbhooks.attach(model, logdir=logdir, plugins=[plugin], disable=OTHERS, autoload=False) as hooks:
            hooks.epoch_start()
            hooks.batch_start()
            hooks.batch_end(x, None, model(x))
        return set(read_events(logdir).histograms)

    everything = run(Histograms(every_n_steps=1, weights=False, grads=False, activations="all"), tmp_path / "all")
    assert everything == {"activations/fc1", "activations/act", "activations/fc2"}

    with pytest.warns(TbhooksWarning, match=r"activations=...\) names no submodule 'fc9'.*known: '', 'fc1'") as record:
        some = run(Histograms(every_n_steps=1, weights=False, grads=False, activations=["fc9", "act"]), tmp_path / "x")
    assert len(record) == 1
    assert some == {"activations/act"}
    value = histogram(tmp_path / "x", "activations/act")[1]
    assert_matches(value, model.act(model.fc1(x)).detach(), bins=64)


def test_nonfinite_weights_are_counted_out_with_one_warning(tmp_path: Path) -> None:
    model = MLP()
    with torch.no_grad():
        model.fc1.weight[0, 0] = NAN
        model.fc1.weight[1, 1] = INF
        model.fc2.bias.fill_(NAN)  # no finite value at all: not written
    x = torch.randn(4, 6)
    with pytest.warns(TbhooksWarning, match=r"NaN/inf values in weights/fc1.weight \(2 of 96\)") as record:
        with tbhooks.attach(
            model, logdir=tmp_path, plugins=[Histograms(every_n_steps=1, grads=False)], disable=OTHERS, autoload=False
        ) as hooks:
            hooks.epoch_start()
            for _ in range(3):
                hooks.batch_start()
                hooks.batch_end(x, None, model(x))
            hooks.epoch_end()
    assert len(record) == 1  # once per run, although every step has them

    values = histogram(tmp_path, "weights/fc1.weight")
    assert sorted(values) == [1, 2, 3]
    weight = model.fc1.weight.detach()
    finite = weight[torch.isfinite(weight)]
    assert_matches(values[3], finite, bins=64)
    assert values[3].num == 94
    assert "weights/fc2.bias" not in read_events(tmp_path).histograms
    assert "weights/fc2.weight" in read_events(tmp_path).histograms


def test_options_are_validated() -> None:
    with pytest.raises(ValueError, match=r"Histograms\(every_n_steps=...\) expects an int >= 1, got 0"):
        Histograms(every_n_steps=0)
    with pytest.raises(TypeError, match=r"Histograms\(bins=...\) expects an int, got str"):
        Histograms(bins="64")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"Histograms\(weights=...\) expects True or False"):
        Histograms(weights=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"Histograms\(grads=...\) expects True or False"):
        Histograms(grads=None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"Histograms\(activations=...\) expects a list of submodule names or 'all'"):
        Histograms(activations="fc1")
    with pytest.raises(TypeError, match=r"Histograms\(activations=...\) expects submodule names \(str\), got 3"):
        Histograms(activations=["fc1", 3])  # type: ignore[list-item]
    assert Histograms().every_n_steps == 1000 and Histograms().bins == 64


@contextmanager
def background_held(hooks: Hooks) -> Iterator[None]:
    """Hold the run's background thread until the block ends: the tasks submitted inside wait behind this one."""
    release = threading.Event()
    hooks.run.submit(release.wait, 30)  # FIFO: every later task runs after it
    try:
        yield
    finally:
        release.set()


def in_place_case(device: torch.device):
    """An MLP logging fc1's weights, gradients and activations every step, on ``device``; ``fc1_out``
    collects the module's outputs themselves (the capture shares their storage)."""
    torch.manual_seed(0)
    model = MLP().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 6, device=device), torch.randint(0, 3, (8,), device=device)
    fc1_out: list[torch.Tensor] = []
    model.fc1.register_forward_hook(lambda module, args, out: fc1_out.append(out))
    plugin = Histograms(every_n_steps=1, activations=["fc1"], bins=16)
    return model, optimizer, x, y, fc1_out, plugin


def change_in_place(model: nn.Module, activation: torch.Tensor) -> None:
    """What a next optimizer step, zero_grad and an in-place activation would do to the logged tensors."""
    with torch.no_grad():
        model.fc1.weight.add_(100.0)
        model.fc1.weight.grad.zero_()
        activation.mul_(-3.0)


def test_cpu_values_of_the_logging_step_are_logged_although_they_change_in_place_after(tmp_path: Path) -> None:
    model, optimizer, x, y, fc1_out, plugin = in_place_case(torch.device("cpu"))
    with tbhooks.attach(
        model, logdir=tmp_path, optimizer=optimizer, plugins=[plugin], disable=OTHERS, autoload=False
    ) as hooks:
        hooks.epoch_start()
        with background_held(hooks):
            train_step(hooks, model, optimizer, x, y)
            expected = {
                "weights/fc1.weight": model.fc1.weight.detach().clone(),
                "grads/fc1.weight": model.fc1.weight.grad.clone(),
                "activations/fc1": fc1_out[-1].detach().clone(),
            }
            # Before the background thread bins anything: what a next optimizer step, zero_grad
            # and an in-place activation would do.
            change_in_place(model, fc1_out[-1])
    for tag, tensor in expected.items():
        values = histogram(tmp_path, tag)
        assert sorted(values) == [1], tag
        assert_matches(values[1], tensor, bins=16)
    assert histogram(tmp_path, "weights/fc1.weight")[1].max < 50  # not the weights as they are now


def test_rows_are_computed_at_the_logging_step_and_written_on_the_background_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    computed: set[str] = set()
    written: set[str] = set()
    row, write = histograms_module.histogram_row, histograms_module.write_histogram

    def recording_row(tensor: torch.Tensor, bins: int) -> torch.Tensor:
        computed.add(threading.current_thread().name)
        return row(tensor, bins)

    def recording_write(*args: object) -> None:
        written.add(threading.current_thread().name)
        write(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(histograms_module, "histogram_row", recording_row)
    monkeypatch.setattr(histograms_module, "write_histogram", recording_write)
    model = MLP()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with tbhooks.attach(
        model, logdir=tmp_path, optimizer=optimizer, plugins=[Histograms(every_n_steps=2)], disable=OTHERS
    ) as hooks:
        hooks.epoch_start()
        for _ in range(4):
            train_step(hooks, model, optimizer, torch.randn(4, 6), torch.randint(0, 3, (4,)))
    assert computed == {threading.main_thread().name} and written == {"tbhooks-background"}
    assert sorted(histogram(tmp_path, "grads/fc2.bias")) == [2, 4]


def test_everything_is_written_when_fit_returns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A slow background thread: the histograms of the last logging step are still being written at
    # the end of the fit; fit must not return before they are on disk.
    write = histograms_module.write_histogram

    def slow_write(*args: object) -> None:
        threading.Event().wait(0.02)
        write(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(histograms_module, "write_histogram", slow_write)
    torch.manual_seed(0)
    model = MLP()
    generator = torch.Generator().manual_seed(2)
    data = [(torch.randn(4, 6, generator=generator), torch.randint(0, 3, (4,), generator=generator)) for _ in range(6)]
    trainer = tbhooks.Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        nn.functional.cross_entropy,
        logdir=tmp_path,
        plugins=[Histograms(every_n_steps=2, bins=16)],
        disable=OTHERS,
        autoload=False,
        progress=False,
    )
    trainer.fit(data, epochs=1)
    tags = set(read_events(tmp_path).histograms)
    assert len(tags) == 8  # 4 weights, 4 grads
    for tag in tags:
        assert sorted(histogram(tmp_path, tag)) == [2, 4, 6], tag
    # No optimizer step after step 6: its weights are the model's weights now.
    assert_matches(histogram(tmp_path, "weights/fc1.weight")[6], model.fc1.weight.detach(), bins=16)


def test_nonfinite_warning_found_late_is_given_at_fit_end_on_the_training_thread(tmp_path: Path) -> None:
    model = MLP()
    with torch.no_grad():
        model.fc2.weight[0, 3] = NAN
    x = torch.randn(4, 6)
    plugin = Histograms(every_n_steps=1, grads=False, bins=8)
    with pytest.warns(
        TbhooksWarning, match=r"histograms at step 1: NaN/inf values in weights/fc2.weight \(1 of 48\)"
    ) as record:
        with tbhooks.attach(model, logdir=tmp_path, plugins=[plugin], disable=OTHERS, autoload=False) as hooks:
            hooks.epoch_start()
            with background_held(hooks):
                hooks.batch_start()
                hooks.batch_end(x, None, model(x))
                hooks.epoch_end()  # the step's task has not run: nothing to warn about yet
                assert not record
        assert len(record) == 1  # on_fit_end waited for the task, then warned
    assert histogram(tmp_path, "weights/fc2.weight")[1].num == 47


def test_error_in_the_background_task_disables_the_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(histograms_module, "write_histogram", broken)
    model = MLP()
    x = torch.randn(4, 6)
    with pytest.warns(PluginFaultWarning, match=r"(?s)plugin 'histograms' raised in background task.*disk on fire"):
        with tbhooks.attach(
            model, logdir=tmp_path, plugins=[Histograms(every_n_steps=1)], disable=OTHERS, autoload=False
        ) as hooks:
            hooks.epoch_start()
            hooks.batch_start()
            hooks.batch_end(x, None, model(x))
    assert hooks.faults["histograms"].hook == "background task"
    assert not read_events(tmp_path).histograms


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_logging_step_reads_nothing_back_on_the_training_thread(tmp_path: Path) -> None:
    model, optimizer, x, y, fc1_out, plugin = in_place_case(torch.device("cuda"))
    with tbhooks.attach(
        model, logdir=tmp_path, optimizer=optimizer, plugins=[plugin], disable=OTHERS, autoload=False
    ) as hooks:
        hooks.epoch_start()
        # The sync debug mode is process-wide: the background thread's read back must wait until it is off.
        with background_held(hooks):
            hooks.batch_start()
            out = model(x)
            loss = nn.functional.cross_entropy(out, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")  # any device-to-host synchronisation raises
            try:
                hooks.batch_end(x, y, out, loss)
            finally:
                torch.cuda.set_sync_debug_mode("default")
            expected = {
                "weights/fc1.weight": model.fc1.weight.detach().cpu(),
                "grads/fc1.weight": model.fc1.weight.grad.cpu(),
                "activations/fc1": fc1_out[-1].detach().cpu(),
            }
            change_in_place(model, fc1_out[-1])  # enqueued after the rows: stream order keeps the logged values
    assert not hooks.faults
    for tag, tensor in expected.items():
        # Against the CPU histc, as in the test above.
        assert_matches(histogram(tmp_path, tag)[1], tensor, bins=16)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_binning_never_syncs_and_matches_histc() -> None:
    x = torch.randn(4096, 33, device="cuda") * 2
    x[5, 5], x[7, 1] = NAN, INF
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any device-to-host synchronisation raises
    try:
        row = histograms_module.histogram_row(x, 64)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    h = histograms_module.to_histogram(row.cpu().tolist(), 64)
    finite = x[torch.isfinite(x)].cpu()
    # Against the CPU histc, the reference of the other tests (not checked here: CUDA histc's edge rounding).
    assert h.bucket_counts == torch.histc(finite, bins=64).tolist()
    assert (h.num, h.nonfinite) == (finite.numel(), 2)
    assert (h.min, h.max) == (finite.min().item(), finite.max().item())
