"""The custom-loop API: raise tbhooks' events from any training loop.

:func:`attach` returns a :class:`Hooks`; a hand-written loop calls its
methods at the points the events describe, and the :class:`tbhooks.Trainer`
calls the very same methods, so both produce the same logs::

    with tbhooks.attach(model, logdir="runs/exp", optimizer=opt) as hooks:
        for epoch in range(epochs):
            hooks.epoch_start()
            for inputs, targets in loader:
                hooks.batch_start()            # module hooks for this step, if any are due
                opt.zero_grad()
                outputs = model(inputs)
                loss = loss_fn(outputs, targets)
                loss.backward(); opt.step()
                hooks.batch_end(inputs, targets, outputs, loss)
            hooks.epoch_end()
            model.eval(); hooks.eval_start()
            with torch.no_grad():
                for inputs, targets in test_loader:
                    outputs = model(inputs)
                    hooks.eval_batch(inputs, targets, outputs, loss_fn(outputs, targets))
            hooks.eval_end(); model.train()

Entering the ``with`` block fires ``on_fit_start``; leaving it fires
``on_fit_end`` (or ``on_exception``), flushes and closes the writer and
removes every module hook, whatever happened inside.
"""

from __future__ import annotations

import atexit
import os
import signal
import threading
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from tbhooks.capture import Capturer
from tbhooks.errors import Terminated
from tbhooks.manager import PluginHost, env_flag, make_plugin_manager
from tbhooks.run import Run, check_logdir, distributed_rank, open_writer

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping
    from types import FrameType, TracebackType

    from torch import nn
    from torch.optim import Optimizer

_open_hooks: weakref.WeakSet[Hooks] = weakref.WeakSet()

LOOKAHEAD = 64
"""How many upcoming steps the core asks the plugins' ``batch_end_due`` about at once."""


@atexit.register
def _close_at_exit() -> None:
    # A script that ends without close() (sys.exit inside the loop, say) still
    # gets every pending event on disk.
    for hooks in list(_open_hooks):
        hooks.close()


def select_output(outputs: Any, output: str | int | Callable[[Any], torch.Tensor] | None) -> torch.Tensor:
    """The prediction tensor among a model's outputs.

    ``output=None`` takes a tensor as is, the first element of a tuple or
    list, and the ``"logits"`` entry of a dict; a ``str`` picks a dict key, an
    ``int`` a tuple index, a callable is applied to the outputs.
    """
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
    elif isinstance(outputs, (tuple, list)) and outputs:
        chosen = outputs[0]
    elif isinstance(outputs, dict):
        if "logits" not in outputs:
            raise KeyError(
                f"the model returns a dict with keys {list(outputs)}; pass output='<key>' "
                f"to attach()/Trainer() to say which entry is the prediction"
            )
        chosen = outputs["logits"]
    else:
        raise TypeError(f"the model's outputs are a {type(outputs).__name__}; pass output=<callable> to pick a tensor")
    if not isinstance(chosen, torch.Tensor):
        raise TypeError(f"output={output!r} selected a {type(chosen).__name__}, expected a tensor")
    return chosen


def _check_output_option(output: object) -> None:
    if output is not None and not isinstance(output, (str, int)) and not callable(output):
        raise TypeError(
            f"output expects a dict key (str), a tuple index (int), a callable or None, got {type(output).__name__}"
        )


def _check_class_names(class_names: object) -> list[str] | None:
    if class_names is None:
        return None
    if isinstance(class_names, (str, bytes)) or not hasattr(class_names, "__iter__"):
        raise TypeError(f"class_names expects a sequence of names, got {type(class_names).__name__}")
    return [str(name) for name in class_names]  # type: ignore[attr-defined]


class Hooks:
    """Raises the events of one run; made by :func:`attach`.

    Call the methods in the lifecycle's order (see :mod:`tbhooks.hookspecs`).
    Every method is cheap on steps where nothing is logged: no tensor leaves
    the device and no value is read back.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        logdir: str | os.PathLike[str],
        optimizer: Optimizer | None = None,
        plugins: Iterable[object] = (),
        disable: Iterable[str] = (),
        class_names: Iterable[str] | None = None,
        hparams: Mapping[str, Any] | None = None,
        output: str | int | Callable[[Any], torch.Tensor] | None = None,
        autoload: bool | None = None,
        strict: bool | None = None,
        flush_secs: float = 2.0,
        stop_on_nonfinite: bool = False,
        measure_overhead: bool = False,
        epochs: int | None = None,
        start_step: int = 0,
        start_epoch: int = 0,
    ) -> None:
        from torch import nn

        if not isinstance(model, nn.Module):
            raise TypeError(f"model expects a torch.nn.Module, got {type(model).__name__}")
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer expects a torch.optim.Optimizer or None, got {type(optimizer).__name__}")
        if isinstance(flush_secs, bool) or not isinstance(flush_secs, (int, float)) or flush_secs <= 0:
            raise ValueError(f"flush_secs expects a number of seconds > 0, got {flush_secs!r}")
        for arg, value in (("start_step", start_step), ("start_epoch", start_epoch)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{arg} expects an int >= 0, got {value!r}")
        if hparams is not None and not hasattr(hparams, "items"):
            raise TypeError(f"hparams expects a mapping of name -> value, got {type(hparams).__name__}")
        _check_output_option(output)
        names = _check_class_names(class_names)

        self.strict = env_flag("TBHOOKS_STRICT") if strict is None else bool(strict)
        pm, sources = make_plugin_manager(plugins=plugins, disable=disable, autoload=autoload)
        rank, world_size = distributed_rank()
        # Only the writing rank touches the file system: other ranks never create directories.
        path = check_logdir(logdir) if rank == 0 else Path(logdir)
        self.model = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
        self.output = output
        self.stop_on_nonfinite = stop_on_nonfinite
        self.epochs = epochs
        self.step = start_step
        self._next_epoch = start_epoch
        self.epoch = start_epoch
        self._epoch_first_step = start_step  # the step before this epoch's first batch
        self.last_metrics: dict[str, float] = {}
        self._host = PluginHost(
            pm, sources, strict=self.strict, measure=measure_overhead, trace=env_flag("TBHOOKS_TRACE")
        )
        self._measure = measure_overhead
        writer = open_writer(
            path, rank=rank, flush_secs=float(flush_secs), purge_step=start_step + 1 if start_step else None
        )
        self.run = Run(
            writer=writer,
            logdir=path,
            model=self.model,
            optimizer=optimizer,
            class_names=names,
            hparams=dict(hparams or {}),
            rank=rank,
            world_size=world_size,
        )
        self.run.step, self.run.epoch = self.step, self.epoch
        self.run.stop_on_nonfinite = stop_on_nonfinite
        self._add_loss = self.run.train_losses.append
        self._capturer = Capturer(self.model)
        self._attached = False
        self._batch_end_checks: list[Callable[[int], bool]] | None = None
        # The per-step fast path compares the step with these two integers and does nothing
        # else: no capture request is due before _next_capture, and no plugin's
        # batch_end_due before _next_dispatch.  0 means "work it out on the next step".
        self._next_capture = 0
        self._next_dispatch = 0
        self._eval: _EvalState | None = None
        self._started = False
        self._closed = False
        # Every module's own flag, so a BatchNorm the user froze in eval mode stays frozen.
        self._modes = [(module, module.training) for module in self.model.modules()]
        self._previous_sigterm: Any = None
        _open_hooks.add(self)

    # -- properties -----------------------------------------------------------

    @property
    def hook(self) -> Any:
        """pluggy's hook relay, for raising events directly (``hooks.hook.on_eval(...)``)."""
        return self._host.hook

    @property
    def plugin_manager(self) -> Any:
        """The run's ``pluggy.PluginManager`` (for ``tbhooks.testing`` and introspection)."""
        return self._host.pm

    @property
    def faults(self) -> dict[str, Any]:
        """Plugins disabled after raising: name -> :class:`tbhooks.manager.Fault`."""
        return self._host.faults

    @property
    def should_stop(self) -> bool:
        """Whether a plugin asked the loop to stop (``run.request_stop``); check it after each batch."""
        return self.run.stop_reason is not None

    @property
    def batch_idx(self) -> int:
        """How many training batches this epoch has had so far (the index the next one gets)."""
        return self.step - self._epoch_first_step

    @property
    def logdir(self) -> Path:
        return self.run.logdir

    # -- lifecycle ------------------------------------------------------------

    def fit_start(self) -> None:
        """Fire ``on_fit_start`` and collect the plugins' capture requests.

        Idempotent; entering the ``with`` block and the first ``epoch_start``
        or ``eval_start`` call it.
        """
        if self._started:
            return
        self._started = True
        self._install_sigterm()
        self._host.hook.on_fit_start(run=self.run, epochs=self.epochs)
        requests: list[Any] = []
        for result in self._host.hook.on_capture_request(run=self.run):
            requests.extend(result)
        self._capturer.set_requests(requests)
        self._batch_end_checks = self._batch_end_schedule()
        self._next_capture = self._next_dispatch = 0

    def _batch_end_schedule(self) -> list[Callable[[int], bool]] | None:
        """The ``batch_end_due`` checks of the plugins implementing ``on_batch_end``, or
        ``None`` when one of them has none (then every step dispatches).

        The fast path this enables: on a step no plugin is due, ``on_batch_end``
        is not raised at all, which saves pluggy's call on nearly every step.
        """
        checks: list[Callable[[int], bool]] = []
        for impl in self._host.hook.on_batch_end.get_hookimpls():
            due = getattr(impl.plugin, "batch_end_due", None)
            if not callable(due):
                return None
            checks.append(due)
        return checks

    def _find_next_dispatch(self, start: int) -> int:
        """The first step from ``start`` on which some plugin's ``batch_end_due`` is true, looking
        at most :data:`LOOKAHEAD` steps ahead (when none is, the step after those, to look again).

        Asking ahead, in one tight loop, costs far less than asking on every step:
        between training steps the interpreter's caches are cold, and each call
        costs microseconds.  The answer is dropped after every event the core
        raises, since a plugin's answers may change in any of its hooks.
        """
        checks = self._batch_end_checks
        if checks is None:
            return start  # a plugin without batch_end_due is called on every step
        for step in range(start, start + LOOKAHEAD):
            for due in checks:
                if due(step):
                    return step
        return start + LOOKAHEAD

    def epoch_start(self) -> None:
        """Fire ``on_epoch_start`` for the next epoch."""
        self.fit_start()
        self.epoch = self.run.epoch = self._next_epoch
        self._epoch_first_step = self.step
        self.run.train_losses.reset()
        self.run.last_inputs = None
        for name in self._host.overhead:
            self._host.overhead[name] = 0.0
        self._host.hook.on_epoch_start(run=self.run, step=self.step, epoch=self.epoch)
        self._next_dispatch = 0

    def batch_start(self) -> None:
        """Register the module hooks due on the coming step (nothing when none is due).

        Call it before the forward pass; without it, plugins that asked for
        activations or gradients get nothing on training steps.
        """
        step = self.step + 1
        if step < self._next_capture:
            return
        due = self._capturer.due_for_step(step)
        if due:
            self._capturer.attach(due)
            self._attached = True
            self._next_dispatch = 0  # batch_end must dispatch what is captured
        self._next_capture = self._capturer.next_step(step + 1)

    def batch_end(self, inputs: Any, targets: Any, outputs: Any, loss: torch.Tensor | None = None) -> None:
        """Fire ``on_batch_end`` for the batch just trained; call it after ``optimizer.step()``.

        When every plugin implementing ``on_batch_end`` has a ``batch_end_due(step)``
        method and none is due, the event is skipped (see the README's
        "Writing a plugin"); the loss still counts toward ``run.train_losses``.
        On such a step the core does no more than count the step and keep a
        reference to the loss's value and to the inputs (``run.last_inputs``):
        no tensor operation, no read-back.
        """
        # Between two training steps every Python operation runs from cold caches (about a
        # microsecond each), and what runs here also evicts the training step's own: the
        # common step is kept to a handful of operations.
        self.step = step = self.step + 1
        run = self.run
        run.step = step
        run.last_inputs = inputs
        if loss is not None:
            # .data: the value without autograd's graph, like .detach() but without a trip
            # through the dispatcher.  Kept on the device: read back only on steps that log.
            self._add_loss(loss.data)
        if step < self._next_dispatch:
            return
        self._batch_end_due(step, inputs, targets, outputs, loss)

    def _batch_end_due(self, step: int, inputs: Any, targets: Any, outputs: Any, loss: torch.Tensor | None) -> None:
        """The rest of :meth:`batch_end`, on steps where something may be due (at least every
        :data:`LOOKAHEAD` steps): raise ``on_batch_end`` when some plugin is due or something was captured."""
        self.run.train_losses.fold_if_full()
        captured: dict[str, torch.Tensor] = {}
        if self._attached:
            self._attached = False
            self._capturer.detach()
            captured = self._capturer.take()
        if not captured:
            checks = self._batch_end_checks
            if checks is not None and not any(due(step) for due in checks):
                self._next_dispatch = self._find_next_dispatch(step + 1)
                return
        prediction = select_output(outputs, self.output).detach()
        self._host.hook.on_batch_end(
            run=self.run,
            step=step,
            epoch=self.epoch,
            batch_idx=step - self._epoch_first_step - 1,
            inputs=inputs,
            targets=targets,
            outputs=prediction,
            loss=None if loss is None else loss.detach(),
            captured=captured,
        )

    def epoch_end(self) -> dict[str, float]:
        """Fire ``on_epoch_end`` with the epoch's mean training loss, then flush."""
        metrics: dict[str, float] = {}
        losses = self.run.train_losses
        total = losses.total()
        if total is not None:
            count = torch.tensor(float(losses.count), device=total.device, dtype=total.dtype)
            sums = self._all_reduce(torch.stack([total, count]))
            metrics["loss"] = float(sums[0] / sums[1])
            self.check_finite("train/epoch_loss", metrics["loss"])
        self._host.hook.on_epoch_end(run=self.run, step=self.step, epoch=self.epoch, metrics=metrics)
        batches = self.batch_idx
        if self._measure and batches:
            for name, seconds in self._host.overhead.items():
                self.run.writer.add_scalar(f"tbhooks/overhead_ms/{name}", seconds * 1000 / batches, self.step)
        self._next_epoch = self.epoch + 1
        self._next_dispatch = 0
        self.flush()
        return metrics

    def eval_start(self) -> None:
        """Fire ``on_eval_start`` and register the module hooks plugins want during evaluation."""
        self.fit_start()
        self._capturer.detach()
        self._attached = False
        self._next_dispatch = 0
        self._eval = _EvalState()
        self._host.hook.on_eval_start(run=self.run, step=self.step, epoch=self.epoch)
        self._capturer.attach(self._capturer.due_for_eval())

    def eval_batch(self, inputs: Any, targets: Any, outputs: Any, loss: torch.Tensor | None = None) -> None:
        """Fire ``on_eval_batch_end``; call it after the forward pass of each evaluation batch."""
        state = self._eval
        if state is None:
            raise RuntimeError("eval_batch() called before eval_start()")
        prediction = select_output(outputs, self.output).detach()
        captured = self._capturer.take()
        state.add(prediction, targets, loss)
        self._host.hook.on_eval_batch_end(
            run=self.run,
            step=self.step,
            epoch=self.epoch,
            batch_idx=state.batches - 1,
            inputs=inputs,
            targets=targets,
            outputs=prediction,
            loss=None if loss is None else loss.detach(),
            captured=captured,
        )

    def eval_end(self) -> dict[str, float]:
        """Fire ``on_eval`` with metrics over the whole evaluation set, then flush.

        Returns the metrics (``loss`` and, for classification, ``accuracy``).
        """
        self._capturer.detach()
        state, self._eval = self._eval, None
        if state is None:
            raise RuntimeError("eval_end() called before eval_start()")
        outputs, targets, metrics = state.finish(self)
        self._host.hook.on_eval(
            run=self.run, step=self.step, epoch=self.epoch, metrics=metrics, outputs=outputs, targets=targets
        )
        self._next_dispatch = 0
        self.last_metrics = metrics
        self.flush()
        return metrics

    def fit_end(self) -> None:
        """Fire ``on_fit_end`` with the last evaluation's metrics, then close."""
        if self._closed:
            return
        try:
            self._host.hook.on_fit_end(run=self.run, step=self.step, epoch=self.epoch, metrics=self.last_metrics)
        finally:
            self.close()

    def exception(self, exc: BaseException) -> None:
        """Fire ``on_exception`` for ``exc`` that ends the run, then close (module hooks removed, writer closed)."""
        if self._closed:
            return
        try:
            self._capturer.detach()
            self._attached = False
            self._host.hook.on_exception(run=self.run, step=self.step, epoch=self.epoch, exception=exc)
        finally:
            self.close()

    def flush(self) -> None:
        """Write every pending event to disk and report errors of finished background work.

        It does not wait for background work still running (a figure being
        drawn): the training thread goes on, and what that work writes is
        flushed by the writer's own interval, the next flush, or ``close``,
        which waits for all of it.
        """
        self._drain(wait=False)
        self.run.writer.flush()

    def _drain(self, wait: bool) -> None:
        for fn, exc in self.run.drain(wait=wait):
            self._background_error(fn, exc)

    def close(self) -> None:
        """Remove module hooks, finish background work, flush and close the writer.  Idempotent."""
        if self._closed:
            return
        self._closed = True
        _open_hooks.discard(self)
        self.run.last_inputs = None  # the run object may outlive the loop: hold no batch
        try:
            self._capturer.detach()
            for module, training in self._modes:
                module.training = training
            self._drain(wait=True)
            self.run.stop_background()
        finally:
            try:
                self.run.writer.flush()
                self.run.writer.close()
            finally:
                self.run.stop_render()
                self._host.close()
                self._restore_sigterm()
        summary = self._host.fault_summary()
        if summary:
            import logging

            logging.getLogger("tbhooks").warning("tbhooks: plugins disabled after errors:\n%s", summary)

    # -- context manager ----------------------------------------------------

    def __enter__(self) -> Hooks:
        self.fit_start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None:
            self.fit_end()
            return
        self.exception(exc)
        if isinstance(exc, Terminated):
            resend_sigterm()

    # -- helpers --------------------------------------------------------------

    def check_finite(self, what: str, value: float) -> None:
        """See :meth:`tbhooks.run.Run.check_finite`."""
        self.run.check_finite(what, value)

    def _all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.run.world_size > 1 and torch.distributed.is_initialized():
            torch.distributed.all_reduce(tensor)
        return tensor

    def _background_error(self, fn: Callable[..., Any], exc: BaseException) -> None:
        owner = self._host.owner_of(fn) or getattr(fn, "__qualname__", repr(fn))
        if self.strict:
            raise exc
        self._host.fault(owner, "background task", exc)

    def _install_sigterm(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def on_sigterm(signum: int, frame: FrameType | None) -> None:
            raise Terminated(f"SIGTERM received at step {self.step}")

        self._previous_sigterm = signal.signal(signal.SIGTERM, on_sigterm)

    def _restore_sigterm(self) -> None:
        if self._previous_sigterm is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._previous_sigterm)
            self._previous_sigterm = None


def resend_sigterm() -> None:
    """End the process by SIGTERM with the default action, so its exit status is the usual one."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


class _EvalState:
    """What one evaluation accumulates, all of it on the device until the end."""

    def __init__(self) -> None:
        self.outputs: list[torch.Tensor] = []
        self.targets: list[torch.Tensor] = []
        self.other_targets: list[Any] = []
        self.loss_sum: torch.Tensor | None = None
        self.loss_count = 0
        self.batches = 0

    def add(self, prediction: torch.Tensor, targets: Any, loss: torch.Tensor | None) -> None:
        self.batches += 1
        self.outputs.append(prediction)
        if isinstance(targets, torch.Tensor):
            self.targets.append(targets.detach())
        else:
            self.other_targets.append(targets)
        if loss is not None:
            size = prediction.shape[0] if prediction.ndim else 1
            weighted = loss.detach().float() * size
            self.loss_sum = weighted if self.loss_sum is None else self.loss_sum + weighted
            self.loss_count += size

    def finish(self, hooks: Hooks) -> tuple[torch.Tensor, Any, dict[str, float]]:
        run = hooks.run
        if not self.outputs:
            run.warn_once("empty-eval", "tbhooks: the evaluation saw no batch (empty loader?); nothing evaluated")
            return torch.empty(0), torch.empty(0, dtype=torch.long), {}
        outputs = run.gather(torch.cat([o if o.ndim else o.reshape(1) for o in self.outputs]))
        targets: Any = (
            run.gather(torch.cat(self.targets)) if self.targets and not self.other_targets else self.other_targets
        )
        metrics: dict[str, float] = {}
        if self.loss_sum is not None:
            device = self.loss_sum.device
            total = hooks._all_reduce(torch.stack([self.loss_sum, torch.tensor(float(self.loss_count), device=device)]))
            metrics["loss"] = float(total[0] / total[1])
            hooks.check_finite("eval/loss", metrics["loss"])
        scored = run.class_scores(outputs, targets, who="accuracy")
        if scored is not None:
            scores, labels = scored
            metrics["accuracy"] = float((scores.argmax(dim=1) == labels).float().mean()) if labels.numel() else 0.0
        return outputs, targets, metrics


def attach(model: nn.Module, *, logdir: str | os.PathLike[str], **options: Any) -> Hooks:
    """Attach tbhooks to ``model`` for a hand-written loop; see :class:`Hooks` for the options.

    Options: ``optimizer``, ``plugins`` (objects to register), ``disable``
    (plugin names), ``class_names``, ``hparams``, ``output`` (which output is
    the prediction), ``autoload``, ``strict``, ``flush_secs`` (default 2),
    ``stop_on_nonfinite``, ``measure_overhead``, ``epochs`` (for
    ``on_fit_start``), ``start_step``/``start_epoch`` (resume).
    """
    return Hooks(model, logdir=logdir, **options)
