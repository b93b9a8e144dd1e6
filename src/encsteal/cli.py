"""encsteal's command line: `encsteal demo | run | pretrain | steal | evaluate | sweep | matrix | audit | traffic | report | tables | serve | accounts | verify | presets | config`.

Every command takes a preset (a YAML file or a shipped name such as `demo` or `fmnist-bench/target`) and
`key=value` overrides, e.g. `encsteal run demo attack.epochs=20 surrogate.size=2%`.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from encsteal.config import Config, dump_config, load_config, presets_dir
from encsteal.errors import ConfigError, EncstealError
from encsteal.experiments.rows import WEAK, cell, task_row

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Steal and defend pre-trained encoders served as a service.")
console = Console()
errors = Console(stderr=True)

Preset = Annotated[str, typer.Argument(help="A YAML config file or a shipped preset name (see `encsteal presets`).")]
Overrides = Annotated[Optional[list[str]], typer.Argument(help="key=value overrides, e.g. attack.epochs=20.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]


def _config(preset: str, overrides: list[str] | None) -> Config:
    return load_config(preset, overrides or [])


def _guard(action):
    """Run `action`, turning a user error into one red sentence and exit code 2."""
    try:
        return action()
    except EncstealError as exc:
        errors.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        errors.print("interrupted: paid queries and finished epochs are saved; run the same command again to resume")
        raise typer.Exit(130) from None


RESULT_COLUMNS = {"TA": "TA", "SA": "SA", "SA_over_TA": "SA/TA", "R_spread": "R", "G": "G", "cosine": "cos"}


def print_results(results: dict) -> None:
    table = Table(title=f"{results['name']}: {results['attack']['name']} with {results['queries']} queries")
    longest = max((len(name) for name in results["downstream"]), default=10)
    table.add_column("downstream", justify="left", no_wrap=True, min_width=longest)
    for header in RESULT_COLUMNS.values():
        table.add_column(header, justify="right", no_wrap=True)
    rows = [task_row(results, task) for task in results["downstream"]]
    for row in rows:
        table.add_row(row["task"], *(cell(row, column) for column in RESULT_COLUMNS))
    weak_tasks = [row["task"] for row in rows if WEAK in cell(row, "G")]
    console.print(table)
    console.print("G = (SA − R)/(TA − R): the share of the target's gain over a random encoder that the copy captured; "
                  "cos: mean cosine similarity of target and stolen features.")
    if weak_tasks:
        console.print(f"⚠ {', '.join(weak_tasks)}: the target beats a random encoder by under 2 points, "
                      "too little for G to mean anything.")
    cost = "" if results.get("cost") is None else f"cost {results['cost']:.4g} · "
    cost += "".join(f"billed {count} {unit} · " for unit, count in (results.get("billed") or {}).items())
    console.print(
        f"queries {results['queries']} · {cost}defenses {results.get('defenses', 'none')} · pre-training {results['pretrain_seconds'] or 0:.0f} s · "
        f"stealing {results['steal_seconds']:.0f} s · evaluation {results['evaluate_seconds']:.0f} s"
    )


def _run_pipeline(config: Config, quiet: bool) -> None:
    from encsteal.experiments.pipeline import run_all

    results = run_all(config, progress=not quiet)
    if results is None:  # a torchrun rank other than 0: rank 0 reports
        return
    print_results(results)
    console.print(f"run directory: {config.resolved_run_dir()} (report.md, results.json)")


@app.command()
def demo(
    run_dir: Annotated[Optional[Path], typer.Option(help="Where to write the run (default runs/demo).")] = None,
    quiet: Quiet = False,
) -> None:
    """Pre-train a small target on Fashion-MNIST, steal it from natural-photo crops, and compare TA, SA and R (offline, CPU, minutes)."""
    overrides = [] if run_dir is None else [f"run_dir={run_dir}"]
    _guard(lambda: _run_pipeline(_config("demo", overrides), quiet))


@app.command()
def run(preset: Preset, overrides: Overrides = None, quiet: Quiet = False) -> None:
    """The whole pipeline: pre-train (unless target.checkpoint is set), steal, evaluate, report."""
    _guard(lambda: _run_pipeline(_config(preset, overrides), quiet))


@app.command()
def pretrain(preset: Preset, overrides: Overrides = None, quiet: Quiet = False) -> None:
    """Pre-train the target encoder only (-> <run_dir>/target.safetensors)."""
    from encsteal.experiments.pipeline import Run, pretrain as pretrain_stage

    path = _guard(lambda: pretrain_stage(Run.open(_config(preset, overrides), progress=not quiet)))
    console.print(f"target encoder: {path}")


@app.command()
def steal(preset: Preset, overrides: Overrides = None, quiet: Quiet = False) -> None:
    """Steal the target (target.checkpoint or <run_dir>/target.safetensors) -> <run_dir>/stolen.safetensors."""
    from encsteal.experiments.pipeline import Run, steal as steal_stage

    path = _guard(lambda: steal_stage(Run.open(_config(preset, overrides), progress=not quiet)))
    console.print(f"stolen encoder: {path}")


@app.command()
def evaluate(preset: Preset, overrides: Overrides = None, quiet: Quiet = False) -> None:
    """Downstream TA, SA, R, G and fidelity for the run's target and stolen encoders."""
    from encsteal.experiments.pipeline import Run, evaluate as evaluate_stage

    results = _guard(lambda: evaluate_stage(Run.open(_config(preset, overrides), progress=not quiet)))
    print_results(results)


Db = Annotated[str, typer.Option("--db", help="The account database: a file path (SQLite) or an SQLAlchemy URL.")]


def _duration(text: str) -> float:
    """'90', '90s', '30m', '24h' or '7d' -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (text[:-1], units[text[-1]]) if text and text[-1] in units else (text, 1)
    try:
        seconds = float(number) * unit
    except ValueError:
        raise ConfigError(f"'{text}' is not a duration: write e.g. 3600, 30m, 24h or 7d") from None
    if not seconds > 0 or seconds == float("inf"):
        raise ConfigError(f"a duration must be positive, got '{text}'")
    return seconds


ReplayTtl = Annotated[str, typer.Option(
    "--replay-ttl", help="How long stored replays are kept (3600, 30m, 24h, 7d); a request repeated later is billed again.")]
ReplayMaxMb = Annotated[float, typer.Option(
    "--replay-max-mb", min=0, help="Megabytes of stored replays kept in all; beyond, the oldest are dropped.")]


@app.command()
def serve(
    checkpoint: Annotated[Path, typer.Argument(help="The encoder to serve (.safetensors with its .json sidecar).")],
    db: Db = "eaas.sqlite",
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="uvicorn worker processes.")] = 1,
    threads: Annotated[Optional[int], typer.Option(min=1, help="Torch threads per worker (default: torch's).")] = None,
    defense: Annotated[Optional[list[str]], typer.Option(
        help="A defense NAME:key=value,... applied in the order given; repeat for several "
             "(top-k:k=10, rounding:decimals=2, noise:sigma=0.1, poisoning:epsilon=1,norm=2,shadow=PATH; "
             "per account: b4b:beta=9,center=pretraining, pow:base=200, detection:policy=refuse).")] = None,
    max_batch: Annotated[int, typer.Option(min=1, help="Most images per request.")] = 512,
    max_image_pixels: Annotated[int, typer.Option(min=1, help="Most pixels (width x height) of one image.")] = 4096 * 4096,
    max_request_pixels: Annotated[int, typer.Option(min=1, help="Most pixels of all the images of one request.")] = 4096 * 4096,
    replay_ttl: ReplayTtl = "24h",
    replay_max_mb: ReplayMaxMb = 1024.0,
    description: Annotated[str, typer.Option(help="What GET /v1/model discloses about the model.")] = "",
    model_name: Annotated[Optional[str], typer.Option(
        help="The `model` OpenAI and Cohere clients send (GET /v1/models lists it; default: the model_id).")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N.")] = "cpu",
) -> None:
    """Serve an encoder as an embedding API (POST /v1/embeddings, also in OpenAI's shape; POST /v2/embed in
    Cohere's; docs at /docs), billed per image. The provider's console is at /admin: its token is read from
    $ENCSTEAL_ADMIN_TOKEN, or drawn and printed here."""

    def start() -> None:
        import hashlib
        import os
        import secrets

        import torch

        from encsteal.checkpoint import read_sidecar
        from encsteal.config import DataConfig
        from encsteal.defenses import ACCOUNT_AWARE, parse_defense
        from encsteal.defenses.coverage import PRETRAINING
        from encsteal.service.app import create_app
        from encsteal.service.ledger import masked_url
        from encsteal.service.provider import with_center
        from encsteal.service.server import ServeSettings, serve as run_server

        try:
            defenses = [parse_defense(spec) for spec in defense or []]
        except ValueError as exc:
            raise ConfigError(f"--defense: {exc}") from None
        if any(isinstance(d, ACCOUNT_AWARE) and d.center == PRETRAINING for d in defenses):
            image_size = read_sidecar(checkpoint).get("image_size", 32)
            defenses = [with_center(d, checkpoint, data_root=DataConfig().resolved_root(), image_size=image_size,
                                    device=torch.device(device), batch_size=512)
                        if isinstance(d, ACCOUNT_AWARE) else d for d in defenses]
        token = os.environ.get(ADMIN_TOKEN_ENV) or secrets.token_urlsafe(24)
        settings = ServeSettings(checkpoint=checkpoint, db=db, defenses=defenses, device=device, threads=threads,
                                 max_batch=max_batch, max_image_pixels=max_image_pixels,
                                 max_request_pixels=max_request_pixels, replay_ttl=_duration(replay_ttl),
                                 replay_max_bytes=int(replay_max_mb * 2**20), description=description,
                                 model_name=model_name,
                                 admin_token_hash=hashlib.sha256(token.encode()).hexdigest())
        built = create_app(settings)  # loads the checkpoint and opens the database: any problem shows here
        errors.print(f"serving {checkpoint} on http://{host}:{port} (docs at /docs), accounts in {masked_url(db)}")
        if ADMIN_TOKEN_ENV not in os.environ:
            errors.print(f"console: http://{host}:{port}/admin, admin token (set ${ADMIN_TOKEN_ENV} to choose it):")
            print(token, flush=True)
        run_server(settings, host=host, port=port, workers=workers, log_level="info", app=built)

    _guard(start)


accounts = typer.Typer(no_args_is_help=True, help="The embedding API's accounts: create, list, usage, disable, prune.")
app.add_typer(accounts, name="accounts")


@accounts.command("create")
def accounts_create(
    name: str,
    db: Db = "eaas.sqlite",
    quota: Annotated[Optional[int], typer.Option(min=0, help="Images the account may embed in total (default: unlimited).")] = None,
    price: Annotated[str, typer.Option(help="Price per query (image), exact to a millionth, e.g. 0.001.")] = "0",
    rate: Annotated[Optional[float], typer.Option(help="Requests per second (default: unlimited).")] = None,
    burst: Annotated[int, typer.Option(min=1, help="Requests allowed at once before the rate applies.")] = 1,
) -> None:
    """Open an account and print its API key (shown this once; only its hash is stored)."""
    from encsteal.service.ledger import Ledger

    key = _guard(lambda: Ledger(db).create_account(name, quota=quota, price=price, rate=rate, burst=burst))
    errors.print(f"account '{name}' created; its API key (shown once):")
    print(key)


ADMIN_TOKEN_ENV = "ENCSTEAL_ADMIN_TOKEN"


def _usage_table(rows, figures: dict) -> Table:
    """Usage per account, with what the account-aware defenses show of it (coverage, flag)."""
    from encsteal.service.ledger import format_money

    table = Table()
    columns = ["account", "queries", "quota", "left", "requests", "price", "spent", "coverage %", "status"]
    if not figures:  # no account-aware defense has answered anyone: the usage alone
        columns.remove("coverage %")
    for column in columns:
        table.add_column(column, justify="left" if column in ("account", "status") else "right")
    for row in rows:
        shown = figures.get(row.name)
        coverage = "–" if shown is None or shown.coverage is None else f"{shown.coverage:.2f}"
        status = "disabled" if row.disabled else "active"
        if shown is not None and shown.flagged:
            status += ", flagged" + ("" if shown.flagged_at is None else
                                     f" {time.strftime('%Y-%m-%d %H:%M', time.localtime(shown.flagged_at))}")
        table.add_row(row.name, str(row.used), "∞" if row.quota is None else str(row.quota),
                      "∞" if row.remaining is None else str(row.remaining), str(row.requests),
                      format_money(row.price_micros), format_money(row.spent_micros),
                      *([coverage] if figures else []), status)
    return table


@accounts.command("list")
def accounts_list(db: Db = "eaas.sqlite") -> None:
    """Every account with its usage (money exact, in the provider's currency)."""
    from encsteal.service.ledger import Ledger

    ledger = _guard(lambda: Ledger(db))
    console.print(_usage_table(_guard(ledger.usage), ledger.defense_figures()))


@accounts.command("usage")
def accounts_usage(name: str, db: Db = "eaas.sqlite") -> None:
    """One account's queries, requests and spending, from the ledger."""
    from encsteal.service.ledger import Ledger

    ledger = _guard(lambda: Ledger(db))
    console.print(_usage_table(_guard(lambda: ledger.usage(name)), ledger.defense_figures()))


@accounts.command("disable")
def accounts_disable(name: str, db: Db = "eaas.sqlite") -> None:
    """Refuse the account's requests from now on (403)."""
    from encsteal.service.ledger import Ledger

    _guard(lambda: Ledger(db).set_disabled(name, True))
    console.print(f"account '{name}' disabled")


@accounts.command("enable")
def accounts_enable(name: str, db: Db = "eaas.sqlite") -> None:
    """Accept a disabled account's requests again."""
    from encsteal.service.ledger import Ledger

    _guard(lambda: Ledger(db).set_disabled(name, False))
    console.print(f"account '{name}' enabled")


@accounts.command("prune")
def accounts_prune(db: Db = "eaas.sqlite", replay_ttl: ReplayTtl = "24h", replay_max_mb: ReplayMaxMb = 1024.0) -> None:
    """Drop stored replays older than --replay-ttl, then the oldest beyond --replay-max-mb (what `serve` does as it
    runs). Billing records stay; a request repeated after its replay was dropped is billed again. SQLite reuses
    the space freed; VACUUM the file to shrink it."""
    from encsteal.service.ledger import Ledger

    def prune():
        ledger = Ledger(db)
        return ledger.prune(max_age=_duration(replay_ttl), max_bytes=int(replay_max_mb * 2**20)), ledger.replay_bytes()

    pruned, left = _guard(prune)
    console.print(f"dropped {pruned.replays} stored replays ({pruned.bytes / 2**20:.1f} MB); "
                  f"{left / 2**20:.1f} MB of replays kept")


@app.command()
def sweep(
    grid: Annotated[Path, typer.Argument(help="A sweep file: base preset, cases and/or a grid of key values.")],
    executor: Annotated[str, typer.Option(help="inline (here, one run after another) or submitit (jobs).")] = "inline",
    cluster: Annotated[str, typer.Option(help="submitit: auto, slurm, local (processes here) or debug.")] = "auto",
    partition: Annotated[Optional[str], typer.Option(help="submitit on SLURM: the partition.")] = None,
    timeout_min: Annotated[int, typer.Option(min=1, help="submitit: a job's time limit (minutes).")] = 24 * 60,
    gpus: Annotated[int, typer.Option(min=0, help="submitit: GPUs per job.")] = 0,
    cpus: Annotated[Optional[int], typer.Option(min=1, help="submitit: CPUs per job.")] = None,
    quiet: Quiet = False,
) -> None:
    """Run a grid of runs, resumably; results in <runs_dir>/results.sqlite, report.md and results.csv. A file with a
    `verify:` section verifies suspects against a victim instead (encsteal.experiments.verify_sweep)."""
    from encsteal.experiments.sweep import read_spec, run_sweep
    from encsteal.experiments.sweep_report import markdown_table

    from encsteal.experiments.verify_sweep import is_verify_sweep

    if is_verify_sweep(grid):  # a `verify:` file: one victim against many suspects
        from encsteal.experiments.verify_sweep import run_verify_sweep

        _guard(lambda: run_verify_sweep(grid, progress=not quiet, echo=console.print))
        console.print(f"report: {_guard(lambda: _verify_report_path(grid))}")
        return

    def start():
        if executor == "inline":
            return run_sweep(grid, progress=not quiet, echo=console.print)
        if executor != "submitit":
            raise ConfigError(f"--executor {executor}: use inline or submitit")
        from encsteal.experiments.dispatch import SubmititExecutor

        jobs = SubmititExecutor(read_spec(grid).runs_dir_for(grid) / "jobs", cluster, partition, timeout_min, gpus, cpus)
        return run_sweep(grid, progress=False, echo=console.print, executor=jobs)

    console.print(markdown_table(_guard(start)))


@app.command()
def matrix(
    spec: Annotated[Path, typer.Argument(help="A matrix file: base preset, attacks, defenses (see docs/matrix.md).")],
    cell: Annotated[Optional[list[str]], typer.Option("--cell", help="Run only this cell, <attack>__<defense> "
                                                      "(repeatable).")] = None,
    plan_only: Annotated[bool, typer.Option("--plan", help="List the cells and their runs; run nothing.")] = False,
    report_only: Annotated[bool, typer.Option("--report", help="Write the report from what has finished; run "
                                              "nothing.")] = False,
    executor: Annotated[str, typer.Option(help="inline (here, one run after another) or submitit (jobs).")] = "inline",
    cluster: Annotated[str, typer.Option(help="submitit: auto, slurm, local (processes here) or debug.")] = "auto",
    partition: Annotated[Optional[str], typer.Option(help="submitit on SLURM: the partition.")] = None,
    gpus: Annotated[int, typer.Option(min=0, help="submitit: GPUs per job.")] = 0,
    quiet: Quiet = False,
) -> None:
    """Every attack against every defense, a sweep underneath: G, SA/TA, queries, money, proof-of-work, flags, the
    ownership verdict on each copy and the legitimate users' loss; writes matrix.md, matrix.csv and heat maps."""
    from encsteal.experiments.matrix import plan_matrix, read_matrix, run_matrix, write_matrix_report

    if plan_only:
        _, runs_dir, planned = _guard(lambda: plan_matrix(spec, cell or []))
        for run in planned:
            console.print(run.id)
        console.print(f"{len(planned)} run(s) in {runs_dir}")
        return
    if report_only:
        console.print(f"report: {_guard(lambda: write_matrix_report(spec))}")
        return

    def start() -> Path:
        jobs = None
        if executor == "submitit":
            from encsteal.experiments.dispatch import SubmititExecutor

            jobs = SubmititExecutor(read_matrix(spec).runs_dir_for(spec) / "jobs", cluster, partition, gpus=gpus)
        elif executor != "inline":
            raise ConfigError(f"--executor {executor}: use inline or submitit")
        return run_matrix(spec, selected=cell or [], progress=not quiet and jobs is None, echo=console.print,
                          executor=jobs)

    console.print(f"report: {_guard(start)}")


@app.command()
def audit(
    checkpoint: Annotated[Path, typer.Argument(help="The provider's encoder (.safetensors), as it would be served.")],
    defense: Annotated[Optional[list[str]], typer.Option("--defense", help="A deployment to audit beside the "
                       "undefended encoder, NAME:key=value,...; 'a > b' stacks defenses (repeatable).")] = None,
    preset: Annotated[str, typer.Option(help="The preset the runs start from (data, probes, customers).")] = "demo",
    budget: Annotated[Optional[list[str]], typer.Option("--budget", help="Query budgets, a count or a share such as "
                      "5% (repeatable; default 1%, 2%, 5%).")] = None,
    attack: Annotated[Optional[list[str]], typer.Option("--attack", help="Attacks (default: stolenencoder, "
                      "cont-steal and the adaptive ones that face a deployment).")] = None,
    price: Annotated[float, typer.Option(min=0, help="Money per image answered.")] = 0.0001,
    public: Annotated[Optional[str], typer.Option(help="DATASET[:split] the target never trained on, for the "
                      "ownership verification (default: its pre-training dataset's test split).")] = None,
    seed: Annotated[Optional[list[int]], typer.Option("--seed", help="Seeds (repeatable; default 0).")] = None,
    out: Annotated[Path, typer.Option(help="Where the runs, audit.json and audit.html go.")] = Path("runs/audit"),
    overrides: Overrides = None,
    quiet: Quiet = False,
) -> None:
    """How cheaply can this encoder be copied, and could its owner prove it? The strongest attacks at growing
    budgets against each deployment; writes audit.html (self-contained) and audit.json."""
    from encsteal.experiments.audit import BUDGETS, run_audit

    page = _guard(lambda: run_audit(checkpoint, defense or [], out, preset=preset, budgets=budget or list(BUDGETS),
                                    attacks=attack, price=price, seeds=seed or [0], public=public,
                                    overrides=overrides or [], progress=not quiet, echo=console.print))
    console.print(f"report: {page} (and audit.json beside it)")


def _verify_report_path(grid: Path) -> Path:
    from encsteal.experiments.verify_sweep import read_spec

    return read_spec(grid).runs_dir_for(grid) / "report.md"


@app.command()
def traffic(
    spec: Annotated[Path, typer.Argument(help="A traffic file: target, customers, attacker streams, deployments.")],
) -> None:
    """Mixed traffic (customers and attackers' query streams) against defended deployments: what each account
    pays and keeps, and the detection ROC; writes accounts.csv, report.md and roc.png."""
    from encsteal.experiments.traffic import run_traffic

    console.print(f"report: {_guard(lambda: run_traffic(spec, echo=console.print))}")


@app.command("defense-report")
def defense_report(
    sweep_file: Annotated[Path, typer.Argument(help="The stealing sweep (its runs finished, or some of them).")],
    traffic_file: Annotated[Path, typer.Argument(help="The traffic file (run with `encsteal traffic`).")],
    out: Annotated[Path, typer.Option(help="Where to write the report and its CSV files.")],
) -> None:
    """The account-aware defenses scored on both sides: the attacker's G and the customers' loss per run, the
    detection ROC and proof-of-work prices of the traffic, each goal met or not."""
    from encsteal.experiments.defense_scores import write_defense_report

    console.print(f"report: {_guard(lambda: write_defense_report(sweep_file, traffic_file, out))}")


@app.command()
def report(
    grid: Annotated[Path, typer.Argument(help="A sweep file whose runs have (partly) finished.")],
    x: Annotated[Optional[str], typer.Option(help="The plots' x axis: queries or a dotted config key.")] = None,
    series: Annotated[Optional[str], typer.Option(help="A dotted config key: one line per value.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Where to write (default: the sweep's runs directory).")] = None,
) -> None:
    """Write a sweep's report.md, results.csv and plot from what its runs have stored so far."""
    from encsteal.experiments.sweep import report_sweep, stored_rows
    from encsteal.experiments.verify_sweep import is_verify_sweep, report_verify_sweep

    if is_verify_sweep(grid):
        console.print(f"report: {_guard(lambda: report_verify_sweep(grid, out))}")
        return

    def write() -> Path:
        spec, rows = stored_rows(grid)
        return report_sweep(grid, spec, rows, x=x, series=series, out_dir=out)

    console.print(f"report: {_guard(write)}")


@app.command()
def tables(
    pages: Annotated[Optional[list[Path]], typer.Argument(help="Markdown pages (default: README.md and docs/**/*.md).")] = None,
    check: Annotated[bool, typer.Option("--check", help="Rewrite nothing; exit 1 if a table differs from its source.")] = False,
) -> None:
    """Regenerate the results tables in Markdown pages from the CSV/JSON files their markers name."""
    from encsteal.experiments.doc_tables import pages as all_pages, update

    stale = _guard(lambda: update(pages or all_pages(Path(".")), write=not check))
    for path in stale:
        console.print(f"{'differs from its sources' if check else 'regenerated'}: {path}")
    if check and stale:
        raise typer.Exit(1)


@app.command()
def verify(
    victim: Annotated[Path, typer.Option("--victim", help="The victim's checkpoint (its watermark, if any, beside it).")],
    suspect: Annotated[str, typer.Option("--suspect", help="A suspect checkpoint, or an embedding API's URL "
                                                             "(http://host:port; key from --api-key-env).")],
    public: Annotated[str, typer.Option("--public", help="DATASET[:split] of images the victim never trained on.")],
    private: Annotated[Optional[str], typer.Option("--private", help="DATASET[:split] of the victim's training "
                                                   "images (default: its recorded pre-training images).")] = None,
    max_queries: Annotated[Optional[int], typer.Option("--max-queries", min=1, help="Refuse to send the suspect more "
                                                       "images than this.")] = None,
    alpha: Annotated[float, typer.Option("--alpha", min=0, max=1, help="p < alpha: stolen; otherwise inconclusive.")] = 0.05,
    out: Annotated[Optional[Path], typer.Option("--out", help="Where verify.json, verify.md, verify.png and the "
                                                "query cache go (default runs/verify/<suspect>).")] = None,
    api_key_env: Annotated[str, typer.Option(help="The environment variable holding the suspect API's key.")] = "ENCSTEAL_API_KEY",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps: where local encoders run.")] = "auto",
    settings: Annotated[Optional[list[str]], typer.Argument(help="key=value settings, e.g. dataset_inference.components=20 "
                                                             "watermark.images=50.")] = None,
    quiet: Quiet = False,
) -> None:
    """Is the suspect a copy of the victim? Dataset inference and the rotation watermark, each a p-value."""
    from encsteal.experiments.verification import run_verification, verify_config

    def start() -> dict:
        config = verify_config([*(settings or []), f"alpha={alpha}"])
        return run_verification(victim, suspect, public=public, private=private, config=config, max_queries=max_queries,
                                out=out, device=device, api_key_env=api_key_env, progress=not quiet)

    result = _guard(start)
    table = Table(title=f"{suspect}: {result['verdict']}")
    for column in ("method", "statistic", "p-value", "Δμ", "queries", "verdict"):
        table.add_column(column, justify="left" if column in ("method", "verdict") else "right")
    for name, row in result["methods"].items():
        if "skipped" in row:
            table.add_row(name, "", "", "", "", f"skipped: {row['skipped']}")
            continue
        verdict = row["verdict"] + ("" if row["verdict"] == "stolen" else " (inconclusive)")
        table.add_row(name, f"{row['statistic']:.2f}", f"{row['p_value']:.2e}", f"{row['delta_mu']:.3f}",
                      f"{result['queries']:,}", verdict)
    console.print(table)
    console.print(f"overall: {result['verdict']} (smallest p {result['min_p_value']:.2e} against α/"
                  f"{round(result['alpha'] / result['combined_alpha'])}); queries sent {result['queries']:,}, "
                  f"bought now {result['queries_paid']:,}; written to {result['out']}")


@app.command()
def presets() -> None:
    """List the shipped presets."""
    root = presets_dir()
    for path in sorted(root.rglob("*.yaml")):
        console.print(str(path.relative_to(root).with_suffix("")))


@app.command("config")
def show_config(preset: Preset, overrides: Overrides = None) -> None:
    """Print the resolved config (what a run would write to config.yaml)."""
    text = _guard(lambda: dump_config(_config(preset, overrides)))
    sys.stdout.write(text)


if __name__ == "__main__":
    app()
