"""The ``figures`` plugin: two figures per evaluation, in TensorBoard's IMAGES dashboard.

``figures/predictions_vs_actuals``: the first ``num_images`` evaluation inputs, each titled with the
predicted class, its probability (softmax, in %) and the true label (green when right, red when wrong).
``figures/confusion_matrix``: the counts of (true label, predicted class) over the evaluation set.

The training thread only clones a few inputs (no sync) and moves small tensors to the CPU on a logged
evaluation; drawing and PNG encoding run in the render worker process (``run.render_image``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from tbhooks import hookimpl
from tbhooks_figures.draw import draw_confusion_matrix, draw_predictions

if TYPE_CHECKING:
    from collections.abc import Sequence

    from tbhooks import Run

PREDICTIONS_TAG = "figures/predictions_vs_actuals"
CONFUSION_TAG = "figures/confusion_matrix"
RIGHT, WRONG = "green", "red"
"""Title colours of a right and a wrong prediction (matplotlib colour names)."""


def confusion_counts(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``[C, C]`` int64 counts on the tensors' device: row = true label, column = predicted class.

    Nothing is read back, so the caller decides when the small matrix crosses to the CPU.
    """
    if predictions.shape != labels.shape or predictions.ndim != 1:
        raise ValueError(
            f"predictions and labels expect two [N] tensors, got {list(predictions.shape)} and {list(labels.shape)}"
        )
    index = labels.long() * num_classes + predictions.long()
    return torch.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def prediction_titles(
    probabilities: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str]
) -> list[tuple[str, str]]:
    """``(title, colour)`` per sample: ``"<predicted>, <p>%\\n(label: <true>)"``, green when right, red when wrong.

    ``probabilities`` is ``[N, C]`` (rows sum to 1), ``labels`` ``[N]``, ``class_names`` ``C`` names.
    """
    if probabilities.ndim != 2 or labels.shape != (probabilities.shape[0],):
        raise ValueError(
            f"probabilities expects [N, C] and labels [N], got {list(probabilities.shape)} and {list(labels.shape)}"
        )
    confidence, predicted = probabilities.max(dim=1)
    titles = []
    for guess, chance, truth in zip(predicted.tolist(), confidence.tolist(), labels.tolist(), strict=True):
        text = f"{class_names[guess]}, {chance * 100:.1f}%\n(label: {class_names[truth]})"
        titles.append((text, RIGHT if guess == truth else WRONG))
    return titles


def image_batch(inputs: Any) -> bool:
    """Whether ``inputs`` is a tensor ``[N, C, H, W]`` with C 1 or 3, or ``[N, H, W]`` (no device sync)."""
    if not isinstance(inputs, torch.Tensor) or inputs.is_complex() or inputs.dtype == torch.bool:
        return False
    if inputs.ndim == 4:
        return inputs.shape[1] in (1, 3) and inputs.shape[2] > 0 and inputs.shape[3] > 0
    return inputs.ndim == 3 and inputs.shape[1] > 0 and inputs.shape[2] > 0


def _check_int(option: str, value: object, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"Figures({option}=...) expects an int, got {type(value).__name__}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
        raise ValueError(f"Figures({option}=...) expects an int {bound}, got {value}")
    return value


class Figures:
    """Log a predictions-vs-actuals figure and a confusion matrix at each evaluation.

    :param num_images: images in the predictions figure (default 8); 0 turns the figure off.
    :param every_n_evals: log at evaluations 1·n, 2·n, ... of the run (default 1: every evaluation).
    :param dpi: pixels per inch of both figures (default 100; 10 to 600).
    :param confusion_matrix: log the confusion matrix (default True).
    :param max_classes: draw the confusion matrix only up to this many classes (default 40; above, an info line).

    Both figures need outputs ``[N, C]`` and integer targets ``[N]``; the class names are ``class_names=``
    of ``attach``/``Trainer`` when their number matches ``C``, else the class indices.
    """

    name = "figures"

    def __init__(
        self,
        num_images: int = 8,
        every_n_evals: int = 1,
        dpi: int = 100,
        confusion_matrix: bool = True,
        max_classes: int = 40,
    ) -> None:
        self.num_images = _check_int("num_images", num_images, 0, 64)
        self.every_n_evals = _check_int("every_n_evals", every_n_evals, 1)
        self.dpi = _check_int("dpi", dpi, 10, 600)
        if not isinstance(confusion_matrix, bool):
            raise TypeError(
                f"Figures(confusion_matrix=...) expects True or False, got {type(confusion_matrix).__name__}"
            )
        self.confusion_matrix = confusion_matrix
        self.max_classes = _check_int("max_classes", max_classes, 2)
        self._evals = 0
        self._due = False
        self._need = 0
        self._samples: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    @hookimpl
    def on_fit_start(self, run: Run) -> None:
        self._evals = 0  # every_n_evals counts the evaluations of each run
        # The worker's imports (matplotlib) are slow: start it now, in parallel with training,
        # not when the first evaluation wants a figure.
        run.start_render_worker("tbhooks_figures.render")

    @hookimpl
    def on_eval_start(self, run: Run) -> None:
        self._evals += 1
        self._due = run.is_writer and self._evals % self.every_n_evals == 0
        self._need = self.num_images if self._due else 0
        self._samples = []

    @hookimpl
    def on_eval_batch_end(self, run: Run, inputs: Any, targets: Any, outputs: torch.Tensor | None) -> None:
        """Keep (a clone of) the first ``num_images`` inputs, outputs and targets of a logged evaluation."""
        if self._need <= 0:
            return
        size = inputs.shape[0] if isinstance(inputs, torch.Tensor) and inputs.ndim else -1
        usable = (
            image_batch(inputs)
            and isinstance(targets, torch.Tensor)
            and targets.shape == (size,)
            and isinstance(outputs, torch.Tensor)
            and outputs.ndim == 2
            and outputs.shape[0] == size
            and (not self._samples or self._samples[0][0].shape[1:] == inputs.shape[1:])
        )
        if not usable:
            if not self._samples:
                shape = list(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__
                run.info_once(
                    "figures:not-images",
                    f"tbhooks: figures: {PREDICTIONS_TAG} skipped: the evaluation inputs are not images "
                    f"[N, C, H, W] with C 1 or 3, or [N, H, W], with targets [N] and outputs [N, C] (inputs: {shape})",
                )
            self._need = 0  # stop collecting; draw what was collected, if anything
            return
        take = min(self._need, size)
        # Clones (device ops, no sync) so the rest of each batch can be freed.
        self._samples.append((inputs[:take].detach().clone(), outputs[:take].clone(), targets[:take].clone()))
        self._need -= take

    @hookimpl
    def on_eval(self, run: Run, step: int, outputs: torch.Tensor | None, targets: Any) -> None:
        samples, self._samples, self._need = self._samples, [], 0
        if not self._due:
            return
        self._due = False
        scored = run.class_scores(outputs, targets, who=self.name)  # one sync, on a logged evaluation only
        if scored is None:
            return
        scores, labels = scored
        classes = scores.shape[1]
        names = self._class_names(run, classes)
        if self.confusion_matrix:
            if classes > self.max_classes:
                run.info_once(
                    "figures:max-classes",
                    f"tbhooks: figures: {CONFUSION_TAG} skipped: {classes} classes is more than "
                    f"max_classes={self.max_classes}",
                )
            else:
                counts = confusion_counts(scores.argmax(dim=1), labels, classes).cpu().numpy()
                run.render_image(self, CONFUSION_TAG, step, draw_confusion_matrix, counts, names, self.dpi)
        if samples:
            images = torch.cat([s[0] for s in samples]).cpu()
            logits = torch.cat([s[1] for s in samples]).cpu()
            truth = torch.cat([s[2] for s in samples]).cpu()
            titles = prediction_titles(torch.softmax(logits.float(), dim=1), truth, names)
            run.render_image(self, PREDICTIONS_TAG, step, draw_predictions, images.float().numpy(), titles, self.dpi)

    def _class_names(self, run: Run, classes: int) -> list[str]:
        names = run.class_names
        if names is not None and len(names) == classes:
            return list(names)
        if names is not None:
            run.info_once(
                "figures:class-names",
                f"tbhooks: figures: class_names has {len(names)} names but the outputs have {classes} classes; "
                f"the figures show class indices",
            )
        return [str(index) for index in range(classes)]


def plugin() -> Figures:
    """The entry point: a new :class:`Figures` with default options for every run."""
    return Figures()


__all__ = [
    "CONFUSION_TAG",
    "PREDICTIONS_TAG",
    "Figures",
    "confusion_counts",
    "image_batch",
    "plugin",
    "prediction_titles",
]
