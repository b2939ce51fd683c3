"""DeviceSum: the same sum and mean as adding the values one by one, across folds and resets."""

from __future__ import annotations

import pytest
import torch

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
