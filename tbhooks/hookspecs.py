"""The event contract: every event a plugin can subscribe to.

Each spec names an event, the keyword arguments it is raised with, and what a return value is used for.
A plugin implements an event with a same-named function or method marked ``@tbhooks.hookimpl``, taking any
subset of the arguments in any order; give it no parameter defaults (pluggy passes only those without).

Events fire in this order (as the README's "Events" lists them; ``tests/test_lifecycle.py`` checks it)::

    on_fit_start
    on_capture_request
    for each epoch:
        on_epoch_start
        on_batch_end                 (once per training batch)
        on_epoch_end
        on_eval_start                (when evaluating)
        on_eval_batch_end            (once per evaluation batch)
        on_eval
    on_fit_end                       (only when fit completes, or stops early)
    on_exception                     (in its place, when fit raises)

The names are stable: arguments may be added, none is ever renamed or removed.

When ``on_batch_end`` fires: the schedule
------------------------------------------

``on_batch_end`` runs after every training batch, so its cost matters.  A plugin declares the steps it
wants it on with a plain method (not a hook)::

    def batch_end_due(self, step: int) -> bool:
        return step % self.every_n_steps == 0

The core asks it once per step, before the event, and raises ``on_batch_end`` only for the plugins due
(pluggy's ``subset_hook_caller``), not at all when none is; a plugin without it is due on every step.  The
answer may depend on the plugin's state (``Graph`` is due once) but must be cheap: no tensor work.  Module
captures reach the plugins due at their step, so give a ``Capture`` the same schedule.

Shared arguments (a hook's docstring describes them only where it means something more specific):
``run`` is the :class:`tbhooks.run.Run` (writer, model, optimizer, rank, helpers); ``step`` is the global
training step, the batches finished in this run over epochs and resumes and the x-axis of every scalar
(1 at the first ``on_batch_end``); ``epoch`` is the current epoch's index, from 0.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tbhooks.markers import hookspec

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    import torch

    from tbhooks.capture import Capture
    from tbhooks.run import Run


@hookspec
def on_fit_start(run: Run, epochs: int | None) -> None:
    """Fires once before the first batch of a fit (or on entering ``with tbhooks.attach(...)``).

    :param run: the run; its writer is open and ``run.step`` is the step resumed from (0 for a new run).
    :param epochs: the epochs the fit will run, or ``None`` when a hand-written loop did not say.

    Return ignored.  Plugins needing a data sample take it from the first ``on_batch_end``.
    """


@hookspec
def on_capture_request(run: Run) -> Sequence[Capture] | None:
    """Fires once after ``on_fit_start`` to ask which module outputs, inputs or gradients to capture, and when.

    :param run: the run; submodule names refer to ``run.model`` (unwrapped from DistributedDataParallel).

    Return :class:`tbhooks.capture.Capture` objects (or ``None``); torch module hooks are registered only
    on steps where one is due, and the tensors reach ``on_batch_end``/``on_eval_batch_end`` as ``captured``.
    """


@hookspec
def on_epoch_start(run: Run, step: int, epoch: int) -> None:
    """Fires at the start of every training epoch, before its first batch.

    :param step: the global step before the epoch's first batch.
    :param epoch: the index of the epoch about to start.

    Return ignored.
    """


@hookspec
def on_batch_end(
    run: Run,
    step: int,
    epoch: int,
    batch_idx: int,
    inputs: Any,
    targets: Any,
    outputs: torch.Tensor | None,
    loss: torch.Tensor | None,
    captured: Mapping[str, torch.Tensor],
) -> None:
    """Fires after a training batch, once the optimizer stepped, for each plugin due (see the schedule above).

    The hot path: a plugin without ``batch_end_due`` is called every step and must return at once on steps
    it does not log, with no ``.item()``, ``.cpu()`` or ``print`` of a tensor (each syncs the device).

    :param step: the global step of this batch (1 for the first).
    :param batch_idx: the batch's index within the epoch, from 0.
    :param inputs: the inputs as the model received them (tensor, tuple or dict), on the model's device.
    :param targets: the batch's targets.
    :param outputs: the prediction, detached, chosen by the ``output`` option (``None`` where a host had none).
    :param loss: the loss, detached (``None`` if the loop gave none).
    :param captured: this step's detached module captures by ``Capture.key``; empty on most steps.

    Return ignored.  Gradients are still on the parameters (``p.grad``).
    """


@hookspec
def on_epoch_end(run: Run, step: int, epoch: int, metrics: Mapping[str, float]) -> None:
    """Fires after an epoch's last batch, before its evaluation; the writer is flushed right after.

    :param step: the global step after the epoch's last batch.
    :param epoch: the index of the epoch that ended.
    :param metrics: ``loss``, the mean batch loss reduced over ranks (absent if no loss was given).

    Return ignored.
    """


@hookspec
def on_eval_start(run: Run, step: int, epoch: int) -> None:
    """Fires before the first batch of an evaluation, at the global ``step`` it belongs to.  Return ignored."""


@hookspec
def on_eval_batch_end(
    run: Run,
    step: int,
    epoch: int,
    batch_idx: int,
    inputs: Any,
    targets: Any,
    outputs: torch.Tensor | None,
    loss: torch.Tensor | None,
    captured: Mapping[str, torch.Tensor],
) -> None:
    """Fires after every evaluation batch, for per-sample data (embeddings, sample images).

    Arguments as in :func:`on_batch_end`; ``captured`` holds every ``Capture`` with ``at_eval=True``.
    Return ignored.
    """


@hookspec
def on_eval(
    run: Run,
    step: int,
    epoch: int,
    metrics: Mapping[str, float],
    outputs: torch.Tensor | None,
    targets: Any,
) -> None:
    """Fires once an evaluation has seen all its batches; the writer is flushed right after.

    :param step: the global step the evaluation belongs to.
    :param metrics: ``loss`` (mean over samples, when given) and, for classification, ``accuracy``, over
        the whole evaluation set and every rank.
    :param outputs: the whole set's predictions in loader order, gathered from every rank (or ``None``).
    :param targets: the whole set's targets, likewise.

    Return ignored.
    """


@hookspec
def on_fit_end(run: Run, step: int, epoch: int, metrics: Mapping[str, float]) -> None:
    """Fires once when a fit completes or stops early (``run.request_stop``), after the run's background work
    (``run.submit``) has finished and before the writer closes.

    Not when the fit raises (:func:`on_exception` fires instead).

    :param step: the last global step.
    :param epoch: the index of the last epoch.
    :param metrics: the last evaluation's metrics (empty if none ran).

    Return ignored.
    """


@hookspec
def on_exception(run: Run, step: int, epoch: int, exception: BaseException) -> None:
    """Fires once when the fit raises (an error, ``KeyboardInterrupt``, or SIGTERM as :class:`tbhooks.Terminated`).

    It fires at once (background work may still be running: Ctrl-C or SIGTERM wants a prompt end); then the
    background work finishes, the writer is flushed and closed, module hooks removed, and the exception re-raised.

    :param step: the last global step reached.
    :param exception: the exception that ends the run.

    Return ignored.
    """
