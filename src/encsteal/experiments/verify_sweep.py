"""A verification sweep: one victim against many suspects, each bare and under obfuscations, resumable, with one
result store and a report. `encsteal sweep FILE` runs it when the file has a `verify:` section.

    verify:
      victim: runs/ownership/demo/wm-s0/target.safetensors
      public: fashion-mnist:test              # images the victim never trained on
      private: null                           # default: the victim's recorded pre-training images
      settings: {watermark: {images: 100}}    # encsteal.ownership.verify.VerifyConfig
      before: [sweeps/ownership-demo-copies.yaml]   # pipeline sweeps that make the suspects, run first
      runs_dir: runs/ownership/demo           # default: runs/sweeps/<file name>
      suspects:                               # name -> where the suspect comes from, and what it truly is
        victim: {checkpoint: runs/ownership/demo/wm-s0/target.safetensors, expect: stolen, group: victim}
        copy: {checkpoint: "runs/ownership/demo/copies/*/stolen.safetensors", expect: stolen,
               obfuscations: [none, shuffle, pad, linear, finetune, prune]}
        random: {random: {arch: small_cnn, stem: imagenet, seeds: [0, 1, 2]}, expect: independent}
        over-http: {checkpoint: ..., served: true, expect: stolen}   # served on 127.0.0.1, verified over HTTP
      paper: {victim: {p_value: 4.52e-17, delta_mu: 10.73}}   # the slides' figures: victim, stolen+shuffle, independent

A checkpoint pattern with * gives one suspect per match, named by the match's directory. Each suspect and
obfuscation is one row of `<runs_dir>/verify.sqlite`; a row is reused while the victim, the settings and the
suspect's weights are the same. At the end `<runs_dir>/report.md`, `results.csv` and `pvalues.png` are written.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import json
import math
import sqlite3
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import matplotlib
import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from encsteal.checkpoint import load_encoder  # noqa: E402
from encsteal.config import ConfigError, DataConfig  # noqa: E402
from encsteal.errors import EncstealError  # noqa: E402
from encsteal.experiments.verification import hardware, open_victim, prepare, verify_config  # noqa: E402
from encsteal.models import build_encoder  # noqa: E402
from encsteal.ownership.obfuscations import ObfuscationConfig, obfuscate_checkpoint  # noqa: E402
from encsteal.ownership.verify import verify_suspect  # noqa: E402
from encsteal.query_cache import CachedTarget, QueryCache  # noqa: E402
from encsteal.target import LocalTarget  # noqa: E402
from encsteal.training import resolve_device  # noqa: E402


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RandomInits(Strict):
    arch: str
    stem: str = "cifar"
    seeds: list[int] = [0]


class SuspectSpec(Strict):
    checkpoint: str | None = None
    """A checkpoint, or a pattern with * (one suspect per match, named by its directory)."""
    random: RandomInits | None = None
    """Random-init encoders (independent by construction), one per seed."""
    served: bool = False
    """Serve the checkpoint on 127.0.0.1 (a real server process and ledger) and verify it over HTTP."""
    obfuscations: list[ObfuscationConfig | str] = ["none"]
    """Obfuscations applied to the suspect first (a kind, or a mapping of encsteal.ownership.ObfuscationConfig)."""
    expect: Literal["stolen", "independent"]
    """What the suspect truly is: the report counts detections and false claims against it."""
    group: str | None = None
    """The label the report groups by (default: the suspect's name)."""


class VerifySweepSpec(Strict):
    victim: Path
    public: str
    private: str | None = None
    settings: dict = Field(default_factory=dict)
    before: list[Path] = []
    runs_dir: Path | None = None
    device: str = "auto"
    suspects: dict[str, SuspectSpec]
    paper: dict[str, dict[str, float]] = Field(default_factory=dict)
    """Published figures where the sweep mirrors the slides' ownership table: `selector[+obfuscation]` (a group, or
    stolen / independent; e.g. victim, stolen, stolen+shuffle, independent) -> {p_value, delta_mu}; the report puts
    them beside the median of ours (see paper_rows)."""

    def runs_dir_for(self, path: Path) -> Path:
        return self.runs_dir or Path("runs") / "sweeps" / path.stem


def is_verify_sweep(path: Path) -> bool:
    try:
        tree = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(tree, dict) and "verify" in tree


def read_spec(path: Path) -> VerifySweepSpec:
    try:
        tree = yaml.safe_load(Path(path).read_text()) or {}
        return VerifySweepSpec.model_validate(tree.get("verify") or {})
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    except ValueError as exc:
        raise ConfigError(f"{path}: verify: {exc}") from None


@dataclass
class PlannedSuspect:
    id: str
    name: str
    spec: SuspectSpec
    obfuscation: ObfuscationConfig
    checkpoint: Path | None = None
    random: tuple[str, str, int] | None = None


def _obfuscation(value: ObfuscationConfig | str) -> ObfuscationConfig:
    return value if isinstance(value, ObfuscationConfig) else ObfuscationConfig(kind=value)


def plan(spec: VerifySweepSpec) -> list[PlannedSuspect]:
    """Every suspect and obfuscation, in order (checkpoint patterns expanded now: run `before` first)."""
    planned = []
    for name, suspect in spec.suspects.items():
        if (suspect.checkpoint is None) == (suspect.random is None):
            raise ConfigError(f"suspect '{name}': give either checkpoint or random")
        sources: list[tuple[str, Path | None, tuple | None]] = []
        if suspect.random is not None:
            sources = [(f"{name}/{seed}", None, (suspect.random.arch, suspect.random.stem, seed))
                       for seed in suspect.random.seeds]
        elif "*" in suspect.checkpoint:
            matches = sorted(glob.glob(suspect.checkpoint))
            if not matches:
                raise ConfigError(f"suspect '{name}': nothing matches {suspect.checkpoint}")
            sources = [(f"{name}/{Path(m).parent.name}", Path(m), None) for m in matches]
        else:
            sources = [(name, Path(suspect.checkpoint), None)]
        for label, checkpoint, random in sources:
            for value in suspect.obfuscations:
                obfuscation = _obfuscation(value)
                suffix = "" if obfuscation.kind == "none" else f"+{obfuscation.kind}"
                planned.append(PlannedSuspect(label + suffix, name, suspect, obfuscation, checkpoint, random))
    if len({p.id for p in planned}) != len(planned):
        raise ConfigError("two suspects of the verification sweep get the same name")
    return planned


class VerifyStore:
    """One row per suspect: status, the key its result was made with, the result, the error."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path)
        self.db.execute("""CREATE TABLE IF NOT EXISTS verifications (id TEXT PRIMARY KEY, status TEXT NOT NULL,
                           key TEXT, results TEXT, error TEXT, seconds REAL, finished REAL)""")
        self.db.commit()

    def done(self, suspect_id: str, key: str) -> bool:
        row = self.db.execute("SELECT key FROM verifications WHERE id = ? AND status = 'done'", (suspect_id,)).fetchone()
        return row is not None and row[0] == key

    def record(self, suspect_id: str, status: str, key: str, results: dict | None, error: str | None,
               seconds: float) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO verifications VALUES (?, ?, ?, ?, ?, ?, ?)",
                            (suspect_id, status, key, json.dumps(results, default=str) if results else None, error,
                             seconds, time.time()))

    def rows(self) -> list[dict]:
        names = ("id", "status", "key", "results", "error", "seconds", "finished")
        return [dict(zip(names, row)) for row in self.db.execute("SELECT * FROM verifications ORDER BY finished")]


def _file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def run_verify_sweep(path: Path, *, progress: bool = True, echo=print) -> list[dict]:
    """Run the `before` sweeps, then verify every suspect not verified with these settings yet; returns the rows."""
    from encsteal.experiments.sweep import run_sweep

    spec = read_spec(path)
    for before in spec.before:
        echo(f"first: encsteal sweep {before}")
        run_sweep(before, progress=progress, echo=echo)
    runs_dir = spec.runs_dir_for(path)
    if not spec.victim.exists():
        raise ConfigError(f"{path}: no victim checkpoint at {spec.victim} (the `before` sweeps did not make it)")
    config = verify_config(base=spec.settings)
    device = resolve_device(spec.device)
    victim = open_victim(spec.victim, device)
    victim_key = {"victim": _file_digest(spec.victim), "settings": config.model_dump(mode="json"),
                  "public": spec.public, "private": spec.private}
    store = VerifyStore(runs_dir / "verify.sqlite")
    planned = plan(spec)
    evidence = None
    for index, suspect in enumerate(planned, 1):
        weights = _file_digest(suspect.checkpoint) if suspect.checkpoint else json.dumps(suspect.random)
        key = hashlib.sha256(json.dumps({**victim_key, "weights": weights, "served": suspect.spec.served,
                                         "obfuscation": suspect.obfuscation.model_dump(mode="json")},
                                        sort_keys=True, default=str).encode()).hexdigest()[:16]
        if store.done(suspect.id, key):
            echo(f"[{index}/{len(planned)}] {suspect.id}: done before, skipped")
            continue
        echo(f"[{index}/{len(planned)}] {suspect.id}")
        if evidence is None:  # the victim's side once, only if some suspect needs it
            evidence, _ = prepare(victim, spec.private, spec.public, config, device)
        started = time.perf_counter()
        try:
            summary = _verify_one(suspect, evidence, config, victim.image_size, runs_dir, device, progress)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # recorded; the sweep goes on with the next suspect
            detail = str(exc) if isinstance(exc, EncstealError) else "".join(traceback.format_exception_only(exc)).strip()
            echo(f"    failed: {detail}")
            store.record(suspect.id, "failed", key, None, detail, time.perf_counter() - started)
            continue
        summary.update({"suspect": suspect.id, "name": suspect.name, "group": suspect.spec.group or suspect.name,
                        "obfuscation": suspect.obfuscation.kind, "expect": suspect.spec.expect,
                        "served": suspect.spec.served, "device": str(device), "hardware": hardware()})
        store.record(suspect.id, "done", key, summary, None, time.perf_counter() - started)
    rows = store.rows()
    write_report(rows, runs_dir, spec, title=f"verification sweep {Path(path).name}")
    return rows


def _verify_one(suspect: PlannedSuspect, evidence, config, image_size: int, runs_dir: Path, device, progress) -> dict:
    if suspect.random is not None:
        arch, stem, seed = suspect.random
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            encoder = build_encoder(arch, stem).eval()
        target = LocalTarget(encoder, image_size=image_size, device=device, batch_size=config.batch_size)
        return verify_suspect(evidence, target, config).summary
    checkpoint = suspect.checkpoint
    if not checkpoint.exists():
        raise EncstealError(f"no suspect checkpoint at {checkpoint}")
    if suspect.obfuscation.kind != "none":
        out = runs_dir / "obfuscated" / f"{suspect.id.replace('/', '__')}.safetensors"
        checkpoint = obfuscate_checkpoint(checkpoint, suspect.obfuscation, out, root=DataConfig().resolved_root(),
                                          device=device)
    identity = _file_digest(checkpoint)
    if suspect.spec.served:
        return _verify_served(checkpoint, evidence, config, runs_dir / "served" / identity[:16], progress)
    encoder, _ = load_encoder(checkpoint, device)
    target = LocalTarget(encoder, image_size=image_size, device=device, batch_size=config.batch_size)
    cache = QueryCache(runs_dir / "caches" / f"{identity[:16]}.sqlite", f"weights:{identity}")
    try:
        return verify_suspect(evidence, CachedTarget(target, cache, run="verify", batch_size=config.batch_size,
                                                     progress=progress), config).summary
    finally:
        cache.close()


def _verify_served(checkpoint: Path, evidence, config, directory: Path, progress: bool) -> dict:
    """The suspect as a real API: a server process on 127.0.0.1 with a fresh ledger and query cache, so that the
    ledger's count of the verifier's queries can be set beside the verification's own."""
    from encsteal.service.client import HttpTarget
    from encsteal.service.ledger import Ledger
    from encsteal.service.server import ServerProcess, ServeSettings

    directory.mkdir(parents=True, exist_ok=True)
    for stale in (directory / "ledger.sqlite", directory / "queries.sqlite"):
        stale.unlink(missing_ok=True)
    ledger = Ledger(directory / "ledger.sqlite")
    key = ledger.create_account("verifier")
    settings = ServeSettings(checkpoint=checkpoint, db=str(directory / "ledger.sqlite"))
    with ServerProcess(settings, startup_timeout=600) as server:  # a loaded machine starts it slowly
        client = HttpTarget(server.url, key, batch_size=config.batch_size)
        cache = QueryCache(directory / "queries.sqlite", f"http:{client.model_id}")
        try:
            outcome = verify_suspect(evidence, CachedTarget(client, cache, run="verify", batch_size=config.batch_size,
                                                            progress=progress), config)
        finally:
            cache.close()
            client.close()
    usage = ledger.usage("verifier")[0]
    return {**outcome.summary, "ledger_queries": usage.used, "ledger_requests": usage.requests}


# --------------------------------------------------------------------------------------------------
# Report

COLUMNS = ("suspect", "group", "obfuscation", "expect", "verdict", "di_p", "di_t", "di_delta_mu", "wm_accuracy",
           "wm_reference_mean", "wm_p", "wm_t", "queries", "queries_paid", "ledger_queries", "served", "seconds",
           "hardware")


def records(rows: list[dict]) -> list[dict]:
    out = []
    for row in rows:
        if row["status"] != "done":
            continue
        r = json.loads(row["results"])
        di, wm = r["methods"].get("dataset-inference", {}), r["methods"].get("watermark", {})
        out.append({"suspect": r["suspect"], "group": r["group"], "obfuscation": r["obfuscation"], "expect": r["expect"],
                    "verdict": r["verdict"], "di_p": di.get("p_value"), "di_t": di.get("statistic"),
                    "di_delta_mu": di.get("delta_mu"), "wm_accuracy": wm.get("accuracy"),
                    "wm_reference_mean": wm.get("reference_mean"), "wm_p": wm.get("p_value"), "wm_t": wm.get("statistic"),
                    "queries": r["queries"], "queries_paid": r["queries_paid"], "ledger_queries": r.get("ledger_queries"),
                    "served": r.get("served", False), "seconds": row["seconds"], "hardware": r.get("hardware"),
                    "alpha": r["alpha"], "combined_alpha": r["combined_alpha"]})
    return out


def write_csv(recs: list[dict], path: Path) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for rec in recs:
            writer.writerow([rec[c] for c in COLUMNS])
    return path


def read_csv(path: Path) -> list[dict]:
    """results.csv back into records (numbers as numbers, empty cells as None)."""
    def value(text: str):
        if text in ("", "None"):
            return None
        if text in ("True", "False"):
            return text == "True"
        try:
            return int(text)
        except ValueError:
            try:
                return float(text)
            except ValueError:
                return text
    with Path(path).open(newline="") as handle:
        return [{key: value(text) for key, text in row.items()} for row in csv.DictReader(handle)]


def _p(value) -> str:
    return "–" if value is None else f"{value:.1e}"


def _f(value, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def min_p(rec: dict) -> float:
    return min(p for p in (rec["di_p"], rec["wm_p"]) if p is not None)


def markdown_report(recs: list[dict], title: str, paper: dict | None = None, failed: list[dict] = (),
                    strong: float = 0.01, alpha: float = 0.05) -> str:
    """The report, from records alone (so that a committed results.csv regenerates it)."""
    stolen = [r for r in recs if r["expect"] == "stolen"]
    independent = [r for r in recs if r["expect"] == "independent"]
    lines = [f"# {title}", ""]
    if recs and recs[0].get("hardware"):
        lines += [f"Measured on {recs[0]['hardware']}; {sum(r['seconds'] or 0 for r in recs):.0f} s of verification "
                  f"for {len(recs)} suspects (median {_median([r['seconds'] for r in recs]):.1f} s each).", ""]
    if stolen:
        caught = [r for r in stolen if min_p(r) < strong]
        lines.append(f"- copies (and the victim) flagged at p < {strong:g} by at least one method: {len(caught)} of "
                     f"{len(stolen)}" + ("" if len(caught) == len(stolen) else
                                        f" (missed: {', '.join(r['suspect'] for r in stolen if min_p(r) >= strong)})"))
        for method, column in (("dataset inference", "di_p"), ("watermark", "wm_p")):
            tested = [r for r in stolen if r[column] is not None]
            if tested:
                lines.append(f"  - by {method}: {sum(r[column] < strong for r in tested)} of {len(tested)}")
    if independent:
        for method, column in (("dataset inference", "di_p"), ("watermark", "wm_p")):
            tested = [r for r in independent if r[column] is not None]
            if tested:
                claims = [r for r in tested if r[column] < alpha]
                lines.append(f"- false claims by {method} at α = {alpha:g}: {len(claims)} of {len(tested)} independent "
                             f"encoders ({100 * len(claims) / len(tested):.0f} %)"
                             + ("" if not claims else f": {', '.join(r['suspect'] for r in claims)}"))
        overall = [r for r in independent if r["verdict"] == "stolen"]
        lines.append(f"- false claims of the overall verdict (smallest p under α / methods): {len(overall)} of "
                     f"{len(independent)}" + ("" if not overall else f": {', '.join(r['suspect'] for r in overall)}"))
    remote = [r for r in recs if r["served"]]
    for r in remote:
        lines.append(f"- served over HTTP: {r['suspect']}, {r['queries']:,} queries sent, {r['ledger_queries']:,} in the "
                     f"provider's ledger; verdict {r['verdict']}")
    lines += ["", "| suspect | truly | obfuscation | DI p | DI t | DI Δμ | WM accuracy | WM refs | WM p | verdict | queries |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|---|---:|"]
    for r in recs:
        lines.append(f"| {r['suspect']} | {r['expect']} | {r['obfuscation']} | {_p(r['di_p'])} | {_f(r['di_t'])} | "
                     f"{_f(r['di_delta_mu'])} | {_f(r['wm_accuracy'], 3)} | {_f(r['wm_reference_mean'], 3)} | "
                     f"{_p(r['wm_p'])} | {r['verdict']} | {r['queries']:,} |")
    for row in failed:
        lines.append(f"| {row['id']} | failed: {row['error']} | | | | | | | | | |")
    if paper:
        lines += ["", "## Beside the slides' ownership table", "",
                  "The slides' dataset-inference figures (CIFAR10 victim, ResNet encoders) against ours: the median over "
                  "the suspects of each kind.", "",
                  "| encoder | slides p | slides Δμ | ours DI p | ours DI Δμ | ours WM p | suspects |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for label, figures in paper.items():
            kind = paper_rows(recs, label)
            lines.append(f"| {label} | {_p(figures.get('p_value'))} | {_f(figures.get('delta_mu'))} | "
                         f"{_p(_median([r['di_p'] for r in kind]))} | {_f(_median([r['di_delta_mu'] for r in kind]))} | "
                         f"{_p(_median([r['wm_p'] for r in kind]))} | {len(kind)} |")
    lines += ["", "DI: dataset inference (one-sided t-test of held-out private against public log-likelihoods under a GMM "
              "fitted on the suspect's representations of private images; Δμ the mean difference). WM: the rotation "
              "watermark's accuracy through an alignment fitted on public images, tested against the reference "
              "encoders' (WM refs: their mean). Verdict: stolen when the smallest p is under α divided by the number "
              "of methods; otherwise inconclusive, counted as independent."]
    return "\n".join(lines) + "\n"


def paper_rows(recs: list[dict], label: str) -> list[dict]:
    """The suspects a row of the slides' table stands for: `selector[+obfuscation]`, the selector a group or what the
    suspects truly are (stolen: the copies, not the victim), the obfuscation none unless named."""
    selector, _, obfuscation = label.partition("+")
    return [r for r in recs if (r["group"] == selector or (r["expect"] == selector and r["group"] != "victim"))
            and r["obfuscation"] == (obfuscation or "none")]


def _median(values) -> float | None:
    values = sorted(v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v)))
    if not values:
        return None
    middle = len(values) // 2
    return values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) / 2


def plot_p_values(recs: list[dict], path: Path, strong: float = 0.01, alpha: float = 0.05) -> Path:
    """−log10 p of each suspect, per method: copies should stand above the strong line, independents below α."""
    fig, axis = plt.subplots(figsize=(max(6.0, 0.22 * len(recs) + 2), 4.2))
    xs = range(len(recs))
    for column, marker, label in (("di_p", "o", "dataset inference"), ("wm_p", "^", "watermark")):
        points = [(x, -math.log10(max(r[column], 1e-300))) for x, r in zip(xs, recs) if r[column] is not None]
        colours = ["tab:red" if recs[x]["expect"] == "stolen" else "tab:blue" for x, _ in points]
        axis.scatter([p[0] for p in points], [p[1] for p in points], c=colours, marker=marker, label=label, s=22)
    axis.axhline(-math.log10(strong), color="tab:red", ls=":", lw=0.8)
    axis.axhline(-math.log10(alpha), color="tab:blue", ls=":", lw=0.8)
    axis.set_xticks(list(xs))
    axis.set_xticklabels([r["suspect"] for r in recs], rotation=90, fontsize=6)
    axis.set_ylabel("−log10 p")
    axis.set_yscale("symlog", linthresh=2)
    axis.set_title(f"red: truly stolen (goal above p = {strong:g}); blue: independent (goal below α = {alpha:g})",
                   fontsize=8)
    axis.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(rows: list[dict], out_dir: Path, spec: VerifySweepSpec, title: str) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    recs = records(rows)
    write_csv(recs, out_dir / "results.csv")
    failed = [row for row in rows if row["status"] != "done"]
    (out_dir / "report.md").write_text(markdown_report(recs, title, spec.paper, failed))
    if recs:
        plot_p_values(recs, out_dir / "pvalues.png")
    return out_dir / "report.md"


def report_verify_sweep(path: Path, out_dir: Path | None = None) -> Path:
    """`encsteal report FILE` for a verification sweep: its report from what its store holds."""
    spec = read_spec(path)
    store_path = spec.runs_dir_for(path) / "verify.sqlite"
    if not store_path.exists():
        raise ConfigError(f"the verification sweep {path} has no results yet: run `encsteal sweep {path}`")
    return write_report(VerifyStore(store_path).rows(), out_dir or spec.runs_dir_for(path), spec,
                        title=f"verification sweep {Path(path).name}")


__all__ = ["VerifySweepSpec", "is_verify_sweep", "markdown_report", "plan", "read_csv", "read_spec",
           "report_verify_sweep", "run_verify_sweep"]
