"""Is this encoder mine? Ownership verification of a suspect encoder, black-box.

The suspect is seen only as a `Target` (`encsteal.target`), exactly as an attack sees its victim: a checkpoint
in this process or an embedding API over HTTP go through one code path, and every image sent to it is a query
(counted and cached by `encsteal.query_cache.CachedTarget`). The verifier holds the victim: its encoder, its
private training images, and its watermark if it was pre-trained with one.

    evidence = prepare_evidence(victim, watermark, private_images, public_images, config, references)
    outcome = verify_suspect(evidence, suspect, config)      # once per suspect; evidence is shared

Methods (each a p-value; p < α: stolen, else inconclusive, counted as independent, as the slides say):

- dataset-inference (`encsteal.ownership.dataset_inference`): a Gaussian mixture fitted on the suspect's
  representations of private images; are held-out private images more likely than public ones?
- watermark (`encsteal.ownership.watermark`): does the victim's secret head read the rotations of the watermark
  images from the suspect's representations, mapped into the victim's space with an affine map fitted on the
  public images, better than from independent reference encoders'?

The overall verdict is stolen when the smallest p-value is under α divided by the number of methods that ran
(Bonferroni), so two tests together claim no more often than one.

Queries per suspect: fit_images + test_images + public_images for dataset inference (the public images also fit
the watermark's alignment) and 4 · watermark.images for the watermark; the defaults make 2,000.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from encsteal.config import Section
from encsteal.errors import EncstealError
from encsteal.ownership.dataset_inference import DatasetInferenceConfig, dataset_inference
from encsteal.ownership.watermark import (
    ROTATIONS,
    Watermark,
    WatermarkVerifyConfig,
    all_rotations,
    fit_alignment,
    head_accuracy,
    reference_test,
)
from encsteal.query_cache import image_digests
from encsteal.target import Target

Method = Literal["dataset-inference", "watermark"]
METHODS: tuple[Method, ...] = ("dataset-inference", "watermark")


class VerifyError(EncstealError):
    pass


class VerifyConfig(Section):
    """Ownership verification's settings (`encsteal verify ... key=value`)."""

    methods: list[Method] = list(METHODS)
    """The tests to run; watermark is skipped (and said so) when the victim has no watermark."""
    alpha: float = Field(0.05, gt=0, lt=1)
    """The significance level: p < alpha says stolen (the slides' 5e-2)."""
    seed: int = 0
    """Chooses the private, public and watermark images, and seeds the mixture."""
    public_images: int = Field(800, ge=2)
    """Public images the victim never trained on: dataset inference's D_N and the watermark's alignment set."""
    batch_size: int = Field(256, ge=1)
    dataset_inference: DatasetInferenceConfig = DatasetInferenceConfig()
    watermark: WatermarkVerifyConfig = WatermarkVerifyConfig()

    @model_validator(mode="after")
    def _check_methods(self) -> VerifyConfig:
        if not self.methods:
            raise ValueError("methods: name at least one (dataset-inference, watermark)")
        return self

    def queries(self, watermarked: bool) -> int:
        """Images one verification sends to the suspect (at most: a dataset's duplicates are sent once)."""
        di = self.dataset_inference
        total = self.public_images
        if "dataset-inference" in self.methods:
            total += di.fit_images + di.test_images
        if "watermark" in self.methods and watermarked:
            total += ROTATIONS * self.watermark.images
        return total


@dataclass
class Evidence:
    """The verifier's side, prepared once per victim and shared by every suspect."""

    fit: torch.Tensor
    """Private images D_P1 (uint8) the mixture is fitted on."""
    private: torch.Tensor
    """Held-out private images D_P2."""
    public: torch.Tensor
    """Public images D_N."""
    victim_public: torch.Tensor
    """The victim's representations of the public images (the alignment's target)."""
    watermark: Watermark | None = None
    watermark_images: torch.Tensor | None = None
    """The watermark images in every rotation, image-major."""
    watermark_classes: torch.Tensor | None = None
    reference_accuracies: dict[str, float] = field(default_factory=dict)


@dataclass
class Outcome:
    """One suspect's verdicts (`summary`, JSON-ready) and dataset inference's log-likelihoods for the plot."""

    summary: dict
    private_log_likelihood: np.ndarray | None = None
    public_log_likelihood: np.ndarray | None = None


def _draw(pool: torch.Tensor, count: int, seed: int, what: str) -> torch.Tensor:
    if count > len(pool):
        raise VerifyError(f"verification needs {count} {what} images but only {len(pool)} are available; "
                          "lower the sample sizes (e.g. public_images, dataset_inference.fit_images)")
    return pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))[:count]]


def embed_all(target: Target, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([target.embed(chunk) for chunk in images.split(batch_size)]).float()


def prepare_evidence(victim: Target, watermark: Watermark | None, private_pool: torch.Tensor,
                     public_pool: torch.Tensor, config: VerifyConfig, references: dict[str, Target]) -> Evidence:
    """Choose the images (seeded), embed the public ones with the victim, and, for the watermark, measure what
    the reference encoders (independent of the victim) reach: the null distribution."""
    di = config.dataset_inference
    needs_private = "dataset-inference" in config.methods
    private = _draw(private_pool, di.fit_images + di.test_images, config.seed, "private") if needs_private \
        else private_pool[:0]
    public = _draw(public_pool, config.public_images, config.seed + 1, "public")
    evidence = Evidence(private[: di.fit_images], private[di.fit_images:], public,
                        embed_all(victim, public, config.batch_size))
    if "watermark" in config.methods and watermark is not None:
        chosen = _draw(watermark.images, config.watermark.images, config.seed + 2, "watermark")
        evidence.watermark = watermark
        evidence.watermark_images, evidence.watermark_classes = all_rotations(chosen)
        if len(references) < 2:
            raise VerifyError("the watermark test needs at least two reference encoders (watermark.random_references)")
        evidence.reference_accuracies = {
            name: _watermark_accuracy(evidence, embed_all(ref, public, config.batch_size),
                                      embed_all(ref, evidence.watermark_images, config.batch_size), config)
            for name, ref in references.items()}
    return evidence


def _watermark_accuracy(evidence: Evidence, suspect_public: torch.Tensor, suspect_watermark: torch.Tensor,
                        config: VerifyConfig) -> float:
    wm = config.watermark
    align = fit_alignment(suspect_public, evidence.victim_public, wm.align, wm.ridge)
    return head_accuracy(evidence.watermark.head, align(suspect_watermark).float(), evidence.watermark_classes)


def verify_suspect(evidence: Evidence, suspect: Target, config: VerifyConfig) -> Outcome:
    """Every configured test on one suspect; its images go to the suspect in one embed call."""
    alpha = config.alpha
    run_di = "dataset-inference" in config.methods
    run_wm = "watermark" in config.methods and evidence.watermark is not None
    if not run_di and not run_wm:
        raise VerifyError("no test can run: the victim has no watermark and methods leaves dataset-inference out")
    parts = [evidence.public] + ([evidence.fit, evidence.private] if run_di else []) \
        + ([evidence.watermark_images] if run_wm else [])
    bought_before = suspect.queries
    images = torch.cat(parts)
    features = embed_all(suspect, images, config.batch_size)
    sent = len(set(image_digests(images)))  # distinct images: what a fresh account is billed for
    chunks = list(features.split([len(part) for part in parts]))
    suspect_public = chunks.pop(0)
    methods: dict[str, dict] = {}
    outcome = Outcome({})
    if run_di:
        fit, private = chunks.pop(0), chunks.pop(0)
        result = dataset_inference(fit, private, suspect_public, config.dataset_inference, config.seed)
        methods["dataset-inference"] = {**result.summary(), "verdict": _verdict(result.p_value, alpha)}
        outcome.private_log_likelihood = result.private_log_likelihood
        outcome.public_log_likelihood = result.public_log_likelihood
    if "watermark" in config.methods and not run_wm:
        methods["watermark"] = {"skipped": "the victim has no watermark (pre-train it with pretrain.watermark=rotation)"}
    if run_wm:
        accuracy = _watermark_accuracy(evidence, suspect_public, chunks.pop(0), config)
        references = list(evidence.reference_accuracies.values())
        statistic, p_value = reference_test(accuracy, references, len(evidence.watermark_classes))
        methods["watermark"] = {"statistic": statistic, "p_value": p_value,
                                "delta_mu": accuracy - float(np.mean(references)), "accuracy": accuracy,
                                "reference_mean": float(np.mean(references)),
                                "reference_std": float(np.std(references, ddof=1)),
                                "references": evidence.reference_accuracies, "chance": 1 / ROTATIONS,
                                "images": len(evidence.watermark_classes), "align": config.watermark.align,
                                "verdict": _verdict(p_value, alpha)}
    ran = [m for m in methods.values() if "p_value" in m]
    smallest = min(m["p_value"] for m in ran)
    outcome.summary = {
        "verdict": _verdict(smallest, alpha / len(ran)),
        "alpha": alpha,
        "combined_alpha": alpha / len(ran),
        "min_p_value": smallest,
        "queries": sent,
        "queries_paid": suspect.queries - bought_before,
        "methods": methods,
    }
    return outcome


def _verdict(p_value: float, alpha: float) -> str:
    """stolen below alpha; otherwise the test is inconclusive and the encoder counts as independent."""
    return "stolen" if p_value < alpha else "independent"


__all__ = ["METHODS", "Evidence", "Outcome", "VerifyConfig", "VerifyError", "embed_all", "prepare_evidence",
           "verify_suspect"]
