"""`encsteal defense-report SWEEP TRAFFIC --out DIR`: the account-aware defenses scored on both sides, from a
stealing sweep (the attacker's G, the customers' accuracy in every run) and a traffic file (detection ROC,
proof-of-work prices, customers under each deployment).

Writes into DIR: results.csv (one row per stealing run), accounts.csv (one row per deployment and account of
the traffic), detection.csv (per deployment and statistic: the best TPR at FPR <= 0.05, its threshold, the
area under the ROC), pow.csv (per attacker stream: its CPU seconds per image against the customers'),
goals.csv (each goal of the defenses, the figure measured, met or not), roc.png, and report.md, whose tables
are generated from those files (`encsteal tables --check` keeps them honest).
"""

from __future__ import annotations

import csv
import json
import os
import platform
import shutil
from pathlib import Path

import torch
import yaml

from encsteal.errors import ConfigError
from encsteal.experiments.doc_tables import regenerate
from encsteal.experiments.sweep import plan, stored_rows
from encsteal.experiments.traffic import STATISTICS, best_tpr, read_traffic, roc

GOALS = {"customer_loss": 0.01, "g_one": 0.2, "g_sybils": 0.4, "pow_ratio": 10.0, "tpr": 0.9, "fpr": 0.05}


def _attack(config: dict) -> str:
    attack = config["attack"]
    if attack["loss"] == "nt-xent" and attack["clean_weight"] == 0:
        return "Cont-Steal"
    return {"infonce": "InfoNCE"}.get(attack["loss"], "StolenEncoder" if attack["loss"] == "l2" else attack["loss"])


def _defense(config: dict) -> str:
    names = [d["name"] for d in config["target"]["defenses"]]
    return "+".join(names) if names else "none"


def _round(value, digits: int):
    return None if value is None else round(value, digits)


def run_rows(sweep: Path) -> tuple[list[dict], float]:
    """One row per finished run of the stealing sweep, and the runs' summed wall time (s)."""
    spec, stored = stored_rows(sweep)
    order = {run.id: index for index, run in enumerate(plan(spec, spec.runs_dir_for(sweep)))}
    stored = sorted(stored, key=lambda row: order.get(row["id"], len(order)))  # as the sweep file lists them
    rows = []
    for row in stored:
        if row["status"] != "done":
            continue
        results, config = json.loads(row["results"]), yaml.safe_load(row["config"])
        task = next(iter(results["downstream"]))
        figures = results["downstream"][task]
        attackers = results.get("attacker_accounts", [])
        covers = [a["figures"].get("b4b", {}).get("coverage") for a in attackers]
        sigmas = [a["figures"].get("b4b", {}).get("sigma") for a in attackers]
        out = {"run": row["id"], "task": task, "defense": _defense(config), "attack": _attack(config),
               "budget": config["surrogate"]["size"], "accounts": config["target"]["accounts"],
               "queries": results["queries"], "TA": figures["TA"], "SA": figures["SA"], "R": figures["R"],
               "R_std": figures.get("R_std"), "SA_over_TA": figures["SA_over_TA"], "G": figures["gain_captured"],
               "attacker_coverage": _round(max((c for c in covers if c is not None), default=None), 2),
               "attacker_sigma": _round(max((s for s in sigmas if s is not None), default=None), 3),
               "steal_seconds": results["steal_seconds"], "evaluate_seconds": results["evaluate_seconds"]}
        for customer in results.get("customers", []):
            out[f"loss_{customer['name']}"] = round(100 * customer["loss"], 2)
            out[f"accuracy_{customer['name']}"] = round(100 * customer["accuracy"], 2)
        out["key"] = f"{out['attack']} {out['budget']}"
        rows.append(out)
    return rows, sum(row["seconds"] or 0 for row in stored)


def _write(path: Path, rows: list[dict]) -> Path:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def _read(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _number(text: str | None) -> float | None:
    return None if text in (None, "") else float(text)


def traffic_rows(accounts_csv: Path) -> list[dict]:
    rows = []
    for line in _read(accounts_csv):
        row = {key: line[key] for key in ("deployment", "kind", "stream", "account", "images")}
        for key, digits in (("coverage", 2), ("prada_w", 4), ("sigma", 4), ("pow_seconds", 3)):
            row[key] = _round(_number(line[key]), digits)
        row["flagged"] = "" if line["flagged"] == "" else ("yes" if float(line["flagged"]) else "no")
        per_image = _number(line["pow_seconds_per_image"])
        row["pow_ms_per_image"] = _round(None if per_image is None else 1000 * per_image, 3)
        row["pow_hashes"] = line["pow_hashes"]
        for key in ("accuracy", "baseline", "loss"):
            value = _number(line[key])
            row[key] = _round(None if value is None else 100 * value, 2)
        rows.append(row)
    return rows


def _auc(points: list[tuple[float, float, float]]) -> float:
    curve = [(fpr, tpr) for _, fpr, tpr in points] + [(1.0, 1.0)]
    return sum((x1 - x0) * (y0 + y1) / 2 for (x0, y0), (x1, y1) in zip(curve, curve[1:]))


def detection_rows(traffic: list[dict]) -> list[dict]:
    out = []
    for deployment in dict.fromkeys(row["deployment"] for row in traffic):
        mine = [row for row in traffic if row["deployment"] == deployment]
        for statistic, score in STATISTICS.items():
            points = roc(mine, score)
            if len(points) < 2:
                continue
            tpr, threshold = best_tpr(points, GOALS["fpr"])
            out.append({"deployment": deployment, "statistic": statistic, "tpr_at_fpr_0.05": round(tpr, 3),
                        "threshold": None if threshold is None else round(threshold, 4), "auc": round(_auc(points), 3),
                        "attacker_accounts": sum(r["kind"] == "attacker" for r in mine),
                        "customers": sum(r["kind"] == "customer" for r in mine)})
    return out


def pow_rows(traffic: list[dict]) -> list[dict]:
    """Per deployment with proof-of-work and attacker stream: CPU ms per image (all its accounts), the dearest
    customer's, and the ratio."""
    out = []
    for deployment in dict.fromkeys(row["deployment"] for row in traffic):
        mine = [row for row in traffic if row["deployment"] == deployment]
        if not any(row["pow_seconds"] for row in mine):
            continue
        customers = [row for row in mine if row["kind"] == "customer"]
        dearest = max(customers, key=lambda row: row["pow_ms_per_image"] or 0)
        for stream in dict.fromkeys(row["stream"] for row in mine if row["kind"] == "attacker"):
            accounts = [row for row in mine if row["stream"] == stream]
            images = sum(int(row["images"]) for row in accounts)
            seconds = sum(row["pow_seconds"] for row in accounts)
            per_image = 1000 * seconds / images
            out.append({"deployment": deployment, "stream": stream, "accounts": len(accounts), "images": images,
                        "pow_seconds": round(seconds, 2), "pow_ms_per_image": round(per_image, 3),
                        "dearest_customer": dearest["stream"],
                        "customer_ms_per_image": dearest["pow_ms_per_image"],
                        "ratio": round(per_image / dearest["pow_ms_per_image"], 2) if dearest["pow_ms_per_image"] else None})
    return out


def goal_rows(runs: list[dict], traffic: list[dict], detection: list[dict], pow_: list[dict]) -> list[dict]:
    """Each goal, the worst case measured for it, and whether it is met."""
    out = []
    losses = [(row[key], f"{row['run']}, {key[5:]}") for row in runs if row["defense"] != "none"
              for key in row if key.startswith("loss_")]
    losses += [(row["loss"], f"traffic {row['deployment']}, {row['stream']}") for row in traffic
               if row["kind"] == "customer" and row["loss"] is not None]
    if losses:
        worst = max(losses)
        out.append({"goal": "customers lose <= 1 point", "measured": f"{worst[0]:.2f} points ({worst[1]})",
                    "met": "yes" if worst[0] <= 100 * GOALS["customer_loss"] else "no"})
    for accounts, limit in ((1, GOALS["g_one"]), (4, GOALS["g_sybils"])):
        defended = [row for row in runs if row["defense"] != "none" and row["budget"] == "5%"
                    and int(row["accounts"]) == accounts and row["G"] is not None]
        if defended:
            worst = max(defended, key=lambda row: row["G"])
            out.append({"goal": f"G at 5 % <= {limit} ({accounts} account{'s' if accounts > 1 else ''})",
                        "measured": f"{worst['G']:.2f} ({worst['attack']})", "met": "yes" if worst["G"] <= limit else "no"})
    single = [row for row in pow_ if row["accounts"] == 1]
    if single:
        worst = min(single, key=lambda row: row["ratio"] or 0)
        out.append({"goal": "proof-of-work: attacker >= 10x customers' CPU per image (one account)",
                    "measured": f"{worst['ratio']:.1f}x ({worst['stream']})",
                    "met": "yes" if (worst["ratio"] or 0) >= GOALS["pow_ratio"] else "no"})
    sybils = [row for row in pow_ if row["accounts"] > 1]
    if sybils:
        worst = min(sybils, key=lambda row: row["ratio"] or 0)
        out.append({"goal": "proof-of-work: attacker >= 10x customers' CPU per image (4 sybils)",
                    "measured": f"{worst['ratio']:.1f}x ({worst['stream']})",
                    "met": "yes" if (worst["ratio"] or 0) >= GOALS["pow_ratio"] else "no"})
    if detection:
        best = max(detection, key=lambda row: row["tpr_at_fpr_0.05"])
        out.append({"goal": "detection TPR >= 0.9 at FPR <= 0.05", "measured":
                    f"{best['tpr_at_fpr_0.05']:.2f} ({best['deployment']}, {best['statistic']})",
                    "met": "yes" if best["tpr_at_fpr_0.05"] >= GOALS["tpr"] else "no"})
    return out


REPORT = """# Account-aware defenses scored on both sides (CPU)

{provenance}

## Goals

<!-- table
source: goals.csv
columns: [[goal, goal], [measured (worst case), measured], [met, met]]
-->
<!-- end table -->

## The attacker's captured gain G (Fashion-MNIST probe) and the customers' loss, per stealing run

G = (SA − R)/(TA − R); TA is the target's own features (the account-aware defenses answer accounts, not the
provider). Customers (the sweep's evaluate.customers: {customers}) each embed their images through their own
account of the same defended target; loss = accuracy with the undefended encoder − accuracy with what the
account received (points, k-fold cross-validated). Coverage and σ: the largest over the attacker's
accounts at the end of its stream.

<!-- table
source: results.csv
columns: [[run, run], [queries, queries], [accounts, accounts], [SA, SA], [R, R], [TA, TA], [G, G], [attacker coverage (%), attacker_coverage], [attacker σ, attacker_sigma], {customer_columns}[stealing (min), steal_minutes]]
-->
<!-- end table -->

## Mixed traffic: detection

Per deployment and statistic: the highest true-positive rate (attacker accounts flagged) at a false-positive
rate (customers flagged) of at most 0.05, the threshold that gives it, and the area under the ROC curve.

<!-- table
source: detection.csv
columns: [[deployment, deployment], [statistic, statistic], [TPR at FPR ≤ 0.05, tpr_at_fpr_0.05], [threshold, threshold], [AUC, auc], [attacker accounts, attacker_accounts], [customers, customers]]
-->
<!-- end table -->

![ROC](roc.png)

## Mixed traffic: proof-of-work

CPU seconds spent solving the puzzles, per image, by each attacker stream (all its accounts) against the
customer who paid most per image.

<!-- table
source: pow.csv
columns: [[stream, stream], [accounts, accounts], [images, images], [CPU s in all, pow_seconds], [ms per image, pow_ms_per_image], [dearest customer, dearest_customer], [its ms per image, customer_ms_per_image], [ratio, ratio]]
-->
<!-- end table -->

## Mixed traffic: every account

<!-- table
source: accounts.csv
columns: [[deployment, deployment], [kind, kind], [account, account], [images, images], [coverage (%), coverage], [PRADA W, prada_w], [flagged, flagged], [σ, sigma], [PoW ms/image, pow_ms_per_image], [accuracy, accuracy], [loss (points), loss]]
-->
<!-- end table -->
"""


def write_defense_report(sweep: Path, traffic_file: Path, out: Path) -> Path:
    spec = read_traffic(traffic_file)
    traffic_dir = spec.out or Path("runs") / "traffic" / traffic_file.stem
    if not (traffic_dir / "accounts.csv").exists():
        raise ConfigError(f"no traffic results in {traffic_dir}: run `encsteal traffic {traffic_file}`")
    out.mkdir(parents=True, exist_ok=True)
    runs, sweep_seconds = run_rows(sweep)
    traffic = traffic_rows(traffic_dir / "accounts.csv")
    detection, pow_ = detection_rows(traffic), pow_rows(traffic)
    _write(out / "results.csv", runs)
    _write(out / "accounts.csv", traffic)
    _write(out / "detection.csv", detection)
    _write(out / "pow.csv", pow_)
    _write(out / "goals.csv", goal_rows(runs, traffic, detection, pow_))
    shutil.copyfile(traffic_dir / "roc.png", out / "roc.png")
    traffic_seconds = json.loads((traffic_dir / "traffic.json").read_text())["wall_seconds"] \
        if (traffic_dir / "traffic.json").exists() else None
    provenance = (f"Stealing runs: `encsteal sweep {sweep}` ({len(runs)} runs, {sweep_seconds / 60:.0f} min in all); "
                  f"traffic: `encsteal traffic {traffic_file}`"
                  + ("" if traffic_seconds is None else f" ({traffic_seconds / 60:.0f} min)")
                  + f"; this report: `encsteal defense-report {sweep} {traffic_file} --out {out}`. Written on "
                  f"{platform.machine()} with {os.cpu_count()} logical CPUs ({_cpu_name()}), torch {torch.__version__}.")
    names = list(dict.fromkeys(key[5:] for row in runs for key in row if key.startswith("loss_")))
    columns = "".join(f'["loss, {name}", loss_{name}], ' for name in names)
    text = REPORT.format(provenance=provenance, customers=", ".join(names) or "none", customer_columns=columns)
    text = regenerate(text, out, where=str(out / "report.md"))
    (out / "report.md").write_text(text)
    return out / "report.md"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"

