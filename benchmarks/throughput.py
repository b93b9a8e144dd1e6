"""Training throughput of the pipeline against the raw model, in the same run.

For each architecture: images/s of a raw forward+backward+Adam step on random tensors shaped like the
pipeline's batches, then images/s of one epoch of SimCLR pre-training and of StolenEncoder stealing on
random uint8 images (augmentation, batching, conversion and logging included). The ratio pipeline/raw is
the overhead of everything around the model (goal: >= 0.85). With `--precisions fp32,bf16` each is measured
in both arithmetics (`precision: bf16` runs the forward passes under autocast) and bf16's speed-up over fp32 is
printed: it depends on the CPU (native bf16 instructions, AVX512-BF16 or AMX, make it pay). On a shared
machine one measurement can be off by a factor of two; `--repeats N` alternates raw and pipeline N times and
prints the medians (of the images/s and of the per-round ratios). Both run, as every encsteal run does, with
freed memory kept for reuse (`encsteal.training.keep_freed_memory`); `--malloc-defaults` leaves glibc's malloc
as it is, to measure what that buys. Prints one JSON line per measurement.

    python benchmarks/throughput.py [--archs small_cnn:cifar,resnet18:imagenet] [--images 2048] [--precisions fp32,bf16] [--repeats 3] [--malloc-defaults]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from encsteal.attacks import ATTACKS
from encsteal.config import AttackConfig, PretrainConfig
from encsteal.models import build_encoder
from encsteal.models.heads import ProjectionHead
from encsteal.pretrain import pretrain_simclr
from encsteal.target import LocalTarget
from encsteal.training import TrainContext, channels_last, keep_freed_memory

# the demo's encoder, ResNet18 with both stems the fmnist-bench presets use, and the paper's copy: the Speed table in docs/speed.md
DEFAULT_ARCHS = "small_cnn:imagenet,resnet18:imagenet,resnet18:half,resnet34:imagenet"


def raw_images_per_s(arch: str, stem: str, batch: int, steps: int, with_head: bool, precision: str) -> float:
    """Forward + backward + Adam on random float tensors: the model alone."""
    torch.manual_seed(0)
    encoder = build_encoder(arch, stem).to(memory_format=torch.channels_last)
    modules = [encoder]
    if with_head:
        modules.append(ProjectionHead(encoder.feature_dim, encoder.feature_dim, 128))
    optimizer = torch.optim.Adam([p for m in modules for p in m.parameters()], lr=1e-3)
    x = channels_last(torch.rand(batch, 3, 32, 32))
    for step in range(steps + 2):  # two warm-up steps
        if step == 2:
            started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = encoder(x)
            if with_head:
                out = modules[1](out)
        loss = out.float().pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return steps * batch / (time.perf_counter() - started)


def pipeline_images_per_s(stage: str, arch: str, stem: str, images: torch.Tensor, batch: int, precision: str) -> float:
    """One epoch of the real training loop (after a one-epoch warm-up), from its own metrics."""
    records: list[dict] = []
    ctx = TrainContext(device=torch.device("cpu"), seed=0, log=records.append, progress=False, precision=precision)
    if stage == "pretrain":
        config = PretrainConfig(arch=arch, stem=stem, epochs=2, batch_size=batch)
        pretrain_simclr(images, config, ctx)
    else:
        target = LocalTarget(build_encoder("small_cnn"), image_size=32, device=torch.device("cpu"))
        config = AttackConfig(arch=arch, stem=stem, epochs=2, batch_size=batch)
        ATTACKS["stolenencoder"](target, images, config, ctx)
    return records[-1]["images_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", default=DEFAULT_ARCHS, help="arch:stem pairs, comma-separated")
    parser.add_argument("--images", type=int, default=2048, help="images per measured epoch")
    parser.add_argument("--raw-steps", type=int, default=8)
    parser.add_argument("--precisions", default="fp32", help="fp32, bf16 or both, comma-separated")
    parser.add_argument("--repeats", type=int, default=1, help="alternating raw/pipeline rounds (medians are printed)")
    parser.add_argument("--malloc-defaults", action="store_true", help="leave glibc's malloc returning freed memory to the OS")
    args = parser.parse_args()
    precisions = args.precisions.split(",")
    if not set(precisions) <= {"fp32", "bf16"}:
        parser.error(f"--precisions takes fp32 and/or bf16, not {args.precisions}")
    images = torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    kept = False if args.malloc_defaults else keep_freed_memory()
    print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), "images": args.images,
                      "freed_memory_kept": kept}), flush=True)
    for pair in args.archs.split(","):
        arch, stem = pair.split(":")
        # SimCLR: batch 256 images -> 512 views through encoder + head; StolenEncoder: batch 64 -> 128 (x and A(x)).
        for stage, batch, forward_batch, head in [("pretrain", 256, 512, True), ("steal", 64, 128, False)]:
            fp32_pipeline = None
            for precision in precisions:
                raws, pipelines = [], []
                for _ in range(args.repeats):  # alternating, so both see the same load
                    raws.append(raw_images_per_s(arch, stem, forward_batch, args.raw_steps, head, precision))
                    pipelines.append(pipeline_images_per_s(stage, arch, stem, images, batch, precision))
                raw, pipeline = statistics.median(raws), statistics.median(pipelines)
                ratio = statistics.median(p / r for p, r in zip(pipelines, raws))
                line = {"arch": arch, "stem": stem, "stage": stage, "batch": batch, "precision": precision,
                        "raw_images_per_s": round(raw, 1), "pipeline_images_per_s": round(pipeline, 1),
                        "pipeline_over_raw": round(ratio, 3), "repeats": args.repeats}
                if precision == "fp32":
                    fp32_pipeline = pipeline
                elif fp32_pipeline:
                    line["bf16_over_fp32"] = round(pipeline / fp32_pipeline, 3)
                print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
