"""Every defense of StolenEncoder §VII (and Gaussian noise) at two strengths, stolen over HTTP: TA, SA, R, G.

Each row is one run of the `defenses/served` preset (the demo's target behind the embedding API, stolen
with 3,000 queries); the undefended run comes first. Runs are reused when their run directory is complete,
so an interrupted benchmark continues where it stopped. Prints a Markdown table and one JSON line per run.

    encsteal pretrain demo && python benchmarks/defenses.py [--only top-k-10,rounding-1]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

import encsteal

GRID = {
    "none": [],
    "top-k-50": [{"name": "top-k", "k": 50}],
    "top-k-10": [{"name": "top-k", "k": 10}],
    "rounding-1": [{"name": "rounding", "decimals": 1}],
    "rounding-0": [{"name": "rounding", "decimals": 0}],
    "noise-0.1": [{"name": "noise", "sigma": 0.1}],
    "noise-0.5": [{"name": "noise", "sigma": 0.5}],
    "poisoning-l2-1": [{"name": "poisoning", "epsilon": 1.0, "norm": "2", "shadow_images": 3000}],
    "poisoning-l2-3": [{"name": "poisoning", "epsilon": 3.0, "norm": "2", "shadow_images": 3000}],
}
"""label -> target.defenses. Demo features have ℓ2 norm ≈ 7.5 and |value| ≈ 0.37 on average (256 dims)."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", help="comma-separated labels of GRID (default: all)")
    parser.add_argument("--root", default="runs/defenses", help="where the run directories go")
    args = parser.parse_args()
    labels = [label for label in GRID if not args.only or label in args.only.split(",")]
    rows = []
    for label in labels:
        run_dir = Path(args.root) / label
        config = encsteal.load_config("defenses/served", [
            f"run_dir={run_dir}", f"target.defenses={yaml.safe_dump(GRID[label], default_flow_style=True).strip()}"])
        results_path = run_dir / "results.json"
        results = json.loads(results_path.read_text()) if results_path.exists() else encsteal.run(config)
        for task, row in results["downstream"].items():
            rows.append({"defense": label, "task": task, "TA": row["TA"], "SA": row["SA"], "R": row["R"],
                         "G": row["gain_captured"], "queries": results["queries"], "cost": results.get("cost")})
            print(json.dumps(rows[-1]), flush=True)
    print()
    print("| defense | task | TA (%) | SA (%) | R (%) | G | TA drop | SA drop |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    base = {row["task"]: row for row in rows if row["defense"] == "none"}
    for row in rows:
        ref = base.get(row["task"])
        drops = ("–", "–") if ref is None else (f"{100 * (ref['TA'] - row['TA']):.2f}", f"{100 * (ref['SA'] - row['SA']):.2f}")
        gain = "–" if row["G"] is None else f"{row['G']:.2f}"
        print(f"| {row['defense']} | {row['task']} | {100 * row['TA']:.2f} | {100 * row['SA']:.2f} | "
              f"{100 * row['R']:.2f} | {gain} | {drops[0]} | {drops[1]} |")


if __name__ == "__main__":
    main()
