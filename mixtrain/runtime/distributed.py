"""Multi-process training with ``torchrun``: PyTorch's own launcher, process group and DDP.

``torchrun --nproc_per_node=N -m mixtrain train ...`` starts N processes with RANK,
WORLD_SIZE and LOCAL_RANK set; :func:`init` joins them into a process group (NCCL on
CUDA, gloo on the CPU). Everything else in mixtrain asks :func:`context` who it is and
uses the helpers below for the few collectives it needs: summing metric sums (with the
stop flag, at sync points), gathering logits in order, broadcasting the run dir,
gathering RNG states for checkpoints.
"""

from __future__ import annotations

import gc
import hashlib
import os
from dataclasses import dataclass
from typing import Any, List

import torch
import torch.distributed as dist
from torch import nn

from mixtrain.errors import MixtrainError


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_context = DistContext()


def context() -> DistContext:
    return _context


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device_name: str) -> DistContext:
    """Join the torchrun process group once (no-op for a single process); return the context."""
    global _context
    if _context.enabled or not launched_by_torchrun():
        return _context
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())
    if use_cuda:
        if not torch.cuda.is_available():
            raise MixtrainError(f"trainer.device={device_name} under torchrun but CUDA is not available: "
                                "use trainer.device=cpu (gloo)")
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    _context = DistContext(rank, world, local_rank)
    return _context


def device_for(ctx: DistContext, device: torch.device) -> torch.device:
    """One GPU per process: ``cuda:LOCAL_RANK`` under torchrun."""
    if ctx.enabled and device.type == "cuda":
        return torch.device("cuda", ctx.local_rank)
    return device


def shutdown() -> None:
    global _context
    if dist.is_available() and dist.is_initialized():
        # DDP's reducer keeps the gloo backend alive; if reference cycles held it until
        # interpreter teardown, gloo's threads would meet a half-dead interpreter (SIGABRT).
        gc.collect()
        dist.destroy_process_group()
    _context = DistContext()


def barrier() -> None:
    """Wait for every rank (no-op for one process)."""
    if _context.enabled:
        dist.barrier()


# --------------------------------------------------------------------------- collectives


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks, in place (identity for one process)."""
    if _context.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_object(obj: Any, src: int = 0) -> Any:
    if not _context.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj: Any) -> List[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank."""
    if not _context.enabled:
        return [obj]
    out: List[Any] = [None] * _context.world_size
    dist.all_gather_object(out, obj)
    return out


def gather_in_order(parts: List[torch.Tensor]) -> torch.Tensor:
    """Concatenate this rank's batches, then interleave every rank's rows back into the order of a
    strided shard (rank r holds rows r, r + W, ...): the same tensor on every rank."""
    mine = torch.cat(parts) if parts else torch.empty(0)
    if not _context.enabled:
        return mine
    shards = gather_objects(mine.cpu())
    total, world = sum(len(shard) for shard in shards), _context.world_size
    if any(len(shard) != len(range(rank, total, world)) for rank, shard in enumerate(shards)):
        return torch.cat(shards)  # not a strided split (shards of a WebDataset): rank after rank
    out = torch.empty((total, *mine.shape[1:]), dtype=mine.dtype)
    for rank, shard in enumerate(shards):
        out[rank::world] = shard
    return out


def broadcast_buffers(model: nn.Module, src: int = 0) -> None:
    """Give every rank rank ``src``'s BatchNorm running statistics (each rank updated its own)."""
    if _context.enabled:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=src)


def weights_digest(model: nn.Module) -> str:
    """A hash of every parameter and buffer: equal on all ranks when they are in sync."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class StopVote:
    """Whether any rank was asked to stop, the same answer on every rank, asked every step without
    reading the device: each step's flag goes to a CPU (gloo) all-reduce whose result is read one step
    later, so every rank stops at the same step (with one process: the flag itself, at once)."""

    def __init__(self) -> None:
        self.group = dist.new_group(backend="gloo") if _context.enabled else None
        self.flag, self.pending = torch.zeros(1, dtype=torch.int32), None

    def __call__(self, asked: bool) -> bool:
        if self.group is None:
            return asked
        agreed = False
        if self.pending is not None:
            self.pending.wait()  # the previous step's vote: long done unless a rank is a step behind
            agreed = bool(self.flag.item())
        self.flag = torch.tensor([int(asked)], dtype=torch.int32)
        self.pending = dist.all_reduce(self.flag, op=dist.ReduceOp.MAX, group=self.group, async_op=True)
        return agreed


def wrap_model(model: nn.Module, device: torch.device, sync_bn: bool) -> nn.Module:
    """DistributedDataParallel (and SyncBatchNorm if asked) when running under torchrun."""
    if not _context.enabled:
        return model
    if sync_bn:
        if device.type != "cuda":
            raise MixtrainError("trainer.sync_bn=true needs CUDA (PyTorch's SyncBatchNorm is GPU-only): "
                                "set trainer.sync_bn=false on the CPU")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)
