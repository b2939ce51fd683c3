"""The pr_curves plugin: curves read back from the event file and checked against
true/false positive counts computed here from the same probabilities and labels."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch import nn

import tbhooks
from tbhooks.default_plugins.pr_curves import PRCurves
from tbhooks.manager import BUILTIN_PLUGINS
from tbhooks.testing import read_events

OTHERS = [name for name in BUILTIN_PLUGINS if name != "pr_curves"]


def evaluate(tmp_path, outputs, targets, *, plugin=None, class_names=None, batches=3, evals=1):
    """Raise the evaluation events with the given outputs (split in batches), ``evals`` times."""
    model = nn.Linear(2, 2)
    with tbhooks.attach(
        model,
        logdir=tmp_path,
        plugins=[plugin or PRCurves()],
        disable=OTHERS,
        autoload=False,
        class_names=class_names,
    ) as hooks:
        for _ in range(evals):
            hooks.eval_start()
            for out, tgt in zip(outputs.chunk(batches), targets.chunk(batches), strict=True):
                hooks.eval_batch(torch.zeros(out.shape[0], 2), tgt, out)
            hooks.eval_end()
            hooks.step += 5  # the next evaluation belongs to a later step
        assert hooks.faults == {}
    return read_events(tmp_path)


def expected_curve(probs: np.ndarray, positive: np.ndarray, thresholds: int) -> dict[str, np.ndarray]:
    """TP/FP/TN/FN, precision and recall at each threshold i/(T-1), counted point by point.

    A point counts as predicted positive at threshold index i when
    ``p * (T - 1) >= i`` (in the probabilities' own float32 precision, so the
    comparison is the same one the writer's bucketing makes).
    """
    scaled = probs.astype(np.float32) * np.float32(thresholds - 1)
    rows = {k: [] for k in ("tp", "fp", "tn", "fn")}
    for i in range(thresholds):
        predicted = scaled >= i
        rows["tp"].append(int(np.sum(predicted & positive)))
        rows["fp"].append(int(np.sum(predicted & ~positive)))
        rows["tn"].append(int(np.sum(~predicted & ~positive)))
        rows["fn"].append(int(np.sum(~predicted & positive)))
    out = {k: np.array(v, dtype=np.float64) for k, v in rows.items()}
    with np.errstate(invalid="ignore", divide="ignore"):
        out["precision"] = np.where(out["tp"] + out["fp"] > 0, out["tp"] / (out["tp"] + out["fp"]), 0.0)
        out["recall"] = np.where(out["tp"] + out["fn"] > 0, out["tp"] / (out["tp"] + out["fn"]), 0.0)
    return out


def check_curve(data: np.ndarray, expected: dict[str, np.ndarray]) -> None:
    """``data`` is the [6, T] tensor TensorBoard reads: TP, FP, TN, FN, precision, recall."""
    for row, key in enumerate(("tp", "fp", "tn", "fn")):
        np.testing.assert_array_equal(data[row], expected[key], err_msg=key)
    np.testing.assert_allclose(data[4], expected["precision"], atol=1e-6, err_msg="precision")
    np.testing.assert_allclose(data[5], expected["recall"], atol=1e-6, err_msg="recall")


def test_multiclass_curves_match_counts(tmp_path):
    generator = torch.Generator().manual_seed(0)
    outputs = torch.randn(60, 3, generator=generator) * 2
    targets = torch.randint(0, 3, (60,), generator=generator)
    names = ["cat", "dog", "sea lion"]
    events = evaluate(tmp_path, outputs, targets, class_names=names)

    assert sorted(events.pr_curves) == ["pr_curves/cat", "pr_curves/dog", "pr_curves/sea_lion"]
    probs = torch.softmax(outputs, dim=1).numpy()
    labels = targets.numpy()
    for c, tag in enumerate(["pr_curves/cat", "pr_curves/dog", "pr_curves/sea_lion"]):
        [(step, data)] = events.pr_curves[tag]
        assert step == 0
        assert data.shape == (6, 127)
        positive = labels == c
        check_curve(data, expected_curve(probs[:, c], positive, 127))
        # One-vs-rest against the *targets*: at threshold 0 every point is
        # predicted positive, so TP is the number of true members of the class,
        # which here differs from the number the model predicts (the tutorial's bug).
        assert data[0, 0] == positive.sum()
        assert data[5, 0] == 1.0
    predicted_counts = np.bincount(probs.argmax(1), minlength=3)
    assert not np.array_equal(predicted_counts, np.bincount(labels, minlength=3))


def test_hand_computed_point(tmp_path):
    """Four points, two thresholds: counts written out by hand."""
    # probabilities of class 1 after softmax over [0, x]: sigmoid(x)
    logits = torch.tensor([[0.0, 3.0], [0.0, 1.0], [0.0, -1.0], [0.0, -3.0]])  # p1 ~ .95, .73, .27, .05
    targets = torch.tensor([1, 0, 1, 0])
    events = evaluate(tmp_path, logits, targets, plugin=PRCurves(num_thresholds=3), batches=1)
    [(_, data)] = events.pr_curves["pr_curves/1"]
    assert data.shape == (6, 3)
    # threshold 0.5: predicted positive = the first two; TP = 1 (point 0), FP = 1 (point 1), FN = 1 (point 2)
    assert data[:4, 1].tolist() == [1, 1, 1, 1]
    assert data[4, 1] == pytest.approx(0.5)
    assert data[5, 1] == pytest.approx(0.5)
    # threshold 1.0: nothing reaches it
    assert data[:4, 2].tolist() == [0, 0, 2, 2]


@pytest.mark.parametrize("shape", ["n", "n1"])
@pytest.mark.parametrize("target_dtype", [torch.long, torch.float32])
def test_binary_single_logit(tmp_path, shape, target_dtype):
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(40, generator=generator) * 3
    targets = (torch.rand(40, generator=generator) < 0.4).to(target_dtype)
    outputs = logits if shape == "n" else logits.unsqueeze(1)
    events = evaluate(tmp_path, outputs, targets, plugin=PRCurves(num_thresholds=21))
    assert list(events.pr_curves) == ["pr_curves/1"]
    [(_, data)] = events.pr_curves["pr_curves/1"]
    probs = torch.sigmoid(logits).numpy()
    check_curve(data, expected_curve(probs, targets.numpy() == 1, 21))


def test_binary_single_logit_uses_positive_class_name(tmp_path):
    logits = torch.tensor([2.0, -2.0, 0.5, -0.5])
    targets = torch.tensor([1, 0, 0, 1])
    events = evaluate(tmp_path, logits, targets, class_names=["negative", "positive"], batches=2)
    assert list(events.pr_curves) == ["pr_curves/positive"]


def test_every_evaluation_gets_a_curve_at_its_step(tmp_path):
    outputs = torch.randn(12, 4)
    targets = torch.arange(12) % 4
    events = evaluate(tmp_path, outputs, targets, evals=2)
    assert len(events.pr_curves) == 4
    for tag in events.pr_curves:
        assert [step for step, _ in events.pr_curves[tag]] == [0, 5]


@pytest.mark.parametrize(
    ("outputs", "targets"),
    [
        (torch.randn(12, 1), torch.randn(12)),  # regression, one output
        (torch.randn(12), torch.randn(12) * 5),  # regression, flat
        (torch.randn(12, 3), torch.randn(12, 3)),  # multi-output regression
    ],
    ids=["n1", "n", "multi"],
)
def test_regression_outputs_skipped_with_info(tmp_path, caplog, outputs, targets):
    caplog.set_level(logging.INFO, logger="tbhooks")
    events = evaluate(tmp_path, outputs, targets, evals=2)
    assert events.pr_curves == {}
    lines = [r.getMessage() for r in caplog.records if "pr_curves skipped" in r.getMessage()]
    assert len(lines) == 1, lines


def test_nonfinite_outputs_skipped(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="tbhooks")
    outputs = torch.randn(6, 2)
    outputs[2, 0] = float("nan")
    events = evaluate(tmp_path, outputs, torch.tensor([0, 1, 0, 1, 0, 1]), batches=2)
    assert events.pr_curves == {}
    assert any("NaN" in r.getMessage() for r in caplog.records)


def test_trainer_end_to_end(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(48, 4)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()  # three classes
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    model = nn.Linear(4, 3)
    trainer = tbhooks.Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        nn.functional.cross_entropy,
        logdir=tmp_path,
        device="cpu",
        progress=False,
        disable=OTHERS,
        autoload=False,
        class_names=["low", "mid", "high"],
    )
    trainer.fit(loader, epochs=2, eval_loader=loader)
    events = read_events(tmp_path)
    assert sorted(events.pr_curves) == ["pr_curves/high", "pr_curves/low", "pr_curves/mid"]
    for c, name in enumerate(["low", "mid", "high"]):
        curve = events.pr_curves[f"pr_curves/{name}"]
        assert [step for step, _ in curve] == [3, 6]
        for _, data in curve:
            assert data[0, 0] == (y == c).sum().item()  # all true members at threshold 0
            assert data[1, 0] == (y != c).sum().item()


def test_only_rank_zero_writes(tmp_path):
    model = nn.Linear(2, 2)
    with tbhooks.attach(model, logdir=tmp_path, plugins=[PRCurves()], disable=OTHERS, autoload=False) as hooks:
        hooks.run.rank = 1  # pretend to be another rank: the real writer stays, the plugin must not use it
        hooks.eval_start()
        hooks.eval_batch(torch.zeros(4, 2), torch.tensor([0, 1, 0, 1]), torch.randn(4, 2))
        hooks.eval_end()
    assert read_events(tmp_path).pr_curves == {}


@pytest.mark.parametrize(
    ("value", "error"),
    [("10", TypeError), (True, TypeError), (1.5, TypeError), (1, ValueError), (0, ValueError), (128, ValueError)],
)
def test_num_thresholds_validated(value, error):
    with pytest.raises(error, match=r"PRCurves\(num_thresholds="):
        PRCurves(num_thresholds=value)


def test_defaults():
    plugin = PRCurves()
    assert plugin.name == "pr_curves"
    assert plugin.num_thresholds == 127
