"""encsteal's command line: `encsteal demo | run | pretrain | steal | evaluate | sweep | report | serve | accounts | verify | presets | config`.

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

from encsteal.config import Config, ConfigError, dump_config, load_config, presets_dir
from encsteal.errors import EncstealError

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


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def print_results(results: dict) -> None:
    table = Table(title=f"{results['name']}: {results['attack']['name']} with {results['queries']} queries")
    longest = max((len(name) for name in results["downstream"]), default=10)
    table.add_column("downstream", justify="left", no_wrap=True, min_width=longest)
    for column in ("TA", "SA", "SA/TA", "R", "G", "cos"):
        table.add_column(column, justify="right", no_wrap=True)
    weak_tasks = []
    for name, row in results["downstream"].items():
        fid = (row.get("fidelity") or {}).get("cosine")
        gain = "–" if row["gain_captured"] is None else f"{row['gain_captured']:.2f}"
        if row["TA"] is not None and not row["gain_meaningful"]:
            weak_tasks.append(name)
            gain += " ⚠"
        table.add_row(
            name, _pct(row["TA"]), _pct(row["SA"]), "–" if row["SA_over_TA"] is None else f"{row['SA_over_TA']:.3f}",
            _pct(row["R"]) + ("" if row.get("R_std") is None else f" ± {100 * row['R_std']:.1f}"), gain,
            "–" if fid is None else f"{fid:.3f}",
        )
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
        errors.print(f"serving {checkpoint} on http://{host}:{port} (docs at /docs), accounts in {db}")
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


def _verify_report_path(grid: Path) -> Path:
    from encsteal.experiments.verify_sweep import read_spec

    return read_spec(grid).runs_dir_for(grid) / "report.md"


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
