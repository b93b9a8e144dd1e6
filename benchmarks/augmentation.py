"""encsteal's augmentations against kornia's stock ones, on the same batch, in the same run.

For each op of Table VIII and for all four together: milliseconds per call of encsteal's op (`encsteal.augment`:
kornia's crop boxes with one grid_sample; flip, colour jitter and grayscale on the chosen images only, the
colour steps in place) and of kornia's class with the same settings, timed in alternation so both see the
same load, and the median of the per-round ratios (kornia / encsteal: above 1, encsteal is faster). Both run
with freed memory kept for reuse, as in an encsteal run (`encsteal.training.keep_freed_memory`). Prints one
JSON line per op.

    python benchmarks/augmentation.py [--batch 256] [--size 32] [--rounds 15]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import kornia.augmentation as K
import torch
from torch import nn

from encsteal.augment import AUGMENTATIONS, CROP_SCALE, ViewSettings, build_augmentation
from encsteal.training import keep_freed_memory

STOCK: dict[str, Callable[[int], nn.Module]] = {
    "random_resized_crop": lambda size: K.RandomResizedCrop((size, size), scale=CROP_SCALE),
    "horizontal_flip": lambda size: K.RandomHorizontalFlip(p=0.5),
    "color_jitter": lambda size: K.ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8),
    "grayscale": lambda size: K.RandomGrayscale(p=0.2),
}
"""kornia's own classes with the same parameters: the baseline."""


def milliseconds(op: nn.Module, images: torch.Tensor, calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        op(images)
    return (time.perf_counter() - started) / calls * 1000


def compare(name: str, ours: nn.Module, stock: nn.Module, images: torch.Tensor, rounds: int, calls: int) -> dict:
    for op in (ours, stock):  # warm-up
        op(images)
    ours_ms, stock_ms = [], []
    for _ in range(rounds):
        ours_ms.append(milliseconds(ours, images, calls))
        stock_ms.append(milliseconds(stock, images, calls))
    return {"op": name, "batch": list(images.shape), "encsteal_ms": round(statistics.median(ours_ms), 2),
            "kornia_ms": round(statistics.median(stock_ms), 2),
            "kornia_over_encsteal": round(statistics.median(s / o for s, o in zip(stock_ms, ours_ms)), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--size", type=int, default=32, help="image height and width")
    parser.add_argument("--rounds", type=int, default=15, help="alternating timing rounds (the median is printed)")
    parser.add_argument("--calls", type=int, default=10, help="calls per round")
    args = parser.parse_args()
    kept = keep_freed_memory()
    torch.manual_seed(0)
    images = torch.rand(args.batch, 3, args.size, args.size)
    print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), "freed_memory_kept": kept}), flush=True)
    for name in AUGMENTATIONS:
        line = compare(name, AUGMENTATIONS[name](ViewSettings(args.size)), STOCK[name](args.size), images, args.rounds, args.calls)
        print(json.dumps(line), flush=True)
    stock_pipeline = nn.Sequential(*(STOCK[name](args.size) for name in AUGMENTATIONS))
    line = compare("all four", build_augmentation(list(AUGMENTATIONS), args.size), stock_pipeline, images, args.rounds, args.calls)
    print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
