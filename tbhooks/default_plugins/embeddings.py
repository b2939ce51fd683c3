"""Embeddings: evaluation features in TensorBoard's projector, with labels and sprites.

Points are kept on the device, at most ``max_points`` spread evenly over the classes, until the evaluation
ends; then they are gathered from every rank and rank 0 writes the projector's files on the background thread.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import TYPE_CHECKING, Any

import torch

from tbhooks.capture import Capture
from tbhooks.default_plugins.common import (
    check_bool,
    check_floats,
    check_int,
    image_batch,
    square_thumbnails,
    thumbnail_side,
    to_uint8,
    to_unit,
)
from tbhooks.default_plugins.projector import encode_tag, tsv_label, write_projector_files
from tbhooks.markers import hookimpl

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from tbhooks.run import Run

MAX_POINTS = 100_000
"""The most points one embedding may hold (the projector samples larger sets anyway)."""


def _level(counts: Mapping[int, int], limit: int) -> int:
    """The largest ``L`` with ``sum(min(n, L)) <= limit`` over the class counts (total > limit)."""
    low, high = 0, max(counts.values())
    while low < high:
        middle = (low + high + 1) // 2
        if sum(min(n, middle) for n in counts.values()) <= limit:
            low = middle
        else:
            high = middle - 1
    return low


def class_quota(labels: Sequence[int], limit: int) -> dict[int, int]:
    """How many points of each class to keep: ``limit`` points spread evenly over the classes.

    A class with fewer points than its share keeps them all and leaves the rest to the others; a remainder goes
    one point each to the smallest class labels.  The quotas sum to ``min(limit, len(labels))``.
    """
    counts = Counter(labels)
    if len(labels) <= limit:
        return dict(counts)
    level = _level(counts, limit)
    quota = {label: min(n, level) for label, n in counts.items()}
    left = limit - sum(quota.values())
    for label in sorted(counts):
        if left == 0:
            break
        if counts[label] > level:
            quota[label] += 1
            left -= 1
    return quota


def pick(labels: Sequence[int], quota: Mapping[int, int]) -> list[int]:
    """Indices of the first ``quota[c]`` points of each class ``c``, in their original order."""
    taken: Counter[int] = Counter()
    chosen: list[int] = []
    for index, label in enumerate(labels):
        if taken[label] < quota.get(label, 0):
            taken[label] += 1
            chosen.append(index)
    return chosen


class Embeddings:
    """Write evaluation features to the PROJECTOR dashboard, one embedding per logged evaluation.

    Collected at ``on_eval_batch_end`` of every ``every_n_evals``-th evaluation, written at its ``on_eval`` under
    tag ``embeddings/<layer>/step<step>`` (``embeddings/inputs/step<step>`` for ``source="inputs"``).  Labels are
    ``run.class_names[label]``, else the label number; without integer targets there are none.

    :param layer: the submodule (from ``model.named_modules()``) whose *input* is the feature vector; ``None``
        (default) picks the last ``nn.Linear``, the classifier head's input.  An unknown name is a ``ValueError``
        when the fit starts.
    :param source: ``"layer"`` (default) or ``"inputs"``: the flattened raw inputs.
    :param max_points: the most points per embedding (default 1000, at most 100000), drawn evenly across classes.
    :param every_n_evals: write on every N-th evaluation (default 1).
    :param sprites: show image inputs as thumbnails, at most 8192 px a side in all (default True).
    :param mean: per-channel means to undo on the thumbnails (default None).
    :param std: per-channel standard deviations, likewise (default None).
    """

    name = "embeddings"

    def __init__(
        self,
        layer: str | None = None,
        source: str = "layer",
        max_points: int = 1000,
        every_n_evals: int = 1,
        sprites: bool = True,
        mean: Any = None,
        std: Any = None,
    ) -> None:
        if layer is not None and not isinstance(layer, str):
            raise TypeError(f"Embeddings(layer=...) expects a submodule name (str) or None, got {type(layer).__name__}")
        if source not in ("layer", "inputs"):
            raise ValueError(f"Embeddings(source=...) expects 'layer' or 'inputs', got {source!r}")
        if source == "inputs" and layer is not None:
            raise ValueError("Embeddings(layer=...) cannot be combined with source='inputs'; pass one of them")
        self.layer = layer
        self.source = source
        self.max_points = check_int("Embeddings", "max_points", max_points, minimum=1)
        if self.max_points > MAX_POINTS:
            raise ValueError(f"Embeddings(max_points=...) expects an int <= {MAX_POINTS}, got {max_points}")
        self.every_n_evals = check_int("Embeddings", "every_n_evals", every_n_evals, minimum=1)
        self.sprites = check_bool("Embeddings", "sprites", sprites)
        self.mean = check_floats("Embeddings", "mean", mean)
        self.std = check_floats("Embeddings", "std", std, positive=True)
        self._key: str | None = None
        self._name = "inputs"
        self._enabled = False
        self._evals = 0
        self._active = False
        self._reset()

    def _reset(self) -> None:
        self._features: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] | None = []
        self._thumbs: list[torch.Tensor] | None = [] if self.sprites else None
        self._rows = 0
        self._full = False

    @hookimpl
    def on_fit_start(self) -> None:
        self._evals = 0
        self._active = False

    @hookimpl
    def on_capture_request(self, run: Run) -> list[Capture] | None:
        from torch import nn

        self._enabled = True
        if self.source == "inputs":
            self._key, self._name = None, "inputs"
            return None
        modules = dict(run.model.named_modules())
        layer = self.layer
        if layer is None:
            linears = [name for name, module in modules.items() if isinstance(module, nn.Linear)]
            if not linears:
                self._enabled = False
                run.info_once(
                    "embeddings:no-linear",
                    "tbhooks: embeddings skipped: the model has no nn.Linear layer; "
                    "pass Embeddings(layer='<submodule name>') or Embeddings(source='inputs')",
                )
                return None
            layer = linears[-1]
        elif layer not in modules:
            known = ", ".join(repr(name) for name in list(modules)[:20])
            raise ValueError(f"Embeddings(layer={layer!r}): the model has no such submodule; known: {known}")
        capture = Capture(module=layer, kind="input", at_eval=True)
        self._key, self._name = capture.key, layer or "model"
        return [capture]

    @hookimpl
    def on_eval_start(self) -> None:
        self._evals += 1
        self._active = self._enabled and self._evals % self.every_n_evals == 0
        self._reset()

    @hookimpl
    def on_eval_batch_end(self, run: Run, inputs: Any, targets: Any, captured: Mapping[str, torch.Tensor]) -> None:
        if not self._active or self._full:
            return
        features = inputs if self._key is None else captured.get(self._key)
        if not isinstance(features, torch.Tensor) or features.ndim == 0 or features.shape[0] == 0:
            where = "the inputs are not a tensor" if self._key is None else f"layer {self._name!r} was not called"
            run.info_once("embeddings:no-features", f"tbhooks: embeddings: {where} in an evaluation batch; skipped")
            return
        batch = features.shape[0]
        features = features.detach().reshape(batch, -1)
        if self._features and features.shape[1] != self._features[0].shape[1]:
            run.info_once(
                "embeddings:dims",
                f"tbhooks: embeddings: feature size changed from {self._features[0].shape[1]} to "
                f"{features.shape[1]} within an evaluation; later batches are left out",
            )
            self._full = True
            return
        self._features.append(features)
        self._add_labels(targets, batch)
        self._add_thumbs(run, inputs, batch)
        self._rows += batch
        if self._labels is None:
            # Without labels the first max_points points are the sample: stop collecting.
            self._full = self._rows >= self.max_points
        elif self._rows >= 2 * self.max_points:
            self._compact()

    def _add_labels(self, targets: Any, batch: int) -> None:
        if self._labels is None:
            return
        if (
            isinstance(targets, torch.Tensor)
            and targets.ndim == 1
            and targets.shape[0] == batch
            and not targets.is_floating_point()
            and not targets.is_complex()
        ):
            self._labels.append(targets.detach().long())
        else:
            self._labels = None

    def _add_thumbs(self, run: Run, inputs: Any, batch: int) -> None:
        if self._thumbs is None:
            return
        images = image_batch(inputs)
        if images is None or images.shape[0] != batch:
            self._thumbs = None
            return
        side = thumbnail_side(self.max_points, max(images.shape[-2:]))
        unit = to_unit(images.detach(), self.mean, self.std, run=run, who="embeddings")
        self._thumbs.append(to_uint8(square_thumbnails(unit, side)))

    def _compact(self) -> None:
        """Keep only the points the final selection can still need (reads the labels back once): the per-class
        level can only go down as points arrive, so the first ``level + 1`` of each class are all it will take."""
        assert self._labels is not None
        labels = torch.cat(self._labels)
        values = labels.tolist()
        counts = Counter(values)
        level = _level(counts, self.max_points)
        keep = pick(values, {label: level + 1 for label in counts})
        index = torch.tensor(keep, device=labels.device)
        self._labels = [labels[index]]
        features = torch.cat(self._features)
        self._features = [features[index.to(features.device)]]
        if self._thumbs is not None:
            self._thumbs = [torch.cat(self._thumbs)[index.to(self._thumbs[0].device)]]
        self._rows = len(keep)

    @hookimpl
    def on_eval(self, run: Run, step: int) -> None:
        if not self._active:
            return
        self._active = False
        if not self._features:
            return
        # Every rank gathers (a collective), whatever it writes afterwards.
        features = run.gather(torch.cat(self._features))
        labels = run.gather(torch.cat(self._labels)) if self._labels else None
        thumbs = run.gather(torch.cat(self._thumbs)) if self._thumbs else None
        self._reset()
        if not run.is_writer:
            return
        if labels is not None:
            values = labels.tolist()
            keep = pick(values, class_quota(values, self.max_points))
        else:
            keep = list(range(min(self.max_points, features.shape[0])))
        index = torch.tensor(keep, device=features.device)
        chosen = features[index].float()
        if chosen.shape[1] < 2:
            run.info_once(
                "embeddings:one-dim",
                f"tbhooks: embeddings skipped: the features of {self._name!r} have one dimension; "
                f"the projector needs at least two",
            )
            return
        if not bool(torch.isfinite(chosen).all()):
            run.info_once(
                "embeddings:nonfinite",
                f"tbhooks: embeddings skipped at step {step}: the features hold NaN or infinite values",
            )
            return
        metadata = None
        if labels is not None:
            names = run.class_names or []
            metadata = [
                tsv_label(names[label] if 0 <= label < len(names) else label) for label in (values[i] for i in keep)
            ]
        sprite = thumbs[index.to(thumbs.device)].cpu() if thumbs is not None else None
        run.submit(self._write, run, chosen.cpu(), metadata, sprite, step)

    def _write(
        self, run: Run, features: torch.Tensor, metadata: list[str] | None, sprite: torch.Tensor | None, step: int
    ) -> None:
        logdir = str(run.logdir)
        base = run.tag("embeddings", self._name, f"step{step}")
        tag, suffix = base, 1
        while os.path.exists(os.path.join(logdir, f"{step:05d}", encode_tag(tag))):
            suffix += 1
            tag = f"{base}_{suffix}"
        write_projector_files(logdir, features.numpy(), metadata, None if sprite is None else sprite.numpy(), step, tag)
