"""PyTorch-Ignite adapter: tbhooks' plugins inside an ``ignite.engine.Engine`` run.

:func:`attach` registers handlers on the trainer's (and the evaluator's)
events and maps each one onto a :class:`tbhooks.Hooks` call, so every plugin
(built-in, tbhooks-figures, or found by entry point) works unchanged.  The
adapter logs nothing of its own.  ``docs/integrations-ignite.md`` has the
event table, the ``output_transform`` forms and the decisions.

This module imports Ignite; ``import tbhooks`` never imports it.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

import torch

try:
    from ignite.engine import Engine, Events
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("tbhooks.integrations.ignite needs pytorch-ignite: pip install 'tbhooks[ignite]'") from exc

from tbhooks.evaluation import select_output
from tbhooks.hooks import Hooks
from tbhooks.hooks import attach as attach_hooks

if TYPE_CHECKING:
    from collections.abc import Callable

    from torch import nn

# The transforms that hand plugins the whole batch as tensors (and skip the trainer's default loss.item()).
TRAIN_TRANSFORM = "output_transform=lambda x, y, y_pred, loss: (x, y, y_pred, loss)"
EVAL_TRANSFORM = "output_transform=lambda x, y, y_pred: (x, y, y_pred)"

Batch = tuple[Any, Any, Any, "torch.Tensor | None"]  # (inputs, targets, outputs, loss), as Hooks.batch_end takes them

hosts: weakref.WeakKeyDictionary[Engine, weakref.ref[IgniteHost]] = weakref.WeakKeyDictionary()
"""The adapter attached to each trainer, so that a second :func:`attach` replaces the first."""


def as_loss(value: Any) -> torch.Tensor | None:
    """``value`` as a one-element loss tensor (a number becomes a CPU tensor), or ``None``; reads no value."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        # Ignite's default output, loss.item(): the read-back has happened already; this is a CPU scalar.
        return torch.tensor(float(value))
    return None


def read_train_output(output: Any) -> tuple[Batch, str | None]:
    """The batch in a training step's ``engine.state.output`` and, when it is not all there, what it is."""
    if isinstance(output, (tuple, list)) and len(output) == 4 and (loss := as_loss(output[3])) is not None:
        return (output[0], output[1], output[2], loss), None
    loss = as_loss(output)
    return (None, None, None, loss), "a loss alone" if loss is not None else "unreadable"


def read_eval_output(output: Any) -> Batch | None:
    """The batch in an evaluation step's output: ``(y_pred, y)``, ``(x, y, y_pred)`` or ``(x, y, y_pred, loss)``."""
    if not isinstance(output, (tuple, list)) or len(output) not in (2, 3, 4):
        return None
    if len(output) == 2:
        return None, output[1], output[0], None
    loss = as_loss(output[3]) if len(output) == 4 else None
    return None if len(output) == 4 and loss is None else (output[0], output[1], output[2], loss)


class IgniteHost:
    """The handlers of one :func:`attach`: Ignite's events in, :class:`tbhooks.Hooks` calls out."""

    def __init__(self, hooks: Hooks, trainer: Engine, evaluator: Engine | None) -> None:
        self.hooks, self.trainer, self.evaluator = hooks, trainer, evaluator
        self.in_epoch = self.closed = False
        self.failed: BaseException | None = None
        trainer_events: list[tuple[Any, Callable[..., None]]] = [
            (Events.STARTED, self.started),
            (Events.EPOCH_STARTED, self.epoch_started),
            (Events.ITERATION_STARTED, self.iteration_started),
            (Events.ITERATION_COMPLETED, self.iteration_completed),
            (Events.EPOCH_COMPLETED, self.end_epoch),
            (Events.TERMINATE, self.terminated),
            (Events.COMPLETED, self.completed),
            # Two handlers: the first closes the run, the last re-raises (see ``started``).
            (Events.EXCEPTION_RAISED, self.exception_raised),
            (Events.EXCEPTION_RAISED, self.reraise),
        ]
        eval_events: list[tuple[Any, Callable[..., None]]] = [
            (Events.STARTED, self.eval_started),
            (Events.ITERATION_COMPLETED, self.eval_iteration),
            (Events.COMPLETED, self.eval_completed),
        ]
        self.handlers = [(trainer, event, handler) for event, handler in trainer_events]
        self.handlers += [(evaluator, event, handler) for event, handler in eval_events if evaluator is not None]

    def register(self) -> None:
        for engine, event, handler in self.handlers:
            engine.add_event_handler(event, handler)

    def detach(self, *, keep: tuple[Callable[..., None], ...] = ()) -> None:
        """Remove the handlers but ``keep``; a closed run keeps STARTED (to warn) and the exception pair, as
        Ignite swallows every exception once an EXCEPTION_RAISED handler was added, even if it is removed."""
        for engine, event, handler in self.handlers:
            if handler not in keep and engine.has_event_handler(handler, event):
                engine.remove_event_handler(handler, event)

    def close(self) -> None:
        self.closed = True
        self.detach(keep=(self.started, self.exception_raised, self.reraise))

    # -- the trainer ----------------------------------------------------------

    def started(self, engine: Engine) -> None:
        if self.closed:
            self.hooks.run.warn_once(
                "ignite:closed",
                "tbhooks: this trainer's tbhooks run ended with its previous run(), so this one is not logged; "
                "call tbhooks.integrations.ignite.attach(trainer, model, ...) again before trainer.run",
            )
            return
        state = engine.state
        if self.hooks.epochs is None and state.max_epochs is not None:
            self.hooks.epochs = state.max_epochs - state.epoch
        self.hooks.fit_start()
        # Behind every handler added before run(): a user's COMPLETED evaluation is still logged, and a
        # user's EXCEPTION_RAISED handler (a Checkpoint) still runs before the exception propagates.
        for event, handler in ((Events.COMPLETED, self.completed), (Events.EXCEPTION_RAISED, self.reraise)):
            engine.remove_event_handler(handler, event)
            engine.add_event_handler(event, handler)

    def epoch_started(self, engine: Engine) -> None:
        self.end_epoch()
        self.hooks.epoch_start()
        self.in_epoch = True

    def iteration_started(self, engine: Engine) -> None:
        self.hooks.batch_start()

    def iteration_completed(self, engine: Engine) -> None:
        output = engine.state.output
        (inputs, targets, outputs, loss), missing = read_train_output(output)
        if missing is not None:
            fed = "the loss only" if loss is not None else "nothing"
            self.hooks.run.warn_once(
                "ignite:train-output",
                f"tbhooks: the Ignite trainer's output is a {type(output).__name__} ({missing}), not "
                f"(x, y, y_pred, loss), so plugins get {fed} from it; pass create_supervised_trainer(..., "
                f"{TRAIN_TRANSFORM}), which also skips Ignite's default loss.item(), a device sync on every step",
            )
        if outputs is not None and self.hooks.due() and not self.readable(outputs):
            outputs = None
        self.hooks.batch_end(inputs, targets, outputs, self.on_device(loss))
        if self.hooks.should_stop:
            engine.terminate()

    def end_epoch(self, engine: Engine | None = None) -> None:
        """EPOCH_COMPLETED, and wherever an epoch still open must end first."""
        if self.in_epoch:
            self.in_epoch = False
            self.hooks.epoch_end()

    def terminated(self, engine: Engine) -> None:
        self.end_epoch()  # terminate() mid-epoch skips EPOCH_COMPLETED
        if engine.should_terminate == "skip_completed":  # then COMPLETED does not fire
            self.completed(engine)

    def completed(self, engine: Engine) -> None:
        self.close()
        self.end_epoch()
        self.hooks.fit_end()

    def exception_raised(self, engine: Engine, exc: BaseException) -> None:
        if exc is self.failed:
            raise exc  # Ignite fires EXCEPTION_RAISED again for an error of the step: raise at once
        self.failed = exc
        self.close()
        self.hooks.exception(exc)  # a SIGTERM (Terminated) then ends the process

    def reraise(self, engine: Engine, exc: BaseException) -> None:
        """Keep the exception propagating: Ignite re-raises it only while no EXCEPTION_RAISED handler exists."""
        raise exc

    # -- the evaluator --------------------------------------------------------

    def eval_started(self, engine: Engine) -> None:
        if self.in_epoch and self.trainer.last_event_name == Events.EPOCH_COMPLETED:
            self.end_epoch()  # the user's evaluation handler ran before the adapter's EPOCH_COMPLETED
        self.hooks.eval_start()

    def eval_iteration(self, engine: Engine) -> None:
        output = engine.state.output
        batch = read_eval_output(output)
        if batch is None:
            self.hooks.run.warn_once(
                "ignite:eval-output",
                f"tbhooks: the Ignite evaluator's output is a {type(output).__name__}, not (y_pred, y), (x, y, y_pred) "
                f"or (x, y, y_pred, loss); the batch is skipped; pass create_supervised_evaluator(..., "
                f"{EVAL_TRANSFORM})",
            )
        elif self.readable(batch[2]):
            self.hooks.eval_batch(*batch[:3], self.on_device(batch[3]))

    def eval_completed(self, engine: Engine) -> None:
        self.hooks.eval_end()

    def on_device(self, loss: torch.Tensor | None) -> torch.Tensor | None:
        """A loss given as a number, on the model's device when several ranks reduce it (NCCL has no CPU)."""
        if loss is not None and self.hooks.run.world_size > 1 and loss.device.type == "cpu":
            return loss.to(self.hooks.run.device)
        return loss

    def readable(self, outputs: Any) -> bool:
        """Whether the core can pick the prediction out of ``y_pred`` (else one warning, and no prediction)."""
        try:
            select_output(outputs, self.hooks.output)
        except (KeyError, IndexError, TypeError) as exc:
            self.hooks.run.warn_once(
                "ignite:prediction",
                f"tbhooks: y_pred cannot be read as a prediction ({exc}); pass attach(..., output=...) "
                "or an output_transform whose y_pred is the tensor of predictions",
            )
            return False
        return True


def attach(trainer: Engine, model: nn.Module, *, evaluator: Engine | None = None, **options: Any) -> Hooks:
    """Run tbhooks' plugins in ``trainer.run(...)`` and, with ``evaluator``, in its evaluations.

    Call it before adding your own evaluation handler.  ``options`` are
    :func:`tbhooks.attach`'s (``logdir`` defaults to ``runs/tbhooks``; pass
    ``optimizer`` for the learning rate).  Returns the :class:`tbhooks.Hooks`
    (``hooks.last_metrics`` holds the last evaluation's metrics).  The run
    closes when ``trainer.run`` ends; attach again for another run.
    """
    if not isinstance(trainer, Engine):
        raise TypeError(f"trainer expects an ignite.engine.Engine, got {type(trainer).__name__}")
    if evaluator is not None and not isinstance(evaluator, Engine):
        raise TypeError(f"evaluator expects an ignite.engine.Engine or None, got {type(evaluator).__name__}")
    if evaluator is trainer:
        raise ValueError("evaluator expects a second Engine (create_supervised_evaluator), not the trainer itself")
    options.setdefault("logdir", "runs/tbhooks")
    hooks = attach_hooks(model, **options)
    host = IgniteHost(hooks, trainer, evaluator)
    previous = hosts[trainer]() if trainer in hosts else None
    if previous is not None:  # replaced: its handlers go, its run closes (the new pair is added below)
        previous.detach()
        previous.hooks.close()
    host.register()
    hosts[trainer] = weakref.ref(host)
    return hooks
