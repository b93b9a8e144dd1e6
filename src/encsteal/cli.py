"""encsteal's command line: `encsteal demo | run | pretrain | steal | evaluate | presets | config`.

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


def print_results(results: dict) -> None:
    table = Table(title=f"{results['name']}: {results['attack']['name']} with {results['queries']} queries")
    for column in ("downstream", "TA", "SA", "SA/TA", "R (random init)", "G captured", "fidelity cos"):
        table.add_column(column, justify="right" if column != "downstream" else "left")
    for name, row in results["downstream"].items():
        fid = (row.get("fidelity") or {}).get("cosine")
        gain = "–" if row["gain_captured"] is None else f"{row['gain_captured']:.2f}"
        table.add_row(
            name, f"{100 * row['TA']:.2f}", f"{100 * row['SA']:.2f}", f"{row['SA_over_TA']:.3f}", f"{100 * row['R']:.2f}",
            gain + ("" if row["gain_meaningful"] else " (target too weak)"), "–" if fid is None else f"{fid:.3f}",
        )
    console.print(table)
    console.print(
        f"queries {results['queries']} · pre-training {results['pretrain_seconds'] or 0:.0f} s · "
        f"stealing {results['steal_seconds']:.0f} s · evaluation {results['evaluate_seconds']:.0f} s"
    )


def _run_pipeline(config: Config, quiet: bool) -> None:
    from encsteal.experiments.pipeline import run_all

    results = run_all(config, progress=not quiet)
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
