"""The ownership results page, from the CSV files committed beside it (never retyped):

    python -m encsteal.experiments.ownership_report docs/results/ownership-cpu

reads `<dir>/<victim>/results.csv` of every verification sweep copied there (`encsteal report SWEEP --out ...`) and
`<dir>/watermark-cost/results.csv` (the pipeline sweep of watermarked and plain targets), and writes
`<dir>/report.md`: the goals per victim (copies flagged, independent encoders falsely claimed, queries of a remote
verification), the watermark's cost in TA, and the slides' ownership table beside ours.
"""

from __future__ import annotations

import sys
from pathlib import Path

from encsteal.experiments.verify_sweep import _median, min_p, paper_rows, read_csv

SLIDES = {  # the slides' dataset-inference table, CIFAR10 victim: (p-value, Δμ)
    "victim": (4.52e-17, 10.73),
    "stolen": (8.73e-7, 5.09),
    "stolen+shuffle": (1.72e-6, 4.98),
    "stolen+pad": (3.34e-6, 4.84),
    "stolen+linear": (6.81e-7, 5.11),
    "independent": (3.67e-1, -0.37),
}
STRONG, ALPHA = 0.01, 0.05


def _p(value) -> str:
    return "–" if value is None else f"{value:.1e}"


def _share(part: int, whole: int) -> str:
    return f"{part} of {whole}" if whole else "–"


def goals_table(victims: dict[str, list[dict]]) -> list[str]:
    lines = ["| victim | copies flagged at p < 0.01 (any method) | by dataset inference | by the watermark | "
             "independent encoders claimed at α = 0.05 (dataset inference / watermark / overall) | remote verification |",
             "|---|---:|---:|---:|---|---|"]
    for name, recs in victims.items():
        copies = [r for r in recs if r["expect"] == "stolen" and r["group"] != "victim"]
        independent = [r for r in recs if r["expect"] == "independent"]
        by = {column: [r for r in copies if r[column] is not None] for column in ("di_p", "wm_p")}
        claims = {column: [r for r in independent if r[column] is not None] for column in ("di_p", "wm_p")}
        claimed = " / ".join(_share(sum(r[c] < ALPHA for r in claims[c]), len(claims[c])) for c in ("di_p", "wm_p"))
        claimed += f" / {_share(sum(r['verdict'] == 'stolen' for r in independent), len(independent))}"
        remote = [r for r in recs if r["served"]]
        remote_text = "; ".join(f"{r['queries']:,} queries ({r['ledger_queries']:,} in the ledger), {r['verdict']}"
                                for r in remote) or "–"
        lines.append(f"| {name} | {_share(sum(min_p(r) < STRONG for r in copies), len(copies))} | "
                     f"{_share(sum(r['di_p'] < STRONG for r in by['di_p']), len(by['di_p']))} | "
                     f"{_share(sum(r['wm_p'] < STRONG for r in by['wm_p']), len(by['wm_p']))} | {claimed} | {remote_text} |")
    return lines


def per_obfuscation_table(recs: list[dict]) -> list[str]:
    """Copies per obfuscation: how many each method flags, and the median p-values."""
    lines = ["| obfuscation | copies | DI flags (p < 0.01) | median DI p | WM flags (p < 0.01) | median WM p | "
             "median WM accuracy |", "|---|---:|---:|---:|---:|---:|---:|"]
    copies = [r for r in recs if r["expect"] == "stolen" and r["group"] != "victim" and not r["served"]]
    for kind in dict.fromkeys(r["obfuscation"] for r in copies):
        rows = [r for r in copies if r["obfuscation"] == kind]
        di = [r for r in rows if r["di_p"] is not None]
        wm = [r for r in rows if r["wm_p"] is not None]
        lines.append(f"| {kind} | {len(rows)} | {_share(sum(r['di_p'] < STRONG for r in di), len(di))} | "
                     f"{_p(_median([r['di_p'] for r in di]))} | {_share(sum(r['wm_p'] < STRONG for r in wm), len(wm))} | "
                     f"{_p(_median([r['wm_p'] for r in wm]))} | "
                     f"{'–' if not wm else format(_median([r['wm_accuracy'] for r in wm]), '.3f')} |")
    return lines


def watermark_cost_table(rows: list[dict]) -> list[str]:
    """TA of each watermarked target against the plain one of the same seed, per downstream task."""
    ta = {(r["case"], r["task"]): r["TA"] for r in rows}
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    seeds = sorted({case.split("-s")[-1] for case, _ in ta if case.startswith("wm-s")})
    lines = ["| task | " + " | ".join(f"TA plain s{s} | TA watermarked s{s} | cost s{s}" for s in seeds) + " | mean cost |",
             "|---|" + "---:|" * (3 * len(seeds) + 1)]
    for task in tasks:
        cells, costs = [], []
        for seed in seeds:
            plain, marked = ta.get((f"plain-s{seed}", task)), ta.get((f"wm-s{seed}", task))
            cost = None if plain is None or marked is None else 100 * (plain - marked)
            costs += [] if cost is None else [cost]
            cells += [f"{100 * plain:.2f}" if plain is not None else "–", f"{100 * marked:.2f}" if marked is not None else "–",
                      "–" if cost is None else f"{cost:+.2f}"]
        mean = f"{sum(costs) / len(costs):+.2f}" if costs else "–"
        lines.append(f"| {task} | " + " | ".join(cells) + f" | {mean} |")
    return lines


def slides_table(victims: dict[str, list[dict]]) -> list[str]:
    names = list(victims)
    lines = ["| encoder | slides p | slides Δμ | " + " | ".join(f"{n}: DI p | {n}: DI Δμ | {n}: WM p" for n in names) + " |",
             "|---|---:|---:|" + "---:|" * (3 * len(names))]
    for label, (p, delta) in SLIDES.items():
        cells = []
        for name in names:
            kind = paper_rows(victims[name], label)
            wm = _median([r["wm_p"] for r in kind])
            di_delta = _median([r["di_delta_mu"] for r in kind])
            cells += [_p(_median([r["di_p"] for r in kind])), "–" if di_delta is None else f"{di_delta:.2f}", _p(wm)]
        lines.append(f"| {label} | {_p(p)} | {delta:.2f} | " + " | ".join(cells) + " |")
    return lines


def write(directory: Path) -> Path:
    victims = {path.parent.name: read_csv(path) for path in sorted(directory.glob("*/results.csv"))
               if path.parent.name != "watermark-cost"}
    lines = ["# Ownership verification, measured on CPU", ""]
    hardware = next((r["hardware"] for recs in victims.values() for r in recs if r.get("hardware")), None)
    if hardware:
        lines += [f"Hardware: {hardware}, shared with other jobs. Wall time of verification: "
                  + "; ".join(f"{name} {sum(r['seconds'] or 0 for r in recs) / 60:.1f} min for {len(recs)} suspects"
                              for name, recs in victims.items()) + ".", ""]
    lines += ["## Goals", ""] + goals_table(victims) + [""]
    for name, recs in victims.items():
        lines += [f"### {name}: copies per obfuscation ([every suspect]({name}/report.md))", ""]
        lines += per_obfuscation_table(recs) + [""]
    cost_csv = directory / "watermark-cost" / "results.csv"
    if cost_csv.exists():
        lines += ["## The watermark's cost in TA ([the runs](watermark-cost/report.md))", "",
                  "Each watermarked target beside the plain one of the same seed (the same batches and views: the "
                  "watermark draws from its own generator); cost = plain − watermarked, in points.", ""]
        lines += watermark_cost_table(read_csv(cost_csv)) + [""]
    lines += ["## Beside the slides' ownership table", "",
              "The slides (dataset inference, CIFAR10 victim, ResNet encoders) and the median of ours per kind of suspect.",
              ""] + slides_table(victims) + [""]
    out = directory / "report.md"
    out.write_text("\n".join(lines))
    return out


if __name__ == "__main__":
    print(write(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/results/ownership-cpu")))
