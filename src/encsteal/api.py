"""The Python API: the CLI's commands as functions of a Config.

    import encsteal
    config = encsteal.load_config("demo", ["attack.epochs=20"])
    results = encsteal.run(config)            # pretrain -> steal -> evaluate
    target = encsteal.pretrain_target(config)  # or one stage at a time, from checkpoints
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
