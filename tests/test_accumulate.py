"""LossSum: the same sum as adding the values one by one, across folds and resets, with no read-back."""

from __future__ import annotations

import pytest
import torch
from _support import READ_BACKS, Calls

from tbhooks import accumulate
from tbhooks.accumulate import LossSum


def test_sum_across_folds_of_mixed_dtypes_and_shapes(monkeypatch):
    monkeypatch.setattr(accumulate, "FOLD", 3)  # folds twice, then one value pending
    values = [torch.tensor(v, dtype=torch.float16) for v in (0.5, 1.25, 2.0, -3.0, 7.5, 0.125)]
    values.append(torch.tensor([4.0]))  # a one-element tensor counts like a scalar
    acc = LossSum()
    for value in values:
        acc.add(value)
    assert acc.count == 7
    total = acc.total()
    assert total is not None and total.dtype == torch.float64
    assert float(total) == pytest.approx(sum(float(v) for v in values))


def test_empty_and_reset():
    acc = LossSum()
    assert acc.total() is None and acc.count == 0
    acc.add(torch.tensor(2.0))
    acc.reset()
    assert acc.count == 0 and acc.total() is None


def test_adding_runs_no_torch_operation_until_a_fold(monkeypatch):
    monkeypatch.setattr(accumulate, "FOLD", 4)
    acc = LossSum()
    values = [torch.tensor(float(v)) for v in range(5)]
    with Calls() as calls:
        for value in values[:3]:
            acc.add(value)
    assert calls.names == []  # references only: no kernel, no read-back on these steps
    with Calls() as calls:
        acc.add(values[3])  # the fourth value folds
    assert "stack" in calls.names and not READ_BACKS & set(calls.names), calls.names
    acc.add(values[4])
    assert float(acc.total()) == 10.0
