"""`encsteal matrix MATRIX.yaml`: every attack against every defense, both sides of each cell.

    base: demo                                  # the preset every cell starts from
    overrides: [target.checkpoint=runs/demo/target.safetensors, attack.epochs=30]
    runs_dir: runs/matrix/demo                  # default: runs/matrix/<file name>
    price: 0.0001                               # money per image answered, where the run bills nothing itself
    seeds: [0]                                  # every cell once per seed
    attacks:                                    # name -> config keys (any attack, adaptive ones included)
      stolenencoder: {}
      cont-steal: {attack.loss: nt-xent, attack.clean_weight: 0, attack.lam: 1}
      averaged: {attack.adaptive.repeats: 4, attack.adaptive.recover: pca}
    defenses:                                   # name -> config keys
      none: {}
      noise: {target.defenses: [{name: noise, sigma: 0.5}]}
    only: {averaged: [none, noise]}             # an attack against some defenses only (default: all)
    headline: {attacks: [stolenencoder], defenses: [none, noise], seeds: [0, 1, 2]}   # cells with more seeds
    verify: {public: fashion-mnist:test}        # the ownership verdict on every copy (encsteal.ownership.verify)
    secrets: secrets.yaml                       # where `secret: $NAME` is looked up when NAME is not in the environment

Underneath it is a sweep (encsteal.experiments.sweep) whose cases are the cells, `<attack>__<defense>__seed=<s>`:
resumable, with shared targets, query caches and probe caches, and dispatchable with --executor submitit. An
attack and a defense that set the same key are refused when the file is read. A defense's secret may stay out of
the file: `secret: $NAME` is the environment variable NAME, or else the entry NAME of the `secrets` file (a YAML
mapping, refused unless only its owner may read it). Then every copy is verified against
its target (dataset inference, and the watermark where the target has one), once per copy's weights, in
`<runs_dir>/verify.sqlite`. Writes `<runs_dir>/matrix.csv` (one row per cell: the mean over its seeds and the
half-width of the 95 % interval), `matrix-per-seed.csv`, `matrix.md` and a heat map per measure
(`heatmap-<measure>.png`).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import time
import traceback
from pathlib import Path

import matplotlib
import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from encsteal.errors import ConfigError, EncstealError  # noqa: E402
from encsteal.experiments.sweep import SEED_PART, SweepSpec, plan, run_planned  # noqa: E402
from encsteal.experiments.sweep_report import interval  # noqa: E402


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Headline(Strict):
    attacks: list[str]
    defenses: list[str]
    seeds: list[int] = [0, 1, 2]


class MatrixVerify(Strict):
    public: str
    """DATASET[:split] of images the target never trained on (as `encsteal verify --public`)."""
    private: str | None = None
    settings: dict = Field(default_factory=dict)
    """encsteal.ownership.verify.VerifyConfig as a mapping (e.g. {public_images: 400})."""


class MatrixSpec(Strict):
    base: str
    overrides: list[str] = []
    runs_dir: Path | None = None
    price: float = Field(0.0, ge=0)
    seeds: list[int] = [0]
    attacks: dict[str, dict]
    defenses: dict[str, dict]
    only: dict[str, list[str]] = Field(default_factory=dict)
    headline: Headline | None = None
    task: str | None = None
    """The downstream task the cells report (default: each run's first)."""
    verify: MatrixVerify | None = None
    secrets: Path | None = None
    """A YAML file of NAME: secret (relative to the matrix file), readable by its owner only, where a `secret: $NAME`
    of a cell is looked up when the environment has no NAME."""
    share_queries: bool = True

    def runs_dir_for(self, path: Path) -> Path:
        return self.runs_dir or Path("runs") / "matrix" / Path(path).stem


def read_matrix(path: Path) -> MatrixSpec:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no matrix file {path}")
    try:
        return MatrixSpec.model_validate(yaml.safe_load(path.read_text()) or {})
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from None


SEP = "__"


def cell_id(attack: str, defense: str, seed: int) -> str:
    return f"{attack}{SEP}{defense}{SEP}{SEED_PART}{seed}"


def parse_id(run_id: str) -> tuple[str, str, int]:
    attack, defense, seed = run_id.split(SEP)
    return attack, defense, int(seed.removeprefix(SEED_PART))


def cells(spec: MatrixSpec, source: str = "matrix") -> list[tuple[str, str, int]]:
    """(attack, defense, seed) of every run, in the file's order."""
    for name in [*spec.attacks, *spec.defenses]:
        if SEP in name or "/" in name:
            raise ConfigError(f"{source}: the name '{name}' may not hold '{SEP}' or '/'")
    for attack, defenses in spec.only.items():
        unknown = [d for d in defenses if d not in spec.defenses]
        if attack not in spec.attacks or unknown:
            raise ConfigError(f"{source}: only: {attack} -> {unknown or attack} is not in the file's "
                              f"{'defenses' if unknown else 'attacks'}")
    headline = spec.headline
    if headline is not None:
        unknown = [a for a in headline.attacks if a not in spec.attacks] + \
                  [d for d in headline.defenses if d not in spec.defenses]
        if unknown:
            raise ConfigError(f"{source}: headline names {', '.join(unknown)}, which the file does not define")
    out = []
    for attack in spec.attacks:
        for defense in spec.only.get(attack, list(spec.defenses)):
            seeds = list(spec.seeds)
            if headline is not None and attack in headline.attacks and defense in headline.defenses:
                seeds += [seed for seed in headline.seeds if seed not in seeds]
            out += [(attack, defense, seed) for seed in seeds]
    return out


SECRET_REFERENCE = "$"


def read_secrets(path: Path) -> dict[str, int]:
    """NAME -> secret from a YAML file that only its owner may read."""
    if not path.is_file():
        raise ConfigError(f"no secrets file {path}")
    if path.stat().st_mode & 0o077:
        raise ConfigError(f"the secrets file {path} may be read by others than its owner: chmod 600 {path}")
    try:
        secrets = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(secrets, dict) or not all(isinstance(v, int) for v in secrets.values()):
        raise ConfigError(f"{path}: write one `NAME: integer` per line")
    return secrets


def with_secrets(settings, spec: MatrixSpec, source: str, loaded: dict):
    """`settings` with every `secret: $NAME` replaced by the environment variable NAME (an integer), or else by the
    entry NAME of the matrix's secrets file (read once into `loaded`)."""
    if isinstance(settings, list):
        return [with_secrets(item, spec, source, loaded) for item in settings]
    if not isinstance(settings, dict):
        return settings
    out = {}
    for key, value in settings.items():
        if key == "secret" and isinstance(value, str) and value.startswith(SECRET_REFERENCE):
            name = value.removeprefix(SECRET_REFERENCE)
            if name in os.environ:
                try:
                    value = int(os.environ[name])
                except ValueError:
                    raise ConfigError(f"{source}: the environment variable {name} must hold an integer secret") from None
            elif spec.secrets is not None:
                if "file" not in loaded:
                    loaded["file"] = read_secrets(Path(source).parent / spec.secrets)
                if name not in loaded["file"]:
                    raise ConfigError(f"{source}: secret ${name} is neither in the environment nor in {spec.secrets}")
                value = loaded["file"][name]
            else:
                raise ConfigError(f"{source}: secret ${name}: set the environment variable {name} (or give the file "
                                  "a `secrets` file)")
        out[key] = with_secrets(value, spec, source, loaded)
    return out


def sweep_spec(spec: MatrixSpec, source: str = "matrix", selected: list[str] = ()) -> SweepSpec:
    """The sweep underneath: one case per cell and seed (`selected`: only the cells whose `<attack>__<defense>`
    is listed); secrets referenced as `$NAME` resolved."""
    cases = {}
    loaded: dict = {}
    for attack, defense, seed in cells(spec, source):
        if selected and f"{attack}{SEP}{defense}" not in selected:
            continue
        both = set(spec.attacks[attack]) & set(spec.defenses[defense])
        if both:
            raise ConfigError(f"{source}: attack '{attack}' and defense '{defense}' both set {', '.join(sorted(both))}")
        if "seed" in spec.attacks[attack] or "seed" in spec.defenses[defense]:
            raise ConfigError(f"{source}: give seeds with `seeds` (or headline.seeds), not as a key of a cell")
        cases[cell_id(attack, defense, seed)] = with_secrets({**spec.attacks[attack], **spec.defenses[defense],
                                                              "seed": seed}, spec, source, loaded)
    if selected and not cases:
        raise ConfigError(f"{source}: no cell is called {', '.join(selected)} (cells are <attack>{SEP}<defense>)")
    return SweepSpec(base=spec.base, overrides=spec.overrides, cases=cases, share_queries=spec.share_queries)


def plan_matrix(path: Path, selected: list[str] = ()):
    """The matrix's spec, runs directory and every planned run (configs resolved: errors surface here)."""
    spec = read_matrix(path)
    runs_dir = spec.runs_dir_for(path)
    return spec, runs_dir, plan(sweep_spec(spec, str(path), selected), runs_dir)


def run_matrix(path: Path, *, selected: list[str] = (), progress: bool = True, echo=print, executor=None) -> Path:
    """Run the cells still to do, verify every new copy, write the report; returns matrix.md's path."""
    spec = read_matrix(path)
    runs_dir = spec.runs_dir_for(path)
    rows = run_planned(sweep_spec(spec, str(path), selected), runs_dir, str(path), progress=progress, echo=echo,
                       executor=executor)
    if spec.verify is not None:
        verify_copies(rows, spec.verify, runs_dir, echo=echo, progress=progress)
    return write_matrix_report(path)


# --------------------------------------------------------------------------------------------------
# The ownership column: every copy verified against its own target


def verify_copies(rows: list[dict], settings: MatrixVerify, runs_dir: Path, echo=print, progress: bool = False) -> None:
    """`encsteal verify` of every finished run's copy against the target it was stolen from, once per weights."""
    from encsteal.experiments.verify_sweep import VerifyStore

    store = VerifyStore(runs_dir / "verify.sqlite")
    evidence: dict[str, tuple] = {}
    for row in rows:
        if row["status"] != "done":
            continue
        config = yaml.safe_load(row["config"])
        victim = Path(config["target"]["checkpoint"])
        suspect = Path(config["run_dir"]) / "stolen.safetensors"
        if not suspect.exists() or not victim.exists():
            continue
        key = _digest({"victim": _file_digest(victim), "suspect": _file_digest(suspect),
                       "verify": settings.model_dump(mode="json")})
        if store.done(row["id"], key):
            continue
        echo(f"verifying {row['id']}")
        started = time.perf_counter()
        try:
            summary = verify_copy(victim, suspect, settings, evidence, runs_dir, progress)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # recorded; the others go on
            detail = str(exc) if isinstance(exc, EncstealError) else "".join(traceback.format_exception_only(exc)).strip()
            echo(f"    failed: {detail}")
            store.record(row["id"], "failed", key, None, detail, time.perf_counter() - started)
            continue
        store.record(row["id"], "done", key, summary, None, time.perf_counter() - started)


def verify_copy(victim: Path, suspect: Path, settings: MatrixVerify, evidence: dict, runs_dir: Path,
                progress: bool) -> dict:
    """One copy through encsteal.ownership.verify; the victim's evidence is prepared once per victim."""
    import torch

    from encsteal.checkpoint import load_encoder
    from encsteal.experiments.verification import open_victim, prepare, verify_config
    from encsteal.ownership.verify import verify_suspect
    from encsteal.query_cache import CachedTarget, QueryCache
    from encsteal.target import LocalTarget

    device = torch.device("cpu")
    config = verify_config(base=settings.settings)
    if str(victim) not in evidence:
        owner = open_victim(victim, device)
        evidence[str(victim)] = (owner, prepare(owner, settings.private, settings.public, config, device)[0])
    owner, prepared = evidence[str(victim)]
    encoder, _ = load_encoder(suspect, device)
    target = LocalTarget(encoder, image_size=owner.image_size, device=device, batch_size=config.batch_size)
    identity = _file_digest(suspect)
    cache = QueryCache(runs_dir / "caches" / "verify" / f"{identity[:16]}.sqlite", f"weights:{identity}")
    try:
        cached = CachedTarget(target, cache, run="verify", batch_size=config.batch_size, progress=progress)
        return verify_suspect(prepared, cached, config).summary
    finally:
        cache.close()


def _file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _digest(tree) -> str:
    return hashlib.sha256(json.dumps(tree, sort_keys=True, default=str).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------------
# The cells


MEASURES = ("G", "G_served", "SA", "TA", "TA_served", "R", "SA_over_TA", "queries", "money", "pow_seconds",
            "wait_seconds", "flagged_share", "flagged_at", "refused_at", "ownership_p", "customer_loss")
"""Each cell's figures, averaged over its seeds (with a `_ci95` column beside each)."""
HEATMAPS = {"G": "captured gain G", "customer_loss": "legitimate users' loss (accuracy points)",
            "ownership_p": "ownership p-value (log10)", "money": "money spent"}


def cell_record(row: dict, verification: dict | None, price: float, task: str | None) -> dict:
    """One run of the matrix as a flat record of the figures both sides care about."""
    attack, defense, seed = parse_id(row["id"])
    record: dict = {"attack": attack, "defense": defense, "seed": seed, "status": row["status"],
                    "error": row.get("error")}
    if row["status"] != "done":
        return record
    # a refused attacker's copy is trained on what it was answered before the refusal (results["refused"])
    results = json.loads(row["results"])
    config = yaml.safe_load(row["config"])
    name = task or next(iter(results["downstream"]))
    figures = results["downstream"][name]
    accounts = results.get("attacker_accounts", [])
    flags = [a.get("flagged_at") for a in accounts if a.get("flagged_at") is not None]
    customers = results.get("customers", [])
    cost = results.get("cost")
    record.update({
        "task": name, "TA": figures["TA"], "SA": figures["SA"], "R": figures["R"], "SA_over_TA": figures["SA_over_TA"],
        "TA_served": figures["TA"],
        "G": figures["gain_captured"], "G_served": figures["gain_captured"], "queries": results["queries"],
        "undefended": not config["target"]["defenses"], "checkpoint": config["target"]["checkpoint"],
        "money": cost if cost is not None else results["queries"] * price,
        "pow_seconds": sum(a.get("pow_seconds", 0.0) for a in accounts),
        "wait_seconds": sum(a.get("wait_seconds", 0.0) for a in accounts) if accounts else None,
        "accounts": len(accounts) or None,
        "flagged_share": (len(flags) / len(accounts)) if accounts else None,
        "flagged_at": min(flags) if flags else None,
        "refused_at": (results.get("refused") or {}).get("images"),
        "customer_loss": 100 * float(np.mean([c["loss"] for c in customers])) if customers else None,
        "steal_seconds": results.get("steal_seconds"),
    })
    if verification is not None:
        record["ownership_p"] = verification["min_p_value"]
        record["ownership"] = verification["verdict"]
    return record


def over_seeds(records: list[dict]) -> list[dict]:
    """One record per cell: the mean of each measure over the seeds that finished and its 95 % half-width."""
    order: dict[tuple[str, str], list[dict]] = {}
    for rec in records:
        order.setdefault((rec["attack"], rec["defense"]), []).append(rec)
    out = []
    for (attack, defense), group in order.items():
        done = [rec for rec in group if rec["status"] == "done"]
        cell: dict = {"attack": attack, "defense": defense, "seeds": len(done), "runs": len(group)}
        if not done:
            cell["status"] = "failed"
            cell["error"] = group[0].get("error")
            out.append(cell)
            continue
        cell["status"] = "done"
        for measure in MEASURES:
            values = [rec[measure] for rec in done if rec.get(measure) is not None]
            cell[measure], cell[f"{measure}_ci95"] = interval(values) if values else (None, None)
        cell["refused_seeds"] = sum(rec.get("refused_at") is not None for rec in done)
        verdicts = [rec["ownership"] for rec in done if rec.get("ownership")]
        cell["ownership"] = f"{verdicts.count('stolen')}/{len(verdicts)} stolen" if verdicts else None
        cell["copies_verified"], cell["copies_proven"] = len(verdicts), verdicts.count("stolen")
        cell["task"] = done[0]["task"]
        out.append(cell)
    return out


def matrix_records(path: Path) -> tuple[MatrixSpec, Path, list[dict]]:
    """Every run the store holds of this matrix, as records (in the file's order)."""
    from encsteal.experiments.sweep import ResultStore
    from encsteal.experiments.verify_sweep import VerifyStore

    spec = read_matrix(path)
    runs_dir = spec.runs_dir_for(path)
    store_path = runs_dir / "results.sqlite"
    if not store_path.exists():
        raise ConfigError(f"the matrix {path} has no results yet ({store_path} does not exist): run `encsteal matrix {path}`")
    rows = {row["id"]: row for row in ResultStore(store_path).rows()}
    verified = {}
    if (runs_dir / "verify.sqlite").exists():
        verified = {row["id"]: json.loads(row["results"]) for row in VerifyStore(runs_dir / "verify.sqlite").rows()
                    if row["status"] == "done"}
    planned = [cell_id(*cell) for cell in cells(spec, str(path))]
    records = [cell_record(rows[run_id], verified.get(run_id), spec.price, spec.task)
               for run_id in planned if run_id in rows]
    return spec, runs_dir, against_undefended(records)


def against_undefended(records: list[dict]) -> list[dict]:
    """G of every copy against the undefended target's TA (the provider's encoder, whose gain the attacker is after),
    taken from an undefended cell of the same target, seed and task; a stateless defense lowers the TA a run measures
    on the served features, which would flatter the copy. Cells without an undefended twin keep that G (`G_served`)."""
    clean = {(r["checkpoint"], r["seed"], r["task"]): r["TA"] for r in records
             if r["status"] == "done" and r["undefended"]}
    for record in records:
        if record["status"] != "done":
            continue
        ta = clean.get((record["checkpoint"], record["seed"], record["task"]))
        if ta is not None:
            record["TA"], record["SA_over_TA"] = ta, record["SA"] / ta
            record["G"] = (record["SA"] - record["R"]) / (ta - record["R"]) if ta != record["R"] else None
    return records


# --------------------------------------------------------------------------------------------------
# The report


CSV_COLUMNS = ("attack", "defense", "status", "seeds", "task", *(name for m in MEASURES for name in (m, f"{m}_ci95")),
               "refused_seeds", "ownership", "error")
SEED_COLUMNS = ("attack", "defense", "seed", "status", "task", *MEASURES, "accounts", "ownership", "steal_seconds",
                "error")


def _write_csv(path: Path, columns: tuple, records: list[dict]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for rec in records:
            writer.writerow(["" if rec.get(c) is None else rec.get(c) for c in columns])
    return path


def _mean(cell: dict, measure: str, fmt) -> str:
    value = cell.get(measure)
    if value is None:
        return "–"
    half = cell.get(f"{measure}_ci95")
    return fmt(value) + ("" if half is None else f" ± {fmt(half)}")


def _flag(cell: dict) -> str:
    share = cell.get("flagged_share")
    if share is None:
        return "–"
    if share == 0:
        return "no"
    return f"{share:.0%} of accounts, first at {cell['flagged_at']:.0f} images"


def _refused(cell: dict) -> str:
    if not cell.get("refused_seeds"):
        return "no" if cell.get("flagged_share") is not None else "–"
    return f"after {cell['refused_at']:.0f} images ({cell['refused_seeds']}/{cell['seeds']} seeds)"


def _p(value: float | None) -> str:
    return "–" if value is None else f"{value:.1e}"


def markdown(spec: MatrixSpec, cells_: list[dict], title: str) -> str:
    lines = [f"# {title}", "",
             "Every attack against every defense; each cell is the mean over its seeds (± the half-width of the "
             "95 % Student-t interval where there were several). G = (SA − R)/(TA − R), the attacker's captured gain "
             "of the undefended target (TA: its accuracy, from the matrix's undefended cell of the same seed; "
             "matrix.csv's G_served is against the accuracy on the served features); "
             "money: what the run was billed, else queries × the price per image "
             f"({spec.price:g}); PoW: CPU seconds spent on proof-of-work; waited: seconds the attacker's clients "
             "waited for a throttled rate; flagged: the share of the attacker's accounts a detection flagged and the "
             "images the first had sent then; refused: the images the attacker had been answered when the provider "
             "refused its last account (its copy is trained on those); p: the smallest p-value of the "
             "ownership verification of the copy (stolen below α / methods); users' loss: the mean accuracy "
             "(points) the legitimate users lose under the defense.", "",
             "| attack | defense | seeds | SA | TA | R | SA/TA | G | queries | money | PoW s | waited s | flagged | "
             "refused | ownership p | verdict | users' loss |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|---|---:|"]
    pct = lambda v: f"{100 * v:.2f}"  # noqa: E731
    for cell in cells_:
        if cell["status"] != "done":
            lines.append(f"| {cell['attack']} | {cell['defense']} | 0/{cell['runs']} | failed: "
                         f"{(cell.get('error') or '').splitlines()[0][:120]} " + "|" * 14)
            continue
        lines.append(" | ".join([
            f"| {cell['attack']}", cell["defense"], f"{cell['seeds']}", _mean(cell, "SA", pct), _mean(cell, "TA", pct),
            _mean(cell, "R", pct), _mean(cell, "SA_over_TA", lambda v: f"{v:.3f}"), _mean(cell, "G", lambda v: f"{v:.2f}"), _mean(cell, "queries", lambda v: f"{v:.0f}"),
            _mean(cell, "money", lambda v: f"{v:.4g}"), _mean(cell, "pow_seconds", lambda v: f"{v:.1f}"),
            _mean(cell, "wait_seconds", lambda v: f"{v:.0f}"), _flag(cell), _refused(cell), _p(cell.get("ownership_p")),
            cell.get("ownership") or "–",
            _mean(cell, "customer_loss", lambda v: f"{v:.2f}")]) + " |")
    lines += ["", "Heat maps: " + ", ".join(f"[{label}](heatmap-{m}.png)" for m, label in HEATMAPS.items()), ""]
    return "\n".join(lines)


def heatmap(cells_: list[dict], measure: str, label: str, path: Path) -> Path:
    attacks = list(dict.fromkeys(c["attack"] for c in cells_))
    defenses = list(dict.fromkeys(c["defense"] for c in cells_))
    grid = np.full((len(attacks), len(defenses)), np.nan)
    for c in cells_:
        value = c.get(measure)
        if value is not None:
            grid[attacks.index(c["attack"]), defenses.index(c["defense"])] = \
                math.log10(max(value, 1e-300)) if measure == "ownership_p" else value
    fig, axis = plt.subplots(figsize=(1.3 + 1.1 * len(defenses), 1.0 + 0.45 * len(attacks)))
    image = axis.imshow(grid, cmap="viridis", aspect="auto")
    axis.set_xticks(range(len(defenses)), defenses, rotation=30, ha="right", fontsize=8)
    axis.set_yticks(range(len(attacks)), attacks, fontsize=8)
    for i in range(len(attacks)):
        for j in range(len(defenses)):
            if not np.isnan(grid[i, j]):
                axis.text(j, i, f"{grid[i, j]:.2g}", ha="center", va="center", fontsize=7, color="white")
    fig.colorbar(image, ax=axis, label=label)
    axis.set_title(label, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_matrix_report(path: Path, out_dir: Path | None = None) -> Path:
    """matrix.md, matrix.csv, matrix-per-seed.csv and the heat maps from what the stores hold."""
    spec, runs_dir, records = matrix_records(path)
    out = Path(out_dir or runs_dir)
    out.mkdir(parents=True, exist_ok=True)
    per_cell = over_seeds(records)
    _write_csv(out / "matrix-per-seed.csv", SEED_COLUMNS, records)
    _write_csv(out / "matrix.csv", CSV_COLUMNS, per_cell)
    done = [c for c in per_cell if c["status"] == "done"]
    for measure, label in HEATMAPS.items():
        heatmap(done, measure, label, out / f"heatmap-{measure}.png")
    report = out / "matrix.md"
    report.write_text(markdown(spec, per_cell, f"Attack × defense matrix: {Path(path).name}"))
    return report


__all__ = ["MatrixSpec", "cells", "plan_matrix", "read_matrix", "run_matrix", "sweep_spec", "write_matrix_report"]
