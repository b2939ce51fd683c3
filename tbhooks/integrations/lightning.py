"""Lightning adapter: :class:`TbhooksCallback` maps a ``Trainer.fit``'s callback points onto :class:`tbhooks.Hooks`.

Every plugin (built-in, tbhooks-figures, or found by entry point) works unchanged; the adapter logs nothing of
its own.  ``docs/integrations-lightning.md`` has the table and the decisions.  This module imports
``lightning.pytorch`` or ``pytorch_lightning`` (the one already imported, else the installed one);
``import tbhooks`` never does.
"""

from __future__ import annotations

import contextlib
import importlib
import signal
import sys
import threading
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from tbhooks.checks import check_attach_options
from tbhooks.errors import TbhooksWarning
from tbhooks.hooks import Hooks
from tbhooks.trainer import split_batch

if TYPE_CHECKING:
    import os
    from collections.abc import Callable
    from types import ModuleType

    from torch import nn
    from torch.utils.hooks import RemovableHandle


def import_lightning() -> ModuleType:
    """``lightning.pytorch`` or ``pytorch_lightning``: the one the program imported already, else the installed one."""
    names = ("lightning.pytorch", "pytorch_lightning")
    for name in [name for name in names if name in sys.modules] or names:
        with contextlib.suppress(ImportError):
            return importlib.import_module(name)
    raise ImportError("tbhooks.integrations.lightning needs Lightning: pip install 'tbhooks[lightning]'")


pl = import_lightning()

FROM_TRAINER = {
    name: f"TbhooksCallback sets {name} from the Lightning Trainer and LightningModule; "
    "resume with trainer.fit(..., ckpt_path=...) instead"
    for name in ("model", "start_step", "start_epoch", "epochs")
}
"""``attach`` options the callback takes from the Lightning ``Trainer`` itself -> the error refusing each."""
WRONG_KIND = (
    "TbhooksCallback got {got}, not a {pl}.Trainer and LightningModule: pass it to that Trainer, "
    "Trainer(callbacks=[TbhooksCallback(...)]) (with both Lightning packages installed, import the one you train "
    "with before tbhooks.integrations.lightning); nothing is logged"
)


def step_loss(outputs: Any) -> torch.Tensor | None:
    """The loss in a step's output: a one-element tensor, or the ``"loss"`` entry of a dict; detached."""
    value = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
    return value.detach() if isinstance(value, torch.Tensor) and value.numel() == 1 else None


def inputs_and_targets(batch: Any) -> tuple[Any, Any]:
    """``(inputs, targets)`` of a pair or an ``inputs``/``targets`` dict; any other batch is all inputs."""
    try:
        return split_batch(batch)
    except TypeError:
        return batch, None


class TbhooksCallback(pl.Callback):  # type: ignore[misc,name-defined]
    """Raise tbhooks' events from a Lightning fit: ``Trainer(callbacks=[TbhooksCallback(**options)])``.

    :param logdir: where tbhooks writes when the Trainer has no ``TensorBoardLogger`` (default
        ``<default_root_dir>/tbhooks``); with one, into the logger's ``log_dir`` (one run, not two).
    :param options: :func:`tbhooks.attach`'s (``plugins``, ``disable``, ``class_names``, ``hparams``,
        ``output``, ``optimizer``, ...), checked here; model, steps and epochs come from the Trainer.

    ``hooks`` is the fit's :class:`tbhooks.Hooks`; ``on_attach`` callables get each new one before its first event.
    """

    def __init__(self, logdir: str | os.PathLike[str] | None = None, **options: Any) -> None:
        super().__init__()
        check_attach_options({"logdir": logdir, **options}, taken=FROM_TRAINER)
        self.logdir, self.options = logdir, options
        self.hooks: Hooks | None = None
        self.on_attach: list[Callable[[Hooks], None]] = []
        self._open = self._epoch_open = self._evaluating = self._warned = False
        self._step_before = 0
        self._losses: list[torch.Tensor] = []  # the training_step losses of the optimizer step under way
        self._handle: RemovableHandle | None = None
        self._seen: Any = None  # the LightningModule's forward output in this step
        self._batch: tuple[Any, Any] = (None, None)  # the step's batch and batch_idx

    def _live(self) -> Hooks | None:
        return self.hooks if self._open else None

    def _run_dir(self, trainer: Any) -> str | os.PathLike[str]:
        for logger in trainer.loggers:
            if isinstance(logger, pl.loggers.TensorBoardLogger):
                if self.logdir is not None and trainer.is_global_zero and Path(self.logdir) != Path(logger.log_dir):
                    where = f"the TensorBoardLogger's log_dir {logger.log_dir!r} (one run)"
                    warnings.warn(
                        f"TbhooksCallback writes into {where}; logdir={str(self.logdir)!r} is not used",
                        TbhooksWarning,
                        stacklevel=3,
                    )
                return logger.log_dir
        return Path(trainer.default_root_dir) / "tbhooks" if self.logdir is None else self.logdir

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        """Attach and fire ``on_fit_start``: after Lightning restored a checkpoint's step and ran its sanity check."""
        self._open = False
        if not (isinstance(trainer, pl.Trainer) and isinstance(pl_module, pl.LightningModule)):
            if not self._warned:
                self._warned = True
                got = f"a {type(trainer).__name__} and a {type(pl_module).__name__}"
                warnings.warn(WRONG_KIND.format(got=got, pl=pl.__name__), TbhooksWarning, stacklevel=2)
            return
        options = dict(self.options)
        hparams = {**dict(pl_module.hparams), **dict(options.pop("hparams", None) or {})}
        optimizers = [o for o in trainer.optimizers if isinstance(o, torch.optim.Optimizer)]
        options.setdefault("optimizer", optimizers[0] if optimizers else None)
        epochs = trainer.max_epochs if trainer.max_epochs is not None and trainer.max_epochs >= 0 else None
        hooks = Hooks(
            pl_module,
            logdir=self._run_dir(trainer),
            hparams=hparams,
            epochs=epochs,
            start_step=trainer.global_step,
            start_epoch=trainer.current_epoch,
            **options,
        )
        for callback in self.on_attach:
            callback(hooks)
        self.hooks, self._open, self._epoch_open, self._evaluating = hooks, True, False, False
        self._losses, self._seen = [], None
        # Lightning's SIGTERM handler stays (it stops at a batch end, every rank agreeing, then on_exception
        # closes the run): it replaces tbhooks' own right away, and the run's close restores it again.
        main = threading.current_thread() is threading.main_thread()
        lightning_handler = signal.getsignal(signal.SIGTERM) if main else None
        hooks.fit_start()
        if lightning_handler is not None:
            signal.signal(signal.SIGTERM, lightning_handler)

    # The predictions: the step's "outputs" entry, else the LightningModule's forward output, kept by a
    # forward hook that is there only on the steps some plugin logs, and during validation.

    def _watch(self, module: nn.Module) -> None:
        if self._handle is None:
            self._handle = module.register_forward_hook(self._remember)

    def _remember(self, module: nn.Module, args: Any, output: Any) -> None:
        # Under DDP Lightning runs the step itself through the module's call ("forward redirection"):
        # that call takes the step's own (batch, batch_idx, ...) and returns the step's output.
        if len(args) >= 2 and args[0] is self._batch[0] and type(args[1]) is int and args[1] == self._batch[1]:
            return
        self._seen = output

    def _predictions(self, outputs: Any, *, unhook: bool) -> Any:
        seen, self._seen = self._seen, None
        if unhook and self._handle is not None:
            self._handle.remove()
            self._handle = None
        found = outputs.get("outputs") if isinstance(outputs, Mapping) else None
        return seen if found is None else found

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        hooks = self._live()
        if hooks is not None:
            hooks.epoch_start()
            self._epoch_open = True

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        hooks = self._live()
        if hooks is None:
            return
        self._step_before, self._batch = trainer.global_step, (batch, batch_idx)
        hooks.batch_start()
        if hooks.due():
            self._watch(pl_module)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        hooks = self._live()
        if hooks is None:
            return
        loss = step_loss(outputs)
        if loss is not None:
            if pl_module.automatic_optimization and trainer.accumulate_grad_batches > 1:
                loss = loss * trainer.accumulate_grad_batches  # Lightning hands on the loss divided by it
            self._losses.append(loss)
        if trainer.global_step == self._step_before:
            return  # gradients accumulated, no optimizer step: not a tbhooks step
        losses, self._losses = self._losses, []
        mean = losses[0] if len(losses) == 1 else torch.stack(losses).mean() if losses else None
        predictions = self._predictions(outputs, unhook=True)
        inputs, targets = inputs_and_targets(batch)
        hooks.batch_end(inputs, targets, predictions, mean)
        if hooks.should_stop:
            trainer.should_stop = True
        if batch_idx + 1 >= trainer.num_training_batches:
            self._end_epoch(hooks)  # before the epoch-end validation, as tbhooks' lifecycle orders them

    def _end_epoch(self, hooks: Hooks) -> None:
        if self._epoch_open:
            self._epoch_open = False
            hooks.epoch_end()

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        hooks = self._live()
        if hooks is not None:
            self._end_epoch(hooks)  # an epoch that ended early (max_steps, should_stop, an unsized loader)

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        hooks = self._live()
        if hooks is None or trainer.sanity_checking:
            return
        self._evaluating = True
        self._predictions(None, unhook=True)
        self._watch(pl_module)
        hooks.eval_start()

    def on_validation_batch_start(
        self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._batch = (batch, batch_idx)

    def on_validation_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        hooks = self._live()
        if hooks is None or not self._evaluating or dataloader_idx != 0:
            return
        predictions = self._predictions(outputs, unhook=False)
        if predictions is None:
            hooks.run.warn_once(
                "lightning:no-predictions",
                "tbhooks: a validation batch gave no predictions: call self(x) in validation_step, or return "
                "{'loss': loss, 'outputs': logits}; that batch is left out of the evaluation",
            )
            return
        inputs, targets = inputs_and_targets(batch)
        hooks.eval_batch(inputs, targets, predictions, step_loss(outputs))

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        hooks = self._live()
        if hooks is not None and self._evaluating:
            self._evaluating = False
            self._predictions(None, unhook=True)
            hooks.eval_end()  # on every rank: the evaluation set is gathered from all of them

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        """Fire ``on_fit_end`` and close, before Lightning's teardown restores the signal handlers it replaced."""
        hooks = self._live()
        if hooks is not None:
            self._open = False
            hooks.fit_end()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        hooks = self._live()
        if hooks is not None:
            self._open = False
            self._predictions(None, unhook=True)
            hooks.exception(exception)
