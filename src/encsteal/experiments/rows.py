"""How a result row reads, wherever it is shown: a run's report.md, a sweep's report, the CLI's table, and the
tables in docs/ generated from committed results.

A row is one downstream task of one run, flat, as a sweep's results.csv holds it: TA, SA, R, R_std, SA_over_TA,
G and G_meaningful, the fidelity figures (cosine, l2, cka, knn_agree), and the run's queries, cost and wall
times. `task_row` makes one from a run's results.json, `csv_row` from a line of results.csv; `cell` formats a
column of it.
"""

from __future__ import annotations

from collections.abc import Callable

from encsteal.evaluate import MIN_MEANINGFUL_GAIN

FIDELITY = ("cosine", "l2", "cka", "knn_agree")
RUN_FIGURES = ("queries", "cost", "pretrain_seconds", "steal_seconds", "evaluate_seconds")
WEAK = "⚠"
"""Beside G where TA − R is under MIN_MEANINGFUL_GAIN: the target is too weak there for G to mean anything."""


def task_row(results: dict, task: str) -> dict:
    """One downstream task of a run's results (results.json) as a flat row."""
    task_results = results["downstream"][task]
    fidelity = task_results.get("fidelity") or {}
    return {"task": task, "TA": task_results["TA"], "SA": task_results["SA"], "R": task_results["R"],
            "R_std": task_results.get("R_std"), "SA_over_TA": task_results["SA_over_TA"],
            "G": task_results["gain_captured"], "G_meaningful": task_results.get("gain_meaningful", True),
            **{key: fidelity.get(key) for key in FIDELITY},
            **{key: results.get(key) for key in RUN_FIGURES}}


def _number(text: str) -> float | int | None:
    if text == "":
        return None
    value = float(text)
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value


NUMERIC = {"TA", "SA", "R", "R_std", "SA_over_TA", "G", *FIDELITY, *RUN_FIGURES}


def csv_row(line: dict[str, str]) -> dict:
    """A line of a sweep's results.csv (all strings) as a row: figures as numbers, and G_meaningful, which the
    CSV leaves out, from TA and R as the evaluation decides it."""
    row: dict = {key: (_number(value) if key in NUMERIC or key == "seeds" or key.removesuffix("_ci95") in NUMERIC
                       else value) for key, value in line.items()}
    row["G_meaningful"] = row.get("TA") is not None and row["TA"] - row["R"] >= MIN_MEANINGFUL_GAIN
    return row


def pct(value: float | None) -> str:
    """A share as a percentage with two decimals (0.8531 -> 85.31)."""
    return "–" if value is None else f"{100 * value:.2f}"


def num(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def random_init(row: dict) -> str:
    """R with its spread over the random inits, when there were several (84.31 ± 0.6)."""
    spread = row.get("R_std")
    return pct(row["R"]) + ("" if spread is None else f" ± {100 * spread:.1f}")


def gain(row: dict) -> str:
    """G with two decimals, marked where TA − R is too small for it to mean anything."""
    return num(row["G"]) + ("" if row.get("G_meaningful", True) or row["G"] is None else f" {WEAK}")


def minutes(seconds: float | None) -> str:
    return "–" if seconds is None else f"{seconds / 60:.1f}"


CELLS: dict[str, Callable[[dict], str]] = {
    "TA": lambda row: pct(row["TA"]),
    "SA": lambda row: pct(row["SA"]),
    "R": lambda row: pct(row["R"]),
    "R_spread": random_init,
    "SA_over_TA": lambda row: num(row["SA_over_TA"], 3),
    "G": gain,
    "cosine": lambda row: num(row["cosine"], 3),
    "l2": lambda row: num(row["l2"], 3),
    "cka": lambda row: num(row["cka"], 3),
    "knn_agree": lambda row: pct(row["knn_agree"]),
    "queries": lambda row: "–" if row["queries"] is None else f"{row['queries']:.0f}",
    "cost": lambda row: num(row["cost"], 4),
    "pretrain_minutes": lambda row: minutes(row.get("pretrain_seconds")),
    "steal_minutes": lambda row: minutes(row.get("steal_seconds")),
    "evaluate_minutes": lambda row: minutes(row.get("evaluate_seconds")),
}
"""Each column a table may show, and how it reads. Any other column of a row is shown as it is."""


def cell(row: dict, column: str) -> str:
    """A column of a row as it reads; a row over seeds (a seeded sweep's) that holds `<column>_ci95`, the half-width
    of the 95 % interval of the column's mean, reads `mean ± half-width`, both in the column's own units."""
    if column in CELLS:
        text = CELLS[column](row)
        half = row.get(f"{column}_ci95")
        if half is None or half == "" or row.get(column) is None:
            return text
        return f"{text} ± {CELLS[column]({**row, column: half, 'G_meaningful': True})}"
    value = row.get(column)
    return "–" if value is None or value == "" else str(value)
