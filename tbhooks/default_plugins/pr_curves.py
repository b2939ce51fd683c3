"""PR curves: one precision-recall curve per class at every evaluation.

Tags ``pr_curves/<class name>`` (the PR CURVES dashboard), at the step the
evaluation belongs to.  Each curve ranks the evaluation set by the
probability of its class (softmax over the class scores; sigmoid for a
single logit) against the one-vs-rest truth ``targets == class``.  The
official tutorial once passed the predicted class as the labels, which draws
a curve of the model against itself; here the labels are always the targets.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
from tensorboard.compat.proto.tensor_pb2 import TensorProto
from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
from tensorboard.plugins.pr_curve.plugin_data_pb2 import PrCurvePluginData

from tbhooks.default_plugins._options import check_int
from tbhooks.markers import hookimpl

if TYPE_CHECKING:
    from collections.abc import Sequence

    from tbhooks.run import Run

MAX_THRESHOLDS = 127
"""``SummaryWriter.add_pr_curve`` silently caps ``num_thresholds`` at 127."""
_MINIMUM_COUNT = 1e-7
"""The floor of precision's and recall's denominators in TensorBoard's PR curves."""


class PRCurves:
    """Log a precision-recall curve per class after every evaluation.

    Fires in ``on_eval``, on the outputs and targets of the whole evaluation
    set (gathered from every rank); only rank 0 does any work.

    :param num_thresholds: points on each curve, from 2 to 127 (default 127).

    Multi-class outputs ``[N, C]`` (``C >= 2``) with integer targets ``[N]``
    give ``C`` curves from the softmax probabilities; a single logit (``[N]``
    or ``[N, 1]``) with 0/1 targets (integer, bool or float) gives one curve
    for class 1 from the sigmoid.  Anything else (regression outputs, say) is
    skipped with one INFO line on the ``tbhooks`` logger.

    Tags: ``pr_curves/<class name>`` from the run's ``class_names``, else
    ``pr_curves/<class index>`` (PR CURVES dashboard), at the evaluation's step.
    """

    name = "pr_curves"

    def __init__(self, num_thresholds: int = MAX_THRESHOLDS) -> None:
        self.num_thresholds = check_int("PRCurves", "num_thresholds", num_thresholds, minimum=2)
        if self.num_thresholds > MAX_THRESHOLDS:
            raise ValueError(
                f"PRCurves(num_thresholds=...) expects an int from 2 to {MAX_THRESHOLDS} "
                f"(TensorBoard's writer caps it there), got {num_thresholds}"
            )

    @hookimpl
    def on_eval(self, run: Run, step: int, outputs: torch.Tensor, targets: Any) -> None:
        if not run.is_writer or not isinstance(outputs, torch.Tensor) or outputs.shape[0:1] == (0,):
            return
        binary = self._binary(outputs, targets)
        if binary is not None:
            probs = torch.sigmoid(binary[0].float()).unsqueeze(1)
            labels = binary[1]
            classes = [1]
        else:
            scored = run.class_scores(outputs, targets, who=self.name)
            if scored is None:
                return
            scores, labels = scored
            probs = torch.softmax(scores.float(), dim=1)
            classes = list(range(probs.shape[1]))
        if not bool(torch.isfinite(probs).all()):
            run.info_once(
                "pr_curves:nonfinite",
                f"tbhooks: pr_curves skipped at step {step}: the outputs hold NaN or infinite values",
            )
            return
        names = run.class_names or []
        tags = [run.tag("pr_curves", names[c] if c < len(names) else c) for c in classes]
        run.submit(self._write, run, probs.cpu(), labels.cpu(), classes, tags, step)

    @staticmethod
    def _binary(outputs: torch.Tensor, targets: Any) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(logits [N], labels [N])`` for one logit with 0/1 targets, else ``None``."""
        if not outputs.is_floating_point() or not (outputs.ndim == 1 or (outputs.ndim == 2 and outputs.shape[1] == 1)):
            return None
        if not isinstance(targets, torch.Tensor) or targets.is_complex():
            return None
        flat = targets.reshape(-1) if targets.ndim == 2 and targets.shape[1] == 1 else targets
        if flat.ndim != 1 or flat.shape[0] != outputs.shape[0]:
            return None
        if not bool(((flat == 0) | (flat == 1)).all()):
            return None
        return outputs.reshape(-1), flat.long()

    def _write(
        self, run: Run, probs: torch.Tensor, labels: torch.Tensor, classes: list[int], tags: list[str], step: int
    ) -> None:
        write_pr_curves(
            run.writer, step, tags, pr_curve_data(probs.numpy(), labels.numpy(), classes, self.num_thresholds)
        )


def pr_curve_data(probs: np.ndarray, labels: np.ndarray, classes: Sequence[int], num_thresholds: int) -> np.ndarray:
    """The ``[len(classes), 6, num_thresholds]`` tables ``SummaryWriter.add_pr_curve`` writes, for every class at once.

    Column ``k`` of ``probs`` (``[N, K]``) scores class ``classes[k]``
    against ``labels == classes[k]``.  Row by row what
    ``torch.utils.tensorboard.summary.compute_curve`` gives one class at a
    time (true and false positives, true and false negatives, precision,
    recall, per threshold), with its arithmetic: each score goes to bucket
    ``int32(floor(p * (num_thresholds - 1)))``, which ``np.histogram`` with
    ``num_thresholds`` bins over ``[0, num_thresholds - 1]`` puts in a bin;
    that bin is looked up here (from ``np.histogram`` of every bucket, so
    its edge rounding is numpy's own), and the counts of all classes come
    from two ``bincount`` calls instead of twenty ``np.histogram`` calls.
    """
    count = len(classes)
    buckets = np.int32(np.floor(probs * (num_thresholds - 1)))
    truth = (labels.reshape(-1, 1) == np.asarray(classes).reshape(1, -1)).astype(np.float64)
    index = (_bins(num_thresholds)[buckets] + np.arange(count).reshape(1, -1) * num_thresholds).ravel()
    size = count * num_thresholds
    tp_buckets = np.bincount(index, weights=truth.ravel(), minlength=size).reshape(count, num_thresholds)
    fp_buckets = np.bincount(index, weights=(1.0 - truth).ravel(), minlength=size).reshape(count, num_thresholds)
    tp = np.cumsum(tp_buckets[:, ::-1], axis=1)[:, ::-1]
    fp = np.cumsum(fp_buckets[:, ::-1], axis=1)[:, ::-1]
    tn = fp[:, :1] - fp
    fn = tp[:, :1] - tp
    precision = tp / np.maximum(_MINIMUM_COUNT, tp + fp)
    recall = tp / np.maximum(_MINIMUM_COUNT, tp + fn)
    return np.stack((tp, fp, tn, fn, precision, recall), axis=1)


@functools.lru_cache(maxsize=8)
def _bins(num_thresholds: int) -> np.ndarray:
    """The ``np.histogram`` bin (``num_thresholds`` bins over ``[0, num_thresholds - 1]``) of each bucket."""
    return np.array(
        [
            np.histogram([k], bins=num_thresholds, range=(0, num_thresholds - 1))[0].argmax()
            for k in range(num_thresholds)
        ],
        dtype=np.intp,
    )


def write_pr_curves(writer: Any, step: int, tags: Sequence[str], tables: np.ndarray) -> None:
    """Write each ``tags[k]``'s ``[6, T]`` table ``tables[k]`` at ``step`` as one event: what one
    ``add_pr_curve`` per tag writes (the ``pr_curves`` plugin's metadata and a float tensor per tag)."""
    content = PrCurvePluginData(version=0, num_thresholds=tables.shape[2]).SerializeToString()
    metadata = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="pr_curves", content=content))
    shape = TensorShapeProto(
        dim=[TensorShapeProto.Dim(size=tables.shape[1]), TensorShapeProto.Dim(size=tables.shape[2])]
    )
    values = [
        Summary.Value(
            tag=tag,
            metadata=metadata,
            tensor=TensorProto(dtype="DT_FLOAT", float_val=table.reshape(-1).tolist(), tensor_shape=shape),
        )
        for tag, table in zip(tags, tables, strict=True)
    ]
    writer._get_file_writer().add_summary(Summary(value=values), step)
