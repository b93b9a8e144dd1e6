"""The provider's defenses: an ordered list of post-processors on the features the served encoder returns.

Each defense is a callable `(images, features) -> features` (images as float N x 3 x H x W in [0, 1]) with a
typed config; `DefendedEncoder` applies them in order after the target encoder, the same way in-process and
behind the HTTP API. On the command line a defense is `NAME:key=value,key=value`, e.g. `top-k:k=10`,
`rounding:decimals=2`, `noise:sigma=0.1`, `poisoning:epsilon=1,norm=2,shadow=runs/x/shadow.safetensors`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Annotated, Union

import torch
import yaml
from pydantic import Field, TypeAdapter, ValidationError

from encsteal.defenses.noise import GaussianNoise, NoiseConfig
from encsteal.defenses.poisoning import FeaturePoisoning, PoisoningConfig
from encsteal.defenses.rounding import RoundingConfig, rounding
from encsteal.defenses.topk import TopKConfig, top_k

Defense = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

DEFENSES: dict[str, type] = {
    "top-k": TopKConfig,
    "rounding": RoundingConfig,
    "noise": NoiseConfig,
    "poisoning": PoisoningConfig,
}
"""name -> its config model (the `name` field picks the model when a config is read)."""

DefenseConfig = Annotated[Union[TopKConfig, RoundingConfig, NoiseConfig, PoisoningConfig], Field(discriminator="name")]

_adapter = TypeAdapter(DefenseConfig)


def build_defense(config, device: torch.device, image_size: int) -> Defense:
    if isinstance(config, TopKConfig):  # stateless: the function with its settings bound
        return partial(top_k, config)
    if isinstance(config, RoundingConfig):
        return partial(rounding, config)
    if isinstance(config, NoiseConfig):
        return GaussianNoise(config)
    if isinstance(config, PoisoningConfig):
        return FeaturePoisoning(config, device, image_size)
    raise TypeError(f"not a defense config: {config!r}")


def parse_defense(spec: str):
    """`NAME:key=value,key=value` -> its config; a ValueError names what is wrong."""
    name, _, rest = spec.partition(":")
    name = name.strip()
    if name not in DEFENSES:
        raise ValueError(f"unknown defense '{name}' (known: {', '.join(DEFENSES)})")
    fields: dict = {"name": name}
    # split at the commas that start a new key=, so that lists such as augment=[a, b] stay whole
    for item in filter(None, (part.strip() for part in re.split(r",(?=\s*[A-Za-z_]\w*\s*=)", rest))):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"defense '{spec}': '{item}' is not key=value")
        try:
            fields[key.strip()] = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError:
            raise ValueError(f"defense '{spec}': the value of '{key.strip()}' is not valid YAML") from None
    try:
        return _adapter.validate_python(fields)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc'][1:]) or name}: "
            + ("unknown key" if error["type"] == "extra_forbidden" else error["msg"])
            for error in exc.errors()
        )
        raise ValueError(f"defense '{spec}': {problems}") from None


SECRET_MASK = "***"


def _text(configs: Sequence, value_of: Callable[[str, object], object]) -> str:
    """`name:key=value,...` for each defense, joined by ` > `; value_of(key, value) is what is written."""
    if not configs:
        return "none"

    def item(key: str, value) -> str:
        value = value_of(key, value)
        return f"{key}={json.dumps(value) if isinstance(value, list) or value is None else value}"

    return " > ".join(config.name + ":" + ",".join(item(key, value) for key, value in
                                                   config.model_dump(mode="json", exclude={"name"}).items())
                      for config in configs)


def describe(configs: Sequence) -> str:
    """`top-k:k=10 > noise:sigma=0.1,secret=***`, for reports, results and logs: the provider's secret is never
    shown. (`parse_defense` reads it back where no secret is set.)"""
    return _text(configs, lambda key, value: SECRET_MASK if key == "secret" else value)


def secret_digest(secret: int) -> str:
    """A keyed hash of a defense's secret, `hmac:` and 16 hex digits: equal secrets give equal identities, and the
    secret is not written anywhere (as long as it is not small enough to be found by trying; draw a random one)."""
    key = secret.to_bytes(8, "little", signed=True)
    return "hmac:" + hmac.new(key, b"encsteal defense identity", hashlib.sha256).hexdigest()[:16]


def identity(configs: Sequence) -> str:
    """What defended features depend on, for cache keys and recipes: `describe`'s text with each secret as its
    keyed hash (the default, 0, as it is, so that earlier recipes still match) and each poisoning shadow encoder
    as its weights' digest (another shadow at the same path is another defense)."""

    def shown(key: str, value):
        if key == "secret" and value != 0:
            return secret_digest(value)
        if key == "shadow" and value is not None and Path(value).is_file():
            return "sha256:" + hashlib.sha256(Path(value).read_bytes()).hexdigest()[:16]
        return value

    return _text(configs, shown)


class DefendedEncoder(torch.nn.Module):
    """The target encoder followed by its defenses: what the provider serves."""

    def __init__(self, encoder: torch.nn.Module, defenses: Sequence[Defense] = ()) -> None:
        super().__init__()
        self.encoder = encoder
        self.defenses = list(defenses)
        self.feature_dim: int = encoder.feature_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.encoder(images).float()
        for defense in self.defenses:
            features = defense(images, features)
        return features


__all__ = ["DEFENSES", "DefendedEncoder", "Defense", "DefenseConfig", "build_defense", "describe", "identity", "parse_defense",
           "secret_digest"]
