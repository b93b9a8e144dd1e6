"""`encsteal report SWEEP`: a sweep's results as a Markdown table, a CSV file and plots.

One record per run and downstream task, read from the sweep's `results.sqlite`. The plots put SA/TA, the
captured gain G and the linear CKA between target and stolen features against one setting (`x`): the number
of queries, or any dotted config key (`attack.lam`, `surrogate.size`, ...), one line per value of another
(`series`, e.g. `attack.loss`, or `case`: one line per case of the sweep file). Without a numeric setting to put on the x axis, TA, SA and R are drawn as
bars, one group per run (a defense sweep, say).

A sweep with `seeds` (encsteal.experiments.sweep) is reported over its seeds: `over_seeds` merges the runs
that differ only in their seed into one record per run and task, holding the mean of every measure and, as
`<measure>_ci95`, the half-width of its 95 % Student-t interval; tables print `mean ± half-width`, plots draw
error bars, and the per-seed records go to results-per-seed.csv.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import matplotlib
import yaml

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from encsteal.errors import ConfigError  # noqa: E402
from encsteal.evaluate import MIN_MEANINGFUL_GAIN  # noqa: E402
from encsteal.experiments.report import accuracy_bars  # noqa: E402
from encsteal.experiments.rows import cell, num, pct, task_row  # noqa: E402

COLUMNS = ("run", "task", "TA", "SA", "R", "R_std", "SA_over_TA", "G", "cosine", "l2", "cka", "knn_agree",
           "queries", "cost", "pretrain_seconds", "steal_seconds")
MEASURES = tuple(c for c in COLUMNS if c not in ("run", "task"))
"""The numeric columns, averaged over seeds."""
CURVES = (("SA_over_TA", "SA/TA"), ("G", "captured gain G"), ("cka", "linear CKA (target vs stolen)"))
G_AXIS = (-1.0, 1.5)
"""The captured-gain panels' range. A collapsed copy can score G = −40 (far below a random encoder), which would
squeeze every other line flat; such points sit on the edge as triangles and the panel's title counts them."""


def case_of(run_id: str) -> str:
    """The case a run belongs to: the first part of its id (`cont-steal__size=250` -> `cont-steal`)."""
    first = run_id.split("__")[0]
    return "" if "=" in first else first


def setting(config: dict, key: str):
    """The value of a dotted key (`attack.loss`) in a run's resolved config."""
    node = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(f"the sweep's configs have no key '{key}'")
        node = node[part]
    return node


def records(rows: list[dict]) -> list[dict]:
    """One dict per finished run and downstream task (COLUMNS, plus `config`); failed runs are left out."""
    out = []
    for row in rows:
        if row["status"] != "done":
            continue
        results = json.loads(row["results"])
        config = yaml.safe_load(row["config"])
        for task in results["downstream"]:
            out.append({"run": row["id"], **task_row(results, task), "device": results.get("device"), "config": config})
    return out


def seed_group(run_id: str) -> str:
    """The run of cases x grid a seeded run repeats: its id without the `__seed=<s>` part."""
    head, sep, last = run_id.rpartition("__")
    if last.startswith("seed="):
        return head if sep else "run"
    return run_id


def interval(values: list[float]) -> tuple[float, float | None]:
    """(mean, half-width of the 95 % confidence interval of the mean): t(0.975, n - 1) · s / √n with s the sample
    standard deviation (Student's t, n - 1 degrees of freedom); the half-width is None for a single value."""
    from scipy.stats import t

    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, float(t.ppf(0.975, n - 1)) * std / math.sqrt(n)


def over_seeds(recs: list[dict]) -> list[dict]:
    """One record per run of cases x grid and task: each measure's mean over the seeds that finished, its 95 %
    interval's half-width as `<measure>_ci95`, and `seeds`, how many there were (records: `records`)."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for rec in recs:
        groups.setdefault((seed_group(rec["run"]), rec["task"]), []).append(rec)
    merged = []
    for (run, task), members in groups.items():
        out = {"run": run, "task": task, "seeds": len(members), "config": members[0]["config"],
               "G_meaningful": all(m["G_meaningful"] for m in members), "device": members[0].get("device")}
        for measure in MEASURES:
            values = [m[measure] for m in members if m[measure] is not None]
            out[measure], out[f"{measure}_ci95"] = interval(values) if values else (None, None)
        merged.append(out)
    return merged


def write_csv(recs: list[dict], path: Path, extra: list[str], seeded: bool = False) -> Path:
    """One row per record; records over seeds (`over_seeds`) also give each measure's `_ci95` and `seeds`."""
    columns = [*COLUMNS[:2], "seeds", *(name for m in MEASURES for name in (m, f"{m}_ci95"))] if seeded else list(COLUMNS)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*columns, "case", *extra])
        for rec in recs:
            writer.writerow([rec[c] for c in columns] + [case_of(rec["run"])]
                            + [_label(setting(rec["config"], key)) for key in extra])
    return path


TABLE_COLUMNS = {"TA": "TA (%)", "SA": "SA (%)", "R": "R (%)", "SA_over_TA": "SA/TA", "G": "G", "cka": "CKA",
                 "queries": "queries", "cost": "cost"}


def markdown_table(rows: list[dict]) -> str:
    """One line per run and task; failed runs last, with their error."""
    return records_table(records(rows), [row for row in rows if row["status"] != "done"])


def records_table(recs: list[dict], failed: list[dict] = ()) -> str:
    """The sweep's table of records (one line per run and task), then the failed runs' stored rows. A table in
    the docs of a committed results.csv is this table too (encsteal.experiments.doc_tables). Records over seeds
    (`over_seeds`) add the number of seeds and read mean ± 95 % interval."""
    columns = {**({"seeds": "seeds"} if any("seeds" in rec for rec in recs) else {}), **TABLE_COLUMNS}
    lines = ["| run | task | " + " | ".join(columns.values()) + " |", "|---|---|" + "---:|" * len(columns)]
    for rec in recs:
        lines.append(f"| {rec['run']} | {rec['task']} | " + " | ".join(cell(rec, c) for c in columns) + " |")
    for row in failed:
        lines.append(f"| {row['id']} | failed: {row['error']} |" + " |" * len(columns))
    return "\n".join(lines)


def _label(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def _series_value(rec: dict, series: str | None) -> str:
    if series is None:
        return ""
    return case_of(rec["run"]) if series == "case" else _label(setting(rec["config"], series))


def _x_value(rec: dict, x: str):
    return rec["queries"] if x == "queries" else setting(rec["config"], x)


def _numeric(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def plot_curves(recs: list[dict], x: str, series: str | None, path: Path) -> Path:
    """SA/TA, G and CKA (rows) per downstream task (columns) against x, one line per series value."""
    tasks = list(dict.fromkeys(rec["task"] for rec in recs))
    fig, axes = plt.subplots(len(CURVES), len(tasks), figsize=(4.2 * len(tasks), 2.8 * len(CURVES)), squeeze=False)
    groups: dict[str, list[dict]] = {}
    for rec in recs:
        groups.setdefault(_series_value(rec, series), []).append(rec)
    # tab10 repeats its colours after ten series: past that, tab20, and markers that differ too
    colors = plt.get_cmap("tab10" if len(groups) <= 10 else "tab20").colors
    style = {name: {"color": colors[i % len(colors)], "marker": "os^D"[i // len(colors) % 4]}
             for i, name in enumerate(groups)}
    scale, scale_options = _x_scale(recs, x)
    for col, task in enumerate(tasks):
        for row, (metric, title) in enumerate(CURVES):
            axis = axes[row][col]
            off_scale = 0
            for name, group in groups.items():
                points = sorted((_x_value(r, x), r[metric], r.get(f"{metric}_ci95")) for r in group
                                if r["task"] == task and r[metric] is not None and (metric != "G" or r["G_meaningful"]))
                if metric == "G":
                    off_scale += _clipped_line(axis, points, name, style[name])
                elif points:
                    _line(axis, [p[0] for p in points], [p[1] for p in points], [p[2] for p in points], name, style[name])
            if metric == "G":
                axis.axhline(1.0, color="grey", lw=0.8, ls=":")
                axis.set_ylim(G_AXIS[0] - 0.05, G_AXIS[1] + 0.05)
                if not any(r["G_meaningful"] for r in recs if r["task"] == task):
                    title += f": not drawn, TA − R under {100 * MIN_MEANINGFUL_GAIN:.0f} points"
                elif off_scale:
                    title += f" ({off_scale} off scale, on the edge)"
            axis.set_title(f"{task}: {title}", fontsize=9)
            axis.set_xlabel("queries" if x == "queries" else x)
            axis.set_xscale(scale, **scale_options)
            if scale == "symlog":  # 0 at the left edge, not a decade of negative queries
                axis.set_xlim(left=-0.5 * scale_options["linthresh"])
    if series and len(groups) > 1:  # beside the plots, where it hides no point
        fig.legend(*axes[0][0].get_legend_handles_labels(), loc="center right", fontsize=7, title=series,
                   title_fontsize=7)
        fig.tight_layout(rect=(0, 0, 1 - 1.4 / fig.get_figwidth(), 1))
    else:
        fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _line(axis, xs: list, ys: list, halves: list, name: str, style: dict) -> None:
    """A line through the points, with error bars of the given half-widths where there are any (over seeds)."""
    if any(half is not None for half in halves):
        axis.errorbar(xs, ys, yerr=[half or 0.0 for half in halves], label=name or None, capsize=3, **style)
    else:
        axis.plot(xs, ys, label=name or None, **style)


def _clipped_line(axis, points: list[tuple], name: str, style: dict) -> int:
    """Draw G within G_AXIS: values beyond it on the edge, as a triangle pointing the way it went off; returns
    how many were off scale. Points are (x, G) or (x, G, half-width of its interval or None)."""
    if not points:
        return 0
    low, high = G_AXIS
    xs, ys = [p[0] for p in points], [min(max(p[1], low), high) for p in points]
    _line(axis, xs, ys, [p[2] if len(p) > 2 and low < p[1] < high else None for p in points], name, style)
    off = [(p[0], y, "v" if y == low else "^") for p, y in zip(points, ys) if p[1] < low or p[1] > high]
    for x, y, marker in off:
        axis.plot([x], [y], marker=marker, markersize=9, color=style["color"], linestyle="none")
    return len(off)


def _x_scale(recs: list[dict], x: str) -> tuple[str, dict]:
    """Logarithmic where the values span a decade or more (budgets, sizes), symmetric-log when some are 0 (a
    method that buys no queries), so that every point is drawn; linear otherwise."""
    values = [_x_value(r, x) for r in recs]
    positive = [v for v in values if v > 0]
    if not positive or max(positive) / min(positive) < 10:
        return "linear", {}
    if len(positive) < len(values):
        return "symlog", {"linthresh": min(positive)}
    return "log", {}


def plot_bars(recs: list[dict], path: Path) -> Path:
    """TA, SA and R per run (groups of bars), one panel per downstream task."""
    tasks = list(dict.fromkeys(rec["task"] for rec in recs))
    runs = list(dict.fromkeys(rec["run"] for rec in recs))
    fig, axes = plt.subplots(len(tasks), 1, figsize=(max(6.0, 0.9 * len(runs) + 2), 3.2 * len(tasks)), squeeze=False)
    for axis, task in zip(axes[:, 0], tasks):
        by_run = {rec["run"]: rec for rec in recs if rec["task"] == task}
        accuracy_bars(axis, runs, [by_run.get(r) for r in runs])
        axis.set_xticks(range(len(runs)), runs, rotation=30, ha="right", fontsize=8)
        axis.set_ylabel(f"{task} accuracy (%)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _provenance(recs: list[dict], wall_seconds: float | None) -> list[str]:
    """Where and how long: the machine, and the runs' summed wall time (shared targets' pre-training included)."""
    import os
    import platform

    import torch

    devices = sorted({rec["device"] for rec in recs if rec.get("device")}) or ["–"]
    took = "" if wall_seconds is None else f"; the runs took {wall_seconds / 60:.1f} min in all"
    return [f"Runs on device {', '.join(devices)}{took}. Report written on {platform.machine()} with "
            f"{os.cpu_count()} logical CPUs, torch {torch.__version__}.", ""]


def default_axes(grid_keys: list[str], recs: list[dict], x: str | None = None,
                 series: str | None = None) -> tuple[str | None, str | None]:
    """x (unless given): the first grid key with numbers for values, `queries` for surrogate.size (a surrogate
    image is one query); series (unless given): the first other grid key. x is None when nothing is numeric."""
    if x is None:
        numeric = [k for k in grid_keys if k == "surrogate.size"  # a count or a fraction ("5%"): queries either way
                   or (recs and all(_numeric(setting(r["config"], k)) for r in recs))]
        if not numeric:
            return None, series
        x = "queries" if numeric[0] == "surrogate.size" else numeric[0]
    if series is None:
        on_x = "surrogate.size" if x == "queries" else x
        series = next((k for k in grid_keys if k != on_x), None)
        if series is None and len({case_of(r["run"]) for r in recs}) > 1:
            series = "case"
    return x, series


def _beside_paper(recs: list[dict], paper: dict) -> list[tuple[str, str, dict, str | None, dict | None]]:
    """(run id, paper's task, published figures, our task, our record) per published row. Ours are on the same
    downstream task where the run has it, else on the run's first task (a CPU twin on other data)."""
    by_run: dict[str, dict[str, dict]] = {}
    for rec in recs:
        by_run.setdefault(rec["run"], {})[rec["task"]] = rec
    rows = []
    for run_id, tasks in paper.items():
        ours = by_run.get(run_id, {})
        for task, published in tasks.items():
            mine = task if task in ours else next(iter(ours), None)
            rows.append((run_id, task, published, mine, ours.get(mine) if mine else None))
    return rows


def paper_table(recs: list[dict], paper: dict) -> str:
    """The published TA and SA (%) beside ours for the runs that mirror a row of the paper's table (compare the
    trend across rows, not the values, where our task differs), and how well the two orders agree."""
    rows = _beside_paper(recs, paper)
    lines = ["| run | paper: row, task | TA | SA | ours: task | TA | SA |", "|---|---|---:|---:|---|---:|---:|"]
    for run_id, task, published, mine, rec in rows:
        lines.append(f"| {run_id} | {published.get('label', task)} | {num(published.get('TA'))} | "
                     f"{num(published.get('SA'))} | {mine or '–'} | {pct(rec['TA'] if rec else None)} | "
                     f"{pct(rec['SA'] if rec else None)} |")
    agreement = _rank_agreement(rows)
    return "\n".join([*lines, *(["", *agreement] if agreement else [])])


def _rank_agreement(rows: list[tuple[str, str, dict, str | None, dict | None]]) -> list[str]:
    """Whether our rows go up and down where the paper's do: Kendall's τ between the published and our TA and SA
    over the rows that have both (at least three). On other data than the paper's this is the comparison that
    means something."""
    from scipy.stats import kendalltau

    out = []
    for metric in ("SA", "TA"):
        pairs = [(published[metric], rec[metric]) for _, _, published, _, rec in rows
                 if rec and published.get(metric) is not None]
        if len(pairs) >= 3 and len({p for p, _ in pairs}) > 1 and len({o for _, o in pairs}) > 1:
            tau, p_value = kendalltau([p for p, _ in pairs], [o for _, o in pairs])
            out.append(f"{metric}: over the {len(pairs)} rows, our order agrees with the paper's by Kendall's τ = "
                       f"{tau:.2f} (1: the same order, 0: unrelated, −1: reversed; p = {p_value:.2g}).")
    return [" ".join(out)] if out else []


def _hours(seconds) -> str:
    return "–" if seconds is None else f"{seconds / 3600:.3f}"


def compute_table(recs: list[dict], paper_hours: dict) -> str:
    """Per run: the target's pre-training time and the steal's training time (hours) and their ratio, with the
    paper's hours beside ours where given (StolenEncoder Table III)."""
    lines = ["| run | pre-training (h) | stealing (h) | pre-training / stealing | paper: pre-training (h) | "
             "paper: stealing (h) | paper: ratio |", "|---|---:|---:|---:|---:|---:|---:|"]
    for rec in {rec["run"]: rec for rec in recs}.values():
        pre, steal = rec["pretrain_seconds"], rec["steal_seconds"]
        published = paper_hours.get(rec["run"], {})
        p_pre, p_steal = published.get("pretrain"), published.get("steal")
        lines.append(f"| {rec['run']} | {_hours(pre)} | {_hours(steal)} | "
                     f"{f'{pre / steal:.0f}×' if pre and steal else '–'} | {num(p_pre, 2)} | {num(p_steal, 2)} | "
                     f"{f'{p_pre / p_steal:.0f}×' if p_pre and p_steal else '–'} |")
    return "\n".join(lines)


def write_sweep_report(rows: list[dict], out_dir: Path, *, title: str, grid_keys: list[str],
                       x: str | None = None, series: str | None = None, paper: dict | None = None,
                       paper_hours: dict | None = None, wall_seconds: float | None = None, seeds: bool = False) -> Path:
    """report.md, results.csv and a plot in out_dir; returns report.md's path. With `seeds` (the sweep repeats its
    runs over seeds) every table, CSV and plot is over the seeds: mean ± 95 % interval."""
    out_dir.mkdir(parents=True, exist_ok=True)
    recs = records(rows)
    x, series = default_axes(grid_keys, recs, x, series)
    for key in (x, series):
        if key not in (None, "queries", "case") and recs:
            setting(recs[0]["config"], key)  # an unknown key: one clear error before any file is written
    extra = [k for k in dict.fromkeys([*grid_keys, *(k for k in (x, series) if k)]) if k not in ("queries", "case")]
    if seeds:
        write_csv(recs, out_dir / "results-per-seed.csv", [*extra, "seed"])
        recs = over_seeds(recs)
        write_csv(recs, out_dir / "results.csv", extra, seeded=True)
        table = records_table(recs, [row for row in rows if row["status"] != "done"])
    else:
        write_csv(recs, out_dir / "results.csv", extra)
        table = markdown_table(rows)
    lines = [f"# {title}", "", *_provenance(recs, wall_seconds), table, ""]
    if paper:
        lines += ["## Beside the paper", "", paper_table(recs, paper), "",
                  "Published figures as the paper prints them; a run not finished yet shows –. Where our task differs "
                  "from the paper's, compare how the figures move across rows, not the figures.", ""]
    if paper_hours:
        lines += ["## Compute", "", compute_table(recs, paper_hours), "",
                  "Pre-training: the target's wall time (shared by the runs that attack it); stealing: the copy's "
                  "training, queries included. The paper's hours are on one Quadro RTX 6000.", ""]
    if recs:
        if x is not None:
            plot = plot_curves(recs, x, series, out_dir / "curves.png")
            against = "#queries" if x == "queries" else x
            lines += [f"SA/TA, captured gain G and linear CKA against {against}"
                      + (f", one line per {series}." if series else "."), "", f"![curves]({plot.name})", ""]
        else:
            plot = plot_bars(recs, out_dir / "accuracy.png")
            lines += ["TA, SA and R per run.", "", f"![accuracy]({plot.name})", ""]
    lines += ["TA: the target's features (as served, after any defense); SA: the stolen encoder's; R: mean of "
              "random-init encoders of the stolen architecture; G = (SA − R) / (TA − R), ⚠ where TA − R is under "
              f"{100 * MIN_MEANINGFUL_GAIN:.0f} points and G means nothing. All rows and columns are in results.csv.", ""]
    if seeds:
        lines += ["Each row is the mean over its seeds ± the half-width of the 95 % confidence interval of that mean "
                  "(Student's t with n − 1 degrees of freedom); error bars in the plots likewise. One row per seed: "
                  "results-per-seed.csv.", ""]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines))
    return path
