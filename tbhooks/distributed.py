"""Device placement and data sharding for the Trainer under ``torchrun``: each rank on its own GPU or the CPU;
evaluation data is sharded without ``DistributedSampler``'s padding, so gathered outputs cover the set once."""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from collections.abc import Iterator

    from torch.utils.data import DataLoader, Sampler


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The module plugins see: ``DistributedDataParallel``'s ``module``, and the original module inside
    ``torch.compile``'s wrapper (an ``OptimizedModule``, whose one child it is)."""
    while True:
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        elif type(model).__name__ == "OptimizedModule":  # its class lives in a private module of torch
            model = next(model.children())
        else:
            return model


def local_gpu_problem() -> str | None:
    """Why this process has no GPU of its own (``cuda:LOCAL_RANK``), or ``None``; two ranks on one GPU
    would fail later, inside NCCL, with no hint of the cause."""
    rank, count = int(os.environ.get("LOCAL_RANK", "0")), torch.cuda.device_count()
    if rank < count:
        return None
    return (
        f"this process is local rank {rank} (LOCAL_RANK) but sees {count} CUDA device(s); "
        f"start at most {count} process(es) per node, or train every rank on the CPU"
    )


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` is this process's CUDA device when there is one, else the CPU.  ``"cuda"`` (or an
    index-less ``torch.device``) and ``"auto"`` mean ``cuda:LOCAL_RANK`` (``cuda:0`` alone); a local rank
    with no GPU of its own is a ``ValueError``."""
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


def init_process_group(device: torch.device) -> bool:
    """Initialise ``torch.distributed`` under torchrun (NCCL on CUDA, gloo on the CPU) unless it is;
    whether this call did (and so should destroy it)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or torch.distributed.is_initialized():
        return False
    torch.distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return True


@contextlib.contextmanager
def process_group(device: torch.device) -> Iterator[tuple[int, int] | None]:
    """``torch.distributed`` initialised for the block as :func:`init_process_group` does (and destroyed after,
    if this initialised it); yields ``(rank, world_size)`` when several processes take part, else ``None``."""
    owns_group = init_process_group(device)
    try:
        dist = torch.distributed
        yield (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() and dist.get_world_size() > 1 else None
    finally:
        if owns_group:
            torch.distributed.destroy_process_group()


def is_fsdp(model: torch.nn.Module) -> bool:
    """Whether ``model`` was sharded with FSDP2's ``fully_shard`` (it must not be wrapped in DDP again)."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # torch without FSDP2
        return False
    return isinstance(model, FSDPModule)


def shard_fsdp(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """Shard ``model`` with FSDP2, each top-level child and then the root, and return the optimizer
    rebuilt over the sharded parameters (``fully_shard`` replaces them): same class, same groups."""
    from torch.distributed.fsdp import fully_shard

    names = {id(p): name for name, p in model.named_parameters()}
    groups = [{**group, "params": [names[id(p)] for p in group["params"]]} for group in optimizer.param_groups]
    for child in model.children():
        if any(True for _ in child.parameters()):
            fully_shard(child)
    fully_shard(model)
    sharded = dict(model.named_parameters())
    return type(optimizer)([{**group, "params": [sharded[n] for n in group["params"]]} for group in groups])


class ShardSampler(torch.utils.data.Sampler[int]):
    """Every ``world_size``-th index from ``rank``, without the padding ``DistributedSampler`` adds."""

    def __init__(self, length: int, rank: int, world_size: int) -> None:
        self._indices = range(rank, length, world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices)

    def __len__(self) -> int:
        return len(self._indices)


def _reloader(loader: DataLoader[Any], sampler: Sampler[Any]) -> DataLoader[Any]:
    return torch.utils.data.DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=sampler,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last,
    )


def shard_train(loader: Any, rank: int, world_size: int) -> tuple[Any, Any]:
    """A DataLoader over this rank's share of the training data, and its sampler (call ``set_epoch``)."""
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


def shard_eval(loader: Any, rank: int, world_size: int) -> Any:
    """A DataLoader over this rank's share of the evaluation data, without padding."""
    if not isinstance(loader, torch.utils.data.DataLoader):
        return loader
    return _reloader(loader, ShardSampler(len(loader.dataset), rank, world_size))  # type: ignore[arg-type]
