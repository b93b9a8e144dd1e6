"""encsteal's command line: `encsteal demo | run | pretrain | steal | evaluate | sweep | report | tables | serve | accounts | presets | config`.

Every command takes a preset (a YAML file or a shipped name such as `demo` or `fmnist-bench/target`) and
`key=value` overrides, e.g. `encsteal run demo attack.epochs=20 surrogate.size=2%`.
"""

from __future__ import annotations

import sys
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


def shown_database(db: str) -> str:
    """The account database as it may be printed: a file path as it is, an SQLAlchemy URL with its password
    masked (postgresql://user:***@host/db)."""
    if "://" not in db:
        return db
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(db).render_as_string(hide_password=True)
    except ArgumentError:
        return "the database URL given"  # unparsable: it may still hold a password


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
             "(top-k:k=10, rounding:decimals=2, noise:sigma=0.1, poisoning:epsilon=1,norm=2,shadow=PATH).")] = None,
    max_batch: Annotated[int, typer.Option(min=1, help="Most images per request.")] = 512,
    description: Annotated[str, typer.Option(help="What GET /v1/model discloses about the model.")] = "",
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N.")] = "cpu",
) -> None:
    """Serve an encoder as an embedding API (POST /v1/embeddings; docs at /docs), billed per image."""

    def start() -> None:
        from encsteal.defenses import parse_defense
        from encsteal.service.server import ServeSettings, serve as run_server

        try:
            defenses = [parse_defense(spec) for spec in defense or []]
        except ValueError as exc:
            raise ConfigError(f"--defense: {exc}") from None
        settings = ServeSettings(checkpoint=checkpoint, db=db, defenses=defenses, device=device, threads=threads,
                                 max_batch=max_batch, description=description)
        errors.print(f"serving {checkpoint} on http://{host}:{port} (docs at /docs), accounts in {shown_database(db)}")
        run_server(settings, host=host, port=port, workers=workers, log_level="info")

    _guard(start)


accounts = typer.Typer(no_args_is_help=True, help="The embedding API's accounts: create, list, usage, disable.")
app.add_typer(accounts, name="accounts")


@accounts.command("create")
def accounts_create(
    name: str,
    db: Db = "eaas.sqlite",
    quota: Annotated[Optional[int], typer.Option(min=0, help="Images the account may embed in total (default: unlimited).")] = None,
    price: Annotated[float, typer.Option(min=0, help="Price per query (image).")] = 0.0,
    rate: Annotated[Optional[float], typer.Option(help="Requests per second (default: unlimited).")] = None,
    burst: Annotated[int, typer.Option(min=1, help="Requests allowed at once before the rate applies.")] = 1,
) -> None:
    """Open an account and print its API key (shown this once; only its hash is stored)."""
    from encsteal.service.ledger import Ledger

    key = _guard(lambda: Ledger(db).create_account(name, quota=quota, price=price, rate=rate, burst=burst))
    errors.print(f"account '{name}' created; its API key (shown once):")
    print(key)


def _usage_table(rows) -> Table:
    table = Table()
    for column in ("account", "queries", "quota", "left", "requests", "price", "spent", "status"):
        table.add_column(column, justify="left" if column in ("account", "status") else "right")
    for row in rows:
        table.add_row(row.name, str(row.used), "∞" if row.quota is None else str(row.quota),
                      "∞" if row.remaining is None else str(row.remaining), str(row.requests), f"{row.price:g}",
                      f"{row.spent:.4f}", "disabled" if row.disabled else "active")
    return table


@accounts.command("list")
def accounts_list(db: Db = "eaas.sqlite") -> None:
    """Every account with its usage."""
    from encsteal.service.ledger import Ledger

    console.print(_usage_table(_guard(lambda: Ledger(db).usage())))


@accounts.command("usage")
def accounts_usage(name: str, db: Db = "eaas.sqlite") -> None:
    """One account's queries, requests and spending, from the ledger."""
    from encsteal.service.ledger import Ledger

    console.print(_usage_table(_guard(lambda: Ledger(db).usage(name))))


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
    """Run a grid of runs, resumably; results in <runs_dir>/results.sqlite, report.md and results.csv."""
    from encsteal.experiments.sweep import read_spec, run_sweep
    from encsteal.experiments.sweep_report import markdown_table

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
def report(
    grid: Annotated[Path, typer.Argument(help="A sweep file whose runs have (partly) finished.")],
    x: Annotated[Optional[str], typer.Option(help="The plots' x axis: queries or a dotted config key.")] = None,
    series: Annotated[Optional[str], typer.Option(help="A dotted config key: one line per value.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Where to write (default: the sweep's runs directory).")] = None,
) -> None:
    """Write a sweep's report.md, results.csv and plot from what its runs have stored so far."""
    from encsteal.experiments.sweep import report_sweep, stored_rows

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
