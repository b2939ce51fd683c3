"""The event contract: every event a plugin can subscribe to.

Each function below is a *specification*: it names an event, the keyword
arguments the event is raised with, and what a returned value is used for.
A plugin implements an event by defining a function or method of the same
name marked with ``@tbhooks.hookimpl``; it may take any subset of the
arguments, in any order, or none at all.  Do not give hookimpl parameters
default values: pluggy passes only parameters without defaults by position.

Events fire in this order (the README's "Lifecycle" section holds the same
table, and ``tests/test_lifecycle.py`` checks the order against it)::

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

The names are stable: new arguments may be added to an event, none is ever
renamed or removed, so a plugin written today keeps working.

When ``on_batch_end`` fires: the schedule
------------------------------------------

``on_batch_end`` runs after every training batch, so it is the one event
whose cost matters.  A plugin declares the steps it wants it on with a
plain method (not a hook)::

    def batch_end_due(self, step: int) -> bool:
        return step % self.every_n_steps == 0

At every step the core asks each plugin that has ``batch_end_due`` and
raises ``on_batch_end`` only for the plugins that are due (pluggy's
``subset_hook_caller``), and not at all on a step where none is.  A plugin
without the method is due on every step.  The answer may depend on the
step and on the plugin's own state (``Graph`` is due once, at the first
batch of a fit); it is asked once per step, before the event, and must be
cheap: no tensor work.  Module captures (``on_capture_request``) reach the
plugins due at their step, so give a ``Capture`` the same schedule.

Arguments shared by several events:

``run``
    The :class:`tbhooks.run.Run`: the writer, the model, the optimizer, class
    names, rank, and helpers (``submit`` for work off the training thread,
    ``gather`` for tensors spread over ranks, ``class_scores``).
``step``
    The global training step: the number of training batches finished in
    this run, counted over epochs and resumes.  It is the x-axis of every
    scalar.  In ``on_batch_end`` the first batch has step 1.
``epoch``
    The index of the current epoch, from 0.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tbhooks.markers import hookspec

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    import torch

    from tbhooks.capture import Capture
    from tbhooks.run import Run


# ---------------------------------------------------------------------------
# fit start and set-up
# ---------------------------------------------------------------------------


@hookspec
def on_fit_start(run: Run, epochs: int | None) -> None:
    """Fires once, before the first batch of a fit (or when a custom loop
    enters ``with tbhooks.attach(...)``).

    :param run: the run; its writer is open and its step is the step the run
        resumes from (0 for a new run).
    :param epochs: how many epochs the fit will run, or ``None`` when a
        hand-written loop did not say.

    The return value is ignored.  Plugins that need a sample of the data
    (the model graph, the input grid) take it from the first ``on_batch_end``.
    """


@hookspec
def on_capture_request(run: Run) -> Sequence[Capture] | None:
    """Fires once, right after ``on_fit_start``, to ask which module outputs,
    inputs or gradients each plugin wants captured, and when.

    :param run: the run; ``run.model`` is the model (unwrapped from
        DistributedDataParallel) whose submodule names the requests use.

    Return a sequence of :class:`tbhooks.capture.Capture` (or ``None``).
    The core registers torch module hooks only for the steps where some
    request is due, and hands the captured tensors to ``on_batch_end`` and
    ``on_eval_batch_end`` as ``captured``, keyed by ``Capture.key``.
    """


# ---------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------


@hookspec
def on_epoch_start(run: Run, step: int, epoch: int) -> None:
    """Fires at the start of every training epoch, before its first batch.

    :param run: the run.
    :param step: the global step before the epoch's first batch.
    :param epoch: the index of the epoch about to start.

    The return value is ignored.
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
    """Fires after a training batch, once the optimizer has stepped, for each
    plugin due at this step (see "When on_batch_end fires" above).

    This is the hot path: a plugin without ``batch_end_due`` is called on
    every step, and must then return at once on steps it does not log,
    without calling ``.item()``, ``.cpu()`` or ``print`` on a tensor (each
    forces a device synchronisation).

    :param run: the run.
    :param step: the global step of this batch (1 for the first batch).
    :param epoch: the current epoch.
    :param batch_idx: the index of the batch within the epoch, from 0.
    :param inputs: the batch's inputs as the model received them (a tensor,
        a tuple or a dict), on the model's device.
    :param targets: the batch's targets.
    :param outputs: the model's prediction, detached: the tensor chosen by the
        trainer's ``output`` option from tensor, tuple or dict outputs
        (``None`` where a host had none, e.g. a framework step that returns
        only its loss).
    :param loss: the batch's loss, detached (``None`` if the loop gave none).
    :param captured: the tensors captured by module hooks for this step,
        detached, keyed by ``Capture.key``; empty on most steps.

    The return value is ignored.  Gradients are still on the parameters
    (``p.grad``) when this event fires.
    """


@hookspec
def on_epoch_end(run: Run, step: int, epoch: int, metrics: Mapping[str, float]) -> None:
    """Fires at the end of every training epoch, after its last batch and
    before that epoch's evaluation.  The writer is flushed right after.

    :param run: the run.
    :param step: the global step after the epoch's last batch.
    :param epoch: the index of the epoch that ended.
    :param metrics: the epoch's training metrics: ``loss``, the mean of the
        batch losses, reduced over ranks (absent if no loss was given).

    The return value is ignored.
    """


# ---------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------


@hookspec
def on_eval_start(run: Run, step: int, epoch: int) -> None:
    """Fires before the first batch of an evaluation.

    :param run: the run.
    :param step: the global step the evaluation belongs to.
    :param epoch: the current epoch.

    The return value is ignored.
    """


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
    """Fires after every evaluation batch.

    Arguments as in :func:`on_batch_end`; ``captured`` holds the tensors of
    every ``Capture`` with ``at_eval=True``.  Plugins that need per-sample
    data from the evaluation (embeddings, sample images) collect it here;
    outputs and targets of the whole evaluation come with :func:`on_eval`.

    The return value is ignored.
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
    """Fires once an evaluation has seen all its batches.  The writer is
    flushed right after.

    :param run: the run.
    :param step: the global step the evaluation belongs to.
    :param epoch: the current epoch.
    :param metrics: ``loss`` (mean over samples, when losses were given) and,
        for classification, ``accuracy``; computed over the whole evaluation
        set, every rank included.
    :param outputs: the predictions of the whole evaluation set, concatenated
        in loader order and gathered from every rank (``None`` where the host
        had none).
    :param targets: the targets of the whole evaluation set, likewise.

    The return value is ignored.
    """


# ---------------------------------------------------------------------------
# end of the run
# ---------------------------------------------------------------------------


@hookspec
def on_fit_end(run: Run, step: int, epoch: int, metrics: Mapping[str, float]) -> None:
    """Fires once when a fit completes or stops early (``run.request_stop``),
    before the writer is closed.  It does not fire when the fit raises: then
    :func:`on_exception` does.

    :param run: the run.
    :param step: the last global step.
    :param epoch: the index of the last epoch.
    :param metrics: the metrics of the last evaluation (empty if none ran).

    The return value is ignored.
    """


@hookspec
def on_exception(run: Run, step: int, epoch: int, exception: BaseException) -> None:
    """Fires once when the fit raises: an error in the training step,
    ``KeyboardInterrupt``, or SIGTERM (raised as :class:`tbhooks.Terminated`).
    The writer is flushed and closed and every module hook removed right
    after, and the exception is re-raised.

    :param run: the run.
    :param step: the last global step reached.
    :param epoch: the current epoch.
    :param exception: the exception that ends the run.

    The return value is ignored.
    """
