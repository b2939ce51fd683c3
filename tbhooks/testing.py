"""A test kit for plugin authors, built on the real parts rather than mocks: :func:`read_events` reads a
log directory back with TensorBoard's own ``EventAccumulator``; :class:`HookRecorder` records every event
a run raises, with its arguments, through pluggy's hook-call monitoring.  Example::

    from tbhooks.testing import HookRecorder, read_events

    with tbhooks.attach(model, logdir=tmp_path, plugins=[MyPlugin()]) as hooks:
        recorder = HookRecorder(hooks)
        ...
    assert recorder.names()[0] == "on_epoch_start"
    assert read_events(tmp_path).scalars["my/tag"][-1].value == 1.0
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import os

    from tbhooks.hooks import Hooks
    from tbhooks.trainer import Trainer


@dataclass(frozen=True)
class Scalar:
    """One scalar event."""

    step: int
    value: float
    wall_time: float


@dataclass
class Events:
    """What one run directory holds, as TensorBoard reads it: ``scalars``, ``histograms``, ``images``, ``texts``
    and ``pr_curves`` map tag -> events in step order; ``graph`` is whether a graph was written; ``accumulator``
    is the ``EventAccumulator``, for anything else."""

    scalars: dict[str, list[Scalar]] = field(default_factory=dict)
    histograms: dict[str, list[Any]] = field(default_factory=dict)
    images: dict[str, list[Any]] = field(default_factory=dict)
    texts: dict[str, list[str]] = field(default_factory=dict)
    pr_curves: dict[str, list[Any]] = field(default_factory=dict)
    graph: bool = False
    accumulator: Any = None

    def steps(self, tag: str) -> list[int]:
        """The steps of scalar ``tag``."""
        return [s.step for s in self.scalars[tag]]

    def values(self, tag: str) -> list[float]:
        """The values of scalar ``tag``."""
        return [s.value for s in self.scalars[tag]]


def read_events(logdir: str | os.PathLike[str]) -> Events:
    """Read every event file directly in ``logdir``; nothing is sampled away, so counts are exact."""
    from tensorboard.backend.event_processing import event_accumulator as ea
    from tensorboard.plugins.text import metadata as text_metadata
    from tensorboard.util import tensor_util

    path = Path(logdir)
    if not path.is_dir():
        raise FileNotFoundError(f"logdir {str(path)!r} does not exist")
    keep_all = dict.fromkeys((ea.SCALARS, ea.HISTOGRAMS, ea.IMAGES, ea.TENSORS, ea.GRAPH), 0)
    acc = ea.EventAccumulator(str(path), size_guidance=keep_all)
    acc.Reload()
    tags = acc.Tags()
    events = Events(accumulator=acc, graph=bool(tags.get("graph")))
    for tag in tags.get("scalars", []):
        events.scalars[tag] = [Scalar(e.step, e.value, e.wall_time) for e in acc.Scalars(tag)]
    for tag in tags.get("histograms", []):
        events.histograms[tag] = list(acc.Histograms(tag))
    for tag in tags.get("images", []):
        events.images[tag] = list(acc.Images(tag))
    for tag in tags.get("tensors", []):
        content = acc.SummaryMetadata(tag).plugin_data
        if content.plugin_name == text_metadata.PLUGIN_NAME:
            events.texts[tag] = [tensor_util.make_ndarray(e.tensor_proto).item().decode() for e in acc.Tensors(tag)]
        elif content.plugin_name == "pr_curves":
            events.pr_curves[tag] = [(e.step, tensor_util.make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)]
        elif tag not in events.scalars:
            events.scalars.setdefault(tag, [])
    return events


class HookRecorder:
    """Record every event of a run, in order, with its keyword arguments.

    :param hooks: the :class:`tbhooks.Hooks` that ``attach`` returned, to record from now on; or ``None``,
        then :meth:`install` it on a trainer.  :meth:`undo` stops recording.
    """

    def __init__(self, hooks: Hooks | None = None) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.undo: Any = None
        if hooks is not None:
            self.watch(hooks)

    def install(self, trainer: Trainer) -> HookRecorder:
        """Record every run ``trainer`` starts from now on, from its first event."""
        trainer.on_attach.append(self.watch)
        return self

    def watch(self, hooks: Hooks) -> None:
        """Start recording the events of ``hooks``."""

        def before(hook_name: str, hook_impls: Any, kwargs: dict[str, Any]) -> None:
            self.calls.append((hook_name, dict(kwargs)))

        self.undo = hooks.plugin_manager.add_hookcall_monitoring(before, lambda *_: None)

    def names(self) -> list[str]:
        """The event names in the order they fired."""
        return [name for name, _ in self.calls]

    def collapsed(self) -> list[str]:
        """:meth:`names` with runs of the same event folded into one, for lifecycle comparisons."""
        return [name for name, _ in itertools.groupby(self.names())]

    def of(self, name: str) -> list[dict[str, Any]]:
        """The keyword arguments of every call of event ``name``."""
        return [kwargs for hook, kwargs in self.calls if hook == name]
