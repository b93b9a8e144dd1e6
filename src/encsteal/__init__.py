"""encsteal: steal and defend pre-trained image encoders served as a service.

    import encsteal
    results = encsteal.run(encsteal.load_config("demo", ["attack.epochs=20"]))
    verdict = encsteal.verify("runs/demo/target.safetensors", "runs/x/stolen.safetensors", public="fashion-mnist:test")
"""

from encsteal.api import evaluate_run, pretrain_target, run, steal_encoder
from encsteal.config import Config, ConfigError, load_config
from encsteal.errors import EncstealError

__version__ = "0.1.0"

__all__ = [
    "Config",
    "ConfigError",
    "EncstealError",
    "evaluate_run",
    "load_config",
    "pretrain_target",
    "run",
    "steal_encoder",
    "verify",
]


def __getattr__(name: str):
    if name == "verify":  # ownership verification loads its own modules on first use
        from encsteal.api import verify

        return verify
    raise AttributeError(f"module 'encsteal' has no attribute '{name}'")
