"""`encsteal sweep GRID.yaml`: many runs of one preset over a grid of settings, resumable, with one result store.

    base: defenses/served            # the preset every run starts from
    overrides: [attack.epochs=50]    # key=value for every run (optional)
    cases:                           # named runs (optional); each a mapping of key: value
      none: {}
      top-k-10: {target.defenses: [{name: top-k, k: 10}]}
    grid:                            # a cartesian product over keys (optional), crossed with the cases
      attack.lam: [0, 20]
    seeds: [0, 1, 2]                 # every run once per seed (optional); reports give mean ± 95 % interval
    share_queries: true              # runs against the same target share one query cache (default true)
    runs_dir: runs/sweeps/defenses   # default: runs/sweeps/<file name>
    report: {x: queries, series: attack.loss}   # what the report plots (optional; see sweep_report)

Each run is `<runs_dir>/<run id>` (the case's name and the grid's values). Results go to
`<runs_dir>/results.sqlite`, one row per run with its status, config, results and error: a finished run is
skipped when the sweep is started again (unless the file now gives it other settings: then the sweep stops and
says which), a failing run is recorded and the others go on. Runs whose target
would be pre-trained with the same recipe share one target checkpoint under `<runs_dir>/targets/`. At the end
`<runs_dir>/report.md`, `results.csv` and a plot are written (`encsteal report` writes them again).

Seeds. With `seeds: [0, 1, 2]` every run of cases x grid is repeated once per seed, as `<run id>__seed=<s>` with
the top-level `seed` set to s. The seed draws everything random in a run: the surrogate images (and the
attacker's pool), the copy's initialisation, batches and augmentations, and the probes; a run whose target
is pre-trained in the sweep (no target.checkpoint) also pre-trains one target per seed, so the whole
experiment is repeated, while a run against a given target.checkpoint repeats only the attacker's side. The
report then gives, per run of cases x grid and downstream task, the mean over the seeds and the half-width
of its 95 % confidence interval, t(0.975, n - 1) · s / √n (Student's t with n - 1 degrees of freedom, s the
sample standard deviation over the n seeds that finished): report.md as `mean ± half-width`, results.csv as a
column per measure and a `<measure>_ci95` column beside it (n in `seeds`), the plots as error bars; the
per-seed rows go to `results-per-seed.csv`. A grid or case that sets `seed` itself cannot be combined with
`seeds`.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import sqlite3
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from encsteal.checkpoint import file_digest
from encsteal.config import Config, dump_config, load_config
from encsteal.defenses import ACCOUNT_AWARE
from encsteal.defenses.poisoning import PoisoningConfig
from encsteal.errors import ConfigError, EncstealError
from encsteal.service.provider import shadow_recipe


class ReportSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    x: str | None = None
    """What goes on the plots' x axis: `queries` or a dotted config key (default: the first numeric grid key)."""
    series: str | None = None
    """A dotted config key: one line per value (default: the next grid key)."""


class Published(BaseModel):
    """A paper's figures (%) for one row and downstream task of its table."""

    model_config = ConfigDict(extra="forbid")
    TA: float | None = None
    SA: float | None = None
    label: str | None = None
    """The paper's row and task as the paper names them (`k = 512, GTSRB`; `MNIST, all 70,000 digits`), where they
    differ from the run's id and our task; the report shows it beside ours."""


class SweepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    base: str
    overrides: list[str] = []
    cases: dict[str, dict] = Field(default_factory=lambda: {})
    grid: dict[str, list] = Field(default_factory=lambda: {})
    seeds: list[int] = []
    """Repeat every run once per seed (see the module docstring); empty: each run once, with its config's seed."""
    share_queries: bool = True
    runs_dir: Path | None = None
    report: ReportSpec = ReportSpec()
    paper: dict[str, dict[str, Published]] = Field(default_factory=lambda: {})
    """Published figures where the sweep mirrors a paper's table: run id -> task -> {TA, SA, label}; the report
    puts them beside ours on the run's task of that name, else on its first task (a CPU twin on other data)."""

    def published(self) -> dict[str, dict[str, dict]]:
        """`paper` as plain dicts, without the figures the paper does not give."""
        return {run: {task: figures.model_dump(exclude_none=True) for task, figures in tasks.items()}
                for run, tasks in self.paper.items()}
    paper_hours: dict[str, dict[Literal["pretrain", "steal"], float]] = Field(default_factory=lambda: {})
    """Published training times (hours) where the sweep mirrors a compute table (StolenEncoder Table III):
    run id -> {pretrain, steal}; the report's compute table puts them beside ours."""

    def runs_dir_for(self, path: Path) -> Path:
        return self.runs_dir or Path("runs") / "sweeps" / path.stem


@dataclass
class PlannedRun:
    id: str
    config: Config


def read_spec(path: Path) -> SweepSpec:
    if not path.is_file():
        raise ConfigError(f"no sweep file {path}")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
        return SweepSpec.model_validate(tree)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _as_override(key: str, value) -> str:
    return f"{key}={yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix('...').strip()}"


def _value_label(value) -> str:
    text = value if isinstance(value, (str, int, float, bool)) else json.dumps(value, separators=(",", ":"))
    return str(text).replace("/", "-").replace(" ", "")


SEED_PART = "seed="
"""How a run's seed shows in its id under `seeds`: the id's last part, `<run id>__seed=<s>`."""


def plan(spec: SweepSpec, runs_dir: Path) -> list[PlannedRun]:
    """Every run of the sweep, in order, with its resolved config (errors surface here, before any run)."""
    cases = spec.cases or {"": {}}
    keys = list(spec.grid)
    if spec.seeds and ("seed" in keys or any("seed" in case for case in cases.values())):
        raise ConfigError("the sweep gives `seeds` and also sets `seed` in its grid or a case: give the seeds once")
    if len(set(spec.seeds)) != len(spec.seeds):
        raise ConfigError(f"seeds: {spec.seeds} names a seed twice")
    runs = []
    for case_name, case in cases.items():
        for values in itertools.product(*(spec.grid[key] for key in keys)) if keys else [()]:
            parts = [case_name] if case_name else []
            parts += [f"{key.split('.')[-1]}={_value_label(value)}" for key, value in zip(keys, values)]
            settings = [*(_as_override(k, v) for k, v in case.items()), *(_as_override(k, v) for k, v in zip(keys, values))]
            for seed in spec.seeds or [None]:
                run_id = "__".join([*parts, *([] if seed is None else [f"{SEED_PART}{seed}"])]) or "run"
                overrides = [*spec.overrides, *settings, *([] if seed is None else [f"seed={seed}"]),
                             f"run_dir={runs_dir / run_id}"]
                try:
                    config = load_config(spec.base, overrides)
                except ConfigError as exc:
                    raise ConfigError(f"sweep run '{run_id}': {exc}") from None
                runs.append(PlannedRun(run_id, config))
    if len({run.id for run in runs}) != len(runs):
        raise ConfigError("two runs of the sweep get the same id; give the cases distinct names")
    for field in ("paper", "paper_hours"):
        unknown = sorted(set(getattr(spec, field)) - {run.id for run in runs})
        if unknown:
            raise ConfigError(f"{field}: no run of the sweep is called {', '.join(unknown)}")
    return runs


def _digest(tree) -> str:
    return hashlib.sha256(json.dumps(tree, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _shadow_identity(poisoning: PoisoningConfig, config: Config) -> dict | str | None:
    """What a poisoning defense's shadow encoder is: its weights' digest when given, else the recipe the run will
    train it by (the target is in the identity already)."""
    if poisoning.shadow is None:
        return shadow_recipe(poisoning, config.attack, config.seed)
    return file_digest(poisoning.shadow) if poisoning.shadow.is_file() else None


def share(config: Config, runs_dir: Path, share_queries: bool) -> Config:
    """Point the run at the sweep's shared target checkpoint, query cache and probe cache."""
    update = {}
    if config.target.checkpoint is None and config.target.kind != "http":
        recipe = {"pretrain": config.pretrain.recipe(), "data": config.data.model_dump(mode="json"),
                  "seed": config.seed}
        update["checkpoint"] = runs_dir / "targets" / _digest(recipe) / "target.safetensors"
    if share_queries and config.target.query_cache is None:
        # one cache per target identity: checkpoint (or URL) and defenses, poisoning's shadow encoders included
        identity = {"kind": config.target.kind, "checkpoint": str(update.get("checkpoint", config.target.checkpoint)),
                    "url": config.target.url, "defenses": [d.model_dump(mode="json") for d in config.target.defenses]}
        shadows = [_shadow_identity(d, config) for d in config.target.defenses if isinstance(d, PoisoningConfig)]
        if shadows:
            identity["shadows"] = shadows
        if config.target.accounts != 1:
            identity["accounts"] = config.target.accounts
        if config.attack.adaptive.below_cache():  # aligned answers, other accounts, cover in the stream
            identity["adaptive"] = config.attack.adaptive.below_cache()
        if any(isinstance(d, ACCOUNT_AWARE) for d in config.target.defenses):
            # answers depend on the account's stream: shared only by runs that ask the same images in the same order
            identity["stream"] = {"surrogate": config.surrogate.model_dump(mode="json"), "seed": config.seed,
                                  "data": config.data.model_dump(mode="json", exclude={"root"}),
                                  "batch": config.target.query_batch_size,
                                  **({"adaptive": config.attack.adaptive.model_dump(mode="json")}
                                     if config.attack.adaptive != type(config.attack.adaptive)() else {})}
        update["query_cache"] = runs_dir / "caches" / f"{_digest(identity)}.sqlite"
    if update:
        config = config.model_copy(update={"target": config.target.model_copy(update=update)})
    if config.attack.pool_simclr.epochs and config.attack.pool_simclr.cache is None:  # one per pool, recipe and seed
        pool_simclr = config.attack.pool_simclr.model_copy(update={"cache": runs_dir / "caches" / "pool-encoders"})
        config = config.model_copy(update={"attack": config.attack.model_copy(update={"pool_simclr": pool_simclr})})
    if config.evaluate.probe_cache is None:  # R's random inits (and an undefended target) are probed once per sweep
        config = config.model_copy(update={"evaluate": config.evaluate.model_copy(
            update={"probe_cache": runs_dir / "caches" / "probes.sqlite"})})
    return config


class ResultStore:
    """One row per run: status (done or failed), the resolved config, results.json's content, the error."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("""CREATE TABLE IF NOT EXISTS runs (id TEXT PRIMARY KEY, status TEXT NOT NULL, config TEXT,
                           results TEXT, error TEXT, seconds REAL, finished REAL)""")
        self.db.commit()

    def done_config(self, run_id: str) -> dict | None:
        """The resolved config of a finished run (None unless the run is recorded as done)."""
        row = self.db.execute("SELECT config FROM runs WHERE id = ? AND status = 'done'", (run_id,)).fetchone()
        return yaml.safe_load(row[0]) if row else None

    def record(self, run_id: str, status: str, config: Config, results: dict | None, error: str | None, seconds: float) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?, ?, ?, ?)",
                            (run_id, status, dump_config(config), json.dumps(results) if results else None, error,
                             seconds, time.time()))

    def rows(self) -> list[dict]:
        names = ("id", "status", "config", "results", "error", "seconds", "finished")
        return [dict(zip(names, row)) for row in self.db.execute("SELECT * FROM runs ORDER BY finished")]


def ensure_target(config: Config, progress: bool) -> None:
    """Pre-train a shared target once, in its own directory, before the runs that use it."""
    from encsteal.experiments.pipeline import Run, pretrain

    checkpoint = config.target.checkpoint
    if checkpoint is None or checkpoint.exists() or config.target.kind == "http":
        return
    target_config = config.model_copy(update={"run_dir": checkpoint.parent, "name": "sweep-target",
                                              "target": config.target.model_copy(update={"checkpoint": None})})
    pretrain(Run.open(target_config, progress))


@dataclass
class Outcome:
    """What became of one run: recorded in the store as one row."""

    run_id: str
    status: str  # done | failed
    results: dict | None
    error: str | None
    seconds: float


def execute(run_id: str, config: Config, progress: bool) -> Outcome:
    """One run of a sweep (its shared target pre-trained first if missing); a failure is an Outcome, not an exception."""
    from encsteal.experiments.pipeline import run_all

    started = time.perf_counter()
    try:
        ensure_target(config, progress)
        results = run_all(config, progress)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # recorded, and the sweep goes on with the next run
        detail = str(exc) if isinstance(exc, EncstealError) else "".join(traceback.format_exception_only(exc)).strip()
        return Outcome(run_id, "failed", None, detail, time.perf_counter() - started)
    return Outcome(run_id, "done", results, None, time.perf_counter() - started)


def pending(path: Path, echo=print) -> tuple[SweepSpec, ResultStore, list[PlannedRun]]:
    """The sweep's spec, store, and the runs still to do (with shared targets and caches)."""
    spec = read_spec(path)
    store, todo = pending_runs(spec, spec.runs_dir_for(path), str(path), echo)
    return spec, store, todo


def pending_runs(spec: SweepSpec, runs_dir: Path, source: str, echo=print) -> tuple[ResultStore, list[PlannedRun]]:
    """The store of a sweep (from a file, or made by another command: `source` names it in errors) and its runs
    still to do."""
    planned = plan(spec, runs_dir)
    store = ResultStore(runs_dir / "results.sqlite")
    todo, stale = [], []
    for index, run in enumerate(planned, 1):
        config = share(run.config, runs_dir, spec.share_queries)
        recorded = store.done_config(run.id)
        if recorded is not None:
            changed = changed_keys(recorded, yaml.safe_load(dump_config(config)))
            if not changed:
                echo(f"[{index}/{len(planned)}] {run.id}: done before, skipped")
                continue
            if (runs_dir / run.id).exists():  # its outputs are of the old settings: never overwritten unasked
                stale.append(f"{run.id} ({', '.join(changed[:3])}{', ...' if len(changed) > 3 else ''})")
                continue
            echo(f"[{index}/{len(planned)}] {run.id}: settings changed and its directory is gone, run again")
        todo.append(PlannedRun(run.id, config))
    if stale:
        raise ConfigError(
            f"{source}: these runs were done with other settings than the file now gives them: {'; '.join(stale)}. "
            f"Give the changed cases new names to keep both, or delete their directories under {runs_dir} to run them again"
        )
    return store, todo


def changed_keys(recorded: dict | None, planned: dict, prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between a recorded and a planned config. Left out: where things lie
    (run_dir, which follows the run's id, and data.root: the target's recipe leaves it out too), and keys only one
    of the two has (a setting another version of encsteal added or removed; new settings keep the old behaviour)."""
    if not isinstance(recorded, dict) or not isinstance(planned, dict):
        return [] if recorded == planned else [prefix.rstrip(".") or "config"]
    changed = []
    for key in (k for k in planned if k in recorded):
        name = f"{prefix}{key}"
        if name not in ("run_dir", "data.root"):
            changed += changed_keys(recorded[key], planned[key], f"{name}.")
    return changed


def run_sweep(path: Path, *, progress: bool = True, echo=print, executor=None) -> list[dict]:
    """Run every unfinished run of the sweep, here one after another, or as jobs of `executor`
    (encsteal.experiments.dispatch); returns the store's rows."""
    spec = read_spec(path)
    rows = run_planned(spec, spec.runs_dir_for(path), str(path), progress=progress, echo=echo, executor=executor)
    report_sweep(path, spec, rows)
    return rows


def run_planned(spec: SweepSpec, runs_dir: Path, source: str, *, progress: bool = True, echo=print,
                executor=None) -> list[dict]:
    """Run every unfinished run of a sweep's spec; returns the store's rows (no report)."""
    store, todo = pending_runs(spec, runs_dir, source, echo)
    if executor is None:
        for index, run in enumerate(todo, 1):
            echo(f"[{index}/{len(todo)}] {run.id}")
            outcome = execute(run.id, run.config, progress)
            if outcome.status == "failed":
                echo(f"    failed: {outcome.error}")
            store.record(run.id, outcome.status, run.config, outcome.results, outcome.error, outcome.seconds)
    else:
        for run, outcome in executor.run(todo, echo):
            store.record(run.id, outcome.status, run.config, outcome.results, outcome.error, outcome.seconds)
    return store.rows()


def report_sweep(path: Path, spec: SweepSpec, rows: list[dict], x: str | None = None, series: str | None = None,
                 out_dir: Path | None = None) -> Path:
    """Write the sweep's report.md, results.csv and plot into out_dir (default: its runs directory)."""
    from encsteal.experiments.sweep_report import write_sweep_report

    return write_sweep_report(rows, out_dir or spec.runs_dir_for(path), title=f"sweep {path.name}",
                              grid_keys=list(spec.grid), x=x or spec.report.x, series=series or spec.report.series,
                              paper=spec.published(), paper_hours=spec.paper_hours, seeds=bool(spec.seeds),
                              wall_seconds=sum(row["seconds"] or 0 for row in rows))


def stored_rows(path: Path) -> tuple[SweepSpec, list[dict]]:
    """The sweep file's spec and the rows its store holds so far."""
    spec = read_spec(path)
    store_path = spec.runs_dir_for(path) / "results.sqlite"
    if not store_path.exists():
        raise ConfigError(f"the sweep {path} has no results yet ({store_path} does not exist): run `encsteal sweep {path}`")
    return spec, ResultStore(store_path).rows()
