"""A steal with 2 data-parallel processes (torchrun, gloo) against the same steal in 1 process, in one run.

Both steal the same target checkpoint with the same preset; the 2-process run splits every batch between two
processes with one torch thread each, the 1-process run uses both threads. We print, per run, the stealing
wall time and images/s, and per downstream task SA, R and G, then the ratios (2 / 1). Quality should agree
within noise (BatchNorm statistics are per slice, the only difference in the maths); on a 2-core CPU the
speed-up is small, as one process already uses both cores. Both runs share one query cache (the second buys
nothing) and one probe cache (TA and R are measured once).

    python benchmarks/ddp.py [--preset demo] [--runs-dir runs/bench-ddp] [key=value ...]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

CORES = 2


def encsteal(args: list[str], processes: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, CORES // processes))}
    if processes == 1:
        command = [sys.executable, "-m", "encsteal", *args]
    else:
        torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
        command = [torchrun, "--standalone", "--nproc_per_node", str(processes), "-m", "encsteal", *args]
    subprocess.run(command, check=True, env=env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs/bench-ddp"))
    parser.add_argument("overrides", nargs="*", help="key=value for both runs")
    args = parser.parse_args()

    target_dir = args.runs_dir / "target"
    encsteal(["pretrain", args.preset, f"run_dir={target_dir}", *args.overrides, "--quiet"], 1)
    shared = [f"target.checkpoint={target_dir / 'target.safetensors'}",
              f"target.query_cache={args.runs_dir / 'queries.sqlite'}",
              f"evaluate.probe_cache={args.runs_dir / 'probes.sqlite'}", *args.overrides]  # TA and R probed once
    results = {}
    for processes in (1, 2):
        run_dir = args.runs_dir / f"processes-{processes}"
        encsteal(["steal", args.preset, f"run_dir={run_dir}", *shared, "--quiet"], processes)
        encsteal(["evaluate", args.preset, f"run_dir={run_dir}", *shared, "--quiet"], 1)
        stolen = json.loads((run_dir / "stolen.json").read_text())
        steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        rates = [s["images_per_s"] for s in steps if s.get("stage") == "steal" and s.get("images_per_s")]
        results[processes] = {"steal_seconds": stolen["wall_seconds"], "images_per_s": sorted(rates)[len(rates) // 2],
                              "queries_this_run": stolen["queries_this_run"],
                              "downstream": json.loads((run_dir / "results.json").read_text())["downstream"]}

    print(f"\n{'processes':>9} {'steal s':>8} {'images/s':>9} {'bought':>7}  task: SA / R / G")
    for processes, r in results.items():
        tasks = "  ".join(f"{name}: {100 * t['SA']:.2f} / {100 * t['R']:.2f} / {t['gain_captured']:.2f}"
                          for name, t in r["downstream"].items())
        print(f"{processes:>9} {r['steal_seconds']:>8.1f} {r['images_per_s']:>9.0f} {r['queries_this_run']:>7}  {tasks}")
    one, two = results[1], results[2]
    print(f"ratio 2/1: images/s {two['images_per_s'] / one['images_per_s']:.2f}; " + "; ".join(
        f"{name} SA {100 * (two['downstream'][name]['SA'] - t['SA']):+.2f} points"
        for name, t in one["downstream"].items()))
    print(json.dumps({"benchmark": "ddp", "preset": args.preset, "results": results}))


if __name__ == "__main__":
    main()
