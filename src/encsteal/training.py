"""What every training loop here shares: device and seeds, mini-batches over uint8 tensors, optimizers,
metrics, and per-epoch states so that a killed run resumes where it stopped."""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from encsteal.errors import ConfigError
from encsteal.distributed import SINGLE, Dist


def resolve_device(name: str) -> torch.device:
    """'auto' picks cuda, then mps, then cpu."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"config key 'device': '{name}' is not a device (use auto, cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("config key 'device': CUDA was requested but this machine has no CUDA device (use device=auto)")
    return device


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
"""glibc's mallopt parameters (malloc.h)."""


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep the memory of freed tensors for the next ones instead of returning it to the
    OS. By default it hands large freed blocks back, and the next step's tensors of the same sizes fault in
    every 4 KiB page again: the hue step on 128 images faulted 2,000 pages and took three times as long.
    Blocks up to 32 MiB (glibc's ceiling) now come from the heap, and the heap is no longer trimmed, so the
    process keeps its peak heap until it exits. Process-wide, like torch.set_num_threads; returns False,
    changing nothing, where malloc is not glibc's (macOS, musl)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        libc.gnu_get_libc_version  # noqa: B018 - present in glibc alone
    except (OSError, AttributeError, TypeError):
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class MetricsLog:
    """Appends one JSON object per line to metrics.jsonl (or nowhere when path is None)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def __call__(self, record: dict) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as out:
            out.write(json.dumps({"time": round(time.time(), 3), **record}) + "\n")


@dataclass
class TrainContext:
    """Everything a training loop needs besides its data and its settings."""

    device: torch.device
    seed: int = 0
    state_path: Path | None = None
    """Where the loop saves its state after every epoch and resumes from; None: no resuming."""
    log: Callable[[dict], None] = field(default_factory=lambda: MetricsLog(None))
    progress: bool = True
    dist: Dist = SINGLE
    """This process's rank among torchrun's processes (encsteal.distributed); rank 0 alone saves the state."""
    precision: str = "fp32"
    """fp32, or bf16: forward passes under autocast (see `autocast`)."""
    compile: bool = False
    """torch.compile the trained module (see `compiled`)."""
    started: float = field(default_factory=time.perf_counter)
    """When the stage started in this process (time.perf_counter)."""
    earlier_seconds: float = 0.0
    """Seconds the stage ran in earlier runs that were killed (EpochState.resume reads them from its state)."""

    def seconds(self) -> float:
        """The stage's wall time so far, its interrupted runs included."""
        return self.earlier_seconds + time.perf_counter() - self.started

    def autocast(self):
        """The context for a trained encoder's forward pass; the loss is then computed in fp32."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")

    def compiled(self, module: nn.Module) -> nn.Module:
        return torch.compile(module) if self.compile else module


def to_float_batch(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 N x 3 x H x W (CPU) -> float in [0, 1] on device."""
    return images.to(device, non_blocking=True).float().div_(255)


def channels_last(batch: torch.Tensor) -> torch.Tensor:
    return batch.contiguous(memory_format=torch.channels_last)


def channels_last_cat(parts: list[torch.Tensor]) -> torch.Tensor:
    """torch.cat(parts) laid out channels_last, in one copy instead of a cat and then a layout change. For
    inputs to a model, not for tensors that need gradients (a cat with out= does not record them)."""
    first = parts[0]
    out = torch.empty((sum(len(part) for part in parts), *first.shape[1:]), dtype=first.dtype, device=first.device,
                      memory_format=torch.channels_last)
    return torch.cat(parts, out=out)


def minibatches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Shuffled index batches; the last partial batch is dropped (Algorithm 1 runs ⌊|D|/S⌋ steps),
    unless the whole set is smaller than one batch, which then forms a single batch."""
    order = torch.randperm(n, generator=generator)
    if n < batch_size:
        if n >= 2:  # BatchNorm cannot train on a batch of one
            yield order
        return
    for start in range(0, n - batch_size + 1, batch_size):
        yield order[start : start + batch_size]


def steps_per_epoch(n: int, batch_size: int) -> int:
    if n < batch_size:
        return 1 if n >= 2 else 0
    return n // batch_size


def make_optimizer(
    name: str, parameters, lr: float, weight_decay: float = 0.0, momentum: float = 0.9
) -> torch.optim.Optimizer:
    """adam, sgd (with momentum), or lars: SGD with a per-layer learning rate (You et al. 2017), as SimCLR trains
    (Chen et al. 2020). LARS scales each weight tensor's step by trust · ‖w‖ / (‖∇w‖ + wd · ‖w‖); biases and
    batch-norm parameters get neither that ratio nor weight decay, as in SimCLR."""
    if name == "adam":
        return torch.optim.Adam(parameters, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(parameters, lr=lr, weight_decay=weight_decay, momentum=momentum)
    if name == "lars":
        from timm.optim import Lars

        parameters = list(parameters)
        weights = [p for p in parameters if p.ndim > 1]
        biases_and_norms = [p for p in parameters if p.ndim <= 1]
        groups = [{"params": weights, "always_adapt": True}, {"params": biases_and_norms, "weight_decay": 0.0}]
        return Lars(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer '{name}' (adam, sgd or lars)")


def scheduled_lr(base_lr: float, schedule: str, step: int, total_steps: int, warmup_steps: int = 0) -> float:
    """The learning rate at global step `step` of `total_steps`. The first `warmup_steps` ramp it linearly up to
    base_lr (Goyal et al. 2017); the rest follow the schedule: constant, or cosine decay from base_lr towards 0
    (SGDR, Loshchilov & Hutter 2017, without restarts): lr = base_lr · (1 + cos(π · t / T)) / 2, with t and T
    the step and the number of steps after the warm-up. A function of the step alone, so a resumed run carries on
    along the same curve."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return base_lr
    if schedule == "cosine":
        return base_lr * 0.5 * (1 + math.cos(math.pi * (step - warmup_steps) / max(total_steps - warmup_steps, 1)))
    raise ValueError(f"unknown learning-rate schedule '{schedule}' (constant or cosine)")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


class EpochState:
    """Saves modules and optimizer after each epoch (atomically) and restores them on a re-run, with the
    stage's seconds so far, so that `ctx.seconds()` of a resumed stage counts its killed runs too."""

    def __init__(self, ctx: TrainContext, modules: dict[str, nn.Module], optimizer: torch.optim.Optimizer,
                 extra: dict[str, torch.Tensor] | None = None) -> None:
        self.ctx = ctx
        self.modules = modules
        self.optimizer = optimizer
        self.extra = extra if extra is not None else {}

    @property
    def path(self) -> Path | None:
        return self.ctx.state_path

    def resume(self) -> int:
        """Load a saved state if there is one; returns the first epoch still to run."""
        if self.path is None or not self.path.exists():
            return 0
        state = torch.load(self.path, map_location="cpu", weights_only=False)
        for name, module in self.modules.items():
            module.load_state_dict(state["modules"][name])
        self.optimizer.load_state_dict(state["optimizer"])
        for name, tensor in state.get("extra", {}).items():
            self.extra[name].copy_(tensor)
        self.ctx.earlier_seconds = float(state.get("seconds", 0.0))
        return int(state["epoch"]) + 1

    def save(self, epoch: int, main: bool = True) -> None:
        """Save after `epoch`; only the main process writes (every process resumes from the same file)."""
        if self.path is None or not main:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "epoch": epoch,
            "modules": {name: module.state_dict() for name, module in self.modules.items()},
            "optimizer": self.optimizer.state_dict(),
            "extra": {name: tensor.detach().cpu() for name, tensor in self.extra.items()},
            "seconds": self.ctx.seconds(),
        }
        tmp = self.path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.path)

    def finish(self, main: bool = True) -> None:
        """The loop is done and its result saved elsewhere: the resume state is no longer needed."""
        if main and self.path is not None and self.path.exists():
            self.path.unlink()


def start_epoch(seed: int, epoch: int) -> torch.Generator:
    """Seed the global RNG (augmentations draw from it) and return the shuffling generator for an epoch.

    Both depend only on (seed, epoch), so a resumed run sees the same batches and augmentations as an
    uninterrupted one — and query-aug re-sends exactly the images already in the query cache."""
    torch.manual_seed(seed * 100_003 + epoch)
    return torch.Generator().manual_seed(seed * 100_003 + epoch)
