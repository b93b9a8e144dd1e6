"""Served embeddings/s and latency of the HTTP API against in-process inference of the same encoder, in one run.

For 1 and 2 uvicorn workers (torch threads split between them) and batch sizes 1, 64 and 256: as many
concurrent clients as workers send .npy requests back to back for a fixed number of images; we report
embeddings/s, p50 and p99 request latency, and the ratio to LocalTarget's in-process images/s at the same
batch size and thread count (goal at batch 256: >= 0.8). Each figure is the median of --repeats measurements
(this machine is shared and noisy). Prints a table and one JSON line per measurement.

    python benchmarks/service.py [--arch resnet18] [--stem imagenet] [--images 2048] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from encsteal.checkpoint import save_encoder
from encsteal.models import build_encoder
from encsteal.service.client import HttpTarget
from encsteal.service.ledger import Ledger
from encsteal.service.server import ServerProcess, ServeSettings
from encsteal.target import LocalTarget

BATCHES = (1, 64, 256)
CORES = 2


def in_process(encoder, batch: int, images: torch.Tensor, threads: int) -> float:
    torch.set_num_threads(threads)
    target = LocalTarget(encoder, image_size=32, device=torch.device("cpu"), batch_size=batch)
    target.embed(images[:batch])  # warm-up
    started = time.perf_counter()
    for chunk in images.split(batch):
        target.embed(chunk)
    return len(images) / (time.perf_counter() - started)


def served(url: str, key: str, batch: int, images: torch.Tensor, clients: int) -> tuple[float, list[float]]:
    """Embeddings/s with `clients` concurrent clients, and every request's latency (s)."""
    latencies: list[float] = []
    shards = [images[i::clients] for i in range(clients)]
    targets = [HttpTarget(url, key, batch_size=batch) for _ in range(clients)]
    warm_up = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8)
    for target in targets:
        target.embed(warm_up)  # the first is bought, the others are free replays: all warm the connection

    def work(target: HttpTarget, shard: torch.Tensor) -> None:
        for chunk in shard.split(batch):
            started = time.perf_counter()
            target.embed(chunk)
            latencies.append(time.perf_counter() - started)

    threads = [threading.Thread(target=work, args=pair) for pair in zip(targets, shards)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    for target in targets:
        target.close()
    return sum(len(s) for s in shards) / seconds, latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--stem", default="imagenet")
    parser.add_argument("--images", type=int, default=2048, help="images per measurement at batch 64 (twice that at 256)")
    parser.add_argument("--repeats", type=int, default=3, help="measurements per figure; the median is reported")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="encsteal-service-bench-"))
    torch.manual_seed(0)
    encoder = build_encoder(args.arch, args.stem).eval()
    checkpoint = save_encoder(encoder, work / "target.safetensors", {"role": "target", "image_size": 32})
    generator = torch.Generator().manual_seed(0)
    rows = []
    for workers in (1, 2):
        threads = CORES // workers
        db = work / f"accounts-{workers}.sqlite"
        key = Ledger(db).create_account("bench")
        settings = ServeSettings(checkpoint=checkpoint, db=str(db), threads=threads, max_batch=256)
        with ServerProcess(settings, workers=workers) as server:
            for batch in BATCHES:
                count = 128 if batch == 1 else args.images * (2 if batch == 256 else 1)
                # fresh images for every measurement: a repeated request would be a free replay, not a query
                rates, locals_, latencies = [], [], []
                for _ in range(args.repeats):
                    images = torch.randint(0, 256, (count, 3, 32, 32), generator=generator, dtype=torch.uint8)
                    rate, times = served(server.url, key, batch, images, clients=workers)
                    rates.append(rate)
                    latencies += times
                    locals_.append(in_process(encoder, batch, images, CORES))
                rate, local = float(np.median(rates)), float(np.median(locals_))
                row = {"arch": f"{args.arch}/{args.stem}", "workers": workers, "threads_per_worker": threads,
                       "batch": batch, "served_per_s": round(rate, 1), "in_process_per_s": round(local, 1),
                       "ratio": round(rate / local, 3), "p50_ms": round(1000 * float(np.percentile(latencies, 50)), 2),
                       "p99_ms": round(1000 * float(np.percentile(latencies, 99)), 2), "requests": len(latencies)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    print()
    print("| workers | batch | served emb/s | in-process emb/s | ratio | p50 ms | p99 ms |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['workers']} | {r['batch']} | {r['served_per_s']:.0f} | {r['in_process_per_s']:.0f} | "
              f"{r['ratio']:.2f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} |")


if __name__ == "__main__":
    main()
