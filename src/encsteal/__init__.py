"""encsteal: steal and defend pre-trained image encoders served as a service.

    import encsteal
    results = encsteal.run(encsteal.load_config("demo", ["attack.epochs=20"]))
    verdict = encsteal.verify("runs/demo/target.safetensors", "runs/x/stolen.safetensors", public="fashion-mnist:test")

The names below load on first use, so `import encsteal` (and every server worker, which imports only
encsteal.service) pays for the config, the pipeline or the server only when it uses them.
"""

from __future__ import annotations

import importlib

from encsteal.errors import ConfigError, EncstealError

__version__ = "0.1.0"

_LAZY = {
    "Config": "encsteal.config",
    "load_config": "encsteal.config",
    "evaluate_run": "encsteal.api",
    "pretrain_target": "encsteal.api",
    "run": "encsteal.api",
    "steal_encoder": "encsteal.api",
    "verify": "encsteal.api",
}

__all__ = ["ConfigError", "EncstealError", *_LAZY]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'encsteal' has no attribute '{name}'")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # the next lookup finds it without coming here
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
