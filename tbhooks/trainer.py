"""A minimal trainer for any ``nn.Module``: it owns only the loop and raises every event through
:class:`tbhooks.hooks.Hooks`, as a custom loop does, so both write the same tags at the same steps."""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from tbhooks import distributed
from tbhooks.evaluation import select_output
from tbhooks.hooks import Hooks

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable


def move_to(obj: Any, device: torch.device) -> Any:
    """``obj`` with every tensor inside tuples, lists and dicts moved to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj if obj.device == device else obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return {k: move_to(v, device) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(move_to(v, device) for v in obj)
    return obj


def call_model(model: nn.Module, inputs: Any) -> Any:
    """Call ``model`` with a tensor as one argument, a tuple/list as positional, a dict as keyword arguments."""
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def split_batch(batch: Any) -> tuple[Any, Any]:
    """``(inputs, targets)`` of a batch; anything but a pair is a clear error."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    if isinstance(batch, dict) and {"inputs", "targets"} <= batch.keys():
        return batch["inputs"], batch["targets"]
    shape = f"a {type(batch).__name__}" + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else "")
    raise TypeError(
        f"the loader yielded {shape}; each batch must be (inputs, targets) or a dict with 'inputs' and 'targets'"
    )


PRECISIONS = ("32", "bf16", "16")


def check_precision(precision: object, device: torch.device) -> str:
    """``precision`` if it is one of :data:`PRECISIONS` that ``device`` can run, else a ``ValueError``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision expects '32', 'bf16' or '16', got {precision!r}")
    if precision != "32" and not torch.amp.is_autocast_available(device.type):
        raise ValueError(f"precision={precision!r}: {device.type} has no autocast; use precision='32'")
    return str(precision)


class Trainer:
    """Train and evaluate any ``nn.Module`` with tbhooks' plugins listening.  Under ``torchrun`` it initialises
    ``torch.distributed`` if needed, wraps the model in DDP (or shards it) and shards the loaders.

    :param model: the model; its outputs may be a tensor, a tuple or a dict (``output`` picks the prediction).
    :param optimizer: a ``torch.optim.Optimizer`` over the model's parameters.
    :param loss_fn: called as ``loss_fn(prediction, targets)``.
    :param logdir: the run's log directory (created; must be writable).
    :param device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a ``torch.device``.
    :param progress: show a tqdm bar; ``None`` shows it only on a terminal.
    :param precision: ``"32"``, ``"bf16"`` (bfloat16 autocast) or ``"16"`` (float16 autocast with a
        ``GradScaler``; plugins see the unscaled loss and, on the steps they log, unscaled gradients).
    :param compile: ``True`` (or a dict of ``torch.compile`` arguments) compiles the model in place.
    :param strategy: ``None`` (DDP under torchrun, unless already sharded with FSDP2) or ``"fsdp"``: shard
        each top-level child and the root with ``fully_shard`` and rebuild the optimizer over the shards.
    :param options: passed to :func:`tbhooks.attach` (``plugins``, ``disable``, ``hparams``, ``output``, ...).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_fn: Callable[[torch.Tensor, Any], torch.Tensor],
        *,
        logdir: str | os.PathLike[str] = "runs/tbhooks",
        device: str | torch.device = "auto",
        progress: bool | None = None,
        precision: str = "32",
        compile: bool | Mapping[str, Any] = False,
        strategy: str | None = None,
        **options: Any,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model expects a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer expects a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if not callable(loss_fn):
            raise TypeError(f"loss_fn expects a callable (prediction, targets) -> loss, got {type(loss_fn).__name__}")
        if progress is not None and not isinstance(progress, bool):
            raise TypeError(f"progress expects True, False or None, got {type(progress).__name__}")
        self.device = distributed.resolve_device(device)
        self.precision = check_precision(precision, self.device)
        dtype = {"bf16": torch.bfloat16, "16": torch.float16}.get(self.precision)
        # At 32 bits no autocast context at all: entering a disabled one still costs time on every step.
        self._autocast: Callable[[], contextlib.AbstractContextManager[Any]] = (
            contextlib.nullcontext if dtype is None else functools.partial(torch.autocast, self.device.type, dtype)
        )
        self.scaler = torch.amp.GradScaler(self.device.type) if precision == "16" else None
        self.model = model.to(self.device)
        self.optimizer = optimizer
        if strategy not in (None, "fsdp"):
            raise ValueError(f"strategy expects None or 'fsdp', got {strategy!r}")
        if strategy == "fsdp":
            if int(os.environ.get("WORLD_SIZE", "1")) <= 1 and not torch.distributed.is_initialized():
                raise ValueError(
                    "strategy='fsdp' expects a distributed run (torchrun with WORLD_SIZE > 1, or an initialised "
                    "torch.distributed); this is a single process"
                )
            distributed.init_process_group(self.device)  # kept for the sharded model's lifetime
            self.optimizer = distributed.shard_fsdp(self.model, optimizer)
        if compile:
            if not callable(getattr(torch, "compile", None)):
                raise ValueError(f"compile=True expects torch.compile (torch 2.0 or newer), not {torch.__version__}")
            self.model.compile(**(dict(compile) if isinstance(compile, Mapping) else {}))
        self.loss_fn = loss_fn
        self.logdir = logdir
        self.progress = progress
        self.options = options
        self.output = options.get("output")
        self.step = 0
        self.epoch = 0
        self.hooks: Hooks | None = None
        self.on_attach: list[Callable[[Hooks], None]] = []
        """Called with each run's :class:`Hooks` before any event fires (``HookRecorder.install`` uses it)."""

    def state_dict(self) -> dict[str, Any]:
        """Model, optimizer, global step, the next epoch and (at precision ``"16"``) the ``GradScaler``'s state,
        for ``load_state_dict``."""
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
        }
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a ``state_dict()``; the next fit continues from it, writing with ``purge_step``."""
        missing = {"model", "optimizer", "step", "epoch"} - set(state)
        if missing:
            raise KeyError(f"state is missing {sorted(missing)}; pass what Trainer.state_dict() returned")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        self.epoch = int(state["epoch"])
        if self.scaler is not None and "scaler" in state:  # a state saved at 32 bits has none
            self.scaler.load_state_dict(state["scaler"])

    def _hparams(self, train_loader: Any, epochs: int) -> dict[str, Any]:
        group = self.optimizer.param_groups[0]
        found: dict[str, Any] = {
            "model": type(self.model).__name__,
            "optimizer": type(self.optimizer).__name__,
            "lr": group.get("lr"),
            "epochs": epochs,
            "batch_size": getattr(train_loader, "batch_size", None),
            "parameters": sum(p.numel() for p in self.model.parameters()),
        }
        if "momentum" in group:
            found["momentum"] = group["momentum"]
        found.update(self.options.get("hparams") or {})
        return {k: v for k, v in found.items() if v is not None}

    def _attach(self, hparams: dict[str, Any] | None, epochs: int | None) -> Hooks:
        options = dict(self.options)
        if hparams is not None:
            options["hparams"] = hparams
        hooks = Hooks(
            self.model,
            logdir=self.logdir,
            optimizer=self.optimizer,
            start_step=self.step,
            start_epoch=self.epoch,
            epochs=epochs,
            **options,
        )
        for callback in self.on_attach:
            callback(hooks)
        self.hooks = hooks
        return hooks

    def fit(
        self, train_loader: Iterable[Any], epochs: int, eval_loader: Iterable[Any] | None = None
    ) -> dict[str, float]:
        """Train ``epochs`` more epochs, evaluating on ``eval_loader`` after each; the last evaluation's metrics.
        On any exception (SIGTERM included) plugins see ``on_exception``, the run is closed, and it propagates."""
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
            raise ValueError(f"epochs expects an int >= 0, got {epochs!r}")
        for name, loader in (("train_loader", train_loader), ("eval_loader", eval_loader)):
            if loader is not None and not hasattr(loader, "__iter__"):
                raise TypeError(f"{name} expects an iterable of (inputs, targets) batches, got {type(loader).__name__}")
        with distributed.process_group(self.device) as ranks:
            model: nn.Module = self.model
            sampler = None
            if ranks is not None:
                if not distributed.is_fsdp(self.model):
                    device_ids = [self.device.index] if self.device.type == "cuda" else None
                    model = nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)
                train_loader, sampler = distributed.shard_train(train_loader, *ranks)
                if eval_loader is not None:
                    eval_loader = distributed.shard_eval(eval_loader, *ranks)
            with self._attach(self._hparams(train_loader, epochs), epochs) as hooks:
                for _ in range(epochs):
                    if sampler is not None:
                        sampler.set_epoch(self.epoch)
                    self._train_epoch(model, train_loader, hooks)
                    if eval_loader is not None:
                        self._evaluate(model, eval_loader, hooks)
                    if hooks.should_stop:
                        break
            return hooks.last_metrics

    def _batches(self, loader: Iterable[Any], hooks: Hooks) -> Iterable[Any]:
        if self.progress is False or not hooks.run.is_writer:
            return loader
        # Not tqdm.auto: it calls iter(loader) when built, restarting a DataLoader's workers and batch order.
        from tqdm import tqdm

        # disable=None: the bar shows only when stderr is a terminal.
        return tqdm(loader, desc=f"epoch {hooks.epoch}", disable=None if self.progress is None else False, leave=False)

    def _train_epoch(self, model: nn.Module, loader: Iterable[Any], hooks: Hooks) -> None:
        model.train()
        hooks.epoch_start()
        first_step = hooks.step
        try:
            for batch in self._batches(loader, hooks):
                inputs, targets = split_batch(batch)
                inputs, targets = move_to(inputs, self.device), move_to(targets, self.device)
                hooks.batch_start()
                # Gradients freed before the forward pass allocates activations: a lower memory peak.
                self.optimizer.zero_grad(set_to_none=True)
                with self._autocast():
                    outputs = call_model(model, inputs)
                    loss = self.loss_fn(select_output(outputs, self.output), targets)
                if self.scaler is None:
                    loss.backward()
                    self.optimizer.step()
                else:
                    self.scaler.scale(loss).backward()
                    # Plugins read p.grad after the step.  A fused optimizer's step unscales it only when the step
                    # is taken, not when gradients overflowed: unscale first, on the steps plugins log only.
                    if hooks.due():
                        self.scaler.unscale_(self.optimizer)
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                hooks.batch_end(inputs, targets, outputs, loss)
                if hooks.should_stop:
                    break
        finally:
            self.step = hooks.step  # also when the loop stops on an exception: state_dict() resumes from here
        if hooks.step == first_step:
            hooks.run.warn_once("empty-train", "tbhooks: the training loader yielded no batch (empty loader?)")
        hooks.epoch_end()
        self.epoch = hooks.epoch + 1

    def _evaluate(self, model: nn.Module, loader: Iterable[Any], hooks: Hooks) -> dict[str, float]:
        was_training = model.training
        model.eval()
        try:
            hooks.eval_start()
            with torch.no_grad():
                for batch in loader:
                    inputs, targets = split_batch(batch)
                    inputs, targets = move_to(inputs, self.device), move_to(targets, self.device)
                    with self._autocast():
                        outputs = call_model(model, inputs)
                        loss = self.loss_fn(select_output(outputs, self.output), targets)
                    hooks.eval_batch(inputs, targets, outputs, loss)
            return hooks.eval_end()
        finally:
            model.train(was_training)

    def evaluate(self, loader: Iterable[Any]) -> dict[str, float]:
        """Evaluate on ``loader`` and log it; returns ``loss`` and, for classification, ``accuracy``.
        Outside ``fit`` this is a run of its own (``on_fit_start``, evaluation events, ``on_fit_end``)."""
        if not hasattr(loader, "__iter__"):
            raise TypeError(f"loader expects an iterable of (inputs, targets) batches, got {type(loader).__name__}")
        with distributed.process_group(self.device) as ranks:
            if ranks is not None:
                loader = distributed.shard_eval(loader, *ranks)
            with self._attach(None, None) as hooks:
                return self._evaluate(self.model, loader, hooks)
