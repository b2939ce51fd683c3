"""The custom-loop API: raise tbhooks' events from any training loop.

:func:`attach` returns a :class:`Hooks`, whose methods a hand-written loop, the :class:`tbhooks.Trainer` and
the framework adapters all call, so all write the same logs.  Entering its ``with`` block fires
``on_fit_start``; leaving it fires ``on_fit_end`` (or ``on_exception``) and closes the run, whatever happened.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch

from tbhooks.accumulate import LossSum
from tbhooks.background import Background
from tbhooks.capture import Capturer
from tbhooks.checks import check_class_names, check_output_option, check_run_options
from tbhooks.distributed import unwrap_model
from tbhooks.errors import Terminated
from tbhooks.evaluation import EvalState, all_reduce, select_output
from tbhooks.manager import PluginHost, env_flag, make_plugin_manager
from tbhooks.run import Run
from tbhooks.schedule import Schedule
from tbhooks.signals import SigtermHandler, close_at_exit, resend_sigterm
from tbhooks.writer import check_logdir, distributed_rank, open_writer

if TYPE_CHECKING:
    import os
    from collections.abc import Callable, Iterable, Mapping
    from pathlib import Path
    from types import TracebackType

    from torch import nn
    from torch.optim import Optimizer

    from tbhooks.render import Renderer


class Hooks:
    """Raises the events of one run; made by :func:`attach` (see there for the options).

    Call the methods in the lifecycle's order.  On a step where no plugin is due, :meth:`batch_end` only
    counts the step and keeps the loss: no device sync.
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
        from pathlib import Path

        check_run_options(model, optimizer, flush_secs=flush_secs, start=(start_step, start_epoch), hparams=hparams)
        check_output_option(output)
        names = check_class_names(class_names)
        self.strict = env_flag("TBHOOKS_STRICT") if strict is None else bool(strict)
        pm, _ = make_plugin_manager(plugins=plugins, disable=disable, autoload=autoload)
        rank, world_size = distributed_rank()
        # Only the writing rank touches the file system: other ranks never create directories.
        path = check_logdir(logdir) if rank == 0 else Path(logdir)
        self.model = unwrap_model(model)
        self.output = output
        self.epochs = epochs
        self.step = start_step
        self.epoch = self._next_epoch = start_epoch
        self._epoch_first_step = start_step  # the step before this epoch's first batch
        self.last_metrics: dict[str, float] = {}
        self._host = PluginHost(pm, strict=self.strict, measure=measure_overhead, trace=env_flag("TBHOOKS_TRACE"))
        self._background = Background()
        self._renderer: Renderer | None = None
        self.run = Run(
            writer=open_writer(path, rank=rank, flush_secs=float(flush_secs), start_step=start_step),
            logdir=path,
            model=self.model,
            optimizer=optimizer,
            class_names=names,
            hparams=dict(hparams or {}),
            rank=rank,
            world_size=world_size,
            background=self._background,
            renderer=self._get_renderer,
        )
        self.run.step, self.run.epoch = self.step, self.epoch
        self.run.stop_on_nonfinite = stop_on_nonfinite
        self._losses = LossSum()
        self._capturer = Capturer(self.model)
        self._schedule = Schedule(pm)
        self._eval: EvalState | None = None
        self._started = self._closed = False
        # Every module's own flag, so a BatchNorm the user froze in eval mode stays frozen.
        self._modes = [(module, module.training) for module in self.model.modules()]
        self._sigterm = SigtermHandler(lambda: self.step)
        close_at_exit.add(self)

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
        """The run's log directory."""
        return self.run.logdir

    def due(self, step: int | None = None) -> bool:
        """Whether ``on_batch_end`` will be raised at ``step`` (default: the coming step).

        A loop can skip work only a logging step needs, such as unscaling a ``GradScaler``'s gradients.
        """
        return self._schedule.due(self.step + 1 if step is None else step)

    def fit_start(self) -> None:
        """Fire ``on_fit_start`` and collect capture requests; idempotent (``epoch_start``, ``eval_start`` call it)."""
        if self._started:
            return
        self._started = True
        self._sigterm.install()
        self._host.hook.on_fit_start(run=self.run, epochs=self.epochs)
        # Each plugin asked on its own (pluggy's subset callers), so a request keeps its owner's name.
        pm, requests = self._host.pm, []
        impls = pm.hook.on_capture_request.get_hookimpls()
        if not impls:
            pm.hook.on_capture_request(run=self.run)  # raised all the same: the lifecycle is the contract
        for impl in impls:
            others = [other.plugin for other in impls if other is not impl]
            for result in pm.subset_hook_caller("on_capture_request", others)(run=self.run):
                requests += [(impl.plugin_name, request) for request in result]
        self._capturer.set_requests(requests)
        self._schedule.refresh()

    def epoch_start(self) -> None:
        """Fire ``on_epoch_start`` for the next epoch."""
        self.fit_start()
        self.epoch = self.run.epoch = self._next_epoch
        self._epoch_first_step = self.step
        self._losses.reset()
        for name in self._host.overhead:
            self._host.overhead[name] = 0.0
        self._host.hook.on_epoch_start(run=self.run, step=self.step, epoch=self.epoch)

    def batch_start(self) -> None:
        """Register the module hooks due on the coming step; call it before the forward pass.

        Without it, plugins that asked for activations or gradients get nothing on training steps.
        """
        self._capturer.start_step(self.step + 1)

    def batch_end(self, inputs: Any, targets: Any, outputs: Any, loss: torch.Tensor | None = None) -> None:
        """Fire ``on_batch_end`` for the plugins due at this step; call it after ``optimizer.step()``.

        When none is due the event is not raised, and the loss still counts toward the epoch's mean.
        """
        self.step = step = self.step + 1
        self.run.step = step
        if loss is not None:
            self._losses.add(loss.detach())
        captured = self._capturer.end_step(step)
        self.run.compiled = self._capturer.compiled
        if self._schedule.faults != len(self._host.faults):
            self._schedule.refresh(len(self._host.faults))
        caller = self._schedule.caller(step)
        if caller is None:
            return
        caller(
            run=self.run,
            step=step,
            epoch=self.epoch,
            batch_idx=step - self._epoch_first_step - 1,
            inputs=inputs,
            targets=targets,
            outputs=None if outputs is None else select_output(outputs, self.output).detach(),
            loss=None if loss is None else loss.detach(),
            captured=captured,
        )

    def epoch_end(self) -> dict[str, float]:
        """Fire ``on_epoch_end`` with the epoch's mean training loss, then flush."""
        metrics: dict[str, float] = {}
        total = self._losses.total()
        # Only a loss of every batch makes the epoch's mean (a host may hand over some steps' only).
        if total is not None and self._losses.count == self.batch_idx:
            count = torch.tensor(float(self._losses.count), device=total.device, dtype=total.dtype)
            sums = all_reduce(torch.stack([total, count]), self.run.world_size)
            metrics["loss"] = float(sums[0] / sums[1])
            self.run.check_finite("train/epoch_loss", metrics["loss"])
        self._host.hook.on_epoch_end(run=self.run, step=self.step, epoch=self.epoch, metrics=metrics)
        batches = self.batch_idx
        if self._host.measure and batches:
            for name, seconds in self._host.overhead.items():
                self.run.writer.add_scalar(f"tbhooks/overhead_ms/{name}", seconds * 1000 / batches, self.step)
        self._next_epoch = self.epoch + 1
        self.flush()
        return metrics

    def eval_start(self) -> None:
        """Fire ``on_eval_start`` and register the module hooks plugins want during evaluation."""
        self.fit_start()
        self._eval = EvalState()
        self._host.hook.on_eval_start(run=self.run, step=self.step, epoch=self.epoch)
        self._capturer.start_step(None)

    def eval_batch(self, inputs: Any, targets: Any, outputs: Any, loss: torch.Tensor | None = None) -> None:
        """Fire ``on_eval_batch_end``; call it after the forward pass of each evaluation batch."""
        state = self._eval
        if state is None:
            raise RuntimeError("eval_batch() called before eval_start()")
        prediction = None if outputs is None else select_output(outputs, self.output).detach()
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
            captured=self._capturer.take(None),
        )

    def eval_end(self) -> dict[str, float]:
        """Fire ``on_eval`` with metrics over the whole evaluation set, flush, and return the metrics."""
        self._capturer.end_step(None)
        self.run.compiled = self._capturer.compiled
        state, self._eval = self._eval, None
        if state is None:
            raise RuntimeError("eval_end() called before eval_start()")
        outputs, targets, metrics = state.finish(self.run)
        self._host.hook.on_eval(
            run=self.run, step=self.step, epoch=self.epoch, metrics=metrics, outputs=outputs, targets=targets
        )
        self.last_metrics = metrics
        self.flush()
        return metrics

    def fit_end(self) -> None:
        """Fire ``on_fit_end`` with the last evaluation's metrics, then close."""
        if self._closed:
            return
        try:
            self.drain()  # plugins end with their background work done (e.g. to warn about what it found)
            self._host.hook.on_fit_end(run=self.run, step=self.step, epoch=self.epoch, metrics=self.last_metrics)
        finally:
            self.close()

    def exception(self, exc: BaseException) -> None:
        """Fire ``on_exception`` for ``exc``, then close (on :class:`tbhooks.Terminated`, end by SIGTERM)."""
        if self._closed:
            return
        try:
            self._capturer.close()
            self._host.hook.on_exception(run=self.run, step=self.step, epoch=self.epoch, exception=exc)
        finally:
            self.close()
        if isinstance(exc, Terminated):
            resend_sigterm()

    def flush(self) -> None:
        """Write pending events to disk and report errors of finished background work (not waiting for running work)."""
        self._report_background_errors()
        self.run.writer.flush()

    def drain(self) -> None:
        """Wait until the run's background work (images, histograms, figures) is done, and report its errors."""
        self._background.drain()
        self._report_background_errors()

    def close(self) -> None:
        """Remove module hooks, finish background work, flush and close the writer.  Idempotent."""
        if self._closed:
            return
        self._closed = True
        close_at_exit.discard(self)
        try:
            self._capturer.close()
            for module, training in self._modes:
                module.training = training
            self.drain()
            self._background.stop()
        finally:
            try:
                self.run.writer.flush()
                self.run.writer.close()
            finally:
                if self._renderer is not None:
                    self._renderer.close()
                self._host.close()
                self._sigterm.restore()
        summary = self._host.fault_summary()
        if summary:
            logging.getLogger("tbhooks").warning("tbhooks: plugins disabled after errors:\n%s", summary)

    def __enter__(self) -> Hooks:
        self.fit_start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None:
            self.fit_end()
        else:
            self.exception(exc)

    def _get_renderer(self) -> Renderer:
        if self._renderer is None:
            from tbhooks.render import Renderer

            self._renderer = Renderer(self._background, self.run.writer)
        return self._renderer

    def _report_background_errors(self) -> None:
        for owner, exc in self._background.take_errors():
            name = self._host.owner_name(owner) or getattr(owner, "__qualname__", repr(owner))
            if self.strict:
                raise exc
            self._host.fault(name, "background task", exc)


def attach(model: nn.Module, *, logdir: str | os.PathLike[str], **options: Any) -> Hooks:
    """Attach tbhooks to ``model`` for a hand-written loop.

    Options: ``optimizer``, ``plugins`` (objects to register), ``disable`` (plugin names), ``class_names``,
    ``hparams``, ``output`` (which output is the prediction), ``autoload``, ``strict``, ``flush_secs``
    (default 2), ``stop_on_nonfinite``, ``measure_overhead``, ``epochs`` (for ``on_fit_start``),
    ``start_step``/``start_epoch`` (resume).
    """
    return Hooks(model, logdir=logdir, **options)
