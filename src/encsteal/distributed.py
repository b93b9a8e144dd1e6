"""Data-parallel training under `torchrun` (DistributedDataParallel; gloo on CPU, nccl on GPU).

    torchrun --nproc_per_node 2 -m encsteal run demo            # one machine, two processes
    torchrun --nnodes 2 --node_rank R --master_addr HOST ... -m encsteal run PRESET   # several machines

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them everything runs in one process, unchanged.
How a training loop shares the work: every process draws the same shuffled batch and the same augmentations
(the RNGs are seeded by (seed, epoch) on every rank), runs the encoder on its own slice of the batch
(`shard`), and gathers the slices' outputs with their gradients (`gather`), so the loss — contrastive
negatives included — is computed on the whole batch, as in one process. DDP averages the gradients. Only the
encoders' BatchNorm statistics are per slice (SyncBatchNorm on GPU).

The attack's victim is asked by rank 0 alone, which pays for the queries and passes the answers on
(`SharedAnswers`): the other ranks never touch the API, the query cache or the ledger. Rank 0 writes
checkpoints, states and metrics; all ranks read them, so the run directory must be on a shared file system
when processes run on several machines.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist
from torch import nn

from encsteal.errors import ConfigError


@dataclass(frozen=True)
class Dist:
    """This process's place among the training processes (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


SINGLE = Dist()


def from_env(device_type: str) -> Dist:
    """Join the process group torchrun describes in the environment (once per process); SINGLE without one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return SINGLE
    if not torch_dist.is_initialized():
        torch_dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return Dist(rank=torch_dist.get_rank(), world=torch_dist.get_world_size(),
                local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def check_batch(batch_size: int, n: int, dist: Dist, key: str) -> None:
    """Every rank must get an equal slice of every batch (the gathered outputs line up)."""
    if not dist.active:
        return
    if batch_size % dist.world:
        raise ConfigError(f"{key}={batch_size} does not split evenly over {dist.world} processes")
    if n < batch_size:
        raise ConfigError(f"{key}={batch_size} is more than the {n} training images: with {dist.world} processes "
                          "every step needs a whole batch")


def shard(batch: torch.Tensor, dist: Dist) -> torch.Tensor:
    """This rank's contiguous slice of a batch (the slices concatenate back in rank order)."""
    return batch.tensor_split(dist.world)[dist.rank] if dist.active else batch


class _GatherWithGrad(torch.autograd.Function):
    """all_gather forward; backward sums every rank's gradient of the whole batch and keeps this rank's slice
    (all_reduce rather than reduce_scatter, which gloo lacks)."""

    @staticmethod
    def forward(ctx, part: torch.Tensor, rank: int, world: int) -> torch.Tensor:
        ctx.rank, ctx.rows = rank, len(part)
        pieces = [torch.empty_like(part) for _ in range(world)]
        torch_dist.all_gather(pieces, part.contiguous())
        return torch.cat(pieces)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous()
        torch_dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows], None, None


def gather(part: torch.Tensor, dist: Dist) -> torch.Tensor:
    """The whole batch from every rank's equal slice, differentiable: each rank's slice gets the gradient of
    the loss summed over ranks (DDP's average then makes it the one-process gradient)."""
    return _GatherWithGrad.apply(part, dist.rank, dist.world) if dist.active else part


def wrap(module: nn.Module, dist: Dist, device: torch.device) -> nn.Module:
    """DistributedDataParallel around the module (gradients averaged over ranks); the module itself alone."""
    if not dist.active:
        return module
    if device.type == "cuda":
        module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
        return nn.parallel.DistributedDataParallel(module, device_ids=[device.index])
    return nn.parallel.DistributedDataParallel(module)


def unwrap(module: nn.Module) -> nn.Module:
    """The trained module itself, out of torch.compile's and DDP's wrappers."""
    module = getattr(module, "_orig_mod", module)  # torch.compile
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


def _comm_device() -> torch.device:
    """Where collectives' tensors must live: nccl talks GPU to GPU, gloo CPU to CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if torch_dist.get_backend() == "nccl" else torch.device("cpu")


def mean_over_ranks(value: float, dist: Dist) -> float:
    if not dist.active:
        return value
    total = torch.tensor([value], dtype=torch.float64, device=_comm_device())
    torch_dist.all_reduce(total)
    return total.item() / dist.world


def barrier(dist: Dist) -> None:
    if dist.active:
        torch_dist.barrier()


class SharedAnswers:
    """The victim seen from every rank: rank 0 asks the real target and broadcasts its answers; the other ranks
    receive them. All ranks ask for the same images in the same order (same seeds), so the answers line up."""

    def __init__(self, target, dist: Dist) -> None:
        if dist.main == (target is None):
            raise ValueError("rank 0 needs the target; the other ranks must not have it")
        self.target = target
        self.dist = dist

    @property
    def queries(self) -> int:
        return self.target.queries if self.target is not None else 0

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        if not self.dist.active:
            return self.target.embed(images)
        device = _comm_device()
        if self.dist.main:
            features = self.target.embed(images).float().to(device).contiguous()
            shape = torch.tensor(features.shape, dtype=torch.int64, device=device)
        else:
            shape = torch.zeros(2, dtype=torch.int64, device=device)
        torch_dist.broadcast(shape, src=0)
        if not self.dist.main:
            features = torch.empty(tuple(shape.tolist()), dtype=torch.float32, device=device)
        torch_dist.broadcast(features, src=0)
        return features.cpu()
