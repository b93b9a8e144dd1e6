"""`encsteal traffic FILE`: mixed traffic against a defended target, scored on both sides without training a copy.

Each deployment (a list of defenses) answers the same traffic: customers (legitimate users as workloads,
encsteal.experiments.customers) and attackers (the query streams of stealing attacks: the surrogate images they
buy, one account or split over sybil accounts; which loss the copy is then trained with does not change what
they ask). Per account it records what the provider sees (coverage, PRADA's W, the flag), what the account
paid in proof-of-work (CPU seconds, hashes) and, for customers, the accuracy they keep. From that, per
deployment: the detection ROC over all accounts (attackers positive, customers negative) for each statistic,
and the proof-of-work price per image of attackers against customers.

    target: runs/demo/target.safetensors
    batch_size: 256                   # images per request
    probe: {hidden: [], epochs: 100}  # the customers' classifier
    customers:  [{name: fmnist-600, dataset: fashion-mnist, size: 600}, ...]
    attackers:  [{name: fmnist-5pct, surrogate: {scenario: same-distribution, size: 5%}, accounts: 4}, ...]
    deployments: {b4b: [{name: b4b, beta: 9, center: pretraining}], pow: [...], detection: [...]}
    out: runs/active-defenses/traffic

Writes `<out>/accounts.csv` (one row per deployment and account), `report.md`, `roc.png` and `traffic.json`
(its wall time); `encsteal defense-report` puts them beside a stealing sweep's runs.
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import time
from pathlib import Path

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field

from encsteal.checkpoint import load_encoder
from encsteal.config import CustomerConfig, DataConfig, ProbeConfig, SurrogateConfig
from encsteal.data.surrogate import surrogate_images
from encsteal.defenses import ACCOUNT_AWARE, DefenseConfig, SimulatedAccounts, build_defense, describe
from encsteal.defenses.coverage import PRETRAINING
from encsteal.errors import ConfigError
from encsteal.experiments.customers import serve_customer
from encsteal.service.provider import with_center
from encsteal.target import LocalTarget
from encsteal.training import resolve_device


class AttackerStream(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    surrogate: SurrogateConfig
    accounts: int = Field(1, ge=1)
    seed: int = 0


class TrafficSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    target: Path
    data: DataConfig = DataConfig()
    seed: int = 0
    device: str = "cpu"
    batch_size: int = Field(256, ge=1)
    probe: ProbeConfig = ProbeConfig(hidden=[], epochs=100, lr=1e-3)
    customers: list[CustomerConfig]
    attackers: list[AttackerStream]
    deployments: dict[str, list[DefenseConfig]]
    out: Path | None = None
    """Default: runs/traffic/<file name>."""


def read_traffic(path: Path) -> TrafficSpec:
    if not path.is_file():
        raise ConfigError(f"no traffic file {path}")
    try:
        return TrafficSpec.model_validate(yaml.safe_load(path.read_text()) or {})
    except (yaml.YAMLError, ValueError) as exc:
        raise ConfigError(f"{path}: {exc}") from None


COLUMNS = ("deployment", "kind", "stream", "account", "images", "coverage", "prada_w", "flagged", "sigma",
           "pow_seconds", "pow_hashes", "pow_seconds_per_image", "accuracy", "baseline", "loss")


def _figure(figures: dict, key: str):
    """The first defense's figure of that name (coverage is kept by several; they agree up to their settings)."""
    for slot_figures in figures.values():
        if key in slot_figures and not (isinstance(slot_figures[key], float) and math.isnan(slot_figures[key])):
            return slot_figures[key]
    return None


def run_deployment(spec: TrafficSpec, name: str, defenses: list, encoder, meta: dict, device: torch.device,
                   echo=print) -> list[dict]:
    root, size = spec.data.resolved_root(), spec.data.image_size
    built = [build_defense(config, device, size) for config in defenses]
    accounts = SimulatedAccounts()
    undefended = LocalTarget(encoder, image_size=size, device=device, batch_size=spec.batch_size)

    def defended(account: str) -> LocalTarget:
        return LocalTarget(encoder, image_size=size, device=device, batch_size=spec.batch_size, defenses=built,
                           account=account, accounts=accounts)

    rows = []
    for customer in spec.customers:
        result = serve_customer(customer, defended, undefended, spec.probe, root=root, image_size=size,
                                seed=spec.seed + 11, device=device)
        rows.append({"deployment": name, "kind": "customer", "stream": customer.name, "account": f"customer:{customer.name}",
                     "images": result.images, "pow_seconds": result.pow_seconds,
                     "pow_hashes": accounts.account(f"customer:{customer.name}").pow_hashes,
                     "accuracy": result.accuracy, "baseline": result.baseline, "loss": result.loss,
                     **{key: _figure(result.figures, key) for key in ("coverage", "prada_w", "flagged", "sigma")}})
        echo(f"  {name}: customer {customer.name}: {result.images} images, loss {100 * result.loss:+.2f} points")
    for stream in spec.attackers:
        images, _ = surrogate_images(stream.surrogate, meta.get("pretraining_data"), stream.seed, root=root,
                                     image_size=size)
        names = [f"{stream.name}:{index}" for index in range(1, stream.accounts + 1)]
        targets = [defended(account) for account in names]
        for request, chunk in enumerate(images.split(spec.batch_size)):  # requests in turn, as SybilTarget sends them
            targets[request % len(targets)].embed(chunk)
        for account, target in zip(names, targets):
            figures = accounts.figures(account)
            rows.append({"deployment": name, "kind": "attacker", "stream": stream.name, "account": account,
                         "images": target.queries, "pow_seconds": target.pow_seconds, "pow_hashes": target.pow_hashes,
                         **{key: _figure(figures, key) for key in ("coverage", "prada_w", "flagged", "sigma")}})
        echo(f"  {name}: attacker {stream.name}: {len(images)} images over {stream.accounts} account(s)")
    for row in rows:
        row["pow_seconds_per_image"] = row["pow_seconds"] / row["images"] if row["images"] else None
    return rows


def roc(rows: list[dict], score) -> list[tuple[float, float, float]]:
    """(threshold, false-positive rate, true-positive rate) for every threshold on `score(row)` (flag when above),
    attackers positive, customers negative; rows without a score count as never flagged."""
    scored = [(score(row), row["kind"] == "attacker") for row in rows]
    positives = sum(1 for _, p in scored if p) or 1
    negatives = sum(1 for _, p in scored if not p) or 1
    thresholds = sorted({s for s, _ in scored if s is not None}, reverse=True)
    points = [(math.inf, 0.0, 0.0)]
    for threshold in thresholds:
        tp = sum(1 for s, p in scored if p and s is not None and s >= threshold)
        fp = sum(1 for s, p in scored if not p and s is not None and s >= threshold)
        points.append((threshold, fp / negatives, tp / positives))
    return points


STATISTICS = {
    "coverage": lambda row: row["coverage"],
    "PRADA 1 − W": lambda row: None if row["prada_w"] is None else 1.0 - row["prada_w"],
}


def best_tpr(points: list[tuple[float, float, float]], max_fpr: float = 0.05) -> tuple[float, float | None]:
    """The highest TPR at FPR <= max_fpr, and the threshold that gives it."""
    best = max(((tpr, threshold) for threshold, fpr, tpr in points if fpr <= max_fpr), default=(0.0, None))
    return best


def write_outputs(spec: TrafficSpec, rows: list[dict], out: Path, wall_seconds: float) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    (out / "traffic.json").write_text(json.dumps({"wall_seconds": wall_seconds}) + "\n")
    with (out / "accounts.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({key: row.get(key) for key in COLUMNS})
    deployments = list(dict.fromkeys(row["deployment"] for row in rows))
    fig, axes = plt.subplots(1, len(STATISTICS), figsize=(5 * len(STATISTICS), 4.2), squeeze=False)
    for axis, (statistic, score) in zip(axes[0], STATISTICS.items()):
        for deployment in deployments:
            points = roc([r for r in rows if r["deployment"] == deployment], score)
            axis.plot([p[1] for p in points] + [1.0], [p[2] for p in points] + [1.0], marker=".", label=deployment)
        axis.axvline(0.05, color="grey", lw=0.8, ls=":")
        axis.plot([0, 1], [0, 1], color="lightgrey", lw=0.8)
        axis.set_xlabel("false-positive rate (customers flagged)")
        axis.set_ylabel("true-positive rate (attacker accounts flagged)")
        axis.set_title(f"detection by {statistic}", fontsize=10)
        axis.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "roc.png", dpi=110)
    plt.close(fig)
    return write_traffic_report(spec, rows, out, wall_seconds)


def write_traffic_report(spec: TrafficSpec, rows: list[dict], out: Path, wall_seconds: float) -> Path:
    lines = ["# Mixed traffic against the defended target", "",
             f"Target {spec.target}; {len(spec.customers)} customers and {len(spec.attackers)} attacker streams "
             f"per deployment, {spec.batch_size} images per request. Written on {platform.machine()} with "
             f"{os.cpu_count()} logical CPUs, torch {torch.__version__}; the traffic took {wall_seconds / 60:.1f} min.", ""]
    for deployment, defenses in spec.deployments.items():
        mine = [r for r in rows if r["deployment"] == deployment]
        customers = [r for r in mine if r["kind"] == "customer"]
        attackers = [r for r in mine if r["kind"] == "attacker"]
        lines += [f"## {deployment}: {describe(defenses)}", ""]
        worst = max((r["loss"] for r in customers), default=None)
        if worst is not None:
            lines.append(f"Customers' largest loss of accuracy: {100 * worst:+.2f} points.")
        for statistic, score in STATISTICS.items():
            tpr, threshold = best_tpr(roc(mine, score))
            if threshold is not None:
                lines.append(f"Detection by {statistic}: TPR {tpr:.2f} at FPR ≤ 0.05 (flag at ≥ {threshold:.4g}).")
        paid = [r for r in mine if r["pow_seconds"]]
        if paid:
            customer_rate = max((r["pow_seconds_per_image"] for r in customers), default=None)
            attacker_rate = min((r["pow_seconds_per_image"] for r in attackers), default=None)
            if customer_rate and attacker_rate:
                lines.append(f"Proof of work: the cheapest attacker account paid {1000 * attacker_rate:.2f} ms of CPU "
                             f"per image, the dearest customer {1000 * customer_rate:.2f} ms "
                             f"({attacker_rate / customer_rate:.1f}×).")
        lines.append("")
    lines += ["Every account's figures are in accounts.csv; ROC curves in roc.png.", "", "![roc](roc.png)", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def run_traffic(path: Path, echo=print) -> Path:
    spec = read_traffic(path)
    device = resolve_device(spec.device)
    encoder, meta = load_encoder(spec.target, device)
    started = time.perf_counter()
    rows = []
    for name, defenses in spec.deployments.items():
        resolved = [with_center(d, spec.target, data_root=spec.data.resolved_root(), image_size=spec.data.image_size,
                                device=device, batch_size=spec.batch_size)
                    if isinstance(d, ACCOUNT_AWARE) and d.center == PRETRAINING else d for d in defenses]
        echo(f"deployment {name}: {describe(resolved)}")
        rows += run_deployment(spec, name, resolved, encoder, meta, device, echo)
    out = spec.out or Path("runs") / "traffic" / path.stem
    return write_outputs(spec, rows, out, time.perf_counter() - started)
