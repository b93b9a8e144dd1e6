"""Legitimate users as workloads: the side of a defense that the provider's own customers see.

A customer embeds its own labelled images once, through its own account, in requests of `batch_size` images
in a seeded order (as a customer uploads a data set), and trains a classifier on the features it receives; its
utility is the classifier's k-fold cross-validated accuracy over those images. The same images embedded by the
undefended encoder give its baseline; `loss` is baseline − accuracy (points of accuracy the defenses cost it).
Its proof-of-work CPU seconds, the seconds it waited for a throttled rate and the figures the account-aware
defenses keep for its account (coverage, statistics, flag) come along. A customer the provider refuses half-way
(flagged by a detection with the policy `refuse`) cannot embed the rest of its images: they count as wrong in
its accuracy, and `refused_at` says after how many images it was refused.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from encsteal.config import CustomerConfig, ProbeConfig
from encsteal.data import load_dataset
from encsteal.data.surrogate import draw
from encsteal.defenses.accounts import AccountRefused
from encsteal.evaluate.probe import probe_accuracy
from encsteal.target import LocalTarget


@dataclass
class CustomerResult:
    name: str
    images: int
    accuracy: float
    baseline: float
    loss: float
    """baseline − accuracy, as a share (0.01 is one point)."""
    pow_seconds: float
    pow_seconds_per_image: float
    figures: dict[str, dict[str, float]]
    wait_seconds: float = 0.0
    refused_at: int | None = None
    """The images it had embedded when the provider refused it (None: never refused)."""

    def as_dict(self) -> dict:
        return asdict(self)


def customer_data(customer: CustomerConfig, *, root, image_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The customer's labelled images, in the order it sends them."""
    data = load_dataset(customer.dataset, customer.split, root=root, image_size=image_size)
    if data.labels is None:
        raise ValueError(f"customer '{customer.name}': {customer.dataset}/{customer.split} has no labels")
    keep = torch.arange(len(data))
    if customer.classes is not None:
        keep = keep[torch.isin(data.labels, torch.tensor(customer.classes))]
    order = keep[draw(len(keep), len(keep), seed)]
    if customer.size is not None:
        order = order[: customer.size]
    labels = data.labels[order]
    classes = torch.unique(labels)
    remap = torch.full((int(classes.max()) + 1,), -1, dtype=torch.long)
    remap[classes] = torch.arange(len(classes))
    return data.images[order], remap[labels], len(classes)


def cross_validated(features: torch.Tensor, labels: torch.Tensor, num_classes: int, folds: int, probe: ProbeConfig,
                    seed: int, device: torch.device) -> float:
    """Accuracy over all images, each predicted by a classifier trained on the other folds."""
    fold_of = torch.arange(len(labels)) % folds
    correct = 0.0
    for fold in range(folds):
        test, train = fold_of == fold, fold_of != fold
        accuracy = probe_accuracy(features[train], labels[train], features[test], labels[test], num_classes, probe,
                                  seed=seed + fold, device=device)
        correct += accuracy * int(test.sum())
    return correct / len(labels)


def serve_customer(customer: CustomerConfig, defended: Callable[[str], LocalTarget], undefended: LocalTarget,
                   probe: ProbeConfig, *, root, image_size: int, seed: int, device: torch.device) -> CustomerResult:
    """Run one customer's workload: `defended(account)` is the defended target for its account."""
    images, labels, num_classes = customer_data(customer, root=root, image_size=image_size, seed=seed)
    account = f"customer:{customer.name}"
    target = defended(account)
    answers, refused_at = [], None
    for request in images.split(target.batch_size):
        try:
            answers.append(target.embed(request))
        except AccountRefused:
            refused_at = sum(len(answer) for answer in answers)
            break
    embedded = sum(len(answer) for answer in answers)
    baseline_features = undefended.embed(images)
    probe = customer.probe or probe
    accuracy = 0.0
    if embedded >= 2 * customer.folds:  # the images it could not embed, it cannot classify: they count as wrong
        accuracy = cross_validated(torch.cat(answers), labels[:embedded], num_classes, customer.folds, probe, seed,
                                   device) * embedded / len(images)
    baseline = cross_validated(baseline_features, labels, num_classes, customer.folds, probe, seed, device)
    return CustomerResult(customer.name, len(images), accuracy, baseline, baseline - accuracy, target.pow_seconds,
                          target.pow_seconds / len(images), target.accounts.figures(account),
                          wait_seconds=target.wait_seconds, refused_at=refused_at)
