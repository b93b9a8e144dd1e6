"""The query-efficiency results as the issue asks for them, from the results.csv beside this file (written by
`encsteal report sweeps/query-efficiency.yaml --out docs/results/query-efficiency`):

    summary.json     {"best_attack", "G_1pct_same", "G_5pct_same", "G_5pct_natural", "baseline": {...}}: means
                     over seeds on the fmnist-bench target's Fashion-MNIST task (20,000 labels)
    summary.md       G ± 95 % interval per attack and budget, one table per surrogate distribution
    budget-curves.png  G against the number of queries, one line per attack, one panel per distribution

Cases are named after their attack (`stolenencoder` is the baseline); a case of another distribution than
Fashion-MNIST's carries the distribution's name before its attack's: `natural-crops-…` (the bundled photos'
crops), `stamps-…`. 1 % and 5 % are 600 and 3,000 queries (surrogate.size).

    python docs/results/query-efficiency/summarise.py
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).parent
TASK = "fashion-mnist"
BASELINE = "stolenencoder"
DISTRIBUTIONS = {"same": "", "natural": "natural-crops-", "stamps": "stamps-"}
"""Name -> the prefix of its cases (same distribution: none)."""
BUDGETS = {"1pct": 600, "5pct": 3000}


def rows(path: Path = HERE / "results.csv") -> list[dict]:
    with path.open() as handle:
        return [row for row in csv.DictReader(handle) if row["task"] == TASK]


def split_case(case: str) -> tuple[str, str]:
    """(distribution, attack) of a case name."""
    for name, prefix in sorted(DISTRIBUTIONS.items(), key=lambda item: -len(item[1])):
        if prefix and case.startswith(prefix):
            return name, case.removeprefix(prefix)
    return "same", case


def table(data: list[dict]) -> dict[str, dict[str, dict[int, tuple[float, float | None, int]]]]:
    """distribution -> attack -> budget -> (mean G, half-width of its 95 % interval or None, seeds)."""
    out: dict = {}
    for row in data:
        distribution, attack = split_case(row["case"])
        half = float(row["G_ci95"]) if row["G_ci95"] else None
        out.setdefault(distribution, {}).setdefault(attack, {})[int(row["surrogate.size"])] = (
            float(row["G"]), half, int(row["seeds"]))
    return out


def cell(results: dict, distribution: str, attack: str, budget: str) -> float | None:
    found = results.get(distribution, {}).get(attack, {}).get(BUDGETS[budget])
    return None if found is None else round(found[0], 4)


def summary(results: dict) -> dict:
    """The best attack (the highest mean of the three cells among the attacks measured in all three) and its
    cells beside the baseline's."""
    keys = [("G_1pct_same", "same", "1pct"), ("G_5pct_same", "same", "5pct"), ("G_5pct_natural", "natural", "5pct")]

    def cells(attack: str) -> dict:
        return {key: cell(results, distribution, attack, budget) for key, distribution, budget in keys}

    complete = {attack: cells(attack) for attack in results.get("same", {}) if attack != BASELINE
                and all(value is not None for value in cells(attack).values())}
    best = max(complete, key=lambda attack: sum(complete[attack].values()) / 3, default=None)
    return {"best_attack": best, **(complete[best] if best else {key: None for key, _, _ in keys}),
            "baseline": cells(BASELINE)}


def markdown(results: dict) -> str:
    lines = []
    for distribution, attacks in results.items():
        budgets = sorted({b for by_budget in attacks.values() for b in by_budget})
        lines += [f"### {distribution} distribution: G on Fashion-MNIST (20,000 labels), mean ± 95 % interval (seeds)", "",
                  "| attack | " + " | ".join(f"{b:,} queries" for b in budgets) + " |",
                  "|---|" + "---:|" * len(budgets)]
        for attack, by_budget in attacks.items():
            cells = []
            for budget in budgets:
                if budget not in by_budget:
                    cells.append("–")
                    continue
                mean, half, seeds = by_budget[budget]
                cells.append(f"{mean:.2f}" + (f" ± {half:.2f}" if half is not None else "") + f" ({seeds})")
            lines.append(f"| {attack} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> Path:
    fig, axes = plt.subplots(1, len(results), figsize=(5.2 * len(results), 3.8), squeeze=False)
    for axis, (distribution, attacks) in zip(axes[0], results.items()):
        for attack, by_budget in attacks.items():
            budgets = sorted(by_budget)
            axis.errorbar(budgets, [by_budget[b][0] for b in budgets], yerr=[by_budget[b][1] or 0 for b in budgets],
                          marker="o", capsize=3, label=attack, lw=2.2 if attack == BASELINE else 1.2)
        axis.axhline(1.0, color="grey", lw=0.8, ls=":")
        axis.set_xscale("log")
        axis.set_xlabel("queries")
        axis.set_ylabel("G, Fashion-MNIST")
        axis.set_title(f"{distribution} distribution", fontsize=9)
        axis.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> None:
    results = table(rows())
    (HERE / "summary.json").write_text(json.dumps(summary(results), indent=2) + "\n")
    (HERE / "summary.md").write_text("# Query efficiency: G per attack and budget\n\n" + markdown(results))
    plot(results, HERE / "budget-curves.png")


if __name__ == "__main__":
    main()
