"""`encsteal audit CHECKPOINT [--defense ...]`: the provider's question, "how cheaply can my API be copied, and
could I prove it?"

The audit writes a matrix file (encsteal.experiments.matrix) into its output directory and runs it: the strongest
attacks at growing budgets (`<attack>@<budget>`, e.g. `stolenencoder@5%`), each adaptive attacker beside the
deployments it is built against, against the encoder undefended and behind every deployment (`--defense`, each a
deployment; `pow:base=200 > b4b:beta=9` stacks defenses as `encsteal serve` does), with legitimate users and the
ownership verification of every copy. Resumable like any sweep: run the same command again. The deployments'
secrets stay out of the matrix file: it names each `$ENCSTEAL_AUDIT_SECRET_<DEPLOYMENT>_<i>`, found in
`audit-secrets.yaml` beside it (mode 0600) unless the environment sets it, and the runs' directory, whose run
configs record the defenses as run, is its owner's alone (0700). From the matrix's
records it writes `audit.json` and `audit.html`, one self-contained page (plots inlined, nothing loaded from
elsewhere): G against queries and against money, the cheapest budget reaching G >= 0.5 and >= 0.8 per deployment,
the ownership p-values of the copies, and what each deployment costs the legitimate users.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import re
import time
from pathlib import Path

import matplotlib
import yaml

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from encsteal.checkpoint import load_encoder  # noqa: E402
from encsteal.defenses import describe, parse_defense  # noqa: E402
from encsteal.errors import ConfigError  # noqa: E402
from encsteal.experiments.matrix import SECRET_REFERENCE, matrix_records, over_seeds, run_matrix  # noqa: E402
from encsteal.experiments.verification import hardware  # noqa: E402

SECRETS_FILE = "audit-secrets.yaml"
THRESHOLDS = (0.5, 0.8)
BUDGETS = ("1%", "2%", "5%")
ATTACKS: dict[str, dict] = {
    "stolenencoder": {},
    "cont-steal": {"attack.loss": "nt-xent", "attack.clean_weight": 0, "attack.lam": 1, "attack.lr": 3.0e-4,
                   "attack.batch_size": 32},
}
"""The audit's non-adaptive attackers: the strongest of the demo's comparisons (StolenEncoder, Cont-Steal)."""
ADAPTIVE_ATTACKS: dict[str, tuple[dict, tuple[str, ...]]] = {
    "sybils-aligned": ({"target.accounts": 4, "attack.adaptive.align_anchors": 300}, ("b4b",)),
    "averaged-recovered": ({"attack.adaptive.repeats": 4, "attack.adaptive.recover": "pca"}, ("noise", "b4b")),
    "paced": ({"attack.adaptive.account_queries": 500}, ("detection", "b4b", "pow")),
}
"""Adaptive attackers (attack.adaptive), each run against the deployments holding a defense it is built against."""


def deployments(specs: list[str]) -> dict[str, list]:
    """name -> the defense configs of each `--defense` deployment (`a > b` stacks), `none` first."""
    out: dict[str, list] = {"none": []}
    for spec in specs:
        try:
            configs = [parse_defense(part.strip()) for part in spec.split(" > ")]
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        name = "+".join(config.name for config in configs)
        while name in out:
            name += "'"
        out[name] = configs
    return out


def audit_matrix(checkpoint: Path, defenses: list[str], out: Path, *, preset: str = "demo", budgets=BUDGETS,
                 attacks: list[str] | None = None, price: float = 0.0001, seeds: list[int] = (0,),
                 public: str | None = None, overrides: list[str] = (), verify_settings: dict | None = None) -> Path:
    """Write the audit's matrix file into `out`; returns its path."""
    if not Path(checkpoint).exists():
        raise ConfigError(f"no checkpoint at {checkpoint}")
    _, meta = load_encoder(Path(checkpoint), "cpu")
    pretraining = meta.get("pretraining_data") or {}
    if public is None:
        if not pretraining:
            raise ConfigError(f"{checkpoint} does not record its pre-training data: give --public DATASET[:split]")
        public = f"{pretraining['dataset']}:test"
    deployed = deployments(defenses)
    names = attacks or [*ATTACKS, *ADAPTIVE_ATTACKS]
    unknown = [name for name in names if name not in ATTACKS and name not in ADAPTIVE_ATTACKS]
    if unknown:
        raise ConfigError(f"unknown audit attack {', '.join(unknown)} (known: {', '.join([*ATTACKS, *ADAPTIVE_ATTACKS])})")
    matrix_attacks, only = {}, {}
    for name in names:
        settings, against = (ATTACKS[name], None) if name in ATTACKS else ADAPTIVE_ATTACKS[name]
        targets = [d for d, configs in deployed.items() if against is None or any(c.name in against for c in configs)]
        if not targets:
            continue
        for budget in budgets:
            key = f"{name}@{str(budget).strip()}"
            matrix_attacks[key] = {**settings, "surrogate.size": budget}
            if against is not None:
                only[key] = targets
    secrets: dict[str, int] = {}
    defended = {}
    for name, configs in deployed.items():
        written = []
        for index, config in enumerate(configs, start=1):
            tree = config.model_dump(mode="json")
            if tree.get("secret"):  # referenced by name; the value goes to the secrets file
                reference = secret_name(name, index)
                secrets[reference] = tree["secret"]
                tree["secret"] = SECRET_REFERENCE + reference
            written.append(tree)
        defended[name] = {"target.defenses": written} if written else {}
    spec = {
        "base": preset, "runs_dir": str(out / "runs"), "price": price, "seeds": list(seeds),
        "overrides": [f"target.checkpoint={checkpoint}", *overrides],
        "attacks": matrix_attacks,
        "defenses": defended,
        "only": only,
        "verify": {"public": public, "settings": verify_settings or {}},
        **({"secrets": SECRETS_FILE} if secrets else {}),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "runs").mkdir(mode=0o700, exist_ok=True)
    (out / "runs").chmod(0o700)  # its runs' configs record the defenses as run, secrets included
    if secrets:
        write_private(out / SECRETS_FILE, "# the deployments' secrets, for audit-matrix.yaml; keep this file private\n"
                      + yaml.safe_dump(secrets, sort_keys=False))
    path = out / "audit-matrix.yaml"
    path.write_text("# written by encsteal audit; `encsteal matrix` reads it too. Secrets: $NAME is the environment "
                    f"variable NAME, else NAME in {SECRETS_FILE}\n" + yaml.safe_dump(spec, sort_keys=False))
    return path


def secret_name(deployment: str, index: int) -> str:
    """The name a deployment's `index`-th defense's secret goes by: ENCSTEAL_AUDIT_SECRET_POW_B4B_2 (the second
    deployment of the same defenses, pow+b4b', ENCSTEAL_AUDIT_SECRET_POW_B4B_PRIME_2)."""
    words = re.sub(r"[^A-Z0-9]+", "_", deployment.replace("'", "_prime").upper()).strip("_")
    return f"ENCSTEAL_AUDIT_SECRET_{words}_{index}"


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path`, readable and writable by its owner only (0600), whatever the file was before."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        os.fchmod(handle.fileno(), 0o600)
        handle.write(text)


def run_audit(checkpoint: Path, defenses: list[str], out: Path, *, progress: bool = True, echo=print, **options) -> Path:
    """Run the audit (resumable) and write audit.json and audit.html; returns the page's path."""
    started = time.perf_counter()
    matrix = audit_matrix(checkpoint, defenses, out, **options)
    run_matrix(matrix, progress=progress, echo=echo)
    return write_audit(matrix, checkpoint, defenses, out, time.perf_counter() - started)


# --------------------------------------------------------------------------------------------------
# What the audit found


def summary(matrix: Path, checkpoint: Path, defenses: list[str], seconds: float | None = None) -> dict:
    spec, _, records = matrix_records(matrix)
    cells = [cell for cell in over_seeds(records) if cell["status"] == "done"]
    failed = [cell for cell in over_seeds(records) if cell["status"] != "done"]
    points = []
    for cell in cells:
        attack, budget = cell["attack"].rsplit("@", 1)
        points.append({"deployment": cell["defense"], "attack": attack, "budget": budget,
                       **{key: cell.get(key) for key in ("queries", "money", "G", "G_ci95", "SA", "TA", "R",
                                                         "pow_seconds", "wait_seconds", "flagged_share",
                                                         "flagged_at", "refused_at", "refused_seeds", "ownership_p",
                                                         "ownership", "customer_loss", "seeds", "copies_verified",
                                                         "copies_proven")}})
    deployed = deployments(defenses)
    per_deployment = {}
    for name, configs in deployed.items():
        mine = [p for p in points if p["deployment"] == name]
        cheapest = {}
        for threshold in THRESHOLDS:
            reaching = [p for p in mine if p["G"] is not None and p["G"] >= threshold]
            best = min(reaching, key=lambda p: (p["money"], p["queries"]), default=None)
            cheapest[str(threshold)] = None if best is None else {
                key: best[key] for key in ("attack", "budget", "queries", "money", "G")}
        losses = [p["customer_loss"] for p in mine if p["customer_loss"] is not None]
        per_deployment[name] = {
            "defenses": describe(configs), "cheapest": cheapest,
            "best_G": max((p["G"] for p in mine if p["G"] is not None), default=None),
            "copies": sum(p["copies_verified"] or 0 for p in mine),
            "copies_proven": sum(p["copies_proven"] or 0 for p in mine),
            "users_loss": sum(losses) / len(losses) if losses else None,
        }
    return {"checkpoint": str(checkpoint), "deployments": per_deployment, "points": points,
            "failed": [{"attack": c["attack"], "deployment": c["defense"], "error": c.get("error")} for c in failed],
            "price": spec.price, "thresholds": list(THRESHOLDS), "hardware": hardware(), "wall_seconds": seconds,
            "matrix": str(matrix)}


def _plot(points: list[dict], x: str, label: str) -> str:
    """G against `x`, one line per deployment and attack, as a PNG data URI."""
    fig, axis = plt.subplots(figsize=(6.4, 3.8))
    groups: dict[tuple[str, str], list[dict]] = {}
    for point in points:
        groups.setdefault((point["deployment"], point["attack"]), []).append(point)
    for (deployment, attack), group in groups.items():
        group = sorted((p for p in group if p[x] is not None and p["G"] is not None), key=lambda p: p[x])
        if group:
            axis.errorbar([p[x] for p in group], [p["G"] for p in group], yerr=[p["G_ci95"] or 0 for p in group],
                          marker="o", capsize=3, label=f"{attack} vs {deployment}")
    for threshold in THRESHOLDS:
        axis.axhline(threshold, color="grey", ls=":", lw=0.8)
    axis.set_xlabel(label)
    axis.set_ylabel("captured gain G")
    axis.legend(fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _fmt(value, digits: str = ".2f") -> str:
    return "–" if value is None else format(value, digits)


def _flagged(point: dict) -> str:
    if point["flagged_share"] is None:
        return "–"
    if not point["flagged_share"]:
        return "no"
    refused = "" if not point["refused_seeds"] else f"; refused after {point['refused_at']:.0f} images"
    return f"{point['flagged_share']:.0%}, first at {point['flagged_at']:.0f} images{refused}"


def page(result: dict) -> str:
    esc = html.escape
    rows_cheapest = []
    for name, deployment in result["deployments"].items():
        cells = []
        for threshold in THRESHOLDS:
            best = deployment["cheapest"][str(threshold)]
            cells.append("<td>not reached</td>" if best is None else
                         f"<td>{esc(best['attack'])} at {esc(best['budget'])}: {best['queries']:.0f} queries, "
                         f"{best['money']:.4g} money (G {best['G']:.2f})</td>")
        rows_cheapest.append(f"<tr><th>{esc(name)}</th><td><code>{esc(deployment['defenses'])}</code></td>"
                             f"<td>{_fmt(deployment['best_G'])}</td>{''.join(cells)}</tr>")
    rows_points = [
        f"<tr><td>{esc(p['deployment'])}</td><td>{esc(p['attack'])}</td><td>{esc(p['budget'])}</td>"
        f"<td>{_fmt(p['queries'], '.0f')}</td><td>{_fmt(p['money'], '.4g')}</td><td>{_fmt(p['G'])}</td>"
        f"<td>{_fmt(p['pow_seconds'], '.1f')}</td><td>{_fmt(p['wait_seconds'], '.0f')}</td>"
        f"<td>{_flagged(p)}</td>"
        f"<td>{_fmt(p['ownership_p'], '.1e')}</td><td>{esc(p['ownership'] or '–')}</td></tr>"
        for p in result["points"]]
    rows_users = [f"<tr><th>{esc(name)}</th><td>{_fmt(d['users_loss'])}</td><td>{d['copies_proven']} of {d['copies']}</td></tr>"
                  for name, d in result["deployments"].items()]
    failed = "".join(f"<li>{esc(f['attack'])} vs {esc(f['deployment'])}: {esc((f['error'] or '')[:200])}</li>"
                     for f in result["failed"])
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>encsteal audit: {esc(result['checkpoint'])}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 70em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }} th, td {{ border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; }}
caption {{ text-align: left; font-weight: bold; }} img {{ max-width: 100%; }}
</style></head>
<body>
<h1>How cheaply can this encoder be copied through its API?</h1>
<p>Target <code>{esc(result['checkpoint'])}</code>. The strongest attacks at growing budgets against each deployment,
the copy's captured gain G = (SA − R)/(TA − R), money as queries × {result['price']:g} per image (or what the API
billed), proof-of-work CPU seconds, seconds waited for a throttled rate, flags and refusals (a refused attacker's
copy is trained on what it was answered before), the ownership verification of every copy, and what each deployment costs
legitimate users. {esc(result['hardware'])}{'' if result['wall_seconds'] is None else f"; {result['wall_seconds'] / 60:.0f} min"}.</p>
<table id="cheapest"><caption>The cheapest budget reaching G ≥ 0.5 and G ≥ 0.8</caption>
<tr><th>deployment</th><th>defenses</th><th>best G</th><th>G ≥ 0.5</th><th>G ≥ 0.8</th></tr>
{''.join(rows_cheapest)}</table>
<h2>G against queries and against money</h2>
<img id="g-queries" alt="G against queries" src="{_plot(result['points'], 'queries', 'queries')}">
<img id="g-money" alt="G against money" src="{_plot(result['points'], 'money', 'money')}">
<table id="users"><caption>Legitimate users' cost of each deployment, and the copies verification proves</caption>
<tr><th>deployment</th><th>users' accuracy loss (points)</th><th>copies proven stolen</th></tr>
{''.join(rows_users)}</table>
<table id="copies"><caption>Every copy</caption>
<tr><th>deployment</th><th>attack</th><th>budget</th><th>queries</th><th>money</th><th>G</th><th>PoW s</th><th>waited s</th>
<th>flagged</th>
<th>ownership p</th><th>verdict</th></tr>
{''.join(rows_points)}</table>
{f'<h2>Runs that failed</h2><ul id="failed">{failed}</ul>' if failed else ''}
</body></html>
"""


def write_audit(matrix: Path, checkpoint: Path, defenses: list[str], out: Path, seconds: float | None = None) -> Path:
    result = summary(matrix, checkpoint, defenses, seconds)
    (out / "audit.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    path = out / "audit.html"
    path.write_text(page(result))
    return path


__all__ = ["ADAPTIVE_ATTACKS", "ATTACKS", "audit_matrix", "run_audit", "summary", "write_audit"]
