"""What every training loop here shares: device and seeds, mini-batches over uint8 tensors, optimizers,
metrics, and per-epoch states so that a killed run resumes where it stopped."""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
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
from encsteal.progress import progress_bar


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
    recipe: dict = field(default_factory=dict)
    """What decides the result besides the loop's own settings (the pipeline's stage recipe: data, target,
    defenses), recorded in the epoch state so that a state of other settings is never resumed."""

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


def start_epoch(seed: int, epoch: int) -> torch.Generator:
    """Seed the global RNG (augmentations draw from it) and return the shuffling generator for an epoch.

    Both depend only on (seed, epoch), so a resumed run sees the same batches and augmentations as an
    uninterrupted one — and query-aug re-sends exactly the images already in the query cache."""
    torch.manual_seed(seed * 100_003 + epoch)
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


class EpochState:
    """Saves modules and optimizer after each epoch (atomically) and restores them on a re-run, with the
    stage's seconds so far, so that `ctx.seconds()` of a resumed stage counts its killed runs too.

    The state records the recipe it was trained under (the loop's own settings and `ctx.recipe`), and a state
    of another recipe is refused: resuming it would mix two trainings into one encoder. It holds only tensors,
    numbers, strings, lists and dicts, and is read with torch.load(weights_only=True)."""

    def __init__(self, ctx: TrainContext, modules: dict[str, nn.Module], optimizer: torch.optim.Optimizer,
                 recipe: dict, extra: dict[str, torch.Tensor] | None = None) -> None:
        self.ctx = ctx
        self.modules = modules
        self.optimizer = optimizer
        # as it reads back from the file (JSON types: tuples become lists)
        self.recipe = json.loads(json.dumps({**ctx.recipe, **recipe, "seed": ctx.seed}))
        self.extra = extra if extra is not None else {}

    @property
    def path(self) -> Path | None:
        return self.ctx.state_path

    def resume(self) -> int:
        """Load a saved state if there is one; returns the first epoch still to run."""
        if self.path is None or not self.path.exists():
            return 0
        state = torch.load(self.path, map_location="cpu", weights_only=True)
        saved = state.get("recipe")
        if saved is None:
            raise ConfigError(f"{self.path} was saved without the settings it was trained under (by an older "
                              "encsteal), so it cannot be resumed safely: delete it to start this stage again")
        if saved != self.recipe:
            raise ConfigError(
                f"{self.path} holds a half-trained stage made with other settings (different: "
                f"{', '.join(differing_keys(saved, self.recipe))}): go back to those settings to resume it, or delete "
                "it to start this stage again")
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
            "recipe": self.recipe,
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


def differing_keys(saved, wanted, prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two nested dicts, keys only one of them has included."""
    if not isinstance(saved, dict) or not isinstance(wanted, dict):
        return [] if saved == wanted else [prefix.rstrip(".") or "recipe"]
    keys = [*saved, *(key for key in wanted if key not in saved)]
    return [name for key in keys for name in differing_keys(saved.get(key), wanted.get(key), f"{prefix}{key}.")]


def tensor_digest(images: torch.Tensor) -> str:
    """SHA-256 of a tensor's shape, type and values."""
    data = images.detach().cpu().contiguous()
    return hashlib.sha256(f"{tuple(data.shape)}{data.dtype}".encode() + data.numpy().tobytes()).hexdigest()


class EpochLoop:
    """The epochs every training loop here runs: resumed from its saved state, seeded shuffled batches, the
    scheduled learning rate at every step, and after every epoch the state saved, a metrics line and the
    progress bar. A method keeps only its own step:

        loop = EpochLoop(ctx, {"encoder": encoder}, optimizer, {"pretrain": settings}, images, stage="pretrain", ...)
        for index in loop:          # the indices of this step's images
            loss = ...              # the method's own forward pass and loss
            loop.step(loss)         # backward pass and optimizer step

    The state's recipe is the loop's `recipe` (its settings), `ctx.recipe`, the seed and the training images'
    digest. Creating the loop restores a saved state (before the modules are wrapped for DDP or compiled); the
    state file is deleted once the last epoch is done. Batches and augmentations depend on (seed, epoch) alone
    (`start_epoch`), so a resumed run trains on what an unbroken run would."""

    def __init__(self, ctx: TrainContext, modules: dict[str, nn.Module], optimizer: torch.optim.Optimizer,
                 recipe: dict, images: torch.Tensor, *, stage: str, title: str, epochs: int, batch_size: int,
                 lr: float, lr_schedule: str, warmup_epochs: int = 0, images_per_step: int,
                 extra: dict[str, torch.Tensor] | None = None) -> None:
        self.ctx, self.optimizer = ctx, optimizer
        self.state = EpochState(ctx, modules, optimizer, {**recipe, "images": tensor_digest(images)}, extra)
        self.first_epoch = self.state.resume()
        self.stage, self.title, self.epochs = stage, title, epochs
        self.count, self.batch_size, self.images_per_step = len(images), batch_size, images_per_step
        self.lr, self.lr_schedule, self.warmup_epochs = lr, lr_schedule, warmup_epochs
        self.epoch_loss = 0.0

    def __iter__(self) -> Iterator[torch.Tensor]:
        main = self.ctx.dist.main
        steps = steps_per_epoch(self.count, self.batch_size)
        with progress_bar(self.epochs - self.first_epoch, self.title, enabled=self.ctx.progress) as advance:
            for epoch in range(self.first_epoch, self.epochs):
                generator = start_epoch(self.ctx.seed, epoch)
                started, self.epoch_loss = time.perf_counter(), 0.0
                for step, index in enumerate(minibatches(self.count, self.batch_size, generator), start=epoch * steps):
                    set_lr(self.optimizer, scheduled_lr(self.lr, self.lr_schedule, step, self.epochs * steps,
                                                        self.warmup_epochs * steps))
                    yield index
                seconds = time.perf_counter() - started
                loss = self.epoch_loss / max(steps, 1)
                self.state.save(epoch, main)
                self.ctx.log({"stage": self.stage, "epoch": epoch + 1, "loss": loss, "seconds": seconds,
                              "lr": self.optimizer.param_groups[0]["lr"],
                              "images_per_s": steps * self.images_per_step / seconds if seconds else None})
                advance(1, status=f"loss {loss:.4f}")
        self.state.finish(main)

    def step(self, loss: torch.Tensor) -> None:
        """Backward pass and optimizer step for this step's loss, counted in the epoch's mean loss."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.epoch_loss += loss.item()
