"""The histograms plugin and device_histogram: bucket counts checked against torch.histc."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader
from torch import nn

import tbhooks
from tbhooks import TbhooksWarning
from tbhooks.default_plugins import histograms as histograms_module
from tbhooks.default_plugins.histograms import DeviceHistogram, Histograms, device_histogram, device_histograms
from tbhooks.errors import PluginFaultWarning
from tbhooks.hooks import Hooks
from tbhooks.manager import BUILTIN_PLUGINS
from tbhooks.testing import read_events

OTHERS = [name for name in BUILTIN_PLUGINS if name != "histograms"]
NAN, INF = float("nan"), float("inf")


# -- device_histogram on known data ---------------------------------------------


@pytest.fixture(params=["cpu", "cpu_chunked", "sync_free"])
def row_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test through each implementation: the CPU one as it runs on these small tensors
    (numpy), the CPU one's chunked loop (forced, in chunks of 97 so that the last one is
    short), and the sync-free two-pass one that CUDA and other accelerators use (forced here on
    CPU tensors)."""
    if request.param == "cpu_chunked":
        monkeypatch.setattr(histograms_module, "_NUMPY_BELOW", 0)
        monkeypatch.setattr(histograms_module, "_CPU_CHUNK", 97)
    if request.param == "sync_free":
        monkeypatch.setattr(histograms_module, "_NUMPY_BELOW", 0)
        monkeypatch.setattr(histograms_module, "_row_cpu", histograms_module._row_sync_free)
    return request.param


@pytest.fixture(params=["numpy", "chunked"])
def cpu_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The CPU implementation only, through numpy (small tensors) and through the chunked loop."""
    if request.param == "chunked":
        monkeypatch.setattr(histograms_module, "_NUMPY_BELOW", 0)
        monkeypatch.setattr(histograms_module, "_CPU_CHUNK", 97)
    return request.param


def test_arange_by_hand(row_path: str) -> None:
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


def test_integer_tensor_by_hand(row_path: str) -> None:
    h = device_histogram(torch.tensor([0, 1, 1, 2, 2, 2, 3, 3, 3, 3]), bins=4)
    assert h.bucket_counts == [1.0, 2.0, 3.0, 4.0]
    assert h.bucket_limits == pytest.approx([0.75, 1.5, 2.25, 3.0])
    assert (h.min, h.max, h.num, h.sum, h.sum_squares) == (0.0, 3.0, 10, 20.0, 50.0)


@pytest.mark.parametrize("bins", [1, 7, 64])
def test_matches_torch_histc_on_random_data(bins: int, row_path: str) -> None:
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


def test_values_on_bucket_edges_land_where_histc_puts_them(row_path: str) -> None:
    # Evenly spaced values put many of them exactly on bucket edges, where the
    # order of the float operations decides the bucket.
    for n in range(3, 40):
        for scale in (0.1, 1.1):
            x = torch.arange(n, dtype=torch.float32) * scale
            for bins in (3, 6, 12):
                assert device_histogram(x, bins=bins).bucket_counts == torch.histc(x, bins=bins).tolist(), (n, scale)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_linspace_and_integer_data_match_histc(dtype: torch.dtype, row_path: str) -> None:
    # linspace puts values on (or one rounding off) every bucket edge; integers fall on edges whenever
    # the range divides evenly.  64 buckets as the plugin's default, 100 as a count that is no power of 2.
    generator = torch.Generator().manual_seed(6)
    for bins in (64, 100):
        for x in (
            torch.linspace(-3.3, 12.9, 6401, dtype=dtype),
            torch.linspace(0.0, 1.0, bins + 1, dtype=dtype),
            torch.randint(-50, 51, (3000,), generator=generator).to(dtype),
            torch.randint(0, 7, (500,), generator=generator).to(dtype),
        ):
            assert device_histogram(x, bins=bins).bucket_counts == torch.histc(x, bins=bins).tolist(), (bins, x[:3])


def test_large_tensor_takes_the_chunked_loop_and_matches_histc() -> None:
    # Above _NUMPY_BELOW without any patching, with the real chunk size and a short last chunk.
    n = histograms_module._CPU_CHUNK + histograms_module._NUMPY_BELOW + 5
    x = torch.randn(n, generator=torch.Generator().manual_seed(7))
    x[:1000] = torch.arange(1000.0) / 100  # integers and hundredths: many values on bucket edges
    h = device_histogram(x, bins=64)
    assert h.bucket_counts == torch.histc(x, bins=64).tolist()
    assert (h.min, h.max, h.num, h.nonfinite) == (x.min().item(), x.max().item(), n, 0)


def test_small_tensors_take_numpy_and_match_histc(monkeypatch: pytest.MonkeyPatch) -> None:
    # With the torch binning loop out of reach, only the numpy path can answer.
    def unreachable(*args: object) -> None:
        raise AssertionError("the chunked loop ran on a small tensor")

    monkeypatch.setattr(histograms_module, "_bin_cpu", unreachable)
    generator = torch.Generator().manual_seed(12)
    for n in (1 + 1, 97, 30_000, histograms_module._NUMPY_BELOW - 1):
        x = torch.randn(n, generator=generator)
        x[: min(n, 500)] = torch.randint(-20, 21, (min(n, 500),), generator=generator) / 4  # values on bucket edges
        for bins in (3, 10, 64):
            h = device_histogram(x, bins=bins)
            assert h.bucket_counts == torch.histc(x, bins=bins).tolist(), (n, bins)
            assert (h.min, h.max, h.num) == (x.min().item(), x.max().item(), n)
            assert h.sum == pytest.approx(x.double().sum().item(), rel=1e-9, abs=1e-9)
    doubles = torch.randn(1000, dtype=torch.float64, generator=generator)
    assert device_histogram(doubles, bins=7).bucket_counts == torch.histc(doubles, bins=7).tolist()


def test_sums_are_accumulated_in_float64(cpu_path: str) -> None:
    # Values near 1: float32 accumulation of 20,000 squares is off by more than 1e-9 relative.
    x = 1 + torch.randn(20_000, generator=torch.Generator().manual_seed(8)) * 1e-3
    h = device_histogram(x, bins=8)
    reference = x.double()
    assert h.sum == pytest.approx(reference.sum().item(), rel=1e-12)
    assert h.sum_squares == pytest.approx(reference.dot(reference).item(), rel=1e-12)


def test_aminmax_propagates_nan_and_infinities() -> None:
    # The CPU path skips the isfinite pass when aminmax's bounds are finite: that relies on aminmax
    # returning a non-finite bound for any NaN or infinity, wherever it sits (vectorised body or tail).
    for dtype in (torch.float32, torch.float64):
        for n in (1, 7, 33, 1000):
            for at in sorted({0, n // 2, n - 1}):
                for value in (NAN, INF, -INF):
                    x = torch.arange(n, dtype=dtype)
                    x[at] = value
                    low, high = (v.item() for v in torch.aminmax(x))
                    assert not (math.isfinite(low) and math.isfinite(high)), (dtype, n, at, value)


def test_nan_anywhere_is_counted_out(row_path: str) -> None:
    for at in (0, 1, 15, 16, 500, 998, 999):
        x = torch.linspace(-1, 1, 1000)
        x[at] = NAN
        finite = torch.cat([x[:at], x[at + 1 :]])
        h = device_histogram(x, bins=16)
        assert (h.num, h.nonfinite) == (999, 1), at
        assert h.bucket_counts == torch.histc(finite, bins=16).tolist(), at
        assert (h.min, h.max) == (finite.min().item(), finite.max().item()), at


def test_range_wider_than_float32_is_binned(cpu_path: str) -> None:
    # max - min overflows float32 here (torch.histc miscounts such a tensor); the CPU path bins the halves.
    x = torch.tensor([-3e38, 0.0, 1e38, 3e38])
    h = device_histogram(x, bins=2)
    assert h.bucket_counts == [1.0, 3.0]  # [min, 0] and [0, max]: 0 is the middle edge, the max goes last
    assert (h.min, h.max, h.num) == (x[0].item(), x[3].item(), 4)
    assert h.sum == pytest.approx(x.double().sum().item(), rel=1e-12)
    assert all(math.isfinite(limit) for limit in h.bucket_limits)


def test_constant_beyond_float32_ulp_of_one_matches_histc(cpu_path: str) -> None:
    # 1e10 - 1 rounds back to 1e10 in float32: torch.histc widens by one ulp instead; only histc knows how.
    x = torch.full((50,), 1e10)
    h = device_histogram(x, bins=4)
    assert h.bucket_counts == torch.histc(x, bins=4).tolist()
    assert (h.num, sum(h.bucket_counts), h.sum) == (50, 50.0, 5e11)


def test_constant_tensor_is_widened_like_histc(row_path: str) -> None:
    x = torch.full((7,), 5.0)
    h = device_histogram(x, bins=4)
    assert h.bucket_counts == torch.histc(x, bins=4).tolist() == [0.0, 0.0, 7.0, 0.0]
    assert h.bucket_limits == [4.5, 5.0, 5.5, 6.0]  # range [4, 6]
    assert (h.min, h.max, h.num) == (5.0, 5.0, 7)


def test_nonfinite_values_are_counted_out(row_path: str) -> None:
    x = torch.tensor([1.0, NAN, 2.0, INF, 3.0, -INF, 3.0])
    h = device_histogram(x, bins=2)
    finite = torch.tensor([1.0, 2.0, 3.0, 3.0])
    assert h.bucket_counts == torch.histc(finite, bins=2).tolist() == [1.0, 3.0]
    assert (h.min, h.max, h.num, h.nonfinite) == (1.0, 3.0, 4, 3)
    assert (h.sum, h.sum_squares) == (9.0, 23.0)

    only_nan = device_histogram(torch.tensor([NAN, INF]), bins=3)
    assert (only_nan.num, only_nan.nonfinite, sum(only_nan.bucket_counts)) == (0, 2, 0.0)


def test_low_precision_and_double_inputs(row_path: str) -> None:
    generator = torch.Generator().manual_seed(3)
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        x = torch.randn(300, generator=generator).to(dtype)
        reference = x.float() if dtype != torch.float64 else x
        h = device_histogram(x, bins=16)
        assert h.bucket_counts == torch.histc(reference, bins=16).tolist(), dtype
        assert (h.min, h.max) == (reference.min().item(), reference.max().item())


def test_chunked_pass_gives_the_same_result(monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.randn(1000, generator=torch.Generator().manual_seed(4))
    x[17], x[600] = NAN, -INF
    monkeypatch.setattr(histograms_module, "_NUMPY_BELOW", 0)
    monkeypatch.setattr(histograms_module, "_row_cpu", histograms_module._row_sync_free)  # the chunked one
    whole = device_histogram(x, bins=32)
    monkeypatch.setattr(histograms_module, "_CHUNK", 97)  # 11 chunks, the last one short
    chunked = device_histogram(x, bins=32)
    assert chunked.bucket_counts == whole.bucket_counts
    assert (chunked.min, chunked.max, chunked.num, chunked.nonfinite) == (whole.min, whole.max, 998, 2)
    assert chunked.sum == pytest.approx(whole.sum, rel=1e-5)


def test_many_tensors_at_once_equal_one_by_one(row_path: str) -> None:
    generator = torch.Generator().manual_seed(5)
    tensors = [torch.randn(n, generator=generator) for n in (3, 50, 1)] + [torch.arange(6).reshape(2, 3)]
    assert device_histograms(tensors, bins=5) == [device_histogram(t, bins=5) for t in tensors]


def test_small_tensors_binned_together_match_each_on_its_own() -> None:
    # A logging step's small CPU tensors are concatenated and binned in one pass (_segment_rows);
    # segments it declines (non-finite values, a constant, a range near float32's overflow) take
    # the per-tensor path, and every result must be what histc gives for that tensor alone.
    generator = torch.Generator().manual_seed(21)
    tensors = [
        torch.randn(300, generator=generator),
        torch.randint(-8, 9, (5, 7), generator=generator).float() / 4,  # values on bucket edges
        torch.tensor([1.0, NAN, 3.0, INF, 2.0]),
        torch.full((9,), 5.0),
        torch.tensor([-3e38, 1.0, 3e38]),
        torch.randn(2, 3, generator=generator, dtype=torch.float64),
        torch.randn(1, generator=generator),
        torch.randn(17, generator=generator).half(),
        torch.randn(4000, generator=generator),
    ]
    together = device_histograms(tensors, bins=6)
    for tensor, h in zip(tensors, together, strict=True):
        alone = device_histogram(tensor, bins=6)
        assert h == alone
        finite = tensor[torch.isfinite(tensor)]
        finite = finite if finite.dtype == torch.float64 else finite.float()  # histc's and the plugin's dtype
        assert h.bucket_counts == torch.histc(finite, bins=6).tolist() or finite.abs().max() > 1e38, tensor
        assert (h.num, h.nonfinite) == (finite.numel(), tensor.numel() - finite.numel())
        assert h.sum == pytest.approx(finite.double().sum().item(), rel=1e-9)


def test_segments_are_binned_in_one_pass_of_numpy_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    # However many tensors a batch holds, the batched path makes the same number of numpy calls:
    # count the calls of np.repeat (three per pass) with 3 and with 30 segments.
    calls: list[int] = []
    repeat = np.repeat

    def counting_repeat(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return repeat(*args, **kwargs)

    monkeypatch.setattr(histograms_module.np, "repeat", counting_repeat)
    generator = torch.Generator().manual_seed(3)
    for count in (3, 30):
        calls.clear()
        values = torch.randn(count * 50, generator=generator)
        rows = histograms_module._segment_rows(values.numpy(), [50] * count, 8)
        assert len(calls) == 3
        for k, row in enumerate(rows):
            assert row is not None
            assert row[6:].tolist() == torch.histc(values[k * 50 : (k + 1) * 50], bins=8).tolist()


def test_bucket_limits_of_many_rows_are_those_of_each_row() -> None:
    # The plugin computes every row's edges in one numpy expression: the same float64 operations as
    # _unpack does row by row, a constant row (range widened to value ± 1) included.
    generator = torch.Generator().manual_seed(4)
    tensors = [torch.randn(50, generator=generator), torch.full((3,), 2.5), torch.arange(10.0) * 1e-7, torch.ones(1)]
    for bins in (1, 2, 7, 64):
        table = np.stack([histograms_module.histogram_row(t, bins).numpy() for t in tensors])
        limits = histograms_module._bucket_limits(table, bins)
        for row, edges in zip(table, limits, strict=True):
            assert edges.tolist() == histograms_module._unpack(row.tolist(), bins).bucket_limits


def test_device_histogram_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="empty tensor"):
        device_histogram(torch.empty(0, 3))
    with pytest.raises(ValueError, match="bins expects an int >= 1, got 0"):
        device_histogram(torch.ones(3), bins=0)
    with pytest.raises(TypeError, match="bins expects an int, got float"):
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
    # A logging step's histograms went out as one event, with one value per tag.
    events = [
        event
        for path in tmp_path.glob("events.out.tfevents.*")
        for event in LegacyEventFileLoader(str(path)).Load()
        if any(value.HasField("histo") for value in event.summary.value)
    ]
    assert sorted((event.step, len(event.summary.value)) for event in events) == [(2, len(tags)), (4, len(tags))]


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


# -- the background thread -------------------------------------------------------


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


def test_cpu_tensors_are_binned_on_the_background_thread_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[str] = []
    rows = histograms_module._cpu_rows

    def recording_rows(batches: Any, singles: Any, bins: int) -> dict[int, list[float]]:
        # One entry per tensor binned: a step's small tensors come in one batch.
        threads.extend(threading.current_thread().name for batch in batches for _ in batch.indices)
        threads.extend(threading.current_thread().name for _ in singles)
        return rows(batches, singles, bins)

    monkeypatch.setattr(histograms_module, "_cpu_rows", recording_rows)
    model = MLP()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(4, 6), torch.randint(0, 3, (4,))
    plugin = Histograms(every_n_steps=2, activations="all", bins=8)
    with tbhooks.attach(
        model, logdir=tmp_path, optimizer=optimizer, plugins=[plugin], disable=OTHERS, autoload=False
    ) as hooks:
        hooks.epoch_start()
        for _ in range(4):
            train_step(hooks, model, optimizer, x, y)
    # Steps 2 and 4, each: 4 weights, 4 grads, 3 activations.
    assert threads == ["tbhooks-background"] * 22
    assert sorted(histogram(tmp_path, "grads/fc2.bias")) == [2, 4]


def test_device_rows_are_computed_on_the_training_thread_and_read_back_in_the_background(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without a GPU: the 2-D tensors take the accelerators' path (rows computed at the logging step,
    # read back in the background), the 1-D ones the CPU path; the results must land on the right tags.
    monkeypatch.setattr(histograms_module, "_copied", lambda tensor: tensor.dim() == 1)
    binned_on: dict[tuple[int, ...], set[str]] = {}

    def recording(row: Any) -> Any:
        def recording_row(tensor: torch.Tensor, bins: int) -> Any:
            binned_on.setdefault(tuple(tensor.shape), set()).add(threading.current_thread().name)
            return row(tensor, bins)

        return recording_row

    cpu_rows = histograms_module._cpu_rows

    def recording_rows(batches: Any, singles: Any, bins: int) -> dict[int, list[float]]:
        # The CPU copies: flattened into batches, so recorded by size.
        for batch in batches:
            for length in batch.lengths:
                binned_on.setdefault((length,), set()).add(threading.current_thread().name)
        return cpu_rows(batches, singles, bins)

    # The accelerators' rows (histogram_row) and the CPU copies' (_cpu_rows).
    monkeypatch.setattr(histograms_module, "histogram_row", recording(histograms_module.histogram_row))
    monkeypatch.setattr(histograms_module, "_cpu_rows", recording_rows)
    torch.manual_seed(0)
    model = MLP()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    fc1_out: list[torch.Tensor] = []
    model.fc1.register_forward_hook(lambda module, args, out: fc1_out.append(out.detach().clone()))
    plugin = Histograms(every_n_steps=1, activations=["fc1"], bins=16)
    with tbhooks.attach(
        model, logdir=tmp_path, optimizer=optimizer, plugins=[plugin], disable=OTHERS, autoload=False
    ) as hooks:
        hooks.epoch_start()
        train_step(hooks, model, optimizer, x, y)
        expected = {f"weights/{n}": p.detach().clone() for n, p in model.named_parameters()}
        expected |= {f"grads/{n}": p.grad.clone() for n, p in model.named_parameters()}
        expected["activations/fc1"] = fc1_out[-1]
    assert binned_on == {
        (16, 6): {"MainThread"},
        (3, 16): {"MainThread"},
        (8, 16): {"MainThread"},
        (16,): {"tbhooks-background"},
        (3,): {"tbhooks-background"},
    }
    assert set(read_events(tmp_path).histograms) == set(expected)
    for tag, tensor in expected.items():
        assert_matches(histogram(tmp_path, tag)[1], tensor, bins=16)


def test_everything_is_written_when_fit_returns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A slow background thread: the histograms of the last logging step are still being binned at
    # the end of the fit; fit must not return before they are on disk.
    row = histograms_module.histogram_row

    def slow_row(tensor: torch.Tensor, bins: int) -> torch.Tensor:
        threading.Event().wait(0.02)
        return row(tensor, bins)

    monkeypatch.setattr(histograms_module, "histogram_row", slow_row)
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
            assert not record  # the step's task had not run: nothing to warn about yet
            hooks.epoch_end()  # flushes, and waits for nothing
        assert len(record) == 1  # on_fit_end waited for the task, then warned
    assert histogram(tmp_path, "weights/fc2.weight")[1].num == 47


def test_error_in_the_background_task_disables_the_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(histograms_module, "_write_rows", broken)
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
    h = histograms_module._unpack(row.cpu().tolist(), 64)
    finite = x[torch.isfinite(x)].cpu()
    # Against the CPU histc, the reference of the other tests (not checked here: CUDA histc's edge rounding).
    assert h.bucket_counts == torch.histc(finite, bins=64).tolist()
    assert (h.num, h.nonfinite) == (finite.numel(), 2)
    assert (h.min, h.max) == (finite.min().item(), finite.max().item())


@pytest.mark.parametrize(
    "values", [[-3e38, 0.0, 1e38, 3e38], [1e10] * 5], ids=["range-wider-than-float32", "constant-1e10"]
)
def test_sync_free_path_never_crashes_on_extreme_ranges(values: list[float]) -> None:
    # The device path cannot ask the host how to widen; it must still count every value once.
    row = histograms_module._row_sync_free(torch.tensor(values), 4)
    h = histograms_module._unpack(row.tolist(), 4)
    assert (h.num, sum(h.bucket_counts)) == (len(values), float(len(values)))


def test_binning_at_once_copies_only_the_small_tensors(monkeypatch: pytest.MonkeyPatch) -> None:
    # device_histogram(s) bin right away: a large tensor is binned as it is (a 20M-element clone
    # would double the time); the plugin, which bins later, copies everything.
    big = torch.randn(histograms_module._NUMPY_BELOW)
    _, singles = histograms_module._pack_cpu([big], copy=False)
    assert singles[0][1] is big
    _, singles = histograms_module._pack_cpu([big])
    assert singles[0][1] is not big and torch.equal(singles[0][1], big)
    seen: list[bool] = []
    pack = histograms_module._pack_cpu

    def spy(tensors: Any, *, copy: bool = True) -> Any:
        seen.append(copy)
        return pack(tensors, copy=copy)

    monkeypatch.setattr(histograms_module, "_pack_cpu", spy)
    device_histogram(big)
    assert seen == [False]
