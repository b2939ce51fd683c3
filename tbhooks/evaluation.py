"""Choosing the prediction among a model's outputs, and what one evaluation accumulates."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from collections.abc import Callable

    from tbhooks.run import Run


def select_output(outputs: Any, output: str | int | Callable[[Any], torch.Tensor] | None) -> torch.Tensor:
    """The prediction tensor among a model's outputs.  ``output=None`` takes a tensor as is, the first element
    of a tuple or list, or a dict's ``"logits"`` (Hugging Face's outputs); a ``str`` picks a dict key, an
    ``int`` a tuple index, a callable is applied."""
    if callable(output):
        chosen = output(outputs)
    elif isinstance(output, str):
        if not isinstance(outputs, dict) or output not in outputs:
            keys = list(outputs) if isinstance(outputs, dict) else type(outputs).__name__
            raise KeyError(f"output={output!r}: the model's outputs have no such key (got {keys})")
        chosen = outputs[output]
    elif isinstance(output, int):
        if not isinstance(outputs, (tuple, list)) or not -len(outputs) <= output < len(outputs):
            raise IndexError(f"output={output}: the model's outputs are not a tuple/list that long")
        chosen = outputs[output]
    elif isinstance(outputs, torch.Tensor):
        chosen = outputs
    elif isinstance(outputs, dict):
        if "logits" not in outputs:
            raise KeyError(
                f"the model returns a dict with keys {list(outputs)}; pass output='<key>' "
                f"to attach()/Trainer() to say which entry is the prediction"
            )
        chosen = outputs["logits"]
    elif isinstance(outputs, (tuple, list)) and outputs:
        chosen = outputs[0]
    else:
        raise TypeError(f"the model's outputs are a {type(outputs).__name__}; pass output=<callable> to pick a tensor")
    if not isinstance(chosen, torch.Tensor):
        raise TypeError(f"output={output!r} selected a {type(chosen).__name__}, expected a tensor")
    return chosen


def all_reduce(tensor: torch.Tensor, world_size: int) -> torch.Tensor:
    """``tensor`` summed over every rank in place (unchanged outside ``torch.distributed``)."""
    if world_size > 1 and torch.distributed.is_initialized():
        torch.distributed.all_reduce(tensor)
    return tensor


class EvalState:
    """What one evaluation accumulates, all of it on the device until the end."""

    def __init__(self) -> None:
        self.outputs: list[torch.Tensor] = []
        self.targets: list[torch.Tensor] = []
        self.other_targets: list[Any] = []
        self.loss_sum: torch.Tensor | None = None
        self.loss_count = 0
        self.batches = 0

    def add(self, prediction: torch.Tensor | None, targets: Any, loss: torch.Tensor | None) -> None:
        """Keep one batch's prediction (``None``: none here), targets and sample-weighted loss; no read-back."""
        self.batches += 1
        if prediction is not None:
            self.outputs.append(prediction)
        if isinstance(targets, torch.Tensor):
            self.targets.append(targets.detach())
        else:
            self.other_targets.append(targets)
        if loss is not None:
            sized = prediction if prediction is not None else targets
            size = sized.shape[0] if isinstance(sized, torch.Tensor) and sized.ndim else 1
            weighted = loss.detach().float() * size
            self.loss_sum = weighted if self.loss_sum is None else self.loss_sum + weighted
            self.loss_count += size

    def finish(self, run: Run) -> tuple[torch.Tensor | None, Any, dict[str, float]]:
        """The whole set's outputs and targets (gathered over ranks) and its metrics."""
        if not self.batches:
            run.warn_once("empty-eval", "tbhooks: the evaluation saw no batch (empty loader?); nothing evaluated")
            return torch.empty(0), torch.empty(0, dtype=torch.long), {}
        outputs = run.gather(torch.cat([o if o.ndim else o.reshape(1) for o in self.outputs])) if self.outputs else None
        targets: Any = (
            run.gather(torch.cat(self.targets)) if self.targets and not self.other_targets else self.other_targets
        )
        metrics: dict[str, float] = {}
        if self.loss_sum is not None:
            count = torch.tensor(float(self.loss_count), device=self.loss_sum.device)
            total = all_reduce(torch.stack([self.loss_sum, count]), run.world_size)
            metrics["loss"] = float(total[0] / total[1])
            run.check_finite("eval/loss", metrics["loss"])
        scored = None if outputs is None else run.class_scores(outputs, targets, who="accuracy")
        if scored is not None:
            scores, labels = scored
            metrics["accuracy"] = float((scores.argmax(dim=1) == labels).float().mean()) if labels.numel() else 0.0
        return outputs, targets, metrics
