"""report.md and summary.png of a run, from its results.json and metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from encsteal.evaluate import MIN_MEANINGFUL_GAIN  # noqa: E402
from encsteal.experiments.rows import cell, num, task_row  # noqa: E402

TABLE_COLUMNS = {"TA": "TA (%)", "SA": "SA (%)", "SA_over_TA": "SA/TA", "R_spread": "R (%)", "G": "G = (SA−R)/(TA−R)",
                 "cosine": "fidelity cos", "l2": "fidelity ℓ2", "cka": "CKA", "knn_agree": "20-NN agree (%)"}


def results_table(results: dict) -> str:
    """The Markdown table: one row per downstream task."""
    lines = ["| downstream | " + " | ".join(TABLE_COLUMNS.values()) + " |",
             "|---|" + "---:|" * len(TABLE_COLUMNS)]
    for task in results["downstream"]:
        row = task_row(results, task)
        lines.append(f"| {task} | " + " | ".join(cell(row, column) for column in TABLE_COLUMNS) + " |")
    return "\n".join(lines)


def _loss_curves(metrics_path: Path) -> dict[str, list[tuple[int, float]]]:
    curves: dict[str, list[tuple[int, float]]] = {}
    if metrics_path.exists():
        for line in metrics_path.read_text().splitlines():
            record = json.loads(line)
            if "loss" in record and "epoch" in record:
                curves.setdefault(record["stage"], []).append((record["epoch"], record["loss"]))
    for stage, points in curves.items():  # a resumed run logs some epochs twice: keep the last
        curves[stage] = sorted(dict(points).items())
    return curves


def accuracy_bars(axis, names: list[str], rows: list[dict | None]) -> None:
    """Groups of three bars — R, SA, TA (%) — one group per name; a missing row or value draws no bar height. Rows
    over seeds (with `<key>_ci95`) get error bars of their 95 % intervals."""
    width = 0.27
    for offset, (key, label) in enumerate([("R", "random-init (R)"), ("SA", "stolen (SA)"), ("TA", "target (TA)")]):
        values = [100 * ((row or {}).get(key) or 0) for row in rows]
        halves = [100 * ((row or {}).get(f"{key}_ci95") or 0) for row in rows]
        axis.bar([i + (offset - 1) * width for i in range(len(names))], values, width, label=label,
                 yerr=halves if any(halves) else None, capsize=2)
    shown = [100 * row[k] for row in rows if row for k in ("R", "SA", "TA") if row.get(k) is not None]
    low = max(0.0, min(shown, default=0) - 10)
    axis.set_ylim(low, 100 + 0.25 * (100 - low))  # headroom for the legend
    axis.legend(loc="upper center", ncol=3, fontsize=7, frameon=False)


def plot_summary(results: dict, run_dir: Path) -> Path:
    curves = _loss_curves(run_dir / "metrics.jsonl")
    fig, axes = plt.subplots(1, 1 + len(curves), figsize=(5 + 4 * len(curves), 3.8))
    axes = list(axes) if len(curves) else [axes]
    tasks = list(results["downstream"])
    accuracy_bars(axes[0], tasks, [results["downstream"][t] for t in tasks])
    axes[0].set_xticks(range(len(tasks)), tasks, rotation=20, ha="right", fontsize=8)
    axes[0].set_ylabel("downstream accuracy (%)")
    axes[0].set_title(f"{results['queries']} queries")
    for axis, (stage, points) in zip(axes[1:], curves.items()):
        axis.plot([e for e, _ in points], [loss for _, loss in points])
        axis.set_xlabel("epoch")
        axis.set_ylabel("loss")
        axis.set_title(f"{stage} loss")
    fig.tight_layout()
    path = run_dir / "summary.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(results: dict, run_dir: Path) -> Path:
    plot = plot_summary(results, run_dir)
    weak = [name for name, row in results["downstream"].items() if row["TA"] is not None and not row["gain_meaningful"]]
    target, attack, surrogate = results["target"], results["attack"], results["surrogate"]
    if target is None:
        about_target = f"Target: a remote API ({results.get('target_kind')}), weights unknown: no TA, no G.  "
    else:
        data = target.get("pretraining_data") or {}
        about_target = (f"Target: {target['arch']} ({target['stem']} stem), pre-trained {target.get('epochs')} epochs on "
                        f"{data.get('count')} images of {data.get('dataset')}/{data.get('split')}.  ")
    lines = [
        f"# {results['name']}",
        "",
        about_target,
        f"Target access: {results.get('target_kind', 'local')}; defenses: {results.get('defenses', 'none')} "
        "(TA is measured on the defended features, as the API returns them).  ",
        f"Attack: {attack['name']} → {attack['arch']} ({attack['stem']} stem), {attack['epochs']} epochs, "
        f"λ={attack['lam']}, loss {attack.get('loss', attack.get('distance'))}.  ",
        f"Surrogate: {surrogate['count']} images of {surrogate['dataset']}/{surrogate['split']} ({surrogate['scenario']}).",
        "",
        results_table(results),
        "",
        "R is the mean accuracy of randomly initialised encoders of the stolen architecture under the same probe "
        f"({len(next(iter(results['downstream'].values()), {}).get('R_runs') or [0])} seeds); "
        "G is the share of the target's gain over it that the stolen encoder captured. Fidelity on the test images: "
        "mean cosine similarity and ℓ2 distance of paired features, linear CKA, and the share of images on which "
        "20-NN classifiers on the two encoders' features agree (%).",
    ]
    if weak:
        lines += ["", f"⚠ On {', '.join(weak)} the target beats a random encoder by less than "
                      f"{100 * MIN_MEANINGFUL_GAIN:.0f} points: the target is too weak there for G to mean anything."]
    lines += [
        "",
        "| cost | value |",
        "|---|---:|",
        f"| queries | {results['queries']} |",
        f"| cost (provider's currency) | {num(results.get('cost'), 4)} |",
        *[f"| billed by the service ({unit}) | {count} |" for unit, count in (results.get("billed") or {}).items()],
        f"| pre-training wall time (s) | {num(results['pretrain_seconds'], 1)} |",
        f"| stealing wall time (s) | {num(results['steal_seconds'], 1)} |",
        f"| evaluation wall time (s) | {num(results['evaluate_seconds'], 1)} |",
        f"| device | {results['device']} |",
        "",
        f"![summary]({plot.name})",
        "",
    ]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines))
    return path
