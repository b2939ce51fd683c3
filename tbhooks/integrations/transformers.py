"""Hugging Face adapter: :class:`TbhooksCallback`, a ``transformers.TrainerCallback`` that raises tbhooks' events.

HF's callbacks carry no batch, so on steps where a plugin is due, and during an evaluation, a forward hook
on the model keeps the call's inputs, ``labels``, ``logits`` and ``loss``.  The adapter logs nothing of
its own; ``docs/integrations-transformers.md`` has the callback table and the decisions.  This module
imports transformers; ``import tbhooks`` never imports it.
"""

from __future__ import annotations

import socket
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

try:
    from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("tbhooks.integrations.transformers needs: pip install 'tbhooks[transformers]'") from exc

from tbhooks.checks import check_attach_options
from tbhooks.errors import TbhooksWarning, Terminated
from tbhooks.evaluation import select_output
from tbhooks.hooks import Hooks
from tbhooks.signals import resend_sigterm

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType

    from torch.utils.hooks import RemovableHandle

FROM_TRAINER = {
    name: f"TbhooksCallback takes {name} from the HF Trainer; leave it out"
    for name in ("model", "optimizer", "epochs", "start_step", "start_epoch")
}
"""``attach`` options the callback takes from the HF Trainer itself -> the error refusing each; it accepts
``logdir``, ``output`` and the other options of ``attach``."""
EMPTY_EVAL = "tbhooks: the evaluation saw no batch"


def default_logdir(args: TrainingArguments) -> Path:
    """A new ``<output_dir>/runs/<time>_<host>_tbhooks`` (``-2``, ``-3``, ... if taken): beside the directory
    HF's own TensorBoardCallback picks (``<output_dir>/runs/<time>_<host>``), so the two never share a run."""
    stem = Path(args.output_dir or ".") / "runs" / f"{time.strftime('%b%d_%H-%M-%S')}_{socket.gethostname()}_tbhooks"
    path, count = stem, 1
    while path.exists():
        count += 1
        path = stem.with_name(f"{stem.name}-{count}")
    return path


class TbhooksCallback(TrainerCallback):
    """Run tbhooks' plugins inside HF's Trainer: ``Trainer(..., callbacks=[TbhooksCallback(**options)])``.

    :param options: ``logdir`` (default :func:`default_logdir`, a fresh directory per ``train()``),
        ``output`` (which model output is the prediction: ``None`` takes ``logits``, a key or a tuple
        index, counted after a tuple's leading loss, picks another; a callable is applied to the
        output) and the other options of
        :func:`tbhooks.attach` (``plugins``, ``disable``, ``class_names``, ``hparams``, ``autoload``,
        ``strict``, ...).  The model, optimizer, epochs and resumed step come from the Trainer.

    Only evaluations that ``train()`` runs are logged.  HF calls no callback when ``train()``
    raises: run it inside ``with callback:`` so that plugins see ``on_exception`` and the writer
    is closed at once (otherwise at the next ``train()`` or when the interpreter exits).
    """

    def __init__(self, **options: Any) -> None:
        check_attach_options(options, taken=FROM_TRAINER)
        self.options = options
        self.hooks: Hooks | None = None
        """The run of the current (or last) ``train()``: ``hooks.step``, ``hooks.last_metrics``, ``hooks.faults``."""
        self.on_attach: list[Callable[[Hooks], None]] = []
        """Called with each run's :class:`Hooks` before its first event (``tbhooks.testing.HookRecorder.watch``)."""
        self.running = self.evaluating = self.warned = False
        self.label = "labels"
        self.handle: RemovableHandle | None = None
        self.seen: tuple[Any, Any, Any] | None = None  # (inputs, labels, model output) of the last call
        self.losses: list[torch.Tensor] = []
        self.fed = 0  # evaluation batches handed on

    def record(self, module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        """The forward hook: keep the call's inputs, labels and output, and its loss (no value is read back)."""
        inputs: Any = {k: v for k, v in kwargs.items() if k not in (self.label, "num_items_in_batch")}
        if args and not inputs:  # HF calls model(**batch); a custom compute_loss may pass tensors by position
            inputs = args[0] if len(args) == 1 else args
        labels, loss = kwargs.get(self.label), output.get("loss") if isinstance(output, dict) else None
        if isinstance(output, (tuple, list)) and output and labels is not None:
            loss, output = output[0], output[1:]  # return_dict=False: (loss, logits, ...) when labels are given
        self.seen = (inputs, labels, output)
        if isinstance(loss, torch.Tensor) and loss.numel() == 1:
            self.losses.append(loss.detach())

    def watch(self, hooks: Hooks) -> None:
        if self.handle is None:
            self.handle = hooks.run.model.register_forward_hook(self.record, with_kwargs=True)

    def take(self, hooks: Hooks, *, unhook: bool) -> tuple[Any, Any, Any, torch.Tensor | None]:
        """``(inputs, labels, prediction, loss)`` of what the hook kept (the loss: the micro-batches' mean)."""
        if unhook and self.handle is not None:
            self.handle.remove()
            self.handle = None
        seen, losses, self.seen, self.losses = self.seen, self.losses, None, []
        loss = None if not losses else losses[0] if len(losses) == 1 else torch.stack(losses).float().mean()
        if seen is None:
            return None, None, None, loss
        return seen[0], seen[1], self.prediction(hooks, seen[2]), loss

    def prediction(self, hooks: Hooks, output: Any) -> torch.Tensor | None:
        """The prediction in the model's output, or ``None`` with one warning naming ``output=``."""
        try:
            return select_output(output, self.options.get("output")).detach()
        except (KeyError, IndexError, TypeError) as exc:
            keys = list(output) if isinstance(output, dict) else type(output).__name__
            hooks.run.warn_once(
                "transformers:no-prediction",
                f"tbhooks: TbhooksCallback found no prediction in the model's output {keys} ({exc.args[0]}); "
                f"pass TbhooksCallback(output='<key>') naming the entry that holds it. Until then plugins get "
                f"no predictions and no evaluation metrics are logged",
            )
            return None

    def live(self) -> Hooks | None:
        return self.hooks if self.running else None

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        model, optimizer = kw.get("model"), kw.get("optimizer")
        if not self.right_kind(args, state, model):
            return
        self.close()  # a run the last train() left open: it raised outside `with callback:`
        self.label = args.label_names[0] if args.label_names and len(args.label_names) == 1 else "labels"
        options = {k: v for k, v in self.options.items() if k not in ("logdir", "output")}
        options["hparams"] = self.hparams(args, state, model, optimizer)
        logdir = self.options.get("logdir")
        hooks = Hooks(
            model,
            logdir=default_logdir(args) if logdir is None else logdir,
            optimizer=optimizer if isinstance(optimizer, torch.optim.Optimizer) else None,
            epochs=int(state.num_train_epochs),
            start_step=state.global_step,
            start_epoch=int(state.epoch or 0),
            **options,
        )
        for callback in self.on_attach:
            callback(hooks)
        self.hooks, self.running, self.evaluating = hooks, True, False
        hooks.fit_start()
        if args.eval_on_start:
            self.start_eval(hooks)

    def right_kind(self, args: Any, state: Any, model: Any) -> bool:
        """Whether an HF Trainer calls; else one warning naming what to do (and nothing is logged)."""
        kinds = (TrainingArguments, TrainerState, torch.nn.Module)
        if all(isinstance(value, kind) for value, kind in zip((args, state, model), kinds, strict=True)):
            return True
        if not self.warned:
            self.warned = True
            got = ", ".join(type(value).__name__ for value in (args, state, model))
            warnings.warn(
                f"TbhooksCallback got {got}, not HF's TrainingArguments, TrainerState and a torch model: it is a "
                f"transformers.TrainerCallback, pass it to transformers.Trainer(callbacks=[TbhooksCallback(...)]) "
                f"(tbhooks.attach serves hand-written loops); nothing is logged",
                TbhooksWarning,
                stacklevel=3,
            )
        return False

    def hparams(self, args: TrainingArguments, state: TrainerState, model: torch.nn.Module, opt: Any) -> dict[str, Any]:
        """The keys ``tbhooks.Trainer`` records, from the Trainer; ``hparams=`` adds to them and overrides them."""
        inner = getattr(opt, "optimizer", opt)  # accelerate's AcceleratedOptimizer wraps the real one
        group = inner.param_groups[0] if isinstance(inner, torch.optim.Optimizer) else {}
        found: dict[str, Any] = {
            "model": type(model).__name__,
            "optimizer": None if inner is None else type(inner).__name__,
            "lr": group.get("initial_lr", group.get("lr", args.learning_rate)),  # before a warm-up changes it
            "epochs": int(state.num_train_epochs),
            "batch_size": args.per_device_train_batch_size,
            "gradient_accumulation_steps": args.gradient_accumulation_steps,
            "parameters": sum(p.numel() for p in model.parameters()),
        }
        found.update(self.options.get("hparams") or {})
        return {key: value for key, value in found.items() if value is not None}

    def on_epoch_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        if (hooks := self.live()) is not None:
            hooks.epoch_start()

    def on_step_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        if (hooks := self.live()) is not None:
            hooks.batch_start()
            if hooks.due():
                self.watch(hooks)

    def on_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        # Here, not in on_step_end: HF zeroes the gradients in between, and plugins read p.grad.
        if (hooks := self.live()) is not None:
            hooks.batch_end(*self.take(hooks, unhook=True))

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        self.after(control)

    def on_epoch_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        if (hooks := self.live()) is not None:
            hooks.epoch_end()
        self.after(control)

    def after(self, control: TrainerControl) -> None:
        """Pass a plugin's stop request on; start tbhooks' evaluation when HF is about to evaluate."""
        if (hooks := self.live()) is not None:
            if hooks.should_stop:
                control.should_training_stop = True
            if control.should_evaluate:
                self.start_eval(hooks)

    def start_eval(self, hooks: Hooks) -> None:
        if not self.evaluating:
            self.evaluating, self.fed = True, 0
            hooks.eval_start()
            self.watch(hooks)

    def on_prediction_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        if (hooks := self.live()) is None or not self.evaluating or self.seen is None:
            return
        inputs, labels, prediction, loss = self.take(hooks, unhook=False)
        if prediction is not None:
            hooks.eval_batch(inputs, labels, prediction, loss)
            self.fed += 1

    def on_evaluate(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        if (hooks := self.live()) is None or not self.evaluating:
            return  # an evaluate() outside train() is HF's alone
        self.evaluating = False
        self.take(hooks, unhook=True)
        with warnings.catch_warnings():
            if self.fed == 0:  # no prediction: the warning naming output= has said so already
                warnings.filterwarnings("ignore", message=EMPTY_EVAL, category=TbhooksWarning)
            hooks.eval_end()

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        self.end(Hooks.fit_end)

    def exception(self, exc: BaseException) -> None:
        """End the run for ``exc``, which ended ``train()``: ``on_exception``, writer closed, hooks removed."""
        self.end(lambda hooks: hooks.exception(exc))

    def close(self) -> None:
        """Close the run without an event: module hooks removed, writer flushed and closed.  Idempotent."""
        self.end(Hooks.close)

    def end(self, last: Callable[[Hooks], None]) -> None:
        if (hooks := self.live()) is not None:
            self.running = self.evaluating = False
            self.take(hooks, unhook=True)
            last(hooks)

    def __enter__(self) -> TbhooksCallback:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is not None:
            self.exception(exc)
        self.close()
        if isinstance(exc, Terminated):
            resend_sigterm()  # as `with tbhooks.attach(...)`: the process ends with SIGTERM's exit status
