"""A minimal trainer for any ``nn.Module``, built on the custom-loop API.

The trainer owns only the loop: device placement, the optimizer step,
train/eval modes, the progress bar, distributed set-up and resume state.
Every event it raises goes through :class:`tbhooks.hooks.Hooks`, the object
a hand-written loop uses, so a trainer run and a custom loop over the same
data write the same tags at the same steps.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from tbhooks.hooks import Hooks, select_output

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Mapping

    from torch.utils.data import DataLoader


_PAIRS = (tuple, list)


def move_to(obj: Any, device: torch.device) -> Any:
    """``obj`` with every tensor inside tuples, lists and dicts moved to ``device``."""
    if isinstance(obj, torch.Tensor):
        # Comparing devices costs less than a call of .to() that returns the tensor itself.
        return obj if obj.device == device else obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return {k: move_to(v, device) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(move_to(v, device) for v in obj)
    return obj


def call_model(model: nn.Module, inputs: Any) -> Any:
    """Call ``model`` with ``inputs``: a tensor as one argument, a tuple/list as
    positional arguments, a dict as keyword arguments."""
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


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` is this process's CUDA device when there is one, else the CPU.

    ``"cuda"`` (string or index-less ``torch.device``) and ``"auto"`` mean the
    process's own GPU: ``cuda:LOCAL_RANK`` under torchrun, ``cuda:0`` alone.
    A local rank with no GPU of its own is a clear ``ValueError`` here rather
    than "invalid device ordinal" from CUDA or NCCL's "duplicate GPU" later.
    """
    if isinstance(device, torch.device):
        if device.type != "cuda" or device.index is not None:
            return device
        device = "cuda"
    if not isinstance(device, str):
        raise TypeError(f"device expects 'auto', 'cpu', 'cuda' or a torch.device, got {type(device).__name__}")
    if device in ("auto", "cuda"):
        if not torch.cuda.is_available():
            if device == "auto":
                return torch.device("cpu")
            raise ValueError("device 'cuda': no CUDA device is available here; pass device='cpu' or 'auto'")
        problem = local_gpu_problem()
        if problem:
            raise ValueError(f"device {device!r}: {problem}")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    try:
        return torch.device(device)
    except RuntimeError:
        raise ValueError(f"device expects 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}") from None


def local_gpu_problem() -> str | None:
    """Why this process has no GPU of its own (``cuda:LOCAL_RANK``), or ``None`` when it has one.

    For the error of :func:`resolve_device` and of the demo's ``--device``:
    two ranks on one GPU fail later, inside NCCL, with no hint of the cause.
    """
    rank, count = int(os.environ.get("LOCAL_RANK", "0")), torch.cuda.device_count()
    if rank < count:
        return None
    return (
        f"this process is local rank {rank} (LOCAL_RANK) but sees {count} CUDA device(s); "
        f"start at most {count} process(es) per node, or train every rank on the CPU"
    )


class _ShardSampler(torch.utils.data.Sampler[int]):
    """Every ``world_size``-th index from ``rank``, without the padding
    ``DistributedSampler`` adds, so gathered evaluation outputs cover the
    evaluation set exactly once."""

    def __init__(self, length: int, rank: int, world_size: int) -> None:
        self._indices = range(rank, length, world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices)

    def __len__(self) -> int:
        return len(self._indices)


def _reloader(loader: DataLoader[Any], sampler: torch.utils.data.Sampler[Any]) -> DataLoader[Any]:
    return torch.utils.data.DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=sampler,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last,
    )


class Trainer:
    """Train and evaluate any ``nn.Module`` with tbhooks' plugins listening.

    :param model: the model; its outputs may be a tensor, a tuple or a dict
        (``output`` says which entry is the prediction).
    :param optimizer: a ``torch.optim.Optimizer`` over the model's parameters.
    :param loss_fn: called as ``loss_fn(prediction, targets)``.
    :param logdir: the run's log directory (created; must be writable).
    :param device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``,
        ``"cuda:N"`` or a ``torch.device``.
    :param progress: show a tqdm bar; ``None`` shows it only on a terminal.
    :param options: passed to :func:`tbhooks.attach` (``plugins``,
        ``disable``, ``class_names``, ``hparams``, ``output``, ``strict``,
        ``flush_secs``, ``stop_on_nonfinite``, ``measure_overhead``, ...).

    Under ``torchrun`` (``WORLD_SIZE`` > 1) the trainer initialises
    ``torch.distributed`` if needed (NCCL on CUDA, gloo on the CPU), wraps the
    model in ``DistributedDataParallel`` and shards the loaders; only rank 0
    writes.
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
        self.device = resolve_device(device)
        self.model = model.to(self.device)
        self.optimizer = optimizer
        self.loss_fn = loss_fn
        self.logdir = logdir
        self.progress = progress
        self.options = options
        self.output = options.get("output")
        self.step = 0
        self.epoch = 0
        self.hooks: Hooks | None = None
        self.on_attach: list[Callable[[Hooks], None]] = []
        """Called with each run's :class:`Hooks` right after it is made, before
        any event fires (``tbhooks.testing.HookRecorder.install`` uses it)."""
        self._owns_process_group = False

    # -- resume ---------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Model, optimizer, global step and the next epoch, for ``load_state_dict``."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a ``state_dict()``; the next fit continues its step and epoch
        and writes with ``purge_step``, so TensorBoard shows no repeated steps."""
        missing = {"model", "optimizer", "step", "epoch"} - set(state)
        if missing:
            raise KeyError(f"state is missing {sorted(missing)}; pass what Trainer.state_dict() returned")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        self.epoch = int(state["epoch"])

    # -- the loop -------------------------------------------------------------

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

    def _attach(self, model: nn.Module, hparams: dict[str, Any] | None, epochs: int | None) -> Hooks:
        options = dict(self.options)
        if hparams is not None:
            options["hparams"] = hparams
        options["epochs"] = epochs
        hooks = Hooks(
            model,
            logdir=self.logdir,
            optimizer=self.optimizer,
            start_step=self.step,
            start_epoch=self.epoch,
            **options,
        )
        for callback in self.on_attach:
            callback(hooks)
        return hooks

    def _distributed(self) -> tuple[int, int]:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return 0, 1
        dist = torch.distributed
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if self.device.type == "cuda" else "gloo")
            self._owns_process_group = True
        return dist.get_rank(), dist.get_world_size()

    def _teardown_distributed(self) -> None:
        if self._owns_process_group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
            self._owns_process_group = False

    def fit(
        self, train_loader: Iterable[Any], epochs: int, eval_loader: Iterable[Any] | None = None
    ) -> dict[str, float]:
        """Train for ``epochs`` more epochs, evaluating on ``eval_loader`` after each.

        Returns the last evaluation's metrics (empty without ``eval_loader``).
        On any exception (``KeyboardInterrupt`` and SIGTERM included) every
        plugin sees ``on_exception``, the writer is flushed and closed, module
        hooks are removed, and the exception propagates.
        """
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
            raise ValueError(f"epochs expects an int >= 0, got {epochs!r}")
        for name, loader in (("train_loader", train_loader), ("eval_loader", eval_loader)):
            if loader is not None and not hasattr(loader, "__iter__"):
                raise TypeError(f"{name} expects an iterable of (inputs, targets) batches, got {type(loader).__name__}")
        rank, world_size = self._distributed()
        try:
            model: nn.Module = self.model
            train_sampler = None
            if world_size > 1:
                device_ids = [self.device.index] if self.device.type == "cuda" else None
                model = nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)
                train_loader, train_sampler = self._shard_train(train_loader, rank, world_size)
                if eval_loader is not None:
                    eval_loader = self._shard_eval(eval_loader, rank, world_size)
            self.hooks = hooks = self._attach(self.model, self._hparams(train_loader, epochs), epochs)
            with hooks:
                for _ in range(epochs):
                    if train_sampler is not None:
                        train_sampler.set_epoch(self.epoch)
                    self._train_epoch(model, train_loader, hooks, show=rank == 0)
                    if eval_loader is not None:
                        self._evaluate(model, eval_loader, hooks)
                    if hooks.should_stop:
                        break
            return hooks.last_metrics
        finally:
            self._teardown_distributed()

    def _shard_train(self, loader: Any, rank: int, world_size: int) -> tuple[Any, Any]:
        if not isinstance(loader, torch.utils.data.DataLoader):
            return loader, None
        shuffle = isinstance(loader.sampler, torch.utils.data.RandomSampler)
        sampler = torch.utils.data.DistributedSampler(
            loader.dataset,
            num_replicas=world_size,
            rank=rank,
            shuffle=shuffle,  # type: ignore[arg-type]
        )
        return _reloader(loader, sampler), sampler

    def _shard_eval(self, loader: Any, rank: int, world_size: int) -> Any:
        if not isinstance(loader, torch.utils.data.DataLoader):
            return loader
        return _reloader(loader, _ShardSampler(len(loader.dataset), rank, world_size))  # type: ignore[arg-type]

    def _batches(self, loader: Iterable[Any], show: bool, desc: str) -> Iterable[Any]:
        if self.progress is False or not show:
            return loader
        # Not tqdm.auto: its asyncio base calls iter(loader) at construction, so a
        # DataLoader built one extra iterator per epoch (extra worker start-up, and
        # the loader's generator advanced: the batch order differed from a plain loop).
        from tqdm import tqdm

        # disable=None: tqdm shows the bar only when stderr is a terminal.
        return tqdm(loader, desc=desc, disable=None if self.progress is None else False, leave=False)

    def _train_epoch(self, model: nn.Module, loader: Iterable[Any], hooks: Hooks, show: bool) -> None:
        model.train()
        hooks.epoch_start()
        first_step = hooks.step
        # The loop body runs once per step between cold caches, where every operation costs
        # a microsecond or so (in lockstep with a bare loop, a dozen type and device checks
        # cost 0.3% of this tutorial network's step).  So the common case, a list or tuple of
        # two tensors already on the device and a tensor output, is told in one test and takes
        # no helper call; anything else goes through the helpers.
        device, run, loss_fn, optimizer = self.device, hooks.run, self.loss_fn, self.optimizer
        # On the CPU, tensor.is_cpu reads a flag where tensor.device == device builds a
        # torch.device (about a microsecond from cold caches, twice a step).
        cpu = device.type == "cpu"
        plain = self.output is None
        try:
            for batch in self._batches(loader, show, f"epoch {hooks.epoch}"):
                try:
                    inputs, targets = batch if type(batch) in _PAIRS else ()
                    # Tensors have is_cpu and device; other inputs (dicts, tuples) raise here.
                    ready = (inputs.is_cpu and targets.is_cpu) if cpu else (inputs.device == targets.device == device)
                except (ValueError, AttributeError):
                    ready = False
                if not ready:
                    inputs, targets = split_batch(batch)
                    inputs, targets = move_to(inputs, device), move_to(targets, device)
                hooks.batch_start()
                # The tutorial's order: the previous step's gradients are freed before the
                # forward pass allocates this step's activations (a lower peak of memory).
                optimizer.zero_grad(set_to_none=True)
                outputs = model(inputs) if ready else call_model(model, inputs)
                loss = loss_fn(
                    outputs if plain and type(outputs) is torch.Tensor else select_output(outputs, self.output), targets
                )
                loss.backward()
                optimizer.step()
                hooks.batch_end(inputs, targets, outputs, loss)
                if run.stop_reason is not None:
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
                    outputs = call_model(model, inputs)
                    loss = self.loss_fn(select_output(outputs, self.output), targets)
                    hooks.eval_batch(inputs, targets, outputs, loss)
            return hooks.eval_end()
        finally:
            model.train(was_training)

    def evaluate(self, loader: Iterable[Any]) -> dict[str, float]:
        """Evaluate on ``loader`` and log it; returns ``loss`` and, for classification, ``accuracy``.

        Outside ``fit`` this is a run of its own on the same log directory:
        ``on_fit_start``, the evaluation events, then ``on_fit_end``.
        """
        if not hasattr(loader, "__iter__"):
            raise TypeError(f"loader expects an iterable of (inputs, targets) batches, got {type(loader).__name__}")
        rank, world_size = self._distributed()
        try:
            model: nn.Module = self.model
            if world_size > 1:
                loader = self._shard_eval(loader, rank, world_size)
            self.hooks = hooks = self._attach(self.model, None, None)
            with hooks:
                metrics = self._evaluate(model, loader, hooks)
            return metrics
        finally:
            self._teardown_distributed()
