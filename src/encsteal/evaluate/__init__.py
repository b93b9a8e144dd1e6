"""Evaluation: downstream probes (TA, SA and R, the random-init baseline), captured gain and fidelity."""

from __future__ import annotations

import torch

from encsteal.config import ProbeConfig
from encsteal.evaluate.features import Embed, extract_features
from encsteal.evaluate.fidelity import fidelity
from encsteal.evaluate.probe import probe_accuracy
from encsteal.evaluate.probe_cache import ProbeCache, data_digest, probe_key

MIN_MEANINGFUL_GAIN = 0.02
"""Below 2 points of TA − R the target learned too little for the captured gain G to mean anything."""


def captured_gain(sa: float, ta: float, r: float) -> float | None:
    """G = (SA − R) / (TA − R): the share of what the target learned over a random encoder that the copy carries."""
    return (sa - r) / (ta - r) if ta != r else None


def evaluate_task(
    encoders: dict[str, Embed],
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    probe: ProbeConfig,
    *,
    batch_size: int,
    seed: int,
    device: torch.device,
    task: str,
    progress: bool = True,
    feature_cache: dict | None = None,
    identities: dict[str, str] | None = None,
    probe_cache: ProbeCache | None = None,
) -> dict:
    """Probe accuracy of each encoder on one downstream task, and fidelity. `encoders` holds 'stolen', one or
    more random-init encoders named 'random...' (R is their mean: one random init alone varies by a point or
    more), and 'target' unless the attacker lacks the target's weights (then TA, SA/TA, G, fidelity are None).
    An encoder with an entry in `identities` has its accuracy looked up in (and added to) `probe_cache`."""
    accuracy, test_features = {}, {}
    cache = {} if feature_cache is None else feature_cache  # (encoder, id(images)) -> features, across tasks

    def features(name: str, images: torch.Tensor, split: str) -> torch.Tensor:
        key = (name, id(images))
        if key not in cache:
            cache[key] = extract_features(encoders[name], images, batch_size, f"{task}: {name} features ({split})", progress)
        return cache[key]

    train_features = {}
    known = identities if probe_cache is not None and identities else {}
    data = data_digest(train_images, train_labels, test_images, test_labels) if known else ""
    for name in encoders:
        key = probe_key(known[name], data, probe, seed) if name in known else None
        cached = probe_cache.get(key) if key is not None else None
        if cached is not None and name not in ("target", "stolen"):  # only fidelity needs more than the accuracy
            accuracy[name] = cached
            continue
        train_x, test_x = features(name, train_images, "train"), features(name, test_images, "test")
        if cached is None:
            cached = probe_accuracy(train_x, train_labels, test_x, test_labels, num_classes, probe, seed=seed, device=device)
            if key is not None:
                probe_cache.put(key, cached)
        accuracy[name] = cached
        train_features[name], test_features[name] = train_x, test_x
    randoms = [value for name, value in accuracy.items() if name.startswith("random")]
    ta, sa, r = accuracy.get("target"), accuracy["stolen"], sum(randoms) / len(randoms)
    return {
        "TA": ta,
        "SA": sa,
        "SA_over_TA": sa / ta if ta else None,
        "R": r,
        "R_runs": randoms,
        "R_std": float(torch.tensor(randoms).std()) if len(randoms) > 1 else None,
        "gain_captured": None if ta is None else captured_gain(sa, ta, r),
        "gain_meaningful": ta is not None and ta - r >= MIN_MEANINGFUL_GAIN,
        "fidelity": fidelity(test_features["target"], test_features["stolen"], target_train=train_features["target"],
                             stolen_train=train_features["stolen"], train_labels=train_labels) if ta is not None else None,
        "train_size": len(train_images),
        "test_size": len(test_images),
    }


__all__ = ["MIN_MEANINGFUL_GAIN", "ProbeCache", "captured_gain", "evaluate_task", "extract_features", "fidelity",
           "probe_accuracy"]
