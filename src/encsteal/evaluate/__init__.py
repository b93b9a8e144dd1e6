"""Evaluation: downstream probes (TA, SA and R, the random-init baseline), captured gain and fidelity."""

from __future__ import annotations

import torch

from encsteal.config import ProbeConfig
from encsteal.evaluate.features import Embed, extract_features
from encsteal.evaluate.fidelity import fidelity
from encsteal.evaluate.probe import probe_accuracy

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
) -> dict:
    """Probe accuracy of each encoder ('target', 'stolen', 'random') on one downstream task, and fidelity.
    Without a 'target' (a remote API whose weights the attacker lacks) TA, SA/TA, G and fidelity are None."""
    accuracy, test_features = {}, {}
    for name, embed in encoders.items():
        train_x = extract_features(embed, train_images, batch_size, f"{task}: {name} features (train)", progress)
        test_x = extract_features(embed, test_images, batch_size, f"{task}: {name} features (test)", progress)
        accuracy[name] = probe_accuracy(train_x, train_labels, test_x, test_labels, num_classes, probe, seed=seed, device=device)
        test_features[name] = test_x
    ta, sa, r = accuracy.get("target"), accuracy["stolen"], accuracy["random"]
    return {
        "TA": ta,
        "SA": sa,
        "SA_over_TA": sa / ta if ta else None,
        "R": r,
        "gain_captured": None if ta is None else captured_gain(sa, ta, r),
        "gain_meaningful": ta is not None and ta - r >= MIN_MEANINGFUL_GAIN,
        "fidelity": fidelity(test_features["target"], test_features["stolen"]) if ta is not None else None,
        "train_size": len(train_images),
        "test_size": len(test_images),
    }


__all__ = ["MIN_MEANINGFUL_GAIN", "captured_gain", "evaluate_task", "extract_features", "fidelity", "probe_accuracy"]
