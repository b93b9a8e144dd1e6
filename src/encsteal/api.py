"""The Python API: the CLI's commands as functions of a Config.

    import encsteal
    config = encsteal.load_config("demo", ["attack.epochs=20"])
    results = encsteal.run(config)            # pretrain -> steal -> evaluate
    target = encsteal.pretrain_target(config)  # or one stage at a time, from checkpoints
    verdict = encsteal.verify("runs/demo/target.safetensors", "runs/x/stolen.safetensors", public="fashion-mnist:test")
"""

from __future__ import annotations

from pathlib import Path

from encsteal.config import Config
from encsteal.experiments import pipeline


def run(config: Config, progress: bool = True) -> dict:
    """The whole pipeline; returns results.json's content."""
    return pipeline.run_all(config, progress)


def pretrain_target(config: Config, progress: bool = True) -> Path:
    """Pre-train the target (or check target.checkpoint); returns the checkpoint path."""
    return pipeline.pretrain(pipeline.Run.open(config, progress))


def steal_encoder(config: Config, progress: bool = True) -> Path:
    """Steal the run's target; returns the stolen encoder's checkpoint path."""
    return pipeline.steal(pipeline.Run.open(config, progress))


def evaluate_run(config: Config, progress: bool = True) -> dict:
    """Evaluate the run's target and stolen encoders; returns results.json's content."""
    return pipeline.evaluate(pipeline.Run.open(config, progress))


def verify(victim: Path | str, suspect: Path | str, *, public: str, private: str | None = None,
           settings: dict | None = None, max_queries: int | None = None, out: Path | None = None,
           device: str = "auto", api_key_env: str = "ENCSTEAL_API_KEY", progress: bool = True) -> dict:
    """Is `suspect` (a checkpoint, or an embedding API's URL with its key in $api_key_env) a copy of `victim`?
    Dataset inference and the rotation watermark (if the victim has one), each a p-value; `settings` are
    encsteal.ownership.VerifyConfig's (e.g. {"alpha": 0.01, "dataset_inference": {"components": 20}}). Returns
    verify.json's content; verify.json, verify.md and verify.png are written to `out`."""
    from encsteal.experiments.verification import run_verification, verify_config

    return run_verification(Path(victim), str(suspect), public=public, private=private,
                            config=verify_config(base=settings), max_queries=max_queries, out=out, device=device,
                            api_key_env=api_key_env, progress=progress)
