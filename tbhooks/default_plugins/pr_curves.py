"""PR curves: one precision-recall curve per class at every evaluation, ranking the evaluation set by the class's
probability against the one-vs-rest truth ``targets == class`` (always the targets, never the predicted class).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from tbhooks.default_plugins.common import check_int
from tbhooks.markers import hookimpl

if TYPE_CHECKING:
    from tbhooks.run import Run

MAX_THRESHOLDS = 127
"""``SummaryWriter.add_pr_curve`` silently caps ``num_thresholds`` at 127."""


class PRCurves:
    """Log a precision-recall curve per class at ``on_eval``, over the whole (gathered) evaluation set, on rank 0.

    Tags ``pr_curves/<class name>`` (from ``run.class_names``, else the class index; PR CURVES dashboard), at the
    evaluation's step.  Outputs ``[N, C]`` (``C >= 2``) with integer targets give ``C`` curves from the softmax;
    a single logit (``[N]`` or ``[N, 1]``) with 0/1 targets gives one curve, for class 1, from the sigmoid.
    Anything else is skipped with one INFO line on the ``tbhooks`` logger.

    :param num_thresholds: points on each curve, from 2 to 127 (default 127).
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
    def on_eval(self, run: Run, step: int, outputs: torch.Tensor | None, targets: Any) -> None:
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
        for column, (cls, tag) in enumerate(zip(classes, tags, strict=True)):
            run.writer.add_pr_curve(
                tag, (labels == cls).numpy(), probs[:, column].numpy(), step, num_thresholds=self.num_thresholds
            )
