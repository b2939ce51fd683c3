"""DeviceSum: the same sum and mean as adding the values one by one, across folds and resets."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tbhooks.accumulate import DeviceSum


def test_sum_and_mean_across_folds():
    values = [torch.tensor(v, dtype=torch.float16) for v in (0.5, 1.25, 2.0, -3.0, 7.5, 0.125, 4.0)]
    acc = DeviceSum(fold=3)  # folds twice, then one value pending
    for value in values:
        acc.add(value)
    assert acc.count == 7
    assert acc.total().dtype == torch.float64
    assert float(acc.total()) == pytest.approx(sum(float(v) for v in values))
    assert float(acc.mean()) == pytest.approx(sum(float(v) for v in values) / 7)
    acc.add(torch.tensor([1.0]))  # a one-element tensor counts like a scalar
    assert float(acc.total()) == pytest.approx(sum(float(v) for v in values) + 1.0)


def test_empty_and_reset():
    acc = DeviceSum()
    assert acc.total() is None and acc.mean() is None
    acc.add(torch.tensor(2.0))
    acc.reset()
    assert acc.count == 0 and acc.total() is None


def test_append_defers_the_fold_to_fold_if_full():
    acc = DeviceSum(fold=4)
    for value in range(6):
        acc.append(torch.tensor(float(value)))
    assert acc.count == 6 and len(acc._pending) == 6  # append never folds
    acc.fold_if_full()
    assert acc.count == 6 and not acc._pending
    acc.append(torch.tensor(10.0))
    acc.fold_if_full()  # 1 pending < fold: kept
    assert len(acc._pending) == 1
    assert float(acc.total()) == 25.0 and acc.count == 7
    acc.reset()
    acc.append(torch.tensor(1.0))  # reset keeps the list append is bound to
    assert float(acc.total()) == 1.0 and acc.count == 1


def test_values_of_mixed_one_element_shapes_are_summed():
    acc = DeviceSum()
    for value in (torch.tensor(1.5), torch.tensor([2.0]), torch.tensor([[0.25]])):
        acc.add(value)
    assert float(acc.total()) == 3.75


class _Ops(TorchDispatchMode):
    """Records the aten operations run under it."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.names.append(func.__name__)
        return func(*args, **(kwargs or {}))


def test_value_reads_cpu_values_one_by_one_and_folding_reads_nothing():
    acc = DeviceSum(fold=4)
    values = [torch.tensor(v / 3) for v in range(10)]
    for value in values[:6]:
        acc.append(value)
    with _Ops() as ops:
        acc.fold_if_full()  # a step that may not log: summed as a tensor, nothing read back
    assert "_local_scalar_dense" not in {n.split(".")[0] for n in ops.names} and ops.names
    for value in values[6:]:
        acc.append(value)
    with _Ops() as ops:
        total = acc.value()  # a step that logs: the pending CPU values are read as floats, no stack
    assert {n.split(".")[0] for n in ops.names} == {"_local_scalar_dense"}
    assert total == pytest.approx(math.fsum(float(v) for v in values), rel=1e-12)
    assert acc.count == 10 and not acc._pending
    assert float(acc.total()) == pytest.approx(total, rel=1e-12)  # both parts: the stacked and the read ones
    assert acc.total().dtype == torch.float64
    acc.reset()
    assert acc.value() is None and acc.total() is None
    acc.append(torch.tensor(0.0))
    assert acc.value() == 0.0 and float(acc.total()) == 0.0  # a sum of zero is not "empty"
