"""Sweeps on an existing job engine: submitit (SLURM clusters, or processes on this machine).

    encsteal sweep sweeps/fmnist-bench-attacks.yaml --executor submitit --cluster slurm --partition gpu --gpus 1
    encsteal sweep FILE.yaml --executor submitit --cluster local        # parallel processes on this machine

Two waves of jobs. First one job per shared target checkpoint that does not exist yet: each target is
pre-trained once. Then one job per query cache: runs that share a cache run one after another inside one
job, so no image is bought twice, while different caches (other targets or defenses) run in parallel. The
driver records every run in the sweep's store as its job finishes; a job that dies (pre-empted, out of time)
records its runs as failed, and starting the sweep again runs them again. Job logs are under
`<runs_dir>/jobs/`. submitit is an optional dependency: `pip install 'encsteal[cluster]'`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from encsteal.config import Config
from encsteal.errors import ConfigError
from encsteal.experiments.sweep import Outcome, PlannedRun, ensure_target, execute

CLUSTERS = ("auto", "slurm", "local", "debug")


def pretrain_target(config: Config) -> None:
    """Job of the first wave: one shared target."""
    ensure_target(config, progress=False)


def run_group(runs: list[tuple[str, Config]]) -> list[Outcome]:
    """Job of the second wave: runs sharing one query cache, one after another."""
    return [execute(run_id, config, progress=False) for run_id, config in runs]


@dataclass
class SubmititExecutor:
    folder: Path
    cluster: str = "auto"
    partition: str | None = None
    timeout_min: int = 24 * 60
    gpus: int = 0
    cpus: int | None = None

    def _executor(self):
        try:
            import submitit
        except ImportError:
            raise ConfigError("--executor submitit needs the submitit package: pip install 'encsteal[cluster]'") from None
        if self.cluster not in CLUSTERS:
            raise ConfigError(f"--cluster {self.cluster}: not one of {', '.join(CLUSTERS)}")
        executor = submitit.AutoExecutor(folder=self.folder, cluster=None if self.cluster == "auto" else self.cluster)
        parameters = {"timeout_min": self.timeout_min, "gpus_per_node": self.gpus}
        if self.cpus is not None:
            parameters["cpus_per_task"] = self.cpus
        if self.partition is not None:
            parameters["slurm_partition"] = self.partition  # used by SLURM, ignored elsewhere
        executor.update_parameters(**parameters)
        return executor

    def run(self, todo: list[PlannedRun], echo) -> Iterator[tuple[PlannedRun, Outcome]]:
        """Submit the sweep's runs; yields each run with its outcome as its job finishes."""
        from submitit.helpers import as_completed

        executor = self._executor()
        missing: dict[Path, PlannedRun] = {}
        for run in todo:
            checkpoint = run.config.target.checkpoint
            if checkpoint is not None and run.config.target.kind != "http" and not checkpoint.exists():
                missing.setdefault(checkpoint, run)
        failed_targets: dict[Path, str] = {}
        if missing:
            jobs = {executor.submit(pretrain_target, run.config): checkpoint for checkpoint, run in missing.items()}
            echo(f"pre-training {len(jobs)} shared target(s): jobs {', '.join(job.job_id for job in jobs)}")
            for job in as_completed(list(jobs)):
                try:
                    job.result()
                except Exception as exc:  # the runs on this target fail with its error; the others go on
                    failed_targets[jobs[job]] = f"pre-training the shared target failed: {_summary(exc)}"

        groups: dict[str, list[PlannedRun]] = {}
        for run in todo:
            error = failed_targets.get(run.config.target.checkpoint)
            if error is not None:
                yield run, Outcome(run.id, "failed", None, error, 0.0)
                continue
            cache = run.config.target.query_cache
            groups.setdefault(str(cache) if cache is not None else f"run:{run.id}", []).append(run)
        jobs = {executor.submit(run_group, [(run.id, run.config) for run in group]): group for group in groups.values()}
        echo(f"{sum(map(len, groups.values()))} run(s) in {len(jobs)} job(s): {', '.join(job.job_id for job in jobs)}")
        for job in as_completed(list(jobs)):
            group = jobs[job]
            try:
                outcomes = job.result()
            except Exception as exc:  # the job died: its runs are failed and run again next time
                outcomes = [Outcome(run.id, "failed", None, f"job {job.job_id} died: {_summary(exc)}", 0.0)
                            for run in group]
            for run, outcome in zip(group, outcomes):
                echo(f"{run.id}: {outcome.status}" + (f" ({outcome.error})" if outcome.error else ""))
                yield run, outcome


def _summary(exc: Exception) -> str:
    """A job's error in one line: the last line of submitit's message (the remote exception)."""
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__
