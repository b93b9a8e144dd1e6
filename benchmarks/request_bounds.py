"""Worst-case time and memory of one request to the embedding API, against the server's limits.

Starts the API (a real server process, one worker, the limits of `encsteal serve` unless given) serving a
freshly initialised encoder, and sends the heaviest requests the limits let through, each kind --repeats
times: PNG and JPEG files of `max_image_pixels` filling `max_request_pixels`, `max_batch` small PNGs, .npy
arrays of uint8 and float32 pixels at the pixel and byte limits, `max_batch` images at the input size; and
two requests refused before any decoding (64 PNGs of 4096 x 4096 pixels, a few kB each, and the same from
an account out of quota). For each it reports the time to the answer (seen by the client, over 127.0.0.1) and the server
process's peak resident memory above its idle level after a first small request (the kernel's VmHWM, reset
before each request; memory kept from earlier requests counts, so a figure can only overstate).
Prints one JSON line per kind, then a table; --out DIR also writes results.json and report.md there.

    python benchmarks/request_bounds.py [--arch resnet18] [--threads 2] [--repeats 3] [--out DIR]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image

from encsteal.checkpoint import save_encoder
from encsteal.models import build_encoder
from encsteal.service import codec
from encsteal.service.ledger import Ledger
from encsteal.service.server import ServerProcess, ServeSettings


def kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


def reset_peak(pid: int) -> None:
    """Set the process's VmHWM back to its current resident size (Linux >= 4.0)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def image_file(side: int, fmt: str, seed: int) -> bytes:
    """A side x side photo-like image (smooth noise: neither trivially compressible nor incompressible)."""
    generator = np.random.default_rng(seed)
    coarse = generator.integers(0, 256, (max(2, side // 16), max(2, side // 16), 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize((side, side), Image.BILINEAR)
    noisy = np.asarray(image).astype(np.int16) + generator.integers(-8, 9, (side, side, 3), dtype=np.int16)
    buffer = io.BytesIO()
    Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(buffer, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def as_json(files: list[bytes]) -> bytes:
    return json.dumps({"images": [base64.b64encode(f).decode() for f in files]}).encode()


def requests(settings: ServeSettings, image_size: int) -> dict[str, tuple[bytes, str, str]]:
    """name -> (body, content type, which limit it reaches)."""
    side = int(settings.max_image_pixels ** 0.5)
    per_request = max(1, settings.max_request_pixels // side ** 2)
    small = int((settings.max_request_pixels / settings.max_batch) ** 0.5)
    npy_side = int((min(settings.max_request_pixels, (settings.max_bytes - 1024) // 3) / settings.max_batch) ** 0.5)
    float_side = int((min(settings.max_request_pixels, (settings.max_bytes - 1024) // 12) / settings.max_batch) ** 0.5)
    generator = np.random.default_rng(0)
    cases = {
        "png-largest": (as_json([image_file(side, "PNG", i) for i in range(per_request)]), codec.JSON,
                        f"{per_request} PNG of {side}x{side}: max_image_pixels, max_request_pixels"),
        "jpeg-largest": (as_json([image_file(side, "JPEG", i) for i in range(per_request)]), codec.JSON,
                         f"{per_request} JPEG of {side}x{side}: max_image_pixels, max_request_pixels"),
        "png-batch": (as_json([image_file(small, "PNG", i) for i in range(settings.max_batch)]), codec.JSON,
                      f"{settings.max_batch} PNG of {small}x{small}: max_batch, max_request_pixels"),
        "npy-uint8": (codec.encode_npy(generator.integers(0, 256, (settings.max_batch, 3, npy_side, npy_side), dtype=np.uint8)),
                      codec.NPY, f"{settings.max_batch} x 3 x {npy_side}x{npy_side} uint8: max_batch, pixels or bytes"),
        "npy-float32": (codec.encode_npy(generator.random((settings.max_batch, 3, float_side, float_side), dtype=np.float32)),
                        codec.NPY, f"{settings.max_batch} x 3 x {float_side}x{float_side} float32: max_batch, max_bytes"),
        "npy-input-size": (codec.encode_npy(generator.integers(0, 256, (settings.max_batch, 3, image_size, image_size), dtype=np.uint8)),
                           codec.NPY, f"{settings.max_batch} images at the input size {image_size}: max_batch (the encoder)"),
    }
    flat = io.BytesIO()
    Image.new("RGB", (4096, 4096)).save(flat, format="PNG")  # 49 kB
    bombs = as_json([flat.getvalue()] * min(64, settings.max_batch))
    count = min(64, settings.max_batch)
    cases["refused-pixels"] = (bombs, codec.JSON, f"{count} PNG of 4096x4096: refused (413) from their headers")
    cases["refused-quota"] = (bombs, codec.JSON, "the same from an account out of quota: refused (402)")
    return cases


def measure(server: ServerProcess, key: str, body: bytes, content_type: str, idle_kib: int) -> tuple[int, float, float]:
    """(status, seconds, peak MiB above the idle server). Memory that earlier requests left to the process
    counts too, so the figure can only overstate what the request itself took."""
    pid = server.process.pid
    reset_peak(pid)
    started = time.perf_counter()
    response = httpx.post(f"{server.url}/v1/embeddings", content=body, timeout=600,
                          headers={"Authorization": f"Bearer {key}", "Content-Type": content_type, "Accept": codec.NPY})
    seconds = time.perf_counter() - started
    return response.status_code, seconds, (kib(pid, "VmHWM") - idle_kib) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--stem", default="imagenet")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the server")
    parser.add_argument("--max-batch", type=int, default=None, help="default: encsteal serve's")
    parser.add_argument("--max-image-pixels", type=int, default=None, help="default: encsteal serve's")
    parser.add_argument("--max-request-pixels", type=int, default=None, help="default: encsteal serve's")
    parser.add_argument("--repeats", type=int, default=3, help="requests of each kind; the slowest and the largest count")
    parser.add_argument("--out", type=Path, default=None, help="write results.json and report.md here")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="encsteal-request-bounds-"))
    torch.manual_seed(0)
    checkpoint = save_encoder(build_encoder(args.arch, args.stem), work / "target.safetensors",
                              {"role": "target", "image_size": args.image_size})
    db = work / "accounts.sqlite"
    ledger = Ledger(db)
    key = ledger.create_account("bench")
    broke = ledger.create_account("broke", quota=0)
    limits = {name: value for name, value in (("max_batch", args.max_batch), ("max_image_pixels", args.max_image_pixels),
                                               ("max_request_pixels", args.max_request_pixels)) if value is not None}
    settings = ServeSettings(checkpoint=checkpoint, db=str(db), threads=args.threads, **limits)
    cases = requests(settings, args.image_size)
    header = {"arch": f"{args.arch}/{args.stem}", "input_size": args.image_size, "threads": args.threads,
              **{name: getattr(settings, name) for name in ("max_batch", "max_bytes", "max_image_pixels", "max_request_pixels")}}
    rows = []
    with ServerProcess(settings) as server:
        warm_up = codec.encode_npy(np.zeros((1, 3, args.image_size, args.image_size), dtype=np.uint8))
        measure(server, key, warm_up, codec.NPY, 0)
        idle = kib(server.process.pid, "VmRSS")
        header["idle_mib"] = round(idle / 1024, 1)
        print(json.dumps(header), flush=True)
        for name, (body, content_type, what) in cases.items():
            runs = [measure(server, broke if name == "refused-quota" else key, body, content_type, idle)
                    for _ in range(args.repeats)]
            statuses = sorted({status for status, _, _ in runs})
            row = {"request": name, "what": what, "body_mb": round(len(body) / 2**20, 2), "status": statuses,
                   "seconds_max": round(max(s for _, s, _ in runs), 3),
                   "seconds_median": round(float(np.median([s for _, s, _ in runs])), 3),
                   "peak_mib_max": round(max(m for _, _, m in runs), 1)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    answered = [row for row in rows if row["status"] == [200]]
    worst_time = max(answered, key=lambda row: row["seconds_max"])
    worst_memory = max(answered, key=lambda row: row["peak_mib_max"])
    summary = {"worst_seconds": worst_time["seconds_max"], "worst_seconds_request": worst_time["request"],
               "worst_peak_mib": worst_memory["peak_mib_max"], "worst_peak_request": worst_memory["request"]}
    print(json.dumps(summary), flush=True)
    table = report(header, rows, summary)
    print()
    print(table)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps({"settings": header, "requests": rows, "worst": summary}, indent=1) + "\n")
        (args.out / "report.md").write_text(table + "\n")


def report(header: dict, rows: list[dict], summary: dict) -> str:
    lines = [f"Worst-case requests against the limits: max_batch {header['max_batch']}, max_bytes {header['max_bytes']}, "
             f"max_image_pixels {header['max_image_pixels']}, max_request_pixels {header['max_request_pixels']}; "
             f"{header['arch']} at {header['input_size']}x{header['input_size']}, {header['threads']} torch threads; "
             f"the idle server holds {header['idle_mib']:.0f} MiB.",
             "", "| request | what it reaches | body MB | status | s (max) | s (median) | peak MiB above idle |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {row['request']} | {row['what']} | {row['body_mb']:.2f} | {'/'.join(map(str, row['status']))} | "
                     f"{row['seconds_max']:.3f} | {row['seconds_median']:.3f} | {row['peak_mib_max']:.0f} |")
    lines += ["", f"Worst answered request: {summary['worst_seconds']:.2f} s ({summary['worst_seconds_request']}); "
                  f"largest peak: {summary['worst_peak_mib']:.0f} MiB above idle ({summary['worst_peak_request']})."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
