"""What the provider does for an experiment, beside serving: its poisoning defense's shadow encoder, the mean
feature its coverage-measuring defenses hash around, and its embedding API started with accounts for the
attacker.

The shadow stolen encoder of StolenEncoder §VII-C is the provider's own copy of its target, stolen with the
attacker's settings (the poisoning defense's distance, λ and augmentations) from the provider's pre-training
images with free queries to the undefended target. It is kept beside the target checkpoint, named by its
recipe, and shared by every run against that target with that recipe.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch

from encsteal.attacks import ATTACKS
from encsteal.checkpoint import file_digest, load_encoder, provenance, reusable, save_encoder
from encsteal.config import AttackConfig
from encsteal.data.surrogate import draw, pretraining_images
from encsteal.defenses.coverage import PRETRAINING, CoverageSettings, feature_mean
from encsteal.defenses.poisoning import PoisoningConfig
from encsteal.service.ledger import Ledger
from encsteal.service.server import ServeSettings, ServerProcess
from encsteal.target import LocalTarget
from encsteal.training import TrainContext, seed_everything


def shadow_attack(poisoning: PoisoningConfig, attack: AttackConfig) -> AttackConfig:
    """How the shadow is stolen: the attacker's settings with the poisoning defense's distance, λ and augmentations."""
    return attack.model_copy(update={"loss": poisoning.distance, "lam": poisoning.lam, "augment": poisoning.augment})


def shadow_recipe(poisoning: PoisoningConfig, attack: AttackConfig, seed: int) -> dict:
    """What a run-trained shadow encoder is made from besides its target (a sweep keys its shared caches by it)."""
    return {"attack": shadow_attack(poisoning, attack).recipe(), "images": poisoning.shadow_images,
            "seed": seed}


def with_shadow(poisoning: PoisoningConfig, attack: AttackConfig, target_path: Path, *, seed: int, data_root: Path,
                image_size: int, device: torch.device, batch_size: int,
                context: Callable[[str, dict], TrainContext]) -> PoisoningConfig:
    """`poisoning` with its shadow encoder in place: the one beside the target made by the same recipe, or one
    trained now. `context(name, recipe)` gives the training loop's context (where its state and metrics go)."""
    recipe = {"shadow_of": file_digest(target_path), **shadow_recipe(poisoning, attack, seed)}
    name = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    path = target_path.parent / f"shadow-{name}.safetensors"
    if not reusable(path, recipe, "shadow encoder"):
        encoder, meta = load_encoder(target_path, device)
        data = meta["pretraining_data"]
        images = pretraining_images(data["dataset"], data["split"], data.get("limit"), data["seed"],
                                    root=data_root, image_size=image_size)
        if poisoning.shadow_images is not None and poisoning.shadow_images < len(images):
            images = images[draw(poisoning.shadow_images, len(images), seed + 5)]
        target = LocalTarget(encoder, image_size=image_size, device=device, batch_size=batch_size)
        seed_everything(seed)
        shadow = ATTACKS["stolenencoder"](target, images, shadow_attack(poisoning, attack), context(path.stem, recipe))
        save_encoder(shadow, path, {"role": "shadow", "recipe": recipe, "image_size": image_size, **provenance()})
    return poisoning.model_copy(update={"shadow": path})


CENTER_IMAGES = 5000
"""Pre-training images the mean feature is computed over."""


def with_center(config: CoverageSettings, target_path: Path, *, data_root: Path, image_size: int,
                device: torch.device, batch_size: int) -> CoverageSettings:
    """`config` with `center: pretraining` replaced by the file of the target's mean feature over (up to 5,000 of)
    its pre-training images, kept beside the target (computed once, then reused)."""
    if config.center != PRETRAINING:
        return config
    path = target_path.parent / f"feature-mean-{file_digest(target_path)[:12]}.npy"
    if not path.exists():
        import numpy as np

        encoder, meta = load_encoder(target_path, device)
        data = meta.get("pretraining_data")
        if data is None:
            raise ValueError(f"{target_path} does not record its pre-training data: give the defense's center as a "
                             ".npy file of the mean feature vector")
        images = pretraining_images(data["dataset"], data["split"], data.get("limit"), data["seed"], root=data_root,
                                    image_size=image_size)
        images = images[draw(min(CENTER_IMAGES, len(images)), len(images), data["seed"] + 7)]
        target = LocalTarget(encoder, image_size=image_size, device=device, batch_size=batch_size)
        temporary = path.with_suffix(".tmp.npy")
        np.save(temporary, feature_mean(target.embed, images, batch_size))
        os.replace(temporary, path)
    return config.model_copy(update={"center": path})


def write_private(path: Path, text: str) -> None:
    """Create `path` readable and writable by its owner alone (mode 0600 from the start, never wider) and
    write `text` into it; an existing file is an error."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as stream:
        stream.write(text)


@contextmanager
def served(settings: ServeSettings, key_file: Path, price: float,
           accounts: Sequence[str] = ("attacker",)) -> Iterator[tuple[str, list[str]]]:
    """The provider's API in a child process on 127.0.0.1; yields (its URL, an API key per account). Each key is of
    an account (`attacker`, or the sybils' names given) opened at `price` per query on the first call and kept
    in `key_file` (mode 0600; `key_file-NAME` for the accounts after the first) for the next."""
    keys = []
    for index, name in enumerate(accounts):
        path = key_file if index == 0 else key_file.with_name(f"{key_file.name}-{name}")
        if not path.exists():
            write_private(path, Ledger(settings.db).create_account(name, price=price) + "\n")
        keys.append(path.read_text().strip())
    with ServerProcess(settings) as server:
        yield server.url, keys
